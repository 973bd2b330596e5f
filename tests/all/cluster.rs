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
    node.get_json("/v1/nodes").await.as_array().unwrap().clone()
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
    let module = n1
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let digest = module["digest"].clone();
    let spec = serde_json::json!({
        "module": digest,
        "scale": {"min": 1, "max": 1},
        "resources": {"requests": {"cpu": "250m", "memory": "32Mi"}},
    });
    let deployed = n1.put_service("hello", &spec).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    // The leader placed the replica on one node; both nodes see the same numbers for it.
    let total = |nodes: &[Value]| {
        nodes
            .iter()
            .map(|n| n["replicas"].as_u64().unwrap())
            .sum::<u64>()
    };
    let from_n1 = until_nodes(&n1, "one replica placed", |nodes| total(nodes) == 1).await;
    let holder = from_n1.iter().find(|n| n["replicas"] == 1).unwrap();
    assert_eq!(holder["services"]["hello"], 1);
    assert_eq!(holder["reserved"]["cpu"], "250m");
    assert_eq!(holder["resource_allocation"]["cpu"], 0.25);
    let name = holder["name"].as_str().unwrap().to_owned();
    let from_n2 = until_nodes(&n2, "n2 sees the same replica", |nodes| {
        by_name(nodes, &name).is_some_and(|n| n["replicas"] == 1) && total(nodes) == 1
    })
    .await;
    assert_eq!(
        by_name(&from_n2, &name).unwrap()["reserved"],
        holder["reserved"]
    );

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
    assert!(table.contains("250m/1") && table.contains("0/1"), "{table}");

    // n2 dies: n1 sees it dead once its lease lapses, keeps its last address, and runs the
    // replica itself if n2 had it.
    n2.kill9().await;
    let seen = until_nodes(&n1, "n1 sees n2 dead, and the replica on n1", |nodes| {
        by_name(nodes, "n2").is_some_and(|n2| n2["alive"] == false) && nodes[0]["replicas"] == 1
    })
    .await;
    assert_eq!(by_name(&seen, "n2").unwrap()["replicas"], 0);
    assert_eq!(seen[0]["alive"], true);
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
    let module = n1
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
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
    let deployed = n2.put_service("hello", &spec).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    assert_eq!(until_served(&n2, "hello").await, "hello from wasm\n");

    // A node that joins later runs it too: it fetches the bytes from n2 and checks them.
    let n3 = ChildNode::start_with(&bin, dirs[2].path(), &cluster_flags(&prefix, "n3")).await;
    assert_eq!(until_served(&n3, "hello").await, "hello from wasm\n");
    // A module uploaded to n3 reaches n2.
    let echo = n3
        .upload(guest_artifacts::bytes(guest_artifacts::ECHO_HTTP))
        .await;
    let spec = serde_json::json!({"module": echo["digest"]});
    let deployed = n3.put_service("echo", &spec).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    until_served(&n2, "echo").await;
}

/// Three nodes of one cluster, each with 1 cpu and 256Mi to place replicas on.
async fn three_nodes(dirs: &[tempfile::TempDir]) -> Vec<ChildNode> {
    let prefix = prefix_for(dirs[0].path());
    let bin = shoal_bin();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let name = format!("n{}", i + 1);
        nodes.push(ChildNode::start_with(&bin, dir.path(), &cluster_flags(&prefix, &name)).await);
    }
    until_nodes(&nodes[0], "three live nodes", |seen| {
        seen.len() == 3 && seen.iter().all(|node| node["alive"] == true)
    })
    .await;
    nodes
}

