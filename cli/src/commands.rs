//! The `shoal` command line: `shoal up` starts a node, every other command is a client
//! of a node's management API (found with `--api` or `SHOAL_API`).
//!
//! Output is a table for people and, with `--json`, the API's JSON for scripts.
//! Failures print one line on stderr and exit non-zero.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use comfy_table::Table;
use serde_json::Value;

use shoal_node::NodeConfig;

/// shoal: run WebAssembly services by name, with limits, a registry and a gateway.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// The management API to talk to.
    #[arg(
        long,
        global = true,
        env = "SHOAL_API",
        default_value = "http://127.0.0.1:8500"
    )]
    pub api: String,
    /// Bearer token: required by `up` to serve on a non-loopback address, and sent by
    /// every client command.
    #[arg(long, global = true, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How `shoal up` compiles new modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompileMode {
    /// Winch first, Cranelift in the background.
    Tiered,
    /// Cranelift before the upload answers.
    Optimized,
    /// Winch only: the background compiler is held.
    Baseline,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node: management API and gateway.
    Up(UpArgs),
    /// Upload a module and create or update a service running it.
    Deploy(DeployArgs),
    /// List services.
    Ls,
    /// Show one service.
    Inspect {
        /// The service's name.
        name: String,
    },
    /// Delete a service.
    Rm {
        /// The service's name.
        name: String,
    },
    /// Call a service through the gateway and print its response body.
    Call(CallArgs),
    /// List uploaded modules.
    Modules,
    /// Compile a module here for another machine (an edge board, say), into a package that
    /// `shoal deploy` or POST /v1/modules installs on a node started with --token, a
    /// runtime-only build too. Local: no node is called.
    #[cfg(feature = "compiler")]
    Compile(CompileArgs),
    /// Show every service's replicas, load, latency, share of the node, and replicas per node.
    Ps,
    /// Change a service's replica bounds.
    Scale {
        /// The service's name.
        name: String,
        /// Fewest replicas (0 allows scaling to zero).
        #[arg(long)]
        min: Option<u32>,
        /// Most replicas.
        #[arg(long)]
        max: Option<u32>,
    },
    /// Create a guest project in ./NAME from a template, ready for `shoal dev NAME`.
    New {
        /// The project's name, which is its service's.
        name: String,
        /// rust-http (a wasi:http component) or rust-cgi (a CGI program).
        #[arg(long, default_value = "rust-http")]
        template: String,
    },
    /// Build a project, deploy it (starting a node if none answers), print its URL and log,
    /// and build and deploy it again on every change to its sources.
    Dev(crate::dev::DevArgs),
    /// Make an earlier revision of a service current again, as a new revision.
    Rollback {
        /// The service's name.
        name: String,
        /// The revision to go back to; default: the one before the current one.
        #[arg(long, value_name = "REVISION")]
        to: Option<u64>,
    },
    /// Show a service's scale events.
    Events {
        /// The service's name.
        name: String,
    },
    /// List the nodes of the cluster (or the node alone): addresses, capacity, reserved,
    /// free, resource allocation, replicas, alive or not.
    Nodes,
    /// Print a kubeconfig for kubectl and the Kubernetes clients: this node's API (--api) as
    /// the server, with the certificate to trust over TLS, and the token (--token) as the
    /// user's credential.
    Kubeconfig {
        /// The PEM certificate clients are to trust; default, for an https --api: the
        /// self-signed one in --data-dir (shoal up --tls-self-signed).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The node's data directory, where a self-signed certificate is kept.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./.shoal")]
        data_dir: PathBuf,
    },
    /// Print what a service's guests wrote to stdout and stderr, each line with its time
    /// and replica.
    Logs {
        /// The service's name.
        name: String,
        /// Keep printing lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// Only the newest N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Only lines newer than this: a duration (10m) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Flags of `shoal compile`.
#[cfg(feature = "compiler")]
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The module: a wasi:http component or a WASI preview1 command.
    pub module: PathBuf,
    /// The target triple of the machine that will run it (aarch64-unknown-linux-gnu,
    /// x86_64-unknown-linux-gnu); default: this one.
    #[arg(long)]
    pub target: Option<String>,
    /// Where to write the package.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Flags of `shoal up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the registry and the compiled-code cache live.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./.shoal")]
    pub data_dir: PathBuf,
    /// Address of the management API.
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub api_listen: SocketAddr,
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,
    /// `Host: {service}.{domain}` routes to `{service}`.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Largest module upload accepted (a quantity such as 64Mi).
    #[arg(long, default_value = "64Mi", value_parser = parse_bytes)]
    pub max_module_size: u64,
    /// How long requests in flight may run after SIGINT or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Use on-demand instance allocation even where the pooling allocator would fit.
    #[arg(long)]
    pub no_pooling: bool,
    /// Instances that may be alive at once with the pooling allocator, each reserving about
    /// 4 GiB of address space up front: lower it where the address space is small (a 39-bit
    /// aarch64 kernel has 512 GiB) to keep pooling there.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    /// How new modules are compiled: `tiered` serves on Winch's code as soon as it is ready and
    /// switches to Cranelift's when a background compile finishes; `optimized` makes every
    /// upload wait for Cranelift, for full speed from the first request; `baseline` keeps
    /// new modules on Winch's code (to measure what the baseline tier costs).
    #[arg(long, value_enum, default_value_t = CompileMode::Tiered)]
    pub compile: CompileMode,
    /// Memory replicas may reserve (a quantity such as 8Gi); default 3/4 of the machine's.
    #[arg(long, value_parser = parse_bytes)]
    pub capacity_memory: Option<u64>,
    /// CPU replicas may reserve (a quantity such as 2 or 1500m); default every core.
    #[arg(long, value_parser = parse_cpu)]
    pub capacity_cpu: Option<u64>,
    /// No longer used: cpu limits are measured in CPU time. Accepted, so scripts that pass
    /// it keep working.
    #[arg(long, hide = true)]
    pub fuel_per_cpu_second: Option<u64>,
    /// The datacenter the Consul API reports.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// The node name the Consul API reports; default: the host name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The shortest DeregisterCriticalServiceAfter honoured, as in Consul (for tests).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration, hide = true)]
    pub min_deregister_critical_after: Duration,
    /// The shortest TTL a Consul session may have, as Consul's `session_ttl_min`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_ttl_min: Duration,
    /// Join the cluster whose state lives in this etcd: its members' client addresses,
    /// comma-separated (host:port or URLs). Without it the node keeps its state in its own
    /// redb file.
    #[arg(long, value_delimiter = ',', value_name = "ENDPOINTS")]
    pub etcd: Vec<String>,
    /// The prefix of every key the cluster keeps in etcd.
    #[arg(long, default_value = "/shoal/v1/", requires = "etcd")]
    pub etcd_prefix: String,
    /// The host (name or IP) other nodes and clients reach this node's API and gateway at;
    /// default: the listen address, which must then not be unspecified (0.0.0.0).
    #[arg(long, requires = "etcd")]
    pub advertise: Option<String>,
    /// How long after this node stops renewing its membership the others count it dead.
    /// (etcd's leases are whole seconds, at least 2.)
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, requires = "etcd")]
    pub node_ttl: Duration,
    /// Serve the management API over TLS with this PEM certificate chain (and --tls-key).
    /// Not with --etcd yet: the nodes of a cluster reach each other's API over plain http.
    #[arg(long, requires = "tls_key", conflicts_with_all = ["tls_self_signed", "etcd"])]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the management API over TLS with a self-signed certificate, made on first use
    /// into the data directory (tls/cert.pem), which `shoal kubeconfig` hands to clients.
    /// Not with --etcd yet.
    #[arg(long, conflicts_with = "etcd")]
    pub tls_self_signed: bool,
}

