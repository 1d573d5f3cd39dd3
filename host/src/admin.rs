//! The admin listener and the uWSGI-style stats socket. Never on the public listener.
//!
//! | endpoint | token | answer |
//! |---|---|---|
//! | `GET /healthz` | no | 200 while the process runs |
//! | `GET /readyz` | no | 200 when serving, 503 while draining |
//! | `GET /metrics` | yes | Prometheus: OpenMetrics if `Accept` asks for it, else text 0.0.4 |
//! | `GET /stats` | yes | JSON with uWSGI's stats field names (for uwsgitop and friends) |
//! | `GET /admin/status` | yes | the version each route serves |
//! | `POST /admin/reload?route=/x&component=path` | yes | hot swap; answers the outcome |
//!
//! Probes need no token (they reveal nothing and Kubernetes probes rarely carry one); the
//! token, when set, is compared in constant time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::json_response;
use crate::metrics::{Format, Metrics};
use crate::routes::Router;
use crate::server::{self, Draining};
use crate::swap::{Force, SwapError, Swapper};

/// Most admin (and stats) connections open at once: scrapers and operators, not traffic.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// What the admin listener needs, and nothing else.
pub struct Ctx {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    swapper: Arc<Swapper>,
    draining: Draining,
    /// The public listener's address, named in the stats document.
    public: SocketAddr,
    /// SHA-256 of the admin token: compared in constant time, and never kept in clear.
    token: Option<sha2::digest::Output<Sha256>>,
    /// Paths the reload API may load from, when restricted (`reload-dir`, canonical).
    reload_dir: Option<PathBuf>,
    header_read_timeout: Duration,
}

impl Ctx {
    /// The admin context. `reload_dir`, when set, must exist (it is resolved here).
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor, called once by the app"
    )]
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        swapper: Arc<Swapper>,
        draining: Draining,
        public: SocketAddr,
        token: Option<&str>,
        reload_dir: Option<&Path>,
        header_read_timeout: Duration,
    ) -> anyhow::Result<Ctx> {
        use anyhow::Context as _;
        let reload_dir = reload_dir
            .map(|dir| {
                std::fs::canonicalize(dir)
                    .with_context(|| format!("`reload-dir` `{}` does not exist", dir.display()))
            })
            .transpose()?;
        Ok(Ctx {
            router,
            metrics,
            swapper,
            draining,
            public,
            token: token.map(|t| Sha256::digest(t.as_bytes())),
            reload_dir,
            header_read_timeout,
        })
    }
}

/// Serves the admin endpoints on `listener` for the life of the process, with the public
/// listener's bounds: a connection cap, a header-read timeout, backoff on accept errors.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let connections = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut errors = 0;
    loop {
        let permit = connections
            .clone()
            .acquire_owned()
            .await
            .expect("the admin semaphore is never closed");
        let (stream, _) = server::accept(&listener, &mut errors).await;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let timeout = ctx.header_read_timeout;
            let service = hyper::service::service_fn(move |request| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, request).await) }
            });
            // HTTP/1.1 only: no protocol detection to stall on, and hyper's header-read timer
            // runs from the first read, so a silent client is closed after the timeout.
            // Half-close: a request received whole is carried out even when its client closed
            // its side right after sending it (`nc -N`, a script that does not wait); without
            // it hyper could see the end of input before first polling the handler, and drop a
            // reload unstarted (seen once in `swap::an_admin_swap_completes_when_its_caller_leaves`).
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// Serves the stats socket: each connection gets the stats document, then EOF (uWSGI's
/// `--stats`, which `uwsgitop HOST:PORT` reads).
pub async fn serve_stats_socket(listener: TcpListener, ctx: Arc<Ctx>) {
    let connections = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut errors = 0;
    loop {
        let permit = connections
            .clone()
            .acquire_owned()
            .await
            .expect("the stats semaphore is never closed");
        let (mut stream, _) = server::accept(&listener, &mut errors).await;
        let body = stats(&ctx).to_string();
        let timeout = ctx.header_read_timeout;
        tokio::spawn(async move {
            let write = async {
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(timeout, write).await;
            drop(permit);
        });
    }
}

async fn handle(ctx: &Arc<Ctx>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let probe = matches!(path.as_str(), "/healthz" | "/readyz");
    if !probe && let Some(expected) = &ctx.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(|t| Sha256::digest(t.as_bytes()));
        if !given.is_some_and(|g| bool::from(g.ct_eq(expected))) {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "this endpoint needs `Authorization: Bearer <admin-token>`"}),
            );
        }
    }
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (Method::GET, "/readyz") => {
            if ctx.draining.is_draining() {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "draining"}),
                )
            } else {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            }
        }
        (Method::GET, "/metrics") => {
            let accept = request.headers().get(header::ACCEPT);
            let format = Format::negotiate(accept.and_then(|v| v.to_str().ok()));
            let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.encode(format))));
            let headers = response.headers_mut();
            let content_type = header::HeaderValue::from_static(format.content_type());
            headers.insert(header::CONTENT_TYPE, content_type);
            headers.insert(header::VARY, header::HeaderValue::from_static("accept"));
            response
        }
        (Method::GET, "/stats") => json_response(StatusCode::OK, &stats(ctx)),
        (Method::GET, "/admin/status") => json_response(StatusCode::OK, &status(ctx)),
        (Method::POST, "/admin/reload") => reload(ctx, request.uri().query().unwrap_or("")).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/stats" | "/admin/status") => {
            json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "use GET"}))
        }
        (_, "/admin/reload") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "use POST"}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint `{path}`")}),
        ),
    }
}

