//! The Fibonacci API conformance suite: every guest, whatever its language, must pass it
//! through the real fibhost binary. Adding a guest is one `conformance!` line.
//!
//! Guests other than Rust are built by `scripts/build-lang-guests.sh`. When one is missing the
//! test says so and passes, unless `FIBHOST_REQUIRE_ALL_GUESTS=1` (set by the README's test
//! command), where a missing guest fails.

use http::{Method, StatusCode};

use crate::{reference_sequence, start};
use fibhost_e2e::{Http, guests};

/// Checks one guest against the whole API.
async fn check(name: &str, component: &str, extra: &[&str]) {
    if !std::path::Path::new(component).exists() {
        let required = std::env::var("FIBHOST_REQUIRE_ALL_GUESTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "guest `{name}` was not built: {component} is missing"
        );
        eprintln!("skipping conformance for `{name}`: {component} is not built");
        return;
    }
    // `fibhost check` with the API's expectations, as a guest author would run it.
    let checked = std::process::Command::new(crate::fibhost())
        .args(["check", component, "--path", "/9000", "--expect"])
        .arg(crate::check::fib_api())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{name}: fibhost check failed:\n{report}"
    );
    assert!(!report.contains("FAIL"), "{name}: {report}");

    let args =
        |workers: &'static str| [&["--workers", workers, "--disable-logging"], extra].concat();
    let server = start(component, &args("2"));
    let http = Http::new();

    let big = |zeros: usize| format!("1{}", "0".repeat(zeros));
    for n in ["0", "1", "2", "-5", "9000", &big(30), &big(100), &big(1000)] {
        let reply = http.get(&server.url(&format!("/{n}"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{name}: /{n}");
        assert_eq!(
            reply.header("content-type"),
            "application/json",
            "{name}: /{n}"
        );
        assert_eq!(reply.text(), reference_sequence(n), "{name}: body of /{n}");
    }

    let too_long = "9".repeat(1025);
    for bad in ["abc", "1.5", "1e3", "-", "12a", too_long.as_str()] {
        let reply = http.get(&server.url(&format!("/{bad}"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}: /{bad}");
        assert_error_json(name, &reply);
    }
    for missing in ["/", "/1/2", "/9000/"] {
        let reply = http.get(&server.url(missing)).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{name}: {missing}");
        assert_error_json(name, &reply);
    }
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let reply = http
            .send(method.clone(), &server.url("/10"), "x".into())
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{name}: {method}"
        );
        assert_eq!(
            reply.header("allow"),
            "GET, HEAD",
            "{name}: Allow on {method}"
        );
        assert_error_json(name, &reply);
    }

    let get = http.get(&server.url("/9000")).await.unwrap();
    let head = http
        .send(Method::HEAD, &server.url("/9000"), "".into())
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK, "{name}: HEAD");
    assert!(head.body.is_empty(), "{name}: HEAD must have no body");
    assert_eq!(
        head.header("content-type"),
        "application/json",
        "{name}: HEAD content type"
    );
    assert_eq!(
        head.header("content-length"),
        get.body.len().to_string(),
        "{name}: HEAD length"
    );

    // Concurrency: every response exact.
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let (http, url) = (http.clone(), server.url(&format!("/{}", i * 977)));
        tasks.push(tokio::spawn(async move { (i, http.get(&url).await) }));
    }
    for task in tasks {
        let (i, reply) = task.await.unwrap();
        let reply = reply.unwrap();
        assert_eq!(
            reply.text(),
            reference_sequence(&(i * 977).to_string()),
            "{name}: concurrent /{}",
            i * 977
        );
    }
    drop(server);

    // Reuse: one worker, 1,000 sequential requests on the same instance; no state may leak.
    let server = start(component, &args("1"));
    for i in 0..1000u64 {
        let n = (i * 7919) % 100_000 + if i % 10 == 0 { 10u64.pow(15) } else { 0 };
        let path = if i % 50 == 49 {
            "/bad".to_string()
        } else {
            format!("/{n}")
        };
        let reply = http.get(&server.url(&path)).await.unwrap();
        if path == "/bad" {
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}: request {i}");
        } else {
            assert_eq!(
                reply.text(),
                reference_sequence(&n.to_string()),
                "{name}: request {i} ({path})"
            );
        }
    }
}

fn assert_error_json(name: &str, reply: &fibhost_e2e::Reply) {
    assert_eq!(
        reply.header("content-type"),
        "application/json",
        "{name}: error content type"
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{name}: error body is not JSON ({e}): {}", reply.text()));
    assert!(
        json["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}: {json}"
    );
}

/// Declares one conformance test per guest.
/// `name => path` or `name => path, "--extra", "fibhost args"`.
macro_rules! conformance {
    ($($test:ident => $path:expr $(, $arg:literal)*);* $(;)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                let path: String = $path.into();
                check(stringify!($test), &path, &[$($arg),*]).await;
            }
        )*
    };
}

fn built(file: &str) -> String {
    format!("{}/../guests/{file}", env!("CARGO_MANIFEST_DIR"))
}

conformance! {
    rust => guests::FIB;
    python => built("python-fib.wasm");
    // StarlingMonkey serves one fetch event per instance; no `--max-requests 1` here: fibhost
    // recognises a ComponentizeJS component and gives it a fresh instance per request.
    javascript => built("js-fib.wasm");
    c => built("c-fib.wasm");
    go => built("go-fib.wasm");
    zig => built("zig-fib.wasm");
    // WASI 0.3 (`wasi:http/handler@0.3`), with one request per instance and with several.
    rust_p3 => guests::P3_FIB;
    rust_p3_concurrent => guests::P3_FIB, "--instance-concurrency", "8";
}
