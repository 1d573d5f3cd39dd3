//! A generation: one loaded component version and its supply of ready spare instances.
//!
//! Recycling is make-before-break: a worker takes a ready spare and only then drops its old
//! instance. A swap builds a new generation pre-filled with one instance per worker, publishes
//! it, and the old one is retired: its spare channel closes, so that no worker waits on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Notify;

use crate::engine::Version;
use crate::guest::{Instance, Setup};

/// Ready spares kept per component in steady state: enough for recycles to be instant, few
/// enough that idle spares cost little memory.
pub const STEADY_SPARES: usize = 2;

/// One loaded version and its ready instances.
pub struct Generation {
    /// The version its instances are made from.
    pub version: Version,
    spares: async_channel::Receiver<Instance>,
    spares_tx: async_channel::Sender<Instance>,
    /// Signalled when a spare is taken, or when the generation is retired.
    taken: Notify,
    retired: AtomicBool,
    /// Workers of the pool: how many must adopt this generation for a swap to be complete.
    workers: usize,
    adopted: AtomicUsize,
    adopted_all: Notify,
}

impl Generation {
    /// A generation of `version` holding one ready instance per worker (`workers`), with
    /// room for [`STEADY_SPARES`] more.
    pub async fn prepare(version: Version, setup: &Setup, workers: usize) -> Result<Generation> {
        let (spares_tx, spares) = async_channel::bounded(workers + STEADY_SPARES);
        for _ in 0..workers {
            let instance = Instance::new(&version, setup).await?;
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
            workers,
            adopted: AtomicUsize::new(0),
            adopted_all: Notify::new(),
        })
    }

    /// A ready spare, if there is one now.
    pub fn take_spare(&self) -> Option<Instance> {
        let spare = self.spares.try_recv().ok()?;
        self.taken.notify_one();
        Some(spare)
    }

    /// The next spare, waiting for the spawner; `None` once the generation is retired.
    pub async fn next_spare(&self) -> Option<Instance> {
        let spare = self.spares.recv().await.ok()?;
        self.taken.notify_one();
        Some(spare)
    }

    /// Whether fewer than [`STEADY_SPARES`] are ready.
    pub fn wants_spares(&self) -> bool {
        !self.is_retired() && self.spares.len() < STEADY_SPARES
    }

    /// Adds a spare made by the spawner; gives it back if the generation was retired.
    pub async fn add_spare(&self, instance: Instance) -> Result<(), Instance> {
        self.spares_tx.send(instance).await.map_err(|e| e.0)
    }

    /// Waits until a spare is taken (or the generation is retired).
    pub async fn spare_taken(&self) {
        self.taken.notified().await;
    }

    /// Stops supplying instances: waiting workers wake up, spares are dropped (freeing their
    /// pooling-allocator slots).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.spares_tx.close();
        while self.spares.try_recv().is_ok() {}
        self.taken.notify_one();
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
