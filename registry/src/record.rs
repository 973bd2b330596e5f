//! The records a store keeps: each module's [`ModuleRecord`], each service's current
//! [`ServiceRecord`] and every [`RevisionRecord`], and the recent [`EventRecord`]s of each
//! service.
//!
//! These types are the store's boundary, so they derive serde (and nothing internal does).
//! Every stored record carries a `version` field, [`SCHEMA_VERSION`], so a later shoal can
//! recognise and migrate what an earlier one wrote.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_spec::{Digest, ImageRef, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

/// Refuses bytes that `digest` is not the digest of: a content address that does not match
/// the content would make every later lookup lie, so the cost of hashing again is worth paying.
pub fn check_digest(digest: &Digest, bytes: &[u8]) -> crate::Result<()> {
    let actual = Digest::of(bytes);
    if actual != *digest {
        return Err(crate::Error::Invalid(shoal_spec::FieldError::new(
            "digest",
            format!("{digest} does not match the module bytes, which hash to {actual}"),
        )));
    }
    Ok(())
}

/// Refuses to delete the module `digest` while any of `services` (every service's current
/// record) names it.
pub fn check_unused(
    digest: &Digest,
    services: impl IntoIterator<Item = ServiceRecord>,
) -> crate::Result<()> {
    let users: Vec<String> = services
        .into_iter()
        .filter(|service| service.spec.module == *digest)
        .map(|service| service.name.to_string())
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(crate::Error::ModuleInUse {
        digest: digest.clone(),
        services: users,
    })
}

/// The schema version written into every stored record.
pub const SCHEMA_VERSION: u32 = 1;

/// The scale events kept per service: recording one more drops the oldest.
pub const MAX_EVENTS_PER_SERVICE: usize = 100;

/// The stored metadata of a module; its bytes are stored apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The digest of the module bytes, which is also its key.
    pub digest: Digest,
    /// The length of the module bytes.
    pub size: u64,
    /// How the module is invoked.
    pub kind: ModuleKind,
    /// When the module was first stored, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The change index of the change that stored it (naming it does not move this).
    pub change_index: u64,
    /// The names it was given ([`Store::name_module`](crate::Store::name_module)), each with
    /// the change index at which it was given: a name resolves to the module that was given
    /// it last ([`module_named`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, u64>,
}

/// The module `name` resolves to: of those given the name, the one given it last.
pub fn module_named<'a>(modules: &'a [ModuleRecord], name: &str) -> Option<&'a ModuleRecord> {
    modules
        .iter()
        .filter_map(|module| Some((module.names.get(name)?, module)))
        .max_by_key(|(index, _)| **index)
        .map(|(_, module)| module)
}

/// The module `image` names among `modules`: by digest, or the module given one of its names
/// most recently.
pub fn module_of_image<'a>(
    modules: &'a [ModuleRecord],
    image: &ImageRef,
) -> Option<&'a ModuleRecord> {
    match image {
        ImageRef::Digest(digest) => modules.iter().find(|module| module.digest == *digest),
        ImageRef::Name(_) => image
            .names()
            .into_iter()
            .find_map(|name| module_named(modules, name)),
    }
}

/// A service waiting for its module: written with an image that names no stored module yet
/// (a Kubernetes Pod in `ErrImagePull`). It runs nothing and holds no resources; once a module
/// is stored or named so that the image names it, the node makes it a service and deletes
/// this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The service's name, which is also its key.
    pub name: ServiceName,
    /// The image as written: a digest or a module name ([`ImageRef`]).
    pub image: String,
    /// The spec the service will run; its `module` is replaced by the module the image names.
    pub spec: ServiceSpec,
    /// When the record was created, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When the current spec was stored, in milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The change index of the change that stored it, what
    /// [`Expect::Revision`](crate::Expect::Revision) names for it.
    pub change_index: u64,
}

impl WaitingRecord {
    /// The record a write of `image` and `spec` makes over `current`, at `change_index` (0
    /// where the backend fills it in when read back).
    pub fn written(
        name: &ServiceName,
        image: &str,
        spec: ServiceSpec,
        current: Option<&WaitingRecord>,
        now_unix_ms: u64,
        change_index: u64,
    ) -> WaitingRecord {
        WaitingRecord {
            version: SCHEMA_VERSION,
            name: name.clone(),
            image: image.to_owned(),
            spec,
            created_unix_ms: current.map_or(now_unix_ms, |current| current.created_unix_ms),
            updated_unix_ms: now_unix_ms,
            change_index,
        }
    }
}

