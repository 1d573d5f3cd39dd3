//! One guest instance: how it is created, and how it serves requests.
//!
//! An [`Instance`] is reused across requests (uWSGI-style) until the pool recycles it; the
//! pool decides *when*, this module reports *what happened* ([`Outcome`]). It also owns the
//! at-most-once [`Reply`] through which a request's response (or the reason there is none)
//! reaches the connection: whoever answers first — the guest (through
//! `response-outparam.set`, or by returning from its WASI 0.3 `handle`), or this module when
//! the call ended without one — is the only one who does.
//!
//! A WASI 0.2 instance serves one request per call, and the call returns once the guest has
//! written its body. A WASI 0.3 instance runs inside wasmtime's concurrent event loop
//! ([`Instance::concurrently`]): `handle` returns the response with its body still being
//! written by a guest task, so a request is over only when its body has been read to the end
//! (or dropped), and several requests may be in flight on one instance ([`Concurrent`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use wasmtime::component::Accessor;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::Service;

use crate::config::RouteConfig;
use crate::engine::{Pre, Version, VersionId, World};
use crate::error::ServeError;
use crate::outbound::Outbound;
use crate::outcome::Outcome;
use crate::request_id::RequestId;
use crate::state::{GuestState, OutputTag};

/// The bound on an instantiation when the route has no request timeout.
const INSTANTIATE_LIMIT: Duration = Duration::from_secs(60);

/// A request as the guest receives it: hyper's request with its body boxed (and limited).
pub type GuestRequest = hyper::Request<wasmtime_wasi_http::p2::body::HyperIncomingBody>;

/// A guest's response: status and headers now, the body streamed as the guest writes it.
pub type GuestResponse = hyper::Response<GuestBody>;

/// A guest's response body, of either world.
pub enum GuestBody {
    /// Written by a WASI 0.2 guest through its `outgoing-body`.
    P2(HyperOutgoingBody),
    /// Written by a WASI 0.3 guest into its response's `stream<u8>`.
    P3(P3Body),
}

/// A WASI 0.3 body, which tells its request when it is over: read to the end or dropped.
/// Until then the instance's event loop must keep running, since it is what moves the bytes.
pub struct P3Body {
    inner: HyperOutgoingBody,
    /// Dropped with the body: the request waiting on the other end is then over.
    _over: oneshot::Sender<()>,
}

impl GuestBody {
    fn inner(&self) -> &HyperOutgoingBody {
        match self {
            GuestBody::P2(body) => body,
            GuestBody::P3(body) => &body.inner,
        }
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let inner = match self.get_mut() {
            GuestBody::P2(body) => body,
            GuestBody::P3(body) => &mut body.inner,
        };
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner().size_hint()
    }
}

type ReplySender = oneshot::Sender<Result<GuestResponse, ServeError>>;

/// The sending side of a request's reply: delivers the response or the failure, once.
#[derive(Clone)]
pub struct Reply(Arc<Mutex<Option<ReplySender>>>);

/// The receiving side: resolves to the guest's response or the reason there is none.
pub type Answer = oneshot::Receiver<Result<GuestResponse, ServeError>>;

/// A new reply channel for one request.
pub fn reply() -> (Reply, Answer) {
    let (tx, rx) = oneshot::channel();
    (Reply(Arc::new(Mutex::new(Some(tx)))), rx)
}

impl Reply {
    /// Delivers `result` unless something was already delivered.
    pub fn send(&self, result: Result<GuestResponse, ServeError>) {
        let sender = crate::lock(&self.0).take();
        if let Some(sender) = sender {
            // The receiver is gone when the client disconnected: nothing to do.
            let _ = sender.send(result);
        }
    }

    /// Whether a response or failure was delivered already.
    fn is_sent(&self) -> bool {
        self.0.lock().map(|r| r.is_none()).unwrap_or(true)
    }

    /// Whether nobody waits for the answer any more (the client left while it was queued).
    pub fn is_abandoned(&self) -> bool {
        self.0
            .lock()
            .map(|r| r.as_ref().is_none_or(oneshot::Sender::is_closed))
            .unwrap_or(true)
    }
}

/// Counts the guest instances alive in one server (serving, spare or retiring): each holds a
/// pooling-allocator slot. One per server, not per process, so two servers in one process
/// (tests) do not count each other's instances.
#[derive(Clone, Debug, Default)]
pub struct LiveInstances(Arc<AtomicUsize>);

