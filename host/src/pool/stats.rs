//! Live counters of a pool and its workers, read by the metrics and the stats endpoints.
//! The request path only ever touches its own worker's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::outcome::Recycle;

/// Live counters of one worker.
///
/// Aligned to its own cache lines: the workers' counters sit side by side in
/// [`PoolStats::workers`], and workers on different event-loop threads updating neighbouring
/// counters with every request would pass the line between the cores.
#[derive(Debug, Default)]
#[repr(align(128))]
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
    /// Requests that ended in a trap, timeout or no response.
    pub failures: AtomicU64,
    /// Requests interrupted by the request timeout (uWSGI's `harakiri_count`).
    pub timeouts: AtomicU64,
    /// Response body bytes sent for requests this worker served.
    pub tx_bytes: AtomicU64,
}

impl WorkerStats {
    /// Records that the worker was given a fresh instance using `memory_bytes`.
    pub(super) fn respawned(&self, memory_bytes: u64) {
        self.respawns.fetch_add(1, Ordering::Relaxed);
        self.spawned(memory_bytes);
    }

    /// Records the worker's current instance (its first, or a replacement).
    pub(super) fn spawned(&self, memory_bytes: u64) {
        self.last_spawn.store(unix_now(), Ordering::Relaxed);
        self.instance_requests.store(0, Ordering::Relaxed);
        self.memory_bytes.store(memory_bytes, Ordering::Relaxed);
    }
}

/// Live counters of one component's pool.
#[derive(Debug)]
pub struct PoolStats {
    /// One entry per worker, index = id - 1.
    pub workers: Vec<WorkerStats>,
    /// Replacements per [`Recycle`] reason, indexed by `reason as usize`.
    pub recycles: [AtomicU64; Recycle::COUNT],
    /// Requests refused with 503 because the queue was full.
    pub rejected: AtomicU64,
    /// Instances created after startup: spares, and replacements built by a worker that
    /// found no spare ready.
    pub instantiations: AtomicU64,
    /// Total time those instantiations took, microseconds.
    pub instantiation_micros: AtomicU64,
}

impl PoolStats {
    /// Counters for `workers` workers, all zero.
    pub(super) fn new(workers: usize) -> PoolStats {
        PoolStats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            recycles: Default::default(),
            rejected: AtomicU64::new(0),
            instantiations: AtomicU64::new(0),
            instantiation_micros: AtomicU64::new(0),
        }
    }

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
        self.recycles[reason as usize].load(Ordering::Relaxed)
    }

    /// The counters of worker `id` (1-based), if it exists.
    pub fn worker(&self, id: usize) -> Option<&WorkerStats> {
        self.workers.get(id.wrapping_sub(1))
    }
}

/// A lane's handle on its pool's counters, which each of the lane's response bodies holds a
/// clone of: a clone of the pool's own `Arc<PoolStats>` per request would be a reference
/// count that every event-loop thread increments and decrements, while a lane's handle is
/// touched by its own thread.
#[derive(Debug)]
pub(super) struct LaneStats(pub Arc<PoolStats>);

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
