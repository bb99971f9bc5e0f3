//! Metadata filters: the expression tree, its validation against the collection's declared
//! fields, the reference evaluation on a JSON payload, and the compact text syntax of the CLI.
//!
//! Semantics (per point, on its JSON payload object):
//! * a key is a dotted path into nested objects (`meta.year`);
//! * when the value at a key is an array, a condition holds if it holds for any element;
//! * `match` / `any` compare keywords, integers, floats (numbers compare as numbers) and bools;
//!   `except` holds when the key has a value and none of its values is in the list;
//! * `range` compares numbers, or RFC 3339 datetimes when its bounds are datetimes;
//! * `exists` holds when the key has a non-null value, `is_null` when it has none;
//! * `must` needs all its clauses, `should` at least one (none: true), `must_not` none.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::PointId;

/// Most nesting levels a filter may have.
pub const MAX_DEPTH: usize = 16;

/// A declared payload field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A string compared whole.
    Keyword,
    /// A whole number.
    Integer,
    /// A number.
    Float,
    /// true / false.
    Bool,
    /// An RFC 3339 timestamp string.
    Datetime,
    /// An array of strings (tags).
    KeywordArray,
}

impl FieldType {
    /// Name as written in schemas and errors.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Keyword => "keyword",
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Datetime => "datetime",
            FieldType::KeywordArray => "keyword[]",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "keyword" => FieldType::Keyword,
            "integer" | "int" => FieldType::Integer,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            "datetime" => FieldType::Datetime,
            "keyword[]" | "keyword_array" | "tags" => FieldType::KeywordArray,
            _ => return None,
        })
    }
}

/// Declared fields by key.
pub type Schema = BTreeMap<String, FieldType>;

/// A literal in a condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    /// A string (keyword).
    Str(String),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "{s:?}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Literal {
    fn kind(&self) -> &'static str {
        match self {
            Literal::Str(_) => "string",
            Literal::Int(_) => "integer",
            Literal::Float(_) => "float",
            Literal::Bool(_) => "bool",
        }
    }

    /// Whether a JSON scalar equals this literal (numbers compare as numbers).
    pub fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Literal::Str(a), Value::String(b)) => a == b,
            (Literal::Bool(a), Value::Bool(b)) => a == b,
            (Literal::Int(a), Value::Number(n)) => match n.as_i64() {
                Some(b) => *a == b,
                None => n.as_f64() == Some(*a as f64),
            },
            (Literal::Float(a), Value::Number(n)) => n.as_f64() == Some(*a),
            _ => false,
        }
    }
}

/// Range bounds; numbers, or datetimes as seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Range {
    /// Greater than.
    pub gt: Option<f64>,
    /// Greater than or equal.
    pub gte: Option<f64>,
    /// Less than.
    pub lt: Option<f64>,
    /// Less than or equal.
    pub lte: Option<f64>,
    /// The bounds are datetimes: payload values are RFC 3339 strings.
    pub datetime: bool,
}

impl Range {
    /// Whether `x` is inside every bound.
    pub fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }

    /// The number a payload value stands for, under this range's kind.
    pub fn value_of(&self, v: &Value) -> Option<f64> {
        if self.datetime {
            v.as_str().and_then(parse_datetime)
        } else {
            v.as_f64()
        }
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp.
pub fn parse_datetime(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// One leaf condition. `key` is always the dotted payload path; the other fields are what
/// the variant's line says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Condition {
    /// `key = value`.
    Match { key: String, value: Literal },
    /// `key` is one of `values`.
    Any { key: String, values: Vec<Literal> },
    /// `key` has a value and none is in `values`.
    Except { key: String, values: Vec<Literal> },
    /// `key` is within `range`.
    Range { key: String, range: Range },
    /// `key` has a non-null value.
    Exists { key: String },
    /// `key` has no value (absent or null).
    IsNull { key: String },
    /// The point's id is one of these.
    HasId(Vec<PointId>),
}

impl Condition {
    /// The payload key it reads (`None` for `has_id`).
    pub fn key(&self) -> Option<&str> {
        match self {
            Condition::Match { key, .. }
            | Condition::Any { key, .. }
            | Condition::Except { key, .. }
            | Condition::Range { key, .. }
            | Condition::Exists { key }
            | Condition::IsNull { key } => Some(key),
            Condition::HasId(_) => None,
        }
    }
}

/// A boolean expression over conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Filter {
    /// A leaf.
    Cond(Condition),
    /// All of them.
    Must(Vec<Filter>),
    /// At least one of them (true when empty).
    Should(Vec<Filter>),
    /// None of them.
    MustNot(Vec<Filter>),
}

