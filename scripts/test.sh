#!/usr/bin/env bash
# Command 2: set up, build everything (every guest language included) and run every check:
# formatting, clippy on host and guests, unit tests and the end-to-end suites.
set -euo pipefail
TAG=test
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
scripts/setup.sh --test
scripts/setup-guest-toolchains.sh
scripts/build-lang-guests.sh
# Every guest language must be built and pass: a missing one fails the suite, never skips.
export FIBHOST_REQUIRE_ALL_GUESTS=1
scripts/build-guests.sh
# The WSGI examples (the article's Flask app and the bridge's test app) and uWSGI to compare.
scripts/build-wsgi-examples.sh

say "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path guests/Cargo.toml --all --check
say "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --manifest-path guests/Cargo.toml --target wasm32-wasip2 --all-targets -- -D warnings
say "cargo test"
cargo test --workspace
