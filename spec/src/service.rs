//! The service spec: what a service runs (a module, with its sandbox [`Limits`], environment
//! and arguments) and how it runs as a scaled workload ([`Resources`], [`Isolation`],
//! [`Scale`]), in Kubernetes' and Knative's terms.
//!
//! Every field added to a spec since version 1 has a serde default, so every spec written
//! before it, by a client or into a store, still reads the same.
//! Deserializing checks each value's form (a quantity, a duration); [`ServiceSpec::validate`]
//! checks what the types cannot, and names the field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::Digest;
use crate::quantity::{ByteSize, Cpu};
use crate::{Error, Result};

/// What a service runs: a stored module, with its sandbox limits, environment and arguments,
/// and how it runs as a workload: its resources, isolation, concurrency and scaling.
///
/// Every field but `module` has a default, so `{"module": "sha256:…"}` is a whole spec.
/// [`validate`](ServiceSpec::validate) checks what the types cannot, and
/// [`memory_limit`](ServiceSpec::memory_limit) and its siblings give the values in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The module to run, which must be stored.
    pub module: Digest,
    /// The sandbox limits; missing fields take their defaults.
    #[serde(default)]
    pub limits: Limits,
    /// Environment variables given to the guest.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Command-line arguments given to the guest after its program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// What each replica reserves from the node (`requests`) and the most it may use
    /// (`limits`). Default empty; left out of JSON when empty.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Whether a replica runs each request in a fresh instance or keeps one. Default
    /// `per-request`.
    #[serde(default)]
    pub isolation: Isolation,
    /// With [`Isolation::Reuse`], the requests an instance serves before it is replaced by a
    /// fresh one, so that state a guest leaks cannot grow without bound. At least 1; default
    /// 10000.
    #[serde(default = "default_max_requests")]
    pub max_requests: u64,
    /// The requests one replica serves at once, like Knative's `containerConcurrency`.
    /// 1 to 1000; default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// The replica bounds and the autoscaler's settings.
    #[serde(default)]
    pub scale: Scale,
    /// Labels of the service's replicas, which Kubernetes Services select them by. Default
    /// none; left out of JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes object (a Deployment or a Pod) this service was last written as,
    /// without what the server manages (uid, resourceVersion, status), so that it reads
    /// back as the client wrote it: its labels, annotations, selector, container name and
    /// ports, which have no meaning to shoal. What the rest of the spec says wins over it.
    /// Absent for a service written through the management API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<serde_json::Value>,
}

fn default_max_requests() -> u64 {
    10_000
}

fn default_concurrency() -> u32 {
    1
}

impl ServiceSpec {
    /// A spec running `module` with default limits, no environment and no arguments.
    pub fn new(module: Digest) -> ServiceSpec {
        ServiceSpec {
            module,
            limits: Limits::default(),
            env: BTreeMap::new(),
            args: Vec::new(),
            resources: Resources::default(),
            isolation: Isolation::default(),
            max_requests: default_max_requests(),
            concurrency: default_concurrency(),
            scale: Scale::default(),
            labels: BTreeMap::new(),
            kubernetes: None,
        }
    }

    /// The spec without what does not change how a replica runs: its scale and concurrency
    /// (a pool retunes), labels and the Kubernetes object (they change how the service is
    /// found and shown). Two specs with the same template run the same replicas.
    pub fn replica_template(&self) -> ServiceSpec {
        ServiceSpec {
            scale: Scale::default(),
            concurrency: default_concurrency(),
            labels: BTreeMap::new(),
            kubernetes: None,
            ..self.clone()
        }
    }

    /// The memory limit in force for one instance: `resources.limits.memory` if set, else
    /// `limits.memory`.
    ///
    /// The memory limit has two spellings, the flat sandbox limit and the Kubernetes-style
    /// resource limit; the resource limit wins, and [`normalize`](ServiceSpec::normalize)
    /// makes the two agree.
    pub fn memory_limit(&self) -> ByteSize {
        self.resources.limits.memory.unwrap_or(self.limits.memory)
    }

    /// The memory a replica reserves from the node: `resources.requests.memory`, else the
    /// [memory limit](ServiceSpec::memory_limit), because in Kubernetes a request left out
    /// defaults to the limit.
    pub fn memory_request(&self) -> ByteSize {
        self.resources
            .requests
            .memory
            .unwrap_or_else(|| self.memory_limit())
    }

    /// The cpu a replica may use, `resources.limits.cpu`; `None` means no cap.
    pub fn cpu_limit(&self) -> Option<Cpu> {
        self.resources.limits.cpu
    }

