//! Kubernetes objects and shoal services, both ways: a Deployment or a bare Pod read from a
//! request becomes a [`ServiceSpec`]; a service's record and status become a Deployment and
//! its replicas Pods.
//!
//! One model underneath: a service *is* a Deployment (or, when it was created as one, a bare
//! Pod) and its replicas are its Pods. The object a client wrote is kept in the spec
//! ([`ServiceSpec::kubernetes`]) so it reads back as written (labels, annotations, selector,
//! container name and ports mean nothing to shoal), but whatever the rest of the spec says
//! wins: a service changed through the management API shows its new image, env, args,
//! resources and replicas here too.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use shoal_node::{RunningReplica, ServiceStatus};
use shoal_registry::ServiceRecord;
use shoal_spec::{
    ByteSize, Cpu, Digest, ImageRef, ResourceList, Resources, ServiceName, ServiceSpec,
};

use super::status::{KubeError, KubeResult};

/// The one namespace shoal serves.
pub(crate) const NAMESPACE: &str = "default";

pub(crate) use shoal_spec::SERVICE_LABEL;

/// Knative's autoscaling annotations, which shoal's autoscaler (Knative's KPA) understands.
const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
const TARGET: &str = "autoscaling.knative.dev/target";
const SCALE_DOWN_DELAY: &str = "autoscaling.knative.dev/scale-down-delay";
const WINDOW: &str = "autoscaling.knative.dev/window";

/// The kinds of object served: the two a service can be, and the Service, which is a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Deployment,
    Pod,
    Service,
}

impl Kind {
    /// The resource name in errors and URLs (`deployments.apps`, `pods`).
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments.apps",
            Kind::Pod => "pods",
            Kind::Service => "services",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
        }
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Kind::Deployment => "apps/v1",
            Kind::Pod | Kind::Service => "v1",
        }
    }

    /// Where the pod template's metadata and spec are in an object of this kind.
    fn template_paths(self) -> (&'static str, &'static str) {
        match self {
            Kind::Deployment => ("spec.template.metadata", "spec.template.spec"),
            Kind::Pod | Kind::Service => ("metadata", "spec"),
        }
    }

    /// What a service record is: a bare Pod if it was created as one, else a Deployment.
    pub(crate) fn of(record: &ServiceRecord) -> Kind {
        let kind = record
            .spec
            .kubernetes
            .as_ref()
            .and_then(|object| object.get("kind"))
            .and_then(Value::as_str);
        if kind == Some("Pod") {
            Kind::Pod
        } else {
            Kind::Deployment
        }
    }
}

/// Looks up `path` (dotted) in `value`.
pub(crate) fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |value, key| value.get(key))
        .filter(|value| !value.is_null())
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A service name from an object's `metadata.name`.
pub(crate) fn parse_name(kind: Kind, name: &str) -> KubeResult<ServiceName> {
    name.parse().map_err(|error: shoal_spec::Error| {
        let reason = match error {
            shoal_spec::Error::Invalid(field) => field.reason,
            other => other.to_string(),
        };
        KubeError::invalid(
            kind.name(),
            name,
            "metadata.name",
            format!("{reason} (a DNS-1123 label: shoal routes by it)"),
        )
    })
}

/// The object as stored: what the client wrote, without what the server manages.
pub(crate) fn strip_server_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
                "selfLink",
                "deletionTimestamp",
                "namespace",
            ] {
                metadata.remove(key);
            }
        }
    }
    object
}

/// Reads a workload object into the spec of the service it becomes.
///
/// `module` resolves the container's image to a stored module. What shoal cannot honour is
/// refused with 422 naming the field; what has no meaning for wasm (`runtimeClassName`,
/// `nodeSelector`, `tolerations`, …) is kept and ignored.
pub(crate) fn spec_of(
    kind: Kind,
    name: &str,
    object: &Value,
    module: impl Fn(&str) -> Result<Digest, String>,
) -> KubeResult<ServiceSpec> {
    let invalid =
        |field: &str, reason: String| KubeError::invalid(kind.name(), name, field, reason);
    if !object.is_object() {
        return Err(KubeError::bad_request("the body must be a JSON object"));
    }
    let (meta_path, pod_path) = kind.template_paths();
    let pod = at(object, pod_path).ok_or_else(|| invalid(pod_path, "Required value".into()))?;
    let pod_meta = at(object, meta_path);
    let labels = string_map(pod_meta.and_then(|meta| meta.get("labels")));
    for (key, value) in &labels {
        shoal_spec::check_label(key, value)
            .map_err(|reason| invalid(&format!("{meta_path}.labels"), reason))?;
    }
    if kind == Kind::Deployment {
        check_selector(object, &labels).map_err(|(field, reason)| invalid(field, reason))?;
    }
    refuse_unsupported_pod_fields(pod, pod_path)
        .map_err(|(field, reason)| invalid(&field, reason))?;
    let containers = pod
        .get("containers")
        .and_then(Value::as_array)
        .filter(|containers| !containers.is_empty())
        .ok_or_else(|| invalid(&format!("{pod_path}.containers"), "Required value".into()))?;
    if containers.len() > 1 {
        return Err(invalid(
            &format!("{pod_path}.containers"),
            format!(
                "shoal runs one wasm module per pod; got {} containers",
                containers.len()
            ),
        ));
    }
    let container_path = format!("{pod_path}.containers[0]");
    let container = &containers[0];
    let (image, args, env, resources) = read_container(container, &container_path)
        .map_err(|(field, reason)| invalid(&field, reason))?;
    let digest =
        module(&image).map_err(|reason| invalid(&format!("{container_path}.image"), reason))?;
    let mut spec = ServiceSpec::new(digest);
    spec.args = args;
    spec.env = env;
    // Kubernetes puts no memory limit on a container that sets none; a sandbox needs one, so
    // such a container may use at least what it requests.
    if let (None, Some(request)) = (resources.limits.memory, resources.requests.memory) {
        spec.limits.memory = spec.limits.memory.max(request);
    }
    spec.resources = resources;
    spec.labels = labels;
    let annotations = {
        // Knative puts them on the revision template; the Deployment's own count too.
        let mut annotations = string_map(at(object, "metadata.annotations"));
        annotations.extend(string_map(
            pod_meta.and_then(|meta| meta.get("annotations")),
        ));
        annotations
    };
    match kind {
        Kind::Pod => {
            spec.scale.min = 1;
            spec.scale.max = 1;
        }
        Kind::Deployment => read_scale(object, &annotations, &mut spec)
            .map_err(|(field, reason)| invalid(&field, reason))?,
        Kind::Service => {
            return Err(KubeError::bad_request(
                "a Service runs nothing: it is a route",
            ));
        }
    }
    spec.kubernetes = Some(strip_server_fields(object));
    Ok(spec)
}

