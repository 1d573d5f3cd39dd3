//! Process signals: SIGTERM and SIGINT begin a graceful shutdown; a second SIGINT exits at
//! once (an operator pressing Ctrl-C twice means it); SIGHUP asks for a reload.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;

/// Exit status for an immediate exit on a second SIGINT (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// Installs the SIGTERM and SIGINT handlers now (a startup error if that fails, not a server
/// that cannot be stopped) and returns a future that resolves on the first of them. After a
/// SIGINT, another SIGINT ends the process immediately. Call inside the runtime.
pub fn shutdown() -> Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "graceful shutdown"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "graceful shutdown; interrupt again to exit now"),
        }
        tokio::spawn(async move {
            if int.recv().await.is_some() {
                eprintln!("fibhost: second SIGINT: exiting without draining");
                std::process::exit(EXIT_INTERRUPTED);
            }
        });
    })
}

/// On every SIGHUP, re-reads the configuration with `load` and sends the result; a SIGHUP that
/// arrives while one is still pending is covered by it. Call inside the runtime.
pub fn reloads(
    load: impl Fn() -> Result<Config> + Send + 'static,
) -> Result<mpsc::Receiver<Result<Config>>> {
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Ok(permit) = tx.try_reserve() {
                permit.send(load());
            }
        }
    });
    Ok(rx)
}
