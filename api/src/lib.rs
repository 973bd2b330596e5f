//! The surfaces of a shoal node on its management listener: the management API
//! ([`mgmt`]) and, beside it, the Consul-compatible API ([`consul`]).
//!
//! This crate knows HTTP and JSON and nothing else does (but the gateway, which speaks HTTP
//! on its own listener): each surface turns requests into calls of the node's domain API
//! ([`shoal_node::Node`]) and maps [`shoal_node::Error`] to its own wire format, once
//! (`error.rs` for the management API's JSON, `consul/mod.rs` for Consul's plain text).
//! `auth.rs` holds both token rules; the peer routes ([`peer`]), which nodes of a cluster
//! call on each other, take the cluster's secret instead. `metrics.rs` serves `GET /metrics`
//! (Prometheus' OpenMetrics text) behind the management token rule; `ui.rs` the dashboard
//! (`/ui`, a page embedded in the binary, and the status stream it follows).

pub mod consul;
pub mod error;
pub mod kube;
pub mod mgmt;
pub mod peer;

mod auth;
mod logs;
mod metrics;
mod ui;

pub use self::auth::check_exposure;
pub use self::mgmt::app;
