//! The end-to-end harness: paths of the built test guests, a guard that runs the real
//! `fibhost` binary on port 0, and a small HTTP client.
//!
//! The suites themselves live in `tests/e2e/` and are compiled as the `e2e` test of the
//! `fibhost` package, so that cargo builds the binary they spawn.

use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Paths of the guests built by this crate's build script.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// How long a server may take to print its startup line (a debug build compiling a guest).
const STARTUP_LIMIT: Duration = Duration::from_secs(120);

/// Everything a child process wrote, and whether its startup line has appeared.
#[derive(Default)]
struct Output {
    text: String,
    addr: Option<SocketAddr>,
    /// Readers (stdout, stderr) that reached the end of their stream.
    closed: usize,
}

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `check` until it gives `Some`, and returns that; panics naming `what` after `limit`.
/// The one way a test waits for a state it cannot be told about: no test sleeps to
/// synchronise, and `limit` is a bound on a hang, never an assertion about speed.
pub async fn eventually<T, F>(limit: Duration, what: &str, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "never happened within {limit:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for tests without a runtime.
pub fn eventually_blocking<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "never happened within {limit:?}: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// A running `fibhost` process, killed (and its output printed, if the test failed) on drop.
pub struct Server {
    child: Child,
    /// The address from the `Serving HTTP on http://ADDR/` line.
    pub addr: SocketAddr,
    output: Arc<(Mutex<Output>, Condvar)>,
}

/// Why a server did not start.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status.
    pub status: ExitStatus,
    /// All it printed.
    pub output: String,
}

impl Server {
    /// Starts `bin` with `args` plus `--listen 127.0.0.1:0` and waits for its startup line.
    pub fn start(bin: &str, args: &[&str]) -> Server {
        match Server::try_start(bin, args) {
            Ok(server) => server,
            Err(failure) => panic!("fibhost did not start: {failure:?}"),
        }
    }

    /// Like [`Server::start`], but returns the exit status and output if it exits instead.
    pub fn try_start(bin: &str, args: &[&str]) -> Result<Server, StartFailure> {
        let mut command = Command::new(bin);
        command.args(args);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        Server::spawn(command)
    }

    /// Spawns `command` (stdout and stderr captured) and waits for its startup line.
    #[expect(
        clippy::zombie_processes,
        reason = "on success the child moves into the `Server`, whose `Drop` kills and waits for it"
    )]
    pub fn spawn(mut command: Command) -> Result<Server, StartFailure> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot spawn the server binary");
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ];
        for reader in readers {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let (lock, ready) = &*output;
                    let mut out = lock.lock().unwrap();
                    if out.addr.is_none()
                        && let Some(addr) = parse_startup_line(&line)
                    {
                        out.addr = Some(addr);
                        ready.notify_all();
                    }
                    out.text.push_str(&line);
                    out.text.push('\n');
                }
                let (lock, ready) = &*output;
                lock.lock().unwrap().closed += 1;
                ready.notify_all();
            });
        }
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            let (lock, ready) = &*output;
            let out = lock.lock().unwrap();
            if out.closed == 2 {
                // Both streams ended: the process exited (or is about to).
                drop(out);
                let status = child.wait().unwrap();
                let text = output.0.lock().unwrap().text.clone();
                return Err(StartFailure {
                    status,
                    output: text,
                });
            }
            if let Some(addr) = out.addr {
                drop(out);
                return Ok(Server {
                    child,
                    addr,
                    output,
                });
            }
            assert!(
                Instant::now() < deadline,
                "no startup line within {STARTUP_LIMIT:?}:\n{}",
                out.text
            );
            let _ = ready.wait_timeout(out, Duration::from_millis(100)).unwrap();
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.0.lock().unwrap().text.clone()
    }

    /// The address printed after `label` in a log line, e.g. `Admin listening on http://`.
    pub fn logged_addr(&self, label: &str) -> SocketAddr {
        self.wait_for_output(label, Duration::from_secs(30));
        let output = self.output();
        addr_after(&output, label)
            .unwrap_or_else(|| panic!("no address after `{label}` in:\n{output}"))
    }

    /// Waits until the output contains `needle` (or panics after `limit`).
    pub fn wait_for_output(&self, needle: &str, limit: Duration) {
        let what = format!("`{needle}` in the server's output");
        eventually_blocking(limit, &what, || {
            self.output().contains(needle).then_some(())
        });
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) {
        let signal = match name {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "HUP" => libc::SIGHUP,
            other => panic!("no signal `{other}` in this harness"),
        };
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        #[expect(
            unsafe_code,
            reason = "kill(2) with a pid of our own child and a valid signal"
        )]
        // SAFETY: kill has no memory-safety preconditions; the pid is our running child's.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "kill -{name} failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit (and its output to be read), up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = eventually_blocking(limit, "the server's exit", || {
            self.child.try_wait().unwrap()
        });
        let (lock, ready) = &*self.output;
        let mut out = lock.lock().unwrap();
        while out.closed < 2 {
            out = ready.wait(out).unwrap();
        }
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- fibhost output ----\n{}------------------------",
                self.output()
            );
        }
    }
}

/// The address printed right after the first `label` in `text` (up to a `/` or whitespace),
/// e.g. after `Admin listening on http://` in fibhost's log.
pub fn addr_after(text: &str, label: &str) -> Option<SocketAddr> {
    let rest = &text[text.find(label)? + label.len()..];
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn parse_startup_line(line: &str) -> Option<SocketAddr> {
    let start = line.find("Serving HTTP")?;
    let rest = &line[start..];
    let rest = &rest[rest.find("://")? + 3..];
    rest.split('/').next()?.parse().ok()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP/1.1 client with keep-alive, cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A new client with its own connection pool.
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, Bytes::new()).await
    }

    /// Sends one request and reads the whole response.
    pub async fn send(&self, method: Method, url: &str, body: Bytes) -> anyhow::Result<Reply> {
        self.send_with(method, url, body, &[]).await
    }

    /// Like [`Http::send`], with extra request headers.
    pub async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body))?;
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Runs `curl` with `args` and returns (exit success, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is needed by this test (scripts/setup.sh installs it)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether a file exists, for tests that need an optional built artifact.
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// A fresh, empty directory for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    // Unique per call: tests run in parallel, and two calls with the same name must not
    // wipe each other's files.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("fibhost-e2e-{name}-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Continuous background load: `clients` tasks each sending `GET url` back to back until
/// [`Load::finish`], counting the responses `accept` approves and those it does not (or that
/// fail outright).
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the clients (on the current tokio runtime).
    pub fn start(clients: usize, url: String, accept: fn(&Reply) -> bool) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, url) =
                    (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let http = Http::new();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).await {
                            Ok(reply) if accept(&reply) => ok.fetch_add(1, Ordering::Relaxed),
                            other => {
                                eprintln!("load: unexpected answer from {url}: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the clients and returns (accepted, failed) counts.
    pub async fn finish(self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
