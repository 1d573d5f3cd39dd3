//! The public HTTP listener: accepting connections, routing each request to a component's
//! pool, the access log, and the graceful drain.
//!
//! The core is [`serve`]: it takes an already bound listener and a shutdown future, so tests
//! run it in-process on port 0 and the binary decides how to bind.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::App;
use crate::error::ServeError;
use crate::pool::JobTrace;

/// The body of every response fibhost sends: a guest's streamed body or an error document.
pub type ResponseBody = UnsyncBoxBody<Bytes, BodyError>;

/// A response body that could not be completed (the guest failed mid-body, or its stream
/// broke). Hyper then aborts the response instead of ending it as if it were whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// Most concurrent HTTP/2 streams per connection: like a connection, each holds a queue slot.
const MAX_H2_STREAMS: u32 = 128;

/// Accepts connections on `listener` and serves `app` until `shutdown` resolves, then drains:
/// connections already in the accept backlog are still served (one request each), keep-alive
/// connections are closed after their current request, and in-flight requests get up to
/// `app.shutdown_timeout` to finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let connections = Arc::new(Semaphore::new(app.limits.max_connections));
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(connection_builder(&app, true));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = 0u32;
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_errors = 0;
                    accepted
                }
                Err(e) => {
                    // Transient (EMFILE, ECONNABORTED…): back off instead of spinning, and
                    // never let one bad accept take the server down.
                    accept_errors = (accept_errors + 1).min(10);
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(5 << accept_errors)).await;
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let connection = builder
            .serve_connection(TokioIo::new(stream), service(app, peer))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }

    tracing::info!("shutting down: no longer accepting connections");
    app.draining.store(true, Ordering::Release);
    let backlog = serve_backlog(listener, &app);
    let drained = async {
        tokio::join!(graceful.shutdown(), async {
            let mut backlog = backlog;
            while backlog.join_next().await.is_some() {}
        });
    };
    match tokio::time::timeout(app.shutdown_timeout, drained).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            timeout = ?app.shutdown_timeout,
            "shutdown timeout reached with requests still in flight; closing them"
        ),
    }
    app.close();
    Ok(())
}

/// Serves the connections that were already waiting in the kernel's accept backlog when the
/// shutdown began: their clients connected before we stopped, so they get an answer.
fn serve_backlog(listener: TcpListener, app: &Arc<App>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let Ok(std_listener) = listener.into_std() else {
        return set;
    };
    let _ = std_listener.set_nonblocking(true);
    // One request each, then close: these clients must not keep the drain open.
    let builder = Arc::new(connection_builder(app, false));
    while let Ok((stream, peer)) = std_listener.accept() {
        let Ok(stream) = TcpStream::from_std(stream) else {
            continue;
        };
        let app = app.clone();
        let builder = builder.clone();
        set.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service(app, peer));
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "backlog connection ended with an error");
            }
        });
    }
    set
}

fn connection_builder(app: &App, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(keep_alive)
        // Without a timer hyper silently ignores the header-read timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(app.limits.header_read_timeout)
        .max_buf_size(app.limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(app.limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

fn service(
    app: Arc<App>,
    peer: std::net::SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request| {
        let app = app.clone();
        async move { Ok(handle(app, request, peer).await) }
    })
}

/// Serves one request: route, limits, dispatch to a worker, access record.
async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    _peer: std::net::SocketAddr,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let record = app.access_log.then(|| AccessRecord {
        method: request.method().to_string(),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".into(), |p| p.to_string()),
        status: 0,
        started,
    });
    let (response, trace) = match dispatch(&app, request).await {
        Ok((response, trace)) => (
            response.map(|body| body.map_err(guest_body_error).boxed_unsync()),
            Some(trace),
        ),
        Err((error, trace)) => {
            if error.status().is_server_error() {
                tracing::warn!(error = %error, worker = trace.as_ref().map_or(0, |t| t.worker.load(Ordering::Relaxed)), "request failed");
            }
            let response = error.to_response::<Full<Bytes>>();
            (
                response.map(|b| b.map_err(|never| match never {}).boxed_unsync()),
                trace,
            )
        }
    };
    let (mut parts, body) = response.into_parts();
    if app.draining.load(Ordering::Acquire) {
        parts.headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    let body = TracedBody {
        inner: body,
        trace,
        bytes: 0,
        record: record.map(|r| AccessRecord {
            status: parts.status.as_u16(),
            ..r
        }),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

type DispatchResult =
    Result<(crate::guest::GuestResponse, Arc<JobTrace>), (ServeError, Option<Arc<JobTrace>>)>;

async fn dispatch(app: &App, request: Request<Incoming>) -> DispatchResult {
    let path = request.uri().path();
    let Some(pool) = app.route(path) else {
        return Err((ServeError::NoRoute(path.to_string()), None));
    };
    let limit = app.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&d| d > limit) {
        return Err((ServeError::BodyTooLarge { declared, limit }, None));
    }
    // A chunked body has no declared size: cap it as it streams.
    let request = request.map(|body| {
        Limited::new(body, limit as usize)
            .map_err(move |e| match e.downcast::<hyper::Error>() {
                Ok(e) => wasmtime_wasi_http::Error::Hyper(*e),
                Err(_) => wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit)),
            })
            .boxed_unsync()
    });
    pool.dispatch(request, Scheme::Http)
        .await
        .map_err(|(e, trace)| (e, Some(trace)))
}

fn guest_body_error(e: wasmtime_wasi_http::Error) -> BodyError {
    BodyError(format!("guest response body failed: {e}"))
}

/// What the access log says about one request, completed when its body is done.
struct AccessRecord {
    method: String,
    target: String,
    status: u16,
    started: Instant,
}

/// Wraps a response body to count its bytes, turn a body cut short by a failed guest into an
/// error (not a clean end), and write the access log line when the response is done.
struct TracedBody {
    inner: ResponseBody,
    trace: Option<Arc<JobTrace>>,
    bytes: u64,
    record: Option<AccessRecord>,
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None)
                if self
                    .trace
                    .as_ref()
                    .is_some_and(|t| t.failed.load(Ordering::Acquire)) =>
            {
                return Poll::Ready(Some(Err(BodyError(
                    "the guest failed before finishing the response body".into(),
                ))));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        if let Some(record) = &self.record {
            let worker = self
                .trace
                .as_ref()
                .map_or(0, |t| t.worker.load(Ordering::Relaxed));
            tracing::info!(
                target: "fibhost::access",
                method = %record.method,
                path = %record.target,
                status = record.status,
                bytes = self.bytes,
                duration_us = record.started.elapsed().as_micros() as u64,
                worker,
            );
        }
    }
}
