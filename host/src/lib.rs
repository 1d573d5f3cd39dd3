//! fibhost: a WebAssembly application server for `wasi:http` components.
//!
//! It loads a component that exports `wasi:http/incoming-handler`, runs N workers of it, reuses
//! each instance across requests until a lifetime limit recycles it into a fresh one, and serves
//! it over HTTP/1.1 and HTTP/2.
//!
//! # Layout
//! - [`config`]: defaults, config file and command line merged into one validated [`Config`].
//! - [`engine`]: the wasmtime engine, and the loader that turns a component file into a
//!   checked, pre-instantiated version.
//! - [`guest`]: one guest instance: its store, its limits, serving one request.
//! - [`pool`]: the workers of one component: queue, recycling, make-before-break, hot swap.
//! - [`shards`]: the event-loop threads that accept connections and run the workers.
//! - [`server`]: the listener, routing, access log and graceful drain.
//! - [`error`]: every host-side failure and the one place it becomes an HTTP response.
//! - [`logging`]: the process log (text or JSON) behind a non-blocking writer.
//! - [`signals`]: SIGTERM/SIGINT as a shutdown future, SIGHUP as a stream of reloads.
//! - [`swap`]: hot swap: reload a route's component (admin call, SIGHUP, file watch), warm-up.
//! - [`cache`]: the on-disk cache of compiled components.
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: the admin listener (/metrics, /stats, /healthz, /readyz, /admin/reload) and
//!   the uWSGI-style stats socket.
//! - [`tls`]: HTTPS: rustls configuration from PEM files, reloadable.
//!
//! [`App::build`] does all fallible, expensive work (compile, check, instantiate) before the
//! binary binds its port; [`server::serve`] then runs on the bound listener.

pub mod admin;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod guest;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod shards;
pub mod signals;
pub mod swap;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};

pub use config::Config;
use config::HttpLimits;
use engine::Loader;
use metrics::{Metrics, RouteMetrics, SwapCounters};
use pool::Pool;
use shards::Shards;

/// One mounted component: its prefix, its pool and its request metrics.
pub struct Route {
    /// Path prefix (`/` for the single-component form).
    pub prefix: String,
    /// Whether the guest sees the path without the prefix.
    pub strip_prefix: bool,
    /// The workers.
    pub pool: Pool,
    /// Request-path metric handles (shared by every response of the route).
    pub metrics: Arc<RouteMetrics>,
    /// The file the running version came from (a swap may name another).
    pub component: Mutex<PathBuf>,
    /// Path requested from a new version before it takes traffic.
    pub warmup: Option<String>,
}

/// Everything the server needs to answer requests: the component pools by route, the loader
/// for hot swaps, metrics and limits.
pub struct App {
    /// Routes ordered by descending prefix length, so the first match is the longest.
    routes: Vec<Route>,
    /// Compiles and checks components (hot swaps use it off the request path).
    pub loader: Loader,
    /// Limits on client input.
    pub limits: HttpLimits,
    /// Where each request is logged; `None` with `disable-logging`.
    pub access_log: Option<logging::AccessLog>,
    /// Bound on the drain after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Set once shutdown begins: readiness turns 503, responses carry `Connection: close`.
    pub draining: AtomicBool,
    /// The Prometheus registry.
    pub metrics: Metrics,
    /// Metrics for requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
    /// Swap outcomes, per route.
    pub swaps: Arc<SwapCounters>,
    /// Longest a swap waits for busy workers to move to the new version before reporting.
    pub swap_drain_wait: Duration,
    /// The event-loop threads that accept connections and run the workers.
    pub shards: Shards,
}

impl App {
    /// Builds the engine, then loads, checks and instantiates every component. All of a
    /// component's failures surface here, before any port is bound.
    /// `access_log` is the writer for the per-request log (used unless `disable-logging`).
    pub async fn build(config: &Config, access_log: logging::AccessLog) -> Result<Arc<App>> {
        let workers = config.routes.iter().map(|r| r.workers).sum();
        let max_memory = config
            .routes
            .iter()
            .map(|r| r.lifecycle.memory_limit_bytes)
            .max()
            .unwrap_or(0);
        let engine = engine::new_engine(workers, max_memory)?;
        engine::start_epoch_ticker(&engine);
        let loader = Loader::new(engine, config.cache_dir.as_deref())?;
        let shards = Shards::start(config.threads)?;
        let mut metrics = Metrics::new(access_log.dropped_lines());
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let version = loader.load(&route.component)?;
            if let Some(path) = &route.warmup {
                let spec = guest::InstanceSpec::for_route(route);
                swap::warm_up(&version, &spec, path)
                    .await
                    .with_context(|| {
                        format!("the component for `{}` failed its warm-up", route.prefix)
                    })?;
            }
            tracing::info!(
                route = %route.prefix,
                version = %version.id,
                workers = route.workers,
                "component loaded"
            );
            let pool = Pool::start(route, version, &shards).await?;
            routes.push(Route {
                prefix: route.prefix.clone(),
                strip_prefix: route.strip_prefix,
                metrics: Arc::new(metrics.route(&route.prefix)),
                pool,
                component: Mutex::new(route.component.clone()),
                warmup: route.warmup.clone(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.trim_end_matches('/').len()));
        let swaps = Arc::new(SwapCounters::default());
        metrics.register_pools(
            routes.iter().map(|r| r.pool.clone()).collect(),
            swaps.clone(),
        );
        let swap_drain_wait = config
            .routes
            .iter()
            .filter_map(|r| r.lifecycle.request_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        Ok(Arc::new(App {
            routes,
            loader,
            limits: config.limits.clone(),
            access_log: config.access_log.then_some(access_log),
            shutdown_timeout: config.shutdown_timeout,
            draining: AtomicBool::new(false),
            unrouted: Arc::new(metrics.route("")),
            metrics,
            swaps,
            swap_drain_wait,
            shards,
        }))
    }

    /// The route whose prefix is the longest match for `path`: a prefix matches the path
    /// itself and anything below it (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Stops every pool's workers once their queues are empty.
    pub fn close(&self) {
        for route in &self.routes {
            route.pool.close();
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_matches;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches("/", "/9000"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/5"));
        assert!(prefix_matches("/api/", "/api/5"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
    }
}
