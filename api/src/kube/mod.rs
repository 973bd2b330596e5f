//! The Kubernetes API subset: `kubectl` and the Kubernetes client libraries deploy, scale,
//! inspect and delete wasm services through it, unchanged.
//!
//! A service is a Deployment (apps/v1) and its replicas are its Pods; a Pod created bare is a
//! one-replica service of its own (`objects.rs` converts both ways). There is no second store:
//! every write is a [`Node::write_service`] or [`Node::delete_service`], every read renders the
//! node's records and status, and resourceVersion is the store's change index, so these views
//! agree with the management and Consul APIs. Served on the management listener under
//! `/api`, `/apis`, `/openapi` and `/version`, with the same token rule.
//!
//! Namespaces: `default` only; any other answers 404 saying so.

mod discovery;
mod objects;
mod patch;
mod selector;
mod status;
mod table;
mod watch;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde_json::{Value, json};
use shoal_node::{Node, WriteOptions};
use shoal_registry::ServiceRecord;
use shoal_spec::{Digest, ServiceName, ServiceSpec};

use self::objects::{Kind, NAMESPACE, View, at};
use self::selector::{FieldSelector, LabelSelector};
use self::status::{KubeError, KubeResult};

/// Path prefixes the Kubernetes API answers under: an unknown path below them gets a `Status`.
pub const PREFIXES: &[&str] = &["/api/", "/apis/", "/openapi/"];

/// Every Kubernetes route, as `METHOD path`: checked against the router by a test.
pub const ROUTES: &[&str] = &[
    "GET /version",
    "GET /api",
    "GET /apis",
    "GET /api/v1",
    "GET /apis/apps/v1",
    "GET /openapi/v3",
    "GET /openapi/v3/api/v1",
    "GET /openapi/v3/apis/apps/v1",
    "GET /api/v1/namespaces",
    "GET /api/v1/namespaces/{namespace}",
    "GET /api/v1/pods",
    "GET /api/v1/namespaces/{namespace}/pods",
    "POST /api/v1/namespaces/{namespace}/pods",
    "GET /api/v1/namespaces/{namespace}/pods/{name}",
    "PUT /api/v1/namespaces/{namespace}/pods/{name}",
    "PATCH /api/v1/namespaces/{namespace}/pods/{name}",
    "DELETE /api/v1/namespaces/{namespace}/pods/{name}",
    "GET /api/v1/namespaces/{namespace}/pods/{name}/log",
    "GET /api/v1/namespaces/{namespace}/events",
    "GET /api/v1/services",
    "GET /api/v1/namespaces/{namespace}/services",
    "POST /api/v1/namespaces/{namespace}/services",
    "GET /api/v1/namespaces/{namespace}/services/{name}",
    "PUT /api/v1/namespaces/{namespace}/services/{name}",
    "PATCH /api/v1/namespaces/{namespace}/services/{name}",
    "DELETE /api/v1/namespaces/{namespace}/services/{name}",
    "GET /apis/apps/v1/deployments",
    "GET /apis/apps/v1/namespaces/{namespace}/deployments",
    "POST /apis/apps/v1/namespaces/{namespace}/deployments",
    "GET /apis/apps/v1/namespaces/{namespace}/deployments/{name}",
    "PUT /apis/apps/v1/namespaces/{namespace}/deployments/{name}",
    "PATCH /apis/apps/v1/namespaces/{namespace}/deployments/{name}",
    "DELETE /apis/apps/v1/namespaces/{namespace}/deployments/{name}",
    "GET /apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
    "PUT /apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
    "PATCH /apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
    "GET /apis/apps/v1/namespaces/{namespace}/replicasets",
];

