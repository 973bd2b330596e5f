//! The tests every [`Store`] backend runs: the contract of the trait, as code.
//!
//! A backend's test file calls [`conformance_tests!`](crate::conformance_tests) with a function
//! that opens its store on a [`Scratch`] directory with a given clock; the macro makes one
//! `#[tokio::test]` per test here. `durable:` backends also run the tests that close a store
//! and open it again on the same directory, and find everything there.
//!
//! Times come from a [`TestClock`] the tests move by hand, so "the update time moved" is
//! checked without sleeping.

// Test code: a failed call is a test failure, and its value is in the panic message.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use shoal_spec::{ByteSize, Digest, ModuleKind, RouteSpec, ServiceName, ServiceSpec};

use crate::{
    CheckDefinition, CheckStatus, Clock, Error, Expect, ExternalNode, KvOp, MAX_EVENTS_PER_SERVICE,
    MAX_KV_VALUE_SIZE, Probe, Registration, SCHEMA_VERSION, SessionBehavior, SessionRecord, Store,
    Subject, TxnFailure, TxnOutcome,
};

/// Where a backend under test keeps its data, and the clock it must stamp records with.
pub struct Scratch {
    /// An empty directory that lives as long as the test.
    pub dir: PathBuf,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// Opens a backend's store on a scratch directory: the same directory again finds the same
/// data, for a durable backend.
pub type Opener = fn(Scratch) -> BoxFuture<'static, Arc<dyn Store>>;

/// A clock that moves only when told.
#[derive(Debug)]
pub struct TestClock(AtomicU64);

impl TestClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_unix_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A store under test, with its clock and its directory.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The clock it stamps records with.
    pub clock: Arc<TestClock>,
    dir: tempfile::TempDir,
    open: Opener,
}

impl Fixture {
    /// A new, empty store from `open`.
    pub async fn new(open: Opener) -> Fixture {
        let dir = tempfile::tempdir().expect("creating a scratch directory");
        let clock = Arc::new(TestClock(AtomicU64::new(1_700_000_000_000)));
        let store = open(Scratch {
            dir: dir.path().to_owned(),
            clock: clock.clone(),
        })
        .await;
        Fixture {
            store,
            clock,
            dir,
            open,
        }
    }

    /// Closes the store and opens it again on the same directory.
    pub async fn reopen(&mut self) {
        self.store.close().await;
        self.store = (self.open)(Scratch {
            dir: self.dir.path().to_owned(),
            clock: self.clock.clone(),
        })
        .await;
    }
}

/// One `#[tokio::test]` per conformance test, for a backend opened by `$open` (an
/// [`Opener`]); `durable:` adds the tests that reopen the store.
#[macro_export]
macro_rules! conformance_tests {
    (durable: $open:expr) => {
        $crate::conformance_tests!(volatile: $open);
        $crate::conformance_tests!(@tests $open;
            data_survives_reopening,
            events_survive_reopening,
            registrations_survive_reopening,
            kv_entries_survive_reopening,
            routes_and_module_names_survive_reopening,
            waiting_services_survive_reopening,
            sessions_and_locks_survive_reopening,
        );
    };
    (volatile: $open:expr) => {
        $crate::conformance_tests!(@tests $open;
            modules_put_get_list_delete,
            put_module_is_idempotent,
            put_module_refuses_a_wrong_digest,
            module_bytes_round_trip,
            modules_in_use_cannot_be_deleted,
            put_service_with_an_unknown_module_writes_nothing,
            put_service_with_invalid_limits_writes_nothing,
            put_service_with_invalid_workload_writes_nothing,
            revisions_grow_and_unchanged_specs_are_no_ops,
            services_are_listed_by_name,
            delete_service_removes_its_revisions_only,
            change_index_starts_at_one_and_grows_with_every_change,
            put_service_stores_specs_normalized,
            conditional_writes_refuse_a_service_that_changed,
            events_are_numbered_from_one_and_read_oldest_first,
            events_keep_the_newest_hundred,
            events_of_an_unknown_service_are_not_found,
            recording_events_changes_the_health_area_only,
            delete_service_removes_its_events_only,
            register_lists_and_deregisters_with_checks,
            the_id_defaults_to_the_name_and_reregistering_keeps_the_create_index,
            check_states_survive_reregistration_unless_set,
            replace_existing_checks_removes_the_missing_ones,
            check_updates_write_only_changes,
            node_checks_and_checks_of_unknown_services,
            a_name_has_one_owner,
            kv_put_get_list_delete,
            kv_updates_keep_the_create_index_and_move_the_modify_index,
            kv_check_and_set,
            kv_only_changes_move_the_kv_index,
            kv_bad_input_writes_nothing,
            a_watch_sees_every_change_in_order_with_its_subject,
            a_watch_sees_writes_made_while_it_waits,
            writes_report_the_index_a_watch_reaches,
            a_closed_store_refuses_calls,
            routes_put_get_list_delete,
            routes_are_written_conditionally_and_validated,
            a_watch_sees_route_changes,
            module_names_resolve_to_the_newest_module_given_them,
            waiting_services_put_list_delete_conditionally,
            sessions_are_created_listed_and_destroyed,
            locks_follow_sessions_with_lock_delay,
            delete_behavior_deletes_the_keys_held,
            transactions_are_all_or_nothing,
            sessions_lapse_after_twice_their_ttl_unless_renewed,
            catalog_nodes_register_with_their_instances_and_go_with_them,
        );
    };
    (@tests $open:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                let fixture = $crate::conformance::Fixture::new($open).await;
                $crate::conformance::$test(fixture).await;
            }
        )*
    };
}

fn name(text: &str) -> ServiceName {
    text.parse().expect("a valid name")
}

/// Stores a module made of `bytes`, returning its digest.
async fn store_module(store: &dyn Store, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    store
        .put_module(&digest, ModuleKind::Http, Bytes::copy_from_slice(bytes))
        .await
        .expect("storing a module");
    digest
}

fn spec_with_env(module: &Digest, value: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::new(module.clone());
    spec.env.insert("GREETING".into(), value.into());
    spec
}

async fn put(store: &dyn Store, service: &str, spec: ServiceSpec) -> (crate::ServiceRecord, bool) {
    store
        .put_service(&name(service), spec, Expect::Any)
        .await
        .expect("storing a service")
        .value
}

async fn change_index(store: &dyn Store) -> u64 {
    store.indexes().await.expect("reading the indexes").change
}

fn web(id: &str) -> Registration {
    Registration {
        id: id.into(),
        address: "127.0.0.1".into(),
        port: 8080,
        tags: vec!["v1".into()],
        node: "n1".into(),
        ..Registration::new("web")
    }
}

fn ttl_check(id: &str) -> CheckDefinition {
    CheckDefinition {
        id: id.into(),
        name: format!("check {id}"),
        service_id: None,
        notes: String::new(),
        probe: Probe::Ttl {
            ttl: Duration::from_secs(10),
        },
        status: None,
        deregister_critical_after: None,
        // The owner is kept: every read below compares what it finds with what was written.
        node: "n1".into(),
    }
}

// Modules.

/// Modules are stored, read, listed by digest and deleted with their bytes.
pub async fn modules_put_get_list_delete(fx: Fixture) {
    let store = &*fx.store;
    let first_bytes = b"\0asm first".as_slice();
    let second_bytes = b"\0asm second".as_slice();
    let first = Digest::of(first_bytes);
    let second = Digest::of(second_bytes);
    assert_eq!(store.module(&first).await.unwrap(), None);
    assert_eq!(store.module_bytes(&first).await.unwrap(), None);
    assert_eq!(store.modules().await.unwrap(), vec![]);

    let committed = store
        .put_module(&first, ModuleKind::Http, Bytes::from_static(first_bytes))
        .await
        .unwrap();
    let (record, created) = committed.value;
    assert!(created);
    assert_eq!(record.version, SCHEMA_VERSION);
    assert_eq!(record.digest, first);
    assert_eq!(record.size, first_bytes.len() as u64);
    assert_eq!(record.kind, ModuleKind::Http);
    assert_eq!(record.created_unix_ms, fx.clock.now_unix_ms());
    assert_eq!(record.change_index, committed.index);
    assert_eq!(record.change_index, change_index(store).await);
    let (second_record, _) = store
        .put_module(&second, ModuleKind::Cgi, Bytes::from_static(second_bytes))
        .await
        .unwrap()
        .value;

    assert_eq!(store.module(&first).await.unwrap(), Some(record.clone()));
    let mut expected = vec![record.clone(), second_record.clone()];
    expected.sort_by(|left, right| left.digest.cmp(&right.digest));
    assert_eq!(store.modules().await.unwrap(), expected);

    assert_eq!(store.delete_module(&first).await.unwrap().value, record);
    assert_eq!(store.module(&first).await.unwrap(), None);
    assert_eq!(store.module_bytes(&first).await.unwrap(), None);
    assert_eq!(store.modules().await.unwrap(), vec![second_record]);
    assert!(matches!(
        store.delete_module(&first).await,
        Err(Error::NotFound { kind: "module", key }) if key == first.as_str()
    ));
}

/// Storing a module again changes nothing, its creation time included.
pub async fn put_module_is_idempotent(fx: Fixture) {
    let store = &*fx.store;
    let bytes = Bytes::from_static(b"\0asm idempotent");
    let digest = Digest::of(&bytes);
    let (first, created) = store
        .put_module(&digest, ModuleKind::Http, bytes.clone())
        .await
        .unwrap()
        .value;
    assert!(created);
    let index = change_index(store).await;
    fx.clock.advance(Duration::from_secs(5));
    let again = store
        .put_module(&digest, ModuleKind::Http, bytes)
        .await
        .unwrap();
    assert_eq!(again.value, (first, false));
    assert_eq!(again.index, index);
    assert_eq!(change_index(store).await, index);
    assert_eq!(store.modules().await.unwrap().len(), 1);
}

