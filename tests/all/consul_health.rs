//! Checks that shoal runs itself: TTLs that expire, HTTP and TCP probes of a real server on
//! loopback, and deregistration of services that stay critical. Every wait is a blocking query
//! on the health endpoint, so the tests move as soon as the state does.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{TestNode, Upstream, json};

use crate::consul::{read_index, register};

/// Waits, with blocking queries, until the check `check_id` of service `service` has
/// `status`; returns the check.
async fn wait_for_check(node: &TestNode, service: &str, check_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    loop {
        let reply = node
            .send(
                "GET",
                &format!("/v1/health/checks/{service}?index={index}&wait=2s"),
                None,
            )
            .await;
        index = read_index(&reply);
        let checks = reply.json();
        let check = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["CheckID"] == check_id)
            .cloned();
        if let Some(check) = check
            && check["Status"] == status
        {
            return check;
        }
        assert!(
            Instant::now() < deadline,
            "check {check_id} of {service} did not become {status}: {checks}"
        );
    }
}

/// Waits, with blocking queries, until service `name` has no instance left.
async fn wait_for_deregistration(node: &TestNode, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    loop {
        let reply = node
            .send(
                "GET",
                &format!("/v1/catalog/service/{name}?index={index}&wait=2s"),
                None,
            )
            .await;
        index = read_index(&reply);
        if reply.json() == json!([]) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} was not deregistered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_checks_expire_to_critical_and_reports_restart_the_clock() {
    let node = TestNode::start().await;
    register(&node, json!({"name": "worker", "check": {"ttl": "500ms"}})).await;
    wait_for_check(&node, "worker", "service:worker", "critical").await;

    let reply = node
        .send(
            "PUT",
            "/v1/agent/check/pass/service:worker?note=alive",
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    let check = wait_for_check(&node, "worker", "service:worker", "passing").await;
    assert_eq!(check["Output"], "alive");
    let passing = node
        .send("GET", "/v1/health/service/worker?passing", None)
        .await
        .json();
    assert_eq!(passing.as_array().unwrap().len(), 1);

    // No report within the TTL: critical again, and out of `passing`.
    let check = wait_for_check(&node, "worker", "service:worker", "critical").await;
    assert_eq!(check["Output"], "TTL expired");
    let passing = node
        .send("GET", "/v1/health/service/worker?passing", None)
        .await
        .json();
    assert_eq!(passing, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_checks_follow_a_real_server() {
    let node = TestNode::start().await;
    let upstream = Upstream::start("web").await;
    let port = upstream.addr.port();
    let reply = register(
        &node,
        json!({
            "name": "web", "address": "127.0.0.1", "port": port,
            "check": {"http": format!("http://127.0.0.1:{port}/health"), "interval": "100ms", "timeout": "1s"},
        }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let check = wait_for_check(&node, "web", "service:web", "passing").await;
    assert!(
        check["Output"].as_str().unwrap().starts_with(&format!(
            "HTTP GET http://127.0.0.1:{port}/health: 200 OK Output: web /health"
        )),
        "{check}"
    );
    assert_eq!(check["Type"], "http");
    assert_eq!(check["Interval"], "100ms");

    upstream.status.store(429, Ordering::Relaxed);
    wait_for_check(&node, "web", "service:web", "warning").await;
    upstream.status.store(503, Ordering::Relaxed);
    wait_for_check(&node, "web", "service:web", "critical").await;
    upstream.status.store(204, Ordering::Relaxed);
    wait_for_check(&node, "web", "service:web", "passing").await;

    // The server goes away: critical.
    upstream.stop().await;
    let check = wait_for_check(&node, "web", "service:web", "critical").await;
    assert!(
        check["Output"].as_str().unwrap().starts_with("HTTP GET"),
        "{check}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_checks_connect() {
    let node = TestNode::start().await;
    let upstream = Upstream::start("db").await;
    let address = upstream.addr.to_string();
    register(
        &node,
        json!({"name": "db", "port": upstream.addr.port(), "check": {"tcp": address, "interval": "100ms"}}),
    )
    .await;
    let check = wait_for_check(&node, "db", "service:db", "passing").await;
    assert_eq!(check["Output"], format!("TCP connect {address}: Success"));
    upstream.stop().await;
    wait_for_check(&node, "db", "service:db", "critical").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_that_stay_critical_are_deregistered() {
    let node = TestNode::start_with(|config| {
        config.min_deregister_critical_after = Duration::from_millis(100);
    })
    .await;
    let reply = register(
        &node,
        json!({
            "name": "flaky", "port": 1,
            "check": {"ttl": "200ms", "status": "passing", "DeregisterCriticalServiceAfter": "300ms"},
        }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A service that keeps reporting stays, however long that takes.
    for _ in 0..3 {
        assert_eq!(
            node.send("PUT", "/v1/agent/check/pass/service:flaky", None)
                .await
                .status,
            200
        );
        let services = node.send("GET", "/v1/agent/services", None).await.json();
        assert!(services.get("flaky").is_some());
    }
    // Then it stops: critical after the TTL, gone after the critical period.
    wait_for_deregistration(&node, "flaky").await;
    assert_eq!(
        node.send("GET", "/v1/agent/checks", None).await.json(),
        json!({})
    );

    // Below the node's minimum, the minimum holds: Consul's is a minute.
    let node = TestNode::start().await;
    register(
        &node,
        json!({"name": "flaky", "check": {"ttl": "1m", "deregister_critical_service_after": "1ms"}}),
    )
    .await;
    let index = read_index(&node.send("GET", "/v1/catalog/service/flaky", None).await);
    let reply = node
        .send(
            "GET",
            &format!("/v1/catalog/service/flaky?index={index}&wait=500ms"),
            None,
        )
        .await;
    assert_eq!(
        reply.json().as_array().unwrap().len(),
        1,
        "deregistered too early"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_indexes_are_per_service() {
    let node = TestNode::start().await;
    for (name, id) in [("api", "api-1"), ("api", "api-2"), ("other", "other-1")] {
        let reply = register(
            &node,
            json!({"name": name, "id": id, "port": 9, "check": {"ttl": "1h", "status": "passing", "id": format!("{id}-ttl")}}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let index = read_index(&node.send("GET", "/v1/health/service/api", None).await);
    // Changes to another service, made while a blocking read of `api` waits: it answers
    // only when its wait runs out, still at its index.
    let waiting = {
        let url = format!("{}/v1/health/service/api?index={index}&wait=1s", node.api);
        let client = node.client.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    for status in ["warn", "pass", "fail"] {
        let reply = node
            .send(
                "PUT",
                &format!("/v1/agent/check/{status}/other-1-ttl"),
                None,
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let reply = shoal_tests::Reply::from(waiting.await.unwrap()).await;
    assert_eq!(
        read_index(&reply),
        index,
        "another service's changes answered it"
    );
    assert!(read_index(&node.send("GET", "/v1/health/service/other", None).await) > index);

    // A change to one of its instances answers it.
    let waiting = {
        let url = format!("{}/v1/health/service/api?index={index}&wait=30s", node.api);
        let client = node.client.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    let reply = node
        .send("PUT", "/v1/agent/check/fail/api-2-ttl", None)
        .await;
    assert_eq!(reply.status, 200);
    let reply = shoal_tests::Reply::from(waiting.await.unwrap()).await;
    let after_fail = read_index(&reply);
    assert!(after_fail > index);
    assert!(reply.body.contains("critical"), "{}", reply.body);
    // So does an instance going away, though what remains is older.
    let reply = node
        .send("PUT", "/v1/agent/service/deregister/api-2", None)
        .await;
    assert_eq!(reply.status, 200);
    let reply = node
        .send(
            "GET",
            &format!("/v1/health/service/api?index={after_fail}&wait=30s"),
            None,
        )
        .await;
    assert!(read_index(&reply) > after_fail);
    assert_eq!(reply.json().as_array().unwrap().len(), 1);
}
