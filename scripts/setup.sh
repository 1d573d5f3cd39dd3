#!/usr/bin/env bash
# Installs what building and serving fibhost needs beyond the Rust toolchain. Idempotent.
#   scripts/setup.sh          the wasm32-wasip2 target (enough to build and serve)
#   scripts/setup.sh --test   also the tools the test suites drive (curl, nginx, …)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

if [[ "${1:-}" == "--test" ]]; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
    missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    if ((${#missing[@]})); then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # uwsgitop (PyPI) reads fibhost's uWSGI-compatible stats socket in the ops tests.
    if [[ ! -x .venv-tools/bin/uwsgitop ]]; then
        echo "setup: installing uwsgitop into .venv-tools"
        if ! python3 -m venv .venv-tools >/dev/null 2>&1; then
            # Debian's own python3 keeps venv in a separate package.
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
            python3 -m venv .venv-tools
        fi
        .venv-tools/bin/pip install --quiet --disable-pip-version-check uwsgitop==0.12
    fi
fi
