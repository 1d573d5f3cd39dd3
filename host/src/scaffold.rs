//! `fibhost new`: writes a guest project in one of the supported languages from the
//! templates compiled into the binary.

use std::path::Path;

use anyhow::{Result, bail};

/// A language fibhost has a guest template for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust, `wasip2` crate, `cargo build --target wasm32-wasip2`.
    Rust,
    /// Python, componentize-py.
    Python,
    /// JavaScript, componentize-js (StarlingMonkey).
    Js,
    /// C, wit-bindgen and clang, with the preview1 adapter.
    C,
    /// Go (wasip1 + the preview1 adapter), with the repo's `wasihttp` glue.
    Go,
    /// Zig, freestanding, with the repo's `wasi_http.zig` glue.
    Zig,
}

/// What a new project starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// The smallest guest that answers.
    Hello,
    /// A JSON API that reads bodies, parses the query, answers HEAD and JSON errors.
    JsonApi,
}

/// Writes the project for `language` and `template` into `dir`.
pub fn create(language: Language, template: Template, dir: &Path) -> Result<()> {
    bail!(
        "`fibhost new {language:?} {} --template {template:?}`: not written yet",
        dir.display()
    )
}
