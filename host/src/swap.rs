//! Hot swap: replacing a route's running component without a restart and without a failed
//! request. Three triggers share [`reload`]: the admin API, SIGHUP (which also re-reads the
//! config file) and the file watcher.
//!
//! A swap compiles and checks the new file off the request path, instantiates it, sends the
//! optional warm-up request, and only then hands it to the pool, which moves workers over
//! make-before-break (see `pool.rs`). Any failure before the hand-over leaves the old version
//! serving and is reported (log, metrics, admin answer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use serde::Serialize;
use tokio::sync::{Mutex, oneshot};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::engine::Version;
use crate::guest::{Instance, InstanceSpec};
use crate::{App, Config, Route};

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

/// One swap at a time per process: two concurrent reloads of one route would race to publish.
static RELOADING: Mutex<()> = Mutex::const_new(());

/// Reloads `route` (all routes when `None`) from `component` (its current file when `None`).
pub async fn reload(
    app: &Arc<App>,
    route: Option<&str>,
    component: Option<PathBuf>,
) -> Result<Vec<Swapped>, SwapError> {
    let targets: Vec<&Route> = match route {
        Some(prefix) => vec![
            app.routes()
                .iter()
                .find(|r| r.prefix == prefix)
                .ok_or_else(|| SwapError::NoSuchRoute(prefix.to_string()))?,
        ],
        None if component.is_some() && app.routes().len() > 1 => {
            return Err(SwapError::WhichRoute(component.unwrap_or_default()));
        }
        None => app.routes().iter().collect(),
    };
    let _one_at_a_time = RELOADING.lock().await;
    let mut swapped = Vec::new();
    for target in targets {
        let path = component.clone().unwrap_or_else(|| current_path(target));
        match swap_route(app, target, &path).await {
            Ok(done) => {
                app.swaps.count(&target.prefix, "ok");
                swapped.push(done);
            }
            Err(e) => {
                app.swaps.count(&target.prefix, "rejected");
                let reason = format!("{e:#}");
                tracing::warn!(route = %target.prefix, component = %path.display(), reason, "swap rejected; the running version keeps serving");
                return Err(SwapError::Rejected {
                    route: target.prefix.clone(),
                    reason,
                });
            }
        }
    }
    Ok(swapped)
}

fn current_path(route: &Route) -> PathBuf {
    route
        .component
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

async fn swap_route(app: &Arc<App>, route: &Route, path: &Path) -> Result<Swapped> {
    let loader = app.loader.clone();
    let owned = path.to_path_buf();
    let version = tokio::task::spawn_blocking(move || loader.load(&owned))
        .await
        .context("the compile task failed")??;
    if let Some(warmup) = &route.warmup {
        warm_up(&version, route.pool.spec(), warmup).await?;
    }
    let previous = route.pool.version();
    let report = route.pool.swap(version, app.swap_drain_wait).await?;
    *route.component.lock().unwrap_or_else(|p| p.into_inner()) = path.to_path_buf();
    tracing::info!(
        route = %route.prefix,
        version = %report.version,
        previous = previous.short(),
        still_draining = report.still_draining,
        "swapped component"
    );
    Ok(Swapped {
        route: route.prefix.clone(),
        component: path.to_path_buf(),
        version: report.version.sha256.clone(),
        previous: previous.sha256.clone(),
        still_draining: report.still_draining,
    })
}

/// Sends `GET path` to a fresh instance of `version` and requires a 2xx. The instance is then
/// dropped, so the instances that take traffic start clean.
pub async fn warm_up(version: &Version, spec: &InstanceSpec, path: &str) -> Result<()> {
    let mut instance = Instance::new(version, spec)
        .await
        .context("the warm-up instance failed to start")?;
    let request = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, "localhost")
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .context("invalid warm-up path")?;
    let (tx, rx) = oneshot::channel();
    let reply = Arc::new(std::sync::Mutex::new(Some(tx)));
    // Read the response while the guest runs: its body may not fit the body channel's buffer.
    let served = instance.serve(request, Scheme::Http, reply, spec.request_timeout);
    let read = async {
        let response = rx
            .await
            .context("no warm-up response")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        anyhow::Ok(status)
    };
    let (_, status) = tokio::join!(served, read);
    let status = status.with_context(|| format!("the warm-up request `GET {path}` failed"))?;
    anyhow::ensure!(
        status.is_success(),
        "the warm-up request `GET {path}` answered {status}, not 2xx"
    );
    Ok(())
}

/// On SIGHUP: re-reads the configuration with `load_config` and reloads every route, from the
/// component path the new configuration names for it. Changes that need a restart (new or
/// removed routes, worker counts, limits, threads, listeners) are logged, not applied.
pub async fn on_sighup(app: &Arc<App>, load_config: &(dyn Fn() -> Result<Config> + Sync)) {
    let config = match load_config() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "SIGHUP: the config is invalid; nothing reloaded"
            );
            return;
        }
    };
    if config.threads != app.shards.len() {
        tracing::warn!(
            running = app.shards.len(),
            configured = config.threads,
            "SIGHUP: changing `threads` needs a restart"
        );
    }
    let wanted: HashMap<&str, _> = config
        .routes
        .iter()
        .map(|r| (r.prefix.as_str(), r))
        .collect();
    for route in app.routes() {
        let Some(new) = wanted.get(route.prefix.as_str()) else {
            tracing::warn!(route = %route.prefix, "SIGHUP: the config no longer has this route; removing routes needs a restart");
            continue;
        };
        if new.workers != route.pool.workers() || &new.lifecycle != route.pool.lifecycle() {
            tracing::warn!(route = %route.prefix, "SIGHUP: worker count and limits changes need a restart; reloading the component only");
        }
        if let Err(e) = reload(app, Some(&route.prefix), Some(new.component.clone())).await {
            tracing::error!(error = %e, "SIGHUP: reload failed");
        }
    }
    for prefix in wanted
        .keys()
        .filter(|p| !app.routes().iter().any(|r| r.prefix == **p))
    {
        tracing::warn!(route = %prefix, "SIGHUP: adding routes needs a restart");
    }
}

/// Watches every route's component file and hot-swaps a route when its file's content changes.
/// Watches the parent directory so atomic renames and in-place copies are both seen; waits
/// for [`WATCH_DEBOUNCE`] of quiet, then compares the content hash with the running version.
pub fn watch(app: Arc<App>) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .context("cannot start the file watcher")?;
    let mut dirs: Vec<PathBuf> = app
        .routes()
        .iter()
        .filter_map(|r| parent(&current_path(r)))
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
            for route in app.routes() {
                let file = current_path(route);
                let touched = changed.iter().any(|p| same_file(p, &file));
                if touched && content_changed(route, &file) {
                    tracing::info!(route = %route.prefix, component = %file.display(), "component file changed; swapping");
                    let _ = reload(&app, Some(&route.prefix), Some(file)).await;
                }
            }
        }
    });
    Ok(watcher)
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
