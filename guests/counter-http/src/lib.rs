//! A wasi:http guest with state: a request counter kept in the instance's memory.
//!
//! Each request adds one to the counter and answers the new count, so an instance kept across requests (`isolation: reuse`) answers 1, 2, 3… while a fresh instance per request always answers 1.
//! With `?trap` it counts the request and then traps before answering, so tests can check that a faulted instance is replaced rather than reused.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(CounterHttp);

/// The requests this instance has handled; it lives exactly as long as the instance.
static COUNT: AtomicU64 = AtomicU64::new(0);

struct CounterHttp;

impl wasi::exports::http::incoming_handler::Guest for CounterHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query);
        if query_param(query, "trap").is_some() {
            core::arch::wasm32::unreachable()
        }
        respond(
            response_out,
            200,
            "text/plain",
            count.to_string().as_bytes(),
        );
    }
}

/// Returns the value of `key` in a query string, undecoded; a key without `=` has the value `""`.
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
