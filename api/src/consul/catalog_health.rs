//! `/v1/catalog/*` and `/v1/health/*`: discovery, over both kinds of service.
//!
//! `provider_count = request_count / consumer_count`, in the seed's words: discovery answers a
//! consumer with the providers of a name. Two kinds of provider share the names:
//! - instances registered through the agent API, each with its checks;
//! - wasm services deployed on this node, whose replicas are their instances, all at the
//!   gateway's address (tagged `wasm`, with `shoal-*` meta saying how to reach them), each with
//!   one passing check. A service scaled to zero shows one instance, since its next request
//!   starts a replica.
//!
//! Every node-level answer also carries Consul's `serfHealth` check: passing for this node
//! (it answers, so it is alive) and for the live nodes of its cluster, critical for a node
//! whose membership lapsed, whose instances `?passing` then leaves out, as Consul does.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use shoal_node::{Node, WasmService};
use shoal_registry::{CheckRecord, CheckStatus, Probe, Registration};

use super::decode::format_go_duration;
use super::wire::{self, AddressPort, AgentService, CatalogService, HealthCheck, ServiceEntry};
use super::{ConsulError, ConsulNode, ConsulResult, Query, blocking, filter, filtered, read_json};

/// One provider of a service name, with its checks, whatever its kind.
pub(super) struct Instance {
    /// The node it is on.
    pub(super) node: ConsulNode,
    /// Whether that node is alive.
    pub(super) alive: bool,
    /// As the agent shows it, with its indexes.
    pub(super) service: AgentService,
    pub(super) create_index: u64,
    pub(super) modify_index: u64,
    /// Its own checks.
    pub(super) checks: Vec<HealthCheck>,
    /// Its node's checks but `serfHealth` (maintenance mode among them), which Consul lists
    /// with an instance's and counts in its health.
    pub(super) node_checks: Vec<HealthCheck>,
    /// The status of each of both, and a critical one for a dead node.
    pub(super) statuses: Vec<CheckStatus>,
}

fn tagged_addresses(registration: &Registration) -> BTreeMap<String, AddressPort> {
    registration
        .tagged_addresses
        .iter()
        .map(|(tag, address)| {
            (
                tag.clone(),
                AddressPort {
                    address: address.address.clone(),
                    port: address.port,
                },
            )
        })
        .collect()
}

/// The agent's view of a registered instance (`/v1/agent/services`).
pub(super) fn agent_service(consul: &ConsulNode, registration: &Registration) -> AgentService {
    AgentService {
        id: registration.id.clone(),
        service: registration.name.clone(),
        tags: registration.tags.clone(),
        meta: registration.meta.clone(),
        port: registration.port,
        address: registration.address.clone(),
        tagged_addresses: tagged_addresses(registration),
        socket_path: registration.socket_path.clone(),
        weights: wire::Weights {
            passing: registration.weights.passing,
            warning: registration.weights.warning,
        },
        enable_tag_override: registration.enable_tag_override,
        datacenter: Some(consul.datacenter.clone()),
        create_index: None,
        modify_index: None,
        content_hash: None,
    }
}

/// A check as `/v1/agent/checks` and `/v1/health/*` show it.
pub(super) fn health_check(consul: &ConsulNode, check: &CheckRecord) -> HealthCheck {
    let definition = &check.definition;
    let (interval, timeout) = match &definition.probe {
        Probe::Ttl { .. } | Probe::Maintenance | Probe::External => (String::new(), String::new()),
        Probe::Http {
            interval, timeout, ..
        }
        | Probe::Tcp {
            interval, timeout, ..
        } => (format_go_duration(*interval), format_go_duration(*timeout)),
    };
    HealthCheck {
        node: consul.name.clone(),
        check_id: shoal_node::consul_check_id(&definition.id).to_owned(),
        name: definition.name.clone(),
        status: check.status.as_str(),
        notes: definition.notes.clone(),
        output: check.output.clone(),
        service_id: definition.service_id.clone().unwrap_or_default(),
        service_name: check.service_name.clone(),
        service_tags: check.service_tags.clone(),
        kind: definition.probe.kind(),
        interval,
        timeout,
        exposed_port: 0,
        definition: wire::Empty {},
        create_index: check.create_index,
        modify_index: check.modify_index,
    }
}

