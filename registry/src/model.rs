//! The registry's stored records and the validated names that key them.
//!
//! These types are the registry's boundary, so they derive serde (and nothing internal does).
//! Every stored record carries a `version` field, [`SCHEMA_VERSION`], so a later shoal can
//! recognise and migrate what an earlier one wrote.
//! Names and digests are newtypes validated in `FromStr` (and when deserialized), so a value of
//! the type is always well formed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};

use crate::quantity::{
    ByteSize, deserialize_byte_size_field, deserialize_nonzero_duration_field, serialize_duration,
};
use crate::{Error, Result};

/// The schema version written into every stored record.
pub const SCHEMA_VERSION: u32 = 1;

/// The content address of a module: `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Digest(String);

impl Digest {
    /// The only algorithm shoal addresses modules with.
    const PREFIX: &'static str = "sha256:";

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!(
            "{}{}",
            Digest::PREFIX,
            hex::encode(Sha256::digest(bytes))
        ))
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[Digest::PREFIX.len()..]
    }

    fn validate(text: &str) -> Result<()> {
        let invalid = |reason: String| Error::Invalid {
            field: "digest",
            reason,
        };
        let Some(hex) = text.strip_prefix(Digest::PREFIX) else {
            return Err(invalid(match text.split_once(':') {
                Some((algorithm, _)) => {
                    format!("unsupported algorithm {algorithm:?}: only sha256 is supported")
                }
                None => format!("must start with {:?}", Digest::PREFIX),
            }));
        };
        if let Some(found) = hex
            .chars()
            .find(|found| !matches!(found, '0'..='9' | 'a'..='f'))
        {
            return Err(invalid(format!(
                "must be lowercase hex after {:?}: found {found:?}",
                Digest::PREFIX
            )));
        }
        if hex.len() != 64 {
            return Err(invalid(format!(
                "must have 64 hex digits after {:?}, got {}",
                Digest::PREFIX,
                hex.len()
            )));
        }
        Ok(())
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(text: &str) -> Result<Digest> {
        Digest::validate(text)?;
        Ok(Digest(text.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;

    fn try_from(text: String) -> Result<Digest> {
        Digest::validate(&text)?;
        Ok(Digest(text))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of program a module is, which decides how the runtime invokes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// A wasi:http component, serving requests through `wasi:http/incoming-handler`.
    Http,
    /// A WASI preview1 command, run once per request in CGI style.
    Cgi,
}

impl ModuleKind {
    /// The kind as written in JSON and on the command line: `http` or `cgi`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Http => "http",
            ModuleKind::Cgi => "cgi",
        }
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModuleKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<ModuleKind> {
        match text {
            "http" => Ok(ModuleKind::Http),
            "cgi" => Ok(ModuleKind::Cgi),
            _ => Err(Error::Invalid {
                field: "kind",
                reason: format!("must be \"http\" or \"cgi\", got {text:?}"),
            }),
        }
    }
}

/// The stored metadata of a module; its bytes are stored apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The digest of the module bytes, which is also its key.
    pub digest: Digest,
    /// The length of the module bytes.
    pub size: u64,
    /// How the module is invoked.
    pub kind: ModuleKind,
    /// When the module was first stored, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The change index of the change that stored it.
    pub change_index: u64,
}

/// The name of a service: a DNS-1123 label, so it can appear in host names and URL paths
/// unescaped.
///
/// That is 1 to 63 characters of `a-z`, `0-9` and `-`, starting and ending with a letter or
/// digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// The longest name DNS allows in one label.
    const MAX_LEN: usize = 63;

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(text: &str) -> Result<()> {
        let invalid = |reason: String| Error::Invalid {
            field: "name",
            reason,
        };
        if text.is_empty() {
            return Err(invalid("must not be empty".into()));
        }
        let n_chars = text.chars().count();
        if n_chars > ServiceName::MAX_LEN {
            return Err(invalid(format!(
                "must be at most {} characters, got {n_chars}",
                ServiceName::MAX_LEN
            )));
        }
        if let Some(found) = text
            .chars()
            .find(|found| !matches!(found, 'a'..='z' | '0'..='9' | '-'))
        {
            return Err(invalid(format!(
                "must be lowercase letters, digits and '-': found {found:?}"
            )));
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(invalid("must start and end with a letter or digit".into()));
        }
        Ok(())
    }
}

impl FromStr for ServiceName {
    type Err = Error;

    fn from_str(text: &str) -> Result<ServiceName> {
        ServiceName::validate(text)?;
        Ok(ServiceName(text.to_string()))
    }
}

impl TryFrom<String> for ServiceName {
    type Error = Error;

    fn try_from(text: String) -> Result<ServiceName> {
        ServiceName::validate(&text)?;
        Ok(ServiceName(text))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a service runs: a stored module, with its sandbox limits, environment and arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The module to run, which must be stored in the registry.
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
}

impl ServiceSpec {
    /// A spec running `module` with default limits, no environment and no arguments.
    pub fn new(module: Digest) -> ServiceSpec {
        ServiceSpec {
            module,
            limits: Limits::default(),
            env: BTreeMap::new(),
            args: Vec::new(),
        }
    }

    /// Checks what the types alone cannot: the limits are usable, and the environment and
    /// arguments can be handed to a WASI guest (no `=` in names, no NUL anywhere).
    pub fn validate(&self) -> Result<()> {
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
                return Err(Error::Invalid {
                    field: "env",
                    reason,
                });
            }
        }
        if let Some(arg_idx) = self.args.iter().position(|arg| arg.contains('\0')) {
            return Err(Error::Invalid {
                field: "args",
                reason: format!("argument {arg_idx} must not contain NUL"),
            });
        }
        Ok(())
    }
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
    #[serde(deserialize_with = "memory_field")]
    pub memory: ByteSize,
    /// The wasmtime fuel one invocation may consume. Default 5 000 000 000.
    pub fuel: u64,
    /// The wall-clock time one invocation may take. Default 10s.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "timeout_field"
    )]
    pub timeout: Duration,
    /// The largest request body passed to the guest. Default 10Mi.
    #[serde(deserialize_with = "max_request_body_field")]
    pub max_request_body: ByteSize,
    /// The largest response the guest may produce. Default 16Mi.
    #[serde(deserialize_with = "max_response_field")]
    pub max_response: ByteSize,
    /// The most guest stderr kept per invocation. Default 64Ki.
    #[serde(deserialize_with = "max_stderr_field")]
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
            Some(field) => Err(Error::Invalid {
                field,
                reason: "must be greater than zero".into(),
            }),
            None => Ok(()),
        }
    }
}

