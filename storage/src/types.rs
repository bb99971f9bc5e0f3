//! Domain types shared by the engine: point ids, metrics, collection configuration, and the
//! validation rules that make them valid by construction.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest string id accepted, in bytes.
pub const MAX_STR_ID_BYTES: usize = 1024;
/// Largest supported dimension.
pub const MAX_DIM: usize = 65_536;
/// Longest collection name.
pub const MAX_NAME_LEN: usize = 64;

/// An external point id: an unsigned integer or a string. `7` and `"7"` are different ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PointId {
    /// An unsigned 64-bit id.
    Num(u64),
    /// A string id (UUID or any key of at most [`MAX_STR_ID_BYTES`] bytes).
    Str(String),
}

impl PointId {
    /// Checks a string id's length; numbers are always valid.
    pub fn validate(&self, field: &str) -> Result<()> {
        match self {
            PointId::Num(_) => Ok(()),
            PointId::Str(s) if s.is_empty() => Err(Error::invalid(field, "string id is empty")),
            PointId::Str(s) if s.len() > MAX_STR_ID_BYTES => Err(Error::invalid(
                field,
                format!(
                    "string id is {} bytes, the limit is {MAX_STR_ID_BYTES}",
                    s.len()
                ),
            )),
            PointId::Str(_) => Ok(()),
        }
    }

    /// Binary key form: tag byte (0 = number, 1 = string), then big-endian u64 or UTF-8 bytes.
    /// Used in the WAL, the `ids` file and RocksDB keys.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            PointId::Num(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_be_bytes());
            }
            PointId::Str(s) => {
                out.push(1);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Inverse of [`PointId::encode_into`] over exactly one encoded id.
    pub fn decode(bytes: &[u8]) -> Option<PointId> {
        match bytes.split_first()? {
            (0, rest) => Some(PointId::Num(u64::from_be_bytes(rest.try_into().ok()?))),
            (1, rest) => std::str::from_utf8(rest)
                .ok()
                .map(|s| PointId::Str(s.to_owned())),
            _ => None,
        }
    }
}

impl std::fmt::Display for PointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalised at write time, so search is an inner product.
    Cosine,
    /// Euclidean distance.
    L2,
    /// Inner product.
    Dot,
}

impl Metric {
    /// Turns an internal distance (lower is closer) into the score users see:
    /// similarity for cosine and dot, Euclidean distance for l2.
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Metric::Cosine => 1.0 - distance,
            Metric::Dot => -distance,
            Metric::L2 => distance.max(0.0).sqrt(),
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Metric::Cosine),
            "l2" | "euclid" | "euclidean" => Ok(Metric::L2),
            "dot" | "ip" => Ok(Metric::Dot),
            other => Err(Error::invalid(
                "metric",
                format!("unknown metric '{other}' (cosine, l2, dot)"),
            )),
        }
    }
}

/// The vector index a collection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// Exact SIMD scan only.
    Flat,
    /// IVF-PQ per sealed segment (4-bit fast-scan or 8-bit codes), built in the background,
    /// with exact re-rank. The default: segments below [`MIN_INDEXED_ROWS`] are scanned
    /// exactly anyway.
    #[default]
    IvfPq,
}

/// Index parameters as configured on the collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IndexConfig {
    /// Which index.
    pub kind: IndexKind,
    /// Inverted lists per segment (`None`: ≈ 4·√rows).
    #[serde(default)]
    pub nlist: Option<u32>,
    /// PQ sub-spaces (`None`: chosen from the dimension); must divide the dimension.
    #[serde(default)]
    pub pq_m: Option<u32>,
    /// Bits per PQ code: 4 (fast-scan) or 8 (`None`: [`DEFAULT_PQ_BITS`]).
    #[serde(default)]
    pub pq_bits: Option<u32>,
}

impl IndexConfig {
    /// The exact scan.
    pub fn flat() -> IndexConfig {
        IndexConfig {
            kind: IndexKind::Flat,
            ..IndexConfig::default()
        }
    }
}

/// PQ code width when a collection does not set one.
pub const DEFAULT_PQ_BITS: u32 = 4;

/// Segments with fewer rows are always scanned exactly (an index would not pay for itself).
pub const MIN_INDEXED_ROWS: u32 = 1024;

/// The recall@10 an IVF-PQ search aims at, in basis points, when it sets neither `nprobe`
/// nor a target (never probing fewer than 8 lists).
pub const DEFAULT_TARGET_RECALL_BP: u16 = 9500;

/// Candidates re-ranked exactly per result when a search does not set a refine factor.
pub const DEFAULT_REFINE: usize = 4;

