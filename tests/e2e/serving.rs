//! The server's own behaviour around the guest: queue bound, limits, protocols, shutdown.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use http::StatusCode;

use crate::start;
use fibhost_e2e::{Http, curl, guests};

#[tokio::test(flavor = "multi_thread")]
async fn full_queue_answers_503_with_retry_after() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--queue",
            "1",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let http = Http::new();
    // One request occupies the only worker, a second waits in the queue of one...
    let busy = tokio::spawn({
        let (http, url) = (http.clone(), server.url("/sleep?ms=3000"));
        async move { http.get(&url).await }
    });
    crate::wait_for_load(&server, 1, 0).await;
    let queued = tokio::spawn({
        let (http, url) = (http.clone(), server.url("/count"));
        async move { http.get(&url).await }
    });
    crate::wait_for_load(&server, 1, 1).await;
    // ...so a third is refused at once.
    let refused = http.get(&server.url("/count")).await.unwrap();
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("retry-after"), "1");
    assert!(
        refused.text().contains("queue of 1 is full"),
        "{}",
        refused.text()
    );
    // The admitted requests are still served.
    assert_eq!(busy.await.unwrap().unwrap().text(), "slept v1");
    assert_eq!(queued.await.unwrap().unwrap().status, StatusCode::OK);
}

/// Workers are dealt out over the event-loop threads, and each thread accepts its own
/// connections: a request must reach a free worker on any thread, never wait behind a busy
/// worker on its own while another is idle. With `queue = 0` a request that waited would hang
/// here, and one that found no free worker anywhere must get 503 at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_free_worker_on_any_thread_takes_the_request() {
    let server = start(
        guests::TESTBED,
        &[
            "--threads",
            "2",
            "--workers",
            "2",
            "--queue",
            "0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    // Occupies one more worker with a request that outlives the test.
    let hold = async |busy: u64| {
        let url = server.url("/sleep?ms=600000");
        tokio::spawn(async move { Http::new().get(&url).await });
        crate::wait_for_load(&server, busy, 0).await;
    };
    hold(1).await;
    // Each request on a new connection, so that both threads accept some of them.
    for n in 0..20 {
        let reply = tokio::time::timeout(
            Duration::from_secs(60),
            Http::new().get(&server.url(&format!("/count?n={n}"))),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "request {n} waited for the busy worker while one was free:\n{}",
                server.output()
            )
        })
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    hold(2).await;
    let refused = Http::new().get(&server.url("/count")).await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_size_limit() {
    let server = start(guests::TESTBED, &["--workers", "1", "--max-body-size", "1"]);
    let http = Http::new();
    let small = http
        .send(http::Method::POST, &server.url("/echo"), "hello".into())
        .await
        .unwrap();
    assert_eq!(small.text(), "hello");
    // The 413 goes out as soon as the head declares too much, before any body byte is read:
    // send the head alone, so the test does not race the server closing the connection while
    // a client is still writing a body nobody will read.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("exceeds the limit of 1048576 bytes"),
        "{response}"
    );
}

#[test]
fn oversized_headers_and_slow_clients_are_cut_off() {
    let server = start(
        guests::FIB,
        &[
            "--workers",
            "1",
            "--max-header-size",
            "8",
            "--header-read-timeout",
            "1",
        ],
    );
    // A head larger than the limit: hyper answers 431.
    let (ok, out, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("x-big: {}", "a".repeat(20_000)),
        &server.url("/5"),
    ]);
    assert!(ok);
    assert_eq!(out, "431");
    // Slowloris: a head that never completes is dropped after the header-read timeout.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"GET /5 HTTP/1.1\r\nHost: x\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let read = stream.read_to_end(&mut buf);
    assert!(
        read.is_ok(),
        "the server should close the connection, not leave it open: {read:?}"
    );
    // And the server still serves.
    assert_eq!(curl(&[&server.url("/5")]).1, "[0, 1, 1, 2, 3, 5]");
}

