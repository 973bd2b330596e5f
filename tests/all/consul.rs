//! The Consul-compatible agent, catalog and status endpoints, spoken to the way Consul
//! clients speak: lowercase keys, no Content-Type, tokens in three places. Each rule of
//! `../shared/reference/consul-and-kubernetes-wire.md` that these endpoints follow has an
//! assertion here; KV, blocking queries, checks and routing have their own modules.

use serde_json::Value;
use shoal_tests::{Reply, TestNode, json};

/// Asserts the headers every catalog, health and KV read carries, and returns the index.
pub(crate) fn read_index(reply: &Reply) -> u64 {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing on {} {}", reply.status, reply.body))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("x-consul-knownleader"), "true");
    assert_eq!(header("x-consul-lastcontact"), "0");
    let index: u64 = header("x-consul-index").parse().unwrap();
    assert!(index > 0, "X-Consul-Index is never 0");
    index
}

pub(crate) async fn register(node: &TestNode, body: Value) -> Reply {
    node.send("PUT", "/v1/agent/service/register", Some(&body.to_string()))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_registration_and_what_discovery_returns() {
    let node = TestNode::start().await;
    // What py-consul sends for the seed's
    // `agent.service.register("my-service", address="127.0.0.1", port=8080, tags=["my-tag"])`.
    let reply = register(
        &node,
        json!({"name": "my-service", "address": "127.0.0.1", "port": 8080, "tags": ["my-tag"], "checks": [null]}),
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));

    let services = node.send("GET", "/v1/agent/services", None).await.json();
    assert_eq!(
        services["my-service"],
        json!({
            "ID": "my-service", "Service": "my-service", "Tags": ["my-tag"], "Meta": {},
            "Port": 8080, "Address": "127.0.0.1", "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": false, "Datacenter": "dc1",
        })
    );

    let reply = node.send("GET", "/v1/catalog/services", None).await;
    read_index(&reply);
    assert_eq!(reply.json(), json!({"my-service": ["my-tag"]}));

    let reply = node
        .send("GET", "/v1/catalog/service/my-service", None)
        .await;
    read_index(&reply);
    let entries = reply.json();
    assert_eq!(entries.as_array().unwrap().len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["ServiceID"], "my-service");
    assert_eq!(entry["ServiceAddress"], "127.0.0.1");
    assert_eq!(entry["ServicePort"], 8080);
    assert_eq!(entry["ServiceTags"], json!(["my-tag"]));
    assert_eq!(entry["Datacenter"], "dc1");
    assert!(entry["CreateIndex"].as_u64().unwrap() > 0);

    // No checks: the instance passes, and the node's own check is there.
    let reply = node
        .send("GET", "/v1/health/service/my-service?passing=1", None)
        .await;
    read_index(&reply);
    let health = reply.json();
    assert_eq!(health.as_array().unwrap().len(), 1);
    assert_eq!(health[0]["Service"]["ID"], "my-service");
    assert_eq!(health[0]["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(health[0]["Node"]["Datacenter"], "dc1");

    // Unknown names are empty, with the index headers.
    for path in ["/v1/catalog/service/nope", "/v1/health/service/nope"] {
        let reply = node.send("GET", path, None).await;
        assert_eq!((reply.status, reply.json()), (200, json!([])), "{path}");
        read_index(&reply);
    }

    let nodes = node.send("GET", "/v1/catalog/nodes", None).await;
    read_index(&nodes);
    assert_eq!(nodes.json().as_array().unwrap().len(), 1);
    assert_eq!(
        node.send("GET", "/v1/status/leader", None).await.json(),
        json!("127.0.0.1:8300")
    );
    assert_eq!(
        node.send("GET", "/v1/status/peers", None).await.json(),
        json!(["127.0.0.1:8300"])
    );

    let reply = node
        .send("PUT", "/v1/agent/service/deregister/my-service", None)
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    // Deregistering what is not there is a no-op, as in Consul.
    let reply = node
        .send("PUT", "/v1/agent/service/deregister/my-service", None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        node.send("GET", "/v1/agent/services", None).await.json(),
        json!({})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_decoded_as_consul_decodes_them() {
    let node = TestNode::start().await;
    // Any case, snake_case aliases, `Check` and `Checks`, durations as strings or nanoseconds.
    let reply = register(
        &node,
        json!({
            "NAME": "web", "Id": "web-1", "address": "10.0.0.5", "port": 80,
            "meta": {"Version": "1"}, "enable_tag_override": true,
            "tagged_addresses": {"lan": {"address": "10.0.0.5", "port": 80}},
            "weights": {"passing": 3, "warning": 1},
            "check": {"ttl": "15s", "Notes": "first"},
            "Checks": [
                {"TTL": 30_000_000_000u64, "name": "second"},
                {"tcp": "127.0.0.1:9", "interval": "1h", "deregister_critical_service_after": "90m"},
            ],
        }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let service = node.send("GET", "/v1/agent/service/web-1", None).await;
    assert_eq!(service.status, 200);
    let service = service.json();
    assert_eq!(
        service["Meta"],
        json!({"Version": "1"}),
        "meta keys are data"
    );
    assert_eq!(service["EnableTagOverride"], true);
    assert_eq!(service["Weights"], json!({"Passing": 3, "Warning": 1}));
    assert_eq!(
        service["TaggedAddresses"],
        json!({"lan": {"Address": "10.0.0.5", "Port": 80}})
    );
    assert!(service["ContentHash"].is_string());

    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    let ids: Vec<&String> = checks.as_object().unwrap().keys().collect();
    assert_eq!(
        ids,
        ["service:web-1:1", "service:web-1:2", "service:web-1:3"]
    );
    let first = &checks["service:web-1:1"];
    assert_eq!(
        (
            &first["Name"],
            &first["Notes"],
            &first["Status"],
            &first["Type"]
        ),
        (
            &json!("Service 'web' check"),
            &json!("first"),
            &json!("critical"),
            &json!("ttl")
        )
    );
    assert_eq!(checks["service:web-1:2"]["Name"], "second");
    assert_eq!(checks["service:web-1:3"]["Interval"], "1h0m0s");

    // A single check is `service:{id}`.
    let reply = register(&node, json!({"name": "api", "check": {"ttl": "10s"}})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    assert_eq!(checks["service:api"]["ServiceID"], "api");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_consuls_status_and_message_and_stores_nothing() {
    let node = TestNode::start().await;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": ",
            400,
            "Request decode failed: ",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "[]",
            400,
            "Request decode failed: ",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"port\": 80}",
            400,
            "Missing service name",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "",
            400,
            "Missing service name",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"colour\": \"red\"}",
            400,
            "Request decode failed: json: unknown field \"colour\"",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"ttl\": \"1s\", \"colour\": 1}}",
            400,
            "Request decode failed: json: unknown field \"colour\"",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"address\": \"0.0.0.0\"}",
            400,
            "Invalid service address",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"address\": \"::\"}",
            400,
            "Invalid service address",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"port\": 70000}",
            400,
            "Request decode failed: ",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"ttl\": \"10\"}}",
            400,
            "Request decode failed: time: missing unit",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"ttl\": \"10s\", \"interval\": \"1s\"}}",
            400,
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"http\": \"http://127.0.0.1/\"}}",
            400,
            "Invalid check: Interval must be > 0",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"args\": [\"/bin/true\"], \"interval\": \"1s\"}}",
            400,
            "Invalid check: script checks are disabled",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"address\": \"10.0.0.5\", \"check\": {\"http\": \"http://10.9.9.9/\", \"interval\": \"1s\"}}",
            400,
            "Invalid check: HTTP check target \"10.9.9.9\" is not the instance's address",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"notes\": \"no kind\"}}",
            400,
            "Invalid check: Must provide TTL",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"http\": \"https://127.0.0.1/\", \"interval\": \"1s\"}}",
            400,
            "Invalid check: HTTPS checks are not supported",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"check\": {\"grpc\": \"127.0.0.1:9\", \"interval\": \"1s\"}}",
            400,
            "Invalid check: GRPC checks are not supported",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"connect\": {\"native\": true}}",
            400,
            "Connect (service mesh) is not supported",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"kind\": \"connect-proxy\"}",
            400,
            "service kind \"connect-proxy\" is not supported",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            "{\"name\": \"x\", \"namespace\": \"team-a\"}",
            400,
            "namespace \"team-a\": namespaces and partitions are a Consul Enterprise feature",
        ),
        (
            "GET",
            "/v1/agent/services?filter=Service%20%3E%20web",
            "",
            400,
            "Failed to create boolean expression evaluator: unsupported operator \">\"",
        ),
        (
            "PUT",
            "/v1/agent/check/register",
            "{\"ttl\": \"1s\"}",
            400,
            "Missing check name",
        ),
        (
            "PUT",
            "/v1/agent/check/register",
            "{\"name\": \"c\", \"ttl\": \"1s\", \"service_id\": \"nope\"}",
            400,
            "ServiceID \"nope\" does not exist",
        ),
        (
            "PUT",
            "/v1/agent/check/pass/nope",
            "",
            500,
            "CheckID \"nope\" does not have associated TTL",
        ),
        (
            "PUT",
            "/v1/agent/check/deregister/nope",
            "",
            404,
            "Unknown check ID \"nope\"",
        ),
        (
            "GET",
            "/v1/agent/service/nope",
            "",
            404,
            "unknown service ID: nope",
        ),
        (
            "GET",
            "/v1/catalog/services?wait=soon&index=1",
            "",
            400,
            "Invalid wait time",
        ),
        (
            "GET",
            "/v1/catalog/services?index=-3",
            "",
            400,
            "Invalid index",
        ),
        (
            "GET",
            "/v1/health/service/x?index=abc",
            "",
            400,
            "Invalid index",
        ),
        (
            "GET",
            "/v1/health/service/x?passing=maybe",
            "",
            400,
            "Invalid value for ?passing",
        ),
        (
            "GET",
            "/v1/health/state/sideways",
            "",
            400,
            "Invalid check state",
        ),
        (
            "GET",
            "/v1/catalog/services?dc=elsewhere",
            "",
            500,
            "No path to datacenter",
        ),
        (
            "GET",
            "/v1/catalog/services?stale&consistent",
            "",
            400,
            "Cannot specify ?stale with ?consistent",
        ),
        ("GET", "/v1/agent/nonsense", "", 404, "Invalid URL path"),
    ];
    for (method, path, body, status, message) in cases {
        let reply = node.send(method, path, Some(body)).await;
        assert_eq!(
            reply.status, *status,
            "{method} {path} {body}: {}",
            reply.body
        );
        assert!(
            reply.body.starts_with(message),
            "{method} {path} {body}: {:?} does not start with {message:?}",
            reply.body
        );
        let content_type = reply.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }
    assert_eq!(
        node.send("GET", "/v1/agent/services", None).await.json(),
        json!({})
    );
    assert_eq!(
        node.send("GET", "/v1/agent/checks", None).await.json(),
        json!({})
    );
    // Agent endpoints answer 405 for a wrong method, as Consul does.
    let reply = node.send("GET", "/v1/agent/service/register", None).await;
    assert_eq!(reply.status, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_register_report_and_deregister() {
    let node = TestNode::start().await;
    assert_eq!(
        register(
            &node,
            json!({"name": "web", "id": "web-1", "address": "127.0.0.1", "port": 1})
        )
        .await
        .status,
        200
    );
    let reply = node
        .send(
            "PUT",
            "/v1/agent/check/register",
            Some(r#"{"name": "mem", "id": "mem", "service_id": "web-1", "ttl": "1m", "status": "warning"}"#),
        )
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    let check = &node.send("GET", "/v1/agent/checks", None).await.json()["mem"];
    assert_eq!(
        (&check["Status"], &check["ServiceName"]),
        (&json!("warning"), &json!("web"))
    );

    for (verb, status) in [
        ("fail", "critical"),
        ("warn", "warning"),
        ("pass", "passing"),
    ] {
        let reply = node
            .send(
                "PUT",
                &format!("/v1/agent/check/{verb}/mem?note=said+{verb}"),
                None,
            )
            .await;
        assert_eq!((reply.status, reply.body.as_str()), (200, ""));
        let check = &node.send("GET", "/v1/agent/checks", None).await.json()["mem"];
        assert_eq!(check["Status"], status);
        assert_eq!(check["Output"], format!("said {verb}"));
    }

    let critical = node.send("GET", "/v1/health/state/critical", None).await;
    read_index(&critical);
    assert_eq!(critical.json(), json!([]));
    let passing = node
        .send("GET", "/v1/health/state/passing", None)
        .await
        .json();
    let ids: Vec<&str> = passing
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["serfHealth", "mem"]);
    let any = node.send("GET", "/v1/health/state/any", None).await.json();
    assert_eq!(any.as_array().unwrap().len(), 2);
    let checks = node.send("GET", "/v1/health/checks/web", None).await;
    read_index(&checks);
    assert_eq!(checks.json()[0]["CheckID"], "mem");

    // A check of the node itself, not of a service.
    let reply = node
        .send(
            "PUT",
            "/v1/agent/check/register",
            Some(r#"{"Name": "disk", "TTL": "1m"}"#),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        node.send("GET", "/v1/agent/checks", None).await.json()["disk"]["ServiceID"],
        ""
    );

    let reply = node
        .send("PUT", "/v1/agent/check/deregister/mem", None)
        .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    let reply = node.send("PUT", "/v1/agent/check/pass/mem", None).await;
    assert_eq!(reply.status, 500);

    // Deregistering a service takes its checks along.
    register(&node, json!({"name": "api", "check": {"ttl": "1m"}})).await;
    node.send("PUT", "/v1/agent/service/deregister/api", None)
        .await;
    let checks = node.send("GET", "/v1/agent/checks", None).await.json();
    let ids: Vec<&String> = checks.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["disk"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_existing_checks_drops_the_ones_left_out() {
    let node = TestNode::start().await;
    let two = json!({"name": "web", "checks": [{"ttl": "1m", "checkid": "a"}, {"ttl": "1m", "checkid": "b"}]});
    let one = json!({"name": "web", "checks": [{"ttl": "1m", "checkid": "a"}]});
    register(&node, two).await;
    register(&node, one.clone()).await;
    let ids = |checks: Value| {
        checks
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(node.send("GET", "/v1/agent/checks", None).await.json()),
        ["a", "b"]
    );
    let reply = node
        .send(
            "PUT",
            "/v1/agent/service/register?replace-existing-checks=true",
            Some(&one.to_string()),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        ids(node.send("GET", "/v1/agent/checks", None).await.json()),
        ["a"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_and_passing_filter_instances() {
    let node = TestNode::start().await;
    for (id, tags, status) in [
        ("a", json!(["blue", "v1"]), "passing"),
        ("b", json!(["green", "v1"]), "passing"),
        ("c", json!(["blue"]), "warning"),
    ] {
        let reply = register(
            &node,
            json!({"name": "web", "id": id, "tags": tags, "check": {"ttl": "1m", "status": status}}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let ids = |entries: Value, key: &str| -> Vec<String> {
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                if key == "ServiceID" {
                    e[key].as_str().unwrap().to_owned()
                } else {
                    e["Service"]["ID"].as_str().unwrap().to_owned()
                }
            })
            .collect()
    };
    let get = |path: &'static str| {
        let node = &node;
        async move { node.send("GET", path, None).await.json() }
    };
    assert_eq!(
        ids(get("/v1/catalog/service/web?tag=blue").await, "ServiceID"),
        ["a", "c"]
    );
    assert_eq!(
        ids(
            get("/v1/catalog/service/web?tag=blue&tag=v1").await,
            "ServiceID"
        ),
        ["a"]
    );
    assert_eq!(
        ids(get("/v1/health/service/web").await, "Service"),
        ["a", "b", "c"]
    );
    // `passing` drops any instance with a check not passing, warning included.
    assert_eq!(
        ids(get("/v1/health/service/web?passing").await, "Service"),
        ["a", "b"]
    );
    assert_eq!(
        ids(get("/v1/health/service/web?passing=false").await, "Service"),
        ["a", "b", "c"]
    );
    assert_eq!(
        ids(
            get("/v1/health/service/web?passing=1&tag=blue").await,
            "Service"
        ),
        ["a"]
    );
    let services = get("/v1/catalog/services").await;
    assert_eq!(services, json!({"web": ["blue", "green", "v1"]}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_read_from_three_places_and_required() {
    let node = TestNode::start_with(|config| config.token = Some("s3cret".into())).await;
    let path = "/v1/agent/service/register";
    let body = r#"{"name": "web"}"#;
    let url = format!("{}{path}", node.api);

    let missing = Reply::from(node.client.put(&url).body(body).send().await.unwrap()).await;
    assert_eq!(missing.status, 403);
    assert!(
        missing.body.starts_with("Permission denied"),
        "{}",
        missing.body
    );
    let wrong = Reply::from(
        node.client
            .put(&url)
            .header("X-Consul-Token", "nope")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((wrong.status, wrong.body.as_str()), (403, "ACL not found"));

    let header = node
        .client
        .put(&url)
        .header("X-Consul-Token", "s3cret")
        .body(body);
    let bearer = node.client.put(&url).bearer_auth("s3cret").body(body);
    let query = node.client.put(format!("{url}?token=s3cret")).body(body);
    for request in [header, bearer, query] {
        let reply = Reply::from(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reads = Reply::from(
        node.client
            .get(format!("{}/v1/kv/x?token=s3cret", node.api))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reads.status, 404);
    read_index(&reads);
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_services_are_in_the_catalog_with_their_replicas_as_instances() {
    let node = TestNode::start().await;
    let upload = node
        .upload(guest_artifacts::bytes(guest_artifacts::HELLO_HTTP))
        .await;
    let digest = upload.json::<Value>().await.unwrap()["digest"].clone();
    let reply = node
        .put_service(
            "hello",
            &json!({"module": digest, "scale": {"min": 2, "max": 4}}),
        )
        .await;
    assert_eq!(reply.status(), 201);

    let services = node.send("GET", "/v1/catalog/services", None).await.json();
    assert_eq!(services, json!({"hello": ["wasm"]}));
    let entries = node
        .send("GET", "/v1/catalog/service/hello?tag=wasm", None)
        .await
        .json();
    let gateway = node.gateway.trim_start_matches("http://");
    let (host, port) = gateway.rsplit_once(':').unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 2);
    for entry in entries.as_array().unwrap() {
        assert_eq!(entry["ServiceAddress"], host);
        assert_eq!(entry["ServicePort"], port.parse::<u16>().unwrap());
        assert_eq!(entry["ServiceMeta"]["shoal-kind"], "wasm");
        assert_eq!(entry["ServiceMeta"]["shoal-path"], "/hello/");
        assert_eq!(entry["ServiceMeta"]["shoal-module"], digest);
    }
    let health = node
        .send("GET", "/v1/health/service/hello?passing", None)
        .await
        .json();
    let ids: Vec<&str> = health
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hello-1", "hello-2"]);
    assert_eq!(health[0]["Checks"][1]["Status"], "passing");

    // Reaching it the way the catalog says: the address, with the path prefix.
    let url = format!(
        "http://{}:{}{}",
        entries[0]["ServiceAddress"].as_str().unwrap(),
        entries[0]["ServicePort"],
        entries[0]["ServiceMeta"]["shoal-path"].as_str().unwrap()
    );
    let reply = Reply::from(node.client.get(url).send().await.unwrap()).await;
    assert_eq!(reply.status, 200);

    // One name, one owner: a registration cannot take a wasm service's name, nor the reverse.
    let reply = register(&node, json!({"name": "hello", "port": 1})).await;
    assert_eq!(reply.status, 409);
    assert!(
        reply.body.contains("taken by a wasm service"),
        "{}",
        reply.body
    );
    assert_eq!(
        register(&node, json!({"name": "web", "port": 1}))
            .await
            .status,
        200
    );
    let taken = node.put_service("web", &json!({"module": digest})).await;
    assert_eq!(taken.status(), 409);
    assert_eq!(
        taken.headers()["x-shoal-error"].to_str().unwrap(),
        "name-taken"
    );
    assert_eq!(node.get("/v1/services/web").await.0, 404);
}
