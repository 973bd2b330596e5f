//! What a new architecture must pass, against the full build (`SHOAL_BIN`, under the emulator
//! `SHOAL_RUNNER` names when it is cross-compiled): upload and compile (Cranelift's backend
//! for the architecture), both executors, the fuel, memory and time limits, scaling up under
//! load and down to zero, and a SIGKILL and restart that compiles nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

async fn deploy(node: &ChildNode, name: &str, guest: &str, query: &str) {
    let reply = post(
        format!("{}/v1/deploy/{name}?{query}", node.api),
        guest_artifacts::bytes(guest),
    )
    .await;
    assert_eq!(reply.status, 201, "deploying {name}: {}", reply.body);
}

async fn call(node: &ChildNode, path: &str) -> Reply {
    get(format!("{}{path}", node.gateway)).await
}

async fn compile_counts(node: &ChildNode) -> (u64, u64) {
    let info = node.get_json("/v1/node").await;
    let n = |key: &str| info["compile"][key].as_u64().unwrap();
    (n("compiled"), n("cache_hits"))
}

/// Every guest's answers, limits included; the same before and after a restart.
async fn answers(node: &ChildNode) {
    let hello = call(node, "/hello/").await;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (200, "hello from wasm\n")
    );
    let echo = call(node, "/echo/p?q=1").await;
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert_eq!(echo.json()["query"], "q=1", "{}", echo.body);

    let busy = call(node, "/busy/?iterations=1000").await;
    assert_eq!((busy.status, busy.body.as_str()), (200, "done 1000"));
    let endless = call(node, "/busy/").await;
    assert_eq!(endless.status, 503, "{}", endless.body);
    assert_eq!(endless.kind.as_deref(), Some("out-of-fuel"));

    let spin = call(node, "/spin/").await;
    assert_eq!(spin.status, 504, "{}", spin.body);
    assert_eq!(spin.kind.as_deref(), Some("timeout"));

    let small = call(node, "/alloc/?mb=4").await;
    assert_eq!(
        (small.status, small.body.as_str()),
        (200, "allocated 4 MiB")
    );
    let large = call(node, "/alloc/?mb=64").await;
    assert_eq!(large.status, 502, "{}", large.body);
    assert_eq!(large.kind.as_deref(), Some("memory-limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compiles_runs_both_executors_enforces_limits_and_restarts_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(dir.path()).await;
    deploy(&node, "hello", HELLO_HTTP, "").await;
    deploy(&node, "echo", ECHO_CGI, "memory=32Mi").await;
    deploy(&node, "busy", BUSY_HTTP, "fuel=50000000&timeout=60s").await;
    deploy(&node, "spin", BUSY_HTTP, "fuel=1000000000000&timeout=300ms").await;
    deploy(&node, "alloc", ALLOC_HTTP, "memory=32Mi").await;
    assert_eq!(compile_counts(&node).await, (4, 0));
    answers(&node).await;
    node.kill9().await;

    let node = ChildNode::start(dir.path()).await;
    assert_eq!(
        compile_counts(&node).await,
        (0, 4),
        "a restart compiled again"
    );
    answers(&node).await;
    node.kill9().await;
}

/// The service's status each time its replicas change (Consul's blocking health query on
/// it wakes then), until `done` holds or `limit` passes.
async fn wait_for(node: &ChildNode, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    let mut index = 0;
    loop {
        let status = node.get_json("/v1/services/slow/status").await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {status}");
        let health = reqwest::get(format!(
            "{}/v1/health/service/slow?index={index}&wait=2s",
            node.api
        ))
        .await
        .unwrap();
        index = health.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    }
}

fn replicas(status: &Value) -> u64 {
    status["replicas"]["current"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn scales_up_under_load_and_down_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(dir.path()).await;
    let module = node.upload(guest_artifacts::bytes(SLEEP_HTTP)).await;
    let scale = json!({ "min": 0, "max": 4, "stable_window": "1s", "panic_window": "200ms",
                        "scale_down_delay": "500ms", "idle_timeout": "1s" });
    let spec = json!({ "module": module["digest"], "scale": scale });
    assert_eq!(node.put_service("slow", &spec).await.status(), 201);

    let requests: Vec<_> = (0..6)
        .map(|_| tokio::spawn(get(format!("{}/slow/?ms=1500", node.gateway))))
        .collect();
    let status = wait_for(&node, Duration::from_secs(20), |s| replicas(s) >= 2).await;
    assert!(replicas(&status) <= 4, "{status}");
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "slept 1500 ms"));
    }
    wait_for(&node, Duration::from_secs(30), |s| replicas(s) == 0).await;
    // From zero, the next request starts a replica and is answered.
    let reply = get(format!("{}/slow/?ms=1", node.gateway)).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 1 ms"));
    node.kill9().await;
}
