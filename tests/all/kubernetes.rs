//! The Kubernetes API driven by the real kubectl (`kubectl.1.32`, from the machine, with a
//! fresh `HOME` so no cached discovery or config leaks in): apply twice, get with columns,
//! describe, scale, rollout status, get -w, delete; the gateway answering the Deployment's
//! name throughout; what shoal refuses, named by field; and the API's error shapes.

use std::path::PathBuf;
use std::time::Duration;

use guest_artifacts::*;
use serde_json::Value;
use shoal_tests::{TestNode, json, shoal_bin};
use tokio::io::AsyncBufReadExt as _;

/// `kubectl.1.32`: on the PATH, or where Debian's Google Cloud SDK package puts it.
fn kubectl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("kubectl.1.32"));
    let sdk = std::iter::once(PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.32"));
    on_path.chain(sdk).find(|path| path.exists()).expect(
        "kubectl.1.32 is missing: these tests drive the real kubectl (the `kubectl` package, \
         or set KUBECTL to a kubectl 1.29+ binary)",
    )
}

/// kubectl against one node, with its own empty HOME.
pub(crate) struct Kubectl {
    bin: PathBuf,
    server: String,
    home: tempfile::TempDir,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(node: &TestNode) -> Kubectl {
        Kubectl::for_server(&node.api)
    }

    /// kubectl against the API at `server`.
    pub(crate) fn for_server(server: &str) -> Kubectl {
        Kubectl {
            bin: kubectl_bin(),
            server: server.to_owned(),
            home: tempfile::tempdir().expect("a HOME for kubectl"),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(["--server", &self.server])
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("kubectl finished within 60 s")
            .expect("running kubectl");
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs kubectl and asserts it succeeded; returns its stdout.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(
            run.ok,
            "kubectl {args:?} failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    pub(crate) fn file(&self, name: &str, text: &str) -> String {
        let path = self.home.path().join(name);
        std::fs::write(&path, text).expect("writing a manifest");
        path.to_string_lossy().into_owned()
    }
}

async fn upload(node: &TestNode, guest: &str) -> String {
    let response = node.upload(bytes(guest)).await;
    assert!(response.status().is_success());
    let body: Value = response.json().await.expect("upload JSON");
    body["digest"].as_str().expect("a digest").to_string()
}

/// A Deployment `hello` of `digest` and a Service `hello-svc` selecting its pods.
fn manifest(digest: &str, extra_pod_spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: hello-svc
spec:
  selector:
    app: hello
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
  labels:
    app: hello
spec:
  replicas: 2
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
      annotations:
        autoscaling.knative.dev/max-scale: \"5\"
        autoscaling.knative.dev/target: \"3\"
    spec:
      runtimeClassName: wasm
      containers:
      - name: web
        image: hello@{digest}
        env:
        - name: GREETING
          value: hi
        resources:
          requests:
            cpu: 100m
            memory: 32Mi
          limits:
            memory: 64Mi
{extra_pod_spec}"
    )
}

/// The lines of a kubectl table whose first cell starts with `prefix`.
pub(crate) fn rows<'a>(table: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first().is_some_and(|cell| cell.starts_with(prefix)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_applies_gets_scales_watches_and_deletes_a_deployment() {
    let node = TestNode::start().await;
    let kubectl = Kubectl::new(&node);
    let digest = upload(&node, HELLO_HTTP).await;
    let path = kubectl.file("hello.yaml", &manifest(&digest, ""));

    let applied = kubectl.ok(&["apply", "-f", &path]).await;
    assert!(
        applied.contains("deployment.apps/hello created"),
        "{applied}"
    );
    assert!(applied.contains("service/hello-svc created"), "{applied}");
    let again = kubectl.ok(&["apply", "-f", &path]).await;
    assert!(again.contains("deployment.apps/hello unchanged"), "{again}");
    assert!(again.contains("service/hello-svc unchanged"), "{again}");

