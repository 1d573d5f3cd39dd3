#!/usr/bin/env bash
# Builds the Python, JavaScript, C, Go and Zig Fibonacci guests as wasi:http/proxy components:
#
#   scripts/build-lang-guests.sh [python] [js] [c] [go] [zig]     (no argument: all of them)
#
# writes guests/<lang>-fib.wasm for each, and prints each build's time and size. Install the
# toolchains first with scripts/setup-guest-toolchains.sh. guests/README.md explains each step.
set -euo pipefail
TAG=build
source "$(dirname "$0")/lib.sh"

GUESTS=$ROOT/guests
WIT=$ROOT/wit
# The world every guest is built against (wit/world.wit).
WORLD=fibhost:guest/http-guest
LLVM_VERSION=19
C_TOOLS=$GUESTS/c-fib/.tools/bin       # wit-bindgen
TOOLS_VENV=$GUESTS/.tools/venv         # go, zig and wasm-tools, from PyPI
WASM_TOOLS=$TOOLS_VENV/bin/wasm-tools
ADAPTER=$GUESTS/c-fib/adapter/Cargo.toml

missing() { die "$1 is missing; run scripts/setup-guest-toolchains.sh"; }

# timed OUT CMD…: runs CMD and reports how long it took and how large OUT came out.
timed() {
  local out=$1 start ms
  shift
  start=$(date +%s%N)
  "$@"
  ms=$((($(date +%s%N) - start) / 1000000))
  say "$(printf '%-24s %4d.%d s  %9s bytes' "${out#"$ROOT"/}" $((ms / 1000)) $((ms % 1000 / 100)) "$(stat -c %s "$out")")"
}

# adapter KIND OUT: writes the preview1 adapter KIND (proxy or reactor) to OUT.
adapter() {
  cargo run --quiet --release --locked --manifest-path "$ADAPTER" -- "$1" "$2"
}

need_wasm_tools() { [ -x "$WASM_TOOLS" ] || missing "wasm-tools (guests/.tools/venv)"; }

build_python() {
  local dir=$GUESTS/python-fib out=$GUESTS/python-fib.wasm
  [ -x "$dir/.venv/bin/componentize-py" ] || missing "componentize-py (guests/python-fib/.venv)"
  # componentize-py finds the module `app` in the current directory and its class
  # `IncomingHandler`; it generates the `wit_world` bindings package on the fly.
  # (It prints "Component built successfully" on stdout; the size line below says as much.)
  py_steps() { .venv/bin/componentize-py -d "$WIT" -w "$WORLD" componentize app -o "$out" >/dev/null; }
  (cd "$dir" && timed "$out" py_steps)
}

build_js() {
  local dir=$GUESTS/js-fib out=$GUESTS/js-fib.wasm
  local engine=$dir/node_modules/@bytecodealliance/componentize-js/lib/starlingmonkey_embedding.wasm
  [ -x "$dir/node_modules/.bin/componentize-js" ] || missing "componentize-js (guests/js-fib/node_modules)"
  # StarlingMonkey is compiled against one WASI version and can only be built against a WIT of
  # that version: wit/0.2.10/ matches componentize-js 0.23.0. Say so plainly if an upgrade
  # changed it, rather than fail later with "failed to find export of interface".
  grep -q 'wasi:http/incoming-handler@0.2.10' "$engine" \
    || die "the StarlingMonkey engine in node_modules does not export wasi:http/incoming-handler@0.2.10; extract its WIT into wit/<version>/ as wit/0.2.10/world.wit describes, and point this script at it"
  (cd "$dir" && timed "$out" node_modules/.bin/componentize-js app.js --wit "$WIT/0.2.10" --world-name "$WORLD" -o "$out")
  say "  note: StarlingMonkey serves one request per instance; fibhost recognises it and gives each request a fresh instance"
}

build_c() {
  local dir=$GUESTS/c-fib build=$GUESTS/c-fib/build out=$GUESTS/c-fib.wasm
  [ -x "$C_TOOLS/wit-bindgen" ] || missing "wit-bindgen (guests/c-fib/.tools)"
  need_wasm_tools
  command -v clang-$LLVM_VERSION >/dev/null 2>&1 || missing "clang-$LLVM_VERSION"
  mkdir -p "$build"
  c_steps() {
    # 1. C bindings for the world: http_guest.{h,c} and the component type as an object file.
    # (Its "Generating ..." lines go to stderr; show them only when it fails.)
    local log
    log=$("$C_TOOLS/wit-bindgen" c "$WIT" --world "$WORLD" --out-dir "$build" 2>&1) || { echo "$log" >&2; return 1; }
    # 2. A WASI preview1 core module. A reactor (no main): the host calls the handler export.
    #    Debian's wasi-libc lives in /usr/{include,lib}/wasm32-wasi, hence --sysroot=/usr.
    clang-$LLVM_VERSION --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor \
      -O2 -Wall -Wextra -Wl,--strip-debug -I"$build" \
      -o "$build/c-fib.core.wasm" \
      "$dir/fibonacci.c" "$dir/handler.c" "$build/http_guest.c" "$build/http_guest_component_type.o"
    # 3. The component: libc's preview1 imports (stdio, here) are adapted to WASI 0.2 by the
    #    proxy adapter, so the component imports nothing outside wasi:http/proxy.
    adapter proxy "$build/wasi_snapshot_preview1.proxy.wasm"
    "$WASM_TOOLS" component new "$build/c-fib.core.wasm" \
      --adapt "wasi_snapshot_preview1=$build/wasi_snapshot_preview1.proxy.wasm" -o "$out"
  }
  timed "$out" c_steps
}

build_go() {
  local dir=$GUESTS/go-fib build=$GUESTS/go-fib/build out=$GUESTS/go-fib.wasm
  [ -x "$TOOLS_VENV/bin/go" ] || missing "go (guests/.tools/venv)"
  need_wasm_tools
  mkdir -p "$build"
  go_steps() {
    # 1. A wasip1 reactor module (c-shared: _initialize, no main). The glue package
    #    guests/go/wasihttp (a `replace` in go.mod, nothing fetched) exports the handler and a
    #    cabi_realloc that takes memory from the runtime's break through go:linkname, which
    #    the linker allows only with -checklinkname=0.
    (cd "$dir" && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local GOTELEMETRY=off \
      GOCACHE="$GUESTS/.tools/go-cache" GOPATH="$GUESTS/.tools/gopath" \
      "$TOOLS_VENV/bin/go" build -buildmode=c-shared -trimpath -ldflags='-checklinkname=0 -s -w' \
      -o "$build/go-fib.core.wasm" .)
    # 2. The component type of the world, embedded in the module (a custom section).
    "$WASM_TOOLS" component embed "$WIT" --world "$WORLD" "$build/go-fib.core.wasm" -o "$build/go-fib.embed.wasm"
    # 3. The component: the Go runtime's preview1 imports (clocks, random, environment, stdio)
    #    are adapted to WASI 0.2 by the reactor adapter.
    adapter reactor "$build/wasi_snapshot_preview1.reactor.wasm"
    "$WASM_TOOLS" component new "$build/go-fib.embed.wasm" \
      --adapt "wasi_snapshot_preview1=$build/wasi_snapshot_preview1.reactor.wasm" -o "$out"
  }
  timed "$out" go_steps
}

build_zig() {
  local dir=$GUESTS/zig-fib build=$GUESTS/zig-fib/build out=$GUESTS/zig-fib.wasm
  "$TOOLS_VENV/bin/python" -c "import ziglang" 2>/dev/null \
    || missing "zig (guests/.tools/venv)"
  need_wasm_tools
  mkdir -p "$build"
  zig_steps() {
    # 1. A freestanding wasm32 module: no libc, no WASI preview1, so no adapter. The glue
    #    file guests/zig/wasi_http.zig is the module `wasi_http`.
    (cd "$build" && "$TOOLS_VENV/bin/python" -m ziglang build-exe -target wasm32-freestanding \
      -fno-entry -rdynamic -O ReleaseSmall --name zig-fib.core \
      --cache-dir "$GUESTS/.tools/zig-cache" --global-cache-dir "$GUESTS/.tools/zig-global-cache" \
      --dep wasi_http -Mroot="$dir/main.zig" -Mwasi_http="$GUESTS/zig/wasi_http.zig")
    # 2. The component type, embedded; 3. the component.
    "$WASM_TOOLS" component embed "$WIT" --world "$WORLD" "$build/zig-fib.core.wasm" -o "$build/zig-fib.embed.wasm"
    "$WASM_TOOLS" component new "$build/zig-fib.embed.wasm" -o "$out"
  }
  timed "$out" zig_steps
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(python js c go zig)
for t in "${targets[@]}"; do
  case $t in
    python | js | c | go | zig) "build_$t" ;;
    *) die "unknown guest \`$t\`; expected python, js, c, go or zig" ;;
  esac
done
