//! A wasi:http guest that waits before answering, for testing wall-clock timeouts.
//!
//! With `?ms=N` (default 1000) it blocks on a monotonic-clock pollable for N ms, then answers `slept N ms`.
//! It waits inside a host call, so only a host-side wall-clock timeout can cut it short: epoch interruption fires in guest code only.

use std::io::Write as _;

use wasi::clocks::monotonic_clock;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(SleepHttp);

struct SleepHttp;

impl wasi::exports::http::incoming_handler::Guest for SleepHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query);
        let sleep_ms = query_param(query, "ms")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(1000);
        monotonic_clock::subscribe_duration(sleep_ms.saturating_mul(1_000_000)).block();
        respond(
            response_out,
            200,
            "text/plain",
            format!("slept {sleep_ms} ms").as_bytes(),
        );
    }
}

/// Returns the value of `key` in a query string, undecoded.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}

/// Sends a complete response; any failure panics, which the host sees as a trap.
fn respond(response_out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_owned(), content_type.as_bytes().to_vec())])
            .expect("content-type is a valid header");
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("status code is valid");
    let outgoing_body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut stream = outgoing_body.write().expect("the stream is taken once");
    stream.write_all(body).expect("writing the response body");
    stream.flush().expect("flushing the response body");
    // The stream is a child of the body and must be dropped before finishing it.
    drop(stream);
    OutgoingBody::finish(outgoing_body, None).expect("finishing the response body");
}
