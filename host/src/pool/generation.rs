//! A generation: one loaded component version and its supplies of ready spare instances.
//!
//! Recycling is make-before-break: a worker takes a ready spare and only then drops its old
//! instance. A swap builds a new generation pre-filled with one instance per worker, publishes
//! it, and the old one is retired: its spare channels close, so that no worker waits on them.
//!
//! Spares are kept per event-loop thread: each thread's workers take from their own supply,
//! refilled by a spawner task on that thread. A spawner on the control plane (the first
//! design) cost a cross-thread wake-up per recycle and handed over instances built on another
//! core: with `max-requests = 1`, spawners on the workers' own threads served 22% more
//! keep-alive requests (wrk -c500, A/B ×3: 37–39k → 46–48k req/s).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Notify;

use crate::engine::Version;
use crate::guest::{Instance, Setup};
use crate::shards;

/// Ready spares kept per event-loop thread (with workers of the component) in steady state:
/// enough for recycles to be instant, few enough that idle spares cost little memory.
pub const STEADY_SPARES: usize = 1;

/// One loaded version and its ready instances.
pub struct Generation {
    /// The version its instances are made from.
    pub version: Version,
    /// By event-loop thread.
    supplies: Vec<Supply>,
    retired: AtomicBool,
    /// Workers of the pool: how many must adopt this generation for a swap to be complete.
    workers: usize,
    adopted: AtomicUsize,
    adopted_all: Notify,
}

/// The ready instances of one event-loop thread.
struct Supply {
    spares: async_channel::Receiver<Instance>,
    spares_tx: async_channel::Sender<Instance>,
    /// Signalled when a spare is taken, or when the generation is retired.
    taken: Notify,
}

impl Generation {
    /// A generation of `version` holding one ready instance per worker, each in the supply of
    /// its worker's thread (of `threads`), with room for [`STEADY_SPARES`] more per thread.
    pub async fn prepare(version: Version, setup: &Setup, threads: usize) -> Result<Generation> {
        let workers = setup.route.workers;
        let thread_of_worker = |worker| shards::shard_of_worker(worker, threads);
        let supplies: Vec<Supply> = (0..threads)
            .map(|thread| {
                let own = (1..=workers).filter(|&w| thread_of_worker(w) == thread);
                let (spares_tx, spares) = async_channel::bounded(own.count() + STEADY_SPARES);
                Supply {
                    spares,
                    spares_tx,
                    taken: Notify::new(),
                }
            })
            .collect();
        for worker in 1..=workers {
            let instance = Instance::new(&version, setup).await?;
            supplies[thread_of_worker(worker)]
                .spares_tx
                .try_send(instance)
                .expect("capacity covers the initial instances");
        }
        Ok(Generation {
            version,
            supplies,
            retired: AtomicBool::new(false),
            workers,
            adopted: AtomicUsize::new(0),
            adopted_all: Notify::new(),
        })
    }

    /// A ready spare of event-loop thread `thread`, if there is one now.
    pub fn take_spare(&self, thread: usize) -> Option<Instance> {
        let supply = &self.supplies[thread];
        let spare = supply.spares.try_recv().ok()?;
        supply.taken.notify_one();
        Some(spare)
    }

    /// The next spare of `thread`, waiting for its spawner; `None` once the generation is
    /// retired.
    pub async fn next_spare(&self, thread: usize) -> Option<Instance> {
        let supply = &self.supplies[thread];
        let spare = supply.spares.recv().await.ok()?;
        supply.taken.notify_one();
        Some(spare)
    }

    /// Whether `thread` has fewer than [`STEADY_SPARES`] ready.
    pub fn wants_spares(&self, thread: usize) -> bool {
        !self.is_retired() && self.supplies[thread].spares.len() < STEADY_SPARES
    }

    /// Adds a spare made by `thread`'s spawner; gives it back if the generation was retired.
    pub async fn add_spare(&self, thread: usize, instance: Instance) -> Result<(), Instance> {
        (self.supplies[thread].spares_tx.send(instance).await).map_err(|e| e.0)
    }

    /// Waits until a spare of `thread` is taken (or the generation is retired).
    pub async fn spare_taken(&self, thread: usize) {
        self.supplies[thread].taken.notified().await;
    }

    /// Stops supplying instances: waiting workers wake up, spares are dropped (freeing their
    /// pooling-allocator slots).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        for supply in &self.supplies {
            supply.spares_tx.close();
            while supply.spares.try_recv().is_ok() {}
            supply.taken.notify_one();
        }
    }

    /// Whether a newer generation replaced it, or the pool closed.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Records that one more worker serves from this generation.
    pub fn adopt(&self) {
        if self.adopted.fetch_add(1, Ordering::AcqRel) + 1 == self.workers {
            self.adopted_all.notify_waiters();
        }
    }

    /// Waits up to `limit` for every worker to adopt it; returns how many had not.
    pub async fn adopted_by_all(&self, limit: Duration) -> usize {
        let all = self.adopted_all.notified();
        if self.adopted.load(Ordering::Acquire) < self.workers {
            let _ = tokio::time::timeout(limit, all).await;
        }
        self.workers
            .saturating_sub(self.adopted.load(Ordering::Acquire))
    }
}
