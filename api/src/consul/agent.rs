//! `/v1/agent/*`: registering service instances and checks, and TTL reports.
//!
//! Register and deregister answer 200 with an empty body, as Consul does; the Python clients
//! treat anything but exactly 200 as failure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_registry::{CheckDefinition, CheckStatus, Probe, Registration, TaggedAddress, Weights};

use shoal_node::Node;

use super::catalog_health::{agent_service, health_check, registered_instances_where};
use super::decode::{Field, GoDuration, Shape, aliased, decode, field};
use super::wire::{AgentService, HealthCheck};
use super::{ConsulError, ConsulNode, ConsulResult, Query, filter, filtered, json, ok_empty};

/// How long an HTTP or TCP check may take when its definition does not say, as in Consul.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a TTL note kept as the check's output.
const MAX_OUTPUT: usize = 4096;

pub(super) const WEIGHTS: &[Field] = &[
    field("Passing", Shape::Plain),
    field("Warning", Shape::Plain),
];

pub(super) const TAGGED_ADDRESS: &[Field] =
    &[field("Address", Shape::Plain), field("Port", Shape::Plain)];

/// The fields of a check, in a service registration or on its own.
const CHECK: &[Field] = &[
    field("CheckID", Shape::Plain),
    field("ID", Shape::Plain),
    field("Name", Shape::Plain),
    field("Notes", Shape::Plain),
    aliased("ServiceID", &["service_id"], Shape::Plain),
    field("Status", Shape::Plain),
    aliased("ScriptArgs", &["args", "script_args"], Shape::Plain),
    field("Script", Shape::Plain),
    field("HTTP", Shape::Plain),
    field("Header", Shape::Plain),
    field("Method", Shape::Plain),
    field("Body", Shape::Plain),
    field("DisableRedirects", Shape::Plain),
    field("TCP", Shape::Plain),
    field("TCPUseTLS", Shape::Plain),
    field("UDP", Shape::Plain),
    field("OSService", Shape::Plain),
    field("Interval", Shape::Plain),
    field("Timeout", Shape::Plain),
    field("TTL", Shape::Plain),
    aliased("DockerContainerID", &["docker_container_id"], Shape::Plain),
    field("Shell", Shape::Plain),
    field("GRPC", Shape::Plain),
    aliased("GRPCUseTLS", &["grpc_use_tls"], Shape::Plain),
    field("H2PING", Shape::Plain),
    field("H2PingUseTLS", Shape::Plain),
    aliased("TLSServerName", &["tls_server_name"], Shape::Plain),
    aliased("TLSSkipVerify", &["tls_skip_verify"], Shape::Plain),
    field("AliasNode", Shape::Plain),
    field("AliasService", Shape::Plain),
    field("SuccessBeforePassing", Shape::Plain),
    field("FailuresBeforeWarning", Shape::Plain),
    field("FailuresBeforeCritical", Shape::Plain),
    aliased(
        "DeregisterCriticalServiceAfter",
        &["deregister_critical_service_after"],
        Shape::Plain,
    ),
    field("OutputMaxSize", Shape::Plain),
    field("Token", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
];

/// The fields of a service registration.
const SERVICE: &[Field] = &[
    field("Kind", Shape::Plain),
    field("ID", Shape::Plain),
    field("Name", Shape::Plain),
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
    field("Check", Shape::Object(CHECK)),
    field("Checks", Shape::ArrayOf(CHECK)),
    field("Token", Shape::Plain),
    aliased("EnableTagOverride", &["enable_tag_override"], Shape::Plain),
    field("Proxy", Shape::Plain),
    field("Connect", Shape::Plain),
    field("Locality", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
];

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ServiceBody {
    kind: Option<String>,
    #[serde(rename = "ID")]
    id: Option<String>,
    name: Option<String>,
    tags: Option<Vec<String>>,
    address: Option<String>,
    tagged_addresses: Option<BTreeMap<String, TaggedAddressBody>>,
    meta: Option<BTreeMap<String, String>>,
    port: Option<u16>,
    socket_path: Option<String>,
    weights: Option<WeightsBody>,
    check: Option<CheckBody>,
    checks: Option<Vec<Option<CheckBody>>>,
    #[allow(
        dead_code,
        reason = "accepted, as Consul does; the node's token is what counts"
    )]
    token: Option<String>,
    enable_tag_override: Option<bool>,
    proxy: Option<Value>,
    connect: Option<Value>,
    #[allow(dead_code, reason = "advisory locality, accepted and not acted on")]
    locality: Option<Value>,
    namespace: Option<String>,
    partition: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TaggedAddressBody {
    address: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct WeightsBody {
    passing: Option<u32>,
    warning: Option<u32>,
}

impl WeightsBody {
    /// The weights, each 1 where not given, as in Consul.
    pub(super) fn or_default(body: Option<WeightsBody>) -> Weights {
        body.map_or_else(Weights::default, |w| Weights {
            passing: w.passing.unwrap_or(1),
            warning: w.warning.unwrap_or(1),
        })
    }
}

impl TaggedAddressBody {
    pub(super) fn into_tagged(self) -> TaggedAddress {
        TaggedAddress {
            address: self.address.unwrap_or_default(),
            port: self.port.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CheckBody {
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    #[serde(rename = "ID")]
    id: Option<String>,
    name: Option<String>,
    notes: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    status: Option<String>,
    script_args: Option<Value>,
    script: Option<Value>,
    #[serde(rename = "HTTP")]
    http: Option<String>,
    header: Option<BTreeMap<String, Vec<String>>>,
    method: Option<String>,
    body: Option<String>,
    #[allow(
        dead_code,
        reason = "shoal never follows redirects, so either value holds"
    )]
    disable_redirects: Option<bool>,
    #[serde(rename = "TCP")]
    tcp: Option<String>,
    #[serde(rename = "TCPUseTLS")]
    tcp_use_tls: Option<bool>,
    #[serde(rename = "UDP")]
    udp: Option<Value>,
    #[serde(rename = "OSService")]
    os_service: Option<Value>,
    interval: Option<GoDuration>,
    timeout: Option<GoDuration>,
    #[serde(rename = "TTL")]
    ttl: Option<GoDuration>,
    #[serde(rename = "DockerContainerID")]
    docker_container_id: Option<Value>,
    shell: Option<Value>,
    #[serde(rename = "GRPC")]
    grpc: Option<Value>,
    #[serde(rename = "GRPCUseTLS")]
    #[allow(dead_code, reason = "refused with GRPC")]
    grpc_use_tls: Option<bool>,
    #[serde(rename = "H2PING")]
    h2ping: Option<Value>,
    #[serde(rename = "H2PingUseTLS")]
    #[allow(dead_code, reason = "refused with H2PING")]
    h2ping_use_tls: Option<bool>,
    #[serde(rename = "TLSServerName")]
    #[allow(dead_code, reason = "shoal's checks speak plain HTTP")]
    tls_server_name: Option<String>,
    #[serde(rename = "TLSSkipVerify")]
    #[allow(dead_code, reason = "shoal's checks speak plain HTTP")]
    tls_skip_verify: Option<bool>,
    alias_node: Option<Value>,
    alias_service: Option<Value>,
    success_before_passing: Option<u32>,
    failures_before_warning: Option<u32>,
    failures_before_critical: Option<u32>,
    deregister_critical_service_after: Option<GoDuration>,
    output_max_size: Option<u64>,
    #[allow(
        dead_code,
        reason = "accepted, as Consul does; the node's token is what counts"
    )]
    token: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
}

/// Refuses an Enterprise namespace or partition other than the default.
pub(super) fn check_tenancy(namespace: Option<&str>, partition: Option<&str>) -> ConsulResult<()> {
    for (what, value) in [("namespace", namespace), ("partition", partition)] {
        if let Some(value) = value
            && !value.is_empty()
            && value != "default"
        {
            return Err(ConsulError::bad_request(format!(
                "{what} {value:?}: namespaces and partitions are a Consul Enterprise feature"
            )));
        }
    }
    Ok(())
}

fn is_unspecified(address: &str) -> bool {
    address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Where an instance registered with `address` is: the node's address when it gave none,
/// as Consul fills in.
fn instance_address(node: &Node, address: &str) -> String {
    if address.is_empty() {
        node.config().node_address.clone()
    } else {
        address.to_owned()
    }
}

/// Whether a check may probe `host`: the instance's own address, or this machine.
fn may_probe(host: &str, service_address: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == service_address
        || bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Turns a check body into a definition, applying Consul's validation and shoal's limits.
///
/// `service_address` is the address of the instance the check belongs to (empty for the node):
/// HTTP and TCP checks may probe only it, or loopback.
fn check_definition(
    body: CheckBody,
    id: String,
    name: String,
    service_id: Option<String>,
    service_address: &str,
) -> ConsulResult<CheckDefinition> {
    check_tenancy(body.namespace.as_deref(), body.partition.as_deref())?;
    let invalid = |reason: &str| ConsulError::bad_request(format!("Invalid check: {reason}"));
    let status = body
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<CheckStatus>()
                .map_err(|_| invalid(&format!("invalid check status {s:?}")))
        })
        .transpose()?;
    if body.script_args.is_some()
        || body.script.is_some()
        || body.shell.is_some()
        || body.docker_container_id.is_some()
    {
        return Err(invalid(
            "script checks are disabled: shoal runs no host commands; use an HTTP, TCP or TTL check",
        ));
    }
    for (given, kind) in [
        (body.grpc.is_some(), "GRPC"),
        (body.udp.is_some(), "UDP"),
        (body.h2ping.is_some(), "H2PING"),
        (body.os_service.is_some(), "OSService"),
        (
            body.alias_node.is_some() || body.alias_service.is_some(),
            "alias",
        ),
        (body.tcp_use_tls == Some(true), "TCP with TLS"),
    ] {
        if given {
            return Err(invalid(&format!(
                "{kind} checks are not supported by shoal; use an HTTP, TCP or TTL check"
            )));
        }
    }
    for (given, what) in [
        (
            body.success_before_passing.is_some_and(|n| n > 0),
            "SuccessBeforePassing",
        ),
        (
            body.failures_before_warning.is_some_and(|n| n > 0),
            "FailuresBeforeWarning",
        ),
        (
            body.failures_before_critical.is_some_and(|n| n > 0),
            "FailuresBeforeCritical",
        ),
        (body.output_max_size.is_some_and(|n| n > 0), "OutputMaxSize"),
    ] {
        if given {
            return Err(invalid(&format!("{what} is not supported by shoal")));
        }
    }
    let interval = body.interval.map(|d| d.0).filter(|d| !d.is_zero());
    let timeout = body
        .timeout
        .map(|d| d.0)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CHECK_TIMEOUT);
    let ttl = body.ttl.map(|d| d.0).filter(|d| !d.is_zero());
    let needs_interval =
        || invalid("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks");
    let probe = match (ttl, body.http, body.tcp) {
        (Some(_), _, _) if interval.is_some() => {
            return Err(invalid("Interval and TTL cannot both be specified"));
        }
        (Some(ttl), None, None) => Probe::Ttl { ttl },
        (None, Some(url), None) => {
            let interval = interval.ok_or_else(needs_interval)?;
            let parsed: axum::http::Uri = url
                .parse()
                .map_err(|_| invalid(&format!("HTTP check URL {url:?} does not parse")))?;
            match parsed.scheme_str() {
                Some("http") => {}
                Some("https") => {
                    return Err(invalid(
                        "HTTPS checks are not supported by this build of shoal; use http:// or a TCP check",
                    ));
                }
                _ => {
                    return Err(invalid(&format!(
                        "HTTP check URL {url:?} must start with http://"
                    )));
                }
            }
            let host = parsed.host().unwrap_or_default();
            if !may_probe(host, service_address) {
                return Err(invalid(&format!(
                    "HTTP check target {host:?} is not the instance's address: shoal probes only \
                     the address registered ({service_address:?}) or loopback"
                )));
            }
            let method = body
                .method
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into());
            if axum::http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(invalid(&format!("invalid HTTP method {method:?}")));
            }
            Probe::Http {
                url,
                method,
                headers: body.header.unwrap_or_default(),
                body: body.body.unwrap_or_default(),
                tls_skip_verify: false,
                interval,
                timeout,
            }
        }
        (None, None, Some(address)) => {
            let interval = interval.ok_or_else(needs_interval)?;
            let (host, port) = address.rsplit_once(':').ok_or_else(|| {
                invalid(&format!("TCP check address {address:?} is not host:port"))
            })?;
            if port.parse::<u16>().is_err() {
                return Err(invalid(&format!(
                    "TCP check address {address:?} has no valid port"
                )));
            }
            if !may_probe(host, service_address) {
                return Err(invalid(&format!(
                    "TCP check target {host:?} is not the instance's address: shoal probes only \
                     the address registered ({service_address:?}) or loopback"
                )));
            }
            Probe::Tcp {
                address,
                interval,
                timeout,
            }
        }
        (None, None, None) => {
            return Err(invalid(
                "Must provide TTL, or HTTP or TCP with an interval (shoal runs no other kinds)",
            ));
        }
        _ => return Err(invalid("a check has exactly one of TTL, HTTP and TCP")),
    };
    Ok(CheckDefinition {
        id,
        name,
        service_id,
        notes: body.notes.unwrap_or_default(),
        probe,
        status,
        deregister_critical_after: body.deregister_critical_service_after.map(|d| d.0),
        // Stamped by the node, which knows whether it shares its store.
        node: String::new(),
    })
}

