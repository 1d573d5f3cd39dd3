//! The native baseline: the Fibonacci API served by plain hyper 1 + tokio, with no wasm.
//!
//! It answers with [`fibonacci::respond`], the same function the `guests/fib` component calls,
//! and sends the same headers, so a benchmark of fibhost against this server measures what
//! the wasm host costs and nothing else. It is the ceiling a wasm host can approach; keep it
//! free of work fibhost does not also do (no logging, no routing beyond the API).
//!
//! # Layout
//! - [`serve`]: the accept loop, one task per connection, HTTP/1.1 with keep-alive.
//! - [`respond`]: one request's method and target to a complete response.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Time a client gets to send a complete request head; the same bound as fibhost's default
/// `--header-read-timeout`, so both servers treat slow clients alike.
const HEADER_READ_TIMEOUT_SECS: u64 = 10;

/// Accepts connections on `listener` until `shutdown` resolves, then returns. Connections
/// still open are dropped with the runtime: a benchmark baseline needs no graceful drain.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(HEADER_READ_TIMEOUT_SECS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                // Transient (EMFILE, ECONNABORTED…): pause instead of spinning on the error,
                // and keep serving the connections already open.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Responses are written in one piece; Nagle would only delay them (fibhost does the same).
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(|request: http::Request<hyper::body::Incoming>| {
                let response = respond(request.method(), request.uri());
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        tokio::spawn(async move {
            // A connection error is the client's business (a reset, a timeout); there is
            // nobody to report it to, and logging it would add work fibhost does not do.
            let _ = connection.await;
        });
    }
}

/// The response to one request of the API: status, `content-type`, `content-length`, `allow`
/// on 405, and the body except for `HEAD` (which keeps the `content-length` `GET` would send).
pub fn respond(method: &Method, uri: &Uri) -> Response<Full<Bytes>> {
    let target = uri.path_and_query().map_or("/", |target| target.as_str());
    let reply = fibonacci::respond(method.as_str(), target);
    let length = reply.body.len();
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(reply.body)
    };
    let mut response = Response::new(Full::new(body));
    // The API only produces 200, 400, 404 and 405; a bad code would be a bug worth a 500,
    // not a panic on the request path.
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fibonacci::CONTENT_TYPE),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if reply.allow {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_static(fibonacci::ALLOWED_METHODS),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What the shared crate (and so the guest) answers to `GET /9000`.
    fn expected_9000() -> String {
        fibonacci::respond("GET", "/9000").body
    }

    async fn body_of(response: Response<Full<Bytes>>) -> Bytes {
        response
            .into_body()
            .collect()
            .await
            .expect("a full body cannot fail")
            .to_bytes()
    }

    #[tokio::test]
    async fn get_has_the_guests_headers_and_body() {
        let response = respond(&Method::GET, &Uri::from_static("/9000?x=1"));
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let expected = expected_9000();
        let length = expected.len().to_string();
        assert_eq!(response.headers()[header::CONTENT_LENGTH], length.as_str());
        assert!(!response.headers().contains_key(header::ALLOW));
        assert_eq!(body_of(response).await, expected);
    }

    #[tokio::test]
    async fn head_keeps_the_length_and_drops_the_body() {
        let response = respond(&Method::HEAD, &Uri::from_static("/9000"));
        let length = expected_9000().len().to_string();
        assert_eq!(response.headers()[header::CONTENT_LENGTH], length.as_str());
        assert!(body_of(response).await.is_empty());
    }

    #[test]
    fn other_methods_get_405_with_allow() {
        let response = respond(&Method::POST, &Uri::from_static("/5"));
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }

    /// Two requests on one connection over a real socket on port 0: keep-alive works and HEAD
    /// sends headers only (the second response would be garbled otherwise).
    #[tokio::test]
    async fn serves_keep_alive_on_port_zero() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(
                b"HEAD /9000 HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        let responses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(responses.len(), 2, "{text}");
        assert!(
            responses[0].starts_with("200 OK")
                && responses[0].contains(&format!("content-length: {}", expected_9000().len()))
        );
        assert!(
            responses[0].ends_with("\r\n\r\n"),
            "HEAD sent a body: {text}"
        );
        assert!(responses[1].ends_with("\r\n\r\n[0, 1, 1, 2, 3]"), "{text}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
