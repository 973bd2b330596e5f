//! The service catalog of the Consul-compatible API: service instances registered from outside
//! (an address and a port, not a wasm module), their health checks with their current state,
//! and the transactions over them.
//!
//! A registration and its checks are one write: registering a service with checks, or removing
//! it with its checks, is a single transaction, so a reader never sees a check whose service is
//! gone.
//! Names are shared with wasm services: a name belongs either to a deployed wasm service or to
//! registered instances, never to both, because the gateway routes by name.
//!
//! Check *states* are stored too (they are what health queries report), but they are
//! observations: [`Registry::update_check`] writes only when the status or the output
//! changes, so a heartbeat that confirms a passing TTL check costs no write.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::record::SCHEMA_VERSION;
use crate::store::{
    Area, Indexes, StoredRecord, Write, bump_change_index, decode, encode, read_indexes,
};
use crate::tables::{CHECKS, META, REGISTRATIONS, SERVICES};
use shoal_spec::FieldError;

use crate::{Error, Registry, Result};

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
}

impl Probe {
    /// `ttl`, `http` or `tcp`, as Consul names check types.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Ttl { .. } => "ttl",
            Probe::Http { .. } => "http",
            Probe::Tcp { .. } => "tcp",
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

impl StoredRecord for Registration {
    const KIND: &'static str = "registration";
}

impl StoredRecord for CheckRecord {
    const KIND: &'static str = "check";
}

/// Everything the catalog holds, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    /// Every registered instance, by ID.
    pub registrations: Vec<Registration>,
    /// Every check, by ID.
    pub checks: Vec<CheckRecord>,
    /// The indexes at the moment of reading.
    pub indexes: Indexes,
}

impl Registry {
    /// Registers (or re-registers) a service instance with its checks, in one transaction,
    /// and returns the stored registration.
    ///
    /// Re-registering an ID keeps its create index. Each check keeps its current state when it
    /// exists already and its definition sets none. With `replace_existing_checks`, the
    /// instance's checks missing from `checks` are removed; otherwise they stay.
    /// Fails with [`Error::NameTaken`] if a wasm service has the name, and with
    /// [`Error::Invalid`] if the ID is empty; then nothing is written.
    pub fn register_service(
        &self,
        mut registration: Registration,
        checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> Result<Registration> {
        if registration.id.is_empty() {
            registration.id = registration.name.clone();
        }
        if registration.name.is_empty() {
            return Err(Error::Invalid(FieldError::new(
                "name",
                "missing service name",
            )));
        }
        self.write(|txn| {
            if txn
                .open_table(SERVICES)?
                .get(registration.name.as_str())?
                .is_some()
            {
                return Err(Error::NameTaken {
                    name: registration.name.clone(),
                    owner: "a wasm service deployed on this node",
                });
            }
            let change_index = bump_change_index(txn, &[Area::Catalog, Area::Health])?;
            let mut registrations = txn.open_table(REGISTRATIONS)?;
            let existing = registrations
                .get(registration.id.as_str())?
                .map(|value| decode::<Registration>(value.value(), &registration.id))
                .transpose()?;
            registration.version = SCHEMA_VERSION;
            registration.create_index = existing.map_or(change_index, |e| e.create_index);
            registration.modify_index = change_index;
            registrations.insert(registration.id.as_str(), encode(&registration).as_slice())?;
            drop(registrations);

            let mut table = txn.open_table(CHECKS)?;
            if replace_existing_checks {
                let kept: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
                let mut stale = Vec::new();
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    let check: CheckRecord = decode(value.value(), key.value())?;
                    if check.definition.service_id.as_deref() == Some(registration.id.as_str())
                        && !kept.contains(&key.value())
                    {
                        stale.push(key.value().to_owned());
                    }
                }
                for id in stale {
                    table.remove(id.as_str())?;
                }
            }
            for mut definition in checks {
                definition.service_id = Some(registration.id.clone());
                let record = check_record(&table, definition, Some(&registration), change_index)?;
                table.insert(record.definition.id.as_str(), encode(&record).as_slice())?;
            }
            Ok(Write::Commit(registration.clone()))
        })
    }

