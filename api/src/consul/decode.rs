//! Request bodies the way Consul decodes them, so that every client's spelling works.
//!
//! Consul decodes JSON with Go's `encoding/json`, which matches keys case-insensitively
//! (the Python clients send `name`, `address`, `checks`), plus a few snake_case aliases of
//! its own (`enable_tag_override`, `deregister_critical_service_after`, `args`, ...), and it
//! refuses unknown keys. serde matches keys exactly, so a body is first rewritten to the
//! canonical spelling by walking it against a [`Field`] schema, then deserialized.
//! Maps of user data (`Meta`, `Header`) are left alone: their keys are data, not fields.
//!
//! Durations are Go durations (`"10s"`, `"1m30s"`) or JSON numbers of nanoseconds.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A field of a JSON object: its canonical name, other spellings, and what its value is.
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) aliases: &'static [&'static str],
    pub(crate) shape: Shape,
}

/// What a field's value is, as far as key matching goes.
pub(crate) enum Shape {
    /// A scalar, an array of scalars, or anything whose keys are not matched.
    Plain,
    /// A map whose keys are data, but whose values are objects of these fields.
    MapOf(&'static [Field]),
    /// An object of these fields.
    Object(&'static [Field]),
    /// An array of objects of these fields.
    ArrayOf(&'static [Field]),
}

/// Shorthand for a schema entry.
pub(crate) const fn field(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        aliases: &[],
        shape,
    }
}

/// Shorthand for a schema entry with other spellings.
pub(crate) const fn aliased(
    name: &'static str,
    aliases: &'static [&'static str],
    shape: Shape,
) -> Field {
    Field {
        name,
        aliases,
        shape,
    }
}

/// Decodes `body` against `fields` into `T`, with Consul's error messages.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], fields: &[Field]) -> Result<T, String> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        // An empty body decodes as an empty object, as Go's decoder sees EOF.
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?
    };
    let canonical =
        canonicalize(value, fields).map_err(|e| format!("Request decode failed: {e}"))?;
    serde_json::from_value(canonical).map_err(|e| format!("Request decode failed: {e}"))
}

/// Rewrites the keys of `value` (an object) to their canonical spelling, refusing unknown ones.
pub(crate) fn canonicalize(value: Value, fields: &[Field]) -> Result<Value, String> {
    let object = match value {
        Value::Object(object) => object,
        Value::Null => return Ok(Value::Null),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into an object",
                json_kind(&other)
            ));
        }
    };
    let mut canonical = Map::with_capacity(object.len());
    for (key, value) in object {
        let field = find(fields, &key).ok_or_else(|| format!("json: unknown field \"{key}\""))?;
        let value = match (&field.shape, value) {
            (_, Value::Null) => Value::Null,
            (Shape::Plain, value) => value,
            (Shape::Object(inner), value) => canonicalize(value, inner)?,
            (Shape::ArrayOf(inner), Value::Array(items)) => Value::Array(
                items
                    .into_iter()
                    .map(|item| canonicalize(item, inner))
                    .collect::<Result<_, _>>()?,
            ),
            (Shape::MapOf(inner), Value::Object(map)) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| Ok((k, canonicalize(v, inner)?)))
                    .collect::<Result<_, String>>()?,
            ),
            (Shape::ArrayOf(_) | Shape::MapOf(_), other) => {
                return Err(format!(
                    "json: cannot unmarshal {} into field {}",
                    json_kind(&other),
                    field.name
                ));
            }
        };
        canonical.insert(field.name.to_owned(), value);
    }
    Ok(Value::Object(canonical))
}

