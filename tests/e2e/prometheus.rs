//! `/metrics` as real clients read it: both exposition formats through independent parsers
//! (Python's `prometheus_client`, `promtool`), and a real Prometheus server that scrapes fibhost
//! and answers a `rate()` query.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::{admin_url, start};
use fibhost_e2e::{Http, Server, addr_after, eventually, eventually_blocking, guests, temp_dir};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The `Accept` header Prometheus 2.42 scrapes with.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The path of a test tool that `scripts/setup.sh --test` installs, or `None` (the test is then
/// skipped, except in CI, where a missing tool fails it).
fn tool(path: &str) -> Option<String> {
    let found = std::path::Path::new(path).exists();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{path} is missing: scripts/setup.sh --test installs it"
        );
        eprintln!("skipping: {path} is not installed (scripts/setup.sh --test)");
    }
    found.then(|| path.to_string())
}

/// Runs `program args…` with `input` on stdin; returns (success, stdout + stderr).
fn run_with_input(program: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Parses an exposition with Python's `prometheus_client` (`module` is its classic
/// `prometheus_client.parser` or its strict `prometheus_client.openmetrics.parser`) and prints
/// one line per sample: `family type sample {labels} value`.
const PY_PARSE: &str = r#"
import json, sys, importlib
parse = importlib.import_module(sys.argv[1]).text_string_to_metric_families
for family in parse(sys.stdin.read()):
    for s in family.samples:
        print(family.name, family.type, s.name, json.dumps(s.labels, sort_keys=True), float(s.value))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_each_format_its_parsers_read() {
    let root = env!("CARGO_MANIFEST_DIR");
    let Some(python) = tool(&format!("{root}/../.venv-tools/bin/python")) else {
        return;
    };
    let server = start(guests::FIB, &["--admin-listen", "127.0.0.1:0"]);
    let http = Http::new();
    for _ in 0..3 {
        let reply = http.get(&server.url("/10")).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let url = admin_url(&server, "/metrics");
    let fetch = |accept: Option<&'static str>| {
        let (http, url) = (&http, &url);
        async move {
            let headers: Vec<(&str, &str)> = accept.into_iter().map(|a| ("accept", a)).collect();
            let reply = (http.send_with(Method::GET, url, "".into(), &headers).await).unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            (reply.header("content-type").to_string(), reply.text())
        }
    };

    // A client that asks for nothing in particular (curl, Python) gets the classic format,
    // which Python's parser of that format reads with typed counters.
    let (_, text) = fetch(None).await;
    let (ok, parsed) = run_with_input(
        &python,
        &["-c", PY_PARSE, "prometheus_client.parser"],
        &text,
    );
    assert!(
        ok,
        "prometheus_client's text parser failed:\n{parsed}\n{text}"
    );
    // The classic parser files a counter under its name without `_total`, typed `counter`.
    let served =
        r#"fibhost_requests counter fibhost_requests_total {"class": "2xx", "route": "/"} 3.0"#;
    assert!(
        parsed.lines().any(|l| l == served),
        "{served:?} not in:\n{parsed}"
    );
    assert!(
        !parsed.contains(" unknown "),
        "a family read as untyped:\n{parsed}"
    );
    if let Some(promtool) = tool("/usr/bin/promtool") {
        let (ok, lint) = run_with_input(&promtool, &["check", "metrics"], &text);
        assert!(
            ok && lint.is_empty(),
            "promtool check metrics:\n{lint}\n{text}"
        );
    }

    assert!(
        text.contains("# TYPE fibhost_requests_total counter\n"),
        "{text}"
    );

    // So does any client that does not ask for OpenMetrics, with its content type.
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
        let (content_type, body) = fetch(accept).await;
        assert_eq!(content_type, TEXT, "Accept: {accept:?}");
        assert!(!body.contains("# EOF"), "{body}");
    }
    // Prometheus's own Accept header gets OpenMetrics, which the strict OpenMetrics parser reads.
    for accept in [PROMETHEUS_ACCEPT, "application/openmetrics-text"] {
        let (content_type, body) = fetch(Some(accept)).await;
        assert_eq!(content_type, OPENMETRICS, "Accept: {accept}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
    let (_, open) = fetch(Some(PROMETHEUS_ACCEPT)).await;
    let module = "prometheus_client.openmetrics.parser";
    let (ok, parsed) = run_with_input(&python, &["-c", PY_PARSE, module], &open);
    assert!(
        ok,
        "prometheus_client's OpenMetrics parser failed:\n{parsed}\n{open}"
    );
    let served =
        r#"fibhost_requests counter fibhost_requests_total {"class": "2xx", "route": "/"} 3.0"#;
    assert!(
        parsed.lines().any(|l| l == served),
        "{served:?} not in:\n{parsed}"
    );
    let histogram =
        "fibhost_request_duration_seconds histogram fibhost_request_duration_seconds_count";
    assert!(parsed.contains(histogram), "{parsed}");
}

/// A Prometheus server on a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (the admin listener) every second and waits for
    /// its web address.
    fn start(prometheus: &str, target: std::net::SocketAddr) -> (Prometheus, String) {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: fibhost\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot run prometheus");
        let running = Prometheus { child, log };
        // Prometheus logs the port it was given (`:0`), then the one it got.
        let addr = eventually_blocking(Duration::from_secs(60), "Prometheus listening", || {
            addr_after(&running.output(), "msg=\"Listening on\" address=")
        });
        (running, format!("http://{addr}"))
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus log ----\n{}------------------------",
                self.output()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_fibhost_and_answers_rate() {
    let Some(prometheus) = tool("/usr/bin/prometheus") else {
        return;
    };
    let server: Server = start(guests::FIB, &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.logged_addr("Admin listening on http://");
    let (_prometheus, api) = Prometheus::start(&prometheus, admin);
    let http = Http::new();
    let query = "rate(fibhost_requests_total{route=\"/\",class=\"2xx\"}[5s])";
    let url = format!(
        "{api}/api/v1/query?query={}",
        query
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('[', "%5B")
            .replace(']', "%5D")
            .replace('=', "%3D")
            .replace(',', "%2C")
    );
    // Traffic keeps flowing while Prometheus scrapes: a rate needs two scrapes that differ.
    let rate: f64 = eventually(
        Duration::from_secs(90),
        "a positive rate from Prometheus",
        || async {
            let reply = http.get(&server.url("/10")).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            let reply = http.get(&url).await.ok()?;
            let answer: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
            assert_eq!(answer["status"], "success", "{answer}");
            let value = answer["data"]["result"][0]["value"][1].as_str()?;
            value.parse().ok().filter(|rate: &f64| *rate > 0.0)
        },
    )
    .await;
    assert!(rate.is_finite());

    // Prometheus stored the counter under its sample name, and saw the target healthy.
    let up = format!("{api}/api/v1/query?query=up");
    let answer: serde_json::Value =
        serde_json::from_slice(&http.get(&up).await.unwrap().body).unwrap();
    assert_eq!(answer["data"]["result"][0]["value"][1], "1", "{answer}");
}
