//! The wasmtime side: the engines, and loading a component file into a checked,
//! pre-instantiated [`Version`].
//!
//! Two engines, because the two `wasi:http` worlds want different settings. A WASI 0.2
//! component (`wasi:http/incoming-handler@0.2`) is served by an engine with the component
//! model's concurrency support off: every host→guest entry is then cheaper (wasmtime's numbers:
//! ~300 ns against ~800 ns). A WASI 0.3 component (`wasi:http/handler@0.3`, async, `stream`
//! bodies, several requests per instance) needs that support on. The p3 engine is built the
//! first time a p3 component is loaded, so a deployment of p2 guests pays nothing for it.
//! Which world a component serves is read from its exports before it is compiled.
//!
//! Everything that can fail about a component (unreadable file, not a component, imports we do
//! not provide, no handler export) fails here, before the port is bound or, for a hot swap,
//! before any request is routed to it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::cache::Cache;
use crate::state::GuestState;

/// How often the epoch advances. A running guest yields to the scheduler at every tick, so
/// this bounds how long one guest can hold a runtime thread, and how late a request timeout
/// can fire.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instance slots the pooling allocator reserves per worker: the serving instance, its
/// ready replacement (make-before-break) and one retiring or being built during a swap.
const SLOTS_PER_WORKER: u32 = 3;

/// Linear memory per slot kept resident (zeroed in place) when an instance is dropped.
const KEEP_RESIDENT_MEMORY_BYTES: usize = 1 << 20;
/// Table memory per slot kept resident when an instance is dropped.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// The `wasi:http` world a component serves, read from its exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// WASI 0.2: `wasi:http/incoming-handler@0.2.x`, one request per call.
    P2,
    /// WASI 0.3: `wasi:http/handler@0.3.x`, an async `handle`; an instance may serve several
    /// requests at once.
    P3,
}

impl World {
    /// As shown in logs and the admin status.
    pub fn as_str(self) -> &'static str {
        match self {
            World::P2 => "wasi:http@0.2",
            World::P3 => "wasi:http@0.3",
        }
    }
}

/// Builds an engine for components of `world`.
///
/// `workers` is the total over all components and sizes the pooling allocator;
/// `max_memory_bytes` is the largest per-instance memory limit of any component.
pub fn new_engine(world: World, workers: usize, max_memory_bytes: u64) -> Result<Engine> {
    let mut config = Config::new();
    // `wasi:http@0.2` components never use the component model's async features, and with
    // concurrency support on, every host→guest entry and host call pays for task bookkeeping
    // (wasmtime's numbers: ~800 ns against ~300 ns per entry). WASI 0.3 components need it:
    // their handler is an async export and their bodies are component-model streams.
    config.concurrency_support(world == World::P3);
    if world == World::P3 {
        config.wasm_component_model_async(true);
    }
    // Epoch interruption, not fuel: one atomic load per loop back-edge instead of counting
    // every instruction.
    config.epoch_interruption(true);

    // The pooling allocator makes instantiation a matter of reusing pre-reserved slots, which
    // is what makes a fresh instance per request (`max-requests = 1`) affordable.
    let slots = (workers as u32)
        .saturating_mul(SLOTS_PER_WORKER)
        .saturating_add(16);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots.max(1000))
        .total_core_instances(slots.saturating_mul(8).max(1000))
        .total_memories(slots.saturating_mul(2).max(1000))
        .total_tables(slots.saturating_mul(4).max(1000))
        .total_stacks(slots.max(1000))
        .max_memory_size(max_memory_bytes as usize)
        // Recycling a slot by `madvise` cost a third of the CPU with a fresh instance per
        // request (TLB shootdowns on every decommit, then copy-on-write faults on first
        // touch). Zeroing the first pages in place and, where the kernel has PAGEMAP_SCAN
        // (6.7+), resetting only the dirty pages keeps slots warm: measured ~3x the
        // throughput of `max-requests = 1`, for at most 1 MiB of resident memory per slot.
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot configure the wasmtime engine")
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until the process exits.
///
/// A plain thread rather than a tokio task so that the tick keeps coming even when every
/// runtime thread is busy running guest code.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("fibhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning a thread at startup only fails when the process is out of resources");
}

