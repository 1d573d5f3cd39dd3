//! The workers of one component: N long-lived tasks on the event-loop threads, each owning one
//! guest instance at a time, fed through one lane per thread under one admission bound, with
//! replacement instances built ahead of need.
//!
//! # Design
//! - **Lanes.** Workers are dealt out over the event-loop threads ([`crate::shards`]); the
//!   workers of one thread share a [`Lane`]: a channel of [`Job`]s they are parked on. A
//!   request goes to its own thread's lane when a worker there is free, else to a lane of
//!   another thread with a free worker, else it waits in its own thread's lane. So in the
//!   common case the connection task and the worker task run on the same thread, and a
//!   request never waits while a worker elsewhere is idle.
//! - **Admission.** At most `queue` requests wait beyond those a free worker is about to take;
//!   past that the client gets 503 at once. One request per instance at a time, as in uWSGI.
//! - **Make-before-break.** A [`Generation`] (one loaded component version) owns a channel of
//!   ready spare instances that a spawner task keeps topped up. A worker recycling its instance
//!   takes a spare first and drops the old instance after, so capacity never dips and no request
//!   waits on an instantiation while spares last.
//! - **Hot swap.** [`Pool::swap`] builds a new generation whose spare channel is pre-filled with
//!   one instance per worker, then publishes it. Each worker moves over as soon as it is idle;
//!   a worker that takes a job re-checks the generation first, so no request dequeued after the
//!   publish runs on the old version, and a request in flight finishes where it started.
//!
//! `wasmtime-wasi-http`'s `handler` module (a reuse-aware dispatcher with per-worker accept
//! and expiry hooks) was evaluated and not used: in 48.x it is gated behind the experimental
//! `component-model-async` feature, is built around `run_concurrent` and several requests per
//! instance, and has no notion of ready spares, exact request counts or versioned swaps,
//! which are what this module exists for.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use tokio::sync::{Notify, oneshot, watch};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::config::{Lifecycle, RouteConfig};
use crate::engine::{Version, VersionId};
use crate::error::ServeError;
use crate::guest::{GuestRequest, GuestResponse, Instance, InstanceSpec, Served};
use crate::shards::Shards;

/// Ready spares kept per component in steady state: enough for recycles to be instant, few
/// enough that idle spares cost little memory.
const STEADY_SPARES: usize = 2;

/// How long an instance past its lifetime waits before retrying when no spare was ready.
const RETRY_RECYCLE: Duration = Duration::from_millis(50);

/// Pause after a failed instantiation before the spawner tries again.
const SPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// Why an instance was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recycle {
    /// It reached its (jittered) `max-worker-lifetime`.
    Lifetime,
    /// It served `max-requests` requests.
    Requests,
    /// Its linear memory passed `reload-on-memory`.
    Memory,
    /// The guest trapped.
    Trap,
    /// A request ran past `request-timeout`.
    Timeout,
    /// A new component version was swapped in.
    Swap,
    /// The guest returned without a response; its instance is presumed broken.
    NoResponse,
}

impl Recycle {
    /// Every reason, in a fixed order (the index of the per-reason counters).
    pub const ALL: [Recycle; 7] = [
        Recycle::Lifetime,
        Recycle::Requests,
        Recycle::Memory,
        Recycle::Trap,
        Recycle::Timeout,
        Recycle::Swap,
        Recycle::NoResponse,
    ];

