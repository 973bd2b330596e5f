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
//!
//! Nodes that run no shoal are registered here too (`/v1/catalog/register`, Consul's
//! "external nodes", as consul-esm and Terraform keep them): they have no `serfHealth`, and
//! their checks hold the state their registrant writes, since nothing here probes them.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json as object};
use shoal_node::Node;
use shoal_registry::{CheckDefinition, CheckStatus, ExternalNode, Probe, Registration};

use super::agent::{TAGGED_ADDRESS, TaggedAddressBody, WEIGHTS, WeightsBody, check_tenancy};
use super::catalog_health::{
    Instance, every_node, health_check, node_health, node_view, registered_instances_where,
    wasm_instances,
};
use super::decode::{Field, Shape, aliased, decode, field};
use super::wire::{self, AgentService, HealthCheck};
use super::{
    ConsulError, ConsulNode, ConsulResult, Query, blocking, filter, filtered, json, read_json,
};

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
    let known_nodes = node.nodes().len();
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
    // Serf's members: the nodes of the cluster, not those registered through the catalog.
    let members: Vec<Member> = every_node(&node, &consul)
        .iter()
        .filter(|(other, _)| !other.is_registered())
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
        let mut checks: Vec<HealthCheck> = node_health(&on, alive).into_iter().collect();
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

const CATALOG_SERVICE: &[Field] = &[
    field("ID", Shape::Plain),
    field("Service", Shape::Plain),
    field("Tags", Shape::Plain),
    field("Address", Shape::Plain),
    aliased(
        "TaggedAddresses",
        &["tagged_addresses"],
        Shape::MapOf(TAGGED_ADDRESS),
    ),
    field("Meta", Shape::Plain),
    field("Port", Shape::Plain),
    field("SocketPath", Shape::Plain),
    field("Weights", Shape::Object(WEIGHTS)),
    aliased("EnableTagOverride", &["enable_tag_override"], Shape::Plain),
    field("Kind", Shape::Plain),
    field("Proxy", Shape::Plain),
    field("Connect", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
    field("Locality", Shape::Plain),
];

const CATALOG_CHECK: &[Field] = &[
    field("Node", Shape::Plain),
    field("CheckID", Shape::Plain),
    field("ID", Shape::Plain),
    field("Name", Shape::Plain),
    field("Status", Shape::Plain),
    field("Notes", Shape::Plain),
    field("Output", Shape::Plain),
    aliased("ServiceID", &["service_id"], Shape::Plain),
    field("ServiceName", Shape::Plain),
    field("ServiceTags", Shape::Plain),
    field("Type", Shape::Plain),
    field("Definition", Shape::Plain),
    field("Interval", Shape::Plain),
    field("Timeout", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
];

const REGISTER: &[Field] = &[
    field("ID", Shape::Plain),
    field("Node", Shape::Plain),
    field("Address", Shape::Plain),
    field("Datacenter", Shape::Plain),
    aliased("TaggedAddresses", &["tagged_addresses"], Shape::Plain),
    aliased("NodeMeta", &["node_meta"], Shape::Plain),
    field("Service", Shape::Object(CATALOG_SERVICE)),
    field("Check", Shape::Object(CATALOG_CHECK)),
    field("Checks", Shape::ArrayOf(CATALOG_CHECK)),
    field("SkipNodeUpdate", Shape::Plain),
    field("WriteRequest", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
    field("Locality", Shape::Plain),
];

const DEREGISTER: &[Field] = &[
    field("Node", Shape::Plain),
    field("ServiceID", Shape::Plain),
    field("CheckID", Shape::Plain),
    field("Datacenter", Shape::Plain),
    field("WriteRequest", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RegisterBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    node: Option<String>,
    address: Option<String>,
    datacenter: Option<String>,
    tagged_addresses: Option<BTreeMap<String, String>>,
    node_meta: Option<BTreeMap<String, String>>,
    service: Option<CatalogServiceBody>,
    check: Option<CatalogCheckBody>,
    checks: Option<Vec<CatalogCheckBody>>,
    #[allow(
        dead_code,
        reason = "a node update is always cheap here; accepted as Consul does"
    )]
    skip_node_update: Option<bool>,
    #[allow(
        dead_code,
        reason = "its token is read from the request, as for every route"
    )]
    write_request: Option<Value>,
    namespace: Option<String>,
    partition: Option<String>,
    #[allow(dead_code, reason = "advisory locality, accepted and not acted on")]
    locality: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogServiceBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    service: Option<String>,
    tags: Option<Vec<String>>,
    address: Option<String>,
    tagged_addresses: Option<BTreeMap<String, TaggedAddressBody>>,
    meta: Option<BTreeMap<String, String>>,
    port: Option<u16>,
    socket_path: Option<String>,
    weights: Option<WeightsBody>,
    enable_tag_override: Option<bool>,
    kind: Option<String>,
    proxy: Option<Value>,
    connect: Option<Value>,
    namespace: Option<String>,
    partition: Option<String>,
    #[allow(dead_code, reason = "advisory locality, accepted and not acted on")]
    locality: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogCheckBody {
    node: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    #[serde(rename = "ID")]
    id: Option<String>,
    name: Option<String>,
    status: Option<String>,
    notes: Option<String>,
    #[allow(
        dead_code,
        reason = "a registered check's output starts empty, as its state is set"
    )]
    output: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[allow(dead_code, reason = "the service ID says which instance it checks")]
    service_name: Option<String>,
    #[allow(dead_code, reason = "the service ID says which instance it checks")]
    service_tags: Option<Vec<String>>,
    #[allow(
        dead_code,
        reason = "nothing here probes a catalog check, whatever its type"
    )]
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[allow(
        dead_code,
        reason = "kept for consul-esm, which probes; shoal does not"
    )]
    definition: Option<Value>,
    #[allow(dead_code, reason = "nothing here probes a catalog check")]
    interval: Option<Value>,
    #[allow(dead_code, reason = "nothing here probes a catalog check")]
    timeout: Option<Value>,
    namespace: Option<String>,
    partition: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct DeregisterBody {
    node: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    datacenter: Option<String>,
    #[allow(
        dead_code,
        reason = "its token is read from the request, as for every route"
    )]
    write_request: Option<Value>,
    namespace: Option<String>,
    partition: Option<String>,
}