/// The Kubernetes API's routes, behind the management token rule (401 as a `Status`).
pub fn routes(node: Node) -> Router<Node> {
    let pods = "/api/v1/namespaces/{namespace}/pods";
    let deployments = "/apis/apps/v1/namespaces/{namespace}/deployments";
    let services = "/api/v1/namespaces/{namespace}/services";
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis/apps/v1", get(discovery::apps_resources))
        .route("/openapi/v3", get(discovery::openapi_index))
        .route("/openapi/v3/api/v1", get(discovery::openapi_core))
        .route("/openapi/v3/apis/apps/v1", get(discovery::openapi_apps))
        .route("/api/v1/namespaces", get(list_namespaces))
        .route("/api/v1/namespaces/{namespace}", get(get_namespace))
        .route("/api/v1/pods", get(list_all::<POD>))
        .route(pods, get(list_in::<POD>).post(create_in::<POD>))
        .route(
            &format!("{pods}/{{name}}"),
            get(get_one::<POD>)
                .put(put_one::<POD>)
                .patch(patch_one::<POD>)
                .delete(delete_pod),
        )
        .route(&format!("{pods}/{{name}}/log"), get(pod_log))
        .route("/api/v1/namespaces/{namespace}/events", get(list_events))
        .route("/api/v1/services", get(list_all::<SERVICE>))
        .route(services, get(list_in::<SERVICE>).post(create_in::<SERVICE>))
        .route(
            &format!("{services}/{{name}}"),
            get(get_one::<SERVICE>)
                .put(put_one::<SERVICE>)
                .patch(patch_one::<SERVICE>)
                .delete(delete_one::<SERVICE>),
        )
        .route("/apis/apps/v1/deployments", get(list_all::<DEPLOYMENT>))
        .route(
            deployments,
            get(list_in::<DEPLOYMENT>).post(create_in::<DEPLOYMENT>),
        )
        .route(
            &format!("{deployments}/{{name}}"),
            get(get_one::<DEPLOYMENT>)
                .put(put_one::<DEPLOYMENT>)
                .patch(patch_one::<DEPLOYMENT>)
                .delete(delete_one::<DEPLOYMENT>),
        )
        .route(
            &format!("{deployments}/{{name}}/scale"),
            get(get_scale).put(put_scale).patch(patch_scale),
        )
        .route(
            "/apis/apps/v1/namespaces/{namespace}/replicasets",
            get(list_replica_sets),
        )
        .layer(middleware::from_fn_with_state(
            node,
            crate::auth::require_kube_token,
        ))
}

/// The 401 of a call without the node's token.
pub(crate) fn unauthorized() -> KubeError {
    KubeError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "this node requires a token: use the kubeconfig `shoal kubeconfig` prints (over TLS: \
         kubectl sends no token over plain http)",
    )
}

/// The answer to a path under [`PREFIXES`] that no route serves.
pub fn unknown_path(path: &str) -> Response {
    KubeError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
    .into_response()
}

/// The query parameters the list, watch and write calls read; the rest are ignored, as
/// kube-apiserver ignores what it does not know.
#[derive(Debug, Default)]
struct Query {
    label_selector: LabelSelector,
    field_selector: FieldSelector,
    watch: bool,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    dry_run: bool,
}

impl Query {
    fn parse(raw: Option<&str>) -> KubeResult<Query> {
        let mut query = Query::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "labelSelector" => {
                    query.label_selector = LabelSelector::parse(&value)
                        .map_err(|error| KubeError::bad_request(error.to_string()))?;
                }
                "fieldSelector" => {
                    query.field_selector = FieldSelector::parse(&value)
                        .map_err(|error| KubeError::bad_request(error.to_string()))?;
                }
                "watch" => query.watch = matches!(value.as_ref(), "true" | "1"),
                "resourceVersion" => query.resource_version = Some(value.into_owned()),
                "timeoutSeconds" => {
                    query.timeout_seconds = Some(value.parse().map_err(|_| {
                        KubeError::bad_request(format!("invalid timeoutSeconds {value:?}"))
                    })?);
                }
                "dryRun" => query.dry_run = !value.is_empty(),
                _ => {}
            }
        }
        Ok(query)
    }

    /// Keeps the objects both selectors select; `fields` are the field labels the kind
    /// supports (anything else is a 400, as kube-apiserver answers).
    fn select(&self, objects: Vec<Value>, fields: &[&str]) -> KubeResult<Vec<Value>> {
        self.field_selector
            .check(fields)
            .map_err(|error| KubeError::bad_request(error.to_string()))?;
        Ok(self.filter(objects))
    }

    /// Keeps the objects both selectors select, the field selector already checked.
    fn filter(&self, objects: Vec<Value>) -> Vec<Value> {
        objects
            .into_iter()
            .filter(|object| self.label_selector.matches(&objects::labels_of(object)))
            .filter(|object| {
                self.field_selector.matches(|field| {
                    at(object, field).map(|value| match value {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    })
                })
            })
            .collect()
    }
}

const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "status.phase",
    "spec.nodeName",
];
const DEPLOYMENT_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

fn check_namespace(namespace: &str) -> KubeResult<()> {
    if namespace == NAMESPACE {
        return Ok(());
    }
    Err(KubeError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "namespaces \"{namespace}\" not found: shoal serves the \"default\" namespace only"
        ),
    )
    .about("namespaces", namespace))
}

/// Every service with what the node knows of it, and the index they were read at.
pub(crate) struct Snapshot {
    pub(crate) index: u64,
    pub(crate) services: Vec<(ServiceRecord, Option<shoal_node::ServiceStatus>)>,
    pub(crate) gateway_ip: String,
    pub(crate) modules: Vec<shoal_registry::ModuleRecord>,
    pub(crate) routes: Vec<shoal_registry::RouteRecord>,
    /// Services waiting for their module, as records, with the image they wait for.
    pub(crate) waiting: Vec<(ServiceRecord, String)>,
}

