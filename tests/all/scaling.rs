//! Replicas, capacity and the autoscaler, end to end with short windows: bursts scale
//! up at once and back down after the delay, idle services go to zero and come back
//! on the next request, capacity bounds everything, and queues are bounded. (Reuse
//! isolation is tested with its guest, `counter_http`; cpu limits in `tests/cpu`.)

use std::time::{Duration, Instant};

use guest_artifacts::*;
use serde_json::Value;
use shoal_tests::{Reply, TestNode, json};

/// Polls a service's status until `done` holds, failing after `limit`.
async fn wait_for(
    node: &TestNode,
    service: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = node.get(&format!("/v1/services/{service}/status")).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replicas(status: &Value) -> u64 {
    status["replicas"]["current"].as_u64().unwrap()
}

/// The service's scale events once `done` holds for them. Events are written to the
/// registry after the replica count changes, so a test that saw the count change waits for
/// them with blocking health queries, which every recorded event wakes.
async fn events(node: &TestNode, service: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut index = 0;
    loop {
        let health = node
            .send(
                "GET",
                &format!("/v1/health/service/{service}?index={index}&wait=1s"),
                None,
            )
            .await;
        index = health.headers["x-consul-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (_, events) = node.get(&format!("/v1/services/{service}/events")).await;
        let events = events.as_array().unwrap().clone();
        if done(&events) || Instant::now() > deadline {
            return events;
        }
    }
}

async fn deploy_spec(node: &TestNode, name: &str, guest: &str, extra: Value) -> Reply {
    let digest = node
        .upload(guest_artifacts::bytes(guest))
        .await
        .json::<Value>()
        .await
        .unwrap()["digest"]
        .clone();
    let mut spec = json!({ "module": digest });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    Reply::from(node.put_service(name, &spec).await).await
}

fn get_all(node: &TestNode, path: String, n: usize) -> Vec<tokio::task::JoinHandle<Reply>> {
    (0..n)
        .map(|_| {
            let request = node.client.get(format!("{}{path}", node.gateway));
            tokio::spawn(async move { Reply::from(request.send().await.unwrap()).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_scales_up_at_once_and_back_down_after_the_delay() {
    let node = TestNode::start().await;
    let scale = json!({ "min": 1, "max": 12, "stable_window": "1s", "panic_window": "200ms",
                        "scale_down_delay": "500ms", "idle_timeout": "1s" });
    let reply = deploy_spec(&node, "slow", SLEEP_HTTP, json!({ "scale": scale })).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(replicas(&node.get("/v1/services/slow/status").await.1), 1);

    let started = Instant::now();
    let requests = get_all(&node, "/slow/?ms=1500".into(), 16);
    // min(16, max) replicas, within a couple of seconds; the other four queue.
    let status = wait_for(
        &node,
        "slow",
        Duration::from_secs(2),
        "scaling to 12",
        |s| replicas(s) == 12,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status["replicas"]["max"], 12);
    assert!(
        status["load"]["per_replica"].as_f64().unwrap() >= 0.9,
        "{status}"
    );
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "slept 1500 ms"));
    }
    // When the load stops, replicas fall back to min after the windows and the delay.
    wait_for(
        &node,
        "slow",
        Duration::from_secs(10),
        "scaling back to 1",
        |s| replicas(s) == 1,
    )
    .await;
    let fell =
        |e: &Value| e["to"] == 1 && e["from"].as_u64() > Some(1) && e["reason"] == "load fell";
    let events = events(&node, "slow", |events| events.iter().any(fell)).await;
    assert!(
        events.iter().any(|e| e["to"].as_u64() > Some(1)),
        "{events:?}"
    );
    assert!(events.iter().any(fell), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_services_go_to_zero_and_come_back_cold() {
    let node = TestNode::start().await;
    let scale = json!({ "min": 0, "max": 2, "stable_window": "300ms", "panic_window": "100ms",
                        "scale_down_delay": "100ms", "idle_timeout": "300ms" });
    let reply = deploy_spec(&node, "lazy", HELLO_HTTP, json!({ "scale": scale })).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(replicas(&node.get("/v1/services/lazy/status").await.1), 0);
    for round in 0..2 {
        let reply = node.call("lazy", "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "hello from wasm\n"),
            "round {round}"
        );
        assert_eq!(
            reply
                .headers
                .get("x-shoal-cold-start")
                .map(|v| v.to_str().unwrap()),
            Some("true")
        );
        wait_for(
            &node,
            "lazy",
            Duration::from_secs(5),
            "scaling to zero",
            |s| replicas(s) == 0,
        )
        .await;
    }
    let counts = |events: &[Value]| {
        let cold = events
            .iter()
            .filter(|e| e["reason"] == "cold start" && e["from"] == 0 && e["to"] == 1)
            .count();
        let idle = events
            .iter()
            .filter(|e| e["reason"] == "idle" && e["to"] == 0)
            .count();
        (cold, idle)
    };
    let events = events(&node, "lazy", |events| counts(events) == (2, 2)).await;
    assert_eq!(counts(&events), (2, 2), "{events:?}");
    assert_eq!(
        node.get("/v1/services/lazy/status").await.1["requests"]["cold_starts"],
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_bounds_replicas_and_full_queues_answer_503() {
    let node = TestNode::start_with(|config| {
        config.capacity = Some(capacity(256 << 20, 4000));
    })
    .await;
    let extra = json!({ "limits": { "memory": "64Mi" }, "scale": { "max": 10, "queue_limit": 4, "queue_timeout": "10s" } });
    assert_eq!(
        deploy_spec(&node, "slow", SLEEP_HTTP, extra).await.status,
        201
    );
    // Long enough that all twelve arrive while the first four are still sleeping, even on a
    // loaded machine.
    let requests = get_all(&node, "/slow/?ms=2000".into(), 12);
    let mut ok = 0;
    let mut refused = 0;
    for request in requests {
        let reply = request.await.unwrap();
        match reply.status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert_eq!(reply.kind.as_deref(), Some("overloaded"));
                assert_eq!(reply.headers["retry-after"], "1");
                assert!(reply.error().contains("queue is full"), "{}", reply.error());
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    // Four replicas fit, four requests queue behind them, four are refused.
    assert_eq!((ok, refused), (8, 4));
    let at_capacity = |e: &Value| e["reason"].as_str().unwrap().starts_with("at capacity");
    let events = events(&node, "slow", |events| events.iter().any(at_capacity)).await;
    assert!(
        events.iter().all(|e| e["to"].as_u64().unwrap() <= 4),
        "{events:?}"
    );
    assert!(events.iter().any(at_capacity), "{events:?}");
    let info = node.get("/v1/node").await.1;
    assert_eq!(info["capacity"]["memory"], "256Mi");
    assert!(info["replicas"].as_u64().unwrap() <= 4);

    // Deleting the service gives its replicas' capacity back.
    let deleted = node
        .client
        .delete(format!("{}/v1/services/slow", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(node.get("/v1/node").await.1["reserved"]["memory"], "0");

    // A wait past the queue timeout is refused too, naming the timeout.
    let extra =
        json!({ "limits": { "memory": "16Mi" }, "scale": { "max": 1, "queue_timeout": "200ms" } });
    assert_eq!(
        deploy_spec(&node, "one", SLEEP_HTTP, extra).await.status,
        201
    );
    let requests = get_all(&node, "/one/?ms=1000".into(), 2);
    let mut statuses = Vec::new();
    for request in requests {
        let reply = request.await.unwrap();
        if reply.status == 503 {
            assert!(
                reply.error().contains("queue timeout of 200ms"),
                "{}",
                reply.error()
            );
        }
        statuses.push(reply.status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
}

fn capacity(memory: u64, cpu_millis: u64) -> shoal::ReplicaResources {
    shoal::ReplicaResources { memory, cpu_millis }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_that_do_not_fit_are_refused_and_change_nothing() {
    let node =
        TestNode::start_with(|config| config.capacity = Some(capacity(256 << 20, 1000))).await;
    let index = node.get("/v1/node").await.1["change_index"].clone();
    let reply = deploy_spec(&node, "big", HELLO_HTTP, json!({ "scale": { "min": 5 } })).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(reply.kind.as_deref(), Some("insufficient-capacity"));
    let message = reply.error();
    assert!(
        message.contains("5 minimum replicas needs 320Mi memory"),
        "{message}"
    );
    assert!(message.contains("256Mi memory and 1 cpu"), "{message}");
    assert!(message.contains("leaving 256Mi memory"), "{message}");
    let reply = deploy_spec(
        &node,
        "cpu",
        HELLO_HTTP,
        json!({ "resources": { "requests": { "cpu": "2" } } }),
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.error().contains("needs 64Mi memory and 2 cpu"),
        "{}",
        reply.error()
    );
    assert_eq!(node.get("/v1/services").await.1, json!([]));
    // The upload itself is stored (it was a separate request); no service is.
    assert_eq!(
        node.get("/v1/node").await.1["change_index"].as_u64(),
        index.as_u64().map(|i| i + 1)
    );

    // A service that fills the node can still be updated: its own replicas are credit.
    assert_eq!(
        deploy_spec(&node, "full", HELLO_HTTP, json!({ "scale": { "min": 4 } }))
            .await
            .status,
        201
    );
    let reply = deploy_spec(
        &node,
        "full",
        HELLO_HTTP,
        json!({ "scale": { "min": 4 }, "env": { "V": "2" } }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(node.call("full", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_numbers_the_node_acts_on() {
    let node = TestNode::start_with(|config| config.capacity = Some(capacity(1 << 30, 2000))).await;
    let extra = json!({ "resources": { "requests": { "memory": "128Mi", "cpu": "500m" }, "limits": { "memory": "256Mi", "cpu": "1" } } });
    assert_eq!(
        deploy_spec(&node, "hello", HELLO_HTTP, extra).await.status,
        201
    );
    for _ in 0..5 {
        assert_eq!(node.call("hello", "/").await.status, 200);
    }
    let status = node.get("/v1/services/hello/status").await.1;
    assert_eq!(status["requests"]["total"], 5);
    assert!(status["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(status["latency_ms"]["p99"].as_f64() >= status["latency_ms"]["p50"].as_f64());
    assert_eq!(
        status["resources"]["per_replica"],
        json!({ "memory": "128Mi", "cpu": "500m" })
    );
    assert_eq!(
        status["resource_allocation"]["per_replica"],
        json!({ "memory": 0.125, "cpu": 0.25 })
    );
    assert_eq!(status["replicas"]["current"], 1);
    let info = node.get("/v1/node").await.1;
    assert_eq!(
        info["reserved"],
        json!({ "memory": "128Mi", "cpu": "500m" })
    );
    assert_eq!(info["free"], json!({ "memory": "896Mi", "cpu": "1500m" }));
    assert_eq!(
        info["resource_allocation"],
        json!({ "memory": 0.125, "cpu": 0.25 })
    );
    // The flat memory limit shows the effective one.
    assert_eq!(
        node.get("/v1/services/hello").await.1["spec"]["limits"]["memory"],
        "256Mi"
    );
}
