//! Modules and their names, services, their revisions and their scale events, routes and
//! services waiting for their module, as
//! etcd transactions.

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, TxnOp};
use shoal_registry::codec::StoredRecord;
use shoal_registry::codec::encode;
use shoal_registry::{
    Committed, Error, EventRecord, Expect, MAX_EVENTS_PER_SERVICE, ModuleRecord, Registration,
    Result, RevisionRecord, RouteRecord, SCHEMA_VERSION, ServiceRecord, Subject, WaitingRecord,
};
use shoal_spec::{Digest, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

use crate::keys::Area;
use crate::{EtcdStore, Get, Write, record, revision};

impl EtcdStore {
    pub(crate) async fn put_module_record(
        &self,
        digest: &Digest,
        kind: ModuleKind,
        bytes: Bytes,
    ) -> Result<Committed<(ModuleRecord, bool)>> {
        shoal_registry::check_digest(digest, &bytes)?;
        let size = bytes.len() as u64;
        // The bytes are durable on this node before the record says the module exists.
        self.shared.blobs.put_module(digest, kind, bytes).await?;
        let key = self.keys().module(digest);
        self.decide(|| async {
            let snapshot = self
                .read(vec![Get::key(key.clone()), self.get_change_index()])
                .await?;
            if let Some(existing) = snapshot.one(0) {
                let existing = module_from(existing)?;
                return Ok(Some(Committed {
                    value: (existing, false),
                    index: snapshot.change_index(1),
                }));
            }
            let mut module = ModuleRecord {
                version: SCHEMA_VERSION,
                digest: digest.clone(),
                size,
                kind,
                created_unix_ms: self.shared.clock.now_unix_ms(),
                change_index: 0,
                names: Default::default(),
            };
            let write = Write {
                subject: Subject::Module(digest.clone()),
                areas: &[],
                compares: vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
                ops: vec![TxnOp::put(key.clone(), encode(&module), None)],
            };
            Ok(self.commit(write).await?.map(|index| {
                module.change_index = index;
                tracing::debug!(%digest, %kind, size, index, "stored module");
                Committed {
                    value: (module, true),
                    index,
                }
            }))
        })
        .await
    }

    pub(crate) async fn name_module_record(
        &self,
        digest: &Digest,
        name: &str,
    ) -> Result<Committed<ModuleRecord>> {
        if name.is_empty() {
            return Err(Error::Invalid(shoal_spec::FieldError::new(
                "name",
                "must not be empty",
            )));
        }
        let key = self.keys().module(digest);
        self.decide(|| async {
            let snapshot = self
                .read(vec![Get::key(key.clone()), self.get_change_index()])
                .await?;
            let Some(found) = snapshot.one(0) else {
                return Err(Error::NotFound {
                    kind: "module",
                    key: digest.to_string(),
                });
            };
            // The name given last was filled in from the key's revision; the one given now
            // becomes the one the key's next revision stands for.
            let mut module = module_from(found)?;
            if module.names.contains_key(name) {
                return Ok(Some(Committed {
                    value: module,
                    index: snapshot.change_index(1),
                }));
            }
            module.names.insert(name.to_owned(), NAMED_BY_THIS_WRITE);
            let write = Write {
                subject: Subject::Module(digest.clone()),
                areas: &[],
                compares: vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    snapshot.mod_revision(0),
                )],
                ops: vec![TxnOp::put(key.clone(), encode(&module), None)],
            };
            Ok(self.commit(write).await?.map(|index| {
                let mut module = module.clone();
                if let Some(given) = module.names.get_mut(name) {
                    *given = index;
                }
                Committed {
                    value: module,
                    index,
                }
            }))
        })
        .await
    }

    pub(crate) async fn put_route_record(
        &self,
        name: &ServiceName,
        spec: RouteSpec,
        expect: Expect,
    ) -> Result<Committed<(RouteRecord, bool)>> {
        spec.validate().map_err(Error::from)?;
        self.put_named(
            self.keys().route(name),
            Subject::Route(name.clone()),
            &[Area::Catalog],
            route_from,
            |current| expect.check_route(name, current),
            |current| current.spec == spec,
            |current, now| RouteRecord::written(name, spec.clone(), current, now, 0),
            |route, index| route.change_index = index,
        )
        .await
    }

    pub(crate) async fn put_waiting_record(
        &self,
        name: &ServiceName,
        image: &str,
        spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(WaitingRecord, bool)>> {
        spec.validate().map_err(Error::from)?;
        self.put_named(
            self.keys().waiting(name),
            Subject::Waiting(name.clone()),
            &[],
            waiting_from,
            |current| expect.check_waiting(name, current),
            |current| current.image == image && current.spec == spec,
            |current, now| WaitingRecord::written(name, image, spec.clone(), current, now, 0),
            |waiting, index| waiting.change_index = index,
        )
        .await
    }

    pub(crate) async fn waiting_records(&self) -> Result<Vec<WaitingRecord>> {
        let snapshot = self.read(vec![Get::prefix(self.keys().waitings())]).await?;
        snapshot.ranges[0].iter().map(waiting_from).collect()
    }

    pub(crate) async fn delete_waiting_record(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<WaitingRecord>> {
        self.delete_named(
            name,
            self.keys().waiting(name),
            Subject::Waiting(name.clone()),
            &[],
            waiting_from,
            |current| expect.check_waiting(name, current),
        )
        .await
    }

    /// Writes the record `build` makes at `key`, when `check` accepts the current one and
    /// `unchanged` does not; answers the record (its change index set by `indexed`) and
    /// whether it was created.
    #[allow(clippy::too_many_arguments)]
    async fn put_named<R: StoredRecord + Clone>(
        &self,
        key: String,
        subject: Subject,
        areas: &'static [Area],
        from: fn(&etcd_client::KeyValue) -> Result<R>,
        check: impl Fn(Option<&R>) -> Result<()>,
        unchanged: impl Fn(&R) -> bool,
        build: impl Fn(Option<&R>, u64) -> R,
        indexed: impl Fn(&mut R, u64),
    ) -> Result<Committed<(R, bool)>> {
        self.decide(|| async {
            let snapshot = self
                .read(vec![Get::key(key.clone()), self.get_change_index()])
                .await?;
            let current = snapshot.one(0).map(from).transpose()?;
            check(current.as_ref())?;
            if let Some(current) = current.as_ref().filter(|current| unchanged(current)) {
                return Ok(Some(Committed {
                    value: (current.clone(), false),
                    index: snapshot.change_index(1),
                }));
            }
            let mut record = build(current.as_ref(), self.shared.clock.now_unix_ms());
            let write = Write {
                subject: subject.clone(),
                areas,
                compares: vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    snapshot.mod_revision(0),
                )],
                ops: vec![TxnOp::put(key.clone(), encode(&record), None)],
            };
            Ok(self.commit(write).await?.map(|index| {
                indexed(&mut record, index);
                Committed {
                    value: (record, current.is_none()),
                    index,
                }
            }))
        })
        .await
    }

    /// Deletes the record at `key` when `check` accepts it, returning it.
    async fn delete_named<R: StoredRecord + Clone>(
        &self,
        name: &ServiceName,
        key: String,
        subject: Subject,
        areas: &'static [Area],
        from: fn(&etcd_client::KeyValue) -> Result<R>,
        check: impl Fn(Option<&R>) -> Result<()>,
    ) -> Result<Committed<R>> {
        self.decide(|| async {
            let snapshot = self.read(vec![Get::key(key.clone())]).await?;
            let current = snapshot.one(0).map(from).transpose()?;
            check(current.as_ref())?;
            let Some(record) = current else {
                return Err(Error::NotFound {
                    kind: R::KIND,
                    key: name.to_string(),
                });
            };
            let write = Write {
                subject: subject.clone(),
                areas,
                compares: vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    snapshot.mod_revision(0),
                )],
                ops: vec![TxnOp::delete(key.clone(), None)],
            };
            Ok(self.commit(write).await?.map(|index| Committed {
                value: record.clone(),
                index,
            }))
        })
        .await
    }

    pub(crate) async fn route_record(&self, name: &ServiceName) -> Result<Option<RouteRecord>> {
        let snapshot = self.read(vec![Get::key(self.keys().route(name))]).await?;
        snapshot.one(0).map(route_from).transpose()
    }

    pub(crate) async fn route_records(&self) -> Result<Vec<RouteRecord>> {
        let snapshot = self.read(vec![Get::prefix(self.keys().routes())]).await?;
        snapshot.ranges[0].iter().map(route_from).collect()
    }

    pub(crate) async fn delete_route_record(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<RouteRecord>> {
        self.delete_named(
            name,
            self.keys().route(name),
            Subject::Route(name.clone()),
            &[Area::Catalog],
            route_from,
            |current| expect.check_route(name, current),
        )
        .await
    }

    pub(crate) async fn module_record(&self, digest: &Digest) -> Result<Option<ModuleRecord>> {
        let snapshot = self
            .read(vec![Get::key(self.keys().module(digest))])
            .await?;
        snapshot.one(0).map(module_from).transpose()
    }

    pub(crate) async fn module_records(&self) -> Result<Vec<ModuleRecord>> {
        let snapshot = self.read(vec![Get::prefix(self.keys().modules())]).await?;
        snapshot.ranges[0].iter().map(module_from).collect()
    }

    pub(crate) async fn delete_module_record(
        &self,
        digest: &Digest,
    ) -> Result<Committed<ModuleRecord>> {
        let key = self.keys().module(digest);
        let services = self.keys().services();
        let committed = self
            .decide(|| async {
                let snapshot = self
                    .read(vec![Get::key(key.clone()), Get::prefix(services.clone())])
                    .await?;
                let Some(found) = snapshot.one(0) else {
                    return Err(Error::NotFound {
                        kind: "module",
                        key: digest.to_string(),
                    });
                };
                let module = module_from(found)?;
                let current = snapshot.ranges[1]
                    .iter()
                    .map(record::<ServiceRecord>)
                    .collect::<Result<Vec<_>>>()?;
                shoal_registry::check_unused(digest, current)?;
                let write = Write {
                    subject: Subject::Module(digest.clone()),
                    areas: &[],
                    compares: vec![
                        Compare::mod_revision(key.clone(), CompareOp::Equal, found.mod_revision()),
                        // No service was created or changed since: none can have started to
                        // use the module.
                        Compare::mod_revision(
                            services.clone(),
                            CompareOp::Less,
                            snapshot.revision + 1,
                        )
                        .with_prefix(),
                    ],
                    ops: vec![TxnOp::delete(key.clone(), None)],
                };
                Ok(self.commit(write).await?.map(|index| Committed {
                    value: module.clone(),
                    index,
                }))
            })
            .await?;
        // The bytes go once no record names them; a node that never held them has none to drop.
        match self.shared.blobs.delete_module(digest).await {
            Ok(_) | Err(Error::NotFound { .. } | Error::ModuleInUse { .. }) => {}
            Err(error) => return Err(error),
        }
        tracing::debug!(%digest, "deleted module");
        Ok(committed)
    }

    pub(crate) async fn put_service_record(
        &self,
        name: &ServiceName,
        mut spec: ServiceSpec,
        expect: Expect,
    ) -> Result<Committed<(ServiceRecord, bool)>> {
        spec.normalize();
        spec.validate().map_err(Error::from)?;
        let keys = self.keys();
        let (key, module) = (keys.service(name), keys.module(&spec.module));
        let (catalog, guard) = (keys.catalog(), keys.catalog_guard());
        self.decide(|| async {
            let snapshot = self
                .read(vec![
                    Get::key(key.clone()),
                    Get::key(module.clone()),
                    Get::prefix(catalog.clone()),
                    self.get_change_index(),
                ])
                .await?;
            if snapshot.one(1).is_none() {
                return Err(Error::ModuleNotFound(spec.module.clone()));
            }
            let mut guard_revision = 0;
            for kv in &snapshot.ranges[2] {
                match self.keys().catalog_entry(crate::key_str(kv)?) {
                    Some(crate::keys::CatalogEntry::Registration(_)) => {
                        let registration: Registration = record(kv)?;
                        if registration.name == name.as_str() {
                            return Err(Error::NameTaken {
                                name: name.to_string(),
                                owner: "service instances registered through the Consul API",
                            });
                        }
                    }
                    Some(
                        crate::keys::CatalogEntry::Check(_) | crate::keys::CatalogEntry::Node(_),
                    ) => {}
                    None => guard_revision = kv.mod_revision(),
                }
            }
            let current = snapshot.one(0).map(service_from).transpose()?;
            expect.check(name, current.as_ref())?;
            if let Some(current) = current.as_ref().filter(|current| current.spec == spec) {
                return Ok(Some(Committed {
                    value: (current.clone(), false),
                    index: snapshot.change_index(3),
                }));
            }
            let now = self.shared.clock.now_unix_ms();
            let (revision, created_unix_ms) = match &current {
                Some(current) => (current.revision + 1, current.created_unix_ms),
                None => (1, now),
            };
            let mut service = ServiceRecord {
                version: SCHEMA_VERSION,
                name: name.clone(),
                revision,
                spec: spec.clone(),
                created_unix_ms,
                updated_unix_ms: now,
                change_index: 0,
            };
            let history = RevisionRecord {
                version: SCHEMA_VERSION,
                name: name.clone(),
                revision,
                spec: spec.clone(),
                created_unix_ms: now,
                change_index: 0,
            };
            let write = Write {
                subject: Subject::Service(name.clone()),
                areas: &[Area::Catalog],
                compares: vec![
                    Compare::mod_revision(key.clone(), CompareOp::Equal, snapshot.mod_revision(0)),
                    Compare::version(module.clone(), CompareOp::Greater, 0),
                    Compare::mod_revision(guard.clone(), CompareOp::Equal, guard_revision),
                ],
                ops: vec![
                    TxnOp::put(key.clone(), encode(&service), None),
                    TxnOp::put(self.keys().revision(name, revision), encode(&history), None),
                ],
            };
            Ok(self.commit(write).await?.map(|index| {
                service.change_index = index;
                tracing::debug!(%name, revision, index, "stored service");
                Committed {
                    value: (service, current.is_none()),
                    index,
                }
            }))
        })
        .await
    }

    pub(crate) async fn service_record(&self, name: &ServiceName) -> Result<Option<ServiceRecord>> {
        let snapshot = self.read(vec![Get::key(self.keys().service(name))]).await?;
        snapshot.one(0).map(service_from).transpose()
    }

    pub(crate) async fn service_records(&self) -> Result<Vec<ServiceRecord>> {
        let snapshot = self.read(vec![Get::prefix(self.keys().services())]).await?;
        snapshot.ranges[0].iter().map(service_from).collect()
    }

    pub(crate) async fn revision_records(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>> {
        let snapshot = self
            .read(vec![
                Get::key(self.keys().service(name)),
                Get::prefix(self.keys().revisions(name)),
            ])
            .await?;
        if snapshot.one(0).is_none() {
            return Err(service_not_found(name));
        }
        snapshot.ranges[1]
            .iter()
            .map(|kv| {
                let mut history: RevisionRecord = record(kv)?;
                history.change_index = revision(kv.create_revision());
                Ok(history)
            })
            .collect()
    }

    pub(crate) async fn delete_service_record(
        &self,
        name: &ServiceName,
        expect: Expect,
    ) -> Result<Committed<ServiceRecord>> {
        let key = self.keys().service(name);
        let committed = self
            .decide(|| async {
                let snapshot = self.read(vec![Get::key(key.clone())]).await?;
                let current = snapshot.one(0).map(service_from).transpose()?;
                expect.check(name, current.as_ref())?;
                let Some(service) = current else {
                    return Err(service_not_found(name));
                };
                let write = Write {
                    subject: Subject::Service(name.clone()),
                    areas: &[Area::Catalog],
                    compares: vec![Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        snapshot.mod_revision(0),
                    )],
                    ops: vec![
                        TxnOp::delete(key.clone(), None),
                        TxnOp::delete(
                            self.keys().revisions(name),
                            Some(DeleteOptions::new().with_prefix()),
                        ),
                        TxnOp::delete(
                            self.keys().events(name),
                            Some(DeleteOptions::new().with_prefix()),
                        ),
                    ],
                };
                Ok(self.commit(write).await?.map(|index| Committed {
                    value: service.clone(),
                    index,
                }))
            })
            .await?;
        tracing::debug!(%name, "deleted service");
        Ok(committed)
    }

    pub(crate) async fn record_event_record(
        &self,
        name: &ServiceName,
        from: u32,
        to: u32,
        reason: String,
    ) -> Result<Committed<EventRecord>> {
        let key = self.keys().service(name);
        let events = self.keys().events(name);
        self.decide(|| async {
            let snapshot = self
                .read(vec![
                    Get::key(key.clone()),
                    Get {
                        key: events.clone(),
                        options: Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_sort(SortTarget::Key, SortOrder::Descend)
                                .with_limit(1),
                        ),
                    },
                ])
                .await?;
            if snapshot.one(0).is_none() {
                return Err(service_not_found(name));
            }
            let newest_seq = snapshot
                .one(1)
                .map(record::<EventRecord>)
                .transpose()?
                .map_or(0, |event| event.seq);
            let seq = newest_seq + 1;
            let event = EventRecord {
                version: SCHEMA_VERSION,
                service: name.clone(),
                seq,
                time_unix_ms: self.shared.clock.now_unix_ms(),
                from,
                to,
                reason: reason.clone(),
            };
            let key_of_new = self.keys().event(name, seq);
            // Sequence numbers have no gaps, so the newest events kept are exactly these.
            let oldest_kept = seq.saturating_sub(MAX_EVENTS_PER_SERVICE as u64 - 1);
            let write = Write {
                subject: Subject::Events(name.clone()),
                areas: &[Area::Health],
                compares: vec![
                    Compare::version(key.clone(), CompareOp::Greater, 0),
                    Compare::create_revision(key_of_new.clone(), CompareOp::Equal, 0),
                ],
                ops: vec![
                    TxnOp::put(key_of_new, encode(&event), None),
                    TxnOp::delete(
                        self.keys().event(name, 0),
                        Some(DeleteOptions::new().with_range(self.keys().event(name, oldest_kept))),
                    ),
                ],
            };
            Ok(self.commit(write).await?.map(|index| {
                tracing::debug!(%name, seq, from, to, reason, "recorded scale event");
                Committed {
                    value: event.clone(),
                    index,
                }
            }))
        })
        .await
    }

    pub(crate) async fn event_records(
        &self,
        name: &ServiceName,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let snapshot = self
            .read(vec![
                Get::key(self.keys().service(name)),
                Get {
                    key: self.keys().events(name),
                    options: Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX)),
                    ),
                },
            ])
            .await?;
        if snapshot.one(0).is_none() {
            return Err(service_not_found(name));
        }
        if limit == 0 {
            // etcd reads a limit of 0 as no limit.
            return Ok(Vec::new());
        }
        let mut events = snapshot.ranges[1]
            .iter()
            .map(record::<EventRecord>)
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }
}