impl UpArgs {
    /// The cluster to join, if `--etcd` was given, with this node's advertised addresses
    /// for the listeners `api` and `gateway`.
    pub fn cluster(
        &self,
        api: SocketAddr,
        gateway: SocketAddr,
    ) -> anyhow::Result<Option<crate::ClusterConfig>> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let advertise = |listen: SocketAddr, flag: &str| -> anyhow::Result<String> {
            match &self.advertise {
                Some(host) => Ok(shoal_gateway::authority(host, listen.port())),
                None if listen.ip().is_unspecified() => anyhow::bail!(
                    "{flag} {listen} is not an address other nodes can reach: pass --advertise with this machine's address"
                ),
                None => Ok(listen.to_string()),
            }
        };
        Ok(Some(crate::ClusterConfig {
            endpoints: self.etcd.clone(),
            prefix: self.etcd_prefix.clone(),
            node_ttl: self.node_ttl,
            api: advertise(api, "--api-listen")?,
            gateway: advertise(gateway, "--gateway-listen")?,
        }))
    }

    /// The management API's TLS configuration, if it is to serve TLS: from `--tls-cert` and
    /// `--tls-key`, or self-signed for `api` (the listener's address) and `--advertise`.
    pub fn tls(&self, api: SocketAddr) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ if self.tls_self_signed => {
                let mut hosts: Vec<String> = self.advertise.iter().cloned().collect();
                if !api.ip().is_unspecified() {
                    hosts.push(api.ip().to_string());
                }
                if let Ok(name) = gethostname::gethostname().into_string() {
                    hosts.push(name);
                }
                crate::tls::self_signed(&self.data_dir, &hosts)?
            }
            _ => return Ok(None),
        };
        crate::tls::server_config(&cert, &key).map(Some)
    }

    /// The node configuration these flags describe.
    pub fn node_config(&self, token: Option<String>) -> NodeConfig {
        let mut config = NodeConfig::new(&self.data_dir);
        config.token = token;
        config.domain = self.domain.clone();
        config.max_module_size = self.max_module_size;
        config.shutdown_timeout = self.shutdown_timeout;
        config.runtime.pooling = !self.no_pooling;
        config.runtime.max_instances = self.max_instances;
        config.runtime.tiering = self.compile != CompileMode::Optimized;
        config.runtime.hold_optimizing = self.compile == CompileMode::Baseline;
        if self.capacity_memory.is_some() || self.capacity_cpu.is_some() {
            let detected = shoal_runtime::Capacity::detect(0.75);
            config.capacity = Some(shoal_runtime::ReplicaResources {
                memory: self.capacity_memory.unwrap_or(detected.memory),
                cpu_millis: self.capacity_cpu.unwrap_or(detected.cpu_millis),
            });
        }
        if self.fuel_per_cpu_second.is_some() {
            tracing::warn!(
                "--fuel-per-cpu-second is no longer used: cpu limits are measured in CPU time"
            );
        }
        config.datacenter = self.datacenter.clone();
        if let Some(name) = &self.node_name {
            config.node_name = name.clone();
        }
        config.min_deregister_critical_after = self.min_deregister_critical_after;
        config.session_ttl_min = self.session_ttl_min;
        config
    }
}

