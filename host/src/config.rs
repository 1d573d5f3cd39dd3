//! Configuration: one typed, validated [`Config`] built from defaults, the TOML file and the
//! command line (in rising precedence).
//!
//! [`Settings`] is the layer type: every option is an `Option`, so a layer says only what it
//! sets. The same struct is the clap argument set (each field a flag with a `FIBHOST_*` env
//! var) and the serde shape of the file (kebab-case keys, unknown keys rejected), so the CLI
//! and the file cannot drift apart. [`Settings::resolve`] fills defaults, validates every
//! value and produces the [`Config`] the server runs on; the server never sees clap or TOML.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

pub use crate::grant::Grant;

/// Default address: loopback, so that a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default for the bounded wait queue, per component: requests that wait for a free worker.
pub const DEFAULT_QUEUE: usize = 1024;
/// Default bound on the time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// Default `request-timeout` (uWSGI's `harakiri`): a guest that runs longer is interrupted.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 60;
/// Default cap on one instance's linear memory.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 256;
/// Default jitter on lifetime and memory limits, as a fraction of the limit.
pub const DEFAULT_LIFETIME_JITTER: f64 = 0.1;
/// Default maximum request body size (413 above it).
pub const DEFAULT_MAX_BODY_MIB: u64 = 16;
/// Default maximum size of a request head (request line and headers).
pub const DEFAULT_MAX_HEADER_KIB: u64 = 64;
/// Default time a client gets to send a complete request head (slowloris bound).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default time an idle keep-alive (or HTTP/2) connection is kept open (nginx's
/// `keepalive_timeout` is 75 s; uWSGI's HTTP router closes at once).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_SECS: u64 = 60;
/// Default response buffer, KiB: the Fibonacci API's largest answers and most pages fit.
pub const DEFAULT_RESPONSE_BUFFER_KIB: u64 = 256;
/// Default time a response may wait for the client to take more bytes (nginx `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT_SECS: u64 = 60;
/// Default cap on a component file's size: a Python guest is ~30 MiB.
pub const DEFAULT_MAX_COMPONENT_MIB: u64 = 256;
/// Most accepted `max-header-size`, KiB.
pub const MAX_HEADER_KIB: u64 = 1024;
/// Most accepted `memory-limit`, MiB (wasm32 addresses 4 GiB).
pub const MAX_MEMORY_LIMIT_MIB: u64 = 4096;
/// Default cap on connections to one outbound destination, per route.
pub const DEFAULT_OUTBOUND_MAX_CONNECTIONS: usize = 16;
/// Default time to open an outbound connection.
pub const DEFAULT_OUTBOUND_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Default time an outbound request waits for its response head.
pub const DEFAULT_OUTBOUND_FIRST_BYTE_TIMEOUT_SECS: u64 = 30;
/// Default cap on simultaneously open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Most accepted `--threads`.
pub const MAX_THREADS: usize = 256;
/// Longest accepted `--workers`: each worker holds an instance slot in the pooling allocator.
pub const MAX_WORKERS: usize = 1024;

