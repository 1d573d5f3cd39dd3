#!/usr/bin/env bash
# Command 2: set up, build everything (every guest language included) and run every check:
# formatting, clippy on host and guests, unit tests and the end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
if [[ -x scripts/setup-guest-toolchains.sh ]]; then
    scripts/setup-guest-toolchains.sh
    scripts/build-lang-guests.sh
    export FIBHOST_REQUIRE_ALL_GUESTS=1
fi
scripts/build-guests.sh

echo "== cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path guests/Cargo.toml --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --manifest-path guests/Cargo.toml --target wasm32-wasip2 --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
