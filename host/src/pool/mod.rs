//! The workers of one component: N long-lived tasks on the event-loop threads, each owning one
//! guest instance at a time, fed through one lane per thread under one admission bound, with
//! replacement instances built ahead of need.
//!
//! # Layout
//! - this file: [`Pool`] (dispatch, swap, close), the lanes, and the worker loop (mechanism
//!   only: take a job, serve it, record it, ask the policy, maybe replace the instance);
//! - [`admission`]: the admission bound as an RAII slot moved into the job;
//! - [`policy`]: when an instance is recycled, as pure functions of limits, facts and instants;
//! - [`generation`]: one loaded version and its ready spares (make-before-break, hot swap);
//! - [`body`]: the response body that reports back bytes, failures and the end of the response;
//! - [`stats`]: the live counters read by metrics and `/stats`.
//!
//! # Design
//! - **Lanes.** Workers are dealt out over the event-loop threads ([`crate::shards`]); the
//!   workers of one thread share a lane: a channel of jobs they are parked on. A request goes
//!   to its own thread's lane when a worker there is free, else to a lane of another thread
//!   with a free worker, else it waits in its own thread's lane. So in the common case the
//!   connection task and the worker task run on the same thread, and a request never waits
//!   while a worker elsewhere is idle.
//! - **Admission.** At most `workers × per-instance + queue` requests are held; past that the
//!   client gets 503 at once. One request per instance at a time, as in uWSGI, for WASI 0.2
//!   components; up to `instance-concurrency` for WASI 0.3 ones, whose worker then serves
//!   several jobs at once inside the instance's event loop ([`Worker::serve_concurrently`]).
//! - **Hot swap.** [`Pool::swap`] publishes a new generation; each worker moves over as soon as
//!   it is idle, and re-checks the generation after taking a job, so no request dequeued after
//!   the publish runs on the old version, and a request in flight finishes where it started.
//!
//! `wasmtime-wasi-http`'s `handler` module (a reuse-aware dispatcher with per-worker accept
//! and expiry hooks) was evaluated and not used: in 48.x it is gated behind the experimental
//! `component-model-async` feature, is built around `run_concurrent` and several requests per
//! instance, and has no notion of ready spares, exact request counts or versioned swaps,
//! which are what this module exists for.

mod admission;
mod body;
mod generation;
pub mod policy;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::sync::watch;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

pub use body::{Completion, PoolBody};
use stats::LaneStats;
pub use stats::{PoolStats, WorkerStats, unix_now};

use crate::config::{Lifecycle, RouteConfig};
use crate::engine::{Version, VersionId, World};
use crate::error::ServeError;
use crate::guest::{self, GuestRequest, Instance, Reply, Setup};
use crate::outcome::{Outcome, Recycle};
use crate::request_id::RequestId;
use crate::shards::Shards;
use admission::Admission;
use body::JobShared;
use generation::Generation;
use policy::{Drawn, Facts};

/// Pause after a failed instantiation before a worker or the spawner tries again.
const SPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// The most requests a WASI 0.3 instance serving several at once is given before it is
/// recycled (reason `requests`), whatever `max-requests` says (a lower one wins). wasmtime
/// 48 does not free ~2 component-model handles per request served alongside others on one
/// instance (measured: with the store's cap lowered to 1,000 an instance trapped after 488
/// requests at `instance-concurrency = 8`, and served 3,000 without a trap at 1); with the
/// default cap of 100,000 live handles such an instance trapped after ~50,000 requests under
/// steady load. A fresh instance every 10,000 requests keeps 5× below the cap and costs one
/// instantiation (tens of µs, off the request path) per 10,000 requests.
const CONCURRENT_MAX_REQUESTS: u64 = 10_000;

/// How long a swap waits for busy workers when the route has no request timeout.
const SWAP_WAIT_WITHOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// A request on its way to a worker.
struct Job {
    request: GuestRequest,
    scheme: Scheme,
    id: RequestId,
    reply: Reply,
    shared: Arc<JobShared>,
}

