//! The end-to-end harness: a real shoal node on `127.0.0.1:0`, with a real redb file
//! in a temporary directory and the real guests, driven over real HTTP.
//!
//! [`TestNode`] runs the node in-process through `shoal::serve`, exactly as the
//! binary does; [`ChildNode`] runs the `shoal` binary itself, for what only a
//! process can show (being killed with SIGKILL and coming back).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use serde_json::json;

/// A node served in-process until dropped or [`TestNode::stop`]ped.
pub struct TestNode {
    /// `http://127.0.0.1:{port}` of the management API.
    pub api: String,
    /// `http://127.0.0.1:{port}` of the gateway.
    pub gateway: String,
    /// A client for both.
    pub client: reqwest::Client,
    /// The node itself, for what a test waits on (its change feed) or reads directly.
    pub node: shoal::Node,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    /// A node with default settings in a fresh data directory.
    pub async fn start() -> TestNode {
        TestNode::start_with(|_| {}).await
    }

    /// A node in a fresh data directory, with `configure` applied to its settings.
    pub async fn start_with(configure: impl FnOnce(&mut shoal::NodeConfig)) -> TestNode {
        let temp = tempfile::tempdir().expect("creating a temporary directory");
        let mut node = TestNode::start_in(temp.path(), configure).await;
        node._temp = Some(temp);
        node
    }

    /// A node on an existing data directory (which the caller keeps alive).
    pub async fn start_in(
        data_dir: &Path,
        configure: impl FnOnce(&mut shoal::NodeConfig),
    ) -> TestNode {
        init_tracing();
        let mut config = shoal::NodeConfig::new(data_dir);
        configure(&mut config);
        let node = shoal::open_node(config).await.expect("opening the node");
        TestNode::serve(node, data_dir).await
    }

    /// A node on `store`, which the test keeps a handle on to write to directly.
    pub async fn start_on_store(
        data_dir: &Path,
        store: std::sync::Arc<dyn shoal_registry::Store>,
    ) -> TestNode {
        init_tracing();
        let config = shoal::NodeConfig::new(data_dir);
        let node = shoal::Node::open(config, store)
            .await
            .expect("opening the node");
        TestNode::serve(node, data_dir).await
    }

