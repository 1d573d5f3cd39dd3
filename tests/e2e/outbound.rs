//! Outbound HTTP by grant: a guest's requests reach only what `allow-outbound` names, through
//! a pooled, capped, timed client; against a real upstream (another fibhost) on loopback.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::start;
use fibhost_e2e::{Http, Server, guests};

/// The front server: the testbed guest, allowed to reach `grants`.
fn front(grants: &[String], extra: &[&str]) -> Server {
    let mut args: Vec<&str> = vec!["--workers", "4"];
    for grant in grants {
        args.extend(["--allow-outbound", grant]);
    }
    args.extend_from_slice(extra);
    start(guests::TESTBED, &args)
}

fn fetch(server: &Server, upstream: SocketAddr, path: &str) -> String {
    server.url(&format!("/fetch?url=http://{upstream}&path={path}"))
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn granted_destinations_are_reached_and_others_denied() {
    let upstream = start(guests::TESTBED_V2, &["--workers", "2"]);
    let down = closed_port();
    let grants = [
        format!("http://{}", upstream.addr),
        format!("http://{down}"),
    ];
    let server = front(&grants, &["--outbound-first-byte-timeout", "1"]);
    let http = Http::new();

    // Allowed: the upstream's answer comes back through the guest.
    let reply = http
        .get(&fetch(&server, upstream.addr, "/version"))
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "v2")
    );

    // Denied (not granted): HTTP-request-denied, logged once per destination.
    let other = start(guests::TESTBED, &["--workers", "1"]);
    for _ in 0..3 {
        let reply = http
            .get(&fetch(&server, other.addr, "/version"))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply.text().contains("HttpRequestDenied"),
            "{}",
            reply.text()
        );
    }
    let denied = format!("destination=\"http://{}\"", other.addr);
    server.wait_for_output(&denied, Duration::from_secs(10));
    assert_eq!(
        server.output().matches(&denied).count(),
        1,
        "{}",
        server.output()
    );

    // A granted destination that is down.
    let reply = http.get(&fetch(&server, down, "/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.text().contains("ConnectionRefused"),
        "{}",
        reply.text()
    );

    // A granted destination slower than the first-byte timeout.
    let reply = http
        .get(&fetch(&server, upstream.addr, "/sleep?ms=10000"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().contains("Timeout"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_granted_by_default() {
    let upstream = start(guests::TESTBED, &["--workers", "1"]);
    let server = front(&[], &[]);
    let reply = Http::new()
        .get(&fetch(&server, upstream.addr, "/version"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.text().contains("HttpRequestDenied"),
        "{}",
        reply.text()
    );
}

/// 10 MB up through the guest to the upstream's `/echo`, and back.
#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_through_both_ways() {
    let upstream = start(
        guests::TESTBED,
        &["--workers", "1", "--max-body-size", "64"],
    );
    let server = front(
        &[format!("http://{}", upstream.addr)],
        &["--max-body-size", "64"],
    );
    let body = Bytes::from(vec![b'x'; 10 << 20]);
    let reply = Http::new()
        .send(
            Method::POST,
            &fetch(&server, upstream.addr, "/echo"),
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body, "the echoed body differs");
}

/// Under load the connections to one destination stay within `outbound-max-connections`, and
/// are reused: not one connection per request.
#[tokio::test(flavor = "multi_thread")]
async fn connections_per_destination_stay_at_the_cap_under_load() {
    let upstream = start(guests::TESTBED, &["--workers", "4", "--disable-logging"]);
    let grant = format!("http://{}", upstream.addr);
    let server = front(
        std::slice::from_ref(&grant),
        &["--outbound-max-connections", "2", "--disable-logging"],
    );
    let http = Http::new();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (http, url) = (http.clone(), fetch(&server, upstream.addr, "/sleep?ms=5"));
            tokio::spawn(async move { http.get(&url).await.unwrap().status })
        })
        .collect();
    let mut most = 0;
    let mut done = 0;
    for task in tasks {
        most = most.max(connections_to(upstream.addr));
        assert_eq!(task.await.unwrap(), StatusCode::OK);
        done += 1;
    }
    assert_eq!(done, 200);
    assert!(most <= 2, "{most} connections to the upstream, cap 2");
    assert!(most >= 1, "no connection to the upstream was seen");
    // Reused: the upstream saw far fewer connections than requests.
    let accepted = connections_to(upstream.addr);
    assert!(accepted <= 2, "{accepted} connections after the load");
}

/// Established TCP connections whose remote end is `addr` (the fronts' side), from
/// /proc/net/tcp.
fn connections_to(addr: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!(":{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2].ends_with(&want) && fields[3] == "01"
        })
        .count()
}
