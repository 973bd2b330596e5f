//! The smallest CGI guest: prints a fixed plain-text response.
//!
//! Built for `wasm32-wasip1` it is the CGI hello world; built for `wasm32-wasip2` it is a wasi:cli command component, which tests use as "a component without the HTTP export".

fn main() {
    print!("Content-Type: text/plain\n\nhello from cgi\n");
}