type FieldResult<T> = Result<T, (String, String)>;

/// Refuses what a wasm sandbox cannot do, naming the field: volumes, more containers, the
/// host's network or process namespaces.
fn refuse_unsupported_pod_fields(pod: &Value, path: &str) -> FieldResult<()> {
    let refuse = |field: &str, reason: &str| Err((format!("{path}.{field}"), reason.to_string()));
    let non_empty = |field: &str| {
        pod.get(field)
            .is_some_and(|value| value.as_array().is_none_or(|list| !list.is_empty()))
    };
    if non_empty("volumes") {
        return refuse(
            "volumes",
            "Forbidden: wasm guests get no host files; shoal does not mount volumes",
        );
    }
    for field in ["initContainers", "ephemeralContainers"] {
        if non_empty(field) {
            return refuse(field, "Forbidden: shoal runs one wasm module per pod");
        }
    }
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod.get(field).and_then(Value::as_bool) == Some(true) {
            return refuse(
                field,
                "Forbidden: wasm guests get no host namespaces or network beyond their spec",
            );
        }
    }
    Ok(())
}

/// A Deployment's `spec.selector` must be present and select its template's labels.
fn check_selector(
    object: &Value,
    template_labels: &BTreeMap<String, String>,
) -> Result<(), (&'static str, String)> {
    let selector = at(object, "spec.selector").ok_or(("spec.selector", "Required value".into()))?;
    let selector = super::selector::LabelSelector::from_json(selector)
        .map_err(|error| ("spec.selector", error.to_string()))?;
    if selector.is_empty() {
        return Err((
            "spec.selector",
            "Invalid value: empty selector is invalid for deployment".into(),
        ));
    }
    if !selector.matches(template_labels) {
        return Err((
            "spec.template.metadata.labels",
            format!("Invalid value: `selector` ({selector}) does not match template `labels`"),
        ));
    }
    Ok(())
}

type Container = (String, Vec<String>, BTreeMap<String, String>, Resources);

/// The image, arguments (`command` then `args`), environment and resources of a container.
fn read_container(container: &Value, path: &str) -> FieldResult<Container> {
    let field = |name: &str| format!("{path}.{name}");
    for unsupported in [
        "volumeMounts",
        "volumeDevices",
        "envFrom",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "lifecycle",
    ] {
        if container
            .get(unsupported)
            .is_some_and(|value| value.as_array().is_none_or(|list| !list.is_empty()))
        {
            let reason = match unsupported {
                "volumeMounts" | "volumeDevices" => {
                    "Forbidden: wasm guests get no host files; shoal does not mount volumes"
                }
                "envFrom" => "Forbidden: shoal takes environment values only (env[].value)",
                "lifecycle" => "Forbidden: shoal runs no lifecycle hooks",
                _ => {
                    "Forbidden: shoal does not probe: a replica is ready once its module is \
                     instantiated"
                }
            };
            return Err((field(unsupported), reason.to_string()));
        }
    }
    if container
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err((field("name"), "Required value".into()));
    }
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .filter(|image| !image.is_empty())
        .ok_or_else(|| (field("image"), "Required value".to_string()))?
        .to_string();
    let mut args = Vec::new();
    for list in ["command", "args"] {
        match container.get(list) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (idx, item) in items.iter().enumerate() {
                    let item = item.as_str().ok_or_else(|| {
                        (format!("{path}.{list}[{idx}]"), "must be a string".into())
                    })?;
                    args.push(item.to_string());
                }
            }
            Some(_) => return Err((field(list), "must be a list of strings".into())),
        }
    }
    let mut env = BTreeMap::new();
    for (idx, var) in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = |name: &str| format!("{path}.env[{idx}].{name}");
        if var.get("valueFrom").is_some_and(|from| !from.is_null()) {
            return Err((
                at("valueFrom"),
                "Forbidden: shoal takes environment values only (env[].value), not references"
                    .into(),
            ));
        }
        let name = var
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| (at("name"), "Required value".to_string()))?;
        let value = var.get("value").and_then(Value::as_str).unwrap_or_default();
        env.insert(name.to_string(), value.to_string());
    }
    let resources = match container.get("resources") {
        None | Some(Value::Null) => Resources::default(),
        Some(resources) => Resources {
            requests: read_resource_list(resources.get("requests"), &field("resources.requests"))?,
            limits: read_resource_list(resources.get("limits"), &field("resources.limits"))?,
        },
    };
    Ok((image, args, env, resources))
}

