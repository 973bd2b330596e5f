//! Sessions, locks and transactions through the Consul API, as Patroni, Vault's Consul
//! storage, Go's `api.Lock` and `consul lock` use them; and a contention test: clients racing
//! for one lock over many rounds, across a `kill -9` of the node, never two holders at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{ChildNode, Reply, TestNode, json, shoal_bin};

/// Creates a session from `body`, returning its ID.
async fn create_session(node: &TestNode, body: Value) -> String {
    let reply = node
        .send("PUT", "/v1/session/create", Some(&body.to_string()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["ID"].as_str().unwrap().to_owned()
}

/// Waits, with blocking reads of the session, until it is gone (at most 20 s). Session reads
/// wait on the change index, so each change answers them: read until the guard has acted.
async fn wait_until_gone(node: &TestNode, id: &str, what: &str) {
    let mut index = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = node
            .send(
                "GET",
                &format!("/v1/session/info/{id}?index={index}&wait=5s"),
                None,
            )
            .await;
        index = crate::consul::read_index(&reply);
        if reply.json() == json!([]) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
    }
}

async fn put(node: &TestNode, path: &str, body: &str) -> Reply {
    node.send("PUT", path, Some(body)).await
}

/// The key's entry, as a KV read shows it.
async fn entry(node: &TestNode, key: &str) -> Value {
    let reply = node.send("GET", &format!("/v1/kv/{key}"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_created_read_renewed_and_destroyed() {
    let node = TestNode::start().await;
    // What python-consul and Patroni send: lowercase keys, string durations.
    let id = create_session(
        &node,
        json!({"name": "patroni", "lockdelay": "0.001s", "behavior": "delete", "ttl": "15s", "checks": []}),
    )
    .await;
    assert_eq!(id.len(), 36, "{id}");
    let reply = node
        .send("GET", &format!("/v1/session/info/{id}"), None)
        .await;
    crate::consul::read_index(&reply);
    let info = reply.json();
    assert_eq!(info.as_array().unwrap().len(), 1);
    let session = &info[0];
    assert_eq!(session["ID"], id.as_str());
    assert_eq!(session["Name"], "patroni");
    assert_eq!(session["Behavior"], "delete");
    assert_eq!(session["TTL"], "15s");
    assert_eq!(session["LockDelay"], 1_000_000);
    assert_eq!(session["NodeChecks"], json!([]));
    let node_name = session["Node"].as_str().unwrap().to_owned();

    // Consul's defaults: release, 15 s of lock-delay, the node's health; a number of
    // LockDelay below 1000 is seconds.
    let other = create_session(&node, json!({"LockDelay": 5})).await;
    let listed = node.send("GET", "/v1/session/list", None).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let other_entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ID"] == other.as_str())
        .unwrap();
    assert_eq!(other_entry["Behavior"], "release");
    assert_eq!(other_entry["LockDelay"], 5_000_000_000u64);
    assert_eq!(other_entry["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(other_entry["TTL"], "");
    let on_node = node
        .send("GET", &format!("/v1/session/node/{node_name}"), None)
        .await
        .json();
    assert_eq!(on_node.as_array().unwrap().len(), 2);

    let renewed = put(&node, &format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    assert_eq!(renewed.json()[0]["ID"], id.as_str());

    // A blocking read of the session wakes when it is destroyed.
    let index = crate::consul::read_index(
        &node
            .send("GET", &format!("/v1/session/info/{id}"), None)
            .await,
    );
    let waiter = {
        let url = format!("{}/v1/session/info/{id}?index={index}&wait=20s", node.api);
        let client = node.client.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await })
    };
    let destroyed = put(&node, &format!("/v1/session/destroy/{id}"), "").await;
    assert_eq!((destroyed.status, destroyed.json()), (200, json!(true)));
    assert_eq!(waiter.await.unwrap().unwrap(), json!([]));
    // Gone: renew is 404 (which clients read as expired), info is empty, destroy is still true.
    let renewed = put(&node, &format!("/v1/session/renew/{id}"), "").await;
    assert_eq!(renewed.status, 404);
    assert_eq!(renewed.body, format!("Session id '{id}' not found"));
    assert_eq!(
        node.send("GET", &format!("/v1/session/info/{id}"), None)
            .await
            .json(),
        json!([])
    );
    assert_eq!(
        put(&node, &format!("/v1/session/destroy/{id}"), "")
            .await
            .json(),
        json!(true)
    );

    // Refused, with Consul's status and words.
    for (body, status, message) in [
        (json!({"TTL": "5s"}), 500, "Invalid Session TTL '5s'"),
        (json!({"TTL": "25h"}), 500, "Invalid Session TTL"),
        (
            json!({"Behavior": "keep"}),
            400,
            "Invalid Behavior setting 'keep'",
        ),
        (
            json!({"Checks": ["nope"]}),
            500,
            "Missing check 'nope' registration",
        ),
        (
            json!({"Node": "elsewhere"}),
            500,
            "Missing node registration",
        ),
        (json!({"TTL": "soon"}), 400, "invalid TTL"),
        (json!({"Colour": "red"}), 400, "Colour"),
    ] {
        let reply = put(&node, "/v1/session/create", &body.to_string()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(reply.body.contains(message), "{body}: {}", reply.body);
    }
    assert_eq!(
        node.send("GET", "/v1/session/list", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_and_release_lock_keys_for_sessions() {
    let node = TestNode::start().await;
    let a = create_session(&node, json!({"Name": "a"})).await;
    let b = create_session(&node, json!({"Name": "b", "LockDelay": "0s"})).await;

    let reply = put(
        &node,
        &format!("/v1/kv/service/leader?acquire={a}"),
        "a-data",
    )
    .await;
    assert_eq!(reply.json(), json!(true));
    let held = entry(&node, "service/leader").await;
    assert_eq!(held["Session"], a.as_str());
    assert_eq!(held["LockIndex"], 1);
    assert_eq!(held["Value"], "YS1kYXRh");
    // Another session gets false; the holder may acquire again.
    let reply = put(
        &node,
        &format!("/v1/kv/service/leader?acquire={b}"),
        "b-data",
    )
    .await;
    assert_eq!(reply.json(), json!(false));
    let reply = put(
        &node,
        &format!("/v1/kv/service/leader?acquire={a}&flags=42"),
        "again",
    )
    .await;
    assert_eq!(reply.json(), json!(true));
    let held = entry(&node, "service/leader").await;
    assert_eq!(
        (held["LockIndex"].as_u64(), held["Flags"].as_u64()),
        (Some(1), Some(42))
    );
    // An unknown session: 500 `invalid session`, which Patroni parses.
    let reply = put(&node, "/v1/kv/service/leader?acquire=no-such-session", "").await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.starts_with("invalid session"), "{}", reply.body);
    // Release only by the holder.
    let reply = put(&node, &format!("/v1/kv/service/leader?release={b}"), "").await;
    assert_eq!(reply.json(), json!(false));
    let reply = put(&node, &format!("/v1/kv/service/leader?release={a}"), "done").await;
    assert_eq!(reply.json(), json!(true));
    let released = entry(&node, "service/leader").await;
    assert!(released.get("Session").is_none(), "{released}");
    assert_eq!(released["LockIndex"], 1);
    // Check-and-set still holds on a locked key.
    let reply = put(&node, &format!("/v1/kv/service/leader?acquire={b}"), "b").await;
    assert_eq!(reply.json(), json!(true));
    let index = entry(&node, "service/leader").await["ModifyIndex"]
        .as_u64()
        .unwrap();
    let reply = put(
        &node,
        &format!("/v1/kv/service/leader?cas={}", index - 1),
        "x",
    )
    .await;
    assert_eq!(reply.json(), json!(false));
    let reply = put(&node, &format!("/v1/kv/service/leader?cas={index}"), "x").await;
    assert_eq!(reply.json(), json!(true));
    assert_eq!(entry(&node, "service/leader").await["Session"], b.as_str());

    // Destroying the holder releases the key; b had no lock-delay, so a may take it at once.
    let reply = put(&node, &format!("/v1/session/destroy/{b}"), "").await;
    assert_eq!(reply.json(), json!(true));
    assert!(
        entry(&node, "service/leader")
            .await
            .get("Session")
            .is_none()
    );
    let reply = put(&node, &format!("/v1/kv/service/leader?acquire={a}"), "a").await;
    assert_eq!(reply.json(), json!(true));
    // a has Consul's 15 s lock-delay: once invalidated, nobody may take its key for a while.
    let c = create_session(&node, json!({"Name": "c"})).await;
    let reply = put(&node, &format!("/v1/session/destroy/{a}"), "").await;
    assert_eq!(reply.json(), json!(true));
    let reply = put(&node, &format!("/v1/kv/service/leader?acquire={c}"), "c").await;
    assert_eq!(reply.json(), json!(false));
    assert_eq!(entry(&node, "service/leader").await["LockIndex"], 3);

    // A session with behavior delete takes its keys with it.
    let d = create_session(&node, json!({"Behavior": "delete"})).await;
    let reply = put(&node, &format!("/v1/kv/members/d?acquire={d}"), "me").await;
    assert_eq!(reply.json(), json!(true));
    put(&node, &format!("/v1/session/destroy/{d}"), "").await;
    let reply = node.send("GET", "/v1/kv/members/d", None).await;
    assert_eq!(reply.status, 404);

    // Bad input.
    let reply = put(&node, &format!("/v1/kv/k?acquire={c}&release={c}"), "").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = put(&node, "/v1/kv/k?acquire=", "").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_with_their_ttl_or_their_checks() {
    let node = TestNode::start_with(|config| {
        config.session_ttl_min = Duration::from_secs(1);
    })
    .await;
    // The agent says what it accepts.
    let me = node.send("GET", "/v1/agent/self", None).await.json();
    assert_eq!(me["Config"]["SessionTTLMin"], 1_000_000_000);

    let short = create_session(&node, json!({"TTL": "1s", "LockDelay": "0s"})).await;
    let reply = put(&node, &format!("/v1/kv/lease?acquire={short}"), "x").await;
    assert_eq!(reply.json(), json!(true));
    // Nobody renews it: within 2 TTLs the key is released, which a blocking read sees.
    let mut index = crate::consul::read_index(&node.send("GET", "/v1/kv/lease", None).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = node
            .send("GET", &format!("/v1/kv/lease?index={index}&wait=5s"), None)
            .await;
        index = crate::consul::read_index(&reply);
        if reply.json()[0].get("Session").is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never lapsed"
        );
    }
    let renewed = put(&node, &format!("/v1/session/renew/{short}"), "").await;
    assert_eq!(renewed.status, 404);

    // A session naming a check ends when the check goes critical.
    let reply = crate::consul::register(
        &node,
        json!({"name": "db", "check": {"ttl": "1h", "status": "passing", "id": "db-alive"}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let guarded = create_session(&node, json!({"Checks": ["serfHealth", "db-alive"]})).await;
    let reply = put(&node, &format!("/v1/kv/db/leader?acquire={guarded}"), "x").await;
    assert_eq!(reply.json(), json!(true));
    let reply = put(&node, "/v1/agent/check/fail/db-alive", "").await;
    assert_eq!(reply.status, 200);
    wait_until_gone(&node, &guarded, "the session outlived its check").await;
    assert!(entry(&node, "db/leader").await.get("Session").is_none());
    // A session of a node registered through the catalog ends with that node.
    let body = json!({"Node": "ext", "Address": "10.0.0.1",
                      "Check": {"CheckID": "ext-ok", "Name": "ok", "Status": "passing"}});
    let reply = put(&node, "/v1/catalog/register", &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let external = create_session(&node, json!({"Node": "ext", "Checks": ["ext-ok"]})).await;
    let reply = put(
        &node,
        "/v1/catalog/deregister",
        &json!({"Node": "ext"}).to_string(),
    )
    .await;
    assert_eq!(reply.body, "true");
    wait_until_gone(&node, &external, "the session outlived its node").await;

    // A session cannot be created on a critical check.
    let reply = put(
        &node,
        "/v1/session/create",
        &json!({"Checks": ["db-alive"]}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("critical"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_commit_whole_or_roll_back() {
    let node = TestNode::start().await;
    let b64 = |text: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    // What Go's `Txn` and Vault send.
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "vault/a", "Value": b64("one"), "Flags": 0, "Index": 0, "Session": ""}},
        {"KV": {"Verb": "set", "Key": "vault/b", "Value": b64("two")}},
        {"KV": {"Verb": "get", "Key": "vault/a"}},
        {"KV": {"Verb": "check-not-exists", "Key": "vault/c"}},
    ]);
    let reply = put(&node, "/v1/txn", &ops.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["Errors"], Value::Null);
    let results = answer["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["KV"]["Key"], "vault/a");
    assert_eq!(results[0]["KV"]["Value"], Value::Null);
    assert_eq!(results[2]["KV"]["Value"], b64("one").as_str());
    let index = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(results[1]["KV"]["ModifyIndex"].as_u64().unwrap(), index);

    // One failing operation rolls the whole transaction back: 409 naming it.
    let ops = json!([
        {"KV": {"Verb": "delete", "Key": "vault/a"}},
        {"KV": {"Verb": "cas", "Key": "vault/b", "Value": b64("three"), "Index": index + 100}},
    ]);
    let reply = put(&node, "/v1/txn", &ops.to_string()).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["Results"], Value::Null);
    assert_eq!(answer["Errors"][0]["OpIndex"], 1);
    assert!(
        answer["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("index is stale"),
        "{answer}"
    );
    assert_eq!(entry(&node, "vault/a").await["Value"], b64("one").as_str());

    // Locks in a transaction.
    let session = create_session(&node, json!({})).await;
    let ops = json!([
        {"KV": {"Verb": "lock", "Key": "vault/lock", "Value": b64("me"), "Session": session}},
        {"KV": {"Verb": "check-session", "Key": "vault/lock", "Session": session}},
        {"KV": {"Verb": "delete-tree", "Key": "vault/b"}},
    ]);
    let reply = put(&node, "/v1/txn", &ops.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json()["Results"][1]["KV"]["Session"],
        session.as_str()
    );
    assert_eq!(node.send("GET", "/v1/kv/vault/b", None).await.status, 404);
    // A read-only transaction carries the read headers.
    let ops = json!([{"KV": {"Verb": "get-tree", "Key": "vault/"}}]);
    let reply = put(&node, "/v1/txn", &ops.to_string()).await;
    crate::consul::read_index(&reply);
    assert_eq!(reply.json()["Results"].as_array().unwrap().len(), 2);

    // Refused before anything is read.
    let too_many: Vec<Value> = (0..65)
        .map(|n| json!({"KV": {"Verb": "set", "Key": format!("k{n}")}}))
        .collect();
    for (body, status, message) in [
        (
            json!(too_many),
            413,
            "Transaction contains too many operations (65 > 64)",
        ),
        (json!({"KV": {}}), 400, "JSON array"),
        (
            json!([{"KV": {"Verb": "explode", "Key": "k"}}]),
            400,
            "unknown KV verb \"explode\"",
        ),
        (
            json!([{"KV": {"Verb": "set", "Key": "k", "Value": "%%%"}}]),
            400,
            "base64",
        ),
        (json!([{"Node": {"Verb": "set"}}]), 400, "KV"),
        (
            json!([{"KV": {"Verb": "lock", "Key": "k"}}]),
            400,
            "needs a Session",
        ),
        (json!([{"KV": {"Verb": "set", "Key": ""}}]), 400, "key"),
    ] {
        let reply = put(&node, "/v1/txn", &body.to_string()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(reply.body.contains(message), "{body}: {}", reply.body);
    }
    assert_eq!(node.send("GET", "/v1/kv/k0", None).await.status, 404);
}

/// Where the node under the contention test is now: clients follow it across its restart.
struct Target(std::sync::RwLock<String>);

impl Target {
    fn api(&self) -> String {
        self.0.read().unwrap().clone()
    }
}

/// The answer to a call of a contending client, and whether the call was sent again after
/// the node went away mid-call (so an earlier attempt may have been applied).
struct Answer {
    status: u16,
    body: String,
    resent: bool,
}

/// Calls the node wherever it is now, sending again while it cannot be reached.
async fn call(
    client: &reqwest::Client,
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: String,
) -> Answer {
    let mut resent = false;
    loop {
        let sent = client
            .request(method.clone(), format!("{}{path}", target.api()))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                if let Ok(body) = response.text().await {
                    return Answer {
                        status,
                        body,
                        resent,
                    };
                }
            }
            // Polled: a restarting node says nothing until it answers.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        resent = true;
    }
}

/// The counter's value and modify index (0 and 0 before its first write).
async fn read_counter(client: &reqwest::Client, target: &Target) -> (u64, u64) {
    let answer = call(
        client,
        target,
        reqwest::Method::GET,
        "/v1/kv/contended/counter",
        String::new(),
    )
    .await;
    if answer.status == 404 {
        return (0, 0);
    }
    assert_eq!(answer.status, 200, "{}", answer.body);
    let entry = &serde_json::from_str::<Value>(&answer.body).unwrap()[0];
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry["Value"].as_str().unwrap())
        .unwrap();
    let value = String::from_utf8(bytes).unwrap().parse::<u64>().unwrap();
    (value, entry["ModifyIndex"].as_u64().unwrap())
}

/// One client of the contention test: a session, then rounds of acquiring the lock, updating
/// the shared counter under it (a read and a check-and-set), and releasing it, until `rounds`
/// reaches `until`. Returns how many times it held the lock.
async fn contend(
    target: Arc<Target>,
    holders: Arc<AtomicI32>,
    rounds: tokio::sync::watch::Sender<u64>,
    until: u64,
) -> u64 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let put = |path: String, body: String| {
        let (client, target) = (client.clone(), target.clone());
        async move { call(&client, &target, reqwest::Method::PUT, &path, body).await }
    };
    let created = put(
        "/v1/session/create".into(),
        json!({"TTL": "10s", "LockDelay": "0s"}).to_string(),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let session = serde_json::from_str::<Value>(&created.body).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut renewed = tokio::time::Instant::now();
    let mut held = 0;
    while *rounds.borrow() < until {
        if renewed.elapsed() > Duration::from_secs(3) {
            let answer = put(format!("/v1/session/renew/{session}"), String::new()).await;
            assert_eq!(answer.status, 200, "the session lapsed: {}", answer.body);
            renewed = tokio::time::Instant::now();
        }
        let acquired = put(
            format!("/v1/kv/contended/lock?acquire={session}"),
            String::new(),
        )
        .await;
        assert_eq!(acquired.status, 200, "{}", acquired.body);
        if acquired.body.trim() != "true" {
            tokio::task::yield_now().await;
            continue;
        }
        // The holders' own record: nobody else holds it now.
        assert_eq!(
            holders.fetch_add(1, Ordering::SeqCst),
            0,
            "two holders at once"
        );
        held += 1;
        let (value, modify_index) = read_counter(&client, &target).await;
        let written = put(
            format!("/v1/kv/contended/counter?cas={modify_index}"),
            (value + 1).to_string(),
        )
        .await;
        if written.body.trim() != "true" {
            // Only a write sent again after the node went away may find its own first
            // attempt applied; anything else is an update lost under the lock.
            assert!(written.resent, "an update under the lock lost a race");
            assert_eq!(
                read_counter(&client, &target).await.0,
                value + 1,
                "a lost update"
            );
        }
        holders.fetch_sub(1, Ordering::SeqCst);
        rounds.send_modify(|rounds| *rounds += 1);
        let released = put(
            format!("/v1/kv/contended/lock?release={session}"),
            String::new(),
        )
        .await;
        assert!(
            released.body.trim() == "true" || released.resent,
            "the holder could not release: {}",
            released.body
        );
    }
    held
}

#[tokio::test(flavor = "multi_thread")]
async fn contending_clients_never_hold_a_lock_together_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let node = ChildNode::start_with(&shoal_bin(), data.path(), &[]).await;
    let target = Arc::new(Target(std::sync::RwLock::new(node.api.clone())));
    let holders = Arc::new(AtomicI32::new(0));
    let (rounds, mut progress) = tokio::sync::watch::channel(0_u64);
    const CLIENTS: usize = 4;
    const ROUNDS: u64 = 120;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(contend(
                target.clone(),
                holders.clone(),
                rounds.clone(),
                ROUNDS,
            ))
        })
        .collect();
    // Halfway, the node is killed and started again on the same data.
    progress.wait_for(|done| *done >= ROUNDS / 2).await.unwrap();
    node.kill9().await;
    let node = ChildNode::start_with(&shoal_bin(), data.path(), &[]).await;
    *target.0.write().unwrap() = node.api.clone();
    let mut total = 0;
    for client in clients {
        total += tokio::time::timeout(Duration::from_secs(120), client)
            .await
            .expect("the contention test did not finish within 2 minutes")
            .expect("a client failed");
    }
    // Every time a client held the lock, it added one: no update was lost.
    let counter = node.get_json("/v1/kv/contended/counter?raw").await;
    assert_eq!(counter.as_u64(), Some(total), "the counter");
    assert!(total >= ROUNDS, "{total} rounds");
}
