#!/usr/bin/env bash
# Builds the Rust Fibonacci guest into guests/fib.wasm; with --p3 also its WASI 0.3 twin into
# guests/p3-fib.wasm (the benchmark's fibhost-p3 rows); with --proxy-streaming also the test
# guest with wasmtime's `api_proxy_streaming` behaviour into guests/proxy-streaming.wasm (to
# try by hand: it fetches only what `--allow-outbound` grants). Build outputs, never committed.
#   scripts/build-guests.sh [--p3] [--proxy-streaming]
# Command 1 needs only fib.wasm: the other guests' crates (wasip3, futures, sha2) are not
# built for it. The test suites build their guests themselves (tests/build.rs).
set -euo pipefail
TAG=build
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
packages=(-p fib)
outputs=(fib:fib)
for arg in "$@"; do
    case "$arg" in
        --p3) packages+=(-p p3-fib) outputs+=(p3_fib:p3-fib) ;;
        --proxy-streaming) packages+=(-p proxy-streaming) outputs+=(proxy_streaming:proxy-streaming) ;;
        *) die "unknown option \`$arg\`; usage: scripts/build-guests.sh [--p3] [--proxy-streaming]" ;;
    esac
done
# The guests' own target directory, whatever CARGO_TARGET_DIR says (it is for the host).
cargo build --manifest-path guests/Cargo.toml --target wasm32-wasip2 --release "${packages[@]}" \
    --target-dir guests/target
for output in "${outputs[@]}"; do
    cp "guests/target/wasm32-wasip2/release/${output%%:*}.wasm" "guests/${output#*:}.wasm"
    say "built guests/${output#*:}.wasm"
done
