//! A test guest with the behaviour of wasmtime's test program `api_proxy_streaming` (issue
//! #13), written for fibhost: outbound requests to the `url` headers' targets, with every body
//! streamed through bounded buffers and the requests of `/hash-all` in flight together, driven
//! by `wasi:io/poll`. Never deploy it: it fetches whatever its callers name (within
//! `allow-outbound`).
//!
//! | request | behaviour |
//! |---|---|
//! | `GET /hash-all`, `url: URL` headers | 200 `text/plain` at once, then one line per URL as its fetch ends, in that order: `URL: HASH` (the SHA-256 of the body, unpadded standard base64) or `URL: ERROR` (the error code, `unexpected status: N` for a non-2xx answer, or the body's read error); up to 16 fetches in flight |
//! | `POST /echo` | 200 with the request's `content-type`, the request body streamed back |
//! | `POST /double-echo`, `url: URL` header | the request body streamed to `POST URL` while the answer streams back: 200 with the request's `content-type` and the upstream's body; 500 with `URL: ERROR` if the request fails or is answered other than 2xx; 400 without a `url` |
//! | `/hash-all`, `/echo`, `/double-echo` with another method | 405 with `allow` |
//! | anything else | 404 |
//!
//! Where it differs from wasmtime's program, on purpose: the request body of `/double-echo`
//! is streamed upstream while its answer is awaited (wasmtime's starts only once the answer's
//! head is in, which deadlocks against an upstream that reads the whole body before
//! answering); a body that fails half way is aborted, so its reader sees an error rather than
//! a shorter body that looks complete; a URL's query is sent (wasmtime's sends only the
//! path); lines name a URL as it was sent (wasmtime's normalises it); an unknown path is
//! 404, not 405; a `/double-echo` failure says why in its body.

mod flow;
mod target;

use base64::Engine as _;
use sha2::Digest as _;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingRequest, IncomingResponse, Method,
    OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::poll::Pollable;

use flow::{Buffer, Pump, Read, Sink, Source, Step, wait_any};
use target::Target;

/// Most `/hash-all` fetches in flight at once (wasmtime's program's figure, and fibhost's
/// default `outbound-max-connections` per destination).
const MAX_FETCHES: usize = 16;

struct ProxyStreaming;

wasip2::http::proxy::export!(ProxyStreaming);

impl Guest for ProxyStreaming {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
        let method = request.method();
        match path {
            "/hash-all" if matches!(method, Method::Get) => hash_all(&request, out),
            "/echo" if matches!(method, Method::Post) => echo(&request, out),
            "/double-echo" if matches!(method, Method::Post) => double_echo(&request, out),
            "/hash-all" => not_allowed(out, "GET"),
            "/echo" | "/double-echo" => not_allowed(out, "POST"),
            _ => respond(out, 404, &format!("no such path: {path}\n")),
        }
    }
}

