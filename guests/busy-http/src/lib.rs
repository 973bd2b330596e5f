//! A wasi:http guest that burns CPU, for testing epoch-based timeouts.
//!
//! With `?iterations=N` it runs N rounds of arithmetic and answers `done N`.
//! Without the parameter it loops forever and never responds.

use std::hint::black_box;
use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(BusyHttp);

struct BusyHttp;

impl wasi::exports::http::incoming_handler::Guest for BusyHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query);
        let Some(n_iterations) =
            query_param(query, "iterations").and_then(|n| n.parse::<u64>().ok())
        else {
            spin_forever()
        };
        let mut state = 1_u64;
        for iteration_idx in 0..n_iterations {
            state = step(state, iteration_idx);
        }
        black_box(state);
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

fn spin_forever() -> ! {
    let mut state = 1_u64;
    let mut iteration_idx = 0_u64;
    loop {
        state = step(state, iteration_idx);
        iteration_idx = iteration_idx.wrapping_add(1);
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
