//! What tools ask a Consul agent before anything else (`/v1/agent/self`, the members, the
//! datacenters, what is on a node), check updates with a body, maintenance mode, and the
//! agent's aggregated health. The shapes asserted are those the Go client, Prometheus,
//! consul-template and Patroni read (`../shared/reference/consul-more.md`).

use std::collections::BTreeSet;

use serde_json::Value;
use shoal_tests::{TestNode, Upstream, json};

use crate::consul::{read_index, register};

/// The node's name, as the agent reports it.
async fn node_name(node: &TestNode) -> String {
    let reply = node.send("GET", "/v1/agent/self", None).await;
    reply.json()["Config"]["NodeName"]
        .as_str()
        .expect("NodeName is a string")
        .to_owned()
}

/// The IDs of the instances of `name` that `?passing` keeps.
async fn passing(node: &TestNode, name: &str) -> BTreeSet<String> {
    let reply = node
        .send("GET", &format!("/v1/health/service/{name}?passing=1"), None)
        .await;
    read_index(&reply);
    reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["Service"]["ID"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_describes_itself_and_its_node() {
    let node = TestNode::start().await;
    let reply = node.send("GET", "/v1/agent/self", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let me = reply.json();
    // Go's `Agent().Self()` decodes into map[string]map[string]any: every value an object.
    for (key, value) in me.as_object().unwrap() {
        assert!(value.is_object(), "{key} is not an object: {value}");
    }
    for key in ["Config", "DebugConfig", "Member", "Stats", "Meta", "Coord"] {
        assert!(me.get(key).is_some(), "{key} missing: {me}");
    }
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    let name = me["Config"]["NodeName"].as_str().unwrap().to_owned();
    assert!(!name.is_empty());
    assert_eq!(me["Member"]["Name"], name);
    assert_eq!(me["Member"]["Addr"], "127.0.0.1");
    assert_eq!(me["Member"]["Status"], 1);
    assert_eq!(me["Member"]["Tags"]["dc"], "dc1");
    // What Patroni reads to adjust its session TTL: nanoseconds.
    assert_eq!(me["Config"]["SessionTTLMin"], 10_000_000_000u64);
    assert_eq!(me["Stats"]["consul"]["leader"], "true");

    let reply = node.send("GET", "/v1/agent/members", None).await;
    let members = reply.json();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members[0]["Name"], name);
    assert_eq!(members[0]["Status"], 1);

    let reply = node.send("GET", "/v1/catalog/datacenters", None).await;
    assert_eq!(reply.json(), json!(["dc1"]));

    // What is on the node: the registered instances and the node's checks.
    let upstream = Upstream::start("api").await;
    let reply = register(
        &node,
        json!({"name": "api", "id": "api-1", "address": "127.0.0.1",
               "port": upstream.addr.port(), "tags": ["v1"],
               "check": {"ttl": "1m", "status": "passing"}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let reply = node
        .send("GET", &format!("/v1/catalog/node/{name}"), None)
        .await;
    let index = read_index(&reply);
    let listed = reply.json();
    assert_eq!(listed["Node"]["Node"], name);
    assert_eq!(listed["Node"]["Datacenter"], "dc1");
    assert_eq!(listed["Services"]["api-1"]["Service"], "api");
    assert_eq!(listed["Services"]["api-1"]["Tags"], json!(["v1"]));
    assert!(listed["Services"]["api-1"]["ModifyIndex"].as_u64().unwrap() > 0);

    let reply = node
        .send("GET", &format!("/v1/catalog/node-services/{name}"), None)
        .await;
    read_index(&reply);
    let list = reply.json();
    assert_eq!(list["Node"]["Node"], name);
    assert_eq!(list["Services"][0]["ID"], "api-1");

    let reply = node
        .send("GET", &format!("/v1/health/node/{name}"), None)
        .await;
    read_index(&reply);
    let ids: Vec<String> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["serfHealth", "service:api-1"]);

    // An unknown node, as Consul answers one.
    let reply = node.send("GET", "/v1/catalog/node/nowhere", None).await;
    assert_eq!((reply.status, reply.json()), (200, Value::Null));
    read_index(&reply);
    let reply = node
        .send("GET", "/v1/catalog/node-services/nowhere", None)
        .await;
    assert_eq!(reply.json(), json!({"Node": null, "Services": []}));
    let reply = node.send("GET", "/v1/health/node/nowhere", None).await;
    assert_eq!(reply.json(), json!([]));

    // A blocking read of the node wakes when what is on it changes.
    let waiter = {
        let path = format!("/v1/catalog/node/{name}?index={index}&wait=20s");
        let client = node.client.clone();
        let url = format!("{}{path}", node.api);
        tokio::spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await })
    };
    let reply = register(&node, json!({"name": "other", "port": 9})).await;
    assert_eq!(reply.status, 200);
    let woken = waiter.await.unwrap().unwrap();
    assert!(woken["Services"].get("other").is_some(), "{woken}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_update_sets_status_and_output_of_ttl_checks_only() {
    let node = TestNode::start().await;
    let reply = register(
        &node,
        json!({"name": "worker", "check": {"ttl": "1m"},
               "checks": [{"id": "probe", "tcp": "127.0.0.1:9", "interval": "1h"}]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Go's `UpdateTTL`: the status and output in the body, keys in any case.
    let reply = node
        .send(
            "PUT",
            "/v1/agent/check/update/service:worker:1",
            Some(r#"{"Status": "warning", "Output": "disk 91% full"}"#),
        )
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    let check = &checks["service:worker:1"];
    assert_eq!(check["Status"], "warning");
    assert_eq!(check["Output"], "disk 91% full");

    let reply = node
        .send(
            "PUT",
            "/v1/agent/check/update/service:worker:1",
            Some(r#"{"status": "passing"}"#),
        )
        .await;
    assert_eq!(reply.status, 200);
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    assert_eq!(checks["service:worker:1"]["Status"], "passing");
    assert_eq!(checks["service:worker:1"]["Output"], "");

    for (path, body, status, message) in [
        (
            "/v1/agent/check/update/service:worker:1",
            r#"{"Status": "fine"}"#,
            400,
            "Invalid check status: 'fine'",
        ),
        (
            "/v1/agent/check/update/service:worker:1",
            r#"{"Status": "passing", "Note": "x"}"#,
            400,
            "Request decode failed",
        ),
        (
            "/v1/agent/check/update/probe",
            r#"{"Status": "passing"}"#,
            500,
            "does not have associated TTL",
        ),
        (
            "/v1/agent/check/update/nope",
            r#"{"Status": "passing"}"#,
            500,
            "does not have associated TTL",
        ),
    ] {
        let reply = node.send("PUT", path, Some(body)).await;
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.body);
        assert!(
            reply.body.contains(message),
            "{path} {body}: {}",
            reply.body
        );
    }
    // Nothing refused changed anything.
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    assert_eq!(checks["service:worker:1"]["Status"], "passing");
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_mode_fails_an_instance_or_the_whole_node_until_it_ends() {
    let node = TestNode::start().await;
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    for (id, upstream) in [("web-1", &one), ("web-2", &two)] {
        let reply = register(
            &node,
            json!({"name": "web", "id": id, "address": "127.0.0.1",
                   "port": upstream.addr.port()}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let both = BTreeSet::from(["web-1".to_owned(), "web-2".to_owned()]);
    assert_eq!(passing(&node, "web").await, both);

    // Refused: no `enable`, a bad one, an unknown instance; the method Consul uses is PUT.
    for (path, status, message) in [
        (
            "/v1/agent/service/maintenance/web-1",
            400,
            "Missing value for enable",
        ),
        (
            "/v1/agent/service/maintenance/web-1?enable=maybe",
            400,
            "Invalid value for ?enable",
        ),
        (
            "/v1/agent/service/maintenance/nope?enable=true",
            404,
            "Unknown service ID \"nope\"",
        ),
        ("/v1/agent/maintenance", 400, "Missing value for enable"),
    ] {
        let reply = node.send("PUT", path, None).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (status, message),
            "{path}"
        );
    }
    assert_eq!(passing(&node, "web").await, both);

    let reply = node
        .send(
            "PUT",
            "/v1/agent/service/maintenance/web-1?enable=true&reason=upgrading",
            None,
        )
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    assert_eq!(
        passing(&node, "web").await,
        BTreeSet::from(["web-2".to_owned()])
    );
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    let check = &checks["_service_maintenance:web-1"];
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["Notes"], "upgrading");
    assert_eq!(check["Type"], "maintenance");
    assert_eq!(check["ServiceID"], "web-1");
    assert_eq!(check["Name"], "Service Maintenance Mode");
    // A maintenance check cannot be reported on like a TTL check.
    let reply = node
        .send(
            "PUT",
            "/v1/agent/check/pass/_service_maintenance:web-1",
            None,
        )
        .await;
    assert_eq!(reply.status, 500);
    // The gateway sends nothing to it.
    for _ in 0..4 {
        let reply = node.call("web", "/").await;
        assert!(reply.body.starts_with("two "), "{}", reply.body);
    }
    // The agent's summary: 503 and "maintenance" for it, the worst for the name.
    let reply = node
        .send("GET", "/v1/agent/health/service/id/web-1", None)
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["AggregatedStatus"], "maintenance");
    assert_eq!(reply.json()["Service"]["ID"], "web-1");
    let reply = node
        .send("GET", "/v1/agent/health/service/id/web-2?format=text", None)
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "passing"));
    let reply = node
        .send("GET", "/v1/agent/health/service/name/web?format=text", None)
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (503, "maintenance"));
    let reply = node
        .send("GET", "/v1/agent/health/service/name/web", None)
        .await;
    assert_eq!(reply.json().as_array().unwrap().len(), 2);
    let reply = node
        .send("GET", "/v1/agent/health/service/name/nope", None)
        .await;
    assert_eq!(reply.status, 404);

    let reply = node
        .send(
            "PUT",
            "/v1/agent/service/maintenance/web-1?enable=false",
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(passing(&node, "web").await, both);
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    assert!(
        checks.get("_service_maintenance:web-1").is_none(),
        "{checks}"
    );

    // The node in maintenance fails every instance on it, with the default reason.
    let reply = node
        .send("PUT", "/v1/agent/maintenance?enable=true", None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(passing(&node, "web").await, BTreeSet::new());
    let reply = node
        .send("GET", "/v1/health/service/web", None)
        .await
        .json();
    let check_ids: Vec<&str> = reply[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(check_ids, ["serfHealth", "_node_maintenance"]);
    assert!(
        reply[0]["Checks"][1]["Notes"]
            .as_str()
            .unwrap()
            .contains("no reason was provided"),
        "{reply}"
    );
    let reply = node.call("web", "/").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let name = node_name(&node).await;
    let reply = node
        .send("GET", &format!("/v1/health/node/{name}"), None)
        .await;
    assert!(reply.body.contains("_node_maintenance"), "{}", reply.body);

    let reply = node
        .send("PUT", "/v1/agent/maintenance?enable=false", None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(passing(&node, "web").await, both);
    assert_eq!(node.call("web", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_paths_shoal_does_not_serve_get_consuls_plain_404() {
    let node = TestNode::start().await;
    for path in [
        "/v1/event/list",
        "/v1/coordinate/nodes",
        "/v1/operator/raft/configuration",
        "/v1/acl/tokens",
        "/v1/query",
        "/v1/connect/intentions",
        "/v1/agent/nope",
    ] {
        let reply = node.send("GET", path, None).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(
            reply.body, "Invalid URL path: not a recognized HTTP API endpoint",
            "{path}"
        );
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_keep_what_they_match_and_refuse_what_they_cannot_read() {
    let node = TestNode::start().await;
    for (id, tags, env, status) in [
        ("web-1", vec!["v1", "primary"], "prod", "passing"),
        ("web-2", vec!["v2"], "prod", "critical"),
        ("web-3", vec!["v1"], "staging", "passing"),
    ] {
        let reply = register(
            &node,
            json!({"name": "web", "id": id, "address": "127.0.0.1", "port": 9, "tags": tags,
                   "meta": {"env": env}, "check": {"ttl": "1h", "status": status, "id": format!("{id}-ttl")}}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = register(&node, json!({"name": "db", "port": 5432, "tags": ["v1"]})).await;
    assert_eq!(reply.status, 200);
    let filter = |expr: &str| form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>();
    let ids = |value: &Value, field: &str| -> BTreeSet<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item.pointer(field).unwrap().as_str().unwrap().to_owned())
            .collect()
    };
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| (*s).to_owned()).collect() };

    // Catalog instances: by meta and tags, with and, or, not and parentheses.
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/catalog/service/web?filter={}",
                filter(
                    "ServiceMeta.env == prod and (v1 in ServiceTags or ServiceTags contains v2)"
                )
            ),
            None,
        )
        .await;
    read_index(&reply);
    assert_eq!(ids(&reply.json(), "/ServiceID"), set(&["web-1", "web-2"]));
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/catalog/service/web?filter={}",
                filter("not ServiceID matches \"-[12]$\"")
            ),
            None,
        )
        .await;
    assert_eq!(ids(&reply.json(), "/ServiceID"), set(&["web-3"]));
    // Health entries: through the checks' list, and the service's fields.
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/health/service/web?filter={}",
                filter("Checks.Status == critical or Service.Meta.env != prod")
            ),
            None,
        )
        .await;
    assert_eq!(ids(&reply.json(), "/Service/ID"), set(&["web-2", "web-3"]));
    // Names: those with an instance the filter keeps, as Consul 1.14+ answers.
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/catalog/services?filter={}",
                filter("ServiceMeta.env == staging")
            ),
            None,
        )
        .await;
    assert_eq!(reply.json(), json!({"web": ["v1"]}));
    // The agent's listings, by ID.
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/agent/services?filter={}",
                filter("Service == db or \"primary\" in Tags")
            ),
            None,
        )
        .await;
    let listed: BTreeSet<String> = reply.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(listed, set(&["db", "web-1"]));
    let reply = node
        .send(
            "GET",
            &format!("/v1/agent/checks?filter={}", filter("Status == critical")),
            None,
        )
        .await;
    let listed: BTreeSet<String> = reply.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(listed, set(&["web-2-ttl"]));
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/health/state/any?filter={}",
                filter("ServiceName == web and Status != passing")
            ),
            None,
        )
        .await;
    assert_eq!(ids(&reply.json(), "/CheckID"), set(&["web-2-ttl"]));
    let name = node_name(&node).await;
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/catalog/nodes?filter={}",
                filter(&format!("Node == \"{name}\""))
            ),
            None,
        )
        .await;
    assert_eq!(reply.json().as_array().unwrap().len(), 1);
    let reply = node
        .send(
            "GET",
            &format!(
                "/v1/catalog/nodes?filter={}",
                filter("Meta is not empty and Node == x")
            ),
            None,
        )
        .await;
    assert_eq!(reply.json(), json!([]));

    // Refused, naming what shoal cannot read; never ignored.
    for (path, message) in [
        (
            "/v1/catalog/service/web?filter=Servicemeta.env%20%3D%3D%20prod",
            "Selector \"Servicemeta.env\" is not valid",
        ),
        (
            "/v1/health/service/web?filter=Checks%20%3D%3D%20x",
            "Checks is not a single value",
        ),
        (
            "/v1/agent/services?filter=Port%20%3D%3D%20http",
            "failed to coerce value \"http\"",
        ),
        (
            "/v1/kv/k?filter=Key%20%3D%3D%20k",
            "?filter is not supported on this endpoint",
        ),
    ] {
        let reply = node.send("GET", path, None).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert!(reply.body.contains(message), "{path}: {}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_registered_through_the_catalog_are_discovered_and_routed_to() {
    let node = TestNode::start().await;
    let upstream = Upstream::start("external").await;
    // What consul-esm or Terraform send for a machine that runs no agent.
    let body = json!({
        "Node": "ext-db", "Address": "127.0.0.1", "NodeMeta": {"external-node": "true"},
        "Service": {"ID": "pg-1", "Service": "pg", "Port": upstream.addr.port(), "Tags": ["primary"]},
        "Checks": [
            {"CheckID": "pg-alive", "Name": "pg alive", "ServiceID": "pg-1", "Status": "passing",
             "Definition": {"HTTP": "http://127.0.0.1:1/", "Interval": "10s"}},
            {"CheckID": "disk", "Name": "disk", "Status": "passing"},
        ],
    });
    let reply = node
        .send("PUT", "/v1/catalog/register", Some(&body.to_string()))
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "true"));

    let nodes = node.send("GET", "/v1/catalog/nodes", None).await.json();
    let ext = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Node"] == "ext-db")
        .unwrap_or_else(|| panic!("{nodes}"));
    assert_eq!(ext["Meta"], json!({"external-node": "true"}));
    let reply = node
        .send(
            "GET",
            "/v1/catalog/nodes?node-meta=external-node:true",
            None,
        )
        .await;
    assert_eq!(reply.json().as_array().unwrap().len(), 1);
    let entry = &node
        .send("GET", "/v1/catalog/service/pg", None)
        .await
        .json()[0];
    assert_eq!(
        (entry["Node"].as_str(), entry["Address"].as_str()),
        (Some("ext-db"), Some("127.0.0.1"))
    );
    // No serfHealth: its node's checks, then its own, as registered.
    let health = node
        .send("GET", "/v1/health/service/pg?passing", None)
        .await
        .json();
    let ids: Vec<&str> = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["disk", "pg-alive"]);
    let reply = node.call("pg", "/q").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "external /q /pg")
    );
    // An agent lists only what was registered through it; Serf's members are shoal nodes.
    assert_eq!(
        node.send("GET", "/v1/agent/services", None).await.json(),
        json!({})
    );
    let members = node.send("GET", "/v1/agent/members", None).await.json();
    assert_eq!(members.as_array().unwrap().len(), 1);
    let on_node = node
        .send("GET", "/v1/catalog/node/ext-db", None)
        .await
        .json();
    assert_eq!(on_node["Services"]["pg-1"]["Port"], upstream.addr.port());

    // Its registrant reports the state: critical takes it out of `?passing` and the routes.
    let body = json!({"Node": "ext-db", "Address": "127.0.0.1", "SkipNodeUpdate": true,
                      "Check": {"CheckID": "disk", "Name": "disk", "Status": "critical", "Notes": "full"}});
    let reply = node
        .send("PUT", "/v1/catalog/register", Some(&body.to_string()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        node.send("GET", "/v1/health/service/pg?passing", None)
            .await
            .json(),
        json!([])
    );
    assert_eq!(node.call("pg", "/").await.status, 503);
    // The instance is still there: re-registering the node kept it.
    assert_eq!(
        node.send("GET", "/v1/catalog/service/pg", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // SkipNodeUpdate adds a check without touching the node's meta; a check naming an
    // instance registered earlier stays that instance's when another is registered with it.
    let body = json!({"Node": "ext-db", "Address": "10.9.9.9", "SkipNodeUpdate": true,
                      "Service": {"ID": "pg-2", "Service": "pg-replica", "Port": 1},
                      "Checks": [{"CheckID": "pg-1-lag", "Name": "lag", "ServiceID": "pg-1", "Status": "passing"}]});
    let reply = node
        .send("PUT", "/v1/catalog/register", Some(&body.to_string()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let on_node = node
        .send("GET", "/v1/catalog/node/ext-db", None)
        .await
        .json();
    assert_eq!(on_node["Node"]["Meta"], json!({"external-node": "true"}));
    assert_eq!(on_node["Node"]["Address"], "127.0.0.1");
    let checks = node.send("GET", "/v1/health/checks/pg", None).await.json();
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["CheckID"] == "pg-1-lag" && c["ServiceID"] == "pg-1"),
        "{checks}"
    );

    // Refused, and nothing written.
    let reply = register(
        &node,
        json!({"name": "local", "check": {"ttl": "1h", "id": "local-alive"}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let name = node_name(&node).await;
    for (path, body, message) in [
        (
            "/v1/catalog/register",
            json!({"Address": "1.2.3.4"}),
            "Missing node name",
        ),
        (
            "/v1/catalog/register",
            json!({"Node": "x"}),
            "Missing node address",
        ),
        (
            "/v1/catalog/register",
            json!({"Node": name, "Address": "1.2.3.4"}),
            "is a shoal node",
        ),
        (
            "/v1/catalog/register",
            json!({"Node": "x", "Address": "1.2.3.4", "Check": {"CheckID": "c", "ServiceID": "pg-1"}}),
            "is not an instance of node \"x\"",
        ),
        (
            "/v1/catalog/register",
            json!({"Node": "x", "Address": "1.2.3.4", "Service": {"ID": "pg-1", "Service": "pg"}}),
            "ID \"pg-1\" is registered on node \"ext-db\"",
        ),
        (
            "/v1/catalog/register",
            json!({"Node": "x", "Address": "1.2.3.4", "Check": {"Name": "c", "Status": "fine"}}),
            "Invalid check status",
        ),
        (
            "/v1/catalog/register",
            json!({"Node": "x", "Address": "1.2.3.4", "Check": {"CheckID": "local-alive", "Status": "passing"}}),
            "CheckID \"local-alive\" is registered on node",
        ),
        ("/v1/catalog/deregister", json!({}), "Missing node name"),
        (
            "/v1/catalog/deregister",
            json!({"Node": name}),
            "is a shoal node",
        ),
    ] {
        let reply = node.send("PUT", path, Some(&body.to_string())).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(reply.body.contains(message), "{body}: {}", reply.body);
    }
    assert!(
        node.send("GET", "/v1/catalog/node/x", None)
            .await
            .json()
            .is_null()
    );

    // Deregistering a check, an instance, then the node with what is left.
    let deregister = |body: Value| {
        let body = body.to_string();
        let node = &node;
        async move {
            node.send("PUT", "/v1/catalog/deregister", Some(&body))
                .await
        }
    };
    assert_eq!(
        deregister(json!({"Node": "ext-db", "CheckID": "disk"}))
            .await
            .body,
        "true"
    );
    assert_eq!(
        node.send("GET", "/v1/health/service/pg?passing", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        deregister(json!({"Node": "ext-db", "ServiceID": "pg-1"}))
            .await
            .body,
        "true"
    );
    assert_eq!(
        node.send("GET", "/v1/catalog/service/pg", None)
            .await
            .json(),
        json!([])
    );
    assert_eq!(deregister(json!({"Node": "ext-db"})).await.body, "true");
    assert!(
        node.send("GET", "/v1/catalog/node/ext-db", None)
            .await
            .json()
            .is_null()
    );
    // What is left: this node's own, and the check of the instance its agent registered.
    let left = node.send("GET", "/v1/health/state/any", None).await.json();
    let left: BTreeSet<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(left, BTreeSet::from(["local-alive", "serfHealth"]));
}
