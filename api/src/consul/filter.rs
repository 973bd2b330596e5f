//! `?filter=`: the common subset of Consul's filter expressions (go-bexpr), over the JSON each
//! listing answers with.
//!
//! The grammar: `Selector == value`, `!=`, `value in Selector`, `not in`, `Selector contains
//! value`, `not contains`, `Selector matches "regex"`, `not matches`, `Selector is empty`,
//! `is not empty`, joined with `and`, `or`, `not` and parentheses. Selectors are dotted field
//! names (`Service.Tags`, `ServiceMeta.env`, `Node.Meta.rack`), checked against the listing's
//! [`Schema`] when the expression is parsed, so a misspelt field is a 400 naming it, never a
//! filter that silently matches nothing. Values are `"quoted"`, `` `raw` ``, or bare words.
//!
//! As in bexpr: `in` and `contains` test membership in a list, a key of a map, or a substring
//! of a string; a selector through a list of objects (`Checks.Status`) matches when any element
//! does; a missing map key reads as the empty string.

use std::fmt;

use serde_json::Value;

/// The type of a field, as far as filtering goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Str,
    Num,
    Bool,
    List(&'static Ty),
    Map(&'static Ty),
    Struct(&'static [(&'static str, Ty)]),
}

/// The fields of what a listing answers, one of them per element.
pub(crate) type Schema = &'static [(&'static str, Ty)];

const STR_LIST: Ty = Ty::List(&Ty::Str);
const STR_MAP: Ty = Ty::Map(&Ty::Str);
const WEIGHTS: Ty = Ty::Struct(&[("Passing", Ty::Num), ("Warning", Ty::Num)]);
const ADDRESS_PORT: Ty = Ty::Struct(&[("Address", Ty::Str), ("Port", Ty::Num)]);

/// A registered instance as the agent shows it ([`super::wire::AgentService`]).
pub(crate) const AGENT_SERVICE: Schema = &[
    ("ID", Ty::Str),
    ("Service", Ty::Str),
    ("Tags", STR_LIST),
    ("Meta", STR_MAP),
    ("Port", Ty::Num),
    ("Address", Ty::Str),
    ("TaggedAddresses", Ty::Map(&ADDRESS_PORT)),
    ("SocketPath", Ty::Str),
    ("Weights", WEIGHTS),
    ("EnableTagOverride", Ty::Bool),
    ("Datacenter", Ty::Str),
    ("CreateIndex", Ty::Num),
    ("ModifyIndex", Ty::Num),
    ("ContentHash", Ty::Str),
];

/// A check ([`super::wire::HealthCheck`]).
pub(crate) const HEALTH_CHECK: Schema = &[
    ("Node", Ty::Str),
    ("CheckID", Ty::Str),
    ("Name", Ty::Str),
    ("Status", Ty::Str),
    ("Notes", Ty::Str),
    ("Output", Ty::Str),
    ("ServiceID", Ty::Str),
    ("ServiceName", Ty::Str),
    ("ServiceTags", STR_LIST),
    ("Type", Ty::Str),
    ("Interval", Ty::Str),
    ("Timeout", Ty::Str),
    ("ExposedPort", Ty::Num),
    ("Definition", Ty::Struct(&[])),
    ("CreateIndex", Ty::Num),
    ("ModifyIndex", Ty::Num),
];

/// A node ([`super::wire::Node`]).
pub(crate) const NODE: Schema = &[
    ("ID", Ty::Str),
    ("Node", Ty::Str),
    ("Address", Ty::Str),
    ("Datacenter", Ty::Str),
    ("TaggedAddresses", STR_MAP),
    ("Meta", STR_MAP),
    ("CreateIndex", Ty::Num),
    ("ModifyIndex", Ty::Num),
];