/// The linker with every interface a guest of `world` may import: the `wasi:http` world plus
/// the `wasi:cli` interfaces (environment, exit, stdio…) that a Rust `std` guest imports. A
/// WASI 0.3 guest built by today's toolchains imports the 0.2 `wasi:cli` interfaces too (its
/// standard library's), so its linker has both. Filesystem and sockets are linked but grant
/// nothing: no preopens, no allowed addresses.
fn new_linker(engine: &Engine, world: World) -> Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    match world {
        World::P2 => wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?,
        World::P3 => {
            wasmtime_wasi::p3::add_to_linker(&mut linker)?;
            wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        }
    }
    Ok(linker)
}

/// A loaded, checked component: what instances are made from.
#[derive(Clone)]
pub struct Version {
    /// Identity shown in logs and the admin status.
    pub id: Arc<VersionId>,
    /// Pre-instantiated component: imports resolved and the handler export found.
    pub pre: Pre,
}

/// A pre-instantiated component of either world.
#[derive(Clone)]
pub enum Pre {
    /// A `wasi:http/incoming-handler@0.2` component.
    P2(ProxyPre<GuestState>),
    /// A `wasi:http/handler@0.3` component.
    P3(ServicePre<GuestState>),
}

impl Pre {
    /// The engine its instances run in.
    pub fn engine(&self) -> &Engine {
        match self {
            Pre::P2(pre) => pre.engine(),
            Pre::P3(pre) => pre.engine(),
        }
    }

    /// The world it serves.
    pub fn world(&self) -> World {
        match self {
            Pre::P2(_) => World::P2,
            Pre::P3(_) => World::P3,
        }
    }
}

/// The identity of a loaded component: its content hash and when it was loaded.
#[derive(Debug)]
pub struct VersionId {
    /// Whether an instance of it can serve only one request (a fresh instance per request is
    /// then the default, whatever `max-requests` says): known from the component itself
    /// (ComponentizeJS/StarlingMonkey), or learnt when an instance returned without a
    /// response on its second request.
    pub serves_once: std::sync::atomic::AtomicBool,
    /// The `wasi:http` world it serves.
    pub world: World,
    /// The file it came from.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

impl VersionId {
    /// The first 12 hex digits of the hash: enough to tell versions apart in a log line.
    pub fn short(&self) -> &str {
        &self.sha256[..12]
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.short(), self.path.display())
    }
}

/// What compiles and links the components of one world: its engine (whose epoch ticks), its
/// linker and its part of the on-disk cache (entries are keyed by the engine's settings).
struct Backend {
    engine: Engine,
    linker: Linker<GuestState>,
    cache: Option<Cache>,
}

impl Backend {
    fn new(world: World, sizing: &Sizing) -> Result<Backend> {
        let engine = new_engine(world, sizing.workers, sizing.max_memory_bytes)?;
        start_epoch_ticker(&engine);
        let linker = new_linker(&engine, world)?;
        let cache = (sizing.cache_dir.as_deref())
            .map(|dir| Cache::open(dir, &engine))
            .transpose()?;
        Ok(Backend {
            engine,
            linker,
            cache,
        })
    }
}

/// What an engine is sized and cached by.
struct Sizing {
    workers: usize,
    max_memory_bytes: u64,
    cache_dir: Option<PathBuf>,
}

/// Compiles and checks components: an engine per world (the p3 one built on first use), the
/// linkers and the optional on-disk cache of compiled artifacts.
#[derive(Clone)]
pub struct Loader {
    p2: Arc<Backend>,
    p3: Arc<Mutex<Option<Arc<Backend>>>>,
    sizing: Arc<Sizing>,
    /// Largest component file read (`max-component-size`).
    max_bytes: u64,
}

