//! A wasi:http guest of several megabytes: thousands of generated functions and a data
//! table (see `build.rs`), all reachable, so nothing is optimized away.
//!
//! It answers `large <checksum>`, where the checksum runs every function once; benchmarks
//! use it for the cold path of a big component, from upload to first response.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

wasi::http::proxy::export!(LargeHttp);

struct LargeHttp;

impl wasi::exports::http::incoming_handler::Guest for LargeHttp {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let checksum = FUNCTIONS.iter().fold(1_u64, |x, function| function(x));
        respond(response_out, format!("large {checksum:016x}\n").as_bytes());
    }
}

/// Sends a complete 200 response; any failure panics, which the host sees as a trap.
fn respond(response_out: ResponseOutparam, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
        .expect("content-type is a valid header");
    let response = OutgoingResponse::new(headers);
    let outgoing_body = response.body().expect("the body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut stream = outgoing_body.write().expect("the stream is taken once");
    stream.write_all(body).expect("writing the response body");
    stream.flush().expect("flushing the response body");
    drop(stream);
    OutgoingBody::finish(outgoing_body, None).expect("finishing the response body");
}
