//! The executor for `wasi:http` components, serving requests the way `wasmtime serve`
//! does, in a fresh instance per request or in an instance a replica keeps.
//!
//! The guest runs in the request's task until it answers; if it is still running then
//! (streaming its body), it continues in a task of its own, which owns the instance (and
//! the [`Checkout`] of its replica). The request's timeout bounds the whole of it. A reused instance goes
//! back to its replica only when the request succeeded: after any fault it is dropped.
//! Outbound HTTP is refused by the hooks below, and the WASI context grants no files,
//! no environment but the spec's and no sockets.

use crate::logs::Stream;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use tokio::sync::oneshot;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::cpu::{GuestCpu, Scheduled};
use crate::exec::Checkout;
use crate::exec::ServiceConfig;
use crate::sandbox::{
    self, BoxError, CappedPipe, CpuThrottle, Metered, Metering, Overflow, ResponseBody,
    SandboxLimits,
};
use crate::{Error, Result};

/// The `T` of `Store<T>` for a wasi:http instance.
pub(crate) struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    metering: Metering,
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

impl Metered for HttpState {
    fn metering(&mut self) -> &mut Metering {
        &mut self.metering
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

/// The guest's stdout and stderr, kept outside the instance so they can be logged
/// even when the instance is dropped mid-request.
#[derive(Clone)]
pub(crate) struct Pipes {
    stdout: CappedPipe,
    stderr: CappedPipe,
}

impl Pipes {
    fn new(limits: &SandboxLimits) -> Pipes {
        Pipes {
            stdout: CappedPipe::new(limits.max_stderr, Overflow::Drop),
            stderr: CappedPipe::new(limits.max_stderr, Overflow::Drop),
        }
    }

    fn log(&self, config: &ServiceConfig, replica: u64) {
        sandbox::log_output(config, replica, Stream::Stdout, &self.stdout);
        sandbox::log_output(config, replica, Stream::Stderr, &self.stderr);
    }
}

/// A live instance, which a `reuse` replica keeps between requests.
pub(crate) struct HttpInstance {
    store: Store<HttpState>,
    proxy: Proxy,
    pipes: Pipes,
    /// Requests it has served.
    pub(crate) served: u64,
}

async fn instantiate(
    pre: &ProxyPre<HttpState>,
    config: &ServiceConfig,
    pipes: Pipes,
    throttle: Option<Arc<CpuThrottle>>,
    cpu: Arc<GuestCpu>,
) -> Result<HttpInstance> {
    let limits = &config.limits;
    let wasi = WasiCtx::builder()
        .envs(&config.env)
        .args(&config.args)
        .stdout(pipes.stdout.clone())
        .stderr(pipes.stderr.clone())
        .build();
    let state = HttpState {
        wasi,
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: DenyOutbound,
        metering: Metering::new(limits, throttle, cpu.clone()),
    };
    let mut store = Store::new(pre.engine(), state);
    sandbox::prepare_store(&mut store)?;
    // Instantiation runs the guest's start functions: it spends this request's budget.
    sandbox::begin_request(&mut store, limits, cpu)?;
    match pre.instantiate_async(&mut store).await {
        Ok(proxy) => Ok(HttpInstance {
            store,
            proxy,
            pipes,
            served: 0,
        }),
        Err(error) => Err(sandbox::guest_error(
            error,
            limits,
            &store.data_mut().metering().limiter,
        )),
    }
}

/// Serves one request, in the instance the checkout kept if it has one, else in a new one.
pub(crate) async fn handle<B, C>(
    pre: &ProxyPre<HttpState>,
    config: &Arc<ServiceConfig>,
    request: http::Request<B>,
    checkout: C,
) -> Result<http::Response<ResponseBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Checkout,
{
    let limits = config.limits.clone();
    let request_limit = limits.max_request_body;
    if sandbox::content_length(request.headers()).is_some_and(|n| n > request_limit) {
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

    let mut checkout = checkout;
    // An instance kept from before the module switched tiers is dropped: the next one starts
    // on the code in force.
    let kept = checkout
        .take_instance()
        .filter(|instance| wasmtime::Engine::same(instance.store.engine(), pre.engine()));
    let throttle = checkout.throttle();
    let quota = throttle.clone();
    let cpu = checkout.cpu();
    let pipes = kept
        .as_ref()
        .map_or_else(|| Pipes::new(&limits), |instance| instance.pipes.clone());
    let (sender, receiver) = oneshot::channel();
    let pre = pre.clone();
    let task_config = config.clone();
    let guest = async move {
        let config = task_config;
        let run = async {
            let mut instance = match kept {
                Some(mut instance) => {
                    sandbox::begin_request(&mut instance.store, &limits, cpu.clone())?;
                    instance
                }
                None => {
                    instantiate(&pre, &config, pipes.clone(), throttle.clone(), cpu.clone()).await?
                }
            };
            let mut http = instance.store.data_mut().http();
            let incoming = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| Error::Internal(e.into()))?;
            let outparam = http
                .new_response_outparam(sender)
                .map_err(|e| Error::Internal(e.into()))?;
            let handler = instance.proxy.wasi_http_incoming_handler();
            let handled = handler
                .call_handle(&mut instance.store, incoming, outparam)
                .await;
            sandbox::count_fuel(&instance.store, &limits, &cpu);
            match handled {
                Ok(()) => {
                    instance.served += 1;
                    Ok(instance)
                }
                Err(error) => Err(sandbox::guest_error(
                    error,
                    &limits,
                    &instance.store.data_mut().metering().limiter,
                )),
            }
        };
        // The guest computes only while it holds a CPU slot; the timeout counts the waits
        // for one, so a service over its share times out first.
        let scheduled = Scheduled::new(run, cpu.clone(), sandbox::quota_charger(quota));
        let outcome = match tokio::time::timeout(limits.timeout, scheduled).await {
            Ok(Ok(instance)) => {
                checkout.keep(instance);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Timeout {
                limit: limits.timeout,
            }),
        };
        pipes.log(&config, checkout.replica_id());
        // The replica slot is given back only now that the guest has finished, not merely
        // answered.
        drop(checkout);
        outcome
    };

    // Run the guest here until it answers. Most guests answer and finish in one go, and
    // then the response, body included, is ready without a task of its own; one still
    // running when it answers (streaming its body) continues in a task.
    let mut guest = Box::pin(guest);
    let mut receiver = receiver;
    let answered = tokio::select! {
        biased;
        outcome = &mut guest => {
            match receiver.try_recv() {
                Ok(answered) => answered,
                // Finished without answering: the outcome says why.
                Err(_) => return Err(unanswered(outcome)),
            }
        }
        answered = &mut receiver => {
            match answered {
                Ok(answered) => {
                    tokio::spawn(guest);
                    answered
                }
                // The guest dropped the outparam without answering: its run says why.
                Err(_) => return Err(unanswered(guest.await)),
            }
        }
    };
    let response = match answered {
        Ok(response) => response,
        Err(code) => return Err(guest_error_code(code)),
    };
    let response_limit = usize::try_from(config.limits.max_response).unwrap_or(usize::MAX);
    Ok(response.map(|body| {
        Limited::new(body, response_limit)
            .map_err(|e| -> BoxError { e })
            .boxed_unsync()
    }))
}

/// Why a guest that ran to the end gave no response: its fault, or none at all.
fn unanswered(outcome: Result<()>) -> Error {
    match outcome {
        Err(error) => error,
        Ok(()) => Error::Trap("the guest returned without setting a response".into()),
    }
}

fn guest_error_code(code: ErrorCode) -> Error {
    Error::Trap(format!(
        "the guest answered with an error instead of a response: {code:?}"
    ))
}
