//! Tiered compilation: a new module answers on Winch's code, then on Cranelift's once the
//! background compiler is done, with the same answers and the same limits on both tiers; the
//! switch fails no request; restarts load optimized code, or start on baseline again; a burst
//! of uploads is compiled one module at a time in the background.
//!
//! The tests hold the background compiler (`Runtime::pause_optimizing`) to look at the
//! baseline tier, and await the switch itself (`Compiled::optimized`) rather than poll for it.

use guest_artifacts::*;
use serde_json::Value;
use shoal_tests::{TestNode, json};

async fn tier(node: &TestNode, service: &str) -> String {
    let (status, view) = node.get(&format!("/v1/services/{service}")).await;
    assert_eq!(status, 200, "{view}");
    view["tier"].as_str().unwrap_or_default().to_owned()
}

async fn compile_counts(node: &TestNode) -> Value {
    node.get("/v1/node").await.1["compile"].clone()
}

/// Uploads `bytes` and runs them as `name` with `limits`; returns the module's digest.
async fn deploy_bytes(node: &TestNode, name: &str, bytes: Vec<u8>, spec: Value) -> String {
    let upload = node.upload(bytes).await;
    assert!(
        upload.status().is_success(),
        "{}",
        upload.text().await.unwrap()
    );
    let digest = upload.json::<Value>().await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut spec = spec;
    spec["module"] = json!(digest);
    let response = node.put_service(name, &spec).await;
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    digest
}

/// Holds the background compiler and deploys hello: it stays on baseline code. Its digest.
async fn hello_held_on_baseline(node: &TestNode) -> String {
    node.node.runtime().pause_optimizing(true);
    let bytes = guest_artifacts::bytes(HELLO_HTTP);
    deploy_bytes(node, "hello", bytes, json!({})).await
}

