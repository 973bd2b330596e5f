//! Bad input: each refused with its status and a message naming the problem, and
//! nothing stored afterwards.

use guest_artifacts::*;
use serde_json::Value;
use shoal_tests::{Reply, TestNode, json};

/// Asserts the registry holds nothing and has not changed since `change_index`.
async fn assert_nothing_stored(node: &TestNode, change_index: &Value) {
    assert_eq!(node.get("/v1/modules").await.1, json!([]));
    assert_eq!(node.get("/v1/services").await.1, json!([]));
    assert_eq!(&node.get("/v1/node").await.1["change_index"], change_index);
}

async fn upload(node: &TestNode, bytes: Vec<u8>) -> Reply {
    Reply::from(node.upload(bytes).await).await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_modules_are_refused() {
    let node = TestNode::start_with(|config| config.max_module_size = 4 << 20).await;
    let index = node.get("/v1/node").await.1["change_index"].clone();
    let hello = guest_artifacts::bytes(HELLO_HTTP);
    let core_without_start =
        wat::parse_str(r#"(module (func (export "main")) (memory (export "memory") 1))"#).unwrap();
    let shared_memory =
        wat::parse_str(r#"(module (func (export "_start")) (memory 1 1 shared))"#).unwrap();
    let big = {
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        bytes.resize(5 << 20, 0);
        bytes
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty body", Vec::new(), 400, "the module is empty"),
        (
            "random bytes",
            b"this is not wasm at all".to_vec(),
            400,
            "not a WebAssembly binary",
        ),
        (
            "truncated",
            hello[..hello.len() / 2].to_vec(),
            400,
            "invalid WebAssembly component",
        ),
        (
            "core module without _start",
            core_without_start,
            400,
            "does not export a `_start` function (exports: main, memory)",
        ),
        (
            // shoal's wasmtime is built without the threads proposal (no WASI 0.2 guest
            // uses it), so a shared memory is refused at upload, whatever the allocator.
            "core module with a shared memory",
            shared_memory,
            400,
            "threads must be enabled for shared memories",
        ),
        (
            "component without the HTTP export",
            guest_artifacts::bytes(HELLO_CGI_P2),
            400,
            "does not export wasi:http/incoming-handler",
        ),
        (
            "over the limit",
            big,
            413,
            "exceeds the upload limit of 4194304 bytes",
        ),
    ];
    for (case, bytes, status, message) in cases {
        let reply = upload(&node, bytes).await;
        assert_eq!(reply.status, status, "{case}: {}", reply.body);
        assert!(reply.error().contains(message), "{case}: {}", reply.error());
    }
    assert_nothing_stored(&node, &index).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_service_specs_are_refused() {
    let node = TestNode::start().await;
    let index = node.get("/v1/node").await.1["change_index"].clone();
    let unknown = format!("sha256:{}", "0".repeat(64));
    let put = |name: String, body: String| {
        let client = node.client.clone();
        let url = format!("{}/v1/services/{name}", node.api);
        async move { Reply::from(client.put(url).body(body).send().await.unwrap()).await }
    };
    let spec = |limits: Value| json!({ "module": unknown, "limits": limits }).to_string();
    let cases = vec![
        (
            "..%2Fx",
            spec(json!({})),
            "invalid name: must be lowercase letters, digits and '-': found '.'",
        ),
        (
            "Upper",
            spec(json!({})),
            "invalid name: must be lowercase letters, digits and '-': found 'U'",
        ),
        (
            &*"a".repeat(64),
            spec(json!({})),
            "invalid name: must be at most 63 characters, got 64",
        ),
        ("", spec(json!({})), "invalid name: must not be empty"),
        (
            "ok",
            spec(json!({})),
            &*format!("module {unknown} not found: upload it first"),
        ),
        (
            "ok",
            json!({ "module": "sha256:nothex" }).to_string(),
            "invalid module",
        ),
        (
            "ok",
            spec(json!({ "memory": "64Q" })),
            "invalid limits.memory",
        ),
        (
            "ok",
            spec(json!({ "memory": "-1Mi" })),
            "must not be negative",
        ),
        (
            "ok",
            spec(json!({ "timeout": "soon" })),
            "invalid limits.timeout",
        ),
        (
            "ok",
            spec(json!({ "memry": "1Mi" })),
            "unknown field `memry`",
        ),
        ("ok", "{\"module\": ".to_owned(), "malformed JSON"),
        ("ok", "{not json}".to_owned(), "malformed JSON"),
        ("ok", String::new(), "the body is empty"),
    ]
    .into_iter()
    .map(|(name, body, message)| (name.to_owned(), body, message.to_owned()))
    .collect::<Vec<_>>();
    for (name, body, message) in cases {
        let reply = put(name.clone(), body.clone()).await;
        assert_eq!(reply.status, 400, "{name} {body}: {}", reply.body);
        assert_eq!(reply.kind.as_deref(), Some("invalid"), "{name} {body}");
        assert!(
            reply.error().contains(&message),
            "{name} {body}: {}",
            reply.error()
        );
    }
    // The -1Mi message names the field too.
    assert!(
        put("ok".into(), spec(json!({ "memory": "-1Mi" })))
            .await
            .error()
            .contains("limits.memory")
    );
    // A bad quantity is named once, with the field's path, through either route.
    assert_eq!(
        put("ok".into(), spec(json!({ "memory": "64Q" })))
            .await
            .error(),
        r#"invalid limits.memory "64Q": unknown suffix "Q""#
    );
    assert_nothing_stored(&node, &index).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_one_request_deploys_store_nothing() {
    let node = TestNode::start().await;
    let index = node.get("/v1/node").await.1["change_index"].clone();
    let deploy = |query: &str, bytes: Vec<u8>| {
        let request = node
            .client
            .post(format!("{}/v1/deploy/{query}", node.api))
            .body(bytes);
        async move { Reply::from(request.send().await.unwrap()).await }
    };
    let hello = guest_artifacts::bytes(HELLO_HTTP);
    for (query, bytes, message) in [
        ("x?memory=64Q", hello.clone(), "invalid limits.memory"),
        (
            "x?memory=0",
            hello.clone(),
            "invalid limits.memory: must be greater than zero",
        ),
        ("x?fuel=lots", hello.clone(), "invalid limits.fuel"),
        (
            "x?colour=red",
            hello.clone(),
            "unknown query parameter \"colour\"",
        ),
        ("x?env=novalue", hello.clone(), "invalid env"),
        ("Bad", hello.clone(), "invalid name"),
        ("x", b"garbage".to_vec(), "not a WebAssembly binary"),
    ] {
        let reply = deploy(query, bytes).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(
            reply.error().contains(message),
            "{query}: {}",
            reply.error()
        );
    }
    assert_eq!(
        deploy("x?memory=64Q", hello.clone()).await.error(),
        r#"invalid limits.memory "64Q": unknown suffix "Q""#
    );
    assert_nothing_stored(&node, &index).await;
}
