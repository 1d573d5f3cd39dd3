//! The Fibonacci API as a `wasi:http/service` component (WASI 0.3, `wasi:http/handler@0.3`).
//!
//! The same API as `guests/fib`, byte for byte: all of the API's behaviour lives in the shared
//! `fibonacci` crate, and this file only moves a `wasi:http` request in and a
//! [`fibonacci::Reply`] out, with the same status, headers and body as the WASI 0.2 guest.
//! What differs is the ABI: `handle` is an `async` export that returns the response (headers
//! and a body stream) and keeps writing the body after it has returned, so a host can run
//! other requests on the same instance while this one waits on the client.

use wasip3::exports::http::handler::Guest;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::{wit_future, wit_stream};

struct Fib;

wasip3::http::service::export!(Fib);

impl Guest for Fib {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let method = request.get_method();
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
        let path = request.get_path_with_query().unwrap_or_default();
        let reply = fibonacci::respond(method_name, &path);

        // As in `guests/fib`, the response is built with as few crossings of the component
        // boundary as the API allows: the fields in one `from-list`, the status only when it
        // is not the default 200, and the body as one stream write of the whole buffer (the
        // host takes what it can per read; `write_all` resumes where it stopped).
        let entries = reply.header_entries();
        // These names and values are valid, so `from-list` cannot fail; should a host refuse
        // them all the same, the error is the host's to report.
        let headers = Fields::from_list(&entries)
            .map_err(|e| ErrorCode::InternalError(Some(format!("headers refused: {e:?}"))))?;

        // No trailers: a writer dropped unwritten sends its default, `Ok(None)`.
        let (_, trailers) = wit_future::new(|| Ok(None));
        if matches!(method, Method::Head) {
            // HEAD: the headers of GET (Content-Length included) and no body stream at all,
            // the 0.3 counterpart of `guests/fib` never taking the body.
            let (response, _) = Response::new(headers, None, trailers);
            set_status(&response, reply.status);
            return Ok(response);
        }
        let (mut body, contents) = wit_stream::new();
        let (response, _) = Response::new(headers, Some(contents), trailers);
        set_status(&response, reply.status);
        // The stream is read only once the host has the response, that is after `handle`
        // returns; writing it here would wait forever. The spawned task runs on in this
        // export's task after the return. A write fails only when the client has gone away;
        // there is nobody left to tell, and panicking would make the host discard a healthy
        // instance, so what is left unwritten is dropped.
        wasip3::spawn_local(async move {
            let _unsent = body.write_all(reply.body.into_bytes()).await;
        });
        Ok(response)
    }
}

/// Sets the status code when it is not the default 200 (one boundary crossing saved).
fn set_status(response: &Response, status: u16) {
    if status != 200 {
        // Every status `fibonacci` returns is valid, so this cannot fail.
        let _ = response.set_status_code(status);
    }
}
