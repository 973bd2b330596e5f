//! The Consul catalog's transactions: registering instances with their checks, checks on
//! their own, and check states.
//!
//! A registration and its checks are one write: registering a service with checks, or removing
//! it with its checks, is a single transaction, so a reader never sees a check whose service is
//! gone. Names are shared with wasm services: a name belongs either to a deployed wasm service
//! or to registered instances, never to both, because the gateway routes by name.
//! Check states are written only when they change, so a heartbeat that confirms a passing TTL
//! check costs no write.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use shoal_registry::{
    CatalogSnapshot, CheckDefinition, CheckRecord, CheckStatus, Committed, Error, ExternalNode,
    Registration, SCHEMA_VERSION, Subject,
};
use shoal_spec::FieldError;

use crate::db::{Area, Db, DbResult, Write, bump_change_index, decode, encode, read_indexes};
use crate::tables::{CHECKS, META, NODES, REGISTRATIONS, SERVICES};

impl Db {
    /// Registers (or re-registers) a service instance with its checks, in one transaction,
    /// and returns the stored registration.
    ///
    /// Re-registering an ID keeps its create index. Each check keeps its current state when it
    /// exists already and its definition sets none. With `replace_existing_checks`, the
    /// instance's checks missing from `checks` are removed; otherwise they stay.
    /// Fails with [`Error::NameTaken`] if a wasm service has the name, and with
    /// [`Error::Invalid`] if the ID is empty; then nothing is written.
    pub(crate) fn register_service(
        &self,
        registration: Registration,
        checks: Vec<CheckDefinition>,
        replace_existing_checks: bool,
    ) -> DbResult<Committed<Registration>> {
        let registration = normalized(registration)?;
        self.write(Subject::Catalog, |txn| {
            let change_index = bump_change_index(txn, &[Area::Catalog, Area::Health])?;
            let registration = register_in(
                txn,
                registration,
                checks,
                replace_existing_checks,
                change_index,
            )?;
            Ok(Write::Commit(registration))
        })
    }

