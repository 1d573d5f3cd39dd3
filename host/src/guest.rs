//! One guest instance: how it is created, and how it serves one request.
//!
//! An [`Instance`] is reused across requests (uWSGI-style) until the pool recycles it; the
//! pool decides *when*, this module reports *what happened* ([`Outcome`]). It also owns the
//! at-most-once [`Reply`] through which a request's response (or the reason there is none)
//! reaches the connection: whoever answers first — the guest through `response-outparam.set`,
//! or this module when the call ended without one — is the only one who does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use tokio::sync::oneshot;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::config::RouteConfig;
use crate::engine::{Version, VersionId};
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
pub type GuestResponse = hyper::Response<HyperOutgoingBody>;

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
    fn send(&self, result: Result<GuestResponse, ServeError>) {
        let sender = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
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

/// A live guest instance.
pub struct Instance {
    store: Store<GuestState>,
    proxy: Proxy,
    /// The version it was made from.
    version: Arc<VersionId>,
    born: Instant,
    served: u64,
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
        let proxy = tokio::time::timeout(limit, version.pre.instantiate_async(&mut store))
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
            proxy,
            version: version.id.clone(),
            born: Instant::now(),
            served: 0,
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
        self.served
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
    /// Returns once the guest has returned (its body written), so that the instance is free
    /// again; the response itself has gone out through `reply` by then.
    pub async fn serve(
        &mut self,
        request: GuestRequest,
        scheme: Scheme,
        reply: &Reply,
        id: &RequestId,
        timeout: Option<Duration>,
    ) -> Outcome {
        self.served += 1;
        self.tag.set_request(Some(id.clone()));
        let outcome = self.call(request, scheme, reply, timeout).await;
        if !reply.is_sent() {
            // The guest returned (or failed) without a response: answer for it.
            let outcome = match outcome {
                Outcome::Answered => Outcome::NoResponse,
                other => other,
            };
            reply.send(Err(outcome.error().unwrap_or(ServeError::NoResponse)));
            self.finish_request();
            return outcome;
        }
        self.finish_request();
        outcome
    }

    fn finish_request(&mut self) {
        self.host_bytes = self.store.data_mut().host_bytes() as u64;
        self.tag.flush();
        self.tag.set_request(None);
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
            slot.send(result.map_err(|code| ServeError::GuestError(format!("{code:?}"))));
        });
        let outparam = match outparam {
            Ok(outparam) => outparam,
            Err(e) => return Outcome::Refused(ServeError::Internal(format!("{e}"))),
        };
        self.store.set_epoch_deadline(1);
        let call =
            self.proxy
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
            Err(e) => Outcome::Trapped {
                summary: trap_summary(&e),
                detail: format!("{e:?}"),
            },
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
