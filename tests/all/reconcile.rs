//! The reconcile loop: a change written straight into the store, not through the node's
//! write path, takes effect on the gateway and in the Consul API, as a change made by another
//! node or a tool would.

use std::sync::Arc;

use bytes::Bytes;
use guest_artifacts::*;
use shoal_registry::{Expect, Registration, Store};
use shoal_registry_redb::{Options, RedbStore};
use shoal_spec::{Digest, ModuleKind, ServiceName, ServiceSpec};
use shoal_tests::{TestNode, Upstream};

async fn node_on_a_store() -> (TestNode, Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("shoal.redb"), Options::default())
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let node = TestNode::start_on_store(dir.path(), store.clone()).await;
    (node, store, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_written_into_the_store_is_routed_and_its_deletion_unrouted() {
    let (node, store, _dir) = node_on_a_store().await;
    assert_eq!(node.call("hello", "/").await.status, 404);

    let bytes = Bytes::from(guest_artifacts::bytes(HELLO_HTTP));
    let digest = Digest::of(&bytes);
    store
        .put_module(&digest, ModuleKind::Http, bytes)
        .await
        .unwrap();
    let name: ServiceName = "hello".parse().unwrap();
    let written = store
        .put_service(&name, ServiceSpec::new(digest), Expect::Absent)
        .await
        .unwrap();
    node.applied(written.index).await;
    let reply = node.call("hello", "/").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello from wasm\n")
    );
    let (status, service) = node.get("/v1/services/hello").await;
    assert_eq!(status, 200);
    assert_eq!(service["kind"], "http");
    let (_, catalog) = node.get("/v1/catalog/services").await;
    assert_eq!(catalog["hello"], shoal_tests::json!(["wasm"]));

    let deleted = store.delete_service(&name, Expect::Any).await.unwrap();
    node.applied(deleted.index).await;
    let reply = node.call("hello", "/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.kind.as_deref(), Some("unknown-service"));
    let (_, catalog) = node.get("/v1/catalog/services").await;
    assert!(catalog.get("hello").is_none(), "{catalog}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_written_into_the_store_is_discovered_and_routed() {
    let (node, store, _dir) = node_on_a_store().await;
    let upstream = Upstream::start("web").await;
    // A blocking query waits on the catalog from the node's current index.
    let index = node.get("/v1/catalog/services").await;
    assert_eq!(index.0, 200);
    let start = node.node.indexes().catalog;
    let watcher = {
        let url = format!("{}/v1/catalog/services?index={start}&wait=30s", node.api);
        tokio::spawn(async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    let registration = Registration {
        id: "web-1".into(),
        address: upstream.addr.ip().to_string(),
        port: upstream.addr.port(),
        ..Registration::new("web")
    };
    let written = store
        .register_service(registration, vec![], false)
        .await
        .unwrap();
    // The blocking query is woken by a write it did not make, through the node.
    let seen = watcher.await.unwrap();
    assert!(seen.get("web").is_some(), "{seen}");
    node.applied(written.index).await;
    let reply = node.call("web", "/path").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "web /path /web"));
    let (_, instances) = node.get("/v1/catalog/service/web").await;
    assert_eq!(instances[0]["ServiceID"], "web-1");

    let removed = store.deregister_service("web-1").await.unwrap();
    assert!(removed.value);
    node.applied(removed.index).await;
    assert_eq!(node.call("web", "/").await.status, 404);
    upstream.stop().await;
}
