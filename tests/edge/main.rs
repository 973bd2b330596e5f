//! Edge devices: the runtime-only build, precompiled modules, small address spaces, a full
//! disk, and the same suite on another architecture under emulation.
//!
//! `scripts/test` runs this (`cargo test -p shoal-tests --features edge --test edge`) twice:
//! - natively: `SHOAL_BIN` the full x86-64 build, `SHOAL_EDGE_BIN` the runtime-only one
//!   (`cargo build -p shoal --no-default-features`: no compiler, no Cranelift);
//! - for aarch64 under qemu-user: both builds cross-compiled, `SHOAL_RUNNER` the emulator
//!   command they run under, and `SHOAL_COMPILE_BIN` the native full build, which compiles
//!   modules for them with `shoal compile --target`, as a laptop would for a board.
//!
//! Modules:
//! - this file: the runtime-only build serves what a full build compiled into its data
//!   directory, and refuses what it would have to compile;
//! - `precompiled.rs`: `shoal compile --target` on one machine, installed with the token on
//!   a runtime-only node, and every way an install is refused;
//! - `subset.rs`: what a new architecture must pass: upload and compile, both executors,
//!   limits, scaling and a restart;
//! - `small.rs`: an address space too small for pooling, a full disk, a damaged cache.

mod precompiled;
mod small;
mod subset;

use std::path::PathBuf;

use guest_artifacts::*;
use shoal_tests::{ChildNode, Reply, shoal_bin};

fn edge_bin() -> PathBuf {
    std::env::var_os("SHOAL_EDGE_BIN")
        .expect(
            "SHOAL_EDGE_BIN names the edge build: cargo build -p shoal --no-default-features \
             (scripts/test does)",
        )
        .into()
}

/// The full build that runs `shoal compile` here: the native one.
fn compile_bin() -> PathBuf {
    std::env::var_os("SHOAL_COMPILE_BIN").map_or_else(shoal_bin, PathBuf::from)
}

async fn get(url: String) -> Reply {
    Reply::from(reqwest::get(url).await.unwrap()).await
}

async fn post(url: String, body: Vec<u8>) -> Reply {
    let client = reqwest::Client::new();
    Reply::from(client.post(url).body(body).send().await.unwrap()).await
}

#[test]
fn the_edge_binary_has_no_compiler_in_it() {
    let symbol = b"cranelift_codegen";
    let contains = |bytes: &[u8]| bytes.windows(symbol.len()).any(|w| w == symbol);
    let full = std::fs::read(shoal_bin()).unwrap();
    assert!(
        contains(&full),
        "the full build has Cranelift: the check can tell"
    );
    let edge = std::fs::read(edge_bin()).unwrap();
    assert!(!contains(&edge), "the edge build has Cranelift code in it");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_node_serves_what_a_full_node_compiled() {
    let dir = tempfile::tempdir().unwrap();
    let full = ChildNode::start(dir.path()).await;
    for (name, guest) in [("hello", HELLO_HTTP), ("echo", ECHO_CGI)] {
        let reply = post(
            format!("{}/v1/deploy/{name}", full.api),
            guest_artifacts::bytes(guest),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let hello = get(format!("{}/hello/", full.gateway)).await;
    assert_eq!(hello.status, 200);
    full.kill9().await;

    let edge = ChildNode::start_bin(&edge_bin(), dir.path()).await;
    let info = get(format!("{}/v1/node", edge.api)).await.json();
    assert_eq!(info["compile"]["compiled"], 0, "{info}");
    assert_eq!(info["compile"]["cache_hits"], 2, "{info}");
    assert_eq!(info["services"], 2);
    let again = get(format!("{}/hello/", edge.gateway)).await;
    assert_eq!((again.status, &again.body), (200, &hello.body));
    let echo = get(format!("{}/echo/p?q=1", edge.gateway)).await;
    assert_eq!(echo.status, 200, "{}", echo.body);

    // A module whose machine code is cached deploys under another name.
    let reply = post(
        format!("{}/v1/deploy/hello-two", edge.api),
        guest_artifacts::bytes(HELLO_HTTP),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        get(format!("{}/hello-two/", edge.gateway)).await.status,
        200
    );

    // One it would have to compile is refused, with a message that says what to do, and
    // nothing is stored.
    let modules_before = get(format!("{}/v1/modules", edge.api)).await.json();
    let reply = post(
        format!("{}/v1/modules", edge.api),
        guest_artifacts::bytes(COUNTER_HTTP),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.kind.as_deref(), Some("no-compiler"));
    assert!(
        reply
            .error()
            .contains("this build of shoal has no compiler"),
        "{}",
        reply.error()
    );
    assert_eq!(
        get(format!("{}/v1/modules", edge.api)).await.json(),
        modules_before
    );
    edge.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_node_starts_on_an_empty_data_directory() {
    // Nothing to measure first: cpu limits are enforced in CPU time, not in calibrated fuel.
    let dir = tempfile::tempdir().unwrap();
    let edge = ChildNode::start_bin(&edge_bin(), dir.path()).await;
    let info = get(format!("{}/v1/node", edge.api)).await.json();
    assert_eq!(info["services"], 0, "{info}");
    assert!(info["cpu"]["slots"].as_u64().unwrap() >= 1, "{info}");
    edge.kill9().await;
}
