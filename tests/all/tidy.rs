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