async fn reload(ctx: &Arc<Ctx>, query: &str) -> Response<Full<Bytes>> {
    let mut route = None;
    let mut component = None;
    let mut force = Force::IfChanged;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "route" => route = Some(value.into_owned()),
            "component" => component = Some(PathBuf::from(value.as_ref())),
            "force" if matches!(value.as_ref(), "1" | "true") => force = Force::Always,
            "force" if matches!(value.as_ref(), "0" | "false") => force = Force::IfChanged,
            other => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": format!("unknown parameter `{other}`; use `route`, `component` and `force`")}),
                );
            }
        }
    }
    if let Some(component) = &component
        && let Some(refusal) = outside_reload_dir(ctx, component)
    {
        return refusal;
    }
    // The swap runs in a task of its own: a client that disconnects mid-swap must not leave
    // it half-done (new version serving, old path recorded, nothing logged or counted).
    let swapper = ctx.swapper.clone();
    let swap =
        tokio::spawn(async move { swapper.reload(route.as_deref(), component, force).await });
    let Ok(outcome) = swap.await else {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "the swap task failed; see the log"}),
        );
    };
    match outcome {
        Ok(swapped) => {
            let any = swapped.iter().any(|s| s.changed);
            let status = if any { "swapped" } else { "unchanged" };
            json_response(
                StatusCode::OK,
                &json!({"status": status, "routes": swapped}),
            )
        }
        Err(e) => {
            let status = match e {
                SwapError::NoSuchRoute(_) => StatusCode::NOT_FOUND,
                SwapError::WhichRoute(_) => StatusCode::BAD_REQUEST,
                SwapError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json_response(status, &json!({"error": e.to_string()}))
        }
    }
}

/// With `reload-dir` set, a component path must resolve inside it. The answer is the same
/// whether the path exists or not: the admin API does not probe the filesystem for a caller.
fn outside_reload_dir(ctx: &Ctx, component: &Path) -> Option<Response<Full<Bytes>>> {
    let dir = ctx.reload_dir.as_ref()?;
    let inside = std::fs::canonicalize(component).is_ok_and(|p| p.starts_with(dir));
    (!inside).then(|| {
        json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": format!(
                "component paths must name a file inside `reload-dir` ({})", dir.display()
            )}),
        )
    })
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn status(ctx: &Ctx) -> Value {
    let routes: Vec<Value> = ctx
        .router
        .routes()
        .iter()
        .map(|r| {
            let version = r.pool.version();
            let loaded = version
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json!({
                "route": r.prefix(),
                // The file serving now (an admin reload may have named another), and the one
                // the config names, which SIGHUP loads.
                "component": r.component(),
                "configured_component": r.config.component,
                "sha256": version.sha256,
                "world": version.world.as_str(),
                "loaded_at": loaded,
                "workers": r.pool.workers(),
                "instance_concurrency": r.pool.route().instance_concurrency,
            })
        })
        .collect();
    json!({ "routes": routes, "draining": ctx.draining.is_draining() })
}

/// The stats document, with uWSGI's field names. Workers of all routes are numbered in one
/// sequence (uWSGI has one worker list); each carries its `route`. No request data appears.
fn stats(ctx: &Ctx) -> Value {
    let addr = ctx.public;
    let pid = std::process::id();
    let mut workers = Vec::new();
    let mut sockets = Vec::new();
    let (mut queued, mut rejected, mut busy) = (0, 0, 0);
    for route in ctx.router.routes() {
        let pool = &route.pool;
        let stats = pool.stats();
        queued += pool.queue_depth();
        rejected += stats.rejected.load(Ordering::Relaxed);
        busy += stats.busy();
        sockets.push(json!({
            "name": format!("{addr}{}", route.prefix()), "proto": "http", "queue": pool.queue_depth(),
            "max_queue": 0, "shared": 0, "can_offload": 0,
        }));
        for (i, w) in stats.workers.iter().enumerate() {
            let requests = w.requests.load(Ordering::Relaxed);
            let busy_micros = w.busy_micros.load(Ordering::Relaxed);
            let is_busy = w.busy.load(Ordering::Relaxed);
            workers.push(json!({
                "id": workers.len() + 1,
                "route": route.prefix(),
                "route_worker": i + 1,
                "pid": pid,
                "accepting": 1,
                "requests": requests,
                "delta_requests": 0,
                "exceptions": w.failures.load(Ordering::Relaxed),
                "harakiri_count": w.timeouts.load(Ordering::Relaxed),
                "signals": 0,
                "signal_queue": 0,
                "status": if is_busy { "busy" } else { "idle" },
                "rss": w.memory_bytes.load(Ordering::Relaxed),
                "vsz": 0,
                "running_time": busy_micros,
                "last_spawn": w.last_spawn.load(Ordering::Relaxed),
                "respawn_count": w.respawns.load(Ordering::Relaxed),
                "tx": w.tx_bytes.load(Ordering::Relaxed),
                "avg_rt": busy_micros.checked_div(requests).unwrap_or(0),
                "instance_requests": w.instance_requests.load(Ordering::Relaxed),
                "apps": [],
                "cores": [],
            }));
        }
    }
    json!({
        "version": concat!("fibhost ", env!("CARGO_PKG_VERSION")),
        "listen_queue": queued,
        "listen_queue_errors": rejected,
        "signal_queue": 0,
        "load": busy,
        "pid": pid,
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        "locks": [],
        "sockets": sockets,
        "workers": workers,
    })
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