/// A node's own check: passing while it is alive.
pub(super) fn serf_health(consul: &ConsulNode, alive: bool) -> HealthCheck {
    HealthCheck {
        node: consul.name.clone(),
        check_id: "serfHealth".into(),
        name: "Serf Health Status".into(),
        status: if alive { "passing" } else { "critical" },
        notes: String::new(),
        output: if alive {
            "Agent alive and reachable".into()
        } else {
            "Agent not live or unreachable".into()
        },
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        kind: "",
        interval: String::new(),
        timeout: String::new(),
        exposed_port: 0,
        definition: wire::Empty {},
        create_index: 1,
        modify_index: 1,
    }
}

/// The node, as catalog and health entries embed it.
pub(super) fn node_view(consul: &ConsulNode) -> wire::Node {
    let address = &consul.address;
    if let Some(external) = &consul.catalog {
        return wire::Node {
            id: consul.id.clone(),
            node: consul.name.clone(),
            address: address.clone(),
            datacenter: consul.datacenter.clone(),
            tagged_addresses: external.tagged_addresses.clone(),
            meta: external.meta.clone(),
            create_index: external.create_index,
            modify_index: external.modify_index,
        };
    }
    wire::Node {
        id: consul.id.clone(),
        node: consul.name.clone(),
        address: address.clone(),
        datacenter: consul.datacenter.clone(),
        tagged_addresses: ["lan", "lan_ipv4", "wan", "wan_ipv4"]
            .into_iter()
            .map(|tag| (tag.to_owned(), address.clone()))
            .collect(),
        meta: BTreeMap::from([("consul-network-segment".to_owned(), String::new())]),
        create_index: 1,
        modify_index: 1,
    }
}

/// This node, then the other nodes of its cluster by name, each with whether it is alive,
/// then the nodes registered through the catalog.
pub(super) fn every_node(node: &Node, consul: &ConsulNode) -> Vec<(ConsulNode, bool)> {
    let mut nodes = vec![(consul.clone(), true)];
    for view in node.nodes().into_iter().filter(|view| !view.local) {
        nodes.push((ConsulNode::peer(node, consul, &view.name), view.alive));
    }
    for external in &node.catalog().snapshot.nodes {
        nodes.push((ConsulNode::registered(consul, external.clone()), true));
    }
    nodes
}

/// The node's own check, for a shoal node (a node of the catalog has none).
pub(super) fn node_health(consul: &ConsulNode, alive: bool) -> Option<HealthCheck> {
    (!consul.is_registered()).then(|| serf_health(consul, alive))
}

/// Whether `?node-meta=key:value` filters (all of them) match the meta of `on`.
fn node_meta_matches_node(query: &Query, on: &ConsulNode) -> bool {
    let meta = node_view(on).meta;
    query.all("node-meta").iter().all(|pair| {
        let (key, value) = pair.split_once(':').unwrap_or((pair, ""));
        meta.get(key).is_some_and(|found| found == value)
    })
}

/// Whether `?node-meta=key:value` filters (all of them) match a shoal node's meta.
fn node_meta_matches(query: &Query) -> bool {
    query.all("node-meta").iter().all(|pair| {
        let (key, value) = pair.split_once(':').unwrap_or((pair, ""));
        key == "consul-network-segment" && value.is_empty()
    })
}

/// The instances of a registered name, with their checks.
fn registered_instances(node: &Node, consul: &ConsulNode, name: &str) -> Vec<Instance> {
    registered_instances_where(node, consul, |r| r.name == name)
}

