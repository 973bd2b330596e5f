//! A wasi:http guest that traps on every request before sending a response.
//!
//! Tests use it to check how the host reports a guest trap.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

wasi::http::proxy::export!(TrapHttp);

struct TrapHttp;

impl wasi::exports::http::incoming_handler::Guest for TrapHttp {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        core::arch::wasm32::unreachable()
    }
}
