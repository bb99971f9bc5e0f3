//! The filter expression tree and its reference evaluation on a JSON payload, with the
//! semantics the `filter` module's docs give.
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::PointId;

/// Most nesting levels a filter may have.
pub const MAX_DEPTH: usize = 16;

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
    pub(super) fn kind(&self) -> &'static str {
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

    pub(super) fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Condition)) {
        match self {
            Filter::Cond(c) => f(c),
            Filter::Must(fs) | Filter::Should(fs) | Filter::MustNot(fs) => {
                fs.iter().for_each(|x| x.visit(f));
            }
        }
    }

    pub(super) fn depth(&self) -> usize {
        match self {
            Filter::Cond(_) => 1,
            Filter::Must(fs) | Filter::Should(fs) | Filter::MustNot(fs) => {
                1 + fs.iter().map(Filter::depth).max().unwrap_or(0)
            }
        }
    }
}
