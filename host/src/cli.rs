//! The command line: clap's argument set (the config file's path over the [`Settings`] layer)
//! and how it is layered over the file. Only the binary parses it; the server never sees clap.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use crate::config::{Config, Settings};

/// A WebAssembly application server: serves wasi:http components with N recycled workers.
#[derive(Parser, Clone, Debug)]
#[command(name = "fibhost", version, about)]
pub struct Cli {
    /// TOML config file; command-line options override its keys. SIGHUP re-reads it.
    #[arg(long, env = "FIBHOST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Every option, also a key of the config file.
    #[command(flatten)]
    pub settings: Settings,
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
