//! `fibhost check`: what a guest author runs before deploying a component.
//!
//! It loads the component exactly as `serve` does (the same [`Loader`], linker and errors),
//! then drives instances in-process, the way a worker does, and reports what an operator
//! would otherwise find out in production: whether a GET, a HEAD and a 1 MiB POST are
//! answered, whether a body that arrives slowly gets the same answer as a fast one, whether
//! one instance serves many requests (or only one, or leaks memory on each), what an
//! instantiation costs, and whether the answers match the author's own expectations.
//!
//! Each step yields a [`Finding`]; the [`Report`] is safe to deploy with the given settings
//! when no finding is [`Verdict::Fail`]. Nothing here is timed against a threshold: times
//! are reported, and only behaviour decides the verdict.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt as _;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperIncomingBody;

use crate::config::RouteConfig;
use crate::engine::{Loader, Version, World};
use crate::guest::{self, GuestRequest, Instance, LiveInstances, Setup};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::outcome::Outcome;
use crate::request_id::RequestId;

/// Instances created to measure instantiation.
const INSTANTIATIONS: usize = 20;
/// The large request body.
const LARGE_BODY: usize = 1 << 20;
/// The slow client's body: this many chunks of [`SLOW_CHUNK`] bytes, [`SLOW_PAUSE`] apart.
const SLOW_CHUNKS: usize = 16;
const SLOW_CHUNK: usize = 4096;
const SLOW_PAUSE: Duration = Duration::from_millis(20);
/// Linear-memory growth over the measured part of the soak below which there is no leak to
/// report: well below what a leak of even a kilobyte per request adds over a thousand requests.
const LEAK_BYTES: u64 = 1 << 20;
/// The measured part of the soak is cut into this many stretches: a leak grows memory in every
/// one of them (see [`leaks`]).
const STRETCHES: u64 = 4;

/// Whether memory sampled at the start and at the end of each stretch of the soak shows a leak:
/// at least [`LEAK_BYTES`] of growth, in every stretch. An allocator or garbage collector
/// settling into its working set grows in a step or two and then stays (a Go guest grew by
/// 1 MiB over its first thousand requests, then stayed flat over 50,000); memory leaked on
/// every request grows in every stretch (linear memory grows by 64 KiB pages, so a leak of
/// a kilobyte per request shows in each of four stretches of 225 requests).
pub fn leaks(samples: &[u64]) -> bool {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return false;
    };
    last.saturating_sub(*first) >= LEAK_BYTES && samples.windows(2).all(|w| w[1] > w[0])
}

/// What to check and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The route the component would be served on: its file, limits and environment.
    pub route: RouteConfig,
    /// Largest component file read (`max-component-size`).
    pub max_component_bytes: u64,
    /// The compiled-component cache (`cache-dir`), shared with `serve`: a component checked
    /// once compiles no more, there or here.
    pub cache_dir: Option<PathBuf>,
    /// The path of the GET, HEAD, POST and soak requests.
    pub path: String,
    /// Requests sent to one instance.
    pub requests: u64,
    /// The author's request/expected-response pairs.
    pub expectations: Vec<Expectation>,
}

/// An expectations file: `[[request]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// The pairs, checked in order.
    #[serde(default)]
    pub request: Vec<Expectation>,
}

impl Expectations {
    /// Reads an expectations file.
    pub fn from_file(path: &Path) -> Result<Vec<Expectation>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read expectations file `{}`", path.display()))?;
        let parsed: Expectations = toml::from_str(&text)
            .with_context(|| format!("invalid expectations file `{}`", path.display()))?;
        for e in &parsed.request {
            Method::from_bytes(e.method.as_bytes()).with_context(|| {
                format!("invalid method `{}` in `{}`", e.method, path.display())
            })?;
        }
        Ok(parsed.request)
    }
}

/// One request and what its response must be.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Expectation {
    /// GET unless given.
    #[serde(default = "get")]
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default)]
    pub body: String,
    /// What the response must be.
    pub expect: Expected,
}