/// A digest that is not the digest of the bytes is refused, and nothing is stored.
pub async fn put_module_refuses_a_wrong_digest(fx: Fixture) {
    let store = &*fx.store;
    let digest = Digest::of(b"other bytes");
    let err = store
        .put_module(&digest, ModuleKind::Http, Bytes::from_static(b"bytes"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(e) if e.field == "digest" && e.reason.contains("does not match the module bytes")),
        "{err}"
    );
    assert_eq!(store.modules().await.unwrap(), vec![]);
    assert_eq!(change_index(store).await, 1);
}

/// Module bytes come back exactly, empty and large ones included.
pub async fn module_bytes_round_trip(fx: Fixture) {
    let store = &*fx.store;
    let large: Vec<u8> = (0..3_000_000_u32).map(|idx| (idx % 251) as u8).collect();
    for bytes in [b"".as_slice(), b"\0asm\x01\0\0\0", large.as_slice()] {
        let digest = store_module(store, bytes).await;
        assert_eq!(
            store.module_bytes(&digest).await.unwrap().as_deref(),
            Some(bytes)
        );
        assert_eq!(
            store.module(&digest).await.unwrap().unwrap().size,
            bytes.len() as u64
        );
    }
}

/// A module named by a service's current spec cannot be deleted.
pub async fn modules_in_use_cannot_be_deleted(fx: Fixture) {
    let store = &*fx.store;
    let used = store_module(store, b"used").await;
    let unused = store_module(store, b"unused").await;
    put(store, "web", ServiceSpec::new(used.clone())).await;
    put(store, "api", ServiceSpec::new(used.clone())).await;
    let index = change_index(store).await;

    match store.delete_module(&used).await {
        Err(Error::ModuleInUse { digest, services }) => {
            assert_eq!(digest, used);
            assert_eq!(services, vec!["api".to_string(), "web".to_string()]);
        }
        other => panic!("expected ModuleInUse, got {other:?}"),
    }
    assert!(store.module(&used).await.unwrap().is_some());
    assert!(store.module_bytes(&used).await.unwrap().is_some());
    assert_eq!(change_index(store).await, index);

    // Moving one service away still leaves the other using it.
    put(store, "api", ServiceSpec::new(unused.clone())).await;
    assert!(matches!(
        store.delete_module(&used).await,
        Err(Error::ModuleInUse { services, .. }) if services == ["web"]
    ));
    store
        .delete_service(&name("web"), Expect::Any)
        .await
        .unwrap();
    store.delete_module(&used).await.unwrap();
    assert!(matches!(
        store.delete_module(&unused).await,
        Err(Error::ModuleInUse { services, .. }) if services == ["api"]
    ));
}

// Services.

/// A spec naming a module that is not stored is refused, and nothing is written.
pub async fn put_service_with_an_unknown_module_writes_nothing(fx: Fixture) {
    let store = &*fx.store;
    let missing = Digest::of(b"never stored");
    let index = change_index(store).await;
    match store
        .put_service(&name("web"), ServiceSpec::new(missing.clone()), Expect::Any)
        .await
    {
        Err(Error::ModuleNotFound(digest)) => assert_eq!(digest, missing),
        other => panic!("expected ModuleNotFound, got {other:?}"),
    }
    assert_eq!(change_index(store).await, index);
    assert_eq!(store.service(&name("web")).await.unwrap(), None);
    assert_eq!(store.services().await.unwrap(), vec![]);
    assert!(matches!(
        store.revisions(&name("web")).await,
        Err(Error::NotFound {
            kind: "service",
            ..
        })
    ));
}

/// A spec with unusable limits is refused, naming the field, and nothing is written.
pub async fn put_service_with_invalid_limits_writes_nothing(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    let index = change_index(store).await;
    let mut spec = ServiceSpec::new(module);
    spec.limits.memory = ByteSize(0);
    assert!(matches!(
        store.put_service(&name("web"), spec, Expect::Any).await,
        Err(Error::Invalid(e)) if e.field == "limits.memory"
    ));
    assert_eq!(change_index(store).await, index);
    assert_eq!(store.service(&name("web")).await.unwrap(), None);
}

/// A spec whose scale settings contradict each other is refused, and nothing is written.
pub async fn put_service_with_invalid_workload_writes_nothing(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    let index = change_index(store).await;
    let mut spec = ServiceSpec::new(module);
    spec.scale.min = 4;
    spec.scale.max = 3;
    let err = store
        .put_service(&name("web"), spec, Expect::Any)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(e) if e.field == "scale.min" && e.reason == "must not exceed scale.max (3)"),
        "{err}"
    );
    assert_eq!(change_index(store).await, index);
    assert_eq!(store.services().await.unwrap(), vec![]);
}

/// Every new spec is a new revision; the same spec again changes nothing.
pub async fn revisions_grow_and_unchanged_specs_are_no_ops(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    let web = name("web");
    let (first, created) = put(store, "web", spec_with_env(&module, "one")).await;
    assert!(created);
    assert_eq!(first.revision, 1);
    assert_eq!(first.version, SCHEMA_VERSION);
    assert_eq!(first.created_unix_ms, first.updated_unix_ms);
    assert_eq!(first.change_index, change_index(store).await);

    fx.clock.advance(Duration::from_secs(5));
    let (second, created) = put(store, "web", spec_with_env(&module, "two")).await;
    assert!(!created);
    assert_eq!(second.revision, 2);
    assert_eq!(second.created_unix_ms, first.created_unix_ms);
    assert_eq!(second.updated_unix_ms, first.updated_unix_ms + 5000);
    assert!(second.change_index > first.change_index);

    // The same spec again: no new revision, no change.
    let index = change_index(store).await;
    let unchanged = store
        .put_service(&web, spec_with_env(&module, "two"), Expect::Any)
        .await
        .unwrap();
    assert_eq!(unchanged.value, (second.clone(), false));
    assert_eq!(unchanged.index, index);
    assert_eq!(change_index(store).await, index);

    let (third, _) = put(store, "web", spec_with_env(&module, "three")).await;
    assert_eq!(third.revision, 3);
    assert_eq!(store.service(&web).await.unwrap(), Some(third.clone()));

    let revisions = store.revisions(&web).await.unwrap();
    let numbers: Vec<u64> = revisions.iter().map(|revision| revision.revision).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let greetings: Vec<&str> = revisions
        .iter()
        .map(|revision| revision.spec.env["GREETING"].as_str())
        .collect();
    assert_eq!(greetings, ["one", "two", "three"]);
    assert!(revisions.iter().all(|revision| revision.name == web));
    assert_eq!(revisions[2].change_index, third.change_index);
    assert_eq!(revisions[2].created_unix_ms, third.updated_unix_ms);
}

/// Services are listed by name.
pub async fn services_are_listed_by_name(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    for text in ["zeta", "alpha", "mid-1", "mid"] {
        put(store, text, ServiceSpec::new(module.clone())).await;
    }
    let names: Vec<String> = store
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|service| service.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "mid", "mid-1", "zeta"]);
}

/// Deleting a service deletes its history, and only its own.
pub async fn delete_service_removes_its_revisions_only(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    // "a" is a prefix of "ab": deleting one must not touch the other's revisions.
    for text in ["a", "ab"] {
        for value in ["one", "two"] {
            put(store, text, spec_with_env(&module, value)).await;
        }
    }
    let index = change_index(store).await;
    let deleted = store.delete_service(&name("a"), Expect::Any).await.unwrap();
    assert_eq!(deleted.value.revision, 2);
    assert!(deleted.index > index);
    assert_eq!(change_index(store).await, deleted.index);
    assert_eq!(store.service(&name("a")).await.unwrap(), None);
    assert!(matches!(
        store.revisions(&name("a")).await,
        Err(Error::NotFound { kind: "service", key }) if key == "a"
    ));
    assert_eq!(store.revisions(&name("ab")).await.unwrap().len(), 2);
    let err = store
        .delete_service(&name("a"), Expect::Any)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "service \"a\" not found");

    // Created again, the service starts a new history.
    let (recreated, created) = put(store, "a", spec_with_env(&module, "one")).await;
    assert!(created);
    assert_eq!(recreated.revision, 1);
    assert_eq!(store.revisions(&name("a")).await.unwrap().len(), 1);
}

/// The change index starts at 1 and every change moves it.
pub async fn change_index_starts_at_one_and_grows_with_every_change(fx: Fixture) {
    let store = &*fx.store;
    let mut seen = vec![change_index(store).await];
    assert_eq!(seen[0], 1);
    let module = store_module(store, b"module").await;
    seen.push(change_index(store).await);
    put(store, "web", spec_with_env(&module, "one")).await;
    seen.push(change_index(store).await);
    put(store, "web", spec_with_env(&module, "two")).await;
    seen.push(change_index(store).await);
    store
        .delete_service(&name("web"), Expect::Any)
        .await
        .unwrap();
    seen.push(change_index(store).await);
    store.delete_module(&module).await.unwrap();
    seen.push(change_index(store).await);
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "change index must strictly grow: {seen:?}"
    );
}

/// Specs are stored normalized: the two spellings of a memory limit are one spec.
pub async fn put_service_stores_specs_normalized(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    let web = name("web");
    let mut spec = ServiceSpec::new(module);
    spec.resources.limits.memory = Some(ByteSize(32 << 20));
    assert_eq!(spec.limits.memory, ByteSize(64 << 20));
    let (record, created) = put(store, "web", spec.clone()).await;
    assert!(created);
    assert_eq!(record.spec.limits.memory, ByteSize(32 << 20));
    assert_eq!(store.revisions(&web).await.unwrap()[0].spec, record.spec);

    // The same spec, in either spelling, is no change.
    let index = change_index(store).await;
    let (again, created) = put(store, "web", spec.clone()).await;
    assert!(!created);
    assert_eq!(again, record);
    let mut normalized = spec;
    normalized.normalize();
    let (again, _) = put(store, "web", normalized).await;
    assert_eq!(again, record);
    assert_eq!(change_index(store).await, index);
}

