//! A wasi:http guest that describes the request it received as JSON.
//!
//! Tests use it to check what the host forwards: method, path, query, every header in order, and the body.
//! `?log=TEXT` first writes `TEXT` to stdout and `stderr: TEXT` to stderr (not percent-decoded), which tests read back through the log APIs.

use guest_helper::{query_param, read_body, respond};
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

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
        if let Some(text) = query_param(query, "log") {
            println!("{text}");
            eprintln!("stderr: {text}");
        }
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
