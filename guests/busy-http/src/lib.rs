//! A wasi:http guest that burns CPU, for testing epoch-based timeouts.
//!
//! With `?iterations=N` it runs N rounds of arithmetic and answers `done N`.
//! Without the parameter it loops forever and never responds.
//! With `?clock=K` it also reads the monotonic clock every K rounds: a loop that spends part
//! of its time in a host call, which fuel does not count.

use std::hint::black_box;

use guest_helper::{query_param, respond};
use wasi::clocks::monotonic_clock;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

wasi::http::proxy::export!(BusyHttp);

struct BusyHttp;

impl wasi::exports::http::incoming_handler::Guest for BusyHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query);
        let clock_every = query_param(query, "clock")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&k| k > 0);
        let n_iterations = query_param(query, "iterations").and_then(|n| n.parse::<u64>().ok());
        let mut state = 1_u64;
        let mut iteration_idx = 0_u64;
        // Without `iterations`, forever: the answer below is never reached.
        while n_iterations.is_none_or(|n| iteration_idx < n) {
            state = step(state, iteration_idx);
            if clock_every.is_some_and(|k| iteration_idx % k == 0) {
                state ^= black_box(monotonic_clock::now());
            }
            iteration_idx = iteration_idx.wrapping_add(1);
        }
        black_box(state);
        let n_iterations = iteration_idx;
        respond(
            response_out,
            200,
            "text/plain",
            format!("done {n_iterations}").as_bytes(),
        );
    }
}

/// One round of work; `black_box` keeps the compiler from folding the loop away.
fn step(state: u64, iteration_idx: u64) -> u64 {
    black_box(black_box(state).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ black_box(iteration_idx))
        .rotate_left(7)
}