    let rolled = kubectl
        .ok(&["rollout", "status", "deployment/hello", "--timeout=30s"])
        .await;
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    let deployments = kubectl.ok(&["get", "deploy"]).await;
    assert!(
        deployments.starts_with("NAME") && deployments.contains("UP-TO-DATE"),
        "{deployments}"
    );
    assert_eq!(rows(&deployments, "hello")[0][1], "2/2", "{deployments}");
    let pods = kubectl.ok(&["get", "po", "-o", "wide"]).await;
    let pod_rows = rows(&pods, "hello-");
    assert_eq!(pod_rows.len(), 2, "{pods}");
    for row in &pod_rows {
        assert_eq!(&row[1..3], ["1/1", "Running"], "{pods}");
        assert_eq!(row[5], "127.0.0.1", "the pod IP is the gateway's: {pods}");
    }
    let labelled = kubectl
        .ok(&["get", "pods", "-l", "app=hello", "-o", "name"])
        .await;
    assert_eq!(labelled.lines().count(), 2, "{labelled}");
    let none = kubectl
        .ok(&["get", "pods", "-l", "app=other", "-o", "name"])
        .await;
    assert_eq!(none.trim(), "", "{none}");

    // The gateway routes the Deployment's name, and the Service's, by path and by Host.
    let reply = node.call("hello", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = node.call("hello-svc", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "hello from wasm\n");
    let by_host = node
        .client
        .get(format!("{}/", node.gateway))
        .header("host", "hello-svc.localhost")
        .send()
        .await
        .expect("a request by Host");
    assert_eq!(by_host.status(), 200);
    let services = kubectl.ok(&["get", "svc", "-o", "wide"]).await;
    let row = &rows(&services, "hello-svc")[0];
    assert_eq!(
        &row[1..],
        [
            "ClusterIP",
            "127.0.0.1",
            "<none>",
            "80/TCP",
            row[5],
            "app=hello"
        ],
        "{services}"
    );
    let described_svc = kubectl.ok(&["describe", "service", "hello-svc"]).await;
    assert!(described_svc.contains("app=hello"), "{described_svc}");

    let described = kubectl.ok(&["describe", "deployment", "hello"]).await;
    assert!(described.contains("Replicas:"), "{described}");
    assert!(described.contains("hello@sha256:"), "{described}");
    let pod_name = pod_rows[0][0];
    let described_pod = kubectl.ok(&["describe", "pod", pod_name]).await;
    assert!(
        described_pod.contains("Status:") && described_pod.contains("Running"),
        "{described_pod}"
    );
    assert!(described_pod.contains("QoS Class:"), "{described_pod}");

    // A watch sees the scale change, as kubectl get -w prints it.
    let mut watch = kubectl
        .command(&["get", "deployments", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = lines
        .next_line()
        .await
        .expect("reading the watch")
        .expect("a header");
    assert!(first.starts_with("NAME"), "{first}");
    let scaled = kubectl
        .ok(&["scale", "deployment", "hello", "--replicas=3"])
        .await;
    assert!(scaled.contains("deployment.apps/hello scaled"), "{scaled}");
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reading the watch") {
            if line.starts_with("hello") && line.split_whitespace().nth(1) == Some("3/3") {
                return line;
            }
        }
        panic!("the watch ended before showing 3/3");
    })
    .await
    .expect("the watch showed the scale change within 30 s");
    assert!(seen.contains("3/3"));
    watch.kill().await.expect("stopping the watch");
    let (_, service) = node.get("/v1/services/hello").await;
    assert_eq!(service["spec"]["scale"]["min"], 3, "{service}");
    assert_eq!(service["spec"]["labels"]["app"], "hello", "{service}");
    // Knative's annotations set the autoscaler's bounds; kubectl scale moved the floor.
    assert_eq!(service["spec"]["scale"]["max"], 5, "{service}");
    assert_eq!(service["spec"]["concurrency"], 3, "{service}");

    // What a wasm sandbox cannot honour is refused, naming the field.
    let with_volume = kubectl.file(
        "volume.yaml",
        &manifest(
            &digest,
            "      volumes:\n      - name: data\n        emptyDir: {}\n",
        ),
    );
    let refused = kubectl.run(&["apply", "-f", &with_volume]).await;
    assert!(!refused.ok, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("spec.template.spec.volumes"),
        "{}",
        refused.stderr
    );

