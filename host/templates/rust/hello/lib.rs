//! {{name}}: a wasi:http guest for fibhost that greets every request.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

const GREETING: &[u8] = b"Hello from Rust!\n";

struct Handler;

wasip2::http::proxy::export!(Handler);

impl Guest for Handler {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("content-length".to_string(), GREETING.len().to_string().into_bytes()),
        ])
        .expect("valid header names and values");
        let response = OutgoingResponse::new(headers);
        if matches!(request.method(), Method::Head) {
            // HEAD: the headers only. Taking the body and writing nothing would contradict
            // the content-length.
            ResponseOutparam::set(response_out, Ok(response));
            return;
        }
        let body = response.body().expect("a new response's body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let stream = body.write().expect("a body's stream is taken once");
        // Fails only when the client has gone away: nobody is left to tell.
        let _ = stream.blocking_write_and_flush(GREETING);
        drop(stream); // the stream must go before the body is finished
        let _ = OutgoingBody::finish(body, None);
    }
}
