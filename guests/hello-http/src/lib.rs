//! The smallest wasi:http guest: answers every request with a fixed greeting.
//!
//! Tests use it to check that a component exporting `wasi:http/incoming-handler` deploys and answers.

use guest_helper::respond;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

wasi::http::proxy::export!(HelloHttp);

struct HelloHttp;

impl wasi::exports::http::incoming_handler::Guest for HelloHttp {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        respond(response_out, 200, "text/plain", b"hello from wasm\n");
    }
}
