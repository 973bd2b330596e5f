//! A wasi:http guest that allocates memory, for testing memory limits.
//!
//! With `?mb=N` (default 1) it allocates N MiB, writes to every 4 KiB page, and answers `allocated N MiB`.
//! When the host refuses to grow memory the allocation fails and the guest aborts, which is a trap.

use std::hint::black_box;

use guest_helper::{query_param, respond};
use wasi::http::types::{IncomingRequest, ResponseOutparam};

wasi::http::proxy::export!(AllocHttp);

struct AllocHttp;

const MIB: usize = 1 << 20;
const PAGE_SIZE: usize = 4096;

impl wasi::exports::http::incoming_handler::Guest for AllocHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query);
        let n_mib = query_param(query, "mb")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        // A size that overflows `usize` cannot be allocated either, so saturate and let the allocation fail.
        let mut buffer = vec![0_u8; n_mib.saturating_mul(MIB)];
        // Fresh wasm memory is already zero, so the zeroed allocation may not touch it; write explicitly.
        for page_idx in (0..buffer.len()).step_by(PAGE_SIZE) {
            buffer[page_idx] = 1;
        }
        black_box(&buffer);
        respond(
            response_out,
            200,
            "text/plain",
            format!("allocated {n_mib} MiB").as_bytes(),
        );
    }
}