impl Loader {
    /// A loader for `workers` instances in all (sizing the engines' pooling allocators) of at
    /// most `max_memory_bytes` each, caching compiled components in `cache_dir` when given,
    /// and refusing component files larger than `max_bytes`. Builds the p2 engine and starts
    /// its epoch ticker.
    pub fn new(
        workers: usize,
        max_memory_bytes: u64,
        cache_dir: Option<&Path>,
        max_bytes: u64,
    ) -> Result<Loader> {
        let sizing = Sizing {
            workers,
            max_memory_bytes,
            cache_dir: cache_dir.map(Path::to_path_buf),
        };
        Ok(Loader {
            p2: Arc::new(Backend::new(World::P2, &sizing)?),
            p3: Arc::default(),
            sizing: Arc::new(sizing),
            max_bytes,
        })
    }

    /// The backend for `world`, building the p3 one on first use.
    fn backend(&self, world: World) -> Result<Arc<Backend>> {
        if world == World::P2 {
            return Ok(self.p2.clone());
        }
        let mut p3 = self.p3.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(backend) = &*p3 {
            return Ok(backend.clone());
        }
        let backend = Arc::new(Backend::new(World::P3, &self.sizing)?);
        *p3 = Some(backend.clone());
        Ok(backend)
    }

    /// The SHA-256 of the component file at `path` (read with the same checks as [`load`]),
    /// to tell whether a reload would change anything before compiling.
    ///
    /// [`load`]: Loader::load
    pub fn fingerprint(&self, path: &Path) -> Result<String> {
        Ok(sha256_hex(&read_component(path, self.max_bytes)?))
    }

    /// Reads, compiles (or fetches from the cache) and checks the component at `path`.
    /// CPU-heavy: call it off the request path (`spawn_blocking` once serving).
    pub fn load(&self, path: &Path) -> Result<Version> {
        let bytes = read_component(path, self.max_bytes)?;
        check_is_component(path, &bytes)?;
        let world = world_of(path, &bytes)?;
        let backend = self.backend(world)?;
        let sha256 = sha256_hex(&bytes);
        let cached =
            (backend.cache.as_ref()).and_then(|cache| cache.get(&backend.engine, &sha256, path));
        let component = match cached {
            Some(component) => component,
            None => {
                let started = std::time::Instant::now();
                let component = Component::new(&backend.engine, &bytes)
                    .map_err(anyhow::Error::from)
                    .with_context(|| {
                        format!("`{}` is not a valid WebAssembly component", path.display())
                    })?;
                if let Some(cache) = &backend.cache {
                    tracing::info!(
                        component = %path.display(),
                        compile_ms = started.elapsed().as_millis() as u64,
                        "compiled component (cache miss)"
                    );
                    cache.put(&component, &sha256);
                }
                component
            }
        };
        let pre = pre_instantiate(&backend.linker, &component, path, world)?;
        let serves_once = serves_one_request(&bytes);
        if serves_once {
            tracing::info!(component = %path.display(), "this component serves one request per instance (ComponentizeJS/StarlingMonkey): each request gets a fresh instance, prepared ahead (as with max-requests = 1)");
        }
        Ok(Version {
            id: Arc::new(VersionId {
                serves_once: serves_once.into(),
                world,
                path: path.to_path_buf(),
                sha256,
                loaded_at: SystemTime::now(),
            }),
            pre,
        })
    }
}

fn pre_instantiate(
    linker: &Linker<GuestState>,
    component: &Component,
    path: &Path,
    world: World,
) -> Result<Pre> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "`{}` imports something fibhost does not provide (for a {} component fibhost \
                 links that `wasi:http` world and the wasi:cli, clocks, random, io, filesystem \
                 and sockets interfaces)",
                path.display(),
                world.as_str()
            )
        })?;
    let pre = match world {
        World::P2 => ProxyPre::new(instance_pre).map(Pre::P2),
        World::P3 => ServicePre::new(instance_pre).map(Pre::P3),
    };
    pre.map_err(anyhow::Error::from).with_context(|| {
        format!(
            "`{}` does not export a usable {} handler",
            path.display(),
            world.as_str()
        )
    })
}