/// Output format of the process log (access log included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// One layer of settings: the command line, or the config file.
///
/// Doc comments here are the `--help` text; `examples/fibhost.toml` documents the same keys.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// The wasi:http component to serve on `/` (a `.wasm` file).
    #[arg(long, env = "FIBHOST_COMPONENT", value_name = "PATH")]
    pub component: Option<PathBuf>,

    /// Number of workers: guest instances serving in parallel, one request each
    /// [default: number of CPUs].
    #[arg(long, env = "FIBHOST_WORKERS")]
    pub workers: Option<usize>,

    /// Event-loop threads: each accepts connections and runs its share of the workers, so a
    /// request is parsed, served by the guest and answered on one thread
    /// [default: number of CPUs].
    #[arg(long, env = "FIBHOST_THREADS")]
    pub threads: Option<usize>,

    /// Address to listen on; port 0 picks a free port (the startup line prints the real one)
    /// [default: 127.0.0.1:8080].
    #[arg(long, env = "FIBHOST_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Requests that may wait for a busy worker; past this the server answers 503
    /// [default: 1024].
    #[arg(long, env = "FIBHOST_QUEUE")]
    pub queue: Option<usize>,

    /// Requests one instance of a WASI 0.3 (`wasi:http@0.3`) component may serve at once;
    /// a route then has workers × this many requests in flight. WASI 0.2 components serve
    /// one at a time whatever this says [default: 1].
    #[arg(long, env = "FIBHOST_INSTANCE_CONCURRENCY", value_name = "N")]
    pub instance_concurrency: Option<usize>,

    /// Recycle an instance after it served this many requests; 0 = never (uWSGI
    /// `max-requests`) [default: 0].
    #[arg(long, env = "FIBHOST_MAX_REQUESTS")]
    pub max_requests: Option<u64>,

    /// Recycle an instance after this many seconds; 0 = never (uWSGI
    /// `max-worker-lifetime`) [default: 0].
    #[arg(
        long = "max-worker-lifetime",
        env = "FIBHOST_MAX_WORKER_LIFETIME",
        value_name = "SECS"
    )]
    #[serde(rename = "max-worker-lifetime")]
    pub max_worker_lifetime_secs: Option<f64>,

    /// Random spread of lifetime and memory limits, as a fraction (0.1 = each instance draws
    /// its limit within ±10%), so workers do not recycle together [default: 0.1].
    #[arg(long, env = "FIBHOST_LIFETIME_JITTER", value_name = "FRACTION")]
    pub lifetime_jitter: Option<f64>,

    /// Lifetime and memory recycling spare instances younger than this (uWSGI
    /// `min-worker-lifetime`) [default: 0].
    #[arg(
        long = "min-worker-lifetime",
        env = "FIBHOST_MIN_WORKER_LIFETIME",
        value_name = "SECS"
    )]
    #[serde(rename = "min-worker-lifetime")]
    pub min_worker_lifetime_secs: Option<f64>,

    /// Recycle an instance whose linear memory exceeds this many MiB after a request; 0 =
    /// never (uWSGI `reload-on-rss`) [default: 0].
    #[arg(
        long = "reload-on-memory",
        env = "FIBHOST_RELOAD_ON_MEMORY",
        value_name = "MIB"
    )]
    #[serde(rename = "reload-on-memory")]
    pub reload_on_memory_mib: Option<u64>,

    /// Interrupt a guest still running after this many seconds: 504 for that request, fresh
    /// instance (uWSGI `harakiri`); 0 = never [default: 60].
    #[arg(
        long = "request-timeout",
        env = "FIBHOST_REQUEST_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "request-timeout")]
    pub request_timeout_secs: Option<f64>,

    /// Cap on one instance's linear memory in MiB; growth past it fails inside the guest
    /// [default: 256].
    #[arg(
        long = "memory-limit",
        env = "FIBHOST_MEMORY_LIMIT",
        value_name = "MIB"
    )]
    #[serde(rename = "memory-limit")]
    pub memory_limit_mib: Option<u64>,

    /// Environment variable granted to the guest: `NAME` passes fibhost's own value, `NAME=value`
    /// sets one (the value may contain commas). Repeat the flag for several; `FIBHOST_ENV`
    /// grants one. A guest sees no other variable.
    #[arg(long = "env", env = "FIBHOST_ENV", value_name = "NAME[=VALUE]")]
    pub env: Option<Vec<String>>,

    /// Largest accepted request body in MiB; larger ones get 413 [default: 16].
    #[arg(
        long = "max-body-size",
        env = "FIBHOST_MAX_BODY_SIZE",
        value_name = "MIB"
    )]
    #[serde(rename = "max-body-size")]
    pub max_body_mib: Option<u64>,

    /// Largest accepted request head (request line and headers) in KiB [default: 64].
    #[arg(
        long = "max-header-size",
        env = "FIBHOST_MAX_HEADER_SIZE",
        value_name = "KIB"
    )]
    #[serde(rename = "max-header-size")]
    pub max_header_kib: Option<u64>,

    /// Seconds a client has to send a complete request head before the connection is closed
    /// [default: 10].
    #[arg(
        long = "header-read-timeout",
        env = "FIBHOST_HEADER_READ_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "header-read-timeout")]
    pub header_read_timeout_secs: Option<f64>,

    /// Most client connections open at once; further clients wait in the kernel's backlog
    /// [default: 10000].
    #[arg(long, env = "FIBHOST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Turn the per-request access log off (uWSGI `disable-logging`).
    #[arg(long, env = "FIBHOST_DISABLE_LOGGING", num_args = 0..=1, default_missing_value = "true")]
    pub disable_logging: Option<bool>,

    /// Log query strings in the access log with their values; `false` keeps only the
    /// parameter names (`?token=&page=`), for queries that may carry secrets [default: true].
    #[arg(long, env = "FIBHOST_LOG_QUERY", num_args = 0..=1, default_missing_value = "true")]
    pub log_query: Option<bool>,

    /// Log format [default: text].
    #[arg(long, env = "FIBHOST_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT [default: 30].
    #[arg(
        long = "shutdown-timeout",
        env = "FIBHOST_SHUTDOWN_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "shutdown-timeout")]
    pub shutdown_timeout_secs: Option<f64>,

    /// Address of the admin listener (/metrics, /stats, /healthz, /readyz, /admin/reload);
    /// off unless set. Keep it on loopback or a private network.
    #[arg(long, env = "FIBHOST_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Bearer token required by the admin endpoints (all but /healthz and /readyz).
    #[arg(
        long,
        env = "FIBHOST_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Address of a uWSGI-style stats socket: each connection gets the stats JSON, then EOF
    /// (for `uwsgitop ADDR`).
    #[arg(long, env = "FIBHOST_STATS", value_name = "ADDR")]
    pub stats: Option<SocketAddr>,

    /// Also accept the uwsgi protocol (nginx `uwsgi_pass`) on this address (`host:port`) or
    /// unix socket path; requests go through the same routes, pools and limits.
    #[arg(long, env = "FIBHOST_UWSGI_SOCKET", value_name = "ADDR|PATH")]
    pub uwsgi_socket: Option<String>,

    /// Set SO_REUSEPORT on the public listener so several fibhost processes can share a port.
    #[arg(long, env = "FIBHOST_REUSE_PORT", num_args = 0..=1, default_missing_value = "true")]
    pub reuse_port: Option<bool>,

    /// Directory for compiled components, keyed by content hash and engine settings, so a
    /// restart or a swap back to a known version does not recompile.
    #[arg(long, env = "FIBHOST_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Watch component files and hot-swap a component when its file changes.
    #[arg(long, env = "FIBHOST_WATCH", num_args = 0..=1, default_missing_value = "true")]
    pub watch: Option<bool>,

    /// A path (e.g. `/9000`) sent as GET to a new component version before it takes traffic;
    /// anything but 2xx rejects the swap.
    #[arg(long, env = "FIBHOST_WARMUP", value_name = "PATH")]
    pub warmup: Option<String>,

    /// Destinations the guest may send HTTP requests to: `scheme://host[:port]`, `*.domain`
    /// for any subdomain. Repeatable. Default: none (every outgoing request is denied).
    #[arg(
        long = "allow-outbound",
        env = "FIBHOST_ALLOW_OUTBOUND",
        value_name = "URL"
    )]
    pub allow_outbound: Option<Vec<String>>,

    /// Most connections open at once to one outbound destination, per route [default: 16].
    #[arg(long, env = "FIBHOST_OUTBOUND_MAX_CONNECTIONS")]
    pub outbound_max_connections: Option<usize>,

    /// Seconds an outbound connection (TCP and TLS) may take to open [default: 5].
    #[arg(
        long = "outbound-connect-timeout",
        env = "FIBHOST_OUTBOUND_CONNECT_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "outbound-connect-timeout")]
    pub outbound_connect_timeout_secs: Option<f64>,

    /// Seconds an outbound request may wait for the response head [default: 30].
    #[arg(
        long = "outbound-first-byte-timeout",
        env = "FIBHOST_OUTBOUND_FIRST_BYTE_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "outbound-first-byte-timeout")]
    pub outbound_first_byte_timeout_secs: Option<f64>,

    /// PEM certificate chain: serve HTTPS (HTTP/2 via ALPN) instead of cleartext.
    #[arg(
        long,
        env = "FIBHOST_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(
        long,
        env = "FIBHOST_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Seconds an idle keep-alive or HTTP/2 connection is kept open [default: 60].
    #[arg(
        long = "keep-alive-timeout",
        env = "FIBHOST_KEEP_ALIVE_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "keep-alive-timeout")]
    pub keep_alive_timeout_secs: Option<f64>,

    /// KiB of a response fibhost buffers while the client reads it, so that the guest can
    /// finish and its worker serve others: a response that fits never pins a worker on a slow
    /// client [default: 256].
    #[arg(
        long = "response-buffer",
        env = "FIBHOST_RESPONSE_BUFFER",
        value_name = "KIB"
    )]
    #[serde(rename = "response-buffer")]
    pub response_buffer_kib: Option<u64>,

    /// Seconds a response may wait for the client to read more of it; a client that stops
    /// reading is disconnected (nginx `send_timeout`) [default: 60].
    #[arg(
        long = "send-timeout",
        env = "FIBHOST_SEND_TIMEOUT",
        value_name = "SECS"
    )]
    #[serde(rename = "send-timeout")]
    pub send_timeout_secs: Option<f64>,

    /// Largest component file fibhost reads, in MiB (startup, swaps, the admin API)
    /// [default: 256].
    #[arg(
        long = "max-component-size",
        env = "FIBHOST_MAX_COMPONENT_SIZE",
        value_name = "MIB"
    )]
    #[serde(rename = "max-component-size")]
    pub max_component_mib: Option<u64>,

    /// Directory the admin API may load components from; paths outside it are refused
    /// (default: any path fibhost can read).
    #[arg(long, env = "FIBHOST_RELOAD_DIR", value_name = "DIR")]
    pub reload_dir: Option<PathBuf>,

    /// Allow an admin or stats listener on a non-loopback address without `admin-token`
    /// (anyone who reaches it can then swap components and read stats).
    #[arg(long, env = "FIBHOST_ADMIN_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub admin_insecure: Option<bool>,

    /// Components on path prefixes (`[[route]]` tables, config file only).
    #[arg(skip)]
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSettings>,
}

