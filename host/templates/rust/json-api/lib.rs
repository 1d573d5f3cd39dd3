//! {{name}}: a JSON API as a wasi:http guest for fibhost.
//!
//! - `GET /hello?name=Ada` → `{"message":"Hello, Ada!"}` (name percent-decoded, default "world")
//! - `POST /echo` with a JSON body → `{"received":<the body as sent>}`
//! - HEAD of `/hello` → GET's headers; other methods → 405 with `Allow`; other paths → 404;
//!   a bad query or body → 400. Every error is `{"error":"..."}`.

use serde_json::{Value, json};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasip2::io::streams::StreamError;

struct Api;

wasip2::http::proxy::export!(Api);

impl Guest for Api {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let method = request.method();
        let reply = match (path, &method) {
            ("/hello", Method::Get | Method::Head) => hello(query),
            ("/hello", _) => Reply::not_allowed("GET, HEAD"),
            ("/echo", Method::Post) => match read_body(request) {
                Some(body) => echo(&body),
                None => Reply::error(400, "the request body could not be read"),
            },
            ("/echo", _) => Reply::not_allowed("POST"),
            _ => Reply::error(404, "not found; try GET /hello?name=you or POST /echo"),
        };
        reply.send(response_out, matches!(method, Method::Head));
    }
}

/// `GET /hello?name=...`
fn hello(query: &str) -> Reply {
    let name = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == "name")
        .map_or(Some(String::new()), |(_, value)| percent_decode(value));
    match name {
        Some(name) => {
            let name = if name.is_empty() { "world" } else { &name };
            Reply::json(200, json!({ "message": format!("Hello, {name}!") }))
        }
        None => Reply::error(400, "`name` is not valid percent-encoded UTF-8"),
    }
}

/// `POST /echo`: the body, checked to be JSON, sent back as it came.
fn echo(body: &[u8]) -> Reply {
    if serde_json::from_slice::<Value>(body).is_err() {
        return Reply::error(400, "the body is not valid JSON");
    }
    let body = [b"{\"received\":", body.trim_ascii(), b"}"].concat();
    Reply::new(200, body)
}

/// `+` is a space and `%XX` the byte XX; `None` when an escape is malformed or the bytes are
/// not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        bytes.push(match byte {
            b'+' => b' ',
            b'%' => {
                let hex = rest.get(..2).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                rest = &rest[2..];
                u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
            }
            other => other,
        });
    }
    String::from_utf8(bytes).ok()
}

/// Reads the whole request body, in chunks, to its end (fibhost caps its size with
/// `max-body-size`). `None` if the client went away.
fn read_body(request: IncomingRequest) -> Option<Vec<u8>> {
    let body = request.consume().ok()?;
    let stream = body.stream().ok()?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return None,
        }
    }
    drop(stream); // the stream must go before its body
    IncomingBody::finish(body);
    Some(out)
}

/// A JSON response.
struct Reply {
    status: u16,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Reply {
    fn new(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            body,
            allow: None,
        }
    }

    fn json(status: u16, value: Value) -> Reply {
        Reply::new(status, value.to_string().into_bytes())
    }

    fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, json!({ "error": message }))
    }

    fn not_allowed(allow: &'static str) -> Reply {
        Reply {
            allow: Some(allow),
            ..Reply::error(405, &format!("method not allowed; allowed: {allow}"))
        }
    }

    /// Sends the response; for HEAD, the headers only (content-length included).
    fn send(self, response_out: ResponseOutparam, head: bool) {
        let mut headers = vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            ("content-length".to_string(), self.body.len().to_string().into_bytes()),
        ];
        if let Some(allow) = self.allow {
            headers.push(("allow".to_string(), allow.as_bytes().to_vec()));
        }
        let headers = Fields::from_list(&headers).expect("valid header names and values");
        let response = OutgoingResponse::new(headers);
        response
            .set_status_code(self.status)
            .expect("a valid status code");
        if head {
            // Taking the body and writing nothing would contradict the content-length.
            ResponseOutparam::set(response_out, Ok(response));
            return;
        }
        let body = response.body().expect("a new response's body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = body.write().expect("a body's stream is taken once");
        // At most 4096 bytes per call. A write fails only when the client has gone away.
        for chunk in self.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(stream); // the stream must go before the body is finished
        let _ = OutgoingBody::finish(body, None);
    }
}
