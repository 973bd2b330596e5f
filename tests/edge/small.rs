//! Small boxes: an address space too small for the pooling allocator, a data directory on a
//! disk that fills up, and a damaged artifact cache on a node that cannot recompile.

use std::path::{Path, PathBuf};

use super::precompiled::{TOKEN, compile_for, send};
use super::*;

/// 64 GiB: room for a dozen on-demand instances (4 GiB of address space each), not for
/// pooling a thousand (about 4 TiB).
const ADDRESS_SPACE: &str = "--as=68719476736";

#[tokio::test(flavor = "multi_thread")]
async fn a_limited_address_space_falls_back_to_on_demand_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let node = ChildNode::start_wrapped(
        &["prlimit", ADDRESS_SPACE, "--"],
        &shoal_bin(),
        dir.path(),
        &[],
    )
    .await;
    let info = node.get_json("/v1/node").await;
    assert_eq!(info["allocator"], "on-demand", "{info}");
    let reason = info["allocator_reason"].as_str().unwrap();
    assert!(
        reason.contains("limited to 64 GiB (ulimit -v)") && reason.contains("1000 instances"),
        "{reason}"
    );
    let reply = post(
        format!("{}/v1/deploy/hello", node.api),
        guest_artifacts::bytes(HELLO_HTTP),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get(format!("{}/hello/", node.gateway))))
        .collect();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "hello from wasm\n")
        );
    }
    node.kill9().await;

    // Fewer instances fit in the same space: pooling again, as --max-instances says.
    let node = ChildNode::start_wrapped(
        &["prlimit", ADDRESS_SPACE, "--"],
        &shoal_bin(),
        dir.path(),
        &["--max-instances".into(), "2".into()],
    )
    .await;
    let info = node.get_json("/v1/node").await;
    assert_eq!(info["allocator"], "pooling", "{info}");
    assert!(
        info["allocator_reason"]
            .as_str()
            .unwrap()
            .contains("2 instances"),
        "{info}"
    );
    assert_eq!(
        get(format!("{}/hello/", node.gateway)).await.body,
        "hello from wasm\n"
    );
    node.kill9().await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "shoal-test"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (scripts/test runs as root in CI)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk refuses more; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Down to the last byte.
        for _ in 0..(64 << 10) {
            if file.write_all(&[0]).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_deploys_cleanly_and_keeps_serving() {
    let disk = SmallDisk::mount("24m");
    let data = disk.path().join("data");
    let node = ChildNode::start(&data).await;
    let reply = post(
        format!("{}/v1/deploy/hello", node.api),
        guest_artifacts::bytes(HELLO_HTTP),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let modules = node.get_json("/v1/modules").await;
    let services = node.get_json("/v1/services").await;

    let filler = disk.fill();
    for _ in 0..2 {
        let reply = post(
            format!("{}/v1/deploy/counter", node.api),
            guest_artifacts::bytes(COUNTER_HTTP),
        )
        .await;
        assert_eq!(reply.status, 507, "{}", reply.body);
        assert_eq!(reply.kind.as_deref(), Some("storage-full"));
        assert!(
            reply.error().contains("No space left on device"),
            "{}",
            reply.error()
        );
    }
    assert_eq!(node.get_json("/v1/modules").await, modules);
    assert_eq!(node.get_json("/v1/services").await, services);
    for _ in 0..5 {
        let reply = get(format!("{}/hello/", node.gateway)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "hello from wasm\n")
        );
    }

    // Space freed: deploys work again, without a restart.
    std::fs::remove_file(filler).unwrap();
    let reply = post(
        format!("{}/v1/deploy/counter", node.api),
        guest_artifacts::bytes(COUNTER_HTTP),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(get(format!("{}/counter/", node.gateway)).await.status, 200);
    node.kill9().await;

    // And what was written survives.
    let node = ChildNode::start(&data).await;
    assert_eq!(node.get_json("/v1/node").await["services"], 2);
    node.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_cache_is_refused_clearly_by_a_node_that_cannot_recompile() {
    let dir = tempfile::tempdir().unwrap();
    let full = ChildNode::start(dir.path()).await;
    for name in ["hello", "other"] {
        let reply = post(
            format!("{}/v1/deploy/{name}", full.api),
            guest_artifacts::bytes(if name == "hello" {
                HELLO_HTTP
            } else {
                ECHO_CGI
            }),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let digest = full.get_json("/v1/services/hello").await["spec"]["module"]
        .as_str()
        .unwrap()
        .replace(':', "-");
    full.kill9().await;
    let artifact = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().contains(&digest))
        .expect("hello's artifact");
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, bytes).unwrap();

    let edge =
        ChildNode::start_with(&edge_bin(), dir.path(), &super::precompiled::with_token()).await;
    let node_url = format!("{}/v1/node", edge.api);
    let info = send(reqwest::Method::GET, node_url, Some(TOKEN), vec![])
        .await
        .json();
    assert_eq!(info["compile"]["cache_rejected"], 1, "{info}");
    // The other service is unharmed.
    assert_eq!(get(format!("{}/other/", edge.gateway)).await.status, 200);
    let reply = get(format!("{}/hello/", edge.gateway)).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.error().contains("no compiler") && reply.error().contains("shoal compile"),
        "{}",
        reply.error()
    );

    // Doing what it says: the package installed, the service runs, without a restart.
    let out = tempfile::tempdir().unwrap();
    let target = info["target"].as_str().unwrap();
    let package = compile_for(HELLO_HTTP, target, &out.path().join("hello.cwasm"));
    let modules = format!("{}/v1/modules", edge.api);
    let reply = send(reqwest::Method::POST, modules, Some(TOKEN), package).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = get(format!("{}/hello/", edge.gateway)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello from wasm\n")
    );
    edge.kill9().await;
}