    /// Registers a node of the catalog, with an instance and checks, in one transaction; see
    /// [`Store::register_node`](shoal_registry::Store::register_node).
    pub(crate) fn register_node(
        &self,
        mut node: ExternalNode,
        registration: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> DbResult<Committed<ExternalNode>> {
        if node.name.is_empty() {
            return Err(Error::Invalid(FieldError::new("Node", "missing node name")).into());
        }
        let registration = registration
            .map(|mut registration| {
                registration.node = node.name.clone();
                normalized(registration)
            })
            .transpose()?;
        self.write(Subject::Catalog, |txn| {
            let change_index = bump_change_index(txn, &[Area::Catalog, Area::Health])?;
            let mut nodes = txn.open_table(NODES)?;
            let existing = nodes
                .get(node.name.as_str())?
                .map(|value| decode::<ExternalNode>(value.value(), &node.name))
                .transpose()?;
            node.version = SCHEMA_VERSION;
            node.create_index = existing.map_or(change_index, |e| e.create_index);
            node.modify_index = change_index;
            nodes.insert(node.name.as_str(), encode(&node).as_slice())?;
            drop(nodes);
            // The checks of the instance registered now go with it; the others (of the node,
            // or of its instances registered earlier) are added on their own.
            let registered = registration.as_ref().map(|r| r.id.clone());
            let (own, others): (Vec<_>, Vec<_>) = checks
                .into_iter()
                .map(|mut check| {
                    check.node = node.name.clone();
                    check
                })
                .partition(|check| registered.is_some() && check.service_id == registered);
            if let Some(registration) = registration {
                register_in(txn, registration, own, false, change_index)?;
            }
            for check in others {
                add_check_in(txn, check, change_index)?;
            }
            Ok(Write::Commit(node.clone()))
        })
    }

    /// Removes a node of the catalog with its instances and checks; `false` if there was none.
    pub(crate) fn deregister_node(&self, name: &str) -> DbResult<Committed<bool>> {
        self.write(Subject::Catalog, |txn| {
            if txn.open_table(NODES)?.remove(name)?.is_none() {
                return Ok(Write::Abort(false));
            }
            txn.open_table(REGISTRATIONS)?.retain(|_, value| {
                decode::<Registration>(value, "").map_or(true, |r| r.node != name)
            })?;
            txn.open_table(CHECKS)?.retain(|_, value| {
                decode::<CheckRecord>(value, "").map_or(true, |c| c.definition.node != name)
            })?;
            bump_change_index(txn, &[Area::Catalog, Area::Health])?;
            Ok(Write::Commit(true))
        })
    }

    /// Removes a registered instance and its checks; `false` if there was no such ID.
    pub(crate) fn deregister_service(&self, id: &str) -> DbResult<Committed<bool>> {
        self.write(Subject::Catalog, |txn| {
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
    pub(crate) fn register_check(
        &self,
        definition: CheckDefinition,
    ) -> DbResult<Committed<CheckRecord>> {
        self.write(Subject::Catalog, |txn| {
            // Looked up first, so an unknown instance moves no index.
            if let Some(service_id) = &definition.service_id
                && txn
                    .open_table(REGISTRATIONS)?
                    .get(service_id.as_str())?
                    .is_none()
            {
                return Err(Error::NotFound {
                    kind: "service",
                    key: service_id.clone(),
                }
                .into());
            }
            let change_index = bump_change_index(txn, &[Area::Health])?;
            Ok(Write::Commit(add_check_in(txn, definition, change_index)?))
        })
    }

    /// Removes a check; `false` if there was no such ID.
    pub(crate) fn deregister_check(&self, id: &str) -> DbResult<Committed<bool>> {
        self.write(Subject::Catalog, |txn| {
            if txn.open_table(CHECKS)?.remove(id)?.is_none() {
                return Ok(Write::Abort(false));
            }
            bump_change_index(txn, &[Area::Health])?;
            Ok(Write::Commit(true))
        })
    }

    /// Sets a check's state. Writes (and bumps the health index) only if the status or the
    /// output changed; returns the record as it now stands, or `None` for an unknown ID.
    pub(crate) fn update_check(
        &self,
        id: &str,
        status: CheckStatus,
        output: &str,
    ) -> DbResult<Committed<Option<CheckRecord>>> {
        self.write(Subject::Catalog, |txn| {
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
    pub(crate) fn catalog(&self) -> DbResult<CatalogSnapshot> {
        let txn = self.database.begin_read()?;
        let mut snapshot = CatalogSnapshot {
            indexes: read_indexes(&txn.open_table(META)?)?,
            ..CatalogSnapshot::default()
        };
        for entry in txn.open_table(NODES)?.iter()? {
            let (key, value) = entry?;
            snapshot.nodes.push(decode(value.value(), key.value())?);
        }
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

/// A registration with its ID defaulted to its name; [`Error::Invalid`] without a name.
fn normalized(mut registration: Registration) -> DbResult<Registration> {
    if registration.id.is_empty() {
        registration.id = registration.name.clone();
    }
    if registration.name.is_empty() {
        return Err(Error::Invalid(FieldError::new("name", "missing service name")).into());
    }
    Ok(registration)
}

/// Stores a registration and its checks within `txn`, at `change_index`; see
/// [`Db::register_service`].
fn register_in(
    txn: &WriteTransaction,
    mut registration: Registration,
    checks: Vec<CheckDefinition>,
    replace_existing_checks: bool,
    change_index: u64,
) -> DbResult<Registration> {
    if txn
        .open_table(SERVICES)?
        .get(registration.name.as_str())?
        .is_some()
    {
        return Err(Error::NameTaken {
            name: registration.name.clone(),
            owner: "a wasm service deployed on this node",
        }
        .into());
    }
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
        let existing = existing_check(&table, &definition.id)?;
        let record = CheckRecord::from_definition(
            definition,
            existing.as_ref(),
            Some(&registration),
            change_index,
        );
        table.insert(record.definition.id.as_str(), encode(&record).as_slice())?;
    }
    Ok(registration)
}

/// Adds or replaces a check within `txn`, at `change_index`; [`Error::NotFound`] if it names
/// an instance that is not registered.
fn add_check_in(
    txn: &WriteTransaction,
    definition: CheckDefinition,
    change_index: u64,
) -> DbResult<CheckRecord> {
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
    let mut table = txn.open_table(CHECKS)?;
    let existing = existing_check(&table, &definition.id)?;
    let record = CheckRecord::from_definition(
        definition,
        existing.as_ref(),
        registration.as_ref(),
        change_index,
    );
    table.insert(record.definition.id.as_str(), encode(&record).as_slice())?;
    Ok(record)
}

/// The check stored under `id`, if any.
fn existing_check(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> DbResult<Option<CheckRecord>> {
    table
        .get(id)?
        .map(|value| decode::<CheckRecord>(value.value(), id))
        .transpose()
}

/// Whether a name is held by registered instances; used to keep wasm services off it.
pub(crate) fn name_is_registered(txn: &WriteTransaction, name: &str) -> DbResult<bool> {
    for entry in txn.open_table(REGISTRATIONS)?.iter()? {
        let (key, value) = entry?;
        let registration: Registration = decode(value.value(), key.value())?;
        if registration.name == name {
            return Ok(true);
        }
    }
    Ok(false)
}
