//! Where each record lives in etcd, under one prefix (`/shoal/v1/` by default), and the change
//! subject each transaction writes for the watch.
//!
//! | key | value |
//! |---|---|
//! | `modules/<digest>` | the [`ModuleRecord`](shoal_registry::ModuleRecord); no bytes; the name given last stored as 0, meaning the key's `mod_revision` |
//! | `services/<name>` | the current [`ServiceRecord`](shoal_registry::ServiceRecord) |
//! | `routes/<name>` | the [`RouteRecord`](shoal_registry::RouteRecord) |
//! | `waiting/<name>` | the [`WaitingRecord`](shoal_registry::WaitingRecord) of a service waiting for its module |
//! | `revisions/<name>/<revision:020>` | each [`RevisionRecord`](shoal_registry::RevisionRecord) |
//! | `events/<name>/<seq:020>` | each kept [`EventRecord`](shoal_registry::EventRecord) |
//! | `catalog/reg/<id>`, `catalog/check/<id>` | registrations and checks |
//! | `catalog/node/<name>` | a node registered through the catalog ([`ExternalNode`](shoal_registry::ExternalNode)) |
//! | `catalog/guard` | rewritten by every write that adds or removes registrations or checks |
//! | `kv/<key>` | 8 bytes of flags (big-endian), then the value |
//! | `kvlock/<key>` | how a key that was ever locked is locked: 8 bytes of lock index (big-endian), then the holding session's ID (empty: unlocked) |
//! | `kvdelay/<key>` | until when (Unix ms, 8 bytes big-endian) the key may not be locked: the lock-delay after its holder was invalidated |
//! | `sessions/<id>` | a [`SessionRecord`](shoal_registry::SessionRecord) |
//! | `session-alive/<id>` | under the session's own lease, for a session with a TTL: its renewals keep the lease, and its lapse deletes the key, which any node then invalidates |
//! | `nodes/<name>/info` | the node's [`NodeInfo`](shoal_registry::cluster::NodeInfo), kept after it is gone |
//! | `nodes/<name>/alive` | under the node's lease: its claim on the name (the value: its API address) |
//! | `nodes/<name>/report` | under the node's lease: its [`NodeReport`](shoal_registry::cluster::NodeReport) |
//! | `assign/<service>` | the leader's placements of a service: replicas by node (JSON) |
//! | `election/leader/<lease>` | a candidate for leader (etcd's election API): the oldest is the leader |
//! | `secret` | the cluster's secret: peer routes take it as a bearer token |
//! | `index/change` | rewritten by every transaction: its nonce, and the change's [`Subject`] |
//! | `index/catalog`, `index/health`, `index/kv` | rewritten by the transactions that change that area |
//!
//! Every index is the `mod_revision` of an `index/` key: an etcd revision, so it never goes
//! back and is the same on every node. A record's own indexes are its key's revisions
//! (`create_revision` for create indexes, `mod_revision` for modify indexes), filled in when
//! it is read: a transaction cannot know its revision before it commits.

use shoal_registry::Subject;
use shoal_spec::{Digest, ServiceName};

/// The keys of one store, under its prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    root: String,
}

/// The areas whose index a blocking query waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Area {
    Change,
    Catalog,
    Health,
    Kv,
}

impl Area {
    fn name(self) -> &'static str {
        match self {
            Area::Change => "change",
            Area::Catalog => "catalog",
            Area::Health => "health",
            Area::Kv => "kv",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Area> {
        [Area::Change, Area::Catalog, Area::Health, Area::Kv]
            .into_iter()
            .find(|area| area.name() == name)
    }
}

impl Keys {
    /// Keys under `prefix`, which gets a trailing `/` if it lacks one.
    pub(crate) fn new(prefix: &str) -> Keys {
        let mut root = prefix.to_owned();
        if !root.ends_with('/') {
            root.push('/');
        }
        Keys { root }
    }

    pub(crate) fn module(&self, digest: &Digest) -> String {
        format!("{}modules/{digest}", self.root)
    }

    pub(crate) fn modules(&self) -> String {
        format!("{}modules/", self.root)
    }

    pub(crate) fn service(&self, name: &ServiceName) -> String {
        format!("{}services/{name}", self.root)
    }

    pub(crate) fn services(&self) -> String {
        format!("{}services/", self.root)
    }

