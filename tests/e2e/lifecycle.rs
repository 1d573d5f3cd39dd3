//! Worker lifecycle: reuse, recycling by requests, lifetime and memory, jitter, traps,
//! timeouts and hostile guests. The testbed guest's `/count` returns how many requests its
//! instance has served, which makes reuse and recycling observable from outside.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::start;
use fibhost_e2e::{Http, Load, Server, eventually, guests};

async fn count(http: &Http, server: &Server) -> u64 {
    let reply = http.get(&server.url("/count")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_are_reused_until_max_requests() {
    let server =
        crate::start_with_recycle_log(guests::TESTBED, &["--workers", "1", "--max-requests", "3"]);
    let http = Http::new();
    let mut counts = Vec::new();
    for _ in 0..7 {
        counts.push(count(&http, &server).await);
    }
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);
    server.wait_for_output("reason=\"requests\"", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_requests_one_never_shares_an_instance() {
    let server = start(
        guests::TESTBED,
        &["--workers", "2", "--max-requests", "1", "--disable-logging"],
    );
    let http = Http::new();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (http, url) = (http.clone(), server.url("/count"));
            tokio::spawn(async move { http.get(&url).await.unwrap().text() })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap(),
            "1",
            "an instance served a second request"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifetime_recycles_an_instance() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--max-worker-lifetime",
            "1",
            "--lifetime-jitter",
            "0",
        ],
    );
    let http = Http::new();
    assert_eq!(count(&http, &server).await, 1);
    assert_eq!(count(&http, &server).await, 2);
    // The instance is replaced once its second is up: a request then finds a fresh one.
    let what = "a fresh instance after max-worker-lifetime";
    eventually(Duration::from_secs(30), what, || async {
        (count(&http, &server).await == 1).then_some(())
    })
    .await;
    server.wait_for_output("reason=\"lifetime\"", Duration::from_secs(10));
}

// `min-worker-lifetime` and the jitter spread are rules of the pure policy: their tests are
// unit tests with given instants (`host/src/pool/policy.rs`), not sleeps here.

#[tokio::test(flavor = "multi_thread")]
async fn memory_recycles_an_instance() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--reload-on-memory",
            "8",
            "--lifetime-jitter",
            "0",
        ],
    );
    let http = Http::new();
    assert_eq!(count(&http, &server).await, 1);
    let grown = http.get(&server.url("/grow?mib=16")).await.unwrap();
    assert_eq!(grown.text(), "2");
    assert_eq!(
        count(&http, &server).await,
        1,
        "the instance kept serving above reload-on-memory"
    );
    server.wait_for_output("reason=\"memory\"", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn host_memory_a_guest_holds_counts_toward_reload_on_memory() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--reload-on-memory",
            "8",
            "--lifetime-jitter",
            "0",
        ],
    );
    let http = Http::new();
    assert_eq!(count(&http, &server).await, 1);
    // 200 header fields of 60 KiB kept alive after the request: 12 MB held by fibhost for the
    // guest, while the guest's own linear memory stays well under 8 MiB.
    let held = http
        .get(&server.url("/fields?n=200&kib=60&keep=1"))
        .await
        .unwrap();
    assert_eq!(held.text(), "200");
    assert_eq!(
        count(&http, &server).await,
        1,
        "the instance kept serving while holding more host memory than reload-on-memory"
    );
    server.wait_for_output("reason=\"memory\"", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn traps_and_timeouts_cost_one_request_and_one_instance() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--request-timeout",
            "1",
            "--memory-limit",
            "32",
        ],
    );
    let http = Http::new();
    for (path, status, needle) in [
        ("/panic", 500, "unreachable"),
        ("/stack", 500, "the guest failed"),
        ("/alloc", 500, "the guest failed"),
        ("/loop", 504, "request timeout"),
        ("/noreply", 500, "returned without sending a response"),
    ] {
        assert!(count(&http, &server).await >= 1);
        let reply = http.get(&server.url(path)).await.unwrap();
        assert_eq!(reply.status.as_u16(), status, "{path}: {}", reply.text());
        assert_eq!(reply.header("content-type"), "application/json");
        assert!(reply.text().contains(needle), "{path}: {}", reply.text());
        // The broken instance was replaced: the counter starts again.
        assert_eq!(count(&http, &server).await, 1, "after {path}");
    }
    server.wait_for_output("reason=\"trap\"", Duration::from_secs(10));
    server.wait_for_output("reason=\"timeout\"", Duration::from_secs(10));
    server.wait_for_output("reason=\"no_response\"", Duration::from_secs(10));
    server.wait_for_output(
        "guest ran past the request timeout and was interrupted route=\"/\" worker=1 method=GET uri=/loop",
        Duration::from_secs(10),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_guests_do_not_disturb_other_requests() {
    let server = Arc::new(start(
        guests::TESTBED,
        &[
            "--workers",
            "4",
            "--request-timeout",
            "2",
            "--memory-limit",
            "64",
            "--disable-logging",
        ],
    ));
    let http = Http::new();
    let load = Load::start(2, server.url("/version"), |r| {
        r.status == StatusCode::OK && r.text() == "v1"
    });
    let hostile = [
        ("/loop", Some(504)),
        ("/alloc", Some(500)),
        ("/panic", Some(500)),
        ("/stack", Some(500)),
        ("/stall", None),
    ];
    for (path, status) in hostile {
        let reply = http.get(&server.url(path)).await;
        match status {
            Some(status) => assert_eq!(reply.unwrap().status.as_u16(), status, "{path}"),
            // Headers went out before the stall: the body must be cut off, not end cleanly.
            None => assert!(reply.is_err(), "a stalled body must not look complete"),
        }
    }
    // A large body streams through completely (32 MiB: within the 2 s request timeout even
    // on a loaded machine; the guest writes it inside its call).
    let reply = http.get(&server.url("/stream?mib=32")).await.unwrap();
    assert_eq!(reply.body.len(), 32 * 1024 * 1024);
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "requests to the well-behaved path failed");
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn recycling_every_second_under_load_fails_nothing() {
    let server = Arc::new(start(
        guests::TESTBED,
        &[
            "--workers",
            "4",
            "--max-worker-lifetime",
            "1",
            "--request-timeout",
            "10",
            "--disable-logging",
        ],
    ));
    let http = Http::new();
    let until = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (http, server) = (http.clone(), server.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut slowest) = (0u64, 0u64, Duration::ZERO);
                while Instant::now() < until {
                    let started = Instant::now();
                    match http.get(&server.url("/count")).await {
                        Ok(r) if r.status == StatusCode::OK => ok += 1,
                        _ => failed += 1,
                    }
                    slowest = slowest.max(started.elapsed());
                }
                (ok, failed, slowest)
            })
        })
        .collect();
    let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    for client in clients {
        let (o, f, s) = client.await.unwrap();
        (ok, failed, slowest) = (ok + o, failed + f, slowest.max(s));
    }
    assert_eq!(failed, 0, "{ok} ok, {failed} failed");
    assert!(ok > 100, "only {ok} requests in 10 s");
    // Generous bound: the request timeout, never approached by a healthy request.
    assert!(
        slowest < Duration::from_secs(10),
        "slowest request took {slowest:?}"
    );
    server.wait_for_output("reason=\"lifetime\"", Duration::from_secs(10));
}