/// Per-query search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SearchParams {
    /// Scan every row exactly, ignoring indexes.
    pub exact: bool,
    /// IVF lists probed per segment (`None`: the calibrated nprobe for `target_recall_bp`;
    /// with no target either, the calibrated one for [`DEFAULT_TARGET_RECALL_BP`], at least 8).
    pub nprobe: Option<usize>,
    /// Candidates re-ranked exactly = k × refine (`None`: [`DEFAULT_REFINE`]).
    pub refine: Option<usize>,
    /// Target recall@10 in basis points (9500 = 0.95): each segment probes the nprobe its
    /// calibration measured for that recall (`None`: [`DEFAULT_TARGET_RECALL_BP`]). Ignored
    /// when `nprobe` is set.
    pub target_recall_bp: Option<u16>,
    /// Stop (with [`crate::Error::DeadlineExceeded`]) once this instant passes: checked
    /// before each segment and each filter evaluation, so an abandoned search stops using
    /// cores within about one segment scan.
    pub deadline: Option<std::time::Instant>,
    /// The most the hits of one call (all its queries) may total in bytes (0: no limit):
    /// payloads and vectors are read within it, and the call fails with
    /// [`crate::Error::TooLarge`] rather than exceed it.
    pub response_budget: usize,
}

impl SearchParams {
    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
    }
}

/// Default number of rows in the mutable segment before it is sealed.
pub const DEFAULT_SEGMENT_MAX_ROWS: u32 = 100_000;

/// A collection's immutable configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionConfig {
    /// Name (see [`validate_collection_name`]).
    pub name: String,
    /// Vector dimension.
    pub dim: usize,
    /// Distance metric.
    pub metric: Metric,
    /// Index parameters. A record written before collections had them is flat.
    #[serde(default = "IndexConfig::flat")]
    pub index: IndexConfig,
    /// Rows in the mutable segment before it is sealed.
    pub segment_max_rows: u32,
    /// Declared payload fields (indexed per segment) at creation; more can be declared later.
    #[serde(default)]
    pub schema: crate::filter::Schema,
    /// Settings of services above the engine kept with the collection (e.g. its RAG
    /// configuration): replicated, snapshotted and dropped with it. The engine never reads them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl CollectionConfig {
    /// Validates every field.
    pub fn validate(&self) -> Result<()> {
        if !is_staging_name(&self.name) {
            validate_collection_name(&self.name)?;
        }
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(Error::invalid(
                "dim",
                format!("must be between 1 and {MAX_DIM}, got {}", self.dim),
            ));
        }
        if let Some(m) = self.index.pq_m
            && (m == 0 || !self.dim.is_multiple_of(m as usize))
        {
            return Err(Error::invalid(
                "index.pq_m",
                format!("{m} must divide the dimension {}", self.dim),
            ));
        }
        if let Some(b) = self.index.pq_bits
            && b != 4
            && b != 8
        {
            return Err(Error::invalid(
                "index.pq_bits",
                format!("must be 4 or 8, got {b}"),
            ));
        }
        for key in self.schema.keys() {
            crate::filter::validate_key(key, &format!("schema.{key}"))?;
        }
        if self.index.nlist == Some(0) {
            return Err(Error::invalid("index.nlist", "must be at least 1"));
        }
        if let Some(n) = self.index.nlist {
            use crate::index::ivf::{MAX_NLIST, MIN_ROWS_PER_LIST};
            let most = (self.segment_max_rows as usize / MIN_ROWS_PER_LIST).clamp(1, MAX_NLIST);
            if n as usize > most {
                return Err(Error::invalid(
                    "index.nlist",
                    format!(
                        "{n} exceeds {most}: at most segment_max_rows / {MIN_ROWS_PER_LIST} ({} / {MIN_ROWS_PER_LIST}) and at most {MAX_NLIST}, as each list needs about {MIN_ROWS_PER_LIST} training rows",
                        self.segment_max_rows
                    ),
                ));
            }
        }
        if !(16..=10_000_000).contains(&self.segment_max_rows) {
            return Err(Error::invalid(
                "segment_max_rows",
                format!(
                    "must be between 16 and 10000000, got {}",
                    self.segment_max_rows
                ),
            ));
        }
        Ok(())
    }
}

/// Collection names: 1–64 ASCII letters, digits, `_` and `-`, starting with a letter or digit.
/// This keeps names out of path syntax altogether (no `/`, `\`, `.`, `..`), although the engine
/// never builds a path from a name anyway (directories are named by a numeric uid).
/// The prefix of the hidden collection a single-collection restore builds before it swaps it
/// in (see [`Engine::replace_collection_seq`](crate::Engine::replace_collection_seq)). No user
/// name can carry it: user names start with a letter or digit.
pub const STAGING_PREFIX: &str = "_restore-";

/// A hidden collection that a restore of `target` builds; `nonce` tells restores apart.
pub fn staging_name(target: &str, nonce: u64) -> String {
    format!("{STAGING_PREFIX}{target}-{nonce:016x}")
}

