//! The admin listener and the uWSGI-style stats socket. Never on the public listener.
//!
//! | endpoint | token | answer |
//! |---|---|---|
//! | `GET /healthz` | no | 200 while the process runs |
//! | `GET /readyz` | no | 200 when serving, 503 while draining |
//! | `GET /metrics` | yes | Prometheus text format |
//! | `GET /stats` | yes | JSON with uWSGI's stats field names (for uwsgitop and friends) |
//! | `GET /admin/status` | yes | the version each route serves |
//! | `POST /admin/reload?route=/x&component=path` | yes | hot swap; answers the outcome |
//!
//! Probes need no token (they reveal nothing and Kubernetes probes rarely carry one); the
//! token, when set, is compared in constant time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use crate::App;
use crate::swap::{self, SwapError};

/// Serves the admin endpoints on `listener` for the life of the process. `public` is the
/// public listener's address, named in the stats document.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    token: Option<String>,
    public: SocketAddr,
) {
    let token = token.map(|t| Sha256::digest(t.as_bytes()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, token.as_ref(), public, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the stats socket: each connection gets the stats document, then EOF (uWSGI's
/// `--stats`, which `uwsgitop HOST:PORT` reads). `public` is the public listener's address.
pub async fn serve_stats_socket(listener: TcpListener, app: Arc<App>, public: SocketAddr) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let body = stats(&app, public).to_string();
        tokio::spawn(async move {
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn handle(
    app: &Arc<App>,
    token: Option<&sha2::digest::Output<Sha256>>,
    public: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let probe = matches!(path.as_str(), "/healthz" | "/readyz");
    if !probe && let Some(expected) = token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.as_bytes()));
        if !given.is_some_and(|g| bool::from(g.ct_eq(expected))) {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "this endpoint needs `Authorization: Bearer <admin-token>`"}),
            );
        }
    }
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (Method::GET, "/readyz") => {
            if app.draining.load(Ordering::Acquire) {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "draining"}),
                )
            } else {
                json_response(StatusCode::OK, json!({"status": "ready"}))
            }
        }
        (Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(app.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (Method::GET, "/stats") => json_response(StatusCode::OK, stats(app, public)),
        (Method::GET, "/admin/status") => json_response(StatusCode::OK, status(app)),
        (Method::POST, "/admin/reload") => reload(app, request.uri().query().unwrap_or("")).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/stats" | "/admin/status") => {
            json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use GET"}))
        }
        (_, "/admin/reload") => {
            json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use POST"}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no admin endpoint `{path}`")}),
        ),
    }
}

async fn reload(app: &Arc<App>, query: &str) -> Response<Full<Bytes>> {
    let mut route = None;
    let mut component = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "route" => route = Some(value.into_owned()),
            "component" => component = Some(PathBuf::from(value.as_ref())),
            other => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("unknown parameter `{other}`; use `route` and `component`")}),
                );
            }
        }
    }
    match swap::reload(app, route.as_deref(), component).await {
        Ok(swapped) => json_response(
            StatusCode::OK,
            json!({"status": "swapped", "routes": swapped}),
        ),
        Err(e) => {
            let status = match e {
                SwapError::NoSuchRoute(_) => StatusCode::NOT_FOUND,
                SwapError::WhichRoute(_) => StatusCode::BAD_REQUEST,
                SwapError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json_response(status, json!({"error": e.to_string()}))
        }
    }
}

fn status(app: &App) -> Value {
    let routes: Vec<Value> = app
        .routes()
        .iter()
        .map(|r| {
            let version = r.pool.version();
            let loaded = version
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json!({
                "route": r.prefix,
                "component": version.path,
                "sha256": version.sha256,
                "loaded_at": loaded,
                "workers": r.pool.workers(),
            })
        })
        .collect();
    json!({ "routes": routes, "draining": app.draining.load(Ordering::Acquire) })
}

/// The stats document, with uWSGI's field names. Workers of all routes are numbered in one
/// sequence (uWSGI has one worker list); each carries its `route`. No request data appears.
pub fn stats(app: &App, addr: SocketAddr) -> Value {
    let pid = std::process::id();
    let mut workers = Vec::new();
    let mut sockets = Vec::new();
    let (mut queued, mut rejected, mut busy) = (0, 0, 0);
    for route in app.routes() {
        let pool = &route.pool;
        let stats = pool.stats();
        queued += pool.queue_depth();
        rejected += stats.rejected.load(Ordering::Relaxed);
        busy += stats.busy();
        sockets.push(json!({
            "name": format!("{addr}{}", route.prefix), "proto": "http", "queue": pool.queue_depth(),
            "max_queue": 0, "shared": 0, "can_offload": 0,
        }));
        for (i, w) in stats.workers.iter().enumerate() {
            let requests = w.requests.load(Ordering::Relaxed);
            let busy_micros = w.busy_micros.load(Ordering::Relaxed);
            let is_busy = w.busy.load(Ordering::Relaxed);
            workers.push(json!({
                "id": workers.len() + 1,
                "route": route.prefix,
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

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
