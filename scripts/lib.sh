# Shared by fibhost's shell scripts: `source "$(dirname "$0")/lib.sh"` (or ../scripts/lib.sh).
# Each script sets TAG (the prefix of its messages) before sourcing, e.g. TAG=setup.

: "${TAG:=fibhost}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '[%s] %s\n' "$TAG" "$*"; }
die() { printf '[%s] error: %s\n' "$TAG" "$*" >&2; exit 1; }
# need CMD HINT: fails with HINT when CMD is not on PATH.
need() { command -v "$1" >/dev/null 2>&1 || die "\`$1\` not found; $2"; }

# Runs a command as root: directly when we are root, else through sudo. DEBIAN_FRONTEND is
# passed through `env` because sudo resets the environment.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    env DEBIAN_FRONTEND=noninteractive "$@"
  else
    command -v sudo >/dev/null 2>&1 || die "\`$*\` needs root; run as root or install sudo"
    sudo env DEBIAN_FRONTEND=noninteractive "$@"
  fi
}

# apt_install PKG…: installs the Debian packages that are not installed yet (one update).
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || die "${missing[*]} missing and this is not a Debian system; install them"
  say "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# venv DIR: makes a Python virtualenv at DIR (installing Debian's python3-venv if needed).
venv() {
  local dir=$1
  [ -x "$dir/bin/pip" ] && return 0
  rm -rf "$dir"
  if ! python3 -m venv "$dir" >/dev/null 2>&1; then
    rm -rf "$dir"
    apt_install python3-venv
    python3 -m venv "$dir"
  fi
}

# pip_install DIR ARG…: `pip install ARG…` into the virtualenv DIR (made on first use).
pip_install() {
  local dir=$1
  shift
  venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
}
