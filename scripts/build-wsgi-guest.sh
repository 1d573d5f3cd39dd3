#!/usr/bin/env bash
# Builds a WSGI application, unchanged, into a wasi:http component that fibhost serves:
#
#   scripts/build-wsgi-guest.sh MODULE:CALLABLE --app-dir DIR [--requirements FILE] -o OUT.wasm
#
#   MODULE:CALLABLE    the PEP 3333 callable, e.g. app:app (module app.py in DIR, object app)
#   --app-dir DIR      the application's directory, bundled as it is (on the module path)
#   --requirements F   a pip requirements file (default: DIR/requirements.txt when it exists)
#   -o OUT.wasm        the component to write
#
# Everything it installs goes to .cache/wsgi/ in the repository (ignored by git):
#   .cache/wsgi/componentize-py-$VERSION/   a venv with the pinned componentize-py
#   .cache/wsgi/deps/<hash>/site-packages/  the requirements, keyed by the hash of the file
#                                           (and the target interpreter), reused by later builds
# The requirements are installed as wheels for the interpreter componentize-py embeds
# (CPython 3.14): pure-Python wheels run as they are. A package that publishes only wheels with
# compiled extensions is installed, its compiled files removed (they cannot load in
# WebAssembly), and the build says so; if the application still imports (MarkupSafe, Flask's
# dependency, falls back to pure Python), fine, otherwise the build fails naming the package.
#
# The bundle is the bridge guests/wsgi/fibhost_wsgi.py, a generated entry module, DIR and the
# requirements. componentize-py imports the entry module at build time and snapshots the
# interpreter, so the application and everything it imports at top level are already loaded
# when an instance starts.
set -euo pipefail

TAG=wsgi
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COMPONENTIZE_PY_VERSION=0.25.1
# The interpreter inside componentize-py 0.25.1's components, for choosing wheels.
PY_VERSION=3.14
WHEEL_PLATFORM=manylinux2014_x86_64
WIT=$ROOT/wit
WORLD=fibhost:guest/http-guest
CACHE=$ROOT/.cache/wsgi

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