/// The workers of one component on one event-loop thread, and the jobs sent to them.
struct Lane {
    jobs: async_channel::Sender<Job>,
    jobs_rx: async_channel::Receiver<Job>,
    /// Workers on this lane.
    workers: usize,
    /// Admitted jobs of this lane not yet released (see [`admission`]).
    held: Arc<AtomicUsize>,
    /// The pool's counters, for the response bodies of this lane's requests (see
    /// [`LaneStats`]).
    stats: Arc<LaneStats>,
}

impl Lane {
    /// Whether a worker of this lane is free for one more job, each taking `per_instance`.
    fn has_free_worker(&self, per_instance: usize) -> bool {
        self.held.load(Ordering::Relaxed) < self.workers * per_instance
    }
}

/// How many requests one instance of `version` serves at once on `route`: its
/// `instance-concurrency` for a WASI 0.3 component, 1 for a WASI 0.2 one.
fn per_instance(route: &RouteConfig, version: &VersionId) -> usize {
    match version.world {
        World::P2 => 1,
        World::P3 => route.instance_concurrency,
    }
}

/// The workers of one component.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    setup: Setup,
    /// The event-loop threads, by shard index: where each thread's spares are built.
    threads: Vec<tokio::runtime::Handle>,
    /// One per event-loop thread, by shard index (a lane may have no workers).
    lanes: Vec<Lane>,
    generation: watch::Sender<Arc<Generation>>,
    /// Requests one instance of the current version serves at once (see [`per_instance`]).
    per_instance: AtomicUsize,
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
    /// Creates the pool and all its instances (one per worker), then starts the workers and
    /// the spare spawners on the event-loop threads. Fails if the
    /// component cannot be instantiated, before any port is bound.
    pub async fn start(setup: Setup, version: Version, shards: &Shards) -> Result<Pool> {
        let route = setup.route.clone();
        let workers = route.workers;
        let generation = Arc::new(
            Generation::prepare(version, &setup, shards.len())
                .await
                .with_context(|| {
                    format!("cannot instantiate the component for `{}`", route.prefix)
                })?,
        );
        let stats = Arc::new(PoolStats::new(workers));
        let lanes = (0..shards.len())
            .map(|shard| {
                // Unbounded: admission bounds what waits, over all lanes.
                let (jobs, jobs_rx) = async_channel::unbounded();
                Lane {
                    jobs,
                    jobs_rx,
                    workers: (1..=workers)
                        .filter(|&id| shards.of_worker(id) == shard)
                        .count(),
                    held: Arc::new(AtomicUsize::new(0)),
                    stats: Arc::new(LaneStats(stats.clone())),
                }
            })
            .collect();
        let inner = Arc::new(Inner {
            per_instance: AtomicUsize::new(per_instance(&route, &generation.version.id)),
            setup,
            threads: shards.handles().to_vec(),
            lanes,
            generation: watch::Sender::new(generation.clone()),
            swapping: tokio::sync::Mutex::new(()),
            stats,
        });
        for id in 1..=workers {
            let shard = shards.of_worker(id);
            let instance = generation
                .take_spare(shard)
                .expect("prepare() made one instance per worker");
            generation.adopt();
            let worker = Worker::new(id, shard, inner.clone(), instance);
            shards.handles()[shard].spawn(worker.run());
        }
        inner.keep_spares(&generation);
        Ok(Pool { inner })
    }

    /// The route this pool serves.
    pub fn route(&self) -> &RouteConfig {
        &self.inner.setup.route
    }

    /// What its instances are made with (a swap's warm-up instance too).
    pub fn setup(&self) -> &Setup {
        &self.inner.setup
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.setup.route.workers
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
    /// streams on). Fails at once with 503 when `workers × per-instance + queue` requests are
    /// already held.
    pub async fn dispatch(
        &self,
        request: GuestRequest,
        scheme: Scheme,
        id: RequestId,
    ) -> Result<hyper::Response<PoolBody>, ServeError> {
        let inner = &self.inner;
        let (workers, queue) = (inner.setup.route.workers, inner.setup.route.queue);
        let held: usize = inner
            .lanes
            .iter()
            .map(|l| l.held.load(Ordering::Relaxed))
            .sum();
        let per_instance = inner.per_instance.load(Ordering::Relaxed);
        if held >= workers * per_instance + queue {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::Overloaded { workers, queue });
        }
        let lane = &inner.lanes[inner.pick_lane()];
        let shared = Arc::new(JobShared {
            worker: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            admission: Admission::take(&lane.held),
        });
        let (reply, answer) = guest::reply();
        let job = Job {
            request,
            scheme,
            id,
            reply,
            shared: shared.clone(),
        };
        if lane.jobs.try_send(job).is_err() {
            // Unbounded, so never full: closed, because the server is shutting down.
            return Err(ServeError::ShuttingDown);
        }
        match answer.await {
            Ok(Ok(response)) => {
                Ok(response.map(|body| PoolBody::new(body, shared, lane.stats.clone())))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ServeError::Internal(
                "the worker dropped the request".into(),
            )),
        }
    }

    /// Replaces the running version with `version`, make-before-break.
    ///
    /// Instantiates one instance per worker first; if that fails the old version keeps
    /// serving and the error is returned. Returns once every worker has moved over, or after
    /// the route's request timeout, reporting how many were still finishing old requests.
    pub async fn swap(&self, version: Version) -> Result<SwapReport> {
        let inner = &self.inner;
        let _one_at_a_time = inner.swapping.lock().await;
        let id = version.id.clone();
        let next = Arc::new(
            Generation::prepare(version, &inner.setup, inner.threads.len())
                .await
                .context("cannot instantiate the new component")?,
        );
        (inner.per_instance).store(
            per_instance(&inner.setup.route, &next.version.id),
            Ordering::Relaxed,
        );
        let old = inner.generation.send_replace(next.clone());
        old.retire();
        inner.keep_spares(&next);
        let wait = inner
            .setup
            .route
            .lifecycle
            .request_timeout
            .unwrap_or(SWAP_WAIT_WITHOUT_TIMEOUT);
        Ok(SwapReport {
            version: id,
            still_draining: next.adopted_by_all(wait).await,
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

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("route", &self.inner.setup.route.prefix)
            .finish()
    }
}

impl Inner {
    /// The lane for a new job: this thread's when one of its workers is free, else another
    /// thread's with a free worker, else this thread's (or, on a thread without workers of
    /// this component, the lane with the least work per worker).
    fn pick_lane(&self) -> usize {
        let per_instance = self.per_instance.load(Ordering::Relaxed);
        let own = Shards::current()
            .filter(|&shard| self.lanes.get(shard).is_some_and(|lane| lane.workers > 0));
        if let Some(shard) = own
            && self.lanes[shard].has_free_worker(per_instance)
        {
            return shard;
        }
        if let Some(shard) = (self.lanes.iter()).position(|lane| lane.has_free_worker(per_instance))
        {
            return shard;
        }
        own.unwrap_or_else(|| {
            (0..self.lanes.len())
                .filter(|&shard| self.lanes[shard].workers > 0)
                .min_by_key(|&shard| {
                    let lane = &self.lanes[shard];
                    lane.held.load(Ordering::Relaxed) / lane.workers
                })
                .expect("a pool has at least one worker")
        })
    }

    /// A new instance of `generation`, counted in the instantiation metrics.
    async fn instantiate(&self, generation: &Generation) -> Result<Instance> {
        let started = Instant::now();
        let instance = Instance::new(&generation.version, &self.setup).await?;
        let micros = started.elapsed().as_micros() as u64;
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .instantiation_micros
            .fetch_add(micros, Ordering::Relaxed);
        Ok(instance)
    }

    /// Starts a spawner on each event-loop thread with workers of this component, to keep
    /// that thread's spares of `generation` topped up.
    fn keep_spares(self: &Arc<Self>, generation: &Arc<Generation>) {
        for (thread, lane) in self.lanes.iter().enumerate() {
            if lane.workers > 0 {
                let spawner = self.clone().spawn_spares(generation.clone(), thread);
                self.threads[thread].spawn(spawner);
            }
        }
    }

    /// Keeps `thread`'s spares of `generation` topped up until the generation is retired.
    async fn spawn_spares(self: Arc<Self>, generation: Arc<Generation>, thread: usize) {
        while !generation.is_retired() {
            if !generation.wants_spares(thread) {
                generation.spare_taken(thread).await;
                continue;
            }
            match self.instantiate(&generation).await {
                Ok(instance) => {
                    if generation.add_spare(thread, instance).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(
                        route = %self.setup.route.prefix,
                        error = format!("{e:#}"),
                        "cannot instantiate a spare instance; retrying"
                    );
                    tokio::time::sleep(SPAWN_BACKOFF).await;
                }
            }
        }
    }
}

/// One worker: one instance at a time, serving its lane's jobs.
struct Worker {
    id: usize,
    shard: usize,
    pool: Arc<Inner>,
    instance: Instance,
    drawn: Drawn,
    generation: watch::Receiver<Arc<Generation>>,
}

/// What wakes a worker.
#[expect(
    clippy::large_enum_variant,
    reason = "one event at a time on the worker's stack; boxing the job would allocate per request"
)]
enum Event {
    Job(Job),
    Swapped,
    LifetimeOver,
}