impl Snapshot {
    pub(crate) async fn read(node: &Node) -> KubeResult<Snapshot> {
        // The index first: the records are at least as new as it.
        let index = node.indexes().change;
        let records = node
            .services()
            .await
            .map_err(|error| KubeError::from_node(error, "services", ""))?;
        let services: Vec<(ServiceRecord, _)> = records
            .into_iter()
            .map(|record| {
                let status = node.service_status(&record.name).ok();
                (record, status)
            })
            .collect();
        let modules = node
            .modules()
            .await
            .map_err(|error| KubeError::from_node(error, "modules", ""))?;
        let waiting = node
            .waiting()
            .await
            .map_err(|error| KubeError::from_node(error, "deployments", ""))?
            .iter()
            // A service written meanwhile holds the name; the waiting one goes soon.
            .filter(|waiting| {
                !services
                    .iter()
                    .any(|(service, _)| service.name == waiting.name)
            })
            .map(|waiting| (objects::waiting_service(waiting), waiting.image.clone()))
            .collect();
        Ok(Snapshot {
            index,
            services,
            gateway_ip: gateway_ip(node),
            modules,
            routes: node.routes(),
            waiting,
        })
    }

    pub(crate) fn views(&self) -> impl Iterator<Item = View<'_>> {
        let view = |record, status, waiting_for| View {
            record,
            status,
            index: self.index,
            gateway_ip: &self.gateway_ip,
            modules: &self.modules,
            waiting_for,
        };
        let services = self
            .services
            .iter()
            .map(move |(record, status)| view(record, status.as_ref(), None));
        let waiting = self
            .waiting
            .iter()
            .map(move |(record, image)| view(record, None, Some(image.as_str())));
        services.chain(waiting)
    }

    pub(crate) fn objects(&self, kind: Kind) -> Vec<Value> {
        match kind {
            Kind::Deployment => self
                .views()
                .filter(|view| Kind::of(view.record) == Kind::Deployment)
                .map(|view| view.deployment())
                .collect(),
            Kind::Pod => self.views().flat_map(|view| view.pods()).collect(),
            Kind::Service => self
                .routes
                .iter()
                .map(|route| objects::service_object(route, self.index, &self.gateway_ip))
                .collect(),
        }
    }
}

fn gateway_ip(node: &Node) -> String {
    node.gateway_addr()
        .map(|addr| addr.ip())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
        .to_string()
}

async fn list_namespaces() -> Json<Value> {
    Json(objects::list(
        "NamespaceList",
        "v1",
        0,
        vec![namespace_object()],
    ))
}

fn namespace_object() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": NAMESPACE, "uid": "00000000-0000-0000-0000-000000000000", "creationTimestamp": objects::rfc3339(0) },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" },
    })
}

async fn get_namespace(Path(namespace): Path<String>) -> KubeResult<Json<Value>> {
    check_namespace(&namespace)?;
    Ok(Json(namespace_object()))
}

async fn list(
    node: Node,
    namespace: Option<String>,
    kind: Kind,
    query: Option<String>,
    headers: HeaderMap,
) -> KubeResult<Response> {
    if let Some(namespace) = &namespace {
        check_namespace(namespace)?;
    }
    let query = Query::parse(query.as_deref())?;
    let fields = match kind {
        Kind::Pod => POD_FIELDS,
        Kind::Deployment | Kind::Service => DEPLOYMENT_FIELDS,
    };
    if query.watch {
        query
            .field_selector
            .check(fields)
            .map_err(|error| KubeError::bad_request(error.to_string()))?;
        return watch::serve(node, kind, query, table::wants_table(&headers)).await;
    }
    let snapshot = Snapshot::read(&node).await?;
    let objects = query.select(snapshot.objects(kind), fields)?;
    if table::wants_table(&headers) {
        return Ok(Json(table::table(kind, snapshot.index, &objects)).into_response());
    }
    let list_kind = match kind {
        Kind::Pod => "PodList",
        Kind::Deployment => "DeploymentList",
        Kind::Service => "ServiceList",
    };
    Ok(Json(objects::list(
        list_kind,
        kind.api_version(),
        snapshot.index,
        objects,
    ))
    .into_response())
}

/// One object, as JSON or as a one-row Table.
fn answer(
    kind: Kind,
    index: u64,
    object: Value,
    headers: &HeaderMap,
    code: StatusCode,
) -> Response {
    if table::wants_table(headers) {
        return (code, Json(table::table(kind, index, &[object]))).into_response();
    }
    (code, Json(object)).into_response()
}

/// The current object `name` of `kind`, with the snapshot's index.
async fn find(node: &Node, kind: Kind, name: &str) -> KubeResult<(u64, Value)> {
    let snapshot = Snapshot::read(node).await?;
    let found = snapshot
        .objects(kind)
        .into_iter()
        .find(|object| at(object, "metadata.name").and_then(Value::as_str) == Some(name));
    found
        .map(|object| (snapshot.index, object))
        .ok_or_else(|| KubeError::not_found(kind.resource(), name))
}

