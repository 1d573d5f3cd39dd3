//! When an instance is recycled: pure functions of the limits, the instance's facts and a
//! given instant, so that every rule is unit-tested without sleeping. The worker loop only
//! does what these say.

use std::time::{Duration, Instant};

use crate::config::Lifecycle;
use crate::outcome::Recycle;

/// The limits one instance drew for itself at birth (jittered so that workers drift apart).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    /// When its lifetime ends (`max-worker-lifetime`, jittered, never before
    /// `min-worker-lifetime`).
    pub recycle_at: Option<Instant>,
    /// Its `reload-on-memory` threshold, jittered downwards only.
    pub memory_bytes: Option<u64>,
}

/// What the policy needs to know about an instance after a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// When it was instantiated.
    pub born: Instant,
    /// Requests it has been given.
    pub served: u64,
    /// Its linear memory now.
    pub memory_bytes: u64,
}

/// Draws an instance's limits. `unit` yields uniform samples in [-1, 1): the jitter fraction
/// scales them (`rand` in the server, fixed sequences in tests).
pub fn draw(limits: &Lifecycle, born: Instant, mut unit: impl FnMut() -> f64) -> Drawn {
    let mut factor = || {
        if limits.jitter > 0.0 {
            1.0 + unit() * limits.jitter
        } else {
            1.0
        }
    };
    let recycle_at = limits
        .max_lifetime
        .map(|life| born + life.mul_f64(factor()).max(limits.min_lifetime));
    // Memory limits only jitter downwards: the configured value stays a ceiling.
    let memory_bytes = limits
        .reload_on_memory_bytes
        .map(|m| (m as f64 * (1.0 - (factor() - 1.0).abs())) as u64);
    Drawn {
        recycle_at,
        memory_bytes,
    }
}

/// Whether an instance must be replaced after a request that went well, and why. `now` is
/// when the request ended.
pub fn after_request(
    limits: &Lifecycle,
    drawn: &Drawn,
    facts: &Facts,
    now: Instant,
) -> Option<Recycle> {
    if limits.max_requests > 0 && facts.served >= limits.max_requests {
        return Some(Recycle::Requests);
    }
    let old_enough = now.saturating_duration_since(facts.born) >= limits.min_lifetime;
    if old_enough && drawn.memory_bytes.is_some_and(|m| facts.memory_bytes > m) {
        return Some(Recycle::Memory);
    }
    lifetime_over(drawn, now).then_some(Recycle::Lifetime)
}

/// Whether the instance's lifetime is over at `now`.
pub fn lifetime_over(drawn: &Drawn, now: Instant) -> bool {
    drawn.recycle_at.is_some_and(|at| now >= at)
}

/// How long an instance past its lifetime waits before trying again when no spare was ready
/// (an idle worker does not build its own replacement: the spawner will have one soon).
pub const RETRY_RECYCLE: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Lifecycle {
        Lifecycle {
            max_requests: 0,
            max_lifetime: None,
            min_lifetime: Duration::ZERO,
            jitter: 0.0,
            reload_on_memory_bytes: None,
            request_timeout: None,
            memory_limit_bytes: 256 << 20,
        }
    }

    fn facts(born: Instant, served: u64, memory_bytes: u64) -> Facts {
        Facts {
            born,
            served,
            memory_bytes,
        }
    }

    /// A fixed spread of samples over [-1, 1).
    fn samples() -> impl FnMut() -> f64 {
        let mut i = 0u32;
        move || {
            i += 1;
            f64::from(i % 20) / 10.0 - 1.0
        }
    }

    #[test]
    fn max_requests_is_exact() {
        let l = Lifecycle {
            max_requests: 3,
            ..limits()
        };
        let born = Instant::now();
        let drawn = draw(&l, born, samples());
        let at = |served| after_request(&l, &drawn, &facts(born, served, 0), born);
        assert_eq!(at(2), None);
        assert_eq!(at(3), Some(Recycle::Requests));
        let unlimited = limits();
        let drawn = draw(&unlimited, born, samples());
        assert_eq!(
            after_request(&unlimited, &drawn, &facts(born, 1_000_000, 0), born),
            None
        );
    }

    #[test]
    fn jitter_spreads_lifetimes_within_its_fraction() {
        let l = Lifecycle {
            max_lifetime: Some(Duration::from_secs(100)),
            jitter: 0.5,
            ..limits()
        };
        let born = Instant::now();
        let mut unit = samples();
        let lives: Vec<Duration> = (0..20)
            .map(|_| draw(&l, born, &mut unit).recycle_at.unwrap() - born)
            .collect();
        let (min, max) = (lives.iter().min().unwrap(), lives.iter().max().unwrap());
        assert!(*min >= Duration::from_secs(50) && *max < Duration::from_secs(150));
        assert!(
            *max - *min >= Duration::from_secs(80),
            "lifetimes are not spread: {lives:?}"
        );
    }

    #[test]
    fn no_jitter_draws_the_configured_values() {
        let l = Lifecycle {
            max_lifetime: Some(Duration::from_secs(10)),
            reload_on_memory_bytes: Some(1000),
            ..limits()
        };
        let born = Instant::now();
        let mut unit = samples();
        for _ in 0..10 {
            let drawn = draw(&l, born, &mut unit);
            assert_eq!(drawn.recycle_at, Some(born + Duration::from_secs(10)));
            assert_eq!(drawn.memory_bytes, Some(1000));
        }
    }

    #[test]
    fn memory_jitters_downwards_only() {
        let l = Lifecycle {
            reload_on_memory_bytes: Some(1000),
            jitter: 0.2,
            ..limits()
        };
        let mut unit = samples();
        let drawn: Vec<u64> = (0..20)
            .map(|_| draw(&l, Instant::now(), &mut unit).memory_bytes.unwrap())
            .collect();
        assert!(
            drawn.iter().all(|&m| (800..=1000).contains(&m)),
            "{drawn:?}"
        );
        assert!(drawn.iter().any(|&m| m < 900), "{drawn:?}");
    }

    #[test]
    fn lifetime_is_due_at_its_instant() {
        let l = Lifecycle {
            max_lifetime: Some(Duration::from_secs(1)),
            ..limits()
        };
        let born = Instant::now();
        let drawn = draw(&l, born, samples());
        let f = facts(born, 1, 0);
        assert_eq!(after_request(&l, &drawn, &f, born), None);
        let later = born + Duration::from_secs(1);
        assert_eq!(
            after_request(&l, &drawn, &f, later),
            Some(Recycle::Lifetime)
        );
        assert!(lifetime_over(&drawn, later));
    }

    #[test]
    fn min_lifetime_holds_back_lifetime_and_memory() {
        let l = Lifecycle {
            max_lifetime: Some(Duration::from_millis(200)),
            min_lifetime: Duration::from_secs(60),
            reload_on_memory_bytes: Some(1000),
            ..limits()
        };
        let born = Instant::now();
        let drawn = draw(&l, born, samples());
        assert_eq!(drawn.recycle_at, Some(born + Duration::from_secs(60)));
        let young = born + Duration::from_secs(1);
        assert_eq!(
            after_request(&l, &drawn, &facts(born, 1, 5000), young),
            None
        );
        let old = born + Duration::from_secs(61);
        assert_eq!(
            after_request(&l, &drawn, &facts(born, 1, 5000), old),
            Some(Recycle::Memory)
        );
        assert_eq!(
            after_request(&l, &drawn, &facts(born, 1, 10), old),
            Some(Recycle::Lifetime)
        );
    }
}
