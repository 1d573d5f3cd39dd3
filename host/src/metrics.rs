//! Prometheus metrics (`GET /metrics` on the admin listener).
//!
//! Two kinds: request metrics updated on the request path through per-route handles resolved
//! once at startup (no label lookup, no lock per request), and pool metrics (workers, queue,
//! recycles, instance age and memory, swaps) read from the pools' live counters at scrape time
//! by a [`Collector`], so the request path never pays for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_appender::non_blocking::ErrorCounter;

use crate::guest;
use crate::pool::{Pool, Recycle};

/// Latency buckets, seconds: 50 µs to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    10.0,
];

type Labels = Vec<(&'static str, String)>;

/// The registry and the request-path metric families.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    in_flight: Family<Labels, Gauge>,
    /// Process-wide gauges, refreshed on each scrape.
    slots: Gauge,
    rss: Gauge,
    uptime: Gauge,
    started: Instant,
    /// Log lines dropped by the non-blocking writer, brought up to date on each scrape.
    log_dropped: Counter,
    log_errors: ErrorCounter,
}

/// One route's request-path handles (cheap clones of the family members).
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    in_flight: Gauge,
}

impl RouteMetrics {
    /// Counts a response by status class and records its duration.
    pub fn observe(&self, status: u16, started: Instant) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].inc();
        self.duration.observe(started.elapsed().as_secs_f64());
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

