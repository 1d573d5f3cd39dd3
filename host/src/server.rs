//! The public HTTP listener: accepting connections, bounding them (connections, silent and
//! idle clients, clients that stop reading), routing each request to a component's pool, the
//! access log, and the graceful drain.
//!
//! The core is [`serve`]: it takes an already bound listener and a shutdown future, so the
//! binary decides how to bind and `fibhost::run` can be driven in-process by tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Buf as _, Bytes};
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperIncomingBody;

use crate::config::HttpLimits;
use crate::error::{BodyError, ServeError};
use crate::logging::{AccessEntry, AccessLog};
use crate::metrics::RouteMetrics;
use crate::pool::{Completion, PoolBody};
use crate::request_id::{self, RequestId, RequestIds};
use crate::routes::{Route, Router};
use crate::shards::Shards;
use crate::tls::Tls;

/// Turns of this thread's scheduler a response head waits for its first body frame.
const FIRST_FRAME_TURNS: usize = 2;

/// Most concurrent HTTP/2 streams per connection: like a connection, each holds a queue slot.
const MAX_H2_STREAMS: u32 = 128;

/// The kernel accept backlog: a burst like `ab -c 500` must not see refused connections.
const LISTEN_BACKLOG: i32 = 4096;

/// The request header that tells a guest the prefix `strip-prefix` removed (WSGI's
/// SCRIPT_NAME). fibhost sets it; a client's own is dropped.
pub const SCRIPT_NAME_HEADER: &str = "fibhost-script-name";

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The watchdog state of a connection that has none (a uwsgi connection: one request, then
/// closed).
pub(crate) fn untracked() -> Arc<Activity> {
    Arc::new(Activity::default())
}

/// Whether the server is draining: set once shutdown begins; readiness then turns 503 and
/// HTTP/1 responses carry `Connection: close`.
#[derive(Clone, Debug, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn begin(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What the public listener needs: the routes, the limits on clients, the access log.
pub struct Ctx {
    router: Arc<Router>,
    limits: HttpLimits,
    access_log: Option<AccessLog>,
    draining: Draining,
    ids: RequestIds,
    tls: Option<Arc<Tls>>,
    shutdown_timeout: Duration,
}

impl Ctx {
    /// The listener's context: `access_log` is `None` with `disable-logging`; `tls` serves
    /// HTTPS; `shutdown_timeout` bounds the drain.
    pub fn new(
        router: Arc<Router>,
        limits: HttpLimits,
        access_log: Option<AccessLog>,
        draining: Draining,
        tls: Option<Arc<Tls>>,
        shutdown_timeout: Duration,
    ) -> Ctx {
        Ctx {
            router,
            limits,
            access_log,
            draining,
            ids: RequestIds::default(),
            tls,
            shutdown_timeout,
        }
    }
}

impl Ctx {
    /// A copy of the context for event-loop thread `thread`, with request ids of its own.
    ///
    /// Each request takes a reference to the context and numbers itself: on one context
    /// shared by every thread, its reference count and the id counter were cache lines the
    /// cores passed back and forth on every request.
    fn for_thread(&self, thread: usize) -> Ctx {
        Ctx {
            router: self.router.clone(),
            limits: self.limits.clone(),
            access_log: self.access_log.clone(),
            draining: self.draining.clone(),
            ids: self.ids.for_thread(thread),
            tls: self.tls.clone(),
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    /// The limits on clients (the uwsgi listener applies them too).
    pub(crate) fn limits(&self) -> &HttpLimits {
        &self.limits
    }
}

/// Binds a listening socket, with SO_REUSEPORT when asked (several fibhost processes then
/// share the port; the kernel spreads connections among them). `flag` names the option that
/// sets this address, for the hint.
pub fn bind(addr: SocketAddr, reuse_port: bool, flag: &str) -> anyhow::Result<TcpListener> {
    let hint = || format!("cannot listen on `{addr}`; is it in use? pick another with --{flag}");
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

/// Accepts the next connection. Transient errors (EMFILE, ECONNABORTED…) back off instead of
/// spinning, and never end the loop; `errors` counts consecutive failures.
pub async fn accept(listener: &TcpListener, errors: &mut u32) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                *errors = 0;
                return accepted;
            }
            Err(e) => {
                *errors = (*errors + 1).min(10);
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(5 << *errors)).await;
            }
        }
    }
}

