//! The gateway: routes a request to a service by name and returns what the service says.
//!
//! Two ways to name the service: `Host: {service}.{domain}` (the full path goes to the
//! service), or a first path segment, `/{service}/{rest}` (the service sees `/{rest}`, and the
//! consumed prefix travels as `X-Forwarded-Prefix`, and as `SCRIPT_NAME` for CGI).
//! `call_address = provider_address + request_data`, in the seed's words: the service name
//! picks the provider, the rest of the request is passed on unchanged.
//!
//! A wasm service's [`ReplicaPool`](shoal_runtime::ReplicaPool) picks a replica, starts one,
//! or queues the request. A service registered through the Consul API is forwarded to one of
//! its instances without a critical check, in turn (`forward.rs`); when none qualifies the
//! answer is 503, saying why.
//!
//! **Architecture Invariant:** the gateway reads only its [`RouteTable`], which the node
//! publishes; it depends on no store (Cargo says so: `shoal-registry` is not a dependency),
//! so the hot path never waits on a database or a network call to one.
//!
//! It is served by hyper's HTTP/1.1 directly, with `TCP_NODELAY` and no router: this is the
//! hot path of the whole node, and [`Gateway::handle`] is all of it.

mod error;
mod forward;
mod table;
mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use shoal_runtime::{BoxError, RequestContext};

pub use self::error::{COLD_START_HEADER, ERROR_KIND_HEADER, error_response, runtime_error_status};
pub use self::table::{
    ClusterService, Endpoint, ExternalService, Peer, Route, RouteTable, authority,
};

/// The header a request forwarded by a peer's gateway carries (the peer's name): it is served
/// here, never forwarded again, so a request crosses at most one hop.
pub const FORWARDED_HEADER: &str = "x-shoal-forwarded";

/// The header on the response to a forwarded request: the node that served it.
pub const SERVED_BY_HEADER: &str = "x-shoal-served-by";

/// The body of every gateway response: a guest's streamed body, a forwarded one, or an error.
pub type Body = shoal_runtime::ResponseBody;