/// A write against a revision someone else changed is refused, and writes nothing.
pub async fn conditional_writes_refuse_a_service_that_changed(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"module").await;
    let web = name("web");
    let first = store
        .put_service(&web, spec_with_env(&module, "one"), Expect::Absent)
        .await
        .unwrap()
        .value
        .0;
    // A second creator loses.
    let err = store
        .put_service(&web, spec_with_env(&module, "two"), Expect::Absent)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service \"web\" changed meanwhile: expected no service, found revision 1"
    );
    // An update against the revision read wins once; the second writer with the same read
    // loses.
    let second = store
        .put_service(&web, spec_with_env(&module, "two"), Expect::Revision(1))
        .await
        .unwrap()
        .value
        .0;
    assert_eq!(second.revision, 2);
    let index = change_index(store).await;
    assert!(matches!(
        store
            .put_service(&web, spec_with_env(&module, "three"), Expect::Revision(first.revision))
            .await,
        Err(Error::Conflict { expected, found, .. }) if expected == "revision 1" && found == "revision 2"
    ));
    assert!(matches!(
        store.delete_service(&web, Expect::Revision(1)).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(change_index(store).await, index);
    assert_eq!(store.service(&web).await.unwrap(), Some(second));
    // Updating a service that does not exist is a conflict too, not a creation.
    assert!(matches!(
        store
            .put_service(&name("ghost"), ServiceSpec::new(module), Expect::Revision(1))
            .await,
        Err(Error::Conflict { found, .. }) if found == "no service"
    ));
    store
        .delete_service(&web, Expect::Revision(2))
        .await
        .unwrap();
}

// Events.

/// Events are numbered from 1 and read oldest first.
pub async fn events_are_numbered_from_one_and_read_oldest_first(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"events").await;
    let web = name("web");
    put(store, "web", ServiceSpec::new(module)).await;
    assert_eq!(store.events(&web, 10).await.unwrap(), vec![]);
    let first = store
        .record_event(&web, 0, 1, "cold start".into())
        .await
        .unwrap()
        .value;
    assert_eq!(first.version, SCHEMA_VERSION);
    assert_eq!(first.service, web);
    assert_eq!(first.seq, 1);
    assert_eq!(first.time_unix_ms, fx.clock.now_unix_ms());
    assert_eq!(
        (first.from, first.to, first.reason.as_str()),
        (0, 1, "cold start")
    );
    store.record_event(&web, 1, 3, "load".into()).await.unwrap();
    store.record_event(&web, 3, 2, "idle".into()).await.unwrap();

    let all = store.events(&web, 10).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(all[0], first);
    let reasons: Vec<&str> = all.iter().map(|event| event.reason.as_str()).collect();
    assert_eq!(reasons, ["cold start", "load", "idle"]);
    let newest_two: Vec<u64> = store
        .events(&web, 2)
        .await
        .unwrap()
        .iter()
        .map(|event| event.seq)
        .collect();
    assert_eq!(newest_two, [2, 3]);
    assert_eq!(store.events(&web, 0).await.unwrap(), vec![]);
}

/// Only the newest events are kept, and pruned numbers are never reused.
pub async fn events_keep_the_newest_hundred(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"events").await;
    let web = name("web");
    put(store, "web", ServiceSpec::new(module)).await;
    for n_replicas in 1..=105_u32 {
        let event = store
            .record_event(&web, n_replicas - 1, n_replicas, "load".into())
            .await
            .unwrap()
            .value;
        assert_eq!(event.seq, u64::from(n_replicas));
    }
    let kept = store.events(&web, usize::MAX).await.unwrap();
    assert_eq!(kept.len(), MAX_EVENTS_PER_SERVICE);
    let seqs: Vec<u64> = kept.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (6..=105).collect::<Vec<u64>>());
    assert!(kept.iter().all(|event| u64::from(event.to) == event.seq));

    let newest_three: Vec<u64> = store
        .events(&web, 3)
        .await
        .unwrap()
        .iter()
        .map(|event| event.seq)
        .collect();
    assert_eq!(newest_three, [103, 104, 105]);
    assert_eq!(
        store
            .record_event(&web, 105, 106, "load".into())
            .await
            .unwrap()
            .value
            .seq,
        106
    );
    assert_eq!(store.events(&web, 1000).await.unwrap()[0].seq, 7);
}

/// An unknown service has no events, and recording one writes nothing.
pub async fn events_of_an_unknown_service_are_not_found(fx: Fixture) {
    let store = &*fx.store;
    let ghost = name("ghost");
    let index = change_index(store).await;
    assert!(matches!(
        store.record_event(&ghost, 0, 1, "load".into()).await,
        Err(Error::NotFound { kind: "service", key }) if key == "ghost"
    ));
    assert!(matches!(
        store.events(&ghost, 10).await,
        Err(Error::NotFound { kind: "service", key }) if key == "ghost"
    ));
    assert_eq!(change_index(store).await, index);
    // Nothing was written for it: created now, it has no events.
    let module = store_module(store, b"events").await;
    put(store, "ghost", ServiceSpec::new(module)).await;
    assert_eq!(store.events(&ghost, 10).await.unwrap(), vec![]);
}

/// An event moves the health area only, and no revision.
pub async fn recording_events_changes_the_health_area_only(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"events").await;
    let web = name("web");
    let (record, _) = put(store, "web", ServiceSpec::new(module)).await;
    let before = store.indexes().await.unwrap();
    let mut last = before.change;
    for n_replicas in 1..=3 {
        let recorded = store
            .record_event(&web, n_replicas - 1, n_replicas, "load".into())
            .await
            .unwrap();
        assert!(recorded.index > last);
        last = recorded.index;
    }
    let after = store.indexes().await.unwrap();
    assert_eq!(after.change, last);
    assert_eq!(after.health, after.change);
    assert_eq!((after.catalog, after.kv), (before.catalog, before.kv));
    assert_eq!(store.service(&web).await.unwrap(), Some(record));
    assert_eq!(store.revisions(&web).await.unwrap().len(), 1);
}

