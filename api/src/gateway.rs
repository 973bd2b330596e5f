//! The gateway: routes a request to a service by name and returns what the guest says.
//!
//! Two ways to name the service: `Host: {service}.{domain}` (the full path goes to the
//! guest), or a first path segment, `/{service}/{rest}` (the guest sees `/{rest}`,
//! and the consumed prefix travels as `X-Forwarded-Prefix`, and as `SCRIPT_NAME` for
//! CGI). `call_address = provider_address + request_data`, in the seed's words: the
//! service name picks the provider, the rest of the request is passed on unchanged.
//!
//! The lookup reads the in-memory routing tables only; nothing here touches the
//! registry. A wasm service's [`shoal_runtime::ReplicaPool`] then picks a replica, starts
//! one, or queues the request. A service registered through the Consul API is proxied to
//! one of its instances without a critical check, in turn; when none qualifies the answer
//! is 503, saying why.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use shoal_runtime::RequestContext;

use crate::catalog::ExternalService;
use crate::error::ApiError;
use crate::node::Node;

/// Set on a response whose request found the service at zero replicas and started one.
pub const COLD_START_HEADER: &str = "x-shoal-cold-start";

/// Serves the gateway on `listener` until `stopped`, then lets the connections finish
/// the requests they are serving.
///
/// Plain HTTP/1.1 on hyper, one task per connection, without a router: every request
/// goes to [`handle`], and this is the hot path of the whole node.
pub(crate) async fn serve(
    node: Node,
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
        crate::set_nodelay(&stream);
        let node = node.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let node = node.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    handle(&node, Some(remote_addr), request.map(Body::new)).await,
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

/// Where a request goes: the service's name, the prefix consumed to find it, and the
/// URI the guest sees.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    service: String,
    prefix: String,
    uri: Uri,
}

fn target(uri: &Uri, host: Option<&str>, domain: &str) -> Option<Target> {
    if let Some(host) = host {
        let host = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        if let Some(service) = host.strip_suffix(domain).and_then(|s| s.strip_suffix('.'))
            && !service.is_empty()
            && !service.contains('.')
        {
            return Some(Target {
                service: service.to_owned(),
                prefix: String::new(),
                uri: uri.clone(),
            });
        }
    }
    let path = uri.path();
    let rest = path.strip_prefix('/')?;
    let (service, rest) = rest.split_once('/').map_or((rest, ""), |(s, r)| (s, r));
    if service.is_empty() {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    Some(Target {
        service: service.to_owned(),
        prefix: format!("/{service}"),
        uri: Uri::builder().path_and_query(path_and_query).build().ok()?,
    })
}

/// Routes one request by service name and answers it: the gateway's whole job, called by
/// [`serve`] for every request, and by an embedder serving the gateway its own way.
pub async fn handle(
    node: &Node,
    remote_addr: Option<SocketAddr>,
    mut request: Request,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let Some(target) = target(request.uri(), host, &node.config().domain) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-service",
            format!(
                "no service named in this request: use /{{service}}/... or Host: {{service}}.{}",
                node.config().domain
            ),
        )
        .into_response();
    };
    let Some(route) = node.route(&target.service) else {
        if let Some(external) = node.catalog().external.get(&target.service).cloned() {
            let _in_flight = node.begin_request();
            return proxy(node, &external, target, remote_addr, request).await;
        }
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-service",
            format!("unknown service {:?}", target.service),
        )
        .into_response();
    };
    let _in_flight = node.begin_request();
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
    match route.pool.handle(request, context).await {
        Ok((response, served)) => {
            let mut response = response.map(Body::new);
            if served.cold_start {
                response
                    .headers_mut()
                    .insert(COLD_START_HEADER, HeaderValue::from_static("true"));
            }
            response
        }
        Err(error) => {
            let error = ApiError::from(error);
            tracing::info!(service = %target.service, kind = error.kind, "{}", error.message);
            error.into_response()
        }
    }
}

/// Headers that describe one connection, not the request, and must not be forwarded
/// (RFC 9110, section 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// Proxies a request to an instance of a registered service, streaming both ways.
async fn proxy(
    node: &Node,
    service: &ExternalService,
    target: Target,
    remote_addr: Option<SocketAddr>,
    request: Request,
) -> Response {
    let Some(endpoint) = service.pick() else {
        let n = service.instances.len();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-healthy-instance",
            format!(
                "service {:?} has no instance to route to: {n} registered, none with a port and \
                 without a critical check",
                target.service
            ),
        )
        .into_response();
    };
    let (parts, body) = request.into_parts();
    let path_and_query = target.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{path_and_query}", endpoint.authority);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let original_host = headers.remove(header::HOST);
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    if !target.prefix.is_empty()
        && let Ok(prefix) = HeaderValue::from_str(&target.prefix)
    {
        headers.insert("x-forwarded-prefix", prefix);
    }
    if let Some(addr) = remote_addr
        && let Ok(value) = HeaderValue::from_str(&addr.ip().to_string())
    {
        headers.append("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let upstream = node
        .http_client()
        .request(parts.method, &url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match upstream {
        Ok(upstream) => {
            let mut response = Response::builder().status(upstream.status());
            if let Some(response_headers) = response.headers_mut() {
                *response_headers = upstream.headers().clone();
                strip_hop_by_hop(response_headers);
            }
            response
                .body(Body::from_stream(upstream.bytes_stream()))
                .unwrap_or_else(|error| ApiError::internal(error).into_response())
        }
        Err(error) => {
            let error = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                format!(
                    "cannot reach instance {:?} of service {:?} at {}: {}",
                    endpoint.id,
                    target.service,
                    endpoint.authority,
                    crate::error::error_chain(&error)
                ),
            );
            tracing::info!(service = %target.service, kind = error.kind, "{}", error.message);
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(uri: &str, host: Option<&str>) -> Option<(String, String, String)> {
        target(&uri.parse().unwrap(), host, "localhost")
            .map(|t| (t.service, t.prefix, t.uri.to_string()))
    }

    #[test]
    fn routes_by_path_and_by_host() {
        let s = |a: &str, b: &str, c: &str| Some((a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(t("/hello/a/b?x=1", None), s("hello", "/hello", "/a/b?x=1"));
        assert_eq!(t("/hello", None), s("hello", "/hello", "/"));
        assert_eq!(
            t("/hello/", Some("127.0.0.1:8080")),
            s("hello", "/hello", "/")
        );
        assert_eq!(
            t("/a/b", Some("hello.localhost:8080")),
            s("hello", "", "/a/b")
        );
        assert_eq!(t("/a/b", Some("hello.localhost")), s("hello", "", "/a/b"));
        assert_eq!(
            t("/hello/x", Some("localhost:8080")),
            s("hello", "/hello", "/x")
        );
        assert_eq!(t("/", None), None);
    }
}