    /// Removes a registered instance and its checks; `false` if there was no such ID.
    pub fn deregister_service(&self, id: &str) -> Result<bool> {
        self.write(|txn| {
            if txn.open_table(REGISTRATIONS)?.remove(id)?.is_none() {
                return Ok(Write::Abort(false));
            }
            txn.open_table(CHECKS)?.retain(|_, value| {
                // A check that does not decode cannot be shown either; it goes with its service
                // only if it names it, so keep it otherwise and let reads report it.
                decode::<CheckRecord>(value, "").map_or(true, |check| {
                    check.definition.service_id.as_deref() != Some(id)
                })
            })?;
            bump_change_index(txn, &[Area::Catalog, Area::Health])?;
            Ok(Write::Commit(true))
        })
    }

    /// Adds (or replaces) a check, returning its record.
    ///
    /// Fails with [`Error::NotFound`] if it names a service instance that is not registered.
    pub fn register_check(&self, definition: CheckDefinition) -> Result<CheckRecord> {
        self.write(|txn| {
            let registration = match &definition.service_id {
                Some(service_id) => Some(
                    txn.open_table(REGISTRATIONS)?
                        .get(service_id.as_str())?
                        .map(|value| decode::<Registration>(value.value(), service_id))
                        .transpose()?
                        .ok_or_else(|| Error::NotFound {
                            kind: "service",
                            key: service_id.clone(),
                        })?,
                ),
                None => None,
            };
            let change_index = bump_change_index(txn, &[Area::Health])?;
            let mut table = txn.open_table(CHECKS)?;
            let record = check_record(&table, definition, registration.as_ref(), change_index)?;
            table.insert(record.definition.id.as_str(), encode(&record).as_slice())?;
            Ok(Write::Commit(record))
        })
    }

    /// Removes a check; `false` if there was no such ID.
    pub fn deregister_check(&self, id: &str) -> Result<bool> {
        self.write(|txn| {
            if txn.open_table(CHECKS)?.remove(id)?.is_none() {
                return Ok(Write::Abort(false));
            }
            bump_change_index(txn, &[Area::Health])?;
            Ok(Write::Commit(true))
        })
    }