fn get() -> String {
    "GET".to_string()
}

/// The parts of a response an expectation pins; what it leaves out is not checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Expected {
    /// The status code.
    pub status: Option<u16>,
    /// The whole body.
    pub body: Option<String>,
    /// A part of the body.
    pub body_contains: Option<String>,
    /// Response headers (names case-insensitive) and their exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// How a finding bears on deploying the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Works as a server expects.
    Ok,
    /// Worth knowing; fibhost copes with it under the given settings.
    Notice,
    /// Fails requests (or will) under the given settings.
    Fail,
}

/// The result of one step.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was tried.
    pub step: String,
    /// What it means for deploying.
    pub verdict: Verdict,
    /// What happened, and for a problem what to do.
    pub text: String,
}

/// Every finding of one check.
#[derive(Debug, Clone)]
pub struct Report {
    /// The component checked.
    pub component: PathBuf,
    /// In the order the steps ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether the guest can be served with the settings it was checked with.
    pub fn safe(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fail)
    }

    /// The findings of `verdict`.
    pub fn with(&self, verdict: Verdict) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.verdict == verdict)
    }

    /// Adds a finding; a failure already reported by an earlier step is named, not repeated
    /// (a guest that traps on the path traps on every step).
    fn push(&mut self, step: impl Into<String>, verdict: Verdict, text: impl Into<String>) {
        let mut text = text.into();
        let earlier = (self.findings.iter())
            .find(|f| f.verdict == Verdict::Fail && f.text == text && verdict == Verdict::Fail);
        if let Some(earlier) = earlier {
            text = format!("failed as `{}` did", earlier.step);
        }
        self.findings.push(Finding {
            step: step.into(),
            verdict,
            text,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fibhost check {}", self.component.display())?;
        let width = self
            .findings
            .iter()
            .map(|x| x.step.len())
            .max()
            .unwrap_or(0);
        for finding in &self.findings {
            let mark = match finding.verdict {
                Verdict::Ok => "ok    ",
                Verdict::Notice => "notice",
                Verdict::Fail => "FAIL  ",
            };
            let mut lines = finding.text.lines();
            let first = lines.next().unwrap_or("");
            writeln!(f, "  {mark}  {:width$}  {first}", finding.step)?;
            for line in lines {
                writeln!(f, "  {:6}  {:width$}  {line}", "", "")?;
            }
        }
        let fails = self.with(Verdict::Fail).count();
        if fails == 0 {
            writeln!(f, "verdict: can be served with these settings")
        } else {
            writeln!(
                f,
                "verdict: {fails} problem(s) would fail requests; see FAIL above"
            )
        }
    }
}

/// Runs every step of `plan` and reports. Fails only when the check itself cannot run (no
/// runtime resources); every problem of the guest, loading included, is a finding.
pub async fn run(plan: &Plan) -> Result<Report> {
    let mut report = Report {
        component: plan.route.component.clone(),
        findings: Vec::new(),
    };
    let loader = Loader::new(
        1,
        plan.route.lifecycle.memory_limit_bytes,
        plan.cache_dir.as_deref(),
        plan.max_component_bytes,
    )?;
    let started = Instant::now();
    let version = match loader.load(&plan.route.component) {
        Ok(version) => version,
        Err(e) => {
            report.push("load", Verdict::Fail, format!("{e:#}"));
            return Ok(report);
        }
    };
    let size = std::fs::metadata(&plan.route.component).map_or(0, |m| m.len());
    let world = match version.id.world {
        World::P2 => "WASI 0.2 (wasi:http/incoming-handler)",
        World::P3 => "WASI 0.3 (wasi:http/handler)",
    };
    report.push(
        "load",
        Verdict::Ok,
        format!(
            "{world}, {}, compiled and linked in {}",
            bytes(size),
            millis(started.elapsed())
        ),
    );
    let output = GuestOutput::default();
    let _collect =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(output.clone()));
    let mut driver = Driver::new(version, plan, output);
    if driver.serves_once() {
        report.push(
            "one per instance",
            Verdict::Notice,
            "the component says it is built with ComponentizeJS (StarlingMonkey), which serves \
             one request per instance: fibhost gives each request a fresh, prepared instance \
             (as with max-requests = 1), so instantiation bounds its throughput",
        );
    }
    if !driver.instantiation(&mut report).await {
        return Ok(report);
    }
    let path = plan.path.as_str();
    driver
        .single(
            &mut report,
            format!("GET {path}"),
            request(Method::GET, path, Bytes::new()),
        )
        .await;
    driver.head(&mut report, path).await;
    let large = Bytes::from(vec![b'x'; LARGE_BODY]);
    driver
        .single(
            &mut report,
            format!("POST {path} 1 MiB"),
            request(Method::POST, path, large),
        )
        .await;
    driver.slow_client(&mut report, path).await;
    driver.soak(&mut report, path).await;
    for (n, expectation) in plan.expectations.iter().enumerate() {
        driver.expectation(&mut report, n + 1, expectation).await;
    }
    Ok(report)
}

