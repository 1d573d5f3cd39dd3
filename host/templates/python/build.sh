# Python: componentize-py (pinned in requirements.txt) bundles CPython and app.py into the
# component; it generates the `wit_world` bindings from wit/ as it goes.
pin=$(sed -n 's/^componentize-py==//p' requirements.txt)
COMPONENTIZE_PY=$(find_tool "$pin" --version .venv/bin/componentize-py componentize-py) || {
  command -v python3 >/dev/null 2>&1 || die "python3 (3.10+, with venv and pip) is needed to install componentize-py"
  say "installing componentize-py $pin into .venv (PyPI)"
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  COMPONENTIZE_PY=.venv/bin/componentize-py
}
"$COMPONENTIZE_PY" -d wit -w fibhost:guest/http-guest componentize app -o {{name}}.wasm >/dev/null
say "wrote {{name}}.wasm"
