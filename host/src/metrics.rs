//! Prometheus metrics (`GET /metrics` on the admin listener).
//!
//! Two kinds: request metrics updated on the request path through per-route handles resolved
//! once at startup (no label lookup, no lock, nothing another thread writes: see
//! [`RouteMetrics`]), and pool metrics (workers, queue,
//! recycles, instance age and memory, swaps) read from the pools' live counters at scrape time
//! by a [`Collector`], so the request path never pays for them.
//!
//! Two exposition formats, chosen by the scraper's `Accept` header as Prometheus's own clients
//! do ([`Format::negotiate`]): OpenMetrics 1.0.0, which prometheus-client writes, and the
//! classic text format 0.0.4 (the default), converted from it by [`to_classic_text`]: there a
//! counter family is named with its `_total` suffix and nothing ends the body.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::guest::LiveInstances;
use crate::lock;
use crate::logging::DroppedLinesHandle;
use crate::outbound::OutboundMetrics;
use crate::outcome::Recycle;
use crate::pool::{Pool, unix_now};
use crate::shards::Shards;

/// Latency buckets, seconds: 50 µs to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    10.0,
];

type Labels = Vec<(&'static str, LabelValue)>;

/// A label value, escaped as both text formats require (`\` → `\\`, `"` → `\"`, a line feed →
/// `\n`) when it is written: prometheus-client writes label values verbatim, and a route prefix
/// is the operator's text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct LabelValue(String);

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        LabelValue(value.to_string())
    }
}

impl From<String> for LabelValue {
    fn from(value: String) -> Self {
        LabelValue(value)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// An exposition format of `GET /metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 (what Prometheus asks for first).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for every other client.
    Text,
}

impl Format {
    /// The format to answer a request whose `Accept` header is `accept`: the supported media
    /// type with the highest `q` (the earliest on a tie), as Prometheus's client libraries
    /// negotiate. OpenMetrics only when asked for (`application/openmetrics-text`, version
    /// 1.0.0 or none); the classic text format otherwise, including for `*/*` and no header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best = (Format::Text, 0.0);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0, None);
            for param in parts {
                match param.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("q", v)) => q = v.parse().unwrap_or(0.0),
                    Some(("version", v)) => version = Some(v),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version) {
                ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => Format::Text,
                _ => continue,
            };
            if q > best.1 {
                best = (format, q);
            }
        }
        best.0
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The registry, the routes' request metrics and the swap counters.
pub struct Metrics {
    registry: Registry,
    /// Every route's request metrics, in the order they were created (the scrape's order).
    routes: Arc<Mutex<Vec<RouteMetrics>>>,
    /// Cells per route: one per event-loop thread, one for every other thread.
    cells: usize,
    swaps: Family<Labels, Counter>,
    outbound: OutboundMetrics,
}

/// One route's request metrics: response counts by status class, the duration histogram and
/// the requests in flight.
///
/// Each event-loop thread updates a cell of its own (cache-line aligned) and a scrape sums
/// them: one counter, one histogram lock and one gauge that every thread shared cost several
/// cache-line transfers between the cores on every request. A clone is one reference count;
/// the request path borrows the route's handle instead of cloning it.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteCells>);

struct RouteCells {
    route: LabelValue,
    cells: Box<[Cell]>,
}

/// What one thread has recorded for a route.
#[derive(Default)]
#[repr(align(128))]
struct Cell {
    by_class: [AtomicU64; 5],
    /// Responses per duration bucket, not cumulative; the last bucket is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The sum of the durations, in nanoseconds.
    nanos: AtomicU64,
    /// Requests started minus requests ended on this thread (summed, the gauge).
    in_flight: AtomicI64,
}

impl RouteMetrics {
    fn new(route: &str, cells: usize) -> RouteMetrics {
        RouteMetrics(Arc::new(RouteCells {
            route: route.into(),
            cells: (0..cells.max(1)).map(|_| Cell::default()).collect(),
        }))
    }

    /// The calling thread's cell: event-loop thread `i` has cell `i + 1`, any other thread
    /// (and a thread of another server in the same process, in tests) shares cell 0.
    fn cell(&self) -> &Cell {
        let cells = &self.0.cells;
        let index = Shards::current().map_or(0, |i| i + 1);
        cells.get(index).unwrap_or(&cells[0])
    }

