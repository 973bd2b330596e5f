//! Builds every guest under `guests/` and writes `$OUT_DIR/gen.rs`, which names the resulting `.wasm` files.
//!
//! The guests are a nested workspace with their own `Cargo.lock`, so this runs a separate `cargo build` per wasm target.
//! It uses its own target directory under `OUT_DIR`, so it never waits on the outer build's lock.
//! The crate name's suffix decides how a guest is built:
//! `-http` crates are `cdylib` wasi:http components for `wasm32-wasip2`,
//! `-cgi` crates are `bin` WASI preview 1 commands for `wasm32-wasip1`.
//! `hello-cgi` is also built for `wasm32-wasip2`, giving tests a component without the HTTP export.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const HTTP_TARGET: &str = "wasm32-wasip2";
const CGI_TARGET: &str = "wasm32-wasip1";
/// The library the wasi:http guests share, which is not a guest itself.
const HELPER: &str = "helper";

/// The CGI guest that is additionally built as a wasi:cli command component.
const CGI_P2_GUEST: &str = "hello-cgi";

/// How a guest is built, decided by its crate name.
#[derive(Clone, Copy)]
enum Kind {
    Http,
    Cgi,
}

struct Guest {
    /// The crate name, which is also its directory under `guests/`.
    name: String,
    kind: Kind,
}

/// One `.wasm` file handed to the tests.
struct Artifact {
    /// The identifier used in `foreach_guest!` and, uppercased, as the constant's name.
    ident: String,
    path: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let guests_dir = manifest_dir.join("../../guests");
    let guests_dir = guests_dir.canonicalize().unwrap_or_else(|error| {
        panic!(
            "guests directory {} not found: {error}",
            guests_dir.display()
        )
    });
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    let target_dir = out_dir.join("guests");

    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("Cargo.toml").display()
    );
    // A new guest changes the lock file, because every workspace member is listed there.
    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("Cargo.lock").display()
    );
    // The helper library the guests share is not a guest, but a change to it changes them.
    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join(HELPER).join("src").display()
    );
    let guests = discover_guests(&guests_dir);
    for guest in &guests {
        let crate_dir = guests_dir.join(&guest.name);
        println!(
            "cargo:rerun-if-changed={}",
            crate_dir.join("Cargo.toml").display()
        );
        println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());
    }

    let http_names: Vec<&str> = guests
        .iter()
        .filter(|guest| matches!(guest.kind, Kind::Http))
        .map(|guest| guest.name.as_str())
        .collect();
    let cgi_names: Vec<&str> = guests
        .iter()
        .filter(|guest| matches!(guest.kind, Kind::Cgi))
        .map(|guest| guest.name.as_str())
        .collect();
    assert!(
        cgi_names.contains(&CGI_P2_GUEST),
        "guest {CGI_P2_GUEST} is missing from {}",
        guests_dir.display()
    );
    let mut p2_names = http_names.clone();
    p2_names.push(CGI_P2_GUEST);
    cargo_build(&guests_dir, &target_dir, HTTP_TARGET, &p2_names);
    cargo_build(&guests_dir, &target_dir, CGI_TARGET, &cgi_names);

    let artifacts: Vec<Artifact> = guests
        .iter()
        .map(|guest| {
            let (target, file_name) = match guest.kind {
                // Cargo names a cdylib after its library name, which has underscores.
                Kind::Http => (
                    HTTP_TARGET,
                    format!("{}.wasm", guest.name.replace('-', "_")),
                ),
                Kind::Cgi => (CGI_TARGET, format!("{}.wasm", guest.name)),
            };
            Artifact {
                ident: guest.name.replace('-', "_"),
                path: built_path(&target_dir, target, &file_name),
            }
        })
        .collect();
    let p2_command = Artifact {
        ident: format!("{}_p2", CGI_P2_GUEST.replace('-', "_")),
        path: built_path(&target_dir, HTTP_TARGET, &format!("{CGI_P2_GUEST}.wasm")),
    };

    let generated = generate(&artifacts, &p2_command);
    let gen_path = out_dir.join("gen.rs");
    std::fs::write(&gen_path, generated)
        .unwrap_or_else(|error| panic!("failed to write {}: {error}", gen_path.display()));
}