/// The values at a dotted path: one per array element, nothing when absent or null.
pub fn values_at<'a>(payload: Option<&'a Value>, key: &str) -> Vec<&'a Value> {
    let mut v = match payload {
        Some(v) => v,
        None => return Vec::new(),
    };
    for part in key.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return Vec::new(),
        }
    }
    match v {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().filter(|x| !x.is_null()).collect(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Object(_) => vec![v],
    }
}

impl Filter {
    /// The reference evaluation: does the point (`id`, parsed `payload`) pass?
    pub fn matches(&self, id: &PointId, payload: Option<&Value>) -> bool {
        match self {
            Filter::Must(fs) => fs.iter().all(|f| f.matches(id, payload)),
            Filter::Should(fs) => fs.is_empty() || fs.iter().any(|f| f.matches(id, payload)),
            Filter::MustNot(fs) => !fs.iter().any(|f| f.matches(id, payload)),
            Filter::Cond(c) => match c {
                Condition::HasId(ids) => ids.contains(id),
                Condition::Match { key, value } => {
                    values_at(payload, key).iter().any(|v| value.matches(v))
                }
                Condition::Any { key, values } => values_at(payload, key)
                    .iter()
                    .any(|v| values.iter().any(|l| l.matches(v))),
                Condition::Except { key, values } => {
                    let vs = values_at(payload, key);
                    !vs.is_empty() && !vs.iter().any(|v| values.iter().any(|l| l.matches(v)))
                }
                Condition::Range { key, range } => values_at(payload, key)
                    .iter()
                    .any(|v| range.value_of(v).is_some_and(|x| range.contains(x))),
                Condition::Exists { key } => !values_at(payload, key).is_empty(),
                Condition::IsNull { key } => values_at(payload, key).is_empty(),
            },
        }
    }

    /// Every payload key the filter reads.
    pub fn keys(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit(&mut |c| {
            if let Some(k) = c.key() {
                out.push(k);
            }
        });
        out.sort_unstable();
        out.dedup();
        out
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Condition)) {
        match self {
            Filter::Cond(c) => f(c),
            Filter::Must(fs) | Filter::Should(fs) | Filter::MustNot(fs) => {
                fs.iter().for_each(|x| x.visit(f));
            }
        }
    }

    fn depth(&self) -> usize {
        match self {
            Filter::Cond(_) => 1,
            Filter::Must(fs) | Filter::Should(fs) | Filter::MustNot(fs) => {
                1 + fs.iter().map(Filter::depth).max().unwrap_or(0)
            }
        }
    }

    /// Checks the filter against the declared fields: a literal or range of the wrong type
    /// for a declared field is an error naming the field (`filter.<key>`). Undeclared keys are
    /// allowed (evaluated from payloads).
    pub fn validate(&self, schema: &Schema, max_depth: usize) -> Result<()> {
        if self.depth() > max_depth {
            return Err(Error::invalid(
                "filter",
                format!("nested deeper than {max_depth} levels"),
            ));
        }
        let mut err = None;
        self.visit(&mut |c| {
            if err.is_none() {
                err = check_condition(c, schema).err();
            }
        });
        err.map_or(Ok(()), Err)
    }
}

