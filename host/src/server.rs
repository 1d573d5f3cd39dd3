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
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use std::net::SocketAddr;

use hyper_util::server::graceful::Watcher;

use crate::error::ServeError;
use crate::logging::{AccessEntry, AccessLog};
use crate::metrics::{InFlight, RouteMetrics};
use crate::pool::{JobTrace, PoolStats};
use crate::tls::Tls;
use crate::{App, Route};

/// The body of every response fibhost sends: a guest's streamed body or an error document.
pub type ResponseBody = UnsyncBoxBody<Bytes, BodyError>;

/// A response body that could not be completed (the guest failed mid-body, or its stream
/// broke). Hyper then aborts the response instead of ending it as if it were whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// Turns of this thread's scheduler a response head waits for its first body frame.
const FIRST_FRAME_TURNS: usize = 2;

/// Most concurrent HTTP/2 streams per connection: like a connection, each holds a queue slot.
const MAX_H2_STREAMS: u32 = 128;

/// Binds a listening socket, with SO_REUSEPORT when asked (several fibhost processes then
/// share the port; the kernel spreads connections among them).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let hint = || format!("cannot listen on `{addr}`; is it in use? pick another with --listen");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(hint)?;
    socket.listen(LISTEN_BACKLOG).with_context(hint)?;
    TcpListener::from_std(socket.into()).with_context(hint)
}

/// The kernel accept backlog: a burst like `ab -c 500` must not see refused connections.
const LISTEN_BACKLOG: i32 = 4096;

/// Accepts connections on `listener` and serves `app` until `shutdown` resolves, then drains:
/// connections already in the accept backlog are still served (one request each), keep-alive
/// connections are closed after their current request, and in-flight requests get up to
/// `app.shutdown_timeout` to finish.
///
/// Every event-loop thread of `app.shards` accepts on its own duplicate of `listener` and
/// serves the connections it accepted; this future only starts them, waits for `shutdown`
/// and bounds the drain.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Polled once before any thread accepts: that installs the signal handlers, so a SIGTERM
    // never meets the default action (instant death) while connections are being served.
    let mut shutdown = std::pin::pin!(shutdown);
    let signalled = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx)))
        .await
        .is_ready();
    let listener = listener.into_std()?;
    let connections = Arc::new(Semaphore::new(app.limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut shards = JoinSet::new();
    for handle in app.shards.handles() {
        let socket = listener
            .try_clone()
            .context("cannot share the listening socket with an event-loop thread")?;
        let shard = accept_loop(
            socket,
            app.clone(),
            tls.clone(),
            connections.clone(),
            stopped.clone(),
        );
        shards.spawn_on(shard, handle);
    }
    drop(listener);
    if !signalled {
        shutdown.await;
    }

    tracing::info!("shutting down: no longer accepting connections");
    app.draining.store(true, Ordering::Release);
    let _ = stop.send(true);
    let drained = async { while shards.join_next().await.is_some() {} };
    match tokio::time::timeout(app.shutdown_timeout, drained).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            timeout = ?app.shutdown_timeout,
            "shutdown timeout reached with requests still in flight; closing them"
        ),
    }
    // Stop waiting: connections still open past the timeout end with the process.
    drop(shards);
    app.close();
    Ok(())
}

/// One event-loop thread's share of [`serve`]: accepts until `stopped` turns true, then
/// serves its part of the accept backlog and waits for its connections to finish.
async fn accept_loop(
    socket: std::net::TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    connections: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "an event-loop thread cannot watch the listening socket");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(connection_builder(&app, true));
    let mut shutdown = std::pin::pin!(async move {
        // The guard is dropped at once: this future stays `Send`.
        let _ = stopped.wait_for(|stop| *stop).await;
    });
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
        let (app, builder, tls, watcher) = (
            app.clone(),
            builder.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            serve_connection(stream, peer, app, builder, tls, Some(watcher)).await;
            drop(permit);
        });
    }
    let mut backlog = serve_backlog(listener, &app, tls);
    tokio::join!(graceful.shutdown(), async {
        while backlog.join_next().await.is_some() {}
    });
}