/// An instance flat with its node ([`super::wire::CatalogService`]).
pub(crate) const CATALOG_SERVICE: Schema = &[
    ("ID", Ty::Str),
    ("Node", Ty::Str),
    ("Address", Ty::Str),
    ("Datacenter", Ty::Str),
    ("TaggedAddresses", STR_MAP),
    ("NodeMeta", STR_MAP),
    ("ServiceKind", Ty::Str),
    ("ServiceID", Ty::Str),
    ("ServiceName", Ty::Str),
    ("ServiceTags", STR_LIST),
    ("ServiceAddress", Ty::Str),
    ("ServiceTaggedAddresses", Ty::Map(&ADDRESS_PORT)),
    ("ServiceWeights", WEIGHTS),
    ("ServiceMeta", STR_MAP),
    ("ServicePort", Ty::Num),
    ("ServiceSocketPath", Ty::Str),
    ("ServiceEnableTagOverride", Ty::Bool),
    ("CreateIndex", Ty::Num),
    ("ModifyIndex", Ty::Num),
];

/// An instance with its node and checks ([`super::wire::ServiceEntry`]).
pub(crate) const SERVICE_ENTRY: Schema = &[
    ("Node", Ty::Struct(NODE)),
    ("Service", Ty::Struct(AGENT_SERVICE)),
    ("Checks", Ty::List(&Ty::Struct(HEALTH_CHECK))),
];

/// A filter expression, parsed and checked against a schema.
#[derive(Debug, Clone)]
pub(crate) struct Filter(Expr);

#[derive(Debug, Clone)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Match),
}

#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    /// The type the selector ends at.
    ty: Ty,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    In(String),
    Matches(regex::Regex),
    Empty,
}

/// Why an expression was refused; Consul answers it with 400.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FilterError(String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Failed to create boolean expression evaluator: {}",
            self.0
        )
    }
}

impl Filter {
    /// Parses `text` for elements of `schema`.
    pub(crate) fn parse(text: &str, schema: Schema) -> Result<Filter, FilterError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            schema,
            depth: 0,
        };
        let expr = parser.or()?;
        if let Some(extra) = parser.peek() {
            return Err(FilterError(format!(
                "unexpected {extra} after the expression"
            )));
        }
        Ok(Filter(expr))
    }

    /// Whether `element` (one element of a listing, as JSON) matches.
    pub(crate) fn matches(&self, element: &Value) -> bool {
        eval(&self.0, element)
    }
}

fn eval(expr: &Expr, element: &Value) -> bool {
    match expr {
        Expr::And(a, b) => eval(a, element) && eval(b, element),
        Expr::Or(a, b) => eval(a, element) || eval(b, element),
        Expr::Not(a) => !eval(a, element),
        Expr::Match(m) => {
            let mut found = Vec::new();
            resolve(element, &m.selector, &mut found);
            if found.is_empty() {
                // A missing map key, or an absent optional field: the empty value.
                found.push(&Value::Null);
            }
            found.iter().any(|value| test(&m.op, m.ty, value))
        }
    }
}