    pub(crate) fn route(&self, name: &ServiceName) -> String {
        format!("{}routes/{name}", self.root)
    }

    pub(crate) fn routes(&self) -> String {
        format!("{}routes/", self.root)
    }

    pub(crate) fn waiting(&self, name: &ServiceName) -> String {
        format!("{}waiting/{name}", self.root)
    }

    pub(crate) fn waitings(&self) -> String {
        format!("{}waiting/", self.root)
    }

    pub(crate) fn revision(&self, name: &ServiceName, revision: u64) -> String {
        format!("{}revisions/{name}/{revision:020}", self.root)
    }

    pub(crate) fn revisions(&self, name: &ServiceName) -> String {
        format!("{}revisions/{name}/", self.root)
    }

    pub(crate) fn event(&self, name: &ServiceName, seq: u64) -> String {
        format!("{}events/{name}/{seq:020}", self.root)
    }

    pub(crate) fn events(&self, name: &ServiceName) -> String {
        format!("{}events/{name}/", self.root)
    }

    pub(crate) fn catalog(&self) -> String {
        format!("{}catalog/", self.root)
    }

    pub(crate) fn registration(&self, id: &str) -> String {
        format!("{}catalog/reg/{id}", self.root)
    }

    pub(crate) fn check(&self, id: &str) -> String {
        format!("{}catalog/check/{id}", self.root)
    }

    pub(crate) fn external_node(&self, name: &str) -> String {
        format!("{}catalog/node/{name}", self.root)
    }

    pub(crate) fn catalog_guard(&self) -> String {
        format!("{}catalog/guard", self.root)
    }

    /// What a key under [`Keys::catalog`] holds.
    pub(crate) fn catalog_entry<'k>(&self, key: &'k str) -> Option<CatalogEntry<'k>> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("catalog/")?;
        if let Some(id) = rest.strip_prefix("reg/") {
            return Some(CatalogEntry::Registration(id));
        }
        if let Some(name) = rest.strip_prefix("node/") {
            return Some(CatalogEntry::Node(name));
        }
        rest.strip_prefix("check/").map(CatalogEntry::Check)
    }

    pub(crate) fn kv(&self, key: &str) -> String {
        format!("{}kv/{key}", self.root)
    }

    /// The user's key of a key under `kv/`.
    pub(crate) fn kv_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.root)?.strip_prefix("kv/")
    }

    pub(crate) fn kv_lock(&self, key: &str) -> String {
        format!("{}kvlock/{key}", self.root)
    }

    /// The user's key of a key under `kvlock/`.
    pub(crate) fn kv_lock_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.root)?.strip_prefix("kvlock/")
    }

    pub(crate) fn kv_delay(&self, key: &str) -> String {
        format!("{}kvdelay/{key}", self.root)
    }

    pub(crate) fn session(&self, id: &str) -> String {
        format!("{}sessions/{id}", self.root)
    }

    pub(crate) fn sessions(&self) -> String {
        format!("{}sessions/", self.root)
    }

    pub(crate) fn session_alive(&self, id: &str) -> String {
        format!("{}session-alive/{id}", self.root)
    }

    /// The session ID of a key under `session-alive/`.
    pub(crate) fn session_alive_id<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.root)?.strip_prefix("session-alive/")
    }

    pub(crate) fn assignments(&self) -> String {
        format!("{}assign/", self.root)
    }

    pub(crate) fn assignment(&self, service: &str) -> String {
        format!("{}assign/{service}", self.root)
    }

    /// The service whose placements a key under [`Keys::assignments`] holds.
    pub(crate) fn assigned_service<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.root)?.strip_prefix("assign/")
    }

    pub(crate) fn election(&self) -> String {
        format!("{}election/leader", self.root)
    }

    pub(crate) fn secret(&self) -> String {
        format!("{}secret", self.root)
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub(crate) fn node(&self, name: &str, part: NodePart) -> String {
        format!("{}nodes/{name}/{}", self.root, part.name())
    }

    /// The node and the part a key under [`Keys::nodes`] holds.
    pub(crate) fn node_part<'k>(&self, key: &'k str) -> Option<(&'k str, NodePart)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("nodes/")?;
        let (name, part) = rest.rsplit_once('/')?;
        let part = [NodePart::Info, NodePart::Alive, NodePart::Report]
            .into_iter()
            .find(|known| known.name() == part)?;
        Some((name, part))
    }

    pub(crate) fn index(&self, area: Area) -> String {
        format!("{}index/{}", self.root, area.name())
    }

    pub(crate) fn indexes(&self) -> String {
        format!("{}index/", self.root)
    }

    /// The area of a key under [`Keys::indexes`].
    pub(crate) fn index_area(&self, key: &str) -> Option<Area> {
        Area::from_name(key.strip_prefix(&self.root)?.strip_prefix("index/")?)
    }
}

