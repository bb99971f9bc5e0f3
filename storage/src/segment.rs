//! Segments: the mutable in-memory segment that takes writes, and sealed, write-once,
//! memory-mapped segments on disk. Both are scanned exactly by [`scan_rows`].
pub mod mutable;
pub mod sealed;

use crate::distance::{TopK, distance};
use crate::types::Metric;

/// Identifies a segment within a collection. Ids increase: a segment with a larger id holds
/// newer rows; the mutable segment keeps its id when it is sealed.
pub type SegmentId = u64;

/// A candidate's key in a search: (segment id, row within it). Ordered, so ties are deterministic.
pub type RowKey = (SegmentId, u32);

/// Exact scan of row-major `vectors` (dim `dim`) into `top`. `is_deleted` is asked only for
/// rows that would enter the top-k, so tombstone checks cost nothing on the common path.
pub fn scan_rows(
    metric: Metric,
    query: &[f32],
    vectors: &[f32],
    dim: usize,
    segment: SegmentId,
    top: &mut TopK<RowKey>,
    is_deleted: impl Fn(u32) -> bool,
) {
    for (row, v) in vectors.chunks_exact(dim).enumerate() {
        let d = distance(metric, query, v);
        if d < top.threshold() && !is_deleted(row as u32) {
            top.push(d, (segment, row as u32));
        }
    }
}
