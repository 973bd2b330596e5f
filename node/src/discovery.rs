//! Discovery: instances registered from outside with their checks, check reports, and the
//! key/value store, as the Consul API serves them.
//!
//! Writes go to the store and wait until the reconcile loop has applied them, so a client that
//! registers (or writes a key) and then reads finds what it wrote, and the indexes it is shown
//! are at least its write's. Reads of registrations and checks come
//! from the [`CatalogView`] the loop keeps; key/value reads go to the store, which knows each
//! key's index.

use bytes::Bytes;
use shoal_registry::{
    CatalogSnapshot, CheckDefinition, CheckRecord, CheckStatus, ExternalNode, KvEntry, Probe,
    Registration,
};
use std::collections::HashMap;
use std::sync::Arc;

use crate::{Node, Result};

/// The ID of a node's maintenance check, as Consul's clients recognise it.
pub const NODE_MAINTENANCE: &str = "_node_maintenance";

/// What the ID of an instance's maintenance check starts with, its instance's ID following.
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// A check's ID as Consul clients know it: a node's maintenance check is
/// [`NODE_MAINTENANCE`] on every node, though a cluster's store keeps one per node.
pub fn consul_check_id(id: &str) -> &str {
    match id.strip_prefix(NODE_MAINTENANCE) {
        Some(rest) if rest.is_empty() || rest.starts_with(':') => NODE_MAINTENANCE,
        _ => id,
    }
}

/// The health index of each service name: the change index of the newest change to its
/// instances, their checks, the checks of their nodes, or (for a wasm service) its record and
/// scale events. A blocking health query on one name waits on it, so a change to another name
/// does not answer it, as Consul's indexes are per service. A name that goes away keeps the
/// index of its removal, so a name's index never goes back.
#[derive(Debug, Default)]
pub(crate) struct HealthIndexes {
    /// What each registered name's instances and checks looked like at the last snapshot.
    signatures: HashMap<String, Signature>,
    indexes: HashMap<String, u64>,
}

/// Enough of a name's registrations and checks to tell that they changed: any change moves a
/// modify index past the highest, or adds or removes a record.
type Signature = (u64, usize);

impl HealthIndexes {
    /// Marks the names whose registrations or checks differ in `snapshot`.
    pub(crate) fn apply_catalog(&mut self, snapshot: &CatalogSnapshot) {
        let mut signatures: HashMap<String, Signature> = HashMap::new();
        for registration in &snapshot.registrations {
            let signature = signatures.entry(registration.name.clone()).or_default();
            signature.0 = signature.0.max(registration.modify_index);
            signature.1 += 1;
            // A node of the catalog's address and meta are in its instances' health answers.
            if let Some(node) = snapshot
                .nodes
                .iter()
                .find(|node| !registration.node.is_empty() && node.name == registration.node)
            {
                signature.0 = signature.0.max(node.modify_index);
            }
            let covers = |check: &&CheckRecord| match &check.definition.service_id {
                Some(id) => *id == registration.id,
                None => check.definition.node == registration.node,
            };
            for check in snapshot.checks.iter().filter(covers) {
                signature.0 = signature.0.max(check.modify_index);
                signature.1 += 1;
            }
        }
        let at = snapshot.indexes.change;
        let old = std::mem::take(&mut self.signatures);
        for (name, signature) in &signatures {
            if old.get(name) != Some(signature) {
                self.mark(name, at);
            }
        }
        for name in old.keys().filter(|name| !signatures.contains_key(*name)) {
            self.mark(name, at);
        }
        self.signatures = signatures;
    }

    /// Marks `name` as changed at `index`.
    pub(crate) fn mark(&mut self, name: &str, index: u64) {
        let entry = self.indexes.entry(name.to_owned()).or_default();
        *entry = (*entry).max(index);
    }

    fn get(&self, name: &str) -> Option<u64> {
        self.indexes.get(name).copied()
    }
}

/// Registered services and checks as of the newest catalog change applied.
#[derive(Debug, Default)]
pub struct CatalogView {
    /// Registrations and checks, and the indexes when they were read.
    pub snapshot: CatalogSnapshot,
}

impl Node {
    /// Registered services and checks, as of the newest change applied.
    pub fn catalog(&self) -> Arc<CatalogView> {
        self.inner.catalog.load_full()
    }