/// Which `wasi:http` world the component serves, from the names of its top-level exports:
/// `wasi:http/incoming-handler@0.2.x` (WASI 0.2) or `wasi:http/handler@0.3.x` (WASI 0.3).
/// Read before compiling, because the two are compiled by different engines.
fn world_of(path: &Path, bytes: &[u8]) -> Result<World> {
    let exports = top_level_exports(bytes);
    let has = |interface: &str, version: &str| {
        exports.iter().any(|name| {
            name.strip_prefix(interface)
                .and_then(|rest| rest.strip_prefix('@'))
                .is_some_and(|v| v.starts_with(version))
        })
    };
    if has("wasi:http/incoming-handler", "0.2.") {
        Ok(World::P2)
    } else if has("wasi:http/handler", "0.3.") {
        Ok(World::P3)
    } else {
        let listed = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        bail!(
            "`{}` exports neither `wasi:http/incoming-handler@0.2.x` (WASI 0.2) nor \
             `wasi:http/handler@0.3.x` (WASI 0.3), so it is not an HTTP handler fibhost can \
             serve; it exports {listed}",
            path.display()
        )
    }
}

/// The names the component itself exports (not those of the modules and components nested
/// in it). Sections are only framed, not validated: compiling validates them.
fn top_level_exports(bytes: &[u8]) -> Vec<String> {
    let mut depth = 0usize;
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::ModuleSection { .. })
            | Ok(wasmparser::Payload::ComponentSection { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentExportSection(section)) if depth == 0 => {
                names.extend(
                    section
                        .into_iter()
                        .flatten()
                        .map(|e| e.name.name.to_string()),
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    names
}

/// Reads a component file: only a regular file (not a device, FIFO or directory, which could
/// stream forever or block a thread), and at most `max_bytes` of it.
fn read_component(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let shown = path.display();
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever. (It changes
    // nothing for the regular file that is then required.)
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read component `{shown}`"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read component `{shown}`"))?;
    anyhow::ensure!(
        meta.is_file(),
        "`{shown}` is not a regular file; a component must be a `.wasm` file"
    );
    anyhow::ensure!(
        meta.len() <= max_bytes,
        "`{shown}` is {} bytes, larger than `max-component-size` ({max_bytes} bytes)",
        meta.len()
    );
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take`: the file may grow between the check and the read.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read component `{shown}`"))?;
    anyhow::ensure!(
        bytes.len() as u64 <= max_bytes,
        "`{shown}` grew past `max-component-size` ({max_bytes} bytes) while it was read"
    );
    Ok(bytes)
}

/// Whether the component says it was built by ComponentizeJS: its StarlingMonkey engine runs
/// one fetch event per instance, and a second request on the same instance returns without a
/// response. The mark is the `processed-by` entry of the component's own `producers` section.
fn serves_one_request(bytes: &[u8]) -> bool {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::CustomSection(section))
                if section.name() == "producers"
                    && section.data().windows(14).any(|w| w == b"ComponentizeJS") =>
            {
                return true;
            }
            // Sections are only framed, not validated: cheap even for a 13 MB guest.
            Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

/// Gives a precise reason for the common mistakes before the parser gives a generic one.
fn check_is_component(path: &Path, bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    let shown = path.display();
    if bytes.is_empty() {
        bail!("`{shown}` is empty, not a WebAssembly component");
    }
    if !bytes.starts_with(MAGIC) || bytes.len() < 8 {
        bail!("`{shown}` is not a WebAssembly component (it does not start with `\\0asm`)");
    }
    // Bytes 4..8: version and layer. A core module is `01 00 00 00`; a component has layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        bail!(
            "`{shown}` is a core WebAssembly module, not a component: build the guest for \
             `wasm32-wasip2`, or wrap the module with `wasm-tools component new`"
        );
    }
    Ok(())
}

/// The SHA-256 of `bytes` in lowercase hex: a version's identity.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_component() {
        let p = Path::new("x.wasm");
        let msg = |b: &[u8]| check_is_component(p, b).unwrap_err().to_string();
        assert!(msg(b"").contains("is empty"));
        assert!(msg(b"hello world").contains("does not start with"));
        assert!(msg(b"\0asm\x01\0\0\0").contains("core WebAssembly module"));
        assert!(check_is_component(p, b"\0asm\x0d\0\x01\0").is_ok());
    }
}
