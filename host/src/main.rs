//! The `fibhost` command: take the service manager's sockets, parse options, set up logging,
//! build the app, bind, serve. Or, for guest authors, `fibhost check` and `fibhost new`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use fibhost::activation::Activated;
use fibhost::cli::{CheckArgs, Cli, Command, NewArgs};
use fibhost::{App, Listeners, signals};

/// mimalloc: against glibc's malloc, 2–9% more keep-alive req/s and a steadier p99 and RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    #[expect(unsafe_code, reason = "see the SAFETY comment")]
    // SAFETY: first thing in main, before any thread exists (logging and runtimes start below).
    let activated = unsafe { Activated::take() };
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check(args)) => return check(args),
        Some(Command::New(args)) => return new(args),
        None => {}
    }
    let (activated, config) = match activated.and_then(|a| Ok((a, cli.load_config()?))) {
        Ok(prepared) => prepared,
        Err(e) => return fail(&e, 2),
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
        let reloads = signals::reloads(move || cli.load_config())?;
        listeners.announce(app.scheme())?;
        fibhost::run(app, listeners, shutdown, reloads).await
    });
    served.map_or_else(|e| fail(&e, 1), |()| ExitCode::SUCCESS)
}

/// `fibhost check`: the report on stdout; exit code 1 when the guest would fail requests.
fn check(args: &CheckArgs) -> ExitCode {
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(e) => return fail(&e, 2),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime builds unless the process is out of threads or memory");
    match runtime.block_on(fibhost::check::run(&plan)) {
        Ok(report) => {
            // The report is the command's output: stdout, not the log.
            let _ = write!(std::io::stdout().lock(), "{report}");
            if report.safe() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(&e, 1),
    }
}

/// `fibhost new`: writes the project and says how to build and serve it.
fn new(args: &NewArgs) -> ExitCode {
    match fibhost::scaffold::create(args.language, args.template, &args.dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}

/// Prints a fatal error once, on stderr (not through the log, which a filter could hide).
fn fail(e: &anyhow::Error, code: u8) -> ExitCode {
    eprintln!("fibhost: error: {e:#}");
    ExitCode::from(code)
}
