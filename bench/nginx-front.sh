#!/usr/bin/env bash
# bench/nginx-front.sh — nginx in front of one fibhost, as an estate built on uWSGI runs it:
# the benchmark's `nginx-uwsgi` and `nginx-proxy` rows (issue 15: uwsgi_pass against proxy_pass).
#
#   bench/nginx-front.sh uwsgi|proxy PORT FIBHOST [fibhost arguments…]
#
#   uwsgi   nginx `uwsgi_pass` + the stock `uwsgi_params` to fibhost's `--uwsgi-socket`
#           (one upstream connection per request, as with uWSGI)
#   proxy   nginx `proxy_pass` over HTTP/1.1 with upstream keep-alive to fibhost's `--listen`
#
# nginx listens on 127.0.0.1:PORT with as many workers as there are cores. Both processes run
# in this script's session (run.sh starts it with setsid and kills the session afterwards);
# the scratch directory is removed on exit.
set -euo pipefail

mode=${1:?usage: nginx-front.sh uwsgi|proxy PORT FIBHOST [ARGS…]}
port=${2:?the port nginx listens on}
shift 2
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $nginx ]] || { echo "nginx-front.sh: nginx is not installed" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
upstream=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

case $mode in
    uwsgi)
        "$@" --listen 127.0.0.1:0 --uwsgi-socket "$upstream" &
        location="include /etc/nginx/uwsgi_params; uwsgi_pass fibhost;"
        keepalive= ;;
    proxy)
        "$@" --listen "$upstream" &
        location='proxy_pass http://fibhost; proxy_http_version 1.1; proxy_set_header Connection "";'
        keepalive="keepalive 64;" ;;
    *) echo "nginx-front.sh: unknown mode \`$mode\` (uwsgi or proxy)" >&2; exit 2 ;;
esac

temp=
for kind in client_body proxy fastcgi uwsgi scgi; do
    temp+=" ${kind}_temp_path $dir/${kind}_temp;"
done
cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes $(nproc);
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp
    upstream fibhost { server $upstream; $keepalive }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { $location }
    }
}
EOF
# Not exec: the EXIT trap removes the scratch directory when nginx ends.
"$nginx" -p "$dir" -c "$dir/nginx.conf"