/// Serves the connections that were already waiting in the kernel's accept backlog when the
/// shutdown began: their clients connected before we stopped, so they get an answer.
fn serve_backlog(listener: TcpListener, app: &Arc<App>, tls: Option<Arc<Tls>>) -> JoinSet<()> {
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
        let (app, builder, tls) = (app.clone(), builder.clone(), tls.clone());
        set.spawn(serve_connection(stream, peer, app, builder, tls, None));
    }
    set
}

/// Serves one connection, after the TLS handshake when HTTPS is on. `graceful` is the
/// drain watcher; backlog connections served during the drain have none.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<Arc<Tls>>,
    graceful: Option<Watcher>,
) {
    let result = match tls {
        None => {
            serve_io(
                TokioIo::new(stream),
                &builder,
                service(app, peer, Scheme::Http),
                graceful,
            )
            .await
        }
        Some(tls) => match tls.acceptor().accept(stream).await {
            Ok(stream) => {
                serve_io(
                    TokioIo::new(stream),
                    &builder,
                    service(app, peer, Scheme::Https),
                    graceful,
                )
                .await
            }
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                return;
            }
        },
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

async fn serve_io<I, S>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    graceful: Option<Watcher>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ResponseBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection(io, service);
    match graceful {
        Some(watcher) => watcher.watch(connection.into_owned()).await,
        None => connection.await,
    }
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
    peer: SocketAddr,
    scheme: Scheme,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request| {
        let (app, scheme) = (app.clone(), scheme.clone());
        async move { Ok(handle(app, request, peer, scheme).await) }
    })
}

