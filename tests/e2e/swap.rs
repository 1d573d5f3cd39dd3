//! Hot swap: file watch, SIGHUP and the admin API under continuous load; rejected components;
//! the compiled-component cache; requests in flight during a swap.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::{fibhost, start};
use fibhost_e2e::{Http, Load, Reply, Server, eventually, guests, temp_dir};

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn serving_sha(http: &Http, server: &Server) -> String {
    let admin = server.logged_addr("Admin listening on http://");
    let reply = http
        .get(&format!("http://{admin}/admin/status"))
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    status["routes"][0]["sha256"].as_str().unwrap().to_string()
}

fn is_a_version(reply: &Reply) -> bool {
    reply.status == StatusCode::OK && (reply.text() == "v1" || reply.text() == "v2")
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_swaps_under_load_through_file_sighup_and_admin() {
    let dir = temp_dir("twenty");
    let versions = [guests::TESTBED, guests::TESTBED_V2];
    let current = dir.join("app-0.wasm");
    std::fs::copy(guests::TESTBED, &current).unwrap();
    let config = dir.join("fibhost.toml");
    let write_config = |component: &Path| {
        std::fs::write(
            &config,
            format!(
                "component = {:?}\nworkers = 4\nwatch = true\ndisable-logging = true\n",
                component
            ),
        )
        .unwrap();
    };
    write_config(&current);
    let server = Arc::new(Server::start(
        fibhost(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    ));
    let http = Http::new();
    let load = Load::start(8, server.url("/version"), is_a_version);
    let mut current = current;
    for i in 1..=20 {
        let target = versions[i % 2];
        let expected = if i % 2 == 1 { "v2" } else { "v1" };
        match i % 3 {
            // The file changes on disk: alternately an atomic rename and an in-place copy.
            0 => {
                if i % 2 == 0 {
                    let temp = dir.join(format!("incoming-{i}.tmp"));
                    std::fs::copy(target, &temp).unwrap();
                    std::fs::rename(&temp, &current).unwrap();
                } else {
                    std::fs::write(&current, std::fs::read(target).unwrap()).unwrap();
                }
            }
            // SIGHUP after the config names a new file.
            1 => {
                current = dir.join(format!("app-{i}.wasm"));
                std::fs::copy(target, &current).unwrap();
                write_config(&current);
                server.signal("HUP");
            }
            // The admin API names the new file.
            _ => {
                current = dir.join(format!("app-{i}.wasm"));
                std::fs::copy(target, &current).unwrap();
                let reply = crate::admin_reload(
                    &http,
                    &server,
                    &format!("route=/&component={}", current.display()),
                )
                .await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                assert!(
                    reply.text().contains("\"status\":\"swapped\""),
                    "{}",
                    reply.text()
                );
            }
        }
        let want = sha256(&current);
        let what = format!("swap {i} completed");
        eventually(Duration::from_secs(30), &what, || async {
            (serving_sha(&http, &server).await == want).then_some(())
        })
        .await;
        // Once the swap is done, new requests see only the new version.
        for _ in 0..10 {
            assert_eq!(
                http.get(&server.url("/version")).await.unwrap().text(),
                expected,
                "after swap {i}"
            );
        }
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} failed requests during 20 swaps ({ok} ok)"
    );
    assert!(ok > 100, "only {ok} requests during the swaps");
    server.wait_for_output("swapped component", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_components_are_rejected_and_the_old_version_keeps_serving() {
    let dir = temp_dir("broken");
    let server = Arc::new(start(
        guests::TESTBED,
        &[
            "--workers",
            "2",
            "--admin-listen",
            "127.0.0.1:0",
            "--warmup",
            "/version",
            "--disable-logging",
        ],
    ));
    let http = Http::new();
    let load = Load::start(4, server.url("/version"), is_a_version);
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"").unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let bare = dir.join("bare.wasm");
    std::fs::write(&bare, b"\0asm\x0d\0\x01\0").unwrap();
    let cases = [
        (empty.display().to_string(), "is empty"),
        (core.display().to_string(), "core WebAssembly module"),
        (
            bare.display().to_string(),
            "exports neither `wasi:http/incoming-handler@0.2.x`",
        ),
        // The Fibonacci guest answers 400 to `/version`: it fails the warm-up.
        (guests::FIB.to_string(), "answered 400 Bad Request, not 2xx"),
        ("/nonexistent/x.wasm".to_string(), "cannot read component"),
    ];
    for (path, reason) in cases {
        let reply = crate::admin_reload(&http, &server, &format!("component={path}")).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            reply.text()
        );
        assert!(reply.text().contains(reason), "{path}: {}", reply.text());
        assert!(
            reply.text().contains("keeps its running version"),
            "{}",
            reply.text()
        );
        assert_eq!(
            http.get(&server.url("/version")).await.unwrap().text(),
            "v1"
        );
    }
    // A good file swaps in after all those failures.
    let reply =
        crate::admin_reload(&http, &server, &format!("component={}", guests::TESTBED_V2)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        http.get(&server.url("/version")).await.unwrap().text(),
        "v2"
    );
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed requests ({ok} ok)");
    let reply = crate::admin_reload(&http, &server, "route=/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_finishes_on_the_old_version() {
    let server = start(
        guests::TESTBED,
        &["--workers", "2", "--admin-listen", "127.0.0.1:0"],
    );
    let http = Http::new();
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), server.url("/sleep?ms=2000"));
        async move { http.get(&url).await }
    });
    crate::wait_for_load(&server, 1, 0).await;
    let swap = tokio::spawn({
        let (http, admin) = (
            http.clone(),
            server.logged_addr("Admin listening on http://"),
        );
        async move {
            let url = format!(
                "http://{admin}/admin/reload?component={}",
                guests::TESTBED_V2
            );
            http.send(Method::POST, &url, "".into()).await.unwrap()
        }
    });
    // While the old version finishes the slow request, new requests already get v2.
    eventually(
        Duration::from_secs(30),
        "the new version serving",
        || async {
            (http.get(&server.url("/version")).await.unwrap().text() == "v2").then_some(())
        },
    )
    .await;
    assert_eq!(slow.await.unwrap().unwrap().text(), "slept v1");
    let reply = swap.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[test]