/// Deleting a service deletes its events, and only its own.
pub async fn delete_service_removes_its_events_only(fx: Fixture) {
    let store = &*fx.store;
    let module = store_module(store, b"events").await;
    // "a" is a prefix of "ab": deleting one must not touch the other's events.
    for text in ["a", "ab"] {
        put(store, text, ServiceSpec::new(module.clone())).await;
        for n_replicas in 1..=3 {
            store
                .record_event(&name(text), n_replicas - 1, n_replicas, "load".into())
                .await
                .unwrap();
        }
    }
    store.delete_service(&name("a"), Expect::Any).await.unwrap();
    assert!(matches!(
        store.events(&name("a"), 10).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.events(&name("ab"), 10).await.unwrap().len(), 3);

    // Created again, the service starts a new history of events too.
    put(store, "a", ServiceSpec::new(module)).await;
    assert_eq!(store.events(&name("a"), 10).await.unwrap(), vec![]);
    assert_eq!(
        store
            .record_event(&name("a"), 0, 1, "cold start".into())
            .await
            .unwrap()
            .value
            .seq,
        1
    );
}

// The catalog.

/// An instance registers with its checks and deregisters with them.
pub async fn register_lists_and_deregisters_with_checks(fx: Fixture) {
    let store = &*fx.store;
    let before = store.indexes().await.unwrap();
    let stored = store
        .register_service(web("web-1"), vec![ttl_check("service:web-1")], false)
        .await
        .unwrap()
        .value;
    assert_eq!(stored.create_index, stored.modify_index);
    let snapshot = store.catalog().await.unwrap();
    assert_eq!(snapshot.registrations, vec![stored.clone()]);
    assert_eq!(snapshot.checks.len(), 1);
    let check = &snapshot.checks[0];
    assert_eq!(check.status, CheckStatus::Critical);
    assert_eq!(check.service_name, "web");
    assert_eq!(check.definition.service_id.as_deref(), Some("web-1"));
    assert!(snapshot.indexes.catalog > before.catalog);
    assert_eq!(snapshot.indexes.catalog, snapshot.indexes.health);
    assert_eq!(snapshot.indexes.kv, before.kv);

    assert!(store.deregister_service("web-1").await.unwrap().value);
    assert!(!store.deregister_service("web-1").await.unwrap().value);
    let snapshot = store.catalog().await.unwrap();
    assert!(snapshot.registrations.is_empty() && snapshot.checks.is_empty());
}

/// An instance ID defaults to the name; re-registering keeps its create index.
pub async fn the_id_defaults_to_the_name_and_reregistering_keeps_the_create_index(fx: Fixture) {
    let store = &*fx.store;
    let first = store
        .register_service(web(""), vec![], false)
        .await
        .unwrap()
        .value;
    assert_eq!(first.id, "web");
    let second = store
        .register_service(
            Registration {
                port: 9090,
                ..web("")
            },
            vec![],
            false,
        )
        .await
        .unwrap()
        .value;
    assert_eq!(second.create_index, first.create_index);
    assert!(second.modify_index > first.modify_index);
    assert_eq!(store.catalog().await.unwrap().registrations, vec![second]);
}

/// A re-registered check keeps its state unless the definition sets one.
pub async fn check_states_survive_reregistration_unless_set(fx: Fixture) {
    let store = &*fx.store;
    store
        .register_service(web("web-1"), vec![ttl_check("c")], false)
        .await
        .unwrap();
    store
        .update_check("c", CheckStatus::Passing, "ok".into())
        .await
        .unwrap();
    store
        .register_service(web("web-1"), vec![ttl_check("c")], false)
        .await
        .unwrap();
    let check = &store.catalog().await.unwrap().checks[0];
    assert_eq!(
        (check.status, check.output.as_str()),
        (CheckStatus::Passing, "ok")
    );

    let warning = CheckDefinition {
        status: Some(CheckStatus::Warning),
        ..ttl_check("c")
    };
    store
        .register_service(web("web-1"), vec![warning], false)
        .await
        .unwrap();
    let check = &store.catalog().await.unwrap().checks[0];
    assert_eq!(
        (check.status, check.output.as_str()),
        (CheckStatus::Warning, "")
    );
}

/// `replace_existing_checks` removes the instance's checks left out.
pub async fn replace_existing_checks_removes_the_missing_ones(fx: Fixture) {
    let store = &*fx.store;
    store
        .register_service(web("web-1"), vec![ttl_check("a"), ttl_check("b")], false)
        .await
        .unwrap();
    store
        .register_service(web("web-1"), vec![ttl_check("a")], false)
        .await
        .unwrap();
    assert_eq!(store.catalog().await.unwrap().checks.len(), 2);
    store
        .register_service(web("web-1"), vec![ttl_check("a")], true)
        .await
        .unwrap();
    let ids: Vec<String> = store
        .catalog()
        .await
        .unwrap()
        .checks
        .into_iter()
        .map(|c| c.definition.id)
        .collect();
    assert_eq!(ids, ["a"]);
}

/// A check state is written only when it changes.
pub async fn check_updates_write_only_changes(fx: Fixture) {
    let store = &*fx.store;
    store
        .register_service(web("web-1"), vec![ttl_check("c")], false)
        .await
        .unwrap();
    let first = store
        .update_check("c", CheckStatus::Passing, String::new())
        .await
        .unwrap()
        .value
        .unwrap();
    let indexes = store.indexes().await.unwrap();
    assert_eq!(indexes.health, first.modify_index);
    let same = store
        .update_check("c", CheckStatus::Passing, String::new())
        .await
        .unwrap();
    assert_eq!(same.value, Some(first));
    assert_eq!(same.index, indexes.change);
    assert_eq!(store.indexes().await.unwrap(), indexes);
    assert!(
        store
            .update_check("nope", CheckStatus::Passing, String::new())
            .await
            .unwrap()
            .value
            .is_none()
    );
}

/// Checks of the node have no instance; a check of an unknown instance is refused.
pub async fn node_checks_and_checks_of_unknown_services(fx: Fixture) {
    let store = &*fx.store;
    let node_check = store.register_check(ttl_check("node")).await.unwrap().value;
    assert_eq!(node_check.service_name, "");
    assert_eq!(node_check.definition.service_id, None);
    let orphan = CheckDefinition {
        service_id: Some("nope".into()),
        ..ttl_check("orphan")
    };
    assert!(matches!(
        store.register_check(orphan).await,
        Err(Error::NotFound {
            kind: "service",
            ..
        })
    ));
    assert!(store.deregister_check("node").await.unwrap().value);
    assert!(!store.deregister_check("node").await.unwrap().value);
    assert!(store.catalog().await.unwrap().checks.is_empty());
}

/// A name belongs to a wasm service or to registered instances, never both.
pub async fn a_name_has_one_owner(fx: Fixture) {
    let store = &*fx.store;
    let digest = store_module(store, b"module").await;
    put(store, "wasm", ServiceSpec::new(digest.clone())).await;
    let before = store.indexes().await.unwrap();
    assert!(matches!(
        store
            .register_service(Registration::new("wasm"), vec![], false)
            .await,
        Err(Error::NameTaken { .. })
    ));
    let registered = store
        .register_service(Registration::new("web"), vec![], false)
        .await
        .unwrap();
    assert!(registered.index > before.change);
    let taken = store
        .put_service(&name("web"), ServiceSpec::new(digest), Expect::Any)
        .await
        .unwrap_err();
    assert_eq!(
        taken.to_string(),
        "service name \"web\" is taken by service instances registered through the Consul API"
    );
    // The registration was the one change: the refusals wrote nothing.
    assert_eq!(store.indexes().await.unwrap().change, registered.index);
    assert!(store.service(&name("web")).await.unwrap().is_none());
}

// The key/value store.

/// Keys are written, read, listed by prefix and deleted, one or recursively.
pub async fn kv_put_get_list_delete(fx: Fixture) {
    let store = &*fx.store;
    let (missing, index) = store.kv_get("a").await.unwrap();
    assert_eq!((missing, index), (None, 1));
    let kv_put = |key: &'static str, value: &'static [u8], flags| {
        store.kv_put(key, Bytes::from_static(value), flags, None)
    };
    assert!(kv_put("a/b", b"one", 7).await.unwrap().value);
    assert!(kv_put("a/c", b"two", 0).await.unwrap().value);
    assert!(kv_put("b", b"", 0).await.unwrap().value);
    let (entry, index) = store.kv_get("a/b").await.unwrap();
    let entry = entry.unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.flags),
        (b"one".as_slice(), 7)
    );
    assert_eq!(index, entry.modify_index);
    let (listed, kv_index) = store.kv_list("a/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a/b", "a/c"]);
    assert_eq!(kv_index, store.indexes().await.unwrap().kv);
    assert_eq!(store.kv_list("").await.unwrap().0.len(), 3);

    assert!(store.kv_delete("a/", true, None).await.unwrap().value);
    assert_eq!(store.kv_list("").await.unwrap().0.len(), 1);
    assert!(store.kv_delete("b", false, None).await.unwrap().value);
    assert!(store.kv_delete("b", false, None).await.unwrap().value);
    assert!(store.kv_list("").await.unwrap().0.is_empty());
}

/// Updating a key keeps its create index and moves its modify index.
pub async fn kv_updates_keep_the_create_index_and_move_the_modify_index(fx: Fixture) {
    let store = &*fx.store;
    store
        .kv_put("k", Bytes::from_static(b"1"), 0, None)
        .await
        .unwrap();
    let first = store.kv_get("k").await.unwrap().0.unwrap();
    store
        .kv_put("k", Bytes::from_static(b"2"), 0, None)
        .await
        .unwrap();
    let second = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!(second.create_index, first.create_index);
    assert!(second.modify_index > first.modify_index);
}

/// Check-and-set writes and deletes only against the modify index given (0: absent).
pub async fn kv_check_and_set(fx: Fixture) {
    let store = &*fx.store;
    let put = |value: &'static [u8], cas| store.kv_put("k", Bytes::from_static(value), 0, cas);
    assert!(put(b"1", Some(0)).await.unwrap().value);
    assert!(!put(b"2", Some(0)).await.unwrap().value);
    let index = store.kv_get("k").await.unwrap().0.unwrap().modify_index;
    assert!(!put(b"3", Some(index + 100)).await.unwrap().value);
    assert!(put(b"4", Some(index)).await.unwrap().value);
    assert_eq!(store.kv_get("k").await.unwrap().0.unwrap().value, b"4");
    let index = store.kv_get("k").await.unwrap().0.unwrap().modify_index;
    assert!(
        !store
            .kv_delete("k", false, Some(index - 1))
            .await
            .unwrap()
            .value
    );
    assert!(
        store
            .kv_delete("k", false, Some(index))
            .await
            .unwrap()
            .value
    );
    assert!(
        !store
            .kv_put("gone", Bytes::new(), 0, Some(5))
            .await
            .unwrap()
            .value
    );
}

/// Only a write that changes something moves the key/value index.
pub async fn kv_only_changes_move_the_kv_index(fx: Fixture) {
    let store = &*fx.store;
    let start = store.indexes().await.unwrap();
    store
        .kv_put("k", Bytes::from_static(b"1"), 0, None)
        .await
        .unwrap();
    let after_put = store.indexes().await.unwrap();
    assert_eq!(after_put.kv, after_put.change);
    assert_eq!(
        (after_put.catalog, after_put.health),
        (start.catalog, start.health)
    );
    store.kv_delete("missing", false, None).await.unwrap();
    store
        .kv_put("k", Bytes::from_static(b"x"), 0, Some(0))
        .await
        .unwrap();
    assert_eq!(store.indexes().await.unwrap(), after_put);
}

/// An empty key or a value over the limit is refused, naming which.
pub async fn kv_bad_input_writes_nothing(fx: Fixture) {
    let store = &*fx.store;
    let start = store.indexes().await.unwrap();
    assert!(matches!(
        store.kv_put("", Bytes::new(), 0, None).await,
        Err(Error::Invalid(e)) if e.field == "key"
    ));
    let too_big = Bytes::from(vec![0; MAX_KV_VALUE_SIZE + 1]);
    assert!(matches!(
        store.kv_put("k", too_big.clone(), 0, None).await,
        Err(Error::Invalid(e)) if e.field == "value"
    ));
    let written = store
        .kv_put("k", too_big.slice(1..), 0, None)
        .await
        .unwrap();
    assert!(written.value);
    assert!(matches!(
        store.kv_delete("", false, None).await,
        Err(Error::Invalid(e)) if e.field == "key"
    ));
    // The one write that was accepted is the one change.
    assert!(written.index > start.kv);
    assert_eq!(store.indexes().await.unwrap().kv, written.index);
    assert_eq!(store.indexes().await.unwrap().change, written.index);
}

// The change feed.

/// A watch yields every change after its index, in order, naming what each touched, and
/// nothing for writes that changed nothing.
pub async fn a_watch_sees_every_change_in_order_with_its_subject(fx: Fixture) {
    let store = &*fx.store;
    let start = change_index(store).await;
    let mut watch = store.watch(start);
    let module = store_module(store, b"watched").await;
    // Storing it again changes nothing, so the watch owes nothing for it.
    store_module(store, b"watched").await;
    put(store, "web", ServiceSpec::new(module.clone())).await;
    store
        .record_event(&name("web"), 0, 1, "cold start".into())
        .await
        .unwrap();
    store
        .register_service(Registration::new("api"), vec![], false)
        .await
        .unwrap();
    store
        .kv_put("k", Bytes::from_static(b"v"), 0, None)
        .await
        .unwrap();
    store
        .delete_service(&name("web"), Expect::Any)
        .await
        .unwrap();
    let expected = [
        Subject::Module(module),
        Subject::Service(name("web")),
        Subject::Events(name("web")),
        Subject::Catalog,
        Subject::Kv("k".into()),
        Subject::Service(name("web")),
    ];
    let mut index = start;
    for subject in expected {
        let change = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the change arrives")
            .expect("the watch goes on")
            .expect("the change");
        assert_eq!(change.subject, subject);
        // Indexes grow with every change; by how much is the backend's (etcd counts the
        // revisions of the whole cluster).
        assert!(change.index() > index, "{} after {index}", change.index());
        index = change.index();
    }
    let last = store.indexes().await.unwrap();
    assert_eq!(index, last.change);
    // From a later index, the earlier changes are not repeated.
    let mut later = store.watch(index - 1);
    let change = later.next().await.unwrap().unwrap();
    assert_eq!(change.subject, Subject::Service(name("web")));
    assert_eq!(change.indexes, last);
}