/// Accepts connections on `listener` and serves them until `shutdown` resolves, then drains:
/// connections already in the accept backlog are still served (one request each), keep-alive
/// connections are closed after their current request, and in-flight requests get up to the
/// shutdown timeout to finish.
///
/// Every event-loop thread of `shards` accepts on its own duplicate of `listener` and serves
/// the connections it accepted; this future only starts them, waits for `shutdown` and
/// bounds the drain.
pub async fn serve(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    shards: &Shards,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Polled once before any thread accepts: that installs the signal handlers, so a SIGTERM
    // never meets the default action (instant death) while connections are being served.
    let mut shutdown = std::pin::pin!(shutdown);
    let signalled = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx)))
        .await
        .is_ready();
    let listener = listener.into_std()?;
    let connections = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut threads = JoinSet::new();
    for (index, handle) in shards.handles().iter().enumerate() {
        let socket = listener
            .try_clone()
            .context("cannot share the listening socket with an event-loop thread")?;
        let own = Arc::new(ctx.for_thread(index));
        let thread = accept_loop(socket, own, connections.clone(), stopped.clone());
        threads.spawn_on(thread, handle);
    }
    drop(listener);
    if !signalled {
        shutdown.await;
    }

    tracing::info!("shutting down: no longer accepting connections");
    ctx.draining.begin();
    let _ = stop.send(true);
    let drained = async { while threads.join_next().await.is_some() {} };
    match tokio::time::timeout(ctx.shutdown_timeout, drained).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            timeout = ?ctx.shutdown_timeout,
            "shutdown timeout reached with requests still in flight; closing them"
        ),
    }
    // Stop waiting: connections still open past the timeout end with the process. The pools
    // are closed by the caller, once every listener has drained.
    drop(threads);
    Ok(())
}

/// The two connection builders: detection picks one (HTTP/1.1 or HTTP/2 prior knowledge).
struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

/// One event-loop thread's share of [`serve`]: accepts until `stopped` turns true, then
/// serves its part of the accept backlog and waits for its connections to finish.
async fn accept_loop(
    socket: std::net::TcpListener,
    ctx: Arc<Ctx>,
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
    let builders = Arc::new(builders(&ctx.limits, true));
    let mut tasks = JoinSet::new();
    let mut errors = 0;
    loop {
        let permit = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            permit = connections.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let (stream, peer) = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            accepted = accept(&listener, &mut errors) => accepted,
        };
        let (ctx, builders, drain) = (ctx.clone(), builders.clone(), stopped.clone());
        tasks.spawn(async move {
            serve_connection(stream, peer, ctx, builders, drain).await;
            drop(permit);
        });
        // Reap finished connections so the set does not grow with every client served.
        while tasks.try_join_next().is_some() {}
    }
    serve_backlog(listener, &ctx, &connections, &mut tasks);
    while tasks.join_next().await.is_some() {}
}

/// Serves the connections that were already waiting in the kernel's accept backlog when the
/// shutdown began: their clients connected before we stopped, so they get an answer. They
/// count against `max-connections` like any other.
fn serve_backlog(
    listener: TcpListener,
    ctx: &Arc<Ctx>,
    connections: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) {
    let Ok(std_listener) = listener.into_std() else {
        return;
    };
    let _ = std_listener.set_nonblocking(true);
    // One request each, then close: these clients must not keep the drain open.
    let builders = Arc::new(builders(&ctx.limits, false));
    // Never set: keep-alive is off, so each connection closes after its one response. A drain
    // signal would close a connection whose request hyper has not read yet, unanswered; the
    // sender lives as long as the connections (a dropped sender reads as a signal).
    let (not_draining, drained) = watch::channel(false);
    let not_draining = Arc::new(not_draining);
    while let Ok(permit) = connections.clone().try_acquire_owned()
        && let Ok((stream, peer)) = std_listener.accept()
    {
        // An accepted socket does not inherit the listener's O_NONBLOCK, and tokio refuses
        // (panics on) a blocking one.
        let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        else {
            continue;
        };
        let (ctx, builders, drain) = (ctx.clone(), builders.clone(), drained.clone());
        let not_draining = not_draining.clone();
        tasks.spawn(async move {
            serve_connection(stream, peer, ctx, builders, drain).await;
            drop((permit, not_draining));
        });
    }
}

