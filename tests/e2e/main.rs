//! End-to-end suites: each test spawns the real `fibhost` binary on port 0 with real guests and
//! talks real HTTP to it. One test binary, several modules, to pay the link time once.

mod activation;
mod api;
mod check;
mod conformance;
mod deploy;
mod lifecycle;
mod new;
mod ops;
mod outbound;
mod p3;
mod prometheus;
mod routes;
mod serving;
mod startup;
mod swap;
mod uwsgi;
mod wsgi;

/// Path of the `fibhost` binary cargo built for this test run.
fn fibhost() -> &'static str {
    env!("CARGO_BIN_EXE_fibhost")
}

/// Starts fibhost serving `component` with extra `args`.
fn start(component: &str, args: &[&str]) -> fibhost_e2e::Server {
    let mut all = vec!["--component", component];
    all.extend_from_slice(args);
    fibhost_e2e::Server::start(fibhost(), &all)
}

/// Like [`start`], with the pool's debug lines in the log: routine recycles at
/// `max-requests` (reason `requests`) are logged only at debug level.
fn start_with_recycle_log(component: &str, args: &[&str]) -> fibhost_e2e::Server {
    let mut command = std::process::Command::new(fibhost());
    command.env("RUST_LOG", "info,fibhost::pool=debug");
    command.args(["--component", component, "--listen", "127.0.0.1:0"]);
    command.args(args);
    fibhost_e2e::Server::spawn(command).expect("fibhost starts")
}

/// `http://ADMIN` + `path` for a server started with `--admin-listen`.
fn admin_url(server: &fibhost_e2e::Server, path: &str) -> String {
    format!(
        "http://{}{path}",
        server.logged_addr("Admin listening on http://")
    )
}

/// `POST /admin/reload?query` on the admin listener.
async fn admin_reload(
    http: &fibhost_e2e::Http,
    server: &fibhost_e2e::Server,
    query: &str,
) -> fibhost_e2e::Reply {
    let url = admin_url(server, &format!("/admin/reload?{query}"));
    http.send(http::Method::POST, &url, "".into())
        .await
        .unwrap()
}

/// Waits until `server` (started with `--admin-listen`) reports `busy` workers running a
/// request and `queued` requests waiting, so a test can order its requests without sleeping.
async fn wait_for_load(server: &fibhost_e2e::Server, busy: u64, queued: u64) {
    let stats = format!(
        "http://{}/stats",
        server.logged_addr("Admin listening on http://")
    );
    let http = fibhost_e2e::Http::new();
    let what = format!("{busy} busy and {queued} queued");
    fibhost_e2e::eventually(std::time::Duration::from_secs(30), &what, || async {
        let reply = http.get(&stats).await.unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        (stats["load"] == busy && stats["listen_queue"] == queued).then_some(())
    })
    .await;
}

/// Runs fibhost expecting it to fail at startup; returns its output.
fn fails(args: &[&str]) -> String {
    match fibhost_e2e::Server::try_start(fibhost(), args) {
        Ok(server) => panic!(
            "fibhost started but should have failed:\n{}",
            server.output()
        ),
        Err(failure) => {
            assert!(!failure.status.success(), "exit status must be non-zero");
            failure.output
        }
    }
}

/// An independent reference for the Fibonacci API: decimal strings added digit by digit.
fn reference_sequence(n: &str) -> String {
    fn add(a: &str, b: &str) -> String {
        let (a, b): (Vec<u8>, Vec<u8>) = (a.bytes().rev().collect(), b.bytes().rev().collect());
        let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
        let mut carry = 0;
        for i in 0..a.len().max(b.len()) {
            let d = carry + a.get(i).map_or(0, |d| d - b'0') + b.get(i).map_or(0, |d| d - b'0');
            out.push(b'0' + d % 10);
            carry = d / 10;
        }
        if carry > 0 {
            out.push(b'0' + carry);
        }
        out.reverse();
        String::from_utf8(out).unwrap()
    }
    let below = |a: &str, b: &str| (a.len(), a) < (b.len(), b);
    let n = n.trim_start_matches('+');
    let mut seq = vec!["0".to_string(), "1".to_string()];
    if !n.starts_with('-') {
        let n = n.trim_start_matches('0');
        while below(seq.last().unwrap(), n) {
            let next = add(&seq[seq.len() - 2], &seq[seq.len() - 1]);
            seq.push(next);
        }
    }
    format!("[{}]", seq.join(", "))
}

#[test]
fn reference_is_right() {
    assert_eq!(
        reference_sequence("9000"),
        "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946]"
    );
    assert_eq!(reference_sequence("1"), "[0, 1]");
    assert_eq!(reference_sequence("-5"), "[0, 1]");
    assert_eq!(reference_sequence("2"), "[0, 1, 1, 2]");
}
