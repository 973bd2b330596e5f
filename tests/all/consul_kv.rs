//! Consul's key/value store and blocking queries: values round-trip as base64 in arrays, the
//! query flags work as the clients use them, and a blocking read returns as soon as what it
//! watches changes, or when its wait runs out, and no sooner.

use std::time::{Duration, Instant};

use base64::Engine as _;
use shoal_tests::{TestNode, json};

use crate::consul::{read_index, register};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_list_and_delete() {
    let node = TestNode::start().await;
    let put = node
        .send("PUT", "/v1/kv/app/config?flags=42", Some("hello"))
        .await;
    assert_eq!((put.status, put.body.as_str()), (200, "true"));
    node.send("PUT", "/v1/kv/app/db/url", Some("postgres://"))
        .await;
    node.send("PUT", "/v1/kv/app/db/user", Some("me")).await;
    node.send("PUT", "/v1/kv/other", Some("")).await;

    let reply = node.send("GET", "/v1/kv/app/config", None).await;
    let index = read_index(&reply);
    let entries = reply.json();
    assert_eq!(entries.as_array().unwrap().len(), 1, "a JSON array, always");
    assert_eq!(entries[0]["Key"], "app/config");
    assert_eq!(entries[0]["Value"], b64("hello"));
    assert_eq!(entries[0]["Flags"], 42);
    assert_eq!(entries[0]["LockIndex"], 0);
    assert_eq!(entries[0]["ModifyIndex"], index);
    assert_eq!(
        node.send("GET", "/v1/kv/other", None).await.json()[0]["Value"],
        json!(null),
        "an empty value is null"
    );

    let raw = node.send("GET", "/v1/kv/app/db/url?raw", None).await;
    assert_eq!((raw.status, raw.body.as_str()), (200, "postgres://"));
    read_index(&raw);

    let recurse = node.send("GET", "/v1/kv/app/?recurse=1", None).await.json();
    let keys: Vec<&str> = recurse
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/config", "app/db/url", "app/db/user"]);
    let listed = node.send("GET", "/v1/kv/app/?keys=True", None).await.json();
    assert_eq!(listed, json!(["app/config", "app/db/url", "app/db/user"]));
    let folded = node
        .send("GET", "/v1/kv/app/?keys&separator=/", None)
        .await
        .json();
    assert_eq!(folded, json!(["app/config", "app/db/"]));
    let all = node.send("GET", "/v1/kv/?keys", None).await.json();
    assert_eq!(all.as_array().unwrap().len(), 4);

    // Missing keys are 404, with the index headers, empty body.
    for path in ["/v1/kv/nope", "/v1/kv/nope/?recurse", "/v1/kv/nope/?keys"] {
        let reply = node.send("GET", path, None).await;
        assert_eq!((reply.status, reply.body.as_str()), (404, ""), "{path}");
        read_index(&reply);
    }

    let deleted = node.send("DELETE", "/v1/kv/app/db/?recurse", None).await;
    assert_eq!((deleted.status, deleted.body.as_str()), (200, "true"));
    let deleted = node.send("DELETE", "/v1/kv/app/config", None).await;
    assert_eq!(deleted.body, "true");
    assert_eq!(
        node.send("GET", "/v1/kv/app/?recurse", None).await.status,
        404
    );
    // Deleting what is not there succeeds.
    assert_eq!(
        node.send("DELETE", "/v1/kv/app/config", None).await.body,
        "true"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_set() {
    let node = TestNode::start().await;
    assert_eq!(
        node.send("PUT", "/v1/kv/lock?cas=0", Some("a")).await.body,
        "true"
    );
    assert_eq!(
        node.send("PUT", "/v1/kv/lock?cas=0", Some("b")).await.body,
        "false"
    );
    let index = node.send("GET", "/v1/kv/lock", None).await.json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let stale = node
        .send("PUT", &format!("/v1/kv/lock?cas={}", index + 7), Some("c"))
        .await;
    assert_eq!((stale.status, stale.body.as_str()), (200, "false"));
    assert_eq!(
        node.send("PUT", &format!("/v1/kv/lock?cas={index}"), Some("d"))
            .await
            .body,
        "true"
    );
    assert_eq!(node.send("GET", "/v1/kv/lock?raw", None).await.body, "d");
    let index = node.send("GET", "/v1/kv/lock", None).await.json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        node.send("DELETE", &format!("/v1/kv/lock?cas={}", index - 1), None)
            .await
            .body,
        "false"
    );
    assert_eq!(
        node.send("DELETE", &format!("/v1/kv/lock?cas={index}"), None)
            .await
            .body,
        "true"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_kv_input() {
    let node = TestNode::start().await;
    let big = "x".repeat(512 * 1024 + 1);
    let reply = node.send("PUT", "/v1/kv/big", Some(&big)).await;
    assert_eq!(reply.status, 413);
    assert!(
        reply
            .body
            .starts_with("Request body(524289 bytes) too large, max size: 524288 bytes"),
        "{}",
        reply.body
    );
    let exactly = "x".repeat(512 * 1024);
    assert_eq!(
        node.send("PUT", "/v1/kv/big", Some(&exactly)).await.body,
        "true"
    );
    assert_eq!(
        node.send("GET", "/v1/kv/big?raw", None).await.body.len(),
        512 * 1024
    );

    for (method, path, status, message) in [
        ("PUT", "/v1/kv/", 400, "Missing key name"),
        ("GET", "/v1/kv/", 400, "Missing key name"),
        ("DELETE", "/v1/kv/", 400, "Missing key name"),
        (
            "PUT",
            "/v1/kv/k?flags=minus",
            400,
            "Invalid value for ?flags",
        ),
        ("PUT", "/v1/kv/k?cas=x", 400, "Invalid value for ?cas"),
        (
            "DELETE",
            "/v1/kv/k?recurse&cas=1",
            400,
            "Conflicting flags: cas and recurse",
        ),
        (
            "PUT",
            "/v1/kv/k?acquire=abc",
            500,
            "invalid session \"abc\"",
        ),
        (
            "GET",
            "/v1/kv/k?index=1&wait=forever",
            400,
            "Invalid wait time",
        ),
        ("GET", "/v1/kv/k?index=one", 400, "Invalid index"),
    ] {
        let reply = node.send(method, path, Some("v")).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert!(
            reply.body.starts_with(message),
            "{method} {path}: {}",
            reply.body
        );
    }
    assert_eq!(node.send("GET", "/v1/kv/k", None).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_read_is_woken_by_a_change_of_what_it_watches() {
    let node = TestNode::start().await;
    node.send("PUT", "/v1/kv/watched", Some("1")).await;
    let index = read_index(&node.send("GET", "/v1/kv/watched", None).await);

    let started = Instant::now();
    let api = node.api.clone();
    let client = node.client.clone();
    let watcher = tokio::spawn(async move {
        let reply = client
            .get(format!("{api}/v1/kv/watched?index={index}&wait=30s"))
            .send()
            .await
            .unwrap();
        let new_index: u64 = reply.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (new_index, reply.json::<serde_json::Value>().await.unwrap())
    });
    // An unrelated change does not answer it: another key, and the catalog.
    node.send("PUT", "/v1/kv/elsewhere", Some("x")).await;
    register(&node, json!({"name": "web"})).await;
    // Let the watcher see those changes, then make the one it waits for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!watcher.is_finished(), "woken by an unrelated change");
    node.send("PUT", "/v1/kv/watched", Some("2")).await;
    let (new_index, entries) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the blocking read did not return after the change")
        .unwrap();
    assert!(new_index > index);
    assert_eq!(entries[0]["Value"], b64("2"));
    assert!(started.elapsed() < Duration::from_secs(10));

    // A catalog read is woken by a registration.
    let index = read_index(&node.send("GET", "/v1/catalog/services", None).await);
    let api = node.api.clone();
    let client = node.client.clone();
    let watcher = tokio::spawn(async move {
        client
            .get(format!("{api}/v1/catalog/services?index={index}&wait=30s"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    register(&node, json!({"name": "api", "tags": ["new"]})).await;
    let services = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the catalog watch did not return")
        .unwrap();
    assert_eq!(services["api"], json!(["new"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_read_without_a_change_returns_after_its_wait() {
    let node = TestNode::start().await;
    node.send("PUT", "/v1/kv/quiet", Some("1")).await;
    let index = read_index(&node.send("GET", "/v1/kv/quiet", None).await);
    for path in [
        format!("/v1/kv/quiet?index={index}&wait=300ms"),
        format!("/v1/kv/missing?index={index}&wait=300ms"),
    ] {
        let started = Instant::now();
        let reply = node.send("GET", &path, None).await;
        let elapsed = started.elapsed();
        // The wait plus at most a sixteenth of jitter; generous above for a loaded machine.
        assert!(
            elapsed >= Duration::from_millis(300),
            "{path} returned after {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "{path} returned after {elapsed:?}"
        );
        assert_eq!(read_index(&reply), index, "{path}");
    }
    // An index the data has already passed answers at once.
    let started = Instant::now();
    let reply = node
        .send(
            "GET",
            &format!("/v1/kv/quiet?index={}&wait=30s", index - 1),
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_only_grows_across_restarts() {
    let mut node = TestNode::start().await;
    node.send("PUT", "/v1/kv/k", Some("v")).await;
    register(
        &node,
        json!({"name": "web", "port": 80, "check": {"ttl": "1m"}}),
    )
    .await;
    let kv_index = read_index(&node.send("GET", "/v1/kv/k", None).await);
    let catalog_index = read_index(&node.send("GET", "/v1/catalog/services", None).await);
    let temp = node.take_temp_dir();
    node.stop().await;

    let node = TestNode::start_in(temp.path(), |_| {}).await;
    assert_eq!(
        read_index(&node.send("GET", "/v1/kv/k", None).await),
        kv_index
    );
    assert_eq!(
        read_index(&node.send("GET", "/v1/catalog/services", None).await),
        catalog_index
    );
    // Registrations survive; the check is back, waiting for its first report.
    let services = node.send("GET", "/v1/agent/services", None).await.json();
    assert_eq!(services["web"]["Port"], 80);
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    assert_eq!(checks["service:web"]["Status"], "critical");
    assert_eq!(
        node.send("PUT", "/v1/agent/check/pass/service:web", None)
            .await
            .status,
        200
    );
    node.send("PUT", "/v1/kv/k", Some("again")).await;
    assert!(read_index(&node.send("GET", "/v1/kv/k", None).await) > kv_index);
}
