//! `write-adapter <reactor|proxy> <out.wasm>`: writes the chosen preview1 adapter module.
//!
//! `reactor` adapts every preview1 call (files, environment, exit…) to WASI 0.2 imports;
//! `proxy` adapts only what `wasi:http/proxy` has (stdio, clocks, random) and makes the rest
//! fail, so the component imports nothing outside the proxy world.

use std::process::ExitCode;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let adapter = match args.first().map(String::as_str) {
        Some("reactor") => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        Some("proxy") => WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        _ => {
            eprintln!("usage: write-adapter <reactor|proxy> <out.wasm>");
            return ExitCode::from(2);
        }
    };
    let Some(out) = args.get(1) else {
        eprintln!("usage: write-adapter <reactor|proxy> <out.wasm>");
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::write(out, adapter) {
        eprintln!("error: cannot write `{out}`: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
