//! CPU limits through fuel, measured honestly: the node runs as a child process and
//! its CPU time comes from `/proc`. This is a test binary of its own because cargo
//! runs test binaries one after another: nothing else in the suite competes for the
//! cores while it measures a share of one.

use std::time::{Duration, Instant};

use guest_artifacts::BUSY_HTTP;
use serde_json::{Value, json};
use shoal_tests::{ChildNode, Reply};

/// CPU time (user + system) of a process, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// Runs an endless loop on `service` until its timeout and returns the share of one
/// core the node used meanwhile.
async fn core_share(node: &ChildNode, service: &str) -> f64 {
    let pid = node.child.id().unwrap();
    let before = cpu_time(pid);
    let started = Instant::now();
    let reply = Reply::from(
        reqwest::get(format!("{}/{service}/", node.gateway))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    (cpu_time(pid) - before).as_secs_f64() / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_limits_hold_a_busy_loop_to_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start(dir.path()).await;
    let client = reqwest::Client::new();
    let upload = client
        .post(format!("{}/v1/modules", node.api))
        .body(guest_artifacts::bytes(BUSY_HTTP));
    let digest = upload.send().await.unwrap().json::<Value>().await.unwrap()["digest"].clone();
    let limits = json!({ "fuel": 1_000_000_000_000_000_u64, "timeout": "2s" });
    for (name, resources) in [
        ("limited", json!({ "limits": { "cpu": "250m" } })),
        ("unlimited", json!({})),
    ] {
        let spec = json!({ "module": digest, "limits": limits, "resources": resources });
        let response = client
            .put(format!("{}/v1/services/{name}", node.api))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    // The median of three runs: one run on a shared machine can be skewed by whatever else
    // the host does in those two seconds.
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(core_share(&node, "limited").await);
    }
    runs.sort_by(f64::total_cmp);
    let limited = runs[1];
    let unlimited = core_share(&node, "unlimited").await;
    eprintln!("core share: 250m {runs:.3?} (median {limited:.3}), unlimited {unlimited:.3}");
    assert!(
        (0.15..=0.35).contains(&limited),
        "250m used {limited:.2} of a core"
    );
    assert!(
        unlimited > 0.6 && unlimited > 2.0 * limited,
        "unlimited used {unlimited:.2} of a core"
    );
    node.kill9().await;
}
