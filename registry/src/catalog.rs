//! The service catalog of the Consul-compatible API: service instances registered from outside
//! (an address and a port, not a wasm module), their health checks with their current state,
//! as a store keeps them.
//!
//! A registration and its checks are one write: registering a service with checks, or removing
//! it with its checks, is a single transaction, so a reader never sees a check whose service is
//! gone.
//! Names are shared with wasm services: a name belongs either to a deployed wasm service or to
//! registered instances, never to both, because the gateway routes by name.
//!
//! Check *states* are stored too (they are what health queries report), but they are
//! observations: [`Store::update_check`](crate::Store::update_check) writes only when the
//! status or the output changes, so a heartbeat that confirms a passing TTL check costs no
//! write.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_spec::FieldError;

use crate::record::SCHEMA_VERSION;
use crate::{Error, Indexes, Result};

/// One service instance registered through the agent API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The instance's ID, unique on the node (defaults to the name).
    pub id: String,
    /// The service's name, shared by its instances.
    pub name: String,
    /// Tags, in the order given.
    pub tags: Vec<String>,
    /// Where the instance listens; empty means the node's address.
    pub address: String,
    /// The instance's port; 0 when not given.
    pub port: u16,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// Other addresses of the instance, by name (`lan`, `wan`, ...).
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    /// Weights for load balancing by health state.
    pub weights: Weights,
    /// Whether tags may be changed by others (kept for clients; shoal does not act on it).
    pub enable_tag_override: bool,
    /// The instance's Unix socket, if it listens on one (kept, not routed to).
    pub socket_path: String,
    /// The node whose agent API registered it, which runs its checks and lists it as its
    /// own, as a Consul agent does; empty for a node alone (and in records from before
    /// clusters), meaning the node that reads it.
    #[serde(default)]
    pub node: String,
    /// The change index of the change that first registered this ID.
    pub create_index: u64,
    /// The change index of the newest change of this registration.
    pub modify_index: u64,
}

/// An extra address of a registered instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedAddress {
    /// The address.
    pub address: String,
    /// The port.
    pub port: u16,
}

/// How much traffic an instance should get while passing and while warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while every check passes.
    pub passing: u32,
    /// Weight while some check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// The state of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded but serving.
    Warning,
    /// Failing: not to be sent traffic.
    Critical,
}

impl CheckStatus {
    /// The lowercase name Consul uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<CheckStatus> {
        match text {
            "passing" => Ok(CheckStatus::Passing),
            "warning" => Ok(CheckStatus::Warning),
            "critical" => Ok(CheckStatus::Critical),
            _ => Err(Error::Invalid(FieldError::new(
                "status",
                format!("{text:?} is not one of passing, warning, critical"),
            ))),
        }
    }
}

/// How a check finds out the state of what it checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// The service reports its own state at least once per `ttl`, or goes critical.
    Ttl {
        /// How long a reported state holds.
        ttl: Duration,
    },
    /// An HTTP request every `interval`: 2xx passes, 429 warns, anything else is critical.
    Http {
        /// The URL requested.
        url: String,
        /// The method, `GET` by default.
        method: String,
        /// Request headers, each with its values in order.
        headers: BTreeMap<String, Vec<String>>,
        /// The request body.
        body: String,
        /// Whether an HTTPS certificate that does not verify is accepted.
        tls_skip_verify: bool,
        /// Time between requests.
        interval: Duration,
        /// How long a request may take.
        timeout: Duration,
    },
    /// A TCP connection every `interval`: connecting passes, anything else is critical.
    Tcp {
        /// `host:port` to connect to.
        address: String,
        /// Time between attempts.
        interval: Duration,
        /// How long connecting may take.
        timeout: Duration,
    },
    /// Nothing probes it: it is critical for as long as it exists, which is maintenance mode
    /// (Consul's `_service_maintenance:{id}` and `_node_maintenance` checks).
    Maintenance,
    /// Nothing here probes it: its state is what its registrant last wrote through the
    /// catalog (a check of an [`ExternalNode`]).
    External,
}