target= app_dir= requirements= out=
while (($#)); do
  case $1 in
    --app-dir) app_dir=${2:?--app-dir needs a directory}; shift ;;
    --requirements) requirements=${2:?--requirements needs a file}; shift ;;
    -o | --output) out=${2:?-o needs a file name}; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option \`$1\`; see --help" ;;
    *)
      [ -z "$target" ] || die "one MODULE:CALLABLE only (got \`$target\` and \`$1\`)"
      target=$1 ;;
  esac
  shift
done
[[ $target =~ ^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$ ]] \
  || die "expected MODULE:CALLABLE (e.g. app:app) as the first argument; see --help"
[ -n "$app_dir" ] || die "--app-dir DIR is required"
[ -d "$app_dir" ] || die "--app-dir \`$app_dir\` is not a directory"
[ -n "$out" ] || die "-o OUT.wasm is required"
app_dir=$(cd "$app_dir" && pwd)
module=${target%%:*}
module_file=$app_dir/${module//.//}
[ -f "$module_file.py" ] || [ -f "$module_file/__init__.py" ] \
  || die "no module \`$module\` in $app_dir (looked for ${module_file#"$app_dir"/}.py)"
if [ -z "$requirements" ] && [ -f "$app_dir/requirements.txt" ]; then
  requirements=$app_dir/requirements.txt
fi
[ -z "$requirements" ] || [ -f "$requirements" ] || die "--requirements \`$requirements\` does not exist"
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

need python3 "install Python 3.11+ with the venv module"

# --- componentize-py -------------------------------------------------------------------------
tools=$CACHE/componentize-py-$COMPONENTIZE_PY_VERSION
if [ ! -x "$tools/bin/componentize-py" ]; then
  say "installing componentize-py==$COMPONENTIZE_PY_VERSION into ${tools#"$ROOT"/}"
  pip_install "$tools" "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# --- the requirements ------------------------------------------------------------------------
deps=
if [ -n "$requirements" ]; then
  key=$( (cat "$requirements"; echo "python=$PY_VERSION platform=$WHEEL_PLATFORM layout=1") | sha256sum | cut -c1-16)
  deps=$CACHE/deps/$key
  if [ ! -f "$deps/complete" ]; then
    say "installing ${requirements#"$ROOT"/} for CPython $PY_VERSION (wheels only) into ${deps#"$ROOT"/}"
    rm -rf "$deps"
    mkdir -p "$deps"
    log=$deps/pip.log
    if ! "$tools/bin/pip" install --quiet --disable-pip-version-check --no-compile \
      --target "$deps/site-packages" --only-binary=:all: \
      --implementation cp --python-version "$PY_VERSION" --abi "cp${PY_VERSION/./}" \
      --platform "$WHEEL_PLATFORM" -r "$requirements" >"$log" 2>&1; then
      cat "$log" >&2
      missing=$(sed -n 's/.*No matching distribution found for \([A-Za-z0-9_.-]*\).*/\1/p' "$log" | head -n 1)
      if [ -n "$missing" ]; then
        # Tell a package with only compiled wheels for other interpreters from one that
        # publishes no wheel at all.
        if "$tools/bin/pip" download --quiet --no-deps --only-binary=:all: -d "$deps/probe" "$missing" >/dev/null 2>&1; then
          die "requirement \`$missing\` has a native extension and no pure-Python wheel (none for CPython $PY_VERSION either); it cannot run in WebAssembly unless a wasi wheel exists"
        fi
        die "requirement \`$missing\` has no wheel on PyPI (a source distribution only, or no such package): build a pure-Python wheel of it and list its path in the requirements"
      fi
      die "pip could not install ${requirements} (its output is above)"
    fi
    # Compiled extension modules cannot load in WebAssembly: remove them, and remember which
    # distribution shipped them, to name it if the application fails to import without them.
    : >"$deps/native.tsv"
    for record in "$deps"/site-packages/*.dist-info/RECORD; do
      [ -f "$record" ] || continue
      dist=$(basename "$(dirname "$record")" .dist-info)
      dist=${dist%-*}
      while IFS= read -r file; do
        rm -f "$deps/site-packages/$file"
        mod=${file%%.cpython-*}
        mod=${mod%%.abi3.so}
        mod=${mod%.so}
        printf '%s\t%s\n' "$dist" "${mod//\//.}" >>"$deps/native.tsv"
      done < <(cut -d, -f1 "$record" | grep -E '\.(so|pyd)$' || true)
    done
    touch "$deps/complete"
  fi
  while IFS=$'\t' read -r dist mod; do
    say "note: $dist ships a native extension ($mod), removed: it must fall back to pure Python"
  done <"$deps/native.tsv"
fi

# --- the bundle ------------------------------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/fibhost-wsgi.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp "$ROOT/guests/wsgi/fibhost_wsgi.py" "$stage/"
cat >"$stage/fibhost_wsgi_entry.py" <<EOF
# Generated by scripts/build-wsgi-guest.sh: the component's entry module.
import fibhost_wsgi

fibhost_wsgi.load("$target")

from fibhost_wsgi import IncomingHandler  # noqa: E402,F401  (componentize-py looks it up here)
EOF
paths=(-p "$stage" -p "$app_dir")
[ -z "$deps" ] || paths+=(-p "$deps/site-packages")

say "componentize-py: $target from ${app_dir#"$ROOT"/} -> ${out#"$ROOT"/}"
start=$(date +%s%N)
build_log=$stage/componentize.log
# VIRTUAL_ENV points at the stage (no site-packages there): componentize-py would otherwise
# add the site-packages of whatever Python it finds to the bundle.
if ! (cd "$stage" && VIRTUAL_ENV=$stage PIPENV_ACTIVE= "$tools/bin/componentize-py" -d "$WIT" -w "$WORLD" \
  componentize fibhost_wsgi_entry "${paths[@]}" -o "$out") >"$build_log" 2>&1; then
  # The Python traceback says what failed; componentize-py's Rust backtrace after it does not.
  sed -e '/^Stack backtrace:/,$d' -e '/^warning: site-packages directory not found/d' "$build_log" >&2
  if [ -n "$deps" ]; then
    while IFS=$'\t' read -r dist mod; do
      if grep -qE "No module named '${mod//./\\.}'|cannot import name .* from '${mod%.*}'|${mod//./\\.}" "$build_log"; then
        die "\`$dist\` has a native extension and no pure-Python wheel: its compiled module $mod cannot load in WebAssembly, and the application needs it"
      fi
    done <"$deps/native.tsv"
  fi
  die "componentize-py failed to build $target (its output is above)"
fi
ms=$((($(date +%s%N) - start) / 1000000))
say "built ${out#"$ROOT"/}: $(stat -c %s "$out") bytes in $((ms / 1000)).$((ms % 1000 / 100)) s"