/// Flags of `shoal deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The .wasm file: a wasi:http component or a WASI command.
    pub file: PathBuf,
    /// The service's name (a DNS label).
    #[arg(long)]
    pub name: String,
    /// Memory limit, e.g. 64Mi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Fuel per request.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Wall-clock limit per request, e.g. 5s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Largest request body, e.g. 1Mi.
    #[arg(long)]
    pub max_request_body: Option<String>,
    /// Largest response, e.g. 1Mi.
    #[arg(long)]
    pub max_response: Option<String>,
    /// Guest stderr kept per request, e.g. 64Ki.
    #[arg(long)]
    pub max_stderr: Option<String>,
    /// An environment variable for the guest, K=V; repeatable.
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// An argument for the guest; repeatable.
    #[arg(long = "arg", value_name = "ARG")]
    pub args: Vec<String>,
    /// Give the uploaded module this name, which a Kubernetes container's `image` can use.
    #[arg(long, value_name = "NAME")]
    pub module_name: Option<String>,
}

/// Flags of `shoal call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The service's name.
    pub name: String,
    /// The path (and query) to call.
    #[arg(default_value = "/")]
    pub path: String,
    /// The HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// A request body.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// A request header, 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The gateway to call (default: the one the API reports).
    #[arg(long, env = "SHOAL_GATEWAY")]
    pub gateway: Option<String>,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    text.parse::<shoal_spec::ByteSize>()
        .map(|size| size.bytes())
}

