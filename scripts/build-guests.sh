#!/usr/bin/env bash
# Builds the Rust Fibonacci guest into guests/fib.wasm, and its WASI 0.3 twin into
# guests/p3-fib.wasm (build outputs, never committed).
set -euo pipefail
TAG=build
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# The guests' own target directory, whatever CARGO_TARGET_DIR says (it is for the host).
cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release -p fib -p p3-fib \
    --target-dir guests/target
cp guests/target/wasm32-wasip2/release/fib.wasm guests/fib.wasm
# The same API as a WASI 0.3 component (the benchmark's fibhost-p3 rows).
cp guests/target/wasm32-wasip2/release/p3_fib.wasm guests/p3-fib.wasm
say "built guests/fib.wasm and guests/p3-fib.wasm"
