//! The deployment examples in `examples/deploy/`, exercised for real: nginx (configured from
//! the shipped `nginx.conf`) in front of two fibhost processes loses no request while one of
//! them drains after SIGTERM, and the Kubernetes manifests pass `scripts/validate-deploy.sh`.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::{reference_sequence, start};
use fibhost_e2e::{Http, guests};

/// The repository root (this test belongs to the `host/` package).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// A fresh scratch directory under cargo's per-target temp dir, removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("deploy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("cannot create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago (nginx cannot be told to pick one itself).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// `examples/deploy/nginx.conf` made runnable by an unprivileged test: in the foreground,
/// pid, logs and temp files in `dir`, listening on `listen`, proxying to `upstreams`.
/// Everything else (keep-alive, retries, timeouts) is the shipped file unchanged. Panics if
/// the file no longer has the shape this rewrite expects, rather than test something else.
fn nginx_config(
    template: &str,
    dir: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
) -> String {
    let dir = dir.display();
    let mut out = String::from("daemon off;\n");
    let (mut listens, mut servers, mut in_upstream) = (0, 0, false);
    for line in template.lines() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let directive = code.split_whitespace().next().unwrap_or("");
        let replaced = match directive {
            // Only root may switch users; nginx runs as whoever runs the test.
            "user" => format!("# {code}"),
            "pid" => format!("pid {dir}/nginx.pid;"),
            "error_log" => format!("error_log {dir}/error.log info;"),
            "access_log" => format!("access_log {dir}/access.log;"),
            "listen" => {
                listens += 1;
                format!("listen {listen};")
            }
            "upstream" => {
                in_upstream = true;
                code.to_string()
            }
            "}" if in_upstream => {
                in_upstream = false;
                code.to_string()
            }
            "server" if in_upstream => {
                // Keep the shipped parameters (max_fails, …) on the first servers; drop the
                // servers beyond the ones this test runs.
                let params = code
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, rest)| {
                        rest.trim_start()
                            .split_once(char::is_whitespace)
                            .map_or("", |(_, p)| p)
                    });
                let Some(addr) = upstreams.get(servers) else {
                    continue;
                };
                servers += 1;
                format!("server {addr} {params}")
                    .trim_end()
                    .trim_end_matches(';')
                    .to_string()
                    + ";"
            }
            "http" => {
                let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
                    .iter()
                    .map(|kind| format!(" {kind}_temp_path {dir}/{kind}_temp;"))
                    .collect();
                format!("{code}{temp}")
            }
            _ => code.to_string(),
        };
        out.push_str(indent);
        out.push_str(&replaced);
        out.push('\n');
    }
    assert_eq!(listens, 1, "nginx.conf should have one `listen`");
    assert_eq!(
        servers,
        upstreams.len(),
        "nginx.conf should list at least {} upstream servers",
        upstreams.len()
    );
    out
}

/// A running nginx, stopped on drop (its error log printed if the test failed).
pub(crate) struct Nginx {
    child: Child,
    addr: SocketAddr,
    scratch: Scratch,
}

impl Nginx {
    /// Starts nginx with `config` in `scratch` and waits until it accepts connections.
    pub(crate) fn start(scratch: Scratch, config: &str, addr: SocketAddr) -> Nginx {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let conf = scratch.0.join("nginx.conf");
        fs::write(&conf, config).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&scratch.0)
            .arg("-c")
            .arg(&conf)
            // The log for the time before the config is read (else a path under /var/log).
            .arg("-e")
            .arg(scratch.0.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(scratch.0.join("stderr.log")).unwrap(),
            ))
            .spawn()
            .expect("nginx is needed by this test (scripts/setup.sh --test installs it)");
        let mut nginx = Nginx {
            child,
            addr,
            scratch,
        };
        let what = format!("nginx listening on {addr}");
        fibhost_e2e::eventually_blocking(Duration::from_secs(30), &what, || {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited with {status}:\n{}", nginx.logs());
            }
            TcpStream::connect(addr).ok()
        });
        nginx
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| fs::read_to_string(self.scratch.0.join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master stops its workers; killed, it would orphan them
        // with the port still open.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nginx logs ----\n{}--------------------", self.logs());
        }
    }
}

