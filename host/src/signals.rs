//! Process signals: SIGTERM and SIGINT begin a graceful shutdown; a second SIGINT exits at
//! once (an operator pressing Ctrl-C twice means it); SIGHUP asks for a reload.

use tokio::signal::unix::{SignalKind, signal};

/// Exit status for an immediate exit on a second SIGINT (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// Resolves on the first SIGTERM or SIGINT. After a SIGINT has been seen, another SIGINT
/// ends the process immediately.
pub async fn shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; shut down with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "graceful shutdown"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "graceful shutdown; interrupt again to exit now"),
    }
    tokio::spawn(async move {
        if int.recv().await.is_some() {
            tracing::warn!("second SIGINT: exiting without draining");
            std::process::exit(EXIT_INTERRUPTED);
        }
    });
}

/// A stream of SIGHUPs: each `recv` resolves on the next one.
pub fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // A reload already pending covers this one too.
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload with the admin API")
        }
    }
    rx
}