/// One `[[route]]` table: a component on a path prefix, with its own workers and limits.
/// Keys left out take the top-level value.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RouteSettings {
    /// Path prefix; the longest matching prefix wins.
    pub prefix: String,
    /// The component file.
    pub component: PathBuf,
    /// Pass the path to the guest without the prefix (`/api/5` → `/5`).
    pub strip_prefix: Option<bool>,
    /// As the top-level key of the same name.
    pub workers: Option<usize>,
    /// As the top-level key of the same name.
    pub queue: Option<usize>,
    /// As the top-level key of the same name.
    pub instance_concurrency: Option<usize>,
    /// As the top-level key of the same name.
    pub max_requests: Option<u64>,
    /// As the top-level key of the same name.
    #[serde(rename = "max-worker-lifetime")]
    pub max_worker_lifetime_secs: Option<f64>,
    /// As the top-level key of the same name.
    pub lifetime_jitter: Option<f64>,
    /// As the top-level key of the same name.
    #[serde(rename = "min-worker-lifetime")]
    pub min_worker_lifetime_secs: Option<f64>,
    /// As the top-level key of the same name.
    #[serde(rename = "reload-on-memory")]
    pub reload_on_memory_mib: Option<u64>,
    /// As the top-level key of the same name.
    #[serde(rename = "request-timeout")]
    pub request_timeout_secs: Option<f64>,
    /// As the top-level key of the same name.
    #[serde(rename = "memory-limit")]
    pub memory_limit_mib: Option<u64>,
    /// As the top-level key of the same name.
    pub env: Option<Vec<String>>,
    /// As the top-level key of the same name.
    pub warmup: Option<String>,
    /// As the top-level key of the same name.
    pub allow_outbound: Option<Vec<String>>,
    /// As the top-level key of the same name.
    pub outbound_max_connections: Option<usize>,
    /// As the top-level key of the same name.
    #[serde(rename = "outbound-connect-timeout")]
    pub outbound_connect_timeout_secs: Option<f64>,
    /// As the top-level key of the same name.
    #[serde(rename = "outbound-first-byte-timeout")]
    pub outbound_first_byte_timeout_secs: Option<f64>,
}