/// Reads a request body as a JSON object.
fn read_body(body: &Bytes) -> KubeResult<Value> {
    let object: Value = serde_json::from_slice(body).map_err(|error| {
        KubeError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {error}"
        ))
    })?;
    if !object.is_object() {
        return Err(KubeError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(object)
}

/// Checks a written object's kind, apiVersion, namespace and name against the request.
fn check_object(
    kind: Kind,
    object: &Value,
    namespace: &str,
    name: Option<&str>,
) -> KubeResult<String> {
    for (field, expected) in [("kind", kind.name()), ("apiVersion", kind.api_version())] {
        match object.get(field).and_then(Value::as_str) {
            None => {}
            Some(found) if found == expected => {}
            Some(found) => {
                return Err(KubeError::bad_request(format!(
                    "{field} {found:?} is not served here: this path takes {} {}",
                    kind.api_version(),
                    kind.name()
                )));
            }
        }
    }
    if let Some(found) = at(object, "metadata.namespace").and_then(Value::as_str)
        && found != namespace
    {
        return Err(KubeError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let written = at(object, "metadata.name").and_then(Value::as_str);
    match (written, name) {
        (Some(written), Some(name)) if written != name => Err(KubeError::bad_request(
            "the name of the object does not match the name on the URL",
        )),
        (Some(written), _) => Ok(written.to_string()),
        (None, Some(name)) => Ok(name.to_string()),
        (None, None) => Err(KubeError::invalid(
            kind.name(),
            "",
            "metadata.name",
            "Required value: name or generateName is required",
        )),
    }
}

/// Where a field of the spec, as the node names it, is in a Kubernetes object.
fn kube_field(kind: Kind, field: &str) -> String {
    let pod = match kind {
        Kind::Deployment => "spec.template.spec",
        Kind::Pod | Kind::Service => "spec",
    };
    let container = format!("{pod}.containers[0]");
    match field.split_once('.').map_or(field, |(head, _)| head) {
        "resources" => format!("{container}.{field}"),
        "env" | "args" | "limits" => format!("{container}.{field}"),
        "labels" => format!(
            "{}.labels",
            if kind == Kind::Deployment {
                "spec.template.metadata"
            } else {
                "metadata"
            }
        ),
        "scale" | "concurrency" => "spec.replicas".into(),
        "module" => format!("{container}.image"),
        _ => field.to_string(),
    }
}

/// Writes `object` as the service (or, for a Service, the route) `name`: the one write path of
/// this API.
async fn write(
    node: &Node,
    kind: Kind,
    name: &str,
    object: &Value,
    options: WriteOptions,
) -> KubeResult<()> {
    let service: ServiceName = objects::parse_name(kind, name)?;
    if kind == Kind::Service {
        let spec = objects::route_spec_of(name, object)?;
        return match node.write_route(service, spec, options).await {
            Ok(_) => Ok(()),
            Err(shoal_node::Error::Invalid(field)) => Err(KubeError::invalid(
                kind.name(),
                name,
                &format!("spec.{}", field.field),
                field.reason,
            )),
            Err(error) => Err(KubeError::from_node(error, kind.resource(), name)),
        };
    }
    let (spec, missing) = convert(node, kind, name, object).await?;
    let options = WriteOptions {
        admit_pending: true,
        ..options
    };
    let written = match missing {
        Some(image) => node
            .write_waiting(service, &image, spec, options)
            .await
            .map(|_| ()),
        None => node.write_service(service, spec, options).await.map(|_| ()),
    };
    match written {
        Ok(_) => Ok(()),
        Err(shoal_node::Error::Invalid(field)) => Err(KubeError::invalid(
            kind.name(),
            name,
            &kube_field(kind, &field.field),
            field.reason,
        )),
        Err(error @ shoal_node::Error::ModuleNotFound(_)) => Err(KubeError::invalid(
            kind.name(),
            name,
            &kube_field(kind, "module"),
            format!(
                "{error}: upload it first (POST /v1/modules); nothing is pulled from a registry"
            ),
        )),
        Err(error) => Err(KubeError::from_node(error, kind.resource(), name)),
    }
}

/// The spec a workload object converts to, and the image it names when that names no
/// uploaded module yet (the spec's module is then a placeholder: the service waits).
async fn convert(
    node: &Node,
    kind: Kind,
    name: &str,
    object: &Value,
) -> KubeResult<(ServiceSpec, Option<String>)> {
    let modules = node
        .modules()
        .await
        .map_err(|error| KubeError::from_node(error, kind.resource(), name))?;
    let missing = std::cell::RefCell::new(None);
    let spec = objects::spec_of(kind, name, object, |image| {
        let found = objects::resolve_image(image, &modules)?;
        Ok(found.unwrap_or_else(|| {
            *missing.borrow_mut() = Some(image.to_string());
            Digest::of(image.as_bytes())
        }))
    })?;
    Ok((spec, missing.into_inner()))
}

/// The object `name` of `kind` as it reads after a write.
async fn read_back(node: &Node, kind: Kind, name: &str) -> KubeResult<(u64, Value)> {
    find(node, kind, name).await
}

async fn create(
    node: Node,
    kind: Kind,
    namespace: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let query = Query::parse(query.as_deref())?;
    let object = read_body(&body)?;
    let name = check_object(kind, &object, &namespace, None)?;
    if query.dry_run && kind == Kind::Service {
        objects::parse_name(kind, &name)?;
        objects::route_spec_of(&name, &object)?;
        return Ok((StatusCode::CREATED, Json(object)).into_response());
    }
    if query.dry_run {
        objects::parse_name(kind, &name)?;
        convert(&node, kind, &name, &object).await?;
        return Ok((StatusCode::CREATED, Json(object)).into_response());
    }
    write(
        &node,
        kind,
        &name,
        &object,
        WriteOptions {
            create_only: true,
            ..Default::default()
        },
    )
    .await?;
    let (index, object) = read_back(&node, kind, &name).await?;
    Ok(answer(kind, index, object, &headers, StatusCode::CREATED))
}

/// The service behind a workload object (404 unless it is of `kind`); for a Service, 404
/// unless the route exists.
async fn service_of(node: &Node, kind: Kind, name: &str) -> KubeResult<Option<ServiceRecord>> {
    let not_found = || KubeError::not_found(kind.resource(), name);
    if kind == Kind::Service {
        return match node
            .routes()
            .iter()
            .any(|route| route.name.as_str() == name)
        {
            true => Ok(None),
            false => Err(not_found()),
        };
    }
    let service: ServiceName = name.parse().map_err(|_| not_found())?;
    let record = match node.service(&service).await {
        Ok(record) => record,
        Err(shoal_node::Error::NotFound { .. }) => node
            .waiting()
            .await
            .map_err(|error| KubeError::from_node(error, kind.resource(), name))?
            .iter()
            .find(|waiting| waiting.name == service)
            .map(objects::waiting_service)
            .ok_or_else(not_found)?,
        Err(other) => return Err(KubeError::from_node(other, kind.resource(), name)),
    };
    if Kind::of(&record) != kind {
        return Err(not_found());
    }
    Ok(Some(record))
}

/// Refuses a change to what Kubernetes does not let an update change.
fn check_immutable(kind: Kind, name: &str, current: &Value, updated: &Value) -> KubeResult<()> {
    match kind {
        Kind::Deployment => {
            if at(current, "spec.selector") != at(updated, "spec.selector") {
                return Err(KubeError::invalid(
                    kind.name(),
                    name,
                    "spec.selector",
                    "Invalid value: field is immutable",
                ));
            }
        }
        Kind::Service | Kind::Pod => {}
    }
    Ok(())
}

/// Refuses a change to what a bare Pod runs but its image. Kubernetes compares the pod spec;
/// this compares the specs the two objects convert to, so that re-applying the same manifest
/// (which spells `cpu: 0.5` where the rendered pod says `500m`) changes nothing instead of
/// failing.
async fn check_pod_unchanged(node: &Node, name: &str, updated: &Value) -> KubeResult<()> {
    let Some(current) = service_of(node, Kind::Pod, name).await? else {
        return Ok(());
    };
    let (mut spec, _) = convert(node, Kind::Pod, name, updated).await?;
    spec.normalize();
    // A pod's image may change, as in Kubernetes: the new module replaces the replica.
    spec.module = current.spec.module.clone();
    let runs = |spec: &ServiceSpec| (spec.replica_template(), spec.scale.clone());
    if runs(&spec) != runs(&current.spec) {
        return Err(KubeError::invalid(
            Kind::Pod.name(),
            name,
            "spec",
            "Forbidden: pod updates may not change fields other than metadata \
             (labels, annotations); create a Deployment to change what runs",
        ));
    }
    Ok(())
}

/// Replaces or patches the object `name` with `updated`, made from `current`.
async fn update(
    node: &Node,
    kind: Kind,
    name: &str,
    current: &Value,
    updated: Value,
    unchanged_since: Option<u64>,
    headers: &HeaderMap,
) -> KubeResult<Response> {
    check_immutable(kind, name, current, &updated)?;
    if kind == Kind::Pod {
        check_pod_unchanged(node, name, &updated).await?;
    }
    let options = WriteOptions {
        update_only: true,
        unchanged_since,
        ..Default::default()
    };
    write(node, kind, name, &updated, options).await?;
    let (index, object) = read_back(node, kind, name).await?;
    Ok(answer(kind, index, object, headers, StatusCode::OK))
}

fn resource_version_of(object: &Value) -> KubeResult<Option<u64>> {
    at(object, "metadata.resourceVersion")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                KubeError::bad_request(format!(
                    "metadata.resourceVersion {text:?} is not one this server gave"
                ))
            })
        })
        .transpose()
}

