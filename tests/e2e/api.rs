//! The server issue's API checks on the Rust guest: exact bodies, errors, HEAD, concurrency.

use std::time::Duration;

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
    // Every log line is JSON; the startup lines are printed, not logged, so that no log
    // format wraps them (scripts parse them as they are).
    let startup = [
        "Serving HTTP on ",
        "Admin listening on ",
        "Stats socket on ",
    ];
    for line in server.output().lines() {
        if startup.iter().any(|s| line.starts_with(s)) {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value["target"] == "fibhost::access" {
            assert_eq!(value["path"], "/a\"b");
            assert_eq!(value["status"], 400);
            assert_eq!(value["worker"], 1);
            assert!(
                value["request_id"]
                    .as_str()
                    .is_some_and(|id| !id.is_empty())
            );
            assert!(
                value["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("127.0.0.1:"))
            );
        }
    }
    assert!(server.output().contains("Serving HTTP on http://"));
}

/// One id joins a request's log lines: the access line (with the client's address), the
/// guest's output lines and the warning about its failure. A valid incoming `X-Request-Id`
/// is kept; an unsafe one is replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_joins_the_access_line_guest_output_and_warnings() {
    let server = start(guests::TESTBED, &["--workers", "1"]);
    let http = Http::new();
    let reply = http
        .send_with(
            http::Method::GET,
            &server.url("/panic"),
            "".into(),
            &[("x-request-id", "trace-42")],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let limit = std::time::Duration::from_secs(10);
    server.wait_for_output("path=/panic status=500", limit);
    let output = server.output();
    let lines = |needle: &str| -> Vec<String> {
        (output.lines())
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    };
    let access = lines("fibhost::access");
    assert!(
        access[0].contains("request_id=trace-42 client=127.0.0.1:"),
        "{access:?}"
    );
    // The guest's panic message (its stderr) and the trap warning carry the same id.
    let guest = lines("fibhost::guest");
    assert!(
        guest
            .iter()
            .any(|l| l.contains("request_id=\"trace-42\"")
                && l.contains("testbed was asked to panic")),
        "{guest:?}"
    );
    let warning = lines("guest trapped");
    assert!(
        warning[0].contains("request_id=\"trace-42\""),
        "{warning:?}"
    );
    // The log line of a trap names the cause, with the wasm backtrace: the guest's own
    // function names, from its name section (the guests keep it).
    assert!(warning[0].contains("wasm backtrace"), "{warning:?}");
    let trap = &output[output.find("guest trapped").unwrap()..];
    let frames = &trap[..trap.find("Caused by").unwrap_or(trap.len())];
    assert!(
        frames.contains("testbed.wasm!") && frames.contains("panicking::panic_fmt"),
        "{frames}"
    );

    // An id with a space is not printed as given: fibhost makes its own.
    http.send_with(
        http::Method::GET,
        &server.url("/count"),
        "".into(),
        &[("x-request-id", "a b")],
    )
    .await
    .unwrap();
    server.wait_for_output("path=/count status=200", limit);
    let output = server.output();
    let line = output.lines().find(|l| l.contains("path=/count")).unwrap();
    assert!(!line.contains("request_id=a b"), "{line}");
}

/// `log-query = false` keeps query values (which may carry secrets) out of the access log.
#[tokio::test(flavor = "multi_thread")]
async fn query_values_can_be_kept_out_of_the_access_log() {
    let server = start(guests::TESTBED, &["--workers", "1", "--log-query", "false"]);
    let reply = Http::new()
        .get(&server.url("/count?token=s3cret&page=2"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    server.wait_for_output(
        "path=/count?token=&page= status=200",
        std::time::Duration::from_secs(10),
    );
    assert!(!server.output().contains("s3cret"), "{}", server.output());
}

/// The access log gathers each event-loop thread's lines into batches under load: every
/// request still gets exactly one line, without waiting for the server to stop (a thread
/// hands its batch over when it runs out of work), and none is lost or repeated at exit.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_one_access_line_under_load() {
    const CLIENTS: u64 = 50;
    const EACH: u64 = 60;
    let mut server = start(guests::FIB, &["--workers", "2"]);
    let http = Http::new();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (http, base) = (http.clone(), server.url(""));
        clients.spawn(async move {
            for i in 0..EACH {
                let reply = http.get(&format!("{base}/{}", client * EACH + i)).await;
                assert_eq!(reply.unwrap().status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let total = (CLIENTS * EACH) as usize;
    let count = |output: &str| {
        let mut seen = vec![0u32; total];
        for line in output.lines().filter(|l| l.contains("fibhost::access")) {
            let path = line
                .split(" path=/")
                .nth(1)
                .and_then(|r| r.split(' ').next());
            seen[path.and_then(|n| n.parse::<usize>().ok()).expect(line)] += 1;
        }
        seen
    };
    fibhost_e2e::eventually(
        Duration::from_secs(30),
        "an access line per request",
        || {
            let seen = count(&server.output());
            async move { seen.iter().all(|&n| n >= 1).then_some(()) }
        },
    )
    .await;
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let seen = count(&server.output());
    let wrong: Vec<_> = (0..total).filter(|&n| seen[n] != 1).collect();
    assert!(
        wrong.is_empty(),
        "paths without exactly one access line: {wrong:?}"
    );
}
