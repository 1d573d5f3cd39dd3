//! The request id: one per request, on the access-log line, on the guest's output lines and on
//! every warning about that request, so that a person reading the log can join them.
//!
//! A valid incoming `X-Request-Id` (set by a proxy in front) is honoured; otherwise fibhost
//! makes one from a per-process random prefix and a counter (no allocation per request; each
//! event-loop thread has a prefix and counter of its own).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// The header a proxy in front may set.
pub const HEADER: &str = "x-request-id";

/// Longest incoming id that is honoured; a longer one is replaced by a generated id.
const MAX_LEN: usize = 128;

/// One request's id.
#[derive(Clone, Debug)]
pub enum RequestId {
    /// Made by fibhost: process prefix and sequence number.
    Generated {
        /// Random per process (one per event-loop thread, derived from the process's), so
        /// ids from two processes or restarts do not collide.
        prefix: u32,
        /// The request's number under this prefix.
        seq: u64,
    },
    /// Sent by the client or a proxy (validated: visible ASCII, no spaces or quotes).
    Given(HeaderValue),
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Generated { prefix, seq } => write!(f, "{prefix:08x}-{seq}"),
            // Validated as visible ASCII when it was accepted.
            RequestId::Given(value) => f.write_str(value.to_str().unwrap_or("-")),
        }
    }
}

/// Hands out request ids for one server.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The ids of event-loop thread `thread`: a counter of its own (one every thread shared
    /// moved between the cores with every request) under a prefix of its own, derived from
    /// this one, so that no two threads, nor this one, hand out the same id.
    pub fn for_thread(&self, thread: usize) -> RequestIds {
        RequestIds {
            prefix: self.prefix.wrapping_add(thread as u32 + 1),
            next: AtomicU64::new(1),
        }
    }

    /// The id for a request that arrived with `given` (its `X-Request-Id`, if any).
    pub fn assign(&self, given: Option<&HeaderValue>) -> RequestId {
        match given.filter(|v| acceptable(v.as_bytes())) {
            Some(value) => RequestId::Given(value.clone()),
            None => RequestId::Generated {
                prefix: self.prefix,
                seq: self.next.fetch_add(1, Ordering::Relaxed),
            },
        }
    }
}

/// Only ids that are safe to print in a log line unquoted: 1 to 128 visible ASCII characters
/// without quotes or backslashes.
fn acceptable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_valid_ids_and_replaces_others() {
        let ids = RequestIds::default();
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(ids.assign(Some(&given)).to_string(), "abc-123");
        for bad in ["", "a b", "x\"y", &"a".repeat(129)] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert!(matches!(
                ids.assign(Some(&value)),
                RequestId::Generated { .. }
            ));
        }
        let (a, b) = (ids.assign(None).to_string(), ids.assign(None).to_string());
        assert_ne!(a, b, "generated ids are unique");
        let (one, two) = (ids.for_thread(0), ids.for_thread(1));
        let firsts = [&ids, &one, &two].map(|ids| ids.assign(None).to_string());
        assert_ne!(firsts[1], firsts[2], "threads number their requests apart");
        assert!(
            !firsts[1..].contains(&firsts[0]),
            "and apart from the shared ids"
        );
    }
}