/// A guest that returns without a response on an instance's second request serves once per
/// instance: fibhost learns it from that one failure and gives every later request a fresh
/// instance, without `max-requests = 1` in the configuration. (A ComponentizeJS guest is
/// known from the component itself and never fails at all: see the conformance suite.)
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_serves_once_gets_a_fresh_instance_per_request() {
    let server = start(guests::TESTBED, &["--workers", "1"]);
    let http = Http::new();
    let once = || async { http.get(&server.url("/once")).await.unwrap().status };
    assert_eq!(once().await, StatusCode::OK);
    assert_eq!(
        once().await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the one failure it learns from"
    );
    server.wait_for_output(
        "it serves one request per instance",
        Duration::from_secs(10),
    );
    for n in 0..20 {
        assert_eq!(once().await, StatusCode::OK, "request {n} after learning");
    }
}

/// What a guest makes fibhost hold on the host (header fields, body buffers) is bounded by its
/// own `memory-limit`: a guest hoarding 64 MB of fields under a 16 MiB limit is stopped (500,
/// a fresh instance), and the process does not grow by anything like it.
#[tokio::test(flavor = "multi_thread")]
async fn host_memory_a_guest_holds_is_bounded_by_its_memory_limit() {
    let server = start(guests::TESTBED, &["--workers", "1", "--memory-limit", "16"]);
    let http = Http::new();
    assert_eq!(count(&http, &server).await, 1);
    let before = rss_bytes(server.pid());
    let reply = http
        .get(&server.url("/fields?n=2000&kib=32"))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text()
    );
    let grown = rss_bytes(server.pid()).saturating_sub(before);
    assert!(grown < 40 << 20, "the process grew by {} MiB", grown >> 20);
    assert_eq!(
        count(&http, &server).await,
        1,
        "the hoarding instance was replaced"
    );
}

/// The resident set size of process `pid`, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}