    /// Serves `node` on free loopback ports.
    async fn serve(node: shoal::Node, data_dir: &Path) -> TestNode {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the API");
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the gateway");
        let api_url = format!("http://{}", api.local_addr().expect("API address"));
        let gateway_url = format!("http://{}", gateway.local_addr().expect("gateway address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(shoal::serve(node.clone(), api, gateway, async move {
            let _ = stopped.await;
        }));
        TestNode {
            api: api_url,
            gateway: gateway_url,
            client: reqwest::Client::new(),
            node,
            data_dir: data_dir.to_owned(),
            _temp: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Waits until the node has applied every change up to `index` of its store.
    pub async fn applied(&self, index: u64) {
        let mut changes = self.node.changes();
        tokio::time::timeout(
            Duration::from_secs(30),
            changes.wait_for(|indexes| indexes.change >= index),
        )
        .await
        .expect("the node applies the change within 30s")
        .expect("the node is running");
    }

    /// Waits until the module `digest` runs on optimized code: the background compiler has
    /// put Cranelift's code in force (and in the artifact cache).
    pub async fn optimized(&self, digest: &str) {
        const WITHIN: Duration = Duration::from_secs(180);
        let compiled = self
            .node
            .runtime()
            .cached(digest)
            .unwrap_or_else(|| panic!("module {digest} is not loaded"));
        tokio::time::timeout(WITHIN, compiled.optimized())
            .await
            .unwrap_or_else(|_| panic!("{digest} was not optimized within {WITHIN:?}"));
    }

    /// Waits until every service's module runs on optimized code.
    pub async fn all_optimized(&self) {
        for service in self.node.services().await.expect("listing services") {
            self.optimized(service.spec.module.as_str()).await;
        }
    }

    /// Signals shutdown and waits until the node has let go of everything, so the
    /// same data directory can be opened again.
    pub async fn stop(mut self) {
        self.stop.take().map(|stop| stop.send(()));
        if let Some(task) = self.task.take() {
            task.await
                .expect("the node task panicked")
                .expect("the node failed");
        }
    }

    /// The temporary data directory, handed over so it outlives this node.
    pub fn take_temp_dir(&mut self) -> tempfile::TempDir {
        self._temp.take().expect("the node owns its data directory")
    }

    /// Uploads module bytes.
    pub async fn upload(&self, bytes: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/modules", self.api))
            .body(bytes)
            .send()
            .await
            .expect("upload request")
    }

    /// PUTs a service spec.
    pub async fn put_service(&self, name: &str, spec: &Value) -> reqwest::Response {
        self.client
            .put(format!("{}/v1/services/{name}", self.api))
            .json(spec)
            .send()
            .await
            .expect("put request")
    }

    /// Uploads a guest and deploys it as `name` with `limits`, asserting success;
    /// returns the service as the API shows it.
    pub async fn deploy(&self, name: &str, guest: &str, limits: Value) -> Value {
        let upload = self.upload(guest_artifacts::bytes(guest)).await;
        assert!(
            upload.status().is_success(),
            "upload of {guest} failed: {}",
            upload.text().await.unwrap_or_default()
        );
        let digest = upload.json::<Value>().await.expect("upload JSON")["digest"].clone();
        let response = self
            .put_service(name, &json!({ "module": digest, "limits": limits }))
            .await;
        let status = response.status();
        let body: Value = response.json().await.expect("service JSON");
        assert!(status.is_success(), "deploying {name} failed: {body}");
        body
    }

    /// GETs a management path and returns its status and JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .expect("GET request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method` to a management (or Consul) path with an optional raw body, and reads
    /// the whole reply. Nothing is added: no Content-Type, no token, as the Python Consul
    /// clients send.
    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
        let mut request = self.client.request(method, format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        Reply::from(request.send().await.expect("API request")).await
    }

    /// GETs `/{service}{path}` through the gateway.
    pub async fn call(&self, service: &str, path: &str) -> Reply {
        Reply::from(
            self.client
                .get(format!("{}/{service}{path}", self.gateway))
                .send()
                .await
                .expect("gateway request"),
        )
        .await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response read whole, with the error kind header pulled out.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `x-shoal-error` header, if any.
    pub kind: Option<String>,
    /// All headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// Reads a whole response.
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let kind = headers
            .get("x-shoal-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await.expect("reading the body");
        Reply {
            status,
            kind,
            headers,
            body,
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The `error` message of a shoal error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// The `shoal` binary built beside the test executable (`target/{profile}/shoal`).
pub fn shoal_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("locating the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/{profile}/deps");
    let bin = profile_dir.join(format!("shoal{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bin shoal` (scripts/test does)",
        bin.display()
    );
    bin
}

/// The `shoal` binary running `shoal up` as a child process.
pub struct ChildNode {
    /// The child process.
    pub child: tokio::process::Child,
    /// `http://...` of the management API.
    pub api: String,
    /// `http://...` of the gateway.
    pub gateway: String,
    /// What it prints after the first line, kept open: a node that starts itself again
    /// prints a new one.
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ChildNode {
    /// Starts `shoal up` on `data_dir` with both listeners on free loopback ports, and
    /// waits for the line that says where they are.
    ///
    /// Child nodes compile with Cranelift before an upload answers (`--compile optimized`,
    /// unless the flags say otherwise), so that a node a test kills has its code in the
    /// artifact cache, and a cluster's timing is not shared with background compiles; tiered
    /// compilation, and restarts before its background compile, are tested in-process
    /// (`tests/all/tiers.rs`), where the switch can be awaited.
    pub async fn start(data_dir: &Path) -> ChildNode {
        ChildNode::start_bin(&shoal_bin(), data_dir).await
    }

    /// Starts `shoal up` from the binary at `bin` (an edge build, say); as [`ChildNode::start`].
    pub async fn start_bin(bin: &Path, data_dir: &Path) -> ChildNode {
        ChildNode::start_with(bin, data_dir, &[]).await
    }

    /// Starts `shoal up` from `bin` with more flags (`--etcd ...`); as [`ChildNode::start`].
    pub async fn start_with(bin: &Path, data_dir: &Path, flags: &[String]) -> ChildNode {
        ChildNode::start_wrapped(&[], bin, data_dir, flags).await
    }

    /// Starts `shoal up` from `bin` with more flags, through `wrapper` (a command that runs
    /// the rest of its arguments: `prlimit --as=N --`, say); as [`ChildNode::start`].
    ///
    /// A binary for another architecture runs under the emulator `SHOAL_RUNNER` names
    /// (`qemu-aarch64-static -L /usr/aarch64-linux-gnu`), inside the wrapper.
    pub async fn start_wrapped(
        wrapper: &[&str],
        bin: &Path,
        data_dir: &Path,
        flags: &[String],
    ) -> ChildNode {
        let runner = std::env::var("SHOAL_RUNNER").unwrap_or_default();
        let mut argv: Vec<std::ffi::OsString> = wrapper.iter().map(Into::into).collect();
        argv.extend(runner.split_whitespace().map(Into::into));
        argv.push(bin.into());
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .args([
                "up",
                "--api-listen",
                "127.0.0.1:0",
                "--gateway-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(flags)
            .args(
                (!flags.iter().any(|flag| flag.starts_with("--compile")))
                    .then_some(["--compile", "optimized"])
                    .into_iter()
                    .flatten(),
            )
            // Quiet unless asked: a child's log goes to the test's stderr, uncaptured.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .env_remove("SHOAL_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning shoal up");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut node = ChildNode {
            child,
            api: String::new(),
            gateway: String::new(),
            stdout: tokio::io::BufReader::new(stdout).lines(),
        };
        node.next_up_line().await;
        node
    }

    /// Waits (up to 60 s) for the next "shoal is up" line, and takes the addresses it gives;
    /// returns the line.
    pub async fn next_up_line(&mut self) -> String {
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("shoal up did not report its addresses within 60s")
            .expect("reading shoal's stdout")
            .expect("shoal up exited before reporting its addresses");
        // "shoal is up: api http://A gateway http://B"
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            let idx = words
                .iter()
                .position(|w| *w == key)
                .unwrap_or_else(|| panic!("no {key} in {line:?}"));
            words[idx + 1].to_owned()
        };
        self.api = after("api");
        self.gateway = after("gateway");
        line
    }

    /// Uploads a module; asserts it was new (201) and returns the module's record.
    pub async fn upload(&self, bytes: Vec<u8>) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/modules", self.api))
            .body(bytes)
            .send()
            .await
            .expect("uploading a module");
        assert_eq!(response.status(), 201);
        response.json().await.expect("a module's record")
    }

    /// PUTs a service spec.
    pub async fn put_service(&self, name: &str, spec: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .put(format!("{}/v1/services/{name}", self.api))
            .json(spec)
            .send()
            .await
            .expect("putting a service")
    }

    /// GETs a path of the management (or Consul) API, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.api))
            .await
            .expect("calling the API")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("sending SIGKILL");
        self.child
            .wait()
            .await
            .expect("waiting for the killed child");
    }
}

/// A small HTTP server on loopback standing in for a service registered from outside: it
/// answers every request with its current status and a body naming itself and the path.
pub struct Upstream {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The status it answers with; change it to fail health checks.
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts one on a free loopback port, answering 200.
    pub async fn start(name: &'static str) -> Upstream {
        use std::sync::atomic::{AtomicU16, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let status = std::sync::Arc::new(AtomicU16::new(200));
        let answer = status.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let answer = answer.clone();
            async move {
                let status = axum::http::StatusCode::from_u16(answer.load(Ordering::Relaxed))
                    .expect("a valid status");
                let forwarded = request
                    .headers()
                    .get("x-forwarded-prefix")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (status, format!("{name} {} {forwarded}", request.uri()))
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Upstream {
            addr,
            status,
            stop: Some(stop),
            task,
        }
    }

    /// Stops listening and closes its connections: connecting is refused from now on.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "shoal=warn,shoal_runtime=warn".into()),
        )
        .with_test_writer()
        .try_init();
}
