//! proto ⇄ engine conversion: the only place requests are validated into engine types.

pub mod rag;
use quiver_proto::v1 as pb;
use quiver_storage::collection::HybridHit;
use quiver_storage::filter::{self, Condition, FieldType, Filter, Literal, Range, Schema};
use quiver_storage::text::fusion::BranchRank;
use quiver_storage::text::{Analyzer, Language};
use quiver_storage::{Hit, Metric, PointId, PointRecord, PointWrite, RowKey};

use crate::error::{ApiError, ApiResult};

/// A proto point id into an engine id.
pub fn point_id(id: Option<&pb::PointId>, field: &str) -> ApiResult<PointId> {
    match id.and_then(|i| i.kind.as_ref()) {
        Some(pb::point_id::Kind::Num(n)) => Ok(PointId::Num(*n)),
        Some(pb::point_id::Kind::Str(s)) => {
            let id = PointId::Str(s.clone());
            id.validate(field)?;
            Ok(id)
        }
        None => Err(ApiError::bad(field, "point id is missing (set num or str)")),
    }
}

/// Many proto ids.
pub fn point_ids(ids: &[pb::PointId], field: &str) -> ApiResult<Vec<PointId>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| point_id(Some(id), &format!("{field}[{i}]")))
        .collect()
}

