//! Server-side printing: the `Table` kubectl asks for with `Accept: …;as=Table;…`, with the
//! columns kube-apiserver prints for each kind (priority 1 only under `-o wide`). Without it
//! `kubectl get` falls back to NAME and AGE.

use std::time::SystemTime;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::objects::{Kind, age, at, created_ms};

/// Whether the client asked for a Table.
pub(crate) fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("as=Table"))
}

/// What a table lists: a workload kind, or events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Printed {
    Workload(Kind),
    Event,
}

impl From<Kind> for Printed {
    fn from(kind: Kind) -> Printed {
        Printed::Workload(kind)
    }
}

fn columns(kind: Printed) -> Value {
    let column = |name: &str, kind: &str, priority: u8, description: &str| {
        let format = if name == "Name" { "name" } else { "" };
        json!({ "name": name, "type": kind, "format": format, "description": description, "priority": priority })
    };
    let kind = match kind {
        Printed::Workload(kind) => kind,
        Printed::Event => {
            return json!([
                column(
                    "Last Seen",
                    "string",
                    0,
                    "Time since the event was last seen."
                ),
                column("Type", "string", 0, "Normal or Warning."),
                column(
                    "Reason",
                    "string",
                    0,
                    "Why the event happened, in one word."
                ),
                column("Object", "string", 0, "The object it is about."),
                column("Message", "string", 0, "What happened."),
            ]);
        }
    };
    match kind {
        Kind::Pod => json!([
            column(
                "Name",
                "string",
                0,
                "Name must be unique within a namespace."
            ),
            column(
                "Ready",
                "string",
                0,
                "The number of containers that are ready."
            ),
            column(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod."
            ),
            column(
                "Restarts",
                "string",
                0,
                "The number of times the containers have been restarted."
            ),
            column("Age", "string", 0, "Time since creation."),
            column(
                "IP",
                "string",
                1,
                "The pod's IP: the gateway, which routes to it by name."
            ),
            column("Node", "string", 1, "The node the pod runs on."),
            column("Nominated Node", "string", 1, "Not used by shoal."),
            column("Readiness Gates", "string", 1, "Not used by shoal."),
        ]),
        Kind::Service => {
            json!([
                column(
                    "Name",
                    "string",
                    0,
                    "Name must be unique within a namespace."
                ),
                column(
                    "Type",
                    "string",
                    0,
                    "How the service is exposed: ClusterIP, the gateway."
                ),
                column(
                    "Cluster-IP",
                    "string",
                    0,
                    "The gateway's address, which routes the name."
                ),
                column("External-IP", "string", 0, "Not used by shoal."),
                column("Port(s)", "string", 0, "The service's ports."),
                column("Age", "string", 0, "Time since creation."),
                column(
                    "Selector",
                    "string",
                    1,
                    "The labels of the pods it routes to."
                ),
            ])
        }
        Kind::Deployment => json!([
            column(
                "Name",
                "string",
                0,
                "Name must be unique within a namespace."
            ),
            column(
                "Ready",
                "string",
                0,
                "Ready replicas out of the floor (spec.replicas)."
            ),
            column(
                "Up-to-date",
                "string",
                0,
                "Replicas running the current revision."
            ),
            column("Available", "string", 0, "Replicas available to serve."),
            column("Age", "string", 0, "Time since creation."),
            column(
                "Containers",
                "string",
                1,
                "Names of each container in the template."
            ),
            column(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template."
            ),
            column("Selector", "string", 1, "Label selector for pods."),
        ]),
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

fn cells(kind: Printed, object: &Value, now: SystemTime) -> Value {
    let name = text(at(object, "metadata.name"));
    let age = age(created_ms(object), now);
    let kind = match kind {
        Printed::Workload(kind) => kind,
        Printed::Event => {
            let involved = format!(
                "{}/{}",
                text(at(object, "involvedObject.kind")).to_lowercase(),
                text(at(object, "involvedObject.name"))
            );
            return json!([
                age,
                text(at(object, "type")),
                text(at(object, "reason")),
                involved,
                text(at(object, "message")),
            ]);
        }
    };
    match kind {
        Kind::Pod => {
            let container = at(object, "status.containerStatuses").and_then(|list| list.get(0));
            let ready = container
                .and_then(|c| c.get("ready"))
                .and_then(Value::as_bool)
                == Some(true);
            let restarts = container
                .and_then(|c| c.get("restartCount"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let waiting = container.and_then(|c| at(c, "state.waiting.reason"));
            let terminated = container.and_then(|c| at(c, "state.terminated.reason"));
            let status = at(object, "status.reason")
                .or(waiting)
                .or(terminated)
                .or(at(object, "status.phase"));
            let ip = text(at(object, "status.podIP"));
            json!([
                name,
                format!("{}/1", u8::from(ready)),
                text(status),
                restarts,
                age,
                or_none(ip),
                or_none(text(at(object, "spec.nodeName"))),
                "<none>",
                "<none>",
            ])
        }
        Kind::Service => {
            let ports: Vec<String> = at(object, "spec.ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|port| format!("{}/{}", text(port.get("port")), text(port.get("protocol"))))
                .collect();
            let selector: Vec<String> = at(object, "spec.selector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(key, value)| format!("{key}={}", text(Some(value))))
                .collect();
            json!([
                name,
                text(at(object, "spec.type")),
                text(at(object, "spec.clusterIP")),
                "<none>",
                or_none(ports.join(",")),
                age,
                or_none(selector.join(",")),
            ])
        }
        Kind::Deployment => {
            let count = |field: &str| at(object, field).and_then(Value::as_u64).unwrap_or(0);
            let containers = at(object, "spec.template.spec.containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let join = |key: &str| {
                containers
                    .iter()
                    .map(|container| text(container.get(key)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let selector = super::selector::LabelSelector::from_json(
                at(object, "spec.selector").unwrap_or(&Value::Null),
            )
            .map(|selector| selector.to_string())
            .unwrap_or_default();
            json!([
                name,
                format!(
                    "{}/{}",
                    count("status.readyReplicas"),
                    count("spec.replicas")
                ),
                count("status.updatedReplicas"),
                count("status.availableReplicas"),
                age,
                join("name"),
                join("image"),
                selector,
            ])
        }
    }
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

/// The objects as a Table, each row carrying the object's metadata (for `--show-labels`).
pub(crate) fn table(kind: impl Into<Printed>, resource_version: u64, objects: &[Value]) -> Value {
    let kind = kind.into();
    let now = SystemTime::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            json!({
                "cells": cells(kind, object, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object.get("metadata").cloned().unwrap_or(Value::Null),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": columns(kind),
        "rows": rows,
    })
}