impl Worker {
    fn new(id: usize, shard: usize, pool: Arc<Inner>, instance: Instance) -> Worker {
        let generation = pool.generation.subscribe();
        let drawn = draw(&pool.setup.route, &instance);
        instance.assign(id);
        pool.stats.workers[id - 1].spawned(instance.memory_bytes());
        Worker {
            id,
            shard,
            pool,
            instance,
            drawn,
            generation,
        }
    }

    async fn run(mut self) {
        loop {
            let event = tokio::select! {
                biased;
                job = self.pool.lanes[self.shard].jobs_rx.recv() => match job {
                    Ok(job) => Event::Job(job),
                    Err(_) => break,
                },
                changed = self.generation.changed() => match changed {
                    Ok(()) => Event::Swapped,
                    Err(_) => break,
                },
                () = sleep_until(self.drawn.recycle_at) => Event::LifetimeOver,
            };
            match event {
                Event::Job(job) => self.serve(job).await,
                Event::Swapped if self.is_stale() => self.replace(Recycle::Swap).await,
                Event::Swapped => {}
                Event::LifetimeOver => self.recycle_if_spare_ready(),
            }
        }
        tracing::debug!(route = %self.pool.setup.route.prefix, worker = self.id, "worker stopped");
    }

    async fn serve(&mut self, job: Job) {
        if job.reply.is_abandoned() {
            return; // The client left while the job was queued: don't run it.
        }
        if self.is_stale() {
            self.replace(Recycle::Swap).await;
        }
        if self.instance.world() == World::P3 && self.pool.setup.route.instance_concurrency > 1 {
            return self.serve_concurrently(job).await;
        }
        job.shared.worker.store(self.id, Ordering::Relaxed);
        let stats = &self.pool.stats.workers[self.id - 1];
        stats.busy.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let (method, uri) = (job.request.method().clone(), job.request.uri().clone());
        let timeout = self.pool.setup.route.lifecycle.request_timeout;
        let outcome = (self.instance)
            .serve(job.request, job.scheme, &job.reply, &job.id, timeout)
            .await;
        stats.busy.store(false, Ordering::Relaxed);
        let done = Served {
            outcome,
            started,
            method,
            uri,
            id: job.id,
            shared: job.shared,
        };
        let facts = Facts {
            born: self.instance.born(),
            served: self.instance.served(),
            memory_bytes: self.instance.memory_bytes(),
        };
        record(&self.pool, self.id, &facts, &done);
        self.learn_serves_once(&done.outcome);
        let reason = done.settle(&self.limits(), &self.drawn, &facts);
        drop(done);
        if let Some(reason) = reason {
            self.replace(reason).await;
        }
    }

