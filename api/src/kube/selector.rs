//! Kubernetes label and field selectors: the `labelSelector` and `fieldSelector` query
//! parameters of list and watch calls, and a Deployment's `spec.selector`.
//!
//! The label selector grammar, its validation and its error messages follow
//! k8s.io/apimachinery/pkg/labels, so that `kubectl get -l` and the client libraries see the
//! same answers as from kube-apiserver; [`LabelSelector`]'s `Display` is the canonical text
//! form kube-apiserver writes into a Scale's `status.selector` and `kubectl get` shows.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Why a selector was refused; the message names the offending part, as kube-apiserver's does.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    InvalidRequirement(String),
    #[error("found '{0}', expected: ',' or 'end of string'")]
    TrailingText(String),
    #[error("invalid label selector: {0}")]
    InvalidLabelSelector(String),
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    InvalidFieldTerm { selector: String, term: String },
    #[error("invalid field selector value {0:?}: only \\\\, \\, and \\= may be escaped")]
    InvalidEscape(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and deduplicated, so that equal selectors compare and print equal; one value for
    /// `=` and `!=`, none for `Exists` and `DoesNotExist`.
    values: Vec<String>,
}

impl Requirement {
    fn new(
        key: &str,
        operator: Operator,
        values: Vec<String>,
    ) -> Result<Requirement, SelectorError> {
        validate_key(key).map_err(SelectorError::InvalidRequirement)?;
        for value in &values {
            validate_value(key, value).map_err(SelectorError::InvalidRequirement)?;
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_owned(),
            operator,
            values,
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let in_values = value.is_some_and(|value| self.values.contains(value));
        match self.operator {
            Operator::Equals | Operator::In => in_values,
            Operator::NotEquals | Operator::NotIn => !in_values,
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let values = self.values.join(",");
        match self.operator {
            Operator::Equals => write!(formatter, "{key}={values}"),
            Operator::NotEquals => write!(formatter, "{key}!={values}"),
            Operator::In => write!(formatter, "{key} in ({values})"),
            Operator::NotIn => write!(formatter, "{key} notin ({values})"),
            Operator::Exists => write!(formatter, "{key}"),
            Operator::DoesNotExist => write!(formatter, "!{key}"),
        }
    }
}

/// A label selector: its requirements, ANDed; none selects everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct LabelSelector {
    /// Sorted by key (stably), as kube-apiserver keeps them, for a canonical text form.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    fn from_requirements(mut requirements: Vec<Requirement>) -> LabelSelector {
        requirements.sort_by(|left, right| left.key.cmp(&right.key));
        LabelSelector { requirements }
    }

    /// Parses the `labelSelector` query parameter; the empty string selects everything.
    pub(crate) fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        Parser {
            tokens: lex(text),
            position: 0,
        }
        .selector()
        .map(LabelSelector::from_requirements)
    }

    /// From a `matchLabels` map and `matchExpressions` list (a Deployment's spec.selector), as serde_json values:
    /// matchExpressions elements are {"key","operator":"In|NotIn|Exists|DoesNotExist","values":[..]}.
    pub(crate) fn from_json(selector: &serde_json::Value) -> Result<LabelSelector, SelectorError> {
        let invalid = SelectorError::InvalidLabelSelector;
        let selector = match selector {
            // An absent selector has nothing to require.
            Value::Null => return Ok(LabelSelector::default()),
            Value::Object(selector) => selector,
            other => return Err(invalid(format!("expected an object, found {other}"))),
        };
        let mut requirements = Vec::new();
        match selector.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let value = value.as_str().ok_or_else(|| {
                        invalid(format!(
                            "matchLabels[{key}]: expected a string, found {value}"
                        ))
                    })?;
                    requirements.push(Requirement::new(
                        key,
                        Operator::Equals,
                        vec![value.to_owned()],
                    )?);
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "matchLabels: expected an object, found {other}"
                )));
            }
        }
        match selector.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(expressions)) => {
                for (index, expression) in expressions.iter().enumerate() {
                    requirements.push(requirement_from_expression(expression, index)?);
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "matchExpressions: expected a list, found {other}"
                )));
            }
        }
        Ok(LabelSelector::from_requirements(requirements))
    }

    pub(crate) fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| requirement.matches(labels))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, requirement) in self.requirements.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{requirement}")?;
        }
        Ok(())
    }
}

