//! The node views: who the agent is (`/v1/agent/self`, `/v1/agent/members`), the datacenters,
//! and what is on one node (`/v1/catalog/node/{node}`, `/v1/catalog/node-services/{node}`,
//! `/v1/health/node/{node}`).
//!
//! Tools ask these before anything else: Prometheus' Consul discovery reads
//! `Config.Datacenter` from `/v1/agent/self` whenever its config names no datacenter, Go's
//! `NodeName()` reads `Config.NodeName` (and panics on anything but a string), Patroni reads
//! `Config.SessionTTLMin`, and the Go client decodes the whole answer as an object of objects,
//! so every top-level value here is an object.
//!
//! In a cluster every node is a member; what is on a node is what its agent API registered,
//! and wasm services show on the node answering, as the catalog's other views show them
//! (`catalog_health.rs`).

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json as object};
use shoal_node::Node;

use super::catalog_health::{
    Instance, every_node, health_check, node_view, registered_instances_where, serf_health,
    wasm_instances,
};
use super::wire::{self, AgentService, HealthCheck};
use super::{ConsulNode, ConsulResult, Query, blocking, filter, filtered, json, read_json};

/// The Consul version whose API shoal answers as; clients compare it to decide what to call.
pub(super) const CONSUL_VERSION: &str = "1.17.0";

/// Serf's LAN port, which members report.
const SERF_LAN_PORT: u16 = 8301;

/// A member of the node's LAN pool, as `/v1/agent/members` and `Member` show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    name: String,
    addr: String,
    port: u16,
    tags: BTreeMap<&'static str, String>,
    /// Serf's status: 1 alive, 4 failed.
    status: u8,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

fn member(consul: &ConsulNode, alive: bool) -> Member {
    let tags = BTreeMap::from([
        ("acls", "0".to_owned()),
        ("build", format!("{CONSUL_VERSION}:shoal")),
        ("dc", consul.datacenter.clone()),
        ("id", consul.id.clone()),
        ("port", "8300".to_owned()),
        ("raft_vsn", "3".to_owned()),
        ("role", "consul".to_owned()),
        ("segment", String::new()),
        ("vsn", "2".to_owned()),
        ("vsn_max", "3".to_owned()),
        ("vsn_min", "2".to_owned()),
    ]);
    Member {
        name: consul.name.clone(),
        addr: consul.address.clone(),
        port: SERF_LAN_PORT,
        tags,
        status: if alive { 1 } else { 4 },
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    }
}