/// Decrements the in-flight gauge when the response is done.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Creates the registry with the request-path families; `log_errors` is the log writer's
    /// count of dropped lines, reported as `fibhost_log_lines_dropped_total`.
    pub fn new(log_errors: ErrorCounter) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS.iter().copied())
        });
        let in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "fibhost_requests",
            "HTTP responses by route and status class",
            requests.clone(),
        );
        registry.register(
            "fibhost_request_duration_seconds",
            "Time from request head to the end of the response body",
            durations.clone(),
        );
        registry.register(
            "fibhost_requests_in_flight",
            "Requests being served (queued or running)",
            in_flight.clone(),
        );
        let (slots, rss, uptime) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "fibhost_pool_slots_in_use",
            "Guest instances alive (serving, spare or retiring): pooling-allocator slots in use",
            slots.clone(),
        );
        registry.register(
            "fibhost_process_resident_memory_bytes",
            "Resident set size of the process",
            rss.clone(),
        );
        registry.register(
            "fibhost_uptime_seconds",
            "Seconds since the server started",
            uptime.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "fibhost_log_lines_dropped",
            "Log lines (access log included) dropped because stderr's reader fell behind; \
             serving never waits for the log",
            log_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            in_flight,
            slots,
            rss,
            uptime,
            started: Instant::now(),
            log_dropped,
            log_errors,
        }
    }

    /// The request-path handles for `route` (use `""` for requests that matched no route).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let labels = |extra: Option<(&'static str, &str)>| {
            let mut l: Labels = vec![("route", route.to_string())];
            l.extend(extra.map(|(k, v)| (k, v.to_string())));
            l
        };
        RouteMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                self.requests
                    .get_or_create(&labels(Some(("class", class))))
                    .clone()
            }),
            duration: self.durations.get_or_create(&labels(None)).clone(),
            in_flight: self.in_flight.get_or_create(&labels(None)).clone(),
        }
    }

    /// Adds the scrape-time collector over `pools`.
    pub fn register_pools(&mut self, pools: Vec<Pool>, swaps: Arc<SwapCounters>) {
        self.registry
            .register_collector(Box::new(PoolCollector { pools, swaps }));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.slots.set(guest::live_instances() as i64);
        self.rss.set(process_rss_bytes().unwrap_or(0) as i64);
        self.uptime.set(self.started.elapsed().as_secs() as i64);
        let dropped = self.log_errors.dropped_lines() as u64;
        self.log_dropped
            .inc_by(dropped.saturating_sub(self.log_dropped.get()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Swap outcomes per route, counted by the swap module.
#[derive(Debug, Default)]
pub struct SwapCounters {
    counts: std::sync::Mutex<Vec<(String, &'static str, Arc<AtomicU64>)>>,
}

impl SwapCounters {
    /// Counts one swap of `route` with `result` (`ok` or `rejected`).
    pub fn count(&self, route: &str, result: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts
            .iter()
            .find(|(r, res, _)| r == route && *res == result)
        {
            Some((_, _, n)) => n.fetch_add(1, Ordering::Relaxed),
            None => {
                counts.push((route.to_string(), result, Arc::new(AtomicU64::new(1))));
                0
            }
        };
    }

    fn snapshot(&self) -> Vec<(String, &'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .map(|(r, res, n)| (r.clone(), *res, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Reads the pools' live counters on each scrape.
#[derive(Debug)]
struct PoolCollector {
    pools: Vec<Pool>,
    swaps: Arc<SwapCounters>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("route", &self.route())
            .finish()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let route = |pool: &Pool| ("route", pool.route().to_string());
        let e = &mut encoder;
        gauge(
            e,
            "fibhost_queue_depth",
            "Requests waiting for a worker",
            self.pools
                .iter()
                .map(|p| (vec![route(p)], p.queue_depth() as i64)),
        )?;
        gauge(
            e,
            "fibhost_workers",
            "Workers by state",
            self.pools.iter().flat_map(|p| {
                let busy = p.stats().busy() as i64;
                [
                    (vec![route(p), ("state", "busy".into())], busy),
                    (
                        vec![route(p), ("state", "idle".into())],
                        p.workers() as i64 - busy,
                    ),
                ]
            }),
        )?;
        counter(
            e,
            "fibhost_instance_recycles",
            "Instances replaced, by reason",
            self.pools.iter().flat_map(|p| {
                Recycle::ALL.map(|reason| {
                    (
                        vec![route(p), ("reason", reason.as_str().into())],
                        p.stats().recycled(reason),
                    )
                })
            }),
        )?;
        counter(
            e,
            "fibhost_requests_rejected",
            "Requests refused with 503 because the queue was full",
            self.pools
                .iter()
                .map(|p| (vec![route(p)], p.stats().rejected.load(Ordering::Relaxed))),
        )?;
        counter(
            e,
            "fibhost_instantiations",
            "Instances created after startup (spares, and replacements a worker built when no spare was ready)",
            self.pools.iter().map(|p| {
                (
                    vec![route(p)],
                    p.stats().instantiations.load(Ordering::Relaxed),
                )
            }),
        )?;
        let mut seconds = e.encode_descriptor(
            "fibhost_instantiation_seconds",
            "Time spent creating instances after startup (divide by fibhost_instantiations_total)",
            None,
            MetricType::Counter,
        )?;
        for p in &self.pools {
            let micros = p.stats().instantiation_micros.load(Ordering::Relaxed);
            ConstCounter::new(micros as f64 / 1e6)
                .encode(seconds.encode_family(&vec![route(p)])?)?;
        }
        let now = crate::pool::unix_now();
        gauge(
            e,
            "fibhost_instance_age_seconds",
            "Age of each worker's current instance",
            self.pools.iter().flat_map(|p| {
                p.stats().workers.iter().enumerate().map(move |(i, w)| {
                    let spawned = w.last_spawn.load(Ordering::Relaxed);
                    (
                        vec![route(p), ("worker", (i + 1).to_string())],
                        now.saturating_sub(spawned) as i64,
                    )
                })
            }),
        )?;
        gauge(
            e,
            "fibhost_instance_memory_bytes",
            "Linear memory of each worker's current instance",
            self.pools.iter().flat_map(|p| {
                p.stats().workers.iter().enumerate().map(move |(i, w)| {
                    let bytes = w.memory_bytes.load(Ordering::Relaxed) as i64;
                    (vec![route(p), ("worker", (i + 1).to_string())], bytes)
                })
            }),
        )?;
        counter(
            e,
            "fibhost_component_swaps",
            "Component swaps by outcome (ok, rejected)",
            self.swaps
                .snapshot()
                .into_iter()
                .map(|(r, result, n)| (vec![("route", r), ("result", result.to_string())], n)),
        )?;
        Ok(())
    }
}

/// The process's resident set size, from `/proc/self/status`.
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
