//! fibhost: a WebAssembly application server for `wasi:http` components.
//!
//! It loads a component that exports `wasi:http/incoming-handler`, runs N workers of it, reuses
//! each instance across requests until a lifetime limit recycles it into a fresh one, and serves
//! it over HTTP/1.1 and HTTP/2.
//!
//! # Layout
//! - [`config`]: defaults, config file and command line merged into one validated [`Config`].
//! - [`engine`]: the wasmtime engine, and loading a component file into a checked version.
//! - [`guest`]: one guest instance: its store, its limits, serving one request.
//! - [`pool`]: the workers of one component: queue, recycling, make-before-break, hot swap.
//! - [`server`]: the listener, routing, access log and graceful drain.
//! - [`error`]: every host-side failure and the one place it becomes an HTTP response.
//! - [`logging`]: the process log (text or JSON) behind a non-blocking writer.
//! - [`signals`]: SIGTERM/SIGINT as a shutdown future.
//!
//! [`App::build`] does all fallible, expensive work (compile, check, instantiate) before the
//! binary binds its port; [`server::serve`] then runs on the bound listener.

pub mod config;
pub mod engine;
pub mod error;
pub mod guest;
pub mod logging;
pub mod pool;
pub mod server;
pub mod signals;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Result;

pub use config::Config;
use config::HttpLimits;
use pool::Pool;

/// Everything the server needs to answer requests: the component pools, by route.
pub struct App {
    /// Pools ordered by descending prefix length, so the first match is the longest.
    routes: Vec<Pool>,
    /// Limits on client input.
    pub limits: HttpLimits,
    /// Whether each request is logged.
    pub access_log: bool,
    /// Bound on the drain after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Set once shutdown begins: responses then carry `Connection: close`.
    pub draining: AtomicBool,
}

impl App {
    /// Builds the engine, then loads, checks and instantiates every component. All of a
    /// component's failures surface here, before any port is bound.
    pub async fn build(config: &Config) -> Result<Arc<App>> {
        let workers = config.routes.iter().map(|r| r.workers).sum();
        let max_memory = config
            .routes
            .iter()
            .map(|r| r.lifecycle.memory_limit_bytes)
            .max()
            .unwrap_or(0);
        let engine = engine::new_engine(workers, max_memory)?;
        engine::start_epoch_ticker(&engine);
        let linker = engine::new_linker(&engine)?;
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let version = engine::load(&engine, &linker, &route.component)?;
            tracing::info!(
                route = %route.prefix,
                version = %version.id,
                workers = route.workers,
                "component loaded"
            );
            let pool = Pool::start(
                &route.prefix,
                version,
                route.workers,
                route.queue,
                route.lifecycle.clone(),
                route.env.clone(),
            )
            .await?;
            routes.push(pool);
        }
        routes.sort_by_key(|p| std::cmp::Reverse(p.route().len()));
        Ok(Arc::new(App {
            routes,
            limits: config.limits.clone(),
            access_log: config.access_log,
            shutdown_timeout: config.shutdown_timeout,
            draining: AtomicBool::new(false),
        }))
    }

    /// The pool whose prefix is the longest match for `path`: a prefix matches the path
    /// itself and anything below it (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub fn route(&self, path: &str) -> Option<&Pool> {
        self.routes
            .iter()
            .find(|pool| prefix_matches(pool.route(), path))
    }

    /// All pools, longest prefix first.
    pub fn pools(&self) -> &[Pool] {
        &self.routes
    }

    /// Stops every pool's workers once their queues are empty.
    pub fn close(&self) {
        for pool in &self.routes {
            pool.close();
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
