//! Sharing the CPU, measured honestly: the node runs as a child process, and what each service
//! got comes from the node's own CPU accounting (thread CPU time) or, for limits, from the
//! process's CPU time in `/proc`. This is a test binary of its own because cargo runs test
//! binaries one after another, and its tests take turns (`SERIAL`): nothing else in the suite
//! competes for the cores while one measures.
//!
//! The figures asserted are shares and ratios, with tolerances that hold on a loaded 2-core
//! machine; without the scheduler each would be far off (a spinning service with four times
//! as many requests as another takes four fifths of the CPU, whatever the weights).

use std::time::{Duration, Instant};

use guest_artifacts::BUSY_HTTP;
use serde_json::{Value, json};
use shoal_tests::{ChildNode, Reply, Upstream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// One test measures at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

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

/// A node with the busy guest uploaded, and a client for it.
struct Bench {
    node: ChildNode,
    client: reqwest::Client,
    digest: Value,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let node = ChildNode::start(dir.path()).await;
        let client = reqwest::Client::new();
        let upload = client
            .post(format!("{}/v1/modules", node.api))
            .body(guest_artifacts::bytes(BUSY_HTTP));
        let digest = upload.send().await.unwrap().json::<Value>().await.unwrap()["digest"].clone();
        Bench {
            node,
            client,
            digest,
            _dir: dir,
        }
    }

    /// Deploys the busy guest as `name`, with `spec` merged over the module.
    async fn deploy(&self, name: &str, mut spec: Value) {
        spec["module"] = self.digest.clone();
        let response = self
            .client
            .put(format!("{}/v1/services/{name}", self.node.api))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    async fn get(&self, path: &str) -> Value {
        let reply = Reply::from(
            self.client
                .get(format!("{}{path}", self.node.api))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.json()
    }

    /// CPU seconds the guests of `service` have used.
    async fn cpu_used(&self, service: &str) -> f64 {
        let status = self.get(&format!("/v1/services/{service}/status")).await;
        status["cpu"]["used_seconds"].as_f64().unwrap()
    }

    /// `clients` clients calling `path` on the gateway, each one request after another,
    /// until `until` (or the task is aborted); resolves to every status they got.
    fn load(&self, path: &str, clients: usize, until: Instant) -> JoinHandle<Vec<u16>> {
        let url = format!("{}{path}", self.node.gateway);
        let client = self.client.clone();
        tokio::spawn(async move {
            // Dropped with this task when it is aborted: the callers stop with it.
            let mut callers = tokio::task::JoinSet::new();
            for _ in 0..clients {
                let (url, client) = (url.clone(), client.clone());
                callers.spawn(async move {
                    let mut statuses = Vec::new();
                    while Instant::now() < until {
                        let response = client.get(&url).send().await.unwrap();
                        statuses.push(response.status().as_u16());
                        response.bytes().await.unwrap();
                    }
                    statuses
                });
            }
            let mut statuses = Vec::new();
            while let Some(caller) = callers.join_next().await {
                statuses.extend(caller.unwrap());
            }
            statuses
        })
    }

    /// Deploys `spinner` and keeps four times as many requests as cores spinning in it, until
    /// the task returned is aborted; returns once they have used a second of CPU.
    async fn spin_every_core(&self) -> JoinHandle<Vec<u16>> {
        let spinning_requests = 4 * cores();
        self.deploy("spinner", one_replica(spinning_requests, "10s", json!({})))
            .await;
        let until = Instant::now() + Duration::from_secs(30);
        let spinning = self.load("/spinner/", spinning_requests, until);
        while self.cpu_used("spinner").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        spinning
    }

    async fn stop(self) {
        self.node.kill9().await;
    }
}

/// A service with one replica that takes `concurrency` requests at once: its weight stays
/// what its one replica requests while it is measured.
fn one_replica(concurrency: usize, timeout: &str, resources: Value) -> Value {
    json!({
        "limits": { "fuel": 1_000_000_000_000_000_u64, "timeout": timeout },
        "resources": resources,
        "concurrency": concurrency,
        "scale": { "min": 1, "max": 1 },
    })
}

/// CPU seconds each of `services` used over `span`, after a second of warm-up under load.
async fn cpu_over(bench: &Bench, services: &[&str], span: Duration) -> Vec<f64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut before = Vec::new();
    for service in services {
        before.push(bench.cpu_used(service).await);
    }
    tokio::time::sleep(span).await;
    let mut used = Vec::new();
    for (service, before) in services.iter().zip(before) {
        used.push(bench.cpu_used(service).await - before);
    }
    used
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spinning_service_gets_its_fair_share_and_a_light_one_keeps_answering() {
    let _serial = SERIAL.lock().await;
    let bench = Bench::start().await;
    let spinning_requests = 4 * cores();
    bench
        .deploy("spinner", one_replica(spinning_requests, "2s", json!({})))
        .await;
    bench
        .deploy("light", one_replica(4 * cores(), "10s", json!({})))
        .await;
    let until = Instant::now() + Duration::from_secs(5);
    let spinning = bench.load("/spinner/", spinning_requests, until);
    // About a millisecond of computing per request, from twice as many clients as there are
    // cores: alone, it would keep every core busy, so it can use its whole share.
    let light = bench.load("/light/?iterations=300000", 2 * cores(), until);
    let used = cpu_over(&bench, &["spinner", "light"], Duration::from_secs(3)).await;
    let node = bench.get("/v1/node").await;
    let light_statuses = light.await.unwrap();
    spinning.abort();
    let spinner_share = used[0] / (used[0] + used[1]);
    eprintln!(
        "cpu seconds over 3 s: spinner {:.3}, light {:.3}: the spinner had {spinner_share:.2}; \
         light answered {} requests; node cpu {}",
        used[0],
        used[1],
        light_statuses.len(),
        node["cpu"]
    );
    assert!(
        light_statuses.iter().all(|status| *status == 200),
        "light answered {:?}",
        light_statuses
            .iter()
            .filter(|status| **status != 200)
            .collect::<Vec<_>>()
    );
    assert!(light_statuses.len() > 100, "{}", light_statuses.len());
    // Equal weights: half each. Without the scheduler the spinner takes about four fifths.
    assert!(
        (0.3..=0.65).contains(&spinner_share),
        "the spinner had {spinner_share:.2} of the guests' CPU"
    );
    // The node's own figures: its guests kept the cores busy between them.
    assert!(node["cpu"]["used_seconds"].as_f64().unwrap() > used[0] + used[1]);
    assert!(
        node["cpu"]["recent_cores"].as_f64().unwrap() > 0.0,
        "{node}"
    );
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_get_cpu_in_proportion_to_their_requests() {
    let _serial = SERIAL.lock().await;
    let bench = Bench::start().await;
    let requests = 2 * cores();
    for (name, cpu) in [("one", "250m"), ("three", "750m")] {
        let resources = json!({ "requests": { "cpu": cpu } });
        bench
            .deploy(name, one_replica(requests, "2s", resources))
            .await;
    }
    let until = Instant::now() + Duration::from_secs(5);
    let loads = [
        bench.load("/one/", requests, until),
        bench.load("/three/", requests, until),
    ];
    let used = cpu_over(&bench, &["one", "three"], Duration::from_secs(3)).await;
    let status = bench.get("/v1/services/three/status").await;
    for load in loads {
        load.abort();
    }
    let ratio = used[1] / used[0];
    eprintln!(
        "cpu seconds over 3 s: 250m {:.3}, 750m {:.3}: {ratio:.2}x; {}",
        used[0], used[1], status["cpu"]
    );
    assert_eq!(status["cpu"]["weight"], "750m");
    // Work-conserving: between them they had most of the cores (the rest goes to HTTP, the
    // client and whatever else the machine runs).
    let cores_used = (used[0] + used[1]) / 3.0;
    assert!(
        cores_used > 0.35 * cores() as f64,
        "the guests used {cores_used:.2} cores of {}",
        cores()
    );
    assert!(
        (2.0..=4.5).contains(&ratio),
        "750m got {ratio:.2}x what 250m got"
    );
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_timeout_fires_on_time_while_every_core_spins() {
    let _serial = SERIAL.lock().await;
    let bench = Bench::start().await;
    bench
        .deploy("short", one_replica(4, "300ms", json!({})))
        .await;
    let spinning = bench.spin_every_core().await;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = Reply::from(
            bench
                .client
                .get(format!("{}/short/", bench.node.gateway))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(reply.status, 504, "{}", reply.body);
        assert_eq!(reply.kind.as_deref(), Some("timeout"));
        assert!(
            took < Duration::from_millis(1300),
            "a 300ms timeout took {took:?}"
        );
    }
    spinning.abort();
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apis_and_the_gateway_answer_promptly_while_every_core_spins() {
    let _serial = SERIAL.lock().await;
    let bench = Bench::start().await;
    let upstream = Upstream::start("outside").await;
    let registration = json!({
        "Name": "outside",
        "Address": upstream.addr.ip().to_string(),
        "Port": upstream.addr.port(),
    });
    let registered = bench
        .client
        .put(format!("{}/v1/agent/service/register", bench.node.api))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    let spinning = bench.spin_every_core().await;
    let api = bench.node.api.clone();
    let gateway = bench.node.gateway.clone();
    let mut report = Vec::new();
    for (what, url) in [
        ("management", format!("{api}/v1/node")),
        ("management", format!("{api}/v1/services/spinner/status")),
        ("consul", format!("{api}/v1/agent/services")),
        ("consul", format!("{api}/v1/catalog/service/outside")),
        ("consul", format!("{api}/v1/health/service/outside")),
        (
            "gateway to a registered service",
            format!("{gateway}/outside/x"),
        ),
    ] {
        let mut took = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let response = bench.client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            response.bytes().await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        report.push(format!("{what} {url}: median {:?}", took[took.len() / 2]));
        // Before the scheduler, a request waited behind the guests' slices: a median of
        // about 130 ms with twice as many spinning requests as cores.
        assert!(
            took[took.len() / 2] < Duration::from_millis(50),
            "{what} {url}: {took:?}"
        );
    }
    eprintln!("{}", report.join("\n"));
    spinning.abort();
    upstream.stop().await;
    bench.stop().await;
}

/// Runs an endless loop on `path` until its service's timeout and returns the share of one
/// core the node used meanwhile.
async fn core_share(bench: &Bench, path: &str) -> f64 {
    let pid = bench.node.child.id().unwrap();
    let before = cpu_time(pid);
    let started = Instant::now();
    let reply = Reply::from(
        reqwest::get(format!("{}{path}", bench.node.gateway))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    (cpu_time(pid) - before).as_secs_f64() / started.elapsed().as_secs_f64()
}

/// The median of three runs: one run on a shared machine can be skewed by whatever else the
/// host does in those two seconds.
async fn median_core_share(bench: &Bench, path: &str) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(core_share(bench, path).await);
    }
    runs.sort_by(f64::total_cmp);
    eprintln!("core share of {path}: {runs:.3?}");
    runs[1]
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_limits_hold_whatever_the_guest_calls() {
    let _serial = SERIAL.lock().await;
    let bench = Bench::start().await;
    let limits = json!({ "fuel": 1_000_000_000_000_000_u64, "timeout": "2s" });
    for (name, resources) in [
        ("limited", json!({ "limits": { "cpu": "250m" } })),
        ("unlimited", json!({})),
    ] {
        bench
            .deploy(name, json!({ "limits": limits, "resources": resources }))
            .await;
    }
    // In wasm only, and reading the clock every thousand rounds (time in a host call, which
    // fuel does not count).
    for path in ["/limited/", "/limited/?clock=1000"] {
        let share = median_core_share(&bench, path).await;
        assert!(
            (0.15..=0.35).contains(&share),
            "{path} at 250m used {share:.2} of a core"
        );
    }
    let unlimited = median_core_share(&bench, "/unlimited/?clock=1000").await;
    assert!(unlimited > 0.6, "unlimited used {unlimited:.2} of a core");
    bench.stop().await;
}
