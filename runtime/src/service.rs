//! A service: a compiled module bound to a name, an environment and limits, turning
//! requests into responses. Also the one place guest failures are classified.

use std::net::SocketAddr;

use bytes::Bytes;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::compile::{Compiled, Pre};
use crate::limits::MemoryLimiter;
use crate::pipe::CappedPipe;
use crate::{Error, Limits, ModuleKind, Result, cgi, proxy};

/// Errors inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response produced by a guest, streamed for wasi:http components.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How a service runs: its name (for logs), limits, environment and arguments.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// The service's name, used in logs and as `argv[0]`.
    pub name: String,
    /// What each request may consume.
    pub limits: Limits,
    /// Environment variables the guest sees; nothing of the host's is passed.
    pub env: Vec<(String, String)>,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
}

/// Where a request came from and how it was routed, for CGI's variables.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The path prefix the gateway consumed to pick the service (`/name`), or empty
    /// when the service was chosen by `Host`.
    pub script_name: String,
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
}

/// A runnable service. Cheap to clone; every request gets a fresh sandbox.
#[derive(Clone)]
pub struct Service {
    compiled: Compiled,
    config: std::sync::Arc<ServiceConfig>,
}

impl Service {
    /// Binds a compiled module to a configuration.
    pub fn new(compiled: Compiled, mut config: ServiceConfig) -> Service {
        config.args.insert(0, config.name.clone());
        Service {
            compiled,
            config: std::sync::Arc::new(config),
        }
    }

    /// The kind of module the service runs.
    pub fn kind(&self) -> ModuleKind {
        self.compiled.kind()
    }

    /// The service's limits.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Serves one request. Guest faults come back as errors; nothing a guest does
    /// panics the host or outlives the service's timeout.
    #[tracing::instrument(name = "shoal_runtime.handle", skip_all, fields(service = %self.config.name))]
    pub async fn handle<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
    ) -> Result<http::Response<ResponseBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match &self.compiled.pre {
            Pre::Http(pre) => proxy::handle(pre, &self.config, request).await,
            Pre::Cgi(pre) => cgi::handle(pre, &self.config, request, context).await,
        }
    }
}

/// Applies the per-request limits every store gets: memory limiter, fuel, and an
/// epoch callback that yields to the scheduler at every tick so a spinning guest
/// cannot starve its worker thread or outlive its timeout.
pub(crate) fn prepare_store<T: Send + 'static>(
    store: &mut Store<T>,
    limits: &Limits,
    limiter: impl FnMut(&mut T) -> &mut MemoryLimiter + Send + Sync + 'static,
) -> Result<()> {
    let mut limiter = limiter;
    store.limiter(move |state| limiter(state) as &mut dyn wasmtime::ResourceLimiter);
    store
        .set_fuel(limits.fuel)
        .map_err(|e| Error::Internal(e.into()))?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    Ok(())
}

/// Turns a wasmtime error from guest code into the outcome a caller sees.
pub(crate) fn guest_error(
    error: wasmtime::Error,
    limits: &Limits,
    limiter: &MemoryLimiter,
) -> Error {
    let trap = error.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return Error::OutOfFuel {
                budget: limits.fuel,
            };
        }
        Some(Trap::Interrupt) => {
            return Error::Timeout {
                limit: limits.timeout,
            };
        }
        _ => {}
    }
    if let Some(pool) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return Error::Overloaded(pool.to_string());
    }
    if let Some(requested) = limiter.refused {
        return Error::MemoryLimit {
            limit: limits.memory,
            requested,
        };
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::Exit(exit.0);
    }
    tracing::debug!(error = ?error, "guest failed");
    match trap {
        Some(trap) => Error::Trap(trap.to_string()),
        None => Error::Trap(
            format!("{error:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

/// Sends what a guest wrote to a stream to the log, a line per event, tagged with the
/// service's name.
pub(crate) fn log_output(service: &str, stream: &'static str, pipe: &CappedPipe) {
    let bytes = pipe.take();
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        tracing::info!(target: "shoal::guest", service, stream, "{line}");
    }
    if pipe.overflowed() {
        tracing::info!(target: "shoal::guest", service, stream, "(output truncated)");
    }
}

pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
