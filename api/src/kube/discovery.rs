//! Discovery: what a Kubernetes client asks before anything else. `/version` (whose minor
//! picks the kubectl binary on machines with a dispatcher: it must be 29 or more, since older
//! kubectl validates with OpenAPI v2), the legacy group and resource lists every client reads,
//! and the smallest OpenAPI v3 that lets kubectl's default (strict) `apply` and `create` ask the
//! server to validate instead of failing to download a schema.
//!
//! Aggregated discovery is not served: a plain JSON answer is legacy discovery to every client.
//! `/openapi/v2` answers 404, because kubectl reads it as protobuf and JSON there breaks it.

use axum::Json;
use serde_json::{Value, json};

/// The Kubernetes version shoal's API follows.
pub(crate) const MINOR: &str = "32";

/// A resource as legacy discovery lists it: `(group/version, plural, singular, kind, short
/// names, verbs, namespaced)`; a subresource is `plural/sub`.
type Resource = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    bool,
);

/// Every resource served.
const RESOURCES: &[Resource] = &[
    (
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        &["ns"],
        &["get", "list"],
        false,
    ),
    ("v1", "pods", "pod", "Pod", &["po"], &ALL_VERBS, true),
    ("v1", "pods/log", "", "Pod", &[], &["get"], true),
    ("v1", "events", "event", "Event", &["ev"], &["list"], true),
    (
        "v1",
        "services",
        "service",
        "Service",
        &["svc"],
        &ALL_VERBS,
        true,
    ),
    (
        "apps/v1",
        "deployments",
        "deployment",
        "Deployment",
        &["deploy"],
        &ALL_VERBS,
        true,
    ),
    (
        "apps/v1",
        "deployments/scale",
        "",
        "Scale",
        &[],
        &["get", "patch", "update"],
        true,
    ),
    (
        "apps/v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        &["rs"],
        &["get", "list"],
        true,
    ),
];

const ALL_VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub(crate) async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-shoal.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none",
        "compiler": "shoal",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

pub(crate) async fn api_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "" }],
    }))
}

pub(crate) async fn api_groups() -> Json<Value> {
    let version = json!({ "groupVersion": "apps/v1", "version": "v1" });
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{ "name": "apps", "versions": [version], "preferredVersion": version }],
    }))
}

fn resource_list(group_version: &str) -> Json<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|(gv, ..)| *gv == group_version)
        .map(|(_, name, singular, kind, short, verbs, namespaced)| {
            let mut resource = json!({
                "name": name,
                "singularName": singular,
                "namespaced": namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !short.is_empty() {
                resource["shortNames"] = json!(short);
            }
            if matches!(*name, "pods" | "deployments" | "replicasets" | "services") {
                resource["categories"] = json!(["all"]);
            }
            if *name == "deployments/scale" {
                resource["group"] = json!("autoscaling");
                resource["version"] = json!("v1");
            }
            resource
        })
        .collect();
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

pub(crate) async fn core_resources() -> Json<Value> {
    resource_list("v1")
}

pub(crate) async fn apps_resources() -> Json<Value> {
    resource_list("apps/v1")
}

pub(crate) async fn openapi_index() -> Json<Value> {
    Json(json!({
        "paths": {
            "api/v1": { "serverRelativeURL": "/openapi/v3/api/v1" },
            "apis/apps/v1": { "serverRelativeURL": "/openapi/v3/apis/apps/v1" },
        }
    }))
}

/// The paths of one group-version, each saying which kind it serves and that the server takes
/// `fieldValidation`: all kubectl asks of the spec before it lets the server validate.
fn openapi(group: &str, version_prefix: &str, kinds: &[(&str, &str)]) -> Json<Value> {
    let version = "v1";
    let mut paths = serde_json::Map::new();
    for (plural, kind) in kinds {
        let operation = json!({
            "x-kubernetes-group-version-kind": { "group": group, "version": version, "kind": kind },
            "parameters": [{ "name": "fieldValidation", "in": "query", "schema": { "type": "string" } }],
            // No strategic-merge-patch here: kubectl then builds its patches from its own
            // compiled-in types, which know the merge keys.
            "requestBody": { "content": { "application/merge-patch+json": {} } },
        });
        let item = format!("{version_prefix}/namespaces/{{namespace}}/{plural}/{{name}}");
        paths.insert(
            item,
            json!({ "get": operation, "put": operation, "patch": operation, "delete": operation }),
        );
        let collection = format!("{version_prefix}/namespaces/{{namespace}}/{plural}");
        paths.insert(collection, json!({ "get": operation, "post": operation }));
    }
    Json(json!({
        "openapi": "3.0.0",
        "info": { "title": "shoal", "version": format!("v1.{MINOR}.0") },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

pub(crate) async fn openapi_core() -> Json<Value> {
    openapi("", "/api/v1", &[("pods", "Pod"), ("services", "Service")])
}

pub(crate) async fn openapi_apps() -> Json<Value> {
    openapi("apps", "/apis/apps/v1", &[("deployments", "Deployment")])
}