    /// Sets a check's state. Writes (and bumps the health index) only if the status or the
    /// output changed; returns the record as it now stands, or `None` for an unknown ID.
    pub fn update_check(
        &self,
        id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<Option<CheckRecord>> {
        self.write(|txn| {
            let table = txn.open_table(CHECKS)?;
            let Some(mut record) = table
                .get(id)?
                .map(|value| decode::<CheckRecord>(value.value(), id))
                .transpose()?
            else {
                return Ok(Write::Abort(None));
            };
            if record.status == status && record.output == output {
                return Ok(Write::Abort(Some(record)));
            }
            drop(table);
            record.status = status;
            record.output = output.to_owned();
            record.modify_index = bump_change_index(txn, &[Area::Health])?;
            txn.open_table(CHECKS)?
                .insert(id, encode(&record).as_slice())?;
            Ok(Write::Commit(Some(record)))
        })
    }

    /// Every registration and check, and the indexes, as of one moment.
    pub fn catalog(&self) -> Result<CatalogSnapshot> {
        let txn = self.database.begin_read()?;
        let mut snapshot = CatalogSnapshot {
            indexes: read_indexes(&txn.open_table(META)?)?,
            ..CatalogSnapshot::default()
        };
        for entry in txn.open_table(REGISTRATIONS)?.iter()? {
            let (key, value) = entry?;
            snapshot
                .registrations
                .push(decode(value.value(), key.value())?);
        }
        for entry in txn.open_table(CHECKS)?.iter()? {
            let (key, value) = entry?;
            snapshot.checks.push(decode(value.value(), key.value())?);
        }
        Ok(snapshot)
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
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// The record a definition becomes, keeping the state and create index of a check with the
/// same ID.
fn check_record(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    definition: CheckDefinition,
    service: Option<&Registration>,
    change_index: u64,
) -> Result<CheckRecord> {
    let existing = table
        .get(definition.id.as_str())?
        .map(|value| decode::<CheckRecord>(value.value(), &definition.id))
        .transpose()?;
    let (status, output, create_index) = match (&existing, definition.status) {
        (_, Some(status)) => (
            status,
            String::new(),
            existing.as_ref().map_or(change_index, |e| e.create_index),
        ),
        (Some(existing), None) => (
            existing.status,
            existing.output.clone(),
            existing.create_index,
        ),
        (None, None) => (CheckStatus::Critical, String::new(), change_index),
    };
    Ok(CheckRecord {
        version: SCHEMA_VERSION,
        service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
        service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
        definition,
        status,
        output,
        create_index,
        modify_index: change_index,
    })
}

/// Whether a name is held by registered instances; used to keep wasm services off it.
pub(crate) fn name_is_registered(txn: &WriteTransaction, name: &str) -> Result<bool> {
    for entry in txn.open_table(REGISTRATIONS)?.iter()? {
        let (key, value) = entry?;
        let registration: Registration = decode(value.value(), key.value())?;
        if registration.name == name {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_backends;

    fn web(id: &str) -> Registration {
        Registration {
            id: id.into(),
            address: "127.0.0.1".into(),
            port: 8080,
            tags: vec!["v1".into()],
            ..Registration::new("web")
        }
    }

    fn ttl_check(id: &str) -> CheckDefinition {
        CheckDefinition {
            id: id.into(),
            name: format!("check {id}"),
            service_id: None,
            notes: String::new(),
            probe: Probe::Ttl {
                ttl: Duration::from_secs(10),
            },
            status: None,
            deregister_critical_after: None,
        }
    }

    #[test]
    fn register_lists_and_deregisters_with_checks() {
        on_both_backends(|registry| {
            let before = registry.indexes().unwrap();
            let stored = registry
                .register_service(web("web-1"), vec![ttl_check("service:web-1")], false)
                .unwrap();
            assert_eq!(stored.create_index, stored.modify_index);
            let snapshot = registry.catalog().unwrap();
            assert_eq!(snapshot.registrations, vec![stored.clone()]);
            assert_eq!(snapshot.checks.len(), 1);
            let check = &snapshot.checks[0];
            assert_eq!(check.status, CheckStatus::Critical);
            assert_eq!(check.service_name, "web");
            assert_eq!(check.definition.service_id.as_deref(), Some("web-1"));
            assert!(snapshot.indexes.catalog > before.catalog);
            assert_eq!(snapshot.indexes.catalog, snapshot.indexes.health);
            assert_eq!(snapshot.indexes.kv, before.kv);

            assert!(registry.deregister_service("web-1").unwrap());
            assert!(!registry.deregister_service("web-1").unwrap());
            let snapshot = registry.catalog().unwrap();
            assert!(snapshot.registrations.is_empty() && snapshot.checks.is_empty());
        });
    }

    #[test]
    fn the_id_defaults_to_the_name_and_reregistering_keeps_the_create_index() {
        on_both_backends(|registry| {
            let first = registry.register_service(web(""), vec![], false).unwrap();
            assert_eq!(first.id, "web");
            let second = registry
                .register_service(
                    Registration {
                        port: 9090,
                        ..web("")
                    },
                    vec![],
                    false,
                )
                .unwrap();
            assert_eq!(second.create_index, first.create_index);
            assert!(second.modify_index > first.modify_index);
            assert_eq!(registry.catalog().unwrap().registrations, vec![second]);
        });
    }

    #[test]
    fn check_states_survive_reregistration_unless_set() {
        on_both_backends(|registry| {
            registry
                .register_service(web("web-1"), vec![ttl_check("c")], false)
                .unwrap();
            registry
                .update_check("c", CheckStatus::Passing, "ok")
                .unwrap();
            registry
                .register_service(web("web-1"), vec![ttl_check("c")], false)
                .unwrap();
            let check = &registry.catalog().unwrap().checks[0];
            assert_eq!(
                (check.status, check.output.as_str()),
                (CheckStatus::Passing, "ok")
            );

            let warning = CheckDefinition {
                status: Some(CheckStatus::Warning),
                ..ttl_check("c")
            };
            registry
                .register_service(web("web-1"), vec![warning], false)
                .unwrap();
            let check = &registry.catalog().unwrap().checks[0];
            assert_eq!(
                (check.status, check.output.as_str()),
                (CheckStatus::Warning, "")
            );
        });
    }

    #[test]
    fn replace_existing_checks_removes_the_missing_ones() {
        on_both_backends(|registry| {
            registry
                .register_service(web("web-1"), vec![ttl_check("a"), ttl_check("b")], false)
                .unwrap();
            registry
                .register_service(web("web-1"), vec![ttl_check("a")], false)
                .unwrap();
            assert_eq!(registry.catalog().unwrap().checks.len(), 2);
            registry
                .register_service(web("web-1"), vec![ttl_check("a")], true)
                .unwrap();
            let ids: Vec<String> = registry
                .catalog()
                .unwrap()
                .checks
                .into_iter()
                .map(|c| c.definition.id)
                .collect();
            assert_eq!(ids, ["a"]);
        });
    }

    #[test]
    fn updates_write_only_changes() {
        on_both_backends(|registry| {
            registry
                .register_service(web("web-1"), vec![ttl_check("c")], false)
                .unwrap();
            let first = registry
                .update_check("c", CheckStatus::Passing, "")
                .unwrap()
                .unwrap();
            let index = registry.indexes().unwrap();
            assert_eq!(index.health, first.modify_index);
            let same = registry
                .update_check("c", CheckStatus::Passing, "")
                .unwrap()
                .unwrap();
            assert_eq!(same, first);
            assert_eq!(registry.indexes().unwrap(), index);
            assert!(
                registry
                    .update_check("nope", CheckStatus::Passing, "")
                    .unwrap()
                    .is_none()
            );
        });
    }

    #[test]
    fn node_checks_and_checks_of_unknown_services() {
        on_both_backends(|registry| {
            let node_check = registry.register_check(ttl_check("node")).unwrap();
            assert_eq!(node_check.service_name, "");
            assert_eq!(node_check.definition.service_id, None);
            let orphan = CheckDefinition {
                service_id: Some("nope".into()),
                ..ttl_check("orphan")
            };
            assert!(matches!(
                registry.register_check(orphan),
                Err(Error::NotFound {
                    kind: "service",
                    ..
                })
            ));
            assert!(registry.deregister_check("node").unwrap());
            assert!(!registry.deregister_check("node").unwrap());
            assert!(registry.catalog().unwrap().checks.is_empty());
        });
    }

    #[test]
    fn a_name_has_one_owner() {
        on_both_backends(|registry| {
            let bytes = b"module";
            let digest = shoal_spec::Digest::of(bytes);
            registry
                .put_module(&digest, shoal_spec::ModuleKind::Http, bytes)
                .unwrap();
            let wasm: shoal_spec::ServiceName = "wasm".parse().unwrap();
            registry
                .put_service(&wasm, shoal_spec::ServiceSpec::new(digest.clone()))
                .unwrap();
            let before = registry.indexes().unwrap();
            assert!(matches!(
                registry.register_service(Registration::new("wasm"), vec![], false),
                Err(Error::NameTaken { .. })
            ));
            registry
                .register_service(Registration::new("web"), vec![], false)
                .unwrap();
            let web: shoal_spec::ServiceName = "web".parse().unwrap();
            let taken = registry
                .put_service(&web, shoal_spec::ServiceSpec::new(digest))
                .unwrap_err();
            assert_eq!(
                taken.to_string(),
                "service name \"web\" is taken by service instances registered through the Consul API"
            );
            assert_eq!(registry.indexes().unwrap().change, before.change + 1);
            assert!(registry.service(&web).unwrap().is_none());
        });
    }

    #[test]
    fn registrations_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let snapshot = {
            let registry = Registry::open(&path).unwrap();
            registry
                .register_service(web("web-1"), vec![ttl_check("c")], false)
                .unwrap();
            registry.catalog().unwrap()
        };
        let registry = Registry::open(&path).unwrap();
        let reopened = registry.catalog().unwrap();
        assert_eq!(reopened.registrations, snapshot.registrations);
        assert_eq!(reopened.checks, snapshot.checks);
        assert_eq!(reopened.indexes, snapshot.indexes);
    }
}
