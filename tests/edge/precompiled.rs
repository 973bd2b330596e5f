//! `shoal compile --target` on this machine, installed on a runtime-only node: authenticated
//! (the token) and checked (target, engine, the digest the code claims, its checksum).

use std::path::Path;

use serde_json::json;

use super::*;

pub(super) const TOKEN: &str = "edge-secret";

pub(super) fn with_token() -> Vec<String> {
    vec!["--token".into(), TOKEN.into()]
}

pub(super) async fn send(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut request = reqwest::Client::new().request(method, url).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Reply::from(request.send().await.unwrap()).await
}

/// Runs the native full build's `shoal compile` on `guest` for `target`; the package's bytes.
pub(super) fn compile_for(guest: &str, target: &str, out: &Path) -> Vec<u8> {
    let output = std::process::Command::new(compile_bin())
        .args(["--json", "compile"])
        .arg(guest)
        .args(["--target", target, "-o"])
        .arg(out)
        .output()
        .expect("running shoal compile");
    assert!(
        output.status.success(),
        "shoal compile --target {target}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["target"], target, "{report}");
    std::fs::read(out).unwrap()
}

/// The other architecture shoal is tested on: code for it cannot run here.
fn other_target(target: &str) -> &'static str {
    if target.starts_with("aarch64") {
        "x86_64-unknown-linux-gnu"
    } else {
        "aarch64-unknown-linux-gnu"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_only_node_installs_what_shoal_compile_made_for_it_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut edge = ChildNode::start_with(&edge_bin(), dir.path(), &with_token()).await;
    let api = edge.api.clone();
    let info = send(
        reqwest::Method::GET,
        format!("{api}/v1/node"),
        Some(TOKEN),
        vec![],
    )
    .await
    .json();
    let target = info["target"].as_str().unwrap().to_owned();
    let hello = compile_for(HELLO_HTTP, &target, &out.path().join("hello.cwasm"));
    let echo = compile_for(ECHO_CGI, &target, &out.path().join("echo.cwasm"));
    let foreign = compile_for(
        HELLO_HTTP,
        other_target(&target),
        &out.path().join("foreign.cwasm"),
    );
    let modules = format!("{api}/v1/modules");
    let listed = || async {
        send(reqwest::Method::GET, modules.clone(), Some(TOKEN), vec![])
            .await
            .json()
    };

    // Without the token: refused before anything is read into the node.
    let reply = send(reqwest::Method::POST, modules.clone(), None, hello.clone()).await;
    assert_eq!(reply.status, 401, "{}", reply.body);

    // Compiled for the other architecture: refused, naming both targets.
    let reply = send(
        reqwest::Method::POST,
        modules.clone(),
        Some(TOKEN),
        foreign.clone(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.kind.as_deref(), Some("precompiled-refused"));
    assert!(
        reply.error().contains(other_target(&target))
            && reply.error().contains(&format!("--target {target}")),
        "{}",
        reply.error()
    );

    // Machine code altered after compiling: its checksum no longer matches.
    let mut altered = hello.clone();
    let last = altered.len() - 100;
    altered[last] ^= 0x01;
    let reply = send(reqwest::Method::POST, modules.clone(), Some(TOKEN), altered).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.error().contains("checksum"), "{}", reply.error());

    // Code that claims to be compiled from other wasm bytes than it carries.
    let text = String::from_utf8_lossy(&hello[..200]).into_owned();
    let digest_line = text.lines().nth(1).unwrap().to_owned();
    let forged_line = format!("digest sha256:{}", "0".repeat(64));
    assert_eq!(digest_line.len(), forged_line.len());
    let mut forged = hello.clone();
    let at = text.find(&digest_line).unwrap();
    forged[at..at + forged_line.len()].copy_from_slice(forged_line.as_bytes());
    let reply = send(reqwest::Method::POST, modules.clone(), Some(TOKEN), forged).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.error().contains("the code says it was compiled from"),
        "{}",
        reply.error()
    );
    assert_eq!(
        listed().await,
        json!([]),
        "a refused install stored something"
    );

    // With the token, the right target: installed, deployed, served; CGI through the
    // one-request deploy.
    let reply = send(
        reqwest::Method::POST,
        format!("{modules}?name=hello"),
        Some(TOKEN),
        hello.clone(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let digest = reply.json()["digest"].as_str().unwrap().to_owned();
    let spec = json!({ "module": digest, "limits": { "memory": "16Mi" } });
    let reply = Reply::from(
        reqwest::Client::new()
            .put(format!("{api}/v1/services/hello"))
            .bearer_auth(TOKEN)
            .json(&spec)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = send(
        reqwest::Method::POST,
        format!("{api}/v1/deploy/echo"),
        Some(TOKEN),
        echo,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let served = get(format!("{}/hello/", edge.gateway)).await;
    assert_eq!(
        (served.status, served.body.as_str()),
        (200, "hello from wasm\n")
    );
    let echoed = get(format!("{}/echo/p?q=1", edge.gateway)).await;
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    assert_eq!(echoed.json()["query"], "q=1", "{}", echoed.body);

    // Installing it again changes nothing.
    let reply = send(reqwest::Method::POST, modules.clone(), Some(TOKEN), hello).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A restart serves both from the cache: there is nothing else it could serve them from.
    edge.child.start_kill().unwrap();
    edge.child.wait().await.unwrap();
    edge = ChildNode::start_with(&edge_bin(), dir.path(), &with_token()).await;
    let served = get(format!("{}/hello/", edge.gateway)).await;
    assert_eq!(
        (served.status, served.body.as_str()),
        (200, "hello from wasm\n")
    );
    assert_eq!(get(format!("{}/echo/", edge.gateway)).await.status, 200);
    edge.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_token_takes_no_precompiled_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let edge = ChildNode::start_bin(&edge_bin(), dir.path()).await;
    let target = get(format!("{}/v1/node", edge.api)).await.json()["target"]
        .as_str()
        .unwrap()
        .to_owned();
    let hello = compile_for(HELLO_HTTP, &target, &out.path().join("hello.cwasm"));
    for url in [
        format!("{}/v1/modules", edge.api),
        format!("{}/v1/deploy/hello", edge.api),
    ] {
        let reply = post(url, hello.clone()).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(reply.kind.as_deref(), Some("precompiled-refused"));
        assert!(reply.error().contains("--token"), "{}", reply.error());
    }
    assert_eq!(
        get(format!("{}/v1/modules", edge.api)).await.json(),
        json!([])
    );
    assert_eq!(
        get(format!("{}/v1/services", edge.api)).await.json(),
        json!([])
    );
    edge.kill9().await;
}
