//! One guest instance: its store (WASI context, HTTP context, memory limiter), how it is
//! created, and how it serves one request.
//!
//! An [`Instance`] is reused across requests (uWSGI-style) until the pool recycles it; the
//! pool decides *when*, this module reports *what happened* ([`Served`]) so it can.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::{Version, VersionId};
use crate::error::ServeError;

/// A request as the guest receives it: hyper's request with its body boxed (and limited).
pub type GuestRequest = hyper::Request<wasmtime_wasi_http::p2::body::HyperIncomingBody>;

/// A guest's response: status and headers now, the body streamed as the guest writes it.
pub type GuestResponse = hyper::Response<HyperOutgoingBody>;

/// Where the guest's response (or the reason there is none) is delivered, at most once:
/// either by the guest through `response-outparam.set`, or by the worker when the call ended
/// without one.
pub type ReplySlot = Arc<Mutex<Option<oneshot::Sender<Result<GuestResponse, ServeError>>>>>;

/// The data of a guest's [`Store`].
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoOutgoingRequests,
    memory: MemoryLimiter,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP (`wasi:http/outgoing-handler`) is linked, because the proxy world imports
/// it, but a guest gets no network: every request is refused.
struct NoOutgoingRequests;

impl WasiHttpHooks for NoOutgoingRequests {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::DestinationIpProhibited) })
    }
}