fn the_compile_cache_survives_restarts_and_rebuilds_corrupt_entries() {
    let dir = temp_dir("cache");
    let cache = dir.join("cache");
    let args = [
        "--component",
        guests::TESTBED,
        "--workers",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let first = Server::start(fibhost(), &args);
    first.wait_for_output("compiled component (cache miss)", Duration::from_secs(10));
    drop(first);

    let second = Server::start(fibhost(), &args);
    second.wait_for_output(
        "loaded compiled component from cache",
        Duration::from_secs(10),
    );
    assert!(
        !second.output().contains("cache miss"),
        "a warm cache recompiled:\n{}",
        second.output()
    );
    assert_eq!(fibhost_e2e::curl(&[&second.url("/version")]).1, "v1");
    drop(second);

    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let third = Server::start(fibhost(), &args);
    third.wait_for_output(
        "ignoring a corrupt or incompatible cache entry",
        Duration::from_secs(10),
    );
    third.wait_for_output("compiled component (cache miss)", Duration::from_secs(10));
    assert_eq!(fibhost_e2e::curl(&[&third.url("/version")]).1, "v1");
}

/// The admin API loads only regular files of bounded size, and with `reload-dir` only files
/// inside it, answering the same whether an outside path exists or not. A device that
/// streams forever or a FIFO that never opens must be refused, not read.
#[tokio::test(flavor = "multi_thread")]
async fn the_reload_api_reads_only_bounded_regular_files() {
    let dir = temp_dir("reload-dir");
    let inside = dir.join("fib.wasm");
    std::fs::copy(guests::FIB, &inside).unwrap();
    let big = dir.join("big.wasm");
    std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
    let fifo = dir.join("fifo.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let server = start(
        guests::FIB,
        &[
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            "--max-component-size",
            "1",
            "--reload-dir",
            dir.to_str().unwrap(),
        ],
    );
    let http = Http::new();
    let reload =
        async |path: &str| crate::admin_reload(&http, &server, &format!("component={path}")).await;
    for (path, status, needle) in [
        ("/dev/zero", 403, "inside `reload-dir`"),
        ("/etc/passwd", 403, "inside `reload-dir`"),
        ("/no/such/file.wasm", 403, "inside `reload-dir`"),
        (fifo.to_str().unwrap(), 422, "not a regular file"),
        (
            big.to_str().unwrap(),
            422,
            "larger than `max-component-size`",
        ),
    ] {
        let reply = reload(path).await;
        assert_eq!(reply.status.as_u16(), status, "{path}: {}", reply.text());
        assert!(reply.text().contains(needle), "{path}: {}", reply.text());
    }
    // Refusals for an existing and a missing path outside the directory read the same.
    assert_eq!(
        reload("/etc/passwd").await.text(),
        reload("/no/such").await.text()
    );
    let ok = reload(inside.to_str().unwrap()).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}

/// Without `reload-dir`, a device is still refused at once instead of read without end.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_is_not_a_component() {
    let server = start(
        guests::FIB,
        &["--workers", "1", "--admin-listen", "127.0.0.1:0"],
    );
    let reply = crate::admin_reload(&Http::new(), &server, "component=/dev/zero").await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains("not a regular file"),
        "{}",
        reply.text()
    );
}

