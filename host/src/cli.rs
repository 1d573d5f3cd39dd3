//! The command line: clap's argument set (the config file's path over the [`Settings`] layer)
//! and how it is layered over the file, plus the guest author's subcommands (`check`, `new`).
//! Only the binary parses it; the server never sees clap.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::check::{self, Expectations};
use crate::config::{Config, Settings};
use crate::scaffold::{Language, Template};

/// A WebAssembly application server: serves wasi:http components with N recycled workers.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "fibhost",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// For guest authors: check a component, or start a new guest project. Without one,
    /// fibhost serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file; command-line options override its keys. SIGHUP re-reads it.
    #[arg(long, env = "FIBHOST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Every option, also a key of the config file.
    #[command(flatten)]
    pub settings: Settings,
}

/// What a guest author runs instead of the server.
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Check a guest component before deploying it: loads it as `serve` would, drives it
    /// in-process (GET, HEAD, a 1 MiB POST, a slow client, many requests on one instance,
    /// your own expectations) and reports what would fail. Exit code 0 when it can be served
    /// with the given settings (the defaults unless `--config`), 1 when not.
    Check(CheckArgs),
    /// Create a guest project: sources, pinned toolchain versions and a build script.
    New(NewArgs),
}

/// `fibhost check`.
#[derive(Args, Clone, Debug)]
pub struct CheckArgs {
    /// The component (`.wasm`) to check.
    #[arg(value_name = "GUEST")]
    pub component: PathBuf,
    /// Check under this config file's settings (memory-limit, request-timeout, max-requests,
    /// reload-on-memory, env…, and its cache-dir) instead of the defaults; its component is
    /// ignored.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Path (and query) of the GET, HEAD, POST and repeated requests.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// TOML file of `[[request]]` tables: method, path, headers, body, and `expect` (status,
    /// body, body-contains, headers) the response must match.
    #[arg(long, value_name = "PATH")]
    pub expect: Option<PathBuf>,
    /// Requests sent to one instance, to see that it serves them all without leaking.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..))]
    pub requests: u64,
}

impl CheckArgs {
    /// The check these arguments ask for, under the settings they name.
    pub fn plan(&self) -> Result<check::Plan> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        settings.component = Some(self.component.clone());
        settings.routes.clear();
        let config = settings.resolve()?;
        let route = config.routes.into_iter().next();
        Ok(check::Plan {
            route: route.expect("a component given resolves to the `/` route"),
            max_component_bytes: config.max_component_bytes,
            cache_dir: config.cache_dir,
            path: self.path.clone(),
            requests: self.requests,
            expectations: match &self.expect {
                Some(path) => Expectations::from_file(path)?,
                None => Vec::new(),
            },
        })
    }
}

/// `fibhost new`.
#[derive(Args, Clone, Debug)]
pub struct NewArgs {
    /// The guest's language.
    #[arg(value_enum)]
    pub language: Language,
    /// The directory to create (it must not exist, or be empty).
    pub dir: PathBuf,
    /// What the project starts as.
    #[arg(long, value_enum, default_value_t = Template::Hello)]
    pub template: Template,
}

impl Cli {
    /// The command line layered over the config file (re-read on SIGHUP): the configuration.
    pub fn load_config(&self) -> Result<Config> {
        match &self.config {
            Some(path) => self.settings.clone().or(Settings::from_file(path)?),
            None => self.settings.clone(),
        }
        .resolve()
    }
}
