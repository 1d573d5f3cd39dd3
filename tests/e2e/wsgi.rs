//! WSGI guests (issue 12): unchanged Python WSGI apps built by `scripts/build-wsgi-guest.sh`
//! run under the real fibhost binary and answer exactly as the same apps under real uWSGI.
//!
//! The guests (`guests/flask-fib.wasm`, the article's Flask app from `examples/flask-fib`, and
//! `guests/wsgi-test.wasm`, the bridge's test app from `guests/wsgi/testapp`) and uWSGI
//! (`.cache/wsgi/uwsgi-venv`) come from `scripts/build-wsgi-examples.sh`. When one is missing the
//! test says so and passes, unless `FIBHOST_REQUIRE_ALL_GUESTS=1`, where it fails.

use std::process::Command;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::{admin_reload, admin_url, start};
use fibhost_e2e::{Http, Reply, Server};

/// A path in the repository.
fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

const FLASK_FIB: &str = "guests/flask-fib.wasm";
const WSGI_TEST: &str = "guests/wsgi-test.wasm";
const UWSGI_VENV: &str = ".cache/wsgi/uwsgi-venv";

/// Whether every path exists; if not, skips (or fails under `FIBHOST_REQUIRE_ALL_GUESTS=1`).
fn available(test: &str, paths: &[String]) -> bool {
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("FIBHOST_REQUIRE_ALL_GUESTS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: {missing:?} missing; run scripts/build-wsgi-examples.sh"
    );
    eprintln!("skipping {test}: {missing:?} missing (scripts/build-wsgi-examples.sh builds them)");
    false
}

/// The app `module` in `app_dir` under real uWSGI: one process, no master, no threads, HTTP on
/// a loopback port, logging off. Killed on drop (the harness's guard; uWSGI without a master
/// runs its only worker in the process it starts).
fn uwsgi(app_dir: &str, module: &str) -> Server {
    let venv = repo(UWSGI_VENV);
    // A free port: bound, read, released. uWSGI binds it before it loads the app, and prints
    // the startup line the harness waits for once the app is loaded.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(format!("{venv}/bin/uwsgi"));
    command.args(["--http-socket", &format!("127.0.0.1:{port}")]);
    command.args(["--virtualenv", &venv, "--chdir", &repo(app_dir)]);
    command.args(["--module", module, "--processes", "1", "--disable-logging"]);
    command.args([
        "--hook-post-app",
        &format!("print:Serving HTTP on http://127.0.0.1:{port}/"),
    ]);
    match Server::spawn(command) {
        Ok(server) => server,
        Err(failure) => panic!("uWSGI did not start: {failure:?}"),
    }
}

/// One request, sent alike to both servers.
struct Case {
    method: Method,
    path: String,
    body: Bytes,
    headers: Vec<(&'static str, &'static str)>,
}

fn get(path: &str) -> Case {
    Case {
        method: Method::GET,
        path: path.into(),
        body: Bytes::new(),
        headers: vec![],
    }
}

fn with(method: Method, path: &str, body: impl Into<Bytes>, content_type: &'static str) -> Case {
    Case {
        method,
        path: path.into(),
        body: body.into(),
        headers: vec![("content-type", content_type)],
    }
}

async fn send(http: &Http, server: &Server, case: &Case) -> Reply {
    http.send_with(
        case.method.clone(),
        &server.url(&case.path),
        case.body.clone(),
        &case.headers,
    )
    .await
    .unwrap_or_else(|e| panic!("{} {}: {e}", case.method, case.path))
}

/// Sends every case to fibhost and to uWSGI; asserts the same status, content type and body.
/// Returns fibhost's replies.
async fn same_as_uwsgi(fibhost: &Server, uwsgi: &Server, cases: &[Case]) -> Vec<Reply> {
    let http = Http::new();
    let mut replies = Vec::new();
    for case in cases {
        let ours = send(&http, fibhost, case).await;
        // A fresh connection each time: uWSGI's http-socket closes a connection after its
        // response without saying `Connection: close`, so a pooled one may already be gone.
        let theirs = send(&Http::new(), uwsgi, case).await;
        let what = format!("{} {}", case.method, case.path);
        assert_eq!(ours.status, theirs.status, "{what}: status");
        assert_eq!(
            ours.header("content-type"),
            theirs.header("content-type"),
            "{what}: content type"
        );
        assert!(
            ours.body == theirs.body,
            "{what}: bodies differ\nfibhost: {}\nuWSGI:   {}",
            ours.text(),
            theirs.text()
        );
        replies.push(ours);
    }
    replies
}

