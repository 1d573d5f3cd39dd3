//! Routing: which component serves a path. A [`Router`] is built once at startup from checked
//! prefixes (no duplicates) and answers by longest prefix; hot swaps change what a route
//! serves, never the routes themselves.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

use crate::config::RouteConfig;
use crate::lock;
use crate::metrics::RouteMetrics;
use crate::pool::Pool;

/// One mounted component: its resolved settings, its pool and its request metrics.
pub struct Route {
    /// The route's resolved settings (prefix, limits, environment…): the one copy.
    pub config: Arc<RouteConfig>,
    /// The workers.
    pub pool: Pool,
    /// Request-path metric handles, resolved once (no label lookup per request).
    pub metrics: RouteMetrics,
    /// The file the running version came from: the config's path until a swap names another
    /// (reloading "the current file" then reloads that one).
    component: Mutex<PathBuf>,
}

impl Route {
    /// A route serving `config`'s component with `pool`.
    pub fn new(config: Arc<RouteConfig>, pool: Pool, metrics: RouteMetrics) -> Route {
        let component = Mutex::new(config.component.clone());
        Route {
            config,
            pool,
            metrics,
            component,
        }
    }

    /// The route's prefix.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The file the running version came from.
    pub fn component(&self) -> PathBuf {
        lock(&self.component).clone()
    }

    /// Records that the running version now comes from `path`.
    pub fn set_component(&self, path: PathBuf) {
        *lock(&self.component) = path;
    }
}

/// The routes, longest prefix first, and the metrics of requests that match none.
pub struct Router {
    routes: Vec<Route>,
    unrouted: RouteMetrics,
}

impl Router {
    /// A router over `routes` (checked with [`check_prefixes`] before they were built).
    pub fn new(mut routes: Vec<Route>, unrouted: RouteMetrics) -> Router {
        routes.sort_by_key(|r| std::cmp::Reverse(normalized(r.prefix()).len()));
        Router { routes, unrouted }
    }

    /// The index in [`Router::routes`] of the route whose prefix is the longest match for
    /// `path`: a prefix matches the path itself and anything below it (`/api` matches `/api`
    /// and `/api/x`, not `/apix`).
    pub fn position(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| prefix_matches(r.prefix(), path))
    }

    /// The request metrics of the route at `index`, or of unrouted requests for `None`.
    pub fn metrics(&self, index: Option<usize>) -> &RouteMetrics {
        index.map_or(&self.unrouted, |index| &self.routes[index].metrics)
    }

    /// The route mounted exactly at `prefix`.
    pub fn get(&self, prefix: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.prefix() == prefix)
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Metrics of requests that matched no route.
    pub fn unrouted(&self) -> &RouteMetrics {
        &self.unrouted
    }

    /// Stops every pool's workers once their queues are empty.
    pub fn close(&self) {
        for route in &self.routes {
            route.pool.close();
        }
    }
}

/// Checks the prefixes of `routes` before anything is built: each starts with `/`, and no two
/// are the same (`/api` and `/api/` count as the same).
pub fn check_prefixes(routes: &[RouteConfig]) -> Result<()> {
    for (i, route) in routes.iter().enumerate() {
        let prefix = route.prefix.as_str();
        if !prefix.starts_with('/') {
            bail!("route prefix `{prefix}` must start with `/`");
        }
        if routes[..i]
            .iter()
            .any(|r| normalized(&r.prefix) == normalized(prefix))
        {
            bail!(
                "two components are mounted on the prefix `{prefix}`; each prefix takes one \
                 (the top-level `component` is mounted on `/`)"
            );
        }
    }
    Ok(())
}

fn normalized(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(normalized(prefix)) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn duplicate_and_relative_prefixes_are_refused() {
        let route = |prefix: &str| {
            let mut config = crate::config::Settings::from_toml("component = 'x.wasm'")
                .unwrap()
                .resolve()
                .unwrap()
                .routes
                .remove(0);
            config.prefix = prefix.to_string();
            config
        };
        assert!(check_prefixes(&[route("/"), route("/api")]).is_ok());
        let dup = check_prefixes(&[route("/api"), route("/api/")]).unwrap_err();
        assert!(dup.to_string().contains("two components"), "{dup}");
        let rel = check_prefixes(&[route("api")]).unwrap_err();
        assert!(rel.to_string().contains("must start with `/`"), "{rel}");
    }
}
