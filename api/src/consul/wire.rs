//! The JSON shapes the Consul API answers in, as typed structs in Consul's spelling
//! (PascalCase, `ID`), so a field cannot be misspelled or left out by accident.
//!
//! Shapes follow what Consul 1.x answers and what its clients read (the Go `api` package,
//! `py-consul`, `python-consul`); see `../shared/reference/consul-and-kubernetes-wire.md`.

use std::collections::BTreeMap;

use serde::Serialize;

/// An address and port, as in `TaggedAddresses`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddressPort {
    pub(crate) address: String,
    pub(crate) port: u16,
}

/// Load-balancing weights by health.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Weights {
    pub(crate) passing: u32,
    pub(crate) warning: u32,
}

/// An instance as the agent shows it (`/v1/agent/services`), and as health entries embed it
/// (then with its indexes and without the datacenter).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AgentService {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) service: String,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) port: u16,
    pub(crate) address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) tagged_addresses: BTreeMap<String, AddressPort>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) socket_path: String,
    pub(crate) weights: Weights,
    pub(crate) enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) datacenter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) create_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) modify_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content_hash: Option<String>,
}

/// A check as `/v1/agent/checks` and `/v1/health/*` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthCheck {
    pub(crate) node: String,
    #[serde(rename = "CheckID")]
    pub(crate) check_id: String,
    pub(crate) name: String,
    pub(crate) status: &'static str,
    pub(crate) notes: String,
    pub(crate) output: String,
    #[serde(rename = "ServiceID")]
    pub(crate) service_id: String,
    pub(crate) service_name: String,
    pub(crate) service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub(crate) kind: &'static str,
    pub(crate) interval: String,
    pub(crate) timeout: String,
    pub(crate) exposed_port: u16,
    pub(crate) definition: Empty,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// `{}`: a field clients expect, which shoal has nothing to put in.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Empty {}

/// The node, as catalog and health entries embed it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Node {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) address: String,
    pub(crate) datacenter: String,
    pub(crate) tagged_addresses: BTreeMap<String, String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// One instance of a name, flat with its node, as `/v1/catalog/service/{name}` lists them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CatalogService {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) address: String,
    pub(crate) datacenter: String,
    pub(crate) tagged_addresses: BTreeMap<String, String>,
    pub(crate) node_meta: BTreeMap<String, String>,
    pub(crate) service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    pub(crate) service_id: String,
    pub(crate) service_name: String,
    pub(crate) service_tags: Vec<String>,
    pub(crate) service_address: String,
    pub(crate) service_tagged_addresses: BTreeMap<String, AddressPort>,
    pub(crate) service_weights: Weights,
    pub(crate) service_meta: BTreeMap<String, String>,
    pub(crate) service_port: u16,
    pub(crate) service_socket_path: String,
    pub(crate) service_enable_tag_override: bool,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}

/// One instance with its node and checks, as `/v1/health/service/{name}` lists them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceEntry {
    pub(crate) node: Node,
    pub(crate) service: AgentService,
    pub(crate) checks: Vec<HealthCheck>,
}

/// A key/value entry; the value is base64, and `null` when empty.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvPair {
    pub(crate) lock_index: u64,
    pub(crate) key: String,
    pub(crate) flags: u64,
    pub(crate) value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) session: Option<String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
}
