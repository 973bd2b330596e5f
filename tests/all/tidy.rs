//! Tidy checks over the whole repository, in the style of rust-analyzer's `tidy.rs`:
//! cheap rules that keep the code base consistent, enforced by `cargo test`.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, files);
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let mut files = Vec::new();
    for dir in [
        "spec", "runtime", "registry", "gateway", "node", "api", "cli", "tests", "guests",
    ] {
        rust_files(&repo().join(dir), &mut files);
    }
    assert!(files.len() > 30, "found only {} Rust files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must open with a `//!` comment saying what it is and why",
            file.display()
        );
    }
}

#[test]
fn no_built_wasm_is_committed() {
    let output = std::process::Command::new("git")
        .args(["ls-files", "*.wasm", "*.cwasm", "*.redb"])
        .current_dir(repo())
        .output();
    // Outside a git checkout (a source tarball) there is nothing to check.
    if let Some(output) = output.ok().filter(|o| o.status.success()) {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "",
            "built artifacts are tracked in git"
        );
    }
}

/// The workspace's dependency graph as Cargo resolves it for this machine: for each package,
/// the packages it uses at run time (no dev or build dependencies), by name.
fn runtime_dependencies() -> std::collections::BTreeMap<String, Vec<String>> {
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(repo())
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: std::collections::HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|kind| kind["kind"].is_null())
                })
                .map(|dep| names[dep["pkg"].as_str().unwrap()].to_owned())
                .collect();
            (names[node["id"].as_str().unwrap()].to_owned(), deps)
        })
        .collect()
}

/// Everything `package` uses at run time, directly or not.
fn closure(graph: &std::collections::BTreeMap<String, Vec<String>>, package: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![package.to_owned()];
    while let Some(next) = todo.pop() {
        for dep in &graph[&next] {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen.into_iter().collect()
}

/// The layering of ARCHITECTURE.md, as facts about Cargo's dependency graph: what each crate
/// may use is what it depends on, so a rule kept here cannot be broken by an import.
#[test]
fn the_layering_holds_as_cargo_facts() {
    let graph = runtime_dependencies();
    // The product's crates; the test harnesses (publish = false) may use anything.
    let product = [
        "shoal-spec",
        "shoal-runtime",
        "shoal-registry",
        "shoal-registry-redb",
        "shoal-registry-etcd",
        "shoal-gateway",
        "shoal-node",
        "shoal-api",
        "shoal",
    ];
    let direct_users = |dependency: &str| -> Vec<&str> {
        product
            .iter()
            .copied()
            .filter(|package| graph[*package].iter().any(|dep| dep == dependency))
            .collect()
    };
    assert_eq!(
        direct_users("redb"),
        ["shoal-registry-redb"],
        "only the redb backend knows redb"
    );
    assert_eq!(
        direct_users("etcd-client"),
        ["shoal-registry-etcd"],
        "only the etcd backend knows etcd"
    );
    for engine in ["wasmtime", "wasmtime-wasi", "wasmtime-wasi-http"] {
        assert_eq!(
            direct_users(engine),
            ["shoal-runtime"],
            "only the runtime knows {engine}"
        );
    }
    assert_eq!(
        direct_users("axum"),
        ["shoal-api", "shoal"],
        "only the surfaces and the binary know axum"
    );

    let spec = closure(&graph, "shoal-spec");
    for forbidden in ["redb", "wasmtime", "tokio", "hyper", "http"] {
        assert!(
            !spec.iter().any(|dep| dep == forbidden),
            "shoal-spec depends on {forbidden}"
        );
    }
    let registry = closure(&graph, "shoal-registry");
    for forbidden in ["redb", "wasmtime", "hyper", "etcd-client"] {
        assert!(
            !registry.iter().any(|dep| dep == forbidden),
            "the store trait depends on {forbidden}"
        );
    }
    let etcd = closure(&graph, "shoal-registry-etcd");
    for forbidden in [
        "redb",
        "wasmtime",
        "shoal-node",
        "shoal-runtime",
        "shoal-gateway",
    ] {
        assert!(
            !etcd.iter().any(|dep| dep == forbidden),
            "the etcd backend depends on {forbidden}"
        );
    }
    let gateway = closure(&graph, "shoal-gateway");
    for forbidden in ["shoal-registry", "shoal-registry-redb", "redb", "axum"] {
        assert!(
            !gateway.iter().any(|dep| dep == forbidden),
            "the gateway depends on {forbidden}"
        );
    }
    let node = closure(&graph, "shoal-node");
    for forbidden in [
        "shoal-registry-redb",
        "shoal-registry-etcd",
        "redb",
        "etcd-client",
        "axum",
    ] {
        assert!(
            !node.iter().any(|dep| dep == forbidden),
            "the node core depends on {forbidden}"
        );
    }
    // The closure is real: the binary reaches every layer.
    let binary = closure(&graph, "shoal");
    for layer in ["redb", "wasmtime", "shoal-node", "axum"] {
        assert!(
            binary.iter().any(|dep| dep == layer),
            "shoal does not reach {layer}"
        );
    }
}

/// The edge build (`-p shoal --no-default-features`) has neither a compiler nor an etcd
/// client: no Cranelift, no gRPC stack, and nothing whose build needs `protoc`.
#[test]
fn the_edge_build_has_no_compiler_and_no_etcd_client() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "shoal",
            "--no-default-features",
            "-e",
            "normal",
        ])
        .args(["--prefix", "none", "--locked", "--offline"])
        .current_dir(repo())
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        crates.contains("wasmtime"),
        "the tree is not the binary's: {tree}"
    );
    for forbidden in [
        "cranelift-codegen",
        "etcd-client",
        "tonic",
        "prost",
        "shoal-registry-etcd",
    ] {
        assert!(
            !crates.contains(forbidden),
            "the edge build has {forbidden}"
        );
    }
}
