//! Compiling: validating and classifying an upload by compiling it with Cranelift, then
//! caching its machine code.
//!
//! This module exists only with the `compiler` feature (on by default). A build without it
//! has no Cranelift: it serves what the artifact cache holds, and refuses the rest.

use std::sync::atomic::Ordering;

use wasmtime::Module;
use wasmtime::component::Component;

use crate::artifact::{ACCEPTED, Compiled, Pre};
use crate::{Error, Result, Runtime};

/// What the first eight bytes say the module is.
pub(crate) enum Format {
    Core,
    Component,
}

pub(crate) fn sniff(bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        return Err(Error::InvalidModule(format!(
            "the module is empty; {ACCEPTED}"
        )));
    }
    if crate::is_precompiled(bytes) {
        return Err(Error::InvalidModule(
            "this is a precompiled package (from `shoal compile`), not wasm: install it with \
             POST /v1/modules on a node started with --token, sending the token"
                .to_owned(),
        ));
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
