//! [`RouteSpec`]: a name the gateway answers for, routing to the services whose labels its
//! selector matches. It is what a Kubernetes Service is to shoal: a stable name in front of
//! whichever services carry the labels, written and read through the Kubernetes API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A name the gateway answers for, routing to the services whose labels match its selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Equality-only label selector, as a Kubernetes Service's; empty selects nothing.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The Kubernetes object it was written as (ports, type, annotations), kept so it reads
    /// back as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<serde_json::Value>,
}

impl RouteSpec {
    /// Checks every selector pair is a valid label, naming the first that is not.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in &self.selector {
            crate::check_label(key, value)
                .map_err(|reason| Error::invalid(format!("selector.{key}"), reason))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_selector_is_refused_naming_the_key() {
        let spec = RouteSpec {
            selector: BTreeMap::from([("app".into(), "has space".into())]),
            kubernetes: None,
        };
        let error = spec.validate().unwrap_err().to_string();
        assert!(error.contains("selector.app"), "{error}");
        let spec = RouteSpec {
            selector: BTreeMap::from([("app".into(), "web".into())]),
            kubernetes: None,
        };
        assert!(spec.validate().is_ok());
    }
}
