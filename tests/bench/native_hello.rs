//! The physical limit for the benchmarks: a native axum server answering what the hello
//! component answers, on the same machine and the same loopback.
//!
//! `native-hello 127.0.0.1:PORT`; it prints `listening on ADDR` once bound.

use axum::Router;
use axum::http::header;
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().fallback(get(|| async {
        ([(header::CONTENT_TYPE, "text/plain")], "hello from wasm\n")
    }));
    axum::serve(listener, app).await?;
    Ok(())
}
