//! The data of a guest's [`Store`](wasmtime::Store): WASI and HTTP contexts, the memory
//! limiter, where the guest's output goes and what it may send out. Nothing here knows about
//! pools or requests; [`crate::guest`] builds it, [`crate::engine`] links against it.

use std::any::Any;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{FieldMap, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

use crate::lock;
use crate::outbound::{Outbound, Sent};
use crate::request_id::RequestId;

/// Most table elements a guest may grow a table to (function references, not memory).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// The most host memory one host-side resource may hold for a guest: a `fields` (its headers'
/// total size) or one write to a body stream.
pub const HOST_BUFFER_BYTES: usize = 64 * 1024;

/// Fewest resources (fields, bodies, streams, pollables…) a guest may hold at once, whatever its
/// memory limit: a guest serving one request uses a dozen or so.
const MIN_RESOURCES: usize = 256;

/// How many resources a guest with `memory_limit_bytes` may hold at once: with each holding at
/// most [`HOST_BUFFER_BYTES`], what a guest makes fibhost hold stays within its own limit
/// (a 64 MiB guest once made fibhost hold 360 MB of fields).
pub fn max_resources(memory_limit_bytes: u64) -> usize {
    let by_memory =
        usize::try_from(memory_limit_bytes / HOST_BUFFER_BYTES as u64).unwrap_or(usize::MAX);
    by_memory.max(MIN_RESOURCES)
}

/// A guest writing one endless line must not grow the buffer without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// The data of a guest's store.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutgoingPolicy,
    memory: MemoryLimiter,
}

impl GuestState {
    /// A store's data for a guest that sees `env`, writes its output tagged by `tag`, may
    /// grow its memories to `memory_limit_bytes` in all (tracked in `memory_bytes`), and sends
    /// HTTP requests through `outbound`.
    pub fn new(
        env: &[(String, String)],
        tag: &Arc<OutputTag>,
        memory_limit_bytes: u64,
        memory_bytes: Arc<AtomicUsize>,
        outbound: Arc<Outbound>,
    ) -> GuestState {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(env)
            .stdout(GuestOutput::new("stdout", tag))
            .stderr(GuestOutput::new("stderr", tag));
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(HOST_BUFFER_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(max_resources(memory_limit_bytes));
        GuestState {
            wasi: wasi.build(),
            http,
            table,
            hooks: OutgoingPolicy(outbound),
            memory: MemoryLimiter {
                limit_bytes: usize::try_from(memory_limit_bytes).unwrap_or(usize::MAX),
                bytes: memory_bytes,
            },
        }
    }

    /// The limiter the store must be given (`store.limiter(|s| s.limiter())`).
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.memory
    }

    /// Host memory the guest holds through the resources it has not dropped: each entry's own
    /// size, plus the names and values of its `fields`. A guest that keeps fields alive across
    /// requests grows this, not its linear memory; [`crate::guest::Instance::memory_bytes`]
    /// adds it so that the memory metric and `reload-on-memory` see it. Bytes in flight inside
    /// a body stream are not visible here; each write holds at most [`HOST_BUFFER_BYTES`].
    pub fn host_bytes(&mut self) -> usize {
        self.table.iter_mut().map(held_bytes).sum()
    }
}

/// What one resource-table entry holds on the host (see [`GuestState::host_bytes`]).
fn held_bytes(entry: &mut (dyn Any + Send)) -> usize {
    if let Some(fields) = entry.downcast_ref::<FieldMap>() {
        let contents: usize = fields
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        size_of::<FieldMap>() + contents
    } else if let Some(stream) = entry.downcast_ref::<DynOutputStream>() {
        size_of_val(&**stream)
    } else if let Some(stream) = entry.downcast_ref::<DynInputStream>() {
        size_of_val(&**stream)
    } else {
        size_of_val(entry)
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP (`wasi:http/outgoing-handler`): through the route's client, which refuses
/// every destination not granted by `allow-outbound` (by default, all of them).
struct OutgoingPolicy(Arc<Outbound>);

type SendFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for OutgoingPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: SendFuture,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        Box::new(self.0.clone().send(request, options))
    }

    /// One write to a body stream buffers at most this much on the host.
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        HOST_BUFFER_BYTES
    }
}

