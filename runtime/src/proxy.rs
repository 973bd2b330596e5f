//! The executor for `wasi:http` components: a fresh instance per request, served the
//! way `wasmtime serve` does it.
//!
//! The guest runs in its own task so that it can keep streaming the body after the
//! response head has been handed back; the task owns the store, and the request's
//! timeout bounds the whole of it. Outbound HTTP is refused by the hooks below, and
//! the WASI context grants no files, no environment but the spec's and no sockets.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use tokio::sync::oneshot;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limits::MemoryLimiter;
use crate::pipe::{CappedPipe, Overflow};
use crate::service::{self, BoxError, ResponseBody, ServiceConfig};
use crate::{Error, Result};

/// The `T` of `Store<T>` for a wasi:http instance.
pub(crate) struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    pub(crate) limiter: MemoryLimiter,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Refuses every outgoing request: a service spec grants no network.
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// The linker for wasi:http components: all of WASI 0.2 (Rust's `wasm32-wasip2`
/// components import `wasi:cli` even when they only serve HTTP) plus wasi:http.
pub(crate) fn linker(engine: &Engine) -> anyhow::Result<Linker<HttpState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Serves one request with a fresh instance of `pre`.
pub(crate) async fn handle<B>(
    pre: &ProxyPre<HttpState>,
    config: &ServiceConfig,
    request: http::Request<B>,
) -> Result<http::Response<ResponseBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let limits = &config.limits;
    let request_limit = limits.max_request_body;
    if service::content_length(request.headers()).is_some_and(|n| n > request_limit) {
        return Err(Error::RequestTooLarge {
            limit: request_limit,
        });
    }
    let request = request.map(move |body| {
        Limited::new(body, usize::try_from(request_limit).unwrap_or(usize::MAX)).map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(request_limit))
            } else {
                wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
            }
        })
    });

    let stdout = CappedPipe::new(limits.max_stderr, Overflow::Drop);
    let stderr = CappedPipe::new(limits.max_stderr, Overflow::Drop);
    let wasi = WasiCtx::builder()
        .envs(&config.env)
        .args(&config.args)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .build();
    let state = HttpState {
        wasi,
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: DenyOutbound,
        limiter: MemoryLimiter::new(limits.memory),
    };
    let mut store = Store::new(pre.engine(), state);
    service::prepare_store(&mut store, limits, |state| &mut state.limiter)?;

    let (sender, receiver) = oneshot::channel();
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(|e| Error::Internal(e.into()))?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(|e| Error::Internal(e.into()))?;

    let pre = pre.clone();
    let name = config.name.clone();
    let limits = limits.clone();
    let guest = tokio::spawn(async move {
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        };
        let outcome = match tokio::time::timeout(limits.timeout, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(service::guest_error(error, &limits, &store.data().limiter)),
            Err(_) => Err(Error::Timeout {
                limit: limits.timeout,
            }),
        };
        service::log_output(&name, "stdout", &stdout);
        service::log_output(&name, "stderr", &stderr);
        outcome
    });

    let response = match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return Err(guest_error_code(code)),
        // The guest dropped the outparam without answering: its task says why.
        Err(_) => {
            return Err(match guest.await {
                Ok(Err(error)) => error,
                Ok(Ok(())) => Error::Trap("the guest returned without setting a response".into()),
                Err(join) => Error::Internal(anyhow::anyhow!("guest task failed: {join}")),
            });
        }
    };
    let response_limit = usize::try_from(config.limits.max_response).unwrap_or(usize::MAX);
    Ok(response.map(|body| {
        Limited::new(body, response_limit)
            .map_err(|e| -> BoxError { e })
            .boxed_unsync()
    }))
}

fn guest_error_code(code: ErrorCode) -> Error {
    Error::Trap(format!(
        "the guest answered with an error instead of a response: {code:?}"
    ))
}
