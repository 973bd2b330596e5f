//! A service: a compiled module bound to a name, an environment and limits, turning requests
//! into responses through the executor its kind needs.

use std::sync::Arc;

use bytes::Bytes;

use crate::artifact::{Compiled, Pre};
use crate::exec::{self, Checkout, RequestContext, ServiceConfig, Unpooled};
use crate::sandbox::{BoxError, ResponseBody};
use crate::{GuestKind, Result};

/// A runnable service. Cheap to clone; requests run in sandboxes of their own.
#[derive(Clone)]
pub struct Service {
    compiled: Compiled,
    config: Arc<ServiceConfig>,
}

impl Service {
    /// Binds a compiled module to a configuration.
    pub fn new(compiled: Compiled, mut config: ServiceConfig) -> Service {
        config.args.insert(0, config.name.clone());
        Service {
            compiled,
            config: Arc::new(config),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The kind of module the service runs.
    pub fn kind(&self) -> GuestKind {
        self.compiled.kind()
    }

    /// Whether the machine code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.compiled.from_cache()
    }

    /// The tier of the machine code its new instances start on.
    pub fn tier(&self) -> crate::Tier {
        self.compiled.tier()
    }

    /// Serves one request in a fresh instance, outside any replica pool. Guest faults
    /// come back as errors; nothing a guest does panics the host or outlives the
    /// service's timeout.
    pub async fn handle<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
    ) -> Result<http::Response<ResponseBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.handle_checked_out(request, context, Unpooled).await
    }

    /// Serves one request with what a replica lent it: its kept instance and its cpu throttle.
    // Debug level: at the default (info) filter the span is disabled, and costs nothing; an
    // enabled span formats its fields for every request.
    #[tracing::instrument(
        name = "shoal_runtime.handle",
        level = "debug",
        skip_all,
        fields(service = %self.config.name)
    )]
    pub(crate) async fn handle_checked_out<B, C>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
        checkout: C,
    ) -> Result<http::Response<ResponseBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        C: Checkout,
    {
        // The code in force when the request starts: a switch of tier mid-request changes
        // nothing for it.
        let code = self.compiled.current();
        match &code.pre {
            Pre::Http(pre) => exec::http::handle(pre, &self.config, request, checkout).await,
            Pre::Cgi(pre) => exec::cgi::handle(pre, &self.config, request, context, checkout).await,
        }
    }
}
