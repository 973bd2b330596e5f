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
//! Every node-level answer also carries Consul's `serfHealth` check, passing: this node is the
//! agent, and it is alive if it answers.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Value, json};
use shoal_registry::{CheckRecord, CheckStatus, Probe, Registration};

use super::decode::format_go_duration;
use super::{ConsulError, ConsulResult, Query, blocking, read_json};
use crate::node::{Node, Route};

/// One provider of a service name, with its checks, whatever its kind.
struct Instance {
    service: Value,
    /// Fields of a catalog entry that the agent view does not have.
    catalog_extra: Value,
    tags: Vec<String>,
    checks: Vec<Value>,
    statuses: Vec<CheckStatus>,
}

/// The agent's view of a registered instance (`/v1/agent/services`).
pub(super) fn agent_service_view(node: &Node, registration: &Registration) -> Value {
    let mut view = json!({
        "ID": registration.id,
        "Service": registration.name,
        "Tags": registration.tags,
        "Meta": registration.meta,
        "Port": registration.port,
        "Address": registration.address,
        "Weights": {"Passing": registration.weights.passing, "Warning": registration.weights.warning},
        "EnableTagOverride": registration.enable_tag_override,
        "Datacenter": node.config().datacenter,
    });
    if !registration.tagged_addresses.is_empty() {
        view["TaggedAddresses"] = tagged_addresses_view(registration);
    }
    if !registration.socket_path.is_empty() {
        view["SocketPath"] = registration.socket_path.clone().into();
    }
    view
}

