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
use crate::guest::Instance;
use crate::metrics::Metrics;
use crate::routes::{Route, Router};

/// How long the watcher waits for a file to stop changing before it reloads.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Whether a reload of content identical to the running version does anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Identical content is a no-op (logged): SIGHUP with unchanged files recycles nothing.
    IfChanged,
    /// Reload even identical content: every worker gets a fresh instance (`touch` under
    /// `watch`, uWSGI's `touch-reload`; `force=1` on the admin API).
    Always,
}

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
    /// False when the content was identical and nothing was done.
    pub changed: bool,
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
    metrics: Arc<Metrics>,
    one_at_a_time: Mutex<()>,
    /// The file watcher, once `watch` started it: a swap to a file in another directory adds
    /// that directory, so the watcher always follows the file each route serves.
    watcher: std::sync::Mutex<Option<notify::RecommendedWatcher>>,
}

impl Swapper {
    /// A swapper over `router`'s routes, loading with `loader`, counting in `metrics`.
    pub fn new(router: Arc<Router>, loader: Loader, metrics: Arc<Metrics>) -> Swapper {
        Swapper {
            router,
            loader,
            metrics,
            one_at_a_time: Mutex::new(()),
            watcher: std::sync::Mutex::new(None),
        }
    }

    /// Reloads `route` (all routes when `None`) from `component` (its current file when
    /// `None`). With [`Force::IfChanged`], a file identical to the running version is left
    /// alone.
    pub async fn reload(
        &self,
        route: Option<&str>,
        component: Option<PathBuf>,
        force: Force,
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
            match self.swap_route(target, &path, force).await {
                Ok(done) => {
                    if done.changed {
                        self.metrics.count_swap(target.prefix(), "ok");
                        self.follow(&path);
                    }
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

    async fn swap_route(&self, route: &Route, path: &Path, force: Force) -> Result<Swapped> {
        let previous = route.pool.version();
        if force == Force::IfChanged && path == route.component() {
            let (loader, owned) = (self.loader.clone(), path.to_path_buf());
            let sha = tokio::task::spawn_blocking(move || loader.fingerprint(&owned))
                .await
                .context("the read task failed")??;
            if sha == previous.sha256 {
                tracing::info!(route = %route.prefix(), component = %path.display(), version = previous.short(), "component unchanged; nothing to swap");
                return Ok(Swapped {
                    route: route.prefix().to_string(),
                    component: path.to_path_buf(),
                    version: sha,
                    previous: previous.sha256.clone(),
                    still_draining: 0,
                    changed: false,
                });
            }
        }
        let loader = self.loader.clone();
        let owned = path.to_path_buf();
        let version = tokio::task::spawn_blocking(move || loader.load(&owned))
            .await
            .context("the compile task failed")??;
        if let Some(warmup) = &route.config.warmup {
            let mut instance = Instance::new(&version, route.pool.setup())
                .await
                .context("the warm-up instance failed to start")?;
            let timeout = route.config.lifecycle.request_timeout;
            instance.warm_up(warmup, timeout).await?;
        }
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
            changed: true,
        })
    }

    /// Makes the watcher (if running) watch the directory of `path` too.
    fn follow(&self, path: &Path) {
        use notify::Watcher as _;
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(watcher), Some(dir)) = (watcher.as_mut(), parent(path))
            && let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the new component's directory");
        }
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
            let component = Some(new.component.clone());
            let reloaded = (self.reload(Some(route.prefix()), component, Force::IfChanged)).await;
            if let Err(e) = reloaded {
                tracing::error!(error = %e, "SIGHUP: reload failed");
            }
        }
        for prefix in wanted.keys().filter(|p| self.router.get(p).is_none()) {
            tracing::warn!(route = %prefix, "SIGHUP: adding routes needs a restart");
        }
    }

    /// Watches the file each route serves and hot-swaps the route when the file changes.
    /// Watches the parent directory so atomic renames and in-place copies are both seen;
    /// waits for [`WATCH_DEBOUNCE`] of quiet, then looks at the file: new content swaps; the
    /// same content with a new modification time (`touch`) forces a reload, like uWSGI's
    /// `touch-reload`; content that was already rejected is not tried again until it changes,
    /// so a broken file is logged once, not on every event.
    pub fn watch(self: Arc<Self>) -> Result<()> {
        use notify::Watcher as _;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reads (ours included: loading the file) are not changes.
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
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
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
        tokio::spawn(async move {
            // Per route: the file's state at the last look, and content that failed to load.
            let mut seen: HashMap<String, (FileState, Option<String>)> = HashMap::new();
            for route in self.router.routes() {
                seen.insert(
                    route.prefix().into(),
                    (FileState::of(&route.component()), None),
                );
            }
            while let Some(first) = rx.recv().await {
                let mut changed = vec![first];
                while let Ok(Some(path)) = tokio::time::timeout(WATCH_DEBOUNCE, rx.recv()).await {
                    changed.push(path);
                }
                for route in self.router.routes() {
                    let file = route.component();
                    if !changed.iter().any(|p| same_file(p, &file)) {
                        continue;
                    }
                    let (last, rejected) = seen.entry(route.prefix().into()).or_default();
                    let now = FileState::of(&file);
                    if now == *last || now.sha.is_none() {
                        continue; // Nothing new, or missing for a moment during a replace.
                    }
                    let running = route.pool.version().sha256.clone();
                    let force = match &now.sha {
                        Some(sha) if *sha == running => Force::Always,
                        Some(sha) if rejected.as_ref() == Some(sha) => {
                            tracing::debug!(route = %route.prefix(), component = %file.display(), "component file touched, but this content was rejected already; waiting for new content");
                            continue;
                        }
                        _ => Force::IfChanged,
                    };
                    *last = now.clone();
                    let why = if force == Force::Always {
                        "touched; reloading"
                    } else {
                        "changed; swapping"
                    };
                    tracing::info!(route = %route.prefix(), component = %file.display(), "component file {why}");
                    let outcome = self.reload(Some(route.prefix()), Some(file), force).await;
                    *rejected = outcome.is_err().then(|| now.sha.clone()).flatten();
                }
            }
        });
        Ok(())
    }
}

/// What the watcher knows of a file: its content hash and modification time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileState {
    sha: Option<String>,
    modified: Option<std::time::SystemTime>,
}

impl FileState {
    fn of(path: &Path) -> FileState {
        FileState {
            sha: std::fs::read(path)
                .ok()
                .map(|b| crate::engine::sha256_hex(&b)),
            modified: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        }
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
