//! How every backend stores a record: JSON with its `version` checked first, so a record
//! written by a newer shoal is reported as such rather than as whichever field no longer fits.
//!
//! It is here, beside the records, so that a node reading what another backend (or another
//! node of a cluster) wrote decodes it exactly the same way.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    CheckRecord, Error, EventRecord, ExternalNode, ModuleRecord, Registration, Result,
    RevisionRecord, RouteRecord, SCHEMA_VERSION, ServiceRecord, SessionRecord, WaitingRecord,
};

/// A record type stored as JSON, named in corruption errors.
pub trait StoredRecord: Serialize + DeserializeOwned {
    /// What the record describes, e.g. `"module"`.
    const KIND: &'static str;
}

impl StoredRecord for ModuleRecord {
    const KIND: &'static str = "module";
}

impl StoredRecord for ServiceRecord {
    const KIND: &'static str = "service";
}

impl StoredRecord for RouteRecord {
    const KIND: &'static str = "route";
}

impl StoredRecord for WaitingRecord {
    const KIND: &'static str = "waiting service";
}

impl StoredRecord for EventRecord {
    const KIND: &'static str = "event";
}

impl StoredRecord for RevisionRecord {
    const KIND: &'static str = "revision";
}

impl StoredRecord for Registration {
    const KIND: &'static str = "registration";
}

impl StoredRecord for CheckRecord {
    const KIND: &'static str = "check";
}

impl StoredRecord for ExternalNode {
    const KIND: &'static str = "node";
}

impl StoredRecord for SessionRecord {
    const KIND: &'static str = "session";
}

/// The stored form of a record.
pub fn encode<R: StoredRecord>(record: &R) -> Vec<u8> {
    serde_json::to_vec(record)
        .expect("records always serialize: every map has string keys and no serializer fails")
}

/// Decodes the record stored under `key`, refusing schema versions this build does not know
/// with [`Error::Corrupt`].
pub fn decode<R: StoredRecord>(bytes: &[u8], key: &str) -> Result<R> {
    /// Just the version, read first.
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u32,
    }

    let corrupt = |problem: String| Error::Corrupt(format!("{} record {key:?} {problem}", R::KIND));
    let Versioned { version } =
        serde_json::from_slice(bytes).map_err(|err| corrupt(format!("does not decode: {err}")))?;
    if version != SCHEMA_VERSION {
        return Err(corrupt(format!(
            "has schema version {version}, but this shoal reads version {SCHEMA_VERSION}"
        )));
    }
    serde_json::from_slice(bytes).map_err(|err| corrupt(format!("does not decode: {err}")))
}
