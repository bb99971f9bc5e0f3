//! proto ⇄ engine conversion: the only place requests are validated into engine types.
use quiver_proto::v1 as pb;
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
