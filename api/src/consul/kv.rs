//! `/v1/kv/*`: Consul's key/value store over the registry's.
//!
//! Reads answer a JSON *array* of entries with base64 values (the clients take element 0),
//! or with `?keys` an array of key names, or with `?raw` the bare value; a missing key is a
//! 404 that still carries the index headers. Writes answer `true` or `false` (a failed
//! check-and-set is `false`, not an error). `?acquire=` and `?release=` lock and unlock a key
//! for a session (`session.rs`); entries show the session holding them and their `LockIndex`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Limited};
use shoal_node::Node;
use shoal_registry::{KvEntry, KvOp, MAX_KV_VALUE_SIZE, TxnFailure, TxnOutcome};

use super::wire::KvPair;
use super::{ConsulError, ConsulResult, Query, blocking, json, read_json, set_read_headers};

pub(super) fn kv_pair(entry: &KvEntry) -> KvPair {
    KvPair {
        lock_index: entry.lock_index,
        key: entry.key.clone(),
        flags: entry.flags,
        value: (!entry.value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
        session: entry.session.clone(),
        create_index: entry.create_index,
        modify_index: entry.modify_index,
    }
}

/// What a read found.
enum Found {
    Entries(Vec<KvEntry>),
    Keys(Vec<String>),
}

pub(super) async fn get_root(node: State<Node>, raw: RawQuery) -> ConsulResult<Response> {
    get(node, String::new(), raw).await
}

pub(super) async fn get_key(
    node: State<Node>,
    Path(key): Path<String>,
    raw: RawQuery,
) -> ConsulResult<Response> {
    get(node, key, raw).await
}

/// `GET /v1/kv/{key}[?recurse][?keys&separator=][?raw]`.
async fn get(
    State(node): State<Node>,
    key: String,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    let recurse = query.flag("recurse")?;
    let keys = query.flag("keys")?;
    let raw_value = query.has("raw");
    if key.is_empty() && !recurse && !keys {
        return Err(ConsulError::bad_request("Missing key name"));
    }
    let separator = query.get("separator").unwrap_or_default().to_owned();
    let (found, index) = blocking(&node, &query, || {
        let key = key.clone();
        let separator = separator.clone();
        let node = node.clone();
        async move {
            if keys {
                let prefix = key.clone();
                let (entries, index) = node.kv_list(&prefix).await?;
                let mut names: Vec<String> = Vec::new();
                for entry in entries {
                    let name = match entry.key[key.len()..].find(separator.as_str()) {
                        Some(at) if !separator.is_empty() => {
                            entry.key[..key.len() + at + separator.len()].to_owned()
                        }
                        _ => entry.key,
                    };
                    if names.last() != Some(&name) {
                        names.push(name);
                    }
                }
                Ok((Found::Keys(names), index))
            } else if recurse {
                let (entries, index) = node.kv_list(&key).await?;
                Ok((Found::Entries(entries), index))
            } else {
                let (entry, index) = node.kv_get(&key).await?;
                Ok((Found::Entries(entry.into_iter().collect()), index))
            }
        }
    })
    .await?;
    match found {
        Found::Keys(names) if names.is_empty() => Err(ConsulError::not_found_at(index)),
        Found::Entries(entries) if entries.is_empty() => Err(ConsulError::not_found_at(index)),
        Found::Keys(names) => Ok(read_json(&query, &names, index)),
        Found::Entries(entries) if raw_value && !recurse => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                entries
                    .into_iter()
                    .next()
                    .map(|e| e.value)
                    .unwrap_or_default(),
            )
                .into_response();
            set_read_headers(response.headers_mut(), index);
            Ok(response)
        }
        Found::Entries(entries) => {
            let views: Vec<KvPair> = entries.iter().map(kv_pair).collect();
            Ok(read_json(&query, &views, index))
        }
    }
}

pub(super) async fn put_root(_: State<Node>) -> ConsulResult<Response> {
    Err(ConsulError::bad_request("Missing key name"))
}

/// `PUT /v1/kv/{key}[?flags=][?cas=]`: the body is the value.
pub(super) async fn put_key(
    State(node): State<Node>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let lock = match (query.get("acquire"), query.get("release")) {
        (Some(_), Some(_)) => {
            return Err(ConsulError::bad_request(
                "Conflicting flags: acquire and release",
            ));
        }
        (Some(""), _) | (_, Some("")) => {
            return Err(ConsulError::bad_request(
                "Missing session for ?acquire or ?release",
            ));
        }
        (Some(session), None) => Some((true, session.to_owned())),
        (None, Some(session)) => Some((false, session.to_owned())),
        (None, None) => None,
    };
    let flags = query.number("flags")?.unwrap_or(0);
    let cas = query.number("cas")?;
    let too_large = |size: Option<u64>| {
        let size = size.map_or_else(
            || format!("more than {MAX_KV_VALUE_SIZE}"),
            |n| n.to_string(),
        );
        ConsulError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body({size} bytes) too large, max size: {MAX_KV_VALUE_SIZE} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_KV_VALUE_SIZE as u64) {
        return Err(too_large(declared));
    }
    let value = match Limited::new(body, MAX_KV_VALUE_SIZE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(None)),
        Err(e) => {
            return Err(ConsulError::bad_request(format!(
                "cannot read the body: {e}"
            )));
        }
    };
    let Some((acquire, session)) = lock else {
        let written = node.kv_put(&key, value, flags, cas).await?;
        return Ok(json(&query, &written));
    };
    let (key, value) = (key, value.to_vec());
    let op = if acquire {
        KvOp::Lock {
            key,
            value,
            flags,
            session,
        }
    } else {
        KvOp::Unlock {
            key,
            value,
            flags,
            session,
        }
    };
    match node.kv_txn(vec![op]).await?.0 {
        TxnOutcome::Committed(_) => Ok(json(&query, &true)),
        // Consul answers an unknown session with 500 `invalid session "..."` (Patroni looks
        // for that), and a lock held by another session, or in its lock-delay, with `false`.
        TxnOutcome::Refused(errors) => match errors.first() {
            Some(error) if error.failure == TxnFailure::InvalidSession => Err(ConsulError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error.what.clone(),
            )),
            _ => Ok(json(&query, &false)),
        },
    }
}

pub(super) async fn delete_root(node: State<Node>, raw: RawQuery) -> ConsulResult<Response> {
    delete(node, String::new(), raw).await
}

pub(super) async fn delete_key(
    node: State<Node>,
    Path(key): Path<String>,
    raw: RawQuery,
) -> ConsulResult<Response> {
    delete(node, key, raw).await
}

/// `DELETE /v1/kv/{key}[?recurse][?cas=]`.
async fn delete(
    State(node): State<Node>,
    key: String,
    RawQuery(raw): RawQuery,
) -> ConsulResult<Response> {
    let query = Query::parse(raw.as_deref());
    query.check_common(&node)?;
    let recurse = query.flag("recurse")?;
    let cas = query.number("cas")?;
    if recurse && cas.is_some() {
        return Err(ConsulError::bad_request(
            "Conflicting flags: cas and recurse",
        ));
    }
    if key.is_empty() && !recurse {
        return Err(ConsulError::bad_request("Missing key name"));
    }
    let deleted = node.kv_delete(&key, recurse, cas).await?;
    Ok(json(&query, &deleted))
}
