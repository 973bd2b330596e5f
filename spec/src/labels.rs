//! Kubernetes label syntax: the keys and values a service's labels (and the selectors that
//! pick services by them) may use, checked as kube-apiserver checks them, so a label shoal
//! accepts is one every Kubernetes client accepts too.

use std::collections::BTreeMap;

/// The label every replica of a service carries, naming the service, so a selector can always
/// pick exactly one service.
pub const SERVICE_LABEL: &str = "shoal.dev/service";

/// Whether the equality selector `selector` (a Kubernetes Service's) picks the replicas of
/// the service `service`, labelled `labels`: each of its pairs is among them, counting
/// [`SERVICE_LABEL`]. An empty selector picks nothing, as a Kubernetes Service's selects no
/// pods.
pub fn selects(
    selector: &BTreeMap<String, String>,
    service: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty()
        && selector.iter().all(|(key, value)| match key.as_str() {
            SERVICE_LABEL => value == service,
            _ => labels.get(key) == Some(value),
        })
}

/// Checks a label's key and value.
///
/// A key is an optional prefix (a DNS subdomain of at most 253 characters) and `/`, then a
/// name of at most 63 characters: alphanumerics, `-`, `_` and `.`, beginning and ending with
/// an alphanumeric. A value is empty or such a name.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    check_label_key(key)?;
    check_label_value(value)
}

/// Checks a label key; see [`check_label`].
pub fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            check_prefix(prefix).map_err(|reason| format!("key {key:?}: prefix {reason}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(format!("key {key:?}: name part must not be empty"));
    }
    check_name(name).map_err(|reason| format!("key {key:?}: name part {reason}"))
}

/// Checks a label value; see [`check_label`].
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|reason| format!("value {value:?}: {reason}"))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let bytes = name.as_bytes();
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !bytes.iter().copied().all(allowed)
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return Err(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end \
             with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 253 {
        return Err("must be a DNS subdomain of 1 to 253 characters".into());
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
    };
    if !prefix.split('.').all(label_ok) {
        return Err(format!(
            "{prefix:?} must be lower-case alphanumerics, '-' and '.', each part starting and \
             ending with an alphanumeric"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_picks_services_by_every_pair() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let selector = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selects(&selector(&[("app", "web")]), "hello", &labels));
        assert!(selects(
            &selector(&[(SERVICE_LABEL, "hello")]),
            "hello",
            &labels
        ));
        assert!(!selects(
            &selector(&[("app", "web"), ("tier", "db")]),
            "hello",
            &labels
        ));
        assert!(!selects(
            &selector(&[(SERVICE_LABEL, "other")]),
            "hello",
            &labels
        ));
        assert!(!selects(&selector(&[]), "hello", &labels));
    }

    #[test]
    fn keys_and_values_follow_kubernetes() {
        for (key, value) in [
            ("app", "hello"),
            ("app.kubernetes.io/name", "web_1.2"),
            ("autoscaling.knative.dev/min-scale", "2"),
            ("a", ""),
        ] {
            assert_eq!(check_label(key, value), Ok(()), "{key}={value}");
        }
        for (key, value, needle) in [
            ("", "x", "name part must not be empty"),
            ("-app", "x", "must start and end"),
            ("Example.com/app", "x", "prefix"),
            ("app/", "x", "name part must not be empty"),
            ("app", "has space", "value \"has space\""),
            ("app", &"x".repeat(64), "63 characters"),
        ] {
            let error = check_label(key, value).unwrap_err();
            assert!(error.contains(needle), "{key}={value}: {error}");
        }
    }
}
