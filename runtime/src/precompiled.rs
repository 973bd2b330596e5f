//! Precompiled modules: machine code compiled by a full build for another machine (`shoal
//! compile MODULE --target aarch64-unknown-linux-gnu`), installed on a node that has no
//! compiler, such as an edge board running the runtime-only build.
//!
//! A package is a short text header, the module's wasm bytes and wasmtime's artifact:
//!
//! ```text
//! shoal-precompiled 1
//! digest sha256:<hex of the wasm bytes>
//! target aarch64-unknown-linux-gnu
//! wasmtime 48.0.8
//! engine <the compiling engine's compatibility hash>
//! wasm <length of the wasm bytes>
//! artifact <sha256 of the artifact>
//!
//! <wasm bytes><artifact bytes>
//! ```
//!
//! Loading machine code is running it, so installing is for authenticated callers only (the
//! surfaces check the token), and the runtime checks what it can before it loads anything: the
//! wasm bytes match the digest the code claims to be compiled from, the artifact matches its
//! checksum, the target and wasmtime version are this node's, and then wasmtime's own check of
//! the artifact's engine section (flags, tunables, features: what the compatibility hash covers,
//! which a build without a compiler cannot compute) and the usual linking.

use sha2::{Digest as _, Sha256};

use crate::artifact::{Compiled, deserialize_component, deserialize_module};
use crate::{Error, Result, Runtime};

const MAGIC: &[u8] = b"shoal-precompiled 1\n";

/// The target triple this build runs on (`build.rs`): what a package must be compiled for.
pub const HOST_TARGET: &str = env!("SHOAL_TARGET");

/// The wasmtime version whose artifacts this build loads.
pub const WASMTIME_VERSION: &str = env!("SHOAL_WASMTIME_VERSION");

/// Whether `bytes` are a precompiled package rather than wasm.
pub fn is_precompiled(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// A parsed package: what it claims, and its two payloads.
#[derive(Debug, Clone)]
pub struct Precompiled {
    /// The digest of the wasm bytes it was compiled from, `sha256:<hex>`.
    pub digest: String,
    /// The target triple it was compiled for.
    pub target: String,
    /// The wasmtime version that compiled it.
    pub wasmtime: String,
    /// The compiling engine's compatibility hash, in hex.
    pub engine: String,
    /// The module's wasm bytes.
    pub wasm: Vec<u8>,
    artifact: Vec<u8>,
}

fn refused(reason: impl std::fmt::Display) -> Error {
    Error::Precompiled(format!("precompiled module refused: {reason}"))
}

/// `sha256:<hex>` of `bytes`, as module digests are written.
fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Precompiled {
    /// Parses a package and checks that its payloads are what the header says: the wasm bytes
    /// hash to the digest, the artifact to its checksum.
    pub fn parse(bytes: &[u8]) -> Result<Precompiled> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| refused("not a shoal precompiled package (made by `shoal compile`)"))?;
        let end = rest
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or_else(|| refused("the header does not end"))?;
        let header =
            std::str::from_utf8(&rest[..end]).map_err(|_| refused("the header is not text"))?;
        let payload = &rest[end + 2..];
        let mut fields = std::collections::HashMap::new();
        for line in header.lines() {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| refused(format!("header line {line:?} is not `key value`")))?;
            fields.insert(key, value);
        }
        let field = |key: &str| {
            fields
                .get(key)
                .map(|value| value.to_string())
                .ok_or_else(|| refused(format!("the header has no {key}")))
        };
        let wasm_len: usize = field("wasm")?
            .parse()
            .map_err(|_| refused("the header's wasm length is not a number"))?;
        if wasm_len > payload.len() {
            return Err(refused("the package is truncated"));
        }
        let (wasm, artifact) = payload.split_at(wasm_len);
        let package = Precompiled {
            digest: field("digest")?,
            target: field("target")?,
            wasmtime: field("wasmtime")?,
            engine: field("engine")?,
            wasm: wasm.to_vec(),
            artifact: artifact.to_vec(),
        };
        // It names a file in the artifact cache.
        if package.engine.is_empty()
            || package.engine.len() > 64
            || !package.engine.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(refused("the header's engine hash is not hex"));
        }
        let actual = digest_of(&package.wasm);
        if actual != package.digest {
            return Err(refused(format!(
                "its wasm bytes have digest {actual}, not {} the code says it was compiled from",
                package.digest
            )));
        }
        if hex::encode(Sha256::digest(&package.artifact)) != field("artifact")? {
            return Err(refused(
                "the machine code does not match its checksum (damaged or altered)",
            ));
        }
        Ok(package)
    }

    /// The package's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = format!(
            "digest {}\ntarget {}\nwasmtime {}\nengine {}\nwasm {}\nartifact {}\n\n",
            self.digest,
            self.target,
            self.wasmtime,
            self.engine,
            self.wasm.len(),
            hex::encode(Sha256::digest(&self.artifact)),
        );
        [MAGIC, header.as_bytes(), &self.wasm, &self.artifact].concat()
    }
}