/// Many proto ids, each once (first occurrences in order): repeating an id cannot multiply
/// the work of a request.
pub fn unique_point_ids(ids: &[pb::PointId], field: &str) -> ApiResult<Vec<PointId>> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for id in point_ids(ids, field)? {
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// An engine id into a proto id.
pub fn to_pb_id(id: PointId) -> pb::PointId {
    pb::PointId {
        kind: Some(match id {
            PointId::Num(n) => pb::point_id::Kind::Num(n),
            PointId::Str(s) => pb::point_id::Kind::Str(s),
        }),
    }
}

/// Validates a payload: a JSON object within the size limit. Returns its bytes, re-serialised
/// compactly so stored payloads are canonical JSON.
pub fn payload(json: Option<&str>, field: &str, max_bytes: usize) -> ApiResult<Option<Vec<u8>>> {
    let Some(text) = json else { return Ok(None) };
    if text.len() > max_bytes {
        return Err(ApiError::TooLarge(format!(
            "{field}: payload is {} bytes, the limit is {max_bytes}",
            text.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad(
            field,
            format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::bad(field, "payload must be a JSON object"));
    }
    serde_json::to_vec(&value)
        .map(Some)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Proto points into engine writes.
pub fn points(points: Vec<pb::Point>, max_payload: usize) -> ApiResult<Vec<PointWrite>> {
    points
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(PointWrite {
                id: point_id(p.id.as_ref(), &format!("points[{i}].id"))?,
                payload: payload(
                    p.payload_json.as_deref(),
                    &format!("points[{i}].payload_json"),
                    max_payload,
                )?,
                vector: p.vector,
            })
        })
        .collect()
}

/// A proto metric into an engine metric.
pub fn metric(m: i32) -> ApiResult<Metric> {
    match pb::Metric::try_from(m) {
        Ok(pb::Metric::Cosine) => Ok(Metric::Cosine),
        Ok(pb::Metric::L2) => Ok(Metric::L2),
        Ok(pb::Metric::Dot) => Ok(Metric::Dot),
        Ok(pb::Metric::Unspecified) => Err(ApiError::bad(
            "metric",
            "metric is required: METRIC_COSINE, METRIC_L2 or METRIC_DOT",
        )),
        Err(_) => Err(ApiError::bad("metric", format!("unknown metric value {m}"))),
    }
}

/// An engine metric into a proto metric.
pub fn to_pb_metric(m: Metric) -> pb::Metric {
    match m {
        Metric::Cosine => pb::Metric::Cosine,
        Metric::L2 => pb::Metric::L2,
        Metric::Dot => pb::Metric::Dot,
    }
}

fn payload_text(p: Option<Vec<u8>>) -> Option<String> {
    p.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A record into a proto point.
pub fn retrieved(r: PointRecord) -> pb::RetrievedPoint {
    pb::RetrievedPoint {
        id: Some(to_pb_id(r.id)),
        vector: r.vector.unwrap_or_default(),
        payload_json: payload_text(r.payload),
    }
}

/// A hit into a proto scored point.
pub fn scored(h: Hit) -> pb::ScoredPoint {
    pb::ScoredPoint {
        id: Some(to_pb_id(h.id)),
        score: h.score,
        vector: h.vector.unwrap_or_default(),
        payload_json: payload_text(h.payload),
        ..Default::default()
    }
}

/// A hybrid hit, with where each branch ranked it.
pub fn scored_hybrid(h: HybridHit) -> pb::ScoredPoint {
    let rank = |b: Option<BranchRank>| {
        b.map(|b| pb::BranchRank {
            rank: b.rank,
            score: b.score,
        })
    };
    pb::ScoredPoint {
        dense: rank(h.dense),
        text: rank(h.text),
        sparse: rank(h.sparse),
        ..scored(h.hit)
    }
}

/// Validates `k` (0 means 10).
pub fn k(k: u32, max: u32) -> ApiResult<usize> {
    match k {
        0 => Ok(10),
        k if k > max => Err(ApiError::bad(
            "k",
            format!("k = {k} exceeds the limit of {max}"),
        )),
        k => Ok(k as usize),
    }
}

/// Scroll cursors are `"{segment}.{row}"`; clients treat them as opaque.
pub fn cursor(s: &str) -> ApiResult<Option<RowKey>> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::bad(
            "cursor",
            format!("{s:?} is not a cursor returned by Scroll"),
        )
    };
    let (seg, row) = s.split_once('.').ok_or_else(bad)?;
    Ok(Some((
        seg.parse().map_err(|_| bad())?,
        row.parse().map_err(|_| bad())?,
    )))
}

/// Encodes a scroll cursor.
pub fn to_cursor(k: Option<RowKey>) -> String {
    k.map(|(s, r)| format!("{s}.{r}")).unwrap_or_default()
}

/// A proto field type (with a text field's analyzer).
fn field_type(f: &pb::FieldSchema, field: &str) -> ApiResult<FieldType> {
    let t = f.r#type;
    if t != pb::FieldType::Text as i32 && (!f.language.is_empty() || f.stop_words) {
        return Err(ApiError::bad(
            field,
            "language and stop_words apply to text fields only",
        ));
    }
    Ok(match pb::FieldType::try_from(t) {
        Ok(pb::FieldType::Text) => {
            let language = if f.language.is_empty() {
                None
            } else {
                Some(Language::parse(&f.language).ok_or_else(|| {
                    ApiError::bad(
                        field.replace(".type", ".language"),
                        format!(
                            "{:?} is not a language with a stemmer (english, french, german, spanish, ...)",
                            f.language
                        ),
                    )
                })?)
            };
            if f.stop_words && language.is_none() {
                return Err(ApiError::bad(
                    field.replace(".type", ".stop_words"),
                    "stop words need a language",
                ));
            }
            FieldType::Text(Analyzer {
                language,
                stop_words: f.stop_words,
            })
        }
        Ok(pb::FieldType::Sparse) => FieldType::Sparse,
        Ok(pb::FieldType::Keyword) => FieldType::Keyword,
        Ok(pb::FieldType::Integer) => FieldType::Integer,
        Ok(pb::FieldType::Float) => FieldType::Float,
        Ok(pb::FieldType::Bool) => FieldType::Bool,
        Ok(pb::FieldType::Datetime) => FieldType::Datetime,
        Ok(pb::FieldType::KeywordArray) => FieldType::KeywordArray,
        Ok(pb::FieldType::Unspecified) | Err(_) => {
            return Err(ApiError::bad(field, format!("unknown field type {t}")));
        }
    })
}

/// The proto form of a field type.
pub fn to_pb_field_type(t: FieldType) -> pb::FieldType {
    match t {
        FieldType::Keyword => pb::FieldType::Keyword,
        FieldType::Integer => pb::FieldType::Integer,
        FieldType::Float => pb::FieldType::Float,
        FieldType::Bool => pb::FieldType::Bool,
        FieldType::Datetime => pb::FieldType::Datetime,
        FieldType::KeywordArray => pb::FieldType::KeywordArray,
        FieldType::Text(_) => pb::FieldType::Text,
        FieldType::Sparse => pb::FieldType::Sparse,
    }
}

/// The proto form of a declared field.
pub fn to_pb_field(key: String, t: FieldType) -> pb::FieldSchema {
    let (language, stop_words) = if let FieldType::Text(a) = t {
        (a.language.map(|l| l.name().to_owned()), a.stop_words)
    } else {
        (None, false)
    };
    pb::FieldSchema {
        key,
        r#type: to_pb_field_type(t) as i32,
        language: language.unwrap_or_default(),
        stop_words,
    }
}

/// Declared fields; a key given twice is an error.
pub fn schema(fields: &[pb::FieldSchema]) -> ApiResult<Schema> {
    let mut out = Schema::new();
    for (i, f) in fields.iter().enumerate() {
        let ty = field_type(f, &format!("schema[{i}].type"))?;
        if out.insert(f.key.clone(), ty).is_some() {
            return Err(ApiError::bad(
                format!("schema[{i}].key"),
                format!("{:?} is declared twice", f.key),
            ));
        }
    }
    Ok(out)
}

fn value(v: &pb::Value, field: &str) -> ApiResult<Literal> {
    Ok(match &v.kind {
        Some(pb::value::Kind::Str(s)) => Literal::Str(s.clone()),
        Some(pb::value::Kind::Int(i)) => Literal::Int(*i),
        Some(pb::value::Kind::Float(x)) if x.is_finite() => Literal::Float(*x),
        Some(pb::value::Kind::Float(x)) => {
            return Err(ApiError::bad(field, format!("{x} is not finite")));
        }
        Some(pb::value::Kind::Bool(b)) => Literal::Bool(*b),
        None => {
            return Err(ApiError::bad(
                field,
                "value is empty (set str, int, float or bool)",
            ));
        }
    })
}

fn values(l: &pb::ValueList, field: &str) -> ApiResult<Vec<Literal>> {
    l.values
        .iter()
        .enumerate()
        .map(|(i, v)| value(v, &format!("{field}[{i}]")))
        .collect()
}

fn condition(c: &pb::Condition, field: &str, depth: usize) -> ApiResult<Filter> {
    use pb::condition::Kind;
    let key = c.key.clone();
    let bound = |b: Option<f64>, name: &str| -> ApiResult<Option<f64>> {
        match b {
            Some(x) if !x.is_finite() => Err(ApiError::bad(
                format!("{field}.range.{name}"),
                format!("{x} is not finite"),
            )),
            other => Ok(other),
        }
    };
    let date = |b: &Option<String>, name: &str| -> ApiResult<Option<f64>> {
        b.as_deref()
            .map(|s| {
                filter::parse_datetime(s).ok_or_else(|| {
                    ApiError::bad(
                        format!("{field}.datetime_range.{name}"),
                        format!("{s:?} is not an RFC 3339 timestamp"),
                    )
                })
            })
            .transpose()
    };
    let cond = match &c.kind {
        Some(Kind::Match(v)) => Condition::Match {
            key,
            value: value(v, &format!("{field}.match"))?,
        },
        Some(Kind::Any(l)) => Condition::Any {
            key,
            values: values(l, &format!("{field}.any"))?,
        },
        Some(Kind::Except(l)) => Condition::Except {
            key,
            values: values(l, &format!("{field}.except"))?,
        },
        Some(Kind::Range(r)) => Condition::Range {
            key,
            range: Range {
                gt: bound(r.gt, "gt")?,
                gte: bound(r.gte, "gte")?,
                lt: bound(r.lt, "lt")?,
                lte: bound(r.lte, "lte")?,
                datetime: false,
            },
        },
        Some(Kind::DatetimeRange(r)) => Condition::Range {
            key,
            range: Range {
                gt: date(&r.gt, "gt")?,
                gte: date(&r.gte, "gte")?,
                lt: date(&r.lt, "lt")?,
                lte: date(&r.lte, "lte")?,
                datetime: true,
            },
        },
        Some(Kind::Exists(true)) => Condition::Exists { key },
        Some(Kind::IsNull(true)) => Condition::IsNull { key },
        Some(Kind::Exists(false) | Kind::IsNull(false)) => {
            return Err(ApiError::bad(field, "exists / is_null must be set to true"));
        }
        Some(Kind::HasId(ids)) => {
            Condition::HasId(point_ids(&ids.ids, &format!("{field}.has_id"))?)
        }
        Some(Kind::Filter(f)) => {
            return group(f, &format!("{field}.filter"), depth + 1);
        }
        None => {
            return Err(ApiError::bad(
                field,
                "condition is empty (unknown operator?)",
            ));
        }
    };
    Ok(Filter::Cond(cond))
}

fn group(f: &pb::Filter, field: &str, depth: usize) -> ApiResult<Filter> {
    if depth > filter::MAX_DEPTH {
        return Err(ApiError::bad(
            field,
            format!("nested deeper than {} levels", filter::MAX_DEPTH),
        ));
    }
    if !f.text.is_empty() {
        if !(f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty()) {
            return Err(ApiError::bad(
                field,
                "set text or must/should/must_not, not both",
            ));
        }
        return filter::parse(&f.text)
            .map_err(|e| ApiError::bad(format!("{field}.text"), e.to_string()));
    }
    let list = |cs: &[pb::Condition], name: &str| -> ApiResult<Vec<Filter>> {
        cs.iter()
            .enumerate()
            .map(|(i, c)| condition(c, &format!("{field}.{name}[{i}]"), depth))
            .collect()
    };
    let mut parts = Vec::new();
    if !f.must.is_empty() {
        parts.push(Filter::Must(list(&f.must, "must")?));
    }
    if !f.should.is_empty() {
        parts.push(Filter::Should(list(&f.should, "should")?));
    }
    if !f.must_not.is_empty() {
        parts.push(Filter::MustNot(list(&f.must_not, "must_not")?));
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Filter::Must(parts)
    })
}

/// A request's filter (`None` when unset or empty).
pub fn filter(f: Option<&pb::Filter>) -> ApiResult<Option<Filter>> {
    match f {
        None => Ok(None),
        Some(f)
            if f.text.is_empty()
                && f.must.is_empty()
                && f.should.is_empty()
                && f.must_not.is_empty() =>
        {
            Ok(None)
        }
        Some(f) => group(f, "filter", 1).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_rules() {
        assert_eq!(
            payload(Some("{\"a\": 1}"), "p", 100).unwrap(),
            Some(b"{\"a\":1}".to_vec())
        );
        assert!(matches!(
            payload(Some("[1]"), "p", 100),
            Err(ApiError::BadRequest { .. })
        ));
        assert!(matches!(
            payload(Some("{"), "p", 100),
            Err(ApiError::BadRequest { .. })
        ));
        assert!(matches!(
            payload(Some("{\"a\":\"xxxxxxxxxx\"}"), "p", 5),
            Err(ApiError::TooLarge(_))
        ));
        assert_eq!(payload(None, "p", 5).unwrap(), None);
    }

    #[test]
    fn cursors() {
        assert_eq!(cursor("").unwrap(), None);
        assert_eq!(cursor(&to_cursor(Some((3, 9)))).unwrap(), Some((3, 9)));
        assert!(cursor("x").is_err());
    }
}