/// A route: a name the gateway answers for, leading to the services its selector picks (a
/// Kubernetes Service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The route's name, which is also its key.
    pub name: ServiceName,
    /// The current spec.
    pub spec: RouteSpec,
    /// When the route was created, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When the current spec was stored, in milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The change index of the change that stored the current spec; a route has no revision
    /// number, so this is what [`Expect::Revision`](crate::Expect::Revision) names for it.
    pub change_index: u64,
}

impl RouteRecord {
    /// The record a write of `spec` makes over `current`, at `change_index` (0 where the
    /// backend fills it in when read back).
    pub fn written(
        name: &ServiceName,
        spec: RouteSpec,
        current: Option<&RouteRecord>,
        now_unix_ms: u64,
        change_index: u64,
    ) -> RouteRecord {
        RouteRecord {
            version: SCHEMA_VERSION,
            name: name.clone(),
            spec,
            created_unix_ms: current.map_or(now_unix_ms, |current| current.created_unix_ms),
            updated_unix_ms: now_unix_ms,
            change_index,
        }
    }
}

/// The current state of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The service's name, which is also its key.
    pub name: ServiceName,
    /// The current revision: 1 when created, plus one for every change of spec.
    pub revision: u64,
    /// The current spec.
    pub spec: ServiceSpec,
    /// When the service was created, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When the current revision was stored, in milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The change index of the change that stored the current revision.
    pub change_index: u64,
}

/// One scale decision of a service: its replica count went from `from` to `to` (or stayed,
/// when the decision was a refusal such as "at capacity"), and why.
///
/// The registry keeps the newest [`MAX_EVENTS_PER_SERVICE`](MAX_EVENTS_PER_SERVICE)
/// of each service, until the service is deleted;
/// see [`Store::record_event`](crate::Store::record_event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The service the decision was about.
    pub service: ServiceName,
    /// The event's number among the service's events: 1 for the first, strictly increasing,
    /// and never reused while the service exists, even after older events are pruned.
    pub seq: u64,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// The replica count before.
    pub from: u32,
    /// The replica count after.
    pub to: u32,
    /// Why, in words, e.g. `"load 4.2 over 3 replicas"` or `"idle"`.
    pub reason: String,
}

/// One revision of a service, kept until the service is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The service this is a revision of.
    pub name: ServiceName,
    /// The revision number, counting from 1.
    pub revision: u64,
    /// The spec of this revision.
    pub spec: ServiceSpec,
    /// When this revision was stored, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The change index of the change that stored this revision.
    pub change_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(bytes: &[u8], names: &[(&str, u64)]) -> ModuleRecord {
        ModuleRecord {
            version: SCHEMA_VERSION,
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            kind: ModuleKind::Http,
            created_unix_ms: 0,
            change_index: 1,
            names: names.iter().map(|(n, i)| (n.to_string(), *i)).collect(),
        }
    }

    #[test]
    fn a_name_resolves_to_the_module_given_it_last() {
        let modules = [
            module(b"a", &[("hello", 9), ("old", 2)]),
            module(b"b", &[("hello", 4)]),
            module(b"c", &[]),
        ];
        assert_eq!(
            module_named(&modules, "hello").map(|m| &m.digest),
            Some(&Digest::of(b"a"))
        );
        assert_eq!(
            module_named(&modules, "old").map(|m| &m.digest),
            Some(&Digest::of(b"a"))
        );
        assert_eq!(module_named(&modules, "missing"), None);
        assert_eq!(module_named(&[], "hello"), None);
    }

    #[test]
    fn a_module_without_names_reads_and_writes_as_before() {
        let plain = module(b"a", &[]);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("names").is_none(), "{json}");
        let named = module(b"a", &[("hello", 3)]);
        let read: ModuleRecord =
            serde_json::from_value(serde_json::to_value(&named).unwrap()).unwrap();
        assert_eq!(read, named);
    }
}