/// A watch that is waiting sees a write made by another task, as it commits.
pub async fn a_watch_sees_writes_made_while_it_waits(fx: Fixture) {
    let store = fx.store.clone();
    let start = change_index(&*store).await;
    let mut watch = store.watch(start);
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for n in 0..20_u32 {
                store
                    .kv_put(&format!("key/{n}"), Bytes::from(n.to_string()), 0, None)
                    .await
                    .unwrap();
            }
        }
    });
    let mut index = start;
    for n in 0..20_u32 {
        let change = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the change arrives")
            .unwrap()
            .unwrap();
        assert_eq!(change.subject, Subject::Kv(format!("key/{n}")));
        assert!(change.index() > index);
        index = change.index();
    }
    writer.await.unwrap();
}

/// A write's [`Committed::index`](crate::Committed) is the change a watch yields for it, or,
/// for a write that changed nothing, an index the watch has already passed.
pub async fn writes_report_the_index_a_watch_reaches(fx: Fixture) {
    let store = &*fx.store;
    let start = change_index(store).await;
    let mut watch = store.watch(start);
    let written = store
        .kv_put("k", Bytes::from_static(b"1"), 0, None)
        .await
        .unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().index(), written.index);
    let refused = store
        .kv_put("k", Bytes::from_static(b"2"), 0, Some(0))
        .await
        .unwrap();
    assert!(!refused.value);
    assert_eq!(refused.index, written.index);
}

/// After close, calls fail with [`Error::Closed`].
pub async fn a_closed_store_refuses_calls(fx: Fixture) {
    let store = &*fx.store;
    store_module(store, b"before").await;
    store.close().await;
    assert!(matches!(store.modules().await, Err(Error::Closed)));
    assert!(matches!(
        store.kv_put("k", Bytes::new(), 0, None).await,
        Err(Error::Closed)
    ));
}

// Durability.

/// Modules, services and revisions, and the change index, survive reopening.
pub async fn data_survives_reopening(mut fx: Fixture) {
    let web = name("web");
    let store = fx.store.clone();
    let module = store_module(&*store, b"durable module").await;
    put(&*store, "web", spec_with_env(&module, "one")).await;
    let (service, _) = put(&*store, "web", spec_with_env(&module, "two")).await;
    let revisions = store.revisions(&web).await.unwrap();
    let index = change_index(&*store).await;

    fx.reopen().await;
    let store = &*fx.store;
    assert_eq!(
        store.module_bytes(&module).await.unwrap().as_deref(),
        Some(b"durable module".as_slice())
    );
    assert_eq!(store.module(&module).await.unwrap().unwrap().digest, module);
    assert_eq!(store.service(&web).await.unwrap(), Some(service));
    assert_eq!(store.revisions(&web).await.unwrap(), revisions);
    assert_eq!(change_index(store).await, index);

    let (third, _) = put(store, "web", spec_with_env(&module, "three")).await;
    assert_eq!(third.revision, 3);
    assert!(third.change_index > index);
    assert_eq!(change_index(store).await, third.change_index);
}

/// Events survive reopening, and their numbering goes on.
pub async fn events_survive_reopening(mut fx: Fixture) {
    let web = name("web");
    let store = fx.store.clone();
    let module = store_module(&*store, b"events").await;
    put(&*store, "web", ServiceSpec::new(module)).await;
    store
        .record_event(&web, 0, 1, "cold start".into())
        .await
        .unwrap();
    store.record_event(&web, 1, 2, "load".into()).await.unwrap();
    let events = store.events(&web, 10).await.unwrap();
    fx.reopen().await;
    let store = &*fx.store;
    assert_eq!(store.events(&web, 10).await.unwrap(), events);
    assert_eq!(
        store
            .record_event(&web, 2, 1, "idle".into())
            .await
            .unwrap()
            .value
            .seq,
        3
    );
}

/// Registrations, checks with their states, and the indexes survive reopening.
pub async fn registrations_survive_reopening(mut fx: Fixture) {
    let store = fx.store.clone();
    store
        .register_service(web("web-1"), vec![ttl_check("c")], false)
        .await
        .unwrap();
    store
        .update_check("c", CheckStatus::Warning, "slow".into())
        .await
        .unwrap();
    let snapshot = store.catalog().await.unwrap();
    fx.reopen().await;
    let reopened = fx.store.catalog().await.unwrap();
    assert_eq!(reopened.registrations, snapshot.registrations);
    assert_eq!(reopened.checks, snapshot.checks);
    assert_eq!(reopened.indexes, snapshot.indexes);
}

/// Keys survive reopening, and the key/value index goes on from where it was.
pub async fn kv_entries_survive_reopening(mut fx: Fixture) {
    let store = fx.store.clone();
    store
        .kv_put("k", Bytes::from_static(b"durable"), 3, None)
        .await
        .unwrap();
    let entry = store.kv_get("k").await.unwrap().0;
    let indexes = store.indexes().await.unwrap();
    fx.reopen().await;
    let store = &*fx.store;
    assert_eq!(store.kv_get("k").await.unwrap().0, entry);
    assert_eq!(store.indexes().await.unwrap(), indexes);
    let again = store
        .kv_put("k", Bytes::from_static(b"again"), 3, None)
        .await
        .unwrap();
    assert!(again.index > indexes.change);
    assert_eq!(store.indexes().await.unwrap().kv, again.index);
}

// Routes and module names.

fn route_spec(app: &str) -> RouteSpec {
    RouteSpec {
        selector: [("app".to_owned(), app.to_owned())].into(),
        kubernetes: Some(serde_json::json!({ "spec": { "ports": [{ "port": 80 }] } })),
    }
}

/// Reads the next change of `watch`, waiting at most 10 s.
async fn next_change(watch: &mut crate::ChangeStream) -> crate::Change {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch goes on")
        .expect("the change")
}

