//! Compiled modules: what kind each is ([`GuestKind`]), linking them, and the on-disk cache
//! of their machine code.
//!
//! Linking happens here, for a module just compiled (`compile.rs`) or one read back from the
//! cache, so a module importing something shoal does not provide is refused at upload rather
//! than on its first request, and a component that does not export
//! `wasi:http/incoming-handler` (or a core module without `_start`) is refused with a message
//! that says what was found.
//!
//! Machine code is cached on disk, keyed by the module's digest and the engine's
//! fingerprint, so a restart serves every service without recompiling, and a build without
//! the compiler serves what a full build compiled. Deserializing machine code is trusting it,
//! so a cached artifact carries a SHA-256 of its own bytes, is checked for the expected kind
//! and engine compatibility, and anything that fails a check is passed over, never loaded
//! (and recompiled and replaced, where there is a compiler). The cache is written by this
//! node's compiler, and by [`Runtime::install`](crate::Runtime::install) of a precompiled
//! package an authenticated caller sent (`precompiled.rs`); never from anyone else.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::exec::{cgi, http};
use crate::{Error, Result, Runtime};

/// What kind of program a module is, which decides how it is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A component exporting `wasi:http/incoming-handler` (the `wasi:http/proxy` world).
    Http,
    /// A WASI preview1 command (a core module exporting `_start`), run as CGI.
    Cgi,
}

impl GuestKind {
    /// A stable name for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Http => "http",
            GuestKind::Cgi => "cgi",
        }
    }
}

/// Which compiler made the machine code a module runs: shoal compiles in tiers, the way
/// browsers and JVMs do, so that a fresh upload answers at once and runs fast later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Winch, a single-pass compiler: about five times quicker to compile than Cranelift,
    /// slower code. What a new module serves with while Cranelift works in the background.
    Baseline,
    /// Cranelift, an optimizing compiler: what the artifact cache keeps and restarts load.
    Optimized,
}

impl Tier {
    /// A stable name for the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }

    /// The compiler behind the tier.
    pub fn compiler(self) -> &'static str {
        match self {
            Tier::Baseline => "winch",
            Tier::Optimized => "cranelift",
        }
    }
}

/// A compiled, linked module, ready to instantiate. Cheap to clone: clones share the machine
/// code in force, so when the optimized tier replaces the baseline one every service running
/// the module starts its next instances on it, and instances already running keep theirs.
#[derive(Clone)]
pub struct Compiled {
    pub(crate) kind: GuestKind,
    code: Arc<Code>,
}

/// The machine code in force for a module, swapped once, from baseline to optimized.
struct Code {
    current: ArcSwap<TieredPre>,
    /// The tier in force, for whoever waits for the switch.
    tier: watch::Sender<Tier>,
    from_cache: bool,
}

/// Linked machine code of one tier.
pub(crate) struct TieredPre {
    pub(crate) pre: Pre,
    pub(crate) tier: Tier,
}

#[derive(Clone)]
pub(crate) enum Pre {
    Http(ProxyPre<http::HttpState>),
    Cgi(wasmtime::InstancePre<cgi::CgiState>),
}

impl Compiled {
    pub(crate) fn new(pre: Pre, tier: Tier, from_cache: bool) -> Compiled {
        Compiled {
            kind: pre.kind(),
            code: Arc::new(Code {
                current: ArcSwap::from_pointee(TieredPre { pre, tier }),
                tier: watch::Sender::new(tier),
                from_cache,
            }),
        }
    }

    /// The module's kind.
    pub fn kind(&self) -> GuestKind {
        self.kind
    }

    /// Whether the machine code came from the on-disk cache rather than a compile.
    pub fn from_cache(&self) -> bool {
        self.code.from_cache
    }

    /// The tier of the machine code new instances start on.
    pub fn tier(&self) -> Tier {
        self.code.current.load().tier
    }

    /// Returns once the module runs on optimized code (at once if it does).
    pub async fn optimized(&self) {
        let mut tier = self.code.tier.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = tier.wait_for(|tier| *tier == Tier::Optimized).await;
    }

    /// The machine code a new instance starts on.
    pub(crate) fn current(&self) -> Arc<TieredPre> {
        self.code.current.load_full()
    }

    /// Puts optimized code in force: new instances start on it, running ones keep theirs.
    #[cfg(feature = "compiler")]
    pub(crate) fn optimize(&self, pre: Pre) {
        self.code.current.store(Arc::new(TieredPre {
            pre,
            tier: Tier::Optimized,
        }));
        self.code.tier.send_replace(Tier::Optimized);
    }

    /// Whether two handles share their machine code (clones of one compile).
    #[cfg(feature = "compiler")]
    pub(crate) fn same(&self, other: &Compiled) -> bool {
        Arc::ptr_eq(&self.code, &other.code)
    }
}