    /// Counts a response by status class and records its duration (from the request's head
    /// to the end of its response).
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let cell = self.cell();
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        cell.by_class[class].fetch_add(1, Ordering::Relaxed);
        cell.buckets[bucket_of(elapsed.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cell.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts a request in flight until [`RouteMetrics::end`] is called for it.
    pub fn start(&self) {
        self.cell().in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a request counted by [`RouteMetrics::start`] (on any thread: the cells are
    /// summed).
    pub fn end(&self) {
        self.cell().in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The route's totals over every thread's cell.
    fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for cell in &self.0.cells {
            for (sum, count) in totals.by_class.iter_mut().zip(&cell.by_class) {
                *sum += count.load(Ordering::Relaxed);
            }
            for (sum, count) in totals.buckets.iter_mut().zip(&cell.buckets) {
                *sum += count.load(Ordering::Relaxed);
            }
            totals.nanos = totals
                .nanos
                .wrapping_add(cell.nanos.load(Ordering::Relaxed));
            totals.in_flight += cell.in_flight.load(Ordering::Relaxed);
        }
        totals
    }
}

/// The bucket a duration of `secs` falls in: the first whose upper bound is at least `secs`
/// (Prometheus's `le`), or `+Inf`.
fn bucket_of(secs: f64) -> usize {
    DURATION_BUCKETS.partition_point(|&bound| bound < secs)
}

/// A route's request metrics summed over the threads, at scrape time.
#[derive(Default)]
struct Totals {
    by_class: [u64; 5],
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    nanos: u64,
    in_flight: i64,
}

/// A duration histogram as read at scrape time.
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// `(upper bound, count)` per bucket, not cumulative; `f64::MAX` is `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Writes the routes' request metrics on each scrape.
struct RouteCollector {
    routes: Arc<Mutex<Vec<RouteMetrics>>>,
}

impl std::fmt::Debug for RouteCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCollector").finish_non_exhaustive()
    }
}

impl Collector for RouteCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let routes: Vec<(LabelValue, Totals)> = lock(&self.routes)
            .iter()
            .map(|r| (r.0.route.clone(), r.totals()))
            .collect();
        let route = |value: &LabelValue| ("route", value.clone());
        let e = &mut encoder;
        counter(
            e,
            "fibhost_requests",
            "HTTP responses by route and status class",
            routes.iter().flat_map(|(r, totals)| {
                CLASSES
                    .iter()
                    .zip(totals.by_class)
                    .map(move |(class, n)| (vec![route(r), ("class", (*class).into())], n))
            }),
        )?;
        metric(
            e,
            "fibhost_request_duration_seconds",
            "Time from request head to the end of the response body",
            routes.iter().map(|(r, totals)| {
                let bounds = DURATION_BUCKETS.iter().copied().chain([f64::MAX]);
                let histogram = ConstHistogram {
                    sum: totals.nanos as f64 / 1e9,
                    count: totals.buckets.iter().sum(),
                    buckets: bounds.zip(totals.buckets).collect(),
                };
                (vec![route(r)], histogram)
            }),
        )?;
        gauge(
            e,
            "fibhost_requests_in_flight",
            "Requests being served (queued or running)",
            routes
                .iter()
                .map(|(r, totals)| (vec![route(r)], totals.in_flight)),
        )
    }
}