/// Refuses another datacenter, and Enterprise namespaces and partitions.
fn check_scope(
    node: &Node,
    datacenter: Option<&str>,
    namespace: Option<&str>,
    partition: Option<&str>,
) -> ConsulResult<()> {
    if let Some(dc) = datacenter
        && !dc.is_empty()
        && dc != node.config().datacenter
    {
        return Err(ConsulError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No path to datacenter",
        ));
    }
    check_tenancy(namespace, partition)
}

/// A check registered through the catalog: its state is what it says, critical by default.
fn catalog_check(body: CatalogCheckBody, node_name: &str) -> ConsulResult<CheckDefinition> {
    check_tenancy(body.namespace.as_deref(), body.partition.as_deref())?;
    if let Some(node) = body.node.as_deref()
        && !node.is_empty()
        && node != node_name
    {
        return Err(ConsulError::bad_request(format!(
            "Invalid check: the check's Node {node:?} is not the node registered ({node_name:?})"
        )));
    }
    let status = match body.status.as_deref() {
        None | Some("") => CheckStatus::Critical,
        Some(text) => text
            .parse::<CheckStatus>()
            .map_err(|_| ConsulError::bad_request(format!("Invalid check status: '{text}'")))?,
    };
    let service_id = body.service_id.filter(|id| !id.is_empty());
    let name = body.name.filter(|n| !n.is_empty());
    let id = body
        .check_id
        .or(body.id)
        .filter(|id| !id.is_empty())
        .or(name.clone())
        .ok_or_else(|| ConsulError::bad_request("Invalid check: missing CheckID and Name"))?;
    Ok(CheckDefinition {
        name: name.unwrap_or_else(|| id.clone()),
        id,
        service_id,
        notes: body.notes.unwrap_or_default(),
        probe: Probe::External,
        status: Some(status),
        deregister_critical_after: None,
        node: node_name.to_owned(),
    })
}