fn read_resource_list(list: Option<&Value>, path: &str) -> FieldResult<ResourceList> {
    let mut resources = ResourceList::default();
    let Some(list) = list.filter(|list| !list.is_null()) else {
        return Ok(resources);
    };
    let list = list
        .as_object()
        .ok_or_else(|| (path.to_string(), "must be a map of quantities".to_string()))?;
    for (name, quantity) in list {
        let field = format!("{path}.{name}");
        let reason = |error: shoal_spec::Error| match error {
            shoal_spec::Error::Invalid(error) => error.reason,
            other => other.to_string(),
        };
        match name.as_str() {
            "cpu" => {
                resources.cpu = Some(
                    shoal_spec::from_json_value::<Cpu>(quantity.clone())
                        .map_err(|error| (field.clone(), reason(error)))?,
                );
            }
            "memory" => {
                resources.memory = Some(
                    shoal_spec::from_json_value::<ByteSize>(quantity.clone())
                        .map_err(|error| (field.clone(), reason(error)))?,
                );
            }
            other => {
                return Err((
                    field.clone(),
                    format!("Unsupported value: {other:?}: shoal accounts cpu and memory only"),
                ));
            }
        }
    }
    Ok(resources)
}

/// `spec.replicas` is the floor; Knative's annotations the autoscaler's bounds.
fn read_scale(
    object: &Value,
    annotations: &BTreeMap<String, String>,
    spec: &mut ServiceSpec,
) -> FieldResult<()> {
    let number = |key: &str| -> FieldResult<Option<u32>> {
        annotations
            .get(key)
            .map(|text| {
                text.trim().parse::<u32>().map_err(|_| {
                    (
                        format!("metadata.annotations[{key}]"),
                        format!("Invalid value: {text:?}: must be a whole number"),
                    )
                })
            })
            .transpose()
    };
    let duration = |key: &str| -> FieldResult<Option<Duration>> {
        annotations
            .get(key)
            .map(|text| {
                humantime::parse_duration(text.trim()).map_err(|error| {
                    (
                        format!("metadata.annotations[{key}]"),
                        format!("Invalid value: {text:?}: {error}"),
                    )
                })
            })
            .transpose()
    };
    let replicas = match at(object, "spec.replicas") {
        None => None,
        Some(replicas) => Some(
            replicas
                .as_u64()
                .and_then(|replicas| u32::try_from(replicas).ok())
                .ok_or_else(|| {
                    (
                        "spec.replicas".to_string(),
                        format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                    )
                })?,
        ),
    };
    spec.scale.min = replicas.or(number(MIN_SCALE)?).unwrap_or(1);
    if let Some(max) = number(MAX_SCALE)? {
        spec.scale.max = max;
    }
    spec.scale.max = spec.scale.max.max(spec.scale.min);
    if let Some(target) = number(TARGET)? {
        // Knative's target is requests in flight per replica: shoal's concurrency, aimed at
        // in full.
        spec.concurrency = target.max(1);
        spec.scale.target = 100;
    }
    spec.scale.scale_down_delay = duration(SCALE_DOWN_DELAY)?;
    spec.scale.stable_window = duration(WINDOW)?;
    Ok(())
}

/// What the Kubernetes API shows of a service: its record, its status where it runs, and the
/// index it was read at (every object's resourceVersion).
pub(crate) struct View<'a> {
    pub(crate) record: &'a ServiceRecord,
    pub(crate) status: Option<&'a ServiceStatus>,
    pub(crate) index: u64,
    /// The gateway's IP, which is each pod's IP: the gateway routes to every replica.
    pub(crate) gateway_ip: &'a str,
    /// Every stored module, which images name.
    pub(crate) modules: &'a [shoal_registry::ModuleRecord],
    /// The image a service waiting for its module names: its pods are in `ErrImagePull`.
    pub(crate) waiting_for: Option<&'a str>,
}

pub(crate) fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn uid(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, parts.join("/").as_bytes()).to_string()
}

/// A short hash of what a service's replicas run: changes when they must be replaced, like
/// Kubernetes' `pod-template-hash`.
pub(crate) fn template_hash(spec: &ServiceSpec) -> String {
    let bytes = serde_json::to_vec(&spec.replica_template()).unwrap_or_default();
    hex::encode(&Sha256::digest(bytes)[..5])
}

/// Five characters from Kubernetes' alphabet for generated names, from `seed`.
fn name_suffix(seed: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Sha256::digest(seed.as_bytes())[..5]
        .iter()
        .map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char)
        .collect()
}

