//! The `fibhost` command: parse options, set up logging, build the app, bind, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use fibhost::config::Settings;
use fibhost::{App, Config, server, signals};

/// A WebAssembly application server: serves a wasi:http component with N recycled workers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; command-line options override its keys.
    #[arg(long, env = "FIBHOST_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fibhost: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let _log = fibhost::logging::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime builds unless the process is out of threads or memory");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fibhost: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: Cli) -> Result<Config> {
    let settings = match &cli.config {
        Some(path) => cli.settings.or(Settings::from_file(path)?),
        None => cli.settings,
    };
    settings.resolve()
}

async fn run(config: Config) -> Result<()> {
    let app = App::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on `{}`; is it in use? pick another with --listen",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!("Serving HTTP on http://{addr}/");
    server::serve(listener, app, signals::shutdown()).await
}