fn requirement_from_expression(
    expression: &Value,
    index: usize,
) -> Result<Requirement, SelectorError> {
    let invalid = |message: String| {
        SelectorError::InvalidLabelSelector(format!("matchExpressions[{index}].{message}"))
    };
    let key = expression
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("key: Required value".to_owned()))?;
    let operator = expression
        .get("operator")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("operator: Required value".to_owned()))?;
    let values = match expression.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values
            .iter()
            .map(|value| value.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("values: expected a list of strings".to_owned()))?,
        Some(other) => return Err(invalid(format!("values: expected a list, found {other}"))),
    };
    let operator = match operator {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(invalid(format!(
                "operator: Invalid value: {other:?}: not a valid label selector operator"
            )));
        }
    };
    let wants_values = matches!(operator, Operator::In | Operator::NotIn);
    if wants_values && values.is_empty() {
        return Err(invalid(
            "values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                .to_owned(),
        ));
    }
    if !wants_values && !values.is_empty() {
        return Err(invalid(
            "values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                .to_owned(),
        ));
    }
    Requirement::new(key, operator, values)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A run of characters that are neither whitespace nor operators; `in` and `notin` too,
    /// since they are values where a value is expected.
    Word(String),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    OpenParenthesis,
    CloseParenthesis,
    Comma,
    /// `<`, `>` and any other run of operator characters that is no operator we know.
    Unknown(String),
    End,
}

impl Token {
    /// How the token reads in an error message, as kube-apiserver quotes it.
    fn text(&self) -> &str {
        match self {
            Token::Word(text) | Token::Unknown(text) => text,
            Token::Not => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::OpenParenthesis => "(",
            Token::CloseParenthesis => ")",
            Token::Comma => ",",
            Token::End => "",
        }
    }
}

fn is_operator_char(character: char) -> bool {
    matches!(character, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

fn lex(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(first) = rest.chars().next() {
        let (token, length) = if is_operator_char(first) {
            match rest.get(..2) {
                Some("==") => (Token::DoubleEquals, 2),
                Some("!=") => (Token::NotEquals, 2),
                _ => match first {
                    '=' => (Token::Equals, 1),
                    '!' => (Token::Not, 1),
                    '(' => (Token::OpenParenthesis, 1),
                    ')' => (Token::CloseParenthesis, 1),
                    ',' => (Token::Comma, 1),
                    other => (Token::Unknown(other.to_string()), other.len_utf8()),
                },
            }
        } else {
            let length = rest
                .find(|character: char| character.is_whitespace() || is_operator_char(character))
                .unwrap_or(rest.len());
            (Token::Word(rest[..length].to_owned()), length)
        };
        tokens.push(token);
        rest = rest[length..].trim_start();
    }
    tokens.push(Token::End);
    tokens
}

struct Parser {
    /// Always ends with [`Token::End`].
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.tokens.get(self.position).unwrap_or(&Token::End)
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        self.position += 1;
        token
    }

    fn selector(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        if *self.peek() == Token::End {
            return Ok(requirements);
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                Token::End => return Ok(requirements),
                Token::Comma => {}
                other => return Err(SelectorError::TrailingText(other.text().to_owned())),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let syntax = |found: &Token, expected: &str| {
            SelectorError::InvalidRequirement(format!(
                "found '{}', expected: {expected}",
                found.text()
            ))
        };
        let negated = *self.peek() == Token::Not;
        if negated {
            self.next();
        }
        let key = match self.next() {
            Token::Word(key) if key != "in" && key != "notin" => key,
            other => return Err(syntax(&other, "identifier")),
        };
        if negated {
            return Requirement::new(&key, Operator::DoesNotExist, Vec::new());
        }
        let operator = match self.peek() {
            Token::End | Token::Comma => {
                return Requirement::new(&key, Operator::Exists, Vec::new());
            }
            Token::Equals | Token::DoubleEquals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::Word(word) if word == "in" => Operator::In,
            Token::Word(word) if word == "notin" => Operator::NotIn,
            other => return Err(syntax(other, "in, notin, =, ==, !=")),
        };
        self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => match self.peek() {
                // `k=` asks for the empty value, which is a valid one.
                Token::End | Token::Comma => vec![String::new()],
                Token::Word(value) => {
                    let value = value.clone();
                    self.next();
                    vec![value]
                }
                other => return Err(syntax(other, "identifier")),
            },
        };
        Requirement::new(&key, operator, values)
    }

    /// `(a,b)`; an empty element (`(a,)`) is the empty value, as in kube-apiserver.
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        let syntax = |found: &Token, expected: &str| {
            SelectorError::InvalidRequirement(format!(
                "found '{}', expected: {expected}",
                found.text()
            ))
        };
        match self.next() {
            Token::OpenParenthesis => {}
            other => return Err(syntax(&other, "'('")),
        }
        if *self.peek() == Token::CloseParenthesis {
            return Err(SelectorError::InvalidRequirement(
                "for 'in', 'notin' operators, values set can't be empty".to_owned(),
            ));
        }
        let mut values = Vec::new();
        loop {
            match self.peek() {
                Token::Word(value) => {
                    values.push(value.clone());
                    self.next();
                }
                _ => values.push(String::new()),
            }
            match self.next() {
                Token::Comma => {}
                Token::CloseParenthesis => return Ok(values),
                other => return Err(syntax(&other, "',' or ')'")),
            }
        }
    }
}

