//! What the wasi:http test guests share, as Spin's test components share a helper crate:
//! sending a whole response, reading a whole request body, and reading a query parameter.
//!
//! Failures panic: in a guest a panic is a trap, which is what a test of the host wants to see
//! rather than a response the guest made up.

use std::io::{Read as _, Write as _};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Sends a complete response; any failure panics, which the host sees as a trap.
pub fn respond(response_out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
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

/// Reads the whole request body; its trailers are dropped.
pub fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let incoming_body = request.consume().expect("the body is consumed once");
    let mut body = Vec::new();
    {
        // The stream is a child of the body and must be dropped before finishing it.
        let mut stream = incoming_body.stream().expect("the stream is taken once");
        stream
            .read_to_end(&mut body)
            .expect("reading the request body");
    }
    drop(IncomingBody::finish(incoming_body));
    body
}

/// Returns the value of `key` in a query string, undecoded; a key without `=` has the value
/// `""`.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}