fn tagged_addresses_view(registration: &Registration) -> Value {
    registration
        .tagged_addresses
        .iter()
        .map(|(tag, address)| {
            (
                tag.clone(),
                json!({"Address": address.address, "Port": address.port}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A check as `/v1/agent/checks` and `/v1/health/*` show it.
pub(super) fn health_check_view(node: &Node, check: &CheckRecord) -> Value {
    let definition = &check.definition;
    let (interval, timeout) = match &definition.probe {
        Probe::Ttl { .. } => (String::new(), String::new()),
        Probe::Http {
            interval, timeout, ..
        }
        | Probe::Tcp {
            interval, timeout, ..
        } => (format_go_duration(*interval), format_go_duration(*timeout)),
    };
    json!({
        "Node": node.consul_node().name,
        "CheckID": definition.id,
        "Name": definition.name,
        "Status": check.status.as_str(),
        "Notes": definition.notes,
        "Output": check.output,
        "ServiceID": definition.service_id.clone().unwrap_or_default(),
        "ServiceName": check.service_name,
        "ServiceTags": check.service_tags,
        "Type": definition.probe.kind(),
        "Interval": interval,
        "Timeout": timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": check.create_index,
        "ModifyIndex": check.modify_index,
    })
}

/// The node's own check: it answers, so it is alive.
fn serf_health(node: &Node) -> Value {
    json!({
        "Node": node.consul_node().name,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

/// The node, as catalog and health entries embed it.
fn node_view(node: &Node) -> Value {
    let consul = node.consul_node();
    json!({
        "ID": consul.id,
        "Node": consul.name,
        "Address": consul.address,
        "Datacenter": node.config().datacenter,
        "TaggedAddresses": {
            "lan": consul.address, "lan_ipv4": consul.address,
            "wan": consul.address, "wan_ipv4": consul.address,
        },
        "Meta": {"consul-network-segment": ""},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

/// Whether `?node-meta=key:value` filters (all of them) match this node's meta.
fn node_meta_matches(query: &Query) -> bool {
    query.all("node-meta").iter().all(|pair| {
        let (key, value) = pair.split_once(':').unwrap_or((pair, ""));
        key == "consul-network-segment" && value.is_empty()
    })
}

/// The instances of a registered name, with their checks.
fn registered_instances(node: &Node, name: &str) -> Vec<Instance> {
    let catalog = node.catalog();
    catalog
        .snapshot
        .registrations
        .iter()
        .filter(|r| r.name == name)
        .map(|registration| {
            let checks: Vec<&CheckRecord> = catalog
                .snapshot
                .checks
                .iter()
                .filter(|c| c.definition.service_id.as_deref() == Some(registration.id.as_str()))
                .collect();
            let mut service = agent_service_view(node, registration);
            service["CreateIndex"] = registration.create_index.into();
            service["ModifyIndex"] = registration.modify_index.into();
            Instance {
                catalog_extra: json!({
                    "ServiceTaggedAddresses": tagged_addresses_view(registration),
                    "CreateIndex": registration.create_index,
                    "ModifyIndex": registration.modify_index,
                }),
                service,
                tags: registration.tags.clone(),
                checks: checks.iter().map(|c| health_check_view(node, c)).collect(),
                statuses: checks.iter().map(|c| c.status).collect(),
            }
        })
        .collect()
}

/// The instances of a wasm service: its replicas, at the gateway.
fn wasm_instances(node: &Node, name: &str, route: &Route) -> Vec<Instance> {
    let replicas = route.pool.status().replicas;
    let gateway = node.gateway_addr();
    let address = gateway.map(|a| a.ip().to_string()).unwrap_or_default();
    let port = gateway.map_or(0, |a| a.port());
    let tags = vec!["wasm".to_owned()];
    let meta = json!({
        "shoal-kind": "wasm",
        "shoal-module": route.spec.module.to_string(),
        "shoal-module-kind": route.pool.service().kind().as_str(),
        "shoal-revision": route.revision.to_string(),
        "shoal-replicas": replicas.to_string(),
        "shoal-path": format!("/{name}/"),
        "shoal-host": format!("{name}.{}", node.config().domain),
    });
    (1..=replicas.max(1))
        .map(|n| {
            let id = format!("{name}-{n}");
            let output = if replicas == 0 {
                "scaled to zero: the next request starts a replica".to_owned()
            } else {
                format!("replica {n} of {replicas} is serving")
            };
            let check = json!({
                "Node": node.consul_node().name,
                "CheckID": format!("shoal:replica:{id}"),
                "Name": "wasm replica",
                "Status": "passing",
                "Notes": "",
                "Output": output,
                "ServiceID": id,
                "ServiceName": name,
                "ServiceTags": tags,
                "Type": "shoal",
                "Interval": "",
                "Timeout": "",
                "ExposedPort": 0,
                "Definition": {},
                "CreateIndex": route.change_index,
                "ModifyIndex": route.change_index,
            });
            Instance {
                service: json!({
                    "ID": id,
                    "Service": name,
                    "Tags": tags,
                    "Meta": meta,
                    "Port": port,
                    "Address": address,
                    "Weights": {"Passing": 1, "Warning": 1},
                    "EnableTagOverride": false,
                    "Datacenter": node.config().datacenter,
                    "CreateIndex": route.change_index,
                    "ModifyIndex": route.change_index,
                }),
                catalog_extra: json!({
                    "ServiceTaggedAddresses": {},
                    "CreateIndex": route.change_index,
                    "ModifyIndex": route.change_index,
                }),
                tags: tags.clone(),
                checks: vec![check],
                statuses: vec![CheckStatus::Passing],
            }
        })
        .collect()
}

/// Every provider of `name`, registered or wasm.
fn instances(node: &Node, name: &str) -> Vec<Instance> {
    match node.route(name) {
        Some(route) => wasm_instances(node, name, &route),
        None => registered_instances(node, name),
    }
}

/// Keeps the instances carrying every `?tag=`.
fn with_tags(instances: Vec<Instance>, query: &Query) -> Vec<Instance> {
    let wanted = query.all("tag");
    instances
        .into_iter()
        .filter(|i| wanted.iter().all(|tag| i.tags.iter().any(|t| t == tag)))
        .collect()
}

/// The index of a catalog read: the newest change to which services exist.
fn catalog_index(node: &Node) -> u64 {
    node.catalog().snapshot.indexes.catalog
}

/// The index of a health read: the newest change to services, checks or replicas.
fn health_index(node: &Node) -> u64 {
    let indexes = node.catalog().snapshot.indexes;
    indexes.catalog.max(indexes.health)
}

/// `GET /v1/catalog/services`: every name, with the union of its instances' tags.
pub(super) async fn services(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let (services, index) = blocking(&node, &query, || async {
        let index = catalog_index(&node);
        let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if node_meta_matches(&query) {
            for registration in &node.catalog().snapshot.registrations {
                services
                    .entry(registration.name.clone())
                    .or_default()
                    .extend(registration.tags.iter().cloned());
            }
            for name in node.routes().keys() {
                services
                    .entry(name.clone())
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
    let query = Query::parse(raw.as_deref());
    let (entries, index) = blocking(&node, &query, || async {
        let index = catalog_index(&node);
        if !node_meta_matches(&query) {
            return Ok((Vec::new(), index));
        }
        let node_view = node_view(&node);
        let entries: Vec<Value> = with_tags(instances(&node, &name), &query)
            .into_iter()
            .map(|instance| {
                let service = &instance.service;
                json!({
                    "ID": node_view["ID"],
                    "Node": node_view["Node"],
                    "Address": node_view["Address"],
                    "Datacenter": node_view["Datacenter"],
                    "TaggedAddresses": node_view["TaggedAddresses"],
                    "NodeMeta": node_view["Meta"],
                    "ServiceKind": "",
                    "ServiceID": service["ID"],
                    "ServiceName": service["Service"],
                    "ServiceTags": service["Tags"],
                    "ServiceAddress": service["Address"],
                    "ServiceTaggedAddresses": instance.catalog_extra["ServiceTaggedAddresses"],
                    "ServiceWeights": service["Weights"],
                    "ServiceMeta": service["Meta"],
                    "ServicePort": service["Port"],
                    "ServiceSocketPath": service.get("SocketPath").cloned().unwrap_or_else(|| "".into()),
                    "ServiceEnableTagOverride": service["EnableTagOverride"],
                    "CreateIndex": instance.catalog_extra["CreateIndex"],
                    "ModifyIndex": instance.catalog_extra["ModifyIndex"],
                })
            })
            .collect();
        Ok((entries, index))
    })
    .await?;
    Ok(read_json(&query, &entries, index))
}

/// `GET /v1/catalog/nodes`: this one node.
pub(super) async fn nodes(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let (nodes, index) = blocking(&node, &query, || async {
        let nodes = if node_meta_matches(&query) {
            vec![node_view(&node)]
        } else {
            Vec::new()
        };
        Ok((nodes, catalog_index(&node)))
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
    let query = Query::parse(raw.as_deref());
    let passing = query.flag("passing")?;
    let (entries, index) = blocking(&node, &query, || async {
        let index = health_index(&node);
        if !node_meta_matches(&query) {
            return Ok((Vec::new(), index));
        }
        let node_view = node_view(&node);
        let entries: Vec<Value> = with_tags(instances(&node, &name), &query)
            .into_iter()
            .filter(|i| !passing || i.statuses.iter().all(|s| *s == CheckStatus::Passing))
            .map(|instance| {
                let mut checks = vec![serf_health(&node)];
                checks.extend(instance.checks);
                let mut service = instance.service;
                if let Some(object) = service.as_object_mut() {
                    object.remove("Datacenter");
                }
                json!({"Node": node_view, "Service": service, "Checks": checks})
            })
            .collect();
        Ok((entries, index))
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
    let query = Query::parse(raw.as_deref());
    let (checks, index) = blocking(&node, &query, || async {
        let checks: Vec<Value> = instances(&node, &name)
            .into_iter()
            .flat_map(|i| i.checks)
            .collect();
        Ok((checks, health_index(&node)))
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
    let query = Query::parse(raw.as_deref());
    let wanted =
        match state.as_str() {
            "any" => None,
            other => Some(other.parse::<CheckStatus>().map_err(|_| {
                ConsulError::bad_request(format!("Invalid check state: {other:?}"))
            })?),
        };
    let (checks, index) = blocking(&node, &query, || async {
        let index = health_index(&node);
        let mut checks = Vec::new();
        if wanted.is_none_or(|s| s == CheckStatus::Passing) {
            checks.push(serf_health(&node));
        }
        for check in &node.catalog().snapshot.checks {
            if wanted.is_none_or(|s| s == check.status) {
                checks.push(health_check_view(&node, check));
            }
        }
        if wanted.is_none_or(|s| s == CheckStatus::Passing) {
            for (name, route) in node.routes().iter() {
                checks.extend(
                    wasm_instances(&node, name, route)
                        .into_iter()
                        .flat_map(|i| i.checks),
                );
            }
        }
        Ok((checks, index))
    })
    .await?;
    Ok(read_json(&query, &checks, index))
}
