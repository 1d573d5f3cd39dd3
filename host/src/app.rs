//! Composition: [`App::build`] does all fallible, expensive work (engine, compile, check,
//! instantiate, warm up) before any port is bound; [`Listeners::bind`] binds (or
//! [`Listeners::bind_or_take`] takes the service manager's sockets); [`run`] starts
//! the admin listener, the stats socket, the file watcher and reload handling, and serves
//! until shutdown. The binary and the in-process tests call exactly these three.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::activation::Activated;
use crate::config::{self, Config};
use crate::engine::Loader;
use crate::guest::{Instance, LiveInstances, Setup};
use crate::logging::AccessLog;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::pool::Pool;
use crate::routes::{self, Route, Router};
use crate::server::{self, Draining};
use crate::shards::Shards;
use crate::swap::Swapper;
use crate::tls::Tls;
use crate::uwsgi;
use crate::{admin, admin::Ctx as AdminCtx};

/// A built server, ready to serve: every component loaded, checked and instantiated.
pub struct App {
    config: Config,
    router: Arc<Router>,
    swapper: Arc<Swapper>,
    metrics: Arc<Metrics>,
    shards: Shards,
    tls: Option<Arc<Tls>>,
    access_log: AccessLog,
}

impl App {
    /// Builds the engine, then loads, checks, warms up and instantiates every component, and
    /// reads the TLS files. All of a component's failures surface here, before any port is
    /// bound. `access_log` is the log writer (the access log is used unless
    /// `disable-logging`).
    pub async fn build(config: Config, access_log: AccessLog) -> Result<App> {
        routes::check_prefixes(&config.routes)?;
        let workers = config.routes.iter().map(|r| r.workers).sum();
        let max_memory = (config.routes.iter())
            .map(|r| r.lifecycle.memory_limit_bytes)
            .max()
            .unwrap_or(0);
        let loader = Loader::new(
            workers,
            max_memory,
            config.cache_dir.as_deref(),
            config.max_component_bytes,
        )?;
        let tls = config
            .tls
            .as_ref()
            .map(Tls::load)
            .transpose()?
            .map(Arc::new);
        let shards = Shards::start(config.threads)?;
        let live = LiveInstances::default();
        let mut metrics = Metrics::with_threads(shards.len());
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let route = Arc::new(route.clone());
            let outbound = Outbound::new(&route.prefix, &route.outbound, metrics.outbound());
            let setup = Setup {
                route: route.clone(),
                live: live.clone(),
                outbound: Arc::new(outbound),
            };
            let version = loader.load(&route.component)?;
            if let Some(path) = &route.warmup {
                let mut instance = Instance::new(&version, &setup).await?;
                let timeout = route.lifecycle.request_timeout;
                (instance.warm_up(path, timeout).await).with_context(|| {
                    format!("the component for `{}` failed its warm-up", route.prefix)
                })?;
            }
            tracing::info!(route = %route.prefix, version = %version.id, world = version.id.world.as_str(), workers = route.workers, "component loaded");
            let pool = Pool::start(setup, version, &shards).await?;
            routes.push(Route::new(
                route.clone(),
                pool,
                metrics.route(&route.prefix),
            ));
        }
        let pools = routes.iter().map(|r| r.pool.clone()).collect();
        metrics.register_collectors(pools, live.clone(), access_log.dropped_lines());
        let router = Arc::new(Router::new(routes, metrics.route("")));
        let metrics = Arc::new(metrics);
        let swapper = Arc::new(Swapper::new(router.clone(), loader, metrics.clone()));
        Ok(App {
            config,
            router,
            swapper,
            metrics,
            shards,
            tls,
            access_log,
        })
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// The bound listeners: the public one, and the admin listener and stats socket if enabled.
pub struct Listeners {
    public: TcpListener,
    admin: Option<TcpListener>,
    stats: Option<TcpListener>,
    uwsgi: Option<uwsgi::Listener>,
}

impl Listeners {
    /// Binds every address `config` names.
    pub fn bind(config: &Config) -> Result<Listeners> {
        Listeners::bind_or_take(config, Activated::default())
    }

    /// Takes each listener the service manager handed over (`activated`: socket activation,
    /// which then replaces the config's address, `reuse-port` included) and binds the others
    /// from `config`. A handed-over admin listener or stats socket turns that listener on.
    pub fn bind_or_take(config: &Config, activated: Activated) -> Result<Listeners> {
        if !activated.is_empty() {
            tracing::info!(
                public = activated.public.is_some(),
                admin = activated.admin.is_some(),
                stats = activated.stats.is_some(),
                "listening sockets from the service manager"
            );
        }
        let inherited = |listener: Option<std::net::TcpListener>, key: &str| {
            let Some(listener) = listener else {
                return Ok(None);
            };
            if key != "listen" {
                let addr = listener.local_addr()?;
                let token = config.admin_token.is_some();
                config::check_admin_exposure(key, addr, token, config.admin_insecure)?;
            }
            anyhow::Ok(Some(TcpListener::from_std(listener)?))
        };
        let public = match inherited(activated.public, "listen")? {
            Some(listener) => listener,
            None => server::bind(config.listen, config.reuse_port, "listen")?,
        };
        let admin = match inherited(activated.admin, "admin-listen")? {
            Some(listener) => Some(listener),
            None => (config.admin_listen)
                .map(|addr| server::bind(addr, false, "admin-listen"))
                .transpose()
                .context("cannot bind the admin listener")?,
        };
        let stats = match inherited(activated.stats, "stats")? {
            Some(listener) => Some(listener),
            None => (config.stats_listen)
                .map(|addr| server::bind(addr, false, "stats"))
                .transpose()
                .context("cannot bind the stats socket")?,
        };
        let uwsgi = (config.uwsgi_socket.as_ref())
            .map(uwsgi::Listener::bind)
            .transpose()?;
        Ok(Listeners {
            public,
            admin,
            stats,
            uwsgi,
        })
    }