    /// The cpu a replica reserves from the node: `resources.requests.cpu`, else the
    /// [cpu limit](ServiceSpec::cpu_limit), else nothing (`Cpu(0)`).
    pub fn cpu_request(&self) -> Cpu {
        self.resources
            .requests
            .cpu
            .or(self.resources.limits.cpu)
            .unwrap_or_default()
    }

    /// Copies `resources.limits.memory`, if set, into `limits.memory`, so that the flat field
    /// always shows the [memory limit](ServiceSpec::memory_limit) in force and two specs that
    /// mean the same compare equal.
    ///
    /// Stores keep specs normalized.
    pub fn normalize(&mut self) {
        if let Some(memory) = self.resources.limits.memory {
            self.limits.memory = memory;
        }
    }

    /// Checks what the types alone cannot: the limits are usable, the environment and
    /// arguments can be handed to a WASI guest (no `=` in names, no NUL anywhere), requests do
    /// not exceed limits, and the concurrency and scale settings are in range.
    ///
    /// The first problem found is returned as [`Error::Invalid`], naming the field.
    pub fn validate(&self) -> Result<()> {
        // Checked before `limits`, which a normalized spec copies it into, so that the error
        // names the field the client wrote.
        if self.resources.limits.memory == Some(ByteSize(0)) {
            return Err(Error::invalid(
                "resources.limits.memory",
                "must be greater than zero",
            ));
        }
        self.limits.validate()?;
        for (key, value) in &self.env {
            let reason = if key.is_empty() {
                Some("names must not be empty".to_string())
            } else if key.contains(['=', '\0']) {
                Some(format!("name {key:?} must not contain '=' or NUL"))
            } else if value.contains('\0') {
                Some(format!("value of {key:?} must not contain NUL"))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::invalid("env", reason));
            }
        }
        for (key, value) in &self.labels {
            if let Err(reason) = crate::check_label(key, value) {
                return Err(Error::invalid(format!("labels.{key}"), reason));
            }
        }
        if let Some(arg_idx) = self.args.iter().position(|arg| arg.contains('\0')) {
            return Err(Error::invalid(
                "args",
                format!("argument {arg_idx} must not contain NUL"),
            ));
        }
        self.validate_workload()
    }

    /// Checks `resources`, `max_requests`, `concurrency` and `scale`.
    fn validate_workload(&self) -> Result<()> {
        let invalid = |field: &str, reason: String| Err(Error::invalid(field, reason));
        let resources = &self.resources;
        if resources.limits.cpu == Some(Cpu(0)) {
            return invalid("resources.limits.cpu", "must be greater than zero".into());
        }
        if let Some(request) = resources.requests.memory
            && request > self.memory_limit()
        {
            return invalid(
                "resources.requests.memory",
                format!(
                    "{request} must not exceed the memory limit ({})",
                    self.memory_limit()
                ),
            );
        }
        if let (Some(request), Some(limit)) = (resources.requests.cpu, resources.limits.cpu)
            && request > limit
        {
            return invalid(
                "resources.requests.cpu",
                format!("{request} must not exceed resources.limits.cpu ({limit})"),
            );
        }
        if self.max_requests == 0 {
            return invalid("max_requests", "must be at least 1".into());
        }
        if !(1..=ServiceSpec::MAX_CONCURRENCY).contains(&self.concurrency) {
            return invalid(
                "concurrency",
                format!(
                    "must be between 1 and {}, got {}",
                    ServiceSpec::MAX_CONCURRENCY,
                    self.concurrency
                ),
            );
        }
        self.scale.validate()
    }

    /// The most requests one replica may serve at once.
    const MAX_CONCURRENCY: u32 = 1000;
}

/// The sandbox limits of one service.
///
/// In JSON each field is optional and takes its default when missing; unknown fields are
/// refused, so a typo is an error rather than a silently ignored limit.
/// Sizes are Kubernetes quantities (`"64Mi"`) or plain integers, and the timeout is a humantime
/// string (`"10s"`, `"250ms"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The most linear memory the guest may grow to. Default 64Mi.
    pub memory: ByteSize,
    /// The wasmtime fuel one invocation may consume. Default 5 000 000 000.
    pub fuel: u64,
    /// The wall-clock time one invocation may take. Default 10s.
    #[serde(with = "crate::quantity::duration")]
    pub timeout: Duration,
    /// The largest request body passed to the guest. Default 10Mi.
    pub max_request_body: ByteSize,
    /// The largest response the guest may produce. Default 16Mi.
    pub max_response: ByteSize,
    /// The most guest stderr kept per invocation. Default 64Ki.
    pub max_stderr: ByteSize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: ByteSize(64 << 20),
            fuel: 5_000_000_000,
            timeout: Duration::from_secs(10),
            max_request_body: ByteSize(10 << 20),
            max_response: ByteSize(16 << 20),
            max_stderr: ByteSize(64 << 10),
        }
    }
}

