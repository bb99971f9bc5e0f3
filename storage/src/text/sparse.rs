//! Sparse vectors (SPLADE output, or a user's own term weights) and one segment's inverted
//! index of a `sparse` field, scored by dot product.
//!
//! A point carries a sparse vector as the value of a declared `sparse` field in its payload:
//! `{"indices": [3, 17, 512], "values": [0.4, 1.2, 0.07]}`, indices strictly increasing,
//! values finite, at most [`MAX_SPARSE_ENTRIES`] entries. Writes are checked against that
//! before they are logged (see [`parse_sparse`]).
//!
//! The sealed form, read in place from the mapped field index file:
//!
//! ```text
//! "QSPV" u32 format, u32 rows, u32 dimensions, u64 postings,
//! dimensions × (u32 dimension, u32 count, u64 first posting, f32 max |value|, u32 zero),
//! postings × u32 row, postings × f32 value.
//! ```
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::postings::Blob;
use super::{has_header, le_u32, le_u64};

/// The most entries a sparse vector (stored or queried) may have.
pub const MAX_SPARSE_ENTRIES: usize = 4096;

const MAGIC: &[u8; 4] = b"QSPV";
const FORMAT: u32 = 1;
const HEADER: usize = 24;
const DIM_ENTRY: usize = 24;

/// A sparse vector: strictly increasing indices and their finite values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseVector {
    /// Dimensions, strictly increasing.
    pub indices: Vec<u32>,
    /// One finite value per index.
    pub values: Vec<f32>,
}

impl SparseVector {
    /// Checks the invariants; the error names the offending entry (`indices[3]`).
    pub fn validate(&self) -> Result<(), String> {
        if self.indices.len() != self.values.len() {
            return Err(format!(
                "indices has {} entries but values has {}",
                self.indices.len(),
                self.values.len()
            ));
        }
        if self.indices.len() > MAX_SPARSE_ENTRIES {
            return Err(format!(
                "{} entries; at most {MAX_SPARSE_ENTRIES}",
                self.indices.len()
            ));
        }
        for (i, w) in self.indices.windows(2).enumerate() {
            if w[1] <= w[0] {
                let what = if w[1] == w[0] { "repeats" } else { "is below" };
                return Err(format!(
                    "indices[{}]: {} {what} the previous index {}; indices must be strictly increasing",
                    i + 1,
                    w[1],
                    w[0]
                ));
            }
        }
        if let Some((i, v)) = self.values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(format!("values[{i}]: {v} is not finite"));
        }
        Ok(())
    }

    /// The dot product with `other` (both sorted).
    pub fn dot(&self, other: &SparseVector) -> f32 {
        let (mut i, mut j, mut s) = (0, 0, 0f32);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    s += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        s
    }
}

/// Reads a sparse vector from a payload value `{"indices": [...], "values": [...]}`; the
/// error names the entry at fault (`indices[2]: ...`).
pub fn parse_sparse(v: &Value) -> Result<SparseVector, String> {
    let Value::Object(o) = v else {
        return Err("a sparse vector is an object {\"indices\": [...], \"values\": [...]}".into());
    };
    if let Some(k) = o.keys().find(|k| *k != "indices" && *k != "values") {
        return Err(format!(
            "unknown key {k:?}; a sparse vector has indices and values"
        ));
    }
    let (Some(Value::Array(ix)), Some(Value::Array(vs))) = (o.get("indices"), o.get("values"))
    else {
        return Err("indices and values must both be arrays".into());
    };
    if ix.len() > MAX_SPARSE_ENTRIES {
        return Err(format!(
            "{} entries; at most {MAX_SPARSE_ENTRIES}",
            ix.len()
        ));
    }
    let mut out = SparseVector {
        indices: Vec::with_capacity(ix.len()),
        values: Vec::with_capacity(vs.len()),
    };
    for (i, x) in ix.iter().enumerate() {
        let n = x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("indices[{i}]: {x} is not an integer in 0..=4294967295"))?;
        out.indices.push(n);
    }
    for (i, x) in vs.iter().enumerate() {
        let f = x
            .as_f64()
            .ok_or_else(|| format!("values[{i}]: {x} is not a number"))?;
        let f32v = f as f32;
        if !f32v.is_finite() {
            return Err(format!("values[{i}]: {x} is not a finite 32-bit float"));
        }
        out.values.push(f32v);
    }
    out.validate()?;
    Ok(out)
}