/// `PUT /v1/agent/service/register[?replace-existing-checks]`.
pub(super) async fn register_service(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let replace_existing_checks = query.flag("replace-existing-checks")?;
    let body: ServiceBody = decode(&body, SERVICE).map_err(ConsulError::bad_request)?;
    check_tenancy(body.namespace.as_deref(), body.partition.as_deref())?;
    let name = body.name.unwrap_or_default();
    if name.is_empty() {
        return Err(ConsulError::bad_request("Missing service name"));
    }
    match body.kind.as_deref() {
        None | Some("" | "typical") => {}
        Some(kind) => {
            return Err(ConsulError::bad_request(format!(
                "service kind {kind:?} is not supported by shoal"
            )));
        }
    }
    if body.proxy.as_ref().is_some_and(|v| !v.is_null())
        || body.connect.as_ref().is_some_and(|v| !v.is_null())
    {
        return Err(ConsulError::bad_request(
            "Connect (service mesh) is not supported by shoal",
        ));
    }
    let address = body.address.unwrap_or_default();
    if is_unspecified(&address) {
        return Err(ConsulError::bad_request("Invalid service address"));
    }
    let mut tagged_addresses = BTreeMap::new();
    for (tag, tagged) in body.tagged_addresses.unwrap_or_default() {
        let tagged_address = tagged.address.unwrap_or_default();
        if is_unspecified(&tagged_address) {
            return Err(ConsulError::bad_request(format!(
                "Invalid tagged address {tag:?}"
            )));
        }
        tagged_addresses.insert(
            tag,
            TaggedAddress {
                address: tagged_address,
                port: tagged.port.unwrap_or_default(),
            },
        );
    }
    let weights = WeightsBody::or_default(body.weights);
    if weights.passing == 0 {
        return Err(ConsulError::bad_request(
            "Passing must be greater than 0 in Weights",
        ));
    }
    let id = body
        .id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let bodies: Vec<CheckBody> = body
        .check
        .into_iter()
        .chain(body.checks.unwrap_or_default().into_iter().flatten())
        .collect();
    let n_checks = bodies.len();
    let probe_address = instance_address(&node, &address);
    let mut checks = Vec::with_capacity(n_checks);
    for (n, check) in bodies.into_iter().enumerate() {
        let check_id = check
            .check_id
            .clone()
            .or(check.id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| {
                if n_checks == 1 {
                    format!("service:{id}")
                } else {
                    format!("service:{id}:{}", n + 1)
                }
            });
        let check_name = check
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("Service '{name}' check"));
        checks.push(check_definition(
            check,
            check_id,
            check_name,
            Some(id.clone()),
            &probe_address,
        )?);
    }
    let registration = Registration {
        id,
        tags: body.tags.unwrap_or_default(),
        address,
        port: body.port.unwrap_or_default(),
        meta: body.meta.unwrap_or_default(),
        tagged_addresses,
        weights,
        enable_tag_override: body.enable_tag_override.unwrap_or_default(),
        socket_path: body.socket_path.unwrap_or_default(),
        ..Registration::new(name)
    };
    node.register_service(registration, checks, replace_existing_checks)
        .await?;
    Ok(ok_empty())
}

