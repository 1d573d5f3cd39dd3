//! Hot swap: replacing a route's running component without a restart and without a failed
//! request. Three triggers share [`Swapper::reload`]: the admin API, SIGHUP (which also
//! re-reads the config file) and the file watcher.
//!
//! A swap compiles and checks the new file off the request path, instantiates it, sends the
//! optional warm-up request, and only then hands it to the pool, which moves workers over
//! make-before-break (see `pool`). Any failure before the hand-over leaves the old version
//! serving and is reported (log, metrics, admin answer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::engine::Loader;
use crate::guest::{Instance, LiveInstances};
use crate::metrics::Metrics;
use crate::routes::{Route, Router};

/// How long the watcher waits for a file to stop changing before it reloads.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// What one route's swap did.
#[derive(Debug, Serialize)]
pub struct Swapped {
    /// The route.
    pub route: String,
    /// The component file now serving.
    pub component: PathBuf,
    /// SHA-256 of the version now serving.
    pub version: String,
    /// SHA-256 of the version it replaced.
    pub previous: String,
    /// Workers still finishing a request on the previous version when the swap returned.
    pub still_draining: usize,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No route has this prefix.
    #[error("no route has the prefix `{0}`")]
    NoSuchRoute(String),
    /// A component path was given without saying which of several routes it is for.
    #[error("several routes are mounted; name the route to load `{0}` into")]
    WhichRoute(PathBuf),
    /// The new component failed a check; the old version keeps serving.
    #[error("route `{route}` keeps its running version: {reason}")]
    Rejected {
        /// The route.
        route: String,
        /// What failed.
        reason: String,
    },
}

/// Performs swaps for one server, one at a time (two concurrent reloads of one route would
/// race to publish).
pub struct Swapper {
    router: Arc<Router>,
    loader: Loader,
    live: LiveInstances,
    metrics: Arc<Metrics>,
    one_at_a_time: Mutex<()>,
}

impl Swapper {
    /// A swapper over `router`'s routes, loading with `loader`, counting in `metrics`.
    pub fn new(
        router: Arc<Router>,
        loader: Loader,
        live: LiveInstances,
        metrics: Arc<Metrics>,
    ) -> Swapper {
        Swapper {
            router,
            loader,
            live,
            metrics,
            one_at_a_time: Mutex::new(()),
        }
    }

    /// Reloads `route` (all routes when `None`) from `component` (its current file when
    /// `None`).
    pub async fn reload(
        &self,
        route: Option<&str>,
        component: Option<PathBuf>,
    ) -> Result<Vec<Swapped>, SwapError> {
        let routes = self.router.routes();
        let targets: Vec<&Route> = match route {
            Some(prefix) => vec![
                self.router
                    .get(prefix)
                    .ok_or_else(|| SwapError::NoSuchRoute(prefix.to_string()))?,
            ],
            None if component.is_some() && routes.len() > 1 => {
                return Err(SwapError::WhichRoute(component.unwrap_or_default()));
            }
            None => routes.iter().collect(),
        };
        let _one_at_a_time = self.one_at_a_time.lock().await;
        let mut swapped = Vec::new();
        for target in targets {
            let path = component.clone().unwrap_or_else(|| target.component());
            match self.swap_route(target, &path).await {
                Ok(done) => {
                    self.metrics.count_swap(target.prefix(), "ok");
                    swapped.push(done);
                }
                Err(e) => {
                    self.metrics.count_swap(target.prefix(), "rejected");
                    let reason = format!("{e:#}");
                    tracing::warn!(route = %target.prefix(), component = %path.display(), reason, "swap rejected; the running version keeps serving");
                    return Err(SwapError::Rejected {
                        route: target.prefix().to_string(),
                        reason,
                    });
                }
            }
        }
        Ok(swapped)
    }

