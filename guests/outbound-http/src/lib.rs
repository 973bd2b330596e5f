//! A wasi:http guest that tries an outgoing request, for testing the host's outbound policy.
//!
//! `?url=<percent-encoded absolute URL>` names the target.
//! It answers 200 with `fetched: <status>` when a response came back, or `denied: <error code>` when the host refused or the request failed.
//! It never traps on refusal, so a test can tell a policy decision apart from a crash.

use guest_helper::{query_param, respond};
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingRequest, ResponseOutparam, Scheme,
};

wasi::http::proxy::export!(OutboundHttp);

struct OutboundHttp;

impl wasi::exports::http::incoming_handler::Guest for OutboundHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query);
        let url = percent_decode(query_param(query, "url").unwrap_or_default());
        let body = match fetch(&url) {
            Ok(Ok(status)) => format!("fetched: {status}"),
            Ok(Err(error_code)) => format!("denied: {error_code:?}"),
            Err(reason) => format!("invalid url {url:?}: {reason}"),
        };
        respond(response_out, 200, "text/plain", body.as_bytes());
    }
}

/// Sends a GET to `url`; the outer error is a URL the guest could not even express as a request.
fn fetch(url: &str) -> Result<Result<u16, ErrorCode>, &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("not an absolute url")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let (authority, path_with_query) = match rest.find(['/', '?']) {
        Some(idx) if rest[idx..].starts_with('/') => (&rest[..idx], rest[idx..].to_owned()),
        Some(idx) => (&rest[..idx], format!("/{}", &rest[idx..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err("no authority");
    }
    let outgoing_request = OutgoingRequest::new(Fields::new());
    outgoing_request
        .set_scheme(Some(&scheme))
        .map_err(|()| "scheme rejected")?;
    outgoing_request
        .set_authority(Some(authority))
        .map_err(|()| "authority rejected")?;
    outgoing_request
        .set_path_with_query(Some(&path_with_query))
        .map_err(|()| "path rejected")?;
    let outgoing_body = outgoing_request.body().expect("the body is taken once");
    let future_response = match outgoing_handler::handle(outgoing_request, None) {
        Ok(future_response) => future_response,
        Err(error_code) => return Ok(Err(error_code)),
    };
    // A GET has an empty body, but the host only sends the request once the body is finished.
    if let Err(error_code) = OutgoingBody::finish(outgoing_body, None) {
        return Ok(Err(error_code));
    }
    future_response.subscribe().block();
    let response = future_response
        .get()
        .expect("the pollable said the response is ready")
        .expect("the response is taken once");
    Ok(response.map(|incoming_response| incoming_response.status()))
}

/// Decodes `%XX` escapes and `+` as a space; invalid escapes are kept as they are.
fn percent_decode(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut byte_idx = 0;
    while byte_idx < bytes.len() {
        let hex = bytes
            .get(byte_idx + 1..byte_idx + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok());
        match (
            bytes[byte_idx],
            hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()),
        ) {
            (b'%', Some(value)) => {
                decoded.push(value);
                byte_idx += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                byte_idx += 1;
            }
            (other, _) => {
                decoded.push(other);
                byte_idx += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