/// Routes are created, read as written, listed by name, updated and deleted; each change
/// moves the change and catalog indexes, and nothing else. A route may share its name with a
/// service.
pub async fn routes_put_get_list_delete(fx: Fixture) {
    let store = &*fx.store;
    let (web, api) = (name("web"), name("api"));
    assert_eq!(store.route(&web).await.unwrap(), None);
    assert_eq!(store.routes().await.unwrap(), vec![]);
    // The store leaves precedence to the node: a service of the same name is no obstacle.
    let module = store_module(store, b"module").await;
    put(store, "web", ServiceSpec::new(module)).await;

    let before = store.indexes().await.unwrap();
    let created = store
        .put_route(&web, route_spec("web"), Expect::Absent)
        .await
        .unwrap();
    let (record, was_created) = created.value.clone();
    assert!(was_created);
    assert_eq!(record.version, SCHEMA_VERSION);
    assert_eq!(record.name, web);
    assert_eq!(
        record.spec,
        route_spec("web"),
        "the spec reads back as written"
    );
    assert_eq!(record.created_unix_ms, fx.clock.now_unix_ms());
    assert_eq!(record.updated_unix_ms, record.created_unix_ms);
    assert_eq!(record.change_index, created.index);
    let after = store.indexes().await.unwrap();
    assert_eq!(after.change, created.index);
    assert!(created.index > before.change);
    assert_eq!(
        after.catalog, created.index,
        "a route moves the catalog index"
    );
    assert_eq!(
        (after.health, after.kv),
        (before.health, before.kv),
        "a route moves no other area"
    );
    assert_eq!(store.route(&web).await.unwrap(), Some(record.clone()));

    let (api_record, _) = store
        .put_route(&api, route_spec("api"), Expect::Any)
        .await
        .unwrap()
        .value;
    assert_eq!(
        store.routes().await.unwrap(),
        vec![api_record.clone(), record.clone()],
        "routes are listed by name"
    );

    // An equal spec changes nothing, whatever the clock says.
    fx.clock.advance(Duration::from_secs(5));
    let index = change_index(store).await;
    let same = store
        .put_route(
            &web,
            route_spec("web"),
            Expect::Revision(record.change_index),
        )
        .await
        .unwrap();
    assert_eq!(same.value, (record.clone(), false));
    assert_eq!(same.index, index);
    assert_eq!(change_index(store).await, index);

    let updated = store
        .put_route(
            &web,
            route_spec("other"),
            Expect::Revision(record.change_index),
        )
        .await
        .unwrap();
    let (updated_record, was_created) = updated.value.clone();
    assert!(!was_created);
    assert_eq!(updated_record.spec, route_spec("other"));
    assert_eq!(updated_record.created_unix_ms, record.created_unix_ms);
    assert_eq!(updated_record.updated_unix_ms, fx.clock.now_unix_ms());
    assert_eq!(updated_record.change_index, updated.index);
    assert!(updated.index > index);
    assert_eq!(store.indexes().await.unwrap().catalog, updated.index);
    assert_eq!(
        store.route(&web).await.unwrap(),
        Some(updated_record.clone())
    );

    let deleted = store.delete_route(&web, Expect::Any).await.unwrap();
    assert_eq!(deleted.value, updated_record);
    assert!(deleted.index > updated.index);
    let indexes = store.indexes().await.unwrap();
    assert_eq!(
        (indexes.change, indexes.catalog),
        (deleted.index, deleted.index)
    );
    assert_eq!(store.route(&web).await.unwrap(), None);
    assert_eq!(store.routes().await.unwrap(), vec![api_record]);
    assert!(
        store.service(&web).await.unwrap().is_some(),
        "the service of the same name stays"
    );
    match store.delete_route(&web, Expect::Any).await {
        Err(Error::NotFound { kind, key }) => assert_eq!((kind, key.as_str()), ("route", "web")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(change_index(store).await, deleted.index);
}

/// A route write whose expectation fails, or whose selector is not a label, writes nothing;
/// `Expect::Revision` names the route's change index.
pub async fn routes_are_written_conditionally_and_validated(fx: Fixture) {
    let store = &*fx.store;
    let web = name("web");
    // Updating a route that does not exist is a conflict, not a creation.
    match store
        .put_route(&web, route_spec("web"), Expect::Revision(1))
        .await
    {
        Err(Error::Conflict {
            kind,
            expected,
            found,
            ..
        }) => assert_eq!(
            (kind, expected.as_str(), found.as_str()),
            ("route", "change index 1", "no route")
        ),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let first = store
        .put_route(&web, route_spec("web"), Expect::Absent)
        .await
        .unwrap()
        .value
        .0;
    let err = store
        .put_route(&web, route_spec("x"), Expect::Absent)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "route \"web\" changed meanwhile: expected no route, found change index {}",
            first.change_index
        )
    );
    // Two writers read the same route: the first wins, the second's read is stale.
    let second = store
        .put_route(
            &web,
            route_spec("two"),
            Expect::Revision(first.change_index),
        )
        .await
        .unwrap()
        .value
        .0;
    let index = change_index(store).await;
    assert!(matches!(
        store
            .put_route(
                &web,
                route_spec("three"),
                Expect::Revision(first.change_index)
            )
            .await,
        Err(Error::Conflict { kind: "route", .. })
    ));
    assert!(matches!(
        store
            .delete_route(&web, Expect::Revision(first.change_index))
            .await,
        Err(Error::Conflict { kind: "route", .. })
    ));
    assert!(matches!(
        store.delete_route(&web, Expect::Absent).await,
        Err(Error::Conflict { kind: "route", .. })
    ));

    let bad = RouteSpec {
        selector: [("app".to_owned(), "not a label".to_owned())].into(),
        kubernetes: None,
    };
    for (route, expect) in [(&web, Expect::Any), (&name("bad"), Expect::Absent)] {
        match store.put_route(route, bad.clone(), expect).await {
            Err(Error::Invalid(error)) => assert_eq!(error.field, "selector.app"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(change_index(store).await, index, "nothing was written");
    assert_eq!(store.route(&web).await.unwrap(), Some(second.clone()));
    assert_eq!(store.route(&name("bad")).await.unwrap(), None);

    // An empty selector is valid: it selects nothing, as a Kubernetes Service's does.
    let empty = RouteSpec {
        selector: Default::default(),
        kubernetes: None,
    };
    store
        .put_route(&name("empty"), empty.clone(), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        store.route(&name("empty")).await.unwrap().unwrap().spec,
        empty
    );

    store
        .delete_route(&web, Expect::Revision(second.change_index))
        .await
        .unwrap();
    assert_eq!(store.route(&web).await.unwrap(), None);
}

/// Route writes come through the change feed, naming the route, with growing indexes that
/// moved the catalog area too.
pub async fn a_watch_sees_route_changes(fx: Fixture) {
    let store = &*fx.store;
    let web = name("web");
    let from = change_index(store).await;
    let mut watch = store.watch(from);
    let created = store
        .put_route(&web, route_spec("web"), Expect::Any)
        .await
        .unwrap();
    // An equal spec changes nothing, so the watch owes nothing for it.
    store
        .put_route(&web, route_spec("web"), Expect::Any)
        .await
        .unwrap();
    let updated = store
        .put_route(&web, route_spec("other"), Expect::Any)
        .await
        .unwrap();
    let deleted = store.delete_route(&web, Expect::Any).await.unwrap();
    let mut index = from;
    for expected in [created.index, updated.index, deleted.index] {
        let change = next_change(&mut watch).await;
        assert_eq!(change.subject, Subject::Route(web.clone()));
        assert_eq!(change.index(), expected);
        assert!(change.index() > index);
        assert_eq!(change.indexes.catalog, change.index());
        index = change.index();
    }
}

/// A name resolves to the module given it last, and stays on the modules given it before;
/// naming again changes nothing; storing the same bytes again keeps the names; an unknown
/// module or an empty name is refused with nothing written.
pub async fn module_names_resolve_to_the_newest_module_given_them(fx: Fixture) {
    let store = &*fx.store;
    let first = store_module(store, b"first").await;
    let second = store_module(store, b"second").await;
    let first_stored = store.module(&first).await.unwrap().unwrap();
    assert!(first_stored.names.is_empty());
    assert!(crate::module_named(&store.modules().await.unwrap(), "hello").is_none());

    let from = change_index(store).await;
    let mut watch = store.watch(from);
    let named = store.name_module(&first, "hello").await.unwrap();
    assert!(named.index > from);
    assert_eq!(change_index(store).await, named.index);
    assert_eq!(
        named.value.names,
        [("hello".to_owned(), named.index)].into(),
        "a name is given at the index of the change that gives it"
    );
    assert_eq!(
        named.value.change_index, first_stored.change_index,
        "naming does not move the index the module was stored at"
    );
    assert_eq!(
        store.module(&first).await.unwrap(),
        Some(named.value.clone())
    );
    let change = next_change(&mut watch).await;
    assert_eq!(change.subject, Subject::Module(first.clone()));
    assert_eq!(change.index(), named.index);
    let modules = store.modules().await.unwrap();
    assert_eq!(
        crate::module_named(&modules, "hello").unwrap().digest,
        first
    );
    assert!(crate::module_named(&modules, "other").is_none());

    let moved = store.name_module(&second, "hello").await.unwrap();
    assert!(moved.index > named.index);
    let modules = store.modules().await.unwrap();
    assert_eq!(
        crate::module_named(&modules, "hello").unwrap().digest,
        second
    );
    assert_eq!(
        store.module(&first).await.unwrap().unwrap().names["hello"],
        named.index,
        "the older module keeps the name"
    );

    // Naming again changes nothing.
    let again = store.name_module(&second, "hello").await.unwrap();
    assert_eq!(again.index, moved.index);
    assert_eq!(again.value, moved.value);
    assert_eq!(change_index(store).await, moved.index);

    // A second name leaves the first where it was given.
    let greeter = store.name_module(&first, "greeter").await.unwrap();
    let first_record = store.module(&first).await.unwrap().unwrap();
    assert_eq!(
        first_record.names,
        [
            ("greeter".to_owned(), greeter.index),
            ("hello".to_owned(), named.index)
        ]
        .into()
    );
    let modules = store.modules().await.unwrap();
    assert_eq!(
        crate::module_named(&modules, "greeter").unwrap().digest,
        first
    );
    assert_eq!(
        crate::module_named(&modules, "hello").unwrap().digest,
        second
    );

    // Storing the bytes again keeps the names.
    let stored_again = store
        .put_module(&first, ModuleKind::Http, Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(stored_again.value, (first_record.clone(), false));
    assert_eq!(stored_again.index, greeter.index);

    let index = change_index(store).await;
    match store.name_module(&Digest::of(b"absent"), "x").await {
        Err(Error::NotFound { kind, key }) => {
            assert_eq!((kind, key), ("module", Digest::of(b"absent").to_string()))
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    match store.name_module(&first, "").await {
        Err(Error::Invalid(error)) => assert_eq!(error.field, "name"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(change_index(store).await, index, "nothing was written");
    assert_eq!(store.module(&first).await.unwrap(), Some(first_record));
}

/// Routes and module names are there after reopening.
pub async fn routes_and_module_names_survive_reopening(mut fx: Fixture) {
    let store = fx.store.clone();
    let module = store_module(&*store, b"named").await;
    let named = store.name_module(&module, "hello").await.unwrap().value;
    let (route, _) = store
        .put_route(&name("web"), route_spec("web"), Expect::Any)
        .await
        .unwrap()
        .value;
    fx.reopen().await;
    let store = &*fx.store;
    assert_eq!(store.routes().await.unwrap(), vec![route.clone()]);
    assert_eq!(store.route(&name("web")).await.unwrap(), Some(route));
    assert_eq!(store.module(&module).await.unwrap(), Some(named));
    let modules = store.modules().await.unwrap();
    assert_eq!(
        crate::module_named(&modules, "hello").unwrap().digest,
        module
    );
}

// Services waiting for their module.

fn waiting_spec(value: &str) -> ServiceSpec {
    // No module is stored with this digest: the store does not look.
    spec_with_env(&Digest::of(b"not stored"), value)
}

/// A waiting service is written with no module stored, read back as written, listed by name,
/// written conditionally on its change index, validated, seen by a watch, and deleted; an equal
/// write changes nothing.
pub async fn waiting_services_put_list_delete_conditionally(fx: Fixture) {
    let store = &*fx.store;
    let (web, api) = (name("web"), name("api"));
    assert_eq!(store.waiting().await.unwrap(), vec![]);
    let from = change_index(store).await;
    let mut watch = store.watch(from);
    let before = store.indexes().await.unwrap();

    let created = store
        .put_waiting(&web, "hello:latest", waiting_spec("hi"), Expect::Absent)
        .await
        .unwrap();
    let (record, was_created) = created.value.clone();
    assert!(was_created);
    assert_eq!(record.version, SCHEMA_VERSION);
    assert_eq!(
        (
            record.name.clone(),
            record.image.as_str(),
            record.spec.clone()
        ),
        (web.clone(), "hello:latest", waiting_spec("hi"))
    );
    assert_eq!(record.created_unix_ms, fx.clock.now_unix_ms());
    assert_eq!(record.change_index, created.index);
    let after = store.indexes().await.unwrap();
    assert_eq!(after.change, created.index);
    assert_eq!(
        (after.catalog, after.health, after.kv),
        (before.catalog, before.health, before.kv),
        "a waiting service moves no Consul area"
    );

    let again = store
        .put_waiting(&web, "hello:latest", waiting_spec("hi"), Expect::Any)
        .await
        .unwrap();
    assert_eq!(again.value, (record.clone(), false), "an equal write");
    assert_eq!(change_index(store).await, created.index, "commits nothing");

    let conflict = store
        .put_waiting(&web, "hello", waiting_spec("hi"), Expect::Absent)
        .await
        .unwrap_err();
    assert!(
        matches!(
            conflict,
            Error::Conflict {
                kind: "waiting service",
                ..
            }
        ),
        "{conflict}"
    );
    let stale = store
        .put_waiting(
            &web,
            "hello",
            waiting_spec("hi"),
            Expect::Revision(created.index + 100),
        )
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict { .. }), "{stale}");
    let mut invalid = waiting_spec("hi");
    invalid.env.insert("A=B".into(), "x".into());
    let refused = store
        .put_waiting(&web, "hello", invalid, Expect::Any)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Invalid(_)), "{refused}");
    assert_eq!(
        change_index(store).await,
        created.index,
        "refusals write nothing"
    );

    let updated = store
        .put_waiting(
            &web,
            "hello:v2",
            waiting_spec("hi"),
            Expect::Revision(created.index),
        )
        .await
        .unwrap();
    assert!(!updated.value.1);
    assert_eq!(updated.value.0.image, "hello:v2");
    assert_eq!(updated.value.0.created_unix_ms, record.created_unix_ms);
    store
        .put_waiting(&api, "api", waiting_spec("x"), Expect::Any)
        .await
        .unwrap();
    let names: Vec<_> = store
        .waiting()
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.name)
        .collect();
    assert_eq!(names, [api.clone(), web.clone()]);

    let stale = store
        .delete_waiting(&web, Expect::Revision(created.index))
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict { .. }), "{stale}");
    let deleted = store
        .delete_waiting(&web, Expect::Revision(updated.index))
        .await
        .unwrap();
    assert_eq!(deleted.value.image, "hello:v2");
    let missing = store.delete_waiting(&web, Expect::Any).await.unwrap_err();
    assert!(
        matches!(
            missing,
            Error::NotFound {
                kind: "waiting service",
                ..
            }
        ),
        "{missing}"
    );
    for expected in [created.index, updated.index] {
        let change = next_change(&mut watch).await;
        assert_eq!(change.subject, Subject::Waiting(web.clone()));
        assert_eq!(change.index(), expected);
    }
    assert_eq!(next_change(&mut watch).await.subject, Subject::Waiting(api));
    let change = next_change(&mut watch).await;
    assert_eq!(
        (change.index(), change.subject),
        (deleted.index, Subject::Waiting(web))
    );
}

/// A waiting service is durable.
pub async fn waiting_services_survive_reopening(mut fx: Fixture) {
    let (record, _) = fx
        .store
        .put_waiting(&name("web"), "hello", waiting_spec("hi"), Expect::Any)
        .await
        .unwrap()
        .value;
    fx.reopen().await;
    assert_eq!(fx.store.waiting().await.unwrap(), vec![record]);
}

// Sessions, locks and transactions.

fn lock(key: &str, session: &str) -> KvOp {
    KvOp::Lock {
        key: key.to_owned(),
        value: b"held".to_vec(),
        flags: 0,
        session: session.to_owned(),
    }
}

fn unlock(key: &str, session: &str) -> KvOp {
    KvOp::Unlock {
        key: key.to_owned(),
        value: b"free".to_vec(),
        flags: 0,
        session: session.to_owned(),
    }
}

fn set(key: &str, value: &str) -> KvOp {
    KvOp::Set {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        flags: 0,
    }
}

/// Runs one transaction, returning its outcome.
async fn txn(store: &dyn Store, ops: Vec<KvOp>) -> TxnOutcome {
    store.kv_txn(ops).await.unwrap().value
}

/// The failures of a refused transaction, by operation.
fn refused(outcome: TxnOutcome) -> Vec<(usize, TxnFailure)> {
    match outcome {
        TxnOutcome::Refused(errors) => errors.iter().map(|e| (e.op_index, e.failure)).collect(),
        TxnOutcome::Committed(results) => panic!("committed: {results:?}"),
    }
}

async fn create_session(store: &dyn Store, id: &str, behavior: SessionBehavior) -> SessionRecord {
    let mut session = SessionRecord::new(id, "node-1");
    session.behavior = behavior;
    store.create_session(session).await.unwrap().value
}

/// A session is created once per ID, listed, renewed, and destroyed, each a change.
pub async fn sessions_are_created_listed_and_destroyed(fx: Fixture) {
    let store = &*fx.store;
    let start = store.indexes().await.unwrap().change;
    let mut watch = store.watch(start);
    let mut session = SessionRecord::new("6b3e9a0c-1", "node-1");
    session.name = "leader election".into();
    session.ttl = Some(Duration::from_secs(30));
    let created = store.create_session(session.clone()).await.unwrap();
    assert!(created.index > start);
    assert_eq!(created.value.create_index, created.index);
    let change = next_change(&mut watch).await;
    assert_eq!(change.subject, Subject::Session("6b3e9a0c-1".into()));
    let (sessions, index) = store.sessions().await.unwrap();
    assert_eq!(sessions, vec![created.value.clone()]);
    assert_eq!(index, created.index);
    // An ID has one session.
    assert!(matches!(
        store.create_session(session).await,
        Err(Error::Conflict { .. })
    ));
    // Invalid ones are refused.
    let mut zero = SessionRecord::new("zero-ttl", "node-1");
    zero.ttl = Some(Duration::ZERO);
    assert!(matches!(
        store.create_session(zero).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        store.renew_session("6b3e9a0c-1").await.unwrap(),
        Some(created.value)
    );
    let destroyed = store.destroy_session("6b3e9a0c-1").await.unwrap();
    assert!(destroyed.value);
    assert!(destroyed.index > created.index);
    assert!(!store.destroy_session("6b3e9a0c-1").await.unwrap().value);
    assert_eq!(store.sessions().await.unwrap().0, vec![]);
    assert_eq!(store.renew_session("6b3e9a0c-1").await.unwrap(), None);
}

/// Locks: one holder, plain writes keep them, only the holder releases, and invalidating the
/// holder releases them with a lock-delay.
pub async fn locks_follow_sessions_with_lock_delay(fx: Fixture) {
    let store = &*fx.store;
    let a = create_session(store, "a", SessionBehavior::Release).await;
    let b = create_session(store, "b", SessionBehavior::Release).await;
    assert!(matches!(
        txn(store, vec![lock("k", &a.id)]).await,
        TxnOutcome::Committed(_)
    ));
    let held = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!((held.session.as_deref(), held.lock_index), (Some("a"), 1));
    assert_eq!(held.value, b"held");
    // Another session is refused; the holder locking again changes no lock index.
    assert_eq!(
        refused(txn(store, vec![lock("k", &b.id)]).await),
        [(0, TxnFailure::LockHeld)]
    );
    assert!(matches!(
        txn(store, vec![lock("k", &a.id)]).await,
        TxnOutcome::Committed(_)
    ));
    assert_eq!(store.kv_get("k").await.unwrap().0.unwrap().lock_index, 1);
    // A plain write keeps the lock.
    assert!(
        store
            .kv_put("k", Bytes::from_static(b"plain"), 0, None)
            .await
            .unwrap()
            .value
    );
    let written = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!(
        (written.session.as_deref(), written.value.as_slice()),
        (Some("a"), &b"plain"[..])
    );
    // Only the holder releases; an unknown session cannot lock.
    assert_eq!(
        refused(txn(store, vec![unlock("k", &b.id)]).await),
        [(0, TxnFailure::LockHeld)]
    );
    assert_eq!(
        refused(txn(store, vec![lock("k", "nobody")]).await),
        [(0, TxnFailure::InvalidSession)]
    );
    assert!(matches!(
        txn(store, vec![unlock("k", &a.id)]).await,
        TxnOutcome::Committed(_)
    ));
    let released = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!((released.session, released.lock_index), (None, 1));
    assert_eq!(released.value, b"free");
    // A release is no invalidation: no lock-delay.
    assert!(matches!(
        txn(store, vec![lock("k", &b.id)]).await,
        TxnOutcome::Committed(_)
    ));
    assert_eq!(store.kv_get("k").await.unwrap().0.unwrap().lock_index, 2);

    // Invalidating the holder releases the key, and starts its lock-delay (15 s by default).
    let before = store.kv_get("k").await.unwrap().0.unwrap();
    let destroyed = store.destroy_session(&b.id).await.unwrap();
    assert!(destroyed.value);
    let after = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!(after.session, None);
    assert_eq!(after.value, before.value);
    assert!(after.modify_index > before.modify_index);
    assert_eq!(store.indexes().await.unwrap().kv, destroyed.index);
    assert_eq!(
        refused(txn(store, vec![lock("k", &a.id)]).await),
        [(0, TxnFailure::LockHeld)]
    );
    fx.clock.advance(Duration::from_secs(16));
    assert!(matches!(
        txn(store, vec![lock("k", &a.id)]).await,
        TxnOutcome::Committed(_)
    ));
    let relocked = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!(
        (relocked.session.as_deref(), relocked.lock_index),
        (Some("a"), 3)
    );
    // Deleting a locked key deletes its lock too.
    assert!(store.kv_delete("k", false, None).await.unwrap().value);
    assert!(
        store
            .kv_put("k", Bytes::new(), 0, None)
            .await
            .unwrap()
            .value
    );
    let fresh = store.kv_get("k").await.unwrap().0.unwrap();
    assert_eq!((fresh.session, fresh.lock_index), (None, 0));
}

/// A `delete` session takes the keys it holds with it.
pub async fn delete_behavior_deletes_the_keys_held(fx: Fixture) {
    let store = &*fx.store;
    let doomed = create_session(store, "d", SessionBehavior::Delete).await;
    let kept = create_session(store, "r", SessionBehavior::Release).await;
    assert!(matches!(
        txn(
            store,
            vec![lock("svc/leader", &doomed.id), lock("svc/other", &kept.id)]
        )
        .await,
        TxnOutcome::Committed(_)
    ));
    assert!(store.destroy_session(&doomed.id).await.unwrap().value);
    let (left, _) = store.kv_list("svc/").await.unwrap();
    let keys: Vec<&str> = left.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["svc/other"]);
    assert_eq!(left[0].session.as_deref(), Some("r"));
}

/// A transaction commits every operation as one change, or, when one fails, nothing.
pub async fn transactions_are_all_or_nothing(fx: Fixture) {
    let store = &*fx.store;
    assert!(
        store
            .kv_put("c", Bytes::from_static(b"0"), 0, None)
            .await
            .unwrap()
            .value
    );
    let before = store.indexes().await.unwrap();
    // The third fails: nothing is written, and the failure names it.
    let stale = KvOp::Cas {
        key: "c".into(),
        value: b"1".to_vec(),
        flags: 0,
        index: 99_999,
    };
    let outcome = store
        .kv_txn(vec![set("a", "1"), set("b", "2"), stale])
        .await
        .unwrap();
    assert_eq!(refused(outcome.value), [(2, TxnFailure::Failed)]);
    assert_eq!(store.indexes().await.unwrap(), before);
    assert_eq!(store.kv_get("a").await.unwrap().0, None);

    // All succeed: one change, and each operation sees those before it.
    let c = store.kv_get("c").await.unwrap().0.unwrap();
    let committed = store
        .kv_txn(vec![
            set("x/1", "one"),
            set("x/2", "two"),
            KvOp::Get { key: "x/1".into() },
            KvOp::Cas {
                key: "c".into(),
                value: b"1".to_vec(),
                flags: 5,
                index: c.modify_index,
            },
            KvOp::CheckNotExists { key: "nope".into() },
            KvOp::GetTree { key: "x/".into() },
            KvOp::Delete { key: "x/2".into() },
            KvOp::CheckIndex {
                key: "x/1".into(),
                index: 0,
            },
        ])
        .await
        .unwrap();
    // The check-index named a stale index: refused, and the writes before it are gone.
    assert_eq!(refused(committed.value), [(7, TxnFailure::Failed)]);
    assert_eq!(store.kv_get("x/1").await.unwrap().0, None);

    let committed = store
        .kv_txn(vec![
            set("x/1", "one"),
            set("x/2", "two"),
            KvOp::Get { key: "x/1".into() },
            KvOp::Cas {
                key: "c".into(),
                value: b"1".to_vec(),
                flags: 5,
                index: c.modify_index,
            },
            KvOp::CheckNotExists { key: "nope".into() },
            KvOp::GetTree { key: "x/".into() },
            KvOp::Delete { key: "x/2".into() },
        ])
        .await
        .unwrap();
    let TxnOutcome::Committed(results) = committed.value else {
        panic!("refused: {:?}", committed.value);
    };
    let shown: Vec<(&str, &[u8], u64)> = results
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_slice(), e.modify_index))
        .collect();
    let at = committed.index;
    assert_eq!(
        shown,
        [
            ("x/1", &b""[..], at),
            ("x/2", &b""[..], at),
            ("x/1", &b"one"[..], at),
            ("c", &b""[..], at),
            ("x/1", &b"one"[..], at),
            ("x/2", &b"two"[..], at),
        ]
    );
    let after = store.indexes().await.unwrap();
    assert_eq!((after.change, after.kv), (at, at));
    let (left, _) = store.kv_list("").await.unwrap();
    let left: Vec<(&str, u64)> = left.iter().map(|e| (e.key.as_str(), e.flags)).collect();
    assert_eq!(left, [("c", 5), ("x/1", 0)]);

    // Reads alone change nothing.
    let read = store
        .kv_txn(vec![KvOp::GetTree { key: String::new() }])
        .await
        .unwrap();
    assert!(matches!(read.value, TxnOutcome::Committed(ref found) if found.len() == 2));
    assert_eq!(store.indexes().await.unwrap(), after);
    // A delete-tree takes what earlier operations wrote under it.
    let cleared = store
        .kv_txn(vec![
            set("x/3", "three"),
            KvOp::DeleteTree { key: "x/".into() },
        ])
        .await
        .unwrap();
    assert!(matches!(cleared.value, TxnOutcome::Committed(_)));
    assert_eq!(store.kv_list("x/").await.unwrap().0, vec![]);
    // Bad input is refused before anything is read.
    assert!(matches!(
        store.kv_txn(vec![set("", "x")]).await,
        Err(Error::Invalid(_))
    ));
    // As many operations as Consul takes: 64 writes, then 64 reads, each one transaction.
    let writes: Vec<KvOp> = (0..crate::MAX_TXN_OPS)
        .map(|n| set(&format!("many/{n:02}"), "v"))
        .collect();
    assert!(matches!(
        store.kv_txn(writes).await.unwrap().value,
        TxnOutcome::Committed(_)
    ));
    let reads: Vec<KvOp> = (0..crate::MAX_TXN_OPS)
        .map(|n| KvOp::Get {
            key: format!("many/{n:02}"),
        })
        .collect();
    let read = store.kv_txn(reads).await.unwrap().value;
    assert!(matches!(read, TxnOutcome::Committed(ref found) if found.len() == crate::MAX_TXN_OPS));
    // A missing key is deleted already, whatever index a delete-cas names.
    let gone = KvOp::DeleteCas {
        key: "never".into(),
        index: 7,
    };
    assert!(matches!(
        store.kv_txn(vec![gone]).await.unwrap().value,
        TxnOutcome::Committed(_)
    ));
}