/// `GET /v1/agent/self`: the agent's configuration, its member entry and its stats.
pub(super) async fn agent_self(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let consul = ConsulNode::of(&node);
    let catalog = node.catalog();
    let own_services = catalog
        .snapshot
        .registrations
        .iter()
        .filter(|r| node.owns(&r.node))
        .count();
    let own_checks = catalog
        .snapshot
        .checks
        .iter()
        .filter(|c| node.owns(&c.definition.node))
        .count();
    let leader = node.is_leader();
    let known_nodes = every_node(&node, &consul).len();
    let version = env!("CARGO_PKG_VERSION");
    // In nanoseconds in `Config`, where Patroni reads it; as a Go duration in `DebugConfig`.
    let ttl_min = node.config().session_ttl_min;
    let ttl_min_nanos = u64::try_from(ttl_min.as_nanos()).unwrap_or(u64::MAX);
    let answer: BTreeMap<&str, Value> = BTreeMap::from([
        (
            "Config",
            object!({
                "Datacenter": consul.datacenter,
                "PrimaryDatacenter": consul.datacenter,
                "NodeName": consul.name,
                "NodeID": consul.id,
                "Server": true,
                "Version": CONSUL_VERSION,
                "VersionPrerelease": "",
                "VersionMetadata": "",
                "Revision": format!("shoal-{version}"),
                "BuildDate": "",
                "SessionTTLMin": ttl_min_nanos,
            }),
        ),
        (
            "DebugConfig",
            object!({
                "Datacenter": consul.datacenter,
                "NodeName": consul.name,
                "NodeID": consul.id,
                "AdvertiseAddrLAN": consul.address,
                "SessionTTLMin": super::decode::format_go_duration(ttl_min),
                "ServerMode": true,
            }),
        ),
        (
            "Coord",
            object!({"Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}),
        ),
        (
            "Member",
            serde_json::to_value(member(&consul, true)).expect("members serialize"),
        ),
        (
            "Stats",
            object!({
                "agent": {
                    "services": own_services.to_string(),
                    "checks": own_checks.to_string(),
                },
                "consul": {
                    "server": "true",
                    "leader": leader.to_string(),
                    "known_datacenters": "1",
                    "known_servers": known_nodes.to_string(),
                },
                "runtime": {
                    "arch": std::env::consts::ARCH,
                    "os": std::env::consts::OS,
                },
                "shoal": {"version": version},
            }),
        ),
        ("Meta", object!({"consul-network-segment": ""})),
    ]);
    Ok(json(&query, &answer))
}

/// `GET /v1/agent/members`: every node of the cluster (this node alone when it is alone),
/// failed ones included, as Serf lists them.
pub(super) async fn members(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let consul = ConsulNode::of(&node);
    let members: Vec<Member> = every_node(&node, &consul)
        .iter()
        .map(|(other, alive)| member(other, *alive))
        .collect();
    Ok(json(&query, &members))
}

/// `GET /v1/catalog/datacenters`: the one datacenter shoal serves.
pub(super) async fn datacenters(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    Ok(json(&query, &[&node.config().datacenter]))
}

/// The node named `name`, if it is this node or a member of its cluster, with whether it is
/// alive.
fn find_node(node: &Node, consul: &ConsulNode, name: &str) -> Option<(ConsulNode, bool)> {
    every_node(node, consul)
        .into_iter()
        .find(|(other, _)| other.name == name)
}

/// The instances on the node `on`: what its agent API registered, and on the node answering,
/// the wasm services' replicas.
fn instances_on(node: &Node, consul: &ConsulNode, on: &ConsulNode) -> Vec<Instance> {
    let local = on.name == consul.name;
    let mut instances = registered_instances_where(node, consul, |r| {
        if local {
            node.owns(&r.node)
        } else {
            r.node == on.name
        }
    });
    if local {
        for wasm in node.wasm_services() {
            instances.extend(wasm_instances(node, consul, &wasm));
        }
    }
    instances
}

/// An instance as a node's listing shows it: with its indexes, without the datacenter.
fn listed(instance: Instance) -> AgentService {
    let mut service = instance.service;
    service.datacenter = None;
    service
}

/// `GET /v1/catalog/node/{node}`: the node and its instances by ID; `null` for an unknown
/// node, as Consul answers.
pub(super) async fn catalog_node(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct NodeServices {
        node: wire::Node,
        services: BTreeMap<String, AgentService>,
    }
    let query = Query::parse(raw.as_deref());
    let consul = ConsulNode::of(&node);
    let (answer, index) = blocking(&node, &query, || async {
        let index = node.indexes().catalog;
        let answer = find_node(&node, &consul, &name).map(|(on, _)| NodeServices {
            node: node_view(&on),
            services: instances_on(&node, &consul, &on)
                .into_iter()
                .map(|instance| {
                    let service = listed(instance);
                    (service.id.clone(), service)
                })
                .collect(),
        });
        Ok((answer, index))
    })
    .await?;
    Ok(read_json(&query, &answer, index))
}

/// `GET /v1/catalog/node-services/{node}`: the node and its instances as a list; for an
/// unknown node, `{"Node": null, "Services": []}`, as Consul answers.
pub(super) async fn catalog_node_services(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct NodeServiceList {
        node: Option<wire::Node>,
        services: Vec<AgentService>,
    }
    let query = Query::parse(raw.as_deref());
    let consul = ConsulNode::of(&node);
    let (answer, index) = blocking(&node, &query, || async {
        let index = node.indexes().catalog;
        let answer = match find_node(&node, &consul, &name) {
            Some((on, _)) => NodeServiceList {
                node: Some(node_view(&on)),
                services: instances_on(&node, &consul, &on)
                    .into_iter()
                    .map(listed)
                    .collect(),
            },
            None => NodeServiceList {
                node: None,
                services: Vec::new(),
            },
        };
        Ok((answer, index))
    })
    .await?;
    Ok(read_json(&query, &answer, index))
}

/// `GET /v1/health/node/{node}`: the node's own check (`serfHealth`) and every check on it;
/// `[]` for an unknown node.
pub(super) async fn health_node(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::HEALTH_CHECK)?;
    let consul = ConsulNode::of(&node);
    let (checks, index) = blocking(&node, &query, || async {
        let indexes = node.indexes();
        let index = indexes.catalog.max(indexes.health);
        let Some((on, alive)) = find_node(&node, &consul, &name) else {
            return Ok((Vec::new(), index));
        };
        let local = on.name == consul.name;
        let mut checks: Vec<HealthCheck> = vec![serf_health(&on, alive)];
        checks.extend(
            node.catalog()
                .snapshot
                .checks
                .iter()
                .filter(|c| {
                    if local {
                        node.owns(&c.definition.node)
                    } else {
                        c.definition.node == on.name
                    }
                })
                .map(|c| health_check(&on, c)),
        );
        if local {
            for wasm in node.wasm_services() {
                checks.extend(
                    wasm_instances(&node, &consul, &wasm)
                        .into_iter()
                        .flat_map(|i| i.checks),
                );
            }
        }
        Ok((filtered(filter.as_ref(), checks), index))
    })
    .await?;
    Ok(read_json(&query, &checks, index))
}