impl RouteSettings {
    /// This route's per-component settings as a layer over the top-level ones.
    fn layer(&self) -> Settings {
        // Exhaustive: a new route key does not compile until it is layered here.
        let RouteSettings {
            prefix: _,
            strip_prefix: _,
            component,
            workers,
            queue,
            instance_concurrency,
            max_requests,
            max_worker_lifetime_secs,
            lifetime_jitter,
            min_worker_lifetime_secs,
            reload_on_memory_mib,
            request_timeout_secs,
            memory_limit_mib,
            env,
            warmup,
            allow_outbound,
            outbound_max_connections,
            outbound_connect_timeout_secs,
            outbound_first_byte_timeout_secs,
        } = self.clone();
        Settings {
            component: Some(component),
            workers,
            queue,
            instance_concurrency,
            max_requests,
            max_worker_lifetime_secs,
            lifetime_jitter,
            min_worker_lifetime_secs,
            reload_on_memory_mib,
            request_timeout_secs,
            memory_limit_mib,
            env,
            warmup,
            allow_outbound,
            outbound_max_connections,
            outbound_connect_timeout_secs,
            outbound_first_byte_timeout_secs,
            ..Settings::default()
        }
    }
}

impl Settings {
    /// Reads a config file. Unknown keys are errors that name the closest known key.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file `{}`", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config file `{}`", path.display()))
    }

    /// Parses the text of a config file.
    pub fn from_toml(text: &str) -> Result<Settings> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let hint = unknown_key(&message)
                .and_then(closest_key)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            let location = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            anyhow::anyhow!("{message}{location}{hint}")
        })
    }

    /// Returns `self` with every unset option taken from `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        // Exhaustive on both sides: a new key does not compile until it is merged here.
        let Settings {
            component,
            workers,
            threads,
            listen,
            queue,
            instance_concurrency,
            max_requests,
            max_worker_lifetime_secs,
            lifetime_jitter,
            min_worker_lifetime_secs,
            reload_on_memory_mib,
            request_timeout_secs,
            memory_limit_mib,
            env,
            max_body_mib,
            max_header_kib,
            header_read_timeout_secs,
            max_connections,
            disable_logging,
            log_format,
            shutdown_timeout_secs,
            admin_listen,
            admin_token,
            stats,
            reuse_port,
            cache_dir,
            watch,
            warmup,
            tls_cert,
            tls_key,
            keep_alive_timeout_secs,
            send_timeout_secs,
            max_component_mib,
            reload_dir,
            admin_insecure,
            log_query,
            uwsgi_socket,
            response_buffer_kib,
            allow_outbound,
            outbound_max_connections,
            outbound_connect_timeout_secs,
            outbound_first_byte_timeout_secs,
            routes,
        } = fallback;
        Settings {
            component: self.component.or(component),
            workers: self.workers.or(workers),
            threads: self.threads.or(threads),
            listen: self.listen.or(listen),
            queue: self.queue.or(queue),
            instance_concurrency: self.instance_concurrency.or(instance_concurrency),
            max_requests: self.max_requests.or(max_requests),
            max_worker_lifetime_secs: self.max_worker_lifetime_secs.or(max_worker_lifetime_secs),
            lifetime_jitter: self.lifetime_jitter.or(lifetime_jitter),
            min_worker_lifetime_secs: self.min_worker_lifetime_secs.or(min_worker_lifetime_secs),
            reload_on_memory_mib: self.reload_on_memory_mib.or(reload_on_memory_mib),
            request_timeout_secs: self.request_timeout_secs.or(request_timeout_secs),
            memory_limit_mib: self.memory_limit_mib.or(memory_limit_mib),
            env: self.env.or(env),
            max_body_mib: self.max_body_mib.or(max_body_mib),
            max_header_kib: self.max_header_kib.or(max_header_kib),
            header_read_timeout_secs: self.header_read_timeout_secs.or(header_read_timeout_secs),
            max_connections: self.max_connections.or(max_connections),
            disable_logging: self.disable_logging.or(disable_logging),
            log_format: self.log_format.or(log_format),
            shutdown_timeout_secs: self.shutdown_timeout_secs.or(shutdown_timeout_secs),
            admin_listen: self.admin_listen.or(admin_listen),
            admin_token: self.admin_token.or(admin_token),
            stats: self.stats.or(stats),
            reuse_port: self.reuse_port.or(reuse_port),
            cache_dir: self.cache_dir.or(cache_dir),
            watch: self.watch.or(watch),
            warmup: self.warmup.or(warmup),
            tls_cert: self.tls_cert.or(tls_cert),
            tls_key: self.tls_key.or(tls_key),
            keep_alive_timeout_secs: self.keep_alive_timeout_secs.or(keep_alive_timeout_secs),
            send_timeout_secs: self.send_timeout_secs.or(send_timeout_secs),
            max_component_mib: self.max_component_mib.or(max_component_mib),
            reload_dir: self.reload_dir.or(reload_dir),
            admin_insecure: self.admin_insecure.or(admin_insecure),
            log_query: self.log_query.or(log_query),
            uwsgi_socket: self.uwsgi_socket.or(uwsgi_socket),
            response_buffer_kib: self.response_buffer_kib.or(response_buffer_kib),
            allow_outbound: self.allow_outbound.or(allow_outbound),
            outbound_max_connections: self.outbound_max_connections.or(outbound_max_connections),
            outbound_connect_timeout_secs: self
                .outbound_connect_timeout_secs
                .or(outbound_connect_timeout_secs),
            outbound_first_byte_timeout_secs: self
                .outbound_first_byte_timeout_secs
                .or(outbound_first_byte_timeout_secs),
            routes: if self.routes.is_empty() {
                routes
            } else {
                self.routes
            },
        }
    }

    /// Applies defaults and validates every value, naming the key of any bad one.
    pub fn resolve(self) -> Result<Config> {
        let mut routes = Vec::new();
        if self.component.is_some() || self.routes.is_empty() {
            routes.push(self.resolve_route("/", false)?);
        }
        for route in &self.routes {
            let prefix = route.prefix.as_str();
            let layered = route.layer().or(self.clone());
            let resolved = layered
                .resolve_route(prefix, route.strip_prefix.unwrap_or(false))
                .with_context(|| format!("in the route `{prefix}`"))?;
            routes.push(resolved);
        }
        let threads = self.threads.unwrap_or_else(available_cpus);
        if threads == 0 || threads > MAX_THREADS {
            bail!("`threads` must be between 1 and {MAX_THREADS}, got {threads}");
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            bail!("`max-connections` must be at least 1");
        }
        let max_header_kib = self.max_header_kib.unwrap_or(DEFAULT_MAX_HEADER_KIB);
        if !(1..=MAX_HEADER_KIB).contains(&max_header_kib) {
            bail!(
                "`max-header-size` must be between 1 and {MAX_HEADER_KIB} KiB, got {max_header_kib}"
            );
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("`tls-cert` and `tls-key` go together: set both or neither"),
        };
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            bail!("`admin-token` is empty; leave it unset to disable the token");
        }
        let admin_insecure = self.admin_insecure.unwrap_or(false);
        for (key, addr) in [("admin-listen", self.admin_listen), ("stats", self.stats)] {
            if let Some(addr) = addr {
                check_admin_exposure(key, addr, self.admin_token.is_some(), admin_insecure)?;
            }
        }
        let max_component_mib = self.max_component_mib.unwrap_or(DEFAULT_MAX_COMPONENT_MIB);
        if max_component_mib == 0 {
            bail!("`max-component-size` must be at least 1 MiB");
        }
        Ok(Config {
            listen: self
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses")),
            routes,
            threads,
            limits: HttpLimits {
                max_body_bytes: mib(
                    "max-body-size",
                    self.max_body_mib.unwrap_or(DEFAULT_MAX_BODY_MIB),
                )?,
                max_header_bytes: (max_header_kib * 1024) as usize,
                header_read_timeout: positive_secs(
                    "header-read-timeout",
                    self.header_read_timeout_secs,
                    DEFAULT_HEADER_READ_TIMEOUT_SECS,
                )?,
                max_connections,
                keep_alive_timeout: positive_secs(
                    "keep-alive-timeout",
                    self.keep_alive_timeout_secs,
                    DEFAULT_KEEP_ALIVE_TIMEOUT_SECS,
                )?,
                response_buffer: response_buffer_bytes(self.response_buffer_kib)?,
                send_timeout: positive_secs(
                    "send-timeout",
                    self.send_timeout_secs,
                    DEFAULT_SEND_TIMEOUT_SECS,
                )?,
            },
            max_component_bytes: mib("max-component-size", max_component_mib)?,
            uwsgi_socket: self
                .uwsgi_socket
                .as_deref()
                .map(|a| a.parse().expect("any text is an address or a path")),
            reload_dir: self.reload_dir,
            access_log: !self.disable_logging.unwrap_or(false),
            log_query: self.log_query.unwrap_or(true),
            log_format: self.log_format.unwrap_or_default(),
            shutdown_timeout: required_secs(
                "shutdown-timeout",
                self.shutdown_timeout_secs
                    .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS as f64),
            )?,
            admin_listen: self.admin_listen,
            admin_token: self.admin_token,
            admin_insecure,
            stats_listen: self.stats,
            reuse_port: self.reuse_port.unwrap_or(false),
            cache_dir: self.cache_dir,
            watch: self.watch.unwrap_or(false),
            tls,
        })
    }

    /// Resolves the per-component settings for the component mounted at `prefix`.
    fn resolve_route(&self, prefix: &str, strip_prefix: bool) -> Result<RouteConfig> {
        let component = self.component.clone().context(
            "no component to serve: pass `--component PATH`, or set `component` or `[[route]]` \
             tables in the config file",
        )?;
        let workers = self.workers.unwrap_or_else(available_cpus);
        if workers == 0 || workers > MAX_WORKERS {
            bail!("`workers` must be between 1 and {MAX_WORKERS}, got {workers}");
        }
        let jitter = self.lifetime_jitter.unwrap_or(DEFAULT_LIFETIME_JITTER);
        if !(0.0..1.0).contains(&jitter) {
            bail!("`lifetime-jitter` must be a fraction in [0, 1), got {jitter}");
        }
        let memory_limit_mib = self.memory_limit_mib.unwrap_or(DEFAULT_MEMORY_LIMIT_MIB);
        if memory_limit_mib == 0 || memory_limit_mib > MAX_MEMORY_LIMIT_MIB {
            bail!(
                "`memory-limit` must be between 1 and {MAX_MEMORY_LIMIT_MIB} MiB, got {memory_limit_mib}"
            );
        }
        if let Some(warmup) = &self.warmup
            && !warmup.starts_with('/')
        {
            bail!("`warmup` must be a path starting with `/`, got `{warmup}`");
        }
        let env = resolve_env(self.env.clone().unwrap_or_default())?;
        let lifecycle = Lifecycle {
            max_requests: self.max_requests.unwrap_or(0),
            max_lifetime: optional_secs("max-worker-lifetime", self.max_worker_lifetime_secs)?,
            min_lifetime: optional_secs("min-worker-lifetime", self.min_worker_lifetime_secs)?
                .unwrap_or_default(),
            jitter,
            reload_on_memory_bytes: self
                .reload_on_memory_mib
                .filter(|&m| m > 0)
                .map(|m| mib("reload-on-memory", m))
                .transpose()?,
            request_timeout: optional_secs(
                "request-timeout",
                Some(
                    self.request_timeout_secs
                        .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS as f64),
                ),
            )?,
            memory_limit_bytes: memory_limit_mib * MIB,
        };
        let instance_concurrency = self.instance_concurrency.unwrap_or(1);
        if instance_concurrency == 0 {
            bail!("`instance-concurrency` must be at least 1");
        }
        let outbound_max_connections = self
            .outbound_max_connections
            .unwrap_or(DEFAULT_OUTBOUND_MAX_CONNECTIONS);
        if outbound_max_connections == 0 {
            bail!("`outbound-max-connections` must be at least 1");
        }
        let grants = (self.allow_outbound.iter().flatten())
            .map(|g| {
                g.parse()
                    .with_context(|| format!("`allow-outbound` entry `{g}`"))
            })
            .collect::<Result<Vec<Grant>>>()?;
        Ok(RouteConfig {
            prefix: prefix.to_string(),
            strip_prefix,
            component,
            workers,
            queue: self.queue.unwrap_or(DEFAULT_QUEUE),
            instance_concurrency,
            lifecycle,
            env,
            warmup: self.warmup.clone(),
            outbound: OutboundConfig {
                grants,
                max_connections: outbound_max_connections,
                connect_timeout: positive_secs(
                    "outbound-connect-timeout",
                    self.outbound_connect_timeout_secs,
                    DEFAULT_OUTBOUND_CONNECT_TIMEOUT_SECS,
                )?,
                first_byte_timeout: positive_secs(
                    "outbound-first-byte-timeout",
                    self.outbound_first_byte_timeout_secs,
                    DEFAULT_OUTBOUND_FIRST_BYTE_TIMEOUT_SECS,
                )?,
            },
        })
    }
}

