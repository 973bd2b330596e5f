//! The developer loop. `shoal new` writes a guest project from a template; `shoal dev` builds
//! it with cargo, deploys it to a node (starting one if none answers), prints its URL and its
//! guests' log, and on every change to its sources builds and deploys it again, as a new
//! revision, like `spin watch`. A build that fails prints the compiler's errors and deploys
//! nothing: the revision serving keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

use crate::commands::Client;

/// A project template: its name and its files, `{{name}}` standing for the project's name.
struct Template {
    name: &'static str,
    about: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "rust-http",
        about: "a wasi:http component in Rust (wasm32-wasip2)",
        files: &[
            (
                "Cargo.toml",
                include_str!("../templates/rust-http/Cargo.toml.tmpl"),
            ),
            (
                "src/lib.rs",
                include_str!("../templates/rust-http/src/lib.rs.tmpl"),
            ),
            (
                ".gitignore",
                include_str!("../templates/rust-http/gitignore"),
            ),
        ],
    },
    Template {
        name: "rust-cgi",
        about: "a CGI program in Rust, run once per request (wasm32-wasip1)",
        files: &[
            (
                "Cargo.toml",
                include_str!("../templates/rust-cgi/Cargo.toml.tmpl"),
            ),
            (
                "src/main.rs",
                include_str!("../templates/rust-cgi/src/main.rs.tmpl"),
            ),
            (
                ".gitignore",
                include_str!("../templates/rust-cgi/gitignore"),
            ),
        ],
    },
];

/// Writes the project `name` from `template` into `parent/name`, which must not exist.
pub(crate) fn new_project(parent: &Path, name: &str, template: &str) -> anyhow::Result<PathBuf> {
    // The project's name is its service's: a DNS label.
    name.parse::<shoal_spec::ServiceName>()
        .map_err(|error| anyhow::anyhow!("{error}: the project's name is its service's"))?;
    let template = TEMPLATES
        .iter()
        .find(|known| known.name == template)
        .with_context(|| {
            let known: Vec<String> = TEMPLATES
                .iter()
                .map(|t| format!("{} ({})", t.name, t.about))
                .collect();
            format!("no template {template:?}: choose {}", known.join(", "))
        })?;
    let dir = parent.join(name);
    anyhow::ensure!(!dir.exists(), "{} exists already", dir.display());
    for (path, text) in template.files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text.replace("{{name}}", name))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// What `shoal dev` needs to know of a cargo project.
#[derive(Debug)]
struct Project {
    dir: PathBuf,
    manifest: PathBuf,
    /// The package's name, the service's by default.
    name: String,
    /// `wasm32-wasip2` for a component, `wasm32-wasip1` for a CGI program.
    target: String,
}

impl Project {
    /// Reads the project in `dir` with `cargo metadata`.
    async fn read(dir: &Path) -> anyhow::Result<Project> {
        let manifest = dir.join("Cargo.toml");
        anyhow::ensure!(
            manifest.exists(),
            "{} has no Cargo.toml: `shoal new NAME` makes a project",
            dir.display()
        );
        let output = tokio::process::Command::new("cargo")
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--manifest-path",
            ])
            .arg(&manifest)
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("running cargo metadata: is cargo installed?")?;
        anyhow::ensure!(output.status.success(), "cargo metadata failed");
        let metadata: Value =
            serde_json::from_slice(&output.stdout).context("reading cargo metadata's output")?;
        let package = &metadata["packages"][0];
        let name = package["name"]
            .as_str()
            .context("cargo metadata names no package")?
            .to_owned();
        // A cdylib is a component; a bin, a CGI program; `[package.metadata.shoal] target`
        // says so outright.
        let cdylib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|target| target["kind"].to_string().contains("cdylib"));
        let target = package["metadata"]["shoal"]["target"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if cdylib {
                    "wasm32-wasip2".into()
                } else {
                    "wasm32-wasip1".into()
                }
            });
        Ok(Project {
            dir: dir.to_owned(),
            manifest,
            name,
            target,
        })
    }

    /// Builds the project; the module's path, or `None` when the build failed (cargo has
    /// printed why on stderr).
    async fn build(&self) -> anyhow::Result<Option<PathBuf>> {
        let mut child = tokio::process::Command::new("cargo")
            .args([
                "build",
                "--release",
                "--message-format=json-render-diagnostics",
            ])
            .args(["--target", &self.target, "--manifest-path"])
            .arg(&self.manifest)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running cargo build: is cargo installed?")?;
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().context("cargo's stdout")?).lines();
        let mut module = None;
        while let Some(line) = lines.next_line().await? {
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if message["reason"] == "compiler-artifact" {
                let wasm = message["filenames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|file| file.ends_with(".wasm"));
                if let Some(wasm) = wasm {
                    module = Some(PathBuf::from(wasm));
                }
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            return Ok(None);
        }
        module
            .map(Some)
            .with_context(|| format!("cargo built no .wasm for {}", self.target))
    }

    /// The size and modification time of every source file: everything but what builds
    /// and runs leave (`target/`, `.shoal/`, `.git/`).
    fn sources(&self) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
        let mut found = BTreeMap::new();
        let mut pending = vec![self.dir.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let skipped = dir == self.dir
                    && matches!(
                        entry.file_name().to_str(),
                        Some("target" | ".shoal" | ".git")
                    );
                let Ok(meta) = entry.metadata() else { continue };
                if skipped {
                    continue;
                } else if meta.is_dir() {
                    pending.push(path);
                } else {
                    found.insert(path, (meta.len(), meta.modified().ok()));
                }
            }
        }
        found
    }

    /// Waits until a source file changes, then until the sources have been still for a
    /// moment (an editor writes in steps).
    async fn changed(&self) {
        const POLL: Duration = Duration::from_millis(250);
        let before = self.sources();
        let mut now = before.clone();
        while now == before {
            tokio::time::sleep(POLL).await;
            now = self.sources();
        }
        loop {
            tokio::time::sleep(POLL).await;
            let later = self.sources();
            if later == now {
                return;
            }
            now = later;
        }
    }
}