async fn replace(
    node: Node,
    kind: Kind,
    namespace: String,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let object = read_body(&body)?;
    check_object(kind, &object, &namespace, Some(&name))?;
    let written = was_written(service_of(&node, kind, &name).await?);
    let (_, current) = find(&node, kind, &name).await?;
    let seen = resource_version_of(&object)?;
    let current = if written { current } else { object.clone() };
    update(&node, kind, &name, &current, object, seen, &headers).await
}

fn patch_kind(headers: &HeaderMap) -> KubeResult<patch::PatchKind> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    patch::PatchKind::from_content_type(content_type).ok_or_else(|| {
        KubeError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}); accepted: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json"
            ),
        )
    })
}

fn apply_patch(headers: &HeaderMap, current: &Value, body: &Bytes) -> KubeResult<Value> {
    let kind = patch_kind(headers)?;
    patch::apply(kind, current, body).map_err(|error| {
        KubeError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("the patch cannot be applied: {error}"),
        )
    })
}

async fn patch_object(
    node: Node,
    kind: Kind,
    namespace: String,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let written = was_written(service_of(&node, kind, &name).await?);
    let (_, current) = find(&node, kind, &name).await?;
    let patched = apply_patch(&headers, &current, &body)?;
    check_object(kind, &patched, &namespace, Some(&name))?;
    // A patch that carries a resourceVersion is conditional on it, as in Kubernetes.
    let seen = match at(&patched, "metadata.resourceVersion")
        == at(&current, "metadata.resourceVersion")
    {
        true => None,
        false => resource_version_of(&patched)?,
    };
    // A service deployed through the management API has no Deployment written yet: its
    // first one may choose its selector.
    let current = if written { current } else { patched.clone() };
    update(&node, kind, &name, &current, patched, seen, &headers).await
}

