//! The Fibonacci API as a `wasi:http/proxy` component.
//!
//! All of the API's behaviour lives in the shared `fibonacci` crate; this file only moves a
//! `wasi:http` request in and a [`fibonacci::Reply`] out, so the native baseline and this
//! guest answer byte for byte alike.

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

        // Every call into the host costs a crossing of the component boundary, so the
        // response is built with as few as the API allows: the fields in one `from-list`, the
        // status only when it is not the default 200, the body in one write-and-flush per
        // 4096-byte chunk.
        let entries = reply.header_entries();
        // These names and values are valid, so `from-list` cannot fail.
        let Ok(headers) = Fields::from_list(&entries) else {
            return;
        };
        let response = OutgoingResponse::new(headers);
        if reply.status != 200 {
            let _ = response.set_status_code(reply.status);
        }

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
        if let Ok(stream) = body.write() {
            for chunk in reply.body.as_bytes().chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
