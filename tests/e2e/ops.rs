//! Operations: the admin listener (health, readiness, token, Prometheus metrics, uWSGI stats),
//! the stats socket read by the real `uwsgitop`, and SO_REUSEPORT.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::start;
use fibhost_e2e::{Http, Server, addr_after, eventually, guests};

use crate::admin_url as admin;

/// Fetches and parses `/metrics` with a Prometheus text-format parser; returns each sample as
/// `name{k="v",...}` (labels sorted) → value.
async fn metrics(http: &Http, server: &Server, token: &str) -> HashMap<String, f64> {
    scrape(http, &admin(server, "/metrics"), token).await
}

/// [`metrics`] from the admin listener's `/metrics` at `url`.
async fn scrape(http: &Http, url: &str, token: &str) -> HashMap<String, f64> {
    let auth = format!("Bearer {token}");
    let reply = http
        .send_with(Method::GET, url, "".into(), &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let key = if labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            (key, value)
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample `{key}` in {:#?}", m.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_requests_errors_and_recycles() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "2",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            "s3cret",
            "--request-timeout",
            "1",
        ],
    );
    let http = Http::new();
    let before = metrics(&http, &server, "s3cret").await;
    assert_eq!(
        value(&before, "fibhost_requests_total{class=\"2xx\",route=\"/\"}"),
        0.0
    );
    for _ in 0..5 {
        assert_eq!(
            http.get(&server.url("/count")).await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(
        http.get(&server.url("/panic")).await.unwrap().status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        http.get(&server.url("/loop")).await.unwrap().status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        http.get(&server.url("/nope")).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    // The counters are updated when each response completes (the recycles just after):
    // wait until the last of them is counted, then check them all.
    let after = eventually(
        Duration::from_secs(30),
        "the timeout's recycle counted",
        || async {
            let m = metrics(&http, &server, "s3cret").await;
            let key = "fibhost_instance_recycles_total{reason=\"timeout\",route=\"/\"}";
            (m.get(key) == Some(&1.0)).then_some(m)
        },
    )
    .await;
    assert_eq!(
        value(&after, "fibhost_requests_total{class=\"2xx\",route=\"/\"}"),
        5.0
    );
    assert_eq!(
        value(&after, "fibhost_requests_total{class=\"4xx\",route=\"/\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "fibhost_requests_total{class=\"5xx\",route=\"/\"}"),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "fibhost_instance_recycles_total{reason=\"trap\",route=\"/\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "fibhost_instance_recycles_total{reason=\"timeout\",route=\"/\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "fibhost_instance_recycles_total{reason=\"lifetime\",route=\"/\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "fibhost_request_duration_seconds_count{route=\"/\"}"
        ),
        8.0
    );
    assert_eq!(
        value(&after, "fibhost_workers{route=\"/\",state=\"idle\"}"),
        2.0
    );
    assert_eq!(value(&after, "fibhost_queue_depth{route=\"/\"}"), 0.0);
    assert!(value(&after, "fibhost_pool_slots_in_use") >= 2.0);
    assert!(value(&after, "fibhost_process_resident_memory_bytes") > 1e6);
    assert!(
        value(
            &after,
            "fibhost_instance_memory_bytes{route=\"/\",worker=\"1\"}"
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_metric_counts_host_memory_a_guest_holds() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            "s3cret",
        ],
    );
    let http = Http::new();
    let key = "fibhost_instance_memory_bytes{route=\"/\",worker=\"1\"}";
    assert_eq!(http.get(&server.url("/count")).await.unwrap().text(), "1");
    let before = value(&metrics(&http, &server, "s3cret").await, key);
    assert!(before < 8e6, "the testbed starts with {before} bytes");
    // 200 header fields of 60 KiB, kept alive by the guest after its request.
    let held = http.get(&server.url("/fields?n=200&kib=60&keep=1")).await;
    assert_eq!(held.unwrap().text(), "200");
    // The worker records the instance's memory once the guest has returned, which may be just
    // after the client has the response.
    let what = "the memory metric to include 12 MB of held header fields";
    let after = eventually(Duration::from_secs(10), what, || async {
        let now = value(&metrics(&http, &server, "s3cret").await, key);
        (now >= before + 200.0 * 60.0 * 1024.0).then_some(now)
    })
    .await;
    assert!(after < 64e6, "{after} bytes for 12 MB of fields");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_output_line_without_newline_is_logged_with_its_request() {
    let server = start(guests::TESTBED, &["--workers", "1"]);
    let http = Http::new();
    let url = server.url("/print?text=no-newline-after-this");
    let reply = http
        .send_with(Method::GET, &url, "".into(), &[("x-request-id", "print-1")])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    // The instance lives on (it is reused), so only the end of the request can flush it.
    // (The access line has the query, not what the guest printed.)
    server.wait_for_output("printed no-newline-after-this", Duration::from_secs(10));
    let line = server
        .output()
        .lines()
        .find(|l| l.contains("printed no-newline-after-this"))
        .map(str::to_string)
        .unwrap();
    assert!(line.contains("print-1"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_is_enforced_but_probes_are_open() {
    let server = start(
        guests::FIB,
        &[
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            "s3cret",
        ],
    );
    let http = Http::new();
    for path in ["/metrics", "/stats", "/admin/status"] {
        let reply = http.get(&admin(&server, path)).await.unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let reply = http
        .send(Method::POST, &admin(&server, "/admin/reload"), "".into())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let (ok, out, _) = fibhost_e2e::curl(&[
        "-H",
        "Authorization: Bearer wrong",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &admin(&server, "/stats"),
    ]);
    assert!(ok);
    assert_eq!(out, "401");
    let (ok, out, _) = fibhost_e2e::curl(&[
        "-H",
        "Authorization: Bearer s3cret",
        &admin(&server, "/admin/status"),
    ]);
    assert!(ok);
    assert!(out.contains("\"sha256\""), "{out}");
    assert_eq!(
        http.get(&admin(&server, "/healthz")).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&admin(&server, "/readyz")).await.unwrap().status,
        StatusCode::OK
    );
    // Never on the public listener.
    assert_eq!(
        http.get(&server.url("/metrics")).await.unwrap().status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_flips_to_503_while_draining() {
    let mut server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-timeout",
            "30",
        ],
    );
    let http = Http::new();
    let readyz = admin(&server, "/readyz");
    assert_eq!(http.get(&readyz).await.unwrap().status, StatusCode::OK);
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), server.url("/sleep?ms=3000"));
        async move { http.get(&url).await }
    });
    crate::wait_for_load(&server, 1, 0).await;
    server.signal("TERM");
    let what = "/readyz answering 503 during the drain";
    let reply = eventually(Duration::from_secs(30), what, || async {
        let reply = Http::new().get(&readyz).await.ok()?;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    assert!(reply.text().contains("draining"));
    let reply = slow.await.unwrap().unwrap();
    assert_eq!(reply.text(), "slept v1");
    // Keep-alive responses during the drain tell the client to close.
    assert_eq!(reply.header("connection"), "close");
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_json_and_socket_speak_uwsgi() {
    let server = start(
        guests::FIB,
        &[
            "--workers",
            "3",
            "--admin-listen",
            "127.0.0.1:0",
            "--stats",
            "127.0.0.1:0",
        ],
    );
    let http = Http::new();
    for n in 0..10 {
        http.get(&server.url(&format!("/{n}"))).await.unwrap();
    }
    // Each worker counts its request after the response went out: wait for the tenth.
    let stats = eventually(Duration::from_secs(30), "10 requests in /stats", || async {
        let reply = http.get(&admin(&server, "/stats")).await.unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let total: u64 = (stats["workers"].as_array()?.iter())
            .map(|w| w["requests"].as_u64().unwrap_or(0))
            .sum();
        (total == 10).then_some(stats)
    })
    .await;
    let workers = stats["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    for key in [
        "id",
        "pid",
        "requests",
        "exceptions",
        "status",
        "rss",
        "vsz",
        "running_time",
        "last_spawn",
        "respawn_count",
        "tx",
        "avg_rt",
        "harakiri_count",
        "signals",
    ] {
        assert!(
            workers[0].get(key).is_some(),
            "worker field `{key}` missing: {}",
            workers[0]
        );
    }
    assert!(
        workers
            .iter()
            .map(|w| w["tx"].as_u64().unwrap())
            .sum::<u64>()
            > 0
    );
    assert!(stats["listen_queue"].is_u64() && stats["version"].is_string());
    assert!(
        !stats.to_string().contains("user-agent"),
        "stats must not leak request data"
    );

    // The plain TCP stats socket: JSON, then EOF.
    let stats_addr = server.logged_addr("Stats socket on ");
    let mut raw = String::new();
    std::net::TcpStream::connect(stats_addr)
        .unwrap()
        .read_to_string(&mut raw)
        .unwrap();
    let from_socket: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(from_socket["workers"].as_array().unwrap().len(), 3);

    // The real uwsgitop (PyPI), in a pseudo-terminal for its curses screen.
    let uwsgitop = format!("{}/../.venv-tools/bin/uwsgitop", env!("CARGO_MANIFEST_DIR"));
    if !std::path::Path::new(&uwsgitop).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "{uwsgitop} is missing: scripts/setup.sh --test installs it"
        );
        eprintln!(
            "skipping the uwsgitop check: {uwsgitop} is not installed (scripts/setup.sh --test)"
        );
        return;
    }
    let screen = tokio::task::block_in_place(|| uwsgitop_screen(&uwsgitop, stats_addr));
    assert!(!screen.contains("Traceback"), "uwsgitop failed:\n{screen}");
    assert!(
        screen.contains("WID") && screen.contains("fibhost"),
        "uwsgitop did not draw the worker table:\n{screen}"
    );
}

#[test]
fn reuse_port_lets_two_processes_share_a_port() {
    let first = start(guests::FIB, &["--workers", "1", "--reuse-port"]);
    let addr = first.addr.to_string();
    let second = Server::start(
        crate::fibhost(),
        &[
            "--component",
            guests::FIB,
            "--workers",
            "1",
            "--reuse-port",
            "--listen",
            &addr,
        ],
    );
    assert_eq!(second.addr, first.addr);
    for _ in 0..20 {
        let (ok, body, _) = fibhost_e2e::curl(&[&first.url("/5")]);
        assert!(ok);
        assert_eq!(body, "[0, 1, 1, 2, 3, 5]");
    }
}

/// Runs the real uwsgitop against `addr` in a pseudo-terminal (`script`, from
/// util-linux) and returns what it drew, once the worker table is on screen.
///
/// uwsgitop has no one-shot mode, so the screen is read as it arrives and the
/// program is stopped once the table is there. No fixed window: on a loaded CI
/// machine Python alone can take seconds to start. The 120 s `timeout` only
/// bounds a uwsgitop that never draws; the failure message then carries
/// everything `script` printed and its exit status.
fn uwsgitop_screen(uwsgitop: &str, addr: std::net::SocketAddr) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("script")
        .args([
            "-qfec",
            &format!("stty rows 40 cols 200; TERM=xterm exec timeout 120 {uwsgitop} {addr}"),
            "/dev/null",
        ])
        // Held open: `script` ends the session when its input reaches EOF.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs uwsgitop in a pseudo-terminal");
    let mut stdout = child.stdout.take().unwrap();
    let mut screen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&screen);
        if text.contains("WID") && text.contains("fibhost") {
            break;
        }
        match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => screen.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = child.kill();
    let mut errors = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut errors);
    let status = child.wait().unwrap();
    let mut screen = String::from_utf8_lossy(&screen).into_owned();
    if !screen.contains("WID") {
        screen.push_str(&format!("\n[script exited: {status}; stderr: {errors}]"));
    }
    screen
}

/// A log reader that stops reading must never stall serving: once the pipe and the queue to the
/// writer thread are full, lines are dropped and counted in `fibhost_log_lines_dropped_total`,
/// and every request is still answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_log_reader_costs_log_lines_not_requests() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(crate::fibhost())
        .args(["--component", guests::FIB, "--workers", "2"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log up to the serving line, then never again (the pipe stays open).
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut admin, mut serving) = (None, None);
    let mut line = String::new();
    while serving.is_none() {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "fibhost exited");
        admin = admin.or(addr_after(&line, "Admin listening on http://"));
        serving = serving.or(addr_after(&line, "Serving HTTP on http://"));
    }
    let (admin, serving) = (admin.unwrap(), serving.unwrap());
    let http = Http::new();
    let metrics_url = format!("http://{admin}/metrics");
    let dropped = async || {
        let samples = scrape(&http, &metrics_url, "").await;
        value(&samples, "fibhost_log_lines_dropped_total")
    };
    assert_eq!(dropped().await, 0.0);
    // The pipe holds ~64 KiB and the queue 16 Ki lines: drops start after ~20k requests.
    let mut served = 0u64;
    while dropped().await == 0.0 {
        assert!(
            served < 400_000,
            "{served} requests served and no log line dropped"
        );
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (http, url) = (http.clone(), format!("http://{serving}/10"));
            batch.spawn(async move {
                for _ in 0..250 {
                    let reply = http.get(&url).await.unwrap();
                    assert_eq!(reply.status, StatusCode::OK);
                }
            });
        }
        // A hang guard, not a timing: with the log blocking the server this would never end.
        let all = async {
            while let Some(done) = batch.join_next().await {
                done.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(120), all)
            .await
            .expect("requests stalled behind the unread log");
        served += 2000;
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(log);
}

/// The admin listener has the public listener's bounds: a client that sends nothing is closed
/// after the header-read timeout, and the listener keeps answering.
#[test]
fn a_silent_admin_client_is_closed() {
    let server = crate::start(
        guests::FIB,
        &[
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "1",
        ],
    );
    let admin = server.logged_addr("Admin listening on http://");
    let mut silent = std::net::TcpStream::connect(admin).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = silent.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the silent admin client was not closed: {closed:?}"
    );
    let (ok, out, _) = fibhost_e2e::curl(&[&format!("http://{admin}/healthz")]);
    assert!(ok && out.contains("ok"), "{out}");
}
