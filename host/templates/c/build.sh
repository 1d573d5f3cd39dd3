# C: wit-bindgen generates the bindings of wit/ into build/; clang-19 with wasi-libc (Debian)
# compiles src/*.c into a WASI preview1 reactor module; wasm-tools wraps it into a component,
# adapting its preview1 imports (stdio) to WASI 0.2 with the proxy adapter in adapter/.
LLVM_VERSION=19
WIT_BINDGEN_VERSION=0.63.0

CLANG=clang-$LLVM_VERSION
c_ready() {
  command -v "$CLANG" >/dev/null 2>&1 &&
    [ -x /usr/lib/llvm-$LLVM_VERSION/bin/wasm-ld ] &&
    [ -f /usr/lib/wasm32-wasi/libc.a ] &&
    [ -f /usr/lib/llvm-$LLVM_VERSION/lib/clang/$LLVM_VERSION/lib/wasi/libclang_rt.builtins-wasm32.a ]
}
if ! c_ready; then
  packages=(clang-$LLVM_VERSION lld-$LLVM_VERSION wasi-libc libclang-rt-$LLVM_VERSION-dev-wasm32)
  command -v apt-get >/dev/null 2>&1 || die "clang $LLVM_VERSION with wasi-libc is missing; install ${packages[*]} (Debian/Ubuntu names)"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  say "installing ${packages[*]} (apt)"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${packages[@]}"
  c_ready || die "apt installed ${packages[*]}, but the wasm32 toolchain is still incomplete"
fi

WIT_BINDGEN=$(find_tool "$WIT_BINDGEN_VERSION" --version .tools/bin/wit-bindgen wit-bindgen) || {
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to install wit-bindgen; install Rust with rustup (https://rustup.rs)"
  say "installing wit-bindgen-cli $WIT_BINDGEN_VERSION into .tools (cargo install, C generator only; a few minutes)"
  cargo install --quiet --locked --force --root .tools --no-default-features --features c \
    "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
  WIT_BINDGEN=.tools/bin/wit-bindgen
}

mkdir -p build
# 1. Bindings: build/http_guest.{h,c} and the component type as an object file.
log=$("$WIT_BINDGEN" c wit --world fibhost:guest/http-guest --out-dir build 2>&1) || die "wit-bindgen failed: $log"
# 2. A preview1 reactor module (no main: the host calls the handler). Debian's wasi-libc lives
#    in /usr/{include,lib}/wasm32-wasi, hence --sysroot=/usr.
"$CLANG" --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra \
  -Wl,--strip-debug -Ibuild -Isrc -o build/{{name}}.core.wasm \
  src/*.c build/http_guest.c build/http_guest_component_type.o
# 3. The component.
"$WASM_TOOLS" component new build/{{name}}.core.wasm \
  --adapt wasi_snapshot_preview1=adapter/wasi_snapshot_preview1.proxy.wasm -o {{name}}.wasm
say "wrote {{name}}.wasm"
