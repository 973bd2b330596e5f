//! Compiling, classifying and caching modules.
//!
//! Uploads are validated and classified once, by compiling them: a component that
//! exports `wasi:http/incoming-handler` is an HTTP handler, a core module that exports
//! `_start` is a CGI command, anything else is refused with a message that says what
//! was found. Linking happens here too, so a module importing something shoal does
//! not provide is refused at upload rather than on its first request.
//!
//! Machine code is cached on disk, keyed by the module's digest and the engine's
//! fingerprint, so a restart serves every service without recompiling. Deserializing
//! machine code is trusting it, so a cached artifact carries a SHA-256 of its own
//! bytes, is checked for the expected kind and engine compatibility, and anything
//! that fails a check is recompiled and replaced, never loaded.

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::{Error, Result, Runtime, cgi, proxy};

/// What kind of program a module is, which decides how it is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A component exporting `wasi:http/incoming-handler` (the `wasi:http/proxy` world).
    Http,
    /// A WASI preview1 command (a core module exporting `_start`), run as CGI.
    Cgi,
}

impl ModuleKind {
    /// A stable name for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Http => "http",
            ModuleKind::Cgi => "cgi",
        }
    }
}

/// A compiled, linked module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Compiled {
    pub(crate) kind: ModuleKind,
    pub(crate) pre: Pre,
    from_cache: bool,
}

#[derive(Clone)]
pub(crate) enum Pre {
    Http(ProxyPre<proxy::HttpState>),
    Cgi(wasmtime::InstancePre<cgi::CgiState>),
}

impl Compiled {
    /// The module's kind.
    pub fn kind(&self) -> ModuleKind {
        self.kind
    }

    /// Whether the machine code came from the on-disk cache rather than a compile.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

const ACCEPTED: &str = "shoal accepts a wasi:http component (exporting wasi:http/incoming-handler, \
     as `wasmtime serve` and Spin run) or a WASI preview1 command (a core module exporting `_start`)";

/// What the first eight bytes say the module is.
enum Format {
    Core,
    Component,
}

fn sniff(bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        return Err(Error::InvalidModule(format!(
            "the module is empty; {ACCEPTED}"
        )));
    }
    if !bytes.starts_with(b"\0asm") {
        let head = &bytes[..bytes.len().min(4)];
        return Err(Error::InvalidModule(format!(
            "not a WebAssembly binary: it starts with {head:02x?}, not the magic bytes \\0asm; {ACCEPTED}"
        )));
    }
    match bytes.get(4..8) {
        Some([1, 0, 0, 0]) => Ok(Format::Core),
        Some([0x0d, 0, 1, 0]) => Ok(Format::Component),
        Some(version) => Err(Error::InvalidModule(format!(
            "unsupported WebAssembly version and layer {version:02x?}; {ACCEPTED}"
        ))),
        None => Err(Error::InvalidModule(format!(
            "truncated WebAssembly binary: {} bytes is shorter than the 8-byte header",
            bytes.len()
        ))),
    }
}

impl Runtime {
    /// Validates, classifies, links and compiles `bytes`, and caches the machine code
    /// under `digest`. Blocking and CPU-heavy: call it from a blocking thread.
    #[tracing::instrument(name = "shoal_runtime.compile", skip_all, fields(digest))]
    pub fn compile(&self, digest: &str, bytes: &[u8]) -> Result<Compiled> {
        let format = sniff(bytes)?;
        let (pre, artifact) = match format {
            Format::Core => {
                let module = Module::new(&self.engine, bytes).map_err(|e| {
                    Error::InvalidModule(format!("invalid WebAssembly module: {e:#}"))
                })?;
                let pre = self.link_module(&module)?;
                (Pre::Cgi(pre), module.serialize())
            }
            Format::Component => {
                let component = Component::new(&self.engine, bytes).map_err(|e| {
                    Error::InvalidModule(format!("invalid WebAssembly component: {e:#}"))
                })?;
                let pre = self.link_component(&component)?;
                (Pre::Http(pre), component.serialize())
            }
        };
        self.n_compiled.fetch_add(1, Ordering::Relaxed);
        let compiled = Compiled {
            kind: pre.kind(),
            pre,
            from_cache: false,
        };
        match artifact {
            Ok(artifact) => {
                if let Err(error) = self.cache.store(digest, &artifact) {
                    tracing::warn!(digest, error = %format!("{error:#}"), "cannot cache compiled artifact");
                }
            }
            Err(error) => tracing::warn!(digest, %error, "cannot serialize compiled artifact"),
        }
        self.remember(digest, &compiled);
        Ok(compiled)
    }