/// A payload key: dot-separated non-empty parts, at most 256 bytes.
pub fn validate_key(key: &str, field: &str) -> Result<()> {
    if key.is_empty() || key.len() > 256 || key.split('.').any(str::is_empty) {
        return Err(Error::invalid(
            field,
            format!("bad key {key:?}: dot-separated, non-empty parts, at most 256 bytes"),
        ));
    }
    Ok(())
}

fn check_condition(c: &Condition, schema: &Schema) -> Result<()> {
    let Some(key) = c.key() else { return Ok(()) };
    validate_key(key, "filter")?;
    let Some(&ty) = schema.get(key) else {
        return Ok(());
    };
    let field = format!("filter.{key}");
    let literal_ok = |l: &Literal| match (ty, l) {
        (FieldType::Keyword | FieldType::KeywordArray, Literal::Str(_))
        | (FieldType::Integer, Literal::Int(_))
        | (FieldType::Float, Literal::Int(_) | Literal::Float(_))
        | (FieldType::Bool, Literal::Bool(_))
        | (FieldType::Datetime, Literal::Str(_)) => true,
        (
            FieldType::Keyword
            | FieldType::KeywordArray
            | FieldType::Integer
            | FieldType::Float
            | FieldType::Bool
            | FieldType::Datetime,
            Literal::Str(_) | Literal::Int(_) | Literal::Float(_) | Literal::Bool(_),
        ) => false,
    };
    let check = |l: &Literal| -> Result<()> {
        if literal_ok(l) {
            Ok(())
        } else {
            Err(Error::invalid(
                field.clone(),
                format!("{} field compared with {} {l}", ty.name(), l.kind()),
            ))
        }
    };
    match c {
        Condition::Match { value, .. } => check(value),
        Condition::Any { values, .. } | Condition::Except { values, .. } => {
            values.iter().try_for_each(check)
        }
        Condition::Range { range, .. } => match (ty, range.datetime) {
            (FieldType::Integer | FieldType::Float, false) | (FieldType::Datetime, true) => Ok(()),
            (FieldType::Datetime, false) => Err(Error::invalid(
                field,
                "datetime field: range bounds must be RFC 3339 timestamps",
            )),
            (
                FieldType::Keyword
                | FieldType::KeywordArray
                | FieldType::Integer
                | FieldType::Float
                | FieldType::Bool,
                _,
            ) => Err(Error::invalid(
                field,
                format!("a range does not apply to a {} field", ty.name()),
            )),
        },
        Condition::Exists { .. } | Condition::IsNull { .. } | Condition::HasId(_) => Ok(()),
    }
}

/// A syntax error in filter text, at a 1-based column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("filter column {column}: {message}")]
pub struct ParseError {
    /// 1-based character column of the mistake.
    pub column: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    End,
}

fn lex(text: &str) -> std::result::Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, message: String| ParseError { column, message };
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        if let Some(op) = ["!=", ">=", "<="].into_iter().find(|o| *o == two) {
            out.push((Tok::Op(op), col));
            i += 2;
            continue;
        }
        match c {
            '=' | '>' | '<' => {
                out.push((
                    Tok::Op(match c {
                        '=' => "=",
                        '>' => ">",
                        _ => "<",
                    }),
                    col,
                ));
                i += 1;
            }
            '(' | ')' | '[' | ']' | ',' => {
                out.push((
                    match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBrack,
                        ']' => Tok::RBrack,
                        _ => Tok::Comma,
                    },
                    col,
                ));
                i += 1;
            }
            '"' | '\'' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(err(col, "unterminated string".into())),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            match chars.get(j + 1) {
                                Some(&e) => s.push(e),
                                None => return Err(err(col, "unterminated string".into())),
                            }
                            j += 2;
                            continue;
                        }
                        Some(&ch) => s.push(ch),
                    }
                    j += 1;
                }
                out.push((Tok::Str(s), col));
                i = j + 1;
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '`')
                    .ok_or_else(|| err(col, "unterminated `quoted key`".into()))?;
                out.push((Tok::Ident(chars[i + 1..i + 1 + end].iter().collect()), col));
                i += end + 2;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '.' | '-' | '+'))
                {
                    j += 1;
                }
                out.push((Tok::Num(chars[i..j].iter().collect()), col));
                i = j;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || matches!(chars[j], '_' | '.' | '-'))
                {
                    j += 1;
                }
                out.push((Tok::Ident(chars[i..j].iter().collect()), col));
                i = j;
            }
            other => return Err(err(col, format!("unexpected character {other:?}"))),
        }
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Open parentheses and `not`s around the current token: refused beyond [`MAX_DEPTH`]
    /// while parsing, so hostile nesting cannot exhaust the stack.
    depth: usize,
}

