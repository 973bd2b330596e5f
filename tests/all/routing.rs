//! The gateway's routing: by path and by Host, unknown names, and many requests at
//! once across several services.

use guest_artifacts::*;
use shoal_tests::{Reply, TestNode, json};

#[tokio::test(flavor = "multi_thread")]
async fn by_path_and_by_host() {
    let node = TestNode::start_with(|config| config.domain = "shoal.test".into()).await;
    node.deploy("echo", ECHO_HTTP, json!({})).await;
    let by_path = node.call("echo", "/x?y=1").await.json();
    assert_eq!(
        (by_path["path"].as_str(), by_path["query"].as_str()),
        (Some("/x"), Some("y=1"))
    );
    for host in ["echo.shoal.test", "echo.shoal.test:8080"] {
        let response = node
            .client
            .get(format!("{}/x/y?z", node.gateway))
            .header("host", host)
            .send()
            .await
            .unwrap();
        let echo = Reply::from(response).await.json();
        assert_eq!(echo["path"], "/x/y", "host {host}");
        let headers = echo["headers"].as_array().unwrap();
        assert!(
            !headers.iter().any(|h| h[0] == "x-forwarded-prefix"),
            "no prefix was consumed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_service_is_404() {
    let node = TestNode::start().await;
    let reply = node.call("nobody", "/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.kind.as_deref(), Some("unknown-service"));
    assert!(reply.error().contains("nobody"), "{}", reply.error());
    let response = node
        .client
        .get(format!("{}/", node.gateway))
        .send()
        .await
        .unwrap();
    let reply = Reply::from(response).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.kind.as_deref(), Some("unknown-service"));
    let response = node
        .client
        .get(format!("{}/", node.gateway))
        .header("host", "ghost.localhost")
        .send()
        .await
        .unwrap();
    assert!(Reply::from(response).await.error().contains("ghost"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_over_three_services() {
    let node = TestNode::start().await;
    node.deploy("hello", HELLO_HTTP, json!({})).await;
    node.deploy("cgi", HELLO_CGI, json!({})).await;
    node.deploy("echo", ECHO_HTTP, json!({})).await;
    let requests = (0..200).map(|i| {
        let client = node.client.clone();
        let gateway = node.gateway.clone();
        async move {
            let (service, path, expected) = match i % 3 {
                0 => ("hello", "/".to_owned(), "hello from wasm\n".to_owned()),
                1 => ("cgi", "/".to_owned(), "hello from cgi\n".to_owned()),
                _ => ("echo", format!("/n/{i}"), format!("/n/{i}")),
            };
            let reply = Reply::from(
                client
                    .get(format!("{gateway}/{service}{path}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
            if service == "echo" {
                assert_eq!(reply.json()["path"], expected, "request {i}");
            } else {
                assert_eq!(reply.body, expected, "request {i}");
            }
        }
    });
    futures::future::join_all(requests).await;
}
