//! A cluster through etcd's failures, checked the way Jepsen checks a store: writers put
//! keys and deploy services through every node while the etcd leader is killed and then
//! etcd is cut to a minority; afterwards every write that was acknowledged must be there.
//! Meanwhile a reader hopping between nodes checks that `X-Consul-Index` never goes back, and
//! during the minority the nodes keep routing, answer reads, and refuse writes saying why.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shoal_registry_etcd::testing::EtcdCluster;
use shoal_tests::{ChildNode, shoal_bin};

/// What the writers saw.
#[derive(Default)]
struct History {
    acknowledged: Vec<String>,
    /// Refused with an answer that says etcd had no leader.
    refused: Vec<String>,
    /// Timed out or failed in a way that may or may not have written.
    indeterminate: Vec<String>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_acknowledged_is_lost_when_etcd_loses_its_leader_and_then_its_quorum() {
    let etcd = Arc::new(Mutex::new(blocking(|| EtcdCluster::start(3)).await));
    let endpoints = etcd.lock().unwrap().endpoints().join(",");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let flags: Vec<String> = [
            "--etcd",
            &endpoints,
            "--node-name",
            &format!("n{}", i + 1),
            "--node-ttl",
            "2s",
        ]
        .map(str::to_owned)
        .to_vec();
        nodes.push(ChildNode::start_with(&shoal_bin(), dir.path(), &flags).await);
    }
    let nodes = Arc::new(nodes);
    let http = client();