pub(crate) const ACCEPTED: &str = "shoal accepts a wasi:http component (exporting wasi:http/incoming-handler, \
     as `wasmtime serve` and Spin run) or a WASI preview1 command (a core module exporting `_start`)";

impl Runtime {
    /// Returns the compiled module for `digest`: from memory, else from the on-disk
    /// cache, else by compiling the bytes `load_bytes` fetches. Blocking.
    pub fn load(
        &self,
        digest: &str,
        load_bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> Result<Compiled> {
        if let Some(compiled) = self.cached(digest) {
            return Ok(compiled);
        }
        let bytes = load_bytes().map_err(Error::Internal)?;
        self.compile(digest, &bytes)
    }

    /// The compiled module for `digest` if it is in memory or in the on-disk cache; an
    /// artifact that fails verification is counted, logged and passed over. Blocking.
    #[tracing::instrument(name = "shoal_runtime.cached", skip_all, fields(digest))]
    pub fn cached(&self, digest: &str) -> Option<Compiled> {
        if let Some(compiled) = self.loaded_lock().get(digest) {
            return Some(compiled.clone());
        }
        match self.load_cached(digest) {
            Ok(Some(compiled)) => {
                self.n_cache_hits.fetch_add(1, Ordering::Relaxed);
                self.remember(digest, &compiled);
                Some(compiled)
            }
            Ok(None) => None,
            Err(error) => {
                self.n_cache_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(digest, error = %format!("{error:#}"), "cached artifact rejected");
                None
            }
        }
    }

    /// Without the compiler, only what the cache holds can be loaded.
    #[cfg(not(feature = "compiler"))]
    pub fn compile(&self, digest: &str, _bytes: &[u8]) -> Result<Compiled> {
        Err(Error::NoCompiler(format!(
            "module {digest} is not in this node's artifact cache, and this build of shoal has \
             no compiler: compile it elsewhere with `shoal compile MODULE --target {}` and \
             upload the package with the node's token, or compile it once with a full build of \
             shoal on the same data directory",
            crate::HOST_TARGET
        )))
    }

    /// Without the compiler, there are no tiers: see [`compile`](Runtime::compile).
    #[cfg(not(feature = "compiler"))]
    pub fn compile_tiered(&self, digest: &str, bytes: &[u8]) -> Result<Compiled> {
        self.compile(digest, bytes)
    }

    /// Without the compiler, every module runs on the optimized code it was given.
    #[cfg(not(feature = "compiler"))]
    pub fn optimize_later(
        &self,
        _digest: &str,
        _compiled: &Compiled,
        _source: crate::ModuleSource,
    ) {
    }

    /// Drops the in-memory copy of a module (its cached artifact stays on disk).
    pub fn forget(&self, digest: &str) {
        self.loaded_lock().remove(digest);
    }

    pub(crate) fn remember(&self, digest: &str, compiled: &Compiled) {
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
        let pre = self.linkers.link_artifact(&self.engine, &artifact)?;
        Ok(Some(Compiled::new(pre, Tier::Optimized, true)))
    }
}

/// An engine's linkers: what shoal provides to guests, one linker per kind of module. Each
/// tier's engine has its own.
#[derive(Clone)]
pub(crate) struct Linkers {
    http: wasmtime::component::Linker<http::HttpState>,
    cgi: wasmtime::Linker<cgi::CgiState>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> anyhow::Result<Linkers> {
        Ok(Linkers {
            http: http::linker(engine)?,
            cgi: cgi::linker(engine)?,
        })
    }

    /// Deserializes machine code wasmtime wrote (verified by the caller) into `engine`, and
    /// links it.
    pub(crate) fn link_artifact(&self, engine: &Engine, artifact: &[u8]) -> anyhow::Result<Pre> {
        Ok(match Engine::detect_precompiled(artifact) {
            Some(Precompiled::Module) => {
                Pre::Cgi(self.link_module(&deserialize_module(engine, artifact)?)?)
            }
            Some(Precompiled::Component) => {
                Pre::Http(self.link_component(&deserialize_component(engine, artifact)?)?)
            }
            None => anyhow::bail!("not a wasmtime artifact"),
        })
    }

    pub(crate) fn link_module(
        &self,
        module: &Module,
    ) -> Result<wasmtime::InstancePre<cgi::CgiState>> {
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
        self.cgi.instantiate_pre(module).map_err(|e| {
            Error::InvalidModule(format!(
                "module cannot be linked: {e:#}; shoal provides WASI preview1 (wasi_snapshot_preview1) only"
            ))
        })
    }

