//! Builds the Rust test guests for `wasm32-wasip2` and exposes their paths as constants
//! (`FIB`, `TESTBED`, `TESTBED_V2`, `TESTBED_HANG`, `PROXY_STREAMING`, and the WASI 0.3 `P3_FIB`,
//! `P3_TESTBED`), so `cargo test` alone always runs against guests built from the current
//! sources.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for watched in [
        "guests/Cargo.toml",
        "guests/Cargo.lock",
        "guests/fib",
        "guests/testbed",
        "guests/proxy-streaming",
        "guests/p3-fib",
        "guests/p3-testbed",
        "crates/fibonacci",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let v1 = build(
        &root,
        &out.join("v1"),
        &[
            "-p",
            "fib",
            "-p",
            "testbed",
            "-p",
            "proxy-streaming",
            "-p",
            "p3-fib",
            "-p",
            "p3-testbed",
        ],
    );
    let v2 = build(
        &root,
        &out.join("v2"),
        &["-p", "testbed", "--features", "testbed/v2"],
    );
    // Copied out, then the same target directory (dependencies already built) builds the
    // variant whose start code never returns.
    let testbed_v2 = out.join("testbed-v2.wasm");
    std::fs::copy(v2.join("testbed.wasm"), &testbed_v2).unwrap();
    let hang = build(
        &root,
        &out.join("v2"),
        &["-p", "testbed", "--features", "testbed/hang-at-start"],
    );
    let testbed_hang = out.join("testbed-hang.wasm");
    std::fs::copy(hang.join("testbed.wasm"), &testbed_hang).unwrap();

    let mut consts = String::new();
    for (name, path) in [
        ("FIB", v1.join("fib.wasm")),
        ("TESTBED", v1.join("testbed.wasm")),
        ("PROXY_STREAMING", v1.join("proxy_streaming.wasm")),
        ("P3_FIB", v1.join("p3_fib.wasm")),
        ("P3_TESTBED", v1.join("p3_testbed.wasm")),
        ("TESTBED_V2", testbed_v2),
        ("TESTBED_HANG", testbed_hang),
    ] {
        assert!(
            path.exists(),
            "the guest build did not produce {}",
            path.display()
        );
        writeln!(
            consts,
            "/// Path of a built test guest.\npub const {name}: &str = {:?};",
            path.display().to_string()
        )
        .unwrap();
    }
    std::fs::write(out.join("guests.rs"), consts).unwrap();
}

/// Runs a nested `cargo build` of the guest workspace; returns the directory of the `.wasm`s.
fn build(root: &Path, target_dir: &Path, args: &[&str]) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(root.join("guests/Cargo.toml"))
    .arg("--target-dir")
    .arg(target_dir)
    .args(args);
    // The outer build's settings (flags, target dir, profile, jobserver) are for the host
    // target; the nested build must not inherit them.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTC"
            || key == "RUSTC_WRAPPER"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the test guests");
    assert!(
        status.success(),
        "building the test guests failed; is the wasm32-wasip2 target installed? \
         (`rustup target add wasm32-wasip2`, or run scripts/setup.sh)"
    );
    target_dir.join("wasm32-wasip2/release")
}