#[test]
fn http2_prior_knowledge_and_keep_alive() {
    let server = start(guests::FIB, &["--workers", "2"]);
    let (ok, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " %{http_version}",
        &server.url("/10"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "[0, 1, 1, 2, 3, 5, 8, 13] 2");
    // Two requests on one HTTP/1.1 connection: curl reuses it.
    let (ok, _, err) = curl(&["-v", &server.url("/1"), &server.url("/2")]);
    assert!(ok);
    assert!(err.contains("Re-using existing connection"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut server = start(
        guests::TESTBED,
        &[
            "--workers",
            "2",
            "--shutdown-timeout",
            "30",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let http = Http::new();
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (http.clone(), server.url("/sleep?ms=1500"));
            tokio::spawn(async move { http.get(&url).await })
        })
        .collect();
    crate::wait_for_load(&server, 2, 0).await;
    server.signal("TERM");
    for request in in_flight {
        let reply = request
            .await
            .unwrap()
            .expect("an in-flight request must complete");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "slept v1");
    }
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "exit status {status:?}");
    // After shutdown nothing listens any more.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// `max-connections` caps the open connections: a client past the cap waits in the kernel's
/// backlog, unanswered, and is served as soon as an open connection closes (its slot is
/// given back, not leaked).
#[test]
fn a_client_past_max_connections_waits_for_a_closed_one() {
    let server = start(guests::FIB, &["--max-connections", "1", "--workers", "2"]);
    let request = b"GET /9000 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(server.addr).unwrap();
    first.write_all(request).unwrap();
    assert_eq!(read_response(&mut first).0, 200);

    let mut second = TcpStream::connect(server.addr).unwrap();
    second.write_all(request).unwrap();
    // The open connection is still served: one more round trip on it, after which the
    // second client's request has been in for at least as long...
    first.write_all(request).unwrap();
    assert_eq!(read_response(&mut first).0, 200);
    // ...and is still unanswered: its connection was never accepted.
    second.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = second.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a client past max-connections was answered while the cap was reached: {early:?}"
    );

    drop(first);
    second.set_nonblocking(false).unwrap();
    let (status, body) = read_response(&mut second);
    assert_eq!(status, 200);
    assert!(body.starts_with("[0, 1, 1, 2"), "{body}");
    // And the slot keeps coming back: connection after connection.
    drop(second);
    for _ in 0..3 {
        let mut next = TcpStream::connect(server.addr).unwrap();
        next.write_all(request).unwrap();
        assert_eq!(read_response(&mut next).0, 200);
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `stream`: (status, body). A
/// response that never comes fails the test after a minute instead of hanging it.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .unwrap_or_else(|e| panic!("no response (head so far {head:?}): {e}"));
        assert_eq!(n, 1, "connection closed before the head ended: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// The admission slot of a request goes back when its response is complete, not after the
/// worker's bookkeeping: a client sending requests one after another to a pool with one
/// worker and no queue must never be refused (it once got a spurious 503 about one run in
/// five). Both on one keep-alive connection and on a new connection each time.
#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_never_find_the_only_worker_busy() {
    let server = start(
        guests::TESTBED,
        &[
            "--threads",
            "2",
            "--workers",
            "1",
            "--queue",
            "0",
            "--max-requests",
            "3",
            "--disable-logging",
        ],
    );
    let keep_alive = Http::new();
    for n in 0..1500 {
        let client = if n % 2 == 0 {
            keep_alive.clone()
        } else {
            Http::new()
        };
        let reply = client.get(&server.url("/count")).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {n}: {}",
            reply.text()
        );
    }
}

/// A connection that sends nothing, or only part of the HTTP/2 preface, is closed after the
/// header-read timeout instead of holding a `max-connections` slot forever; an idle keep-alive
/// connection is closed after the keep-alive timeout.
#[test]
fn silent_partial_and_idle_connections_are_closed() {
    let server = start(
        guests::FIB,
        &[
            "--workers",
            "1",
            "--max-connections",
            "3",
            "--header-read-timeout",
            "1",
            "--keep-alive-timeout",
            "1",
        ],
    );
    let silent = TcpStream::connect(server.addr).unwrap();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /5 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    // All three slots are taken; each must be given back by the server closing it.
    for (name, mut stream) in [
        ("silent", silent),
        ("partial preface", partial),
        ("idle", idle),
    ] {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            closed.is_ok(),
            "the {name} connection was not closed: {closed:?}"
        );
    }
    assert_eq!(curl(&[&server.url("/5")]).1, "[0, 1, 1, 2, 3, 5]");
}

/// An HTTP/2 client that opens no stream (while it would answer pings) is closed after the
/// keep-alive timeout.
#[test]
fn an_idle_http2_connection_is_closed() {
    let server = start(
        guests::FIB,
        &["--workers", "1", "--keep-alive-timeout", "1"],
    );
    let mut stream = TcpStream::connect(server.addr).unwrap();
    // The preface and an empty SETTINGS frame: a valid HTTP/2 client that then says nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut received = Vec::new();
    let closed = stream.read_to_end(&mut received);
    assert!(
        closed.is_ok(),
        "the idle h2 connection stayed open: {closed:?}"
    );
    // Its last frame is a GOAWAY (type 7): a graceful close, not a reset.
    assert!(
        received
            .windows(4)
            .any(|w| w[3] == 7 && w[0..3] == [0, 0, 8]),
        "no GOAWAY in {received:?}"
    );
}

/// A client that stops reading a large response is disconnected after `send-timeout`, which
/// frees the worker its guest was writing from: the next request is served, not left waiting
/// for the request timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_does_not_hold_the_worker() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--send-timeout",
            "1",
            "--request-timeout",
            "600",
            "--disable-logging",
        ],
    );
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"GET /stream?mib=64 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Never read: the socket buffers fill and the guest blocks writing. The next request
    // needs the only worker.
    let reply = tokio::time::timeout(
        Duration::from_secs(300),
        Http::new().get(&server.url("/count")),
    )
    .await
    .expect("the worker stayed held by a client that does not read")
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    drop(stalled);
}

