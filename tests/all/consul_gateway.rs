//! The gateway routes to services registered through the Consul API exactly as to wasm
//! services: by path or by Host, to an instance without a critical check, in turn; with no
//! such instance it answers 503 and says why.

use std::collections::BTreeSet;

use shoal_tests::{Reply, TestNode, Upstream, json};

use crate::consul::register;

#[tokio::test(flavor = "multi_thread")]
async fn registered_services_are_routed_by_name_in_turn_skipping_critical_ones() {
    let node = TestNode::start().await;
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let three = Upstream::start("three").await;
    for (id, upstream, status) in [
        ("web-1", &one, "passing"),
        ("web-2", &two, "warning"),
        ("web-3", &three, "critical"),
    ] {
        let reply = register(
            &node,
            json!({
                "name": "web", "id": id, "address": "127.0.0.1", "port": upstream.addr.port(),
                "check": {"ttl": "1m", "status": status},
            }),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    let mut answered = BTreeSet::new();
    for _ in 0..6 {
        let reply = node.call("web", "/a/b?x=1").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // The upstream sees the path after the service name, and the prefix in a header.
        let (who, rest) = reply.body.split_once(' ').unwrap();
        assert_eq!(rest, "/a/b?x=1 /web");
        answered.insert(who.to_owned());
    }
    assert_eq!(
        answered,
        BTreeSet::from(["one".to_owned(), "two".to_owned()])
    );

    // By Host, with the full path.
    let reply = Reply::from(
        node.client
            .get(format!("{}/a/b", node.gateway))
            .header("Host", "web.localhost")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.ends_with(" /a/b "), "{}", reply.body);

    // The upstream's own status passes through, whatever it is.
    one.status.store(418, std::sync::atomic::Ordering::Relaxed);
    two.status.store(418, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(node.call("web", "/").await.status, 418);

    // None left without a critical check: 503, saying why.
    for id in ["web-1", "web-2"] {
        let reply = node
            .send("PUT", &format!("/v1/agent/check/fail/service:{id}"), None)
            .await;
        assert_eq!(reply.status, 200);
    }
    let reply = node.call("web", "/").await;
    assert_eq!(
        (reply.status, reply.kind.as_deref()),
        (503, Some("no-healthy-instance"))
    );
    assert!(reply.error().contains("3 registered"), "{}", reply.error());

    // Back to passing: routed again.
    node.send("PUT", "/v1/agent/check/pass/service:web-3", None)
        .await;
    let reply = node.call("web", "/").await;
    assert_eq!(
        (reply.status, reply.body.split(' ').next()),
        (200, Some("three"))
    );

    // An instance that is gone is a 502 naming it; deregistered, the name is unknown.
    three.stop().await;
    let reply = node.call("web", "/").await;
    assert_eq!(
        (reply.status, reply.kind.as_deref()),
        (502, Some("upstream-unreachable"))
    );
    assert!(reply.error().contains("web-3"), "{}", reply.error());
    for id in ["web-1", "web-2", "web-3"] {
        node.send("PUT", &format!("/v1/agent/service/deregister/{id}"), None)
            .await;
    }
    assert_eq!(node.call("web", "/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_and_methods_pass_through() {
    let node = TestNode::start().await;
    let echo = Upstream::start("echo").await;
    register(
        &node,
        json!({"name": "echo", "address": "127.0.0.1", "port": echo.addr.port()}),
    )
    .await;
    let reply = Reply::from(
        node.client
            .post(format!("{}/echo/submit", node.gateway))
            .body("payload")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "echo /submit /echo");
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_route_again_after_a_restart() {
    let mut node = TestNode::start().await;
    let upstream = Upstream::start("kept").await;
    register(
        &node,
        json!({"name": "kept", "address": "127.0.0.1", "port": upstream.addr.port()}),
    )
    .await;
    assert_eq!(node.call("kept", "/").await.status, 200);
    let temp = node.take_temp_dir();
    node.stop().await;
    let node = TestNode::start_in(temp.path(), |_| {}).await;
    let reply = node.call("kept", "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "kept / /kept"));
}