    /// The reason as a log field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Recycle::Lifetime => "lifetime",
            Recycle::Requests => "requests",
            Recycle::Memory => "memory",
            Recycle::Trap => "trap",
            Recycle::Timeout => "timeout",
            Recycle::Swap => "swap",
            Recycle::NoResponse => "no_response",
        }
    }

    fn index(self) -> usize {
        Recycle::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

/// A request on its way to a worker.
struct Job {
    request: GuestRequest,
    scheme: Scheme,
    reply: crate::guest::ReplySlot,
    trace: Arc<JobTrace>,
}

/// What the server learns about a request from the worker that served it, after the fact.
#[derive(Debug, Default)]
pub struct JobTrace {
    /// The worker's id (1-based); 0 until a worker takes the job.
    pub worker: AtomicUsize,
    /// Set when the call ended in a trap or timeout, before the instance is dropped: a
    /// response body that ends after this was cut short, not finished.
    pub failed: AtomicBool,
}

/// Live counters of one worker, read by the metrics and stats endpoints.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Requests served by this worker, over all its instances.
    pub requests: AtomicU64,
    /// Whether it is running a request now.
    pub busy: AtomicBool,
    /// Instances it has been given after its first.
    pub respawns: AtomicU64,
    /// Unix time (seconds) its current instance was given to it.
    pub last_spawn: AtomicU64,
    /// Requests served by its current instance.
    pub instance_requests: AtomicU64,
    /// Linear memory of its current instance, bytes.
    pub memory_bytes: AtomicU64,
    /// Total time spent in requests, microseconds (uWSGI's `avg_rt` is this / requests).
    pub busy_micros: AtomicU64,
    /// Requests that ended in a trap or timeout.
    pub failures: AtomicU64,
    /// Requests interrupted by the request timeout (uWSGI's `harakiri_count`).
    pub timeouts: AtomicU64,
    /// Response body bytes sent for requests this worker served.
    pub tx_bytes: AtomicU64,
}

/// Live counters of one component's pool.
#[derive(Debug)]
pub struct PoolStats {
    /// One entry per worker, index = id - 1.
    pub workers: Vec<WorkerStats>,
    /// Replacements per [`Recycle`] reason, indexed like [`Recycle::ALL`].
    pub recycles: [AtomicU64; 7],
    /// Requests refused with 503 because the queue was full.
    pub rejected: AtomicU64,
    /// Instances created after startup: spares, and replacements built by a worker that
    /// found no spare ready.
    pub instantiations: AtomicU64,
    /// Total time those instantiations took, microseconds.
    pub instantiation_micros: AtomicU64,
}

impl PoolStats {
    /// Workers running a request now (read at scrape time: the request path only sets each
    /// worker's own flag, never a counter shared by every thread).
    pub fn busy(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.busy.load(Ordering::Relaxed))
            .count()
    }

    /// Replacements so far for `reason`.
    pub fn recycled(&self, reason: Recycle) -> u64 {
        self.recycles[reason.index()].load(Ordering::Relaxed)
    }
}

/// One loaded component version and its supply of ready instances.
struct Generation {
    version: Version,
    spares: async_channel::Receiver<Instance>,
    spares_tx: async_channel::Sender<Instance>,
    /// Signalled when a spare is taken, or when the generation is retired.
    taken: Notify,
    retired: AtomicBool,
    /// Workers that have moved to this generation.
    adopted: AtomicUsize,
    adopted_all: Notify,
}

/// The workers of one component.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// The workers of one component on one event-loop thread, and the jobs sent to them.
struct Lane {
    jobs: async_channel::Sender<Job>,
    jobs_rx: async_channel::Receiver<Job>,
    /// Workers on this lane.
    workers: usize,
    /// Jobs sent to this lane and not finished (queued or running).
    pending: AtomicUsize,
}

impl Lane {
    /// Whether a worker of this lane is free for one more job.
    fn has_free_worker(&self) -> bool {
        self.pending.load(Ordering::Relaxed) < self.workers
    }
}

struct Inner {
    route: Arc<str>,
    spec: InstanceSpec,
    lifecycle: Lifecycle,
    workers: usize,
    queue: usize,
    /// One per event-loop thread, by shard index (a lane may have no workers).
    lanes: Vec<Lane>,
    generation: watch::Sender<Arc<Generation>>,
    /// Serialises swaps of this component.
    swapping: tokio::sync::Mutex<()>,
    stats: Arc<PoolStats>,
}

/// What a completed swap reports.
#[derive(Debug)]
pub struct SwapReport {
    /// The version now serving.
    pub version: Arc<VersionId>,
    /// Workers still finishing a request on the old version when the report was made.
    pub still_draining: usize,
}