/// The registered instances `keep` keeps, each with its checks and its node's.
pub(super) fn registered_instances_where(
    node: &Node,
    consul: &ConsulNode,
    keep: impl Fn(&Registration) -> bool,
) -> Vec<Instance> {
    let catalog = node.catalog();
    catalog
        .snapshot
        .registrations
        .iter()
        .filter(|r| keep(r))
        .map(|registration| {
            let checks: Vec<&CheckRecord> = catalog
                .snapshot
                .checks
                .iter()
                .filter(|c| c.definition.service_id.as_deref() == Some(registration.id.as_str()))
                .collect();
            let node_checks: Vec<&CheckRecord> = catalog
                .snapshot
                .checks
                .iter()
                .filter(|c| {
                    c.definition.service_id.is_none() && c.definition.node == registration.node
                })
                .collect();
            let owner = ConsulNode::owner(node, consul, &registration.node);
            let alive = node.node_alive(&registration.node);
            let mut service = agent_service(&owner, registration);
            service.create_index = Some(registration.create_index);
            service.modify_index = Some(registration.modify_index);
            let mut statuses: Vec<CheckStatus> = checks
                .iter()
                .chain(&node_checks)
                .map(|c| c.status)
                .collect();
            if !alive {
                statuses.push(CheckStatus::Critical);
            }
            Instance {
                checks: checks.iter().map(|c| health_check(&owner, c)).collect(),
                node_checks: node_checks
                    .iter()
                    .map(|c| health_check(&owner, c))
                    .collect(),
                node: owner,
                alive,
                service,
                create_index: registration.create_index,
                modify_index: registration.modify_index,
                statuses,
            }
        })
        .collect()
}