/// The field `key` names: an exact match first, then any spelling, ignoring case, as Go does.
fn find<'a>(fields: &'a [Field], key: &str) -> Option<&'a Field> {
    fields.iter().find(|f| f.name == key).or_else(|| {
        fields.iter().find(|f| {
            f.name.eq_ignore_ascii_case(key)
                || f.aliases.iter().any(|a| a.eq_ignore_ascii_case(key))
        })
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A Go duration: `"10s"`, `"1m30s"`, `"250ms"`, or a number of nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GoDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<GoDuration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Nanos(u64),
            Text(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Nanos(nanos) => Ok(GoDuration(Duration::from_nanos(nanos))),
            Repr::Text(text) => parse_go_duration(&text)
                .map(GoDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a Go duration string such as `1h2m3.5s` or `300ms`; negative durations are refused,
/// since nothing in a check or a wait can be negative.
pub(crate) fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration \"{text}\"");
    let rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = rest;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration \"{text}\""))?;
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{text}\""
                ));
            }
        };
        total_nanos += value * nanos_per_unit;
        rest = after;
    }
    if total_nanos > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Formats a duration the way Go prints one: `10s`, `1m30s`, `250ms`.
pub(crate) fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_fraction(nanos as f64 / 1e3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos as f64 / 1e6));
    }
    let secs = duration.as_secs();
    let (hours, minutes) = (secs / 3600, (secs % 3600) / 60);
    let seconds = (secs % 60) as f64 + f64::from(duration.subsec_nanos()) / 1e9;
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    text.push_str(&format!("{}s", trim_fraction(seconds)));
    text
}

fn trim_fraction(value: f64) -> String {
    let text = format!("{value:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: &[Field] = &[
        field("Passing", Shape::Plain),
        field("Warning", Shape::Plain),
    ];
    const OUTER: &[Field] = &[
        field("Name", Shape::Plain),
        field("Meta", Shape::Plain),
        aliased("EnableTagOverride", &["enable_tag_override"], Shape::Plain),
        field("Weights", Shape::Object(INNER)),
        field("Checks", Shape::ArrayOf(INNER)),
        field("Tagged", Shape::MapOf(INNER)),
    ];

    #[test]
    fn keys_match_case_insensitively_with_aliases_and_data_maps_untouched() {
        let body = serde_json::json!({
            "name": "web",
            "META": {"Some-Key": "v"},
            "enable_tag_override": true,
            "weights": {"passing": 3},
            "checks": [{"WARNING": 1}],
            "tagged": {"lan": {"passing": 2}},
        });
        let canonical = canonicalize(body, OUTER).unwrap();
        assert_eq!(
            canonical,
            serde_json::json!({
                "Name": "web",
                "Meta": {"Some-Key": "v"},
                "EnableTagOverride": true,
                "Weights": {"Passing": 3},
                "Checks": [{"Warning": 1}],
                "Tagged": {"lan": {"Passing": 2}},
            })
        );
    }

    #[test]
    fn unknown_fields_are_refused_at_any_depth() {
        let error = canonicalize(serde_json::json!({"Nmae": "x"}), OUTER).unwrap_err();
        assert_eq!(error, "json: unknown field \"Nmae\"");
        let error =
            canonicalize(serde_json::json!({"Weights": {"Critical": 1}}), OUTER).unwrap_err();
        assert_eq!(error, "json: unknown field \"Critical\"");
        let error = canonicalize(serde_json::json!([1]), OUTER).unwrap_err();
        assert!(error.contains("cannot unmarshal array"), "{error}");
    }

    #[test]
    fn go_durations() {
        let ok = |text: &str| parse_go_duration(text).unwrap();
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("3us"), Duration::from_micros(3));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in ["", "10", "s", "1x", "-1s", "1.2.3s", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn durations_are_strings_or_nanoseconds() {
        let parse = |json: &str| serde_json::from_str::<GoDuration>(json).map(|d| d.0);
        assert_eq!(parse("\"15s\"").unwrap(), Duration::from_secs(15));
        assert_eq!(parse("1000000000").unwrap(), Duration::from_secs(1));
        assert!(parse("\"15\"").is_err());
        assert!(parse("true").is_err());
    }
}
