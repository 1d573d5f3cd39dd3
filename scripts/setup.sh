#!/usr/bin/env bash
# Installs what building and serving fibhost needs beyond the Rust toolchain. Idempotent; runs
# as root or, for the apt steps, through sudo.
#   scripts/setup.sh          the wasm32-wasip2 target (enough to build and serve)
#   scripts/setup.sh --test   also the tools the test suites drive (curl, nginx, prometheus,
#                             systemd-socket-activate, uwsgitop, prometheus_client)
set -euo pipefail
TAG=setup
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

need cargo "install Rust with rustup (https://rustup.rs)"
need rustup "fibhost adds the wasm32-wasip2 target with rustup (https://rustup.rs)"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

if [[ "${1:-}" == "--test" ]]; then
    # fmt and clippy are part of the test command; a toolchain without them cannot run it.
    for component in rustfmt clippy; do
        rustup component list --installed | grep -q "^$component" || rustup component add "$component"
    done
    # prometheus: a real server scrapes fibhost (and promtool checks both exposition formats);
    # systemd: `systemd-socket-activate` hands fibhost its sockets as the service manager does.
    apt_install curl nginx prometheus systemd
    # uwsgitop (PyPI) reads fibhost's uWSGI-compatible stats socket in the ops tests.
    if [[ ! -x .venv-tools/bin/uwsgitop ]]; then
        say "installing uwsgitop into .venv-tools"
        pip_install .venv-tools uwsgitop==0.12
    fi
    # prometheus_client (PyPI): an independent parser of the classic text format in the ops tests.
    if [[ ! -x .venv-tools/bin/python ]] || ! .venv-tools/bin/python -c 'import prometheus_client' 2>/dev/null; then
        say "installing prometheus_client into .venv-tools"
        pip_install .venv-tools prometheus_client==0.21.1
    fi
fi
