//! Admission: how many requests a pool holds (running or queued), as an RAII slot.
//!
//! A request is admitted when fewer than `workers + queue` are held; its [`Admission`] then
//! travels with the job and is released exactly once, by whichever comes first:
//! - the response body is complete (the pool's body is dropped): the client may send its next
//!   request at once, and must not find the worker that answered it still counted busy while
//!   it does its bookkeeping (that race gave a spurious 503 with `queue = 0`);
//! - the worker is done with the job (e.g. the call failed, or the guest finished and only a
//!   slow client still holds the body): a worker that is free again is counted free.
//!
//! The counters are per lane (one per event-loop thread) so that the request path touches its
//! own thread's cache line in the common case. The bound is checked, then taken: two threads
//! admitting at the same instant may together go past it by at most one request each, which
//! then waits in a lane like a queued request. An exact bound would need one counter shared by
//! every thread on every request, for a bound that clients cannot tell from this one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One admitted request's slot in its lane's count.
#[derive(Debug)]
pub struct Admission {
    lane: Arc<AtomicUsize>,
    released: AtomicBool,
}

impl Admission {
    /// Takes a slot in `lane`'s count.
    pub fn take(lane: &Arc<AtomicUsize>) -> Admission {
        lane.fetch_add(1, Ordering::Relaxed);
        Admission {
            lane: lane.clone(),
            released: AtomicBool::new(false),
        }
    }

    /// Gives the slot back; later calls do nothing.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.lane.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_once_whoever_releases_first() {
        let lane = Arc::new(AtomicUsize::new(0));
        let slot = Admission::take(&lane);
        assert_eq!(lane.load(Ordering::Relaxed), 1);
        slot.release();
        slot.release();
        assert_eq!(lane.load(Ordering::Relaxed), 0);
        drop(slot);
        assert_eq!(lane.load(Ordering::Relaxed), 0);
        drop(Admission::take(&lane));
        assert_eq!(lane.load(Ordering::Relaxed), 0, "dropping releases");
    }
}
