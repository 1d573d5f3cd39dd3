//! The `fib-native` command: bind, print the startup line, serve until SIGINT or SIGTERM.

use std::io;
use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;

/// The Fibonacci API on plain hyper + tokio: the native baseline for fibhost benchmarks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (the startup line prints the real one).
    #[arg(
        long,
        env = "FIB_NATIVE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
}

// The default `#[tokio::main]` runtime is multi-threaded with one worker per CPU, like
// fibhost's, so both spread connections over the same number of threads.
#[tokio::main]
async fn main() -> io::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.listen).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on `{}`: {e}; pick another with --listen",
                cli.listen
            ),
        )
    })?;
    // Same format as fibhost's startup line: the benchmark script parses both alike.
    eprintln!("Serving HTTP on http://{}/", listener.local_addr()?);
    fib_native::serve(listener, shutdown_signal()).await
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail in a fresh runtime");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
