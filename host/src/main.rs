//! The `fibhost` command: take the service manager's sockets, parse options, set up logging,
//! build the app, bind, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use fibhost::activation::Activated;
use fibhost::config::Settings;
use fibhost::{App, Config, Listeners, signals};

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

/// mimalloc: against glibc's malloc, 2–9% more keep-alive req/s and a steadier p99 and RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    #[expect(unsafe_code, reason = "see the SAFETY comment")]
    // SAFETY: first thing in main, before any thread exists (logging and runtimes start below).
    let activated = unsafe { Activated::take() };
    let Ok(activated) = activated.map_err(|e| fail(&e, 2)) else {
        return ExitCode::from(2);
    };
    let cli = Cli::parse();
    let Ok(config) = load_config(&cli).map_err(|e| fail(&e, 2)) else {
        return ExitCode::from(2);
    };
    let (access_log, _flush_on_exit) = fibhost::logging::init(config.log_format);
    // The control plane; requests are served on the event-loop threads `App::build` starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime builds unless the process is out of threads or memory");
    let served = runtime.block_on(async {
        let app = App::build(config.clone(), access_log).await?;
        fibhost::app::release_startup_memory();
        let listeners = Listeners::bind_or_take(&config, activated)?;
        let shutdown = signals::shutdown()?;
        let reloads = signals::reloads(move || load_config(&cli))?;
        listeners.announce(app.scheme())?;
        fibhost::run(app, listeners, shutdown, reloads).await
    });
    served.map_or_else(|e| fail(&e, 1), |()| ExitCode::SUCCESS)
}

/// The command line layered over the config file (re-read on SIGHUP).
fn load_config(cli: &Cli) -> Result<Config> {
    match &cli.config {
        Some(path) => cli.settings.clone().or(Settings::from_file(path)?),
        None => cli.settings.clone(),
    }
    .resolve()
}

/// Prints a fatal error once, on stderr (not through the log, which a filter could hide).
fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    eprintln!("fibhost: error: {e:#}");
    ExitCode::from(code)
}
