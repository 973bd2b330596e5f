//! The in-memory view of the registered (non-wasm) services: the registry's catalog as of its
//! last change, and the table the gateway routes external services by.
//!
//! Like the wasm routing table, it is derived from the registry after every committed change
//! and replaced whole, so the gateway and the Consul reads never touch the database.
//! An instance is routable when it has a port and no critical check (passing or warning, as
//! Consul's DNS interface answers); the gateway takes them in turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_registry::{CatalogSnapshot, CheckStatus};

/// The registry's catalog, and the gateway's view of it.
#[derive(Default)]
pub struct Catalog {
    /// Registrations, checks and indexes, as of one moment.
    pub snapshot: CatalogSnapshot,
    /// Registered services by name, for the gateway.
    pub external: HashMap<String, Arc<ExternalService>>,
}

/// A registered service as the gateway sees it: its instances, and whose turn is next.
#[derive(Debug, Default)]
pub struct ExternalService {
    /// Every instance, healthy or not, in ID order.
    pub instances: Vec<Endpoint>,
    next: AtomicUsize,
}

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The instance's ID.
    pub id: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// Whether it may be sent requests: a port, and no critical check.
    pub routable: bool,
}

impl ExternalService {
    /// The next routable instance, round robin; `None` when none is.
    pub fn pick(&self) -> Option<&Endpoint> {
        let routable: Vec<&Endpoint> = self.instances.iter().filter(|e| e.routable).collect();
        if routable.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(routable[turn % routable.len()])
    }
}

impl Catalog {
    /// Derives the gateway's table from a snapshot; instances without an address get
    /// `node_address`, as Consul fills in the node's.
    pub fn new(snapshot: CatalogSnapshot, node_address: &str) -> Catalog {
        let mut external: HashMap<String, ExternalService> = HashMap::new();
        for registration in &snapshot.registrations {
            let critical = snapshot.checks.iter().any(|check| {
                check.definition.service_id.as_deref() == Some(registration.id.as_str())
                    && check.status == CheckStatus::Critical
            });
            let host = if registration.address.is_empty() {
                node_address
            } else {
                registration.address.as_str()
            };
            let authority = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", registration.port)
            } else {
                format!("{host}:{}", registration.port)
            };
            external
                .entry(registration.name.clone())
                .or_default()
                .instances
                .push(Endpoint {
                    id: registration.id.clone(),
                    authority,
                    routable: registration.port != 0 && !critical,
                });
        }
        Catalog {
            snapshot,
            external: external
                .into_iter()
                .map(|(name, service)| (name, Arc::new(service)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_registry::{CheckDefinition, CheckRecord, Probe, Registration};

    use super::*;

    fn instance(id: &str, port: u16) -> Registration {
        Registration {
            id: id.into(),
            address: "127.0.0.1".into(),
            port,
            ..Registration::new("web")
        }
    }

    fn check(service_id: &str, status: CheckStatus) -> CheckRecord {
        CheckRecord {
            version: 1,
            definition: CheckDefinition {
                id: format!("service:{service_id}"),
                name: "c".into(),
                service_id: Some(service_id.into()),
                notes: String::new(),
                probe: Probe::Ttl {
                    ttl: std::time::Duration::from_secs(1),
                },
                status: None,
                deregister_critical_after: None,
            },
            service_name: "web".into(),
            service_tags: vec![],
            status,
            output: String::new(),
            create_index: 1,
            modify_index: 1,
        }
    }

    #[test]
    fn round_robin_over_instances_without_critical_checks() {
        let snapshot = CatalogSnapshot {
            registrations: vec![
                instance("a", 1),
                instance("b", 2),
                instance("c", 3),
                instance("no-port", 0),
                Registration {
                    address: String::new(),
                    ..instance("d", 4)
                },
            ],
            checks: vec![
                check("b", CheckStatus::Critical),
                check("c", CheckStatus::Warning),
            ],
            ..CatalogSnapshot::default()
        };
        let catalog = Catalog::new(snapshot, "10.0.0.1");
        let web = &catalog.external["web"];
        let picked: Vec<&str> = (0..6).map(|_| web.pick().unwrap().id.as_str()).collect();
        assert_eq!(picked, ["a", "c", "d", "a", "c", "d"]);
        assert_eq!(web.instances[4].authority, "10.0.0.1:4");

        let all_critical = CatalogSnapshot {
            registrations: vec![instance("a", 1)],
            checks: vec![check("a", CheckStatus::Critical)],
            ..CatalogSnapshot::default()
        };
        assert!(
            Catalog::new(all_critical, "x").external["web"]
                .pick()
                .is_none()
        );
    }
}
