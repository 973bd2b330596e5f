//! The runtime on its own, without HTTP servers or a registry: every guest compiles to
//! the kind its name says, and a service answers a request in-process.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use shoal_runtime::{
    Error, GuestKind, RequestContext, Runtime, RuntimeConfig, Service, ServiceConfig,
    TickerPriority,
};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .expect("starting the runtime")
}

#[test]
fn every_guest_is_classified_by_its_name() {
    let runtime = runtime();
    for (name, path) in guest_artifacts::ALL {
        let result = runtime.compile(name, &guest_artifacts::bytes(path));
        match *name {
            "hello_cgi_p2" => assert!(
                matches!(&result, Err(Error::InvalidModule(m)) if m.contains("does not export wasi:http/incoming-handler")),
                "{name}: {:?}",
                result.err()
            ),
            _ if name.ends_with("_http") => {
                assert_eq!(result.unwrap().kind(), GuestKind::Http, "{name}")
            }
            _ => assert_eq!(result.unwrap().kind(), GuestKind::Cgi, "{name}"),
        }
    }
    assert_eq!(
        runtime.compile_stats().compiled,
        guest_artifacts::ALL.len() as u64 - 1
    );
}

/// A tick must not wait for a core behind the guests it interrupts: where the process may use
/// the kernel's real-time class (`CAP_SYS_NICE`, as root), the ticker's thread is in it.
#[cfg(target_os = "linux")]
#[test]
fn the_epoch_ticker_runs_in_the_real_time_class_when_allowed() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_NICE: u32 = 23;
    let runtime = runtime();
    if effective & (1 << CAP_SYS_NICE) == 0 {
        assert_ne!(runtime.ticker_priority(), TickerPriority::RealTime);
        return;
    }
    assert_eq!(runtime.ticker_priority(), TickerPriority::RealTime);
    // And the kernel says so: some ticker thread of this process (other tests run
    // runtimes too) is SCHED_FIFO (policy 1 in /proc/<tid>/sched).
    let fifo_tickers = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let sched = std::fs::read_to_string(path.join("sched")).ok()?;
            let policy = sched
                .lines()
                .find(|line| line.starts_with("policy"))?
                .rsplit(':')
                .next()?
                .trim()
                .to_owned();
            (name.trim() == "shoal-epoch" && policy == "1").then_some(())
        })
        .count();
    assert!(fifo_tickers >= 1, "no ticker thread is SCHED_FIFO");
}

#[test]
fn a_cache_directory_serves_a_second_runtime_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_owned()),
        max_instances: 16,
        ..RuntimeConfig::default()
    };
    let bytes = guest_artifacts::bytes(guest_artifacts::HELLO_HTTP);
    Runtime::new(config.clone())
        .unwrap()
        .compile("hello", &bytes)
        .unwrap();
    let second = Runtime::new(config).unwrap();
    let compiled = second
        .load("hello", || {
            panic!("the bytes are not needed when the cache is sound")
        })
        .unwrap();
    assert!(compiled.from_cache());
    assert_eq!(second.compile_stats().compiled, 0);
}

async fn answer(service: &Service) -> (u16, Bytes) {
    let request = http::Request::builder()
        .uri("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service
        .handle(request, RequestContext::default())
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn services_answer_in_process() {
    let runtime = runtime();
    for (path, expected) in [
        (guest_artifacts::HELLO_HTTP, "hello from wasm\n"),
        (guest_artifacts::HELLO_CGI, "hello from cgi\n"),
    ] {
        let compiled = runtime
            .compile(path, &guest_artifacts::bytes(path))
            .unwrap();
        let service = Service::new(
            compiled,
            ServiceConfig {
                name: "hello".into(),
                ..ServiceConfig::default()
            },
        );
        assert_eq!(answer(&service).await, (200, Bytes::from(expected)));
    }
}

/// Compiled in tiers: Winch's code at once, Cranelift's from the background compiler, which
/// reads the bytes again when its turn comes, caches the code (a second runtime loads it), and
/// survives a source that panics.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread")]
async fn tiers_switch_to_optimized_code_cached_for_the_next_runtime() {
    use shoal_runtime::Tier;
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_owned()),
        max_instances: 16,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config.clone()).unwrap();
    assert_eq!(runtime.tiering(), Ok(()));
    let bytes = guest_artifacts::bytes(guest_artifacts::HELLO_HTTP);
    let compiled = runtime.compile_tiered("hello", &bytes).unwrap();
    assert_eq!(compiled.tier(), Tier::Baseline);
    let service = Service::new(compiled.clone(), ServiceConfig::default());
    assert_eq!(
        answer(&service).await,
        (200, Bytes::from("hello from wasm\n"))
    );

    // A module whose source panics is left on baseline code; the next one is optimized.
    let broken = runtime
        .compile_tiered(
            "broken",
            &guest_artifacts::bytes(guest_artifacts::HELLO_CGI),
        )
        .unwrap();
    runtime.optimize_later("broken", &broken, Box::new(|| panic!("the store is gone")));
    runtime.optimize_later("hello", &compiled, Box::new(move || Ok(bytes)));
    tokio::time::timeout(std::time::Duration::from_secs(120), compiled.optimized())
        .await
        .expect("optimized within 120 s");
    assert_eq!(broken.tier(), Tier::Baseline);
    assert_eq!(service.tier(), Tier::Optimized);
    assert_eq!(
        answer(&service).await,
        (200, Bytes::from("hello from wasm\n"))
    );
    let stats = runtime.compile_stats();
    assert_eq!((stats.baseline.compiles, stats.optimized.compiles), (2, 1));
    assert_eq!(stats.optimizing, 0);

    // The background compiler ran at nice 10 (field 19 of /proc/<tid>/stat): every such thread
    // of this process (other tests run runtimes too).
    let nice: Vec<i64> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            (name.trim() == "shoal-optimize").then(|| fields[16].parse().unwrap())
        })
        .collect();
    assert!(
        !nice.is_empty() && nice.iter().all(|&n| n == 10),
        "{nice:?}"
    );

    let second = Runtime::new(config).unwrap();
    let cached = second
        .cached("hello")
        .expect("the optimized code is cached");
    assert_eq!(cached.tier(), Tier::Optimized);
    assert!(second.cached("broken").is_none());
}

#[test]
fn without_tiering_uploads_compile_with_cranelift() {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 16,
        tiering: false,
        ..RuntimeConfig::default()
    })
    .unwrap();
    assert!(
        runtime
            .tiering()
            .unwrap_err()
            .contains("--compile optimized")
    );
    let compiled = runtime
        .compile_tiered(
            "hello",
            &guest_artifacts::bytes(guest_artifacts::HELLO_HTTP),
        )
        .unwrap();
    assert_eq!(compiled.tier(), shoal_runtime::Tier::Optimized);
}
