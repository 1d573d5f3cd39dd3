//! The Fibonacci API as a `wasi:http/proxy` component.
//!
//! All of the API's behaviour lives in the shared `fibonacci` crate; this file only moves a
//! `wasi:http` request in and a [`fibonacci::Reply`] out, so the native baseline and this
//! guest answer byte for byte alike.

use std::io::Write as _;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Fib;

wasip2::http::proxy::export!(Fib);

impl Guest for Fib {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = request.method();
        let method_name = match &method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(other) => other.as_str(),
        };
        let path = request.path_with_query().unwrap_or_default();
        let reply = fibonacci::respond(method_name, &path);

        let headers = Fields::new();
        let length = reply.body.len().to_string();
        // These names and values are valid and the fields are fresh and mutable, so
        // `append` cannot fail.
        let _ = headers.append("content-type", fibonacci::CONTENT_TYPE.as_bytes());
        let _ = headers.append("content-length", length.as_bytes());
        if reply.allow {
            let _ = headers.append("allow", fibonacci::ALLOWED_METHODS.as_bytes());
        }
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(reply.status);

        if matches!(method, Method::Head) {
            // HEAD: the headers of GET (Content-Length included) and no body. Not taking the
            // body at all is what keeps the host from checking the length against zero bytes.
            ResponseOutparam::set(response_out, Ok(response));
            return;
        }
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        // A write fails only when the client has gone away; there is nobody left to tell,
        // and panicking would make the host discard a healthy instance.
        if let Ok(mut stream) = body.write() {
            let _ = stream.write_all(reply.body.as_bytes());
            let _ = stream.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
