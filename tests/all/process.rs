//! The real `shoal` binary as a child process: killed with SIGKILL after acknowledged
//! changes, restarted on the same data directory, it gives the same answers without
//! compiling anything; and the CLI drives it the way a person would.

use std::process::Output;

use guest_artifacts::*;
use serde_json::Value;
use shoal_tests::{ChildNode, Reply, json, shoal_bin};

async fn get(url: String) -> Reply {
    Reply::from(reqwest::get(url).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_kill_9_without_recompiling() {
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(dir.path()).await;
    let client = reqwest::Client::new();
    for (name, guest) in [("hello", HELLO_HTTP), ("echo", ECHO_CGI)] {
        let url = format!("{}/v1/deploy/{name}?memory=32Mi", node.api);
        let response = client
            .post(url)
            .body(guest_artifacts::bytes(guest))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let before_hello = get(format!("{}/hello/", node.gateway)).await;
    let before_echo = get(format!("{}/echo/p?q=1", node.gateway)).await;
    assert_eq!(before_hello.status, 200);
    node.kill9().await;

    let node = ChildNode::start(dir.path()).await;
    let info = get(format!("{}/v1/node", node.api)).await.json();
    assert_eq!(info["services"], 2);
    assert_eq!(
        info["compile"]["compiled"], 0,
        "a restart must not recompile: {info}"
    );
    assert_eq!(info["compile"]["cache_hits"], 2);
    let service = get(format!("{}/v1/services/echo", node.api)).await.json();
    assert_eq!(service["cached"], true);
    assert_eq!(service["spec"]["limits"]["memory"], "32Mi");
    let after_hello = get(format!("{}/hello/", node.gateway)).await;
    let after_echo = get(format!("{}/echo/p?q=1", node.gateway)).await;
    assert_eq!(
        (after_hello.status, &after_hello.body),
        (before_hello.status, &before_hello.body)
    );
    // The echo names the gateway's port in HTTP_HOST, which changed; all else is equal.
    let strip = |mut echo: Value| {
        echo["headers"].as_object_mut().unwrap().remove("HTTP_HOST");
        echo
    };
    assert_eq!(strip(after_echo.json()), strip(before_echo.json()));
    node.kill9().await;
}

fn shoal(api: &str, args: &[&str]) -> Output {
    std::process::Command::new(shoal_bin())
        .args(args)
        .env("SHOAL_API", api)
        .env_remove("SHOAL_TOKEN")
        .output()
        .expect("running shoal")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "shoal failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(dir.path()).await;
    let api = node.api.clone();
    let run = move |args: Vec<&'static str>| {
        let api = api.clone();
        async move {
            tokio::task::spawn_blocking(move || shoal(&api, &args))
                .await
                .unwrap()
        }
    };

    let deployed = stdout(
        &run(vec![
            "deploy", ECHO_CGI, "--name", "echo", "--memory", "16Mi", "--env", "A=1",
        ])
        .await,
    );
    assert!(deployed.contains("deployed echo revision 1"), "{deployed}");
    let table = stdout(&run(vec!["ls"]).await);
    assert!(
        table.contains("NAME") && table.contains("echo") && table.contains("16Mi"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&stdout(&run(vec!["ls", "--json"]).await)).unwrap();
    assert_eq!(listed[0]["name"], "echo");
    let inspected: Value =
        serde_json::from_str(&stdout(&run(vec!["inspect", "echo"]).await)).unwrap();
    assert_eq!(inspected["spec"]["env"], json!({ "A": "1" }));
    let called: Value = serde_json::from_str(&stdout(
        &run(vec!["call", "echo", "/x", "-X", "PUT", "-d", "body"]).await,
    ))
    .unwrap();
    assert_eq!(
        (called["method"].as_str(), called["path_info"].as_str()),
        (Some("PUT"), Some("/x"))
    );
    assert_eq!(called["body"], "body");
    let modules = stdout(&run(vec!["modules"]).await);
    assert!(modules.contains("cgi"), "{modules}");

    // Scaling from the command line: bounds, the table of numbers, the events.
    let scaled = stdout(&run(vec!["scale", "echo", "--min", "2", "--max", "3"]).await);
    assert!(scaled.contains("echo: min 2 max 3"), "{scaled}");
    let ps = stdout(&run(vec!["ps"]).await);
    let row = ps
        .lines()
        .find(|line| line.trim_start().starts_with("echo"))
        .unwrap_or_else(|| panic!("{ps}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[1..5],
        ["2", "2", "2", "3"],
        "REPLICAS DESIRED MIN MAX in {ps}"
    );
    // The CPU its guests used: the calls above took some.
    let header: Vec<&str> = ps.lines().next().unwrap().split_whitespace().collect();
    let cpu_sec = header.iter().position(|h| *h == "CPU-SEC").unwrap();
    assert_eq!(header.last(), Some(&"NODES"), "{ps}");
    // A node alone runs every replica: "{its name}:2".
    assert!(columns.last().unwrap().ends_with(":2"), "NODES in {ps}");
    let used: f64 = columns[cpu_sec].parse().unwrap();
    assert!(used > 0.0, "CPU-SEC in {ps}");
    let statuses: Value = serde_json::from_str(&stdout(&run(vec!["ps", "--json"]).await)).unwrap();
    assert_eq!(statuses[0]["replicas"]["current"], 2);
    let events = stdout(&run(vec!["events", "echo"]).await);
    assert!(
        events.contains("REASON") && events.contains("min replicas"),
        "{events}"
    );
    let failed = run(vec!["scale", "echo", "--min", "5"]).await;
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr)
            .contains("scale.min: must not exceed scale.max (3)")
    );

    // Back to the spec before the scale, as a new revision.
    let rolled = stdout(&run(vec!["rollback", "echo"]).await);
    assert!(
        rolled.contains("echo: rolled back, now at revision 3"),
        "{rolled}"
    );
    let inspected: Value =
        serde_json::from_str(&stdout(&run(vec!["inspect", "echo"]).await)).unwrap();
    assert_ne!(inspected["spec"]["scale"]["max"], 3, "{inspected}");

    // Failures: non-zero exit, one line on stderr naming the problem.
    let failed = run(vec!["inspect", "ghost"]).await;
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("service \"ghost\" not found"), "{stderr}");
    let failed = run(vec!["deploy", "/nonexistent.wasm", "--name", "x"]).await;
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("/nonexistent.wasm"));

    assert!(stdout(&run(vec!["rm", "echo"]).await).contains("deleted echo"));
    assert_eq!(stdout(&run(vec!["ls", "--json"]).await).trim(), "[]");
    node.kill9().await;
}

