//! Compiling: validating and classifying an upload by compiling it with Cranelift, then
//! caching its machine code; and measuring the fuel rate, which compiles a loop.
//!
//! This module exists only with the `compiler` feature (on by default). A build without it
//! has no Cranelift: it serves what the artifact cache holds, and refuses the rest.

use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::component::Component;
use wasmtime::{Engine, Module, Store};

use crate::artifact::{ACCEPTED, Compiled, Pre};
use crate::{Error, Result, Runtime};

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
}

/// Measures how much fuel this machine burns per second of one core, by timing a loop.
pub fn calibrate_fuel_rate(engine: &Engine) -> anyhow::Result<u64> {
    // Fuel counts wasm operators, and operators differ in cost: `local.get` is free once
    // compiled, a multiply is not. This loop has the mix compiled code has (values
    // spilled to linear memory and read back, locals, arithmetic, a branch), which is
    // what rustc emits for a loop of arithmetic; a loop of register-only adds would
    // overstate the rate of real code threefold and make cpu limits lenient.
    let module = Module::new(
        engine,
        r#"(module (memory 1) (func (export "spin") (local $x i64) (local $i i64)
             (loop
               (i64.store (i32.const 8) (local.get $x))
               (local.set $x (i64.load (i32.const 8)))
               (local.set $x (i64.mul (local.get $x) (i64.const 0x9E3779B97F4A7C15)))
               (i64.store (i32.const 16) (local.get $i))
               (local.set $x (i64.xor (local.get $x) (i64.load (i32.const 16))))
               (local.set $x (i64.rotl (local.get $x) (i64.const 7)))
               (local.set $i (i64.add (local.get $i) (i64.const 1)))
               (br 0))))"#,
    )?;
    let budget: u64 = 200_000_000;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let mut store = Store::new(engine, ());
        store.set_fuel(budget)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        let spin = instance.get_typed_func::<(), ()>(&mut store, "spin")?;
        let started = Instant::now();
        let _ = spin.call(&mut store, ()); // ends with out-of-fuel, by design
        times.push(started.elapsed());
    }
    // The median, not the fastest: the fastest of a few short runs overstates what a core
    // sustains, which makes limits lenient.
    times.sort_unstable();
    Ok((budget as f64 / times[2].as_secs_f64()) as u64)
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
