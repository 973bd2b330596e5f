//! The smallest wasi:http guest: answers every request with a fixed greeting.
//!
//! Tests use it to check that a component exporting `wasi:http/incoming-handler` deploys and answers.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(HelloHttp);

struct HelloHttp;

impl wasi::exports::http::incoming_handler::Guest for HelloHttp {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        respond(response_out, 200, "text/plain", b"hello from wasm\n");
    }
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