/// The sum of a Prometheus counter's samples whose labels contain `label` (0 when absent).
async fn counter(http: &Http, server: &Server, name: &str, label: &str) -> f64 {
    let reply = http.get(&admin_url(server, "/metrics")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    reply
        .text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_articles_flask_app_answers_as_under_uwsgi() {
    let (wasm, venv) = (repo(FLASK_FIB), repo(UWSGI_VENV));
    if !available("flask-fib", &[wasm.clone(), venv]) {
        return;
    }
    let fibhost = start(&wasm, &["--workers", "2", "--disable-logging"]);
    let uwsgi = uwsgi("examples/flask-fib", "app:app");
    let cases: Vec<Case> = [
        "/9000", "/0", "/1", "/2", "/10946", "/abc", "/-5", "/1.5", "/", "/9000/", "/1/2",
    ]
    .into_iter()
    .map(get)
    .chain([
        with(Method::POST, "/9000", "x", "text/plain"),
        with(Method::HEAD, "/9000", "", "text/plain"),
        get(&format!("/1{}", "0".repeat(300))),
    ])
    .collect();
    let replies = same_as_uwsgi(&fibhost, &uwsgi, &cases).await;
    assert_eq!(replies[0].status, StatusCode::OK);
    assert_eq!(
        replies[0].text(),
        crate::reference_sequence("9000"),
        "GET /9000"
    );
    assert_eq!(replies[0].header("content-type"), "application/json");
    let head = &replies[cases.len() - 2];
    assert!(head.body.is_empty(), "HEAD has no body");
    assert_eq!(
        head.header("content-length"),
        "97",
        "HEAD keeps GET's length"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_app_answers_as_under_uwsgi() {
    let (wasm, venv) = (repo(WSGI_TEST), repo(UWSGI_VENV));
    if !available("wsgi-test", &[wasm.clone(), venv]) {
        return;
    }
    // One worker on each side: /raw/closed counts the close() calls of one process.
    let fibhost = start(&wasm, &["--workers", "1", "--disable-logging"]);
    let uwsgi = uwsgi("guests/wsgi/testapp", "testapp:application");

    let upload: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let echo = Case {
        method: Method::GET,
        path: "/echo?a=1&b=%20x&a=2&empty=&caf%C3%A9=%E2%82%AC".into(),
        body: Bytes::new(),
        headers: vec![
            ("x-thing", "yes"),
            ("x-other", "a, b"),
            ("cookie", "c=1; d=2"),
        ],
    };
    let cases = vec![
        echo,
        with(
            Method::POST,
            "/echo?x=y",
            "k=v&k2=v2",
            "application/x-www-form-urlencoded",
        ),
        with(
            Method::PUT,
            "/echo",
            "plain text",
            "text/plain; charset=utf-8",
        ),
        with(
            Method::POST,
            "/json",
            r#"{"numbers": [1, 2, 3.5], "name": "\u00e9t\u00e9", "nested": {"ok": true}}"#,
            "application/json",
        ),
        with(Method::POST, "/json", "{not json", "application/json"),
        get("/teapot"),
        get("/missing-item/7"),
        get("/stream"),
        get("/stream?lines=3"),
        get("/boom"),
        with(Method::POST, "/upload", upload, "application/octet-stream"),
        with(Method::POST, "/upload", "", "application/octet-stream"),
        get("/name/%C3%A9t%C3%A9"),
        get("/name/a%20b"),
        get("/name/a%2Fb"),
        get("/headers"),
        get("/redirect"),
        with(Method::HEAD, "/stream", "", "text/plain"),
        with(Method::HEAD, "/name/x", "", "text/plain"),
        get("/raw/write"),
        get("/raw/close"),
        get("/raw/close"),
        get("/raw/file-wrapper"),
        with(
            Method::POST,
            "/raw/input-lines",
            "one\ntwo\nthree",
            "text/plain",
        ),
        get("/raw/closed"),
        get("/nowhere"),
        with(Method::DELETE, "/teapot", "", "text/plain"),
    ];
    let replies = same_as_uwsgi(&fibhost, &uwsgi, &cases).await;
    let reply = |path: &str| {
        let i = cases.iter().position(|c| c.path == path).unwrap();
        &replies[i]
    };

    // The comparison alone would pass if both servers were wrong the same way: check what
    // the app must have seen.
    let echo: serde_json::Value = serde_json::from_slice(&replies[0].body).unwrap();
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["script_name"], "");
    assert_eq!(
        echo["query_string"],
        "a=1&b=%20x&a=2&empty=&caf%C3%A9=%E2%82%AC"
    );
    assert_eq!(echo["args"]["a"], serde_json::json!(["1", "2"]));
    assert_eq!(echo["args"]["café"], serde_json::json!(["€"]));
    assert_eq!(echo["x_headers"]["HTTP_X_OTHER"], "a, b");
    assert_eq!(echo["cookies"], serde_json::json!({"c": "1", "d": "2"}));
    assert_eq!(reply("/teapot").status.as_u16(), 418);
    assert_eq!(reply("/boom").status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply("/boom").text().contains("Internal Server Error"),
        "Flask's own 500 page"
    );
    assert_eq!(
        reply("/name/%C3%A9t%C3%A9").text(),
        "hello, été (3 characters)\n"
    );
    let upload: serde_json::Value = serde_json::from_slice(&reply("/upload").body).unwrap();
    assert_eq!(upload["length"], 1 << 20);
    let stream = reply("/stream");
    assert_eq!(stream.text().lines().count(), 2000);
    assert_eq!(
        stream.header("transfer-encoding"),
        "chunked",
        "the generator is streamed, not joined into one body of known length"
    );
    assert_eq!(reply("/headers").header("x-custom"), "custom value");
    let cookies: Vec<_> = reply("/headers")
        .headers
        .get_all("set-cookie")
        .iter()
        .collect();
    assert_eq!(cookies.len(), 2, "both Set-Cookie fields arrive");
    assert_eq!(
        reply("/raw/write").text(),
        "written 1\nwritten 2\nreturned 3\n"
    );
    assert_eq!(
        reply("/raw/closed").text(),
        "2\n",
        "close() called after each iterable"
    );

    // Beyond uWSGI: it mishandles both of these (exc_info raises SystemError in uWSGI 2.0.31 on
    // Python 3.11; an error before start_response closes the connection unanswered).
    let http = Http::new();
    let replaced = http.get(&fibhost.url("/raw/exc-info")).await.unwrap();
    assert_eq!(
        replaced.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "exc_info replaces the status"
    );
    assert_eq!(replaced.text(), "replaced by exc_info\n");
    let early = http.get(&fibhost.url("/raw/early-error")).await.unwrap();
    assert_eq!(early.status, StatusCode::INTERNAL_SERVER_ERROR);
    // The instance survived all of it: the same one still counts its close() calls.
    let closed = http.get(&fibhost.url("/raw/closed")).await.unwrap();
    assert_eq!(
        closed.text(),
        "2\n",
        "the instance kept serving:\n{}",
        fibhost.output()
    );
}

/// 10,000 requests, one instance, no trap: /raw/closed counts the close() calls of the one
/// instance that served them all (a fresh instance would start again at 0).
#[tokio::test(flavor = "multi_thread")]
async fn one_instance_serves_ten_thousand_requests() {
    let wasm = repo(WSGI_TEST);
    if !available("wsgi 10,000 requests", std::slice::from_ref(&wasm)) {
        return;
    }
    let server = start(
        &wasm,
        &[
            "--workers",
            "1",
            "--disable-logging",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 2_500;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (http, base) = (Http::new(), server.url(""));
        tasks.push(tokio::spawn(async move {
            let mut closes = 0u64;
            for i in 0..PER_CLIENT {
                // A mix: request bodies read and unread, errors the app renders, streams.
                let (method, path, body): (Method, &str, &str) = match (client + i) % 10 {
                    0 => (Method::POST, "/json", r#"{"numbers": [1, 2]}"#),
                    1 => (Method::POST, "/upload", "some bytes to hash"),
                    2 => (Method::GET, "/boom", ""),
                    3 => (Method::GET, "/stream?lines=20", ""),
                    4 => (Method::POST, "/raw/close", "a body the app never reads"),
                    5 => (Method::HEAD, "/name/x", ""),
                    _ => (Method::GET, "/raw/close", ""),
                };
                let headers = [("content-type", "application/json")];
                let reply = http
                    .send_with(
                        method.clone(),
                        &format!("{base}{path}"),
                        body.into(),
                        &headers,
                    )
                    .await
                    .unwrap();
                let expected = match path {
                    "/boom" => 500,
                    "/json" => 201,
                    _ => 200,
                };
                assert_eq!(
                    reply.status.as_u16(),
                    expected,
                    "request {i} of client {client}: {method} {path}"
                );
                closes += u64::from(path == "/raw/close");
            }
            closes
        }));
    }
    let mut closes = 0;
    for task in tasks {
        closes += task.await.unwrap();
    }
    let http = Http::new();
    let counted = http.get(&server.url("/raw/closed")).await.unwrap().text();
    assert_eq!(
        counted,
        format!("{closes}\n"),
        "one instance served every request"
    );
    let name = "fibhost_instance_recycles_total";
    assert_eq!(
        counter(&http, &server, name, "reason=\"trap\"").await,
        0.0,
        "no trap"
    );
    assert_eq!(
        counter(&http, &server, name, "").await,
        0.0,
        "no recycle at all"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wsgi_guests_recycle_and_hot_swap() {
    let (test_app, flask) = (repo(WSGI_TEST), repo(FLASK_FIB));
    if !available("wsgi recycle and swap", &[test_app.clone(), flask.clone()]) {
        return;
    }
    // Recycling: after 3 requests a fresh instance, whose close() count starts again.
    let server = start(
        &test_app,
        &[
            "--workers",
            "1",
            "--max-requests",
            "3",
            "--disable-logging",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let http = Http::new();
    let mut counts = Vec::new();
    for path in [
        "/raw/close",
        "/raw/close",
        "/raw/closed",
        "/raw/closed",
        "/raw/close",
        "/raw/closed",
    ] {
        let reply = http.get(&server.url(path)).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        if path == "/raw/closed" {
            counts.push(reply.text());
        }
    }
    assert_eq!(
        counts,
        ["2\n", "0\n", "1\n"],
        "a new instance every 3 requests"
    );
    let recycled = counter(
        &http,
        &server,
        "fibhost_instance_recycles_total",
        "reason=\"requests\"",
    )
    .await;
    assert!(recycled >= 1.0, "recycles by request count: {recycled}");
    drop(server);

    // Hot swap: the Flask app replaced by the test app under a running server.
    let server = start(
        &flask,
        &[
            "--workers",
            "2",
            "--disable-logging",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let before = http.get(&server.url("/9000")).await.unwrap();
    assert_eq!(before.text(), crate::reference_sequence("9000"));
    let swap = admin_reload(&http, &server, &format!("route=/&component={test_app}")).await;
    assert_eq!(swap.status, StatusCode::OK, "swap: {}", swap.text());
    let after = http.get(&server.url("/raw/write")).await.unwrap();
    assert_eq!(
        after.text(),
        "written 1\nwritten 2\nreturned 3\n",
        "the new app serves"
    );
    let gone = http.get(&server.url("/9000")).await.unwrap();
    assert_eq!(
        gone.status,
        StatusCode::NOT_FOUND,
        "the old app no longer serves"
    );
}

/// On a route whose prefix fibhost strips, the app sees that prefix as SCRIPT_NAME (and builds
/// its URLs under it); a client cannot forge it with the header fibhost uses to say so.
#[tokio::test(flavor = "multi_thread")]
async fn script_name_is_the_stripped_prefix() {
    let test_app = repo(WSGI_TEST);
    if !available("wsgi SCRIPT_NAME", std::slice::from_ref(&test_app)) {
        return;
    }
    let dir = fibhost_e2e::temp_dir("wsgi-prefix");
    let config = dir.join("fibhost.toml");
    let toml = format!(
        "[[route]]\nprefix = \"/app\"\ncomponent = {test_app:?}\nstrip-prefix = true\nworkers = 1\n\n\
         [[route]]\nprefix = \"/\"\ncomponent = {test_app:?}\nworkers = 1\n"
    );
    std::fs::write(&config, toml).unwrap();
    let server = Server::start(crate::fibhost(), &["--config", config.to_str().unwrap()]);
    let http = Http::new();
    let forged = [("fibhost-script-name", "/forged")];
    let echo = async |path: &str| -> serde_json::Value {
        let reply = (http.send_with(Method::GET, &server.url(path), Bytes::new(), &forged))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        serde_json::from_slice(&reply.body).unwrap()
    };
    let stripped = echo("/app/echo").await;
    assert_eq!(stripped["script_name"], "/app", "{stripped}");
    assert_eq!(stripped["path"], "/echo", "{stripped}");
    let root = echo("/echo").await;
    assert_eq!(root["script_name"], "", "{root}");
}