/// The instances of a wasm service: its replicas, at the gateway.
pub(super) fn wasm_instances(
    node: &Node,
    consul: &ConsulNode,
    wasm: &WasmService,
) -> Vec<Instance> {
    let name = wasm.record.name.as_str();
    let replicas = wasm.replicas;
    let index = wasm.record.change_index;
    let gateway = node.gateway_addr();
    let address = gateway.map(|a| a.ip().to_string()).unwrap_or_default();
    let port = gateway.map_or(0, |a| a.port());
    let tags = vec!["wasm".to_owned()];
    let meta: BTreeMap<String, String> = [
        ("shoal-kind", "wasm".to_owned()),
        ("shoal-module", wasm.record.spec.module.to_string()),
        ("shoal-module-kind", wasm.kind.to_string()),
        ("shoal-revision", wasm.record.revision.to_string()),
        ("shoal-replicas", replicas.to_string()),
        ("shoal-path", format!("/{name}/")),
        ("shoal-host", format!("{name}.{}", node.config().domain)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    (1..=replicas.max(1))
        .map(|n| {
            let id = format!("{name}-{n}");
            let output = if replicas == 0 {
                "scaled to zero: the next request starts a replica".to_owned()
            } else {
                format!("replica {n} of {replicas} is serving")
            };
            let check = HealthCheck {
                node: consul.name.clone(),
                check_id: format!("shoal:replica:{id}"),
                name: "wasm replica".into(),
                status: "passing",
                notes: String::new(),
                output,
                service_id: id.clone(),
                service_name: name.to_owned(),
                service_tags: tags.clone(),
                kind: "shoal",
                interval: String::new(),
                timeout: String::new(),
                exposed_port: 0,
                definition: wire::Empty {},
                create_index: index,
                modify_index: index,
            };
            Instance {
                node: consul.clone(),
                alive: true,
                service: AgentService {
                    id,
                    service: name.to_owned(),
                    tags: tags.clone(),
                    meta: meta.clone(),
                    port,
                    address: address.clone(),
                    tagged_addresses: BTreeMap::new(),
                    socket_path: String::new(),
                    weights: wire::Weights {
                        passing: 1,
                        warning: 1,
                    },
                    enable_tag_override: false,
                    datacenter: Some(consul.datacenter.clone()),
                    create_index: Some(index),
                    modify_index: Some(index),
                    content_hash: None,
                },
                create_index: index,
                modify_index: index,
                checks: vec![check],
                node_checks: Vec::new(),
                statuses: vec![CheckStatus::Passing],
            }
        })
        .collect()
}

/// Every provider of `name`, registered or wasm.
fn instances(node: &Node, consul: &ConsulNode, name: &str) -> Vec<Instance> {
    match node.wasm_service(name) {
        Some(wasm) => wasm_instances(node, consul, &wasm),
        None => registered_instances(node, consul, name),
    }
}

/// Keeps the instances carrying every `?tag=`.
fn with_tags(instances: Vec<Instance>, query: &Query) -> Vec<Instance> {
    let wanted = query.all("tag");
    instances
        .into_iter()
        .filter(|i| {
            wanted
                .iter()
                .all(|tag| i.service.tags.iter().any(|t| t == tag))
        })
        .collect()
}

/// The index of a catalog read: the newest change to which services exist. Read before the
/// data, so the data is never older than the index a client goes on to wait past.
fn catalog_index(node: &Node) -> u64 {
    node.indexes().catalog
}

/// The index of a health read of every name: the newest change to services, checks or
/// replicas.
fn health_index(node: &Node) -> u64 {
    let indexes = node.indexes();
    indexes.catalog.max(indexes.health)
}

/// An instance flat with its node, as `/v1/catalog/service/{name}` lists them.
fn catalog_entry(instance: Instance) -> CatalogService {
    let node_view = node_view(&instance.node);
    let service = instance.service;
    CatalogService {
        id: node_view.id,
        node: node_view.node,
        address: node_view.address,
        datacenter: node_view.datacenter,
        tagged_addresses: node_view.tagged_addresses,
        node_meta: node_view.meta,
        service_kind: "",
        service_id: service.id,
        service_name: service.service,
        service_tags: service.tags,
        service_address: service.address,
        service_tagged_addresses: service.tagged_addresses,
        service_weights: service.weights,
        service_meta: service.meta,
        service_port: service.port,
        service_socket_path: service.socket_path,
        service_enable_tag_override: service.enable_tag_override,
        create_index: instance.create_index,
        modify_index: instance.modify_index,
    }
}

/// `GET /v1/catalog/services`: every name, with the union of its instances' tags; with a
/// filter, the names of the instances it keeps (as Consul 1.14 and later filter).
pub(super) async fn services(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::CATALOG_SERVICE)?;
    let consul = ConsulNode::of(&node);
    let (services, index) = blocking(&node, &query, || async {
        let index = catalog_index(&node);
        let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if let Some(filter) = &filter {
            let names: BTreeSet<String> = node
                .catalog()
                .snapshot
                .registrations
                .iter()
                .map(|r| r.name.clone())
                .chain(
                    node.wasm_services()
                        .iter()
                        .map(|w| w.record.name.to_string()),
                )
                .collect();
            for name in names {
                let entries: Vec<CatalogService> = instances(&node, &consul, &name)
                    .into_iter()
                    .map(catalog_entry)
                    .collect();
                for entry in filtered(Some(filter), entries) {
                    services
                        .entry(entry.service_name)
                        .or_default()
                        .extend(entry.service_tags);
                }
            }
        } else if node_meta_matches(&query) {
            for registration in &node.catalog().snapshot.registrations {
                services
                    .entry(registration.name.clone())
                    .or_default()
                    .extend(registration.tags.iter().cloned());
            }
            for wasm in node.wasm_services() {
                services
                    .entry(wasm.record.name.to_string())
                    .or_default()
                    .insert("wasm".into());
            }
        }
        Ok((services, index))
    })
    .await?;
    Ok(read_json(&query, &services, index))
}

/// `GET /v1/catalog/service/{name}[?tag=]`: the instances of a name, flat, as Consul's catalog
/// gives them.
pub(super) async fn service(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::CATALOG_SERVICE)?;
    let consul = ConsulNode::of(&node);
    let (entries, index) = blocking(&node, &query, || async {
        let index = catalog_index(&node);
        if !node_meta_matches(&query) {
            return Ok((Vec::new(), index));
        }
        let entries: Vec<CatalogService> = with_tags(instances(&node, &consul, &name), &query)
            .into_iter()
            .map(catalog_entry)
            .collect();
        Ok((filtered(filter.as_ref(), entries), index))
    })
    .await?;
    Ok(read_json(&query, &entries, index))
}

