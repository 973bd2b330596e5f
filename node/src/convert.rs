//! The one place the spec users write becomes what the engine runs: [`ServiceSpec`] into
//! [`SandboxLimits`], [`ReplicaSpec`], [`ScaleSettings`] and [`ServiceConfig`], and the
//! engine's numbers back into the spec's words (quantities, reasons).

use std::sync::Arc;

use shoal_registry::ServiceRecord;
use shoal_runtime::{
    GuestKind, ReplicaResources, ReplicaSpec, SandboxLimits, ScaleReason, ScaleSettings,
    ServiceConfig, Shortfall,
};
use shoal_spec::{ByteSize, Cpu, Isolation, ModuleKind, ServiceSpec};

/// What each request of the service may consume.
///
/// `limits.memory` is the limit in force: a normalized spec carries `resources.limits.memory`
/// there.
pub(crate) fn sandbox_limits(spec: &ServiceSpec) -> SandboxLimits {
    let limits = &spec.limits;
    SandboxLimits {
        memory: spec.memory_limit().bytes(),
        fuel: limits.fuel,
        timeout: limits.timeout,
        max_request_body: limits.max_request_body.bytes(),
        max_response: limits.max_response.bytes(),
        max_stderr: limits.max_stderr.bytes(),
    }
}

/// How the runtime names and runs a stored service.
pub(crate) fn service_config(
    record: &ServiceRecord,
    log: Arc<shoal_runtime::GuestLog>,
) -> ServiceConfig {
    ServiceConfig {
        log,
        name: record.name.as_str().to_owned(),
        limits: sandbox_limits(&record.spec),
        env: record
            .spec
            .env
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        args: record.spec.args.clone(),
    }
}

/// What one replica of `spec` reserves from the node.
pub(crate) fn replica_requests(spec: &ServiceSpec) -> ReplicaResources {
    ReplicaResources {
        memory: spec.memory_request().bytes(),
        cpu_millis: spec.cpu_request().millis(),
    }
}

/// What each replica of `spec` is.
pub(crate) fn replica_spec(spec: &ServiceSpec) -> ReplicaSpec {
    ReplicaSpec {
        reuse_instances: spec.isolation == Isolation::Reuse,
        max_requests: spec.max_requests,
        requests: replica_requests(spec),
        cpu_limit_millis: spec.cpu_limit().map(Cpu::millis),
    }
}

/// The scale settings of a spec, with `defaults` for what it leaves out.
pub(crate) fn scale_settings(spec: &ServiceSpec, defaults: &ScaleSettings) -> ScaleSettings {
    let scale = &spec.scale;
    ScaleSettings {
        min: scale.min,
        max: scale.max,
        concurrency: spec.concurrency,
        target_percent: scale.target,
        stable_window: scale.stable_window.unwrap_or(defaults.stable_window),
        panic_window: scale.panic_window.unwrap_or(defaults.panic_window),
        scale_down_delay: scale.scale_down_delay.unwrap_or(defaults.scale_down_delay),
        idle_timeout: scale.idle_timeout.unwrap_or(defaults.idle_timeout),
        queue_limit: scale.queue_limit.unwrap_or(defaults.queue_limit),
        queue_timeout: scale.queue_timeout.unwrap_or(defaults.queue_timeout),
    }
}

/// Whether two specs differ only in how they scale (or how they are labelled), which needs no
/// new replicas.
pub(crate) fn same_except_scale(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.replica_template() == b.replica_template()
}

/// The kind users see of a module the runtime classified.
pub(crate) fn module_kind(kind: GuestKind) -> ModuleKind {
    match kind {
        GuestKind::Http => ModuleKind::Http,
        GuestKind::Cgi => ModuleKind::Cgi,
    }
}

/// Memory and cpu as users write them.
pub(crate) fn quantities(resources: ReplicaResources) -> (ByteSize, Cpu) {
    (ByteSize(resources.memory), Cpu(resources.cpu_millis))
}