impl View<'_> {
    fn name(&self) -> &str {
        self.record.name.as_str()
    }

    fn spec(&self) -> &ServiceSpec {
        &self.record.spec
    }

    fn metadata(&self, kind: Kind, stored: Option<&Value>) -> Value {
        let mut metadata = stored
            .and_then(|object| object.get("metadata"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        if !metadata.is_object() {
            metadata = json!({});
        }
        let created = self.record.created_unix_ms.to_string();
        metadata["name"] = json!(self.name());
        metadata["namespace"] = json!(NAMESPACE);
        metadata["uid"] = json!(uid(&[kind.name(), self.name(), &created]));
        metadata["resourceVersion"] = json!(self.index.to_string());
        metadata["creationTimestamp"] = json!(rfc3339(self.record.created_unix_ms));
        if kind == Kind::Deployment {
            metadata["generation"] = json!(self.record.revision);
        }
        metadata
    }

    /// The labels of the service's pods: its own, and [`SERVICE_LABEL`].
    pub(crate) fn pod_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.spec().labels.clone();
        labels.insert(SERVICE_LABEL.to_string(), self.name().to_string());
        labels
    }

    /// The pod spec: the stored one with what the spec says laid over it.
    fn pod_spec(&self, stored: Option<&Value>) -> Value {
        let mut pod = stored
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let spec = self.spec();
        let mut container = pod
            .get("containers")
            .and_then(|containers| containers.get(0))
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({ "name": self.name() }));
        // The image as written while it still names the module the service runs.
        let image = container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let names_module = resolve_image(image, self.modules) == Ok(Some(spec.module.clone()));
        if self.waiting_for.is_none() && !names_module {
            container["image"] = json!(spec.module.to_string());
        }
        let written_env: BTreeMap<String, String> = container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|var| {
                Some((
                    var.get("name")?.as_str()?.to_string(),
                    var.get("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                ))
            })
            .collect();
        if written_env != spec.env {
            container["env"] = spec
                .env
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect();
        }
        let written_args: Vec<&str> = ["command", "args"]
            .iter()
            .filter_map(|list| container.get(*list).and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if written_args != spec.args.iter().map(String::as_str).collect::<Vec<_>>()
            && let Some(map) = container.as_object_mut()
        {
            map.remove("command");
            map.insert("args".into(), json!(spec.args));
        }
        // Quantities in their canonical form, as kube-apiserver answers them ("0.5" is 500m).
        container["resources"] = if spec.resources.is_empty() {
            json!({})
        } else {
            serde_json::to_value(&spec.resources).unwrap_or_default()
        };
        for (key, default) in [
            ("imagePullPolicy", "IfNotPresent"),
            ("terminationMessagePath", "/dev/termination-log"),
            ("terminationMessagePolicy", "File"),
        ] {
            if container.get(key).is_none() {
                container[key] = json!(default);
            }
        }
        pod["containers"] = json!([container]);
        for (key, default) in [
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("shoal")),
            ("terminationGracePeriodSeconds", json!(30)),
        ] {
            if pod.get(key).is_none() {
                pod[key] = default;
            }
        }
        pod
    }

    /// The service as a Deployment.
    pub(crate) fn deployment(&self) -> Value {
        let stored = self
            .spec()
            .kubernetes
            .as_ref()
            .filter(|_| Kind::of(self.record) == Kind::Deployment);
        let mut metadata = self.metadata(Kind::Deployment, stored);
        if metadata.get("labels").is_none() {
            metadata["labels"] = json!({ SERVICE_LABEL: self.name() });
        }
        let mut spec = stored
            .and_then(|object| object.get("spec"))
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        spec["replicas"] = json!(self.spec().scale.min);
        if spec.get("selector").is_none() {
            spec["selector"] = json!({ "matchLabels": { SERVICE_LABEL: self.name() } });
        }
        let mut template_meta = at(&spec, "template.metadata")
            .cloned()
            .unwrap_or_else(|| json!({}));
        template_meta["labels"] = json!(self.pod_labels());
        template_meta["creationTimestamp"] = Value::Null;
        let pod = self.pod_spec(at(&spec, "template.spec"));
        spec["template"] = json!({ "metadata": template_meta, "spec": pod });
        for (key, default) in [
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
            (
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            ),
        ] {
            if spec.get(key).is_none() {
                spec[key] = default;
            }
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": spec,
            "status": self.deployment_status(),
        })
    }

    fn running(&self) -> &[RunningReplica] {
        self.status.map_or(&[], |status| status.running.as_slice())
    }

    fn deployment_status(&self) -> Value {
        let running = self.running().len() as u32;
        let wanted = self.spec().scale.min;
        let time = rfc3339(self.record.updated_unix_ms);
        let available = running >= wanted;
        let mut status = json!({
            "replicas": running,
            "updatedReplicas": running,
            "readyReplicas": running,
            "availableReplicas": running,
            "conditions": [
                {
                    "type": "Available",
                    "status": if available { "True" } else { "False" },
                    "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                    "message": if available {
                        "Deployment has minimum availability.".to_string()
                    } else if let Some(image) = self.waiting_for {
                        image_pull_message(image)
                    } else {
                        format!("{running} of {wanted} replicas are running: the rest wait for room")
                    },
                    "lastUpdateTime": time,
                    "lastTransitionTime": time,
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "message": format!("ReplicaSet \"{}\" has successfully progressed.", self.replica_set_name()),
                    "lastUpdateTime": time,
                    "lastTransitionTime": time,
                },
            ],
        });
        // A service this node does not run yet has not been observed at this generation.
        if self.status.is_some() {
            status["observedGeneration"] = json!(self.record.revision);
        }
        if running < wanted {
            status["unavailableReplicas"] = json!(wanted - running);
        }
        status
    }

    /// `<service>-<template hash>`, the name Kubernetes would give the ReplicaSet.
    pub(crate) fn replica_set_name(&self) -> String {
        format!("{}-{}", self.name(), template_hash(self.spec()))
    }

    /// The service's replicas as Pods: one per running replica, and a Pending one for each
    /// replica of its floor that has no room yet.
    pub(crate) fn pods(&self) -> Vec<Value> {
        let kind = Kind::of(self.record);
        let stored = self.spec().kubernetes.as_ref();
        let (meta_path, pod_path) = kind.template_paths();
        let stored_pod = stored.and_then(|object| at(object, pod_path));
        let pod_spec = self.pod_spec(stored_pod);
        let hash = template_hash(self.spec());
        let mut labels = self.pod_labels();
        if kind == Kind::Deployment {
            labels.insert("pod-template-hash".into(), hash.clone());
        }
        let annotations = stored
            .and_then(|object| at(object, &format!("{meta_path}.annotations")))
            .cloned();
        let replicas = self.pod_replicas();
        let mut pods = Vec::with_capacity(replicas.len());
        for (name, seed, replica) in replicas {
            let started = replica
                .and_then(|replica| replica.started_unix_ms)
                .unwrap_or(self.record.updated_unix_ms);
            let mut metadata = json!({
                "name": name,
                "namespace": NAMESPACE,
                "uid": uid(&["Pod", &name, &seed, &started.to_string()]),
                "resourceVersion": self.index.to_string(),
                "creationTimestamp": rfc3339(started),
                "labels": labels,
            });
            if let Some(annotations) = &annotations {
                metadata["annotations"] = annotations.clone();
            }
            if kind == Kind::Deployment {
                metadata["generateName"] = json!(format!("{}-{hash}-", self.name()));
                metadata["ownerReferences"] = json!([{
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": self.replica_set_name(),
                    "uid": uid(&["ReplicaSet", &self.replica_set_name()]),
                    "controller": true,
                    "blockOwnerDeletion": true,
                }]);
            }
            let mut spec = pod_spec.clone();
            let status = match replica {
                Some(replica) => {
                    spec["nodeName"] = json!(replica.node);
                    self.running_pod_status(&pod_spec, started, replica)
                }
                None => self.pending_pod_status(&pod_spec),
            };
            pods.push(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": spec,
                "status": status,
            }));
        }
        pods
    }

    /// Each pod's name, the seed of its uid, and the replica it is (`None`: pending), running
    /// ones first.
    pub(crate) fn pod_replicas(&self) -> Vec<(String, String, Option<&RunningReplica>)> {
        let kind = Kind::of(self.record);
        let hash = template_hash(self.spec());
        let running = self.running();
        let pending = (self.spec().scale.min as usize).saturating_sub(running.len());
        running
            .iter()
            .map(Some)
            .chain((0..pending).map(|_| None))
            .enumerate()
            .map(|(idx, replica)| {
                let seed = match replica {
                    Some(replica) => {
                        format!("{}/{}/{hash}/{}", self.name(), replica.node, replica.id)
                    }
                    None => format!("{}/pending/{hash}/{idx}", self.name()),
                };
                let name = if kind == Kind::Pod && idx == 0 {
                    self.name().to_string()
                } else {
                    format!("{}-{hash}-{}", self.name(), name_suffix(&seed))
                };
                (name, seed, replica)
            })
            .collect()
    }

    fn container_status(&self, pod_spec: &Value, replica: &RunningReplica, started: &str) -> Value {
        let container = &pod_spec["containers"][0];
        let mut status = json!({
            "name": container["name"],
            "image": container["image"],
            "imageID": self.spec().module.to_string(),
            "ready": true,
            "started": true,
            "restartCount": replica.restarts,
            "state": { "running": { "startedAt": started } },
        });
        // A guest fault killed the instance a request ran in: the container's last state, as
        // the kubelet shows a crashed container's.
        if let Some(fault) = &replica.last_fault {
            let exit_code = if fault.reason == "OOMKilled" { 137 } else { 1 };
            status["lastState"] = json!({
                "terminated": {
                    "exitCode": exit_code,
                    "reason": fault.reason,
                    "message": fault.message,
                    "startedAt": started,
                    "finishedAt": rfc3339(fault.at_unix_ms),
                }
            });
        }
        json!([status])
    }

    fn running_pod_status(
        &self,
        pod_spec: &Value,
        started_unix_ms: u64,
        replica: &RunningReplica,
    ) -> Value {
        let started = rfc3339(started_unix_ms);
        let condition = |kind: &str| json!({ "type": kind, "status": "True", "lastTransitionTime": started, "lastProbeTime": null });
        let conditions = ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map(condition);
        json!({
            "phase": "Running",
            "conditions": conditions,
            "hostIP": self.gateway_ip,
            "podIP": self.gateway_ip,
            "podIPs": [{ "ip": self.gateway_ip }],
            "startTime": started,
            "qosClass": qos_class(&self.spec().resources),
            "containerStatuses": self.container_status(pod_spec, replica, &started),
        })
    }

    fn pending_pod_status(&self, pod_spec: &Value) -> Value {
        let time = rfc3339(self.record.updated_unix_ms);
        if let Some(image) = self.waiting_for {
            let container = &pod_spec["containers"][0];
            let waiting = json!({ "reason": "ErrImagePull", "message": image_pull_message(image) });
            let condition = |kind: &str, status: &str| {
                let mut condition = json!({ "type": kind, "status": status, "lastTransitionTime": time, "lastProbeTime": null });
                if status == "False" {
                    condition["reason"] = json!("ContainersNotReady");
                    condition["message"] = json!(format!(
                        "containers with unready status: [{}]",
                        container["name"].as_str().unwrap_or_default()
                    ));
                }
                condition
            };
            return json!({
                "phase": "Pending",
                "conditions": [
                    condition("Initialized", "True"),
                    condition("Ready", "False"),
                    condition("ContainersReady", "False"),
                    condition("PodScheduled", "True"),
                ],
                "hostIP": self.gateway_ip,
                "startTime": time,
                "qosClass": qos_class(&self.spec().resources),
                "containerStatuses": [{
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": false,
                    "started": false,
                    "restartCount": 0,
                    "state": { "waiting": waiting },
                }],
            });
        }
        json!({
            "phase": "Pending",
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "no node has room for this replica's resource requests",
                "lastTransitionTime": time,
                "lastProbeTime": null,
            }],
            "qosClass": qos_class(&self.spec().resources),
        })
    }
}