fn builders(limits: &HttpLimits, keep_alive: bool) -> Builders {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(keep_alive)
        // Without a timer hyper silently ignores the header-read timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Builders {
        h1: builder.clone().http1_only(),
        h2: builder.http2_only(),
    }
}

/// Serves one connection: the TLS handshake when HTTPS is on and the protocol detection, both
/// within the header-read timeout (a client that sends nothing is closed, not kept); then the
/// connection under its watchdog.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    builders: Arc<Builders>,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limit = ctx.limits.header_read_timeout;
    // The socket's descriptor, to look for bytes the kernel holds but the runtime has not
    // reported yet (see `serve_stream`'s drain). Not a duplicate: a dup and its close were two
    // of the eleven system calls of a one-request connection.
    let probe = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let result = match ctx.tls.clone() {
        None => serve_stream(stream, peer, &ctx, &builders, Scheme::Http, drain, probe).await,
        Some(tls) => match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => {
                let scheme = Scheme::Https;
                // Boxed, like hyper's connection below: spawning copies the whole future.
                Box::pin(serve_stream(
                    stream, peer, &ctx, &builders, scheme, drain, probe,
                ))
                .await
            }
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err("no TLS handshake within the header-read timeout".into()),
        },
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

async fn serve_stream<S>(
    mut stream: S,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    builders: &Builders,
    scheme: Scheme,
    mut drain: watch::Receiver<bool>,
    probe: std::os::fd::RawFd,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = ctx.limits.header_read_timeout;
    let (first, is_h2) = match tokio::time::timeout(limit, detect(&mut stream)).await {
        Ok(Ok(Some(detected))) => detected,
        Ok(Ok(None)) => return Ok(()), // Closed before sending anything.
        Ok(Err(e)) => return Err(format!("read failed: {e}")),
        Err(_) => return Err("no request within the header-read timeout".into()),
    };
    let activity = Arc::new(Activity::default());
    let service = service(ctx.clone(), peer, scheme, activity.clone());
    let io = TokioIo::new(Prefixed {
        first,
        inner: stream,
    });
    let builder = if is_h2 { &builders.h2 } else { &builders.h1 };
    // On the heap, not in the connection task's future: spawning a task copies its future,
    // and hyper's connection made it 7,280 bytes (2,896 with it and the TLS path boxed). Under
    // `ab` (a task per request) those copies were 7.7% of the CPU profile (`memmove`), 5.4%
    // after; `ab -c500 -n40000` A/B: 5 of 7 pairs in favour, medians +5% in the last 4.
    let mut connection = Box::pin(builder.serve_connection(io, service));
    let limits = &ctx.limits;
    let mut closing_since: Option<Instant> = None;
    let mut drain_seen = false;
    loop {
        // Looked at again within `send-timeout` whatever the state: a request that starts (or
        // stalls) on an idle connection changes the deadline without waking the watchdog.
        let deadline =
            (activity.deadline(limits, closing_since)).min(Instant::now() + limits.send_timeout);
        tokio::select! {
            // The connection first: a request whose bytes have arrived is read before a drain
            // signal closes the connection, so hyper answers it instead of closing unanswered.
            biased;
            result = connection.as_mut() => return result.map_err(|e| e.to_string()),
            _ = drain.wait_for(|stop| *stop), if !drain_seen => {
                drain_seen = true;
                // An idle HTTP/1 connection whose client already sent its next request (the
                // bytes are in the kernel, not yet reported to the runtime) is not closed: the
                // request is served, its response says `Connection: close`, and hyper closes
                // the connection after it.
                let sent = !is_h2
                    && activity.in_flight.load(Ordering::Relaxed) == 0
                    && has_unread_bytes(probe);
                if !sent {
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                match activity.verdict(limits, closing_since, Instant::now()) {
                    Verdict::Fine => {}
                    Verdict::Idle => {
                        connection.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                    Verdict::Stalled => {
                        tracing::info!(peer = %peer, timeout = ?limits.send_timeout, "closing a connection whose client stopped reading");
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Whether the kernel holds bytes the client sent that nobody has read yet, on the socket
/// `fd` of a connection that is still being served.
fn has_unread_bytes(fd: std::os::fd::RawFd) -> bool {
    #[expect(unsafe_code, reason = "see the SAFETY comment")]
    // SAFETY: called only from `serve_stream`'s loop, while the connection future that owns
    // the socket is alive: the descriptor is open and still this connection's.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is O_NONBLOCK: no data is `WouldBlock`, not a wait.
    matches!(socket2::SockRef::from(&socket).peek(&mut byte), Ok(n) if n > 0)
}

/// Reads the first bytes of a connection to tell HTTP/2 prior knowledge (the preface) from
/// HTTP/1.1: returns what was read (to be replayed) and whether it is HTTP/2. `None` if the
/// client closed without a byte.
async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<(Bytes, bool)>> {
    // Room for a whole typical request head: what this read takes, hyper does not read again
    // (one `recvfrom` per one-request connection instead of two).
    let mut buf = bytes::BytesMut::with_capacity(DETECT_BYTES);
    while buf.len() < H2_PREFACE.len() {
        let before = buf.len();
        if stream.read_buf(&mut buf).await? == 0 {
            if before == 0 {
                return Ok(None);
            }
            break;
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            break;
        }
    }
    let is_h2 = buf.starts_with(H2_PREFACE);
    Ok(Some((buf.freeze(), is_h2)))
}

/// What the protocol detection reads at most: the first read of a connection.
const DETECT_BYTES: usize = 2048;

/// A stream whose first bytes were already read (for protocol detection): replays them, then
/// reads on.
struct Prefixed<S> {
    first: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What one connection is doing, for its watchdog: responses in flight, how many of them wait
/// on their guest (not on the client), and when anything last moved.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    waiting_on_guest: AtomicUsize,
    /// Milliseconds after `opened` of the last progress (a request, a body frame, an end).
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            waiting_on_guest: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }
}

/// What the watchdog does about a connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing.
    Fine,
    /// No request for `keep-alive-timeout`: close it gracefully.
    Idle,
    /// A response waited on the client for `send-timeout` (or a graceful close did not end):
    /// drop it.
    Stalled,
}

impl Activity {
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When the watchdog should look again.
    fn deadline(&self, limits: &HttpLimits, closing_since: Option<Instant>) -> Instant {
        if let Some(since) = closing_since {
            return since + limits.send_timeout;
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let waiting = self.waiting_on_guest.load(Ordering::Relaxed);
        match in_flight {
            0 => self.last() + limits.keep_alive_timeout,
            // Every response waits on its guest: the request timeout governs; look again later.
            n if n <= waiting => Instant::now() + limits.send_timeout,
            _ => self.last() + limits.send_timeout,
        }
    }

    /// The watchdog's decision at `now`: a pure function of the counters and the limits.
    fn verdict(
        &self,
        limits: &HttpLimits,
        closing_since: Option<Instant>,
        now: Instant,
    ) -> Verdict {
        if let Some(since) = closing_since {
            return if now >= since + limits.send_timeout {
                Verdict::Stalled
            } else {
                Verdict::Fine
            };
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let waiting = self.waiting_on_guest.load(Ordering::Relaxed);
        let quiet = now.saturating_duration_since(self.last());
        match in_flight {
            0 if quiet >= limits.keep_alive_timeout => Verdict::Idle,
            n if n > waiting && quiet >= limits.send_timeout => Verdict::Stalled,
            _ => Verdict::Fine,
        }
    }
}

fn service(
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    scheme: Scheme,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ServerBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ServerBody>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request| {
        let (ctx, scheme, activity) = (ctx.clone(), scheme.clone(), activity.clone());
        async move { Ok(handle(ctx, request, peer, scheme, activity).await) }
    })
}

/// Serves one request: route, limits, dispatch to a worker, metrics and access record. Any
/// request body will do (hyper's, or one read from a uwsgi packet).
pub(crate) async fn handle<B>(
    ctx: Arc<Ctx>,
    request: Request<B>,
    peer: SocketAddr,
    scheme: Scheme,
    activity: Arc<Activity>,
) -> Response<ServerBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let counted = Counted::start(ctx, request.uri().path());
    let ctx = &counted.ctx;
    let mut progress = Progress::start(activity);
    let id = ctx.ids.assign(request.headers().get(request_id::HEADER));
    // Clones of the parsed method and URI share their bytes: no copy on the request path.
    let record = ctx.access_log.is_some().then(|| AccessRecord {
        method: request.method().clone(),
        uri: request.uri().clone(),
        peer,
        id: id.clone(),
    });
    let inner = match dispatch(ctx, counted.route(), request, scheme, id).await {
        Ok(response) => response.map(Inner::Guest),
        Err(error) => error.to_response().map(|body| {
            let bytes = body.size_hint().exact().unwrap_or(0);
            Inner::Host(body, bytes)
        }),
    };
    let (mut parts, mut body) = inner.into_parts();
    // Take the first body frame along with the head when the guest has already written it, so
    // that hyper writes head and body in one syscall (one TCP segment, one wake-up of the
    // client) instead of two: measured as the largest per-request cost on loopback.
    let peeked = first_frame(&mut body).await;
    // A guest body with more to come is pumped into a bounded buffer by a task of its own:
    // the guest can then finish writing (and its worker serve someone else) while a slow
    // client is still reading. A body already complete needs no task.
    let (complete, body) = match (&peeked, body) {
        (Some(None), body) => (true, body),
        (Some(Some(Ok(_))) | None, Inner::Guest(mut guest)) => match poll_now(&mut guest) {
            Poll::Ready(None) => (true, Inner::Guest(guest)),
            Poll::Ready(Some(next)) => (false, pump(guest, Some(next), ctx.limits.response_buffer)),
            Poll::Pending => (false, pump(guest, None, ctx.limits.response_buffer)),
        },
        (_, body) => (false, body),
    };
    if ctx.draining.is_draining() && parts.version < http::Version::HTTP_2 {
        (parts.headers).insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    progress.handed(peeked.is_some());
    let body = ServerBody {
        inner: body,
        peeked,
        complete,
        status: parts.status.as_u16(),
        record,
        progress,
        counted,
    };
    Response::from_parts(parts, body)
}

/// Polls `body` once, without waiting.
fn poll_now(body: &mut PoolBody) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    let waker = std::task::Waker::noop();
    Pin::new(body).poll_frame(&mut Context::from_waker(waker))
}

/// Moves `body` (after `next`, already taken from it) into a buffer of at most `budget` bytes
/// by a task of its own, and returns the buffer's reading end. The task ends when the body
/// ends, fails, or the reading end is dropped (the client left: the guest's next write fails).
fn pump(
    mut body: PoolBody,
    mut next: Option<Result<Frame<Bytes>, BodyError>>,
    budget: usize,
) -> Inner {
    let (worker, completion) = (body.worker(), body.completion());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let bytes = Arc::new(Semaphore::new(budget));
    let limit = u32::try_from(budget).unwrap_or(u32::MAX);
    let room = bytes.clone();
    tokio::spawn(async move {
        // Ends when the body does, or as soon as the reader is gone (the client left or was
        // cut off): dropping the body then makes the guest's next write fail.
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    frame = body.frame() => match frame {
                        Some(frame) => frame,
                        None => break,
                    },
                    () = tx.closed() => break,
                },
            };
            let size = frame
                .as_ref()
                .ok()
                .and_then(Frame::data_ref)
                .map_or(0, |d| d.len());
            let want = u32::try_from(size).unwrap_or(u32::MAX).min(limit);
            let permit = tokio::select! {
                permit = room.clone().acquire_many_owned(want) => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = tx.closed() => break,
            };
            if tx.send((frame, permit)).is_err() {
                break;
            }
        }
    });
    Inner::Buffered(Buffered {
        rx,
        worker,
        bytes: 0,
        _completion: completion,
    })
}

/// The reading end of [`pump`]: frames in order, each freeing its share of the buffer as it
/// is taken.
struct Buffered {
    rx: tokio::sync::mpsc::UnboundedReceiver<(
        Result<Frame<Bytes>, BodyError>,
        tokio::sync::OwnedSemaphorePermit,
    )>,
    worker: usize,
    bytes: u64,
    /// Dropped with the buffer: the response is complete for the client (or abandoned), so
    /// the request's admission slot goes back even if the guest is still finishing.
    _completion: Completion,
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((frame, _room))) => {
                if let Ok(data) = frame.as_ref().map(Frame::data_ref) {
                    self.bytes += data.map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The first frame of `body` if it is ready now or within [`FIRST_FRAME_TURNS`] turns of
/// the scheduler; `None` if the guest is still computing it (the head then goes out alone).
///
/// No timer: the worker runs the guest on this thread and usually writes the whole body in
/// the same turn that delivers the head, so the frame is almost always there on the first
/// poll; yielding lets a worker that is still running finish that turn.
async fn first_frame(body: &mut Inner) -> Option<Option<Result<Frame<Bytes>, BodyError>>> {
    let mut body = Pin::new(body);
    for turn in 0..FIRST_FRAME_TURNS {
        if turn > 0 {
            tokio::task::yield_now().await;
        }
        let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        if let Poll::Ready(frame) = polled {
            return Some(frame);
        }
    }
    None
}

async fn dispatch<B>(
    ctx: &Ctx,
    route: Option<&Route>,
    mut request: Request<B>,
    scheme: Scheme,
    id: RequestId,
) -> Result<Response<PoolBody>, ServeError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(route) = route else {
        return Err(ServeError::NoRoute(request.uri().path().to_string()));
    };
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        // RFC 9112 §3.2: a request with more than one Host header is invalid.
        return Err(ServeError::BadRequest("more than one `Host` header".into()));
    }
    let limit = ctx.limits.max_body_bytes;
    if let Some(declared) = declared_length(request.headers())?.filter(|&d| d > limit) {
        return Err(ServeError::BodyTooLarge { declared, limit });
    }
    // The prefix a stripped route hides, for the guest's own use (a WSGI bridge's
    // SCRIPT_NAME): set only by fibhost, never taken from the client.
    if request.headers().contains_key(SCRIPT_NAME_HEADER) {
        request.headers_mut().remove(SCRIPT_NAME_HEADER);
    }
    if route.config.strip_prefix {
        strip_prefix(&mut request, &route.config.prefix);
        let prefix = route.config.prefix.trim_end_matches('/');
        if let Ok(value) = HeaderValue::from_str(prefix)
            && !prefix.is_empty()
        {
            request.headers_mut().insert(SCRIPT_NAME_HEADER, value);
        }
    }
    // A chunked body has no declared size: cap it as it streams.
    let request = request.map(|body| {
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .map_err(move |e| match e.downcast::<hyper::Error>() {
                Ok(e) => wasmtime_wasi_http::Error::Hyper(*e),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
                }
                // The client's stream broke (a uwsgi body shorter than it declared).
                Err(_) => wasmtime_wasi_http::Error::ConnectionTerminated,
            })
            .boxed_unsync()
    });
    let request = request.map(|body| match body.is_end_stream() {
        true => body,
        false => Lingering(Some(body)).boxed_unsync(),
    });
    route.pool.dispatch(request, scheme, id).await
}

/// A request body that, dropped before its end, is read to its end in the background (as
/// nginx's lingering close does): a guest may answer without reading an upload, and closing
/// the connection while the client still sends turns the answer it was given into a broken
/// pipe on the client's side. Read to the end, the connection even serves its next request.
/// Bounded by `max-body-size` (the body is [`Limited`]) and by [`LINGER`].
struct Lingering(Option<HyperIncomingBody>);

/// The longest a dropped request body is read on.
const LINGER: Duration = Duration::from_secs(30);

impl Body for Lingering {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let read_to_end = async { while let Some(Ok(_)) = body.frame().await {} };
                let _ = tokio::time::timeout(LINGER, read_to_end).await;
            });
        }
    }
}