/// Whether a Kubernetes object was written for the service (a route always was).
fn was_written(record: Option<ServiceRecord>) -> bool {
    record.is_none_or(|record| record.spec.kubernetes.is_some())
}

async fn delete_workload(
    node: Node,
    kind: Kind,
    namespace: String,
    name: String,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let record = service_of(&node, kind, &name).await?;
    let (_, mut object) = find(&node, kind, &name).await?;
    let deleted = match record {
        Some(record) => match node.delete_service(&record.name).await {
            // Not a service yet: one waiting for its module.
            Err(shoal_node::Error::NotFound { .. }) => {
                node.delete_waiting(&record.name).await.map(|_| ())
            }
            deleted => deleted.map(|_| ()),
        },
        None => {
            let route: ServiceName = objects::parse_name(kind, &name)?;
            node.delete_route(&route).await.map(|_| ())
        }
    };
    deleted.map_err(|error| KubeError::from_node(error, kind.resource(), &name))?;
    object["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    ));
    Ok((StatusCode::OK, Json(object)).into_response())
}

async fn delete_pod(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    // A replica of a Deployment is not deleted alone: the service would start another at
    // once, under another name.
    let (_, pod) = find(&node, Kind::Pod, &name).await?;
    if let Some(owner) = at(&pod, "metadata.labels")
        .and_then(|labels| labels.get(objects::SERVICE_LABEL))
        .and_then(Value::as_str)
        && owner != name
    {
        return Err(KubeError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "pod \"{name}\" is a replica of deployment \"{owner}\": scale the deployment \
                 (kubectl scale deployment {owner} --replicas=N) or delete it"
            ),
        )
        .about("pods", &name));
    }
    delete_workload(node, Kind::Pod, namespace, name).await
}