/// Kubernetes' QoS class, from the container's requests and limits.
fn qos_class(resources: &Resources) -> &'static str {
    if resources.is_empty() {
        return "BestEffort";
    }
    let limits = &resources.limits;
    let requests = &resources.requests;
    let guaranteed = limits.cpu.is_some()
        && limits.memory.is_some()
        && requests.cpu.is_none_or(|cpu| Some(cpu) == limits.cpu)
        && requests
            .memory
            .is_none_or(|memory| Some(memory) == limits.memory);
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A Service read from a request, as the route it becomes. Only what the gateway can do is
/// taken: `type: ClusterIP` (the default), an equality selector, ports with numbers in range.
pub(crate) fn route_spec_of(name: &str, object: &Value) -> KubeResult<shoal_spec::RouteSpec> {
    let invalid = |field: &str, reason: String| KubeError::invalid("Service", name, field, reason);
    if !object.is_object() {
        return Err(KubeError::bad_request("the body must be a JSON object"));
    }
    match at(object, "spec.type").and_then(Value::as_str) {
        None | Some("ClusterIP") => {}
        Some(other) => {
            return Err(invalid(
                "spec.type",
                format!(
                    "Unsupported value: {other:?}: shoal's gateway is the one way in: \
                     supported values: \"ClusterIP\""
                ),
            ));
        }
    }
    let selector = match at(object, "spec.selector") {
        None => BTreeMap::new(),
        Some(Value::Object(map)) => {
            let mut selector = BTreeMap::new();
            for (key, value) in map {
                let value = value.as_str().ok_or_else(|| {
                    invalid(&format!("spec.selector.{key}"), "must be a string".into())
                })?;
                shoal_spec::check_label(key, value)
                    .map_err(|reason| invalid("spec.selector", reason))?;
                selector.insert(key.clone(), value.to_string());
            }
            selector
        }
        Some(_) => return Err(invalid("spec.selector", "must be a map of labels".into())),
    };
    for (idx, port) in at(object, "spec.ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let number = port.get("port").and_then(Value::as_u64);
        if !number.is_some_and(|port| (1..=65535).contains(&port)) {
            return Err(invalid(
                &format!("spec.ports[{idx}].port"),
                "Invalid value: must be between 1 and 65535, inclusive".into(),
            ));
        }
    }
    Ok(shoal_spec::RouteSpec {
        selector,
        kubernetes: Some(strip_server_fields(object)),
    })
}

