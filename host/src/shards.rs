//! Event-loop threads ("shards"): the data plane of the server.
//!
//! Each shard is one OS thread running a single-threaded tokio runtime. It accepts its own
//! connections (every shard accepts on a duplicate of the one listening socket, so whichever
//! thread is free takes the next client) and runs its share of every component's workers.
//! A request is therefore parsed, handed to a worker, run in the guest and written back on
//! one thread: the hand-offs between the connection task and the worker task are wake-ups
//! in the same run queue, never a futex and a cross-core cache miss.
//!
//! The control plane (admin listener, signals, hot swap, compilation) stays on the main
//! runtime, off these threads. Each thread also builds its own workers' spare instances
//! ([`crate::pool`]), so that an instance is made on the core that will run it.
//!
//! Measured before this design (issue 7, 2 cores, `wrk -c500` keep-alive, same run): one
//! multi-threaded runtime with a shared job queue served 56–58k req/s, two single-threaded
//! processes sharing the port 87k. See ARCHITECTURE.md for the numbers after it.

use std::cell::Cell;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the shard this thread runs, if it is a shard thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How long dropping [`Shards`] waits for the threads to end (each hands over its last access
/// log lines as it ends; a thread can be held up by a guest until its next epoch yield).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The running event-loop threads. Dropping it stops them (their runtimes drop every task
/// they still hold) and waits for them, up to [`STOP_WAIT`].
pub struct Shards {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    /// Disconnected once every thread has ended (in a mutex only so that `Shards` is `Sync`).
    ended: Mutex<mpsc::Receiver<()>>,
}

impl Shards {
    /// Starts `count` shard threads, each with a single-threaded runtime (I/O and timers on).
    pub fn start(count: usize) -> Result<Shards> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let (ended_tx, ended) = mpsc::channel::<()>();
        for index in 0..count {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let ended_tx = ended_tx.clone();
            std::thread::Builder::new()
                .name(format!("fibhost-shard-{index}"))
                .spawn(move || {
                    let _ended = ended_tx;
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        // Out of work: hand the access lines gathered so far to the log writer.
                        .on_thread_park(crate::logging::flush_pending)
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    CURRENT.set(Some(index));
                    let _ = ready_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                    drop(runtime);
                    // Here, not in the thread-local's destructor: those run after `_ended`
                    // is dropped, when `Shards::drop` may already have returned.
                    crate::logging::flush_pending();
                })
                .context("cannot start an event-loop thread")?;
            let handle = ready_rx
                .recv()
                .context("an event-loop thread exited while starting")?
                .context("cannot build an event-loop runtime")?;
            handles.push(handle);
            stops.push(stop_tx);
        }
        Ok(Shards {
            handles,
            stops,
            ended: Mutex::new(ended),
        })
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never, once started with a count of at least 1).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime of every shard, by index.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The shard that runs worker `id` (1-based): workers are dealt out in turn.
    pub fn of_worker(&self, id: usize) -> usize {
        shard_of_worker(id, self.handles.len())
    }

    /// The shard the calling thread runs, or `None` off the shard threads.
    pub fn current() -> Option<usize> {
        CURRENT.get()
    }
}

/// The shard of `shards` that runs worker `id` (1-based): workers are dealt out in turn.
pub fn shard_of_worker(id: usize, shards: usize) -> usize {
    (id - 1) % shards
}

impl Drop for Shards {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        // Disconnected when the last thread has ended; nothing is ever sent.
        if let Ok(ended) = self.ended.get_mut() {
            let _ = ended.recv_timeout(STOP_WAIT);
        }
    }
}