impl Probe {
    /// `ttl`, `http`, `tcp` or `maintenance`, as Consul names check types.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Ttl { .. } => "ttl",
            Probe::Http { .. } => "http",
            Probe::Tcp { .. } => "tcp",
            Probe::Maintenance => "maintenance",
            Probe::External => "",
        }
    }
}

/// What a client registers as a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    /// The check's ID, unique on the node.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The registered service instance it checks, or `None` for a check of the node.
    pub service_id: Option<String>,
    /// Free text for people.
    pub notes: String,
    /// How it probes.
    pub probe: Probe,
    /// The state it starts in; `None` means critical, as in Consul, unless the check existed
    /// already, whose state is then kept.
    pub status: Option<CheckStatus>,
    /// Deregister the service once this check has been critical this long.
    pub deregister_critical_after: Option<Duration>,
    /// The node whose agent registered it, which runs it; empty for a node alone (see
    /// [`Registration::node`]).
    #[serde(default)]
    pub node: String,
}

/// A check and its current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// What was registered.
    pub definition: CheckDefinition,
    /// The name of the service `definition.service_id` names, or empty.
    pub service_name: String,
    /// The tags of that service.
    pub service_tags: Vec<String>,
    /// The current state.
    pub status: CheckStatus,
    /// What the last probe or report said.
    pub output: String,
    /// The change index of the change that first registered this ID.
    pub create_index: u64,
    /// The change index of the newest change of this check, state included.
    pub modify_index: u64,
}

/// A node registered through the catalog (Consul's `/v1/catalog/register`): a machine that
/// runs no shoal, whose instances and checks someone else registers and reports on (Consul's
/// "external nodes", as consul-esm and Terraform keep them). Nothing probes its checks, and it
/// has no `serfHealth`: it is as healthy as its registered checks say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalNode {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// Its name, which its registrations and checks carry as their node.
    pub name: String,
    /// Its ID (a UUID), if the registrant gave one.
    pub id: String,
    /// Its address, where its instances are unless they say otherwise.
    pub address: String,
    /// Other addresses, by name (`lan`, `wan`, ...).
    pub tagged_addresses: BTreeMap<String, String>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// The change index of the change that first registered it.
    pub create_index: u64,
    /// The change index of its newest change.
    pub modify_index: u64,
}

/// Everything the catalog holds, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    /// Every node registered through the catalog, by name.
    pub nodes: Vec<ExternalNode>,
    /// Every registered instance, by ID.
    pub registrations: Vec<Registration>,
    /// Every check, by ID.
    pub checks: Vec<CheckRecord>,
    /// The indexes at the moment of reading.
    pub indexes: Indexes,
}

impl CheckRecord {
    /// The record `definition` becomes when registered at `change_index`: a check of the same
    /// ID (`existing`) keeps its state and create index unless the definition sets a status; a
    /// new check without one starts critical, as Consul's do.
    pub fn from_definition(
        definition: CheckDefinition,
        existing: Option<&CheckRecord>,
        service: Option<&Registration>,
        change_index: u64,
    ) -> CheckRecord {
        let (status, output, create_index) = match (existing, definition.status) {
            (_, Some(status)) => (
                status,
                String::new(),
                existing.map_or(change_index, |e| e.create_index),
            ),
            (Some(existing), None) => (
                existing.status,
                existing.output.clone(),
                existing.create_index,
            ),
            (None, None) => (CheckStatus::Critical, String::new(), change_index),
        };
        CheckRecord {
            version: SCHEMA_VERSION,
            service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
            service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
            definition,
            status,
            output,
            create_index,
            modify_index: change_index,
        }
    }
}

impl Registration {
    /// A registration with `name` and defaults for everything else, for callers to fill in.
    pub fn new(name: impl Into<String>) -> Registration {
        Registration {
            version: SCHEMA_VERSION,
            id: String::new(),
            name: name.into(),
            tags: Vec::new(),
            address: String::new(),
            port: 0,
            meta: BTreeMap::new(),
            tagged_addresses: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
            socket_path: String::new(),
            node: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}