// "Anything else is an error" is the point of these matches on private token types.
#[allow(clippy::wildcard_enum_match_arm)]
impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn col(&self) -> usize {
        self.toks[self.pos].1
    }
    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn err<T>(&self, message: impl Into<String>) -> std::result::Result<T, ParseError> {
        Err(ParseError {
            column: self.col(),
            message: message.into(),
        })
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(k))
    }

    fn expr(&mut self) -> std::result::Result<Filter, ParseError> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            self.next();
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Should(parts)
        })
    }

    fn and(&mut self) -> std::result::Result<Filter, ParseError> {
        let mut parts = vec![self.unary()?];
        while self.keyword("and") {
            self.next();
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Must(parts)
        })
    }

    fn unary(&mut self) -> std::result::Result<Filter, ParseError> {
        let nested = self.keyword("not") || *self.peek() == Tok::LParen;
        if !nested {
            return self.condition();
        }
        if self.depth >= MAX_DEPTH {
            return self.err(format!(
                "filter nested deeper than {MAX_DEPTH} levels (parentheses and 'not')"
            ));
        }
        self.depth += 1;
        let f = if self.keyword("not") {
            self.next();
            Filter::MustNot(vec![self.unary()?])
        } else {
            self.next();
            let f = self.expr()?;
            if *self.peek() != Tok::RParen {
                return self.err("expected ')'");
            }
            self.next();
            f
        };
        self.depth -= 1;
        Ok(f)
    }

    fn literal(&mut self) -> std::result::Result<Literal, ParseError> {
        let (t, column) = self.next();
        let bad = |message: String| Err(ParseError { column, message });
        match t {
            Tok::Str(s) => Ok(Literal::Str(s)),
            Tok::Num(n) => {
                if let Ok(i) = n.parse::<i64>() {
                    Ok(Literal::Int(i))
                } else {
                    match n.parse::<f64>() {
                        Ok(x) if x.is_finite() => Ok(Literal::Float(x)),
                        _ => bad(format!("{n:?} is not a number")),
                    }
                }
            }
            Tok::Ident(s) if s == "true" || s == "false" => Ok(Literal::Bool(s == "true")),
            other => bad(format!(
                "expected a value (string, number, true or false), found {}",
                describe(&other)
            )),
        }
    }

    fn list(&mut self) -> std::result::Result<Vec<Literal>, ParseError> {
        if *self.peek() != Tok::LBrack {
            return self.err("expected '[' starting a list");
        }
        self.next();
        let mut out = Vec::new();
        if *self.peek() == Tok::RBrack {
            self.next();
            return Ok(out);
        }
        loop {
            out.push(self.literal()?);
            match self.peek() {
                Tok::Comma => {
                    self.next();
                }
                Tok::RBrack => {
                    self.next();
                    return Ok(out);
                }
                other => {
                    return self.err(format!("expected ',' or ']', found {}", describe(other)));
                }
            }
        }
    }

    fn condition(&mut self) -> std::result::Result<Filter, ParseError> {
        let (t, key_col) = self.next();
        let key = match t {
            Tok::Ident(k) => k,
            other => {
                return Err(ParseError {
                    column: key_col,
                    message: format!("expected a field name, found {}", describe(&other)),
                });
            }
        };
        let cond = |c: Condition| Ok(Filter::Cond(c));
        if key == "id" && self.keyword("in") {
            self.next();
            let list_col = self.col();
            let ids = self
                .list()?
                .into_iter()
                .map(|l| match l {
                    Literal::Int(i) if i >= 0 => Ok(PointId::Num(i as u64)),
                    Literal::Str(s) => Ok(PointId::Str(s)),
                    other => Err(ParseError {
                        column: list_col,
                        message: format!("{other} is not a point id"),
                    }),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            return cond(Condition::HasId(ids));
        }
        if self.keyword("any") || self.keyword("in") {
            self.next();
            let values = self.list()?;
            return cond(Condition::Any { key, values });
        }
        if self.keyword("except") {
            self.next();
            let values = self.list()?;
            return cond(Condition::Except { key, values });
        }
        if self.keyword("exists") {
            self.next();
            return cond(Condition::Exists { key });
        }
        if self.keyword("is") {
            self.next();
            let negated = self.keyword("not");
            if negated {
                self.next();
            }
            if !self.keyword("null") {
                return self.err("expected 'null'");
            }
            self.next();
            return cond(if negated {
                Condition::Exists { key }
            } else {
                Condition::IsNull { key }
            });
        }
        let (op, op_col) = match self.next() {
            (Tok::Op(op), c) => (op, c),
            (other, c) => {
                return Err(ParseError {
                    column: c,
                    message: format!(
                        "expected an operator (=, !=, <, <=, >, >=, any, except, exists, is null) after {key:?}, found {}",
                        describe(&other)
                    ),
                });
            }
        };
        let value_col = self.col();
        let value = self.literal()?;
        match op {
            "=" => cond(Condition::Match { key, value }),
            "!=" => Ok(Filter::MustNot(vec![Filter::Cond(Condition::Match {
                key,
                value,
            })])),
            _ => {
                let (x, datetime) = match &value {
                    Literal::Int(i) => (*i as f64, false),
                    Literal::Float(f) => (*f, false),
                    Literal::Str(s) => match parse_datetime(s) {
                        Some(t) => (t, true),
                        None => {
                            return Err(ParseError {
                                column: value_col,
                                message: format!(
                                    "{op} needs a number or an RFC 3339 datetime, found {value}"
                                ),
                            });
                        }
                    },
                    Literal::Bool(_) => {
                        return Err(ParseError {
                            column: op_col,
                            message: format!("{op} does not apply to a bool"),
                        });
                    }
                };
                let mut range = Range {
                    datetime,
                    ..Range::default()
                };
                match op {
                    ">" => range.gt = Some(x),
                    ">=" => range.gte = Some(x),
                    "<" => range.lt = Some(x),
                    _ => range.lte = Some(x),
                }
                cond(Condition::Range { key, range })
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Op(o) => format!("{o:?}"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBrack => "'['".into(),
        Tok::RBrack => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::End => "the end of the filter".into(),
    }
}

/// Parses the compact text syntax, e.g.
/// `tenant = "acme" and year >= 2024 and tags any ["a", "b"] and not (kind = "draft")`.
pub fn parse(text: &str) -> std::result::Result<Filter, ParseError> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        depth: 0,
    };
    if *p.peek() == Tok::End {
        return p.err("empty filter");
    }
    let f = p.expr()?;
    if *p.peek() != Tok::End {
        return p.err(format!(
            "expected 'and', 'or' or the end, found {}",
            describe(p.peek())
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(n: u64) -> PointId {
        PointId::Num(n)
    }

    #[test]
    fn text_syntax_parses_into_the_tree() {
        let f = parse(r#"tenant = "acme" and year >= 2024 and tags any ["a","b"]"#).unwrap();
        let p = json!({"tenant": "acme", "year": 2025, "tags": ["x", "b"]});
        assert!(f.matches(&id(1), Some(&p)));
        assert!(!f.matches(
            &id(1),
            Some(&json!({"tenant": "acme", "year": 2023, "tags": ["b"]}))
        ));
        let g = parse(r#"not (kind = "draft" or kind = "spam") and meta.score < 0.5"#).unwrap();
        assert!(g.matches(
            &id(1),
            Some(&json!({"kind": "post", "meta": {"score": 0.25}}))
        ));
        assert!(!g.matches(
            &id(1),
            Some(&json!({"kind": "spam", "meta": {"score": 0.25}}))
        ));
        let h = parse(r#"id in [1, "a"] and x is null and y exists and z except ["q"]"#).unwrap();
        assert!(h.matches(&PointId::Str("a".into()), Some(&json!({"y": 1, "z": "r"}))));
        assert!(!h.matches(&id(2), Some(&json!({"y": 1, "z": "r"}))));
        let d = parse(r#"at >= "2024-01-01T00:00:00Z""#).unwrap();
        assert!(d.matches(&id(1), Some(&json!({"at": "2024-06-01T12:00:00+02:00"}))));
        assert!(!d.matches(&id(1), Some(&json!({"at": "2023-06-01T12:00:00Z"}))));
    }

    #[test]
    fn text_errors_point_at_the_column() {
        for (text, column, needle) in [
            (r#"tenant = "acme" and"#, 20, "field name"),
            (r#"tenant == "acme""#, 9, "value"),
            (r#"tenant ~ "acme""#, 8, "unexpected character"),
            (r#"tags any ["a", "b""#, 19, "',' or ']'"),
            (r#"(a = 1"#, 7, "')'"),
            (r#"a = "x" b = 2"#, 9, "'and', 'or'"),
            (r#"year > "soon""#, 8, "RFC 3339"),
            (r#"name = "open"#, 8, "unterminated"),
            ("", 1, "empty"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn nesting_is_refused_while_parsing_not_after() {
        // Deep enough to overflow a thread's stack if the parser recursed into it.
        for (open, close) in [("(", ")"), ("not ", ""), ("not (", ")")] {
            let deep = format!("{}a = 1{}", open.repeat(100_000), close.repeat(100_000));
            let e = parse(&deep).unwrap_err();
            assert!(e.message.contains("nested deeper than 16"), "{open}: {e}");
        }
        let ok = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let over = format!(
            "{}a = 1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let e = parse(&over).unwrap_err();
        assert_eq!(e.column, MAX_DEPTH + 1, "{e}");
    }

    #[test]
    fn validation_names_the_mistyped_field() {
        let schema: Schema = [
            ("year".to_owned(), FieldType::Integer),
            ("tenant".to_owned(), FieldType::Keyword),
            ("at".to_owned(), FieldType::Datetime),
        ]
        .into();
        let e = parse(r#"year = "2024""#)
            .unwrap()
            .validate(&schema, 8)
            .unwrap_err();
        assert!(e.to_string().contains("filter.year"), "{e}");
        let e = parse("tenant > 3")
            .unwrap()
            .validate(&schema, 8)
            .unwrap_err();
        assert!(e.to_string().contains("filter.tenant"), "{e}");
        let e = parse("at > 3").unwrap().validate(&schema, 8).unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        parse(r#"year >= 2020 and other = "x""#)
            .unwrap()
            .validate(&schema, 8)
            .unwrap();
        let deep = parse("((((a = 1))))").unwrap();
        deep.validate(&schema, 8).unwrap();
        let nested = Filter::Must(vec![Filter::Must(vec![Filter::Must(vec![deep])])]);
        assert!(nested.validate(&schema, 3).is_err());
    }
}