/// Every value `path` reaches from `value`, through lists of objects.
fn resolve<'v>(value: &'v Value, path: &[String], found: &mut Vec<&'v Value>) {
    let Some((first, rest)) = path.split_first() else {
        found.push(value);
        return;
    };
    match value {
        Value::Object(fields) => {
            if let Some(next) = fields.get(first) {
                resolve(next, rest, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                resolve(item, path, found);
            }
        }
        _ => {}
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn test(op: &Op, ty: Ty, value: &Value) -> bool {
    match op {
        Op::Equal(literal) => match ty {
            Ty::Num => value
                .as_f64()
                .zip(literal.parse::<f64>().ok())
                .is_some_and(|(a, b)| a == b),
            Ty::Bool => value.as_bool().unwrap_or(false).to_string() == *literal,
            _ => as_text(value) == *literal,
        },
        Op::In(literal) => match value {
            Value::Array(items) => items.iter().any(|item| as_text(item) == *literal),
            Value::Object(fields) => fields.contains_key(literal),
            other => as_text(other).contains(literal.as_str()),
        },
        Op::Matches(regex) => regex.is_match(&as_text(value)),
        Op::Empty => match value {
            Value::Array(items) => items.is_empty(),
            Value::Object(fields) => fields.is_empty(),
            other => as_text(other).is_empty(),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Equal,
    NotEqual,
    Open,
    Close,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(word) => write!(f, "{word:?}"),
            Token::Quoted(text) => write!(f, "\"{text}\""),
            Token::Equal => f.write_str("\"==\""),
            Token::NotEqual => f.write_str("\"!=\""),
            Token::Open => f.write_str("\"(\""),
            Token::Close => f.write_str("\")\""),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '=' | '!' => {
                chars.next();
                if chars.next().map(|(_, c)| c) != Some('=') {
                    return Err(FilterError(format!("expected \"{c}=\" at {at}")));
                }
                tokens.push(if c == '=' {
                    Token::Equal
                } else {
                    Token::NotEqual
                });
            }
            '"' | '`' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(FilterError(format!("unterminated string at {at}"))),
                        Some((_, close)) if close == c => break,
                        Some((_, '\\')) if c == '"' => match chars.next() {
                            // `\"` and `\\` stand for themselves; any other escape is kept
                            // whole, so a regular expression's `\d` means what it says.
                            Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                            Some((_, other)) => {
                                value.push('\\');
                                value.push(other);
                            }
                            None => {
                                return Err(FilterError(format!("unterminated string at {at}")));
                            }
                        },
                        Some((_, other)) => value.push(other),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            _ => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '=' | '!' | '"' | '`') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// How deeply `not` and parentheses may nest: parsing, evaluating and dropping an expression
/// recurse, and a request line is long enough to overflow a thread's stack otherwise.
const MAX_DEPTH: usize = 64;

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    schema: Schema,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(word)) if word == keyword) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut expr = self.and()?;
        while self.keyword("or") {
            expr = Expr::Or(Box::new(expr), Box::new(self.and()?));
        }
        Ok(expr)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut expr = self.not()?;
        while self.keyword("and") {
            expr = Expr::And(Box::new(expr), Box::new(self.not()?));
        }
        Ok(expr)
    }

    fn not(&mut self) -> Result<Expr, FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let expr = self.not_inner();
        self.depth -= 1;
        expr
    }

    fn not_inner(&mut self) -> Result<Expr, FilterError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let expr = self.or()?;
            if self.next() != Some(Token::Close) {
                return Err(FilterError("missing \")\"".into()));
            }
            return Ok(expr);
        }
        self.matching()
    }

    /// A value: a quoted string or a bare word.
    fn value(&mut self) -> Result<String, FilterError> {
        match self.next() {
            Some(Token::Quoted(value) | Token::Word(value)) => Ok(value),
            Some(other) => Err(FilterError(format!("expected a value, found {other}"))),
            None => Err(FilterError("expected a value at the end".into())),
        }
    }

    fn matching(&mut self) -> Result<Expr, FilterError> {
        let first = match self.next() {
            Some(token @ (Token::Word(_) | Token::Quoted(_))) => token,
            Some(other) => return Err(FilterError(format!("unexpected {other}"))),
            None => return Err(FilterError("the expression ends too soon".into())),
        };
        // `value in Selector` and `value not in Selector`.
        let negated_in = matches!(
            (self.tokens.get(self.at), self.tokens.get(self.at + 1)),
            (Some(Token::Word(not)), Some(Token::Word(is_in))) if not == "not" && is_in == "in"
        );
        if negated_in || matches!(self.peek(), Some(Token::Word(word)) if word == "in") {
            self.at += if negated_in { 2 } else { 1 };
            let value = match first {
                Token::Word(value) | Token::Quoted(value) => value,
                _ => unreachable!("only values were taken"),
            };
            let (selector, ty) = self.selector()?;
            check_collection(&selector, ty, "in")?;
            let matching = Expr::Match(Match {
                selector,
                ty,
                op: Op::In(value),
            });
            return Ok(negate(negated_in, matching));
        }
        let Token::Word(path) = first else {
            return Err(FilterError(format!("expected a selector, found {first}")));
        };
        let (selector, ty) = self.resolve_selector(&path)?;
        let (negated, op) = match self.next() {
            Some(Token::Equal) => (false, self.equal(&selector, ty)?),
            Some(Token::NotEqual) => (true, self.equal(&selector, ty)?),
            Some(Token::Word(word)) if word == "is" => {
                let negated = self.keyword("not");
                if !self.keyword("empty") {
                    return Err(FilterError("expected \"empty\" after \"is\"".into()));
                }
                check_collection(&selector, ty, "is empty")?;
                (negated, Op::Empty)
            }
            Some(Token::Word(word)) if word == "not" || word == "contains" || word == "matches" => {
                let negated = word == "not";
                let verb = if negated {
                    match self.next() {
                        Some(Token::Word(verb)) if verb == "contains" || verb == "matches" => verb,
                        other => {
                            return Err(FilterError(format!(
                                "expected \"contains\" or \"matches\" after \"not\", found {}",
                                other.map_or("the end".to_owned(), |t| t.to_string())
                            )));
                        }
                    }
                } else {
                    word
                };
                let value = self.value()?;
                if verb == "contains" {
                    check_collection(&selector, ty, "contains")?;
                    (negated, Op::In(value))
                } else {
                    if !matches!(ty, Ty::Str) {
                        return Err(FilterError(format!(
                            "\"matches\" needs a string field, and {} is not one",
                            selector.join(".")
                        )));
                    }
                    let regex = regex::Regex::new(&value).map_err(|e| {
                        FilterError(format!("invalid regular expression {value:?}: {e}"))
                    })?;
                    (negated, Op::Matches(regex))
                }
            }
            Some(other) => {
                return Err(FilterError(format!(
                    "unsupported operator {other} after {}: shoal takes ==, !=, in, not in, contains, not contains, matches, not matches, is empty and is not empty",
                    selector.join(".")
                )));
            }
            None => {
                return Err(FilterError(format!(
                    "missing an operator after {}",
                    selector.join(".")
                )));
            }
        };
        Ok(negate(negated, Expr::Match(Match { selector, ty, op })))
    }

    fn equal(&mut self, selector: &[String], ty: Ty) -> Result<Op, FilterError> {
        let value = self.value()?;
        let fits = match ty {
            Ty::Str => true,
            Ty::Num => value.parse::<f64>().is_ok(),
            Ty::Bool => value == "true" || value == "false",
            Ty::List(_) | Ty::Map(_) | Ty::Struct(_) => {
                return Err(FilterError(format!(
                    "{} is not a single value: use \"in\", \"contains\" or \"is empty\"",
                    selector.join(".")
                )));
            }
        };
        if !fits {
            return Err(FilterError(format!(
                "failed to coerce value {value:?} for {}",
                selector.join(".")
            )));
        }
        Ok(Op::Equal(value))
    }

    fn selector(&mut self) -> Result<(Vec<String>, Ty), FilterError> {
        match self.next() {
            Some(Token::Word(path)) => self.resolve_selector(&path),
            Some(other) => Err(FilterError(format!("expected a selector, found {other}"))),
            None => Err(FilterError("expected a selector at the end".into())),
        }
    }

    /// Checks a dotted selector against the schema, and gives its type.
    fn resolve_selector(&self, path: &str) -> Result<(Vec<String>, Ty), FilterError> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        let invalid = || FilterError(format!("Selector {path:?} is not valid"));
        if parts.iter().any(String::is_empty) {
            return Err(invalid());
        }
        let mut ty = Ty::Struct(self.schema);
        for part in &parts {
            ty = step(ty, part).ok_or_else(invalid)?;
        }
        Ok((parts, ty))
    }
}

