//! The process log: text or JSON lines on stderr, written by a background thread so that a
//! slow terminal or pipe never stalls a request.
//!
//! Targets: `fibhost::access` (one line per request), `fibhost::guest` (guest stdout and
//! stderr, one line per line written), everything else is the server's own. `RUST_LOG`
//! overrides the default filter (`info`) for all but the access log, which `disable-logging`
//! controls.
//!
//! The access log bypasses `tracing`: going through the subscriber (filter, field visitors,
//! timestamp formatting) cost ~17% of keep-alive throughput; [`AccessLog`] formats the same
//! line by hand into the same non-blocking writer.
//!
//! An event-loop thread hands its access lines to the writer thread in batches: the lines
//! gather in a per-thread buffer, sent when it holds [`BATCH_BYTES`] or when the thread's
//! event loop runs out of work and goes idle ([`flush_pending`], the shards' park hook). One
//! hand-off per line (a queue push that wakes the writer thread, which then writes a line or
//! two per `write` call) cost ~5% of keep-alive throughput; under load a batch carries ~100
//! lines. A line is never held past the moment its thread has nothing else to do, so an idle
//! server's log is as current as before; under load, access lines of different threads (and
//! the server's own log lines) may appear out of order by a batch.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::request_id::RequestId;

/// Bytes the log writer thread gathers before a write to stderr.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Lines buffered before the writer starts dropping (and counting) them instead of blocking.
///
/// The queue's slots are allocated and touched up front (~40 bytes each), so this is
/// resident memory: 256 Ki lines cost 10 MB of a 26 MB idle RSS. 16 Ki lines lost no line
/// at ~95k logged requests/s (`wrk -c500`, stderr to a file): the writer thread drains the
/// queue in batches far faster than it fills.
const BUFFERED_LINES: usize = 16 * 1024;

/// Access-log bytes a thread gathers before it hands them to the writer thread (~100 lines).
const BATCH_BYTES: usize = 16 * 1024;

/// Installs the global subscriber and returns the access log writer with the guard. Keep the
/// guard alive until exit: dropping it flushes. If a subscriber is already installed (a test
/// running several servers in one process) the first one stays.
pub fn init(format: LogFormat) -> (AccessLog, WorkerGuard) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        // stderr is unbuffered: one syscall per line. The writer thread drains everything
        // queued, then flushes, so a buffer batches lines under load at no added latency.
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let access = AccessLog {
        writer: writer.clone(),
        format,
        query_values: true,
        dropped: Arc::new(DroppedLines {
            queue: writer.error_counter(),
            in_batches: AtomicU64::new(0),
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => drop(builder.with_ansi(false).try_init()),
        LogFormat::Json => drop(builder.json().flatten_event(true).try_init()),
    }
    (access, guard)
}

/// One access-log line per request, in the format of the rest of the log (text or JSON).
#[derive(Clone)]
pub struct AccessLog {
    writer: NonBlocking,
    format: LogFormat,
    /// Whether query values are logged (`log-query`); else only parameter names.
    query_values: bool,
    /// Also tells this log's batches from another's (several servers in one test process).
    dropped: Arc<DroppedLines>,
}

/// Log lines lost because the queue to the writer thread was full (stderr's reader fell
/// behind). The queue counts each message it drops as one; a dropped batch of access lines
/// is counted here as the lines it held.
pub struct DroppedLines {
    queue: ErrorCounter,
    /// Lines beyond the first of each dropped batch.
    in_batches: AtomicU64,
}

impl DroppedLines {
    /// Lines dropped so far.
    pub fn count(&self) -> u64 {
        self.queue.dropped_lines() as u64 + self.in_batches.load(Ordering::Relaxed)
    }
}

/// What one access-log line says.
#[derive(Clone, Copy)]
pub struct AccessEntry<'a> {
    /// Request method.
    pub method: &'a str,
    /// Path and query as sent.
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// From request head to the end of the response body.
    pub duration_us: u64,
    /// The worker that served it (0: none).
    pub worker: usize,
    /// The request's id.
    pub request_id: &'a RequestId,
    /// The client's address (the peer of the connection).
    pub client: std::net::SocketAddr,
}

/// One thread's access lines not yet handed to the writer thread, and the log they go to.
struct Pending {
    lines: Vec<u8>,
    count: u64,
    /// The formatted date of the last second seen, and that second.
    date: (u64, String),
    log: Option<(NonBlocking, Arc<DroppedLines>)>,
}

