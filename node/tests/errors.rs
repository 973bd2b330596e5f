//! The node's domain API on its own, without HTTP: each refusal is a `node::Error` variant a
//! surface can branch on, with the numbers or the field in it, and nothing is stored.

use std::sync::Arc;

use bytes::Bytes;
use shoal_node::{Conflict, Error, Node, NodeConfig};
use shoal_registry_redb::{Options, RedbStore};
use shoal_runtime::ReplicaResources;
use shoal_spec::{Digest, ServiceName, ServiceSpec};

async fn node(configure: impl FnOnce(&mut NodeConfig)) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path());
    config.runtime.pooling = false;
    configure(&mut config);
    let store = RedbStore::in_memory(Options::default()).unwrap();
    let node = Node::open(config, Arc::new(store)).await.unwrap();
    (node, dir)
}

fn name(text: &str) -> ServiceName {
    text.parse().unwrap()
}

async fn hello(node: &Node) -> Digest {
    let bytes = Bytes::from(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP));
    node.add_module(bytes).await.unwrap().0.digest
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_typed_and_store_nothing() {
    let (node, _dir) = node(|config| {
        config.capacity = Some(ReplicaResources {
            memory: 256 << 20,
            cpu_millis: 1000,
        })
    })
    .await;
    let index = node.indexes().change;

    let missing = Digest::of(b"never uploaded");
    assert!(matches!(
        node.put_service(name("web"), ServiceSpec::new(missing.clone())).await,
        Err(Error::ModuleNotFound(digest)) if digest == missing
    ));

    let module = hello(&node).await;
    let index_after_upload = node.indexes().change;
    assert!(index_after_upload > index);
    let mut too_big = ServiceSpec::new(module.clone());
    too_big.scale.min = 5;
    match node.put_service(name("big"), too_big).await {
        Err(Error::InsufficientCapacity {
            service,
            min,
            shortfall,
        }) => {
            assert_eq!((service.as_str(), min), ("big", 5));
            assert_eq!(shortfall.asked.memory, 5 * (64 << 20));
            assert_eq!(shortfall.free.memory, 256 << 20);
        }
        other => panic!("expected InsufficientCapacity, got {other:?}"),
    }

    let mut bad = ServiceSpec::new(module.clone());
    bad.scale.max = 0;
    match node.put_service(name("bad"), bad).await {
        Err(Error::Invalid(error)) => assert_eq!(error.field, "scale.max"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(matches!(
        node.service_status(&name("nope")),
        Err(Error::NotFound {
            what: "service",
            ..
        })
    ));
    assert_eq!(
        node.indexes().change,
        index_after_upload,
        "nothing was stored"
    );

    let (record, created) = node
        .put_service(name("web"), ServiceSpec::new(module.clone()))
        .await
        .unwrap();
    assert!(created);
    // Answered only once it is in effect here.
    assert_eq!(
        node.service_status(&name("web")).unwrap().revision,
        record.revision
    );
    assert!(matches!(
        node.delete_module(&module).await,
        Err(Error::Conflict(Conflict::ModuleInUse { services, .. })) if services == ["web"]
    ));
    node.delete_service(&name("web")).await.unwrap();
    assert!(node.service_status(&name("web")).is_err());
    node.delete_module(&module).await.unwrap();

    node.shutdown().await;
    assert!(matches!(node.modules().await, Err(Error::ShuttingDown)));
}