/// `PUT /v1/catalog/register`: a node that runs no shoal (an "external node"), with an
/// instance on it and checks whose state the registrant sets, in one change; `true`.
pub(super) async fn catalog_register(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let body: RegisterBody = decode(&body, REGISTER).map_err(ConsulError::bad_request)?;
    check_scope(
        &node,
        body.datacenter.as_deref(),
        body.namespace.as_deref(),
        body.partition.as_deref(),
    )?;
    let name = body.node.unwrap_or_default();
    if name.is_empty() {
        return Err(ConsulError::bad_request("Missing node name"));
    }
    let address = body.address.unwrap_or_default();
    if address.is_empty() {
        return Err(ConsulError::bad_request("Missing node address"));
    }
    let external = match node.external_node(&name) {
        // Consul's SkipNodeUpdate: a check or an instance added without touching the node's
        // address or meta (consul-esm finds its nodes by their meta).
        Some(existing) if body.skip_node_update == Some(true) => existing,
        _ => ExternalNode {
            version: shoal_registry::SCHEMA_VERSION,
            name: name.clone(),
            id: body.id.unwrap_or_default(),
            address,
            tagged_addresses: body.tagged_addresses.unwrap_or_default(),
            meta: body.node_meta.unwrap_or_default(),
            create_index: 0,
            modify_index: 0,
        },
    };
    let registration = match body.service {
        None => None,
        Some(service) => {
            check_tenancy(service.namespace.as_deref(), service.partition.as_deref())?;
            if service
                .kind
                .as_deref()
                .is_some_and(|k| !k.is_empty() && k != "typical")
                || service.proxy.as_ref().is_some_and(|v| !v.is_null())
                || service.connect.as_ref().is_some_and(|v| !v.is_null())
            {
                return Err(ConsulError::bad_request(
                    "Connect (service mesh) is not supported by shoal",
                ));
            }
            let service_name = service.service.unwrap_or_default();
            if service_name.is_empty() {
                return Err(ConsulError::bad_request(
                    "Invalid service: missing Service name",
                ));
            }
            let id = service
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| service_name.clone());
            // Instance IDs are one namespace across the store: another node's stays its own.
            let taken = node
                .catalog()
                .snapshot
                .registrations
                .iter()
                .find(|r| r.id == id && r.node != name)
                .map(|r| r.node.clone());
            if let Some(other) = taken {
                let other = if node.owns(&other) {
                    node.config().node_name.clone()
                } else {
                    other
                };
                return Err(ConsulError::bad_request(format!(
                    "Invalid service: ID {id:?} is registered on node {other:?}"
                )));
            }
            let weights = WeightsBody::or_default(service.weights);
            Some(Registration {
                id,
                tags: service.tags.unwrap_or_default(),
                address: service.address.unwrap_or_default(),
                port: service.port.unwrap_or_default(),
                meta: service.meta.unwrap_or_default(),
                tagged_addresses: service
                    .tagged_addresses
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(tag, tagged)| (tag, tagged.into_tagged()))
                    .collect(),
                weights,
                enable_tag_override: service.enable_tag_override.unwrap_or_default(),
                socket_path: service.socket_path.unwrap_or_default(),
                ..Registration::new(service_name)
            })
        }
    };
    let service_id = registration.as_ref().map(|r| r.id.clone());
    // One check per ID: a later one replaces an earlier one, as successive registrations do.
    let mut checks: Vec<CheckDefinition> = Vec::new();
    for check in body
        .check
        .into_iter()
        .chain(body.checks.unwrap_or_default())
    {
        let check = catalog_check(check, &name)?;
        checks.retain(|earlier| earlier.id != check.id);
        checks.push(check);
    }
    // Check IDs are one namespace across the store: another node's check stays its own.
    for check in &checks {
        let catalog = node.catalog();
        if let Some(other) = catalog
            .snapshot
            .checks
            .iter()
            .find(|c| c.definition.id == check.id && c.definition.node != name)
        {
            let owner = if node.owns(&other.definition.node) {
                node.config().node_name.clone()
            } else {
                other.definition.node.clone()
            };
            return Err(ConsulError::bad_request(format!(
                "Invalid check: CheckID {:?} is registered on node {owner:?}",
                check.id
            )));
        }
    }
    // A check naming no instance checks the node, as in Consul; one naming the instance
    // being registered, or one registered earlier on this node, checks it.
    for check in &checks {
        if let Some(id) = &check.service_id
            && Some(id) != service_id.as_ref()
            && !node
                .catalog()
                .snapshot
                .registrations
                .iter()
                .any(|r| r.id == *id && r.node == name)
        {
            return Err(ConsulError::bad_request(format!(
                "Invalid check: ServiceID {id:?} is not an instance of node {name:?}"
            )));
        }
    }
    node.register_node(external, registration, checks)
        .await
        .map_err(|error| match error {
            shoal_node::Error::Invalid(field) => ConsulError::bad_request(field.reason),
            other => other.into(),
        })?;
    Ok(json(&query, &true))
}

/// `PUT /v1/catalog/deregister`: a node of the catalog with everything on it, or one of its
/// instances (`ServiceID`) or checks (`CheckID`); `true`.
pub(super) async fn catalog_deregister(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let body: DeregisterBody = decode(&body, DEREGISTER).map_err(ConsulError::bad_request)?;
    check_scope(
        &node,
        body.datacenter.as_deref(),
        body.namespace.as_deref(),
        body.partition.as_deref(),
    )?;
    let name = body.node.unwrap_or_default();
    if name.is_empty() {
        return Err(ConsulError::bad_request("Missing node name"));
    }
    if node.is_shoal_node(&name) {
        return Err(ConsulError::bad_request(format!(
            "{name:?} is a shoal node: deregister its services through its agent (/v1/agent/service/deregister)"
        )));
    }
    let catalog = node.catalog();
    match (
        body.service_id.filter(|id| !id.is_empty()),
        body.check_id.filter(|id| !id.is_empty()),
    ) {
        (Some(id), _) => {
            if catalog
                .snapshot
                .registrations
                .iter()
                .any(|r| r.id == id && r.node == name)
            {
                node.deregister_service(&id).await?;
            }
        }
        (None, Some(id)) => {
            if catalog
                .snapshot
                .checks
                .iter()
                .any(|c| c.definition.id == id && c.definition.node == name)
            {
                node.deregister_check(&id).await?;
            }
        }
        (None, None) => {
            node.deregister_node(&name).await?;
        }
    }
    Ok(json(&query, &true))
}