impl Pool {
    /// Creates the pool and all its instances (one per worker), then starts the workers on
    /// the event-loop threads and the spare spawner on the calling runtime. Fails if the
    /// component cannot be instantiated, before any port is bound.
    pub async fn start(config: &RouteConfig, version: Version, shards: &Shards) -> Result<Pool> {
        let (route, workers, queue) = (config.prefix.as_str(), config.workers, config.queue);
        let lifecycle = config.lifecycle.clone();
        let spec = InstanceSpec::for_route(config);
        let generation = Arc::new(
            Generation::prepare(version, &spec, workers + STEADY_SPARES, workers)
                .await
                .with_context(|| format!("cannot instantiate the component for `{route}`"))?,
        );
        let lanes = (0..shards.len())
            .map(|shard| {
                let lane_workers = (1..=workers)
                    .filter(|&id| shards.of_worker(id) == shard)
                    .count();
                // Unbounded: admission in `dispatch` bounds what waits, over all lanes.
                let (jobs, jobs_rx) = async_channel::unbounded();
                Lane {
                    jobs,
                    jobs_rx,
                    workers: lane_workers,
                    pending: AtomicUsize::new(0),
                }
            })
            .collect();
        let stats = Arc::new(PoolStats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            recycles: Default::default(),
            rejected: AtomicU64::new(0),
            instantiations: AtomicU64::new(0),
            instantiation_micros: AtomicU64::new(0),
        });
        let inner = Arc::new(Inner {
            route: Arc::from(route),
            spec,
            lifecycle,
            workers,
            queue,
            lanes,
            generation: watch::Sender::new(generation.clone()),
            swapping: tokio::sync::Mutex::new(()),
            stats,
        });
        for id in 1..=workers {
            let instance = generation
                .spares
                .try_recv()
                .expect("prepare() filled one instance per worker");
            generation.adopt(workers);
            let shard = shards.of_worker(id);
            shards.handles()[shard].spawn(inner.clone().run_worker(id, shard, instance));
        }
        tokio::spawn(inner.clone().run_spawner(generation));
        Ok(Pool { inner })
    }

    /// The route prefix this pool serves.
    pub fn route(&self) -> &str {
        &self.inner.route
    }

    /// What its instances are created with.
    pub fn spec(&self) -> &InstanceSpec {
        &self.inner.spec
    }

    /// Its recycling limits.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.inner.lanes.iter().map(|lane| lane.jobs.len()).sum()
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.inner.stats
    }

    /// The version new requests are served by.
    pub fn version(&self) -> Arc<VersionId> {
        self.inner.generation.borrow().version.id.clone()
    }

    /// Queues `request` for a worker and waits for the guest's response (its head; the body
    /// streams on). Fails at once with 503 when `queue` requests already wait.
    pub async fn dispatch(
        &self,
        request: GuestRequest,
        scheme: Scheme,
    ) -> Result<(GuestResponse, Arc<JobTrace>), (ServeError, Arc<JobTrace>)> {
        let inner = &self.inner;
        let trace = Arc::new(JobTrace::default());
        let overloaded = || ServeError::Overloaded {
            workers: inner.workers,
            queue: inner.queue,
        };
        let pending: usize = inner
            .lanes
            .iter()
            .map(|lane| lane.pending.load(Ordering::Relaxed))
            .sum();
        if pending >= inner.workers + inner.queue {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err((overloaded(), trace));
        }
        let lane = &inner.lanes[inner.pick_lane()];
        let (tx, rx) = oneshot::channel();
        let job = Job {
            request,
            scheme,
            reply: Arc::new(Mutex::new(Some(tx))),
            trace: trace.clone(),
        };
        lane.pending.fetch_add(1, Ordering::Relaxed);
        if lane.jobs.try_send(job).is_err() {
            // Unbounded, so never full: closed, because the server is shutting down.
            lane.pending.fetch_sub(1, Ordering::Relaxed);
            return Err((ServeError::ShuttingDown, trace));
        }
        match rx.await {
            Ok(Ok(response)) => Ok((response, trace)),
            Ok(Err(e)) => Err((e, trace)),
            Err(_) => Err((
                ServeError::Internal("the worker dropped the request".into()),
                trace,
            )),
        }
    }

    /// Replaces the running version with `version`, make-before-break.
    ///
    /// Instantiates one instance per worker first; if that fails the old version keeps
    /// serving and the error is returned. Returns once every worker has moved over, or after
    /// `drain_wait`, reporting how many were still finishing old requests.
    pub async fn swap(&self, version: Version, drain_wait: Duration) -> Result<SwapReport> {
        let inner = &self.inner;
        let _one_at_a_time = inner.swapping.lock().await;
        let id = version.id.clone();
        let next = Arc::new(
            Generation::prepare(
                version,
                &inner.spec,
                inner.workers + STEADY_SPARES,
                inner.workers,
            )
            .await
            .context("cannot instantiate the new component")?,
        );
        let old = inner.generation.send_replace(next.clone());
        old.retire();
        tokio::spawn(inner.clone().run_spawner(next.clone()));
        let all_moved = next.adopted_all.notified();
        let still_draining = if next.adopted.load(Ordering::Acquire) >= inner.workers {
            0
        } else {
            let _ = tokio::time::timeout(drain_wait, all_moved).await;
            inner
                .workers
                .saturating_sub(next.adopted.load(Ordering::Acquire))
        };
        Ok(SwapReport {
            version: id,
            still_draining,
        })
    }

    /// Stops taking requests: workers exit once the queue is empty.
    pub fn close(&self) {
        for lane in &self.inner.lanes {
            lane.jobs.close();
        }
        self.inner.generation.borrow().retire();
    }
}