const MIB: u64 = 1024 * 1024;

/// `response-buffer` in bytes: 1 KiB to 1 GiB.
fn response_buffer_bytes(kib: Option<u64>) -> Result<usize> {
    let kib = kib.unwrap_or(DEFAULT_RESPONSE_BUFFER_KIB);
    if !(1..=1 << 20).contains(&kib) {
        bail!("`response-buffer` must be between 1 and 1048576 KiB, got {kib}");
    }
    Ok((kib * 1024) as usize)
}

/// MiB to bytes, refusing values that do not fit.
fn mib(key: &str, value: u64) -> Result<u64> {
    value
        .checked_mul(MIB)
        .with_context(|| format!("`{key}` of {value} MiB is too large"))
}

/// A number of seconds that must be more than 0, or `default` when unset.
fn positive_secs(key: &str, secs: Option<f64>, default: u64) -> Result<Duration> {
    let secs = secs.unwrap_or(default as f64);
    if secs <= 0.0 {
        bail!("`{key}` must be more than 0 seconds, got {secs}");
    }
    required_secs(key, secs)
}

/// The default for `workers` and `threads`: one per CPU.
fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A number of seconds where 0 means "never".
fn optional_secs(key: &str, secs: Option<f64>) -> Result<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(s) => required_secs(key, s).map(Some),
    }
}

