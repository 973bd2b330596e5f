//! `PUT /v1/txn`: key/value operations applied atomically, as Vault's Consul storage, Go's
//! `Txn` and the npm client send them: `[{"KV": {"Verb", "Key", "Value" (base64), "Flags",
//! "Index", "Session"}}]`, at most 64.
//!
//! 200 `{"Results": [{"KV": ...}], "Errors": null}` when every operation succeeded; 409
//! `{"Results": null, "Errors": [{"OpIndex", "What"}]}` when any failed, and then nothing was
//! written. Catalog operations (`Node`, `Service`, `Check`) are refused with 400: shoal's
//! transactions take key/value operations only.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_node::Node;
use shoal_registry::{KvOp, MAX_TXN_OPS, TxnOutcome};

use super::decode::{Field, Shape, canonicalize, field};
use super::kv::kv_pair;
use super::wire::KvPair;
use super::{ConsulError, ConsulResult, Query, json, set_read_headers};

const KV_OP: &[Field] = &[
    field("Verb", Shape::Plain),
    field("Key", Shape::Plain),
    field("Value", Shape::Plain),
    field("Flags", Shape::Plain),
    field("Index", Shape::Plain),
    field("Session", Shape::Plain),
    field("Namespace", Shape::Plain),
    field("Partition", Shape::Plain),
];

const OP: &[Field] = &[
    field("KV", Shape::Object(KV_OP)),
    field("Node", Shape::Plain),
    field("Service", Shape::Plain),
    field("Check", Shape::Plain),
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OpBody {
    #[serde(rename = "KV")]
    kv: Option<KvBody>,
    node: Option<Value>,
    service: Option<Value>,
    check: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvBody {
    verb: String,
    key: Option<String>,
    value: Option<String>,
    flags: Option<u64>,
    index: Option<u64>,
    session: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: KvPair,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnErrorView {
    op_index: usize,
    what: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    results: Option<Vec<TxnResult>>,
    errors: Option<Vec<TxnErrorView>>,
}

/// One operation of the body, as the registry takes it; the error names the operation.
fn kv_op(at: usize, body: OpBody) -> ConsulResult<KvOp> {
    let bad = |what: String| ConsulError::bad_request(format!("Transaction op {at}: {what}"));
    if body.node.is_some() || body.service.is_some() || body.check.is_some() {
        return Err(bad(
            "Node, Service and Check operations are not supported by shoal; use KV".into(),
        ));
    }
    let kv = body.kv.ok_or_else(|| bad("missing KV".into()))?;
    for (what, value) in [("namespace", &kv.namespace), ("partition", &kv.partition)] {
        if let Some(value) = value
            && !value.is_empty()
            && value != "default"
        {
            return Err(bad(format!(
                "{what} {value:?}: namespaces and partitions are a Consul Enterprise feature"
            )));
        }
    }
    let key = kv.key.unwrap_or_default();
    let value = match kv.value.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| bad(format!("Value is not base64: {e}")))?,
    };
    let flags = kv.flags.unwrap_or(0);
    let index = kv.index.unwrap_or(0);
    let session = || {
        kv.session
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(format!("verb {:?} needs a Session", kv.verb)))
    };
    Ok(match kv.verb.as_str() {
        "set" => KvOp::Set { key, value, flags },
        "cas" => KvOp::Cas {
            key,
            value,
            flags,
            index,
        },
        "lock" => KvOp::Lock {
            key,
            value,
            flags,
            session: session()?,
        },
        "unlock" => KvOp::Unlock {
            key,
            value,
            flags,
            session: session()?,
        },
        "get" => KvOp::Get { key },
        "get-tree" => KvOp::GetTree { key },
        "check-index" => KvOp::CheckIndex { key, index },
        "check-session" => KvOp::CheckSession {
            key,
            session: session()?,
        },
        "check-not-exists" => KvOp::CheckNotExists { key },
        "delete" => KvOp::Delete { key },
        "delete-tree" => KvOp::DeleteTree { key },
        "delete-cas" => KvOp::DeleteCas { key, index },
        other => return Err(bad(format!("unknown KV verb {other:?}"))),
    })
}

/// `PUT /v1/txn`.
pub(super) async fn txn(
    State(node): State<Node>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let parsed: Value = serde_json::from_slice(&body)
        .map_err(|e| ConsulError::bad_request(format!("Failed to parse body: {e}")))?;
    let Value::Array(items) = parsed else {
        return Err(ConsulError::bad_request(
            "Failed to parse body: a transaction is a JSON array of operations",
        ));
    };
    if items.len() > MAX_TXN_OPS {
        return Err(ConsulError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                items.len()
            ),
        ));
    }
    let mut ops = Vec::with_capacity(items.len());
    for (at, item) in items.into_iter().enumerate() {
        let item = canonicalize(item, OP)
            .map_err(|e| ConsulError::bad_request(format!("Transaction op {at}: {e}")))?;
        let body: OpBody = serde_json::from_value(item)
            .map_err(|e| ConsulError::bad_request(format!("Transaction op {at}: {e}")))?;
        ops.push(kv_op(at, body)?);
    }
    let read_only = !ops.iter().any(KvOp::writes);
    let (outcome, index) = node.kv_txn(ops).await?;
    let mut response = match outcome {
        TxnOutcome::Committed(entries) => json(
            &query,
            &TxnResponse {
                results: Some(
                    entries
                        .iter()
                        .map(|entry| TxnResult { kv: kv_pair(entry) })
                        .collect(),
                ),
                errors: None,
            },
        ),
        TxnOutcome::Refused(errors) => {
            let mut response = json(
                &query,
                &TxnResponse {
                    results: None,
                    errors: Some(
                        errors
                            .into_iter()
                            .map(|error| TxnErrorView {
                                op_index: error.op_index,
                                what: error.what,
                            })
                            .collect(),
                    ),
                },
            );
            *response.status_mut() = StatusCode::CONFLICT;
            return Ok(response.into_response());
        }
    };
    if read_only {
        set_read_headers(response.headers_mut(), index);
    }
    Ok(response)
}