fn parse_cpu(text: &str) -> Result<u64, String> {
    let millis = text.parse::<shoal_spec::Quantity>()?.to_millis()?;
    if millis == 0 {
        Err("must be greater than zero".into())
    } else {
        Ok(millis)
    }
}

/// A client of the management API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    api: String,
    token: Option<String>,
}

impl Client {
    /// A client for the API at `api`.
    pub fn new(api: &str, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            api: api.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.api));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the shoal API at {}", self.api))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .context("reading the API's response")?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = json["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("{message} ({status})");
        }
        Ok(json)
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// PUT JSON to a path.
    pub(crate) async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::PUT, path).json(body))
            .await
    }
}

/// Uploads a module, giving it `name` if one is given. On a terminal, stderr shows the bytes
/// sent, then that the node compiles; elsewhere nothing is printed.
pub(crate) async fn upload(
    client: &Client,
    bytes: Vec<u8>,
    name: Option<&str>,
) -> anyhow::Result<Value> {
    use std::io::IsTerminal as _;
    let path = match name {
        Some(name) => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("name", name)
                .finish();
            format!("/v1/modules?{query}")
        }
        None => "/v1/modules".to_owned(),
    };
    let total = bytes.len();
    let request = client
        .request(reqwest::Method::POST, &path)
        .header(reqwest::header::CONTENT_LENGTH, total);
    if !std::io::stderr().is_terminal() {
        return client.send(request.body(bytes)).await;
    }
    const CHUNK: usize = 256 * 1024;
    let bytes = bytes::Bytes::from(bytes);
    let chunks: Vec<bytes::Bytes> = (0..total)
        .step_by(CHUNK)
        .map(|at| bytes.slice(at..(at + CHUNK).min(total)))
        .collect();
    let mut sent = 0;
    use futures::StreamExt as _;
    let body = futures::stream::iter(chunks).map(move |chunk| {
        sent += chunk.len();
        if sent < total {
            eprint!("\r\x1b[Kuploading {} of {}", mib(sent), mib(total));
        } else {
            eprint!("\r\x1b[Kuploaded {}; compiling", mib(total));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let answer = client
        .send(request.body(reqwest::Body::wrap_stream(body)))
        .await;
    eprint!("\r\x1b[K");
    answer
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs a client command.
pub async fn run_client(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.api, cli.token.clone());
    let json = cli.json;
    match cli.command {
        Command::Up(_) => unreachable!("`up` is handled by main"),
        Command::Deploy(args) => {
            let bytes = std::fs::read(&args.file)
                .with_context(|| format!("reading {}", args.file.display()))?;
            let module = upload(&client, bytes, args.module_name.as_deref()).await?;
            let mut limits = serde_json::Map::new();
            for (key, value) in [
                ("memory", args.memory),
                ("timeout", args.timeout),
                ("max_request_body", args.max_request_body),
                ("max_response", args.max_response),
                ("max_stderr", args.max_stderr),
            ] {
                if let Some(value) = value {
                    limits.insert(key.into(), value.into());
                }
            }
            if let Some(fuel) = args.fuel {
                limits.insert("fuel".into(), fuel.into());
            }
            let mut env = serde_json::Map::new();
            for pair in &args.env {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?} is not K=V"))?;
                env.insert(k.into(), v.into());
            }
            let spec = serde_json::json!({ "module": module["digest"], "limits": limits, "env": env, "args": args.args });
            let service = client
                .send(
                    client
                        .request(reqwest::Method::PUT, &format!("/v1/services/{}", args.name))
                        .json(&spec),
                )
                .await?;
            if json {
                print_json(&service);
            } else {
                println!(
                    "deployed {} revision {} ({} module {})",
                    service["name"].as_str().unwrap_or_default(),
                    service["revision"],
                    service["kind"].as_str().unwrap_or("?"),
                    short_digest(module["digest"].as_str().unwrap_or_default()),
                );
                if let Some(url) = service["url"].as_str() {
                    println!("call it: curl {url}   or: shoal call {}", args.name);
                }
            }
        }
        Command::Ls => {
            let services = client.get("/v1/services").await?;
            if json {
                print_json(&services);
            } else {
                let mut table = table([
                    "NAME", "REVISION", "KIND", "MODULE", "MEMORY", "TIMEOUT", "UPDATED",
                ]);
                for s in services.as_array().into_iter().flatten() {
                    table.add_row([
                        text(&s["name"]),
                        text(&s["revision"]),
                        text(&s["kind"]),
                        short_digest(s["spec"]["module"].as_str().unwrap_or_default()),
                        text(&s["spec"]["limits"]["memory"]),
                        text(&s["spec"]["limits"]["timeout"]),
                        text(&s["updated"]),
                    ]);
                }
                println!("{table}");
            }
        }
        Command::Inspect { name } => {
            print_json(&client.get(&format!("/v1/services/{name}")).await?)
        }
        Command::Rm { name } => {
            let service = client
                .send(client.request(reqwest::Method::DELETE, &format!("/v1/services/{name}")))
                .await?;
            if json {
                print_json(&service)
            } else {
                println!("deleted {name}")
            }
        }
        #[cfg(feature = "compiler")]
        Command::Compile(args) => {
            let bytes = std::fs::read(&args.module)
                .with_context(|| format!("reading {}", args.module.display()))?;
            let target = args.target.clone();
            let package = tokio::task::spawn_blocking(move || {
                shoal_node::precompile(&bytes, target.as_deref())
            })
            .await??;
            let packed = package.to_bytes();
            std::fs::write(&args.output, &packed)
                .with_context(|| format!("writing {}", args.output.display()))?;
            if json {
                print_json(&serde_json::json!({
                    "digest": package.digest,
                    "target": package.target,
                    "wasmtime": package.wasmtime,
                    "engine": package.engine,
                    "size": packed.len(),
                }));
            } else {
                println!(
                    "{}: {} for {} ({} bytes)",
                    args.output.display(),
                    package.digest,
                    package.target,
                    packed.len()
                );
            }
        }
        Command::Modules => {
            let modules = client.get("/v1/modules").await?;
            if json {
                print_json(&modules);
            } else {
                let mut table = table(["DIGEST", "NAMES", "KIND", "SIZE", "CREATED"]);
                for m in modules.as_array().into_iter().flatten() {
                    let names: Vec<String> = m["names"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(text)
                        .collect();
                    table.add_row([
                        text(&m["digest"]),
                        names.join(","),
                        text(&m["kind"]),
                        text(&m["size"]),
                        text(&m["created"]),
                    ]);
                }
                println!("{table}");
            }
        }
        Command::Call(args) => call(&client, args).await?,
        Command::Ps => {
            let services = client.get("/v1/services").await?;
            let mut statuses = Vec::new();
            for service in services.as_array().into_iter().flatten() {
                let name = service["name"].as_str().unwrap_or_default();
                statuses.push(client.get(&format!("/v1/services/{name}/status")).await?);
            }
            if json {
                print_json(&Value::Array(statuses));
            } else {
                let mut table = table([
                    "NAME",
                    "REPLICAS",
                    "DESIRED",
                    "MIN",
                    "MAX",
                    "BUSY",
                    "IN-FLIGHT",
                    "QUEUED",
                    "LOAD",
                    "RPS",
                    "P50",
                    "P99",
                    "MEM-RES%",
                    "CPU-RES%",
                    "CPU-SEC",
                    "CPU-USE%",
                    "NODES",
                ]);
                for s in &statuses {
                    let ms =
                        |v: &Value| v.as_f64().map_or("-".to_owned(), |ms| format!("{ms:.1}ms"));
                    let pct = |v: &Value| {
                        v.as_f64()
                            .map_or("-".to_owned(), |r| format!("{:.1}", r * 100.0))
                    };
                    table.add_row([
                        text(&s["name"]),
                        text(&s["replicas"]["current"]),
                        text(&s["replicas"]["desired"]),
                        text(&s["replicas"]["min"]),
                        text(&s["replicas"]["max"]),
                        text(&s["replicas"]["busy"]),
                        text(&s["in_flight"]),
                        text(&s["queued"]),
                        s["load"]["per_replica"]
                            .as_f64()
                            .map_or("-".into(), |l| format!("{l:.2}")),
                        s["requests"]["per_second"]
                            .as_f64()
                            .map_or("-".into(), |r| format!("{r:.1}")),
                        ms(&s["latency_ms"]["p50"]),
                        ms(&s["latency_ms"]["p99"]),
                        pct(&s["resource_allocation"]["total"]["memory"]),
                        pct(&s["resource_allocation"]["total"]["cpu"]),
                        s["cpu"]["used_seconds"]
                            .as_f64()
                            .map_or("-".into(), |seconds| format!("{seconds:.3}")),
                        pct(&s["cpu"]["share"]),
                        s["nodes"]
                            .as_object()
                            .map(|nodes| {
                                nodes
                                    .iter()
                                    .map(|(node, replicas)| format!("{node}:{replicas}"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                    ]);
                }
                println!("{table}");
            }
        }
        Command::Scale { name, min, max } => {
            anyhow::ensure!(
                min.is_some() || max.is_some(),
                "nothing to change: pass --min, --max or both"
            );
            let service = client.get(&format!("/v1/services/{name}")).await?;
            let mut spec = service["spec"].clone();
            if let Some(min) = min {
                spec["scale"]["min"] = min.into();
            }
            if let Some(max) = max {
                spec["scale"]["max"] = max.into();
            }
            let updated = client
                .send(
                    client
                        .request(reqwest::Method::PUT, &format!("/v1/services/{name}"))
                        .json(&spec),
                )
                .await?;
            if json {
                print_json(&updated);
            } else {
                let scale = &updated["spec"]["scale"];
                println!(
                    "{name}: min {} max {} (revision {})",
                    scale["min"], scale["max"], updated["revision"]
                );
            }
        }
        Command::Nodes => {
            let nodes = client.get("/v1/nodes").await?;
            if json {
                print_json(&nodes);
            } else {
                let mut table = table([
                    "NAME", "ALIVE", "API", "GATEWAY", "CPU", "MEMORY", "CPU-RES%", "MEM-RES%",
                    "REPLICAS",
                ]);
                for n in nodes.as_array().into_iter().flatten() {
                    let pct = |v: &Value| {
                        v.as_f64()
                            .map_or("-".to_owned(), |r| format!("{:.1}", r * 100.0))
                    };
                    let used = |what: &str| {
                        format!(
                            "{}/{}",
                            text(&n["reserved"][what]),
                            text(&n["capacity"][what])
                        )
                    };
                    let name = text(&n["name"]);
                    table.add_row([
                        if n["local"] == true {
                            format!("{name} (this)")
                        } else {
                            name
                        },
                        text(&n["alive"]),
                        text(&n["api"]),
                        text(&n["gateway"]),
                        used("cpu"),
                        used("memory"),
                        pct(&n["resource_allocation"]["cpu"]),
                        pct(&n["resource_allocation"]["memory"]),
                        text(&n["replicas"]),
                    ]);
                }
                println!("{table}");
            }
        }
        Command::Kubeconfig { ca, data_dir } => {
            print!(
                "{}",
                kubeconfig(&cli.api, cli.token.as_deref(), ca, &data_dir)?
            );
        }
        Command::Logs {
            name,
            follow,
            tail,
            since,
        } => print_log(&client, &name, follow, tail, since).await?,
        Command::New { name, template } => {
            let dir = crate::dev::new_project(std::path::Path::new("."), &name, &template)?;
            println!("created {} from {template}", dir.display());
            println!("next: shoal dev {name}    (builds, deploys, and redeploys on every change)");
        }
        Command::Dev(args) => crate::dev::dev(&client, &cli.api, args).await?,
        Command::Rollback { name, to } => {
            let path = match to {
                Some(to) => format!("/v1/services/{name}/rollback?to={to}"),
                None => format!("/v1/services/{name}/rollback"),
            };
            let updated = client
                .send(client.request(reqwest::Method::POST, &path))
                .await?;
            if json {
                print_json(&updated);
            } else {
                println!(
                    "{name}: rolled back, now at revision {}",
                    updated["revision"]
                );
            }
        }
        Command::Events { name } => {
            let events = client.get(&format!("/v1/services/{name}/events")).await?;
            if json {
                print_json(&events);
            } else {
                let mut table = table(["TIME", "FROM", "TO", "REASON"]);
                for e in events.as_array().into_iter().flatten() {
                    table.add_row([
                        text(&e["time"]),
                        text(&e["from"]),
                        text(&e["to"]),
                        text(&e["reason"]),
                    ]);
                }
                println!("{table}");
            }
        }
    }
    Ok(())
}

/// A kubeconfig for the API at `api`: one cluster, one user with `token`, one context
/// (namespace `default`) made current. Values are JSON-quoted, which YAML reads as they are.
pub fn kubeconfig(
    api: &str,
    token: Option<&str>,
    ca: Option<PathBuf>,
    data_dir: &std::path::Path,
) -> anyhow::Result<String> {
    use base64::Engine as _;
    let quote = |text: &str| Value::String(text.to_owned()).to_string();
    let server = api.trim_end_matches('/');
    let mut cluster = format!("    server: {}\n", quote(server));
    if server.starts_with("https://") {
        let ca = ca.unwrap_or_else(|| data_dir.join(crate::tls::SELF_SIGNED_CERT));
        let pem = std::fs::read(&ca).with_context(|| {
            format!(
                "reading the certificate to trust, {} (pass --ca, or --data-dir of a node started \
                 with --tls-self-signed)",
                ca.display()
            )
        })?;
        let data = base64::engine::general_purpose::STANDARD.encode(pem);
        cluster.push_str(&format!(
            "    certificate-authority-data: {}\n",
            quote(&data)
        ));
    }
    let user = match token {
        Some(token) => format!("    token: {}\n", quote(token)),
        None => "    {}\n".to_owned(),
    };
    Ok(format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: shoal\nclusters:\n- name: shoal\n  cluster:\n{cluster}\
         users:\n- name: shoal\n  user:\n{user}\
         contexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: shoal\n    namespace: default\n"
    ))
}

/// Streams a service's log to stdout as it arrives.
/// Prints a service's log: its newest `tail` lines (all without), then, with `follow`, each
/// new one.
pub(crate) async fn print_log(
    client: &Client,
    name: &str,
    follow: bool,
    tail: Option<usize>,
    since: Option<String>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    // Built apart: the serializer is not Send, so it may not live across an await.
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("follow", &follow.to_string());
        if let Some(tail) = tail {
            query.append_pair("tail", &tail.to_string());
        }
        if let Some(since) = since {
            query.append_pair("since", &since);
        }
        query.finish()
    };
    let path = format!("/v1/services/{name}/logs?{query}");
    let request = client.request(reqwest::Method::GET, &path);
    let mut response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the shoal API at {}", client.api))?;
    let status = response.status();
    if !status.is_success() {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::bail!("{} ({status})", text(&body["error"]));
    }
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| anyhow::anyhow!("reading the log: {error}"))?
    {
        // Locked per chunk: `shoal dev` prints its own lines between them.
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
    Ok(())
}

async fn call(client: &Client, args: CallArgs) -> anyhow::Result<()> {
    let gateway = match args.gateway {
        Some(gateway) => gateway,
        None => client.get("/v1/node").await?["gateway"]
            .as_str()
            .context("the node did not report its gateway address; pass --gateway")?
            .to_owned(),
    };
    let path = args.path.trim_start_matches('/');
    let url = format!("{}/{}/{path}", gateway.trim_end_matches('/'), args.name);
    let method = reqwest::Method::from_bytes(args.method.as_bytes())
        .with_context(|| format!("invalid method {:?}", args.method))?;
    let mut request = reqwest::Client::new().request(method, &url);
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("-H {header:?} is not 'Name: value'"))?;
        request = request.header(name.trim(), value.trim());
    }
    if let Some(data) = args.data {
        request = request.body(data);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    let status = response.status();
    let kind = response
        .headers()
        .get(shoal_gateway::ERROR_KIND_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.context("reading the response")?;
    if let Some(kind) = kind {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{message} ({status}, {kind})");
    }
    use std::io::Write as _;
    std::io::stdout().write_all(&body)?;
    if !status.is_success() {
        anyhow::bail!("the service answered {status}");
    }
    Ok(())
}

fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    table
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn short_digest(digest: &str) -> String {
    digest.get(..19).unwrap_or(digest).to_owned()
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