/// `shoal dev`'s flags.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// The project's directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The service's name; default: the package's.
    #[arg(long)]
    pub name: Option<String>,
    /// Where a node started for it serves its gateway, when none answers at --api.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: std::net::SocketAddr,
}

/// Runs the developer loop until interrupted.
pub(crate) async fn dev(client: &Client, api: &str, args: DevArgs) -> anyhow::Result<()> {
    let project = Project::read(&args.dir).await?;
    let name = args.name.clone().unwrap_or_else(|| project.name.clone());
    name.parse::<shoal_spec::ServiceName>()
        .map_err(|error| anyhow::anyhow!("{error}: pass --name with a DNS label"))?;
    // A node this command starts lives as long as it does.
    let started = match client.get("/v1/node").await {
        Ok(_) => None,
        Err(_) => Some(start_node(api, &project.dir, args.gateway_listen).await?),
    };
    let gateway = client.get("/v1/node").await?["gateway"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut logs: Option<tokio::task::JoinHandle<()>> = None;
    let result = tokio::select! {
        result = async {
            loop {
                println!("building {} for {}", project.name, project.target);
                match project.build().await? {
                    Some(module) => {
                        let service = deploy(client, &name, &module).await?;
                        println!(
                            "{name} revision {} serves {}/{name}/",
                            service["revision"], gateway
                        );
                        if logs.is_none() {
                            let (client, name) = (client.clone(), name.clone());
                            logs = Some(tokio::spawn(async move {
                                if let Err(error) = crate::commands::print_log(&client, &name, true, Some(0), None).await {
                                    eprintln!("the log stopped: {error:#}");
                                }
                            }));
                        }
                    }
                    None => match client.get(&format!("/v1/services/{name}")).await {
                        Ok(service) => println!(
                            "build failed: {name} revision {} still serves",
                            service["revision"]
                        ),
                        Err(_) => println!("build failed: nothing deployed yet"),
                    },
                }
                println!("watching {} for changes", project.dir.display());
                project.changed().await;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        } => result,
        () = stopped() => Ok(()),
    };
    if let Some(logs) = logs {
        logs.abort();
    }
    if let Some(mut node) = started {
        // Its state is in redb, which a kill leaves whole.
        let _ = node.kill().await;
    }
    result
}

/// Resolves at Ctrl-C or SIGTERM.
async fn stopped() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Uploads the module and makes it the service's: a new revision of the spec there is, or a
/// new service.
async fn deploy(client: &Client, name: &str, module: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let uploaded = crate::commands::upload(client, bytes, None).await?;
    let mut spec = match client.get(&format!("/v1/services/{name}")).await {
        Ok(service) => service["spec"].clone(),
        Err(_) => serde_json::json!({}),
    };
    spec["module"] = uploaded["digest"].clone();
    client
        .put_json(&format!("/v1/services/{name}"), &spec)
        .await
}

/// Starts `shoal up` for the project: its data in the project's `.shoal/`, its log in
/// `.shoal/node.log`, the management API where `--api` points (it must be on loopback).
async fn start_node(
    api: &str,
    dir: &Path,
    gateway: std::net::SocketAddr,
) -> anyhow::Result<tokio::process::Child> {
    let address = api
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|rest| rest.parse::<std::net::SocketAddr>().ok())
        .filter(|address| address.ip().is_loopback())
        .with_context(|| {
            format!(
                "no node answers at {api}, and shoal dev starts one only on a loopback http address"
            )
        })?;
    let data = dir.join(".shoal");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log = std::fs::File::create(data.join("node.log")).context("creating the node's log")?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["up", "--data-dir"])
        .arg(&data)
        .args(["--api-listen", &address.to_string()])
        .args(["--gateway-listen", &gateway.to_string()])
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting shoal up")?;
    let mut ready = String::new();
    tokio::io::BufReader::new(child.stdout.take().context("the node's stdout")?)
        .read_line(&mut ready)
        .await?;
    anyhow::ensure!(
        !ready.is_empty(),
        "the node did not start: see {}",
        data.join("node.log").display()
    );
    println!("started a node: {}", ready.trim());
    Ok(child)
}