    /// The public listener's real address (port 0 resolved).
    pub fn public_addr(&self) -> Result<SocketAddr> {
        Ok(self.public.local_addr()?)
    }

    /// Prints the startup lines on stderr, directly (no log filter or format can hide or wrap
    /// them; scripts and tests parse them): `Serving HTTP on http://ADDR/` and, if enabled,
    /// `Admin listening on http://ADDR/` and `Stats socket on ADDR`.
    pub fn announce(&self, scheme: &str) -> Result<()> {
        if let Some(admin) = &self.admin {
            eprintln!("Admin listening on http://{}/", admin.local_addr()?);
        }
        if let Some(stats) = &self.stats {
            eprintln!("Stats socket on {}", stats.local_addr()?);
        }
        if let Some(uwsgi) = &self.uwsgi {
            eprintln!("uwsgi socket on {}", uwsgi.local_addr());
        }
        let addr = self.public_addr()?;
        eprintln!("Serving {} on {scheme}://{addr}/", scheme.to_uppercase());
        Ok(())
    }
}

/// Serves `app` on `listeners` until `shutdown` resolves: starts the admin listener and stats
/// socket, the file watcher (`watch`), and applies each configuration that arrives on
/// `reloads` (SIGHUP re-reads the file: TLS certificate and components), then drains.
pub async fn run(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<Result<Config>>,
) -> Result<()> {
    let App {
        config,
        router,
        swapper,
        metrics,
        shards,
        tls,
        access_log,
    } = app;
    let draining = Draining::default();
    let public = listeners.public_addr()?;
    if listeners.admin.is_some() || listeners.stats.is_some() {
        let ctx = Arc::new(AdminCtx::new(
            router.clone(),
            metrics,
            swapper.clone(),
            draining.clone(),
            public,
            config.admin_token.as_deref(),
            config.reload_dir.as_deref(),
            config.limits.header_read_timeout,
        )?);
        if let Some(listener) = listeners.admin {
            tokio::spawn(admin::serve(listener, ctx.clone()));
        }
        if let Some(listener) = listeners.stats {
            tokio::spawn(admin::serve_stats_socket(listener, ctx));
        }
    }
    if config.watch {
        swapper.clone().watch()?;
    }
    let threads = shards.len();
    tokio::spawn({
        let (swapper, tls) = (swapper.clone(), tls.clone());
        async move {
            while let Some(reloaded) = reloads.recv().await {
                tracing::info!(
                    signal = "SIGHUP",
                    "reloading the configuration and components"
                );
                if let Some(tls) = &tls
                    && let Err(e) = tls.reload()
                {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "SIGHUP: keeping the current TLS certificate"
                    );
                }
                match reloaded {
                    Ok(config) => swapper.apply(&config, threads).await,
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "SIGHUP: the config is invalid; nothing reloaded"
                    ),
                }
            }
        }
    });
    let access_log = (config.access_log).then(|| access_log.with_query_values(config.log_query));
    let ctx = server::Ctx::new(
        router.clone(),
        config.limits.clone(),
        access_log,
        draining,
        tls,
        config.shutdown_timeout,
    );
    let ctx = Arc::new(ctx);
    // The uwsgi socket (nginx `uwsgi_pass`) serves through the same pools; it stops accepting
    // when the drain begins and its requests in progress get the same shutdown timeout.
    let (stop_uwsgi, uwsgi_stopped) = tokio::sync::watch::channel(false);
    let uwsgi = listeners.uwsgi.map(|listener| {
        let connections = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
        let handles = shards.handles().to_vec();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let served = uwsgi::serve(ctx, listener, &handles, connections, uwsgi_stopped).await;
            if let Err(e) = served {
                tracing::error!(error = format!("{e:#}"), "the uwsgi socket stopped");
            }
        })
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_uwsgi.send(true);
    };
    let served = server::serve(ctx, listeners.public, &shards, shutdown).await;
    if let Some(uwsgi) = uwsgi {
        let _ = tokio::time::timeout(config.shutdown_timeout, uwsgi).await;
    }
    // Only once both listeners have drained: a uwsgi request accepted before the drain began
    // may reach its pool after the last HTTP connection is gone, and must not find it closed.
    router.close();
    served
}

/// Compiling components (cranelift, on several threads) leaves megabytes of freed memory in
/// the allocator's per-thread heaps; the server never needs it again, so hand it back to the
/// OS before serving rather than after mimalloc's purge delay. (A no-op for other allocators.)
pub fn release_startup_memory() {
    #[expect(
        unsafe_code,
        reason = "FFI call with a plain bool argument to manage the global allocator"
    )]
    // SAFETY: mi_collect only frees and returns memory that is no longer in use; it is safe
    // to call from any thread at any time, whichever allocator is global.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
