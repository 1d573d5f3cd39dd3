//! fibhost: a WebAssembly application server for `wasi:http` components.
//!
//! It loads components that export `wasi:http/incoming-handler`, runs N workers of each,
//! reuses each instance across requests until a limit recycles it into a fresh one
//! (make-before-break), swaps components without a failed request, and serves them over
//! HTTP/1.1 and HTTP/2.
//!
//! # Layout
//! Composition:
//! - [`app`]: [`App::build`] (all fallible work before binding), [`Listeners`], and [`run`],
//!   the one entry that serves a built app (the binary and in-process tests call it).
//! - [`config`]: defaults, config file and command line merged into one validated [`Config`];
//!   [`cli`]: the command line (clap) over it.
//! - [`activation`]: listening sockets handed over by systemd (socket activation).
//!
//! For guest authors:
//! - [`check`]: `fibhost check`, a component driven in-process before it is deployed.
//! - [`scaffold`]: `fibhost new`, guest projects from templates.
//!
//! Requests, outside in:
//! - [`server`]: the public listener: connection bounds and timeouts, protocol detection,
//!   the access log, the graceful drain.
//! - [`routes`]: the [`Router`](routes::Router): which component serves a path.
//! - [`pool`]: one component's workers: admission, lanes, recycling policy, spares, swaps.
//! - [`guest`]: one guest instance: creating it and serving one request through it.
//! - [`state`]: the data of a guest's store: WASI contexts, memory limiter, output, policy
//!   for outgoing requests.
//! - [`outcome`]: what a call into a guest did, and why an instance is recycled.
//! - [`outbound`]: guests' outgoing HTTP, by grant ([`grant`]: parsing and matching grants).
//! - [`error`]: every host-side failure and the one place it becomes an HTTP response.
//!
//! Around them:
//! - [`engine`]: the wasmtime engine, and the loader that turns a file into a checked version.
//! - [`cache`]: the on-disk cache of compiled components.
//! - [`shards`]: the event-loop threads that accept connections and run the workers.
//! - [`swap`]: hot swap (admin call, SIGHUP, file watch).
//! - [`admin`]: the admin listener and the uWSGI-style stats socket.
//! - [`metrics`]: Prometheus metrics.
//! - [`logging`]: the process log (text or JSON) behind a non-blocking writer.
//! - [`request_id`]: the id that joins a request's log lines.
//! - [`signals`]: SIGTERM/SIGINT as a shutdown future, SIGHUP as a stream of reloads.
//! - [`tls`]: HTTPS: rustls configuration from PEM files, reloadable.
//! - [`uwsgi`]: the uwsgi protocol listener (nginx `uwsgi_pass`), served through the same path.

pub mod activation;
pub mod admin;
pub mod app;
pub mod cache;
pub mod check;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod grant;
pub mod guest;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod outcome;
pub mod pool;
pub mod request_id;
pub mod routes;
pub mod scaffold;
pub mod server;
pub mod shards;
pub mod signals;
pub mod state;
pub mod swap;
pub mod tls;
pub mod uwsgi;

pub use app::{App, Listeners, run};

/// Locks `mutex`, taking its data even if a thread panicked while holding it: fibhost's
/// mutexes guard data that is whole between statements (a path, a reply slot, partial output
/// lines, the routes' metrics), so one panic must not spread to every later user.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
pub use config::Config;
