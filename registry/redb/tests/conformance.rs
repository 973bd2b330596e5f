//! The store conformance suite on the redb backend: on a file (durable, so it also runs the
//! tests that reopen the store) and in memory.

use std::sync::Arc;

use futures::future::BoxFuture;
use shoal_registry::Store;
use shoal_registry::conformance::Scratch;
use shoal_registry_redb::{Options, RedbStore};

fn on_a_file(scratch: Scratch) -> BoxFuture<'static, Arc<dyn Store>> {
    Box::pin(async move {
        let options = Options {
            clock: scratch.clock,
            ..Options::default()
        };
        let store = RedbStore::open(&scratch.dir.join("shoal.redb"), options)
            .await
            .expect("opening the store");
        Arc::new(store) as Arc<dyn Store>
    })
}

fn in_memory(scratch: Scratch) -> BoxFuture<'static, Arc<dyn Store>> {
    Box::pin(async move {
        let options = Options {
            clock: scratch.clock,
            ..Options::default()
        };
        Arc::new(RedbStore::in_memory(options).expect("creating the store")) as Arc<dyn Store>
    })
}

mod file {
    shoal_registry::conformance_tests!(durable: super::on_a_file);
}

mod memory {
    shoal_registry::conformance_tests!(volatile: super::in_memory);
}