/// A response that fits `response-buffer` never pins a worker on a slow client: the guest
/// finishes into the buffer and its worker serves the next request while the client has not
/// read a byte (the send timeout is far away here).
#[tokio::test(flavor = "multi_thread")]
async fn a_buffered_response_frees_its_worker_before_the_client_reads_it() {
    let server = start(
        guests::TESTBED,
        &[
            "--workers",
            "1",
            "--response-buffer",
            "32768",
            "--send-timeout",
            "600",
            "--request-timeout",
            "600",
            "--disable-logging",
        ],
    );
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET /stream?mib=16 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(300),
        Http::new().get(&server.url("/count")),
    )
    .await
    .expect("the worker stayed pinned by a response that fits the buffer")
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    // The slow client still gets its whole response.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while all.len() < 16 << 20 {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "the response ended early");
        all.extend_from_slice(&buf[..n]);
    }
}

/// Two `Host` headers make a request invalid (RFC 9112 §3.2): 400, the guest never sees it.
#[test]
fn two_host_headers_are_a_bad_request() {
    let server = start(guests::FIB, &["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET /5 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than one `Host` header"), "{body}");
}

/// A guest cannot declare two lengths for one response body (the fix the 48.0.9 patch
/// release is known for is already in the 48.0.8 this host is built on, the newest 48.x the
/// registry serves): the second `content-length`, appended or set as a list, is refused in
/// the guest, and the client gets one `Content-Length` that matches the body.
#[test]
fn a_guest_cannot_declare_two_body_lengths() {
    let server = start(guests::TESTBED, &["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET /framing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{raw}");
    let lengths: Vec<&str> = head
        .lines()
        .filter(|l| l.starts_with("content-length:"))
        .collect();
    assert_eq!(lengths, ["content-length: 3"], "{raw}");
    assert!(head.contains("x-second-append: refused"), "{raw}");
    assert!(head.contains("x-set-two: refused"), "{raw}");
    assert_eq!(body, "abc");
}

/// Requests already sent on open keep-alive connections when SIGTERM arrives are answered
/// (with `Connection: close`), not reset: 20 idle keep-alive connections each send a request,
/// then the server is told to stop. The race this closes (bytes in the kernel that the runtime
/// has not reported yet when the drain begins) is timing-dependent, so three servers are
/// drained in turn; before the fix one in three runs lost most of the 20.
#[test]
fn sigterm_answers_requests_already_sent_on_keep_alive_connections() {
    for round in 0..3 {
        let mut server = start(guests::FIB, &["--workers", "2", "--shutdown-timeout", "30"]);
        let request = b"GET /9000 HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut connections: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut stream = TcpStream::connect(server.addr).unwrap();
                stream.write_all(request).unwrap();
                assert_eq!(read_response(&mut stream).0, 200);
                stream
            })
            .collect();
        // Each idle connection sends its next request, and only then does the drain begin.
        for stream in &mut connections {
            stream.write_all(request).unwrap();
        }
        server.signal("TERM");
        let mut lost = Vec::new();
        for (n, stream) in connections.iter_mut().enumerate() {
            let answered =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_response(stream).0));
            if answered.ok() != Some(200) {
                lost.push(n);
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: requests lost at SIGTERM on {lost:?}"
        );
        let status = server.wait_exit(Duration::from_secs(60));
        assert!(status.success());
    }
}

/// A guest that answers without reading an upload: fibhost reads the rest of the upload away
/// (a lingering close), so the client can finish sending, reads its answer, and the
/// connection serves its next request. Without it, the connection closes under the client
/// still uploading (a broken pipe on its side) and the next request finds it gone.
#[test]
fn an_upload_the_guest_did_not_read_is_read_away_and_the_connection_lives_on() {
    let server = start(guests::TESTBED, &["--workers", "1"]);
    let total = 4 << 20;
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let head = format!("POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'u'; 64 << 10];
    stream.write_all(&chunk).unwrap();
    // `/count` answers without reading the body: the answer comes with the upload unfinished.
    assert_eq!(read_response(&mut stream), (200, "1".to_string()));
    for _ in 1..total / chunk.len() {
        stream
            .write_all(&chunk)
            .expect("the server still reads the upload");
    }
    stream
        .write_all(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // The same instance answers the next request on this connection.
    assert_eq!(read_response(&mut stream), (200, "2".to_string()));
}
