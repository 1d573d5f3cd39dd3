//! Several components on routes, and HTTPS.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

use crate::{fibhost, reference_sequence};
use fibhost_e2e::{Http, Load, Server, curl, guests, temp_dir};

fn routes_config(dir: &std::path::Path) -> PathBuf {
    let config = dir.join("fibhost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
disable-logging = true

[[route]]
prefix = "/fib"
component = {fib:?}
strip-prefix = true
workers = 2

[[route]]
prefix = "/bed"
component = {bed:?}
strip-prefix = true
workers = 1
request-timeout = 1
memory-limit = 32

[[route]]
prefix = "/raw"
component = {bed:?}
workers = 1
"#,
            fib = guests::FIB,
            bed = guests::TESTBED,
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn components_on_prefixes_are_isolated() {
    let dir = temp_dir("isolated");
    let config = routes_config(&dir);
    let server = Server::start(
        fibhost(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let http = Http::new();

    assert_eq!(
        http.get(&server.url("/fib/9000")).await.unwrap().text(),
        reference_sequence("9000")
    );
    assert_eq!(
        http.get(&server.url("/bed/version")).await.unwrap().text(),
        "v1"
    );
    // Without strip-prefix the guest sees the path exactly as the client sent it.
    let raw = http.get(&server.url("/raw/x/y?z=1")).await.unwrap();
    assert_eq!(raw.status, StatusCode::NOT_FOUND);
    assert_eq!(raw.text(), "no such testbed path: /raw/x/y?z=1");
    // No route: the host answers 404 in JSON.
    let none = http.get(&server.url("/elsewhere")).await.unwrap();
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(
        none.text()
            .contains("no component is mounted at `/elsewhere`"),
        "{}",
        none.text()
    );
    assert_eq!(
        http.get(&server.url("/fibx/1")).await.unwrap().status,
        StatusCode::NOT_FOUND
    );

    // Hostile requests on /bed while /fib is under load: /fib sees no failure.
    let load = Load::start(4, server.url("/fib/9000"), |r| {
        r.status == StatusCode::OK && r.text() == reference_sequence("9000")
    });
    for (path, status) in [
        ("/bed/loop", 504),
        ("/bed/panic", 500),
        ("/bed/alloc", 500),
        ("/bed/stack", 500),
        ("/bed/loop", 504),
    ] {
        assert_eq!(
            http.get(&server.url(path)).await.unwrap().status.as_u16(),
            status,
            "{path}"
        );
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "the /fib route failed while /bed misbehaved");
    assert!(ok > 0);

    // Swapping /fib leaves /bed's instances alone: its counter keeps counting.
    let bed_count = async || -> u64 {
        let reply = http.get(&server.url("/bed/count")).await.unwrap();
        reply.text().parse().unwrap()
    };
    let before = bed_count().await;
    let reply = crate::admin_reload(
        &http,
        &server,
        &format!("route=/fib&component={}&force=1", guests::FIB),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let after = bed_count().await;
    assert_eq!(after, before + 1, "the /bed instance was replaced");
    // A component path without a route is ambiguous with several routes.
    let reply = crate::admin_reload(&http, &server, &format!("component={}", guests::FIB)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Metrics and stats carry the route.
    let metrics = http
        .get(&crate::admin_url(&server, "/metrics"))
        .await
        .unwrap()
        .text();
    for route in ["/fib", "/bed", "/raw"] {
        assert!(
            metrics.contains(&format!(
                "fibhost_requests_total{{route=\"{route}\",class=\"2xx\"}}"
            )),
            "{route}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("fibhost_instance_recycles_total{route=\"/bed\",reason=\"timeout\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fibhost_component_swaps_total{route=\"/fib\",result=\"ok\"} 1"),
        "{metrics}"
    );
    let stats: serde_json::Value = serde_json::from_slice(
        &http
            .get(&crate::admin_url(&server, "/stats"))
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(stats["workers"].as_array().unwrap().len(), 4);
    assert!(
        stats["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["route"] == "/bed")
    );
}

#[test]
fn duplicate_prefixes_are_a_config_error() {
    let dir = temp_dir("duplicate");
    let config = dir.join("dup.toml");
    std::fs::write(
        &config,
        format!("[[route]]\nprefix = \"/a\"\ncomponent = {0:?}\n[[route]]\nprefix = \"/a/\"\ncomponent = {0:?}\n", guests::FIB),
    )
    .unwrap();
    let out = crate::fails(&["--config", config.to_str().unwrap()]);
    assert!(
        out.contains("two components are mounted on the prefix `/a/`"),
        "{out}"
    );
    std::fs::write(
        &config,
        format!("[[route]]\nprefix = \"a\"\ncomponent = {:?}\n", guests::FIB),
    )
    .unwrap();
    let out = crate::fails(&["--config", config.to_str().unwrap()]);
    assert!(out.contains("must start with `/`"), "{out}");
}

fn write_cert(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn https_with_http2_by_alpn_and_certificate_reload() {
    let dir = temp_dir("tls");
    let (cert, key) = write_cert(&dir);
    let server = Server::start(
        fibhost(),
        &[
            "--component",
            guests::FIB,
            "--workers",
            "2",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.output().contains("Serving HTTPS on https://"));
    let port = server.addr.port();
    let url = format!("https://localhost:{port}/10");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let trusted = dir.join("trusted.pem");
    std::fs::copy(&cert, &trusted).unwrap();
    let https = |extra: &[&str]| {
        let mut args = vec![
            "--cacert",
            trusted.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            " %{http_version}",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    };
    let (ok, out, err) = https(&[]);
    assert!(ok, "{err}");
    assert_eq!(
        out, "[0, 1, 1, 2, 3, 5, 8, 13] 2",
        "HTTP/2 must be negotiated by ALPN"
    );
    let (ok, out, err) = https(&["--http1.1"]);
    assert!(ok, "{err}");
    assert_eq!(out, "[0, 1, 1, 2, 3, 5, 8, 13] 1.1");
    // Plain HTTP on the TLS port is refused, and the server stays up.
    let (ok, _, _) = curl(&[&format!("http://127.0.0.1:{port}/10")]);
    assert!(!ok);

    // SIGHUP re-reads the certificate: the old one is no longer trusted by a client that
    // trusts only the new one.
    write_cert(&dir);
    std::fs::copy(&cert, &trusted).unwrap();
    server.signal("HUP");
    let served =
        fibhost_e2e::eventually_blocking(Duration::from_secs(30), "the new certificate", || {
            https(&[]).0.then_some(true)
        });
    assert!(
        served,
        "the reloaded certificate was never served:\n{}",
        server.output()
    );
}