fn required_secs(key: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= Duration::from_secs(365 * 24 * 3600))
        .with_context(|| {
            format!("`{key}` must be a number of seconds from 0 to one year, got {secs}")
        })
}

fn resolve_env(entries: Vec<String>) -> Result<Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for entry in entries {
        let (name, value) = match entry.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = std::env::var(&entry).with_context(|| {
                    format!(
                        "`env` grants `{entry}`, but fibhost's environment has no such variable"
                    )
                })?;
                (entry, value)
            }
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("`env` entry `{name}` is not a variable name");
        }
        out.insert(name, value);
    }
    Ok(out.into_iter().collect())
}

fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn closest_key(key: &str) -> Option<&'static str> {
    serde_aux::serde_introspection::serde_introspect::<Settings>()
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// The resolved configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The public listener's address.
    pub listen: SocketAddr,
    /// Components and where they are mounted.
    pub routes: Vec<RouteConfig>,
    /// Event-loop threads (each with its own runtime, connections and workers).
    pub threads: usize,
    /// Limits on what clients may send.
    pub limits: HttpLimits,
    /// Whether each request is logged.
    pub access_log: bool,
    /// Whether the access log shows query values (else only their names).
    pub log_query: bool,
    /// Format of the process log.
    pub log_format: LogFormat,
    /// Bound on the drain after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Admin listener address, if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin endpoints require, if set.
    pub admin_token: Option<String>,
    /// Admin endpoints beyond loopback without a token are allowed (`admin-insecure`).
    pub admin_insecure: bool,
    /// uWSGI-style stats socket address, if enabled.
    pub stats_listen: Option<SocketAddr>,
    /// SO_REUSEPORT on the public listener.
    pub reuse_port: bool,
    /// Compiled-component cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Hot-swap components when their files change.
    pub watch: bool,
    /// Serve HTTPS with these PEM files.
    pub tls: Option<TlsFiles>,
    /// Largest component file read.
    pub max_component_bytes: u64,
    /// The uwsgi socket's address, if enabled.
    pub uwsgi_socket: Option<UwsgiAddress>,
    /// Where the admin API may load components from, if restricted.
    pub reload_dir: Option<PathBuf>,
}

