//! The store conformance suite on the etcd backend, against a real three-member etcd cluster
//! on loopback (shared by the tests of this binary, each under its own prefix), with module
//! bytes in a redb file in the test's directory. Durable: reopening finds everything, as a
//! node restarting on the same cluster does.

use std::sync::Arc;

use futures::future::BoxFuture;
use shoal_registry::Store;
use shoal_registry::conformance::Scratch;
use shoal_registry_etcd::testing::EtcdCluster;
use shoal_registry_etcd::{EtcdStore, Options};
use shoal_registry_redb::RedbStore;

fn on_etcd(scratch: Scratch) -> BoxFuture<'static, Arc<dyn Store>> {
    Box::pin(async move {
        let cluster = EtcdCluster::shared();
        let blobs = RedbStore::open(
            &scratch.dir.join("blobs.redb"),
            shoal_registry_redb::Options::default(),
        )
        .await
        .expect("opening the blob store");
        // The directory is unique to the test, and so its prefix.
        let name = scratch
            .dir
            .file_name()
            .expect("a temporary directory has a name")
            .to_string_lossy()
            .into_owned();
        let options = Options {
            prefix: format!("/shoal-test/{name}/"),
            clock: scratch.clock,
            ..Options::new(cluster.endpoints(), Arc::new(blobs))
        };
        let store = EtcdStore::connect(options)
            .await
            .expect("connecting to etcd");
        Arc::new(store) as Arc<dyn Store>
    })
}

shoal_registry::conformance_tests!(durable: on_etcd);
