//! Applying a Kubernetes PATCH body to an object, in the three formats kube-apiserver accepts:
//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.
//!
//! `kubectl apply`, `kubectl scale`/`edit` and the Python client send strategic merge patches by
//! default, and no crate implements them: kube-apiserver derives each list's merge strategy from
//! the Go struct tags of the built-in types. We have no schema, so [`list_strategy`] keeps those
//! tags as a table keyed by field name, which holds for every type we serve (Pods and
//! Deployments); any other list is replaced whole, as the patch strategy of an untagged list is.

use serde_json::{Map, Value};

/// The format of a PATCH body, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Json,
    Merge,
    StrategicMerge,
}

impl PatchKind {
    /// From the request's Content-Type (parameters after `;` ignored, case-insensitive):
    /// application/json-patch+json, application/merge-patch+json,
    /// application/strategic-merge-patch+json. Anything else -> None (caller answers 415).
    pub(crate) fn from_content_type(content_type: &str) -> Option<PatchKind> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        [
            ("application/json-patch+json", PatchKind::Json),
            ("application/merge-patch+json", PatchKind::Merge),
            (
                "application/strategic-merge-patch+json",
                PatchKind::StrategicMerge,
            ),
        ]
        .into_iter()
        .find(|(name, _)| media_type.eq_ignore_ascii_case(name))
        .map(|(_, kind)| kind)
    }
}

/// Why a patch could not be applied; each names the offending path or value, since the client
/// sees it verbatim in the `Status` message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PatchError {
    #[error("the patch is not valid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("a JSON patch must be a JSON array of operations")]
    JsonPatchNotAnArray,
    #[error("invalid JSON patch operation: {0}")]
    InvalidOperation(serde_json::Error),
    #[error(transparent)]
    OperationFailed(#[from] json_patch::PatchError),
    #[error("a merge patch must be a JSON object")]
    MergePatchNotAnObject,
    #[error("a strategic merge patch must be a JSON object")]
    StrategicMergePatchNotAnObject,
    #[error("unknown $patch value {value} at {path}")]
    UnknownPatchDirective { path: String, value: Value },
    #[error("{directive} at {path} must be a list")]
    DirectiveNotAList { path: String, directive: String },
    #[error("$retainKeys at {path} must be a list of strings")]
    RetainKeysNotStrings { path: String },
    #[error("{path}/{key} is set by the patch but not listed in $retainKeys")]
    KeyNotRetained { path: String, key: String },
    #[error("element {index} of {path} must be an object: the list is merged by {merge_key:?}")]
    ElementNotAnObject {
        path: String,
        index: usize,
        merge_key: &'static str,
    },
    #[error("element {index} of {path} has no merge key {merge_key:?}")]
    MissingMergeKey {
        path: String,
        index: usize,
        merge_key: &'static str,
    },
}

/// Applies `patch` (the raw body) to `target`, returning the patched object; `target` is untouched on error.
pub(crate) fn apply(
    kind: PatchKind,
    target: &serde_json::Value,
    patch: &[u8],
) -> Result<serde_json::Value, PatchError> {
    let patch: Value = serde_json::from_slice(patch).map_err(PatchError::InvalidJson)?;
    match kind {
        PatchKind::Json => {
            if !patch.is_array() {
                return Err(PatchError::JsonPatchNotAnArray);
            }
            let operations: json_patch::Patch =
                serde_json::from_value(patch).map_err(PatchError::InvalidOperation)?;
            let mut patched = target.clone();
            json_patch::patch(&mut patched, &operations)?;
            Ok(patched)
        }
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(PatchError::MergePatchNotAnObject);
            }
            let mut patched = target.clone();
            json_patch::merge(&mut patched, &patch);
            Ok(patched)
        }
        PatchKind::StrategicMerge => {
            let Value::Object(patch) = patch else {
                return Err(PatchError::StrategicMergePatchNotAnObject);
            };
            let original = match target {
                Value::Object(object) => object.clone(),
                _ => Map::new(),
            };
            // A top-level `$patch: delete` leaves nothing to keep; kube-apiserver answers the
            // same empty object, which then fails validation with a useful message.
            let merged = merge_object(original, &patch, "")?.unwrap_or_default();
            Ok(Value::Object(merged))
        }
    }
}

