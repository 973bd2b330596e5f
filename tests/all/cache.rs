//! The compiled-code cache across restarts: reused when sound, recompiled when
//! missing, corrupt or not an artifact at all, never trusted blindly, never a crash.

use guest_artifacts::*;
use sha2::Digest as _;
use shoal_tests::{TestNode, json};

async fn compile_stats(node: &TestNode) -> (u64, u64, u64) {
    let compile = node.get("/v1/node").await.1["compile"].clone();
    let n = |key: &str| compile[key].as_u64().unwrap();
    (n("compiled"), n("cache_hits"), n("cache_rejected"))
}

async fn answers(node: &TestNode) {
    assert_eq!(node.call("http", "/").await.body, "hello from wasm\n");
    assert_eq!(node.call("cgi", "/").await.body, "hello from cgi\n");
}

fn artifacts(node_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(node_dir.join("cache"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_reuse_or_replace_the_cache() {
    let mut node = TestNode::start().await;
    let dir = node.take_temp_dir();
    node.deploy("http", HELLO_HTTP, json!({})).await;
    node.deploy("cgi", HELLO_CGI, json!({})).await;
    assert_eq!(compile_stats(&node).await, (2, 0, 0));
    // Only optimized code is cached: the background compiler writes it.
    node.all_optimized().await;
    node.stop().await;
    assert_eq!(artifacts(dir.path()).len(), 2);

    // A sound cache: nothing is compiled, and the API says where the code came from.
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    assert_eq!(compile_stats(&node).await, (0, 2, 0));
    assert_eq!(node.get("/v1/services/http").await.1["cached"], true);
    answers(&node).await;
    node.stop().await;

    // Corrupt artifacts: one with a flipped byte, one whose checksum matches but whose
    // contents are not a wasmtime artifact. Both are rejected and recompiled.
    let files = artifacts(dir.path());
    let mut flipped = std::fs::read(&files[0]).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    std::fs::write(&files[0], flipped).unwrap();
    let garbage = b"definitely not machine code".to_vec();
    let mut forged = sha2::Sha256::digest(&garbage).to_vec();
    forged.extend_from_slice(&garbage);
    std::fs::write(&files[1], forged).unwrap();
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    assert_eq!(compile_stats(&node).await, (2, 0, 2));
    assert_eq!(node.get("/v1/services/http").await.1["cached"], false);
    answers(&node).await;
    node.stop().await;

    // A missing cache is rebuilt.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    assert_eq!(compile_stats(&node).await, (2, 0, 0));
    answers(&node).await;
    node.all_optimized().await;
    node.stop().await;
    assert_eq!(artifacts(dir.path()).len(), 2);
}
