//! shoal's vocabulary: what users write and see, and nothing else.
//!
//! The names ([`Digest`], [`ServiceName`], [`ModuleKind`]), the service spec with its parts
//! ([`ServiceSpec`], [`Limits`], [`Resources`], [`Isolation`], [`Scale`]), and the quantities
//! they are written in ([`ByteSize`], [`Cpu`], [`Quantity`], humantime durations).
//! Every surface (the management API, the Consul API, later the Kubernetes API) reads and
//! shows these same types, and every store keeps them.
//!
//! **Architecture Invariant:** this crate does no IO and knows no store, no engine and no
//! protocol: it depends on serde, not on redb, wasmtime, HTTP or a runtime.
//!
//! **One mechanism names a bad field.** Values are refused by their visitors with the value
//! first (`"64Q": unknown suffix "Q"`), and [`from_json`] puts the path serde was at in front:
//! `invalid limits.memory "64Q": unknown suffix "Q"`.
//! What the types cannot check, [`ServiceSpec::validate`] does, naming the field the same way.
//!
//! # Layout
//! - `name.rs`: [`Digest`], [`ServiceName`], [`ModuleKind`].
//! - `image.rs`: [`ImageRef`], the module a Kubernetes image names.
//! - `service.rs`: [`ServiceSpec`] and its parts.
//! - `quantity.rs`: Kubernetes quantities, byte sizes, cpu, and durations.

#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod image;
mod labels;
mod name;
pub mod quantity;
mod route;
mod service;

pub use self::image::ImageRef;
pub use self::labels::{SERVICE_LABEL, check_label, check_label_key, check_label_value, selects};
pub use self::name::{Digest, ModuleKind, ServiceName};
pub use self::quantity::{ByteSize, Cpu, Quantity};
pub use self::route::RouteSpec;
pub use self::service::{Isolation, Limits, ResourceList, Resources, Scale, ServiceSpec};

use std::fmt;

use serde::de::DeserializeOwned;

/// A field whose value is refused: its path, the value when the refusal quotes it, and why.
///
/// Shown as `invalid {field}: {reason}`, or with the value, `invalid {field} {value}: {reason}`
/// (`invalid limits.memory "64Q": unknown suffix "Q"`). Surfaces keep the parts apart where
/// their wire format has room (a Kubernetes `Status` cause has a field and a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The path of the field, e.g. `name`, `limits.memory` or `scale.max`.
    pub field: String,
    /// The refused value as written (a JSON string keeps its quotes), when the reason is about
    /// the value's form.
    pub value: Option<String>,
    /// What is wrong, lowercase and without a trailing period.
    pub reason: String,
}

impl FieldError {
    /// A refusal of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            value: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}", self.field)?;
        if let Some(value) = &self.value {
            write!(f, " {value}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What is wrong with an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field's value is refused.
    #[error("{0}")]
    Invalid(FieldError),
    /// The input is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
}

impl Error {
    /// An [`Error::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid(FieldError::new(field, reason))
    }
}

/// The result of reading or checking user input.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads a `T` (a [`ServiceSpec`], say) from a JSON body; a bad value is an
/// [`Error::Invalid`] naming its path, bytes that are not JSON are [`Error::MalformedJson`].
///
/// The body is parsed into a `serde_json::Value` first, so errors about values carry no line
/// and column (which mean little in a one-line body), and the path says where.
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| Error::MalformedJson(error.to_string()))?;
    from_json_value(value)
}

/// Reads a `T` from a JSON value; see [`from_json`].
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    from_json_value_at("", value)
}

/// Reads a `T` found at `prefix` in a larger document (`limits` for the [`Limits`] of a
/// spec), so errors name the whole path: `invalid limits.memory ...`.
pub fn from_json_value_at<T: DeserializeOwned>(
    prefix: &str,
    value: serde_json::Value,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "body".to_owned(),
            (prefix, ".") => prefix.to_owned(),
            ("", path) => path.to_owned(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        let message = error.into_inner().to_string();
        let (value, reason) = match split_value(&message) {
            Some((value, reason)) => (Some(value.to_owned()), reason.to_owned()),
            None => (None, message),
        };
        Error::Invalid(FieldError {
            field,
            value,
            reason,
        })
    })
}

/// Splits a visitor's refusal (`"64Q": unknown suffix "Q"`, `-5: must not be negative`) into
/// the value and the reason; `None` for serde's own messages, which never start with a quote,
/// a digit or a minus sign ("unknown field", "invalid type", "missing field").
fn split_value(message: &str) -> Option<(&str, &str)> {
    let value_end = if message.starts_with('"') {
        // The value is Rust's `Debug` of a string: it ends at the first unescaped quote.
        let mut escaped = false;
        message.char_indices().skip(1).find_map(|(idx, c)| {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return Some(idx + 1),
                _ => {}
            }
            None
        })?
    } else if message.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        message.find(": ")?
    } else {
        return None;
    };
    let reason = message[value_end..].strip_prefix(": ")?;
    Some((&message[..value_end], reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_named_once() {
        let error = from_json::<ServiceSpec>(
            format!(
                r#"{{"module": "{}", "limits": {{"memory": "64Q"}}}}"#,
                Digest::of(b"m")
            )
            .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid limits.memory "64Q": unknown suffix "Q""#
        );
        assert_eq!(
            error,
            Error::Invalid(FieldError {
                field: "limits.memory".into(),
                value: Some(r#""64Q""#.into()),
                reason: r#"unknown suffix "Q""#.into(),
            })
        );
    }

    #[test]
    fn errors_name_the_path_or_the_body() {
        let cases = [
            (
                r#"{"module": 5}"#,
                "invalid module: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"module": "a\"b"}"#,
                r#"invalid module "a\"b": must start with "sha256:""#,
            ),
            (
                r#""text""#,
                r#"invalid body: invalid type: string "text", expected struct ServiceSpec"#,
            ),
            (
                "{not json",
                "malformed JSON: key must be a string at line 1 column 2",
            ),
            (
                r#"{"module": "sha256:nothex"}"#,
                r#"invalid module "sha256:nothex": must be lowercase hex after "sha256:": found 'n'"#,
            ),
        ];
        for (body, expected) in cases {
            let error = from_json::<ServiceSpec>(body.as_bytes()).unwrap_err();
            assert_eq!(error.to_string(), expected, "{body}");
        }
        let limits: Result<Limits> =
            from_json_value_at("limits", serde_json::json!({"timeout": "soon"}));
        assert_eq!(
            limits.unwrap_err().to_string(),
            r#"invalid limits.timeout "soon": expected number at 0"#
        );
    }
}