/// The type of field `part` of a value of type `ty`, through lists.
fn step(ty: Ty, part: &str) -> Option<Ty> {
    match ty {
        Ty::Struct(fields) => fields
            .iter()
            .find(|(name, _)| *name == part)
            .map(|(_, ty)| *ty),
        Ty::Map(values) => Some(*values),
        Ty::List(items) => step(*items, part),
        Ty::Str | Ty::Num | Ty::Bool => None,
    }
}

fn check_collection(selector: &[String], ty: Ty, op: &str) -> Result<(), FilterError> {
    match ty {
        Ty::List(_) | Ty::Map(_) | Ty::Str => Ok(()),
        _ => Err(FilterError(format!(
            "\"{op}\" needs a list, a map or a string, and {} is not one",
            selector.join(".")
        ))),
    }
}

fn negate(negated: bool, expr: Expr) -> Expr {
    if negated {
        Expr::Not(Box::new(expr))
    } else {
        expr
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keeps(expr: &str, schema: Schema, element: &Value) -> bool {
        Filter::parse(expr, schema)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches(element)
    }

    #[test]
    fn the_subset_of_bexpr_matches_as_consul_does() {
        let entry = json!({
            "ServiceName": "web", "ServiceTags": ["v1", "primary"], "ServicePort": 8080,
            "ServiceMeta": {"env": "prod", "team": "a b"}, "ServiceEnableTagOverride": false,
            "NodeMeta": {}, "ServiceAddress": "10.0.0.5",
        });
        for (expr, expected) in [
            ("ServiceName == web", true),
            ("ServiceName == \"web\"", true),
            ("ServiceName != web", false),
            ("ServicePort == 8080", true),
            ("ServicePort == 80", false),
            ("ServiceEnableTagOverride == false", true),
            ("v1 in ServiceTags", true),
            ("\"v2\" in ServiceTags", false),
            ("v2 not in ServiceTags", true),
            ("ServiceTags contains primary", true),
            ("ServiceTags not contains primary", false),
            ("env in ServiceMeta", true),
            ("ServiceMeta.env == prod", true),
            ("ServiceMeta.team == `a b`", true),
            ("ServiceMeta.missing == \"\"", true),
            ("ServiceMeta.missing is empty", true),
            ("NodeMeta is empty", true),
            ("ServiceTags is not empty", true),
            ("ServiceAddress matches \"^10\\\\.0\\\\.\"", true),
            ("ServiceAddress matches \"^\\d+\\.0\"", true),
            ("ServiceAddress not matches `^192`", true),
            ("ServiceAddress contains \"0.0\"", true),
            ("ServiceName == web and v1 in ServiceTags", true),
            ("ServiceName == api or ServicePort == 8080", true),
            ("not (ServiceName == web)", false),
            (
                "not ServiceName == api and (v3 in ServiceTags or ServiceMeta.env == prod)",
                true,
            ),
        ] {
            assert_eq!(keeps(expr, CATALOG_SERVICE, &entry), expected, "{expr}");
        }
    }

    #[test]
    fn selectors_through_lists_match_any_element() {
        let entry = json!({
            "Node": {"Node": "n1", "Meta": {"rack": "r1"}},
            "Service": {"Service": "web", "Tags": ["v1"]},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": "c", "Status": "critical"}],
        });
        assert!(keeps("Checks.Status == critical", SERVICE_ENTRY, &entry));
        assert!(!keeps("Checks.Status != critical", SERVICE_ENTRY, &entry));
        assert!(keeps(
            "Node.Meta.rack == r1 and v1 in Service.Tags",
            SERVICE_ENTRY,
            &entry
        ));
    }

    /// Every field a schema names, by dotted path, descending into structs (not maps).
    fn paths(schema: Schema, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        for (name, ty) in schema {
            let path = format!("{prefix}{name}");
            let mut inner = *ty;
            while let Ty::List(items) = inner {
                inner = *items;
            }
            if let Ty::Struct(fields) = inner
                && !fields.is_empty()
            {
                paths(fields, &format!("{path}."), out);
            } else {
                out.insert(path);
            }
        }
    }

    /// The same for a value as serialized, with every optional field filled in.
    fn value_paths(value: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        let Value::Object(fields) = value else { return };
        for (name, field) in fields {
            let path = format!("{prefix}{name}");
            let inner = match field {
                Value::Array(items) => items.first().unwrap_or(&Value::Null),
                other => other,
            };
            match inner {
                Value::Object(inner_fields) if !inner_fields.is_empty() && !is_map_field(name) => {
                    value_paths(inner, &format!("{path}."), out)
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    fn is_map_field(name: &str) -> bool {
        name.ends_with("Meta") || name.ends_with("TaggedAddresses")
    }

    #[test]
    fn schemas_name_every_field_the_listings_answer_with() {
        use super::super::wire::{
            AddressPort, AgentService, CatalogService, Empty, HealthCheck, Node, ServiceEntry,
            Weights,
        };
        use std::collections::BTreeMap;
        let weights = Weights {
            passing: 1,
            warning: 1,
        };
        let tagged = BTreeMap::from([(
            "lan".to_owned(),
            AddressPort {
                address: "a".into(),
                port: 1,
            },
        )]);
        let service = AgentService {
            id: "i".into(),
            service: "s".into(),
            tags: vec!["t".into()],
            meta: BTreeMap::from([("k".into(), "v".into())]),
            port: 1,
            address: "a".into(),
            tagged_addresses: tagged.clone(),
            socket_path: "/s".into(),
            weights,
            enable_tag_override: false,
            datacenter: Some("dc1".into()),
            create_index: Some(1),
            modify_index: Some(1),
            content_hash: Some("h".into()),
        };
        let check = HealthCheck {
            node: "n".into(),
            check_id: "c".into(),
            name: "c".into(),
            status: "passing",
            notes: String::new(),
            output: String::new(),
            service_id: "i".into(),
            service_name: "s".into(),
            service_tags: vec![],
            kind: "ttl",
            interval: String::new(),
            timeout: String::new(),
            exposed_port: 0,
            definition: Empty {},
            create_index: 1,
            modify_index: 1,
        };
        let node = Node {
            id: "n".into(),
            node: "n".into(),
            address: "a".into(),
            datacenter: "dc1".into(),
            tagged_addresses: BTreeMap::from([("lan".to_owned(), "a".to_owned())]),
            meta: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            create_index: 1,
            modify_index: 1,
        };
        let flat = CatalogService {
            id: "n".into(),
            node: "n".into(),
            address: "a".into(),
            datacenter: "dc1".into(),
            tagged_addresses: BTreeMap::from([("lan".to_owned(), "a".to_owned())]),
            node_meta: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            service_kind: "",
            service_id: "i".into(),
            service_name: "s".into(),
            service_tags: vec![],
            service_address: "a".into(),
            service_tagged_addresses: tagged,
            service_weights: weights,
            service_meta: BTreeMap::new(),
            service_port: 1,
            service_socket_path: String::new(),
            service_enable_tag_override: false,
            create_index: 1,
            modify_index: 1,
        };
        let entry = ServiceEntry {
            node: node.clone(),
            service: service.clone(),
            checks: vec![check.clone()],
        };
        for (schema, value) in [
            (AGENT_SERVICE, serde_json::to_value(&service).unwrap()),
            (HEALTH_CHECK, serde_json::to_value(&check).unwrap()),
            (NODE, serde_json::to_value(&node).unwrap()),
            (CATALOG_SERVICE, serde_json::to_value(&flat).unwrap()),
            (SERVICE_ENTRY, serde_json::to_value(&entry).unwrap()),
        ] {
            let (mut named, mut answered) = (Default::default(), Default::default());
            paths(schema, "", &mut named);
            value_paths(&value, "", &mut answered);
            assert_eq!(named, answered);
        }
    }

    #[test]
    fn what_is_outside_the_subset_is_refused_naming_it() {
        for (expr, message) in [
            (
                "Servicename == web",
                "Selector \"Servicename\" is not valid",
            ),
            ("ServiceTags == v1", "ServiceTags is not a single value"),
            ("ServicePort == eighty", "failed to coerce value \"eighty\""),
            ("ServicePort > 80", "unsupported operator \">\""),
            ("ServiceName ~= web", "expected"),
            ("ServiceName == web and", "ends too soon"),
            ("(ServiceName == web", "missing \")\""),
            ("ServiceName == \"web", "unterminated string"),
            ("ServicePort matches 80", "\"matches\" needs a string field"),
            ("ServiceName matches \"(\"", "invalid regular expression"),
            ("ServiceName is full", "expected \"empty\""),
            (
                "ServiceName == web web",
                "unexpected \"web\" after the expression",
            ),
            (&"(".repeat(10_000), "nests deeper than 64"),
            (&"not ".repeat(10_000), "nests deeper than 64"),
        ] {
            let error = Filter::parse(expr, CATALOG_SERVICE)
                .unwrap_err()
                .to_string();
            assert!(error.contains(message), "{expr}: {error}");
        }
    }
}