/// A request's body on the way to a service of a cluster, which may be forwarded or served
/// here, and may change hands once.
type ClusterBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// A request body's error, as a type of its own: with `BoxError` itself, the compiler cannot
/// prove the routing future `Send` (its `Into<BoxError>` bound then has to hold for every
/// lifetime, and `Box<dyn Error>` converts only from itself).
#[derive(Debug)]
struct BodyError(BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The gateway of one node: its routing table and what it counts.
pub struct Gateway {
    domain: String,
    routes: ArcSwap<RouteTable>,
    /// Bumped whenever a table is published: requests waiting for a route wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    in_flight: AtomicU64,
    /// For forwarding to registered services: no redirects followed, no proxy from the
    /// environment.
    http: reqwest::Client,
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gateway {
    /// A gateway with an empty table, routing `Host: {service}.{domain}` by host.
    pub fn new(domain: impl Into<String>) -> Gateway {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a client without TLS settings always builds");
        Gateway {
            domain: domain.into(),
            routes: ArcSwap::default(),
            changes: tokio::sync::watch::Sender::new(0),
            in_flight: AtomicU64::new(0),
            http,
        }
    }

    /// Replaces the routing table; requests already routed finish where they were sent.
    pub fn publish(&self, routes: RouteTable) {
        self.routes.store(Arc::new(routes));
        self.changes.send_modify(|version| *version += 1);
    }

    /// The routing table in force.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The domain services are named under in `Host`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn begin_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Routes one request by service name and answers it: the gateway's whole job, called by
    /// [`serve`] for every request, and by an embedder serving the gateway its own way.
    pub async fn handle<B>(
        &self,
        remote_addr: Option<SocketAddr>,
        request: http::Request<B>,
    ) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let Some(target) = target::target(request.uri(), host, &self.domain) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "unknown-service",
                &format!(
                    "no service named in this request: use /{{service}}/... or Host: {{service}}.{}",
                    self.domain
                ),
            );
        };
        let routes = self.routes.load();
        let route = match routes.get(&target.service) {
            Some(route) => route.clone(),
            None => {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "unknown-service",
                    &format!("unknown service {:?}", target.service),
                );
            }
        };
        drop(routes);
        let _in_flight = self.begin_request();
        let pool = match route {
            Route::Wasm(pool) => pool,
            Route::Unavailable(reason) => {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &reason);
            }
            Route::External(external) => {
                return forward::forward(&self.http, &external, target, remote_addr, request).await;
            }
            Route::Cluster(service) => {
                let request =
                    request.map(|body| body.map_err(|error| BodyError(error.into())).boxed());
                return self
                    .route_in_cluster(service, target, remote_addr, request)
                    .await;
            }
        };
        self.serve_local(&pool, target, remote_addr, request).await
    }

    /// Routes a request for a wasm service of a cluster: here when a replica has room (or the
    /// request came from a peer: one hop at most), else one hop to a peer running the service,
    /// else in this node's queue when it has replicas, all busy. When no node has a replica
    /// (a service at zero, or the only node running it just died), the request is counted as
    /// waiting here, which the leader learns from this node's report, and waits for the
    /// routes to change, up to the service's queue timeout.
    async fn route_in_cluster(
        &self,
        mut service: Arc<ClusterService>,
        target: target::Target,
        remote_addr: Option<SocketAddr>,
        mut request: http::Request<ClusterBody>,
    ) -> http::Response<Body> {
        if request.headers().contains_key(FORWARDED_HEADER) {
            let mut response = self
                .serve_local(&service.pool, target, remote_addr, request)
                .await;
            if let Ok(node) = HeaderValue::from_str(&service.origin) {
                response.headers_mut().insert(SERVED_BY_HEADER, node);
            }
            return response;
        }
        let timeout = service.pool.queue_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        let mut unreachable: Vec<String> = Vec::new();
        loop {
            if service.pool.has_room() {
                break;
            }
            if let Some(peer) = service.pick_except(&unreachable) {
                match forward::to_peer(&self.http, peer, &service.origin, remote_addr, request)
                    .await
                {
                    Ok(response) => return response,
                    // The peer could not be reached, and the request had no body to lose:
                    // another peer, or a wait, may still serve it.
                    Err(Some(unsent)) => {
                        unreachable.push(peer.node.clone());
                        request = unsent.map(|body| body.map_err(|never| match never {}).boxed());
                        continue;
                    }
                    Err(None) => {
                        return error_response(
                            StatusCode::BAD_GATEWAY,
                            "peer-unreachable",
                            &format!(
                                "cannot reach node {:?}, which runs service {:?}",
                                peer.node, target.service
                            ),
                        );
                    }
                }
            }
            if service.pool.max_replicas() > 0 {
                break;
            }
            let _waiting = service.pool.hold_demand();
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        &format!(
                            "no replica of service {:?} became available on any node within the queue timeout of {}",
                            target.service,
                            humantime::format_duration(timeout)
                        ),
                    );
                }
            }
            changes.borrow_and_update();
            unreachable.clear();
            match self.routes.load().get(&target.service) {
                Some(Route::Cluster(newer)) => service = newer.clone(),
                _ => {
                    return error_response(
                        StatusCode::NOT_FOUND,
                        "unknown-service",
                        &format!(
                            "service {:?} was deleted while the request waited",
                            target.service
                        ),
                    );
                }
            }
        }
        self.serve_local(&service.pool, target, remote_addr, request)
            .await
    }

    /// Serves a request on this node's replicas of a service.
    async fn serve_local<B>(
        &self,
        pool: &Arc<shoal_runtime::ReplicaPool>,
        target: target::Target,
        remote_addr: Option<SocketAddr>,
        mut request: http::Request<B>,
    ) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        *request.uri_mut() = target.uri;
        if !target.prefix.is_empty()
            && let Ok(prefix) = HeaderValue::from_str(&target.prefix)
        {
            request.headers_mut().insert("x-forwarded-prefix", prefix);
        }
        let context = RequestContext {
            script_name: target.prefix,
            remote_addr,
        };
        let arrived = std::time::Instant::now();
        match pool.handle(request, context).await {
            Ok((mut response, served)) => {
                if served.cold_start {
                    response
                        .headers_mut()
                        .insert(COLD_START_HEADER, HeaderValue::from_static("true"));
                }
                let status = response.status().as_u16();
                pool.record_request("ok", status, arrived.elapsed(), Some(served.queued));
                response
            }
            Err(error) => {
                let kind = error.kind();
                let message = error.to_string();
                tracing::info!(service = %target.service, kind, "{message}");
                let status = runtime_error_status(&error);
                pool.record_request(kind, status.as_u16(), arrived.elapsed(), None);
                error_response(status, kind, &message)
            }
        }
    }
}

/// Serves the gateway on `listener` until `stopped`, then lets the connections finish the
/// requests they are serving.
///
/// Plain HTTP/1.1 on hyper, one task per connection, without a router: every request goes to
/// [`Gateway::handle`].
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    stopped: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let (stream, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before it was accepted:
                // the listener itself is fine.
                Err(error) => {
                    tracing::debug!(%error, "accepting a gateway connection failed");
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        set_nodelay(&stream);
        let gateway = gateway.clone();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        gateway.handle(Some(remote_addr), request).await,
                    )
                }
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "gateway connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Turns Nagle's algorithm off: responses are written as they are produced (a head, then
/// chunks), and with Nagle on, the last small write waits for the client's delayed ACK, tens of
/// milliseconds.
pub fn set_nodelay(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}
