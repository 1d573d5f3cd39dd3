//! A WASI 0.3 test guest for fibhost's own suites: a `wasi:http/service` component whose
//! `async fn handle` lets one instance run many requests at once. It carries a per-instance
//! request counter (to observe reuse and concurrency), an idle sleep that awaits a timer
//! instead of blocking (so concurrent requests overlap on one instance), streaming both ways,
//! and the misbehaviours a host must contain. Never deploy it.
//!
//! | path | behaviour |
//! |---|---|
//! | `/count` | how many requests this instance has started, this one included |
//! | `/sleep?ms=N` | awaits a monotonic-clock timer of N ms (default 100), then answers `slept`; other requests run on the instance meanwhile |
//! | `/gather?n=N` | waits (on 1 ms timers) until N `/gather` requests are in flight on this instance at once, then answers `gathered N`: it can only answer when the host runs N requests on one instance concurrently |
//! | `/panic` | panics |
//! | `/loop` | spins forever (CPU) |
//! | `/echo` | streams the request body back as the response body, chunk by chunk |
//! | `/stream?mib=N` | streams an N MiB body (default 4) in 64 KiB chunks |
//! | `/fetch?url=SCHEME://HOST:PORT&path=/P` | sends `GET /P` there through `wasi:http/client` (outbound HTTP) and answers with the upstream's status and body; 502 with the error code if the host refuses or it fails |
//! | anything else | 404 naming the path and query the guest received |

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use wasip3::clocks::monotonic_clock;
use wasip3::exports::http::handler::Guest;
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::wit_bindgen::{StreamResult, StreamWriter};
use wasip3::{wit_future, wit_stream};

struct Testbed;

wasip3::http::service::export!(Testbed);

/// Requests started on this instance. Incremented on entry, not on completion: with
/// concurrent requests on one instance, "started" is what a test can predict.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// `/gather` requests that have arrived on this instance (they never leave before all have).
static GATHERING: AtomicU64 = AtomicU64::new(0);

const MIB: usize = 1024 * 1024;
/// The size of each write of `/stream` and of each read (at most) of `/echo`.
const CHUNK: usize = 64 * 1024;

impl Guest for Testbed {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let started = STARTED.fetch_add(1, Ordering::Relaxed) + 1;
        let target = request.get_path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let number = |key: &str, default: u64| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(default)
        };
        let param = |key: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
        };
        match path {
            "/count" => reply(200, started.to_string()),
            "/fetch" => fetch(&param("url"), &param("path")).await,
            "/gather" => {
                let n = number("n", 2);
                GATHERING.fetch_add(1, Ordering::Relaxed);
                while GATHERING.load(Ordering::Relaxed) < n {
                    monotonic_clock::wait_for(1_000_000).await;
                }
                reply(200, format!("gathered {n}"))
            }
            "/sleep" => {
                // An awaited timer: this task is suspended and the instance is free to run
                // other requests until it fires.
                monotonic_clock::wait_for(number("ms", 100).saturating_mul(1_000_000)).await;
                reply(200, "slept".to_string())
            }
            "/panic" => panic!("p3-testbed was asked to panic"),
            "/loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "/echo" => echo(request),
            "/stream" => {
                let chunks = number("mib", 4) as usize * (MIB / CHUNK);
                let (response, mut body) = start(200, None)?;
                wasip3::spawn_local(async move {
                    let mut chunk = vec![b'x'; CHUNK];
                    for _ in 0..chunks {
                        // `write_all` hands the buffer back emptied (capacity kept), or with
                        // what is left unsent when the client has gone away.
                        chunk = body.write_all(chunk).await;
                        if !chunk.is_empty() {
                            break;
                        }
                        chunk.resize(CHUNK, b'x');
                    }
                });
                Ok(response)
            }
            _ => reply(404, format!("no such testbed path: {target}")),
        }
    }
}

/// `GET url + path` through the host's outbound client; the upstream's status and body, or 502
/// naming the error code (e.g. `HttpRequestDenied` for a destination not granted).
async fn fetch(url: &str, path: &str) -> Result<Response, ErrorCode> {
    use wasip3::http::client;
    use wasip3::http::types::Scheme;
    let Some((scheme, authority)) = url.split_once("://") else {
        return reply(400, format!("bad url `{url}`"));
    };
    let (_trailers_writer, trailers) = wit_future::new(|| Ok(None));
    let (outgoing, _sent) = Request::new(Fields::new(), None, trailers, None);
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let _ = outgoing.set_scheme(Some(&scheme));
    let _ = outgoing.set_authority(Some(authority));
    let _ = outgoing.set_path_with_query(Some(path));
    let response = match client::send(outgoing).await {
        Ok(response) => response,
        Err(code) => return reply(502, format!("{code:?}")),
    };
    let status = response.get_status_code();
    let (outcome, outcome_reader) = wit_future::new(|| Ok(()));
    let (mut from, _trailers) = Response::consume_body(response, outcome_reader);
    let mut data = Vec::new();
    loop {
        let (result, chunk) = from.read(Vec::with_capacity(CHUNK)).await;
        data.extend_from_slice(&chunk);
        match result {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped | StreamResult::Cancelled => break,
        }
    }
    drop(outcome);
    reply(status, String::from_utf8_lossy(&data).into_owned())
}

/// Answers with a body streamed through from the request's, as it arrives: the response is
/// returned first, then a spawned task copies chunk by chunk (neither side is buffered
/// whole).
fn echo(request: Request) -> Result<Response, ErrorCode> {
    // The request's outcome as this guest reports it to the host: `Ok(())` (the default,
    // sent when the writer is dropped) once the copy is over.
    let (outcome, outcome_reader) = wit_future::new(|| Ok(()));
    let (mut from, _trailers) = Request::consume_body(request, outcome_reader);
    let (response, mut to) = start(200, None)?;
    wasip3::spawn_local(async move {
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            let (status, data) = from.read(buf).await;
            buf = data;
            if !buf.is_empty() {
                buf = to.write_all(buf).await;
                if !buf.is_empty() {
                    // The client has gone away.
                    break;
                }
            }
            match status {
                StreamResult::Complete(_) => buf.reserve(CHUNK),
                StreamResult::Dropped | StreamResult::Cancelled => break,
            }
        }
        drop(outcome);
    });
    Ok(response)
}

/// Builds a `text/plain` response with `status`, and `content-length` when `length` is
/// known; returns it with the writer of its body. No trailers: the trailers writer is dropped
/// unwritten, which sends its default `Ok(None)`.
fn start(status: u16, length: Option<usize>) -> Result<(Response, StreamWriter<u8>), ErrorCode> {
    let mut entries = vec![("content-type".to_string(), b"text/plain".to_vec())];
    if let Some(len) = length {
        entries.push(("content-length".to_string(), len.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&entries)
        .map_err(|e| ErrorCode::InternalError(Some(format!("headers refused: {e:?}"))))?;
    let (body, contents) = wit_stream::new();
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (response, _) = Response::new(headers, Some(contents), trailers);
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(Some(format!("bad status {status}"))))?;
    Ok((response, body))
}

/// A complete `text/plain` answer; the body is written by a task that outlives `handle`.
fn reply(status: u16, text: String) -> Result<Response, ErrorCode> {
    let (response, mut body) = start(status, Some(text.len()))?;
    wasip3::spawn_local(async move {
        // A failed write means the client has gone away; nobody is left to tell.
        let _unsent = body.write_all(text.into_bytes()).await;
    });
    Ok(response)
}
