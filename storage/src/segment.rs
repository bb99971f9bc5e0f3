//! Segments: the mutable in-memory segment that takes writes, and sealed, write-once,
//! memory-mapped segments on disk. Both are scanned exactly by [`scan_rows`].
pub mod mutable;
pub mod sealed;

use crate::distance::{TopK, distance};
use crate::types::Metric;

/// Identifies a segment within a collection; also its directory name. The mutable segment
/// keeps its id when it is sealed, and each new mutable segment takes the next multiple of
/// [`SEGMENT_ID_STRIDE`], so sealed segments in id order hold rows in write order. Compaction
/// writes the merge of consecutive segments as the last victim's id + 1: ids stay unique and in
/// the same order, and no id is ever reused.
pub type SegmentId = u64;

/// The gap between the ids of successive mutable segments (room for compacted generations).
pub const SEGMENT_ID_STRIDE: SegmentId = 1 << 16;

/// A candidate's key in a search: (segment id, row within it). Ordered, so ties are deterministic.
pub type RowKey = (SegmentId, u32);

/// Exact scan of row-major `vectors` (dim `dim`) for several queries at once: each row is read
/// from memory once and compared with every query while it is in L1, so a batch costs one pass
/// over the segment instead of one per query. `is_deleted` is asked only for rows that would
/// enter a top-k, so tombstone checks cost nothing on the common path.
pub fn scan_rows(
    metric: Metric,
    queries: &[Vec<f32>],
    vectors: &[f32],
    dim: usize,
    segment: SegmentId,
    tops: &mut [TopK<RowKey>],
    is_deleted: impl Fn(u32) -> bool,
) {
    debug_assert_eq!(queries.len(), tops.len());
    for (row, v) in vectors.chunks_exact(dim).enumerate() {
        for (q, top) in queries.iter().zip(tops.iter_mut()) {
            let d = distance(metric, q, v);
            if d < top.threshold() && !is_deleted(row as u32) {
                top.push(d, (segment, row as u32));
            }
        }
    }
}