/// Fetches every `url` header's target, up to [`MAX_FETCHES`] at once, and answers with one
/// line per target as its fetch ends.
fn hash_all(request: &IncomingRequest, out: ResponseOutparam) {
    let mut queue = target::all(request).into_iter();
    // The head goes out before any fetch has ended: lines stream as fetches end.
    let mut sink = Sink::new(start(out, None));
    let mut lines = Buffer::default();
    let mut sink_wait: Option<Pollable> = None;
    // Each fetch with the pollable it waits on (`None`: advance it). The pollable comes first
    // so that it is dropped first: a pollable must go before the stream or future it watches.
    let mut running: Vec<(Option<Pollable>, Fetch)> = Vec::new();
    loop {
        while running.len() < MAX_FETCHES
            && let Some(target) = queue.next()
        {
            match Fetch::start(target) {
                Ok(fetch) => running.push((None, fetch)),
                Err(line) => lines.push(line.as_bytes()),
            }
        }
        let before = running.len();
        running.retain_mut(|(wait, fetch)| {
            if wait.is_some() {
                return true;
            }
            match fetch.advance() {
                Progress::Wait(pollable) => {
                    *wait = Some(pollable);
                    true
                }
                Progress::Over(line) => {
                    lines.push(line.as_bytes());
                    false
                }
            }
        });
        if sink_wait.is_none() {
            match sink.write_from(&mut lines) {
                Ok(wait) => sink_wait = wait,
                // The client is gone: nobody reads the rest.
                Err(e) => return eprintln!("hash-all: writing the answer failed: {e}"),
            }
        }
        if running.is_empty() && queue.as_slice().is_empty() && lines.is_empty() {
            break;
        }
        // A fetch that ended left a slot free: fill it before waiting.
        if running.len() < before && !queue.as_slice().is_empty() {
            continue;
        }
        let mut slots: Vec<&mut Option<Pollable>> = running
            .iter_mut()
            .map(|(wait, _)| wait)
            .chain([&mut sink_wait])
            .collect();
        wait_any(&mut slots);
    }
    if let Err(e) = drain(&mut sink).and_then(|()| sink.finish().map_err(|c| format!("{c:?}"))) {
        eprintln!("hash-all: ending the answer failed: {e}");
    }
}

/// How far one fetch of `/hash-all` got.
enum Progress {
    /// Still going; advance it once this is ready.
    Wait(Pollable),
    /// Over: its line of the answer.
    Over(String),
}

/// One `/hash-all` target: its request in flight, then its body hashed as it arrives.
struct Fetch {
    url: String,
    state: FetchState,
}

enum FetchState {
    Head(FutureIncomingResponse),
    Body {
        // Declared before the response: the body goes first.
        source: Source,
        hasher: sha2::Sha256,
        _response: IncomingResponse,
    },
    Over,
}

impl Fetch {
    /// Sends the GET; `Err` is the target's line when it cannot even be sent.
    fn start(target: Target) -> Result<Fetch, String> {
        let sent = target
            .request(&Method::Get)
            .and_then(|request| outgoing_handler::handle(request, None).map_err(code));
        match sent {
            Ok(head) => Ok(Fetch {
                url: target.url,
                state: FetchState::Head(head),
            }),
            Err(e) => Err(format!("{}: {e}\n", target.url)),
        }
    }

    fn advance(&mut self) -> Progress {
        let result = loop {
            match std::mem::replace(&mut self.state, FetchState::Over) {
                FetchState::Head(head) => match head.get() {
                    None => {
                        let wait = head.subscribe();
                        self.state = FetchState::Head(head);
                        return Progress::Wait(wait);
                    }
                    Some(Err(())) => unreachable!("a response is taken once, here"),
                    Some(Ok(Err(e))) => break Err(code(e)),
                    Some(Ok(Ok(response))) => {
                        let status = response.status();
                        if !(200..300).contains(&status) {
                            break Err(format!("unexpected status: {status}"));
                        }
                        let Some(source) = response.consume().ok().and_then(Source::new) else {
                            break Err("the response body was already taken".to_string());
                        };
                        self.state = FetchState::Body {
                            source,
                            hasher: sha2::Sha256::new(),
                            _response: response,
                        };
                    }
                },
                FetchState::Body {
                    source,
                    mut hasher,
                    _response,
                } => match source.read() {
                    Ok(Read::Data(bytes)) => {
                        hasher.update(&bytes);
                        self.state = FetchState::Body {
                            source,
                            hasher,
                            _response,
                        };
                    }
                    Ok(Read::NotYet) => {
                        let wait = source.ready();
                        self.state = FetchState::Body {
                            source,
                            hasher,
                            _response,
                        };
                        return Progress::Wait(wait);
                    }
                    Ok(Read::End) => {
                        source.finish();
                        let digest = hasher.finalize();
                        break Ok(base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest));
                    }
                    Err(e) => break Err(e),
                },
                FetchState::Over => unreachable!("a fetch is not advanced after its line"),
            }
        };
        let (Ok(text) | Err(text)) = result;
        Progress::Over(format!("{}: {text}\n", self.url))
    }
}