impl LiveInstances {
    /// How many are alive now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What every instance of one route is made with: its settings, the server's instance count
/// and the route's outbound client.
#[derive(Clone)]
pub struct Setup {
    /// The route's resolved settings.
    pub route: Arc<RouteConfig>,
    /// The server's live-instance count.
    pub live: LiveInstances,
    /// The route's outbound HTTP client (grants, pool, limits).
    pub outbound: Arc<Outbound>,
}

/// The export an instance's requests are handed to.
enum Handler {
    P2(Proxy),
    P3(Service),
}

/// A live guest instance.
pub struct Instance {
    store: Store<GuestState>,
    handler: Handler,
    /// The version it was made from.
    version: Arc<VersionId>,
    born: Instant,
    served: AtomicU64,
    memory_bytes: Arc<AtomicUsize>,
    /// Host memory held through the guest's resources, as of its last request.
    host_bytes: u64,
    tag: Arc<OutputTag>,
    live: LiveInstances,
}

impl Instance {
    /// Creates an instance of `version` as `setup` says. Cheap with the pooling allocator;
    /// still kept off the request path by the pool's ready spares.
    pub async fn new(version: &Version, setup: &Setup) -> Result<Self> {
        let (route, live) = (&setup.route, &setup.live);
        let memory_bytes = Arc::new(AtomicUsize::new(0));
        let tag = OutputTag::new(Arc::from(route.prefix.as_str()));
        let state = GuestState::new(
            &route.env,
            &tag,
            route.lifecycle.memory_limit_bytes,
            memory_bytes.clone(),
            setup.outbound.clone(),
        );
        let mut store = Store::new(version.pre.engine(), state);
        store.limiter(GuestState::limiter);
        // Yield to the scheduler at every epoch tick: a guest spinning on the CPU then lets
        // other tasks run and lets the request timeout (a tokio timer) fire.
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);
        // Bounded like a request: a guest whose start code never returns (it yields at every
        // epoch tick, so the timer fires) must not hang startup or a swap.
        let limit = route.lifecycle.request_timeout.unwrap_or(INSTANTIATE_LIMIT);
        let instantiate = async {
            anyhow::Ok(match &version.pre {
                Pre::P2(pre) => Handler::P2(pre.instantiate_async(&mut store).await?),
                Pre::P3(pre) => Handler::P3(pre.instantiate_async(&mut store).await?),
            })
        };
        let handler = tokio::time::timeout(limit, instantiate)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "instantiating `{}` did not finish within {limit:?}: its start code (e.g. \
                     `_initialize`) runs without end",
                    version.id.path.display()
                )
            })??;
        live.0.fetch_add(1, Ordering::Relaxed);
        Ok(Instance {
            store,
            handler,
            version: version.id.clone(),
            born: Instant::now(),
            served: AtomicU64::new(0),
            memory_bytes,
            host_bytes: 0,
            tag,
            live: live.clone(),
        })
    }

    /// The version it was made from.
    pub fn version(&self) -> &Arc<VersionId> {
        &self.version
    }

    /// When it was instantiated.
    pub fn born(&self) -> Instant {
        self.born
    }

    /// Requests it has been given.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The `wasi:http` world it serves.
    pub fn world(&self) -> World {
        match self.handler {
            Handler::P2(_) => World::P2,
            Handler::P3(_) => World::P3,
        }
    }

    /// The instance's memory, in bytes: its linear memories (now) plus the host memory its
    /// resources hold (as of its last request; see [`GuestState::host_bytes`]). What the
    /// memory metric shows and `reload-on-memory` compares.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed) as u64 + self.host_bytes
    }

    /// Records which worker this instance now serves for (its output lines say so).
    pub fn assign(&self, worker: usize) {
        self.tag.set_worker(worker);
    }

    /// Runs the guest's handler for `request` and delivers its response through `reply` as
    /// soon as the guest sets it, or the failure once the call has ended without one.
    ///
    /// Returns once the request is over for the instance, so that it is free again: for a
    /// WASI 0.2 guest when it has returned (its body written), for a WASI 0.3 guest when its
    /// body has been read to the end or dropped. The response itself has gone out through
    /// `reply` by then.
    pub async fn serve(
        &mut self,
        request: GuestRequest,
        scheme: Scheme,
        reply: &Reply,
        id: &RequestId,
        timeout: Option<Duration>,
    ) -> Outcome {
        if let Handler::P3(_) = self.handler {
            let served = self
                .concurrently(async |c| c.serve(request, scheme, reply, id, timeout).await)
                .await;
            return served.unwrap_or_else(|e| {
                let outcome = trapped(&e);
                reply.send(Err(outcome.error().unwrap_or(ServeError::NoResponse)));
                outcome
            });
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        self.tag.set_request(Some(id.clone()));
        let outcome = self.call(request, scheme, reply, timeout).await;
        let outcome = answer_for_guest(outcome, reply);
        self.tag.flush();
        self.tag.set_request(None);
        self.host_bytes = self.store.data_mut().host_bytes() as u64;
        outcome
    }

    /// Runs `f` with the instance in wasmtime's concurrent event loop, through which every
    /// WASI 0.3 request is served: requests started with [`Concurrent::serve`] run at once.
    /// Fails when the guest trapped: the event loop of a trapped instance cannot go on, and
    /// every request still in it is lost (the caller answers them).
    ///
    /// # Panics
    /// On a WASI 0.2 instance, which has no event loop (its engine has no concurrency
    /// support); the pool only calls it for [`World::P3`] instances.
    pub async fn concurrently<R: Send>(
        &mut self,
        f: impl AsyncFnOnce(&Concurrent<'_>) -> R + Send,
    ) -> wasmtime::Result<R> {
        let Handler::P3(service) = &self.handler else {
            panic!("concurrently() on a WASI 0.2 instance");
        };
        let (served, tag) = (&self.served, &*self.tag);
        let (memory, host_bytes) = (&*self.memory_bytes, self.host_bytes);
        let result = self
            .store
            .run_concurrent(async |accessor| {
                let concurrent = Concurrent {
                    accessor,
                    service,
                    served,
                    tag,
                    memory,
                    host_bytes,
                };
                f(&concurrent).await
            })
            .await;
        self.tag.flush();
        self.host_bytes = self.store.data_mut().host_bytes() as u64;
        result
    }

    async fn call(
        &mut self,
        request: GuestRequest,
        scheme: Scheme,
        reply: &Reply,
        timeout: Option<Duration>,
    ) -> Outcome {
        let mut http = self.store.data_mut().http();
        let request = match http.new_incoming_request(scheme, request) {
            Ok(request) => request,
            Err(e) => return Outcome::Refused(ServeError::BadRequest(format!("{e}"))),
        };
        let slot = reply.clone();
        let outparam = http.new_response_outparam_from_callback(move |result| {
            slot.send(
                result
                    .map(|response| response.map(GuestBody::P2))
                    .map_err(|code| ServeError::GuestError(format!("{code:?}"))),
            );
        });
        let outparam = match outparam {
            Ok(outparam) => outparam,
            Err(e) => return Outcome::Refused(ServeError::Internal(format!("{e}"))),
        };
        self.store.set_epoch_deadline(1);
        let Handler::P2(proxy) = &self.handler else {
            unreachable!("serve() hands WASI 0.3 requests to concurrently()");
        };
        let call =
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut self.store, request, outparam);
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => return Outcome::TimedOut(limit),
            },
            None => call.await,
        };
        match result {
            Ok(()) => Outcome::Answered,
            Err(e) => trapped(&e),
        }
    }

    /// Sends `GET path` to this instance and requires a 2xx (a new version's warm-up).
    pub async fn warm_up(&mut self, path: &str, timeout: Option<Duration>) -> Result<()> {
        let request = http::Request::builder()
            .uri(path)
            .header(http::header::HOST, "localhost")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .context("invalid warm-up path")?;
        let (reply, answer) = reply();
        let id = RequestId::Given(http::HeaderValue::from_static("warm-up"));
        // Read the response while the guest runs: its body may not fit the body channel.
        let served = self.serve(request, Scheme::Http, &reply, &id, timeout);
        let read = async {
            let response = answer
                .await
                .context("no warm-up response")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            anyhow::Ok(status)
        };
        let (outcome, status) = tokio::join!(served, read);
        if let Outcome::Trapped { detail, .. } = &outcome {
            anyhow::bail!("the warm-up request `GET {path}` trapped: {detail}");
        }
        let status = status.with_context(|| format!("the warm-up request `GET {path}` failed"))?;
        anyhow::ensure!(
            status.is_success(),
            "the warm-up request `GET {path}` answered {status}, not 2xx"
        );
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.tag.flush();
        self.live.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An instance in wasmtime's concurrent event loop ([`Instance::concurrently`]), through which
/// WASI 0.3 requests are served, several at once.
pub struct Concurrent<'a> {
    accessor: &'a Accessor<GuestState>,
    service: &'a Service,
    served: &'a AtomicU64,
    tag: &'a OutputTag,
    /// The instance's linear memory, as its limiter tracks it.
    memory: &'a AtomicUsize,
    /// Host memory held by its resources when the event loop was entered.
    host_bytes: u64,
}