    let deleted = kubectl.ok(&["delete", "-f", &path]).await;
    assert!(
        deleted.contains("deployment.apps \"hello\" deleted"),
        "{deleted}"
    );
    assert!(
        deleted.contains("service \"hello-svc\" deleted"),
        "{deleted}"
    );
    let (status, _) = node.get("/v1/services/hello").await;
    assert_eq!(status, 404);
    assert_eq!(node.call("hello", "/").await.status, 404);
    assert_eq!(node.call("hello-svc", "/").await.status, 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_and_kubectl_show_the_same_services() {
    let node = TestNode::start().await;
    let kubectl = Kubectl::new(&node);
    node.deploy("alpha", HELLO_HTTP, json!({})).await;
    let deployments = kubectl.ok(&["get", "deployments"]).await;
    assert_eq!(rows(&deployments, "alpha").len(), 1, "{deployments}");
    let pods = kubectl.ok(&["get", "pods"]).await;
    assert_eq!(rows(&pods, "alpha-").len(), 1, "{pods}");

    let digest = upload(&node, HELLO_HTTP).await;
    let path = kubectl.file("beta.yaml", &manifest(&digest, "").replace("hello", "beta"));
    kubectl.ok(&["apply", "-f", &path]).await;
    let ps = tokio::process::Command::new(shoal_bin())
        .args(["ps", "--api", &node.api])
        .output()
        .await
        .expect("running shoal ps");
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.lines()
            .any(|line| line.trim_start().starts_with("beta ")),
        "{ps}"
    );
    let catalog: Value = node
        .client
        .get(format!("{}/v1/catalog/services", node.api))
        .send()
        .await
        .expect("catalog")
        .json()
        .await
        .expect("catalog JSON");
    assert!(catalog.get("beta").is_some(), "{catalog}");
    node.stop().await;
}

async fn send(
    node: &TestNode,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let response = node
        .client
        .request(
            method.parse().expect("a method"),
            format!("{}{path}", node.api),
        )
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_status(answer: &(u16, Value), code: u16, reason: &str, needle: &str) {
    let (status, body) = answer;
    assert_eq!(*status, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains(needle),
        "{needle:?} not in {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_kubernetes_status() {
    let node = TestNode::start().await;
    let digest = upload(&node, HELLO_HTTP).await;
    let pods = "/api/v1/namespaces/default/pods";
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let json = "application/json";

    assert_status(
        &send(&node, "POST", deployments, json, "{not json").await,
        400,
        "BadRequest",
        "JSON",
    );
    assert_status(
        &send(
            &node,
            "GET",
            "/apis/batch/v1/namespaces/default/jobs",
            json,
            "",
        )
        .await,
        404,
        "NotFound",
        "could not find",
    );
    assert_status(
        &send(&node, "GET", "/api/v1/namespaces/prod/pods", json, "").await,
        404,
        "NotFound",
        "\"default\" namespace only",
    );
    assert_status(
        &send(
            &node,
            "GET",
            &format!("{pods}?labelSelector=app%20in%20(a"),
            json,
            "",
        )
        .await,
        400,
        "BadRequest",
        "",
    );
    assert_status(
        &send(
            &node,
            "GET",
            &format!("{pods}?fieldSelector=spec.color%3Dred"),
            json,
            "",
        )
        .await,
        400,
        "BadRequest",
        "field label not supported",
    );
    assert_status(
        &send(&node, "GET", &format!("{pods}/missing"), json, "").await,
        404,
        "NotFound",
        "pods \"missing\" not found",
    );

    // The document's pod, created as the Python client sends it (with labels).
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "my-pod", "labels": { "app": "my-app" } },
        "spec": { "containers": [{ "name": "my-container", "image": digest, "ports": [{ "containerPort": 80 }],
            "resources": { "requests": { "cpu": "0.5", "memory": "32Mi" }, "limits": { "cpu": "1", "memory": "64Mi" } } }] },
    });
    let created = send(&node, "POST", pods, json, &pod.to_string()).await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["status"]["phase"], "Running", "{}", created.1);
    assert_eq!(created.1["status"]["qosClass"], "Burstable");
    assert_status(
        &send(&node, "POST", pods, json, &pod.to_string()).await,
        409,
        "AlreadyExists",
        "already exists",
    );
    let mut changed = created.1.clone();
    changed["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("128Mi");
    assert_status(
        &send(
            &node,
            "PUT",
            &format!("{pods}/my-pod"),
            json,
            &changed.to_string(),
        )
        .await,
        422,
        "Invalid",
        "pod updates may not change",
    );
    assert_eq!(node.call("my-pod", "/").await.status, 200);

    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "c", "image": digest }] } } },
    });
    let created = send(&node, "POST", deployments, json, &deployment.to_string()).await;
    assert_eq!(created.0, 201, "{}", created.1);
    // A replace based on a version older than the current one is a conflict.
    let mut stale = created.1.clone();
    stale["spec"]["replicas"] = json!(2);
    let updated = send(
        &node,
        "PUT",
        &format!("{deployments}/web"),
        json,
        &stale.to_string(),
    )
    .await;
    assert_eq!(updated.0, 200, "{}", updated.1);
    stale["spec"]["replicas"] = json!(3);
    assert_status(
        &send(
            &node,
            "PUT",
            &format!("{deployments}/web"),
            json,
            &stale.to_string(),
        )
        .await,
        409,
        "Conflict",
        "has been modified",
    );
    // The selector is immutable.
    let selector = r#"{"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}"#;
    assert_status(
        &send(
            &node,
            "PATCH",
            &format!("{deployments}/web"),
            "application/merge-patch+json",
            selector,
        )
        .await,
        422,
        "Invalid",
        "spec.selector",
    );
    assert_status(
        &send(
            &node,
            "PATCH",
            &format!("{deployments}/web"),
            "text/plain",
            "{}",
        )
        .await,
        415,
        "UnsupportedMediaType",
        "unknown format",
    );
    // A replica of a Deployment is not deleted alone.
    let (_, list) = node.get(&format!("{pods}?labelSelector=app%3Dweb")).await;
    let replica = list["items"][0]["metadata"]["name"]
        .as_str()
        .expect("a pod")
        .to_string();
    assert_status(
        &send(&node, "DELETE", &format!("{pods}/{replica}"), json, "").await,
        405,
        "MethodNotAllowed",
        "scale the deployment",
    );
    // A bare pod is deleted with its service.
    let deleted = send(&node, "DELETE", &format!("{pods}/my-pod"), json, "").await;
    assert_eq!(deleted.0, 200, "{}", deleted.1);
    assert_eq!(node.call("my-pod", "/").await.status, 404);
    node.stop().await;
}