/// Every node's view of every node: reservations never exceed capacity.
async fn assert_not_overcommitted(nodes: &[ChildNode]) {
    for node in nodes {
        for seen in nodes_seen_by(node).await {
            let reserved = seen["reserved"]["cpu"].as_str().unwrap().to_owned();
            let allocation = seen["resource_allocation"]["cpu"].as_f64().unwrap();
            assert!(
                allocation <= 1.0,
                "{} reserves {reserved} of 1 cpu",
                seen["name"]
            );
            assert!(seen["resource_allocation"]["memory"].as_f64().unwrap() <= 1.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_spread_any_node_routes_any_name_and_capacity_is_never_overcommitted() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = three_nodes(&dirs).await;
    let module = nodes[0]
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let digest = module["digest"].clone();
    let spec = |min: u32, max: u32, cpu: &str| {
        serde_json::json!({
            "module": digest,
            "scale": {"min": min, "max": max},
            "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}},
        })
    };

    // min 3 on three nodes: one replica on each.
    let deployed = nodes[1].put_service("spread", &spec(3, 3, "250m")).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    until_nodes(&nodes[2], "a replica of spread on every node", |seen| {
        seen.iter().all(|node| node["services"]["spread"] == 1)
    })
    .await;
    // The status and `shoal ps` show them per node, and the service's own bounds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = nodes[0].get_json("/v1/services/spread/status").await;
        if status["nodes"] == serde_json::json!({"n1": 1, "n2": 1, "n3": 1}) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        // Polled: the peers' reports arrive from other processes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (&status["scale"]["min"], &status["scale"]["max"]),
        (&Value::from(3), &Value::from(3))
    );
    let ps = tokio::process::Command::new(shoal_bin())
        .args(["--api", &nodes[0].api, "ps"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&ps.stdout);
    assert!(table.contains("n1:1,n2:1,n3:1"), "{table}");

    // One replica, on one node: every node's gateway answers for it, by path and by Host,
    // the others through exactly one hop.
    let deployed = nodes[0].put_service("single", &spec(1, 1, "250m")).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    let seen = until_nodes(&nodes[0], "single placed", |seen| {
        seen.iter().any(|node| node["services"]["single"] == 1)
    })
    .await;
    let holder = seen
        .iter()
        .find(|node| node["services"]["single"] == 1)
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for node in &nodes {
        until_served(node, "single").await;
        let by_host = reqwest::Client::new()
            .get(format!("{}/", node.gateway))
            .header("host", "single.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(by_host.status(), 200);
        let served_by = by_host
            .headers()
            .get("x-shoal-served-by")
            .map(|v| v.to_str().unwrap().to_owned());
        let this = nodes_seen_by(node).await[0]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        if this == holder {
            assert_eq!(served_by, None, "{this} served its own replica");
        } else {
            assert_eq!(
                served_by.as_deref(),
                Some(holder.as_str()),
                "one hop from {this}"
            );
        }
        assert_eq!(by_host.text().await.unwrap(), "hello from wasm\n");
    }
    assert_not_overcommitted(&nodes).await;

    // More than the cluster holds is refused, with every node's numbers, and stores nothing.
    let refused = nodes[2].put_service("huge", &spec(9, 9, "500m")).await;
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert_eq!(body["kind"], "insufficient-capacity", "{body}");
    assert!(
        message.contains("9 minimum replicas") && message.contains("live nodes have room for 3"),
        "{message}"
    );
    for name in ["n1", "n2", "n3"] {
        assert!(message.contains(&format!("{name} has")), "{message}");
    }
    let missing = reqwest::get(format!("{}/v1/services/huge", nodes[0].api))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Two nodes racing for one name, one deploying a wasm service and the other registering
    // an instance through Consul: one wins, the other gets 409, and the name has one owner.
    for round in 0..5 {
        let name = format!("race{round}");
        let wasm = spec(0, 1, "100m");
        let deploy = nodes[0].put_service(&name, &wasm);
        let register = reqwest::Client::new()
            .put(format!("{}/v1/agent/service/register", nodes[1].api))
            .json(&serde_json::json!({"Name": name, "Port": 9}))
            .send();
        let (deployed, registered) = tokio::join!(deploy, register);
        let statuses = (
            deployed.status().as_u16(),
            registered.unwrap().status().as_u16(),
        );
        assert!(
            statuses == (201, 409) || statuses == (409, 200),
            "{name}: deploy and registration answered {statuses:?}"
        );
    }

    // A service at zero replicas anywhere: a request on any node gets one started.
    let deployed = nodes[2].put_service("zero", &spec(0, 1, "100m")).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    let cold = reqwest::get(format!("{}/zero/", nodes[2].gateway))
        .await
        .unwrap();
    assert_eq!(cold.status(), 200);
    assert_eq!(cold.text().await.unwrap(), "hello from wasm\n");
    let seen = until_nodes(&nodes[2], "zero placed where the request waited", |seen| {
        seen[0]["services"]["zero"] == 1
    })
    .await;
    assert_eq!(
        seen.iter().filter(|n| n["services"]["zero"] == 1).count(),
        1
    );
    assert_not_overcommitted(&nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_replicas_are_placed_again_and_the_survivors_keep_answering() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = three_nodes(&dirs).await;
    let module = nodes[0]
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let spec = serde_json::json!({
        "module": module["digest"],
        "scale": {"min": 1, "max": 1},
        "resources": {"requests": {"cpu": "250m", "memory": "16Mi"}},
    });
    let deployed = nodes[0].put_service("web", &spec).await;
    assert_eq!(deployed.status(), 201, "{}", deployed.text().await.unwrap());
    let seen = until_nodes(&nodes[0], "web placed", |seen| {
        seen.iter().any(|node| node["services"]["web"] == 1)
    })
    .await;
    let holder = seen
        .iter()
        .position(|node| node["services"]["web"] == 1)
        .unwrap();
    let holder_name = seen[holder]["name"].as_str().unwrap().to_owned();
    let index = nodes
        .iter()
        .position(|node| {
            by_name(&seen, &holder_name).unwrap()["api"]
                .as_str()
                .unwrap()
                == node.api.trim_start_matches("http://")
        })
        .unwrap();
    for node in &nodes {
        until_served(node, "web").await;
    }

    // SIGKILL the node running it: once its lease lapses, the leader (another node, or a new
    // one elected if it was the leader) places the replica on a survivor, and every
    // survivor answers again.
    let killed = nodes.remove(index);
    let started = std::time::Instant::now();
    killed.kill9().await;
    // Requests that arrive before the replica is placed again wait for it (the dead node
    // refuses connections; the survivors count them as waiting), and are served.
    let during: Vec<_> = nodes
        .iter()
        .map(|node| tokio::spawn(reqwest::get(format!("{}/web/", node.gateway))))
        .collect();
    for request in during {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    for node in &nodes {
        until_served(node, "web").await;
    }
    let failover = started.elapsed();
    let seen = until_nodes(&nodes[0], "web on a survivor", |seen| {
        seen.iter()
            .any(|node| node["alive"] == true && node["services"]["web"] == 1)
    })
    .await;
    assert_eq!(by_name(&seen, &holder_name).unwrap()["alive"], false);
    // The lease is 2 s here; etcd may extend it once more on a leader change of its own.
    assert!(
        failover < Duration::from_secs(15),
        "answered again after {failover:?}"
    );
    assert_not_overcommitted(&nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_advertises_the_address_it_is_told_and_refuses_an_unreachable_one() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = prefix_for(dir.path());
    // Behind 0.0.0.0, peers would not know where to reach the node: refused before it
    // listens anywhere.
    let refused = tokio::process::Command::new(shoal_bin())
        .args(["up", "--token", "t", "--api-listen", "0.0.0.0:0"])
        .args(["--gateway-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(cluster_flags(&prefix, "n1"))
        .env_remove("SHOAL_TOKEN")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(
            "--api-listen 0.0.0.0:0 is not an address other nodes can reach: pass --advertise"
        ),
        "{stderr}"
    );
    // Told, it advertises that host with the ports it got.
    let mut flags = cluster_flags(&prefix, "n1");
    flags.extend(["--advertise".to_owned(), "127.0.0.2".to_owned()]);
    let node = ChildNode::start_with(&shoal_bin(), dir.path(), &flags).await;
    let seen = nodes_seen_by(&node).await;
    let port = |url: &str| url.rsplit(':').next().unwrap().to_owned();
    assert_eq!(seen[0]["api"], format!("127.0.0.2:{}", port(&node.api)));
    assert_eq!(
        seen[0]["gateway"],
        format!("127.0.0.2:{}", port(&node.gateway))
    );
}

/// The Kubernetes API of a cluster: a Deployment applied on one node spreads over both, every
/// node shows its pods where they run, its Service routes from any node, and `kubectl logs`
/// on one node reads a pod that runs on the other.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_sees_one_cluster_from_any_node() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let prefix = prefix_for(dirs[0].path());
    let bin = shoal_bin();
    let n1 = ChildNode::start_with(&bin, dirs[0].path(), &cluster_flags(&prefix, "n1")).await;
    let n2 = ChildNode::start_with(&bin, dirs[1].path(), &cluster_flags(&prefix, "n2")).await;
    until_nodes(&n1, "n1 sees both alive", |nodes| {
        nodes.len() == 2 && nodes.iter().all(|node| node["alive"] == true)
    })
    .await;
    let digest = n1
        .upload(guest_artifacts::bytes(guest_artifacts::ECHO_HTTP))
        .await["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let on_n1 = crate::kubernetes::Kubectl::for_server(&n1.api);
    let on_n2 = crate::kubernetes::Kubectl::for_server(&n2.api);
    // Each replica requests 600m of a node's one cpu: two fit on two nodes only.
    let manifest = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: talk
spec:
  replicas: 2
  selector:
    matchLabels:
      app: talk
  template:
    metadata:
      labels:
        app: talk
    spec:
      containers:
      - name: main
        image: {digest}
        resources:
          requests:
            cpu: 600m
            memory: 32Mi
---
apiVersion: v1
kind: Service
metadata:
  name: chat
spec:
  selector:
    app: talk
  ports:
  - port: 80
"
    );
    let path = on_n1.file("talk.yaml", &manifest);
    on_n1.ok(&["apply", "-f", &path]).await;
    let rolled = on_n2
        .ok(&["rollout", "status", "deployment/talk", "--timeout=60s"])
        .await;
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    let pods = on_n2.ok(&["get", "pods", "-o", "wide"]).await;
    let rows = crate::kubernetes::rows(&pods, "talk-");
    let mut nodes: Vec<&str> = rows.iter().map(|row| row[6]).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["n1", "n2"], "{pods}");
    assert!(rows.iter().all(|row| row[2] == "Running"), "{pods}");

    // The Service routes from the node that did not take the manifest; the request is
    // served on n2 (a local replica first), and its log read through n1.
    let reply = reqwest::get(format!("{}/chat/?log=from-the-cluster", n2.gateway))
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let seen_from_n1 = on_n1.ok(&["get", "pods", "-o", "wide"]).await;
    let on_n2_row = crate::kubernetes::rows(&seen_from_n1, "talk-")
        .into_iter()
        .find(|row| row[6] == "n2")
        .map(|row| row[0].to_owned())
        .expect("n1 lists the pod on n2");
    let logs = on_n1.ok(&["logs", &on_n2_row]).await;
    assert!(logs.contains("from-the-cluster"), "{logs}");

    // An image naming no module waits, seen from either node, and starts once a module is
    // given its name on the other node.
    let later = on_n1.file(
        "later.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: later
spec:
  replicas: 1
  selector:
    matchLabels:
      app: later
  template:
    metadata:
      labels:
        app: later
    spec:
      containers:
      - name: main
        image: later
        resources:
          requests:
            cpu: 100m
            memory: 16Mi
",
    );
    on_n1.ok(&["apply", "-f", &later]).await;
    let waiting = on_n2.ok(&["get", "pods", "-l", "app=later"]).await;
    assert_eq!(
        crate::kubernetes::rows(&waiting, "later-")[0][2],
        "ErrImagePull",
        "{waiting}"
    );
    let named = reqwest::Client::new()
        .post(format!("{}/v1/modules?name=later", n2.api))
        .body(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .send()
        .await
        .unwrap();
    assert!(named.status().is_success());
    let rolled = on_n1
        .ok(&["rollout", "status", "deployment/later", "--timeout=60s"])
        .await;
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    let reply = reqwest::get(format!("{}/later/", n1.gateway))
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);

    // Each node exports its own metrics under its name; the dashboard's stream lists both.
    for (node, name) in [(&n1, "n1"), (&n2, "n2")] {
        let metrics = reqwest::get(format!("{}/metrics", node.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let replicas = format!("shoal_replicas{{node=\"{name}\",service=\"talk\"}} 1");
        assert!(metrics.contains(&replicas), "{name}: {metrics}");
    }
    let mut stream = reqwest::get(format!("{}/ui/stream", n1.api)).await.unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = stream.chunk().await.unwrap().expect("the first status");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .lines()
        .find_map(|line| line.strip_prefix("data:"))
        .expect("a data line");
    let status: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|node| node["name"].as_str())
        .collect();
    assert_eq!(names, ["n1", "n2"], "{status}");
    drop(stream);
    for node in [n1, n2] {
        node.kill9().await;
    }
}
