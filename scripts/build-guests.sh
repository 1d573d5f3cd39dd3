#!/usr/bin/env bash
# Builds the Rust Fibonacci guest into guests/fib.wasm (a build output, never committed).
set -euo pipefail
TAG=build
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release -p fib
cp guests/target/wasm32-wasip2/release/fib.wasm guests/fib.wasm
say "built guests/fib.wasm"
