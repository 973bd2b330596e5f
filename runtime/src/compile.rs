//! Compiling: validating and classifying an upload by compiling it, in tiers (`tiers.rs`) or
//! with Cranelift straight away, then caching the optimized machine code.
//!
//! This module exists only with the `compiler` feature (on by default). A build without it
//! has no compiler: it serves what the artifact cache holds, and refuses the rest.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use wasmtime::Module;
use wasmtime::component::Component;

use crate::artifact::{ACCEPTED, Compiled, Pre, Tier};
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
    /// Validates, classifies, links and compiles `bytes` with Cranelift, and caches the machine
    /// code under `digest`: the upload waits for optimized code. Blocking and CPU-heavy: call
    /// it from a blocking thread.
    #[tracing::instrument(name = "shoal_runtime.compile", skip_all, fields(digest))]
    pub fn compile(&self, digest: &str, bytes: &[u8]) -> Result<Compiled> {
        let format = sniff(bytes)?;
        let _permit = self.compiling.acquire();
        self.compile_optimized(digest, bytes, format)
    }

    /// Compiles `bytes` with Winch, the baseline tier, returning as soon as that code is linked;
    /// [`optimize_later`](Runtime::optimize_later) then has Cranelift replace it.
    ///
    /// Without tiering ([`RuntimeConfig::tiering`](crate::RuntimeConfig::tiering) off, or no
    /// baseline compiler for this architecture), or for a module Winch cannot compile, this is
    /// [`compile`](Runtime::compile). Blocking and CPU-heavy.
    #[tracing::instrument(name = "shoal_runtime.compile_tiered", skip_all, fields(digest))]
    pub fn compile_tiered(&self, digest: &str, bytes: &[u8]) -> Result<Compiled> {
        let format = sniff(bytes)?;
        let _permit = self.compiling.acquire();
        let Some(tiers) = &self.tiers else {
            return self.compile_optimized(digest, bytes, format);
        };
        let started = Instant::now();
        let pre = match format {
            Format::Core => Module::new(&tiers.engine, bytes)
                .map(|module| tiers.linkers.link_module(&module).map(Pre::Cgi)),
            Format::Component => Component::new(&tiers.engine, bytes)
                .map(|component| tiers.linkers.link_component(&component).map(Pre::Http)),
        };
        let pre = match pre {
            // Linking is the same in both tiers: what one refuses, so does the other.
            Ok(linked) => linked?,
            Err(winch) => {
                tracing::info!(digest, error = %format!("{winch:#}"), "the baseline compiler refused the module; compiling it with Cranelift");
                return self.compile_optimized(digest, bytes, format).map_err(
                    |error| match error {
                        Error::InvalidModule(message)
                            if !message.contains(&format!("{winch:#}")) =>
                        {
                            Error::InvalidModule(format!(
                                "{message}; the baseline compiler (Winch) refused it too: {winch:#}"
                            ))
                        }
                        error => error,
                    },
                );
            }
        };
        self.times.record(Tier::Baseline, started.elapsed());
        self.n_compiled.fetch_add(1, Ordering::Relaxed);
        let compiled = Compiled::new(pre, Tier::Baseline, false);
        self.remember(digest, &compiled);
        Ok(compiled)
    }

    /// Has Cranelift compile a module running on baseline code, in the background, reading its
    /// bytes again from `source` when its turn comes (a queue of uploads does not hold them
    /// all in memory); the module switches to the optimized code when it is ready
    /// ([`Compiled::optimized`]). Nothing to do for a module on optimized code already, or one
    /// queued already.
    pub fn optimize_later(&self, digest: &str, compiled: &Compiled, source: crate::ModuleSource) {
        if let Some(tiers) = &self.tiers
            && compiled.tier() == Tier::Baseline
        {
            tiers.optimize_later(digest, compiled, source);
        }
    }

    /// Holds the background compiler after its current compile, or lets it go on: modules
    /// queued meanwhile stay on baseline code. For maintenance, and for tests that look at the
    /// baseline tier.
    pub fn pause_optimizing(&self, paused: bool) {
        if let Some(tiers) = &self.tiers {
            tiers.pause(paused);
        }
    }

    fn compile_optimized(&self, digest: &str, bytes: &[u8], format: Format) -> Result<Compiled> {
        let started = Instant::now();
        let (pre, artifact) = match format {
            Format::Core => {
                let module = Module::new(&self.engine, bytes).map_err(|e| {
                    Error::InvalidModule(format!("invalid WebAssembly module: {e:#}"))
                })?;
                let pre = self.linkers.link_module(&module)?;
                (Pre::Cgi(pre), module.serialize())
            }
            Format::Component => {
                let component = Component::new(&self.engine, bytes).map_err(|e| {
                    Error::InvalidModule(format!("invalid WebAssembly component: {e:#}"))
                })?;
                let pre = self.linkers.link_component(&component)?;
                (Pre::Http(pre), component.serialize())
            }
        };
        self.times.record(Tier::Optimized, started.elapsed());
        self.n_compiled.fetch_add(1, Ordering::Relaxed);
        let compiled = Compiled::new(pre, Tier::Optimized, false);
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

/// Bounds the compiles in the foreground (uploads, and modules loaded at start): a burst of
/// uploads compiles a few at a time, each with its bytes, rather than all at once.
pub(crate) struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

pub(crate) struct Permit<'a>(&'a Permits);

impl Permits {
    pub(crate) fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Blocks until a permit is free.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
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
