//! shoal's durable registry: the modules, services and service revisions of one node, and the
//! recent scale events of each service, kept in a single redb file so that every acknowledged
//! change survives a crash.
//!
//! What is stored:
//! - each module's bytes and its [`ModuleRecord`], keyed by digest;
//! - each service's current [`ServiceRecord`], whose spec says what it runs and how it runs as
//!   a scaled workload;
//! - every revision of each service's spec ([`RevisionRecord`]), until the service is deleted;
//! - the newest [`MAX_EVENTS_PER_SERVICE`] scale events of each service ([`EventRecord`]);
//! - the change index.
//!
//! The registry stores bytes plus metadata and nothing else.
//! **Architecture Invariant:** it knows nothing of wasmtime, HTTP or axum; whether a module is a
//! valid component is decided by `shoal-runtime` before the bytes arrive here.
//!
//! **API Boundary:** the API is synchronous, because redb is.
//! The async bridge (`spawn_blocking`) lives in the `api` crate, and no method here holds a
//! transaction longer than one call.
//!
//! It also holds what the Consul-compatible API serves: service instances registered from
//! outside with their health checks ([`Registration`], [`CheckRecord`]), and a key/value store
//! ([`KvEntry`]).
//!
//! Every change (storing or deleting a module, creating, updating or deleting a service,
//! registering an instance or a check, a check changing state, a key/value write) is exactly
//! one durable write transaction, and bumps a monotonic [change index](Registry::change_index)
//! that watchers use to notice that something changed; it is Consul's `X-Consul-Index`.
//! Each change also marks the [area](Indexes) it touched (catalog, health, key/value), so a
//! watcher of one area is not woken by the others.
//! Recording a scale event is a write too: an observation, not configuration, it marks only the
//! health area, where replicas show as instances.
//!
//! # Layout
//!
//! - `record.rs`: the stored records of modules, services, revisions and events; the
//!   vocabulary they hold (names, the service spec) is `shoal-spec`'s.
//! - `catalog.rs`: registered service instances and their checks.
//! - `kv.rs`: the key/value store.
//! - `tables.rs`: every redb table definition, in one place.
//! - `store.rs`: [`Registry`], the transactions over those tables.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod catalog;
mod kv;
mod record;
mod store;
mod tables;

pub use self::catalog::{
    CatalogSnapshot, CheckDefinition, CheckRecord, CheckStatus, Probe, Registration, TaggedAddress,
    Weights,
};
pub use self::kv::{KvEntry, MAX_KV_VALUE_SIZE};
pub use self::record::{EventRecord, ModuleRecord, RevisionRecord, SCHEMA_VERSION, ServiceRecord};
pub use shoal_spec::FieldError;

pub use self::store::{Indexes, MAX_EVENTS_PER_SERVICE, Registry};
use shoal_spec::Digest;

/// The errors of every registry operation.
///
/// Only the variants callers branch on are distinct; everything the caller can only report
/// (redb failures) is [`Error::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The addressed module or service does not exist.
    #[error("{kind} \"{key}\" not found")]
    NotFound {
        /// What was looked for: `"module"` or `"service"`.
        kind: &'static str,
        /// The digest or name that was looked for.
        key: String,
    },
    /// A module cannot be deleted because current service specs refer to it.
    #[error("module {digest} is used by services {}", services.join(", "))]
    ModuleInUse {
        /// The module that was to be deleted.
        digest: Digest,
        /// The names of the services using it, sorted.
        services: Vec<String>,
    },
    /// A service name is held by something else: a wasm service, or registered instances.
    /// The gateway routes by name, so a name has one owner.
    #[error("service name \"{name}\" is taken by {owner}")]
    NameTaken {
        /// The name.
        name: String,
        /// Who holds it, in words.
        owner: &'static str,
    },
    /// A service spec names a module that is not stored.
    #[error("module {0} not found")]
    ModuleNotFound(Digest),
    /// An input failed validation; the error names the field.
    #[error("{0}")]
    Invalid(FieldError),
    /// The database failed; the cause is the [source](std::error::Error::source).
    #[error("registry storage failed")]
    Storage(#[source] redb::Error),
    /// A stored record does not decode, or the database lacks something `open` always writes.
    #[error("corrupt registry: {0}")]
    Corrupt(String),
}

/// The result of every registry operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<shoal_spec::Error> for Error {
    fn from(error: shoal_spec::Error) -> Error {
        match error {
            shoal_spec::Error::Invalid(error) => Error::Invalid(error),
            other => Error::Invalid(FieldError::new("body", other.to_string())),
        }
    }
}

impl From<redb::Error> for Error {
    fn from(error: redb::Error) -> Error {
        Error::Storage(error)
    }
}

/// Converts each of redb's per-operation errors into [`Error::Storage`], through `redb::Error`,
/// which redb provides as the superset of all of them.
macro_rules! storage_error_from {
    ($($redb_error:ty),* $(,)?) => {
        $(
            impl From<$redb_error> for Error {
                fn from(error: $redb_error) -> Error {
                    Error::Storage(redb::Error::from(error))
                }
            }
        )*
    };
}

storage_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

#[cfg(test)]
mod tests {
    #[test]
    fn error_messages() {
        let digest = shoal_spec::Digest::of(b"");
        let in_use = super::Error::ModuleInUse {
            digest: digest.clone(),
            services: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            in_use.to_string(),
            format!("module {digest} is used by services a, b")
        );
        let not_found = super::Error::NotFound {
            kind: "service",
            key: "x".into(),
        };
        assert_eq!(not_found.to_string(), "service \"x\" not found");
        assert_eq!(
            super::Error::ModuleNotFound(digest.clone()).to_string(),
            format!("module {digest} not found")
        );
    }
}
