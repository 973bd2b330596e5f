//! The management API: modules, services, revisions, the one-request deploy, the
//! node's numbers, and the token rule.

use guest_artifacts::*;
use serde_json::Value;
use shoal_tests::{Reply, TestNode, json};

#[tokio::test(flavor = "multi_thread")]
async fn upload_is_idempotent_by_digest() {
    let node = TestNode::start().await;
    let first = node.upload(guest_artifacts::bytes(HELLO_HTTP)).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert!(first["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(first["kind"], "http");
    assert_eq!(first["size"], guest_artifacts::bytes(HELLO_HTTP).len());
    let second = node.upload(guest_artifacts::bytes(HELLO_HTTP)).await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second, first);
    let (_, modules) = node.get("/v1/modules").await;
    assert_eq!(modules.as_array().unwrap().len(), 1);
    let (status, module) = node
        .get(&format!(
            "/v1/modules/{}",
            first["digest"].as_str().unwrap()
        ))
        .await;
    assert_eq!((status, module), (200, first));
}

#[tokio::test(flavor = "multi_thread")]
async fn module_in_use_cannot_be_deleted() {
    let node = TestNode::start().await;
    let service = node.deploy("hello", HELLO_HTTP, json!({})).await;
    let digest = service["spec"]["module"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/modules/{digest}", node.api);
    let reply = Reply::from(node.client.delete(&url).send().await.unwrap()).await;
    assert_eq!(reply.status, 409);
    assert!(reply.error().contains("hello"), "{}", reply.error());
    // Once the service is gone, the module can go too.
    let reply = Reply::from(
        node.client
            .delete(format!("{}/v1/services/hello", node.api))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(node.call("hello", "/").await.status, 404);
    let reply = Reply::from(node.client.delete(&url).send().await.unwrap()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(node.get(&format!("/v1/modules/{digest}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn services_have_revisions_and_updates_take_effect() {
    let node = TestNode::start().await;
    let created = node.deploy("svc", HELLO_HTTP, json!({})).await;
    assert_eq!(created["revision"], 1);
    // Defaults are filled in and shown.
    assert_eq!(
        created["spec"]["limits"],
        json!({
            "memory": "64Mi", "fuel": 5_000_000_000_u64, "timeout": "10s",
            "max_request_body": "10Mi", "max_response": "16Mi", "max_stderr": "64Ki"
        })
    );
    assert_eq!(node.call("svc", "/").await.body, "hello from wasm\n");
    // Same name, another module: revision 2, and the gateway switches.
    let updated = node
        .deploy("svc", HELLO_CGI, json!({ "memory": "32Mi" }))
        .await;
    assert_eq!(updated["revision"], 2);
    assert_eq!(updated["spec"]["limits"]["memory"], "32Mi");
    assert_eq!(node.call("svc", "/").await.body, "hello from cgi\n");
    let (status, revisions) = node.get("/v1/services/svc/revisions").await;
    assert_eq!(status, 200);
    let revisions = revisions.as_array().unwrap();
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0]["revision"], 1);
    assert_eq!(revisions[1]["spec"]["module"], updated["spec"]["module"]);
    let (_, services) = node.get("/v1/services").await;
    assert_eq!(services.as_array().unwrap().len(), 1);
    let (status, shown) = node.get("/v1/services/svc").await;
    assert_eq!(status, 200);
    assert_eq!(shown["revision"], 2);
    assert_eq!(shown["kind"], "cgi");
    assert_eq!(shown["host"], "svc.localhost");
    assert_eq!(shown["url"], format!("{}/svc/", node.gateway));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_deploy_for_curl() {
    let node = TestNode::start().await;
    let url = format!(
        "{}/v1/deploy/quick?memory=16Mi&timeout=2s&fuel=1000000000&env=A=1&arg=x",
        node.api
    );
    let reply = Reply::from(
        node.client
            .post(&url)
            .body(guest_artifacts::bytes(ENV_CGI))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let service = reply.json();
    assert_eq!(service["spec"]["limits"]["memory"], "16Mi");
    assert_eq!(service["spec"]["limits"]["timeout"], "2s");
    assert_eq!(service["spec"]["env"]["A"], "1");
    let probe = node.call("quick", "/").await.json();
    assert_eq!(probe["env"]["A"], "1");
    assert_eq!(probe["args"], json!(["quick", "x"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_shows_its_numbers() {
    let node = TestNode::start().await;
    node.deploy("a", HELLO_HTTP, json!({})).await;
    let (status, info) = node.get("/v1/node").await;
    assert_eq!(status, 200);
    assert_eq!(info["services"], 1);
    assert_eq!(info["modules"], 1);
    assert_eq!(info["gateway"], node.gateway);
    assert_eq!(info["compile"]["compiled"], 1);
    assert!(["pooling", "on-demand"].contains(&info["allocator"].as_str().unwrap()));
    assert!(info["change_index"].as_u64().unwrap() > 1);
    assert_eq!(info["default_limits"]["memory"], "64Mi");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_required_when_configured() {
    let node = TestNode::start_with(|config| config.token = Some("s3cret".into())).await;
    let url = format!("{}/v1/services", node.api);
    let reply = Reply::from(node.client.get(&url).send().await.unwrap()).await;
    assert_eq!(reply.status, 401);
    assert!(reply.error().contains("token"), "{}", reply.error());
    let reply = Reply::from(
        node.client
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = Reply::from(
        node.client
            .get(&url)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_loopback_api_needs_a_token() {
    let temp = tempfile::tempdir().unwrap();
    let node = shoal::open_node(shoal::NodeConfig::new(temp.path()))
        .await
        .unwrap();
    let api = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = shoal::serve(node, api, gateway, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("without a token"), "{error}");
    assert!(shoal::check_exposure("0.0.0.0:8500".parse().unwrap(), true).is_ok());
    assert!(shoal::check_exposure("127.0.0.1:8500".parse().unwrap(), false).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_requests_finish() {
    let node = TestNode::start().await;
    node.deploy("sleep", SLEEP_HTTP, json!({})).await;
    let url = format!("{}/sleep/?ms=400", node.gateway);
    let client = node.client.clone();
    let in_flight =
        tokio::spawn(async move { Reply::from(client.get(&url).send().await.unwrap()).await });
    // Wait until the gateway reports the request in flight.
    while node.get("/v1/node").await.1["in_flight"] != 1 {
        tokio::task::yield_now().await;
    }
    let gateway = node.gateway.clone();
    node.stop().await;
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 400 ms"));
    // Nothing accepts new connections any more.
    assert!(reqwest::get(format!("{gateway}/sleep/")).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listed_route_exists() {
    let node = TestNode::start().await;
    for route in shoal::mgmt::ROUTES
        .iter()
        .chain(shoal::consul::ROUTES)
        .chain(shoal::peer::ROUTES)
        .chain(shoal::kube::ROUTES)
    {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace(
                "{digest}",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            )
            .replace("{name}", "nope")
            .replace("{id}", "nope")
            .replace("{key}", "nope")
            .replace("{state}", "any")
            .replace("{namespace}", "default");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = node
            .client
            .request(method, format!("{}{path}", node.api))
            .send()
            .await
            .unwrap();
        // A stream never ends: its status and type are the answer.
        let content_type = response.headers().get("content-type");
        if content_type.is_some_and(|value| value == "text/event-stream") {
            assert_eq!(response.status(), 200, "{route}");
            continue;
        }
        let reply = Reply::from(response).await;
        assert!(
            !reply.body.contains("no such API route")
                && !reply.body.contains("Invalid URL path")
                && !reply.body.contains("could not find the requested resource"),
            "{route} is not routed"
        );
        assert_ne!(reply.status, 405, "{route} has the wrong method");
    }
    let reply = Reply::from(
        node.client
            .get(format!("{}/v1/nothing", node.api))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains("no such API route"));
}

#[test]
fn routes_are_documented() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for route in shoal::mgmt::ROUTES
        .iter()
        .chain(shoal::consul::ROUTES)
        .chain(shoal::peer::ROUTES)
        .chain(shoal::kube::ROUTES)
    {
        assert!(
            readme.contains(&format!("`{route}`")),
            "README.md does not document `{route}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_releases_the_registry_while_handles_live() {
    let temp = tempfile::tempdir().unwrap();
    let node = shoal::open_node(shoal::NodeConfig::new(temp.path()))
        .await
        .unwrap();
    // A handle still alive after shutdown, as a connection task finishing late holds one.
    let handle = node.clone();
    node.shutdown().await;
    let reopened = shoal::open_node(shoal::NodeConfig::new(temp.path()))
        .await
        .expect("the data directory opens again while the old node has a live handle");
    reopened.shutdown().await;
    drop(handle);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_an_earlier_spec_as_a_new_revision() {
    let node = TestNode::start().await;
    let digest = node.upload(guest_artifacts::bytes(ENV_CGI)).await;
    let digest: Value = digest.json().await.unwrap();
    let spec =
        |greeting: &str| json!({ "module": digest["digest"], "env": { "GREETING": greeting } });
    let greeting = || async {
        let reply = node.call("env", "/").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let shown: Value = serde_json::from_str(&reply.body).unwrap();
        shown["env"]["GREETING"].as_str().unwrap().to_owned()
    };
    let at = &node;
    let rollback = |query: &'static str| async move {
        let url = format!("{}/v1/services/env/rollback{query}", at.api);
        Reply::from(at.client.post(&url).send().await.unwrap()).await
    };

    assert_eq!(node.put_service("env", &spec("first")).await.status(), 201);
    let refused = rollback("").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("one revision"),
        "{}",
        refused.error()
    );
    assert_eq!(node.put_service("env", &spec("second")).await.status(), 200);
    assert_eq!(greeting().await, "second");

    // The previous revision's spec, as revision 3; the history keeps every one.
    let back = rollback("").await;
    assert_eq!(back.status, 200, "{}", back.body);
    let back: Value = serde_json::from_str(&back.body).unwrap();
    assert_eq!(back["revision"], 3);
    assert_eq!(greeting().await, "first");
    let (_, revisions) = node.get("/v1/services/env/revisions").await;
    let revisions = revisions.as_array().unwrap();
    assert_eq!(revisions.len(), 3);
    assert_eq!(revisions[2]["spec"], revisions[0]["spec"]);

    // Any revision by number; a rollback can be rolled back.
    let forth = rollback("?to=2").await;
    assert_eq!(forth.status, 200, "{}", forth.body);
    assert_eq!(greeting().await, "second");

    for (query, status, needle) in [
        ("?to=99", 404, "revision \"env/99\" not found"),
        ("?to=4", 400, "the current revision"),
        ("?to=two", 400, "invalid to \"two\""),
        ("?from=1", 400, "unknown query parameter"),
    ] {
        let refused = rollback(query).await;
        assert_eq!(refused.status, status, "{query}: {}", refused.body);
        assert!(
            refused.error().contains(needle),
            "{query}: {}",
            refused.error()
        );
    }
    let url = format!("{}/v1/services/ghost/rollback", node.api);
    let missing = Reply::from(node.client.post(&url).send().await.unwrap()).await;
    assert_eq!(missing.status, 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_end_when_the_node_stops() {
    // A deadline no test waits out: the node stops only as soon as its streams end.
    let node = TestNode::start_with(|config| {
        config.shutdown_timeout = std::time::Duration::from_secs(600);
    })
    .await;
    node.deploy("echo", ECHO_HTTP, json!({})).await;
    let open = |path: &str| node.client.get(format!("{}{path}", node.api)).send();
    let mut status = open("/ui/stream").await.unwrap();
    assert_eq!(status.status(), 200);
    assert!(status.chunk().await.unwrap().is_some(), "the first status");
    let mut log = open("/v1/services/echo/logs?follow=true").await.unwrap();
    assert_eq!(log.status(), 200);
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(60), node.stop()).await;
    assert!(stopped.is_ok(), "the node waited for its streams");
    // Both answers end, rather than break off.
    while status.chunk().await.unwrap().is_some() {}
    while log.chunk().await.unwrap().is_some() {}
}