const DIRECTIVE_PREFIX: char = '$';
const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList/";

/// How a list field merges, from the `patchStrategy`/`patchMergeKey` tags of the Kubernetes types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// Elements are objects, matched by the value of this field.
    MergeByKey(&'static str),
    /// A set of primitives: the patch's elements are added to the existing ones.
    Union,
    Replace,
}

fn list_strategy(field: &str, original: &[Value], patch: &[Value]) -> ListStrategy {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => ListStrategy::MergeByKey("name"),
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        // A container's ports merge by containerPort, a Service's by port; without a schema the
        // elements themselves tell which list this is.
        "ports" => {
            let in_container = original
                .iter()
                .chain(patch)
                .any(|element| element.get("containerPort").is_some());
            ListStrategy::MergeByKey(if in_container {
                "containerPort"
            } else {
                "port"
            })
        }
        "conditions" => ListStrategy::MergeByKey("type"),
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "ownerReferences" => ListStrategy::MergeByKey("uid"),
        "topologySpreadConstraints" => ListStrategy::MergeByKey("topologyKey"),
        // kubectl apply sends only the added finalizers (and removes with
        // $deleteFromPrimitiveList), so replacing would drop the ones it left alone.
        "finalizers" => ListStrategy::Union,
        _ => ListStrategy::Replace,
    }
}

/// Merges `patch` into `original`; `None` means the patch deletes the value (`null` or
/// `$patch: delete`). An absent `original` still goes through the merge, so that directives
/// and nulls in a patch's new subtrees never reach the stored object.
fn merge_value(
    original: Option<Value>,
    patch: &Value,
    field: &str,
    path: &str,
) -> Result<Option<Value>, PatchError> {
    match patch {
        Value::Null => Ok(None),
        Value::Object(patch) => {
            let original = match original {
                Some(Value::Object(object)) => object,
                _ => Map::new(),
            };
            Ok(merge_object(original, patch, path)?.map(Value::Object))
        }
        Value::Array(patch) => {
            let original = match original {
                Some(Value::Array(list)) => list,
                _ => Vec::new(),
            };
            Ok(Some(Value::Array(merge_list(
                original, patch, field, path,
            )?)))
        }
        scalar => Ok(Some(scalar.clone())),
    }
}

fn merge_object(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
) -> Result<Option<Map<String, Value>>, PatchError> {
    if let Some(directive) = patch.get(PATCH_DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => {
                let mut replacement = patch.clone();
                replacement.retain(|key, _| key != PATCH_DIRECTIVE);
                merge_object(Map::new(), &replacement, path)
            }
            Some("delete") => Ok(None),
            _ => Err(unknown_patch_directive(path, directive)),
        };
    }
    let retained_keys = retained_keys(patch, path)?;

    for (key, patch_value) in patch {
        if key.starts_with(DIRECTIVE_PREFIX) {
            continue;
        }
        let child_path = format!("{path}/{key}");
        // Merged in place, so that the object keeps its key order when serde_json preserves it.
        let merged = match original.get_mut(key) {
            Some(slot) => merge_value(Some(slot.take()), patch_value, key, &child_path)?,
            None => merge_value(None, patch_value, key, &child_path)?,
        };
        match merged {
            Some(value) => {
                original.insert(key.clone(), value);
            }
            // `retain`, not `remove`, which would move the last key into the gap when serde_json
            // preserves order.
            None => original.retain(|existing, _| existing != key),
        }
    }

    for (key, patch_value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            let doomed = directive_list(patch_value, key, path)?;
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|element| !doomed.contains(element));
            }
        }
    }
    for (key, patch_value) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER_PREFIX) {
            let order = directive_list(patch_value, key, path)?;
            if let Some(Value::Array(list)) = original.get_mut(field) {
                *list = ordered_by(std::mem::take(list), order);
            }
        }
    }

    if let Some(retained_keys) = retained_keys {
        original.retain(|key, _| retained_keys.contains(&key.as_str()));
    }
    Ok(Some(original))
}