/// `PUT /v1/agent/service/deregister/{id}`: removing an unknown ID is a no-op, as in Consul.
pub(super) async fn deregister_service(
    State(node): State<Node>,
    Path(id): Path<String>,
) -> ConsulResult<Response> {
    node.deregister_service(&id).await?;
    Ok(ok_empty())
}

/// `GET /v1/agent/services`: this node's registered instances, by ID.
pub(super) async fn services(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::AGENT_SERVICE)?;
    query.check_common(&node)?;
    let consul = ConsulNode::of(&node);
    let catalog = node.catalog();
    let services: Vec<AgentService> = catalog
        .snapshot
        .registrations
        .iter()
        // An agent lists what was registered through it.
        .filter(|r| node.owns(&r.node))
        .map(|r| agent_service(&consul, r))
        .collect();
    let services: BTreeMap<String, AgentService> = filtered(filter.as_ref(), services)
        .into_iter()
        .map(|service| (service.id.clone(), service))
        .collect();
    Ok(json(&query, &services))
}

/// `GET /v1/agent/service/{id}`, with the content hash Consul's hash-based blocking uses.
pub(super) async fn service(
    State(node): State<Node>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let catalog = node.catalog();
    let registration = catalog
        .snapshot
        .registrations
        .iter()
        .find(|r| r.id == id && node.owns(&r.node))
        .ok_or_else(|| {
            ConsulError::new(StatusCode::NOT_FOUND, format!("unknown service ID: {id}"))
        })?;
    let mut view = agent_service(&ConsulNode::of(&node), registration);
    let hash = {
        use sha2::Digest as _;
        let content = serde_json::to_vec(&view).expect("agent views always serialize");
        hex::encode(&sha2::Sha256::digest(&content)[..8])
    };
    view.content_hash = Some(hash.clone());
    let mut response = json(&query, &view);
    if let Ok(value) = HeaderValue::from_str(&hash) {
        response.headers_mut().insert("x-consul-contenthash", value);
    }
    Ok(response)
}

