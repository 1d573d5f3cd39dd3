# JavaScript: componentize-js (pinned in package.json and package-lock.json) bundles
# StarlingMonkey and app.js into the component. Its engine is built against WASI 0.2.10,
# hence wit/ at that version (fibhost serves any 0.2.x).
command -v node >/dev/null 2>&1 || die "node (20+) is missing; install Node.js with npm"
pin=$(node -p 'require("./package.json").devDependencies["@bytecodealliance/componentize-js"]')
COMPONENTIZE_JS=$(find_tool "$pin" --version node_modules/.bin/componentize-js componentize-js) || {
  say "installing componentize-js $pin into node_modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  COMPONENTIZE_JS=node_modules/.bin/componentize-js
}
"$COMPONENTIZE_JS" app.js --wit wit --world-name fibhost:guest/http-guest -o {{name}}.wasm
say "wrote {{name}}.wasm"