/// How many access-log lines for `path` a fibhost has printed.
fn served(output: &str, path: &str) -> usize {
    output
        .lines()
        .filter(|l| l.contains("fibhost::access") && l.contains(path))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_failover() {
    const CLIENTS: usize = 8;
    const LOAD: Duration = Duration::from_secs(6);
    const TERM_AFTER: Duration = Duration::from_secs(2);
    /// Per-task bound on requests, so a very fast machine still ends the loop by count.
    const MAX_REQUESTS_PER_CLIENT: u64 = 200_000;

    let mut draining = start(guests::FIB, &["--workers", "2"]);
    let staying = start(guests::FIB, &["--workers", "2"]);
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let scratch = Scratch::new("nginx");
    let template = fs::read_to_string(repo().join("examples/deploy/nginx.conf")).unwrap();
    let config = nginx_config(
        &template,
        &scratch.0,
        listen,
        &[draining.addr, staying.addr],
    );
    let nginx = Nginx::start(scratch, &config, listen);

    let expected = reference_sequence("9000");
    let http = Http::new();
    let first = http.get(&nginx.url("/9000")).await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", nginx.logs());
    assert_eq!(first.text(), expected);

    let ok = Arc::new(AtomicU64::new(0));
    let ok_after_term = Arc::new(AtomicU64::new(0));
    let term_sent = Arc::new(std::sync::OnceLock::<Instant>::new());
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, expected) = (nginx.url("/9000"), expected.clone());
            let (ok, ok_after_term, term_sent) =
                (ok.clone(), ok_after_term.clone(), term_sent.clone());
            tokio::spawn(async move {
                // A client of its own per task: 8 keep-alive connections to nginx.
                let http = Http::new();
                let mut failures = Vec::new();
                for _ in 0..MAX_REQUESTS_PER_CLIENT {
                    if started.elapsed() >= LOAD {
                        break;
                    }
                    let sent = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(10), http.get(&url)).await {
                        Ok(Ok(reply))
                            if reply.status == StatusCode::OK && reply.text() == expected =>
                        {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if term_sent.get().is_some_and(|t| sent > *t) {
                                ok_after_term.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Ok(reply)) => {
                            failures.push(format!("{} {:?}", reply.status, reply.text()))
                        }
                        Ok(Err(e)) => failures.push(format!("error: {e:#}")),
                        Err(_) => failures.push("no answer within 10 s".to_string()),
                    }
                }
                failures
            })
        })
        .collect();

    tokio::time::sleep(TERM_AFTER).await;
    let before_term = ok.load(Ordering::Relaxed);
    draining.signal("TERM");
    term_sent.set(Instant::now()).unwrap();

    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    let status = tokio::task::block_in_place(|| draining.wait_exit(Duration::from_secs(30)));
    let total = ok.load(Ordering::Relaxed);
    eprintln!(
        "nginx_failover: {total} requests ok ({before_term} before SIGTERM, {} sent after it), \
         {} failed",
        ok_after_term.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests through nginx failed while a fibhost drained; first ones: {:#?}\n\
         nginx logs:\n{}",
        failures.len(),
        total as usize + failures.len(),
        &failures[..failures.len().min(10)],
        nginx.logs()
    );
    assert!(
        status.success(),
        "the drained fibhost exited with {status:?}"
    );
    assert!(before_term > 0, "no request got through before the SIGTERM");
    assert!(
        ok_after_term.load(Ordering::Relaxed) > 0,
        "no request was sent after the SIGTERM: the test did not cover the drain"
    );
    // Both instances took traffic, so the retries really moved requests from one to the other.
    assert!(
        served(&draining.output(), "/9000") > 0,
        "nginx never used the first fibhost:\n{}",
        draining.output()
    );
    let what = "nginx using the second fibhost";
    fibhost_e2e::eventually(Duration::from_secs(30), what, || async {
        (served(&staying.output(), "/9000") > 0).then_some(())
    })
    .await;
    // The survivor still answers through nginx.
    let last = http.get(&nginx.url("/9000")).await.unwrap();
    assert_eq!((last.status, last.text()), (StatusCode::OK, expected));
}

/// Exit status of `scripts/validate-deploy.sh` when the validator cannot be installed because
/// no package registry is reachable.
const VALIDATOR_UNAVAILABLE: i32 = 3;

