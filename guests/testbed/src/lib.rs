//! A test guest for fibhost's own suites: a per-instance request counter (to observe reuse and
//! recycling) and each misbehaviour a host must contain. Never deploy it.
//!
//! | path | behaviour |
//! |---|---|
//! | `/count` | how many requests this instance has served, this one included |
//! | `/version` | `v1`, or `v2` when built with the `v2` feature |
//! | `/grow?mib=N` or `?kib=N` | keeps N more MiB (KiB) of linear memory alive, then answers like `/count` (a guest that leaks) |
//! | `/sleep?ms=N` | answers `slept v1` (or `v2`) after N ms of idle waiting |
//! | `/loop` | spins forever (CPU) |
//! | `/alloc` | allocates until allocation fails |
//! | `/panic` | panics |
//! | `/noreply` | returns without sending a response |
//! | `/once` | like `/count` on an instance's first request; without a response after (a guest that serves once per instance, like StarlingMonkey) |
//! | `/stack` | recurses until the stack overflows |
//! | `/stream?mib=N` | streams an N MiB body (default 100) |
//! | `/stall` | sends headers and a first chunk, then waits forever |
//! | `/fields?n=N&kib=K[&keep=1]` | keeps N header fields of K KiB each alive on the host (host memory a guest can make fibhost hold) during the request, or with `keep=1` after it (a guest leaking host resources) |
//! | `/print?text=X` | writes `printed X` to stdout without a newline, then answers 200 |
//! | `/env?name=X` | the value of environment variable X, or 404 |
//! | `/echo` | echoes the request body |
//! | `/fetch?url=SCHEME://HOST:PORT&path=/P` | sends the request's method and body there (outbound HTTP) and streams the answer back; 502 with the error code if the host refuses or it fails |
//! | anything else | 404 naming the path and query the guest received |

use std::cell::RefCell;
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Testbed;

wasip2::http::proxy::export!(Testbed);

static SERVED: AtomicU64 = AtomicU64::new(0);

/// With `hang-at-start`: the module's `_initialize`, which the component runs when an
/// instance is created, before any request, never returns.
#[cfg(feature = "hang-at-start")]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

thread_local! {
    /// Memory kept alive on purpose by `/grow`, so that linear memory stays large.
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Host resources kept alive on purpose by `/fields?keep=1`.
    static HELD: RefCell<Vec<Fields>> = const { RefCell::new(Vec::new()) };
}

const VERSION: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };
const MIB: usize = 1024 * 1024;

impl Guest for Testbed {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |key: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        let number =
            |key: &str, default: u64| param(key).and_then(|v| v.parse().ok()).unwrap_or(default);
        match path {
            "/count" => reply(response_out, 200, served.to_string()),
            "/version" => reply(response_out, 200, VERSION.to_string()),
            "/grow" => {
                let bytes = match param("kib") {
                    Some(_) => number("kib", 0) as usize * 1024,
                    None => number("mib", 1) as usize * MIB,
                };
                HOARD.with(|h| h.borrow_mut().push(black_box(vec![1u8; bytes])));
                reply(response_out, 200, served.to_string());
            }
            "/sleep" => {
                monotonic_clock::subscribe_duration(number("ms", 100) * 1_000_000).block();
                reply(response_out, 200, format!("slept {VERSION}"));
            }
            "/loop" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut all = Vec::new();
                loop {
                    all.push(black_box(vec![1u8; 4 * MIB]));
                }
            }
            "/panic" => panic!("testbed was asked to panic"),
            // Returns without setting a response (dropping the outparam unanswered).
            "/noreply" => drop(response_out),
            "/once" if served == 1 => reply(response_out, 200, served.to_string()),
            "/once" => drop(response_out),
            "/stack" => reply(response_out, 200, recurse(black_box(1)).to_string()),
            "/stream" => {
                let mib = number("mib", 100) as usize;
                let body = start(response_out, 200, None);
                if let Ok(mut stream) = body.write() {
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..mib * 16 {
                        if stream.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                    let _ = stream.flush();
                }
                let _ = OutgoingBody::finish(body, None);
            }
            "/stall" => {
                let body = start(response_out, 200, None);
                if let Ok(mut stream) = body.write() {
                    let _ = stream.write_all(b"first chunk\n");
                    let _ = stream.flush();
                    monotonic_clock::subscribe_duration(3_600 * 1_000_000_000).block();
                }
                let _ = OutgoingBody::finish(body, None);
            }
            "/framing" => {
                // Two lengths declared for one body (a response-splitting hazard): wasi-http
                // must refuse the second declaration, whichever way the guest tries.
                let headers = Fields::new();
                let _ = headers.append("content-length", b"3");
                let verdict = |accepted: bool| if accepted { "accepted" } else { "refused" };
                let append = verdict(headers.append("content-length", b"100").is_ok());
                let two = [b"3".to_vec(), b"100".to_vec()];
                let set = verdict(headers.set("content-length", &two).is_ok());
                let _ = headers.append("x-second-append", append.as_bytes());
                let _ = headers.append("x-set-two", set.as_bytes());
                let response = OutgoingResponse::new(headers);
                let body = response
                    .body()
                    .expect("a fresh response's body is taken once");
                ResponseOutparam::set(response_out, Ok(response));
                if let Ok(mut stream) = body.write() {
                    let _ = stream.write_all(b"abc");
                    let _ = stream.flush();
                }
                let _ = OutgoingBody::finish(body, None);
            }
            "/fields" => {
                let value = vec![b'v'; number("kib", 32) as usize * 1024];
                let mut hoard = Vec::new();
                for _ in 0..number("n", 1000) {
                    let fields = Fields::new();
                    let _ = fields.append("x-hoard", &value);
                    hoard.push(fields);
                }
                let held = hoard.len();
                if param("keep").as_deref() == Some("1") {
                    HELD.with(|held| held.borrow_mut().extend(hoard));
                }
                reply(response_out, 200, held.to_string());
            }
            "/print" => {
                let text = param("text").unwrap_or_default();
                let mut stdout = std::io::stdout();
                let _ = write!(stdout, "printed {text}");
                let _ = stdout.flush();
                reply(response_out, 200, String::new());
            }
            "/env" => match param("name").and_then(|n| std::env::var(n).ok()) {
                Some(v) => reply(response_out, 200, v),
                None => reply(response_out, 404, "unset".to_string()),
            },
            "/echo" => {
                let mut data = Vec::new();
                if let Ok(body) = request.consume() {
                    if let Ok(mut stream) = body.stream() {
                        let _ = stream.read_to_end(&mut data);
                    }
                    let _ = IncomingBody::finish(body);
                }
                reply(
                    response_out,
                    200,
                    String::from_utf8_lossy(&data).into_owned(),
                );
            }
            "/fetch" => {
                let url = param("url").unwrap_or_default();
                let path = param("path").unwrap_or_else(|| "/".to_string());
                fetch(request, response_out, &url, &path);
            }
            _ => reply(response_out, 404, format!("no such testbed path: {target}")),
        }
    }
}