/// What a request got.
struct Answer {
    outcome: Outcome,
    /// The response head, when the guest set one.
    status: Option<StatusCode>,
    headers: HeaderMap,
    /// The body, as far as it was read.
    body: Bytes,
    /// Why the body ended early, if it did.
    body_error: Option<String>,
    elapsed: Duration,
    /// The guest's last lines of output during the request (a panic message, a traceback).
    output: Vec<String>,
}

impl Answer {
    /// Why the request failed, for a finding, with what the guest wrote meanwhile; `None`
    /// when it was answered whole.
    fn failure(&self) -> Option<String> {
        let why = self.why()?;
        Some(with_output(why, &self.output))
    }

    fn why(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Answered => self
                .body_error
                .as_ref()
                .map(|e| format!("the response body failed: {e}")),
            Outcome::Trapped { detail, .. } => Some(format!("the guest trapped: {detail}")),
            Outcome::TimedOut(limit) => Some(format!(
                "the guest ran past request-timeout ({limit:?}) and was interrupted"
            )),
            Outcome::NoResponse => Some("the guest returned without a response".to_string()),
            Outcome::Refused(e) => Some(format!("fibhost could not hand it the request: {e}")),
        }
    }

    fn summary(&self) -> String {
        let status = self
            .status
            .map_or("no response".to_string(), |s| s.to_string());
        format!(
            "{status}, {} body, {}",
            bytes(self.body.len() as u64),
            millis(self.elapsed)
        )
    }
}

/// Makes instances of the checked version and sends them requests, as a worker would.
struct Driver<'a> {
    version: Version,
    setup: Setup,
    plan: &'a Plan,
    /// The instance the next request goes to, if one is alive and usable.
    instance: Option<Instance>,
    output: GuestOutput,
}

