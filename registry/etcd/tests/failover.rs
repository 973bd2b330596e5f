//! The store against an etcd cluster losing members: with one of three members down (the
//! follower the store was using), every call still succeeds, and a watch goes on from another member
//! without losing or repeating a change. With two of three down, calls fail as unavailable,
//! and succeed again once a member is back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use shoal_registry::{Error, Store, Subject};
use shoal_registry_etcd::testing::EtcdCluster;
use shoal_registry_etcd::{EtcdStore, Options};
use shoal_registry_redb::RedbStore;

/// A store whose first endpoint, the one it uses until it fails, is member `first`.
async fn store_on(cluster: &EtcdCluster, first: usize, dir: &std::path::Path) -> EtcdStore {
    let blobs = RedbStore::open(
        &dir.join("blobs.redb"),
        shoal_registry_redb::Options::default(),
    )
    .await
    .unwrap();
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(first);
    EtcdStore::connect(Options::new(endpoints, Arc::new(blobs)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_fails_no_call_and_two_down_fail_as_unavailable() {
    let mut cluster = EtcdCluster::start(3);
    // The member the store uses is a follower: losing it needs no election (losing the
    // leader pauses writes for one, which is etcd's to take, not the client's).
    let leader = cluster.leader().expect("a started cluster has a leader");
    let used = (leader + 1) % 3;
    let dir = tempfile::tempdir().unwrap();
    let store = store_on(&cluster, used, dir.path()).await;
    let start = store.indexes().await.unwrap().change;
    let mut watch = store.watch(start);
    store
        .kv_put("before", Bytes::from_static(b"1"), 0, None)
        .await
        .unwrap();

    cluster.kill(used);
    for n in 0..50_u32 {
        let key = format!("during/{n}");
        let written = store
            .kv_put(&key, Bytes::from(n.to_string()), 0, None)
            .await
            .unwrap_or_else(|error| panic!("write {n} with one member down: {error}"));
        assert!(written.value);
        let (entry, _) = store
            .kv_get(&key)
            .await
            .unwrap_or_else(|error| panic!("read {n} with one member down: {error}"));
        assert_eq!(entry.unwrap().value, n.to_string().as_bytes());
    }
    // The watch saw every change once, in order, across the member's death.
    let mut seen = Vec::new();
    while seen.len() < 51 {
        let change = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("the watch goes on from another member")
            .expect("the watch does not end")
            .expect("a change");
        seen.push(change);
    }
    assert_eq!(seen[0].subject, Subject::Kv("before".into()));
    for (n, change) in seen[1..].iter().enumerate() {
        assert_eq!(change.subject, Subject::Kv(format!("during/{n}")));
    }
    assert!(
        seen.windows(2)
            .all(|pair| pair[0].index() < pair[1].index())
    );

    // Without a quorum, calls fail as unavailable.
    let other = 3 - leader - used;
    cluster.kill(other);
    let refused = store
        .kv_put("without-quorum", Bytes::from_static(b"x"), 0, None)
        .await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    cluster.restart(other);
    let mut recovered = None;
    for _ in 0..100 {
        match store.kv_get("during/49").await {
            Ok((entry, _)) => {
                recovered = entry;
                break;
            }
            Err(Error::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(recovered.expect("the quorum is back").value, b"49");
    store.close().await;
}