/// Sends `request`'s method and body to `url` + `path`, streaming both ways, and answers with
/// the upstream's status and body; a refusal or failure is a 502 naming the error code.
fn fetch(request: IncomingRequest, out: ResponseOutparam, url: &str, path: &str) {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let Some((scheme, authority)) = url.split_once("://") else {
        return reply(out, 400, format!("bad url `{url}`"));
    };
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let outgoing = OutgoingRequest::new(Fields::new());
    let _ = outgoing.set_method(&request.method());
    let _ = outgoing.set_scheme(Some(&scheme));
    let _ = outgoing.set_authority(Some(authority));
    let _ = outgoing.set_path_with_query(Some(path));
    let Ok(outgoing_body) = outgoing.body() else {
        return reply(out, 500, "no outgoing body".to_string());
    };
    let future = match outgoing_handler::handle(outgoing, None) {
        Ok(future) => future,
        Err(code) => return reply(out, 502, format!("{code:?}")),
    };
    // The request body, streamed through.
    if let Ok(body) = request.consume() {
        if let (Ok(mut from), Ok(mut to)) = (body.stream(), outgoing_body.write()) {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.flush();
        }
        let _ = IncomingBody::finish(body);
    }
    let _ = OutgoingBody::finish(outgoing_body, None);
    let response = loop {
        match future.get() {
            Some(result) => break result,
            None => future.subscribe().block(),
        }
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return reply(out, 502, format!("{code:?}")),
        Err(()) => return reply(out, 502, "response already taken".to_string()),
    };
    let body = start(out, response.status(), None);
    if let (Ok(incoming), Ok(mut to)) = (response.consume(), body.write()) {
        if let Ok(mut from) = incoming.stream() {
            let _ = std::io::copy(&mut from, &mut to);
        }
        let _ = to.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}

#[inline(never)]
#[expect(
    unconditional_recursion,
    reason = "`/stack` exists to overflow the stack"
)]
fn recurse(depth: u64) -> u64 {
    let pad = black_box([depth; 64]);
    recurse(depth + 1) + pad[black_box(3)]
}

/// Sends the status and headers and returns the body to write.
fn start(out: ResponseOutparam, status: u16, length: Option<usize>) -> OutgoingBody {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain");
    if let Some(len) = length {
        let _ = headers.append("content-length", len.to_string().as_bytes());
    }
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response
        .body()
        .expect("a fresh response's body is taken once");
    ResponseOutparam::set(out, Ok(response));
    body
}

fn reply(out: ResponseOutparam, status: u16, text: String) {
    let body = start(out, status, Some(text.len()));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(text.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}
