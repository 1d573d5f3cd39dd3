# Zig: a freestanding wasm32 module (no libc, no WASI preview1, so no adapter) with fibhost's
# glue file wasi_http.zig, wrapped by wasm-tools into a component with the WIT of wit/.
ZIG_VERSION=0.17.1
ZIG=$(find_tool "$ZIG_VERSION" version .tools/venv/bin/python-zig zig python-zig) || {
  pip_tools "ziglang==$ZIG_VERSION"
  ZIG=.tools/venv/bin/python-zig
}

mkdir -p build
# 1. The module; -rdynamic exports the handler and cabi_realloc.
"$ZIG" build-exe -target wasm32-freestanding -fno-entry -rdynamic -O ReleaseSmall \
  -femit-bin=build/{{name}}.core.wasm --cache-dir .zig-cache \
  --dep wasi_http -Mroot=main.zig -Mwasi_http=wasi_http.zig
# 2. The component type of the world, embedded; 3. the component.
"$WASM_TOOLS" component embed wit --world fibhost:guest/http-guest build/{{name}}.core.wasm -o build/{{name}}.embed.wasm
"$WASM_TOOLS" component new build/{{name}}.embed.wasm -o {{name}}.wasm
say "wrote {{name}}.wasm"