    pub(crate) fn link_component(
        &self,
        component: &Component,
    ) -> Result<ProxyPre<http::HttpState>> {
        let exports: Vec<String> = component
            .component_type()
            .exports(component.engine())
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
        let instance_pre = self.http.instantiate_pre(component).map_err(|e| {
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
    pub(crate) fn kind(&self) -> GuestKind {
        match self {
            Pre::Http(_) => GuestKind::Http,
            Pre::Cgi(_) => GuestKind::Cgi,
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
pub(crate) fn deserialize_module(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Module> {
    // SAFETY: the artifact was written by wasmtime's own serializer: by this node's compiler
    // into the cache (`ArtifactCache::read` verified its SHA-256 before returning it), or by
    // another node's, in a package an authenticated caller installed (`Precompiled::parse`
    // verified its SHA-256); wasmtime itself then checks the engine compatibility recorded in
    // the artifact's header.
    Ok(unsafe { Module::deserialize(engine, artifact) }?)
}

#[allow(unsafe_code)]
pub(crate) fn deserialize_component(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: as for `deserialize_module`.
    Ok(unsafe { Component::deserialize(engine, artifact) }?)
}

/// Compiled artifacts on disk: `{dir}/{digest}.optimized.{engine fingerprint}.cwasm`, each file
/// a SHA-256 of the artifact followed by the artifact, written atomically.
///
/// The fingerprint is wasmtime's compatibility hash of the engine that compiled it, which
/// only a build with a compiler can compute. A build without one reads the newest artifact
/// of the digest whatever its fingerprint, and leaves the compatibility check to wasmtime,
/// which refuses at load an artifact compiled for another engine or CPU.
pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    /// `None` without the compiler: nothing is written then.
    fingerprint: Option<String>,
}

const CHECKSUM_LEN: usize = 32;

impl ArtifactCache {
    pub(crate) fn new(dir: Option<PathBuf>, engine: &Engine) -> anyhow::Result<ArtifactCache> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the artifact cache {}", dir.display()))?;
        }
        Ok(ArtifactCache {
            dir,
            fingerprint: fingerprint(engine),
        })
    }

    /// The file to read an artifact of `digest` from: this engine's if there is one, else the
    /// newest one of any engine (installed precompiled, or cached by a build whose fingerprint
    /// this one cannot compute); wasmtime checks that it fits.
    fn find(&self, digest: &str) -> anyhow::Result<Option<PathBuf>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        if let Some(fingerprint) = &self.fingerprint {
            let own = dir.join(file_name(digest, fingerprint));
            if own.exists() {
                return Ok(Some(own));
            }
        }
        let prefix = format!("{}.", digest.replace(':', "-"));
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with(&prefix) && name.ends_with(".cwasm")) {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
                newest = Some((modified, entry.path()));
            }
        }
        Ok(newest.map(|(_, path)| path))
    }

    /// The verified artifact for `digest`, `None` if there is none, an error if there is
    /// one that fails verification.
    pub(crate) fn read(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = self.find(digest)? else {
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

    /// Stores an artifact this engine compiled.
    #[cfg(feature = "compiler")]
    pub(crate) fn store(&self, digest: &str, artifact: &[u8]) -> anyhow::Result<()> {
        match &self.fingerprint {
            Some(fingerprint) => self.store_as(digest, fingerprint, artifact),
            None => Ok(()),
        }
    }

    /// Stores an artifact compiled elsewhere by an engine of this `fingerprint` (hex).
    pub(crate) fn store_as(
        &self,
        digest: &str,
        fingerprint: &str,
        artifact: &[u8],
    ) -> anyhow::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join(file_name(digest, fingerprint));
        let checksum = Sha256::digest(artifact);
        write_atomically(dir, &path, &[checksum.as_slice(), artifact])
    }
}

/// The file of a digest's optimized code compiled by an engine of `fingerprint`: the key holds
/// the tier (only optimized code is cached: Winch's is quicker to compile again than to keep)
/// and the engine's compatibility hash.
fn file_name(digest: &str, fingerprint: &str) -> String {
    format!(
        "{}.{}.{fingerprint}.cwasm",
        digest.replace(':', "-"),
        Tier::Optimized.as_str()
    )
}

/// wasmtime's compatibility hash of the engine, in hex: artifacts with the same fingerprint
/// deserialize in this engine.
#[cfg(feature = "compiler")]
pub(crate) fn fingerprint(engine: &Engine) -> Option<String> {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    Some(format!("{:016x}", hasher.finish()))
}

/// Without a compiler wasmtime cannot say: see [`ArtifactCache`].
#[cfg(not(feature = "compiler"))]
fn fingerprint(_engine: &Engine) -> Option<String> {
    None
}

/// Writes `parts` to a temporary file in `dir`, syncs it, renames it over `path` and
/// syncs the directory, so readers see either the old file or the whole new one.
fn write_atomically(
    dir: &std::path::Path,
    path: &std::path::Path,
    parts: &[&[u8]],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    // Unique per write: two writes of the same artifact at once each rename their own.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
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
