//! A wasi:http guest with state: a request counter kept in the instance's memory.
//!
//! Each request adds one to the counter and answers the new count, so an instance kept across requests (`isolation: reuse`) answers 1, 2, 3… while a fresh instance per request always answers 1.
//! With `?trap` it counts the request and then traps before answering, so tests can check that a faulted instance is replaced rather than reused.

use std::sync::atomic::{AtomicU64, Ordering};

use guest_helper::{query_param, respond};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

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