/// Serves one request: route, limits, dispatch to a worker, metrics and access record.
async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    _peer: SocketAddr,
    scheme: Scheme,
) -> Response<ResponseBody> {
    let started = Instant::now();
    // Clones of the parsed method and URI share their bytes: no copy on the request path.
    let record = app.access_log.clone().map(|log| AccessRecord {
        log,
        method: request.method().clone(),
        uri: request.uri().clone(),
    });
    let route = app.route(request.uri().path());
    let metrics = route.map_or(&app.unrouted, |r| &r.metrics);
    let in_flight = metrics.in_flight();
    let (response, trace) = match dispatch(&app, route, request, scheme).await {
        Ok((response, trace)) => (
            response.map(|body| body.map_err(guest_body_error).boxed_unsync()),
            Some(trace),
        ),
        Err((error, trace)) => {
            if error.status().is_server_error() {
                let worker = trace
                    .as_ref()
                    .map_or(0, |t| t.worker.load(Ordering::Relaxed));
                tracing::warn!(error = %error, worker, "request failed");
            }
            let response = error.to_response::<Full<Bytes>>();
            (
                response.map(|b| b.map_err(|never| match never {}).boxed_unsync()),
                trace,
            )
        }
    };
    let (mut parts, mut body) = response.into_parts();
    // Take the first body frame along with the head when the guest has already written it, so
    // that hyper writes head and body in one syscall (one TCP segment, one wake-up of the
    // client) instead of two: measured as the largest per-request cost on loopback.
    let peeked = first_frame(&mut body).await;
    if app.draining.load(Ordering::Acquire) && parts.version < http::Version::HTTP_2 {
        parts.headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    let body = TracedBody {
        inner: body,
        peeked,
        trace,
        bytes: 0,
        status: parts.status.as_u16(),
        started,
        record,
        metrics: metrics.clone(),
        pool: route.map(|r| r.pool.stats().clone()),
        _in_flight: in_flight,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// The first frame of `body` if it is ready now or within [`FIRST_FRAME_TURNS`] turns of
/// the scheduler; `None` if the guest is still computing it (the head then goes out alone).
///
/// No timer: the worker runs the guest on this thread and usually writes the whole body in
/// the same turn that delivers the head, so the frame is almost always there on the first
/// poll; yielding lets a worker that is still running finish that turn.
async fn first_frame(body: &mut ResponseBody) -> Option<Option<Result<Frame<Bytes>, BodyError>>> {
    let mut frame = std::pin::pin!(body.frame());
    for turn in 0..FIRST_FRAME_TURNS {
        if turn > 0 {
            tokio::task::yield_now().await;
        }
        let polled = std::future::poll_fn(|cx| Poll::Ready(frame.as_mut().poll(cx))).await;
        if let Poll::Ready(frame) = polled {
            return Some(frame);
        }
    }
    None
}

type DispatchResult =
    Result<(crate::guest::GuestResponse, Arc<JobTrace>), (ServeError, Option<Arc<JobTrace>>)>;

async fn dispatch(
    app: &App,
    route: Option<&Route>,
    mut request: Request<Incoming>,
    scheme: Scheme,
) -> DispatchResult {
    let Some(route) = route else {
        return Err((ServeError::NoRoute(request.uri().path().to_string()), None));
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
    if route.strip_prefix {
        strip_prefix(&mut request, &route.prefix);
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
    route
        .pool
        .dispatch(request, scheme)
        .await
        .map_err(|(e, trace)| (e, Some(trace)))
}

/// Rewrites `/api/5?x` to `/5?x` for a route mounted on `/api` with `strip-prefix`.
fn strip_prefix<B>(request: &mut Request<B>, prefix: &str) {
    let prefix = prefix.trim_end_matches('/');
    let Some(pq) = request.uri().path_and_query() else {
        return;
    };
    let Some(rest) = pq.as_str().strip_prefix(prefix) else {
        return;
    };
    let rest = if rest.is_empty() || rest.starts_with('?') {
        format!("/{rest}")
    } else {
        rest.to_string()
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(pq) = rest.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

fn guest_body_error(e: wasmtime_wasi_http::Error) -> BodyError {
    BodyError(format!("guest response body failed: {e}"))
}

/// What the access log says about one request, completed when its body is done.
struct AccessRecord {
    log: AccessLog,
    method: http::Method,
    /// As sent (before any `strip-prefix`): the log shows what the client asked for.
    uri: http::Uri,
}

/// Wraps a response body to count its bytes, turn a body cut short by a failed guest into an
/// error (not a clean end), and write the access log line when the response is done.
struct TracedBody {
    inner: ResponseBody,
    /// What polling `inner` already gave (`Some(None)`: the end), sent before polling again.
    peeked: Option<Option<Result<Frame<Bytes>, BodyError>>>,
    trace: Option<Arc<JobTrace>>,
    bytes: u64,
    status: u16,
    started: Instant,
    record: Option<AccessRecord>,
    metrics: Arc<RouteMetrics>,
    /// The serving pool's counters, for the worker's `tx` bytes.
    pool: Option<Arc<PoolStats>>,
    _in_flight: InFlight,
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match self.peeked.take() {
            Some(frame) => Poll::Ready(frame),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        };
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
        self.peeked.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // hyper derives Content-Length from the hint when the head has none: the peeked
        // frame's bytes are still to come.
        let peeked = match &self.peeked {
            Some(Some(Ok(frame))) => frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + peeked);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + peeked);
        }
        hint
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        self.metrics.observe(self.status, self.started);
        let worker = self
            .trace
            .as_ref()
            .map_or(0, |t| t.worker.load(Ordering::Relaxed));
        if let Some(stats) = self
            .pool
            .as_ref()
            .and_then(|p| p.workers.get(worker.wrapping_sub(1)))
        {
            stats.tx_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        }
        if let Some(record) = &self.record {
            record.log.write(&AccessEntry {
                method: record.method.as_str(),
                path: record.uri.path_and_query().map_or("/", |p| p.as_str()),
                status: self.status,
                bytes: self.bytes,
                duration_us: self.started.elapsed().as_micros() as u64,
                worker,
            });
        }
    }
}