/// A session not renewed lapses by itself, releasing what it held.
pub async fn sessions_lapse_after_twice_their_ttl_unless_renewed(fx: Fixture) {
    let store = &*fx.store;
    let start = store.indexes().await.unwrap().change;
    let mut session = SessionRecord::new("short", "node-1");
    session.ttl = Some(Duration::from_secs(1));
    session.lock_delay = Duration::ZERO;
    let created = store.create_session(session).await.unwrap();
    assert!(matches!(
        txn(store, vec![lock("held", "short")]).await,
        TxnOutcome::Committed(_)
    ));
    let mut watch = store.watch(created.index);
    // Renewed in time, it lives on past its first TTL span.
    let renewed_at = std::time::Instant::now();
    assert!(store.renew_session("short").await.unwrap().is_some());
    // It lapses, by itself: its invalidation is the next session change the watch sees.
    let lapsed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let change = next_change(&mut watch).await;
            if change.subject == Subject::Session("short".into()) {
                return change;
            }
        }
    })
    .await
    .expect("the session never lapsed");
    assert!(
        renewed_at.elapsed() >= Duration::from_secs(1),
        "it lapsed before its TTL"
    );
    assert!(lapsed.index() > start);
    assert_eq!(store.sessions().await.unwrap().0, vec![]);
    assert_eq!(store.renew_session("short").await.unwrap(), None);
    let released = store.kv_get("held").await.unwrap().0.unwrap();
    assert_eq!(released.session, None);
}

