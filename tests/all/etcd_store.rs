//! A node on the etcd store, against a real three-member etcd cluster on loopback: what a
//! user does through the management and Consul APIs works as on redb, and what another writer
//! (another node's store, sharing the cluster) commits reaches this node through the watch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use guest_artifacts::*;
use shoal_registry::{Expect, Store};
use shoal_registry_etcd::testing::EtcdCluster;
use shoal_registry_etcd::{EtcdStore, Options};
use shoal_registry_redb::RedbStore;
use shoal_spec::{Digest, ServiceName, ServiceSpec};
use shoal_tests::{TestNode, json};

/// A store on the shared cluster under `prefix`, with module bytes in `dir`.
async fn etcd_store(prefix: &str, dir: &std::path::Path) -> EtcdStore {
    let blobs = RedbStore::open(
        &dir.join("shoal.redb"),
        shoal_registry_redb::Options::default(),
    )
    .await
    .unwrap();
    let options = Options {
        prefix: prefix.to_owned(),
        ..Options::new(EtcdCluster::shared().endpoints(), Arc::new(blobs))
    };
    EtcdStore::connect(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_etcd_deploys_routes_and_follows_another_writer() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let prefix = format!(
        "/shoal-test/{}/",
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let store: Arc<dyn Store> = Arc::new(etcd_store(&prefix, dir.path()).await);
    let node = TestNode::start_on_store(dir.path(), store).await;

    // Through the management API, as on redb.
    let service = node.deploy("hello", HELLO_HTTP, json!({})).await;
    let reply = node.call("hello", "/").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello from wasm\n")
    );
    let (status, listed) = node.get("/v1/services").await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // Another writer on the same cluster: a second name for the same module.
    let other = etcd_store(&prefix, other_dir.path()).await;
    let digest: Digest = service["spec"]["module"].as_str().unwrap().parse().unwrap();
    let name: ServiceName = "hello-again".parse().unwrap();
    let written = other
        .put_service(&name, ServiceSpec::new(digest), Expect::Absent)
        .await
        .unwrap();
    node.applied(written.index).await;
    assert_eq!(node.call("hello-again", "/").await.status, 200);

    // A key written by the other writer wakes a blocking read on the node.
    let (_, index) = node.node.kv_get("config/colour").await.unwrap();
    let waiter = {
        let url = format!("{}/v1/kv/config/colour?index={index}&wait=30s", node.api);
        tokio::spawn(async move { reqwest::get(url).await.unwrap() })
    };
    other
        .kv_put("config/colour", Bytes::from_static(b"blue"), 0, None)
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the blocking read wakes")
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: u64 = response.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen > index, "X-Consul-Index {seen} after {index}");
    let entries: serde_json::Value = response.json().await.unwrap();
    assert_eq!(entries[0]["Value"], "Ymx1ZQ==");

    // A registration through the node's Consul API is in the other writer's catalog.
    let registered = node
        .send(
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name": "web", "Port": 9000}"#),
        )
        .await;
    assert_eq!(registered.status, 200);
    let catalog = other.catalog().await.unwrap();
    assert!(
        catalog
            .registrations
            .iter()
            .any(|registration| registration.name == "web"),
        "{catalog:?}"
    );
    other.close().await;
    node.stop().await;
}