/// A shortfall in words, with the numbers, after "a replica" or "N minimum replicas".
pub(crate) fn describe_shortfall(shortfall: &Shortfall) -> String {
    let words = |resources: ReplicaResources| {
        let (memory, cpu) = quantities(resources);
        format!("{memory} memory and {cpu} cpu")
    };
    format!(
        "needs {}, but the node has {} of which {} are reserved, leaving {} free",
        words(shortfall.asked),
        words(shortfall.capacity),
        words(shortfall.reserved),
        words(shortfall.free)
    )
}

/// A cluster without room for a service's minimum replicas, in words, with each live node's
/// numbers.
pub(crate) fn describe_cluster_shortfall(
    per_replica: ReplicaResources,
    nodes: &[crate::NodeRoom],
) -> String {
    let words = |resources: ReplicaResources| {
        let (memory, cpu) = quantities(resources);
        format!("{memory} memory and {cpu} cpu")
    };
    let total: u64 = nodes.iter().map(|node| node.fits).sum();
    let each: Vec<String> = nodes
        .iter()
        .map(|node| {
            format!(
                "{} has {} free (room for {})",
                node.name,
                words(node.free),
                node.fits
            )
        })
        .collect();
    format!(
        "each needs {}, and the live nodes have room for {total}: {}",
        words(per_replica),
        if each.is_empty() {
            "no node is alive".to_owned()
        } else {
            each.join("; ")
        }
    )
}

/// Why a service scaled, as a scale event records it.
pub(crate) fn scale_reason(reason: &ScaleReason) -> String {
    match reason {
        ScaleReason::MinReplicas => "min replicas".into(),
        ScaleReason::ColdStart => "cold start".into(),
        ScaleReason::Load => "load".into(),
        ScaleReason::Burst => "burst".into(),
        ScaleReason::LoadFell => "load fell".into(),
        ScaleReason::Idle => "idle".into(),
        ScaleReason::Retired => "retired".into(),
        ScaleReason::AtCapacity(shortfall) => {
            format!("at capacity: a replica {}", describe_shortfall(shortfall))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_becomes_the_engine_settings() {
        let spec: ServiceSpec = shoal_spec::from_json_value(serde_json::json!({
            "module": shoal_spec::Digest::of(b"m").to_string(),
            "limits": {"memory": "128Mi", "fuel": 7, "timeout": "2s"},
            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": 1, "memory": "32Mi"}},
            "isolation": "reuse",
            "max_requests": 5,
            "concurrency": 4,
            "scale": {"min": 0, "max": 3, "idle_timeout": "5s"},
        }))
        .unwrap();
        let limits = sandbox_limits(&spec);
        assert_eq!((limits.memory, limits.fuel), (32 << 20, 7));
        assert_eq!(limits.timeout, std::time::Duration::from_secs(2));
        let replica = replica_spec(&spec);
        assert!(replica.reuse_instances);
        assert_eq!(replica.max_requests, 5);
        assert_eq!(
            replica.requests,
            ReplicaResources {
                memory: 32 << 20,
                cpu_millis: 250
            }
        );
        assert_eq!(replica.cpu_limit_millis, Some(1000));
        let defaults = ScaleSettings::default();
        let settings = scale_settings(&spec, &defaults);
        assert_eq!(
            (settings.min, settings.max, settings.concurrency),
            (0, 3, 4)
        );
        assert_eq!(settings.idle_timeout, std::time::Duration::from_secs(5));
        assert_eq!(settings.stable_window, defaults.stable_window);
    }

    #[test]
    fn a_shortfall_is_said_in_quantities() {
        let resources = |memory, cpu_millis| ReplicaResources { memory, cpu_millis };
        let shortfall = Shortfall {
            asked: resources(64 << 20, 250),
            capacity: resources(256 << 20, 1000),
            reserved: resources(256 << 20, 1000),
            free: resources(0, 0),
        };
        assert_eq!(
            scale_reason(&ScaleReason::AtCapacity(shortfall)),
            "at capacity: a replica needs 64Mi memory and 250m cpu, but the node has 256Mi \
             memory and 1 cpu of which 256Mi memory and 1 cpu are reserved, leaving 0 memory \
             and 0 cpu free"
        );
    }
}