impl Pending {
    /// Hands the gathered lines to the writer thread (one queue message).
    fn flush(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        if let Some((writer, dropped)) = &mut self.log {
            let before = dropped.queue.dropped_lines();
            let _ = writer.write_all(&self.lines);
            if dropped.queue.dropped_lines() != before {
                (dropped.in_batches).fetch_add(self.count - 1, Ordering::Relaxed);
            }
        }
        self.lines.clear();
        self.count = 0;
    }
}

impl Drop for Pending {
    /// A thread that ends hands over what it still holds.
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending { lines: Vec::new(), count: 0, date: (u64::MAX, String::new()), log: None })
    };
}

/// Hands this thread's gathered access lines to the writer thread. The event-loop threads
/// call it each time they run out of work, and when they end.
pub fn flush_pending() {
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.flush();
        }
    });
}

impl AccessLog {
    /// This log, showing query values or (`false`) only the parameter names.
    pub fn with_query_values(self, query_values: bool) -> AccessLog {
        AccessLog {
            query_values,
            ..self
        }
    }

    /// Counts the log lines (access and process log alike) dropped because the queue to the
    /// writer thread was full: stderr's reader fell behind.
    pub fn dropped_lines(&self) -> Arc<DroppedLines> {
        self.dropped.clone()
    }

    /// Writes `entry` (through the background writer: never blocks on the terminal or pipe).
    pub fn write(&self, entry: &AccessEntry<'_>) {
        let redacted;
        let entry = match entry.path.split_once('?') {
            Some((path, query)) if !self.query_values => {
                redacted = format!("{path}?{}", query_names(query));
                &AccessEntry {
                    path: &redacted,
                    ..*entry
                }
            }
            _ => entry,
        };
        PENDING.with(|pending| {
            let pending = &mut *pending.borrow_mut();
            let ours = (pending.log.as_ref()).is_some_and(|(_, d)| Arc::ptr_eq(d, &self.dropped));
            if !ours {
                pending.flush();
                pending.log = Some((self.writer.clone(), self.dropped.clone()));
            }
            let (line, (cached_secs, cached_date)) = (&mut pending.lines, &mut pending.date);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if now.as_secs() != *cached_secs {
                *cached_secs = now.as_secs();
                *cached_date = rfc3339_seconds(now.as_secs());
            }
            let micros = now.subsec_micros();
            let e = entry;
            // Writing into a Vec cannot fail.
            let _ = match self.format {
                LogFormat::Text => writeln!(
                    line,
                    "{cached_date}.{micros:06}Z  INFO fibhost::access: method={} path={} status={} \
                     bytes={} duration_us={} worker={} request_id={} client={}",
                    e.method,
                    e.path,
                    e.status,
                    e.bytes,
                    e.duration_us,
                    e.worker,
                    e.request_id,
                    e.client
                ),
                LogFormat::Json => writeln!(
                    line,
                    "{{\"timestamp\":\"{cached_date}.{micros:06}Z\",\"level\":\"INFO\",\
                     \"target\":\"fibhost::access\",\"method\":{},\"path\":{},\"status\":{},\
                     \"bytes\":{},\"duration_us\":{},\"worker\":{},\"request_id\":\"{}\",\
                     \"client\":\"{}\"}}",
                    serde_json::Value::from(e.method),
                    serde_json::Value::from(e.path),
                    e.status,
                    e.bytes,
                    e.duration_us,
                    e.worker,
                    e.request_id,
                    e.client
                ),
            };
            pending.count += 1;
            // Off the event-loop threads nothing calls `flush_pending`: hand the line over now.
            if pending.lines.len() >= BATCH_BYTES || crate::shards::Shards::current().is_none() {
                pending.flush();
            }
        });
    }
}

/// A query string with its values dropped: `a=1&b&c=x` → `a=&b&c=`.
fn query_names(query: &str) -> String {
    let names: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}="),
            None => pair.to_string(),
        })
        .collect();
    names.join("&")
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for a Unix time, by the days-to-civil algorithm.
fn rfc3339_seconds(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{query_names, rfc3339_seconds};

    #[test]
    fn query_values_can_be_left_out() {
        assert_eq!(query_names("token=s3cret&page=2&flag"), "token=&page=&flag");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00");
        assert_eq!(rfc3339_seconds(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(rfc3339_seconds(1_795_609_845), "2026-11-25T12:30:45");
    }
}
