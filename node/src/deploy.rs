//! Modules and services: uploading, deploying, scaling and deleting, and reading what is
//! deployed.
//!
//! Everything that can refuse a change (validation, compiling, admission against the node's
//! capacity) happens before the store is written, so a stored service is always runnable and a
//! refused one leaves nothing behind. A service is written against the revision the writer
//! read; if another writer got there first, the deploy reads again and decides again.

use bytes::Bytes;
use shoal_registry::{
    EventRecord, Expect, MAX_EVENTS_PER_SERVICE, ModuleRecord, RevisionRecord, ServiceRecord,
};
use shoal_runtime::GuestKind;
use shoal_spec::{Digest, Isolation, Limits, ServiceName, ServiceSpec};

use crate::{Conflict, Error, Node, Result, convert};

/// How often a deploy reads again after losing a race with another writer.
const MAX_ATTEMPTS: u32 = 3;

/// Conditions on a service write and what to do when it does not fit, for surfaces whose
/// clients expect them (the Kubernetes API's create, replace with a resourceVersion, and
/// pods that wait for room). The default is [`Node::put_service`]'s: create or update,
/// refuse what does not fit.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Only create: [`Conflict::Exists`] if the service exists.
    pub create_only: bool,
    /// Only update: [`Error::NotFound`] if the service does not exist.
    pub update_only: bool,
    /// Write only if the service has not changed since this change index (a client's
    /// Kubernetes resourceVersion): [`Conflict::Stale`] if it has.
    pub unchanged_since: Option<u64>,
    /// Store the service even when its minimum replicas do not fit: it runs what fits and
    /// the rest wait for room, as Kubernetes keeps such pods Pending. Without it a spec that
    /// does not fit is refused.
    pub admit_pending: bool,
}

impl WriteOptions {
    /// Checks these conditions against what holds the name now, known by its change index
    /// (`None`: nothing); `not_found` is the error of an update of nothing.
    pub(crate) fn check(
        &self,
        name: &ServiceName,
        current: Option<u64>,
        not_found: impl FnOnce() -> Error,
    ) -> Result<()> {
        match current {
            Some(_) if self.create_only => Err(Error::Conflict(Conflict::Exists {
                name: name.to_string(),
            })),
            None if self.update_only => Err(not_found()),
            Some(current) if self.unchanged_since.is_some_and(|seen| seen < current) => {
                Err(Error::Conflict(Conflict::Stale {
                    name: name.to_string(),
                    seen: self.unchanged_since.unwrap_or_default(),
                    current,
                }))
            }
            _ => Ok(()),
        }
    }
}

impl Node {
    /// Stores a module after validating and compiling it; idempotent by digest. Returns the
    /// record and whether it was new.
    ///
    /// A build without the compiler takes a module only if its machine code is already in the
    /// artifact cache.
    ///
    /// A service waiting for this module ([`write_waiting`](Node::write_waiting)) starts.
    pub async fn add_module(&self, bytes: Bytes) -> Result<(ModuleRecord, bool)> {
        let (record, created) = self.store_module(bytes).await?;
        if created {
            self.resolve_waiting().await;
        }
        Ok((record, created))
    }

    async fn store_module(&self, bytes: Bytes) -> Result<(ModuleRecord, bool)> {
        self.check_running()?;
        let digest = Digest::of(&bytes);
        if let Some(record) = self.inner.store.module(&digest).await? {
            return Ok((record, false));
        }
        let compiled = self.compile_module(&digest, bytes.clone(), true).await?;
        let stored = self.put_module(&digest, compiled.kind(), bytes).await?;
        self.optimize_later(&digest, &compiled);
        Ok(stored)
    }

