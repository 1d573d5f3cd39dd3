# Rust: cargo builds the component directly for wasm32-wasip2 (no adapter, no wasm-tools);
# Cargo.lock pins the crates.
command -v cargo >/dev/null 2>&1 || die "cargo is missing; install Rust with rustup (https://rustup.rs)"
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  say "adding the wasm32-wasip2 target (rustup)"
  rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
say "wrote {{name}}.wasm"