/// The declared `Content-Length`, strictly decimal digits (as wasi-http itself requires).
fn declared_length(headers: &http::HeaderMap) -> Result<Option<u64>, ServeError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let parsed = (!bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(bytes).ok()?.parse::<u64>().ok())
        .flatten();
    parsed
        .map(Some)
        .ok_or_else(|| ServeError::BadRequest("`Content-Length` is not a decimal number".into()))
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

/// What the access log says about one request, completed when its body is done.
struct AccessRecord {
    method: http::Method,
    /// As sent (before any `strip-prefix`): the log shows what the client asked for.
    uri: http::Uri,
    peer: SocketAddr,
    id: RequestId,
}

/// A response body as fibhost sends it: a guest's (read directly, or through the buffer a
/// [`pump`] fills) or fibhost's own.
enum Inner {
    Guest(PoolBody),
    Buffered(Buffered),
    /// An error document and its length.
    Host(Full<Bytes>, u64),
}

impl Inner {
    fn worker(&self) -> usize {
        match self {
            Inner::Guest(body) => body.worker(),
            Inner::Buffered(body) => body.worker,
            Inner::Host(..) => 0,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Inner::Guest(body) => body.bytes(),
            Inner::Buffered(body) => body.bytes,
            Inner::Host(_, bytes) => *bytes,
        }
    }
}

