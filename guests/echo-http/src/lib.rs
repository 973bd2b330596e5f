//! A wasi:http guest that describes the request it received as JSON.
//!
//! Tests use it to check what the host forwards: method, path, query, every header in order, and the body.

use std::io::{Read as _, Write as _};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(EchoHttp);

struct EchoHttp;

impl wasi::exports::http::incoming_handler::Guest for EchoHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        // Pairs rather than an object, so that order and repeated names survive.
        // The order is whatever `fields.entries()` gives: wasmtime keeps an `http::HeaderMap`, which groups repeated names.
        let headers: Vec<(String, String)> = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let body = read_body(&request);
        let description = serde_json::json!({
            "method": method_name(&request.method()),
            "path": path,
            "query": query,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "body_len": body.len(),
        });
        respond(
            response_out,
            200,
            "application/json",
            description.to_string().as_bytes(),
        );
    }
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let incoming_body = request.consume().expect("the body is consumed once");
    let mut body = Vec::new();
    {
        // The stream is a child of the body and must be dropped before finishing it.
        let mut stream = incoming_body.stream().expect("the stream is taken once");
        stream
            .read_to_end(&mut body)
            .expect("reading the request body");
    }
    // Trailers are not part of the description.
    drop(IncomingBody::finish(incoming_body));
    body
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
    drop(stream);
    OutgoingBody::finish(outgoing_body, None).expect("finishing the response body");
}
