//! The names users write and see: a module's [`Digest`] (its content address), a
//! [`ServiceName`], and a module's [`ModuleKind`].
//!
//! Names and digests are newtypes validated in `FromStr` (and when deserialized), so a value of
//! the type is always well formed.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// The content address of a module: `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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

    /// What is wrong with `text` as a digest, if anything.
    fn problem(text: &str) -> Option<String> {
        let Some(hex) = text.strip_prefix(Digest::PREFIX) else {
            return Some(match text.split_once(':') {
                Some((algorithm, _)) => {
                    format!("unsupported algorithm {algorithm:?}: only sha256 is supported")
                }
                None => format!("must start with {:?}", Digest::PREFIX),
            });
        };
        if let Some(found) = hex
            .chars()
            .find(|found| !matches!(found, '0'..='9' | 'a'..='f'))
        {
            return Some(format!(
                "must be lowercase hex after {:?}: found {found:?}",
                Digest::PREFIX
            ));
        }
        if hex.len() != 64 {
            return Some(format!(
                "must have 64 hex digits after {:?}, got {}",
                Digest::PREFIX,
                hex.len()
            ));
        }
        None
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(text: &str) -> Result<Digest> {
        match Digest::problem(text) {
            Some(reason) => Err(Error::invalid("digest", reason)),
            None => Ok(Digest(text.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        deserialize_checked(deserializer, Digest::problem, Digest)
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

/// The name of a service: a DNS-1123 label, so it can appear in host names and URL paths
/// unescaped.
///
/// That is 1 to 63 characters of `a-z`, `0-9` and `-`, starting and ending with a letter or
/// digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName(String);

impl ServiceName {
    /// The longest name DNS allows in one label.
    const MAX_LEN: usize = 63;

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is wrong with `text` as a name, if anything.
    fn problem(text: &str) -> Option<String> {
        if text.is_empty() {
            return Some("must not be empty".into());
        }
        let n_chars = text.chars().count();
        if n_chars > ServiceName::MAX_LEN {
            return Some(format!(
                "must be at most {} characters, got {n_chars}",
                ServiceName::MAX_LEN
            ));
        }
        if let Some(found) = text
            .chars()
            .find(|found| !matches!(found, 'a'..='z' | '0'..='9' | '-'))
        {
            return Some(format!(
                "must be lowercase letters, digits and '-': found {found:?}"
            ));
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Some("must start and end with a letter or digit".into());
        }
        None
    }
}

impl FromStr for ServiceName {
    type Err = Error;

    fn from_str(text: &str) -> Result<ServiceName> {
        match ServiceName::problem(text) {
            Some(reason) => Err(Error::invalid("name", reason)),
            None => Ok(ServiceName(text.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ServiceName, D::Error> {
        deserialize_checked(deserializer, ServiceName::problem, ServiceName)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads a string newtype checked by `problem`: a refusal names the value first, as the
/// quantity visitors do, so the path of the field goes in front of it
/// (`invalid module "sha256:abc": must have 64 hex digits ...`).
fn deserialize_checked<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    problem: fn(&str) -> Option<String>,
    wrap: fn(String) -> T,
) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    match problem(&text) {
        Some(reason) => Err(de::Error::custom(format!("{text:?}: {reason}"))),
        None => Ok(wrap(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_error(text: &str) -> String {
        match text.parse::<ServiceName>() {
            Err(Error::Invalid(error)) => {
                assert_eq!(error.field, "name", "{text}");
                error.reason
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
                .starts_with(r#""../x": must be lowercase letters, digits and '-': found '.'"#),
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
                Err(Error::Invalid(error)) => {
                    assert_eq!(error.field, "digest");
                    assert_eq!(error.reason, expected, "{text}");
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
            assert_eq!(serde_json::from_str::<ModuleKind>(&json).unwrap(), kind);
        }
        assert_eq!(ModuleKind::Http.to_string(), "http");
        assert_eq!(ModuleKind::Cgi.to_string(), "cgi");
    }
}