/// Where the uwsgi socket listens: a TCP address, or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UwsgiAddress {
    /// `host:port`.
    Tcp(SocketAddr),
    /// A path (anything that is not an address).
    Unix(PathBuf),
}

impl std::str::FromStr for UwsgiAddress {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> std::result::Result<UwsgiAddress, Self::Err> {
        Ok(match text.parse() {
            Ok(addr) => UwsgiAddress::Tcp(addr),
            Err(_) => UwsgiAddress::Unix(PathBuf::from(text)),
        })
    }
}

impl std::fmt::Display for UwsgiAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UwsgiAddress::Tcp(addr) => write!(f, "{addr}"),
            UwsgiAddress::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The certificate chain and key of the HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One component and the path prefix it serves.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Path prefix, `/` for the single-component form.
    pub prefix: String,
    /// Whether the guest sees the path without the prefix.
    pub strip_prefix: bool,
    /// The component file.
    pub component: PathBuf,
    /// Instances serving in parallel.
    pub workers: usize,
    /// Requests that may wait for a worker before 503.
    pub queue: usize,
    /// Requests one instance of a WASI 0.3 component serves at once (1 for WASI 0.2).
    pub instance_concurrency: usize,
    /// When instances are recycled, and the limits they run under.
    pub lifecycle: Lifecycle,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Path requested from a new version before it takes traffic.
    pub warmup: Option<String>,
    /// What the guest may send out.
    pub outbound: OutboundConfig,
}

/// Outgoing HTTP of one route's guests.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundConfig {
    /// Destinations granted; empty = none.
    pub grants: Vec<Grant>,
    /// Connections open at once per destination.
    pub max_connections: usize,
    /// Time to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time to the response head.
    pub first_byte_timeout: Duration,
}

/// Recycling limits and per-request limits of one component's instances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifecycle {
    /// Requests an instance serves before it is replaced; 0 = unlimited.
    pub max_requests: u64,
    /// Age after which an instance is replaced.
    pub max_lifetime: Option<Duration>,
    /// Age before which lifetime and memory recycling hold off.
    pub min_lifetime: Duration,
    /// Fraction by which each instance's lifetime and memory limits are spread.
    pub jitter: f64,
    /// Linear memory above which an instance is replaced after a request.
    pub reload_on_memory_bytes: Option<u64>,
    /// Longest a single request may run in the guest.
    pub request_timeout: Option<Duration>,
    /// Hard cap on an instance's linear memory.
    pub memory_limit_bytes: u64,
}

