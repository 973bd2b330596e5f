//! One test per guest in `guests/`, named after it (a guest without a test does not
//! compile, see the bottom of this file). Each test drives the guest through the
//! gateway and checks the outcome a caller sees, including every fault the guest
//! exists to cause, and that the node keeps serving afterwards.

use guest_artifacts::*;
use shoal_tests::{TestNode, json};

/// After a fault, another service on the same node still answers.
async fn still_serving(node: &TestNode) {
    node.deploy("canary", HELLO_HTTP, json!({})).await;
    let reply = node.call("canary", "/").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello from wasm\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_http() {
    let node = TestNode::start().await;
    let service = node.deploy("hello", HELLO_HTTP, json!({})).await;
    assert_eq!(service["kind"], "http");
    let reply = node.call("hello", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert_eq!(reply.body, "hello from wasm\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_http() {
    let bytes = guest_artifacts::bytes(LARGE_HTTP);
    assert!(bytes.len() > 3 << 20, "{} bytes is not large", bytes.len());
    let node = TestNode::start().await;
    node.deploy("large", LARGE_HTTP, json!({})).await;
    let first = node.call("large", "/").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.starts_with("large "), "{}", first.body);
    // Every function ran, the same way every time.
    assert_eq!(node.call("large", "/").await.body, first.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_http() {
    let node = TestNode::start().await;
    node.deploy("echo", ECHO_HTTP, json!({})).await;
    let response = node
        .client
        .post(format!("{}/echo/a/b?x=1&y=2", node.gateway))
        .header("x-one", "1")
        .header("content-type", "text/plain")
        .body("ping")
        .send()
        .await
        .unwrap();
    let reply = shoal_tests::Reply::from(response).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/a/b");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["body"], "ping");
    assert_eq!(echo["body_len"], 4);
    let headers = echo["headers"].as_array().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_owned())
    };
    assert_eq!(header("x-one").as_deref(), Some("1"));
    assert_eq!(header("x-forwarded-prefix").as_deref(), Some("/echo"));

    // A body over the service's limit is refused before the guest runs.
    node.deploy("small", ECHO_HTTP, json!({ "max_request_body": "1Ki" }))
        .await;
    let response = node
        .client
        .post(format!("{}/small/", node.gateway))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    let reply = shoal_tests::Reply::from(response).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.kind.as_deref(), Some("request-too-large"));
    assert!(reply.error().contains("1024"), "{}", reply.error());
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_http() {
    let node = TestNode::start().await;
    node.deploy(
        "busy",
        BUSY_HTTP,
        json!({ "fuel": 50_000_000, "timeout": "30s" }),
    )
    .await;
    // A bounded loop within the budget finishes.
    let reply = node.call("busy", "/?iterations=1000").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "done 1000"));
    // An endless one runs out of fuel: 503 naming the budget.
    let reply = node.call("busy", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.kind.as_deref(), Some("out-of-fuel"));
    assert!(reply.error().contains("50000000"), "{}", reply.error());

    // With fuel to spare, the wall clock stops it: 504.
    node.deploy(
        "spin",
        BUSY_HTTP,
        json!({ "fuel": 1_000_000_000_000_u64, "timeout": "300ms" }),
    )
    .await;
    let reply = node.call("spin", "/").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.kind.as_deref(), Some("timeout"));
    assert!(reply.error().contains("300ms"), "{}", reply.error());
    still_serving(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alloc_http() {
    let node = TestNode::start().await;
    node.deploy("alloc", ALLOC_HTTP, json!({ "memory": "32Mi" }))
        .await;
    let reply = node.call("alloc", "/?mb=8").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "allocated 8 MiB")
    );
    let reply = node.call("alloc", "/?mb=64").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.kind.as_deref(), Some("memory-limit"));
    assert!(
        reply.error().contains(&(32u64 << 20).to_string()),
        "{}",
        reply.error()
    );
    // The next request gets a fresh instance and succeeds again.
    let reply = node.call("alloc", "/?mb=8").await;
    assert_eq!(reply.status, 200);
    still_serving(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_http() {
    let node = TestNode::start().await;
    node.deploy("trap", TRAP_HTTP, json!({})).await;
    let reply = node.call("trap", "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.kind.as_deref(), Some("trap"));
    assert!(reply.error().contains("unreachable"), "{}", reply.error());
    let reply = node.call("trap", "/return").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.kind.as_deref(), Some("trap"));
    assert!(
        reply
            .error()
            .contains("the guest returned without setting a response"),
        "{}",
        reply.error()
    );
    still_serving(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sleep_http() {
    let node = TestNode::start().await;
    node.deploy("sleep", SLEEP_HTTP, json!({ "timeout": "500ms" }))
        .await;
    let reply = node.call("sleep", "/?ms=10").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 10 ms"));
    // Sleeping in the host (not burning fuel, not running wasm) still times out.
    let reply = node.call("sleep", "/?ms=5000").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.kind.as_deref(), Some("timeout"));
    assert!(reply.error().contains("500ms"), "{}", reply.error());
    still_serving(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http() {
    // A server on loopback that the guest must not reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/", listener.local_addr().unwrap());
    let node = TestNode::start().await;
    node.deploy("outbound", OUTBOUND_HTTP, json!({})).await;
    let reply = node
        .call("outbound", &format!("/?url={}", urlencode(&target)))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.starts_with("denied:"), "{}", reply.body);
    assert!(reply.body.contains("HttpRequestDenied"), "{}", reply.body);
    // Nothing ever connected.
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(50), listener.accept()).await;
    assert!(accepted.is_err(), "the guest reached the network");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_cgi() {
    let node = TestNode::start().await;
    let service = node.deploy("hello-cgi", HELLO_CGI, json!({})).await;
    assert_eq!(service["kind"], "cgi");
    let reply = node.call("hello-cgi", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert_eq!(reply.body, "hello from cgi\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_cgi() {
    let node = TestNode::start().await;
    node.deploy("echo", ECHO_CGI, json!({})).await;
    let response = node
        .client
        .post(format!(
            "{}/echo/some%20where/deep?status=201&location=%2Fnext",
            node.gateway
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-custom", "yes")
        .body("a=1&b=2")
        .send()
        .await
        .unwrap();
    let reply = shoal_tests::Reply::from(response).await;
    // Status wins over the 302 that Location implies; Location is passed through.
    assert_eq!(reply.status, 201);
    assert_eq!(reply.headers["location"], "/next");
    // Both cookies, in order (WAGI kept only one).
    let cookies: Vec<_> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    let echo = reply.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["script_name"], "/echo");
    assert_eq!(echo["path_info"], "/some where/deep");
    assert_eq!(echo["query"], "status=201&location=%2Fnext");
    // CONTENT_TYPE comes from the Content-Type header (WAGI left it empty).
    assert_eq!(echo["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(echo["content_length"], "7");
    assert_eq!(echo["body"], "a=1&b=2");
    assert_eq!(echo["headers"]["HTTP_X_CUSTOM"], "yes");
    assert_eq!(
        echo["args"],
        json!(["echo", "status=201", "location=%2Fnext"])
    );

    // A body over the limit is refused, whether or not it announces its length.
    node.deploy("small", ECHO_CGI, json!({ "max_request_body": "1Ki" }))
        .await;
    let announced = node
        .client
        .post(format!("{}/small/", node.gateway))
        .body(vec![b'x'; 2048]);
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024])));
    let streamed = node
        .client
        .post(format!("{}/small/", node.gateway))
        .body(reqwest::Body::wrap_stream(chunks));
    for request in [announced, streamed] {
        let reply = shoal_tests::Reply::from(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 413);
        assert_eq!(reply.kind.as_deref(), Some("request-too-large"));
    }

    // Location alone redirects with 302.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/echo/?location=%2Fthere", node.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/there");

    // Routed by Host: no prefix, the whole path.
    let response = node
        .client
        .get(format!("{}/by/host", node.gateway))
        .header("host", "echo.localhost")
        .send()
        .await
        .unwrap();
    let echo = shoal_tests::Reply::from(response).await.json();
    assert_eq!(echo["script_name"], "");
    assert_eq!(echo["path_info"], "/by/host");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_cgi() {
    // This process has PATH; the guest must see none of the host's variables.
    assert!(std::env::var_os("PATH").is_some());
    let node = TestNode::start().await;
    let digest = node
        .upload(guest_artifacts::bytes(ENV_CGI))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["digest"]
        .clone();
    let spec = json!({ "module": digest, "env": { "GREETING": "hi" }, "args": ["--flag"] });
    assert_eq!(node.put_service("env", &spec).await.status(), 201);
    let reply = node.call("env", "/?q").await;
    assert_eq!(reply.status, 200);
    let probe = reply.json();
    let env = probe["env"].as_object().unwrap();
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["REQUEST_METHOD"], "GET");
    for host_var in ["PATH", "HOME", "USER", "CARGO", "RUST_BACKTRACE"] {
        assert!(
            !env.contains_key(host_var),
            "the guest sees the host's {host_var}"
        );
    }
    assert_eq!(probe["args"], json!(["env", "--flag", "q"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_cgi() {
    let node = TestNode::start().await;
    node.deploy("fs", FS_CGI, json!({})).await;
    let reply = node.call("fs", "/").await;
    assert_eq!(reply.status, 200);
    let probe = reply.json();
    for (op, outcome) in probe.as_object().unwrap() {
        assert!(
            outcome.as_str().unwrap().starts_with("error"),
            "{op} should fail in the sandbox: {outcome}"
        );
    }
    assert_eq!(probe.as_object().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn flood_cgi() {
    let node = TestNode::start().await;
    node.deploy(
        "flood",
        FLOOD_CGI,
        json!({ "max_response": "1Mi", "max_stderr": "1Ki" }),
    )
    .await;
    // Under the limit, the body arrives whole.
    let reply = node.call("flood", "/?bytes=1000").await;
    assert_eq!((reply.status, reply.body.len()), (200, 1000));
    // Over it: 502 naming the limit, not a truncated 200.
    let reply = node.call("flood", "/?bytes=4194304").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.kind.as_deref(), Some("response-too-large"));
    assert!(
        reply.error().contains(&(1u64 << 20).to_string()),
        "{}",
        reply.error()
    );
    // A flood of stderr is cut for the log, and the request still succeeds.
    let reply = node.call("flood", "/?bytes=10&stderr=4194304").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "xxxxxxxxxx"));
    still_serving(&node).await;

    // Many floods: the service's log keeps its newest MiB, no more.
    node.deploy(
        "flood",
        FLOOD_CGI,
        json!({ "max_response": "1Mi", "max_stderr": "64Ki" }),
    )
    .await;
    for _ in 0..40 {
        let reply = node.call("flood", "/?bytes=1&stderr=65536").await;
        assert_eq!(reply.status, 200);
    }
    let log = node.send("GET", "/v1/services/flood/logs", None).await;
    assert_eq!(log.status, 200);
    let size = log.body.len();
    assert!(
        (512 << 10..(1 << 20) + (64 << 10)).contains(&size),
        "40 floods of 64 KiB left {size} bytes of log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_cgi() {
    let node = TestNode::start().await;
    node.deploy("garbage", GARBAGE_CGI, json!({})).await;
    for (mode, expected) in [
        ("", "before the blank line"),
        ("no-blank", "before the blank line"),
        ("bad-status", "invalid Status"),
        ("no-headers", "has no ':'"),
    ] {
        let reply = node.call("garbage", &format!("/?mode={mode}")).await;
        assert_eq!(reply.status, 502, "mode {mode}");
        assert_eq!(reply.kind.as_deref(), Some("bad-cgi-output"), "mode {mode}");
        assert!(
            reply.error().contains(expected),
            "mode {mode}: {}",
            reply.error()
        );
    }
    still_serving(&node).await;
}

/// Uploads `guest` and PUTs a spec made of `extra` plus the module.
async fn deploy_spec(
    node: &TestNode,
    name: &str,
    guest: &str,
    extra: serde_json::Value,
) -> shoal_tests::Reply {
    let digest = node
        .upload(guest_artifacts::bytes(guest))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["digest"]
        .clone();
    let mut spec = json!({ "module": digest });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    shoal_tests::Reply::from(node.put_service(name, &spec).await).await
}

/// `reuse` keeps an instance (and its state) across requests; `per-request` does not.
#[tokio::test(flavor = "multi_thread")]
async fn counter_http() {
    let node = TestNode::start().await;
    assert_eq!(
        deploy_spec(&node, "fresh", COUNTER_HTTP, json!({}))
            .await
            .status,
        201
    );
    let extra = json!({ "isolation": "reuse", "max_requests": 3, "scale": { "max": 1 } });
    assert_eq!(
        deploy_spec(&node, "kept", COUNTER_HTTP, extra).await.status,
        201
    );
    let mut fresh = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..5 {
        fresh.push(node.call("fresh", "/").await.body);
        kept.push(node.call("kept", "/").await.body);
    }
    assert_eq!(fresh, ["1", "1", "1", "1", "1"]);
    // Recycled after max_requests.
    assert_eq!(kept, ["1", "2", "3", "1", "2"]);

    // After a trap the instance is dropped, never reused, and the next request succeeds.
    let reply = node.call("kept", "/?trap").await;
    assert_eq!((reply.status, reply.kind.as_deref()), (502, Some("trap")));
    assert_eq!(node.call("kept", "/").await.body, "1");
    assert_eq!(node.call("kept", "/").await.body, "2");

    // CGI commands cannot be reused.
    let reply = deploy_spec(&node, "cgi", HELLO_CGI, json!({ "isolation": "reuse" })).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("reuse needs a wasi:http component"),
        "{}",
        reply.error()
    );
}

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
guest_artifacts::foreach_guest!(assert_test_exists);
