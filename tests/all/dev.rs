//! The developer loop with the real binary and the real cargo: `shoal new` writes a project
//! that builds (offline, from what the guests' build fetched), `shoal dev` deploys it and
//! prints its URL and log, serves every edit as a new revision, and keeps the revision
//! serving when an edit does not build, printing the compiler's error.

use std::process::Stdio;
use std::time::Duration;

use shoal_tests::{TestNode, shoal_bin};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

fn shoal_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(shoal_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running shoal")
}

/// Reads `lines` until one contains `needle`, within `limit`; every line read is kept.
async fn until_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    needle: &str,
    limit: Duration,
) {
    let found = tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await.expect("reading shoal dev") {
            seen.push(line.clone());
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "shoal dev never printed {needle:?}; it printed:\n{}",
        seen.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_then_dev_serves_every_edit_and_keeps_serving_through_a_broken_one() {
    let node = TestNode::start().await;
    let dir = tempfile::tempdir().unwrap();

    let created = shoal_in(dir.path(), &["new", "hello"]);
    assert!(created.status.success(), "{created:?}");
    assert!(dir.path().join("hello/src/lib.rs").exists());
    let again = shoal_in(dir.path(), &["new", "hello"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = shoal_in(dir.path(), &["new", "Hello_World"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid name"));
    let unknown = shoal_in(dir.path(), &["new", "x", "--template", "cobol"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("rust-http"));

    let mut dev = tokio::process::Command::new(shoal_bin())
        .args(["dev", "hello", "--api", &node.api])
        .current_dir(dir.path())
        // Everything the template needs is in cargo's cache once the guests are built.
        .env("CARGO_NET_OFFLINE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting shoal dev");
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut stderr = dev.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut seen = Vec::new();
    let build = Duration::from_secs(300);
    until_line(&mut lines, &mut seen, "hello revision 1 serves", build).await;
    let reply = node.call("hello", "/first").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello from hello\n")
    );
    // The guest's log follows in shoal dev's output.
    until_line(&mut lines, &mut seen, "stderr: /first", build).await;

    let source = dir.path().join("hello/src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, text.replace("hello from hello", "hello again")).unwrap();
    until_line(&mut lines, &mut seen, "hello revision 2 serves", build).await;
    let reply = node.call("hello", "/").await;
    assert_eq!(reply.body, "hello again\n");

    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, format!("{text}\nfn broken( {{\n")).unwrap();
    until_line(
        &mut lines,
        &mut seen,
        "build failed: hello revision 2 still serves",
        build,
    )
    .await;
    let reply = node.call("hello", "/").await;
    assert_eq!(reply.body, "hello again\n", "the last good revision serves");

    dev.kill().await.unwrap();
    let errors = errors.await.unwrap();
    assert!(
        errors.contains("error"),
        "cargo's error was shown: {errors}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_starts_a_node_when_none_answers_and_serves_a_cgi_project() {
    let dir = tempfile::tempdir().unwrap();
    let created = shoal_in(dir.path(), &["new", "hi", "--template", "rust-cgi"]);
    assert!(created.status.success(), "{created:?}");
    // An address nothing listens on: shoal dev starts a node there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let mut dev = tokio::process::Command::new(shoal_bin())
        .args([
            "dev",
            "hi",
            "--api",
            &api,
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .env("CARGO_NET_OFFLINE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting shoal dev");
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let build = Duration::from_secs(300);
    until_line(&mut lines, &mut seen, "started a node", build).await;
    until_line(&mut lines, &mut seen, "hi revision 1 serves", build).await;
    let url = seen
        .last()
        .and_then(|line| line.split_whitespace().last())
        .unwrap()
        .to_owned();
    let reply = reqwest::get(&url).await.unwrap();
    assert_eq!(reply.status(), 200, "{url}");
    assert_eq!(reply.text().await.unwrap(), "hello from hi\n");
    assert!(dir.path().join("hi/.shoal/node.log").exists());
    // The node it started goes with it, at Ctrl-C.
    let interrupt = std::process::Command::new("kill")
        .args(["-INT", &dev.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let exited = tokio::time::timeout(Duration::from_secs(10), dev.wait()).await;
    assert!(exited.is_ok_and(|status| status.unwrap().success()));
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while reqwest::get(format!("{api}/v1/node")).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the node shoal dev started still answers");
}