    /// The index a blocking health query on the service `name` waits past ([`HealthIndexes`]);
    /// for a name that never existed here, the catalog's index.
    pub fn health_index(&self, name: &str) -> u64 {
        let known = self
            .inner
            .health_indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name);
        known.unwrap_or_else(|| self.indexes().catalog).max(1)
    }

    /// Registers (or re-registers) an instance with its checks.
    pub async fn register_service(
        &self,
        mut registration: Registration,
        mut checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> Result<Registration> {
        self.check_running()?;
        registration.node = self.agent_name();
        for check in &mut checks {
            check.node = self.agent_name();
        }
        let committed = self
            .inner
            .store
            .register_service(registration, checks, replace_existing_checks)
            .await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// The owner this node stamps on what its agent API registers: its name in a cluster,
    /// where registrations are shared and each node runs its own checks; nothing on a node
    /// alone, whose registrations are all its own whatever it is called after a restart.
    fn agent_name(&self) -> String {
        if self.inner.cluster.is_some() {
            self.inner.config.node_name.clone()
        } else {
            String::new()
        }
    }

    /// Whether `owner` (a registration's or a check's) is this node.
    pub fn owns(&self, owner: &str) -> bool {
        owner.is_empty() || owner == self.inner.config.node_name
    }

    /// Registers a node of the catalog (Consul's `/v1/catalog/register`), with an instance on
    /// it and checks, in one change. The name of a node of this cluster is refused: its
    /// instances are registered through its agent.
    pub async fn register_node(
        &self,
        node: ExternalNode,
        registration: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> Result<ExternalNode> {
        self.check_running()?;
        if self.is_shoal_node(&node.name) {
            return Err(crate::Error::invalid(
                "Node",
                format!(
                    "{:?} is a shoal node: register its services through its agent (/v1/agent/service/register)",
                    node.name
                ),
            ));
        }
        let committed = self
            .inner
            .store
            .register_node(node, registration, checks)
            .await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Whether `name` is this node's, or a member's of its cluster.
    pub fn is_shoal_node(&self, name: &str) -> bool {
        self.owns(name) || self.nodes().iter().any(|view| view.name == name)
    }

    /// Removes a node of the catalog with everything on it; `false` if there was none.
    pub async fn deregister_node(&self, name: &str) -> Result<bool> {
        self.check_running()?;
        let committed = self.inner.store.deregister_node(name).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// The node of the catalog named `name`, if there is one.
    pub fn external_node(&self, name: &str) -> Option<ExternalNode> {
        if name.is_empty() {
            return None;
        }
        self.catalog()
            .snapshot
            .nodes
            .iter()
            .find(|node| node.name == name)
            .cloned()
    }

    /// Whether the node named `name` is alive: this node is; another is while it holds its
    /// membership (or, on a node serving what it last knew, without a cluster, as it was); a
    /// node of the catalog is, having no `serfHealth` to fail.
    pub fn node_alive(&self, name: &str) -> bool {
        if self.owns(name) || self.external_node(name).is_some() {
            return true;
        }
        self.inner.cluster.as_ref().is_none_or(|joined| {
            joined
                .cluster
                .members()
                .borrow()
                .nodes
                .get(name)
                .is_some_and(|member| member.alive)
        })
    }

    /// The host other nodes and clients reach the node named `name` at, as it advertised (or,
    /// for a node of the catalog, as it was registered).
    pub fn node_host(&self, name: &str) -> Option<String> {
        if let Some(external) = self.external_node(name) {
            return Some(external.address);
        }
        let joined = self.inner.cluster.as_ref()?;
        let members = joined.cluster.members().borrow().clone();
        let api = &members.nodes.get(name)?.info.api;
        let host = api.rsplit_once(':').map_or(api.as_str(), |(host, _)| host);
        Some(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
    }

    /// Removes an instance and its checks; `false` if there was none.
    pub async fn deregister_service(&self, id: &str) -> Result<bool> {
        self.check_running()?;
        let committed = self.inner.store.deregister_service(id).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Adds or replaces a check.
    pub async fn register_check(&self, mut definition: CheckDefinition) -> Result<CheckRecord> {
        self.check_running()?;
        definition.node = self.agent_name();
        let committed = self.inner.store.register_check(definition).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Removes a check; `false` if there was none.
    pub async fn deregister_check(&self, id: &str) -> Result<bool> {
        self.check_running()?;
        let committed = self.inner.store.deregister_check(id).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Records a check's state; nothing is written when it did not change.
    pub(crate) async fn set_check(
        &self,
        id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<()> {
        let unchanged = self
            .catalog()
            .snapshot
            .checks
            .iter()
            .any(|c| c.definition.id == id && c.status == status && c.output == output);
        if unchanged {
            return Ok(());
        }
        let committed = self.inner.store.update_check(id, status, output).await?;
        self.wait_applied(committed.index).await
    }

    /// A TTL report (Consul's `/v1/agent/check/pass/{id}` and friends): restarts the check's
    /// clock and records its state. `false` if there is no TTL check with that ID.
    pub async fn ttl_report(&self, id: &str, status: CheckStatus, output: String) -> Result<bool> {
        self.check_running()?;
        let Some(clock) = self.inner.checks.ttl_clock(id) else {
            return Ok(false);
        };
        // Held while the state is written, so an expiry cannot overtake the write.
        let _reported = clock.report(status).await;
        self.set_check(id, status, output).await?;
        Ok(true)
    }

    /// Puts a registered instance of this node (`Some(id)`), or the node itself, in
    /// maintenance mode: a critical check that no probe moves, with `reason` as its notes, which
    /// takes the instance (or every instance of the node) out of `?passing` answers and the
    /// gateway's routes, as Consul's `_service_maintenance:{id}` and `_node_maintenance` do.
    /// Enabling it again replaces the reason. `false` for an unknown instance.
    pub async fn enable_maintenance(
        &self,
        service_id: Option<&str>,
        reason: String,
    ) -> Result<bool> {
        self.check_running()?;
        if let Some(id) = service_id
            && !self.has_own_instance(id)
        {
            return Ok(false);
        }
        let (name, default_reason) = match service_id {
            Some(_) => ("Service Maintenance Mode", "service"),
            None => ("Node Maintenance Mode", "node"),
        };
        let notes = if reason.is_empty() {
            format!(
                "Maintenance mode is enabled for this {default_reason}, but no reason was provided. This is a default message."
            )
        } else {
            reason
        };
        let definition = CheckDefinition {
            id: self.maintenance_check_id(service_id),
            name: name.to_owned(),
            service_id: service_id.map(str::to_owned),
            notes,
            probe: Probe::Maintenance,
            status: Some(CheckStatus::Critical),
            deregister_critical_after: None,
            node: String::new(),
        };
        match self.register_check(definition).await {
            // The instance went away meanwhile.
            Err(crate::Error::NotFound { .. }) if service_id.is_some() => Ok(false),
            registered => registered.map(|_| true),
        }
    }

    /// Ends maintenance mode of an instance of this node, or of the node; `false` for an
    /// unknown instance. Ending it where it was not enabled changes nothing.
    pub async fn disable_maintenance(&self, service_id: Option<&str>) -> Result<bool> {
        self.check_running()?;
        if let Some(id) = service_id
            && !self.has_own_instance(id)
        {
            return Ok(false);
        }
        self.deregister_check(&self.maintenance_check_id(service_id))
            .await?;
        Ok(true)
    }

    /// Whether an instance with this ID was registered through this node.
    fn has_own_instance(&self, id: &str) -> bool {
        self.catalog()
            .snapshot
            .registrations
            .iter()
            .any(|r| r.id == id && self.owns(&r.node))
    }

    /// The ID of the maintenance check of an instance, or of this node. Check IDs are one
    /// namespace in a cluster's store, so each node's own carries its name after
    /// [`NODE_MAINTENANCE`]; [`consul_check_id`] gives clients Consul's.
    fn maintenance_check_id(&self, service_id: Option<&str>) -> String {
        match (service_id, self.inner.cluster.is_some()) {
            (Some(id), _) => format!("{SERVICE_MAINTENANCE_PREFIX}{id}"),
            (None, false) => NODE_MAINTENANCE.to_owned(),
            (None, true) => format!("{NODE_MAINTENANCE}:{}", self.inner.config.node_name),
        }
    }

    /// The entry at `key`, and the index a blocking query on it waits past. In a cluster
    /// whose store cannot be reached, as this node last knew it.
    pub async fn kv_get(&self, key: &str) -> Result<(Option<KvEntry>, u64)> {
        self.check_running()?;
        match self.inner.store.kv_get(key).await {
            Err(shoal_registry::Error::Unavailable(_)) if self.inner.cluster.is_some() => {
                let entry = self.inner.kv_mirror.load().get(key).cloned();
                let index = entry
                    .as_ref()
                    .map_or(self.indexes().kv, |entry| entry.modify_index);
                Ok((entry, index))
            }
            read => Ok(read?),
        }
    }

    /// Every entry under `prefix`, and the key/value store's index. In a cluster whose store
    /// cannot be reached, as this node last knew them.
    pub async fn kv_list(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64)> {
        self.check_running()?;
        match self.inner.store.kv_list(prefix).await {
            Err(shoal_registry::Error::Unavailable(_)) if self.inner.cluster.is_some() => {
                let entries = self
                    .inner
                    .kv_mirror
                    .load()
                    .range(prefix.to_owned()..)
                    .take_while(|(key, _)| key.starts_with(prefix))
                    .map(|(_, entry)| entry.clone())
                    .collect();
                Ok((entries, self.indexes().kv))
            }
            read => Ok(read?),
        }
    }

    /// Sets `key`, with an optional check-and-set index; whether it was written.
    pub async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<bool> {
        self.check_running()?;
        let committed = self.inner.store.kv_put(key, value, flags, cas).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Deletes `key` (or everything under it); whether the delete happened.
    pub async fn kv_delete(&self, key: &str, recurse: bool, cas: Option<u64>) -> Result<bool> {
        self.check_running()?;
        let committed = self.inner.store.kv_delete(key, recurse, cas).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }
}