    /// Returns the compiled module for `digest`: from memory, else from the on-disk
    /// cache, else by compiling the bytes `load_bytes` fetches. Blocking.
    #[tracing::instrument(name = "shoal_runtime.load", skip_all, fields(digest))]
    pub fn load(
        &self,
        digest: &str,
        load_bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> Result<Compiled> {
        if let Some(compiled) = self.loaded_lock().get(digest) {
            return Ok(compiled.clone());
        }
        match self.load_cached(digest) {
            Ok(Some(compiled)) => {
                self.n_cache_hits.fetch_add(1, Ordering::Relaxed);
                self.remember(digest, &compiled);
                return Ok(compiled);
            }
            Ok(None) => {}
            Err(error) => {
                self.n_cache_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(digest, error = %format!("{error:#}"), "cached artifact rejected; recompiling");
            }
        }
        let bytes = load_bytes().map_err(Error::Internal)?;
        self.compile(digest, &bytes)
    }

    /// Drops the in-memory copy of a module (its cached artifact stays on disk).
    pub fn forget(&self, digest: &str) {
        self.loaded_lock().remove(digest);
    }

    fn remember(&self, digest: &str, compiled: &Compiled) {
        self.loaded_lock()
            .insert(digest.to_owned(), compiled.clone());
    }

    fn loaded_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Compiled>> {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn load_cached(&self, digest: &str) -> anyhow::Result<Option<Compiled>> {
        let Some(artifact) = self.cache.read(digest)? else {
            return Ok(None);
        };
        let pre = match Engine::detect_precompiled(&artifact) {
            Some(Precompiled::Module) => {
                let module = deserialize_module(&self.engine, &artifact)?;
                Pre::Cgi(self.link_module(&module)?)
            }
            Some(Precompiled::Component) => {
                let component = deserialize_component(&self.engine, &artifact)?;
                Pre::Http(self.link_component(&component)?)
            }
            None => anyhow::bail!("not a wasmtime artifact"),
        };
        Ok(Some(Compiled {
            kind: pre.kind(),
            pre,
            from_cache: true,
        }))
    }

    fn link_module(&self, module: &Module) -> Result<wasmtime::InstancePre<cgi::CgiState>> {
        let start = module.get_export("_start");
        if !matches!(start, Some(wasmtime::ExternType::Func(ref ty)) if ty.params().len() == 0 && ty.results().len() == 0)
        {
            let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
            return Err(Error::InvalidModule(format!(
                "core module does not export a `_start` function (exports: {}); \
                 shoal runs core modules as WASI preview1 commands (CGI), which need `_start`; {ACCEPTED}",
                list(&exports)
            )));
        }
        self.cgi_linker.instantiate_pre(module).map_err(|e| {
            Error::InvalidModule(format!(
                "module cannot be linked: {e:#}; shoal provides WASI preview1 (wasi_snapshot_preview1) only"
            ))
        })
    }

    fn link_component(&self, component: &Component) -> Result<ProxyPre<proxy::HttpState>> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if !exports
            .iter()
            .any(|name| name.starts_with("wasi:http/incoming-handler@0.2"))
        {
            let names: Vec<&str> = exports.iter().map(String::as_str).collect();
            return Err(Error::InvalidModule(format!(
                "component does not export wasi:http/incoming-handler@0.2.x (exports: {}); {ACCEPTED}",
                list(&names)
            )));
        }
        let instance_pre = self.http_linker.instantiate_pre(component).map_err(|e| {
            Error::InvalidModule(format!(
                "component cannot be linked: {e:#}; shoal provides the wasi:http/proxy world and WASI 0.2"
            ))
        })?;
        ProxyPre::new(instance_pre).map_err(|e| {
            Error::InvalidModule(format!(
                "component is not a wasi:http/proxy handler: {e:#}; {ACCEPTED}"
            ))
        })
    }
}

impl Pre {
    fn kind(&self) -> ModuleKind {
        match self {
            Pre::Http(_) => ModuleKind::Http,
            Pre::Cgi(_) => ModuleKind::Cgi,
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[allow(unsafe_code)]
fn deserialize_module(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Module> {
    // SAFETY: the artifact was written by `ArtifactCache::store` from wasmtime's own
    // serializer, and `ArtifactCache::read` verified its SHA-256 before returning it,
    // so these are the bytes wasmtime produced; wasmtime itself then checks the
    // engine compatibility recorded in the artifact's header.
    Ok(unsafe { Module::deserialize(engine, artifact) }?)
}

#[allow(unsafe_code)]
fn deserialize_component(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: as for `deserialize_module`.
    Ok(unsafe { Component::deserialize(engine, artifact) }?)
}

/// Compiled artifacts on disk: `{dir}/{digest}.{engine fingerprint}.cwasm`, each file
/// a SHA-256 of the artifact followed by the artifact, written atomically.
pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    fingerprint: String,
}

const CHECKSUM_LEN: usize = 32;

impl ArtifactCache {
    pub(crate) fn new(dir: Option<PathBuf>, engine: &Engine) -> anyhow::Result<ArtifactCache> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the artifact cache {}", dir.display()))?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactCache {
            dir,
            fingerprint: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let name = digest.replace(':', "-");
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{name}.{}.cwasm", self.fingerprint)))
    }

    /// The verified artifact for `digest`, `None` if there is none, an error if there is
    /// one that fails verification.
    fn read(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = self.path(digest) else {
            return Ok(None);
        };
        let mut file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        anyhow::ensure!(file.len() > CHECKSUM_LEN, "{} is truncated", path.display());
        let artifact = file.split_off(CHECKSUM_LEN);
        anyhow::ensure!(
            Sha256::digest(&artifact).as_slice() == file.as_slice(),
            "{} does not match its checksum",
            path.display()
        );
        Ok(Some(artifact))
    }

    fn store(&self, digest: &str, artifact: &[u8]) -> anyhow::Result<()> {
        let Some(path) = self.path(digest) else {
            return Ok(());
        };
        let dir = path
            .parent()
            .expect("cache paths are always inside the cache dir");
        let checksum = Sha256::digest(artifact);
        write_atomically(dir, &path, &[checksum.as_slice(), artifact])
    }
}

/// Writes `parts` to a temporary file in `dir`, syncs it, renames it over `path` and
/// syncs the directory, so readers see either the old file or the whole new one.
fn write_atomically(dir: &Path, path: &Path, parts: &[&[u8]]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_names_what_it_found() {
        let err = |bytes: &[u8]| match sniff(bytes) {
            Err(Error::InvalidModule(message)) => message,
            _ => panic!("expected an error for {bytes:?}"),
        };
        assert!(err(b"").starts_with("the module is empty"));
        assert!(err(b"hello world").contains("not a WebAssembly binary"));
        assert!(err(b"\0asm\x01").contains("truncated"));
        assert!(err(b"\0asm\x02\0\0\0").contains("unsupported WebAssembly version"));
        assert!(matches!(sniff(b"\0asm\x01\0\0\0"), Ok(Format::Core)));
        assert!(matches!(sniff(b"\0asm\x0d\0\x01\0"), Ok(Format::Component)));
    }
}
