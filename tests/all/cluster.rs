//! shoal nodes as a cluster: real `shoal up --etcd` processes on loopback, sharing a real
//! three-member etcd cluster (each test under its own key prefix).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_registry_etcd::testing::EtcdCluster;
use shoal_tests::{ChildNode, shoal_bin};

/// The flags that make `shoal up` a member of the cluster under `prefix`, named `name`.
fn cluster_flags(prefix: &str, name: &str) -> Vec<String> {
    [
        "--etcd",
        &EtcdCluster::shared().endpoints().join(","),
        "--etcd-prefix",
        prefix,
        "--node-name",
        name,
        // etcd's shortest lease: a dead node is seen dead within seconds.
        "--node-ttl",
        "2s",
        "--capacity-cpu",
        "1",
        "--capacity-memory",
        "256Mi",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A key prefix no other test uses.
fn prefix_for(dir: &Path) -> String {
    format!(
        "/shoal-cluster/{}/",
        dir.file_name().unwrap().to_string_lossy()
    )
}

async fn nodes_seen_by(node: &ChildNode) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{}/v1/nodes", node.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body.as_array().unwrap().clone()
}

/// Waits (up to 20 s) until `node`'s view of the nodes satisfies `done`.
async fn until_nodes(node: &ChildNode, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = nodes_seen_by(node).await;
        if done(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never happened; GET /v1/nodes on {} says {nodes:#?}",
            node.api
        );
        // Polled: the state is another process's, with no event to wait on from here.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn by_name<'a>(nodes: &'a [Value], name: &str) -> Option<&'a Value> {
    nodes.iter().find(|node| node["name"] == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_join_see_each_other_refuse_a_live_name_and_see_a_dead_node() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let prefix = prefix_for(dirs[0].path());
    let bin = shoal_bin();
    let n1 = ChildNode::start_with(&bin, dirs[0].path(), &cluster_flags(&prefix, "n1")).await;
    let n2 = ChildNode::start_with(&bin, dirs[1].path(), &cluster_flags(&prefix, "n2")).await;

    // Each sees both, itself first and marked, with the addresses the other advertised.
    let seen = until_nodes(&n2, "n2 sees n1 and n2 alive", |nodes| {
        nodes.len() == 2 && nodes.iter().all(|node| node["alive"] == true)
    })
    .await;
    assert_eq!(
        (&seen[0]["name"], &seen[0]["local"]),
        (&Value::from("n2"), &Value::from(true))
    );
    let n1_seen = by_name(&seen, "n1").unwrap();
    assert_eq!(n1_seen["local"], false);
    assert_eq!(
        format!("http://{}", n1_seen["api"].as_str().unwrap()),
        n1.api
    );
    assert_eq!(
        format!("http://{}", n1_seen["gateway"].as_str().unwrap()),
        n1.gateway
    );
    assert_eq!(n1_seen["capacity"]["cpu"], "1");
    assert_eq!(n1_seen["capacity"]["memory"], "256Mi");
    assert_eq!(n1_seen["resource_allocation"]["cpu"], 0.0);

    // A third node with a live node's name is refused at start, with the holder's address.
    let output = tokio::process::Command::new(&bin)
        .args([
            "up",
            "--api-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dirs[2].path())
        .args(cluster_flags(&prefix, "n1"))
        .env_remove("SHOAL_TOKEN")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("a refused node exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let holder = n1.api.trim_start_matches("http://");
    assert!(
        stderr.contains(&format!(
            "node name \"n1\" is held by a live node (at {holder})"
        )),
        "{stderr}"
    );

    // Replicas and reservations reach the others: a service with a replica always running
    // shows the same replicas and reservation for n1 on both nodes.
    let module = reqwest::Client::new()
        .post(format!("{}/v1/modules", n1.api))
        .body(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .send()
        .await
        .unwrap();
    assert_eq!(module.status(), 201);
    let digest = module.json::<Value>().await.unwrap()["digest"].clone();
    let spec = serde_json::json!({
        "module": digest,
        "scale": {"min": 1, "max": 1},
        "resources": {"requests": {"cpu": "250m", "memory": "32Mi"}},
    });
    let deployed = reqwest::Client::new()
        .put(format!("{}/v1/services/hello", n1.api))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    let own = until_nodes(&n1, "n1 runs a replica", |nodes| nodes[0]["replicas"] == 1).await;
    assert_eq!(own[0]["services"]["hello"], 1);
    assert_eq!(own[0]["reserved"]["cpu"], "250m");
    let seen = until_nodes(&n2, "n2 sees n1's replica", |nodes| {
        by_name(nodes, "n1").is_some_and(|n1| n1["replicas"] == 1)
    })
    .await;
    let n1_seen = by_name(&seen, "n1").unwrap();
    assert_eq!(n1_seen["reserved"], own[0]["reserved"]);
    assert_eq!(n1_seen["resource_allocation"]["cpu"], 0.25);

    // `shoal nodes` prints the same, for people.
    let listed = tokio::process::Command::new(&bin)
        .args(["--api", &n1.api, "nodes"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        table.contains("n1 (this)") && table.contains("n2"),
        "{table}"
    );
    assert!(table.contains("250m/1"), "{table}");

    // n2 dies: n1 sees it dead once its lease lapses, and keeps its last address.
    n2.kill9().await;
    let seen = until_nodes(&n1, "n1 sees n2 dead", |nodes| {
        by_name(nodes, "n2").is_some_and(|n2| n2["alive"] == false)
    })
    .await;
    assert_eq!(by_name(&seen, "n2").unwrap()["replicas"], 0);
    assert_eq!(seen[0]["alive"], true);
}

async fn upload(node: &ChildNode, bytes: Vec<u8>) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/modules", node.api))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn put_service(node: &ChildNode, name: &str, spec: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{}/v1/services/{name}", node.api))
        .json(spec)
        .send()
        .await
        .unwrap()
}

/// Calls `service` through `node`'s gateway until it answers 200 (up to 20 s): the service
/// becomes routable there through the store's watch, after its module reached that node.
async fn until_served(node: &ChildNode, service: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = reqwest::get(format!("{}/{service}/", node.gateway))
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        if status == 200 {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} never answered on {}: {status} {body}",
            node.gateway
        );
        // Polled: the change is applied by another process.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_upload_survives_its_node_and_modules_reach_every_node() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let prefix = prefix_for(dirs[0].path());
    let bin = shoal_bin();
    let n1 = ChildNode::start_with(&bin, dirs[0].path(), &cluster_flags(&prefix, "n1")).await;
    let n2 = ChildNode::start_with(&bin, dirs[1].path(), &cluster_flags(&prefix, "n2")).await;
    until_nodes(&n1, "n1 sees n2", |nodes| nodes.len() == 2).await;

    // Peer routes take the cluster's secret, not nothing and not a guess.
    let module = upload(&n1, guest_artifacts::bytes(guest_artifacts::HELLO_HTTP)).await;
    let digest = module["digest"].as_str().unwrap().to_owned();
    let peer_url = format!("{}/v1/peer/modules/{digest}", n2.api);
    let anonymous = reqwest::get(&peer_url).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let guessed = reqwest::Client::new()
        .get(&peer_url)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(guessed.status(), 401);

    // The upload was acknowledged by n1: n1 dies at once, and the module is still
    // deployable and runnable from n2, whose disk has it.
    n1.kill9().await;
    let spec = serde_json::json!({"module": digest, "scale": {"min": 1}});
    let deployed = put_service(&n2, "hello", &spec).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    assert_eq!(until_served(&n2, "hello").await, "hello from wasm\n");

    // A node that joins later runs it too: it fetches the bytes from n2 and checks them.
    let n3 = ChildNode::start_with(&bin, dirs[2].path(), &cluster_flags(&prefix, "n3")).await;
    assert_eq!(until_served(&n3, "hello").await, "hello from wasm\n");
    // A module uploaded to n3 reaches n2.
    let echo = upload(&n3, guest_artifacts::bytes(guest_artifacts::ECHO_HTTP)).await;
    let spec = serde_json::json!({"module": echo["digest"]});
    let deployed = put_service(&n3, "echo", &spec).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    until_served(&n2, "echo").await;
}
