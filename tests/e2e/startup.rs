//! Startup failures: each is a clear message and a non-zero exit, before any port is bound.

use std::io::Write as _;

use crate::{fails, fibhost};
use fibhost_e2e::{Server, guests};

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = fibhost_e2e::temp_dir("startup").join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(contents)
        .unwrap();
    path
}

#[test]
fn missing_component_file() {
    let out = fails(&["--component", "/nonexistent/fib.wasm"]);
    assert!(
        out.contains("cannot read component `/nonexistent/fib.wasm`"),
        "{out}"
    );
}

#[test]
fn files_that_are_not_http_components() {
    let text = temp_file("text.wasm", b"hello, I am not wasm");
    let out = fails(&["--component", text.to_str().unwrap()]);
    assert!(out.contains("is not a WebAssembly component"), "{out}");

    let empty = temp_file("empty.wasm", b"");
    let out = fails(&["--component", empty.to_str().unwrap()]);
    assert!(out.contains("is empty"), "{out}");

    let core = temp_file("core.wasm", b"\0asm\x01\0\0\0");
    let out = fails(&["--component", core.to_str().unwrap()]);
    assert!(
        out.contains("is a core WebAssembly module, not a component"),
        "{out}"
    );

    // A valid component with no exports at all: neither world's handler, and the error lists
    // what it exports.
    let bare = temp_file("bare.wasm", b"\0asm\x0d\0\x01\0");
    let out = fails(&["--component", bare.to_str().unwrap()]);
    assert!(
        out.contains(
            "exports neither `wasi:http/incoming-handler@0.2.x` (WASI 0.2) nor \
             `wasi:http/handler@0.3.x` (WASI 0.3)"
        ) && out.contains("it exports nothing"),
        "{out}"
    );
}

#[test]
fn config_file_errors_name_the_key() {
    let unknown = temp_file(
        "unknown.toml",
        format!("component = {:?}\nworkerz = 4\n", guests::FIB).as_bytes(),
    );
    let out = fails(&["--config", unknown.to_str().unwrap()]);
    assert!(out.contains("unknown field `workerz`"), "{out}");
    assert!(out.contains("did you mean `workers`?"), "{out}");

    let bad = temp_file(
        "bad.toml",
        format!("component = {:?}\nlifetime-jitter = 3\n", guests::FIB).as_bytes(),
    );
    let out = fails(&["--config", bad.to_str().unwrap()]);
    assert!(
        out.contains("`lifetime-jitter` must be a fraction"),
        "{out}"
    );

    let wrong_type = temp_file("type.toml", b"workers = \"four\"\n");
    let out = fails(&["--config", wrong_type.to_str().unwrap()]);
    assert!(
        out.contains("invalid type") && out.contains("line 1"),
        "{out}"
    );

    let out = fails(&["--config", "/nonexistent/fibhost.toml"]);
    assert!(out.contains("cannot read config file"), "{out}");
}

#[test]
fn config_file_serves_and_cli_overrides_it() {
    let file = temp_file(
        "good.toml",
        format!(
            "component = {:?}\nworkers = 1\nmax-requests = 2\n",
            guests::TESTBED
        )
        .as_bytes(),
    );
    // The command line raises max-requests to 3: the counter resets after 3, not 2.
    let server = Server::start(
        fibhost(),
        &["--config", file.to_str().unwrap(), "--max-requests", "3"],
    );
    let counts: Vec<String> = (0..4)
        .map(|_| fibhost_e2e::curl(&[&server.url("/count")]).1)
        .collect();
    assert_eq!(counts, ["1", "2", "3", "1"]);
}

#[test]
fn port_in_use_is_explained() {
    let server = crate::start(guests::FIB, &["--workers", "1"]);
    let addr = server.addr.to_string();
    let out = fails(&["--component", guests::FIB, "--listen", &addr]);
    assert!(out.contains(&format!("cannot listen on `{addr}`")), "{out}");
}

/// An admin or stats listener reachable beyond this host needs a token, unless the operator
/// says `--admin-insecure` out loud.
#[test]
fn a_public_admin_listener_needs_a_token() {
    for flag in ["--admin-listen", "--stats"] {
        let out = fails(&["--component", guests::FIB, flag, "0.0.0.0:0"]);
        assert!(out.contains("no `admin-token` is set"), "{flag}: {out}");
        assert!(out.contains("--admin-insecure"), "{flag}: {out}");
    }
    let with_token = [
        "--component",
        guests::FIB,
        "--admin-listen",
        "0.0.0.0:0",
        "--admin-token",
        "t",
    ];
    drop(Server::start(fibhost(), &with_token));
    let insecure = [
        "--component",
        guests::FIB,
        "--admin-listen",
        "0.0.0.0:0",
        "--admin-insecure",
    ];
    drop(Server::start(fibhost(), &insecure));
}

/// A component whose start code never returns is refused within the request timeout, at
/// startup as in a swap, instead of hanging it.
#[test]
fn an_instantiation_that_never_ends_is_bounded() {
    let out = fails(&[
        "--component",
        guests::TESTBED_HANG,
        "--request-timeout",
        "1",
    ]);
    assert!(out.contains("did not finish within 1s"), "{out}");
}

/// `--env NAME=value` keeps commas in the value, and grants only the name it names: a value
/// that mentions another variable does not hand that one to the guest.
#[test]
fn env_values_keep_their_commas_and_grant_nothing_else() {
    let server = Server::start(
        fibhost(),
        &[
            "--component",
            guests::TESTBED,
            "--workers",
            "1",
            "--env",
            "LIST=a,HOME",
        ],
    );
    let get = |path: &str| fibhost_e2e::curl(&["-s", "-w", " %{http_code}", &server.url(path)]).1;
    assert_eq!(get("/env?name=LIST"), "a,HOME 200");
    assert_eq!(get("/env?name=HOME"), "unset 404");
}
