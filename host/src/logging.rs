//! The process log: text or JSON lines on stderr, written by a background thread so that a
//! slow terminal or pipe never stalls a request.
//!
//! Targets: `fibhost::access` (one line per request), `fibhost::guest` (guest stdout and
//! stderr, one line per line written), everything else is the server's own. `RUST_LOG`
//! overrides the default filter (`info`).

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines buffered before the writer starts dropping (and counting) them instead of blocking.
const BUFFERED_LINES: usize = 256 * 1024;

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
