#!/usr/bin/env bash
# Builds the Rust Fibonacci guest into guests/fib.wasm (a build output, never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release -p fib
cp guests/target/wasm32-wasip2/release/fib.wasm guests/fib.wasm
echo "built guests/fib.wasm"