impl<'a> Driver<'a> {
    fn new(version: Version, plan: &'a Plan, output: GuestOutput) -> Driver<'a> {
        let route = Arc::new(plan.route.clone());
        let outbound = Outbound::new(&route.prefix, &route.outbound, Metrics::new().outbound());
        let setup = Setup {
            route,
            live: LiveInstances::default(),
            outbound: Arc::new(outbound),
        };
        Driver {
            version,
            setup,
            plan,
            instance: None,
            output,
        }
    }

    fn serves_once(&self) -> bool {
        (self.version.id.serves_once).load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fresh(&self) -> Result<Instance> {
        Instance::new(&self.version, &self.setup).await
    }

    /// Times [`INSTANTIATIONS`] instantiations; false when the guest cannot be instantiated.
    async fn instantiation(&mut self, report: &mut Report) -> bool {
        let mut times = Vec::with_capacity(INSTANTIATIONS);
        for _ in 0..INSTANTIATIONS {
            let started = Instant::now();
            match self.fresh().await {
                Ok(instance) => {
                    times.push(started.elapsed());
                    drop(instance);
                }
                Err(e) => {
                    let text = with_output(format!("{e:#}"), &self.output.take());
                    report.push("instantiate", Verdict::Fail, text);
                    return false;
                }
            }
        }
        times.sort();
        report.push(
            "instantiate",
            Verdict::Ok,
            format!(
                "median {}, slowest {} over {INSTANTIATIONS} instances",
                micros(times[INSTANTIATIONS / 2]),
                micros(times[INSTANTIATIONS - 1])
            ),
        );
        true
    }

    /// Sends `request` to the current instance (a fresh one if there is none) and keeps the
    /// instance when the call left it usable.
    async fn send(&mut self, request: GuestRequest) -> Result<Answer> {
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => self.fresh().await?,
        };
        let answer = send(&mut instance, request, self.timeout(), &self.output).await;
        if answer.outcome.recycle().is_none() && !self.serves_once() {
            self.instance = Some(instance);
        }
        Ok(answer)
    }

    /// Sends `request` to a fresh instance.
    async fn send_fresh(&mut self, request: GuestRequest) -> Result<Answer> {
        self.instance = None;
        let answer = self.send(request).await;
        self.instance = None;
        answer
    }

    fn timeout(&self) -> Option<Duration> {
        self.plan.route.lifecycle.request_timeout
    }

    /// One request on a fresh instance: it must be answered.
    async fn single(&mut self, report: &mut Report, step: String, request: GuestRequest) {
        match self.send_fresh(request).await {
            Ok(answer) => match answer.failure() {
                Some(failure) => report.push(step, Verdict::Fail, failure),
                None if answer.status.is_some_and(|s| s.is_server_error()) => report.push(
                    step,
                    Verdict::Notice,
                    format!("{}: the guest answered a server error", answer.summary()),
                ),
                None => report.push(step, Verdict::Ok, answer.summary()),
            },
            Err(e) => report.push(step, Verdict::Fail, format!("{e:#}")),
        }
    }

    /// HEAD must be answered; a guest that writes a body for it does work nobody sees.
    async fn head(&mut self, report: &mut Report, path: &str) {
        let step = format!("HEAD {path}");
        let answer = match self
            .send_fresh(request(Method::HEAD, path, Bytes::new()))
            .await
        {
            Ok(answer) => answer,
            Err(e) => return report.push(step, Verdict::Fail, format!("{e:#}")),
        };
        if let Some(failure) = answer.failure() {
            return report.push(step, Verdict::Fail, failure);
        }
        if answer.body.is_empty() {
            report.push(step, Verdict::Ok, answer.summary());
        } else {
            report.push(
                step,
                Verdict::Notice,
                format!(
                    "{}: the guest wrote a body for HEAD; fibhost drops it (HTTP allows none), \
                     but the guest did the work. Answer HEAD with headers only.",
                    answer.summary()
                ),
            );
        }
    }

    /// The same body sent at once and in pauses must get the same answer: a guest that reads
    /// only what has arrived so far answers a slow client differently.
    async fn slow_client(&mut self, report: &mut Report, path: &str) {
        let step = format!("slow client POST {path}");
        let body = Bytes::from(vec![b'y'; SLOW_CHUNKS * SLOW_CHUNK]);
        let fast = self
            .send_fresh(request(Method::POST, path, body.clone()))
            .await;
        let slow = self.send_fresh(trickled(path, body)).await;
        let (fast, slow) = match (fast, slow) {
            (Ok(fast), Ok(slow)) => (fast, slow),
            (Err(e), _) | (_, Err(e)) => return report.push(step, Verdict::Fail, format!("{e:#}")),
        };
        if let Some(failure) = slow.failure() {
            return report.push(step, Verdict::Fail, failure);
        }
        let what = format!(
            "{} KiB in {SLOW_CHUNKS} chunks {}ms apart",
            SLOW_CHUNKS * SLOW_CHUNK / 1024,
            SLOW_PAUSE.as_millis()
        );
        if fast.failure().is_none() && (fast.status, &fast.body) != (slow.status, &slow.body) {
            report.push(
                step,
                Verdict::Notice,
                format!(
                    "{what}: answered {} but {} when the body arrived at once: the guest may \
                     read only what has arrived so far; read the body stream to its end",
                    slow.summary(),
                    fast.summary()
                ),
            );
        } else {
            report.push(
                step,
                Verdict::Ok,
                format!("{what}: {}, as when sent at once", slow.summary()),
            );
        }
    }

    /// `requests` GETs to one instance: every one answered, and linear memory not growing.
    async fn soak(&mut self, report: &mut Report, path: &str) {
        let total = self.plan.requests;
        let step = format!("{total} × GET {path}");
        if self.serves_once() {
            return report.push(
                step,
                Verdict::Notice,
                "not sent to one instance: the guest serves one request per instance",
            );
        }
        let Ok(first) = self.fresh().await else {
            return report.push(step, Verdict::Fail, "the instance could not be created");
        };
        self.instance = Some(first);
        // Memory is measured from a tenth of the way in: the first requests may grow the heap
        // to its working set.
        let mark = (total / 10).max(1);
        let stretch = ((total - mark) / STRETCHES).max(1);
        let mut samples = Vec::new();
        let mut statuses = BTreeMap::<u16, u64>::new();
        let started = Instant::now();
        for n in 1..=total {
            let answer = match self.send(request(Method::GET, path, Bytes::new())).await {
                Ok(answer) => answer,
                Err(e) => return report.push(step, Verdict::Fail, format!("{e:#}")),
            };
            if let Some(failure) = answer.failure() {
                if n == 2 && matches!(answer.outcome, Outcome::NoResponse) {
                    return report.push(
                        "one per instance",
                        Verdict::Notice,
                        "the guest answered its first request and returned without a response \
                         on the second: it serves one request per instance. fibhost notices \
                         this and gives every request a fresh instance (as with max-requests \
                         = 1): no request fails after the first such one, but instantiation \
                         bounds its throughput",
                    );
                }
                let text = match n {
                    1 => failure,
                    n => format!("request {n} of {total} on one instance failed: {failure}"),
                };
                return report.push(step, Verdict::Fail, text);
            }
            let status = answer.status.map_or(0, |s| s.as_u16());
            *statuses.entry(status).or_default() += 1;
            if n >= mark && ((n - mark).is_multiple_of(stretch) || n == total) {
                samples.push(self.memory());
            }
        }
        let elapsed = started.elapsed();
        let (at_mark, at_end) = (samples[0], self.memory());
        let measured = total - mark;
        let growth = at_end.saturating_sub(at_mark);
        let per_request = growth.checked_div(measured).unwrap_or(0);
        let statuses = (statuses.iter())
            .map(|(status, count)| format!("{count} × {status}"))
            .collect::<Vec<_>>()
            .join(", ");
        let served = format!(
            "{statuses} on one instance, {} per request; memory {} → {} over the last \
             {measured} requests (+{} per request)",
            micros(elapsed / u32::try_from(total).unwrap_or(u32::MAX)),
            bytes(at_mark),
            bytes(at_end),
            bytes(per_request)
        );
        if !leaks(&samples) || per_request == 0 {
            return report.push(step, Verdict::Ok, served);
        }
        let lifecycle = &self.plan.route.lifecycle;
        let room = lifecycle.memory_limit_bytes.saturating_sub(at_end);
        let until_limit = room / per_request;
        let recycled_in_time = lifecycle.reload_on_memory_bytes.is_some()
            || (lifecycle.max_requests > 0 && lifecycle.max_requests <= until_limit);
        let advice = format!(
            "the instance's memory grows on every request (a leak): at this rate it reaches \
             memory-limit ({}) after about {until_limit} more requests, and then fails one.",
            bytes(lifecycle.memory_limit_bytes)
        );
        if recycled_in_time {
            report.push(
                step,
                Verdict::Notice,
                format!(
                    "{served}\n{advice} Your max-requests or reload-on-memory recycles it first."
                ),
            );
        } else {
            report.push(
                step,
                Verdict::Fail,
                format!(
                    "{served}\n{advice} Fix the leak, or set reload-on-memory (e.g. {}) or \
                     max-requests ≤ {} so fibhost recycles instances before then.",
                    bytes(at_end + room / 2),
                    (until_limit / 2).max(1)
                ),
            );
        }
    }

    fn memory(&self) -> u64 {
        self.instance.as_ref().map_or(0, Instance::memory_bytes)
    }

    /// One of the author's own request/response pairs.
    async fn expectation(&mut self, report: &mut Report, n: usize, e: &Expectation) {
        let step = format!("expect #{n} {} {}", e.method, e.path);
        let method = Method::from_bytes(e.method.as_bytes()).unwrap_or(Method::GET);
        let mut req = request(method, &e.path, Bytes::from(e.body.clone()));
        for (name, value) in &e.headers {
            match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                (Ok(name), Ok(value)) => {
                    req.headers_mut().insert(name, value);
                }
                _ => {
                    return report.push(
                        step,
                        Verdict::Fail,
                        format!("invalid request header `{name}: {value}` in the expectations"),
                    );
                }
            }
        }
        let answer = match self.send(req).await {
            Ok(answer) => answer,
            Err(e) => return report.push(step, Verdict::Fail, format!("{e:#}")),
        };
        if let Some(failure) = answer.failure() {
            return report.push(step, Verdict::Fail, failure);
        }
        let mismatches = mismatches(&e.expect, &answer);
        if mismatches.is_empty() {
            report.push(step, Verdict::Ok, answer.summary());
        } else {
            report.push(step, Verdict::Fail, mismatches.join("\n"));
        }
    }
}

