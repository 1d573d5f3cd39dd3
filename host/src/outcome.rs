//! What one call into a guest did: the single outcome type that the worker records, the client
//! sees (as an error, when no response head went out) and the recycling policy reads.

use std::time::Duration;

use crate::error::ServeError;

/// How a call into the guest ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The guest returned after setting a response; the instance can serve again.
    Answered,
    /// fibhost could not hand the request to the guest (the guest never ran).
    Refused(ServeError),
    /// The guest trapped (panic, `unreachable`, stack overflow, out of memory…).
    Trapped {
        /// One line for the client: the trap code, no wasm internals.
        summary: String,
        /// For the log: the whole cause chain with the wasm backtrace.
        detail: String,
    },
    /// The guest ran past `request-timeout` and was interrupted.
    TimedOut(Duration),
    /// The guest returned without setting a response: an instance in a state where it cannot
    /// answer (e.g. a JavaScript engine whose single fetch event is spent).
    NoResponse,
}

impl Outcome {
    /// What the client is answered with when the guest set no response of its own.
    pub fn error(&self) -> Option<ServeError> {
        match self {
            Outcome::Answered => None,
            Outcome::Refused(error) => Some(error.clone()),
            Outcome::Trapped { summary, .. } => Some(ServeError::Trap(summary.clone())),
            Outcome::TimedOut(limit) => Some(ServeError::Timeout(*limit)),
            Outcome::NoResponse => Some(ServeError::NoResponse),
        }
    }

    /// Whether the instance is spent by this call, and why. A failed call always costs its
    /// instance: a guest interrupted mid-call, or one that trapped, is in an unknown state.
    pub fn recycle(&self) -> Option<Recycle> {
        match self {
            Outcome::Answered | Outcome::Refused(_) => None,
            Outcome::Trapped { .. } => Some(Recycle::Trap),
            Outcome::TimedOut(_) => Some(Recycle::Timeout),
            Outcome::NoResponse => Some(Recycle::NoResponse),
        }
    }
}

/// Why an instance was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
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
    /// How many reasons there are (the size of per-reason counter arrays).
    pub const COUNT: usize = 7;

    /// Every reason, in the order of their discriminants.
    pub const ALL: [Recycle; Recycle::COUNT] = [
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

    /// Whether the request that caused it failed (it is counted as a worker exception).
    pub fn is_failure(self) -> bool {
        matches!(self, Recycle::Trap | Recycle::Timeout | Recycle::NoResponse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_indexed_by_discriminant() {
        for (i, reason) in Recycle::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }

    #[test]
    fn failures_cost_the_instance_and_answer_with_their_status() {
        assert!(Outcome::Answered.recycle().is_none() && Outcome::Answered.error().is_none());
        let timed_out = Outcome::TimedOut(Duration::from_secs(1));
        assert_eq!(timed_out.recycle(), Some(Recycle::Timeout));
        assert_eq!(timed_out.error().unwrap().status(), 504);
        assert_eq!(Outcome::NoResponse.error().unwrap().status(), 500);
        let refused = Outcome::Refused(ServeError::BadRequest("x".into()));
        assert!(refused.recycle().is_none());
        assert_eq!(refused.error().unwrap().status(), 400);
    }
}