/// Lists the crates in `guests/`, sorted so that the generated code is stable.
fn discover_guests(guests_dir: &Path) -> Vec<Guest> {
    let entries = std::fs::read_dir(guests_dir)
        .unwrap_or_else(|error| panic!("failed to list {}: {error}", guests_dir.display()));
    let mut guests = Vec::new();
    for entry in entries {
        let entry = entry
            .unwrap_or_else(|error| panic!("failed to list {}: {error}", guests_dir.display()));
        if !entry.path().join("Cargo.toml").is_file() {
            continue;
        }
        let name = entry
            .file_name()
            .into_string()
            .unwrap_or_else(|name| panic!("guest directory {name:?} is not UTF-8"));
        if name == HELPER {
            continue;
        }
        let kind = if name.ends_with("-http") {
            Kind::Http
        } else if name.ends_with("-cgi") {
            Kind::Cgi
        } else {
            // Such a crate would not be a workspace member either, so it would silently never be built.
            panic!(
                "guest {name:?} must end in -http (wasi:http component) or -cgi (WASI preview 1 command); see guests/README.md"
            )
        };
        guests.push(Guest { name, kind });
    }
    guests.sort_by(|left, right| left.name.cmp(&right.name));
    assert!(
        !guests.is_empty(),
        "no guest crates found in {}",
        guests_dir.display()
    );
    guests
}

/// Runs `cargo build` on the guest workspace for one target.
fn cargo_build(guests_dir: &Path, target_dir: &Path, target: &str, package_names: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--locked")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guests_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(target);
    for package_name in package_names {
        command.arg("--package").arg(package_name);
    }
    command.env("CARGO_TARGET_DIR", target_dir);
    // The outer build's flags and wrappers are meant for the host crates, not for wasm:
    // host-only flags (`-C target-cpu=native`, coverage instrumentation) break the guest build,
    // and a workspace wrapper such as clippy-driver must not lint the guests.
    // The guest workspace's own configuration is all that applies.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let is_outer_setting = name.starts_with("CARGO_BUILD_")
            || name.starts_with("CARGO_PROFILE_")
            || name.starts_with("CARGO_TARGET_")
            || name.starts_with("CARGO_ENCODED_")
            || matches!(
                name,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_INCREMENTAL"
            );
        if is_outer_setting && name != "CARGO_TARGET_DIR" {
            command.env_remove(name);
        }
    }
    // Miri replaces `RUSTC` with its own driver, which cannot build for wasm (wasmtime's build.rs does the same).
    if std::env::var_os("CARGO_CFG_MIRI").is_some() {
        command.env_remove("RUSTC");
    }

    let output = command
        .output()
        .unwrap_or_else(|error| panic!("failed to run {command:?}: {error}"));
    // Cargo shows a build script's stderr when the build fails, or with `-vv`.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("may not be installed") || stderr.contains("can't find crate for `std`")
        {
            panic!(
                "building the guests needs the {target} target: run `rustup target add {CGI_TARGET} {HTTP_TARGET}` (the build said: target may not be installed)"
            );
        }
        panic!(
            "building the guests for {target} failed ({}); see the cargo output above",
            output.status
        );
    }
}

/// Returns where cargo put `file_name`, panicking if the build did not produce it.
fn built_path(target_dir: &Path, target: &str, file_name: &str) -> PathBuf {
    let path = target_dir.join(target).join("release").join(file_name);
    assert!(
        path.is_file(),
        "guest build succeeded but {} does not exist",
        path.display()
    );
    path
}

fn generate(artifacts: &[Artifact], p2_command: &Artifact) -> String {
    let mut generated = String::from("// Generated by tests/artifacts/build.rs; do not edit.\n\n");
    for artifact in artifacts.iter().chain([p2_command]) {
        let path = artifact
            .path
            .to_str()
            .unwrap_or_else(|| panic!("guest path {} is not UTF-8", artifact.path.display()));
        writeln!(
            generated,
            "/// Path to the `{}` guest's `.wasm` file.",
            artifact.ident
        )
        .expect("writing to a String cannot fail");
        writeln!(
            generated,
            "pub const {}: &str = {path:?};\n",
            artifact.ident.to_uppercase()
        )
        .expect("writing to a String cannot fail");
    }

    generated.push_str("/// Every artifact as `(name, path)`, including the extra wasm32-wasip2 build of `hello-cgi`.\n");
    generated.push_str("pub const ALL: &[(&str, &str)] = &[\n");
    for artifact in artifacts.iter().chain([p2_command]) {
        writeln!(
            generated,
            "    ({:?}, {}),",
            artifact.ident,
            artifact.ident.to_uppercase()
        )
        .expect("writing to a String cannot fail");
    }
    generated.push_str("];\n\n");

    generated.push_str(
        "/// Invokes `$mac!(name);` once for every guest crate in `guests/`, named like its constant but in lower case.\n\
         ///\n\
         /// The extra wasm32-wasip2 build of `hello-cgi` is not a separate guest and is not listed.\n\
         #[macro_export]\n\
         macro_rules! foreach_guest {\n    ($mac:ident) => {\n",
    );
    for artifact in artifacts {
        writeln!(generated, "        $mac!({});", artifact.ident)
            .expect("writing to a String cannot fail");
    }
    generated.push_str("    };\n}\n");
    generated
}

fn env_var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|error| panic!("cargo should set {name} for build scripts: {error}"))
}