/// A Deployment's `Scale` (autoscaling/v1): its floor, and the replicas running.
fn scale_of(deployment: &Value) -> Value {
    let selector =
        LabelSelector::from_json(at(deployment, "spec.selector").unwrap_or(&Value::Null))
            .map(|selector| selector.to_string())
            .unwrap_or_default();
    let metadata = &deployment["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": { "replicas": at(deployment, "spec.replicas").cloned().unwrap_or(json!(0)) },
        "status": {
            "replicas": at(deployment, "status.replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

async fn get_scale(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
) -> KubeResult<Json<Value>> {
    check_namespace(&namespace)?;
    let (_, deployment) = find(&node, Kind::Deployment, &name).await?;
    Ok(Json(scale_of(&deployment)))
}

/// Sets a Deployment's floor from a new `Scale`.
async fn rescale(
    node: &Node,
    name: &str,
    deployment: Value,
    scale: &Value,
    seen: Option<u64>,
) -> KubeResult<Json<Value>> {
    let replicas = at(scale, "spec.replicas")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            KubeError::invalid(
                "Scale",
                name,
                "spec.replicas",
                "Invalid value: must be a non-negative integer",
            )
        })?;
    let mut updated = deployment.clone();
    updated["spec"]["replicas"] = json!(replicas);
    let options = WriteOptions {
        update_only: true,
        unchanged_since: seen,
        ..Default::default()
    };
    write(node, Kind::Deployment, name, &updated, options).await?;
    let (_, deployment) = find(node, Kind::Deployment, name).await?;
    Ok(Json(scale_of(&deployment)))
}

async fn put_scale(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> KubeResult<Json<Value>> {
    check_namespace(&namespace)?;
    let scale = read_body(&body)?;
    let (_, deployment) = find(&node, Kind::Deployment, &name).await?;
    let seen = resource_version_of(&scale)?;
    rescale(&node, &name, deployment, &scale, seen).await
}

async fn patch_scale(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Json<Value>> {
    check_namespace(&namespace)?;
    let (_, deployment) = find(&node, Kind::Deployment, &name).await?;
    let scale = apply_patch(&headers, &scale_of(&deployment), &body)?;
    rescale(&node, &name, deployment, &scale, None).await
}

/// Each Deployment's one ReplicaSet, for `kubectl describe deployment`.
async fn list_replica_sets(
    State(node): State<Node>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> KubeResult<Json<Value>> {
    check_namespace(&namespace)?;
    let query = Query::parse(query.as_deref())?;
    let snapshot = Snapshot::read(&node).await?;
    let sets: Vec<Value> = snapshot
        .views()
        .filter(|view| Kind::of(view.record) == Kind::Deployment)
        .map(|view| {
            let deployment = view.deployment();
            let name = view.replica_set_name();
            let running = at(&deployment, "status.replicas").cloned().unwrap_or(json!(0));
            let hash = objects::template_hash(&view.record.spec);
            let mut labels = view.pod_labels();
            labels.insert("pod-template-hash".into(), hash);
            json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "uid": deployment["metadata"]["uid"].as_str().map(|uid| format!("{uid}-rs")),
                    "resourceVersion": snapshot.index.to_string(),
                    "creationTimestamp": deployment["metadata"]["creationTimestamp"],
                    "labels": labels,
                    "annotations": { "deployment.kubernetes.io/revision": view.record.revision.to_string() },
                    "ownerReferences": [{
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": deployment["metadata"]["name"],
                        "uid": deployment["metadata"]["uid"],
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": {
                    "replicas": deployment["spec"]["replicas"],
                    "selector": deployment["spec"]["selector"],
                    "template": deployment["spec"]["template"],
                },
                "status": {
                    "replicas": running,
                    "readyReplicas": running,
                    "availableReplicas": running,
                    "fullyLabeledReplicas": running,
                    "observedGeneration": 1,
                },
            })
        })
        .collect();
    let sets = query.select(sets, DEPLOYMENT_FIELDS)?;
    Ok(Json(objects::list(
        "ReplicaSetList",
        "apps/v1",
        snapshot.index,
        sets,
    )))
}

const EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "involvedObject.uid",
    "reason",
    "type",
];

/// Events: each Deployment's scale decisions (the store keeps the newest 100 per service),
/// as `kubectl describe` and `kubectl get events` read them.
async fn list_events(
    State(node): State<Node>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let query = Query::parse(query.as_deref())?;
    let snapshot = Snapshot::read(&node).await?;
    let mut events = Vec::new();
    for view in snapshot.views() {
        let deployment = view.deployment();
        // A service waiting for its module has made no scale decisions yet.
        let records = match view.waiting_for {
            Some(_) => Vec::new(),
            None => node
                .events(&view.record.name, None)
                .await
                .map_err(|error| KubeError::from_node(error, "events", ""))?,
        };
        events.extend(records.iter().map(|record| {
            objects::event(
                &deployment,
                &view.replica_set_name(),
                record,
                snapshot.index,
            )
        }));
        events.extend(
            view.pods()
                .iter()
                .filter_map(|pod| objects::pod_event(pod, snapshot.index)),
        );
    }
    let events = query.select(events, EVENT_FIELDS)?;
    if table::wants_table(&headers) {
        return Ok(
            Json(table::table(table::Printed::Event, snapshot.index, &events)).into_response(),
        );
    }
    Ok(Json(objects::list("EventList", "v1", snapshot.index, events)).into_response())
}

/// A pod's log: what its replica's guests wrote (`container`, `follow`, `tailLines`,
/// `sinceSeconds`, `sinceTime`, `timestamps`). A replica on another node of a cluster has its
/// log there.
async fn pod_log(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let snapshot = Snapshot::read(&node).await?;
    let found = snapshot.views().find_map(|view| {
        let replica = view
            .pod_replicas()
            .into_iter()
            .find(|(pod, ..)| *pod == name)
            .map(|(_, _, replica)| replica.cloned());
        replica.map(|replica| {
            let pod = view.pods().into_iter().find(|pod| {
                at(pod, "metadata.name").and_then(Value::as_str) == Some(name.as_str())
            });
            let waiting_for = view.waiting_for.map(str::to_string);
            (view.record.name.clone(), pod, replica, waiting_for)
        })
    });
    let Some((service, Some(pod), replica, waiting_for)) = found else {
        return Err(KubeError::not_found("pods", &name));
    };
    let container = at(&pod, "spec.containers")
        .and_then(|containers| containers.get(0))
        .and_then(|container| container.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut logs = crate::logs::LogQuery {
        replica: None,
        since: None,
        tail: None,
        follow: false,
        timestamps: false,
        origin: false,
    };
    let bad = |key: &str, value: &str| KubeError::bad_request(format!("invalid {key} {value:?}"));
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "container" if value != container => {
                return Err(KubeError::bad_request(format!(
                    "container {value} is not valid for pod {name}: its one container is {container}"
                )));
            }
            "follow" => logs.follow = value == "true",
            "timestamps" => logs.timestamps = value == "true",
            "tailLines" => logs.tail = Some(value.parse().map_err(|_| bad("tailLines", &value))?),
            "sinceSeconds" => {
                let seconds: u64 = value.parse().map_err(|_| bad("sinceSeconds", &value))?;
                logs.since = std::time::SystemTime::now()
                    .checked_sub(std::time::Duration::from_secs(seconds));
            }
            "sinceTime" => {
                logs.since = Some(
                    humantime::parse_rfc3339_weak(&value).map_err(|_| bad("sinceTime", &value))?,
                );
            }
            "previous" if value == "true" => {
                return Err(KubeError::bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                )));
            }
            _ => {}
        }
    }
    let node_name = &node.config().node_name;
    let replica = match replica {
        Some(replica) if replica.node == *node_name => replica,
        // On a peer, which reports how many replicas it runs, not which: what its replicas
        // of the service wrote.
        Some(replica) => {
            // Built apart: the serializer is not Send, so it may not live across an await.
            let query = {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("follow", &logs.follow.to_string());
                query.append_pair("timestamps", &logs.timestamps.to_string());
                if let Some(tail) = logs.tail {
                    query.append_pair("tail", &tail.to_string());
                }
                if let Some(since) = logs.since {
                    let since = humantime::format_rfc3339_nanos(since).to_string();
                    query.append_pair("since", &since);
                }
                query.finish()
            };
            let body = node
                .peer_log(&replica.node, &service, &query)
                .await
                .map_err(|error| KubeError::from_node(error, "pods", &name))?;
            return Ok((
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                axum::body::Body::from_stream(body),
            )
                .into_response());
        }
        None => {
            let why = match &waiting_for {
                Some(image) => format!(
                    "trying and failing to pull image: {}",
                    objects::image_pull_message(image)
                ),
                None => "no node has room for it yet".to_string(),
            };
            return Err(KubeError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {why}"
            )));
        }
    };
    logs.replica = Some(replica.id);
    let log = node
        .logs(&service)
        .map_err(|error| KubeError::from_node(error, "pods", &name))?;
    Ok(crate::logs::respond(log, logs, node.draining()))
}