/// The `$retainKeys` list of a patch object, checked as kube-apiserver does: a key the patch
/// sets but does not retain would be dropped right after being set, so it is refused.
fn retained_keys<'patch>(
    patch: &'patch Map<String, Value>,
    path: &str,
) -> Result<Option<Vec<&'patch str>>, PatchError> {
    let Some(list) = patch.get(RETAIN_KEYS_DIRECTIVE) else {
        return Ok(None);
    };
    let not_strings = || PatchError::RetainKeysNotStrings {
        path: display_path(path),
    };
    let keys = list
        .as_array()
        .ok_or_else(not_strings)?
        .iter()
        .map(|key| key.as_str().ok_or_else(not_strings))
        .collect::<Result<Vec<_>, _>>()?;
    let unretained = patch.iter().find(|(key, value)| {
        !key.starts_with(DIRECTIVE_PREFIX) && !value.is_null() && !keys.contains(&key.as_str())
    });
    if let Some((key, _)) = unretained {
        return Err(PatchError::KeyNotRetained {
            path: path.to_owned(),
            key: key.clone(),
        });
    }
    Ok(Some(keys))
}

fn directive_list<'patch>(
    value: &'patch Value,
    directive: &str,
    path: &str,
) -> Result<&'patch [Value], PatchError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| PatchError::DirectiveNotAList {
            path: display_path(path),
            directive: directive.to_owned(),
        })
}

fn merge_list(
    mut original: Vec<Value>,
    patch: &[Value],
    field: &str,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    let strategy = list_strategy(field, &original, patch);
    let mut replace = false;
    let mut elements = Vec::with_capacity(patch.len());
    for (index, element) in patch.iter().enumerate() {
        let Some(directive) = element.get(PATCH_DIRECTIVE) else {
            elements.push((index, element));
            continue;
        };
        let element_path = format!("{path}/{index}");
        match directive.as_str() {
            Some("replace") => replace = true,
            Some("delete") => {
                // Without a merge key there is nothing to match the deletion against, and the
                // list is replaced anyway.
                if let ListStrategy::MergeByKey(merge_key) = strategy {
                    let doomed =
                        element
                            .get(merge_key)
                            .ok_or_else(|| PatchError::MissingMergeKey {
                                path: path.to_owned(),
                                index,
                                merge_key,
                            })?;
                    original.retain(|existing| existing.get(merge_key) != Some(doomed));
                }
            }
            _ => return Err(unknown_patch_directive(&element_path, directive)),
        }
    }

    match strategy {
        ListStrategy::MergeByKey(merge_key) if !replace => {
            for (index, element) in elements {
                let element_path = format!("{path}/{index}");
                let Value::Object(element) = element else {
                    return Err(PatchError::ElementNotAnObject {
                        path: path.to_owned(),
                        index,
                        merge_key,
                    });
                };
                let key_value =
                    element
                        .get(merge_key)
                        .ok_or_else(|| PatchError::MissingMergeKey {
                            path: path.to_owned(),
                            index,
                            merge_key,
                        })?;
                let existing = original
                    .iter_mut()
                    .enumerate()
                    .find_map(|(position, existing)| match existing {
                        Value::Object(existing) if existing.get(merge_key) == Some(key_value) => {
                            Some((position, std::mem::take(existing)))
                        }
                        _ => None,
                    });
                match existing {
                    Some((position, existing)) => {
                        match merge_object(existing, element, &element_path)? {
                            Some(merged) => original[position] = Value::Object(merged),
                            None => {
                                original.remove(position);
                            }
                        }
                    }
                    None => {
                        if let Some(merged) = merge_object(Map::new(), element, &element_path)? {
                            original.push(Value::Object(merged));
                        }
                    }
                }
            }
            Ok(original)
        }
        ListStrategy::Union if !replace => {
            for (index, element) in elements {
                if let Some(element) = fresh_element(element, &format!("{path}/{index}"))?
                    && !original.contains(&element)
                {
                    original.push(element);
                }
            }
            Ok(original)
        }
        _ => {
            let mut replacement = Vec::with_capacity(elements.len());
            for (index, element) in elements {
                if let Some(element) = fresh_element(element, &format!("{path}/{index}"))? {
                    replacement.push(element);
                }
            }
            Ok(replacement)
        }
    }
}

