#!/usr/bin/env bash
# Builds the Rust Fibonacci guest into guests/fib.wasm; with --p3 also its WASI 0.3 twin into
# guests/p3-fib.wasm (the benchmark's fibhost-p3 rows). Build outputs, never committed.
#   scripts/build-guests.sh [--p3]
# Command 1 needs only fib.wasm: the p3 guest's crates (wasip3, futures) are not built for it.
set -euo pipefail
TAG=build
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
packages=(-p fib)
[[ "${1:-}" == "--p3" ]] && packages+=(-p p3-fib)
# The guests' own target directory, whatever CARGO_TARGET_DIR says (it is for the host).
cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release "${packages[@]}" \
    --target-dir guests/target
cp guests/target/wasm32-wasip2/release/fib.wasm guests/fib.wasm
say "built guests/fib.wasm"
if [[ "${1:-}" == "--p3" ]]; then
    cp guests/target/wasm32-wasip2/release/p3_fib.wasm guests/p3-fib.wasm
    say "built guests/p3-fib.wasm"
fi
