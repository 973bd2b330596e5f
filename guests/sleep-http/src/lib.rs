//! A wasi:http guest that waits before answering, for testing wall-clock timeouts.
//!
//! With `?ms=N` (default 1000) it blocks on a monotonic-clock pollable for N ms, then answers `slept N ms`.
//! It waits inside a host call, so only a host-side wall-clock timeout can cut it short: epoch interruption fires in guest code only.

use guest_helper::{query_param, respond};
use wasi::clocks::monotonic_clock;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

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