/// Sessions and their locks are durable: a reopened store hands no lock to anyone else.
pub async fn sessions_and_locks_survive_reopening(mut fx: Fixture) {
    let mut session = SessionRecord::new("durable", "node-1");
    session.ttl = Some(Duration::from_secs(60));
    let created = fx.store.create_session(session).await.unwrap().value;
    assert!(matches!(
        txn(&*fx.store, vec![lock("leader", "durable")]).await,
        TxnOutcome::Committed(_)
    ));
    let held = fx.store.kv_get("leader").await.unwrap().0;
    fx.reopen().await;
    let store = &*fx.store;
    assert_eq!(store.sessions().await.unwrap().0, vec![created]);
    // A restart hands the lock to nobody else.
    assert_eq!(store.kv_get("leader").await.unwrap().0, held);
    let other = create_session(store, "other", SessionBehavior::Release).await;
    assert_eq!(
        refused(txn(store, vec![lock("leader", &other.id)]).await),
        [(0, TxnFailure::LockHeld)]
    );
    assert!(store.renew_session("durable").await.unwrap().is_some());
}

/// A node of the catalog is registered with its instance and checks in one change, updated in
/// place, and deregistered with everything on it.
pub async fn catalog_nodes_register_with_their_instances_and_go_with_them(fx: Fixture) {
    let store = &*fx.store;
    let node = ExternalNode {
        version: SCHEMA_VERSION,
        name: "ext-1".into(),
        id: String::new(),
        address: "10.0.0.9".into(),
        tagged_addresses: Default::default(),
        meta: [("rack".to_owned(), "r1".to_owned())].into(),
        create_index: 0,
        modify_index: 0,
    };
    let mut registration = Registration::new("redis");
    registration.id = "redis-1".into();
    registration.port = 6379;
    let check = |id: &str, service: Option<&str>| CheckDefinition {
        id: id.into(),
        name: id.into(),
        service_id: service.map(str::to_owned),
        notes: String::new(),
        probe: Probe::External,
        status: Some(CheckStatus::Passing),
        deregister_critical_after: None,
        node: String::new(),
    };
    let before = store.indexes().await.unwrap();
    let committed = store
        .register_node(
            node.clone(),
            Some(registration),
            vec![check("redis-alive", Some("redis-1")), check("disk", None)],
        )
        .await
        .unwrap();
    assert!(committed.index > before.change);
    assert_eq!(committed.value.create_index, committed.index);
    let catalog = store.catalog().await.unwrap();
    assert_eq!(catalog.nodes.len(), 1);
    assert_eq!(catalog.nodes[0].address, "10.0.0.9");
    assert_eq!(catalog.registrations[0].node, "ext-1");
    let nodes_of_checks: Vec<(&str, &str)> = catalog
        .checks
        .iter()
        .map(|c| (c.definition.id.as_str(), c.definition.node.as_str()))
        .collect();
    assert_eq!(
        nodes_of_checks,
        [("disk", "ext-1"), ("redis-alive", "ext-1")]
    );
    assert!(catalog.indexes.catalog > before.catalog);

    // Updating the node keeps its create index.
    let mut moved = node.clone();
    moved.address = "10.0.0.10".into();
    let again = store.register_node(moved, None, vec![]).await.unwrap();
    assert_eq!(again.value.create_index, committed.value.create_index);
    assert!(again.value.modify_index > committed.value.modify_index);
    assert_eq!(store.catalog().await.unwrap().registrations.len(), 1);

    // A wasm service's name cannot be taken; nothing is written.
    let digest = store_module(store, b"ext-module").await;
    put(store, "taken", ServiceSpec::new(digest)).await;
    let indexes = store.indexes().await.unwrap();
    let taken = store
        .register_node(node.clone(), Some(Registration::new("taken")), vec![])
        .await;
    assert!(matches!(taken, Err(Error::NameTaken { .. })), "{taken:?}");
    assert_eq!(store.indexes().await.unwrap(), indexes);

    assert!(store.deregister_node("ext-1").await.unwrap().value);
    let catalog = store.catalog().await.unwrap();
    assert!(catalog.nodes.is_empty() && catalog.registrations.is_empty());
    assert!(catalog.checks.is_empty());
    assert!(!store.deregister_node("ext-1").await.unwrap().value);
}