/// A route as a Service: the object as written, with the gateway's address as its cluster
/// IP and defaults filled in as kube-apiserver fills them.
pub(crate) fn service_object(
    route: &shoal_registry::RouteRecord,
    index: u64,
    gateway_ip: &str,
) -> Value {
    let stored = route.spec.kubernetes.clone().unwrap_or_else(|| json!({}));
    let mut metadata = stored
        .get("metadata")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let name = route.name.as_str();
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(NAMESPACE);
    metadata["uid"] = json!(uid(&["Service", name, &route.created_unix_ms.to_string()]));
    metadata["resourceVersion"] = json!(index.to_string());
    metadata["creationTimestamp"] = json!(rfc3339(route.created_unix_ms));
    let mut spec = stored
        .get("spec")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    spec["selector"] = json!(route.spec.selector);
    let ports: Vec<Value> = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut port| {
            if port.get("protocol").is_none() {
                port["protocol"] = json!("TCP");
            }
            if port.get("targetPort").is_none() {
                port["targetPort"] = port["port"].clone();
            }
            port
        })
        .collect();
    spec["ports"] = json!(ports);
    spec["type"] = json!("ClusterIP");
    spec["clusterIP"] = json!(gateway_ip);
    spec["clusterIPs"] = json!([gateway_ip]);
    for (key, default) in [
        ("sessionAffinity", json!("None")),
        ("ipFamilies", json!(["IPv4"])),
        ("ipFamilyPolicy", json!("SingleStack")),
        ("internalTrafficPolicy", json!("Cluster")),
    ] {
        if spec.get(key).is_none() {
            spec[key] = default;
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": spec,
        "status": { "loadBalancer": {} },
    })
}