/// A Deployment of `guest` named `name`, one replica, with `resources` (YAML at the
/// container's indentation plus two).
fn small_manifest(name: &str, digest: &str, resources: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
      - name: main
        image: {digest}
{resources}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_and_shoal_logs_show_what_guests_wrote() {
    let node = TestNode::start().await;
    let kubectl = Kubectl::new(&node);
    let digest = upload(&node, ECHO_HTTP).await;
    let path = kubectl.file("talk.yaml", &small_manifest("talk", &digest, ""));
    kubectl.ok(&["apply", "-f", &path]).await;
    for text in ["first-line", "second-line"] {
        let reply = node.call("talk", &format!("/?log={text}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let pod = kubectl
        .ok(&["get", "pods", "-l", "app=talk", "-o", "name"])
        .await;
    let pod = pod.trim().trim_start_matches("pod/").to_string();
    let logs = kubectl.ok(&["logs", &pod]).await;
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        [
            "first-line",
            "stderr: first-line",
            "second-line",
            "stderr: second-line"
        ],
        "{logs}"
    );
    let tail = kubectl
        .ok(&["logs", &pod, "--tail=1", "--timestamps"])
        .await;
    let (time, line) = tail
        .trim()
        .split_once(' ')
        .expect("a timestamp, then the line");
    assert!(humantime::parse_rfc3339_weak(time).is_ok(), "{tail}");
    assert_eq!(line, "stderr: second-line");

    // Following: the kept lines, then each new one as it is written.
    let mut follow = kubectl
        .command(&["logs", "-f", &pod])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next_line().await.expect("reading").as_deref(),
        Some("first-line")
    );
    assert_eq!(node.call("talk", "/?log=third-line").await.status, 200);
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reading the log") {
            if line == "third-line" {
                return;
            }
        }
        panic!("the log ended before the third line");
    })
    .await;
    assert!(
        seen.is_ok(),
        "kubectl logs -f showed the new line within 30 s"
    );
    follow.kill().await.expect("stopping kubectl logs -f");

    let shoal_logs = tokio::process::Command::new(shoal_bin())
        .args(["logs", "talk", "--tail", "2", "--api", &node.api])
        .output()
        .await
        .expect("running shoal logs");
    let shoal_logs = String::from_utf8_lossy(&shoal_logs.stdout);
    let shown: Vec<&str> = shoal_logs.lines().collect();
    assert_eq!(shown.len(), 2, "{shoal_logs}");
    assert!(
        shown[0].ends_with("replica-1 stdout: third-line"),
        "{shoal_logs}"
    );
    assert!(
        shown[1].ends_with("replica-1 stderr: stderr: third-line"),
        "{shoal_logs}"
    );
    let (status, body) = node.get("/v1/services/talk/logs?since=yesterday").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("since"),
        "{body}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_without_room_is_pending_not_refused() {
    let node = TestNode::start_with(|config| {
        config.capacity = Some(shoal::ReplicaResources {
            memory: 256 << 20,
            cpu_millis: 1000,
        });
    })
    .await;
    let kubectl = Kubectl::new(&node);
    let digest = upload(&node, HELLO_HTTP).await;
    let resources = "        resources:\n          requests:\n            memory: 1Gi\n";
    let path = kubectl.file("big.yaml", &small_manifest("big", &digest, resources));
    let applied = kubectl.ok(&["apply", "-f", &path]).await;
    assert!(applied.contains("deployment.apps/big created"), "{applied}");
    let pods = kubectl.ok(&["get", "pods"]).await;
    let row = &rows(&pods, "big-")[0];
    assert_eq!(&row[1..3], ["0/1", "Pending"], "{pods}");
    let (_, pod) = node
        .get(&format!("/api/v1/namespaces/default/pods/{}", row[0]))
        .await;
    assert_eq!(
        pod["status"]["conditions"][0]["reason"], "Unschedulable",
        "{pod}"
    );
    let events = kubectl.ok(&["get", "events"]).await;
    assert!(events.contains("FailedScheduling"), "{events}");
    let described = kubectl.ok(&["describe", "deployment", "big"]).await;
    assert!(described.contains("FailedScheduling"), "{described}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_faults_show_as_restarts_and_oom_kills() {
    let node = TestNode::start().await;
    let kubectl = Kubectl::new(&node);
    let alloc = upload(&node, ALLOC_HTTP).await;
    let limits = "        resources:\n          limits:\n            memory: 16Mi\n";
    let path = kubectl.file("alloc.yaml", &small_manifest("alloc", &alloc, limits));
    kubectl.ok(&["apply", "-f", &path]).await;
    let fine = node.call("alloc", "/?mb=1").await;
    assert_eq!(fine.status, 200, "{}", fine.body);
    let killed = node.call("alloc", "/?mb=64").await;
    assert_ne!(killed.status, 200, "{}", killed.body);
    let (_, pods) = node
        .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dalloc")
        .await;
    let status = &pods["items"][0]["status"]["containerStatuses"][0];
    assert_eq!(status["restartCount"], 1, "{status}");
    assert_eq!(
        status["lastState"]["terminated"]["reason"], "OOMKilled",
        "{status}"
    );
    assert_eq!(
        status["lastState"]["terminated"]["exitCode"], 137,
        "{status}"
    );
    assert!(
        status["state"]["running"].is_object(),
        "the replica still serves: {status}"
    );

    let trap = upload(&node, TRAP_HTTP).await;
    let path = kubectl.file("trap.yaml", &small_manifest("trap", &trap, ""));
    kubectl.ok(&["apply", "-f", &path]).await;
    for _ in 0..2 {
        assert_eq!(node.call("trap", "/").await.status, 502);
    }
    let pods = kubectl.ok(&["get", "pods", "-l", "app=trap"]).await;
    let row = &rows(&pods, "trap-")[0];
    assert_eq!(&row[1..4], ["1/1", "Running", "2"], "{pods}");
    let described = kubectl.ok(&["describe", "pod", row[0]]).await;
    assert!(
        described.contains("Last State:") && described.contains("Error"),
        "{described}"
    );
    assert!(
        described.contains("guest trapped"),
        "the fault is an event on the pod: {described}"
    );
    let events = kubectl.ok(&["get", "events"]).await;
    assert!(
        events.contains("OOMKilled") && events.contains("pod/alloc-"),
        "{events}"
    );
    node.stop().await;
}

