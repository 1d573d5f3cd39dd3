//! Prometheus metrics (`GET /metrics` on the admin listener).
//!
//! Two kinds: request metrics updated on the request path through per-route handles resolved
//! once at startup (no label lookup, no lock per request), and pool metrics (workers, queue,
//! recycles, instance age and memory, swaps) read from the pools' live counters at scrape time
//! by a [`Collector`], so the request path never pays for them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
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

use crate::guest::LiveInstances;
use crate::outcome::Recycle;
use crate::pool::{Pool, unix_now};

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
    swaps: Family<Labels, Counter>,
    outbound: OutboundMetrics,
}

/// Outbound requests by route, destination and status class, and errors by kind.
#[derive(Clone, Default)]
pub struct OutboundMetrics {
    responses: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
}

impl OutboundMetrics {
    /// Counts a response from `destination` with `status`.
    pub fn response(&self, route: &str, destination: &str, status: u16) {
        let class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from((status / 100).clamp(1, 5)) - 1];
        let labels = vec![
            ("route", route.to_string()),
            ("destination", destination.to_string()),
            ("class", class.to_string()),
        ];
        self.responses.get_or_create(&labels).inc();
    }

    /// Counts an outbound request that failed with `kind` (denied, refused, timeout…).
    pub fn error(&self, route: &str, kind: &'static str) {
        let labels = vec![("route", route.to_string()), ("kind", kind.to_string())];
        self.errors.get_or_create(&labels).inc();
    }
}

/// One route's request-path handles, resolved once; a clone is one reference count.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteHandles>);

struct RouteHandles {
    by_class: [Counter; 5],
    duration: Histogram,
    in_flight: Gauge,
}

impl RouteMetrics {
    /// Counts a response by status class and records its duration.
    pub fn observe(&self, status: u16, started: Instant) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.0.by_class[class].inc();
        self.0.duration.observe(started.elapsed().as_secs_f64());
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.0.in_flight.inc();
        InFlight(self.0.in_flight.clone())
    }
}

/// Decrements the in-flight gauge when the response is done.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates the registry with the request-path families.
    pub fn new() -> Metrics {
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
        let swaps = Family::<Labels, Counter>::default();
        registry.register(
            "fibhost_component_swaps",
            "Component swaps by outcome (ok, rejected)",
            swaps.clone(),
        );
        let outbound = OutboundMetrics::default();
        registry.register(
            "fibhost_outbound_requests",
            "Responses to guests' outbound requests, by route, destination and status class",
            outbound.responses.clone(),
        );
        registry.register(
            "fibhost_outbound_errors",
            "Guests' outbound requests that failed, by route and kind (denied, refused, timeout…)",
            outbound.errors.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            in_flight,
            swaps,
            outbound,
        }
    }

    /// The outbound request counters (shared by every route's client).
    pub fn outbound(&self) -> OutboundMetrics {
        self.outbound.clone()
    }

    /// Counts one swap of `route` with `result` (`ok` or `rejected`).
    pub fn count_swap(&self, route: &str, result: &'static str) {
        self.swaps
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("result", result.into()),
            ])
            .inc();
    }

    /// The request-path handles for `route` (use `""` for requests that matched no route).
    pub fn route(&self, route: &str) -> RouteMetrics {
        let labels = |extra: Option<(&'static str, &str)>| {
            let mut l: Labels = vec![("route", route.to_string())];
            l.extend(extra.map(|(k, v)| (k, v.to_string())));
            l
        };
        RouteMetrics(Arc::new(RouteHandles {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                self.requests
                    .get_or_create(&labels(Some(("class", class))))
                    .clone()
            }),
            duration: self.durations.get_or_create(&labels(None)).clone(),
            in_flight: self.in_flight.get_or_create(&labels(None)).clone(),
        }))
    }

    /// Adds the scrape-time collectors: the pools' live counters, the process's gauges (live
    /// instances, RSS, uptime) and the log writer's dropped lines (`log_errors`).
    pub fn register_collectors(
        &mut self,
        pools: Vec<Pool>,
        live: LiveInstances,
        log_errors: ErrorCounter,
    ) {
        self.registry
            .register_collector(Box::new(PoolCollector { pools }));
        self.registry.register_collector(Box::new(ProcessCollector {
            live,
            log_errors,
            started: Instant::now(),
        }));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads the pools' live counters on each scrape.
#[derive(Debug)]
struct PoolCollector {
    pools: Vec<Pool>,
}

/// The process's own gauges and counters, read on each scrape.
struct ProcessCollector {
    live: LiveInstances,
    log_errors: ErrorCounter,
    started: Instant,
}

impl std::fmt::Debug for ProcessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCollector").finish_non_exhaustive()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        single(
            e,
            "fibhost_pool_slots_in_use",
            "Guest instances alive (serving, spare or retiring): pooling-allocator slots in use",
            ConstGauge::new(self.live.get() as i64),
        )?;
        single(
            e,
            "fibhost_process_resident_memory_bytes",
            "Resident set size of the process",
            ConstGauge::new(process_rss_bytes().unwrap_or(0) as i64),
        )?;
        single(
            e,
            "fibhost_uptime_seconds",
            "Seconds since the server started",
            ConstGauge::new(self.started.elapsed().as_secs() as i64),
        )?;
        single(
            e,
            "fibhost_log_lines_dropped",
            "Log lines (access log included) dropped because stderr's reader fell behind; \
             serving never waits for the log",
            ConstCounter::new(self.log_errors.dropped_lines() as u64),
        )
    }
}

/// Encodes one metric without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}

/// Encodes one metric family from `(labels, value)` pairs; the metric type comes from the
/// value type (`ConstGauge`, `ConstCounter`).
fn metric<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut values = values.into_iter().peekable();
    let kind = values
        .peek()
        .map_or(MetricType::Gauge, |(_, m)| m.metric_type());
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, i64)>,
) -> Result<(), std::fmt::Error> {
    let values = values.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    metric(encoder, name, help, values)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let values = values.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    metric(encoder, name, help, values)
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let route = |pool: &Pool| ("route", pool.route().prefix.clone());
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
        metric(
            e,
            "fibhost_instantiation_seconds",
            "Time spent creating instances after startup (divide by fibhost_instantiations_total)",
            self.pools.iter().map(|p| {
                let micros = p.stats().instantiation_micros.load(Ordering::Relaxed);
                (vec![route(p)], ConstCounter::new(micros as f64 / 1e6))
            }),
        )?;
        let now = unix_now();
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