/// The status classes, in the order of [`Cell::by_class`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates the registry for a server with one event-loop thread.
    pub fn new() -> Metrics {
        Metrics::with_threads(1)
    }

    /// Creates the registry for a server with `threads` event-loop threads (each updates
    /// request metrics of its own).
    pub fn with_threads(threads: usize) -> Metrics {
        let mut registry = Registry::default();
        let routes = Arc::new(Mutex::new(Vec::new()));
        registry.register_collector(Box::new(RouteCollector {
            routes: routes.clone(),
        }));
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
            routes,
            cells: threads + 1,
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
            .get_or_create(&vec![("route", route.into()), ("result", result.into())])
            .inc();
    }

    /// The request metrics of `route` (use `""` for requests that matched no route): the
    /// same handle each time a route is asked for.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let mut routes = lock(&self.routes);
        if let Some(existing) = routes.iter().find(|r| r.0.route.0 == route) {
            return existing.clone();
        }
        let metrics = RouteMetrics::new(route, self.cells);
        routes.push(metrics.clone());
        metrics
    }

    /// Adds the scrape-time collectors: the pools' live counters, the process's gauges (live
    /// instances, RSS, uptime) and the log writer's dropped lines (`log_errors`).
    pub fn register_collectors(
        &mut self,
        pools: Vec<Pool>,
        live: LiveInstances,
        log_errors: DroppedLinesHandle,
    ) {
        self.registry
            .register_collector(Box::new(PoolCollector { pools }));
        self.registry.register_collector(Box::new(ProcessCollector {
            live,
            log_errors,
            started: Instant::now(),
        }));
    }

    /// Every metric in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        match format {
            Format::OpenMetrics => out,
            Format::Text => to_classic_text(&out),
        }
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
    log_errors: DroppedLinesHandle,
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
            ConstCounter::new(self.log_errors.count()),
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
        let route = |pool: &Pool| ("route", LabelValue::from(pool.route().prefix.as_str()));
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
                        vec![route(p), ("worker", (i + 1).to_string().into())],
                        now.saturating_sub(spawned) as i64,
                    )
                })
            }),
        )?;
        gauge(
            e,
            "fibhost_instance_memory_bytes",
            "Memory of each worker's current instance: its linear memory plus the host memory its resources hold",
            self.pools.iter().flat_map(|p| {
                p.stats().workers.iter().enumerate().map(move |(i, w)| {
                    let bytes = w.memory_bytes.load(Ordering::Relaxed) as i64;
                    (
                        vec![route(p), ("worker", (i + 1).to_string().into())],
                        bytes,
                    )
                })
            }),
        )?;
        Ok(())
    }
}

