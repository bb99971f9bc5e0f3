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
//!
//! Modules:
//! * `ast`: the tree ([`Filter`], [`Condition`], [`Literal`], [`Range`]), its semantics and
//!   the reference evaluation [`Filter::matches`];
//! * `schema`: declared field types ([`FieldType`], [`Schema`]), [`Filter::validate`] and
//!   [`validate_key`];
//! * `parse`: the text syntax ([`parse()`], [`ParseError`]);
//! * `bitmaps`: a filter evaluated over a segment's rows with set operations;
//! * `allowed`: the allowed rows of a filter in one segment (from field indexes, located ids
//!   or payloads), which filtered searches and reads start from.
//!
//! The submodules are private: every public item is re-exported here, so callers name
//! `filter::Filter`, `filter::parse` and so on.
pub(crate) mod allowed;
mod ast;
pub(crate) mod bitmaps;
mod parse;
mod schema;

pub use ast::{Condition, Filter, Literal, MAX_DEPTH, Range, parse_datetime, values_at};
pub use parse::{ParseError, parse};
pub use schema::{FieldType, Schema, validate_key};