impl Limits {
    /// Refuses limits that would make every invocation fail: zero memory, fuel or timeout.
    pub fn validate(&self) -> Result<()> {
        let zero_field = if self.memory.bytes() == 0 {
            Some("limits.memory")
        } else if self.fuel == 0 {
            Some("limits.fuel")
        } else if self.timeout.is_zero() {
            Some("limits.timeout")
        } else {
            None
        };
        match zero_field {
            Some(field) => Err(Error::invalid(field, "must be greater than zero")),
            None => Ok(()),
        }
    }
}

/// The compute resources of each replica of a service, as in a Kubernetes container's
/// `resources`: what it reserves from the node's capacity (`requests`) and the most it may use
/// (`limits`).
///
/// Both lists default to empty and are left out of JSON when empty.
/// What a list leaves out takes the value described on [`ServiceSpec::memory_request`] and
/// its siblings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// What each replica reserves from the node; admission and scaling count these.
    #[serde(skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    /// The most each replica may use; the runtime enforces these.
    #[serde(skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

impl Resources {
    /// Whether neither list sets anything.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// Amounts of cpu and memory, either requested or limits; a field left out (or `null`) is
/// unset, and is left out of JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    /// Cpu, written as a Kubernetes quantity (`"250m"`, `"0.5"`) or a number of cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory, written as a Kubernetes quantity (`"64Mi"`) or a number of bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
}

impl ResourceList {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

/// How a replica isolates one request from the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A fresh instance for every request, so no state survives a request: `"per-request"`.
    #[default]
    PerRequest,
    /// A replica keeps its instance across requests, like a container's process, until
    /// [`max_requests`](ServiceSpec::max_requests) or a fault: `"reuse"`.
    Reuse,
}

impl Isolation {
    /// The isolation as written in JSON: `per-request` or `reuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::PerRequest => "per-request",
            Isolation::Reuse => "reuse",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a service scales, in the shape of Knative's autoscaler: replica bounds, the target
/// utilisation, the windows demand is averaged over, and the queue in front of the replicas.
///
/// In JSON each field is optional: `min`, `max` and `target` take their defaults, and the
/// `Option`s left out (or `null`) mean "the node's default" and are left out of JSON.
/// Durations are humantime strings (`"60s"`, `"250ms"`) and must be greater than zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scale {
    /// The fewest replicas; 0 lets the service scale to zero when idle. Default 1.
    pub min: u32,
    /// The most replicas, 1 to 1000 and at least `min`. Default 10.
    pub max: u32,
    /// The utilisation of each replica's concurrency the autoscaler aims for, in percent,
    /// 1 to 100. Default 70.
    pub target: u32,
    /// The window demand is averaged over to decide the replica count.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::quantity::optional_duration"
    )]
    pub stable_window: Option<Duration>,
    /// The shorter window that notices a burst; it must not exceed `stable_window`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::quantity::optional_duration"
    )]
    pub panic_window: Option<Duration>,
    /// How long a lower replica count must be wanted before replicas are removed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::quantity::optional_duration"
    )]
    pub scale_down_delay: Option<Duration>,
    /// How long a service with `min: 0` must be idle before its last replica is removed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::quantity::optional_duration"
    )]
    pub idle_timeout: Option<Duration>,
    /// The most requests that may wait for a replica, at most 100000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<u32>,
    /// The longest a request may wait for a replica.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::quantity::optional_duration"
    )]
    pub queue_timeout: Option<Duration>,
}

impl Default for Scale {
    fn default() -> Scale {
        Scale {
            min: 1,
            max: 10,
            target: 70,
            stable_window: None,
            panic_window: None,
            scale_down_delay: None,
            idle_timeout: None,
            queue_limit: None,
            queue_timeout: None,
        }
    }
}

impl Scale {
    /// The most replicas a service may have.
    const MAX_REPLICAS: u32 = 1000;
    /// The longest queue a service may have.
    const MAX_QUEUE_LIMIT: u32 = 100_000;

