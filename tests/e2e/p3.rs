//! WASI 0.3 guests (`wasi:http/handler@0.3`): several requests per instance
//! (`instance-concurrency`), and the lifecycle rules applied to such instances. The Fibonacci
//! API of the p3 guest is checked byte for byte in `conformance`.
//!
//! The p3 testbed's `/gather?n=N` answers only once N of its requests are in flight on one
//! instance at once, and `/count` counts the requests an instance has started: together they
//! show concurrency and recycling without timing anything.

use std::time::Duration;

use http::StatusCode;

use crate::start;
use fibhost_e2e::{Http, guests};

/// fibhost serving the p3 testbed with one worker, whose instance takes `concurrency`
/// requests at once, and `extra` arguments.
fn testbed(concurrency: &str, extra: &[&str]) -> fibhost_e2e::Server {
    let args = [
        &["--workers", "1", "--instance-concurrency", concurrency],
        extra,
    ]
    .concat();
    start(guests::P3_TESTBED, &args)
}

async fn get(http: &Http, server: &fibhost_e2e::Server, path: &str) -> (StatusCode, String) {
    let reply = http.get(&server.url(path)).await.unwrap();
    (reply.status, reply.text())
}

/// Sends `n` concurrent `/gather?n=N` and returns their answers.
async fn gather(http: &Http, server: &fibhost_e2e::Server, n: usize) -> Vec<(StatusCode, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (http.clone(), server.url(&format!("/gather?n={n}")));
            tokio::spawn(async move {
                let reply = http.get(&url).await.unwrap();
                (reply.status, reply.text())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn one_instance_serves_instance_concurrency_requests_at_once() {
    let server = testbed("8", &["--queue", "0", "--request-timeout", "10"]);
    let http = Http::new();
    // Eight requests that can only answer when all eight run on the one instance together;
    // admission takes workers × instance-concurrency of them with no queue.
    let answers = gather(&http, &server, 8).await;
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == StatusCode::OK && body == "gathered 8"),
        "{answers:?}"
    );
    // They were on the same instance: its next request is its ninth.
    assert_eq!(
        get(&http, &server, "/count").await,
        (StatusCode::OK, "9".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_concurrency_one_serves_one_request_at_a_time() {
    let server = start(
        guests::P3_TESTBED,
        &["--workers", "1", "--request-timeout", "2"],
    );
    let http = Http::new();
    // With the default of 1 the second `/gather` waits for the first, which waits for the
    // second: the first runs into the request timeout, then the second can never gather two.
    let answers = gather(&http, &server, 2).await;
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == StatusCode::GATEWAY_TIMEOUT),
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_requests_counts_requests_on_a_concurrent_instance() {
    let server = crate::start_with_recycle_log(
        guests::P3_TESTBED,
        &[
            "--workers",
            "1",
            "--instance-concurrency",
            "4",
            "--max-requests",
            "3",
        ],
    );
    let http = Http::new();
    let mut counts = Vec::new();
    for _ in 0..7 {
        counts.push(get(&http, &server, "/count").await.1);
    }
    assert_eq!(counts, ["1", "2", "3", "1", "2", "3", "1"]);
    server.wait_for_output("reason=\"requests\"", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_request_lets_its_instance_mates_finish_then_the_instance_is_replaced() {
    let server = testbed("2", &["--request-timeout", "1"]);
    let http = Http::new();
    let slow = {
        let (http, url) = (http.clone(), server.url("/sleep?ms=60000"));
        tokio::spawn(async move { http.get(&url).await.unwrap().status })
    };
    // On the same instance, alongside the request that will time out.
    let mate = get(&http, &server, "/sleep?ms=10").await;
    assert_eq!(mate, (StatusCode::OK, "slept".into()));
    assert_eq!(slow.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    // The interrupted instance is retired once nothing else runs on it.
    assert_eq!(
        get(&http, &server, "/count").await,
        (StatusCode::OK, "1".into())
    );
    server.wait_for_output("reason=\"timeout\"", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_fails_its_request_and_replaces_the_instance() {
    let server = testbed("4", &[]);
    let http = Http::new();
    assert_eq!(get(&http, &server, "/count").await.1, "1");
    let (status, body) = get(&http, &server, "/panic").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        get(&http, &server, "/count").await,
        (StatusCode::OK, "1".into())
    );
    server.wait_for_output("reason=\"trap\"", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_both_ways() {
    let server = testbed("2", &[]);
    let http = Http::new();
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = http
        .send(
            http::Method::POST,
            &server.url("/echo"),
            body.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(echoed.status, StatusCode::OK);
    assert!(echoed.body == body, "the echoed body differs");
    let streamed = http.get(&server.url("/stream?mib=8")).await.unwrap();
    assert_eq!(streamed.body.len(), 8 << 20);
}

fn is_fib_9000(reply: &fibhost_e2e::Reply) -> bool {
    reply.status == StatusCode::OK && reply.text() == crate::reference_sequence("9000")
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_between_worlds_under_load_fail_no_request() {
    let dir = fibhost_e2e::temp_dir("p3-swap");
    let server = start(
        guests::P3_FIB,
        &[
            "--workers",
            "2",
            "--instance-concurrency",
            "4",
            "--admin-listen",
            "127.0.0.1:0",
            "--disable-logging",
        ],
    );
    let http = Http::new();
    let load = fibhost_e2e::Load::start(8, server.url("/9000"), is_fib_9000);
    // WASI 0.3 → 0.2 → 0.3 …: each swap is make-before-break whatever the worlds.
    for i in 1..=10 {
        let (source, world) = if i % 2 == 1 {
            (guests::FIB, "wasi:http@0.2")
        } else {
            (guests::P3_FIB, "wasi:http@0.3")
        };
        let file = dir.join(format!("app-{i}.wasm"));
        std::fs::copy(source, &file).unwrap();
        let query = format!("route=/&component={}", file.display());
        let reply = crate::admin_reload(&http, &server, &query).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let status = http
            .get(&crate::admin_url(&server, "/admin/status"))
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        assert_eq!(status["routes"][0]["world"], world, "after swap {i}");
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} failed requests during 10 swaps ({ok} ok)"
    );
    assert!(ok > 100, "only {ok} requests during the swaps");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_requests_of_a_p3_guest_go_by_grant() {
    let upstream = start(guests::TESTBED_V2, &["--workers", "1"]);
    let other = start(guests::TESTBED, &["--workers", "1"]);
    let grant = format!("http://{}", upstream.addr);
    let server = testbed("4", &["--allow-outbound", &grant]);
    let http = Http::new();
    let fetch = |addr: std::net::SocketAddr| format!("/fetch?url=http://{addr}&path=/version");
    assert_eq!(
        get(&http, &server, &fetch(upstream.addr)).await,
        (StatusCode::OK, "v2".into())
    );
    let (status, body) = get(&http, &server, &fetch(other.addr)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    server.wait_for_output(
        &format!("destination=\"http://{}\"", other.addr),
        Duration::from_secs(10),
    );
}

#[test]
fn the_compile_cache_covers_p3_components() {
    let cache = fibhost_e2e::temp_dir("p3-cache").join("cache");
    let args = [
        "--component",
        guests::P3_FIB,
        "--workers",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let first = fibhost_e2e::Server::start(crate::fibhost(), &args);
    first.wait_for_output("compiled component (cache miss)", Duration::from_secs(30));
    drop(first);
    let second = fibhost_e2e::Server::start(crate::fibhost(), &args);
    second.wait_for_output(
        "loaded compiled component from cache",
        Duration::from_secs(30),
    );
    assert!(
        !second.output().contains("cache miss"),
        "a warm cache recompiled:\n{}",
        second.output()
    );
    assert_eq!(
        fibhost_e2e::curl(&[&second.url("/10")]).1,
        crate::reference_sequence("10")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_instance_under_steady_load_is_recycled_before_wasmtime_runs_out_of_handles() {
    // Without a bound, wasmtime 48 keeps ~2 handles per request served alongside others and
    // the instance traps at the store's cap (100,000) after ~50,000 requests.
    let server = crate::start_with_recycle_log(
        guests::P3_FIB,
        &[
            "--workers",
            "1",
            "--instance-concurrency",
            "8",
            "--disable-logging",
        ],
    );
    let http = Http::new();
    let expected = crate::reference_sequence("10");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, expected) = (http.clone(), server.url("/10"), expected.clone());
            tokio::spawn(async move {
                let mut failed = 0;
                for _ in 0..4_000 {
                    match http.get(&url).await {
                        Ok(reply) if reply.status == StatusCode::OK && reply.text() == expected => {
                        }
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.unwrap();
    }
    assert_eq!(failed, 0, "{failed} of 128,000 requests failed");
    server.wait_for_output("reason=\"requests\"", Duration::from_secs(10));
    assert!(
        !server.output().contains("handle limit"),
        "{}",
        server.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_count_a_concurrent_worker_once_and_each_of_its_requests() {
    let server = testbed("9", &["--admin-listen", "127.0.0.1:0"]);
    let http = Http::new();
    // Eight requests waiting on one instance for a ninth: one busy worker, nothing queued.
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (http.clone(), server.url("/gather?n=9"));
            tokio::spawn(async move { http.get(&url).await.unwrap().status })
        })
        .collect();
    crate::wait_for_load(&server, 1, 0).await;
    assert_eq!(
        get(&http, &server, "/gather?n=9").await,
        (StatusCode::OK, "gathered 9".into())
    );
    for task in waiting {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let stats = crate::admin_url(&server, "/stats");
    let what = "the worker to have recorded 9 requests and be idle";
    fibhost_e2e::eventually(Duration::from_secs(10), what, || async {
        let reply = http.get(&stats).await.unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let worker = &stats["workers"][0];
        (worker["requests"] == 9 && worker["instance_requests"] == 9 && worker["status"] == "idle")
            .then_some(())
    })
    .await;
}
