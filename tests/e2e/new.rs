//! `fibhost new`: every language's templates are written by the real binary, built by the
//! project's own `build.sh`, served by the real fibhost and checked with `fibhost check`.
//!
//! A generated `build.sh` uses a tool of its pinned version found on `PATH` instead of
//! installing one into the project, so these tests put the toolchains that
//! `scripts/setup-guest-toolchains.sh` installed on its `PATH` and download nothing (and they
//! check that nothing was installed). When a toolchain is missing the test says so and passes,
//! unless `FIBHOST_REQUIRE_ALL_GUESTS=1` (set by `scripts/test.sh`), where it fails.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use fibhost_e2e::{Http, Reply, Server};
use http::{Method, StatusCode};

use crate::{fibhost, start};

/// A language as these tests build it.
struct Lang {
    /// `fibhost new`'s argument.
    arg: &'static str,
    /// The name the hello template greets in.
    display: &'static str,
    /// What its build needs from the repository's toolchains (paths from the repository root).
    tools: &'static [&'static str],
    /// What its build needs from the system.
    commands: &'static [&'static str],
}

const WASM_TOOLS: &str = "guests/.tools/venv/bin/wasm-tools";

const RUST: Lang = Lang {
    arg: "rust",
    display: "Rust",
    tools: &[],
    commands: &["cargo"],
};
const PYTHON: Lang = Lang {
    arg: "python",
    display: "Python",
    tools: &["guests/python-fib/.venv/bin/componentize-py"],
    commands: &[],
};
const JS: Lang = Lang {
    arg: "js",
    display: "JavaScript",
    tools: &["guests/js-fib/node_modules/.bin/componentize-js"],
    commands: &["node"],
};
const C: Lang = Lang {
    arg: "c",
    display: "C",
    tools: &["guests/c-fib/.tools/bin/wit-bindgen", WASM_TOOLS],
    commands: &["clang-19"],
};
const GO: Lang = Lang {
    arg: "go",
    display: "Go",
    tools: &["guests/.tools/venv/bin/go", WASM_TOOLS],
    commands: &[],
};
const ZIG: Lang = Lang {
    arg: "zig",
    display: "Zig",
    tools: &["guests/.tools/venv/bin/python-zig", WASM_TOOLS],
    commands: &[],
};

/// Where `scripts/setup-guest-toolchains.sh` installs, first on the build scripts' `PATH`.
const TOOL_DIRS: [&str; 4] = [
    "guests/.tools/venv/bin",
    "guests/python-fib/.venv/bin",
    "guests/js-fib/node_modules/.bin",
    "guests/c-fib/.tools/bin",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `command` is an executable file in a directory of `PATH`.
fn on_path(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
}

/// The first thing `lang`'s build needs that is missing, if any.
fn missing(lang: &Lang) -> Option<String> {
    let tool = lang.tools.iter().find(|t| !repo().join(t).exists());
    let command = lang.commands.iter().find(|c| !on_path(c));
    tool.map(|t| t.to_string())
        .or_else(|| command.map(|c| format!("`{c}` on PATH")))
}

/// `fibhost new <lang> <dir> --template <template>`, then the project's `build.sh`; returns
/// the component. `None` when a toolchain is missing and that is allowed.
fn build(lang: &Lang, template: &str) -> Option<PathBuf> {
    if let Some(missing) = missing(lang) {
        let required = std::env::var("FIBHOST_REQUIRE_ALL_GUESTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "`fibhost new {}` cannot be built: {missing} is missing (scripts/setup-guest-toolchains.sh installs it)",
            lang.arg
        );
        eprintln!(
            "skipping `fibhost new {} --template {template}`: {missing} is missing",
            lang.arg
        );
        return None;
    }
    let name = format!("{template}-{}", lang.arg);
    let dir = fibhost_e2e::temp_dir(&format!("new-{name}")).join(&name);
    let created = Command::new(fibhost())
        .args(["new", lang.arg])
        .arg(&dir)
        .args(["--template", template])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "fibhost new failed: {stdout}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let wasm = dir.join(format!("{name}.wasm"));
    for next in [
        dir.join("build.sh").display().to_string(),
        format!("fibhost --component {}", wasm.display()),
    ] {
        assert!(stdout.contains(&next), "`{next}` is not in:\n{stdout}");
    }

    let started = Instant::now();
    let mut command = Command::new(dir.join("build.sh"));
    // The outer cargo's settings are for the host build; the project's build must not
    // inherit them (as in tests/build.rs).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTC"
            || key == "RUSTC_WRAPPER"
        {
            command.env_remove(key.as_ref());
        }
    }
    let mut path: Vec<PathBuf> = TOOL_DIRS.iter().map(|d| repo().join(d)).collect();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let tools = repo().join("guests/.tools");
    command
        .env("PATH", std::env::join_paths(path).unwrap())
        // Build caches shared with the repository's guests and between the tests' projects.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-rust-target"),
        )
        .env("GOCACHE", tools.join("go-cache"))
        .env("ZIG_GLOBAL_CACHE_DIR", tools.join("zig-global-cache"));
    let built = command.output().unwrap();
    assert!(
        built.status.success(),
        "{}/build.sh failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let size = std::fs::metadata(&wasm)
        .unwrap_or_else(|e| panic!("build.sh did not write {}: {e}", wasm.display()))
        .len();
    eprintln!(
        "fibhost new {} --template {template}: build.sh took {:.1} s, {size} bytes",
        lang.arg,
        started.elapsed().as_secs_f64()
    );
    // It found the repository's toolchains and installed nothing.
    for local in [".tools", ".venv", "node_modules"] {
        assert!(
            !dir.join(local).exists(),
            "build.sh installed into {local}/ instead of using the toolchain on PATH"
        );
    }
    Some(wasm)
}