impl Body for Inner {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Inner::Guest(body) => Pin::new(body).poll_frame(cx),
            Inner::Buffered(body) => Pin::new(body).poll_frame(cx),
            Inner::Host(body, _) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Guest(body) => body.is_end_stream(),
            Inner::Buffered(body) => body.is_end_stream(),
            Inner::Host(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Guest(body) => body.size_hint(),
            Inner::Buffered(body) => body.size_hint(),
            Inner::Host(body, _) => body.size_hint(),
        }
    }
}

/// One response's share of its connection's [`Activity`]: in flight until dropped, and
/// whether it waits on its guest (a body frame not ready) or on the client.
struct Progress {
    activity: Arc<Activity>,
    waiting_on_guest: bool,
}

impl Progress {
    fn start(activity: Arc<Activity>) -> Progress {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.waiting_on_guest.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Progress {
            activity,
            waiting_on_guest: true,
        }
    }

    /// Records a poll of the body: `ready` if it gave something (the client's turn to take
    /// it), not if it waits on the guest.
    fn handed(&mut self, ready: bool) {
        let waiting = !ready;
        if waiting != self.waiting_on_guest {
            let counter = &self.activity.waiting_on_guest;
            if waiting {
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
            self.waiting_on_guest = waiting;
        }
        self.activity.touch();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.waiting_on_guest {
            self.activity
                .waiting_on_guest
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
    }
}

/// The body of every response fibhost sends: counts its bytes through the inner body, reports
/// progress to the connection's watchdog, and writes the access-log line and the request
/// metrics when the response is done.
pub struct ServerBody {
    inner: Inner,
    /// What polling `inner` already gave (`Some(None)`: the end), sent before polling again.
    peeked: Option<Option<Result<Frame<Bytes>, BodyError>>>,
    /// The inner body has ended already: after `peeked`, nothing more.
    complete: bool,
    status: u16,
    /// What the access-log line says; `None` with `disable-logging`.
    record: Option<AccessRecord>,
    progress: Progress,
    /// The request in its route's metrics (and its handle on the context, whose access log
    /// writes the line).
    counted: Counted,
}

/// A request counted in its route's in-flight gauge from its start: dropping it (with its
/// response, or with the request's task when the client went away first) ends the count.
///
/// It holds the request's own handle on the context (moved, not cloned: with one context
/// per event-loop thread its reference count is that thread's alone) and the route's index,
/// not a clone of the route's metrics handle, whose reference count every thread would share.
struct Counted {
    ctx: Arc<Ctx>,
    /// The route's index in the router; `None` for a request that matched no route.
    index: Option<usize>,
    started: Instant,
}

impl Counted {
    /// Starts counting a request for `path`, from now.
    fn start(ctx: Arc<Ctx>, path: &str) -> Counted {
        let index = ctx.router.position(path);
        ctx.router.metrics(index).start();
        Counted {
            ctx,
            index,
            started: Instant::now(),
        }
    }

    /// The route serving the request, if one matched.
    fn route(&self) -> Option<&Route> {
        self.index.map(|index| &self.ctx.router.routes()[index])
    }

    fn metrics(&self) -> &RouteMetrics {
        self.ctx.router.metrics(self.index)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics().end();
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match this.peeked.take() {
            Some(frame) => Poll::Ready(frame),
            None if this.complete => Poll::Ready(None),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        this.progress.handed(polled.is_ready());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && (self.complete || self.inner.is_end_stream())
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

impl Drop for ServerBody {
    fn drop(&mut self) {
        let counted = &self.counted;
        let elapsed = counted.started.elapsed();
        counted.metrics().observe(self.status, elapsed);
        if let Some(record) = &self.record
            && let Some(log) = &counted.ctx.access_log
        {
            log.write(&AccessEntry {
                method: record.method.as_str(),
                path: record.uri.path_and_query().map_or("/", |p| p.as_str()),
                status: self.status,
                bytes: self.inner.bytes(),
                duration_us: elapsed.as_micros() as u64,
                worker: self.inner.worker(),
                request_id: &record.id,
                client: record.peer,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_body_bytes: 1,
            max_header_bytes: 1024,
            header_read_timeout: Duration::from_secs(1),
            max_connections: 1,
            keep_alive_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            response_buffer: 1024,
        }
    }

    #[test]
    fn idle_connections_close_after_the_keep_alive_timeout() {
        let activity = Arc::new(Activity::default());
        let start = activity.opened;
        let l = limits();
        assert_eq!(
            activity.verdict(&l, None, start + Duration::from_secs(4)),
            Verdict::Fine
        );
        assert_eq!(
            activity.verdict(&l, None, start + Duration::from_secs(5)),
            Verdict::Idle
        );
    }

    #[test]
    fn a_response_waiting_on_its_guest_is_not_the_clients_fault() {
        let activity = Arc::new(Activity::default());
        let start = activity.opened;
        let l = limits();
        let mut progress = Progress::start(activity.clone());
        let late = start + Duration::from_secs(60);
        assert_eq!(
            activity.verdict(&l, None, late),
            Verdict::Fine,
            "waiting on the guest"
        );
        progress.handed(true);
        assert_eq!(
            activity.verdict(&l, None, Instant::now() + Duration::from_secs(10)),
            Verdict::Stalled,
            "a frame the client has not taken for send-timeout"
        );
        drop(progress);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(activity.waiting_on_guest.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_graceful_close_that_does_not_end_is_cut() {
        let activity = Activity::default();
        let since = Instant::now();
        let l = limits();
        assert_eq!(activity.verdict(&l, Some(since), since), Verdict::Fine);
        assert_eq!(
            activity.verdict(&l, Some(since), since + l.send_timeout),
            Verdict::Stalled
        );
    }

    #[test]
    fn content_length_must_be_digits() {
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(declared_length(&headers("12")).unwrap(), Some(12));
        assert!(declared_length(&headers("+5")).is_err());
        assert!(declared_length(&headers("")).is_err());
        assert_eq!(declared_length(&http::HeaderMap::new()).unwrap(), None);
    }

    #[tokio::test]
    async fn detection_tells_h2_from_h1_and_replays_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt as _;
        client.write_all(H2_PREFACE).await.unwrap();
        let (first, h2) = detect(&mut server).await.unwrap().unwrap();
        assert!(h2);
        assert_eq!(&first[..], H2_PREFACE);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (first, h2) = detect(&mut server).await.unwrap().unwrap();
        assert!(!h2);
        assert!(first.starts_with(b"G"), "{first:?}");
        drop(client);
        let mut replay = Prefixed {
            first,
            inner: server,
        };
        let mut rest = Vec::new();
        replay.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
    }
}