/// The keys of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodePart {
    Info,
    Alive,
    Report,
}

impl NodePart {
    fn name(self) -> &'static str {
        match self {
            NodePart::Info => "info",
            NodePart::Alive => "alive",
            NodePart::Report => "report",
        }
    }
}

/// A key of the catalog.
pub(crate) enum CatalogEntry<'k> {
    Registration(&'k str),
    Check(&'k str),
    Node(&'k str),
}

/// The value of `index/change`: what the change touched, and the nonce of its transaction.
pub(crate) fn encode_change(subject: &Subject, nonce: &str) -> String {
    let subject = match subject {
        Subject::Module(digest) => format!("module:{digest}"),
        Subject::Service(name) => format!("service:{name}"),
        Subject::Events(name) => format!("events:{name}"),
        Subject::Catalog => "catalog".to_owned(),
        Subject::Kv(key) => format!("kv:{key}"),
        Subject::Route(name) => format!("route:{name}"),
        Subject::Waiting(name) => format!("waiting:{name}"),
        Subject::Session(id) => format!("session:{id}"),
    };
    format!("{nonce}\n{subject}")
}

/// The nonce of the transaction that wrote this value of `index/change`.
pub(crate) fn change_nonce(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    value.split_once('\n').map(|(nonce, _)| nonce)
}

/// The subject `index/change` names; `None` for a value this shoal does not know.
pub(crate) fn decode_subject(value: &[u8]) -> Option<Subject> {
    let (_, value) = std::str::from_utf8(value).ok()?.split_once('\n')?;
    if value == "catalog" {
        return Some(Subject::Catalog);
    }
    let (kind, rest) = value.split_once(':')?;
    match kind {
        "module" => rest.parse().ok().map(Subject::Module),
        "service" => rest.parse().ok().map(Subject::Service),
        "events" => rest.parse().ok().map(Subject::Events),
        "kv" => Some(Subject::Kv(rest.to_owned())),
        "route" => rest.parse().ok().map(Subject::Route),
        "waiting" => rest.parse().ok().map(Subject::Waiting),
        "session" => Some(Subject::Session(rest.to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let name: ServiceName = "web".parse().unwrap();
        let digest = Digest::of(b"module");
        for subject in [
            Subject::Module(digest),
            Subject::Service(name.clone()),
            Subject::Events(name.clone()),
            Subject::Route(name.clone()),
            Subject::Waiting(name),
            Subject::Catalog,
            Subject::Kv("a/b:c".into()),
            Subject::Kv(String::new()),
            Subject::Session("5f0c".into()),
        ] {
            let value = encode_change(&subject, "n0nce");
            assert_eq!(decode_subject(value.as_bytes()), Some(subject));
            assert_eq!(change_nonce(value.as_bytes()), Some("n0nce"));
        }
        assert_eq!(decode_subject(b"n\nfuture:thing"), None);
    }

    #[test]
    fn keys_of_one_service_do_not_cover_another() {
        let keys = Keys::new("/shoal/v1");
        let web: ServiceName = "web".parse().unwrap();
        let web2: ServiceName = "web2".parse().unwrap();
        assert!(!keys.revision(&web2, 1).starts_with(&keys.revisions(&web)));
        assert!(keys.revision(&web, 1) < keys.revision(&web, 10));
        assert_eq!(keys.index_area(&keys.index(Area::Kv)), Some(Area::Kv));
        assert_eq!(keys.kv_key(&keys.kv("a/b")), Some("a/b"));
        let alive = keys.node("n1", NodePart::Alive);
        assert_eq!(keys.node_part(&alive), Some(("n1", NodePart::Alive)));
        assert_eq!(keys.node_part(&keys.nodes()), None);
    }
}
