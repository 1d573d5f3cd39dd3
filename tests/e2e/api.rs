//! The server issue's API checks on the Rust guest: exact bodies, errors, HEAD, concurrency.

use http::StatusCode;

use crate::{reference_sequence, start};
use fibhost_e2e::{Http, guests};

#[tokio::test(flavor = "multi_thread")]
async fn exact_bodies_and_headers() {
    let server = start(guests::FIB, &["--workers", "4"]);
    let http = Http::new();
    let big = |zeros: usize| format!("1{}", "0".repeat(zeros));
    for n in ["0", "1", "2", "-5", "9000", &big(30), &big(100)] {
        let reply = http.get(&server.url(&format!("/{n}"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.header("content-length"), reply.body.len().to_string());
        assert_eq!(reply.text(), reference_sequence(n), "/{n}");
    }
    assert_eq!(
        http.get(&server.url("/9000")).await.unwrap().text(),
        "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946]"
    );
    let reply = http.get(&server.url("/1.5")).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.text().contains("unexpected '.' at position 2"),
        "{}",
        reply.text()
    );
    // The access log records each request with its status and worker.
    server.wait_for_output("path=/1.5 status=400", std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_concurrent_requests_are_all_correct() {
    let server = start(guests::FIB, &["--workers", "4", "--disable-logging"]);
    let http = Http::new();
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let (http, url) = (http.clone(), server.url(&format!("/{}", i * 12_345)));
        tasks.push(tokio::spawn(async move { (i, http.get(&url).await) }));
    }
    for task in tasks {
        let (i, reply) = task.await.unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), reference_sequence(&(i * 12_345).to_string()));
    }
    assert!(
        !server.output().contains("fibhost::access"),
        "--disable-logging must silence the access log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_parse() {
    let server = start(guests::FIB, &["--workers", "1", "--log-format", "json"]);
    let http = Http::new();
    http.get(&server.url("/a\"b")).await.unwrap();
    server.wait_for_output(
        "\"target\":\"fibhost::access\"",
        std::time::Duration::from_secs(10),
    );
    for line in server.output().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value["target"] == "fibhost::access" {
            assert_eq!(value["path"], "/a\"b");
            assert_eq!(value["status"], 400);
            assert_eq!(value["worker"], 1);
        }
    }
}