    async fn swap_route(&self, route: &Route, path: &Path) -> Result<Swapped> {
        let loader = self.loader.clone();
        let owned = path.to_path_buf();
        let version = tokio::task::spawn_blocking(move || loader.load(&owned))
            .await
            .context("the compile task failed")??;
        if let Some(warmup) = &route.config.warmup {
            let mut instance = Instance::new(&version, &route.config, &self.live)
                .await
                .context("the warm-up instance failed to start")?;
            let timeout = route.config.lifecycle.request_timeout;
            instance.warm_up(warmup, timeout).await?;
        }
        let previous = route.pool.version();
        let report = route.pool.swap(version).await?;
        route.set_component(path.to_path_buf());
        tracing::info!(
            route = %route.prefix(),
            version = %report.version,
            previous = previous.short(),
            still_draining = report.still_draining,
            "swapped component"
        );
        Ok(Swapped {
            route: route.prefix().to_string(),
            component: path.to_path_buf(),
            version: report.version.sha256.clone(),
            previous: previous.sha256.clone(),
            still_draining: report.still_draining,
        })
    }

    /// On SIGHUP: reloads every route from the component path the re-read `config` names for
    /// it. Changes that need a restart (new or removed routes, worker counts, limits, threads,
    /// listeners) are logged, not applied.
    pub async fn apply(&self, config: &Config, threads: usize) {
        if config.threads != threads {
            tracing::warn!(
                running = threads,
                configured = config.threads,
                "SIGHUP: changing `threads` needs a restart"
            );
        }
        let wanted: HashMap<&str, _> = config
            .routes
            .iter()
            .map(|r| (r.prefix.as_str(), r))
            .collect();
        for route in self.router.routes() {
            let Some(new) = wanted.get(route.prefix()) else {
                tracing::warn!(route = %route.prefix(), "SIGHUP: the config no longer has this route; removing routes needs a restart");
                continue;
            };
            let running = &route.config;
            if new.workers != running.workers || new.lifecycle != running.lifecycle {
                tracing::warn!(route = %route.prefix(), "SIGHUP: worker count and limits changes need a restart; reloading the component only");
            }
            let reloaded = self
                .reload(Some(route.prefix()), Some(new.component.clone()))
                .await;
            if let Err(e) = reloaded {
                tracing::error!(error = %e, "SIGHUP: reload failed");
            }
        }
        for prefix in wanted.keys().filter(|p| self.router.get(p).is_none()) {
            tracing::warn!(route = %prefix, "SIGHUP: adding routes needs a restart");
        }
    }

    /// Watches every route's component file and hot-swaps a route when its file's content
    /// changes. Watches the parent directory so atomic renames and in-place copies are both
    /// seen; waits for [`WATCH_DEBOUNCE`] of quiet, then compares the content hash with the
    /// running version.
    pub fn watch(self: Arc<Self>) -> Result<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
            })
            .context("cannot start the file watcher")?;
        let mut dirs: Vec<PathBuf> = (self.router.routes().iter())
            .filter_map(|r| parent(&r.component()))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch `{}`", dir.display()))?;
        }
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut changed = vec![first];
                while let Ok(Some(path)) = tokio::time::timeout(WATCH_DEBOUNCE, rx.recv()).await {
                    changed.push(path);
                }
                for route in self.router.routes() {
                    let file = route.component();
                    let touched = changed.iter().any(|p| same_file(p, &file));
                    if touched && content_changed(route, &file) {
                        tracing::info!(route = %route.prefix(), component = %file.display(), "component file changed; swapping");
                        let _ = self.reload(Some(route.prefix()), Some(file)).await;
                    }
                }
            }
        });
        Ok(watcher)
    }
}

fn parent(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute.parent().map(Path::to_path_buf)
}

fn same_file(event_path: &Path, file: &Path) -> bool {
    match (std::path::absolute(event_path), std::path::absolute(file)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn content_changed(route: &Route, file: &Path) -> bool {
    match std::fs::read(file) {
        Ok(bytes) => crate::engine::sha256_hex(&bytes) != route.pool.version().sha256,
        // Missing for a moment during a replace: the event that completes it comes next.
        Err(_) => false,
    }
}