/// Limits on client input, applied by the HTTP layer before any guest runs.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body; 413 above it.
    pub max_body_bytes: u64,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time to receive a full request head (and the first byte of a connection).
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Time an idle keep-alive or HTTP/2 connection stays open.
    pub keep_alive_timeout: Duration,
    /// Time a response may wait for the client to take more of it.
    pub send_timeout: Duration,
    /// Bytes of a response buffered while the client reads it.
    pub response_buffer: usize,
}

/// Refuses an admin or stats address (`key`) reachable beyond this host when no admin token
/// is set, unless `admin-insecure`: anyone who reaches it could swap components. Also checked
/// for sockets the service manager hands over, whose address only the socket knows.
pub fn check_admin_exposure(
    key: &str,
    addr: SocketAddr,
    token_set: bool,
    insecure: bool,
) -> Result<()> {
    if !token_set && !insecure && !addr.ip().is_loopback() {
        bail!(
            "`{key}` is `{addr}`, reachable beyond this host, and no `admin-token` is set: \
             anyone who reaches it could swap components. Set `admin-token` (or \
             FIBHOST_ADMIN_TOKEN), listen on loopback, or pass `--admin-insecure` to allow it \
             anyway"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        Settings::from_toml(toml).unwrap()
    }

    #[test]
    fn defaults() {
        let config = settings("component = 'x.wasm'").resolve().unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.access_log);
        let route = &config.routes[0];
        assert_eq!(route.prefix, "/");
        assert_eq!(route.queue, DEFAULT_QUEUE);
        assert_eq!(route.lifecycle.max_requests, 0);
        assert_eq!(route.lifecycle.max_lifetime, None);
        assert_eq!(
            route.lifecycle.request_timeout,
            Some(Duration::from_secs(60))
        );
        assert!(route.workers >= 1);
    }

    #[test]
    fn every_key_parses() {
        let config = settings(
            r#"
            component = "x.wasm"
            workers = 3
            listen = "0.0.0.0:0"
            queue = 7
            max-requests = 10
            max-worker-lifetime = 1.5
            lifetime-jitter = 0.2
            min-worker-lifetime = 0.5
            reload-on-memory = 64
            request-timeout = 0
            memory-limit = 128
            env = ["A=1"]
            max-body-size = 2
            max-header-size = 8
            header-read-timeout = 3
            max-connections = 100
            disable-logging = true
            log-format = "json"
            shutdown-timeout = 5
            "#,
        )
        .resolve()
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.workers, 3);
        assert_eq!(route.queue, 7);
        assert_eq!(route.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(
            route.lifecycle.max_lifetime,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(route.lifecycle.request_timeout, None);
        assert_eq!(route.lifecycle.reload_on_memory_bytes, Some(64 * MIB));
        assert_eq!(config.limits.max_header_bytes, 8 * 1024);
        assert!(!config.access_log);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn the_example_config_is_valid_and_complete() {
        let text = include_str!("../../examples/fibhost.toml");
        settings(text).resolve().unwrap();
        // Every key is documented there (commented out or set).
        for key in serde_aux::serde_introspection::serde_introspect::<Settings>() {
            let documented =
                text.contains(&format!("{key} =")) || text.contains(&format!("[[{key}]]"));
            assert!(documented, "examples/fibhost.toml lacks `{key}`");
        }
    }

    #[test]
    fn unknown_key_suggests_the_closest() {
        let err = Settings::from_toml("component = 'x'\nworkerz = 4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `workerz`"), "{err}");
        assert!(err.contains("did you mean `workers`?"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("workers = 0", "`workers`"),
            ("threads = 0", "`threads`"),
            ("lifetime-jitter = 1.5", "`lifetime-jitter`"),
            ("memory-limit = 0", "`memory-limit`"),
            ("shutdown-timeout = -1", "`shutdown-timeout`"),
            (
                "env = ['NO_SUCH_VARIABLE_FOR_FIBHOST_TEST']",
                "NO_SUCH_VARIABLE",
            ),
        ] {
            let err = settings(&format!("component = 'x'\n{toml}"))
                .resolve()
                .unwrap_err();
            assert!(format!("{err:#}").contains(key), "{toml}: {err:#}");
        }
        let err = Settings::from_toml("workers = 'four'")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn command_line_overrides_file() {
        let cli = Settings {
            workers: Some(2),
            ..Default::default()
        };
        let file = settings("component = 'a.wasm'\nworkers = 8\nqueue = 3");
        let config = cli.or(file).resolve().unwrap();
        assert_eq!(config.routes[0].workers, 2);
        assert_eq!(config.routes[0].queue, 3);
        assert_eq!(config.routes[0].component, PathBuf::from("a.wasm"));
    }

    #[test]
    fn missing_component_is_explained() {
        let err = Settings::default().resolve().unwrap_err().to_string();
        assert!(err.contains("--component"), "{err}");
    }
}