/// `fibhost check <wasm> <args>` must find nothing that would fail requests.
fn check(wasm: &Path, args: &[&str]) {
    let checked = Command::new(fibhost())
        .arg("check")
        .arg(wasm)
        .args(args)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "fibhost check {} failed ({}):\n{}{}",
        wasm.display(),
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// Serves `wasm` with one worker (so that every request reuses the same instance, as far as
/// the guest allows).
fn serve(wasm: &Path) -> Server {
    start(wasm.to_str().unwrap(), &["--workers", "1"])
}

async fn send(
    http: &Http,
    server: &Server,
    method: Method,
    path: &str,
    body: impl Into<bytes::Bytes>,
) -> Reply {
    http.send(method, &server.url(path), body.into())
        .await
        .unwrap()
}

/// The hello template: a greeting for every GET, its headers for HEAD.
async fn hello(lang: &Lang) {
    let Some(wasm) = build(lang, "hello") else {
        return;
    };
    let server = serve(&wasm);
    let http = Http::new();
    let greeting = format!("Hello from {}!\n", lang.display);
    for path in ["/", "/any/path?x=1", "/"] {
        let reply = send(&http, &server, Method::GET, path, "").await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}");
        assert_eq!(reply.header("content-type"), "text/plain", "GET {path}");
        assert_eq!(reply.text(), greeting, "GET {path}");
    }
    let head = send(&http, &server, Method::HEAD, "/", "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-type"), "text/plain");
    assert_eq!(head.header("content-length"), greeting.len().to_string());
    assert!(head.body.is_empty());
    drop(server);
    check(&wasm, &[]);
}

/// The body of a json-api answer, after checking what every answer has: a JSON body and
/// the headers that say so.
fn json_body(what: &str, reply: &Reply) -> serde_json::Value {
    assert_eq!(reply.header("content-type"), "application/json", "{what}");
    assert_eq!(
        reply.header("content-length"),
        reply.body.len().to_string(),
        "{what}"
    );
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", reply.text()))
}

/// An error answer of the json-api template: `status` and `{"error": "<something>"}`.
fn assert_error(what: &str, reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    let body = json_body(what, reply);
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty())
            && body.as_object().unwrap().len() == 1,
        "{what}: {body}"
    );
}

