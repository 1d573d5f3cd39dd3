//! Outbound HTTP by grant: a guest's requests reach only what `allow-outbound` names, through
//! a pooled, capped, timed client; against a real upstream on loopback (another fibhost, or a
//! plain HTTP server in the test). The last part runs wasmtime's `api_proxy_streaming`
//! behaviour (`guests/proxy-streaming`) under fibhost.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt as _;
use http::{Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::time::timeout;

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

// --- wasmtime's `api_proxy_streaming` behaviour (issue #13), by `guests/proxy-streaming` ---

/// The longest any one step of these tests may take before it is taken for a hang: a bound on
/// a stall, never a claim about speed.
const STALL: Duration = Duration::from_secs(30);

type UpstreamBody = BoxBody<Bytes, std::io::Error>;

/// What the test's own upstream serves besides `/held` and `/broken`.
const BODIES: [(&str, &[u8]); 5] = [
    ("/a", b"0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89"),
    ("/b", "non-ASCII: é, ß, ☃".as_bytes()),
    ("/c", b"\x00\xff binary \r\n bytes\n"),
    ("/d", b"d"),
    ("/empty", b""),
];

/// `/held`'s body, sent once the test releases it.
const HELD_BODY: &[u8] = b"held until released";

/// `/broken` declares this many bytes, sends [`BROKEN_SENT`] of them, then fails.
const BROKEN_LENGTH: usize = 100;
const BROKEN_SENT: &[u8] = b"ten bytes.";

/// A plain HTTP/1.1 server on loopback, in the test's own runtime: the upstream a guest
/// fetches from. Serves [`BODIES`], `/big` (3 MiB, in many frames), `/held` (answers only
/// after [`Upstream::release`]), `/broken` (a body cut short), and 404 for anything else.
struct Upstream {
    addr: SocketAddr,
    /// Requests received, whatever their path.
    hits: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = hits.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, released) = (counter.clone(), released.clone());
                let service = service_fn(move |request: http::Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let released = released.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Upstream::answer(request.uri().path(), released).await,
                        )
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Upstream {
            addr,
            hits,
            release,
            accept,
        }
    }

    async fn answer(
        path: &str,
        mut released: tokio::sync::watch::Receiver<bool>,
    ) -> http::Response<UpstreamBody> {
        let full = |bytes: Bytes| Full::new(bytes).map_err(|never| match never {}).boxed();
        match path {
            "/held" => {
                let _ = released.wait_for(|released| *released).await;
                http::Response::new(full(Bytes::from_static(HELD_BODY)))
            }
            "/big" => http::Response::new(full(big_body())),
            "/broken" => {
                // The failure waits for one turn of the runtime: hyper writes out the head and
                // the first bytes when the body is pending, so the guest gets a response whose
                // body then fails (failing at once, hyper would never send the head).
                let first = Ok(Frame::data(Bytes::from_static(BROKEN_SENT)));
                let cut = futures::stream::once(async {
                    tokio::task::yield_now().await;
                    Err(std::io::Error::other("the upstream cuts its body short"))
                });
                let frames = futures::StreamExt::chain(futures::stream::iter([first]), cut);
                http::Response::builder()
                    .header("content-length", BROKEN_LENGTH)
                    .body(StreamBody::new(frames).boxed())
                    .unwrap()
            }
            path => match BODIES.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => http::Response::new(full(Bytes::from_static(body))),
                None => http::Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(full(Bytes::new()))
                    .unwrap(),
            },
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn grant(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets every `/held` request, waiting or still to come, be answered.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `/big`: 3 MiB that are not one byte repeated, so a lost or reordered frame changes the hash.
fn big_body() -> Bytes {
    (0..3usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// What `/hash-all` says of a body: its SHA-256 in standard base64 without padding, encoded
/// here by hand as an independent reference for the guest's `base64` crate.
fn hash_line_value(body: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digest = Sha256::digest(body);
    let mut text = String::new();
    for group in digest.chunks(3) {
        let bits = group.iter().enumerate().fold(0u32, |bits, (i, byte)| {
            bits | (u32::from(*byte) << (16 - 8 * i))
        });
        // 4 characters per 3 bytes; the last group's 2 bytes make 3 (no `=` padding).
        for i in 0..=group.len() {
            text.push(ALPHABET[((bits >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    text
}

/// A fibhost serving `guests/proxy-streaming`, allowed to reach `grants`.
fn proxy_streaming(grants: &[String], extra: &[&str]) -> Server {
    let mut args: Vec<&str> = vec!["--workers", "2"];
    for grant in grants {
        args.extend(["--allow-outbound", grant]);
    }
    args.extend_from_slice(extra);
    start(guests::PROXY_STREAMING, &args)
}

/// An HTTP/1.1 connection to `server` whose request and response bodies the test drives frame
/// by frame.
async fn connect<B>(server: &Server) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// `GET /hash-all` with one `url` header per entry of `urls`; returns the response once its
/// head is in.
async fn hash_all(server: &Server, urls: &[String]) -> http::Response<Incoming> {
    let mut request = http::Request::get("/hash-all").header("host", server.addr.to_string());
    for url in urls {
        request = request.header("url", url);
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let mut sender = connect(server).await;
    let response = timeout(STALL, sender.send_request(request))
        .await
        .expect("no answer's head from /hash-all")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    response
}

/// Reads `body` until `count` more whole lines have arrived (or it ends); appends them to
/// `lines` as (URL, what follows `": "`).
async fn read_lines(
    body: &mut Incoming,
    partial: &mut Vec<u8>,
    lines: &mut BTreeMap<String, String>,
    count: usize,
) {
    let wanted = lines.len().saturating_add(count);
    while lines.len() < wanted {
        let Some(frame) = timeout(STALL, body.frame())
            .await
            .unwrap_or_else(|_| panic!("stalled after these lines: {lines:#?}"))
        else {
            break;
        };
        if let Some(data) = frame.unwrap().data_ref() {
            partial.extend_from_slice(data);
        }
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let line = String::from_utf8(line).unwrap();
            let (url, value) = line
                .trim_end()
                .split_once(": ")
                .unwrap_or_else(|| panic!("not `URL: VALUE`: {line:?}"));
            let before = lines.insert(url.to_string(), value.to_string());
            assert!(before.is_none(), "two lines for {url}");
        }
    }
}

/// Every body is fetched and hashed: small ones, an empty one, 3 MiB in many frames; a 404, a
/// body cut short and an unreachable destination are reported on their own line, not hashed;
/// a header that is not a URL is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn hash_all_hashes_every_body_and_reports_failures_per_url() {
    let upstream = Upstream::start().await;
    let down = closed_port();
    let server = proxy_streaming(&[upstream.grant(), format!("http://{down}")], &[]);
    let mut urls: Vec<String> = BODIES.iter().map(|(path, _)| upstream.url(path)).collect();
    urls.extend(["/big", "/missing", "/broken"].map(|path| upstream.url(path)));
    urls.push(format!("http://{down}/"));
    let mut headers = urls.clone();
    headers.push("not a url".to_string());

    let mut body = hash_all(&server, &headers).await.into_body();
    let mut lines = BTreeMap::new();
    read_lines(&mut body, &mut Vec::new(), &mut lines, usize::MAX).await;

    let mut expected: BTreeMap<String, String> = BODIES
        .iter()
        .map(|(path, body)| (upstream.url(path), hash_line_value(body)))
        .collect();
    expected.insert(upstream.url("/big"), hash_line_value(&big_body()));
    expected.insert(
        upstream.url("/missing"),
        "unexpected status: 404".to_string(),
    );
    let broken = lines.remove(&upstream.url("/broken"));
    let refused = lines.remove(&format!("http://{down}/"));
    assert_eq!(lines, expected);
    // Cut short: an error, never the hash of the bytes that did arrive.
    let broken = broken.expect("no line for /broken");
    assert_ne!(broken, hash_line_value(BROKEN_SENT));
    assert_ne!(broken, hash_line_value(&[]));
    let refused = refused.expect("no line for the closed port");
    assert!(refused.contains("ConnectionRefused"), "{refused}");
}

/// The answer streams: lines come as fetches end, while another fetch (named first) is still
/// waiting on its upstream; its line follows once the upstream answers.
#[tokio::test(flavor = "multi_thread")]
async fn hash_all_streams_each_line_as_its_fetch_ends() {
    let upstream = Upstream::start().await;
    // `/held` must not time out while the test reads the other lines.
    let server = proxy_streaming(
        &[upstream.grant()],
        &["--outbound-first-byte-timeout", "600"],
    );
    let urls = ["/held", "/a", "/b"].map(|path| upstream.url(path));

    let mut body = hash_all(&server, &urls).await.into_body();
    let (mut partial, mut lines) = (Vec::new(), BTreeMap::new());
    // Stalls here if the guest fetches one URL after another, or holds its answer back.
    read_lines(&mut body, &mut partial, &mut lines, 2).await;
    let first: Vec<&String> = lines.keys().collect();
    assert_eq!(first, [&urls[1], &urls[2]], "{lines:#?}");

    upstream.release();
    read_lines(&mut body, &mut partial, &mut lines, usize::MAX).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[&urls[0]], hash_line_value(HELD_BODY));
    assert!(partial.is_empty(), "a last line without a newline");
}

/// 10 MB through `/double-echo` to another fibhost's `/echo` and back, with the client never
/// more than 1 MiB ahead of what has come back: a guest or host that held the body until it
/// was complete would stall the exchange.
#[tokio::test(flavor = "multi_thread")]
async fn double_echo_streams_10_mb_through_and_back() {
    const CHUNK: usize = 64 << 10;
    const AHEAD: usize = 1 << 20;
    let upstream = start(guests::PROXY_STREAMING, &["--workers", "1"]);
    let server = proxy_streaming(&[format!("http://{}", upstream.addr)], &[]);
    let sent: Bytes = (0..10_000_000usize)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();

    let (mut frames, frames_out) =
        futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let (progress, mut echoed) = tokio::sync::watch::channel(0usize);
    let feeder = tokio::spawn({
        let sent = sent.clone();
        async move {
            for (i, chunk) in sent.chunks(CHUNK).enumerate() {
                let sent_so_far = i * CHUNK;
                let caught_up = echoed
                    .wait_for(|back| sent_so_far < back + AHEAD)
                    .await
                    .is_ok();
                if !caught_up {
                    return; // the reader gave up; its panic says why
                }
                let frame = Frame::data(sent.slice_ref(chunk));
                if frames.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
        }
    });
    let request = http::Request::post("/double-echo")
        .header("host", server.addr.to_string())
        .header("url", format!("http://{}/echo", upstream.addr))
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(frames_out))
        .unwrap();
    let mut sender = connect(&server).await;
    let response = timeout(STALL, sender.send_request(request))
        .await
        .expect("no answer's head from /double-echo")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let mut body = response.into_body();
    let mut received = Vec::with_capacity(sent.len());
    while let Some(frame) = timeout(STALL, body.frame()).await.unwrap_or_else(|_| {
        panic!(
            "the echo stalled at {} of {} bytes, with at most {AHEAD} more sent: held back, not streamed",
            received.len(),
            sent.len()
        )
    }) {
        if let Some(data) = frame.unwrap().data_ref() {
            received.extend_from_slice(data);
            progress.send_replace(received.len());
        }
    }
    feeder.await.unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the echoed body differs");
}

/// A destination that is not granted is never reached: `/hash-all` names the denial on that
/// URL's line (and still hashes the granted one), `/double-echo` answers 500 naming it, and
/// fibhost logs the denial.
#[tokio::test(flavor = "multi_thread")]
async fn ungranted_upstreams_are_denied_and_never_reached() {
    let granted = Upstream::start().await;
    let other = Upstream::start().await;
    let server = proxy_streaming(&[granted.grant()], &[]);

    let urls = [granted.url("/a"), other.url("/a")];
    let mut body = hash_all(&server, &urls).await.into_body();
    let mut lines = BTreeMap::new();
    read_lines(&mut body, &mut Vec::new(), &mut lines, usize::MAX).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[&urls[0]], hash_line_value(BODIES[0].1));
    assert!(lines[&urls[1]].contains("HttpRequestDenied"), "{lines:#?}");

    // 4 MiB: more than the guest hands the host before it first waits, so it is still sending
    // when the host refuses the request (and closes that body). The answer must name the
    // refusal, not the closed body.
    let echo = other.url("/echo");
    let reply = Http::new()
        .send_with(
            Method::POST,
            &server.url("/double-echo"),
            Bytes::from(vec![b'x'; 4 << 20]),
            &[("url", echo.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.text().contains("HttpRequestDenied"),
        "{}",
        reply.text()
    );

    assert_eq!(other.hits.load(Ordering::SeqCst), 0);
    assert_eq!(granted.hits.load(Ordering::SeqCst), 1);
    server.wait_for_output(
        &format!("destination=\"http://{}\"", other.addr),
        Duration::from_secs(10),
    );
}

/// The answers that need no upstream: `/double-echo` without a `url` is 400, a non-2xx
/// upstream answer is a 500 naming its status, `/echo` streams back what it got, and the
/// paths refuse other methods with 405 and `allow`.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_streaming_answers_bad_requests_like_its_model() {
    let upstream = Upstream::start().await;
    let server = proxy_streaming(&[upstream.grant()], &[]);
    let http = Http::new();

    let reply = http
        .send(Method::POST, &server.url("/double-echo"), Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());

    let missing = upstream.url("/missing");
    let reply = http
        .send_with(
            Method::POST,
            &server.url("/double-echo"),
            Bytes::from_static(b"x"),
            &[("url", missing.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.text().contains("unexpected status: 404"),
        "{}",
        reply.text()
    );

    let reply = http
        .send_with(
            Method::POST,
            &server.url("/echo"),
            Bytes::from_static(b"back again"),
            &[("content-type", "application/x-test")],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            reply.status,
            reply.header("content-type"),
            reply.text().as_str()
        ),
        (StatusCode::OK, "application/x-test", "back again")
    );

    for (method, path, allow) in [
        (Method::POST, "/hash-all", "GET"),
        (Method::GET, "/double-echo", "POST"),
        (Method::GET, "/echo", "POST"),
    ] {
        let reply = http
            .send(method, &server.url(path), Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(reply.header("allow"), allow, "{path}");
    }
    let reply = http.get(&server.url("/elsewhere")).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}