/// `GET /v1/agent/checks`: every check on this node, by ID.
pub(super) async fn checks(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let mut query = Query::parse(raw.as_deref());
    let filter = query.take_filter(filter::HEALTH_CHECK)?;
    query.check_common(&node)?;
    let consul = ConsulNode::of(&node);
    let catalog = node.catalog();
    let checks: Vec<HealthCheck> = catalog
        .snapshot
        .checks
        .iter()
        .filter(|c| node.owns(&c.definition.node))
        .map(|c| health_check(&consul, c))
        .collect();
    let checks: BTreeMap<String, HealthCheck> = filtered(filter.as_ref(), checks)
        .into_iter()
        .map(|check| (check.check_id.clone(), check))
        .collect();
    Ok(json(&query, &checks))
}

/// `PUT /v1/agent/check/register`: a check of a registered instance, or of the node.
pub(super) async fn register_check(
    State(node): State<Node>,
    body: Bytes,
) -> ConsulResult<Response> {
    let body: CheckBody = decode(&body, CHECK).map_err(ConsulError::bad_request)?;
    let name = body.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ConsulError::bad_request("Missing check name"));
    }
    let id = body
        .check_id
        .clone()
        .or(body.id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let service_id = body.service_id.clone().filter(|id| !id.is_empty());
    let service_address = match &service_id {
        Some(service_id) => {
            let catalog = node.catalog();
            let registration = catalog
                .snapshot
                .registrations
                .iter()
                .find(|r| &r.id == service_id)
                .ok_or_else(|| {
                    ConsulError::bad_request(format!("ServiceID {service_id:?} does not exist"))
                })?;
            instance_address(&node, &registration.address)
        }
        None => instance_address(&node, ""),
    };
    let definition = check_definition(body, id, name, service_id.clone(), &service_address)?;
    node.register_check(definition)
        .await
        .map_err(|error| match (service_id, error) {
            // The instance went away between the look-up and the write.
            (Some(service_id), shoal_node::Error::NotFound { .. }) => {
                ConsulError::bad_request(format!("ServiceID {service_id:?} does not exist"))
            }
            (_, error) => error.into(),
        })?;
    Ok(ok_empty())
}