    /// Checks the ranges, that `min` does not exceed `max`, and that `panic_window` does not
    /// exceed `stable_window`.
    fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: String| Err(Error::invalid(field, reason));
        if !(1..=Scale::MAX_REPLICAS).contains(&self.max) {
            return invalid(
                "scale.max",
                format!(
                    "must be between 1 and {}, got {}",
                    Scale::MAX_REPLICAS,
                    self.max
                ),
            );
        }
        if self.min > self.max {
            return invalid(
                "scale.min",
                format!("must not exceed scale.max ({})", self.max),
            );
        }
        if !(1..=100).contains(&self.target) {
            return invalid(
                "scale.target",
                format!(
                    "must be a percentage between 1 and 100, got {}",
                    self.target
                ),
            );
        }
        // Deserializing refuses zero durations already; this catches specs built in code.
        let durations = [
            ("scale.stable_window", self.stable_window),
            ("scale.panic_window", self.panic_window),
            ("scale.scale_down_delay", self.scale_down_delay),
            ("scale.idle_timeout", self.idle_timeout),
            ("scale.queue_timeout", self.queue_timeout),
        ];
        if let Some((field, _)) = durations
            .into_iter()
            .find(|(_, duration)| duration.is_some_and(|duration| duration.is_zero()))
        {
            return invalid(field, "must be greater than zero".into());
        }
        if let (Some(panic_window), Some(stable_window)) = (self.panic_window, self.stable_window)
            && panic_window > stable_window
        {
            return invalid(
                "scale.panic_window",
                format!(
                    "{} must not exceed scale.stable_window ({})",
                    humantime::format_duration(panic_window),
                    humantime::format_duration(stable_window)
                ),
            );
        }
        if let Some(queue_limit) = self.queue_limit
            && queue_limit > Scale::MAX_QUEUE_LIMIT
        {
            return invalid(
                "scale.queue_limit",
                format!(
                    "must be at most {}, got {queue_limit}",
                    Scale::MAX_QUEUE_LIMIT
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_limits_take_defaults() {
        let limits: Limits =
            serde_json::from_str(r#"{"memory": "128Mi", "timeout": "250ms"}"#).unwrap();
        assert_eq!(
            limits,
            Limits {
                memory: ByteSize(128 << 20),
                timeout: Duration::from_millis(250),
                ..Limits::default()
            }
        );
        let from_integer: Limits = serde_json::from_str(r#"{"max_stderr": 1000}"#).unwrap();
        assert_eq!(from_integer.max_stderr, ByteSize(1000));
        assert_eq!(
            serde_json::from_str::<Limits>("{}").unwrap(),
            Limits::default()
        );
    }

    #[test]
    fn limits_serialize_canonically() {
        let json = serde_json::to_value(Limits::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "memory": "64Mi",
                "fuel": 5_000_000_000_u64,
                "timeout": "10s",
                "max_request_body": "10Mi",
                "max_response": "16Mi",
                "max_stderr": "64Ki",
            })
        );
        assert_eq!(
            serde_json::from_value::<Limits>(json).unwrap(),
            Limits::default()
        );
    }

    #[test]
    fn bad_limits_name_the_field() {
        let cases = [
            (
                r#"{"memory": "64Q"}"#,
                r#"invalid limits.memory "64Q": unknown suffix "Q""#,
            ),
            (
                r#"{"max_response": "-1Mi"}"#,
                r#"invalid limits.max_response "-1Mi": must not be negative"#,
            ),
            (
                r#"{"max_stderr": -5}"#,
                "invalid limits.max_stderr -5: must not be negative",
            ),
            (
                r#"{"timeout": "0s"}"#,
                r#"invalid limits.timeout "0s": must be greater than zero"#,
            ),
            (
                r#"{"timeout": "10"}"#,
                r#"invalid limits.timeout "10": time unit needed, for example 10sec or 10ms"#,
            ),
            (
                r#"{"memroy": "64Mi"}"#,
                "invalid limits.memroy: unknown field `memroy`, expected one of `memory`, `fuel`, \
                 `timeout`, `max_request_body`, `max_response`, `max_stderr`",
            ),
        ];
        for (json, expected) in cases {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            let err = crate::from_json_value_at::<Limits>("limits", value).unwrap_err();
            assert_eq!(err.to_string(), expected, "{json}");
        }
    }

    #[test]
    fn limits_validate() {
        assert!(Limits::default().validate().is_ok());
        let cases = [
            (
                Limits {
                    memory: ByteSize(0),
                    ..Limits::default()
                },
                "invalid limits.memory: must be greater than zero",
            ),
            (
                Limits {
                    fuel: 0,
                    ..Limits::default()
                },
                "invalid limits.fuel: must be greater than zero",
            ),
            (
                Limits {
                    timeout: Duration::ZERO,
                    ..Limits::default()
                },
                "invalid limits.timeout: must be greater than zero",
            ),
        ];
        for (limits, expected) in cases {
            assert_eq!(limits.validate().unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn specs() {
        let digest = Digest::of(b"module");
        let spec: ServiceSpec =
            serde_json::from_str(&format!(r#"{{"module": "{digest}"}}"#)).unwrap();
        assert_eq!(spec, ServiceSpec::new(digest.clone()));
        let err = crate::from_json::<ServiceSpec>(
            format!(r#"{{"module": "{digest}", "enviroment": {{}}}}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid enviroment: unknown field `enviroment`"),
            "{err}"
        );

        let mut bad_env = ServiceSpec::new(digest.clone());
        bad_env.env.insert("A=B".into(), "c".into());
        assert_eq!(
            bad_env.validate().unwrap_err().to_string(),
            "invalid env: name \"A=B\" must not contain '=' or NUL"
        );
        let mut bad_args = ServiceSpec::new(digest);
        bad_args.args = vec!["ok".into(), "nul\0".into()];
        assert_eq!(
            bad_args.validate().unwrap_err().to_string(),
            "invalid args: argument 1 must not contain NUL"
        );
    }

    /// A spec from `fields` plus a `module`, or the error naming the bad field.
    fn spec_from(fields: serde_json::Value) -> Result<ServiceSpec, String> {
        let mut json = fields;
        json["module"] = Digest::of(b"module").to_string().into();
        crate::from_json_value(json).map_err(|err| err.to_string())
    }

    #[test]
    fn a_full_spec_round_trips() {
        let json = serde_json::json!({
            "module": Digest::of(b"module").to_string(),
            "limits": {
                "memory": "128Mi",
                "fuel": 1_000_000,
                "timeout": "2s",
                "max_request_body": "1Mi",
                "max_response": "2Mi",
                "max_stderr": "4Ki",
            },
            "env": {"KEY": "value"},
            "args": ["--flag"],
            "resources": {
                "requests": {"cpu": "250m", "memory": "32Mi"},
                "limits": {"cpu": "2", "memory": "128Mi"},
            },
            "isolation": "reuse",
            "max_requests": 500,
            "concurrency": 8,
            "scale": {
                "min": 0,
                "max": 20,
                "target": 50,
                "stable_window": "1m",
                "panic_window": "6s",
                "scale_down_delay": "30s",
                "idle_timeout": "5m",
                "queue_limit": 100,
                "queue_timeout": "250ms",
            },
        });
        let spec: ServiceSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            spec.resources,
            Resources {
                requests: ResourceList {
                    cpu: Some(Cpu(250)),
                    memory: Some(ByteSize(32 << 20)),
                },
                limits: ResourceList {
                    cpu: Some(Cpu(2000)),
                    memory: Some(ByteSize(128 << 20)),
                },
            }
        );
        assert_eq!(
            (spec.isolation, spec.max_requests, spec.concurrency),
            (Isolation::Reuse, 500, 8)
        );
        assert_eq!(
            spec.scale,
            Scale {
                min: 0,
                max: 20,
                target: 50,
                stable_window: Some(Duration::from_secs(60)),
                panic_window: Some(Duration::from_secs(6)),
                scale_down_delay: Some(Duration::from_secs(30)),
                idle_timeout: Some(Duration::from_secs(300)),
                queue_limit: Some(100),
                queue_timeout: Some(Duration::from_millis(250)),
            }
        );
        spec.validate().unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), json);
    }

    #[test]
    fn a_minimal_spec_takes_every_default() {
        let spec = spec_from(serde_json::json!({})).unwrap();
        assert_eq!(spec, ServiceSpec::new(Digest::of(b"module")));
        assert_eq!(spec.limits, Limits::default());
        assert!(spec.resources.is_empty());
        assert_eq!(spec.isolation, Isolation::PerRequest);
        assert_eq!((spec.max_requests, spec.concurrency), (10_000, 1));
        assert_eq!(
            (spec.scale.min, spec.scale.max, spec.scale.target),
            (1, 10, 70)
        );
        assert_eq!(spec.scale, Scale::default());
        spec.validate().unwrap();

        // Unset options and empty resources are left out; everything else is written.
        let mut json = serde_json::to_value(&spec).unwrap();
        let object = json.as_object_mut().unwrap();
        for key in ["module", "limits", "env", "args"] {
            object.remove(key).unwrap();
        }
        assert_eq!(
            json,
            serde_json::json!({
                "isolation": "per-request",
                "max_requests": 10_000,
                "concurrency": 1,
                "scale": {"min": 1, "max": 10, "target": 70},
            })
        );
    }

    #[test]
    fn partial_workload_fields_take_defaults() {
        let spec = spec_from(serde_json::json!({
            "resources": {"limits": {"cpu": 0.5}},
            "scale": {"max": 3, "queue_limit": null, "idle_timeout": null},
        }))
        .unwrap();
        assert_eq!(spec.resources.limits.cpu, Some(Cpu(500)));
        assert_eq!(spec.resources.limits.memory, None);
        assert!(spec.resources.requests.is_empty());
        assert_eq!(
            spec.scale,
            Scale {
                max: 3,
                ..Scale::default()
            }
        );
        // `null` is the same as leaving a field out.
        let spec = spec_from(serde_json::json!({
            "resources": {"requests": {"cpu": null, "memory": null}, "limits": {}},
            "scale": {"stable_window": null},
        }))
        .unwrap();
        assert_eq!(spec, ServiceSpec::new(Digest::of(b"module")));
        assert_eq!(
            serde_json::to_value(&spec.resources).unwrap(),
            serde_json::json!({})
        );
        // Cpu is a quantity string or a number of cores, and is written canonically.
        for (cpu, expected) in [
            (serde_json::json!("250m"), "250m"),
            (serde_json::json!("0.5"), "500m"),
            (serde_json::json!(0.5), "500m"),
            (serde_json::json!("1"), "1"),
            (serde_json::json!(1), "1"),
            (serde_json::json!("1500m"), "1500m"),
            (serde_json::json!(2), "2"),
        ] {
            let spec =
                spec_from(serde_json::json!({"resources": {"requests": {"cpu": cpu}}})).unwrap();
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(
                json["resources"],
                serde_json::json!({"requests": {"cpu": expected}}),
                "{cpu}"
            );
        }
    }

    #[test]
    fn bad_workload_fields_name_the_field() {
        let cases = [
            (
                serde_json::json!({"resources": {"limits": {"memory": "64Q"}}}),
                r#"invalid resources.limits.memory "64Q": unknown suffix "Q""#,
            ),
            (
                serde_json::json!({"resources": {"requests": {"memory": "-1Mi"}}}),
                r#"invalid resources.requests.memory "-1Mi": must not be negative"#,
            ),
            (
                serde_json::json!({"resources": {"requests": {"memory": "1.5"}}}),
                r#"invalid resources.requests.memory "1.5": must be a whole number of bytes"#,
            ),
            (
                serde_json::json!({"resources": {"requests": {"cpu": "K"}}}),
                r#"invalid resources.requests.cpu "K": expected a number, found 'K'"#,
            ),
            (
                serde_json::json!({"resources": {"limits": {"cpu": "-500m"}}}),
                r#"invalid resources.limits.cpu "-500m": must not be negative"#,
            ),
            (
                serde_json::json!({"resources": {"limits": {"cpu": -1}}}),
                "invalid resources.limits.cpu -1: must not be negative",
            ),
            (
                serde_json::json!({"resources": {"requests": {"cpu": -0.5}}}),
                "invalid resources.requests.cpu -0.5: must not be negative",
            ),
            (
                serde_json::json!({"resources": {"requests": {"gpu": 1}}}),
                "invalid resources.requests.gpu: unknown field `gpu`, expected `cpu` or `memory`",
            ),
            (
                serde_json::json!({"resources": {"request": {}}}),
                "invalid resources.request: unknown field `request`, expected `requests` or `limits`",
            ),
            (
                serde_json::json!({"isolation": "shared"}),
                "invalid isolation: unknown variant `shared`, expected `per-request` or `reuse`",
            ),
            (
                serde_json::json!({"concurrency": -1}),
                "invalid concurrency: invalid value: integer `-1`, expected u32",
            ),
            (
                serde_json::json!({"scale": {"stable_window": "0s"}}),
                r#"invalid scale.stable_window "0s": must be greater than zero"#,
            ),
            (
                serde_json::json!({"scale": {"panic_window": "6"}}),
                r#"invalid scale.panic_window "6": time unit needed, for example 6sec or 6ms"#,
            ),
            (
                serde_json::json!({"scale": {"scale_down_delay": "0ms"}}),
                r#"invalid scale.scale_down_delay "0ms": must be greater than zero"#,
            ),
            (
                serde_json::json!({"scale": {"idle_timeout": "0s"}}),
                r#"invalid scale.idle_timeout "0s": must be greater than zero"#,
            ),
            (
                serde_json::json!({"scale": {"queue_timeout": 10}}),
                r#"invalid scale.queue_timeout: invalid type: integer `10`, expected a duration string like "10s" or "250ms""#,
            ),
            (
                serde_json::json!({"scale": {"minimum": 1}}),
                "invalid scale.minimum: unknown field `minimum`, expected one of `min`, `max`, `target`, \
                 `stable_window`, `panic_window`, `scale_down_delay`, `idle_timeout`, \
                 `queue_limit`, `queue_timeout`",
            ),
        ];
        for (fields, expected) in cases {
            assert_eq!(spec_from(fields.clone()).unwrap_err(), expected, "{fields}");
        }
    }

    #[test]
    fn workload_validation() {
        let module = Digest::of(b"module");
        let spec = |fields: serde_json::Value| spec_from(fields).unwrap();
        let invalid = [
            (
                spec(serde_json::json!({"scale": {"min": 4, "max": 3}})),
                "invalid scale.min: must not exceed scale.max (3)",
            ),
            (
                spec(serde_json::json!({"scale": {"min": 0, "max": 0}})),
                "invalid scale.max: must be between 1 and 1000, got 0",
            ),
            (
                spec(serde_json::json!({"scale": {"max": 1001}})),
                "invalid scale.max: must be between 1 and 1000, got 1001",
            ),
            (
                spec(serde_json::json!({"scale": {"target": 0}})),
                "invalid scale.target: must be a percentage between 1 and 100, got 0",
            ),
            (
                spec(serde_json::json!({"scale": {"target": 101}})),
                "invalid scale.target: must be a percentage between 1 and 100, got 101",
            ),
            (
                spec(serde_json::json!({"scale": {"stable_window": "5s", "panic_window": "10s"}})),
                "invalid scale.panic_window: 10s must not exceed scale.stable_window (5s)",
            ),
            (
                spec(serde_json::json!({"scale": {"queue_limit": 100_001}})),
                "invalid scale.queue_limit: must be at most 100000, got 100001",
            ),
            (
                spec(serde_json::json!({"concurrency": 0})),
                "invalid concurrency: must be between 1 and 1000, got 0",
            ),
            (
                spec(serde_json::json!({"concurrency": 1001})),
                "invalid concurrency: must be between 1 and 1000, got 1001",
            ),
            (
                spec(serde_json::json!({"max_requests": 0})),
                "invalid max_requests: must be at least 1",
            ),
            (
                spec(serde_json::json!({"resources": {"limits": {"cpu": "0"}}})),
                "invalid resources.limits.cpu: must be greater than zero",
            ),
            (
                spec(serde_json::json!({"resources": {"limits": {"memory": 0}}})),
                "invalid resources.limits.memory: must be greater than zero",
            ),
            (
                // The flat limit is the memory limit when the resource limit is left out.
                spec(serde_json::json!({"resources": {"requests": {"memory": "128Mi"}}})),
                "invalid resources.requests.memory: 128Mi must not exceed the memory limit (64Mi)",
            ),
            (
                spec(serde_json::json!({"resources": {
                    "requests": {"memory": "128Mi"},
                    "limits": {"memory": "96Mi"},
                }})),
                "invalid resources.requests.memory: 128Mi must not exceed the memory limit (96Mi)",
            ),
            (
                spec(serde_json::json!({"resources": {
                    "requests": {"cpu": "2"},
                    "limits": {"cpu": "500m"},
                }})),
                "invalid resources.requests.cpu: 2 must not exceed resources.limits.cpu (500m)",
            ),
            (
                ServiceSpec {
                    scale: Scale {
                        idle_timeout: Some(Duration::ZERO),
                        ..Scale::default()
                    },
                    ..ServiceSpec::new(module.clone())
                },
                "invalid scale.idle_timeout: must be greater than zero",
            ),
        ];
        for (spec, expected) in invalid {
            assert_eq!(
                spec.validate().unwrap_err().to_string(),
                expected,
                "{spec:?}"
            );
        }

        let valid = [
            serde_json::json!({"scale": {"min": 0, "max": 1}}),
            serde_json::json!({"scale": {"min": 1000, "max": 1000}}),
            serde_json::json!({"scale": {"target": 1}}),
            serde_json::json!({"scale": {"target": 100}}),
            serde_json::json!({"scale": {"stable_window": "6s", "panic_window": "6s"}}),
            serde_json::json!({"scale": {"panic_window": "2m"}}),
            serde_json::json!({"scale": {"queue_limit": 0}}),
            serde_json::json!({"scale": {"queue_limit": 100_000}}),
            serde_json::json!({"concurrency": 1000, "max_requests": 1}),
            serde_json::json!({"resources": {"requests": {"cpu": "0", "memory": 0}}}),
            serde_json::json!({"resources": {"requests": {"cpu": "4"}}}),
            serde_json::json!({"resources": {
                "requests": {"cpu": "1", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "64Mi"},
            }}),
            // The resource limit, not the flat one, bounds the request.
            serde_json::json!({
                "limits": {"memory": "16Mi"},
                "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            }),
        ];
        for fields in valid {
            spec(fields.clone())
                .validate()
                .unwrap_or_else(|err| panic!("{fields}: {err}"));
        }
    }

    #[test]
    fn effective_resource_values() {
        let mi = |n_mebibytes: u64| ByteSize(n_mebibytes << 20);
        let cases = [
            (serde_json::json!({}), mi(64), mi(64), None, Cpu(0)),
            (
                serde_json::json!({"limits": {"memory": "128Mi"}}),
                mi(128),
                mi(128),
                None,
                Cpu(0),
            ),
            (
                serde_json::json!({
                    "limits": {"memory": "128Mi"},
                    "resources": {"limits": {"memory": "32Mi"}},
                }),
                mi(32),
                mi(32),
                None,
                Cpu(0),
            ),
            (
                serde_json::json!({"resources": {"requests": {"memory": "16Mi"}}}),
                mi(64),
                mi(16),
                None,
                Cpu(0),
            ),
            (
                serde_json::json!({"resources": {"limits": {"cpu": "500m"}}}),
                mi(64),
                mi(64),
                Some(Cpu(500)),
                Cpu(500),
            ),
            (
                serde_json::json!({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": 1}}}),
                mi(64),
                mi(64),
                Some(Cpu(1000)),
                Cpu(250),
            ),
            (
                serde_json::json!({"resources": {"requests": {"cpu": "250m"}}}),
                mi(64),
                mi(64),
                None,
                Cpu(250),
            ),
        ];
        for (fields, memory_limit, memory_request, cpu_limit, cpu_request) in cases {
            let spec = spec_from(fields.clone()).unwrap();
            assert_eq!(spec.memory_limit(), memory_limit, "{fields}");
            assert_eq!(spec.memory_request(), memory_request, "{fields}");
            assert_eq!(spec.cpu_limit(), cpu_limit, "{fields}");
            assert_eq!(spec.cpu_request(), cpu_request, "{fields}");
        }
    }

    #[test]
    fn normalize_makes_the_flat_memory_limit_the_one_in_force() {
        let mut spec = spec_from(serde_json::json!({
            "limits": {"memory": "128Mi"},
            "resources": {"limits": {"memory": "32Mi"}},
        }))
        .unwrap();
        spec.normalize();
        assert_eq!(spec.limits.memory, ByteSize(32 << 20));
        assert_eq!(spec.memory_limit(), ByteSize(32 << 20));
        // Both spellings of the same limit now compare equal.
        let mut both = spec_from(serde_json::json!({
            "limits": {"memory": "32Mi"},
            "resources": {"limits": {"memory": "32Mi"}},
        }))
        .unwrap();
        both.normalize();
        assert_eq!(spec, both);

        let mut flat_only = spec_from(serde_json::json!({"limits": {"memory": "128Mi"}})).unwrap();
        let before = flat_only.clone();
        flat_only.normalize();
        assert_eq!(flat_only, before);
    }

    #[test]
    fn isolation() {
        for (isolation, text) in [
            (Isolation::PerRequest, "per-request"),
            (Isolation::Reuse, "reuse"),
        ] {
            assert_eq!(isolation.to_string(), text);
            assert_eq!(isolation.as_str(), text);
            let json = serde_json::to_string(&isolation).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Isolation>(&json).unwrap(), isolation);
        }
        assert_eq!(Isolation::default(), Isolation::PerRequest);
    }

    #[test]
    fn scale_defaults_and_round_trips() {
        let scale: Scale = serde_json::from_str("{}").unwrap();
        assert_eq!(scale, Scale::default());
        assert_eq!(
            serde_json::to_value(&scale).unwrap(),
            serde_json::json!({"min": 1, "max": 10, "target": 70})
        );
        // A whole-struct default: a field left out keeps its own default, not zero.
        let scale: Scale = serde_json::from_str(r#"{"max": 3}"#).unwrap();
        assert_eq!((scale.min, scale.max, scale.target), (1, 3, 70));
        let full = serde_json::json!({
            "min": 0,
            "max": 3,
            "target": 50,
            "stable_window": "1s",
            "panic_window": "100ms",
            "scale_down_delay": "2s",
            "idle_timeout": "5s",
            "queue_limit": 7,
            "queue_timeout": "250ms",
        });
        let scale: Scale = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(scale.panic_window, Some(Duration::from_millis(100)));
        assert_eq!(serde_json::to_value(&scale).unwrap(), full);
    }
}