#[test]
fn refuses_a_public_api_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(shoal_bin())
        .args(["up", "--api-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("SHOAL_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
    // Nothing was created: flags are checked before anything is opened.
    assert!(!dir.path().join("shoal.redb").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = ChildNode::start(dir.path()).await;
    let client = reqwest::Client::new();
    let deploy = client
        .post(format!("{}/v1/deploy/sleep", node.api))
        .body(guest_artifacts::bytes(SLEEP_HTTP));
    assert_eq!(deploy.send().await.unwrap().status(), 201);
    let in_flight = tokio::spawn(reqwest::get(format!("{}/sleep/?ms=300", node.gateway)));
    while get(format!("{}/v1/node", node.api)).await.json()["in_flight"] != 1 {
        tokio::task::yield_now().await;
    }
    let pid = node.child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let reply = Reply::from(in_flight.await.unwrap().unwrap()).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 300 ms"));
    let status = node.child.wait().await.unwrap();
    assert!(status.success(), "shoal exited with {status} after SIGTERM");
}

#[test]
fn the_node_log_has_no_colour_codes_unless_stderr_is_a_terminal() {
    use std::io::{BufRead as _, Read as _};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(shoal_bin())
        .args([
            "up",
            "--api-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("SHOAL_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("api http://"), "{ready}");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(log.contains("INFO"), "the node logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}
