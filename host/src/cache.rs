//! The on-disk cache of compiled components (`cache-dir`).
//!
//! Compiling a large component (a Python guest is ~20 MB) takes seconds; a restart or a swap
//! back to a known version should not pay it again. Entries are keyed by the component's
//! SHA-256 and by the engine's compatibility hash (wasmtime version and settings), so an
//! incompatible entry is simply never looked up.
//!
//! Deserializing compiled code is `unsafe` in wasmtime because the bytes are trusted to be
//! what wasmtime wrote. We never trust a file blindly: each entry carries a SHA-256 of its
//! payload, checked before deserializing; an entry that fails the check or fails to
//! deserialize is deleted and rebuilt.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Marks a fibhost cache entry (and its format version).
const MAGIC: &[u8; 8] = b"FHCACHE1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A directory of compiled components.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    /// Opens (creating if needed) the cache directory for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Cache> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache-dir `{}`", dir.display()))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Cache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// Where the entry for a component with this hash lives.
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Returns the cached compilation of the component with hash `sha256`, or compiles it
    /// with `compile` and stores the result.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        source: &Path,
        compile: impl FnOnce() -> Result<Component>,
    ) -> Result<Component> {
        let entry = self.entry_path(sha256);
        match self.read(engine, &entry) {
            Ok(Some(component)) => {
                tracing::info!(component = %source.display(), entry = %entry.display(), "loaded compiled component from cache");
                return Ok(component);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(
                    entry = %entry.display(),
                    error = format!("{e:#}"),
                    "ignoring a corrupt or incompatible cache entry; recompiling"
                );
                let _ = std::fs::remove_file(&entry);
            }
        }
        let started = std::time::Instant::now();
        let component = compile()?;
        tracing::info!(
            component = %source.display(),
            compile_ms = started.elapsed().as_millis() as u64,
            "compiled component (cache miss)"
        );
        if let Err(e) = self.write(&component, &entry) {
            tracing::warn!(entry = %entry.display(), error = format!("{e:#}"), "cannot write cache entry");
        }
        Ok(component)
    }

    fn read(&self, engine: &Engine, entry: &Path) -> Result<Option<Component>> {
        let bytes = match std::fs::read(entry) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("cannot read the entry"),
        };
        anyhow::ensure!(
            bytes.len() > HEADER_LEN && bytes.starts_with(MAGIC),
            "not a fibhost cache entry"
        );
        let (header, payload) = bytes.split_at(HEADER_LEN);
        anyhow::ensure!(
            Sha256::digest(payload).as_slice() == &header[MAGIC.len()..],
            "checksum mismatch"
        );
        #[expect(
            unsafe_code,
            reason = "the payload is checked against the SHA-256 recorded when fibhost serialized it"
        )]
        // SAFETY: `payload` is byte for byte what `Component::serialize` produced for an
        // engine with the same compatibility hash (the file name carries it), as the
        // checksum above proves; wasmtime also validates the header and engine settings.
        let component = unsafe { Component::deserialize(engine, payload) };
        component
            .map(Some)
            .map_err(anyhow::Error::from)
            .context("wasmtime rejected the entry")
    }

    fn write(&self, component: &Component, entry: &Path) -> Result<()> {
        let payload = component.serialize().map_err(anyhow::Error::from)?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&Sha256::digest(&payload));
        bytes.extend_from_slice(&payload);
        // Write then rename, so a crash or a concurrent reader never sees half an entry.
        let temp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temp, &bytes)?;
        std::fs::rename(&temp, entry)?;
        Ok(())
    }
}
