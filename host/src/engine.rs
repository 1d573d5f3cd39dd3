//! The wasmtime side: one [`Engine`] for the process, and loading a component file into a
//! checked, pre-instantiated [`Version`].
//!
//! Everything that can fail about a component (unreadable file, not a component, imports we do
//! not provide, no `wasi:http/incoming-handler` export) fails here, before the port is bound or,
//! for a hot swap, before any request is routed to it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

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

/// Builds the process-wide engine.
///
/// `workers` is the total over all components and sizes the pooling allocator;
/// `max_memory_bytes` is the largest per-instance memory limit of any component.
pub fn new_engine(workers: usize, max_memory_bytes: u64) -> Result<Engine> {
    let mut config = Config::new();
    // `wasi:http@0.2` components never use the component model's async features, and with
    // concurrency support on, every host→guest entry and host call pays for task bookkeeping
    // (wasmtime's numbers: ~800 ns against ~300 ns per entry). This build does not compile
    // wasmtime's `component-model-async` feature, so it is off already (asking for it on fails
    // with "not compiled into this build"); said explicitly so that enabling the feature, for
    // WASIp3 guests, cannot turn it on for the p2 engine unnoticed.
    config.concurrency_support(false);
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

/// The linker with every interface a guest may import: the `wasi:http/proxy` world plus the
/// `wasi:cli` interfaces (environment, exit, stdio…) that a Rust `std` guest imports.
/// Filesystem and sockets are linked but grant nothing: no preopens, no allowed addresses.
fn new_linker(engine: &Engine) -> Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A loaded, checked component: what instances are made from.
#[derive(Clone)]
pub struct Version {
    /// Identity shown in logs and the admin status.
    pub id: Arc<VersionId>,
    /// Pre-instantiated component: imports resolved and the handler export found.
    pub pre: ProxyPre<GuestState>,
}

/// The identity of a loaded component: its content hash and when it was loaded.
#[derive(Debug)]
pub struct VersionId {
    /// Whether an instance of it can serve only one request (a fresh instance per request is
    /// then the default, whatever `max-requests` says): known from the component itself
    /// (ComponentizeJS/StarlingMonkey), or learnt when an instance returned without a
    /// response on its second request.
    pub serves_once: std::sync::atomic::AtomicBool,
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

/// Compiles and checks components: the engine, the linker and the optional on-disk cache of
/// compiled artifacts.
#[derive(Clone)]
pub struct Loader {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    cache: Option<Cache>,
    /// Largest component file read (`max-component-size`).
    max_bytes: u64,
}

impl Loader {
    /// A loader over `engine`, caching compiled components in `cache_dir` when given, and
    /// refusing component files larger than `max_bytes`.
    pub fn new(engine: Engine, cache_dir: Option<&Path>, max_bytes: u64) -> Result<Loader> {
        let linker = Arc::new(new_linker(&engine)?);
        let cache = cache_dir.map(|dir| Cache::open(dir, &engine)).transpose()?;
        Ok(Loader {
            engine,
            linker,
            cache,
            max_bytes,
        })
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
        let sha256 = sha256_hex(&bytes);
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&self.engine, &sha256, path));
        let component = match cached {
            Some(component) => component,
            None => {
                let started = std::time::Instant::now();
                let component = Component::new(&self.engine, &bytes)
                    .map_err(anyhow::Error::from)
                    .with_context(|| {
                        format!("`{}` is not a valid WebAssembly component", path.display())
                    })?;
                if let Some(cache) = &self.cache {
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
        let pre = pre_instantiate(&self.linker, &component, path)?;
        let serves_once = serves_one_request(&bytes);
        if serves_once {
            tracing::info!(component = %path.display(), "this component serves one request per instance (ComponentizeJS/StarlingMonkey): each request gets a fresh instance, prepared ahead (as with max-requests = 1)");
        }
        Ok(Version {
            id: Arc::new(VersionId {
                serves_once: serves_once.into(),
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
) -> Result<ProxyPre<GuestState>> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "`{}` imports something fibhost does not provide (fibhost links wasi:http/proxy \
             0.2.x and the wasi:cli, clocks, random, io, filesystem and sockets interfaces)",
                path.display()
            )
        })?;
    ProxyPre::new(instance_pre)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "`{}` does not export `wasi:http/incoming-handler@0.2.x`; fibhost serves \
             components of the wasi:http/proxy world",
                path.display()
            )
        })
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