    // A service every node routes to before anything fails.
    let module = nodes[0]
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let digest = module["digest"].as_str().unwrap().to_owned();
    let hello = serde_json::json!({"module": digest, "scale": {"min": 3, "max": 3}});
    let created = http
        .put(format!("{}/v1/services/hello", nodes[1].api))
        .json(&hello)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for node in nodes.iter() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let served = http.get(format!("{}/hello/", node.gateway)).send().await;
            if served.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "hello never served");
            // Polled: placement happens in other processes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let kv = Arc::new(Mutex::new(History::default()));
    let deploys = Arc::new(Mutex::new(History::default()));
    let mut tasks = Vec::new();
    // Three key writers, one per node.
    for writer in 0..3_usize {
        let (nodes, stop, kv) = (nodes.clone(), stop.clone(), kv.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut i = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("w{writer}-{i}");
                let node = &nodes[(writer + i as usize) % 3];
                let sent = http
                    .put(format!("{}/v1/kv/jepsen/{key}", node.api))
                    .body(key.clone())
                    .send()
                    .await;
                {
                    let mut history = kv.lock().unwrap();
                    match sent {
                        Ok(response) if response.status() == 200 => history.acknowledged.push(key),
                        // Consul's answer when etcd has no leader: nothing was written.
                        Ok(response) if response.status() == 500 => history.refused.push(key),
                        _ => history.indeterminate.push(key),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // One deployer, hopping between nodes.
    {
        let (nodes, stop, deploys) = (nodes.clone(), stop.clone(), deploys.clone());
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut i = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("d{i}");
                let spec = serde_json::json!({"module": digest, "scale": {"min": 0, "max": 1}});
                let sent = http
                    .put(format!("{}/v1/services/{name}", nodes[i % 3].api))
                    .json(&spec)
                    .send()
                    .await;
                {
                    let mut history = deploys.lock().unwrap();
                    match sent {
                        Ok(response) if response.status() == 201 => history.acknowledged.push(name),
                        Ok(response) if response.status() == 503 => history.refused.push(name),
                        _ => history.indeterminate.push(name),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // A reader hopping between nodes: the index never goes back.
    let highest = Arc::new(AtomicU64::new(0));
    {
        let (nodes, stop, highest) = (nodes.clone(), stop.clone(), highest.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut i = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let node = &nodes[i % 3];
                // A node that says it has no leader answers from what it last knew, as
                // Consul's stale reads: only the others' indexes must never go back.
                if let Ok(response) = http
                    .get(format!("{}/v1/catalog/services", node.api))
                    .send()
                    .await
                    && response.headers()["x-consul-knownleader"] == "true"
                    && let Some(index) = response
                        .headers()
                        .get("x-consul-index")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                {
                    let before = highest.fetch_max(index, Ordering::SeqCst);
                    assert!(
                        index >= before,
                        "X-Consul-Index went back from {before} to {index} on {}",
                        node.api
                    );
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }

    // Nemesis 1: kill the etcd leader, bring it back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = {
        let etcd = etcd.clone();
        blocking(move || {
            let mut etcd = etcd.lock().unwrap();
            let leader = etcd.leader().expect("etcd has a leader");
            etcd.kill(leader);
            leader
        })
        .await
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    {
        let etcd = etcd.clone();
        blocking(move || etcd.lock().unwrap().restart(leader)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Nemesis 2: etcd down to one member of three: no quorum.
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    {
        let etcd = etcd.clone();
        blocking(move || {
            let mut etcd = etcd.lock().unwrap();
            etcd.kill(a);
            etcd.kill(b);
        })
        .await;
    }
    // Once their leases lapse, nodes flag reads as stale; writes are refused, saying why
    // (a write sent as quorum went waits for etcd's 5 s request timeout first); the gateways
    // route from what they know.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let refused = http
        .put(format!("{}/v1/services/during", nodes[0].api))
        .json(&hello)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["kind"], "cluster-unavailable", "{body}");
    let consul_put = http
        .put(format!("{}/v1/kv/during", nodes[1].api))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(consul_put.status(), 500);
    assert_eq!(consul_put.text().await.unwrap(), "No cluster leader");
    let stale = http
        .get(format!("{}/v1/catalog/services", nodes[2].api))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-consul-knownleader"], "false");
    for node in nodes.iter() {
        let routed = http
            .get(format!("{}/hello/", node.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(
            routed.status(),
            200,
            "{} stopped routing without etcd",
            node.gateway
        );
    }
    // Reads are answered from what each node last applied.
    let acknowledged = kv.lock().unwrap().acknowledged.first().cloned().unwrap();
    let read = http
        .get(format!("{}/v1/kv/jepsen/{acknowledged}?raw", nodes[0].api))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["x-consul-knownleader"], "false");
    assert_eq!(read.text().await.unwrap(), acknowledged);
    let listed = nodes[2].get_json("/v1/services/hello").await;
    assert_eq!(listed["name"], "hello", "{listed}");
    {
        let etcd = etcd.clone();
        blocking(move || {
            let mut etcd = etcd.lock().unwrap();
            etcd.restart(a);
            etcd.restart(b);
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await
            .expect("a client task failed (see its assertion)");
    }

    // Every acknowledged write is there, read through every node once they have caught up.
    // Every task has ended: the histories are ours alone now.
    let kv = std::mem::take(&mut *kv.lock().unwrap());
    let deploys = std::mem::take(&mut *deploys.lock().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (keys, services) = loop {
        let listed = async {
            let keys: Value = http
                .get(format!("{}/v1/kv/jepsen/?keys", nodes[0].api))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let services: Value = http
                .get(format!("{}/v1/services", nodes[2].api))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some((keys, services))
        }
        .await;
        if let Some((keys, services)) = listed
            && keys.is_array()
            && services.is_array()
        {
            break (keys, services);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never came back"
        );
        // Polled: etcd is electing a leader again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let keys: std::collections::HashSet<String> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            key.as_str()
                .unwrap()
                .trim_start_matches("jepsen/")
                .to_owned()
        })
        .collect();
    let services: std::collections::HashSet<String> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|service| service["name"].as_str().unwrap().to_owned())
        .collect();
    let lost_keys: Vec<&String> = kv
        .acknowledged
        .iter()
        .filter(|k| !keys.contains(*k))
        .collect();
    let lost_deploys: Vec<&String> = deploys
        .acknowledged
        .iter()
        .filter(|name| !services.contains(*name))
        .collect();
    let present = |keys: &[String], found: &std::collections::HashSet<String>| {
        keys.iter().filter(|k| found.contains(*k)).count()
    };
    eprintln!(
        "kv: {} acknowledged, {} lost, {} refused ({} present), {} indeterminate ({} present); \
         deploys: {} acknowledged, {} lost, {} refused ({} present), {} indeterminate ({} present); \
         highest index seen {}",
        kv.acknowledged.len(),
        lost_keys.len(),
        kv.refused.len(),
        present(&kv.refused, &keys),
        kv.indeterminate.len(),
        present(&kv.indeterminate, &keys),
        deploys.acknowledged.len(),
        lost_deploys.len(),
        deploys.refused.len(),
        present(&deploys.refused, &services),
        deploys.indeterminate.len(),
        present(&deploys.indeterminate, &services),
        highest.load(Ordering::SeqCst),
    );
    assert!(
        lost_keys.is_empty(),
        "acknowledged keys lost: {lost_keys:?}"
    );
    assert!(
        lost_deploys.is_empty(),
        "acknowledged deploys lost: {lost_deploys:?}"
    );
    assert!(
        kv.acknowledged.len() > 100,
        "the writers barely wrote: {}",
        kv.acknowledged.len()
    );
    assert!(
        !kv.refused.is_empty(),
        "no write was refused while etcd had no quorum"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_etcd_member_down_fails_no_request() {
    let etcd = Arc::new(Mutex::new(blocking(|| EtcdCluster::start(3)).await));
    // The node's first endpoint, the member it uses until it fails, is a follower: losing
    // it needs no election, so nothing but the client's own failover is tested.
    let (used, endpoints) = {
        let etcd = etcd.lock().unwrap();
        let used = (etcd.leader().expect("etcd has a leader") + 1) % 3;
        let mut endpoints = etcd.endpoints();
        endpoints.rotate_left(used);
        (used, endpoints.join(","))
    };
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<String> = ["--etcd", &endpoints, "--node-name", "solo"]
        .map(str::to_owned)
        .to_vec();
    let node = ChildNode::start_with(&shoal_bin(), dir.path(), &flags).await;
    let http = client();
    {
        let etcd = etcd.clone();
        blocking(move || etcd.lock().unwrap().kill(used)).await;
    }
    for i in 0..50 {
        let put = http
            .put(format!("{}/v1/kv/failover/{i}", node.api))
            .body(i.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "write {i} with one etcd member down");
        let get = http
            .get(format!("{}/v1/kv/failover/{i}?raw", node.api))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200, "read {i} with one etcd member down");
        assert_eq!(get.text().await.unwrap(), i.to_string());
    }
    let module = node
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let digest = module["digest"].clone();
    let deployed = http
        .put(format!("{}/v1/services/hello", node.api))
        .json(&serde_json::json!({"module": digest}))
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    let served = http
        .get(format!("{}/hello/", node.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_while_etcd_is_down_serves_what_it_knew_read_only_then_joins() {
    let etcd = Arc::new(Mutex::new(blocking(|| EtcdCluster::start(3)).await));
    let endpoints = etcd.lock().unwrap().endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<String> = [
        "--etcd",
        &endpoints,
        "--node-name",
        "keeper",
        "--node-ttl",
        "2s",
    ]
    .map(str::to_owned)
    .to_vec();
    let bin = shoal_bin();
    let mut node = ChildNode::start_with(&bin, dir.path(), &flags).await;
    let http = client();
    let module = node
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let hello = serde_json::json!({"module": module["digest"], "scale": {"min": 1, "max": 1}});
    let created = http
        .put(format!("{}/v1/services/hello", node.api))
        .json(&hello)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let registered = http
        .put(format!("{}/v1/agent/service/register", node.api))
        .json(&serde_json::json!({"Name": "ext", "Port": 9999}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    // The node writes down what it knows a second after it changes.
    let saved = dir.path().join("last-known.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&saved).is_ok_and(|text| text.contains("\"ext\"")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last known state was never saved"
        );
        // Polled: another process writes it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node and all of etcd go down; the node starts again while etcd is still down.
    node.child.start_kill().unwrap();
    node.child.wait().await.unwrap();
    {
        let etcd = etcd.clone();
        blocking(move || (0..3).for_each(|i| etcd.lock().unwrap().kill(i))).await;
    }
    let mut node = ChildNode::start_with(&bin, dir.path(), &flags).await;
    let served = http
        .get(format!("{}/hello/", node.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), "hello from wasm\n");
    let services = node.get_json("/v1/services").await;
    assert_eq!(services[0]["name"], "hello", "{services}");
    let ext = node.get_json("/v1/catalog/service/ext").await;
    assert_eq!(ext[0]["ServicePort"], 9999, "{ext}");
    let refused = http
        .put(format!("{}/v1/services/other", node.api))
        .json(&hello)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["kind"],
        "cluster-unavailable"
    );
    let consul_put = http
        .put(format!("{}/v1/kv/k", node.api))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(consul_put.status(), 500);

    // etcd comes back: the node starts itself again and joins.
    {
        let etcd = etcd.clone();
        blocking(move || (0..3).for_each(|i| etcd.lock().unwrap().restart(i))).await;
    }
    let line = node.next_up_line().await;
    assert!(!line.contains("read-only"), "{line}");
    let written = http
        .put(format!("{}/v1/kv/k", node.api))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let nodes = node.get_json("/v1/nodes").await;
    assert_eq!(
        (&nodes[0]["name"], &nodes[0]["alive"]),
        (&Value::from("keeper"), &Value::from(true))
    );
    let served = http
        .get(format!("{}/hello/", node.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}