/// `PUT /v1/agent/check/deregister/{id}`.
pub(super) async fn deregister_check(
    State(node): State<Node>,
    Path(id): Path<String>,
) -> ConsulResult<Response> {
    let removed = node.deregister_check(&id).await?;
    if !removed {
        return Err(ConsulError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            ),
        ));
    }
    Ok(ok_empty())
}

/// Caps a note or output at [`MAX_OUTPUT`] bytes, saying how much was kept, as Consul does.
fn truncate_output(mut output: String) -> String {
    if output.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        let total = output.len();
        output.truncate(end);
        output.push_str(&format!(" ... (captured {end} of {total} bytes)"));
    }
    output
}

const CHECK_UPDATE: &[Field] = &[field("Status", Shape::Plain), field("Output", Shape::Plain)];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckUpdateBody {
    status: Option<String>,
    output: Option<String>,
}

/// `PUT /v1/agent/check/update/{id}` with `{"Status", "Output"}`: a TTL report with its
/// status in the body (Go's `UpdateTTL`).
pub(super) async fn check_update(
    state: State<Node>,
    id: Path<String>,
    body: Bytes,
) -> ConsulResult<Response> {
    let body: CheckUpdateBody = decode(&body, CHECK_UPDATE).map_err(ConsulError::bad_request)?;
    let status = body.status.unwrap_or_default();
    let status = status
        .parse::<CheckStatus>()
        .map_err(|_| ConsulError::bad_request(format!("Invalid check status: '{status}'")))?;
    report(status, state, id, body.output.unwrap_or_default()).await
}