/// Caps an instance's linear memory and tracks its size (for `reload-on-memory` and the
/// metrics), summed over all of the instance's memories.
struct MemoryLimiter {
    limit_bytes: usize,
    bytes: Arc<AtomicUsize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, wasmtime::Error> {
        let total = self.bytes.load(Ordering::Relaxed) - current + desired;
        if total > self.limit_bytes {
            // Refusing makes `memory.grow` return -1 inside the guest, as on a real
            // out-of-memory; what the guest does next (usually abort) is its own choice.
            return Ok(false);
        }
        self.bytes.store(total, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, wasmtime::Error> {
        Ok(desired <= 1_000_000)
    }
}

/// What every instance of one component is created with.
#[derive(Clone)]
pub struct InstanceSpec {
    /// Environment variables granted to the guest.
    pub env: Vec<(String, String)>,
    /// Hard cap on linear memory.
    pub memory_limit_bytes: u64,
    /// Longest a request may run; `None` = unbounded.
    pub request_timeout: Option<Duration>,
    /// Route label for log lines of guest output.
    pub route: Arc<str>,
}

impl InstanceSpec {
    /// The spec of the instances of `route`'s component.
    pub fn for_route(route: &crate::config::RouteConfig) -> InstanceSpec {
        InstanceSpec {
            env: route.env.clone(),
            memory_limit_bytes: route.lifecycle.memory_limit_bytes,
            request_timeout: route.lifecycle.request_timeout,
            route: Arc::from(route.prefix.as_str()),
        }
    }
}

/// Instances alive in the process: each holds a pooling-allocator slot.
static LIVE_INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// How many guest instances are alive (serving, spare or retiring).
pub fn live_instances() -> usize {
    LIVE_INSTANCES.load(Ordering::Relaxed)
}

/// A live guest instance.
pub struct Instance {
    store: Store<GuestState>,
    proxy: Proxy,
    /// The version it was made from.
    pub version: Arc<VersionId>,
    /// When it was instantiated.
    pub born: Instant,
    /// Requests it has served.
    pub served: u64,
    /// Current linear memory, in bytes.
    memory_bytes: Arc<AtomicUsize>,
    /// The worker it serves for, for log lines of guest output; 0 while it is a spare.
    worker: Arc<AtomicUsize>,
}

/// How a call into the guest ended.
#[derive(Debug)]
pub enum Served {
    /// The guest returned; the instance can serve again.
    Ok,
    /// The guest trapped (panic, `unreachable`, stack overflow, out of memory…).
    Trapped(String),
    /// The guest ran past the request timeout and was interrupted.
    TimedOut,
    /// The guest returned without setting a response: an instance in a state where it
    /// cannot answer (e.g. a JavaScript engine whose single fetch event is spent).
    NoResponse,
}

impl Instance {
    /// Creates an instance of `version`. Cheap with the pooling allocator; still kept off the
    /// request path by the pool's ready spares.
    pub async fn new(version: &Version, spec: &InstanceSpec) -> Result<Instance> {
        let worker = Arc::new(AtomicUsize::new(0));
        let memory_bytes = Arc::new(AtomicUsize::new(0));
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&spec.env)
            .stdout(GuestOutput::new("stdout", &spec.route, &worker))
            .stderr(GuestOutput::new("stderr", &spec.route, &worker));
        let state = GuestState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutgoingRequests,
            memory: MemoryLimiter {
                limit_bytes: spec.memory_limit_bytes as usize,
                bytes: memory_bytes.clone(),
            },
        };
        let mut store = Store::new(version.pre.engine(), state);
        store.limiter(|state| &mut state.memory);
        // Yield to the scheduler at every epoch tick: a guest spinning on the CPU then lets
        // other tasks run and lets the request timeout (a tokio timer) fire.
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);
        let proxy = version.pre.instantiate_async(&mut store).await?;
        LIVE_INSTANCES.fetch_add(1, Ordering::Relaxed);
        Ok(Instance {
            store,
            proxy,
            version: version.id.clone(),
            born: Instant::now(),
            served: 0,
            memory_bytes,
            worker,
        })
    }

    /// Records which worker this instance now serves for.
    pub fn assign(&self, worker: usize) {
        self.worker.store(worker, Ordering::Relaxed);
    }

    /// Current linear memory of the instance, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed) as u64
    }

    /// Runs the guest's handler for `request`, delivering its response through `reply`.
    ///
    /// Returns once the guest has returned, the body included, so that the instance is free
    /// again; the response itself goes out through `reply` as soon as the guest sets it.
    pub async fn serve(
        &mut self,
        request: GuestRequest,
        scheme: Scheme,
        reply: ReplySlot,
        timeout: Option<Duration>,
    ) -> Served {
        self.served += 1;
        let data = self.store.data_mut();
        let request = match data.http().new_incoming_request(scheme, request) {
            Ok(request) => request,
            Err(e) => {
                send(&reply, Err(ServeError::BadRequest(format!("{e}"))));
                return Served::Ok;
            }
        };
        let slot = reply.clone();
        let outparam = data
            .http()
            .new_response_outparam_from_callback(move |result| {
                send(
                    &slot,
                    result.map_err(|code| ServeError::GuestError(describe(&code))),
                );
            });
        let outparam = match outparam {
            Ok(outparam) => outparam,
            Err(e) => {
                send(&reply, Err(ServeError::Internal(format!("{e}"))));
                return Served::Ok;
            }
        };
        self.store.set_epoch_deadline(1);
        let call =
            self.proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut self.store, request, outparam);
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => {
                    send(&reply, Err(ServeError::Timeout(limit)));
                    return Served::TimedOut;
                }
            },
            None => call.await,
        };
        match result {
            Ok(()) => {
                let answered = reply.lock().map(|r| r.is_none()).unwrap_or(true);
                if answered {
                    Served::Ok
                } else {
                    send(&reply, Err(ServeError::NoResponse));
                    Served::NoResponse
                }
            }
            Err(e) => {
                let reason = trap_reason(&e);
                send(&reply, Err(ServeError::Trap(reason.clone())));
                Served::Trapped(reason)
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        LIVE_INSTANCES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Delivers `result` unless a response was already delivered.
pub fn send(slot: &ReplySlot, result: Result<GuestResponse, ServeError>) {
    let sender = slot
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(sender) = sender {
        // The receiver is gone when the client disconnected: nothing to do.
        let _ = sender.send(result);
    }
}

/// One line for a trap: the wasm trap code when there is one, else the error chain.
fn trap_reason(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("{trap}"),
        None => format!("{e:#}")
            .lines()
            .next()
            .unwrap_or("guest error")
            .to_string(),
    }
}

fn describe(code: &ErrorCode) -> String {
    format!("{code:?}")
}

/// Guest stdout or stderr: each line goes to fibhost's log, tagged with route and worker.
struct GuestOutput {
    stream: &'static str,
    route: Arc<str>,
    worker: Arc<AtomicUsize>,
}

impl GuestOutput {
    fn new(stream: &'static str, route: &Arc<str>, worker: &Arc<AtomicUsize>) -> Self {
        GuestOutput {
            stream,
            route: route.clone(),
            worker: worker.clone(),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            stream: self.stream,
            route: self.route.clone(),
            worker: self.worker.clone(),
            pending: Vec::new(),
        })
    }
}

/// Splits what a guest writes into lines and logs each one.
struct LineLogger {
    stream: &'static str,
    route: Arc<str>,
    worker: Arc<AtomicUsize>,
    pending: Vec<u8>,
}

/// A guest writing one endless line must not grow the buffer without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;

impl LineLogger {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(
            target: "fibhost::guest",
            route = &*self.route,
            worker = self.worker.load(Ordering::Relaxed),
            stream = self.stream,
            "{}",
            text.trim_end_matches('\r')
        );
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            self.emit(&self.pending[..end]);
            self.pending.drain(..=end);
        }
        if self.pending.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}