// The handlers, one per verb, for the kind their tag names (`POD`, `DEPLOYMENT`, `SERVICE`).

const POD: u8 = 0;
const DEPLOYMENT: u8 = 1;
const SERVICE: u8 = 2;

impl Kind {
    const fn from_tag(tag: u8) -> Kind {
        match tag {
            POD => Kind::Pod,
            DEPLOYMENT => Kind::Deployment,
            _ => Kind::Service,
        }
    }
}

async fn list_all<const K: u8>(
    State(node): State<Node>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> KubeResult<Response> {
    list(node, None, Kind::from_tag(K), query, headers).await
}

async fn list_in<const K: u8>(
    State(node): State<Node>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> KubeResult<Response> {
    list(node, Some(namespace), Kind::from_tag(K), query, headers).await
}

async fn create_in<const K: u8>(
    State(node): State<Node>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Response> {
    create(node, Kind::from_tag(K), namespace, query, headers, body).await
}

async fn get_one<const K: u8>(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> KubeResult<Response> {
    check_namespace(&namespace)?;
    let kind = Kind::from_tag(K);
    let (index, object) = find(&node, kind, &name).await?;
    Ok(answer(kind, index, object, &headers, StatusCode::OK))
}

async fn put_one<const K: u8>(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Response> {
    replace(node, Kind::from_tag(K), namespace, name, headers, body).await
}

async fn patch_one<const K: u8>(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult<Response> {
    patch_object(node, Kind::from_tag(K), namespace, name, headers, body).await
}

async fn delete_one<const K: u8>(
    State(node): State<Node>,
    Path((namespace, name)): Path<(String, String)>,
) -> KubeResult<Response> {
    delete_workload(node, Kind::from_tag(K), namespace, name).await
}
