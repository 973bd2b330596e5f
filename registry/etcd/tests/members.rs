//! Membership on a real three-member etcd cluster: a node's claim on its name, refused to a
//! second live node, taken over by the same node restarting, lapsing when its holder stops
//! renewing it, and given up at once on leave; and the members every node follows.

use std::sync::Arc;
use std::time::Duration;

use shoal_registry::Error;
use shoal_registry::cluster::{Amounts, Cluster, Members, NodeInfo, NodeReport, ServiceReport};
use shoal_registry_etcd::testing::EtcdCluster;
use shoal_registry_etcd::{EtcdNodes, EtcdStore, Options};
use shoal_registry_redb::RedbStore;

/// The nodes of a cluster under a prefix of their own, with claims lapsing after 2 s.
async fn nodes(dir: &std::path::Path, prefix: &str) -> EtcdNodes {
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let blobs = RedbStore::open(
        &dir.join(format!("blobs-{n}.redb")),
        shoal_registry_redb::Options::default(),
    )
    .await
    .unwrap();
    let options = Options {
        prefix: prefix.to_owned(),
        ..Options::new(EtcdCluster::shared().endpoints(), Arc::new(blobs))
    };
    EtcdStore::connect(options)
        .await
        .unwrap()
        .nodes(Duration::from_secs(2))
}

fn info(name: &str, port: u16) -> NodeInfo {
    NodeInfo {
        version: 1,
        name: name.to_owned(),
        api: format!("127.0.0.1:{port}"),
        gateway: format!("127.0.0.1:{}", port + 1),
        capacity: Amounts {
            memory: 1 << 30,
            cpu_millis: 2000,
        },
        arch: std::env::consts::ARCH.to_owned(),
        joined_at: 1,
    }
}

/// Waits (up to 15 s) until the members satisfy `done`.
async fn until(nodes: &EtcdNodes, what: &str, done: impl Fn(&Members) -> bool) -> Arc<Members> {
    let mut members = nodes.members();
    let waited = tokio::time::timeout(Duration::from_secs(15), members.wait_for(|m| done(m))).await;
    match waited {
        Ok(Ok(members)) => members.clone(),
        _ => panic!(
            "members never reached: {what}; last {:?}",
            *nodes.members().borrow()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_name_is_refused_and_a_dead_node_is_seen_dead() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = "/shoal-members/a/";
    let first = nodes(dir.path(), prefix).await;
    let second = nodes(dir.path(), prefix).await;

    let n1 = first.join(info("n1", 9000), None).await.unwrap();
    assert!(n1.holds());
    let refused = second.join(info("n1", 9100), None).await.err().unwrap();
    match &refused {
        Error::NodeNameTaken { name, api } => {
            assert_eq!((name.as_str(), api.as_str()), ("n1", "127.0.0.1:9000"));
        }
        other => panic!("expected NodeNameTaken, got {other:?}"),
    }
    assert!(
        refused
            .to_string()
            .contains("held by a live node (at 127.0.0.1:9000)")
    );

    let n2 = second.join(info("n2", 9200), None).await.unwrap();
    // One secret for the whole cluster, made by the first to join.
    assert_eq!(n1.secret(), n2.secret());
    assert_eq!(n1.secret().len(), 64);
    let report = NodeReport {
        reserved: Amounts {
            memory: 64 << 20,
            cpu_millis: 100,
        },
        services: [(
            "web".to_owned(),
            ServiceReport {
                replicas: 2,
                in_flight: 1,
                queued: 0,
            },
        )]
        .into(),
    };
    n2.report(report.clone()).await.unwrap();
    let seen = until(&first, "n2 reported", |m| {
        m.nodes
            .get("n2")
            .is_some_and(|n| n.report.as_ref() == Some(&report))
    })
    .await;
    assert!(seen.nodes["n1"].alive && seen.nodes["n2"].alive);
    assert_eq!(seen.nodes["n2"].info, info("n2", 9200));

    // n2 stops renewing (its process died): within its 2 s lease (plus etcd's lease check),
    // it is dead to n1, its report gone, its info kept.
    drop(n2);
    let seen = until(&first, "n2 dead", |m| {
        m.nodes.get("n2").is_some_and(|n| !n.alive)
    })
    .await;
    assert_eq!(seen.nodes["n2"].report, None);
    assert_eq!(seen.nodes["n2"].info.api, "127.0.0.1:9200");

    // Its name is free again; n1 still holds its own through renewals.
    let again = second.join(info("n2", 9300), None).await.unwrap();
    assert!(n1.holds());
    let seen = until(&first, "n2 back", |m| {
        m.nodes.get("n2").is_some_and(|n| n.alive)
    })
    .await;
    assert_eq!(seen.nodes["n2"].info.api, "127.0.0.1:9300");

    // Leaving gives the name up at once, without waiting for the lease.
    again.leave().await;
    assert!(!again.holds());
    until(&first, "n2 left", |m| {
        m.nodes.get("n2").is_some_and(|n| !n.alive)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarting_takes_its_own_claim_over() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = "/shoal-members/b/";
    let before = nodes(dir.path(), prefix).await;
    let claim = before.join(info("n1", 9000), None).await.unwrap();
    let incarnation = claim.incarnation();
    // The process dies and starts again at once, its old lease still live.
    drop(claim);
    drop(before);
    let after = nodes(dir.path(), prefix).await;
    assert!(matches!(
        after.join(info("n1", 9000), None).await.err(),
        Some(Error::NodeNameTaken { .. })
    ));
    let claim = after
        .join(info("n1", 9000), Some(incarnation))
        .await
        .unwrap();
    assert_ne!(claim.incarnation(), incarnation);
    let seen = until(&after, "n1 alive", |m| {
        m.nodes.get("n1").is_some_and(|n| n.alive)
    })
    .await;
    assert_eq!(seen.nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_an_old_leader_cannot_place() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = "/shoal-members/c/";
    let first = nodes(dir.path(), prefix).await;
    let second = nodes(dir.path(), prefix).await;
    let n1 = first.join(info("n1", 9000), None).await.unwrap();
    let n2 = second.join(info("n2", 9100), None).await.unwrap();

    let leading = n1.campaign().await.unwrap();
    let placed = [(
        "web".to_owned(),
        [("n1".to_owned(), 2), ("n2".to_owned(), 1)].into(),
    )]
    .into();
    assert!(first.place(&leading, placed).await.unwrap());
    let mut placements = second.placements();
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        placements.wait_for(|p| p.on("web", "n1") == 2),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(seen.on("web", "n2"), 1);

    // n2 waits in line while n1 leads.
    let waiting = tokio::spawn(async move {
        let leadership = n2.campaign().await.unwrap();
        (n2, leadership)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "two leaders at once");

    // n1 stops renewing (a long pause): its lease lapses, n2 is elected, and n1's
    // leadership no longer writes anything.
    drop(n1);
    let (_n2, taken) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("n2 is elected once n1's lease lapses")
        .unwrap();
    assert!(taken.fence > leading.fence);
    let stale = [("web".to_owned(), [("n1".to_owned(), 5)].into())].into();
    assert!(!first.place(&leading, stale).await.unwrap());
    let removed = [("web".to_owned(), Default::default())].into();
    assert!(second.place(&taken, removed).await.unwrap());
    tokio::time::timeout(
        Duration::from_secs(10),
        placements.wait_for(|p| p.services.is_empty()),
    )
    .await
    .unwrap()
    .unwrap();
}