/// The json-api template: the same answers in every language.
async fn json_api(lang: &Lang) {
    let Some(wasm) = build(lang, "json-api") else {
        return;
    };
    let server = serve(&wasm);
    let http = Http::new();

    for (query, name) in [
        ("", "world"),
        ("?name=Ada%20L", "Ada L"),
        ("?name=%C3%A9t%C3%A9+x", "été x"),
        ("?name=%22q%22%5C%0A%01", "\"q\"\\\n\u{1}"),
        ("?x=1&name=&name=B", "world"),
        ("?name", "world"),
    ] {
        let what = format!("GET /hello{query}");
        let reply = send(&http, &server, Method::GET, &format!("/hello{query}"), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        let expected = serde_json::json!({ "message": format!("Hello, {name}!") });
        assert_eq!(json_body(&what, &reply), expected, "{what}");
    }
    for query in ["%zz", "%FF", "%e", "%C3"] {
        let what = format!("GET /hello?name={query}");
        let reply = send(
            &http,
            &server,
            Method::GET,
            &format!("/hello?name={query}"),
            "",
        )
        .await;
        assert_error(&what, &reply, StatusCode::BAD_REQUEST);
    }

    // HEAD: GET's status and headers, no body (for an error too).
    for path in ["/hello?name=Ada", "/nope"] {
        let get = send(&http, &server, Method::GET, path, "").await;
        let head = send(&http, &server, Method::HEAD, path, "").await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} has a body");
        for header in ["content-type", "content-length"] {
            assert_eq!(
                head.header(header),
                get.header(header),
                "HEAD {path}: {header}"
            );
        }
    }

    // POST /echo: the body as sent, without the whitespace around it.
    let body = r#" {"a": [1, 2.5e3, null, true], "b": "\u00e9 é"} "#;
    let reply = send(&http, &server, Method::POST, "/echo", body).await;
    assert_eq!(reply.status, StatusCode::OK);
    json_body("POST /echo", &reply);
    assert_eq!(reply.text(), format!("{{\"received\":{}}}", body.trim()));
    // A body of many chunks is read to its end, and echoed whole.
    let big = format!("[\"{}\", 1]", "x".repeat(1 << 20));
    let reply = send(&http, &server, Method::POST, "/echo", big.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.text() == format!("{{\"received\":{big}}}"),
        "POST /echo of {} bytes: answered {} bytes",
        big.len(),
        reply.body.len()
    );
    for bad in [
        &b""[..],
        b"{",
        b"NaN",
        b"{\"a\":1}x",
        b"[1,]",
        b"01",
        b"\"\xff\"",
    ] {
        let what = format!("POST /echo {:?}", String::from_utf8_lossy(bad));
        let reply = send(&http, &server, Method::POST, "/echo", bad.to_vec()).await;
        assert_error(&what, &reply, StatusCode::BAD_REQUEST);
    }

    // Wrong methods: 405 with Allow; other paths: 404.
    for (method, path, allow) in [
        (Method::POST, "/hello", "GET, HEAD"),
        (Method::DELETE, "/hello?name=x", "GET, HEAD"),
        (Method::GET, "/echo", "POST"),
        (Method::PUT, "/echo", "POST"),
    ] {
        let what = format!("{method} {path}");
        let reply = send(&http, &server, method, path, "{}").await;
        assert_error(&what, &reply, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.header("allow"), allow, "{what}");
    }
    for path in ["/", "/nope", "/hello/", "/echo/x"] {
        let reply = send(&http, &server, Method::GET, path, "").await;
        assert_error(&format!("GET {path}"), &reply, StatusCode::NOT_FOUND);
    }
    drop(server);
    check(&wasm, &["--path", "/hello?name=check"]);
}

/// One test per language and template.
macro_rules! templates {
    ($($test:ident => $run:ident($lang:ident);)*) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                $run(&$lang).await;
            }
        )*
    };
}

templates! {
    rust_hello => hello(RUST);
    python_hello => hello(PYTHON);
    js_hello => hello(JS);
    c_hello => hello(C);
    go_hello => hello(GO);
    zig_hello => hello(ZIG);
    rust_json_api => json_api(RUST);
    python_json_api => json_api(PYTHON);
    js_json_api => json_api(JS);
    c_json_api => json_api(C);
    go_json_api => json_api(GO);
    zig_json_api => json_api(ZIG);
}

/// `fibhost new` writes into a new or empty directory only, and says so.
#[test]
fn new_refuses_a_directory_that_is_not_empty() {
    let dir = fibhost_e2e::temp_dir("new-refuses");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let refused = Command::new(fibhost())
        .args(["new", "go"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("`{}` is not empty", dir.display()))
            && stderr.contains("new or empty directory"),
        "{stderr}"
    );
    let entries: Vec<OsString> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["notes.txt"], "nothing is written beside it");
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );

    let file = dir.join("notes.txt");
    let refused = Command::new(fibhost())
        .args(["new", "go"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "`{}` exists and is not a directory",
            file.display()
        )),
        "{stderr}"
    );

    // An empty directory that exists is fine; the project is named after it.
    let empty = fibhost_e2e::temp_dir("new-empty").join("My Guest");
    std::fs::create_dir(&empty).unwrap();
    let created = Command::new(fibhost())
        .args(["new", "zig"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(stdout.contains("my-guest.wasm"), "{stdout}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(empty.join("build.sh"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o111, 0o111, "build.sh is executable");
}
