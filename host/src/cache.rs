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
/// Version 2: the checksum covers the component's hash (version 1 entries are rebuilt).
const MAGIC: &[u8; 8] = b"FHCACHE2";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A directory of compiled components.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    /// Opens (creating if needed) the cache directory for `engine`.
    /// Refuses a directory that users other than its owner may write to: anyone who can write
    /// there could plant compiled code or redirect fibhost's writes with a symlink.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Cache> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create cache-dir `{}`", dir.display()))?;
        let meta = std::fs::symlink_metadata(dir)
            .with_context(|| format!("cannot read cache-dir `{}`", dir.display()))?;
        anyhow::ensure!(
            meta.is_dir(),
            "cache-dir `{}` is not a directory (a symlink is not accepted)",
            dir.display()
        );
        let mode = meta.permissions().mode();
        anyhow::ensure!(
            mode & 0o022 == 0,
            "cache-dir `{}` is writable by other users (mode {:o}): they could plant compiled \
             code; `chmod go-w` it or pick a directory only fibhost's user writes",
            dir.display(),
            mode & 0o777
        );
        // DefaultHasher's output may change between Rust releases: a toolchain upgrade then
        // names every entry anew and the cache refills (harmless; entries are never misread).
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

    /// The cached compilation of the component with hash `sha256`, if there is a sound one.
    /// A corrupt, foreign or incompatible entry is logged, deleted and reported as a miss.
    pub fn get(&self, engine: &Engine, sha256: &str, source: &Path) -> Option<Component> {
        let entry = self.entry_path(sha256);
        match self.read(engine, &entry, sha256) {
            Ok(Some(component)) => {
                tracing::info!(component = %source.display(), entry = %entry.display(), "loaded compiled component from cache");
                Some(component)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    entry = %entry.display(),
                    error = format!("{e:#}"),
                    "ignoring a corrupt or incompatible cache entry; recompiling"
                );
                let _ = std::fs::remove_file(&entry);
                None
            }
        }
    }

    /// Stores the compilation of the component with hash `sha256`; a failure only costs a
    /// recompilation next time, so it is logged, not returned.
    pub fn put(&self, component: &Component, sha256: &str) {
        let entry = self.entry_path(sha256);
        if let Err(e) = self.write(component, &entry, sha256) {
            tracing::warn!(entry = %entry.display(), error = format!("{e:#}"), "cannot write cache entry");
        }
    }

    fn read(&self, engine: &Engine, entry: &Path, sha256: &str) -> Result<Option<Component>> {
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
            checksum(sha256, payload).as_slice() == &header[MAGIC.len()..],
            "checksum mismatch (not written for this component, or damaged)"
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

    fn write(&self, component: &Component, entry: &Path, sha256: &str) -> Result<()> {
        let payload = component.serialize().map_err(anyhow::Error::from)?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&checksum(sha256, &payload));
        bytes.extend_from_slice(&payload);
        // Write a new file (never through a symlink, never over an existing file), then
        // rename: a crash or a concurrent reader never sees half an entry.
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let temp = entry.with_extension(format!(
            "tmp{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(e) = written.and_then(|()| std::fs::rename(&temp, entry)) {
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
        Ok(())
    }
}

/// The entry's checksum covers the component's own hash as well as the payload, so a sound
/// entry of another component copied under this component's name is refused.
fn checksum(component_sha256: &str, payload: &[u8]) -> sha2::digest::Output<Sha256> {
    let mut hasher = Sha256::new();
    hasher.update(component_sha256.as_bytes());
    hasher.update(payload);
    hasher.finalize()
}