impl Generation {
    /// Loads `ready` instances of `version` into a new generation whose spare channel holds
    /// up to `capacity`.
    async fn prepare(
        version: Version,
        spec: &InstanceSpec,
        capacity: usize,
        ready: usize,
    ) -> Result<Generation> {
        let (spares_tx, spares) = async_channel::bounded(capacity);
        for _ in 0..ready {
            let instance = Instance::new(&version, spec).await?;
            spares_tx
                .try_send(instance)
                .expect("capacity covers the initial instances");
        }
        Ok(Generation {
            version,
            spares,
            spares_tx,
            taken: Notify::new(),
            retired: AtomicBool::new(false),
            adopted: AtomicUsize::new(0),
            adopted_all: Notify::new(),
        })
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.taken.notify_one();
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn adopt(&self, workers: usize) {
        if self.adopted.fetch_add(1, Ordering::AcqRel) + 1 == workers {
            self.adopted_all.notify_waiters();
        }
    }
}

/// The limits one instance drew for itself (jittered so that workers drift apart).
struct Drawn {
    recycle_at: Option<Instant>,
    memory_bytes: Option<u64>,
}

impl Inner {
    /// The lane for a new job: this thread's when one of its workers is free, else another
    /// thread's with a free worker, else this thread's (or, on a thread without workers of
    /// this component, the lane with the least work per worker).
    fn pick_lane(&self) -> usize {
        let own = Shards::current()
            .filter(|&shard| self.lanes.get(shard).is_some_and(|lane| lane.workers > 0));
        if let Some(shard) = own
            && self.lanes[shard].has_free_worker()
        {
            return shard;
        }
        if let Some(shard) = self.lanes.iter().position(Lane::has_free_worker) {
            return shard;
        }
        own.unwrap_or_else(|| {
            (0..self.lanes.len())
                .filter(|&shard| self.lanes[shard].workers > 0)
                .min_by_key(|&shard| {
                    let lane = &self.lanes[shard];
                    lane.pending.load(Ordering::Relaxed) / lane.workers
                })
                .expect("a pool has at least one worker")
        })
    }