impl Concurrent<'_> {
    /// Requests the instance has been given, these included.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The instance's memory as [`Instance::memory_bytes`] counts it (host memory as of when
    /// the event loop was entered).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.load(Ordering::Relaxed) as u64 + self.host_bytes
    }

    /// Serves one request as [`Instance::serve`] does, alongside any others started through
    /// the same `Concurrent`. Over when the response body has been read to the end or dropped,
    /// or after `timeout` (the request then fails, and its instance must be recycled once the
    /// others are over: its guest task may still be running).
    ///
    /// Guest output lines carry the id of the request that started last: with several in
    /// flight, a line cannot be told apart by request.
    pub async fn serve(
        &self,
        request: GuestRequest,
        scheme: Scheme,
        reply: &Reply,
        id: &RequestId,
        timeout: Option<Duration>,
    ) -> Outcome {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.tag.set_request(Some(id.clone()));
        let call = self.call(request, scheme, reply);
        let outcome = match timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Outcome::TimedOut(limit)),
            None => call.await,
        };
        answer_for_guest(outcome, reply)
    }

    async fn call(&self, request: GuestRequest, scheme: Scheme, reply: &Reply) -> Outcome {
        use wasmtime_wasi_http::p3::Request;
        let request = with_scheme_and_authority(request, &scheme);
        // (The second half of what `from_http` returns is how a host learns that the guest
        // failed reading the request body; the guest's own response tells that already.)
        let request = self
            .accessor
            .with(|mut store| Request::from_http(store.data_mut().http().hooks, request).0);
        let response = match self.service.handle(self.accessor, request).await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                reply.send(Err(ServeError::GuestError(format!("{code:?}"))));
                return Outcome::Answered;
            }
            Err(e) => return trapped(&e),
        };
        let response = self
            .accessor
            .with(|store| response.into_http(store, async { Ok(()) }));
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                // E.g. a `content-length` that is not a number: the guest's error, not a trap.
                reply.send(Err(ServeError::GuestError(format!("{e:#}"))));
                return Outcome::Answered;
            }
        };
        let (over, is_over) = oneshot::channel();
        reply.send(Ok(
            response.map(|inner| GuestBody::P3(P3Body { inner, _over: over }))
        ));
        // Resolves (with an error: nothing is ever sent) when the body is dropped, by the
        // connection once it has read it to the end, or when the client leaves.
        let _ = is_over.await;
        Outcome::Answered
    }
}