/// A patch list element with nothing to merge into, its directives applied; unlike an object
/// key, a `null` element is kept, since it is a value and not a deletion.
fn fresh_element(element: &Value, path: &str) -> Result<Option<Value>, PatchError> {
    match element {
        Value::Null => Ok(Some(Value::Null)),
        // Nested lists have no field name, hence no merge key.
        other => merge_value(None, other, "", path),
    }
}

/// `list` in the order `order` names, the elements it does not name kept after, in their
/// order. An object in `order` names the element that has all its fields (its merge key).
fn ordered_by(list: Vec<Value>, order: &[Value]) -> Vec<Value> {
    let mut unplaced: Vec<Option<Value>> = list.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(unplaced.len());
    for wanted in order {
        let found = unplaced
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(|element| names(wanted, element)));
        if let Some(slot) = found {
            ordered.extend(slot.take());
        }
    }
    ordered.extend(unplaced.into_iter().flatten());
    ordered
}

fn names(wanted: &Value, element: &Value) -> bool {
    match (wanted, element) {
        (Value::Object(wanted), Value::Object(element)) => {
            !wanted.is_empty()
                && wanted
                    .iter()
                    .all(|(key, value)| element.get(key) == Some(value))
        }
        _ => wanted == element,
    }
}

fn unknown_patch_directive(path: &str, value: &Value) -> PatchError {
    PatchError::UnknownPatchDirective {
        path: display_path(path),
        value: value.clone(),
    }
}