#[derive(Debug, Clone, Default)]
struct Building {
    dims: HashMap<u32, (Vec<u32>, Vec<f32>)>,
    rows: u32,
}

#[derive(Debug, Clone)]
struct Sealed {
    blob: Blob,
    rows: u32,
    dims: usize,
    postings: usize,
    rows_at: usize,
    values_at: usize,
}

/// One segment's inverted index of one sparse field.
#[derive(Debug, Clone)]
pub struct SparseIndex(Inner);

#[derive(Debug, Clone)]
enum Inner {
    Building(Building),
    Sealed(Sealed),
}

impl Default for SparseIndex {
    fn default() -> Self {
        SparseIndex(Inner::Building(Building::default()))
    }
}

impl SparseIndex {
    /// An empty, mutable index.
    pub fn new() -> SparseIndex {
        SparseIndex::default()
    }

    /// Indexes `row` (rows arrive in increasing order) with its vector (entries of value 0
    /// are skipped: they contribute nothing).
    pub fn insert(&mut self, row: u32, v: &SparseVector) {
        let Inner::Building(b) = &mut self.0 else {
            debug_assert!(false, "insert into a sealed sparse index");
            return;
        };
        b.rows = b.rows.max(row + 1);
        for (&i, &x) in v.indices.iter().zip(&v.values) {
            if x != 0.0 {
                let e = b.dims.entry(i).or_default();
                e.0.push(row);
                e.1.push(x);
            }
        }
    }

    /// Calls `f` with the rows holding dimension `dim` and their values, and the largest
    /// absolute value among them.
    pub fn for_each_dim(&self, dim: u32, mut f: impl FnMut(&[u32], &[f32])) {
        match &self.0 {
            Inner::Building(b) => {
                if let Some((r, v)) = b.dims.get(&dim) {
                    f(r, v);
                }
            }
            Inner::Sealed(s) => {
                let Some((start, count)) = s.find(dim) else {
                    return;
                };
                let b = s.blob.as_ref();
                let (Some(r), Some(v)) = (
                    b.get(s.rows_at + 4 * start..s.rows_at + 4 * (start + count)),
                    b.get(s.values_at + 4 * start..s.values_at + 4 * (start + count)),
                ) else {
                    return;
                };
                let rows: Vec<u32> = r
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .filter(|&row| row < s.rows)
                    .collect();
                let vals: Vec<f32> = v
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let n = rows.len().min(vals.len());
                f(&rows[..n], &vals[..n]);
            }
        }
    }

    /// Turns the mutable form into the sealed one (a no-op when sealed).
    pub fn seal(&mut self, rows: u32) {
        if let Inner::Building(b) = &self.0 {
            let blob = Blob::new(Arc::new(encode(b, rows)));
            match Sealed::open(blob) {
                Some(s) => self.0 = Inner::Sealed(s),
                None => debug_assert!(false, "invariant: an encoded index opens"),
            }
        }
    }

    /// The sealed form's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            Inner::Building(b) => encode(b, b.rows),
            Inner::Sealed(s) => s.blob.as_ref().to_vec(),
        }
    }

    /// Opens the sealed form in place; `None` unless its sections are consistent.
    pub fn open(blob: Blob) -> Option<SparseIndex> {
        Sealed::open(blob).map(|s| SparseIndex(Inner::Sealed(s)))
    }
}