    /// Serves `first` and the jobs it can take alongside, up to `instance-concurrency` at
    /// once, inside the WASI 0.3 instance's event loop; leaves the loop when nothing is in
    /// flight. Stops taking jobs once the instance must be recycled (a request's outcome or
    /// the policy says so) or a swap published a newer version, and replaces the instance
    /// once its requests are over: a timed-out request's instance-mates finish first.
    async fn serve_concurrently(&mut self, first: Job) {
        let route = &self.pool.setup.route;
        let (limit, timeout) = (route.instance_concurrency, route.lifecycle.request_timeout);
        let jobs = self.pool.lanes[self.shard].jobs_rx.clone();
        let limits = self.limits();
        let (pool, id, drawn) = (&*self.pool, self.id, &self.drawn);
        let (born, version) = (self.instance.born(), self.instance.version().clone());
        let generation = &self.generation;
        let stats = &pool.stats.workers[id - 1];
        stats.busy.store(true, Ordering::Relaxed);
        // Outside the event loop, so that a trap (which ends the loop and drops its
        // requests) can still answer them.
        let mut in_flight: Vec<(Reply, Arc<JobShared>)> = Vec::new();
        // A job taken after a swap: the next instance serves it.
        let mut held: Option<Job> = None;
        let result = self
            .instance
            .concurrently(async |c| {
                let mut running = futures::stream::FuturesUnordered::new();
                let (mut retire, mut closed) = (None, false);
                let mut next = Some(first);
                // Requests given to the instance, counted when taken: `c.served()` counts a
                // request only once its future is first polled, and the `select!` below keeps
                // waiting for a job with the `can_take` it was entered with.
                let mut given = c.served();
                loop {
                    if let Some(job) = next.take() {
                        job.shared.worker.store(id, Ordering::Relaxed);
                        in_flight.push((job.reply.clone(), job.shared.clone()));
                        running.push(serve_job(c, job, timeout));
                        given += 1;
                    }
                    if running.is_empty() {
                        break retire;
                    }
                    // `max-requests` is exact here too: an instance is never given more.
                    let below_max = limits.max_requests == 0 || given < limits.max_requests;
                    let can_take = retire.is_none() && !closed && below_max && running.len() < limit;
                    tokio::select! {
                        biased;
                        Some(done) = futures::StreamExt::next(&mut running) => {
                            in_flight.retain(|(_, shared)| !Arc::ptr_eq(shared, &done.shared));
                            let facts = Facts { born, served: c.served(), memory_bytes: c.memory_bytes() };
                            record(pool, id, &facts, &done);
                            retire = retire.or(done.settle(&limits, drawn, &facts));
                        }
                        job = jobs.recv(), if can_take => match job {
                            Ok(job) if job.reply.is_abandoned() => {}
                            Ok(job) if !Arc::ptr_eq(&version, &generation.borrow().version.id) => {
                                held = Some(job);
                                retire = Some(Recycle::Swap);
                            }
                            Ok(job) => next = Some(job),
                            Err(_) => closed = true,
                        },
                    }
                }
            })
            .await;
        stats.busy.store(false, Ordering::Relaxed);
        let reason = result.unwrap_or_else(|e| {
            // The event loop of a trapped instance is over, and so are its requests.
            let outcome = guest::trapped(&e);
            let lost = in_flight.len();
            for (reply, shared) in in_flight.drain(..) {
                shared.failed.store(true, Ordering::Release);
                reply.send(Err(outcome.error().unwrap_or(ServeError::NoResponse)));
                shared.admission.release();
            }
            stats.failures.fetch_add(lost as u64, Ordering::Relaxed);
            if let Outcome::Trapped { detail, .. } = &outcome {
                tracing::warn!(route = %route.prefix, worker = id, requests = lost, reason = %detail, "guest trapped; its requests in flight on this instance failed");
            }
            Some(Recycle::Trap)
        });
        if let Some(reason) = reason {
            self.replace(reason).await;
        }
        if let Some(job) = held {
            Box::pin(self.serve(job)).await;
        }
    }
}