/// A scale event of the service behind `deployment` as a Kubernetes Event on it.
pub(crate) fn event(
    deployment: &Value,
    replica_set: &str,
    record: &shoal_registry::EventRecord,
    index: u64,
) -> Value {
    let name = at(deployment, "metadata.name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let time = rfc3339(record.time_unix_ms);
    let (kind, reason, message) =
        if let Some(shortfall) = record.reason.strip_prefix("at capacity: ") {
            (
                "Warning",
                "FailedScheduling",
                format!(
                    "0/1 nodes are available: {shortfall}; {} of the wanted replicas run",
                    record.to
                ),
            )
        } else if record.to == record.from {
            (
                "Normal",
                "ScalingReplicaSet",
                format!(
                    "Kept replica set {replica_set} at {}: {}",
                    record.to, record.reason
                ),
            )
        } else {
            let direction = if record.to > record.from {
                "up"
            } else {
                "down"
            };
            (
                "Normal",
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {replica_set} from {} to {}: {}",
                    record.from, record.to, record.reason
                ),
            )
        };
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{name}.{:016x}", record.seq),
            "namespace": NAMESPACE,
            "uid": uid(&["Event", name, &record.seq.to_string(), &record.time_unix_ms.to_string()]),
            "resourceVersion": index.to_string(),
            "creationTimestamp": time,
        },
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "namespace": NAMESPACE,
            "uid": at(deployment, "metadata.uid"),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "count": 1,
        "firstTimestamp": time,
        "lastTimestamp": time,
        "source": { "component": "shoal-autoscaler" },
        "reportingComponent": "shoal-autoscaler",
        "reportingInstance": "",
    })
}

/// A pod's trouble as a Warning Event on it: its newest guest fault (`OOMKilled` or `Failed`,
/// counted as often as the pod restarted), or an image that names no module (`Failed`, as the
/// kubelet reports a failed pull); `None` for a pod without either.
pub(crate) fn pod_event(pod: &Value, index: u64) -> Option<Value> {
    let status = at(pod, "status.containerStatuses")?.get(0)?;
    let name = at(pod, "metadata.name")?.as_str()?;
    let (suffix, reason, message, count, time, component) =
        if let Some(terminated) = at(status, "lastState.terminated") {
            let reason = if terminated["reason"] == "OOMKilled" {
                "OOMKilled"
            } else {
                "Failed"
            };
            let message = format!(
                "a request's guest failed: {}",
                terminated["message"].as_str().unwrap_or_default()
            );
            let time = terminated["finishedAt"].clone();
            let count = status["restartCount"].clone();
            ("fault", reason, message, count, time, "shoal-runtime")
        } else {
            let waiting = at(status, "state.waiting").filter(|w| w["reason"] == "ErrImagePull")?;
            let message = format!(
                "Failed to pull image {}: {}",
                status["image"],
                waiting["message"].as_str().unwrap_or_default()
            );
            let time = at(pod, "status.startTime").cloned().unwrap_or(Value::Null);
            ("pull", "Failed", message, json!(1), time, "shoal-node")
        };
    Some(json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{name}.{suffix}"),
            "namespace": NAMESPACE,
            "uid": uid(&["Event", name, suffix]),
            "resourceVersion": index.to_string(),
            "creationTimestamp": time,
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": name,
            "namespace": NAMESPACE,
            "uid": at(pod, "metadata.uid"),
            "fieldPath": format!("spec.containers{{{}}}", status["name"].as_str().unwrap_or_default()),
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": count,
        "firstTimestamp": time,
        "lastTimestamp": time,
        "source": { "component": component },
        "reportingComponent": component,
        "reportingInstance": "",
    }))
}

/// A list object (`PodList`, `DeploymentList`).
pub(crate) fn list(kind: &str, api_version: &str, index: u64, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": { "resourceVersion": index.to_string() },
        "items": items,
    })
}

/// The name, labels and other metadata of an object, for label selection.
pub(crate) fn labels_of(object: &Value) -> BTreeMap<String, String> {
    string_map(at(object, "metadata.labels"))
}

/// Age as kubectl prints it (`45s`, `3m12s`, `2d`), from a creation time.
pub(crate) fn age(created_unix_ms: u64, now: SystemTime) -> String {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let seconds = now_ms.saturating_sub(created_unix_ms) / 1000;
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match () {
        _ if seconds < 120 => format!("{seconds}s"),
        _ if minutes < 10 && !seconds.is_multiple_of(60) => format!("{minutes}m{}s", seconds % 60),
        _ if hours < 3 => format!("{minutes}m"),
        _ if hours < 8 && !minutes.is_multiple_of(60) => format!("{hours}h{}m", minutes % 60),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 && !hours.is_multiple_of(24) => format!("{days}d{}h", hours % 24),
        _ => format!("{days}d"),
    }
}

/// Creation time of an object rendered by [`View`], in ms since the epoch.
pub(crate) fn created_ms(object: &Value) -> u64 {
    at(object, "metadata.creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|text| humantime::parse_rfc3339(text).ok())
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64)
}

/// Resolves an image to a stored module: `sha256:<hex>` or `anything@sha256:<hex>` names
/// it by digest; anything else is the name of an uploaded module (`POST /v1/modules?name=`),
/// tried as written and then without a `:latest` tag. Nothing is pulled from a registry.
/// The module `image` names among `modules`: `Ok(None)` when it names none (yet), `Err` when
/// it is not an image at all.
pub(crate) fn resolve_image(
    image: &str,
    modules: &[shoal_registry::ModuleRecord],
) -> Result<Option<Digest>, String> {
    let image_ref =
        ImageRef::parse(image).map_err(|error| format!("Invalid value: {image:?}: {error}"))?;
    Ok(shoal_registry::module_of_image(modules, &image_ref).map(|module| module.digest.clone()))
}

/// Why a pod waits for `image`, as the kubelet's `ErrImagePull` message says it.
pub(crate) fn image_pull_message(image: &str) -> String {
    let untagged = image.strip_suffix(":latest").unwrap_or(image);
    format!(
        "image {image:?} names no uploaded module: upload one with POST /v1/modules?name={untagged} \
         (or shoal deploy --module-name {untagged}), or name a module by digest (sha256:<hex>); \
         nothing is pulled from a registry"
    )
}

