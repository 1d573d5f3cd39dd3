#!/usr/bin/env bash
# Command 1: set up, build guest and host in release, and serve the Fibonacci API.
# Extra arguments go to fibhost, e.g. `scripts/serve.sh --listen 0.0.0.0:8080`.
set -euo pipefail
TAG=serve
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
scripts/setup.sh
scripts/build-guests.sh
cargo build --release -p fibhost
exec target/release/fibhost --component guests/fib.wasm --workers 4 "$@"