/// A key as Kubernetes labels take it (shoal_spec's rule, the same as kube-apiserver's).
fn validate_key(key: &str) -> Result<(), String> {
    shoal_spec::check_label_key(key).map_err(|reason| {
        let reason = reason
            .strip_prefix(&format!("key {key:?}: "))
            .unwrap_or(&reason);
        format!("key: Invalid value: {key:?}: {reason}")
    })
}

/// A value as Kubernetes labels take it.
fn validate_value(key: &str, value: &str) -> Result<(), String> {
    shoal_spec::check_label_value(value).map_err(|reason| {
        let reason = reason
            .strip_prefix(&format!("value {value:?}: "))
            .unwrap_or(&reason);
        format!("values[{key}]: Invalid value: {value:?}: {reason}")
    })
}

/// A field selector: its requirements, ANDed; none selects everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct FieldSelector {
    pub(crate) requirements: Vec<FieldRequirement>,
}

/// `field=value` when `equal`, else `field!=value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldRequirement {
    pub(crate) field: String,
    pub(crate) equal: bool,
    pub(crate) value: String,
}

impl FieldSelector {
    pub(crate) fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_unescaped_commas(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let invalid = || SelectorError::InvalidFieldTerm {
                selector: text.to_owned(),
                term: term.to_owned(),
            };
            // The first operator wins, and `!=` and `==` are tried before `=` at each position,
            // as kube-apiserver splits: a field name holds no operator, a value may.
            let (field, equal, value) = term
                .char_indices()
                .find_map(|(index, _)| {
                    let rest = &term[index..];
                    [("!=", false), ("==", true), ("=", true)]
                        .into_iter()
                        .find(|(operator, _)| rest.starts_with(operator))
                        .map(|(operator, equal)| (&term[..index], equal, &rest[operator.len()..]))
                })
                .ok_or_else(invalid)?;
            let field = field.trim();
            if field.is_empty() {
                return Err(invalid());
            }
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                equal,
                value: unescape(value.trim())?,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Checks every requirement's field is in `supported` (else SelectorError naming the field, with the message
    /// `field label not supported: <field>` as kube-apiserver says), then matches with `get(field) -> Option<String>`.
    pub(crate) fn check(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .requirements
            .iter()
            .find(|requirement| !supported.contains(&requirement.field.as_str()))
        {
            Some(requirement) => Err(SelectorError::UnsupportedField(requirement.field.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|requirement| {
            // kube-apiserver's field sets hold every supported field, empty when unset.
            let actual = get(&requirement.field).unwrap_or_default();
            (actual == requirement.value) == requirement.equal
        })
    }
}

/// Splits at commas not preceded by a backslash escape; the escapes stay for [`unescape`].
fn split_unescaped_commas(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        match character {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn unescape(value: &str) -> Result<String, SelectorError> {
    let mut unescaped = String::with_capacity(value.len());
    let mut characters = value.chars();
    while let Some(character) = characters.next() {
        if character != '\\' {
            unescaped.push(character);
            continue;
        }
        match characters.next() {
            Some(escaped @ ('\\' | ',' | '=')) => unescaped.push(escaped),
            _ => return Err(SelectorError::InvalidEscape(value.to_owned())),
        }
    }
    Ok(unescaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_parse_to_their_canonical_form() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("app=hello", "app=hello"),
            ("app==hello", "app=hello"),
            ("app = hello", "app=hello"),
            ("app!=hello", "app!=hello"),
            ("app=", "app="),
            ("tier in (b, a)", "tier in (a,b)"),
            ("tier in (a,a)", "tier in (a)"),
            ("tier in (a,)", "tier in (,a)"),
            ("tier notin (a)", "tier notin (a)"),
            ("tier in (in,notin)", "tier in (in,notin)"),
            ("app", "app"),
            ("!app", "!app"),
            ("  ! app  ", "!app"),
            ("tier in (a,b),app=hello", "app=hello,tier in (a,b)"),
            (
                "example.com/app=x,app.kubernetes.io/name=y",
                "app.kubernetes.io/name=y,example.com/app=x",
            ),
            ("a-b_c.d=E.f-G_h", "a-b_c.d=E.f-G_h"),
        ];
        for (text, canonical) in cases {
            let selector =
                LabelSelector::parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"));
            assert_eq!(selector.to_string(), canonical, "{text:?}");
        }
    }

    #[test]
    fn invalid_label_selectors_are_errors_naming_the_bad_part() {
        let long = "a".repeat(64);
        let cases = [
            (
                "app=hello,",
                "unable to parse requirement: found '', expected: identifier",
            ),
            (
                ",app",
                "unable to parse requirement: found ',', expected: identifier",
            ),
            ("app hello", "found 'hello', expected: in, notin, =, ==, !="),
            ("app=hello)", "found ')', expected: ',' or 'end of string'"),
            ("app=a=b", "found '=', expected: ',' or 'end of string'"),
            ("tier in ()", "values set can't be empty"),
            (
                "tier in (a,b",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            ("tier in a", "found 'a', expected: '('"),
            ("tier notin", "found '', expected: '('"),
            ("app=(", "found '(', expected: identifier"),
            ("app > 3", "found '>', expected: in, notin, =, ==, !="),
            ("-app=x", "key: Invalid value: \"-app\""),
            ("app-=x", "key: Invalid value: \"app-\""),
            ("Example.com/app=x", "prefix \"Example.com\""),
            ("/app=x", "prefix must be a DNS subdomain"),
            ("a/b/c=x", "key: Invalid value: \"a/b/c\""),
            ("example.com/=x", "name part must not be empty"),
            (&format!("{long}=x"), "no more than 63 characters"),
            (&format!("app={long}"), "values[app]: Invalid value"),
            ("app=-x", "values[app]: Invalid value: \"-x\""),
            ("app in (a,b_)", "values[app]: Invalid value: \"b_\""),
            ("in=x", "found 'in', expected: identifier"),
            ("!app=x", "found '=', expected: ',' or 'end of string'"),
        ];
        for (text, expected) in cases {
            match LabelSelector::parse(text) {
                Ok(selector) => panic!("{text:?} parsed as {selector:?}"),
                Err(error) => assert!(error.to_string().contains(expected), "{text:?}: {error}"),
            }
        }
    }

    #[test]
    fn label_selectors_match_labels() {
        let hello = labels(&[("app", "hello"), ("tier", "web")]);
        let cases = [
            ("", true),
            ("app=hello", true),
            ("app=other", false),
            ("app!=other", true),
            ("app!=hello", false),
            ("missing!=x", true),
            ("missing=", false),
            ("tier in (web,db)", true),
            ("tier in (db)", false),
            ("tier notin (db)", true),
            ("tier notin (web)", false),
            ("missing notin (x)", true),
            ("missing in (x,)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=hello,tier=web", true),
            ("app=hello,tier=db", false),
        ];
        for (text, expected) in cases {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.matches(&hello), expected, "{text:?}");
        }
    }

    #[test]
    fn from_json_combines_match_labels_and_match_expressions() {
        let selector = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "hello"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["web", "api"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "owner", "operator": "Exists", "values": []},
            ],
        }))
        .unwrap();
        assert_eq!(
            selector.to_string(),
            "app=hello,!canary,env notin (prod),owner,tier in (api,web)"
        );
        assert!(selector.matches(&labels(&[
            ("app", "hello"),
            ("tier", "web"),
            ("owner", "me")
        ])));
        assert!(!selector.matches(&labels(&[("app", "hello"), ("tier", "web")])));
        assert!(!selector.matches(&labels(&[
            ("app", "hello"),
            ("tier", "web"),
            ("owner", "me"),
            ("canary", "1")
        ])));
        assert!(!selector.matches(&labels(&[
            ("app", "hello"),
            ("tier", "web"),
            ("owner", "me"),
            ("env", "prod")
        ])));
        assert!(!selector.matches(&labels(&[
            ("app", "other"),
            ("tier", "web"),
            ("owner", "me")
        ])));
        assert!(!selector.is_empty());
    }

