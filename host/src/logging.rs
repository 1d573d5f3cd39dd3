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
//! An event-loop thread hands its access lines over in batches: the lines gather in a
//! per-thread buffer, which goes to a shared backlog when it holds [`BATCH_BYTES`] or when
//! the thread's event loop runs out of work and goes idle ([`flush_pending`], the shards'
//! park hook); the writer thread takes the whole backlog before each write it makes. One
//! queue message per line (a push that wakes the writer thread, which then wrote a line or
//! two per `write` call) cost ~5% of keep-alive throughput; under load a batch carries ~100
//! lines. A line is never held past the moment its thread has nothing else to do, so an idle
//! server's log is as current as before; under load, access lines of different threads (and
//! the server's own log lines) may appear out of order by a batch. The backlog is bounded in
//! bytes ([`BACKLOG_BYTES`]): a batch that would pass it is dropped and its lines counted.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The most access-log bytes waiting for the writer thread (~25,000 lines: more than the line
/// queue holds); past it, batches are dropped and counted. The bound on the log's memory
/// when stderr's reader stalls.
const BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// Installs the global subscriber and returns the access log writer with the guard. Keep the
/// guard alive until exit: dropping it flushes. If a subscriber is already installed (a test
/// running several servers in one process) the first one stays.
pub fn init(format: LogFormat) -> (AccessLog, WorkerGuard) {
    let backlog = Arc::new(Backlog::default());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        // stderr is unbuffered: one syscall per line. The writer thread drains everything
        // queued, then flushes, so a buffer batches lines under load at no added latency.
        .finish(WithBacklog {
            out: std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, std::io::stderr()),
            backlog: backlog.clone(),
            spare: Vec::new(),
        });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let access = AccessLog {
        writer: writer.clone(),
        format,
        query_values: true,
        shared: Arc::new(Shared {
            backlog,
            dropped: DroppedLines {
                queue: writer.error_counter(),
                wake_ups: AtomicU64::new(0),
                in_batches: AtomicU64::new(0),
            },
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
    /// The backlog and the drop counts (its address also tells this log's batches from
    /// another's: several servers in one test process).
    shared: Arc<Shared>,
}

/// What the event-loop threads share with the writer thread.
struct Shared {
    backlog: Arc<Backlog>,
    dropped: DroppedLines,
}

/// Access-log batches the writer thread has not taken yet, at most [`BACKLOG_BYTES`].
#[derive(Default)]
struct Backlog(Mutex<Vec<u8>>);

/// The writer thread's output: before each write (and flush) it writes the backlog, so access
/// lines need no queue message of their own, only a wake-up when the backlog was empty.
struct WithBacklog<W> {
    out: W,
    backlog: Arc<Backlog>,
    /// The emptied buffer of the last backlog taken, reused as the next backlog.
    spare: Vec<u8>,
}

impl<W: std::io::Write> WithBacklog<W> {
    fn write_backlog(&mut self) -> std::io::Result<()> {
        let batches = {
            let mut backlog = self.backlog.0.lock().unwrap_or_else(|p| p.into_inner());
            if backlog.is_empty() {
                return Ok(());
            }
            std::mem::replace(&mut *backlog, std::mem::take(&mut self.spare))
        };
        self.out.write_all(&batches)?;
        // Keep a buffer for the next backlog, unless a burst made it large.
        if batches.capacity() <= 4 * BATCH_BYTES {
            self.spare = batches;
            self.spare.clear();
        }
        Ok(())
    }
}

impl<W: std::io::Write> std::io::Write for WithBacklog<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_backlog()?;
        self.out.write(buf)
    }

    /// The writer thread writes each queue message with this (an empty one is a wake-up).
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_backlog()?;
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_backlog()?;
        self.out.flush()
    }
}

/// A handle on the dropped-lines count, for the metrics.
#[derive(Clone)]
pub struct DroppedLinesHandle(Arc<Shared>);

impl DroppedLinesHandle {
    /// Lines dropped so far.
    pub fn count(&self) -> u64 {
        self.0.dropped.count()
    }
}

/// Log lines lost because the queue to the writer thread was full, or the access-log
/// backlog was (stderr's reader fell behind).
struct DroppedLines {
    /// Messages the queue dropped: lines, and wake-ups for the backlog.
    queue: ErrorCounter,
    /// Wake-ups the queue dropped (no line was lost with them).
    wake_ups: AtomicU64,
    /// Access lines in batches the backlog had no room for.
    in_batches: AtomicU64,
}

impl DroppedLines {
    /// Lines dropped so far.
    pub fn count(&self) -> u64 {
        (self.queue.dropped_lines() as u64)
            .saturating_sub(self.wake_ups.load(Ordering::Relaxed))
            .saturating_add(self.in_batches.load(Ordering::Relaxed))
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
    log: Option<(NonBlocking, Arc<Shared>)>,
}

impl Pending {
    /// Moves the gathered lines to the backlog, and wakes the writer thread if the backlog
    /// was empty (else a wake-up is on its way already).
    fn flush(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        if let Some((writer, shared)) = &mut self.log {
            let was_empty = {
                let mut backlog = shared.backlog.0.lock().unwrap_or_else(|p| p.into_inner());
                if backlog.len() + self.lines.len() > BACKLOG_BYTES {
                    (shared.dropped.in_batches).fetch_add(self.count, Ordering::Relaxed);
                    None
                } else {
                    let was_empty = backlog.is_empty();
                    backlog.extend_from_slice(&self.lines);
                    Some(was_empty)
                }
            };
            if was_empty == Some(true) {
                let dropped = &shared.dropped;
                let before = dropped.queue.dropped_lines();
                // An empty message: `write_all` would send nothing.
                let _ = std::io::Write::write(writer, &[]);
                if dropped.queue.dropped_lines() != before {
                    dropped.wake_ups.fetch_add(1, Ordering::Relaxed);
                }
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
    pub fn dropped_lines(&self) -> DroppedLinesHandle {
        DroppedLinesHandle(self.shared.clone())
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
            let ours = (pending.log.as_ref()).is_some_and(|(_, s)| Arc::ptr_eq(s, &self.shared));
            if !ours {
                pending.flush();
                pending.log = Some((self.writer.clone(), self.shared.clone()));
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