/// Rewrites prometheus-client's OpenMetrics exposition as the classic text format 0.0.4: a
/// counter family takes its samples' name (`fibhost_requests` → `fibhost_requests_total`) in
/// `# HELP` and `# TYPE`, its `_created` samples (an OpenMetrics addition) are dropped, `unknown`
/// and the other OpenMetrics-only types become `untyped`, and `# UNIT` and `# EOF` go. Samples,
/// label escaping, histograms (`_bucket`, `_sum`, `_count`) and gauges read the same in both.
fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // prometheus-client writes `# HELP` before `# TYPE`; the name HELP carries depends on TYPE.
    let mut help = None;
    let mut created = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, text)| text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), kind),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            created = (kind == "counter").then(|| format!("{name}_created"));
            if let Some(text) = help.take() {
                let _ = writeln!(out, "# HELP {family} {text}");
            }
            let _ = writeln!(out, "# TYPE {family} {kind}");
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or("");
        if line.starts_with("# UNIT ") || line == "# EOF" || created.as_deref() == Some(sample) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The process's resident set size, from `/proc/self/status`.
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 sends when it scrapes.
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_gives_openmetrics_only_to_who_asks() {
        let cases = [
            (Some(PROMETHEUS_ACCEPT), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("text/plain;q=0.5, Application/OpenMetrics-Text; version=1.0.0; q=0.9"),
                Format::OpenMetrics,
            ),
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain; version=0.0.4"), Format::Text),
            (Some("application/json"), Format::Text),
            // A version we do not write, a refusal, a tie (the earlier wins), a bad q.
            (
                Some("application/openmetrics-text;version=0.0.1"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0, */*"), Format::Text),
            (
                Some("text/plain, application/openmetrics-text"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text;q=x, text/plain;q=0.1"),
                Format::Text,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn classic_text_names_counter_families_with_total_and_has_no_eof() {
        let openmetrics = "# HELP jobs Jobs done.\n\
                           # TYPE jobs counter\n\
                           # UNIT jobs jobs\n\
                           jobs_total{kind=\"a\"} 3\n\
                           jobs_created{kind=\"a\"} 1700000000.0\n\
                           # HELP odd Something.\n\
                           # TYPE odd unknown\n\
                           odd 1\n\
                           # HELP temp Temperature.\n\
                           # TYPE temp gauge\n\
                           temp -2\n\
                           # EOF\n";
        assert_eq!(
            to_classic_text(openmetrics),
            "# HELP jobs_total Jobs done.\n\
             # TYPE jobs_total counter\n\
             jobs_total{kind=\"a\"} 3\n\
             # HELP odd Something.\n\
             # TYPE odd untyped\n\
             odd 1\n\
             # HELP temp Temperature.\n\
             # TYPE temp gauge\n\
             temp -2\n"
        );
    }

    #[test]
    fn both_formats_of_the_registry_parse_and_escape_label_values() {
        let metrics = Metrics::new();
        let route = metrics.route("/a\"b\\c\nd");
        route.observe(200, Duration::from_micros(70));
        metrics.count_swap("/", "ok");

        let open = metrics.encode(Format::OpenMetrics);
        assert!(open.contains("# TYPE fibhost_requests counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");

        let text = metrics.encode(Format::Text);
        assert!(!text.contains("# EOF"), "{text}");
        for family in ["fibhost_requests_total", "fibhost_component_swaps_total"] {
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{text}");
        }
        assert!(
            text.contains("fibhost_requests_total{route=\"/a\\\"b\\\\c\\nd\",class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE fibhost_request_duration_seconds histogram\n"),
            "{text}"
        );

        // An independent parser of the classic format sees typed counters and the histogram.
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid text format 0.0.4");
        let sample = |name: &str| {
            (scrape.samples.iter())
                .find(|s| s.metric == name)
                .unwrap_or_else(|| panic!("no `{name}` in {text}"))
        };
        let requests = sample("fibhost_requests_total");
        assert!(matches!(
            requests.value,
            prometheus_parse::Value::Counter(_)
        ));
        // (prometheus-parse keeps a label value's escapes as written.)
        assert_eq!(requests.labels.get("route"), Some("/a\\\"b\\\\c\\nd"));
        assert!(matches!(
            sample("fibhost_request_duration_seconds").value,
            prometheus_parse::Value::Histogram(_)
        ));
    }

    #[test]
    fn a_routes_metrics_are_the_sum_of_its_threads_cells() {
        let metrics = Metrics::with_threads(2);
        let route = metrics.route("/");
        assert!(
            Arc::ptr_eq(&route.0, &metrics.route("/").0),
            "one handle per route"
        );
        assert_eq!(
            route.0.cells.len(),
            3,
            "one cell per thread and one for the others"
        );

        // This test's thread is no event-loop thread: cell 0. Event-loop thread 1 is cell 2.
        route.observe(200, Duration::from_micros(50));
        route.observe(503, Duration::from_secs(20));
        route.start();
        let other = &route.0.cells[2];
        other.by_class[1].fetch_add(2, Ordering::Relaxed);
        other.buckets[1].fetch_add(2, Ordering::Relaxed);
        other.nanos.fetch_add(150_000, Ordering::Relaxed);
        other.in_flight.fetch_add(2, Ordering::Relaxed);
        route.end(); // a request that started on thread 1 and ended here

        let text = metrics.encode(Format::Text);
        for line in [
            "fibhost_requests_total{route=\"/\",class=\"2xx\"} 3\n",
            "fibhost_requests_total{route=\"/\",class=\"5xx\"} 1\n",
            "fibhost_request_duration_seconds_count{route=\"/\"} 4\n",
            "fibhost_request_duration_seconds_sum{route=\"/\"} 20.0002\n",
            // 50 µs is in the first bucket (le is inclusive), 20 s only in +Inf.
            "fibhost_request_duration_seconds_bucket{le=\"0.00005\",route=\"/\"} 1\n",
            "fibhost_request_duration_seconds_bucket{le=\"0.0001\",route=\"/\"} 3\n",
            "fibhost_request_duration_seconds_bucket{le=\"10.0\",route=\"/\"} 3\n",
            "fibhost_request_duration_seconds_bucket{le=\"+Inf\",route=\"/\"} 4\n",
            "fibhost_requests_in_flight{route=\"/\"} 2\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.000_05), 0);
        assert_eq!(bucket_of(0.000_051), 1);
        assert_eq!(bucket_of(10.0), DURATION_BUCKETS.len() - 1);
        assert_eq!(bucket_of(10.5), DURATION_BUCKETS.len());
    }
}