    async fn put_module(
        &self,
        digest: &Digest,
        kind: GuestKind,
        bytes: Bytes,
    ) -> Result<(ModuleRecord, bool)> {
        let kind = convert::module_kind(kind);
        // In a cluster, on a second node's disk before the record says the module exists.
        self.replicate_module(digest, kind, &bytes).await?;
        let committed = self.inner.store.put_module(digest, kind, bytes).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Installs a precompiled package (`shoal compile`): checks it, writes its machine code to
    /// the artifact cache and stores its wasm bytes as the module, which then deploys like any
    /// other, on a node without a compiler too. Idempotent by digest.
    ///
    /// Loading machine code is running it: the surfaces call this only for callers that
    /// presented the node's token.
    pub async fn install_precompiled(
        &self,
        package: Bytes,
        name: Option<&str>,
    ) -> Result<(ModuleRecord, bool)> {
        self.check_running()?;
        if let Some(name) = name {
            check_module_name(name)?;
        }
        let package = shoal_runtime::Precompiled::parse(&package)?;
        let digest: Digest = package.digest.parse()?;
        let runtime = self.inner.runtime.clone();
        let (compiled, package) = tokio::task::spawn_blocking(move || {
            runtime
                .install(&package)
                .map(|compiled| (compiled, package))
        })
        .await
        .map_err(|error| Error::Internal(error.to_string()))??;
        let (record, created) = match self.inner.store.module(&digest).await? {
            Some(record) => (record, false),
            None => {
                self.put_module(&digest, compiled.kind(), Bytes::from(package.wasm))
                    .await?
            }
        };
        // Services stored with this module that could not run here (its code was missing or
        // damaged) can now.
        self.retry_unrunnable().await;
        self.name_and_resolve(record, created, name).await
    }

    /// [`add_module`](Node::add_module), then gives the module `name`, which then resolves to
    /// it ([`module_named`](Node::module_named)) until a newer module is given the name.
    pub async fn add_named_module(
        &self,
        bytes: Bytes,
        name: Option<&str>,
    ) -> Result<(ModuleRecord, bool)> {
        if let Some(name) = name {
            check_module_name(name)?;
        }
        let (record, created) = self.store_module(bytes).await?;
        self.name_and_resolve(record, created, name).await
    }

    async fn name_and_resolve(
        &self,
        record: ModuleRecord,
        created: bool,
        name: Option<&str>,
    ) -> Result<(ModuleRecord, bool)> {
        let record = match name {
            Some(name) => {
                let committed = self.inner.store.name_module(&record.digest, name).await?;
                self.wait_applied(committed.index).await?;
                committed.value
            }
            None => record,
        };
        if created || name.is_some() {
            self.resolve_waiting().await;
        }
        Ok((record, created))
    }

    /// The module most recently given `name`.
    pub async fn module_named(&self, name: &str) -> Result<ModuleRecord> {
        let modules = self.modules().await?;
        shoal_registry::module_named(&modules, name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "module",
                key: name.to_string(),
            })
    }

