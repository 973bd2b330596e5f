//! [`Error`]: every way a node operation fails, in the node's own terms. It knows no HTTP
//! status: each surface (the management API, the Consul API) maps the variants to its own
//! wire format once.

use shoal_runtime::Shortfall;
use shoal_spec::{Digest, FieldError};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named module, service or check does not exist.
    #[error("{what} \"{key}\" not found")]
    NotFound {
        /// `module`, `service` or `check`.
        what: &'static str,
        /// The digest, name or ID.
        key: String,
    },
    /// A spec names a module that is not stored.
    #[error("module {0} not found")]
    ModuleNotFound(Digest),
    /// The change collides with what is there.
    #[error("{0}")]
    Conflict(Conflict),
    /// An input is refused; the error names the field.
    #[error("{0}")]
    Invalid(FieldError),
    /// A service's minimum replicas do not fit in the node.
    #[error(
        "service \"{service}\" does not fit: {min} minimum replicas {}",
        crate::convert::describe_shortfall(shortfall)
    )]
    InsufficientCapacity {
        /// The service.
        service: String,
        /// Its minimum replicas.
        min: u32,
        /// What they need against what is free.
        shortfall: Shortfall,
    },
    /// A service's minimum replicas do not fit on the live nodes of the cluster.
    #[error(
        "service \"{service}\" does not fit: {min} minimum replicas: {}",
        crate::convert::describe_cluster_shortfall(*per_replica, nodes)
    )]
    NoRoomInCluster {
        /// The service.
        service: String,
        /// Its minimum replicas.
        min: u32,
        /// What each replica requests.
        per_replica: shoal_runtime::ReplicaResources,
        /// Each live node's free room.
        nodes: Vec<NodeRoom>,
    },
    /// The module cannot run: not WebAssembly shoal runs, or (in a build without the
    /// compiler) not already compiled.
    #[error("{0}")]
    Module(shoal_runtime::Error),
    /// The store cannot be reached; the request may be retried.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The cluster's shared store (etcd) cannot be reached or has no quorum: nothing was
    /// written; reads still come from what this node last knew. Retry later.
    #[error("the cluster's store cannot be reached, nothing was written; try again: {0}")]
    ClusterUnavailable(String),
    /// The data directory cannot be written (the disk is full, say): nothing was stored, and
    /// what runs keeps running. Free space and retry.
    #[error("the data directory cannot be written, nothing was stored: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node failed; not the caller's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A live node's free room, as a refused deploy reports it.
#[derive(Debug, Clone)]
pub struct NodeRoom {
    /// The node.
    pub name: String,
    /// Its capacity less what is placed on it.
    pub free: shoal_runtime::ReplicaResources,
    /// How many of the refused service's replicas would fit there.
    pub fits: u64,
}

/// What a change collided with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// A module cannot be deleted while services run it.
    #[error("module {digest} is used by services {}", services.join(", "))]
    ModuleInUse {
        /// The module.
        digest: Digest,
        /// The services using it, sorted.
        services: Vec<String>,
    },
    /// A name belongs to another kind of service: the gateway routes by name.
    #[error("service name \"{name}\" is taken by {owner}")]
    NameTaken {
        /// The name.
        name: String,
        /// Who holds it, in words.
        owner: &'static str,
    },
    /// The service exists and the write was to create it.
    #[error("service \"{name}\" already exists")]
    Exists {
        /// The service.
        name: String,
    },
    /// The service changed after the version the writer had seen.
    #[error(
        "service \"{name}\" was changed at index {current}, after the version the write was \
         based on ({seen}); read it again and reapply the change"
    )]
    Stale {
        /// The service.
        name: String,
        /// The change index the writer had seen.
        seen: u64,
        /// The change index of its current version.
        current: u64,
    },
    /// Another writer changed the service meanwhile, again and again.
    #[error("{0}")]
    Changed(String),
}

/// The result of a node operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A refusal of `field` for `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid(FieldError::new(field, reason))
    }
}

impl From<shoal_registry::Error> for Error {
    fn from(error: shoal_registry::Error) -> Error {
        use shoal_registry::Error as E;
        match error {
            E::NotFound { kind, key } => Error::NotFound { what: kind, key },
            E::ModuleInUse { digest, services } => {
                Error::Conflict(Conflict::ModuleInUse { digest, services })
            }
            E::NameTaken { name, owner } => Error::Conflict(Conflict::NameTaken { name, owner }),
            E::ModuleNotFound(digest) => Error::ModuleNotFound(digest),
            conflict @ E::Conflict { .. } => {
                Error::Conflict(Conflict::Changed(conflict.to_string()))
            }
            E::Invalid(error) => Error::Invalid(error),
            // Only the cluster's store is remote: a node's own redb file is always there.
            E::Unavailable(reason) => Error::ClusterUnavailable(reason),
            E::Closed => Error::ShuttingDown,
            E::Full(reason) => Error::Storage(reason),
            other => Error::Internal(format!("{:#}", anyhow::Error::new(other))),
        }
    }
}

impl From<shoal_spec::Error> for Error {
    fn from(error: shoal_spec::Error) -> Error {
        match error {
            shoal_spec::Error::Invalid(error) => Error::Invalid(error),
            other => Error::invalid("body", other.to_string()),
        }
    }
}

impl From<shoal_runtime::Error> for Error {
    fn from(error: shoal_runtime::Error) -> Error {
        match error {
            shoal_runtime::Error::Internal(error) => Error::Internal(format!("{error:#}")),
            shoal_runtime::Error::Storage(reason) => Error::Storage(reason),
            other => Error::Module(other),
        }
    }
}