/// A service waiting for its module as the record of a service, which [`View`] renders with
/// no replica running and its pods in `ErrImagePull`.
pub(crate) fn waiting_service(waiting: &shoal_registry::WaitingRecord) -> ServiceRecord {
    ServiceRecord {
        version: waiting.version,
        name: waiting.name.clone(),
        revision: 1,
        spec: waiting.spec.clone(),
        created_unix_ms: waiting.created_unix_ms,
        updated_unix_ms: waiting.updated_unix_ms,
        change_index: waiting.change_index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::of(b"module")
    }

    fn deployment(pod_spec: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "hello", "annotations": { MAX_SCALE: "7" } },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": { "app": "hello" } },
                "template": { "metadata": { "labels": { "app": "hello" } }, "spec": pod_spec },
            },
        })
    }

    fn resolve(image: &str) -> Result<Digest, String> {
        match ImageRef::parse(image) {
            Ok(ImageRef::Digest(digest)) => Ok(digest),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn a_deployment_becomes_a_spec() {
        let image = format!("hello@{}", digest());
        let object = deployment(json!({
            "runtimeClassName": "wasm",
            "nodeSelector": { "kubernetes.io/arch": "wasm32-wasi" },
            "containers": [{
                "name": "c",
                "image": image,
                "command": ["serve"],
                "args": ["--port", "80"],
                "env": [{ "name": "GREETING", "value": "hi" }],
                "resources": {
                    "requests": { "cpu": "0.5", "memory": "512Mi" },
                    "limits": { "cpu": 1, "memory": "1Gi" },
                },
            }],
        }));
        let spec = spec_of(Kind::Deployment, "hello", &object, resolve).unwrap();
        assert_eq!(spec.module, digest());
        assert_eq!(spec.args, ["serve", "--port", "80"]);
        assert_eq!(spec.env["GREETING"], "hi");
        assert_eq!(spec.resources.requests.cpu, Some(Cpu(500)));
        assert_eq!(spec.resources.limits.memory, Some(ByteSize(1 << 30)));
        assert_eq!((spec.scale.min, spec.scale.max), (2, 7));
        assert_eq!(spec.labels["app"], "hello");
    }

    #[test]
    fn what_shoal_cannot_honour_is_refused_naming_the_field() {
        let image = digest().to_string();
        let cases = [
            (
                json!({ "volumes": [{ "name": "v" }], "containers": [{ "name": "c", "image": image }] }),
                "spec.template.spec.volumes",
            ),
            (
                json!({ "containers": [{ "name": "c", "image": image }, { "name": "d", "image": image }] }),
                "spec.template.spec.containers",
            ),
            (
                json!({ "containers": [{ "name": "c", "image": image, "env": [{ "name": "A", "valueFrom": {} }] }] }),
                "spec.template.spec.containers[0].env[0].valueFrom",
            ),
            (
                json!({ "containers": [{ "name": "c", "image": image, "livenessProbe": {} }] }),
                "spec.template.spec.containers[0].livenessProbe",
            ),
            (
                json!({ "hostNetwork": true, "containers": [{ "name": "c", "image": image }] }),
                "spec.template.spec.hostNetwork",
            ),
            (
                json!({ "containers": [{ "name": "c", "image": "nginx:latest" }] }),
                "spec.template.spec.containers[0].image",
            ),
            (
                json!({ "containers": [{ "name": "c", "image": image, "resources": { "limits": { "cpu": "1K" } } }] }),
                "spec.template.spec.containers[0].resources.limits.cpu",
            ),
            (
                json!({ "containers": [{ "name": "c", "image": image, "resources": { "limits": { "nvidia.com/gpu": 1 } } }] }),
                "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu",
            ),
        ];
        for (pod_spec, field) in cases {
            let error = spec_of(
                Kind::Deployment,
                "hello",
                &deployment(pod_spec.clone()),
                resolve,
            )
            .unwrap_err();
            assert_eq!(error.code.as_u16(), 422, "{pod_spec}");
            assert!(
                error.message.contains(&format!("{field}: ")),
                "{field}: {}",
                error.message
            );
        }
    }

    #[test]
    fn a_selector_must_match_the_template() {
        let mut object =
            deployment(json!({ "containers": [{ "name": "c", "image": digest().to_string() }] }));
        object["spec"]["selector"] = json!({ "matchLabels": { "app": "other" } });
        let error = spec_of(Kind::Deployment, "hello", &object, resolve).unwrap_err();
        assert!(
            error.message.contains("spec.template.metadata.labels"),
            "{}",
            error.message
        );
    }

    #[test]
    fn ages_print_like_kubectl() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let created = |seconds_ago: u64| (1_000_000 - seconds_ago) * 1000;
        for (seconds_ago, expected) in [
            (5, "5s"),
            (119, "119s"),
            (190, "3m10s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86_400, "3d"),
        ] {
            assert_eq!(age(created(seconds_ago), now), expected);
        }
    }

    #[test]
    fn qos_follows_kubernetes() {
        let mut resources = Resources::default();
        assert_eq!(qos_class(&resources), "BestEffort");
        resources.limits.cpu = Some(Cpu(1000));
        resources.limits.memory = Some(ByteSize(1 << 20));
        assert_eq!(qos_class(&resources), "Guaranteed");
        resources.requests.cpu = Some(Cpu(500));
        assert_eq!(qos_class(&resources), "Burstable");
    }
}