/// Streams the request body back.
fn echo(request: &IncomingRequest, out: ResponseOutparam) {
    let Some(source) = request.consume().ok().and_then(Source::new) else {
        return respond(out, 500, "the request body was already taken\n");
    };
    let mut pump = Pump::new(source, Sink::new(start(out, Some(content_type(request)))));
    let result = loop {
        match pump.advance() {
            Ok(Step::Wait(pollable)) => pollable.block(),
            Ok(Step::Done) => break pump.finish(),
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = result {
        // Dropping the pump aborted the answer.
        eprintln!("echo: {e}");
    }
}

/// Streams the request body to `POST url` and that answer's body back, both at once.
fn double_echo(request: &IncomingRequest, out: ResponseOutparam) {
    let Some(target) = target::all(request).into_iter().next() else {
        return respond(out, 400, "a `url` header is needed\n");
    };
    // A 500 naming `e`, once the rest of the request body (if any is left) has been read
    // away: a client still sending it would meet a closed connection instead of the answer.
    let fail = |out: ResponseOutparam, e: String, rest: Option<Source>| {
        eprintln!("double-echo: {}: {e}", target.url);
        if let Some(rest) = rest {
            rest.skip_to_end();
        }
        respond(out, 500, &format!("{}: {e}\n", target.url));
    };
    let Some(source) = request.consume().ok().and_then(Source::new) else {
        return fail(out, "the request body was already taken".to_string(), None);
    };
    let outgoing = match target.request(&Method::Post) {
        Ok(outgoing) => outgoing,
        Err(e) => return fail(out, e, Some(source)),
    };
    let body = outgoing
        .body()
        .expect("a fresh request's body is taken once, here");
    let head = match outgoing_handler::handle(outgoing, None) {
        Ok(head) => head,
        Err(e) => return fail(out, code(e), Some(source)),
    };
    // Request body → upstream, from the start; `None` once it is all sent (or failed).
    let mut up = Some(Pump::new(source, Sink::new(body)));
    let mut up_wait = None;
    // Why sending the request body failed before the answer's head came, if it did, and the
    // request body's unread rest.
    let mut up_failed: Option<(String, Option<Source>)> = None;
    // The upstream's answer: its head, then its body → the client.
    let mut head = Some(head);
    let mut head_wait = None;
    let mut out = Some(out);
    let mut _upstream: Option<IncomingResponse> = None;
    let mut down: Option<Pump> = None;
    let mut down_wait = None;
    loop {
        if let Some(pump) = &mut up
            && up_wait.is_none()
        {
            let sent = match pump.advance() {
                Ok(Step::Wait(pollable)) => {
                    up_wait = Some(pollable);
                    Ok(())
                }
                Ok(Step::Done) => up.take().map_or(Ok(()), Pump::finish),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                // Without its sink, which aborts the request body upstream.
                let rest = up.take().and_then(Pump::into_source);
                let e = format!("sending the request body: {e}");
                if out.is_some() {
                    // Wait for the head all the same: when the host refused or failed the
                    // request, it has closed the body, and the head's error says why.
                    up_failed = Some((e, rest));
                } else {
                    // Returning drops the answer unfinished: the client sees it fail.
                    return eprintln!("double-echo: {}: {e}", target.url);
                }
            }
        }
        if let Some(future) = &head
            && head_wait.is_none()
        {
            match future.get() {
                None => head_wait = Some(future.subscribe()),
                Some(answer) => {
                    head = None;
                    let out = out.take().expect("the head is answered once");
                    let answer = match answer {
                        Ok(Ok(response)) => match &up_failed {
                            Some((e, _)) => Err(e.clone()),
                            None if (200..300).contains(&response.status()) => Ok(response),
                            None => Err(format!("unexpected status: {}", response.status())),
                        },
                        Ok(Err(e)) => Err(code(e)),
                        Err(()) => unreachable!("a response is taken once, here"),
                    };
                    let response = match answer {
                        Ok(response) => response,
                        Err(e) => {
                            // The pollable goes before the pump whose stream it watches.
                            drop(up_wait.take());
                            let rest = match up_failed.take() {
                                Some((_, rest)) => rest,
                                None => up.take().and_then(Pump::into_source),
                            };
                            return fail(out, e, rest);
                        }
                    };
                    let source = (response.consume().ok())
                        .and_then(Source::new)
                        .expect("a fresh response's body is read once, here");
                    let sink = Sink::new(start(out, Some(content_type(request))));
                    down = Some(Pump::new(source, sink));
                    _upstream = Some(response);
                }
            }
        }
        if let Some(pump) = &mut down
            && down_wait.is_none()
        {
            let ended = match pump.advance() {
                Ok(Step::Wait(pollable)) => {
                    down_wait = Some(pollable);
                    Ok(())
                }
                Ok(Step::Done) => down.take().map_or(Ok(()), Pump::finish),
                Err(e) => Err(e),
            };
            if let Err(e) = ended {
                // Returning drops the answer unfinished: the client sees it fail.
                return eprintln!("double-echo: {}: streaming the answer: {e}", target.url);
            }
        }
        if up.is_none() && head.is_none() && down.is_none() {
            return;
        }
        wait_any(&mut [&mut up_wait, &mut head_wait, &mut down_wait]);
    }
}

/// Waits until everything written to `sink` is flushed.
fn drain(sink: &mut Sink) -> Result<(), String> {
    loop {
        match sink.flush()? {
            Step::Wait(pollable) => pollable.block(),
            Step::Done => return Ok(()),
        }
    }
}

/// An error code as the answers name it (e.g. `ErrorCode::HttpRequestDenied`).
fn code(e: ErrorCode) -> String {
    format!("{e:?}")
}

/// The request's `content-type` values, to answer with.
fn content_type(request: &IncomingRequest) -> Vec<Vec<u8>> {
    request.headers().get("content-type")
}

/// Sends a 200 head (with `content_type`, else `text/plain`) and returns its body to write.
fn start(out: ResponseOutparam, content_type: Option<Vec<Vec<u8>>>) -> OutgoingBody {
    let values = content_type.unwrap_or_else(|| vec![b"text/plain".to_vec()]);
    let entries: Vec<(String, Vec<u8>)> = values
        .into_iter()
        .map(|v| ("content-type".to_string(), v))
        .collect();
    let headers = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let body = response
        .body()
        .expect("a fresh response's body is taken once, here");
    ResponseOutparam::set(out, Ok(response));
    body
}

fn not_allowed(out: ResponseOutparam, allow: &str) {
    respond_with(out, 405, &[("allow", allow)], "method not allowed\n");
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    respond_with(out, status, &[], text);
}

/// A whole answer: `status`, `text` as `text/plain`, and `extra` headers.
fn respond_with(out: ResponseOutparam, status: u16, extra: &[(&str, &str)], text: &str) {
    let length = text.len().to_string();
    let entries: Vec<(String, Vec<u8>)> = [
        ("content-type", "text/plain"),
        ("content-length", length.as_str()),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    let headers = Fields::from_list(&entries).expect("valid header names and values");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response
        .body()
        .expect("a fresh response's body is taken once, here");
    ResponseOutparam::set(out, Ok(response));
    let mut sink = Sink::new(body);
    let mut buffer = Buffer::default();
    buffer.push(text.as_bytes());
    // At most a line: waiting on the stream here holds nothing else up.
    let written = loop {
        match sink.write_from(&mut buffer) {
            Ok(Some(pollable)) => pollable.block(),
            Ok(None) => break drain(&mut sink),
            Err(e) => break Err(e),
        }
    };
    if written.is_ok() {
        let _ = sink.finish();
    }
}