    /// A stored module.
    pub async fn module(&self, digest: &Digest) -> Result<ModuleRecord> {
        self.check_running()?;
        self.inner
            .store
            .module(digest)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "module",
                key: digest.to_string(),
            })
    }

    /// Every stored module, by digest.
    pub async fn modules(&self) -> Result<Vec<ModuleRecord>> {
        self.check_running()?;
        Ok(self.inner.store.modules().await?)
    }

    /// Deletes a module no service runs.
    pub async fn delete_module(&self, digest: &Digest) -> Result<ModuleRecord> {
        self.check_running()?;
        let committed = self.inner.store.delete_module(digest).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// Creates or updates a service, and answers once it is routable here. Returns the record
    /// and whether it was created.
    pub async fn put_service(
        &self,
        name: ServiceName,
        spec: ServiceSpec,
    ) -> Result<(ServiceRecord, bool)> {
        self.write_service(name, spec, WriteOptions::default())
            .await
    }

    /// [`put_service`](Node::put_service), with conditions on what is there and a choice
    /// of what to do when the minimum replicas do not fit (see [`WriteOptions`]).
    pub async fn write_service(
        &self,
        name: ServiceName,
        mut spec: ServiceSpec,
        options: WriteOptions,
    ) -> Result<(ServiceRecord, bool)> {
        self.check_running()?;
        spec.normalize();
        spec.validate()?;
        self.check_limits(&spec.limits)?;
        let _admission = self.inner.admission.lock().await;
        let store = &self.inner.store;
        if store.module(&spec.module).await?.is_none() {
            return Err(Error::ModuleNotFound(spec.module.clone()));
        }
        // Compile (or load) before storing, so a stored service is always runnable.
        let compiled = self.compiled(&spec.module).await?;
        if spec.isolation == Isolation::Reuse && compiled.kind() == GuestKind::Cgi {
            return Err(Error::invalid(
                "isolation",
                "reuse needs a wasi:http component; a CGI command runs once per request",
            ));
        }
        let mut attempt = 1;
        loop {
            let current = store.service(&name).await?;
            // A service waiting for its module holds the name until this write replaces it.
            let waiting = match &current {
                Some(_) => None,
                None => self.waiting_named(&name).await?,
            };
            let holder = current
                .as_ref()
                .map(|current| current.change_index)
                .or(waiting.as_ref().map(|waiting| waiting.change_index));
            options.check(&name, holder, || service_not_found(&name))?;
            if !options.admit_pending {
                self.admit(&name, &spec)?;
            }
            let expect = current
                .as_ref()
                .map_or(Expect::Absent, |current| Expect::Revision(current.revision));
            match store.put_service(&name, spec.clone(), expect).await {
                Ok(committed) => {
                    if let Some(waiting) = waiting {
                        self.forget_waiting(&waiting).await?;
                    }
                    self.wait_applied(committed.index).await?;
                    return Ok(committed.value);
                }
                Err(shoal_registry::Error::Conflict { .. }) if attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Refuses a spec whose minimum replicas do not fit in the node, counting the replicas
    /// of the revision it replaces as free.
    fn admit(&self, name: &ServiceName, spec: &ServiceSpec) -> Result<()> {
        if let Some(joined) = &self.inner.cluster {
            return self.admit_in_cluster(joined, name, spec);
        }
        let per_replica = convert::replica_requests(spec);
        let needed = per_replica.times(u64::from(spec.scale.min));
        let credit = self
            .inner
            .deployed
            .load()
            .get(name)
            .map(|deployed| deployed.pool.reserved())
            .unwrap_or_default();
        self.inner
            .capacity
            .admit(needed, credit)
            .map_err(|shortfall| Error::InsufficientCapacity {
                service: name.to_string(),
                min: spec.scale.min,
                shortfall,
            })
    }

    /// Refuses a spec whose minimum replicas fit on no combination of live nodes, counting
    /// what is placed on each (but the replicas of the revision it replaces).
    fn admit_in_cluster(
        &self,
        joined: &crate::Joined,
        name: &ServiceName,
        spec: &ServiceSpec,
    ) -> Result<()> {
        let min = spec.scale.min;
        if min == 0 {
            return Ok(());
        }
        let per_replica = convert::replica_requests(spec);
        let members = joined.cluster.members().borrow().clone();
        let placements = joined.cluster.placements().borrow().clone();
        let rooms = self.rooms(&members, &placements, Some(name.as_str()));
        let nodes: Vec<crate::NodeRoom> = rooms
            .iter()
            .map(|(node, room)| crate::NodeRoom {
                name: node.clone(),
                free: shoal_runtime::ReplicaResources {
                    memory: room.capacity.memory.saturating_sub(room.reserved.memory),
                    cpu_millis: room
                        .capacity
                        .cpu_millis
                        .saturating_sub(room.reserved.cpu_millis),
                },
                fits: room.fits_count(per_replica).min(u64::from(u32::MAX)),
            })
            .collect();
        if nodes.iter().map(|node| node.fits).sum::<u64>() >= u64::from(min) {
            return Ok(());
        }
        Err(Error::NoRoomInCluster {
            service: name.to_string(),
            min,
            per_replica,
            nodes,
        })
    }

    /// Refuses limits this node cannot honour, beyond what [`ServiceSpec::validate`] checks.
    pub fn check_limits(&self, limits: &Limits) -> Result<()> {
        limits.validate()?;
        let max_memory = self.inner.runtime.config().max_memory_per_instance;
        if limits.memory.bytes() > max_memory {
            return Err(Error::invalid(
                "limits.memory",
                format!(
                    "{} exceeds this node's per-instance maximum of {max_memory} bytes",
                    limits.memory
                ),
            ));
        }
        Ok(())
    }

    /// Deletes a service and its history; answers once it is no longer routed here.
    pub async fn delete_service(&self, name: &ServiceName) -> Result<ServiceRecord> {
        self.check_running()?;
        let committed = self.inner.store.delete_service(name, Expect::Any).await?;
        self.wait_applied(committed.index).await?;
        Ok(committed.value)
    }

    /// A service's current record. In a cluster whose store cannot be reached, as this node
    /// runs it.
    pub async fn service(&self, name: &ServiceName) -> Result<ServiceRecord> {
        self.check_running()?;
        let found = match self.inner.store.service(name).await {
            Err(shoal_registry::Error::Unavailable(_)) if self.inner.cluster.is_some() => self
                .inner
                .deployed
                .load()
                .get(name)
                .map(|deployed| deployed.record.clone()),
            read => read?,
        };
        found.ok_or_else(|| service_not_found(name))
    }

    /// Every service's current record, by name. In a cluster whose store cannot be reached,
    /// the services this node runs, as it runs them.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>> {
        self.check_running()?;
        match self.inner.store.services().await {
            Err(shoal_registry::Error::Unavailable(_)) if self.inner.cluster.is_some() => {
                Ok(self.running_records())
            }
            read => Ok(read?),
        }
    }

    /// The records of the services this node runs, by name.
    pub(crate) fn running_records(&self) -> Vec<ServiceRecord> {
        let mut records: Vec<ServiceRecord> = self
            .inner
            .deployed
            .load()
            .values()
            .map(|deployed| deployed.record.clone())
            .collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
    }

    /// Every revision of a service, oldest first.
    pub async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>> {
        self.check_running()?;
        Ok(self.inner.store.revisions(name).await?)
    }

    /// Makes an earlier revision's spec current again, as a new revision: revision `to`, or
    /// the one before the current one. The history keeps both, so a rollback can be rolled
    /// back; a spec that no longer fits, or whose module was deleted, is refused as any write.
    pub async fn rollback(&self, name: &ServiceName, to: Option<u64>) -> Result<ServiceRecord> {
        let current = self.service(name).await?;
        let target = match to {
            Some(to) => to,
            None if current.revision > 1 => current.revision - 1,
            None => {
                return Err(Error::invalid(
                    "to",
                    format!("service {name} has one revision: there is none to roll back to"),
                ));
            }
        };
        if target == current.revision {
            return Err(Error::invalid(
                "to",
                format!("revision {target} is the current revision of {name}"),
            ));
        }
        let revisions = self.revisions(name).await?;
        let revision = revisions
            .into_iter()
            .find(|revision| revision.revision == target)
            .ok_or_else(|| Error::NotFound {
                what: "revision",
                key: format!("{name}/{target}"),
            })?;
        let options = WriteOptions {
            update_only: true,
            unchanged_since: Some(current.change_index),
            ..WriteOptions::default()
        };
        let (record, _) = self
            .write_service(name.clone(), revision.spec, options)
            .await?;
        Ok(record)
    }

    /// A service's newest scale events, oldest first; all that are kept with `None`.
    pub async fn events(
        &self,
        name: &ServiceName,
        limit: Option<usize>,
    ) -> Result<Vec<EventRecord>> {
        self.check_running()?;
        let limit = limit.unwrap_or(MAX_EVENTS_PER_SERVICE);
        Ok(self.inner.store.events(name, limit).await?)
    }
}

/// A module's name: 1 to 128 lowercase letters, digits, `.`, `_`, `-` and `:` (an image's
/// tag), starting and ending with a letter or digit; never `sha256:…`, which is a digest.
fn check_module_name(name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_:".contains(c);
    let edges_ok =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let reason = if name.is_empty() || name.len() > 128 {
        Some("must be 1 to 128 characters")
    } else if !name.chars().all(allowed)
        || !edges_ok(name.chars().next())
        || !edges_ok(name.chars().last())
    {
        Some(
            "must be lowercase letters, digits, '.', '_', '-' and ':', starting and ending with a \
             letter or digit",
        )
    } else if name.starts_with("sha256:") {
        Some("must not look like a digest")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::invalid("name", format!("{name:?} {reason}"))),
        None => Ok(()),
    }
}

fn service_not_found(name: &ServiceName) -> Error {
    Error::NotFound {
        what: "service",
        key: name.to_string(),
    }
}