/// Under `watch`: `touch` on the served file reloads it (uWSGI's touch-reload), a broken file
/// is tried once per distinct content (not on every event), and SIGHUP with unchanged files
/// recycles nothing.
#[tokio::test(flavor = "multi_thread")]
async fn watch_touch_reloads_broken_files_are_tried_once_and_unchanged_sighup_is_a_no_op() {
    let dir = temp_dir("touch");
    let file = dir.join("app.wasm");
    std::fs::copy(guests::TESTBED, &file).unwrap();
    let config = dir.join("fibhost.toml");
    let toml = format!("component = {file:?}\nworkers = 1\nwatch = true\n");
    std::fs::write(&config, toml).unwrap();
    // Debug level for the watcher: it says when it ignores a file it already rejected, which
    // is what the test waits for instead of sleeping.
    let mut command = std::process::Command::new(fibhost());
    command
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info,fibhost::swap=debug");
    let server = Server::spawn(command).unwrap_or_else(|e| panic!("{e:?}"));
    let http = Http::new();
    let count = async || -> u64 {
        let reply = http.get(&server.url("/count")).await.unwrap();
        reply.text().parse().unwrap()
    };
    let limit = Duration::from_secs(30);

    // SIGHUP, nothing changed: logged, and the instance keeps counting.
    assert_eq!(count().await, 1);
    server.signal("HUP");
    server.wait_for_output("component unchanged; nothing to swap", limit);
    assert_eq!(
        count().await,
        2,
        "an unchanged SIGHUP recycled the instance"
    );

    // `touch`: same content, new modification time: a fresh instance.
    let touched = std::process::Command::new("touch")
        .args(["-d", "2030-01-01 00:00:00"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(touched.success());
    server.wait_for_output("component file touched; reloading", limit);
    eventually(limit, "a fresh instance after touch", || async {
        (count().await == 1).then_some(())
    })
    .await;

    // A broken file: rejected once; touching it again does not retry it.
    std::fs::write(&file, b"not a component").unwrap();
    server.wait_for_output("swap rejected", limit);
    let status = std::process::Command::new("touch")
        .args(["-d", "2031-01-01 00:00:00"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    server.wait_for_output("this content was rejected already", limit);
    // The fixed file swaps; by then any retry of the broken one would have been logged.
    std::fs::copy(guests::TESTBED_V2, &file).unwrap();
    eventually(limit, "v2 serving", || async {
        (http.get(&server.url("/version")).await.ok()?.text() == "v2").then_some(())
    })
    .await;
    let rejections = server.output().matches("swap rejected").count();
    assert_eq!(rejections, 1, "{}", server.output());
}

/// A swap to a component whose start code never returns is rejected within the request
/// timeout; the old version keeps serving and later swaps still work.
#[tokio::test(flavor = "multi_thread")]
async fn a_swap_to_a_component_that_never_starts_is_rejected() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--request-timeout",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let http = Http::new();
    let hang = format!("component={}", guests::TESTBED_HANG);
    let reply = crate::admin_reload(&http, &server, &hang).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains("did not finish within"),
        "{}",
        reply.text()
    );
    assert_eq!(
        http.get(&server.url("/version")).await.unwrap().text(),
        "v1"
    );
    let v2 = format!("component={}", guests::TESTBED_V2);
    assert_eq!(
        crate::admin_reload(&http, &server, &v2).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&server.url("/version")).await.unwrap().text(),
        "v2"
    );
}

/// A cache entry is bound to its component: a sound entry of another component copied under
/// this component's name is refused (and rebuilt), not served. And a cache directory that
/// other users may write to is refused at startup.
#[test]
fn cache_entries_are_bound_to_their_component_and_the_directory_to_its_owner() {
    let dir = temp_dir("cache-bound");
    let cache = dir.join("cache");
    let args = |component: &'static str| {
        vec![
            "--component".to_string(),
            component.to_string(),
            "--workers".into(),
            "1".into(),
            "--cache-dir".into(),
            cache.to_str().unwrap().into(),
        ]
    };
    let start_with = |component: &'static str| {
        let owned = args(component);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        Server::start(fibhost(), &refs)
    };
    let entries = || -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = (std::fs::read_dir(&cache).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        found.sort();
        found
    };
    drop(start_with(guests::TESTBED));
    let testbed_entry = entries().pop().unwrap();
    drop(start_with(guests::TESTBED_V2));
    let v2_entry = entries().into_iter().find(|p| *p != testbed_entry).unwrap();
    // v2's sound entry, planted under v1's name.
    std::fs::copy(&v2_entry, &testbed_entry).unwrap();
    let server = start_with(guests::TESTBED);
    server.wait_for_output(
        "ignoring a corrupt or incompatible cache entry",
        Duration::from_secs(10),
    );
    assert_eq!(fibhost_e2e::curl(&[&server.url("/version")]).1, "v1");
    drop(server);

    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let owned = args(guests::TESTBED);
    let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
    let out = crate::fails(&refs);
    assert!(out.contains("is writable by other users"), "{out}");
}

/// A swap started through the admin API completes even if its caller disconnects while it is
/// under way: the new version serves, the route records its file, and the swap is counted.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_swap_completes_when_its_caller_leaves() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
            // The warm-up makes the swap take a while: long enough to leave in the middle.
            "--warmup",
            "/sleep?ms=1500",
        ],
    );
    let admin = server.logged_addr("Admin listening on http://");
    let mut caller = std::net::TcpStream::connect(admin).unwrap();
    let request = format!(
        "POST /admin/reload?component={} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        guests::TESTBED_V2
    );
    std::io::Write::write_all(&mut caller, request.as_bytes()).unwrap();
    drop(caller); // gone before the warm-up ends
    server.wait_for_output("swapped component", Duration::from_secs(60));
    let http = Http::new();
    assert_eq!(
        http.get(&server.url("/version")).await.unwrap().text(),
        "v2"
    );
    let status = http
        .get(&format!("http://{admin}/admin/status"))
        .await
        .unwrap()
        .text();
    assert!(status.contains("testbed.wasm"), "{status}");
    assert!(
        status.contains(guests::TESTBED_V2) || status.contains("testbed-v2.wasm"),
        "the route does not record the new file: {status}"
    );
}
