//! Forwarding a request to an instance of a service registered through the Consul API, as a
//! reverse proxy does: both bodies streamed, hop-by-hop headers dropped, the usual
//! `X-Forwarded-*` headers added.

use std::net::SocketAddr;

use bytes::Bytes;
use futures::TryStreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, StreamBody};
use shoal_runtime::BoxError;

use crate::target::Target;
use crate::{Body, ExternalService, FORWARDED_HEADER, Peer, error_response};

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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// An upstream's answer as the gateway's: status and headers (but hop-by-hop ones), and the
/// body streamed as it arrives.
fn streamed(upstream: reqwest::Response) -> http::Response<Body> {
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    let body = StreamBody::new(
        upstream
            .bytes_stream()
            .map_ok(http_body::Frame::data)
            .map_err(|error| -> BoxError { Box::new(error) }),
    );
    let mut response = http::Response::new(body.boxed_unsync());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Forwards a request to the next routable instance of `service`, streaming both ways.
pub(crate) async fn forward<B>(
    http: &reqwest::Client,
    service: &ExternalService,
    target: Target,
    remote_addr: Option<SocketAddr>,
    request: http::Request<B>,
) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let Some(endpoint) = service.pick() else {
        let n = service.instances.len();
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-healthy-instance",
            &format!(
                "service {:?} has no instance to route to: {n} registered, none with a port and \
                 without a critical check",
                target.service
            ),
        );
    };
    let (parts, body) = request.into_parts();
    let path_and_query = target.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{path_and_query}", endpoint.authority);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(host) = headers.remove(header::HOST) {
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
    let upstream = http
        .request(parts.method, &url)
        .headers(headers)
        .body(reqwest::Body::wrap(body.map_err(Into::into)))
        .send()
        .await;
    match upstream {
        Ok(upstream) => streamed(upstream),
        Err(error) => {
            let message = format!(
                "cannot reach instance {:?} of service {:?} at {}: {:#}",
                endpoint.id,
                target.service,
                endpoint.authority,
                anyhow::Error::new(error)
            );
            tracing::info!(service = %target.service, kind = "upstream-unreachable", "{message}");
            error_response(StatusCode::BAD_GATEWAY, "upstream-unreachable", &message)
        }
    }
}

/// Forwards a request as it came (its URI and `Host` name the service the same way) to a
/// peer's gateway, marked as forwarded so the peer serves it itself. When the peer cannot be
/// reached, gives back a request with no body (`Some`) for the caller to serve elsewhere, or
/// `None` if its body may have been consumed.
pub(crate) async fn to_peer<B>(
    http: &reqwest::Client,
    peer: &Peer,
    origin: &str,
    remote_addr: Option<SocketAddr>,
    request: http::Request<B>,
) -> Result<http::Response<Body>, Option<http::Request<http_body_util::Empty<Bytes>>>>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let empty = body.is_end_stream();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{path_and_query}", peer.gateway);
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(FORWARDED_HEADER, origin);
    }
    if let Some(addr) = remote_addr
        && let Ok(value) = HeaderValue::from_str(&addr.ip().to_string())
    {
        headers.append("x-forwarded-for", value);
    }
    let sent = http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(reqwest::Body::wrap(body.map_err(Into::into)))
        .send()
        .await;
    match sent {
        Ok(upstream) => Ok(streamed(upstream)),
        Err(error) => {
            tracing::info!(peer = peer.node, %error, "a peer's gateway could not be reached");
            if !empty || !error.is_connect() {
                return Err(None);
            }
            let mut unsent = http::Request::from_parts(parts, http_body_util::Empty::new());
            unsent.headers_mut().remove(FORWARDED_HEADER);
            Err(Some(unsent))
        }
    }
}