/// `GET /v1/catalog/nodes`: this node, and the other nodes of its cluster.
pub(super) async fn nodes(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::NODE)?;
    let consul = ConsulNode::of(&node);
    let (nodes, index) = blocking(&node, &query, || async {
        let index = catalog_index(&node);
        let nodes: Vec<wire::Node> = every_node(&node, &consul)
            .iter()
            .filter(|(other, _)| node_meta_matches_node(&query, other))
            .map(|(other, _)| node_view(other))
            .collect();
        Ok((filtered(filter.as_ref(), nodes), index))
    })
    .await?;
    Ok(read_json(&query, &nodes, index))
}

/// `GET /v1/health/service/{name}[?passing][&tag=]`: instances with their node and checks;
/// `passing` drops every instance with any check not passing. An unknown name is `200 []`.
pub(super) async fn health_service(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::SERVICE_ENTRY)?;
    let passing = query.flag("passing")?;
    let consul = ConsulNode::of(&node);
    let (entries, index) = blocking(&node, &query, || async {
        // Per name, as Consul's: a change to another service does not answer a watcher.
        let index = node.health_index(&name);
        if !node_meta_matches(&query) {
            return Ok((Vec::new(), index));
        }
        let entries: Vec<ServiceEntry> = with_tags(instances(&node, &consul, &name), &query)
            .into_iter()
            .filter(|i| !passing || i.statuses.iter().all(|s| *s == CheckStatus::Passing))
            .map(|instance| {
                let mut checks: Vec<HealthCheck> = node_health(&instance.node, instance.alive)
                    .into_iter()
                    .collect();
                // The node's checks first, as Consul lists them.
                checks.extend(instance.node_checks);
                checks.extend(instance.checks);
                let mut service = instance.service;
                service.datacenter = None;
                ServiceEntry {
                    node: node_view(&instance.node),
                    service,
                    checks,
                }
            })
            .collect();
        Ok((filtered(filter.as_ref(), entries), index))
    })
    .await?;
    Ok(read_json(&query, &entries, index))
}

/// `GET /v1/health/checks/{name}`: the checks of every instance of a name.
pub(super) async fn health_checks(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::HEALTH_CHECK)?;
    let consul = ConsulNode::of(&node);
    let (checks, index) = blocking(&node, &query, || async {
        let index = node.health_index(&name);
        let checks: Vec<HealthCheck> = instances(&node, &consul, &name)
            .into_iter()
            .flat_map(|i| i.checks)
            .collect();
        Ok((filtered(filter.as_ref(), checks), index))
    })
    .await?;
    Ok(read_json(&query, &checks, index))
}

/// `GET /v1/health/state/{state}`: every check in `passing`, `warning` or `critical`, or
/// `any`.
pub(super) async fn health_state(
    State(node): State<Node>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::HEALTH_CHECK)?;
    let wanted =
        match state.as_str() {
            "any" => None,
            other => Some(other.parse::<CheckStatus>().map_err(|_| {
                ConsulError::bad_request(format!("Invalid check state: {other:?}"))
            })?),
        };
    let consul = ConsulNode::of(&node);
    let (checks, index) = blocking(&node, &query, || async {
        let index = health_index(&node);
        let mut checks = Vec::new();
        for (other, alive) in every_node(&node, &consul) {
            if let Some(serf) = node_health(&other, alive)
                && wanted.is_none_or(|s| s.as_str() == serf.status)
            {
                checks.push(serf);
            }
        }
        for check in &node.catalog().snapshot.checks {
            if wanted.is_none_or(|s| s == check.status) {
                let owner = ConsulNode::owner(&node, &consul, &check.definition.node);
                checks.push(health_check(&owner, check));
            }
        }
        if wanted.is_none_or(|s| s == CheckStatus::Passing) {
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
