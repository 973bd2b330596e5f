//! A wasi:http guest that fails every request before sending a response: it traps, or,
//! on `/return`, returns without setting one.
//!
//! Tests use it to check how the host reports a guest that never answers.

use wasi::http::types::{IncomingRequest, ResponseOutparam};

wasi::http::proxy::export!(TrapHttp);

struct TrapHttp;

impl wasi::exports::http::incoming_handler::Guest for TrapHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        if request.path_with_query().as_deref() == Some("/return") {
            // Dropping the outparam unset is what a buggy guest does.
            drop(response_out);
            return;
        }
        core::arch::wasm32::unreachable()
    }
}