/// How `answer` differs from `expected`, one line each.
fn mismatches(expected: &Expected, answer: &Answer) -> Vec<String> {
    let mut found = Vec::new();
    let status = answer.status.map_or(0, |s| s.as_u16());
    if let Some(want) = expected.status
        && want != status
    {
        found.push(format!("status {status}, expected {want}"));
    }
    let body = String::from_utf8_lossy(&answer.body);
    if let Some(want) = &expected.body
        && *want != body
    {
        found.push(format!("body {}, expected {}", quoted(&body), quoted(want)));
    }
    if let Some(part) = &expected.body_contains
        && !body.contains(part.as_str())
    {
        found.push(format!(
            "body {} does not contain {}",
            quoted(&body),
            quoted(part)
        ));
    }
    for (name, want) in &expected.headers {
        let got = answer
            .headers
            .get(name.as_str())
            .map(|v| v.to_str().unwrap_or("(not text)"));
        if got != Some(want.as_str()) {
            found.push(format!(
                "header `{name}` is {}, expected {}",
                got.map_or("absent".to_string(), quoted),
                quoted(want)
            ));
        }
    }
    found
}

/// A text for a report line: quoted, and cut after 200 characters.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

/// Serves `request` on `instance` and reads the whole answer.
async fn send(
    instance: &mut Instance,
    request: GuestRequest,
    timeout: Option<Duration>,
    output: &GuestOutput,
) -> Answer {
    output.take();
    let (reply, answer) = guest::reply();
    let id = RequestId::Given(HeaderValue::from_static("check"));
    let started = Instant::now();
    let served = instance.serve(request, Scheme::Http, &reply, &id, timeout);
    // Read the response while the guest runs: its body may not fit the body channel.
    let read = async {
        let Ok(Ok(response)) = answer.await else {
            return (None, HeaderMap::new(), Bytes::new(), None);
        };
        let (head, mut body) = response.into_parts();
        let mut data = Vec::new();
        let mut error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(chunk) = frame.data_ref() {
                        data.extend_from_slice(chunk);
                    }
                }
                Err(e) => {
                    error = Some(format!("{e:?}"));
                    break;
                }
            }
        }
        (Some(head.status), head.headers, Bytes::from(data), error)
    };
    let (outcome, (status, headers, body, body_error)) = tokio::join!(served, read);
    Answer {
        outcome,
        status,
        headers,
        body,
        body_error,
        elapsed: started.elapsed(),
        output: output.take(),
    }
}