/// One request's end, as its worker records and settles it.
struct Served {
    outcome: Outcome,
    started: Instant,
    method: http::Method,
    uri: http::Uri,
    id: RequestId,
    shared: Arc<JobShared>,
}

impl Served {
    /// Whether the instance must go after this request (its outcome says so, else the policy
    /// on `facts`). If so and it failed, its body (if cut short) is marked to end as an
    /// error, before the instance goes. Then the admission slot goes back: the worker is free
    /// for the client's next request from here, not after a replacement.
    fn settle(&self, limits: &Lifecycle, drawn: &Drawn, facts: &Facts) -> Option<Recycle> {
        let reason = (self.outcome.recycle())
            .or_else(|| policy::after_request(limits, drawn, facts, Instant::now()));
        if reason.is_some_and(Recycle::is_failure) {
            self.shared.failed.store(true, Ordering::Release);
        }
        self.shared.admission.release();
        reason
    }
}

/// Serves one job on a WASI 0.3 instance's event loop.
async fn serve_job(c: &guest::Concurrent<'_>, job: Job, timeout: Option<Duration>) -> Served {
    let started = Instant::now();
    let (method, uri) = (job.request.method().clone(), job.request.uri().clone());
    let outcome = c
        .serve(job.request, job.scheme, &job.reply, &job.id, timeout)
        .await;
    Served {
        outcome,
        started,
        method,
        uri,
        id: job.id,
        shared: job.shared,
    }
}

