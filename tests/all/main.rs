//! End-to-end tests: one binary, one module per theme, each test a real node.

mod bad_input;
mod cache;
mod cluster;
mod cluster_faults;
mod consul;
mod consul_agent;
mod consul_gateway;
mod consul_health;
mod consul_kv;
mod consul_sessions;
mod dev;
mod etcd_store;
mod guests;
mod kubernetes;
mod management;
mod process;
mod reconcile;
mod routing;
mod scaling;
mod tidy;
mod tiers;