/// Caps an instance's linear memory and tracks its size (for `reload-on-memory` and the
/// metrics), summed over all of the instance's memories.
struct MemoryLimiter {
    limit_bytes: usize,
    bytes: Arc<AtomicUsize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, wasmtime::Error> {
        let total = self.bytes.load(Ordering::Relaxed) - current + desired;
        if total > self.limit_bytes {
            // Refusing makes `memory.grow` return -1 inside the guest, as on a real
            // out-of-memory; what the guest does next (usually abort) is its own choice.
            return Ok(false);
        }
        self.bytes.store(total, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, wasmtime::Error> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// What a guest's output lines are tagged with: its route, the worker it serves for and the
/// request it is serving. Shared by the instance (which updates it) and its output streams.
pub struct OutputTag {
    route: Arc<str>,
    worker: AtomicUsize,
    request: Mutex<Option<RequestId>>,
    /// Partial lines (no newline yet) per stream: stdout, stderr.
    pending: Mutex<[Vec<u8>; 2]>,
}

impl OutputTag {
    /// The tag of an instance of `route`'s component, not yet serving any worker.
    pub fn new(route: Arc<str>) -> Arc<OutputTag> {
        Arc::new(OutputTag {
            route,
            worker: AtomicUsize::new(0),
            request: Mutex::new(None),
            pending: Mutex::new([Vec::new(), Vec::new()]),
        })
    }

    /// Records which worker the instance now serves for.
    pub fn set_worker(&self, worker: usize) {
        self.worker.store(worker, Ordering::Relaxed);
    }

    /// Records the request the instance is serving (`None` between requests).
    pub fn set_request(&self, request: Option<RequestId>) {
        *lock(&self.request) = request;
    }

    /// Logs what the guest wrote without a final newline: its last line must not be lost when
    /// a request or the instance ends.
    pub fn flush(&self) {
        let mut pending = lock(&self.pending);
        for (index, buffer) in pending.iter_mut().enumerate() {
            if !buffer.is_empty() {
                let line = std::mem::take(buffer);
                self.emit(STREAMS[index], &line);
            }
        }
    }

    fn emit(&self, stream: &'static str, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let request = lock(&self.request)
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::info!(
            target: OUTPUT_TARGET,
            route = &*self.route,
            worker = self.worker.load(Ordering::Relaxed),
            request_id = request,
            stream,
            "{}",
            text.trim_end_matches('\r')
        );
    }

    fn write(&self, stream: usize, bytes: &[u8]) {
        let mut pending = lock(&self.pending);
        let buffer = &mut pending[stream];
        buffer.extend_from_slice(bytes);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            self.emit(STREAMS[stream], &buffer[..end]);
            buffer.drain(..=end);
        }
        if buffer.len() > MAX_LINE_BYTES {
            let line = std::mem::take(buffer);
            self.emit(STREAMS[stream], &line);
        }
    }
}

const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// The tracing target of a guest's output lines (what `RUST_LOG=fibhost::guest=off` hides, and
/// what `fibhost check` collects).
pub const OUTPUT_TARGET: &str = "fibhost::guest";

/// Guest stdout or stderr: each line goes to fibhost's log, tagged by [`OutputTag`].
struct GuestOutput {
    stream: usize,
    tag: Arc<OutputTag>,
}

impl GuestOutput {
    fn new(name: &'static str, tag: &Arc<OutputTag>) -> GuestOutput {
        GuestOutput {
            stream: usize::from(name == "stderr"),
            tag: tag.clone(),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestOutput {
            stream: self.stream,
            tag: self.tag.clone(),
        })
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.tag.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tag.flush();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_scale_with_the_memory_limit() {
        assert_eq!(max_resources(256 << 20), 4096);
        assert_eq!(max_resources(1 << 20), MIN_RESOURCES);
        // Whatever the guest holds on the host stays within its own memory limit.
        assert!(max_resources(64 << 20) * HOST_BUFFER_BYTES <= 64 << 20);
    }
}