/// `why`, followed by what the guest wrote meanwhile, if anything.
fn with_output(why: String, output: &[String]) -> String {
    match output {
        [] => why,
        lines => format!("{why}\nThe guest wrote:\n    {}", lines.join("\n    ")),
    }
}

/// The guest's output lines, kept for the report: the check has no process log, and a
/// failure is acted on with what the guest printed (a panic message, a traceback).
#[derive(Clone, Default)]
struct GuestOutput(Arc<Mutex<VecDeque<String>>>);

impl GuestOutput {
    /// The lines kept: the last few, enough for a message and the start of a traceback.
    const KEPT: usize = 20;

    /// The lines written since the last call.
    fn take(&self) -> Vec<String> {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.drain(..).collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for GuestOutput {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        /// The formatted message of a guest-output event.
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if event.metadata().target() != crate::state::OUTPUT_TARGET {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == Self::KEPT {
            lines.pop_front();
        }
        lines.push_back(message.0);
    }
}

/// A request as a client would send it, with its body whole.
fn request(method: Method, path: &str, body: Bytes) -> GuestRequest {
    let length = body.len();
    let body = Full::new(body).map_err(|never| match never {});
    with_head(method, path, body.boxed_unsync(), length)
}

/// A POST whose body arrives in [`SLOW_CHUNKS`] pieces, [`SLOW_PAUSE`] apart.
fn trickled(path: &str, body: Bytes) -> GuestRequest {
    let chunks = (0..SLOW_CHUNKS).map(move |i| body.slice(i * SLOW_CHUNK..(i + 1) * SLOW_CHUNK));
    let stream = futures::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.next()?;
        tokio::time::sleep(SLOW_PAUSE).await;
        Some((
            Ok::<_, wasmtime_wasi_http::Error>(Frame::data(chunk)),
            chunks,
        ))
    });
    let body = StreamBody::new(stream).boxed_unsync();
    with_head(Method::POST, path, body, SLOW_CHUNKS * SLOW_CHUNK)
}

/// `body` with the head a client would send: method, path, `Host`, and the body's length.
fn with_head(method: Method, path: &str, body: HyperIncomingBody, length: usize) -> GuestRequest {
    let mut request = hyper::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    let headers = request.headers_mut();
    headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
    if length > 0 {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    request
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn memory_that_grows_in_every_stretch_leaks() {
        // 16 KiB per request, 225 requests per stretch.
        let steady: Vec<u64> = (0..=4).map(|i| 2 * MIB + i * 225 * 16 * 1024).collect();
        assert!(leaks(&steady));
    }

    #[test]
    fn a_heap_that_settles_in_steps_does_not_leak() {
        // A garbage-collected heap growing twice by 1 MiB, then flat.
        assert!(!leaks(&[4 * MIB, 4 * MIB, 5 * MIB, 5 * MIB, 6 * MIB]));
        // Growing in every stretch, but by less than LEAK_BYTES in all.
        assert!(!leaks(&[
            MIB,
            MIB + 65536,
            MIB + 131_072,
            MIB + 196_608,
            MIB + 262_144
        ]));
        assert!(!leaks(&[MIB; 5]));
        assert!(!leaks(&[]));
    }
}
