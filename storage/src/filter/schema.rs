//! The declared-field schema of a collection, and the checks of filters and keys against it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ast::{Condition, Filter, Literal};
use crate::error::{Error, Result};
use crate::text::Analyzer;

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
    /// Full text (a string, or an array of strings), searched with BM25 text queries.
    Text(Analyzer),
    /// A sparse vector `{"indices": [...], "values": [...]}`, searched by dot product.
    Sparse,
}

impl FieldType {
    /// Name as written in schemas and errors (`text:english+stop` for a text field with
    /// its analyzer).
    pub fn name(self) -> String {
        match self {
            FieldType::Keyword => "keyword".into(),
            FieldType::Integer => "integer".into(),
            FieldType::Float => "float".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Datetime => "datetime".into(),
            FieldType::KeywordArray => "keyword[]".into(),
            FieldType::Text(a) => format!("text{}", a.suffix()),
            FieldType::Sparse => "sparse".into(),
        }
    }

    /// Parses a type name (see [`FieldType::name`]; `text:en` for English stemming).
    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "keyword" => FieldType::Keyword,
            "integer" | "int" => FieldType::Integer,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            "datetime" => FieldType::Datetime,
            "keyword[]" | "keyword_array" | "tags" => FieldType::KeywordArray,
            "sparse" => FieldType::Sparse,
            _ => FieldType::Text(Analyzer::parse_suffix(s.strip_prefix("text")?)?),
        })
    }

    /// Whether the field is searched (text, sparse) rather than filtered by value.
    pub fn is_searched(self) -> bool {
        matches!(self, FieldType::Text(_) | FieldType::Sparse)
    }
}

/// Declared fields by key.
pub type Schema = BTreeMap<String, FieldType>;

impl Filter {
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
    if ty.is_searched() {
        return match c {
            Condition::Exists { .. } | Condition::IsNull { .. } | Condition::HasId(_) => Ok(()),
            Condition::Match { .. }
            | Condition::Any { .. }
            | Condition::Except { .. }
            | Condition::Range { .. } => Err(Error::invalid(
                field,
                format!(
                    "a {} field is searched (a text or sparse query), not filtered by value; filter it only with exists or is_null",
                    ty.name()
                ),
            )),
        };
    }
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
            | FieldType::Datetime
            | FieldType::Text(_)
            | FieldType::Sparse,
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
                | FieldType::Bool
                | FieldType::Text(_)
                | FieldType::Sparse,
                _,
            ) => Err(Error::invalid(
                field,
                format!("a range does not apply to a {} field", ty.name()),
            )),
        },
        Condition::Exists { .. } | Condition::IsNull { .. } | Condition::HasId(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse;

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