/// The hello component with a custom section naming `n`: a module of its own (another digest)
/// that behaves the same.
fn hello_variant(n: usize) -> Vec<u8> {
    let mut bytes = guest_artifacts::bytes(HELLO_HTTP);
    let name = b"shoal-test";
    let payload = n.to_string();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one-byte LEB128 sizes");
    bytes.extend_from_slice(&[0, size as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// What each guest answers, and how it fails, on whichever tier runs it.
async fn outcomes(node: &TestNode) -> Vec<(u16, Option<String>, String)> {
    let mut seen = Vec::new();
    for (service, path) in [
        ("hello", "/"),
        ("echo", "/a/b?x=1"),
        ("cgi", "/"),
        ("busy", "/?iterations=1000"),
        // Runs out of fuel: 503.
        ("busy", "/"),
        ("alloc", "/?mb=8"),
        // Past the memory limit: 502.
        ("alloc", "/?mb=64"),
        // Past the timeout: 504.
        ("sleep", "/?ms=5000"),
    ] {
        let reply = node.call(service, path).await;
        let body = match reply.kind {
            // The message names the limit; the rest of a fault's body is the same.
            Some(_) => reply.error(),
            None => reply.body.clone(),
        };
        seen.push((reply.status, reply.kind.clone(), body));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_module_answers_on_baseline_code_then_on_optimized_code_alike() {
    let node = TestNode::start().await;
    assert_eq!(compile_counts(&node).await["mode"], "tiered");
    node.node.runtime().pause_optimizing(true);
    let mut digests = Vec::new();
    for (name, guest, limits) in [
        ("hello", HELLO_HTTP, json!({})),
        ("echo", ECHO_HTTP, json!({})),
        ("cgi", HELLO_CGI, json!({})),
        (
            "busy",
            BUSY_HTTP,
            json!({ "fuel": 50_000_000, "timeout": "30s" }),
        ),
        ("alloc", ALLOC_HTTP, json!({ "memory": "32Mi" })),
        ("sleep", SLEEP_HTTP, json!({ "timeout": "300ms" })),
    ] {
        let spec = json!({ "limits": limits });
        digests.push(deploy_bytes(&node, name, guest_artifacts::bytes(guest), spec).await);
        assert_eq!(tier(&node, name).await, "baseline", "{name}");
    }
    let counts = compile_counts(&node).await;
    assert_eq!(counts["baseline"]["compiles"], 6, "{counts}");
    assert_eq!(counts["optimized"]["compiles"], 0, "{counts}");
    assert_eq!(counts["optimizing"], 6, "{counts}");
    assert!(counts["baseline"]["last_ms"].as_f64().unwrap() > 0.0);

    // Every limit is enforced on Winch's code.
    let baseline = outcomes(&node).await;
    let kinds: Vec<_> = baseline
        .iter()
        .map(|(status, kind, _)| (*status, kind.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            (200, None),
            (200, None),
            (200, None),
            (200, None),
            (503, Some("out-of-fuel")),
            (200, None),
            (502, Some("memory-limit")),
            (504, Some("timeout")),
        ],
        "{baseline:?}"
    );
    assert_eq!(baseline[0].2, "hello from wasm\n");
    assert_eq!(baseline[3].2, "done 1000");
    assert!(baseline[4].2.contains("50000000"), "{}", baseline[4].2);

    node.node.runtime().pause_optimizing(false);
    for digest in &digests {
        node.optimized(digest).await;
    }
    for name in ["hello", "echo", "cgi", "busy", "alloc", "sleep"] {
        assert_eq!(tier(&node, name).await, "optimized", "{name}");
    }
    // The same answers and the same faults on Cranelift's code.
    assert_eq!(outcomes(&node).await, baseline);
    let counts = compile_counts(&node).await;
    assert_eq!(counts["optimized"]["compiles"], 6, "{counts}");
    assert_eq!(counts["optimizing"], 0, "{counts}");
    assert_eq!(
        counts["compiled"], 6,
        "a module compiled in both tiers counts once: {counts}"
    );
    let metrics = node.send("GET", "/metrics", None).await.body;
    assert!(
        metrics.contains("shoal_node_tier_compiles_total{node=")
            && metrics.contains("tier=\"baseline\"} 6"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_spread_over_the_switch_all_succeed() {
    let node = TestNode::start().await;
    let digest = hello_held_on_baseline(&node).await;
    // A replica that keeps its instance: the one from before the switch is dropped.
    deploy_bytes(
        &node,
        "kept",
        guest_artifacts::bytes(HELLO_HTTP),
        json!({ "isolation": "reuse", "concurrency": 4 }),
    )
    .await;
    // Requests in flight while the code changes under them.
    deploy_bytes(
        &node,
        "sleep",
        guest_artifacts::bytes(SLEEP_HTTP),
        json!({}),
    )
    .await;

    let (switch, switched) = tokio::sync::watch::channel(false);
    let (first, mut firsts) = tokio::sync::mpsc::channel(4);
    let mut clients = Vec::new();
    for (service, path, expected) in [
        ("hello", "/", Some("hello from wasm\n")),
        ("kept", "/", Some("hello from wasm\n")),
        ("kept", "/", Some("hello from wasm\n")),
        ("sleep", "/?ms=20", None),
    ] {
        let client = reqwest::Client::new();
        let url = format!("{}/{service}{path}", node.gateway);
        let switched = switched.clone();
        let first = first.clone();
        clients.push(tokio::spawn(async move {
            // Requests until the switch, then 20 more.
            let (mut before, mut after) = (0_u32, 0_u32);
            while after < 20 {
                let response = client.get(&url).send().await.expect("a response");
                let status = response.status().as_u16();
                let body = response.text().await.unwrap();
                assert_eq!(status, 200, "{url}: {body}");
                if let Some(expected) = expected {
                    assert_eq!(body, expected, "{url}");
                }
                if *switched.borrow() {
                    after += 1;
                } else {
                    before += 1;
                    if before == 1 {
                        first.send(()).await.unwrap();
                    }
                }
            }
            before
        }));
    }
    // Every client has been answered on baseline code before the switch.
    for _ in 0..4 {
        firsts.recv().await.unwrap();
    }
    assert_eq!(tier(&node, "hello").await, "baseline");
    assert_eq!(tier(&node, "sleep").await, "baseline");
    let sleep_digest = node.get("/v1/services/sleep").await.1["spec"]["module"]
        .as_str()
        .unwrap()
        .to_owned();
    node.node.runtime().pause_optimizing(false);
    node.optimized(&digest).await;
    node.optimized(&sleep_digest).await;
    switch.send(true).unwrap();
    assert_eq!(tier(&node, "kept").await, "optimized");
    assert_eq!(tier(&node, "sleep").await, "optimized");
    for client in clients {
        assert!(client.await.unwrap() > 0, "answered on baseline code");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_load_optimized_code_or_start_on_baseline_again() {
    let mut node = TestNode::start().await;
    let dir = node.take_temp_dir();
    let digest = hello_held_on_baseline(&node).await;
    assert_eq!(tier(&node, "hello").await, "baseline");
    node.stop().await;
    let cached = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("cache"))
            .unwrap()
            .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
            .filter(|name| name.ends_with(".cwasm"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cached(dir.path()),
        Vec::<String>::new(),
        "only optimized code is cached"
    );

    // Stopped before the background compile: baseline again, then optimized.
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    assert_eq!(tier(&node, "hello").await, "baseline");
    node.optimized(&digest).await;
    assert_eq!(tier(&node, "hello").await, "optimized");
    assert_eq!(node.call("hello", "/").await.body, "hello from wasm\n");
    let files = cached(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    // The key holds the tier and the engine's compatibility hash.
    assert!(
        files[0].starts_with(&digest.replace(':', "-")) && files[0].contains(".optimized."),
        "{files:?}"
    );
    node.stop().await;

    // Stopped after it: optimized code from the cache, nothing compiled.
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    assert_eq!(tier(&node, "hello").await, "optimized");
    let counts = compile_counts(&node).await;
    assert_eq!(counts["compiled"], 0, "{counts}");
    assert_eq!(counts["cache_hits"], 1, "{counts}");
    assert_eq!(counts["baseline"]["compiles"], 0, "{counts}");
    assert_eq!(counts["optimized"]["compiles"], 0, "{counts}");
    assert_eq!(node.call("hello", "/").await.body, "hello from wasm\n");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_uploads_all_serve_and_all_reach_the_optimized_tier() {
    const UPLOADS: usize = 12;
    let node = TestNode::start().await;
    let uploads = (0..UPLOADS).map(|n| {
        let node = &node;
        async move {
            let name = format!("burst-{n}");
            let digest = deploy_bytes(node, &name, hello_variant(n), json!({})).await;
            assert_eq!(node.call(&name, "/").await.body, "hello from wasm\n");
            digest
        }
    });
    let digests = futures::future::join_all(uploads).await;
    let counts = compile_counts(&node).await;
    // Each module is queued once (one upload stores it, the reconcile loop runs it), and they
    // are compiled one at a time: the others wait as a digest and a handle, without their bytes.
    assert!(
        counts["optimizing"].as_u64().unwrap() <= UPLOADS as u64,
        "{counts}"
    );
    for digest in &digests {
        node.optimized(digest).await;
    }
    for n in 0..UPLOADS {
        assert_eq!(tier(&node, &format!("burst-{n}")).await, "optimized");
    }
    let counts = compile_counts(&node).await;
    assert_eq!(counts["baseline"]["compiles"], UPLOADS, "{counts}");
    assert_eq!(
        counts["optimized"]["compiles"], UPLOADS,
        "each module once: {counts}"
    );
    assert_eq!(counts["optimizing"], 0, "{counts}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_set_to_optimized_compiles_with_cranelift_before_answering() {
    let node = TestNode::start_with(|config| config.runtime.tiering = false).await;
    let counts = compile_counts(&node).await;
    assert_eq!(counts["mode"], "optimized");
    assert!(
        counts["mode_reason"]
            .as_str()
            .unwrap()
            .contains("--compile optimized")
    );
    node.deploy("hello", HELLO_HTTP, json!({})).await;
    assert_eq!(tier(&node, "hello").await, "optimized");
    assert_eq!(node.call("hello", "/").await.body, "hello from wasm\n");
    let counts = compile_counts(&node).await;
    assert_eq!(counts["baseline"]["compiles"], 0, "{counts}");
    assert_eq!(counts["optimized"]["compiles"], 1, "{counts}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_neither_tier_compiles_is_refused_with_the_reason() {
    let node = TestNode::start().await;
    // A component header and then a section that is not one.
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(&[0x7f, 0x03, 1, 2, 3]);
    let reply = shoal_tests::Reply::from(node.upload(bytes).await).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.error().contains("invalid WebAssembly component"),
        "{}",
        reply.body
    );
    assert_eq!(node.get("/v1/modules").await.1, json!([]));
    let counts = compile_counts(&node).await;
    assert_eq!(counts["compiled"], 0, "{counts}");
}