impl Runtime {
    /// Installs a package on this node: checks it was compiled for this target and wasmtime,
    /// loads and links its machine code (wasmtime checks the engine settings), and writes it to
    /// the artifact cache, which must succeed: without a compiler it is the only copy. Blocking.
    #[tracing::instrument(name = "shoal_runtime.install", skip_all, fields(digest = %package.digest))]
    pub fn install(&self, package: &Precompiled) -> Result<Compiled> {
        if package.target != HOST_TARGET {
            return Err(refused(format!(
                "it was compiled for {}, and this node is {HOST_TARGET}: \
                 compile it with `shoal compile MODULE --target {HOST_TARGET}`",
                package.target
            )));
        }
        if package.wasmtime != WASMTIME_VERSION {
            return Err(refused(format!(
                "it was compiled by wasmtime {}, and this node runs wasmtime {WASMTIME_VERSION}: \
                 compile it with the same version of shoal",
                package.wasmtime
            )));
        }
        let incompatible = |error: anyhow::Error| {
            refused(format!(
                "its machine code does not fit this node's engine (compatibility hash {}): {error:#}",
                package.engine
            ))
        };
        let pre = match wasmtime::Engine::detect_precompiled(&package.artifact) {
            Some(wasmtime::Precompiled::Component) => {
                let component =
                    deserialize_component(&self.engine, &package.artifact).map_err(incompatible)?;
                crate::artifact::Pre::Http(self.linkers.link_component(&component)?)
            }
            Some(wasmtime::Precompiled::Module) => {
                let module =
                    deserialize_module(&self.engine, &package.artifact).map_err(incompatible)?;
                crate::artifact::Pre::Cgi(self.linkers.link_module(&module)?)
            }
            None => return Err(refused("its machine code is not a wasmtime artifact")),
        };
        let artifact_kind = pre.kind();
        let wasm_kind = match package.wasm.get(4..8) {
            Some([1, 0, 0, 0]) => Some(crate::GuestKind::Cgi),
            Some([0x0d, 0, 1, 0]) => Some(crate::GuestKind::Http),
            _ => None,
        };
        if wasm_kind != Some(artifact_kind) {
            return Err(refused(
                "its machine code is not of the kind of module its wasm bytes are",
            ));
        }
        self.cache
            .store_as(&package.digest, &package.engine, &package.artifact)
            .map_err(|error| {
                let full = error
                    .downcast_ref::<std::io::Error>()
                    .or_else(|| error.root_cause().downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull);
                if full {
                    Error::Storage(format!("{error:#}"))
                } else {
                    Error::Internal(error.context("writing the artifact cache"))
                }
            })?;
        let compiled = Compiled::new(pre, crate::Tier::Optimized, true);
        self.remember(&package.digest, &compiled);
        Ok(compiled)
    }
}

/// Compiles `bytes` for `target` (a triple; `None`: this machine) into a package, with the
/// settings of a node's engine. Blocking and CPU-heavy.
#[cfg(feature = "compiler")]
pub fn precompile(bytes: &[u8], target: Option<&str>) -> Result<Precompiled> {
    let target = target.unwrap_or(HOST_TARGET);
    let mut config = crate::engine::base_config();
    config
        .target(target)
        .map_err(|e| Error::Precompiled(format!("unknown target {target:?}: {e:#}")))?;
    let engine = wasmtime::Engine::new(&config)
        .map_err(|e| Error::Precompiled(format!("cannot compile for {target}: {e:#}")))?;
    let artifact = match crate::compile::sniff(bytes)? {
        crate::compile::Format::Core => engine.precompile_module(bytes),
        crate::compile::Format::Component => engine.precompile_component(bytes),
    }
    .map_err(|e| Error::InvalidModule(format!("cannot compile the module: {e:#}")))?;
    Ok(Precompiled {
        digest: digest_of(bytes),
        target: target.to_owned(),
        wasmtime: WASMTIME_VERSION.to_owned(),
        engine: crate::artifact::fingerprint(&engine).unwrap_or_default(),
        wasm: bytes.to_vec(),
        artifact,
    })
}