    fn draw(&self, instance: &Instance) -> Drawn {
        let l = &self.lifecycle;
        let jitter = |scale: f64| {
            if l.jitter > 0.0 {
                1.0 + rand::random_range(-l.jitter..l.jitter) * scale
            } else {
                1.0
            }
        };
        let recycle_at = l.max_lifetime.map(|life| {
            let drawn = life.mul_f64(jitter(1.0)).max(l.min_lifetime);
            instance.born + drawn
        });
        // Memory limits only jitter downwards: the configured value stays a ceiling.
        let memory_bytes = l
            .reload_on_memory_bytes
            .map(|m| (m as f64 * (1.0 - (jitter(1.0) - 1.0).abs())) as u64);
        Drawn {
            recycle_at,
            memory_bytes,
        }
    }

    async fn run_worker(self: Arc<Self>, id: usize, shard: usize, mut instance: Instance) {
        let stats = &self.stats.workers[id - 1];
        let lane = &self.lanes[shard];
        instance.assign(id);
        stats.last_spawn.store(unix_now(), Ordering::Relaxed);
        stats
            .memory_bytes
            .store(instance.memory_bytes(), Ordering::Relaxed);
        let mut generation = self.generation.subscribe();
        let mut drawn = self.draw(&instance);
        loop {
            let job = tokio::select! {
                biased;
                job = lane.jobs_rx.recv() => match job {
                    Ok(job) => job,
                    Err(_) => break,
                },
                changed = generation.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.is_stale(&instance) {
                        instance = self.replace(id, instance, Recycle::Swap, true).await;
                        drawn = self.draw(&instance);
                    }
                    continue;
                }
                () = sleep_until(drawn.recycle_at) => {
                    let before = instance.born;
                    instance = self.replace(id, instance, Recycle::Lifetime, false).await;
                    drawn = if instance.born == before {
                        Drawn { recycle_at: Some(Instant::now() + RETRY_RECYCLE), ..drawn }
                    } else {
                        self.draw(&instance)
                    };
                    continue;
                }
            };
            if job
                .reply
                .lock()
                .map(|r| r.as_ref().is_none_or(|s| s.is_closed()))
                .unwrap_or(true)
            {
                // The client left while the job was queued: don't run it.
                lane.pending.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if self.is_stale(&instance) {
                instance = self.replace(id, instance, Recycle::Swap, true).await;
                drawn = self.draw(&instance);
            }
            job.trace.worker.store(id, Ordering::Relaxed);
            stats.busy.store(true, Ordering::Relaxed);
            let started = Instant::now();
            // Kept for the log line if the request goes wrong (a refcount, not a copy).
            let (method, uri) = (job.request.method().clone(), job.request.uri().clone());
            let outcome = instance
                .serve(
                    job.request,
                    job.scheme,
                    job.reply.clone(),
                    self.spec.request_timeout,
                )
                .await;
            stats.busy.store(false, Ordering::Relaxed);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            stats
                .instance_requests
                .store(instance.served, Ordering::Relaxed);
            stats
                .memory_bytes
                .store(instance.memory_bytes(), Ordering::Relaxed);
            stats
                .busy_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);

            let reason = match outcome {
                Served::Ok => self.due(&instance, &drawn),
                Served::NoResponse => {
                    tracing::warn!(
                        route = &*self.route,
                        worker = id,
                        %method,
                        %uri,
                        "guest returned without a response; replacing its instance"
                    );
                    Some(Recycle::NoResponse)
                }
                Served::Trapped(trap) => {
                    tracing::warn!(
                        route = &*self.route,
                        worker = id,
                        %method,
                        %uri,
                        reason = %trap,
                        "guest trapped"
                    );
                    Some(Recycle::Trap)
                }
                Served::TimedOut => {
                    tracing::warn!(
                        route = &*self.route,
                        worker = id,
                        %method,
                        %uri,
                        timeout = ?self.spec.request_timeout,
                        "guest ran past the request timeout and was interrupted"
                    );
                    Some(Recycle::Timeout)
                }
            };
            if reason == Some(Recycle::Timeout) {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(
                reason,
                Some(Recycle::Trap | Recycle::Timeout | Recycle::NoResponse)
            ) {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                job.trace.failed.store(true, Ordering::Release);
            }
            // Any reply not yet delivered was delivered by `serve`; drop ours before the
            // instance so that a cut-short body is already marked as failed.
            drop(job.reply);
            if let Some(reason) = reason {
                instance = self.replace(id, instance, reason, true).await;
                drawn = self.draw(&instance);
            }
            // Free for the next job only now, with a fresh instance if this one was spent.
            lane.pending.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::debug!(route = &*self.route, worker = id, "worker stopped");
    }

    /// Whether `instance` must be replaced after a healthy request, and why.
    fn due(&self, instance: &Instance, drawn: &Drawn) -> Option<Recycle> {
        let l = &self.lifecycle;
        if l.max_requests > 0 && instance.served >= l.max_requests {
            return Some(Recycle::Requests);
        }
        let old_enough = instance.born.elapsed() >= l.min_lifetime;
        if old_enough
            && drawn
                .memory_bytes
                .is_some_and(|m| instance.memory_bytes() > m)
        {
            return Some(Recycle::Memory);
        }
        if drawn.recycle_at.is_some_and(|at| Instant::now() >= at) {
            return Some(Recycle::Lifetime);
        }
        None
    }

    fn is_stale(&self, instance: &Instance) -> bool {
        !Arc::ptr_eq(&instance.version, &self.generation.borrow().version.id)
    }

    /// Gives worker `id` a fresh instance of the current generation and drops `old`, in that
    /// order. When `must` is false and no spare is ready, keeps `old` instead of waiting.
    async fn replace(&self, id: usize, old: Instance, reason: Recycle, must: bool) -> Instance {
        let generation = self.generation.borrow().clone();
        let fresh = match generation.spares.try_recv() {
            Ok(fresh) => Some(fresh),
            // No spare ready (the spawner lags, e.g. with `max-requests = 1`): build one here
            // rather than wait for a hand-off from the control thread and back.
            Err(_) if must => match self.instantiate(&generation).await {
                Ok(fresh) => Some(fresh),
                Err(_) => generation.spares.recv().await.ok(),
            },
            Err(_) => None,
        };
        let Some(fresh) = fresh else {
            return old;
        };
        generation.taken.notify_one();
        if !Arc::ptr_eq(&fresh.version, &old.version) {
            generation.adopt(self.workers);
        }
        fresh.assign(id);
        let stats = &self.stats.workers[id - 1];
        stats.respawns.fetch_add(1, Ordering::Relaxed);
        stats.last_spawn.store(unix_now(), Ordering::Relaxed);
        stats.instance_requests.store(0, Ordering::Relaxed);
        stats
            .memory_bytes
            .store(fresh.memory_bytes(), Ordering::Relaxed);
        self.stats.recycles[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            route = &*self.route,
            worker = id,
            reason = reason.as_str(),
            served = old.served,
            age_ms = old.born.elapsed().as_millis() as u64,
            memory_bytes = old.memory_bytes(),
            version = fresh.version.short(),
            "recycled instance"
        );
        drop(old);
        fresh
    }

    /// A new instance of `generation`, counted in the instantiation metrics.
    async fn instantiate(&self, generation: &Generation) -> Result<Instance> {
        let started = Instant::now();
        let instance = Instance::new(&generation.version, &self.spec).await?;
        let micros = started.elapsed().as_micros() as u64;
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .instantiation_micros
            .fetch_add(micros, Ordering::Relaxed);
        Ok(instance)
    }

    /// Keeps `generation`'s spare channel topped up until it is retired.
    async fn run_spawner(self: Arc<Self>, generation: Arc<Generation>) {
        loop {
            while !generation.is_retired() && generation.spares.len() < STEADY_SPARES {
                match self.instantiate(&generation).await {
                    Ok(instance) => {
                        if generation.spares_tx.send(instance).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            route = &*self.route,
                            error = format!("{e:#}"),
                            "cannot instantiate a spare instance; retrying"
                        );
                        tokio::time::sleep(SPAWN_BACKOFF).await;
                    }
                }
            }
            if generation.is_retired() {
                // Dropping the spares frees their pooling-allocator slots.
                while generation.spares.try_recv().is_ok() {}
                return;
            }
            generation.taken.notified().await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
