#!/usr/bin/env bash
# Builds the WSGI guests that tests/e2e/wsgi.rs and bench/run.sh serve, and the uWSGI they are
# compared with:
#
#   scripts/build-wsgi-examples.sh
#
#   guests/flask-fib.wasm          examples/flask-fib (the article's Flask app), app:app
#   guests/wsgi-test.wasm          guests/wsgi/testapp (the bridge's test app), testapp:application
#   .cache/wsgi/uwsgi-venv/        uWSGI (bench/uwsgi/requirements.txt's pin) and both apps'
#                                  requirements, to serve the same apps natively
#
# A guest is rebuilt only when one of its inputs (the app, its requirements, the bridge, the
# build script) is newer than it. Needs python3 with venv, and a C compiler for uWSGI's build.
set -euo pipefail

TAG=wsgi
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UWSGI_VENV=$ROOT/.cache/wsgi/uwsgi-venv
UWSGI_PIN=$(grep -E '^uwsgi==' "$ROOT/bench/uwsgi/requirements.txt")

# --- uWSGI with the apps' requirements ------------------------------------------------------
stamp=$UWSGI_VENV/requirements.stamp
wanted=$(cat "$ROOT/examples/flask-fib/requirements.txt" "$ROOT/guests/wsgi/testapp/requirements.txt"; echo "$UWSGI_PIN")
if [ ! -x "$UWSGI_VENV/bin/uwsgi" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  command -v cc >/dev/null 2>&1 || apt_install build-essential
  python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || apt_install python3-dev
  say "installing $UWSGI_PIN (compiles, ~1 min) and the apps' requirements into ${UWSGI_VENV#"$ROOT"/}"
  pip_install "$UWSGI_VENV" "$UWSGI_PIN" \
    -r "$ROOT/examples/flask-fib/requirements.txt" -r "$ROOT/guests/wsgi/testapp/requirements.txt"
  printf '%s' "$wanted" >"$stamp"
fi

# --- the guests ------------------------------------------------------------------------------
# build OUT TARGET APP_DIR: builds when OUT is missing or older than an input.
build() {
  local out=$ROOT/$1 target=$2 app_dir=$ROOT/$3
  if [ -f "$out" ] && [ -z "$(find "$app_dir" "$ROOT/guests/wsgi/fibhost_wsgi.py" \
    "$ROOT/scripts/build-wsgi-guest.sh" -newer "$out" -not -path '*/__pycache__*' -print -quit)" ]; then
    say "$1 is up to date"
    return 0
  fi
  "$ROOT/scripts/build-wsgi-guest.sh" "$target" --app-dir "$app_dir" -o "$out"
}
build guests/flask-fib.wasm app:app examples/flask-fib
build guests/wsgi-test.wasm testapp:application guests/wsgi/testapp