/// The root's path is empty in a JSON pointer, which reads badly in a message.
fn display_path(path: &str) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strategic(target: Value, patch: Value) -> Result<Value, PatchError> {
        apply(
            PatchKind::StrategicMerge,
            &target,
            patch.to_string().as_bytes(),
        )
    }

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "hello", "labels": {"app": "hello", "tier": "web"}},
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [
                    {
                        "name": "web",
                        "image": "web:1",
                        "args": ["--a", "--b"],
                        "env": [{"name": "MODE", "value": "slow"}, {"name": "LEVEL", "value": "1"}],
                        "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}],
                    },
                    {"name": "sidecar", "image": "side:1"},
                ]}},
            },
        })
    }

    #[test]
    fn content_types_name_their_patch_kind() {
        let cases = [
            ("application/json-patch+json", Some(PatchKind::Json)),
            ("application/merge-patch+json", Some(PatchKind::Merge)),
            (
                "application/strategic-merge-patch+json",
                Some(PatchKind::StrategicMerge),
            ),
            (
                "Application/Strategic-Merge-Patch+JSON; charset=utf-8",
                Some(PatchKind::StrategicMerge),
            ),
            (
                " application/merge-patch+json ;charset=utf-8",
                Some(PatchKind::Merge),
            ),
            ("application/apply-patch+yaml", None),
            ("application/json", None),
            ("", None),
        ];
        for (content_type, expected) in cases {
            assert_eq!(
                PatchKind::from_content_type(content_type),
                expected,
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn kubectl_apply_patch_changes_image_and_env_by_name_and_keeps_other_containers() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "MODE"}, {"name": "LEVEL"}],
                "name": "web",
                "image": "web:2",
                "env": [{"name": "MODE", "value": "fast"}],
            }],
        }}}});
        let patched = strategic(deployment(), patch).unwrap();
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2);
        assert_eq!(containers[0]["image"], "web:2");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "MODE", "value": "fast"}, {"name": "LEVEL", "value": "1"}])
        );
        assert_eq!(containers[0]["args"], json!(["--a", "--b"]));
        assert_eq!(containers[1], json!({"name": "sidecar", "image": "side:1"}));
        assert_eq!(patched["spec"]["replicas"], 2);
        assert!(
            !patched.to_string().contains('$'),
            "a directive leaked: {patched}"
        );
    }

    #[test]
    fn set_element_order_reorders_and_keeps_unnamed_elements_after() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "new"}, {"name": "sidecar"}],
            "containers": [{"name": "new", "image": "new:1"}],
        }}}});
        let patched = strategic(deployment(), patch).unwrap();
        let names: Vec<_> = patched["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|container| container["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["new", "sidecar", "web"]);
    }

    #[test]
    fn set_element_order_reorders_a_primitive_list() {
        let target = json!({"metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]}});
        assert_eq!(
            strategic(target, patch).unwrap(),
            json!({"metadata": {"finalizers": ["c", "b", "a"]}})
        );
    }

    #[test]
    fn patch_delete_element_removes_the_container_with_that_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete", "name": "sidecar"}]}}}});
        let patched = strategic(deployment(), patch).unwrap();
        let containers = patched["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "web");
    }

    #[test]
    fn patch_replace_element_replaces_the_list_with_the_other_elements() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"},
            {"name": "only", "image": "only:1"},
        ]}}}});
        let patched = strategic(deployment(), patch).unwrap();
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "only:1"}])
        );
    }

    #[test]
    fn null_deletes_a_label() {
        let patched = strategic(
            deployment(),
            json!({"metadata": {"labels": {"tier": null, "new": "x"}}}),
        )
        .unwrap();
        assert_eq!(
            patched["metadata"]["labels"],
            json!({"app": "hello", "new": "x"})
        );
    }

    #[test]
    fn container_ports_merge_by_container_port() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "ports": [{"containerPort": 443, "name": "tls"}, {"containerPort": 8080}]},
        ]}}}});
        let patched = strategic(deployment(), patch).unwrap();
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "tls"}, {"containerPort": 8080}]),
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let service = json!({"spec": {"ports": [
            {"port": 80, "targetPort": 8080, "name": "http"},
            {"port": 443, "targetPort": 8443, "name": "https"},
        ]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
        assert_eq!(
            strategic(service, patch).unwrap()["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090, "name": "http"}, {"port": 443, "targetPort": 8443, "name": "https"}]),
        );
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let patch = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "web", "args": ["--c"]}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
        }}}});
        let patched = strategic(deployment(), patch).unwrap();
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["--c"])
        );
        assert_eq!(
            patched["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "k", "operator": "Exists"}])
        );
    }

    #[test]
    fn retain_keys_drops_the_keys_not_listed() {
        let target = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        assert_eq!(
            strategic(target, patch).unwrap(),
            json!({"spec": {"strategy": {"type": "Recreate"}}})
        );
    }

    #[test]
    fn retain_keys_refuses_a_key_the_patch_sets_but_does_not_retain() {
        let target = json!({"spec": {"strategy": {"type": "RollingUpdate"}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        let error = strategic(target, patch).unwrap_err().to_string();
        assert!(error.contains("/spec/strategy/rollingUpdate"), "{error}");
    }

    #[test]
    fn delete_from_primitive_list_removes_the_values() {
        let target = json!({"metadata": {"finalizers": ["a", "b", "c", "b"]}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}});
        assert_eq!(
            strategic(target, patch).unwrap(),
            json!({"metadata": {"finalizers": ["a", "c"]}})
        );
    }

    #[test]
    fn patch_replace_in_an_object_replaces_it() {
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "only": "me"}}});
        let patched = strategic(deployment(), patch).unwrap();
        assert_eq!(patched["metadata"]["labels"], json!({"only": "me"}));
        assert_eq!(patched["metadata"]["name"], "hello");
    }

    #[test]
    fn patch_delete_in_an_object_removes_its_key() {
        let patched = strategic(
            deployment(),
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
        )
        .unwrap();
        assert_eq!(patched["metadata"], json!({"name": "hello"}));
    }

    #[test]
    fn directives_and_nulls_in_new_subtrees_are_applied_not_stored() {
        let patch = json!({"spec": {"strategy": {
            "$retainKeys": ["type"],
            "type": "Recreate",
            "rollingUpdate": null,
        }, "paused": null}});
        let patched = strategic(json!({"spec": {}}), patch).unwrap();
        assert_eq!(patched, json!({"spec": {"strategy": {"type": "Recreate"}}}));
    }

    #[test]
    fn strategic_merge_patch_errors_name_the_problem() {
        let cases = [
            (
                json!({"spec": {"$patch": "merge"}}),
                "unknown $patch value \"merge\" at /spec",
            ),
            (json!({"$patch": 3}), "unknown $patch value 3 at /"),
            (
                json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
                "element 0 of /spec/template/spec/containers has no merge key \"name\"",
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": ["x"]}}}}),
                "element 0 of /spec/template/spec/containers must be an object",
            ),
            (
                json!({"spec": {"$setElementOrder/x": "a"}}),
                "$setElementOrder/x at /spec must be a list",
            ),
            (
                json!({"spec": {"$retainKeys": [1]}}),
                "$retainKeys at /spec must be a list of strings",
            ),
            (
                json!([{"op": "add"}]),
                "a strategic merge patch must be a JSON object",
            ),
            (
                json!("text"),
                "a strategic merge patch must be a JSON object",
            ),
        ];
        for (patch, expected) in cases {
            let error = strategic(deployment(), patch.clone())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(expected), "{patch}: {error}");
        }
    }

    #[test]
    fn merge_patch_sets_replicas() {
        let patched = apply(
            PatchKind::Merge,
            &deployment(),
            br#"{"spec":{"replicas":5}}"#,
        )
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 5);
        assert_eq!(patched["metadata"], deployment()["metadata"]);
    }

    #[test]
    fn merge_patch_must_be_an_object() {
        let error = apply(PatchKind::Merge, &deployment(), b"[1]").unwrap_err();
        assert!(
            matches!(error, PatchError::MergePatchNotAnObject),
            "{error}"
        );
    }

    #[test]
    fn json_patch_replaces_replicas() {
        let patch = br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#;
        let patched = apply(PatchKind::Json, &deployment(), patch).unwrap();
        assert_eq!(patched["spec"]["replicas"], 3);
    }

    #[test]
    fn json_patch_with_failed_test_is_an_error_naming_the_path() {
        let patch = br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"test","path":"/spec/replicas","value":9}]"#;
        let error = apply(PatchKind::Json, &deployment(), patch)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/spec/replicas"), "{error}");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: [(PatchKind, &[u8], &str); 4] = [
            (
                PatchKind::Json,
                br#"{"op":"add"}"#,
                "a JSON patch must be a JSON array",
            ),
            (
                PatchKind::Json,
                br#"[{"op":"frobnicate","path":"/a"}]"#,
                "invalid JSON patch operation",
            ),
            (PatchKind::Merge, b"{", "the patch is not valid JSON"),
            (
                PatchKind::StrategicMerge,
                b"",
                "the patch is not valid JSON",
            ),
        ];
        for (kind, body, expected) in cases {
            let error = apply(kind, &deployment(), body).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{kind:?} {body:?}: {error}");
        }
    }
}