/// The watch events a request with `?watch=true&timeoutSeconds=1` got, in order.
async fn watch_events(node: &TestNode, path: &str) -> Vec<Value> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let body = node
        .client
        .get(format!(
            "{}{path}{separator}watch=true&timeoutSeconds=1",
            node.api
        ))
        .send()
        .await
        .expect("a watch")
        .text()
        .await
        .expect("the watch's body");
    body.lines()
        .map(|line| serde_json::from_str(line).expect("each event is one JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_resume_from_a_resource_version_or_are_expired() {
    let temp = tempfile::tempdir().expect("a data directory");
    let node = TestNode::start_in(temp.path(), |_| {}).await;
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    node.deploy("alpha", HELLO_HTTP, json!({})).await;
    let (_, list) = node.get(deployments).await;
    let seen = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .to_string();
    // From nothing: every object, as ADDED.
    let events = watch_events(&node, deployments).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("alpha"))
    );
    // From the list's version: only what changed after it, beta as new; and a service
    // deleted since, by name.
    node.deploy("beta", HELLO_HTTP, json!({})).await;
    node.deploy("gamma", HELLO_HTTP, json!({})).await;
    let (status, _) = node.get(&format!("{deployments}/gamma")).await;
    assert_eq!(status, 200);
    let deleted = node
        .client
        .delete(format!("{}{deployments}/gamma", node.api))
        .send()
        .await
        .expect("deleting gamma");
    assert_eq!(deleted.status(), 200);
    let events = watch_events(&node, &format!("{deployments}?resourceVersion={seen}")).await;
    let of = |kind: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|event| event["type"] == kind)
            .filter_map(|event| event["object"]["metadata"]["name"].as_str())
            .collect()
    };
    assert_eq!(of("ADDED"), ["beta"], "{events:?}");
    assert_eq!(of("DELETED"), ["gamma"], "{events:?}");
    assert!(
        of("MODIFIED").iter().all(|name| *name == "alpha"),
        "{events:?}"
    );
    let newer: u64 = events[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(newer > seen.parse::<u64>().unwrap());
    // A restarted node keeps no change log from before: an old version is Gone.
    node.stop().await;
    let node = TestNode::start_in(temp.path(), |_| {}).await;
    let events = watch_events(&node, &format!("{deployments}?resourceVersion={seen}")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    node.stop().await;
}

/// A bare Pod whose image names a module (`greeter`, resources as in the document's snippet,
/// `cpu: "0.5"`).
fn greeter_pod(memory_limit: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: greeter
  labels:
    app: greeter
spec:
  containers:
  - name: web
    image: greeter:latest
    resources:
      requests:
        cpu: \"0.5\"
        memory: 32Mi
      limits:
        cpu: \"0.5\"
        memory: {memory_limit}
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_wait_in_err_image_pull_until_a_module_has_their_image_name() {
    let node = TestNode::start().await;
    let kubectl = Kubectl::new(&node);
    let pod = kubectl.file("greeter.yaml", &greeter_pod("64Mi"));
    let applied = kubectl.ok(&["apply", "-f", &pod]).await;
    assert_eq!(applied.trim(), "pod/greeter created");

    // Nothing is pulled: the pod waits, saying why, and so does a Deployment's every pod.
    let later = small_manifest("later", "later:v1", "");
    let later = later.replace("replicas: 1", "replicas: 2");
    let later = kubectl.file("later.yaml", &later);
    kubectl.ok(&["apply", "-f", &later]).await;
    let pods = kubectl.ok(&["get", "pods"]).await;
    let greeter = rows(&pods, "greeter");
    assert_eq!(greeter.len(), 1, "{pods}");
    assert_eq!(&greeter[0][1..3], ["0/1", "ErrImagePull"], "{pods}");
    let waiting = rows(&pods, "later-");
    assert_eq!(waiting.len(), 2, "{pods}");
    assert!(waiting.iter().all(|row| row[2] == "ErrImagePull"), "{pods}");
    let deployments = kubectl.ok(&["get", "deployment", "later"]).await;
    assert_eq!(rows(&deployments, "later")[0][1], "0/2", "{deployments}");
    let described = kubectl.ok(&["describe", "pod", "greeter"]).await;
    assert!(described.contains("Pending"), "{described}");
    assert!(described.contains("ErrImagePull"), "{described}");
    assert!(
        described.contains("Failed to pull image \"greeter:latest\"")
            && described.contains("POST /v1/modules?name=greeter"),
        "the event says why and what to do:\n{described}"
    );
    let logs = kubectl.run(&["logs", "greeter"]).await;
    assert!(
        !logs.ok && logs.stderr.contains("is waiting to start"),
        "{}",
        logs.stderr
    );
    // A waiting pod holds its name.
    let again = kubectl.run(&["create", "-f", &pod]).await;
    assert!(
        !again.ok && again.stderr.contains("AlreadyExists"),
        "{}",
        again.stderr
    );
    assert_eq!(node.call("greeter", "/").await.status, 404);
    let (_, listed) = node.get("/v1/services").await;
    assert!(
        !listed.to_string().contains("\"greeter\""),
        "a waiting pod runs nothing: {listed}"
    );

    // A module given the name: the pod starts, and serves.
    let uploaded = node
        .client
        .post(format!("{}/v1/modules?name=greeter", node.api))
        .body(bytes(HELLO_HTTP))
        .send()
        .await
        .expect("uploading");
    assert!(uploaded.status().is_success());
    kubectl
        .ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/greeter",
            "--timeout=60s",
        ])
        .await;
    let reply = node.call("greeter", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (status, service) = node.get("/v1/services/greeter").await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["spec"]["resources"]["limits"]["cpu"], "500m");

    // The same manifest again changes nothing. kubectl sends `cpu: "0.5"` again because the
    // pod reads `500m` (so it says "configured", as against kube-apiserver); it runs the same.
    let uid = ["get", "pod", "greeter", "-o", "jsonpath={.metadata.uid}"];
    let running = kubectl.ok(&uid).await;
    let again = kubectl.ok(&["apply", "-f", &pod]).await;
    assert!(
        ["pod/greeter configured", "pod/greeter unchanged"].contains(&again.trim()),
        "{again}"
    );
    assert_eq!(
        kubectl.ok(&uid).await,
        running,
        "the same replica still runs"
    );
    // A change to what runs is refused.
    let bigger = kubectl.file("bigger.yaml", &greeter_pod("128Mi"));
    let refused = kubectl.run(&["apply", "-f", &bigger]).await;
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("Forbidden: pod updates may not change"),
        "{}",
        refused.stderr
    );

    // A waiting Deployment is deleted like any other.
    kubectl.ok(&["delete", "-f", &later]).await;
    let pods = kubectl.ok(&["get", "pods"]).await;
    assert!(rows(&pods, "later-").is_empty(), "{pods}");
    assert!(node.node.waiting().await.expect("listing").is_empty());
    node.stop().await;
}