/// Where a module record's newest name says "the index this key was last written at": a
/// transaction cannot write the revision it commits at, and only a naming rewrites a module's
/// key once it exists, so the key's `mod_revision` is the index that name was given at.
const NAMED_BY_THIS_WRITE: u64 = 0;

fn module_from(kv: &etcd_client::KeyValue) -> Result<ModuleRecord> {
    let mut module: ModuleRecord = record(kv)?;
    module.change_index = revision(kv.create_revision());
    fill_name_index(&mut module, kv);
    Ok(module)
}

/// Replaces [`NAMED_BY_THIS_WRITE`] in `module`'s names by the revision `kv` was written at.
fn fill_name_index(module: &mut ModuleRecord, kv: &etcd_client::KeyValue) {
    for given in module.names.values_mut() {
        if *given == NAMED_BY_THIS_WRITE {
            *given = revision(kv.mod_revision());
        }
    }
}

fn route_from(kv: &etcd_client::KeyValue) -> Result<RouteRecord> {
    let mut route: RouteRecord = record(kv)?;
    route.change_index = revision(kv.mod_revision());
    Ok(route)
}

fn waiting_from(kv: &etcd_client::KeyValue) -> Result<WaitingRecord> {
    let mut waiting: WaitingRecord = record(kv)?;
    waiting.change_index = revision(kv.mod_revision());
    Ok(waiting)
}

fn service_from(kv: &etcd_client::KeyValue) -> Result<ServiceRecord> {
    let mut service: ServiceRecord = record(kv)?;
    service.change_index = revision(kv.mod_revision());
    Ok(service)
}

fn service_not_found(name: &ServiceName) -> Error {
    Error::NotFound {
        kind: "service",
        key: name.to_string(),
    }
}
