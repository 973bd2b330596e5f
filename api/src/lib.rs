//! shoal: a WebAssembly orchestrator with a registry and a gateway, in one binary.
//!
//! This crate is the only one that knows HTTP and JSON. It puts the `shoal-runtime`
//! (wasmtime) and `shoal-registry` (redb) crates behind two listeners:
//! - the management API ([`mgmt::app`]): upload modules, deploy services, inspect; with the
//!   Consul-compatible API ([`consul`]) beside it, for registration, discovery, health and KV;
//! - the gateway ([`gateway::handle`]): call a service by name, wasm or registered.
//!
//! [`serve`] runs both on listeners the caller has bound, until a shutdown future
//! resolves, so tests run a whole node on `127.0.0.1:0`. The `shoal` binary
//! (`main.rs`, `cli.rs`) is a thin layer of flags and client commands on top.

pub mod catalog;
mod checks;
pub mod cli;
pub mod consul;
pub mod error;
pub mod gateway;
pub mod mgmt;
pub mod node;

use std::future::Future;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use node::{Node, NodeConfig};
pub use shoal_runtime::{Resources, ScaleSettings};

/// Serves the management API on `api` and the gateway on `gateway` until `shutdown`
/// resolves, then lets in-flight requests finish for up to the node's shutdown
/// timeout.
///
/// Refuses to serve the management API on a non-loopback address without a token:
/// whoever reaches it can run code on this machine.
pub async fn serve(
    node: Node,
    api: TcpListener,
    gateway: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let api_addr = api
        .local_addr()
        .context("reading the API listener's address")?;
    check_exposure(api_addr, node.config().token.is_some())?;
    let gateway_addr = gateway
        .local_addr()
        .context("reading the gateway listener's address")?;
    node.set_gateway_addr(gateway_addr);
    tracing::info!(api = %api_addr, gateway = %gateway_addr, "shoal is serving");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let api_app = mgmt::app(node.clone()).layer(TraceLayer::new_for_http());
    // Responses are written as they are produced (a head, then chunks): with Nagle's
    // algorithm on, the last small write waits for the client's delayed ACK, tens of
    // milliseconds. Both listeners send at once.
    let api = api.tap_io(|stream| set_nodelay(stream));
    let api_server = axum::serve(
        api,
        api_app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(until_stopped(stopped.clone()));
    let gateway_server = gateway::serve(node.clone(), gateway, until_stopped(stopped));
    let mut api_task = tokio::spawn(async move { api_server.await });
    let mut gateway_task = tokio::spawn(gateway_server);

    tokio::select! {
        () = shutdown => {}
        result = &mut api_task => return result?.context("management API server failed"),
        result = &mut gateway_task => return result?.context("gateway server failed"),
    }
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    let _ = stop.send(true);
    let deadline = node.config().shutdown_timeout;
    let drained = tokio::time::timeout(deadline, async {
        let _ = (&mut api_task).await;
        let _ = (&mut gateway_task).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(timeout = ?deadline, "requests still in flight at the shutdown deadline; stopping anyway");
        api_task.abort();
        gateway_task.abort();
    }
    node.shutdown().await;
    Ok(())
}

fn set_nodelay(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// Refuses a non-loopback management address when there is no token.
pub fn check_exposure(api_addr: std::net::SocketAddr, has_token: bool) -> anyhow::Result<()> {
    if !api_addr.ip().is_loopback() && !has_token {
        anyhow::bail!(
            "refusing to serve the management API on {api_addr} without a token: \
             anyone who reaches it can run code here; pass --token or set SHOAL_TOKEN"
        );
    }
    Ok(())
}
