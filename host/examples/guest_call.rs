//! The cost of one guest call in isolation: `Instance::serve` of `GET /9000` and the draining
//! of its response body, repeated on one thread with no socket, no hyper and no worker hand-off.
//!
//! What a keep-alive request costs fibhost is this plus what the same request costs a native
//! hyper server (parsing, the syscalls, the event loop), so this number bounds how close to
//! native any host built on this wasmtime can come. `bench/run.sh` runs it and puts the result
//! in its report; run it alone with
//!
//! ```sh
//! cargo run --release -p fibhost --example guest_call -- guests/fib.wasm
//! ```
//!
//! It then times the same call made the way the server makes it: by a worker task that takes
//! the request from a channel and answers through the request's reply channel, while the
//! caller waits on the answer (the pool's hand-off, on one thread). The difference is what
//! running the guest inline in the connection task could save per request at most.
//!
//! Last, it times an instantiation (`Instance::new`, then the instance dropped, as a recycle
//! does) and the part of it that is fibhost's own: the store and its data, without wasmtime
//! instantiating the component.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use fibhost::config::{RouteConfig, Settings};
use fibhost::engine::Loader;
use fibhost::guest::{GuestRequest, Instance, LiveInstances, Reply, Setup, reply};
use fibhost::outbound::Outbound;
use fibhost::outcome::Outcome;
use fibhost::request_id::{RequestId, RequestIds};
use fibhost::state::{GuestState, OutputTag};
use http_body_util::{BodyExt, Empty};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// The allocator of the `fibhost` binary, so that the measured calls allocate as it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls per round, and rounds (the report takes the fastest: the machine is shared).
const CALLS: u32 = 100_000;
const ROUNDS: u32 = 5;

fn main() -> Result<()> {
    let component = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("guests/fib.wasm"), PathBuf::from);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A local set: the worker task runs on this thread, as a pool's worker runs on its
    // connection's thread in the common case.
    tokio::task::LocalSet::new().block_on(&runtime, measure(component))
}

async fn measure(component: PathBuf) -> Result<()> {
    // The route as `fibhost --component FILE` resolves it (request timeout included: every
    // call runs under one).
    let settings = Settings {
        component: Some(component.clone()),
        memory_limit_mib: Some(64),
        ..Settings::default()
    };
    let spec: RouteConfig = settings.resolve()?.routes.remove(0);
    let version = Loader::new(1, spec.lifecycle.memory_limit_bytes, None, u64::MAX)?
        .load(&component)
        .with_context(|| format!("cannot load {}", component.display()))?;
    let setup = Setup {
        route: Arc::new(spec.clone()),
        live: LiveInstances::default(),
        outbound: Arc::new(Outbound::new("/", &spec.outbound, Default::default())),
    };
    let mut instance = Instance::new(&version, &setup).await?;
    let ids = RequestIds::default();
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..CALLS {
            call(&mut instance, &spec, &ids).await?;
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS));
    }
    // The first line of output, read by bench/harness.py.
    writeln!(
        std::io::stdout(),
        "guest call: {best:.2} us per GET /9000 (serve + body), fastest of {ROUNDS} rounds of {CALLS}"
    )?;
    let handed = through_a_worker(instance, spec.clone(), ids).await?;
    writeln!(
        std::io::stdout(),
        "through a worker task: {handed:.2} us per GET /9000 (hand-off {:+.2} us), fastest of {ROUNDS} rounds of {CALLS}",
        handed - best
    )?;
    let (instantiate, own) = (
        fastest(async || Instance::new(&version, &setup).await.map(drop)).await?,
        fastest(async || {
            let tag = OutputTag::new(Arc::from(spec.prefix.as_str()));
            let limit = spec.lifecycle.memory_limit_bytes;
            let state = GuestState::new(
                &spec.env,
                &tag,
                limit,
                Arc::default(),
                setup.outbound.clone(),
            );
            drop(wasmtime::Store::new(version.pre.engine(), state));
            Ok(())
        })
        .await?,
    );
    writeln!(
        std::io::stdout(),
        "instantiation: {instantiate:.2} us per Instance::new and drop, of which {own:.2} us the store and its data, fastest of {ROUNDS} rounds of {INSTANCES}"
    )?;
    Ok(())
}

/// Instances per round of the instantiation timing.
const INSTANCES: u32 = 20_000;

/// The fastest round's time per run of `f`, in µs.
async fn fastest(mut f: impl AsyncFnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..INSTANCES {
            f().await?;
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e6 / f64::from(INSTANCES));
    }
    Ok(best)
}

/// The same calls made by a worker task fed through a channel, as the pool feeds its workers.
async fn through_a_worker(
    mut instance: Instance,
    spec: RouteConfig,
    ids: RequestIds,
) -> Result<f64> {
    type Job = (GuestRequest, Reply, RequestId);
    let (jobs, jobs_rx) = async_channel::unbounded::<Job>();
    let timeout = spec.lifecycle.request_timeout;
    let worker = tokio::task::spawn_local(async move {
        while let Ok((request, reply, id)) = jobs_rx.recv().await {
            let outcome = (instance.serve(request, Scheme::Http, &reply, &id, timeout)).await;
            if !matches!(outcome, Outcome::Answered) {
                bail!("the guest failed: {outcome:?}");
            }
        }
        Ok(())
    });
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..CALLS {
            let (reply, answer) = reply();
            if jobs
                .try_send((get_9000()?, reply, ids.assign(None)))
                .is_err()
            {
                bail!("the worker task ended");
            }
            let response = answer.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
            check(response.into_body().collect().await?.to_bytes())?;
        }
        best = best.min(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS));
    }
    drop(jobs);
    worker.await??;
    Ok(best)
}

/// `GET /9000` as the server hands it to a guest.
fn get_9000() -> Result<GuestRequest> {
    Ok(hyper::Request::builder()
        .uri("http://127.0.0.1/9000")
        .header("host", "127.0.0.1")
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())?)
}

fn check(body: bytes::Bytes) -> Result<()> {
    if !body.starts_with(b"[0, 1, 1, 2") {
        bail!("unexpected body: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// One `GET /9000` through the guest, its body read to the end.
async fn call(instance: &mut Instance, spec: &RouteConfig, ids: &RequestIds) -> Result<()> {
    let request = get_9000()?;
    let (reply, answer) = reply();
    let id = ids.assign(None);
    let timeout = spec.lifecycle.request_timeout;
    let outcome = (instance.serve(request, Scheme::Http, &reply, &id, timeout)).await;
    if !matches!(outcome, Outcome::Answered) {
        bail!("the guest failed: {outcome:?}");
    }
    let response = answer.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    check(response.into_body().collect().await?.to_bytes())
}