// One deserializer per field, so a bad value's error names the field it was in.

fn memory_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
    deserialize_byte_size_field(deserializer, "limits.memory")
}

fn max_request_body_field<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ByteSize, D::Error> {
    deserialize_byte_size_field(deserializer, "limits.max_request_body")
}

fn max_response_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
    deserialize_byte_size_field(deserializer, "limits.max_response")
}

fn max_stderr_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
    deserialize_byte_size_field(deserializer, "limits.max_stderr")
}

fn timeout_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserialize_nonzero_duration_field(deserializer, "limits.timeout")
}

/// The current state of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The service's name, which is also its key.
    pub name: ServiceName,
    /// The current revision: 1 when created, plus one for every change of spec.
    pub revision: u64,
    /// The current spec.
    pub spec: ServiceSpec,
    /// When the service was created, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When the current revision was stored, in milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The change index of the change that stored the current revision.
    pub change_index: u64,
}

/// One revision of a service, kept until the service is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// The schema version, [`SCHEMA_VERSION`].
    pub version: u32,
    /// The service this is a revision of.
    pub name: ServiceName,
    /// The revision number, counting from 1.
    pub revision: u64,
    /// The spec of this revision.
    pub spec: ServiceSpec,
    /// When this revision was stored, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The change index of the change that stored this revision.
    pub change_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_error(text: &str) -> String {
        match text.parse::<ServiceName>() {
            Err(Error::Invalid { field, reason }) => {
                assert_eq!(field, "name", "{text}");
                reason
            }
            other => panic!("{text:?} should be an invalid name, got {other:?}"),
        }
    }

    #[test]
    fn service_names_accepted() {
        let longest = "a".repeat(63);
        for text in ["a", "my-svc-2", "0", "a-b-c", "9lives", longest.as_str()] {
            let name: ServiceName = text.parse().unwrap();
            assert_eq!(name.as_str(), text);
            assert_eq!(name.to_string(), text);
        }
    }

    #[test]
    fn service_names_refused() {
        let too_long = "a".repeat(64);
        let cases = [
            (
                "../x",
                "must be lowercase letters, digits and '-': found '.'",
            ),
            (
                "Upper",
                "must be lowercase letters, digits and '-': found 'U'",
            ),
            (
                "a_b",
                "must be lowercase letters, digits and '-': found '_'",
            ),
            (
                "a b",
                "must be lowercase letters, digits and '-': found ' '",
            ),
            (
                "café",
                "must be lowercase letters, digits and '-': found 'é'",
            ),
            (too_long.as_str(), "must be at most 63 characters, got 64"),
            ("", "must not be empty"),
            ("-a", "must start and end with a letter or digit"),
            ("a-", "must start and end with a letter or digit"),
            ("-", "must start and end with a letter or digit"),
        ];
        for (text, expected) in cases {
            assert_eq!(name_error(text), expected, "{text:?}");
        }
        assert_eq!(
            "Upper".parse::<ServiceName>().unwrap_err().to_string(),
            "invalid name: must be lowercase letters, digits and '-': found 'U'"
        );
    }

    #[test]
    fn service_names_validate_when_deserialized() {
        let name: ServiceName = serde_json::from_str("\"my-svc\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"my-svc\"");
        let err = serde_json::from_str::<ServiceName>("\"../x\"").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid name: must be lowercase letters, digits and '-': found '.'"),
            "{err}"
        );
    }

    #[test]
    fn digests() {
        let digest = Digest::of(b"hello");
        assert_eq!(
            digest.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            digest.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(digest.as_str().parse::<Digest>().unwrap(), digest);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);

        let upper = format!("sha256:{}", digest.hex().to_uppercase());
        let short = "sha256:abc".to_string();
        let cases = [
            (digest.hex(), "must start with \"sha256:\""),
            (
                "md5:abc",
                "unsupported algorithm \"md5\": only sha256 is supported",
            ),
            (
                upper.as_str(),
                "must be lowercase hex after \"sha256:\": found 'C'",
            ),
            (
                short.as_str(),
                "must have 64 hex digits after \"sha256:\", got 3",
            ),
        ];
        for (text, expected) in cases {
            match text.parse::<Digest>() {
                Err(Error::Invalid { field, reason }) => {
                    assert_eq!(field, "digest");
                    assert_eq!(reason, expected, "{text}");
                }
                other => panic!("{text:?} should be an invalid digest, got {other:?}"),
            }
        }
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
    }

    #[test]
    fn module_kinds() {
        for kind in [ModuleKind::Http, ModuleKind::Cgi] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(kind.to_string().parse::<ModuleKind>().unwrap(), kind);
        }
        assert_eq!(ModuleKind::Http.to_string(), "http");
        assert_eq!(ModuleKind::Cgi.to_string(), "cgi");
        assert_eq!(
            "wasm".parse::<ModuleKind>().unwrap_err().to_string(),
            "invalid kind: must be \"http\" or \"cgi\", got \"wasm\""
        );
    }

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
                r#"invalid limits.memory "64Q": unknown suffix "Q" at line 1 column 16"#,
            ),
            (
                r#"{"max_response": "-1Mi"}"#,
                r#"invalid limits.max_response "-1Mi": must not be negative at line 1 column 23"#,
            ),
            (
                r#"{"max_stderr": -5}"#,
                "invalid limits.max_stderr -5: must not be negative at line 1 column 17",
            ),
            (
                r#"{"timeout": "0s"}"#,
                r#"invalid limits.timeout "0s": must be greater than zero at line 1 column 16"#,
            ),
            (
                r#"{"timeout": "10"}"#,
                r#"invalid limits.timeout "10": time unit needed, for example 10sec or 10ms at line 1 column 16"#,
            ),
            (
                r#"{"memroy": "64Mi"}"#,
                "unknown field `memroy`, expected one of `memory`, `fuel`, `timeout`, \
                 `max_request_body`, `max_response`, `max_stderr` at line 1 column 9",
            ),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<Limits>(json).unwrap_err();
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
        let err = serde_json::from_str::<ServiceSpec>(&format!(
            r#"{{"module": "{digest}", "enviroment": {{}}}}"#
        ))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `enviroment`"),
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
}