/// Runs `scripts/validate-deploy.sh` (on `dir` if given), bounded in time; returns its exit
/// code and everything it printed.
fn validate_deploy(dir: Option<&Path>, scratch: &Scratch) -> (Option<i32>, String) {
    let log = scratch.0.join("validate.log");
    let file = fs::File::create(&log).unwrap();
    let mut command = Command::new("bash");
    command
        .arg(repo().join("scripts/validate-deploy.sh"))
        .args(dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut child = command.spawn().expect("cannot run bash");
    // The first run installs the validator from PyPI; later runs take about a second.
    let what = "validate-deploy.sh finishing";
    let status = fibhost_e2e::eventually_blocking(Duration::from_secs(300), what, || {
        child.try_wait().unwrap()
    });
    (status.code(), fs::read_to_string(&log).unwrap_or_default())
}

/// Copies the directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn kubernetes_manifests_validate() {
    let scratch = Scratch::new("validate");
    let (code, output) = validate_deploy(None, &scratch);
    if code == Some(VALIDATOR_UNAVAILABLE) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to install the validator:\n{output}"
        );
        eprintln!(
            "SKIPPED kubernetes_manifests_validate: the validator cannot be installed, \
             no package registry is reachable:\n{output}"
        );
        return;
    }
    assert_eq!(code, Some(0), "validate-deploy.sh failed:\n{output}");

    // The validator must also reject what is wrong: a misspelt field, a misspelt kind (which
    // the underlying tool only warns about), and a grace period shorter than the drain.
    let deploy = repo().join("examples/deploy");
    for (file, from, to, expect) in [
        (
            "kubernetes/deployment.yaml",
            "readinessProbe:",
            "readinesProbe:",
            "readinesProbe",
        ),
        (
            "kubernetes/service.yaml",
            "kind: Service\n",
            "kind: Servic\n",
            "Servic",
        ),
        (
            "kubernetes/deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds",
        ),
        (
            "nginx.conf",
            "proxy_next_upstream_tries 3;",
            "proxy_next_upstream_tries three;",
            "proxy_next_upstream_tries",
        ),
    ] {
        let broken = scratch.0.join("broken");
        let _ = fs::remove_dir_all(&broken);
        copy_dir(&deploy, &broken);
        let text = fs::read_to_string(broken.join(file)).unwrap();
        assert!(text.contains(from), "{file} no longer contains `{from}`");
        fs::write(broken.join(file), text.replacen(from, to, 1)).unwrap();
        let (code, output) = validate_deploy(Some(&broken), &scratch);
        assert_eq!(
            code,
            Some(1),
            "validate-deploy.sh accepted {file} with `{to}`:\n{output}"
        );
        assert!(output.contains(expect), "{output}");
    }
}

/// The `fibhost.toml` embedded in `kubernetes/configmap.yaml` (the block under
/// `fibhost.toml: |`), without its YAML indentation.
fn configmap_toml() -> String {
    let yaml =
        fs::read_to_string(repo().join("examples/deploy/kubernetes/configmap.yaml")).unwrap();
    let lines = yaml
        .lines()
        .skip_while(|l| l.trim() != "fibhost.toml: |")
        .skip(1);
    let first = lines
        .clone()
        .find(|l| !l.trim().is_empty())
        .expect("fibhost.toml is empty");
    let indent = &first[..first.len() - first.trim_start().len()];
    lines
        .take_while(|l| l.trim().is_empty() || l.starts_with(indent))
        .map(|l| format!("{}\n", l.strip_prefix(indent).unwrap_or("")))
        .collect()
}

/// What the examples tell fibhost (the ConfigMap's file, the image's command) is accepted by
/// today's fibhost: every key and flag exists, and the admin listener they turn on answers.
/// Addresses are moved to loopback port 0 and the component to the test guest.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_configs_start_fibhost() {
    let scratch = Scratch::new("configs");
    let toml = scratch.0.join("fibhost.toml");
    fs::write(&toml, configmap_toml()).unwrap();
    let toml = toml.to_str().unwrap();

    let dockerfile = fs::read_to_string(repo().join("examples/deploy/Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("the Dockerfile has a CMD");
    let cmd: Vec<String> = cmd
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|arg| {
            match arg.trim().trim_matches('"') {
                "/srv/fibhost/fib.wasm" => guests::FIB,
                "0.0.0.0:8080" | "0.0.0.0:9090" => "127.0.0.1:0",
                other => other,
            }
            .to_string()
        })
        .collect();

    let from_configmap = [
        "--config",
        toml,
        "--component",
        guests::FIB,
        "--admin-listen",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    let from_dockerfile: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let http = Http::new();
    for args in [&from_configmap[..], &from_dockerfile] {
        let server = fibhost_e2e::Server::try_start(crate::fibhost(), args)
            .unwrap_or_else(|e| panic!("fibhost rejected {args:?}: {e:?}"));
        let admin = server.logged_addr("Admin listening on http://");
        let ready = http.get(&format!("http://{admin}/readyz")).await.unwrap();
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
        let reply = http.get(&server.url("/9000")).await.unwrap();
        assert_eq!(reply.text(), reference_sequence("9000"));
    }
}