/// Updates worker `worker`'s counters after a request and logs a failure (once, here, where
/// the route, worker, request and reason are all known). `facts` are its instance's, after
/// the request.
fn record(pool: &Inner, worker: usize, facts: &Facts, done: &Served) {
    let Served {
        outcome,
        started,
        method,
        uri,
        id,
        ..
    } = done;
    let stats = &pool.stats.workers[worker - 1];
    stats.requests.fetch_add(1, Ordering::Relaxed);
    (stats.instance_requests).store(facts.served, Ordering::Relaxed);
    (stats.memory_bytes).store(facts.memory_bytes, Ordering::Relaxed);
    (stats.busy_micros).fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let route = &*pool.setup.route.prefix;
    // The id is formatted only for a failure, not for every request.
    match outcome {
        Outcome::Answered | Outcome::Refused(_) => return,
        Outcome::Trapped { detail, .. } => {
            tracing::warn!(route, worker, %method, %uri, request_id = id.to_string(), reason = %detail, "guest trapped");
        }
        Outcome::TimedOut(limit) => {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(route, worker, %method, %uri, request_id = id.to_string(), timeout = ?limit, "guest ran past the request timeout and was interrupted");
        }
        Outcome::NoResponse => {
            tracing::warn!(route, worker, %method, %uri, request_id = id.to_string(), "guest returned without a response; replacing its instance");
        }
    }
    stats.failures.fetch_add(1, Ordering::Relaxed);
}

impl Worker {
    /// The recycling limits for the current instance: a version that serves one request per
    /// instance gets a fresh instance per request, whatever `max-requests` says; a WASI 0.3
    /// instance serving several at once at most [`CONCURRENT_MAX_REQUESTS`].
    fn limits(&self) -> Lifecycle {
        let mut limits = self.pool.setup.route.lifecycle;
        if self.instance.version().serves_once.load(Ordering::Relaxed) {
            limits.max_requests = 1;
        }
        if self.instance.world() == World::P3 && self.pool.setup.route.instance_concurrency > 1 {
            limits.max_requests = match limits.max_requests {
                0 => CONCURRENT_MAX_REQUESTS,
                n => n.min(CONCURRENT_MAX_REQUESTS),
            };
        }
        limits
    }