fn encode(b: &Building, rows: u32) -> Vec<u8> {
    let mut dims: Vec<_> = b.dims.iter().collect();
    dims.sort_unstable_by_key(|d| *d.0);
    let total: usize = dims.iter().map(|d| d.1.0.len()).sum();
    let mut out = Vec::with_capacity(HEADER + dims.len() * DIM_ENTRY + total * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    let mut first = 0u64;
    for (dim, (r, v)) in &dims {
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        out.extend_from_slice(&dim.to_le_bytes());
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&max.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        first += r.len() as u64;
    }
    for (_, (r, _)) in &dims {
        r.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    }
    for (_, (_, v)) in &dims {
        v.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    }
    out
}

impl Sealed {
    fn open(blob: Blob) -> Option<Sealed> {
        let b = blob.as_ref();
        if !has_header(b, MAGIC, FORMAT) {
            return None;
        }
        let rows = le_u32(b, 8)?;
        let dims = le_u32(b, 12)? as usize;
        let postings = usize::try_from(le_u64(b, 16)?).ok()?;
        let rows_at = HEADER.checked_add(dims.checked_mul(DIM_ENTRY)?)?;
        let values_at = rows_at.checked_add(postings.checked_mul(4)?)?;
        if values_at.checked_add(postings.checked_mul(4)?)? != b.len() {
            return None;
        }
        Some(Sealed {
            blob,
            rows,
            dims,
            postings,
            rows_at,
            values_at,
        })
    }

    /// (first posting, count) of `dim`, by binary search of the dimension table.
    fn find(&self, dim: u32) -> Option<(usize, usize)> {
        let b = self.blob.as_ref();
        let (mut lo, mut hi) = (0usize, self.dims);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = HEADER + mid * DIM_ENTRY;
            let d = le_u32(b, at)?;
            match d.cmp(&dim) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let count = le_u32(b, at + 4)? as usize;
                    let first = usize::try_from(le_u64(b, at + 8)?).ok()?;
                    if first.checked_add(count)? > self.postings {
                        return None;
                    }
                    return Some((first, count));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_sparse_vectors_are_named() {
        let e = |v: Value| parse_sparse(&v).unwrap_err();
        assert!(e(json!({"indices": [1, 1], "values": [0.1, 0.2]})).contains("indices[1]"));
        assert!(e(json!({"indices": [5, 2], "values": [0.1, 0.2]})).contains("indices[1]"));
        assert!(e(json!({"indices": [-1], "values": [0.1]})).contains("indices[0]"));
        assert!(e(json!({"indices": [1, 2], "values": [0.1]})).contains("entries"));
        assert!(e(json!({"indices": [1], "values": [1e39]})).contains("values[0]"));
        assert!(e(json!({"indices": [1], "values": ["x"]})).contains("values[0]"));
        assert!(e(json!({"indices": [1], "values": [1], "x": 1})).contains("unknown key"));
        let many: Vec<u32> = (0..=MAX_SPARSE_ENTRIES as u32).collect();
        assert!(e(json!({"indices": many, "values": vec![1.0; many.len()]})).contains("at most"));
        let ok = parse_sparse(&json!({"indices": [1, 7], "values": [0.5, -2]})).unwrap();
        assert_eq!(ok.indices, [1, 7]);
        assert_eq!(ok.values, [0.5, -2.0]);
    }

    #[test]
    fn sealed_dimensions_equal_the_mutable_ones() {
        let mut s = SparseIndex::new();
        for r in 0..500u32 {
            let v = SparseVector {
                indices: vec![r % 7, 100 + r % 13, 1_000_000],
                values: vec![r as f32, 0.5, if r % 2 == 0 { 0.0 } else { -1.0 }],
            };
            s.insert(r, &v);
        }
        let dump = |s: &SparseIndex| {
            let mut out = Vec::new();
            for d in [0, 3, 6, 7, 100, 112, 1_000_000, 5] {
                s.for_each_dim(d, |r, v| out.push((d, r.to_vec(), v.to_vec())));
            }
            out
        };
        let before = dump(&s);
        let mut sealed = s.clone();
        sealed.seal(500);
        let reopened = SparseIndex::open(Blob::new(Arc::new(sealed.to_bytes()))).unwrap();
        assert_eq!(before, dump(&sealed));
        assert_eq!(before, dump(&reopened));
        assert_eq!(
            before.iter().find(|d| d.0 == 1_000_000).unwrap().1.len(),
            250
        );
    }
}
