//! Sessions and key/value transactions, as the Consul API serves them.
//!
//! The store keeps sessions and their TTLs (`shoal_registry::SessionRecord`); the node chooses
//! their IDs, checks what they name when they are created, and ends those whose checks fail
//! ([`guard`]): a session of this node ends when one of its checks goes critical or is removed,
//! and the leader ends the sessions of a node that died (whose `serfHealth` failed) or is gone,
//! and judges those of nodes registered through the catalog by their checks, as Consul's
//! servers do.

use shoal_registry::{CheckStatus, KvOp, NODE_HEALTH_CHECK, SessionRecord, TxnOutcome};

use crate::{Error, Node, Result, WeakNode};

impl Node {
    /// Creates a session for `session.node` (this node when empty), with a new ID. Every
    /// check it names must exist on that node and not be critical.
    pub async fn create_session(&self, mut session: SessionRecord) -> Result<SessionRecord> {
        self.check_running()?;
        if session.node.is_empty() {
            session.node = self.inner.config.node_name.clone();
        }
        if !self.is_shoal_node(&session.node) && self.external_node(&session.node).is_none() {
            return Err(Error::invalid(
                "Node",
                format!("Missing node registration: {:?}", session.node),
            ));
        }
        if session.checks.iter().any(|c| c == NODE_HEALTH_CHECK) && !self.node_alive(&session.node)
        {
            return Err(Error::invalid(
                "Checks",
                format!("Check '{NODE_HEALTH_CHECK}' is in critical state"),
            ));
        }
        for id in session.checks.iter().filter(|c| *c != NODE_HEALTH_CHECK) {
            match self.check_on(&session.node, id) {
                None => {
                    return Err(Error::invalid(
                        "Checks",
                        format!("Missing check '{id}' registration"),
                    ));
                }
                Some(CheckStatus::Critical) => {
                    return Err(Error::invalid(
                        "Checks",
                        format!("Check '{id}' is in critical state"),
                    ));
                }
                Some(_) => {}
            }
        }
        session.id = new_session_id();
        session.validate(self.inner.config.session_ttl_min)?;
        let committed = self.inner.store.create_session(session).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Restarts a session's TTL; `None` when it is gone.
    pub async fn renew_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.check_running()?;
        Ok(self.inner.store.renew_session(id).await?)
    }

    /// Invalidates a session, releasing or deleting its keys; `false` when it was gone.
    pub async fn destroy_session(&self, id: &str) -> Result<bool> {
        self.check_running()?;
        let committed = self.inner.store.destroy_session(id).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Every session, and the change index they are as of.
    pub async fn sessions(&self) -> Result<(Vec<SessionRecord>, u64)> {
        self.check_running()?;
        Ok(self.inner.store.sessions().await?)
    }

    /// Runs key/value operations as one transaction; see
    /// [`Store::kv_txn`](shoal_registry::Store::kv_txn). Returns the outcome and the index
    /// of the change it made (or the newest, when it wrote nothing).
    pub async fn kv_txn(&self, ops: Vec<KvOp>) -> Result<(TxnOutcome, u64)> {
        self.check_running()?;
        let committed = self.inner.store.kv_txn(ops).await?;
        self.wait_applied(committed.index).await?;
        Ok((committed.value, committed.index))
    }

    /// The status of the check `id` of the node `node`, if it has one.
    fn check_on(&self, node: &str, id: &str) -> Option<CheckStatus> {
        let here = self.owns(node);
        self.catalog()
            .snapshot
            .checks
            .iter()
            .find(|c| {
                c.definition.id == id
                    && if here {
                        self.owns(&c.definition.node)
                    } else {
                        c.definition.node == node
                    }
            })
            .map(|c| c.status)
    }

    /// The sessions whose checks failed: this node's with a critical or removed check, and,
    /// on the leader, those of dead nodes.
    async fn failed_sessions(&self) -> Result<Vec<(String, String)>> {
        let (sessions, _) = self.inner.store.sessions().await?;
        let mut failed = Vec::new();
        for session in sessions {
            let on_catalog_node = self.external_node(&session.node).is_some();
            // This node judges its own sessions by their checks; the leader, those of nodes
            // registered through the catalog (whose checks nobody here runs), and those of
            // nodes that died or are gone.
            let reason = if self.owns(&session.node) || (self.is_leader() && on_catalog_node) {
                session
                    .checks
                    .iter()
                    .filter(|c| *c != NODE_HEALTH_CHECK)
                    .find_map(|id| match self.check_on(&session.node, id) {
                        None => Some(format!("its check {id:?} was removed")),
                        Some(CheckStatus::Critical) => {
                            Some(format!("its check {id:?} is critical"))
                        }
                        Some(_) => None,
                    })
            } else if self.is_leader()
                && session.checks.iter().any(|c| c == NODE_HEALTH_CHECK)
                && !self.node_alive(&session.node)
            {
                Some(format!("its node {:?} is dead", session.node))
            } else if self.is_leader() && !on_catalog_node && !self.is_shoal_node(&session.node) {
                Some(format!("its node {:?} is gone", session.node))
            } else {
                None
            };
            if let Some(reason) = reason {
                failed.push((session.id, reason));
            }
        }
        Ok(failed)
    }
}

/// A random (version 4) UUID.
fn new_session_id() -> String {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Ends sessions whose checks fail, looking again whenever check states, the catalog or the
/// cluster's members change, until the node is gone.
pub(crate) async fn guard(node: WeakNode) {
    let Some(strong) = node.upgrade() else { return };
    let mut changes = strong.changes();
    let mut members = strong
        .inner
        .cluster
        .as_ref()
        .map(|joined| joined.cluster.members());
    drop(strong);
    let mut seen = (0, 0);
    loop {
        let Some(strong) = node.upgrade() else { return };
        let indexes = *changes.borrow_and_update();
        let now = (indexes.catalog, indexes.health);
        if now != seen {
            seen = now;
            match strong.failed_sessions().await {
                Ok(failed) => {
                    for (id, reason) in failed {
                        tracing::info!(session = %id, %reason, "invalidating a session");
                        if let Err(error) = strong.destroy_session(&id).await {
                            tracing::warn!(session = %id, %error, "cannot invalidate a session");
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot list sessions to guard them"),
            }
        }
        drop(strong);
        let member_changed = async {
            match members.as_mut() {
                Some(members) => members.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            alive = member_changed => {
                if !alive {
                    return;
                }
                // A member's death is not a change of the store: look again.
                seen = (0, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_version_4_uuids() {
        let id = new_session_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_session_id());
    }
}