    /// An instance that answered its first request and returned without a response on its
    /// second is a guest that serves once (a JavaScript engine whose fetch event is spent):
    /// from now on every request of this version gets a fresh instance.
    fn learn_serves_once(&self, outcome: &Outcome) {
        let version = self.instance.version();
        if matches!(outcome, Outcome::NoResponse)
            && self.instance.served() == 2
            && !version.serves_once.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(route = %self.pool.setup.route.prefix, version = version.short(), "the guest returned without a response on an instance's second request: it serves one request per instance; each request now gets a fresh instance (as with max-requests = 1)");
        }
    }

    fn is_stale(&self) -> bool {
        !Arc::ptr_eq(
            self.instance.version(),
            &self.generation.borrow().version.id,
        )
    }

    /// Past its lifetime an idle instance is replaced only by a ready spare: building one
    /// here would hold the worker, and the spawner will have one soon.
    fn recycle_if_spare_ready(&mut self) {
        let generation = self.generation.borrow().clone();
        match generation.take_spare(self.shard) {
            Some(fresh) => self.install(fresh, &generation, Recycle::Lifetime),
            None => self.drawn.recycle_at = Some(Instant::now() + policy::RETRY_RECYCLE),
        }
    }

    /// Gives the worker a fresh instance of the current generation, then drops the old one
    /// (make-before-break). With no spare ready it builds one itself rather than wait for its
    /// thread's spawner; if that fails it waits for a spare of the current generation, or
    /// for a newer generation, never for a retired one.
    async fn replace(&mut self, reason: Recycle) {
        loop {
            let generation = self.generation.borrow_and_update().clone();
            if let Some(fresh) = generation.take_spare(self.shard) {
                return self.install(fresh, &generation, reason);
            }
            match self.pool.instantiate(&generation).await {
                Ok(fresh) => return self.install(fresh, &generation, reason),
                Err(e) => tracing::error!(
                    route = %self.pool.setup.route.prefix,
                    worker = self.id,
                    error = format!("{e:#}"),
                    "cannot instantiate a replacement; waiting for a spare"
                ),
            }
            tokio::select! {
                spare = generation.next_spare(self.shard) => if let Some(fresh) = spare {
                    return self.install(fresh, &generation, reason);
                },
                _ = self.generation.changed() => {}
                () = tokio::time::sleep(SPAWN_BACKOFF) => {}
            }
        }
    }

    fn install(&mut self, fresh: Instance, generation: &Generation, reason: Recycle) {
        if !Arc::ptr_eq(fresh.version(), self.instance.version()) {
            generation.adopt();
        }
        fresh.assign(self.id);
        self.pool.stats.workers[self.id - 1].respawned(fresh.memory_bytes());
        self.pool.stats.recycles[reason as usize].fetch_add(1, Ordering::Relaxed);
        let old = std::mem::replace(&mut self.instance, fresh);
        self.drawn = draw(&self.pool.setup.route, &self.instance);
        let (route, worker, served) = (&*self.pool.setup.route.prefix, self.id, old.served());
        let age_ms = old.born().elapsed().as_millis() as u64;
        let (memory_bytes, version) = (old.memory_bytes(), self.instance.version().short());
        // A recycle at `max-requests` is routine (with `max-requests = 1`, one per request):
        // counted, and logged only at debug level.
        let (routine, reason) = (reason == Recycle::Requests, reason.as_str());
        if routine {
            tracing::debug!(route, worker, reason, served, age_ms, memory_bytes, %version, "recycled instance");
        } else {
            tracing::info!(route, worker, reason, served, age_ms, memory_bytes, %version, "recycled instance");
        }
    }
}

/// The limits a new instance of `route` draws, with the process's random source.
fn draw(route: &RouteConfig, instance: &Instance) -> Drawn {
    policy::draw(&route.lifecycle, instance.born(), || {
        rand::random_range(-1.0..1.0)
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
