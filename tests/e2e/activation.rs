//! systemd socket activation, driven by the real `systemd-socket-activate` (Debian's systemd
//! package): this test process plays the service manager's part, holding the listening sockets
//! (bound on port 0) across fibhost's restarts and passing them as `LISTEN_FDS` to the launcher,
//! which hands them on with `LISTEN_PID` and `LISTEN_FDNAMES` exactly as systemd does.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fibhost_e2e::{Http, Server, StartFailure, eventually_blocking, guests};

use crate::fibhost;

const LAUNCHER: &str = "/usr/bin/systemd-socket-activate";

/// Whether `systemd-socket-activate` is installed (else the test is skipped, except in CI).
fn launcher_installed() -> bool {
    let found = std::path::Path::new(LAUNCHER).exists();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{LAUNCHER} is missing: scripts/setup.sh --test installs it (Debian's systemd)"
        );
        eprintln!("skipping: {LAUNCHER} is not installed (scripts/setup.sh --test)");
    }
    found
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Runs fibhost (serving the Fibonacci guest) under `systemd-socket-activate`, which receives
/// `sockets` as fds 3, 4, … and passes them on named `names` (`--fdname`), and waits for the
/// startup line. The launcher starts fibhost on the first connection, as systemd does on
/// demand: a request must be waiting on one of the sockets before this is called.
#[expect(
    unsafe_code,
    reason = "placing the sockets at fds 3.. in the child between fork and exec"
)]
fn try_activate(sockets: &[&TcpListener], names: Option<&str>) -> Result<Server, StartFailure> {
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let mut command = Command::new("sh");
    // `$$` is the pid that the launcher (and, after its exec, fibhost) keeps.
    command.args([
        "-c",
        &format!("LISTEN_PID=$$ LISTEN_FDS={} exec \"$0\" \"$@\"", fds.len()),
        LAUNCHER,
    ]);
    if let Some(names) = names {
        command.arg(format!("--fdname={names}"));
    }
    command.args([fibhost(), "--component", guests::FIB]);
    // SAFETY: only async-signal-safe calls (fcntl, dup2) on fds this process owns; no
    // allocation. The sockets are first copied above fd 100, so that placing one at 3..
    // cannot overwrite another not yet placed.
    unsafe {
        command.pre_exec(move || {
            let mut high = [0; 8];
            for (slot, fd) in high.iter_mut().zip(&fds) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(&high[..fds.len()]) {
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Server::spawn(command)
}

/// [`try_activate`], which must start.
fn activate(sockets: &[&TcpListener], names: Option<&str>) -> Server {
    try_activate(sockets, names).unwrap_or_else(|f| panic!("fibhost did not start: {f:?}"))
}

/// Connects to `addr` and sends `GET /10`, closing the connection after the response.
fn send(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(b"GET /10 HTTP/1.1\r\nHost: fibhost\r\nConnection: close\r\n\r\n")?;
    Ok(stream)
}

/// Reads the whole response of a request sent with [`send`].
fn response(mut stream: TcpStream) -> std::io::Result<String> {
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

fn assert_fibonacci(response: &str) {
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n")
            && response.ends_with("[0, 1, 1, 2, 3, 5, 8, 13]"),
        "not the answer to GET /10:\n{response}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_socket_activate_hands_over_the_named_sockets() {
    if !launcher_installed() {
        return;
    }
    let (public, admin, stats) = (listener(), listener(), listener());
    // The first connection starts fibhost (on-demand activation); it waits in the backlog.
    let first = send(public.local_addr().unwrap()).unwrap();
    // Names, not positions, tell the sockets apart.
    let server = tokio::task::block_in_place(|| {
        activate(&[&admin, &public, &stats], Some("admin:http:stats"))
    });
    assert_eq!(server.addr, public.local_addr().unwrap());
    assert_eq!(
        server.logged_addr("Admin listening on http://"),
        admin.local_addr().unwrap()
    );
    assert_eq!(
        server.logged_addr("Stats socket on "),
        stats.local_addr().unwrap()
    );
    assert_fibonacci(&tokio::task::block_in_place(|| response(first)).unwrap());

    let http = Http::new();
    let healthz = format!("http://{}/healthz", admin.local_addr().unwrap());
    assert_eq!(http.get(&healthz).await.unwrap().status, 200);
    let stats_json = tokio::task::block_in_place(|| {
        let mut raw = String::new();
        let mut stream = TcpStream::connect(stats.local_addr().unwrap()).unwrap();
        stream.read_to_string(&mut raw).unwrap();
        raw
    });
    let stats_json: serde_json::Value = serde_json::from_str(&stats_json).unwrap();
    assert!(stats_json["workers"].is_array(), "{stats_json}");
    assert!(
        server
            .output()
            .contains("listening sockets from the service manager"),
        "{}",
        server.output()
    );
}

#[test]
fn a_handed_over_admin_socket_beyond_loopback_needs_a_token() {
    if !launcher_installed() {
        return;
    }
    let public = listener();
    let admin = TcpListener::bind("0.0.0.0:0").unwrap();
    let _first = send(public.local_addr().unwrap()).unwrap();
    let failure = try_activate(&[&public, &admin], Some("http:admin"))
        .err()
        .expect("fibhost must refuse an admin socket beyond loopback without a token");
    assert!(!failure.status.success());
    assert!(
        failure.output.contains("`admin-listen` is `0.0.0.0:")
            && failure.output.contains("no `admin-token` is set"),
        "{}",
        failure.output
    );
}

/// Requests sent back to back on fresh connections until stopped, counting answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match send(addr).and_then(response) {
                        Ok(text) if text.starts_with("HTTP/1.1 200 OK\r\n") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(text) => failed.lock().unwrap().push(text),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Waits until `more` responses beyond those counted so far have arrived.
    fn wait_for(&self, more: u64) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        eventually_blocking(Duration::from_secs(60), "responses under load", || {
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

#[test]
fn a_restart_under_socket_activation_refuses_no_connection() {
    if !launcher_installed() {
        return;
    }
    // One socket, unnamed (no --fdname): the public listener.
    let public = listener();
    let addr = public.local_addr().unwrap();
    let first = send(addr).unwrap();
    let mut old = activate(&[&public], None);
    assert_eq!(old.addr, addr);
    assert_fibonacci(&response(first).unwrap());

    let load = Load::start(addr);
    load.wait_for(5);
    old.signal("TERM");
    assert!(
        old.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        old.output()
    );

    // No fibhost runs now, yet the socket (held here, as systemd holds it) accepts: the
    // connection waits in the backlog for the next fibhost.
    let between = send(addr).expect("a connection between two fibhost processes is accepted");
    let new = activate(&[&public], None);
    assert_eq!(new.addr, addr);
    assert_fibonacci(&response(between).unwrap());
    load.wait_for(5);
    let (ok, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len() as u64
    );
}