/// A WASI 0.3 guest sees the request's scheme and authority (as a 0.2 guest does through
/// `incoming-request`): from the URI when it has them, else the `Host` header.
fn with_scheme_and_authority(request: GuestRequest, scheme: &Scheme) -> GuestRequest {
    let (mut parts, body) = request.into_parts();
    if parts.uri.authority().is_none() {
        let authority = (parts.headers.get(http::header::HOST))
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<http::uri::Authority>().ok());
        let scheme = match scheme {
            Scheme::Https => http::uri::Scheme::HTTPS,
            _ => http::uri::Scheme::HTTP,
        };
        if let Some(authority) = authority {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(scheme);
            uri.authority = Some(authority);
            uri.path_and_query = parts.uri.path_and_query().cloned();
            if let Ok(full) = http::Uri::from_parts(uri) {
                parts.uri = full;
            }
        }
    }
    GuestRequest::from_parts(parts, body)
}

/// When the guest returned (or failed) without a response, answers for it; the outcome says
/// so (`NoResponse` rather than `Answered`).
fn answer_for_guest(outcome: Outcome, reply: &Reply) -> Outcome {
    if reply.is_sent() {
        return outcome;
    }
    let outcome = match outcome {
        Outcome::Answered => Outcome::NoResponse,
        other => other,
    };
    reply.send(Err(outcome.error().unwrap_or(ServeError::NoResponse)));
    outcome
}

/// The outcome of a call that failed inside the guest.
pub fn trapped(e: &wasmtime::Error) -> Outcome {
    Outcome::Trapped {
        summary: trap_summary(e),
        detail: format!("{e:?}"),
    }
}

/// One line for the client: the wasm trap code when there is one, else the error's first line.
fn trap_summary(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("{trap}"),
        None => format!("{e}")
            .lines()
            .next()
            .unwrap_or("guest error")
            .to_string(),
    }
}
