#!/usr/bin/env bash
# Builds the Python, JavaScript and C Fibonacci guests as wasi:http/proxy components:
#
#   scripts/build-lang-guests.sh [python] [js] [c]     (no argument: all three)
#
# writes guests/python-fib.wasm, guests/js-fib.wasm and guests/c-fib.wasm, and prints each
# build's time and size. Install the toolchains first with scripts/setup-guest-toolchains.sh.
# guests/README.md explains each step.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GUESTS=$ROOT/guests
WIT=$ROOT/wit
# The world every guest is built against (wit/world.wit).
WORLD=fibhost:guest/http-guest
LLVM_VERSION=19
TOOLS=$GUESTS/c-fib/.tools/bin

say() { printf '[build] %s\n' "$*"; }
die() { printf '[build] error: %s\n' "$*" >&2; exit 1; }
missing() { die "$1 is missing; run scripts/setup-guest-toolchains.sh"; }

# Runs "$@" and reports how long it took and how large $OUT came out.
timed() {
  local start ms
  start=$(date +%s%N)
  "$@"
  ms=$((($(date +%s%N) - start) / 1000000))
  say "$(printf '%-24s %4d.%d s  %9s bytes' "${OUT#"$ROOT"/}" $((ms / 1000)) $((ms % 1000 / 100)) "$(stat -c %s "$OUT")")"
}

build_python() {
  local dir=$GUESTS/python-fib
  [ -x "$dir/.venv/bin/componentize-py" ] || missing "componentize-py (guests/python-fib/.venv)"
  OUT=$GUESTS/python-fib.wasm
  # componentize-py finds the module `app` in the current directory and its class
  # `IncomingHandler`; it generates the `wit_world` bindings package on the fly.
  # (It prints "Component built successfully" on stdout; the size line below says as much.)
  py_steps() { .venv/bin/componentize-py -d "$WIT" -w "$WORLD" componentize app -o "$OUT" >/dev/null; }
  (cd "$dir" && timed py_steps)
}

build_js() {
  local dir=$GUESTS/js-fib
  local engine=$dir/node_modules/@bytecodealliance/componentize-js/lib/starlingmonkey_embedding.wasm
  [ -x "$dir/node_modules/.bin/componentize-js" ] || missing "componentize-js (guests/js-fib/node_modules)"
  # StarlingMonkey is compiled against one WASI version and can only be built against a WIT of
  # that version: wit/0.2.10/ matches componentize-js 0.23.0. Say so plainly if an upgrade
  # changed it, rather than fail later with "failed to find export of interface".
  grep -q 'wasi:http/incoming-handler@0.2.10' "$engine" \
    || die "the StarlingMonkey engine in node_modules does not export wasi:http/incoming-handler@0.2.10; extract its WIT into wit/<version>/ as wit/0.2.10/world.wit describes, and point this script at it"
  OUT=$GUESTS/js-fib.wasm
  (cd "$dir" && timed node_modules/.bin/componentize-js app.js --wit "$WIT/0.2.10" --world-name "$WORLD" -o "$OUT")
  say "  note: serve js-fib.wasm with --max-requests 1 (StarlingMonkey's fetch event serves one request per instance)"
}

build_c() {
  local dir=$GUESTS/c-fib build=$GUESTS/c-fib/build
  [ -x "$TOOLS/wit-bindgen" ] && [ -x "$TOOLS/wasm-tools" ] || missing "wit-bindgen or wasm-tools (guests/c-fib/.tools)"
  command -v clang-$LLVM_VERSION >/dev/null 2>&1 || missing "clang-$LLVM_VERSION"
  mkdir -p "$build"
  OUT=$GUESTS/c-fib.wasm
  c_steps() {
    # 1. C bindings for the world: http_guest.{h,c} and the component type as an object file.
    # (Its "Generating ..." lines go to stderr; show them only when it fails.)
    local log
    log=$("$TOOLS/wit-bindgen" c "$WIT" --world "$WORLD" --out-dir "$build" 2>&1) || { echo "$log" >&2; return 1; }
    # 2. A WASI preview1 core module. A reactor (no main): the host calls the handler export.
    #    Debian's wasi-libc lives in /usr/{include,lib}/wasm32-wasi, hence --sysroot=/usr.
    clang-$LLVM_VERSION --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor \
      -O2 -Wall -Wextra -Wl,--strip-debug -I"$build" \
      -o "$build/c-fib.core.wasm" \
      "$dir/fibonacci.c" "$dir/handler.c" "$build/http_guest.c" "$build/http_guest_component_type.o"
    # 3. The component: libc's preview1 imports (stdio, here) are adapted to WASI 0.2 by the
    #    proxy adapter, so the component imports nothing outside wasi:http/proxy.
    cargo run --quiet --release --locked --manifest-path "$dir/adapter/Cargo.toml" -- \
      proxy "$build/wasi_snapshot_preview1.proxy.wasm"
    "$TOOLS/wasm-tools" component new "$build/c-fib.core.wasm" \
      --adapt "wasi_snapshot_preview1=$build/wasi_snapshot_preview1.proxy.wasm" -o "$OUT"
  }
  timed c_steps
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(python js c)
for t in "${targets[@]}"; do
  case $t in
    python | js | c) "build_$t" ;;
    *) die "unknown guest \`$t\`; expected python, js or c" ;;
  esac
done
