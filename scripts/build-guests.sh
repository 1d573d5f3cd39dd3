#!/usr/bin/env bash
# Builds the Rust Fibonacci guest into guests/fib.wasm (a build output, never committed).
set -euo pipefail
TAG=build
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# The guests' own target directory, whatever CARGO_TARGET_DIR says (it is for the host).
cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release -p fib \
    --target-dir guests/target
cp guests/target/wasm32-wasip2/release/fib.wasm guests/fib.wasm
say "built guests/fib.wasm"