/// `PUT /v1/agent/check/{pass,warn,fail}/{id}?note=`: sets a TTL check's state and restarts
/// its clock. Any other check, or an unknown ID, is Consul's 500.
pub(super) async fn ttl_report(
    status: CheckStatus,
    state: State<Node>,
    id: Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let note = query.get("note").unwrap_or_default().to_owned();
    report(status, state, id, note).await
}

async fn report(
    status: CheckStatus,
    State(node): State<Node>,
    Path(id): Path<String>,
    output: String,
) -> ConsulResult<Response> {
    if !node
        .ttl_report(&id, status, truncate_output(output))
        .await?
    {
        return Err(ConsulError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CheckID {id:?} does not have associated TTL"),
        ));
    }
    Ok(ok_empty())
}

/// `?enable=` of the maintenance routes, which Consul requires.
fn enable_flag(query: &Query) -> ConsulResult<bool> {
    match query.get("enable") {
        None | Some("") => Err(ConsulError::bad_request("Missing value for enable")),
        Some(_) => query.flag("enable"),
    }
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=&reason=`: puts an instance registered
/// through this node in maintenance mode, or takes it out.
pub(super) async fn service_maintenance(
    State(node): State<Node>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let enable = enable_flag(&query)?;
    let reason = query.get("reason").unwrap_or_default().to_owned();
    let known = if enable {
        node.enable_maintenance(Some(&id), reason).await?
    } else {
        node.disable_maintenance(Some(&id)).await?
    };
    if !known {
        return Err(ConsulError::new(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {id:?}"),
        ));
    }
    Ok(ok_empty())
}

/// `PUT /v1/agent/maintenance?enable=&reason=`: puts this node in maintenance mode, which
/// fails every instance on it, or takes it out.
pub(super) async fn node_maintenance(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let enable = enable_flag(&query)?;
    if enable {
        let reason = query.get("reason").unwrap_or_default().to_owned();
        node.enable_maintenance(None, reason).await?;
    } else {
        node.disable_maintenance(None).await?;
    }
    Ok(ok_empty())
}

/// An instance's health as the agent sums it up (`/v1/agent/health/service/*`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentServiceHealth {
    aggregated_status: &'static str,
    service: AgentService,
    checks: Vec<HealthCheck>,
}

/// Sums up checks as Consul's `AggregatedStatus` does: maintenance first, then the worst
/// status; and the HTTP status the agent answers with it.
fn aggregated_status(checks: &[HealthCheck]) -> (&'static str, StatusCode) {
    let maintenance = checks.iter().any(|c| {
        c.check_id == shoal_node::NODE_MAINTENANCE
            || c.check_id
                .starts_with(shoal_node::SERVICE_MAINTENANCE_PREFIX)
    });
    let worst = |status: &str| checks.iter().any(|c| c.status == status);
    if maintenance {
        ("maintenance", StatusCode::SERVICE_UNAVAILABLE)
    } else if worst("critical") {
        ("critical", StatusCode::SERVICE_UNAVAILABLE)
    } else if worst("warning") {
        ("warning", StatusCode::TOO_MANY_REQUESTS)
    } else {
        ("passing", StatusCode::OK)
    }
}

/// The health of this node's instances that `keep` keeps, each with its checks and its node's.
fn agent_health(
    node: &Node,
    keep: impl Fn(&Registration) -> bool,
) -> Vec<(AgentServiceHealth, StatusCode)> {
    let consul = ConsulNode::of(node);
    registered_instances_where(node, &consul, |r| node.owns(&r.node) && keep(r))
        .into_iter()
        .map(|instance| {
            let mut checks = instance.node_checks;
            checks.extend(instance.checks);
            let (status, code) = aggregated_status(&checks);
            let mut service = instance.service;
            service.create_index = None;
            service.modify_index = None;
            let health = AgentServiceHealth {
                aggregated_status: status,
                service,
                checks,
            };
            (health, code)
        })
        .collect()
}

/// The status as text (`?format=text`) or the health as JSON, with the HTTP status.
fn health_answer<T: Serialize>(
    query: &Query,
    code: StatusCode,
    status: &str,
    value: &T,
) -> Response {
    let mut response = if query.get("format") == Some("text") {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            status.to_owned(),
        )
            .into_response()
    } else {
        json(query, value)
    };
    *response.status_mut() = code;
    response
}

/// `GET /v1/agent/health/service/id/{id}[?format=text]`: an instance's aggregated health:
/// 200 passing, 429 warning, 503 critical or in maintenance.
pub(super) async fn health_by_id(
    State(node): State<Node>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let Some((health, code)) = agent_health(&node, |r| r.id == id).into_iter().next() else {
        let message = format!("ServiceId {id} not found");
        return Ok(health_answer(
            &query,
            StatusCode::NOT_FOUND,
            &message,
            &message,
        ));
    };
    let status = health.aggregated_status;
    Ok(health_answer(&query, code, status, &health))
}

/// `GET /v1/agent/health/service/name/{name}[?format=text]`: the health of every instance of
/// a name on this node, with the worst one's HTTP status.
pub(super) async fn health_by_name(
    State(node): State<Node>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let healths = agent_health(&node, |r| r.name == name);
    let Some((worst_status, worst_code)) = healths
        .iter()
        .map(|(health, code)| (health.aggregated_status, *code))
        .max_by_key(|(_, code)| code.as_u16())
    else {
        let message = format!("ServiceName {name} Not Found");
        return Ok(health_answer(
            &query,
            StatusCode::NOT_FOUND,
            &message,
            &message,
        ));
    };
    let healths: Vec<AgentServiceHealth> = healths.into_iter().map(|(h, _)| h).collect();
    Ok(health_answer(&query, worst_code, worst_status, &healths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_stay_on_registered_addresses() {
        assert!(may_probe("10.0.0.5", "10.0.0.5"));
        assert!(may_probe("127.0.0.1", "10.0.0.5"));
        assert!(may_probe("localhost", "10.0.0.5"));
        assert!(may_probe("[::1]", "10.0.0.5"));
        assert!(!may_probe("10.0.0.6", "10.0.0.5"));
        assert!(!may_probe("example.com", "10.0.0.5"));
        assert!(is_unspecified("0.0.0.0") && is_unspecified("::") && is_unspecified("[::]"));
        assert!(!is_unspecified("127.0.0.1") && !is_unspecified(""));
    }
}