/// The collection a restore's hidden copy is for (`None`: not such a copy).
pub fn staging_target(name: &str) -> Option<&str> {
    let (target, nonce) = name.strip_prefix(STAGING_PREFIX)?.rsplit_once('-')?;
    (nonce.len() == 16
        && nonce.bytes().all(|b| b.is_ascii_hexdigit())
        && validate_collection_name(target).is_ok())
    .then_some(target)
}

/// Whether `name` is a restore's hidden copy (see [`staging_name`]).
pub fn is_staging_name(name: &str) -> bool {
    staging_target(name).is_some()
}

/// Checks a collection name a user gave.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() {
        return Err(Error::invalid("name", "collection name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "name",
            format!(
                "collection name is {} chars, the limit is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name.chars().find(|c| !ok_char(*c)) {
        return Err(Error::invalid(
            "name",
            format!(
                "collection name contains {bad:?}: only ASCII letters, digits, '_' and '-' are allowed"
            ),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(
            "name",
            "collection name must start with a letter or digit",
        ));
    }
    Ok(())
}

/// One point to write.
#[derive(Debug, Clone, PartialEq)]
pub struct PointWrite {
    /// External id.
    pub id: PointId,
    /// The vector (normalised by the engine for cosine collections).
    pub vector: Vec<f32>,
    /// Payload as JSON object text, already validated by the caller to be an object.
    pub payload: Option<Vec<u8>>,
}

/// A point read back.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRecord {
    /// External id.
    pub id: PointId,
    /// The stored vector, when asked for.
    pub vector: Option<Vec<f32>>,
    /// Payload JSON text, when asked for and present.
    pub payload: Option<Vec<u8>>,
}

/// What a point costs in a response: id, vector, payload and framing.
fn response_bytes(id: &PointId, vector: Option<&Vec<f32>>, payload: Option<&Vec<u8>>) -> usize {
    let id = match id {
        PointId::Num(_) => 8,
        PointId::Str(s) => s.len(),
    };
    16 + id + vector.map_or(0, |v| v.len() * 4) + payload.map_or(0, Vec::len)
}

impl PointRecord {
    /// What the record costs in a response: id, vector, payload and framing.
    pub fn response_bytes(&self) -> usize {
        response_bytes(&self.id, self.vector.as_ref(), self.payload.as_ref())
    }
}

impl Hit {
    /// What the hit costs in a response: id, score, vector, payload and framing.
    pub fn response_bytes(&self) -> usize {
        4 + response_bytes(&self.id, self.vector.as_ref(), self.payload.as_ref())
    }
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// External id.
    pub id: PointId,
    /// The user-facing score (see [`Metric::score`]).
    pub score: f32,
    /// The stored vector, when asked for.
    pub vector: Option<Vec<f32>>,
    /// Payload JSON text, when asked for and present.
    pub payload: Option<Vec<u8>>,
}

/// What a search returns besides the hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Return stored vectors.
    pub with_vectors: bool,
    /// Return payloads.
    pub with_payload: bool,
}

/// Checks a vector against the collection's dimension and for non-finite values.
pub fn validate_vector(v: &[f32], dim: usize, field: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid(field, "vector is empty"));
    }
    if v.len() != dim {
        return Err(Error::DimensionMismatch {
            field: field.to_owned(),
            expected: dim,
            got: v.len(),
        });
    }
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::NonFinite {
            field: format!("{field}[{i}]"),
            value: x.to_string(),
        });
    }
    Ok(())
}

/// Scales `v` to unit length in place. A zero vector is rejected: it has no direction.
pub fn normalize(v: &mut [f32], field: &str) -> Result<()> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(Error::invalid(
            field,
            "a zero vector has no direction under the cosine metric",
        ));
    }
    let inv = (1.0 / norm) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "glove-50", "A_1", &"x".repeat(64)] {
            validate_collection_name(ok).unwrap();
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "a\\b",
            ".",
            "..",
            "-a",
            "_a",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_collection_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn id_roundtrip() {
        for id in [
            PointId::Num(0),
            PointId::Num(u64::MAX),
            PointId::Str("héllo".into()),
        ] {
            let mut b = Vec::new();
            id.encode_into(&mut b);
            assert_eq!(PointId::decode(&b), Some(id));
        }
        assert_eq!(PointId::decode(&[7]), None);
    }

    #[test]
    fn vector_checks() {
        assert!(matches!(
            validate_vector(&[1.0, 2.0], 3, "v"),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(
            matches!(validate_vector(&[1.0, f32::NAN], 2, "v"), Err(Error::NonFinite { field, .. }) if field == "v[1]")
        );
        assert!(matches!(
            validate_vector(&[], 2, "v"),
            Err(Error::InvalidArgument { .. })
        ));
        let mut v = vec![3.0, 4.0];
        normalize(&mut v, "v").unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6);
    }
}
