#!/usr/bin/env bash
# Installs the toolchains of the Python, JavaScript and C guests (and the Rust guests' wasm
# target), from package registries only: PyPI, npm, crates.io and Debian's apt.
#
#   scripts/setup-guest-toolchains.sh
#
# Idempotent: each step checks what is already installed and skips it, so a second run takes
# a few seconds. Needs: cargo/rustup, python3 (3.11+) with venv and pip, node 20+ with npm, and
# on Debian root (or sudo) for the apt step when clang is missing.
#
# Where things go (all but the apt packages inside the repository, ignored by git):
#   guests/python-fib/.venv/        componentize-py (pinned in guests/python-fib/requirements.txt)
#   guests/js-fib/node_modules/     componentize-js (pinned in package.json + package-lock.json)
#   guests/c-fib/.tools/bin/        wasm-tools, wit-bindgen (cargo install --locked, pinned below)
#   guests/c-fib/adapter/target/    the program that writes the preview1 adapter (Cargo.lock)
#   /usr (apt)                      clang-19, lld-19, wasi-libc, compiler-rt builtins for wasm32
# Then build with scripts/build-lang-guests.sh.
set -euo pipefail

WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
# The C guest's compiler, from Debian: clang 19 and its wasm32 compiler-rt builtins are in
# Debian 12's main archive, and it is the version the build was tested with.
LLVM_VERSION=19
APT_PACKAGES=(clang-$LLVM_VERSION lld-$LLVM_VERSION wasi-libc libclang-rt-$LLVM_VERSION-dev-wasm32)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY_DIR=$ROOT/guests/python-fib
JS_DIR=$ROOT/guests/js-fib
C_DIR=$ROOT/guests/c-fib
TOOLS=$C_DIR/.tools

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "\`$1\` not found; $2"; }
# Runs a package manager command as root: directly, or through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    env DEBIAN_FRONTEND=noninteractive "$@"
  else
    command -v sudo >/dev/null 2>&1 || die "\`$*\` needs root; run this script as root"
    sudo env DEBIAN_FRONTEND=noninteractive "$@"
  fi
}

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
  command -v apt-get >/dev/null 2>&1 \
    || die "clang-$LLVM_VERSION with wasi-libc is missing and this is not a Debian system; install ${APT_PACKAGES[*]} or their equivalents"
  say "c: apt-get install ${APT_PACKAGES[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
  c_ready || die "apt installed ${APT_PACKAGES[*]} but the wasm32 toolchain is still incomplete"
fi

# --- C: wasm-tools and wit-bindgen from crates.io ----------------------------------------------
# $1 crate, $2 version, $3 binary, then extra `cargo install` flags.
cargo_tool() {
  local crate=$1 version=$2 bin=$3
  shift 3
  if [ "$("$TOOLS/bin/$bin" --version 2>/dev/null | awk '{print $2}')" = "$version" ]; then
    say "c: $bin $version already in ${TOOLS#"$ROOT"/}/bin"
  else
    say "c: cargo install $crate@$version (a few minutes)"
    cargo install --quiet --locked --force --root "$TOOLS" "$@" "$crate@$version"
  fi
}
cargo_tool wasm-tools "$WASM_TOOLS_VERSION" wasm-tools
# Only the C generator: the default features build generators for eight languages.
cargo_tool wit-bindgen-cli "$WIT_BINDGEN_VERSION" wit-bindgen --no-default-features --features c

# --- C: the preview1 adapter (the crate wasi-preview1-component-adapter-provider) -------------
say "c: building the adapter writer (guests/c-fib/adapter)"
cargo build --quiet --release --locked --manifest-path "$C_DIR/adapter/Cargo.toml"

# --- Python: componentize-py in a virtualenv --------------------------------------------------
py_pin=$(grep -i '^componentize-py==' "$PY_DIR/requirements.txt" | cut -d= -f3)
if [ "$("$PY_DIR/.venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')" = "$py_pin" ]; then
  say "python: componentize-py $py_pin already in guests/python-fib/.venv"
else
  say "python: installing componentize-py $py_pin into guests/python-fib/.venv"
  if [ ! -x "$PY_DIR/.venv/bin/pip" ]; then
    rm -rf "$PY_DIR/.venv"
    if ! python3 -m venv "$PY_DIR/.venv" 2>/dev/null; then
      # Debian splits venv (with ensurepip) out of python3.
      rm -rf "$PY_DIR/.venv"
      command -v apt-get >/dev/null 2>&1 || die "python3 -m venv failed; install Python's venv module"
      say "python: apt-get install python3-venv"
      as_root apt-get update -qq
      as_root apt-get install -y -qq --no-install-recommends python3-venv
      python3 -m venv "$PY_DIR/.venv"
    fi
  fi
  "$PY_DIR/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$PY_DIR/requirements.txt"
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
