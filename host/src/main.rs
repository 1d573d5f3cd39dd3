//! The `fibhost` command: parse options, set up logging, build the app, bind, serve.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;
use fibhost::config::Settings;
use fibhost::{App, Config, admin, server, signals, swap, tls::Tls};

/// A WebAssembly application server: serves wasi:http components with N recycled workers.
#[derive(Parser, Clone)]
#[command(version, about)]
struct Cli {
    /// TOML config file; command-line options override its keys. SIGHUP re-reads it.
    #[arg(long, env = "FIBHOST_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

/// mimalloc, measured against glibc's malloc on the keep-alive benchmark (2 event-loop
/// threads, dozens of small allocations per request in hyper and wasmtime-wasi-http): 2–9%
/// more requests per second, lower p99, and a steadier peak RSS under 500 connections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fibhost: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (access_log, _log) = fibhost::logging::init(config.log_format);
    // The control plane: startup, admin, signals, hot swap, spare instances. Requests are
    // served on the event-loop threads that `App::build` starts (see `fibhost::shards`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime builds unless the process is out of threads or memory");
    match runtime.block_on(run(cli, config, access_log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fibhost: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line layered over the config file (re-read on SIGHUP).
fn load_config(cli: &Cli) -> Result<Config> {
    let settings = match &cli.config {
        Some(path) => cli.settings.clone().or(Settings::from_file(path)?),
        None => cli.settings.clone(),
    };
    settings.resolve()
}

async fn run(cli: Cli, config: Config, access_log: fibhost::logging::AccessLog) -> Result<()> {
    // Everything that can fail about the components, the certificate and the addresses
    // fails here, before the public port takes a single connection.
    let app = App::build(&config, access_log).await?;
    release_startup_memory();
    let tls = config
        .tls
        .as_ref()
        .map(Tls::load)
        .transpose()?
        .map(Arc::new);
    let listener = server::bind(config.listen, config.reuse_port)?;
    let addr = listener.local_addr()?;
    if let Some(admin_addr) = config.admin_listen {
        let admin = server::bind(admin_addr, false).context("cannot bind the admin listener")?;
        tracing::info!("Admin listening on http://{}/", admin.local_addr()?);
        tokio::spawn(admin::serve(
            admin,
            app.clone(),
            config.admin_token.clone(),
            addr,
        ));
    }
    if let Some(stats_addr) = config.stats_listen {
        let stats = server::bind(stats_addr, false).context("cannot bind the stats socket")?;
        tracing::info!("Stats socket on {}", stats.local_addr()?);
        tokio::spawn(admin::serve_stats_socket(stats, app.clone(), addr));
    }
    let _watcher = config.watch.then(|| swap::watch(app.clone())).transpose()?;
    tokio::spawn({
        let (app, tls) = (app.clone(), tls.clone());
        async move {
            let mut hangups = signals::hangups();
            while hangups.recv().await.is_some() {
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
                swap::on_sighup(&app, &|| load_config(&cli)).await;
            }
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("Serving {} on {scheme}://{addr}/", scheme.to_uppercase());
    server::serve(listener, app, tls, signals::shutdown()).await
}

/// Compiling components (cranelift, on several threads) leaves megabytes of freed memory in
/// the allocator's per-thread heaps; the server never needs it again, so hand it back to the
/// OS before serving rather than after mimalloc's purge delay.
fn release_startup_memory() {
    #[expect(
        unsafe_code,
        reason = "FFI call with a plain bool argument to manage the global allocator"
    )]
    // SAFETY: mi_collect only frees and returns memory that is no longer in use; it is safe
    // to call from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