    #[test]
    fn from_json_of_nothing_is_empty() {
        for selector in [
            json!(null),
            json!({}),
            json!({"matchLabels": {}, "matchExpressions": []}),
        ] {
            let selector = LabelSelector::from_json(&selector).unwrap();
            assert!(selector.is_empty());
            assert!(selector.matches(&labels(&[("any", "thing")])));
        }
    }

    #[test]
    fn from_json_refuses_invalid_selectors() {
        let cases = [
            (json!("app=hello"), "expected an object"),
            (
                json!({"matchLabels": {"app": 1}}),
                "matchLabels[app]: expected a string",
            ),
            (
                json!({"matchLabels": {"-app": "x"}}),
                "key: Invalid value: \"-app\"",
            ),
            (
                json!({"matchExpressions": {}}),
                "matchExpressions: expected a list",
            ),
            (
                json!({"matchExpressions": [{"operator": "Exists"}]}),
                "matchExpressions[0].key: Required value",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
                "\"Gt\"",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                "values: Required value",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}),
                "list of strings",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
                "values: Forbidden",
            ),
        ];
        for (selector, expected) in cases {
            match LabelSelector::from_json(&selector) {
                Ok(parsed) => panic!("{selector} parsed as {parsed:?}"),
                Err(error) => assert!(error.to_string().contains(expected), "{selector}: {error}"),
            }
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        let selectors = [
            LabelSelector::parse("b notin (y,x), a=1, !c, d, e!=2, f in (,z)").unwrap(),
            LabelSelector::from_json(&json!({
                "matchLabels": {"app": "hello", "example.com/team": "core"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
            }))
            .unwrap(),
        ];
        for selector in selectors {
            assert_eq!(
                LabelSelector::parse(&selector.to_string()).unwrap(),
                selector,
                "{selector}"
            );
        }
    }

    #[test]
    fn field_selectors_parse() {
        let requirement = |field: &str, equal, value: &str| FieldRequirement {
            field: field.to_owned(),
            equal,
            value: value.to_owned(),
        };
        let cases = [
            ("", vec![]),
            (
                "metadata.name=hello",
                vec![requirement("metadata.name", true, "hello")],
            ),
            (
                "metadata.name==hello",
                vec![requirement("metadata.name", true, "hello")],
            ),
            (
                "status.phase!=Running, metadata.namespace=default,",
                vec![
                    requirement("status.phase", false, "Running"),
                    requirement("metadata.namespace", true, "default"),
                ],
            ),
            (
                "spec.nodeName=",
                vec![requirement("spec.nodeName", true, "")],
            ),
            ("a=b=c", vec![requirement("a", true, "b=c")]),
            (
                r"a=x\,y\=z\\,b!=1",
                vec![
                    requirement("a", true, r"x,y=z\"),
                    requirement("b", false, "1"),
                ],
            ),
        ];
        for (text, expected) in cases {
            let selector =
                FieldSelector::parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"));
            assert_eq!(selector.requirements, expected, "{text:?}");
        }
    }

    #[test]
    fn invalid_field_selectors_are_errors() {
        let cases = [
            (
                "metadata.name",
                "invalid selector: 'metadata.name'; can't understand 'metadata.name'",
            ),
            ("a=b,c", "can't understand 'c'"),
            ("=x", "can't understand '=x'"),
            (r"a=\x", "invalid field selector value"),
        ];
        for (text, expected) in cases {
            match FieldSelector::parse(text) {
                Ok(selector) => panic!("{text:?} parsed as {selector:?}"),
                Err(error) => assert!(error.to_string().contains(expected), "{text:?}: {error}"),
            }
        }
    }

    #[test]
    fn field_selectors_check_supported_fields() {
        let supported = ["metadata.name", "metadata.namespace"];
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace!=b")
                .unwrap()
                .check(&supported)
                .is_ok()
        );
        assert!(FieldSelector::default().check(&supported).is_ok());
        let error = FieldSelector::parse("metadata.name=a,spec.nodeName=n")
            .unwrap()
            .check(&supported)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "field label not supported: spec.nodeName"
        );
    }

    #[test]
    fn field_selectors_match_with_missing_fields_as_empty() {
        let get = |field: &str| match field {
            "metadata.name" => Some("hello".to_owned()),
            "status.phase" => Some("Running".to_owned()),
            _ => None,
        };
        let cases = [
            ("", true),
            ("metadata.name=hello", true),
            ("metadata.name=other", false),
            ("metadata.name!=other", true),
            ("metadata.name!=hello", false),
            ("metadata.name=hello,status.phase=Running", true),
            ("metadata.name=hello,status.phase=Pending", false),
            ("spec.nodeName=", true),
            ("spec.nodeName!=", false),
            ("spec.nodeName=node-1", false),
            ("spec.nodeName!=node-1", true),
        ];
        for (text, expected) in cases {
            assert_eq!(
                FieldSelector::parse(text).unwrap().matches(get),
                expected,
                "{text:?}"
            );
        }
    }
}
