//! The search planner: how a search reads each segment of its snapshot.
//!
//! Without a filter, a sealed segment with a usable IVF-PQ index is probed and every other
//! segment scanned exactly. With a filter, the allowed rows of each segment are known first
//! (see [`crate::filter`]); a segment with none is skipped. For a sealed one with an index,
//! nprobe is raised for the share of rows the filter allows, and the cheapest of three reads
//! is taken (see [`Shape::cheapest`]): every allowed row exactly, the allowed rows of each
//! query's nearest lists exactly, or the index probe.
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::{Collection, read};
use crate::filter::allowed::Allowed;
use crate::index::calibrate::{DEFAULT_WIDENING, widened};
use crate::index::ivf::IvfPqIndex;
use crate::segment::SegmentId;
use crate::segment::sealed::SealedSegment;
use crate::types::{DEFAULT_TARGET_RECALL_BP, SearchParams};

/// Which rows of a segment a search may return.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rows<'a> {
    /// Every live row (no filter).
    All,
    /// None: the filter allows nothing here.
    Nothing,
    /// The filter's allowed rows (live ones only).
    Only(&'a RoaringBitmap),
}

/// How a search reads a sealed segment.
#[derive(Debug, Clone, Copy)]
pub(super) enum Plan<'a> {
    /// An exact scan of these rows.
    Exact(Rows<'a>),
    /// The IVF-PQ index at `nprobe` lists, candidates re-ranked exactly. `allowed`: the only
    /// rows that may be returned (`None`: every live row).
    Index {
        /// The segment's index.
        idx: &'a IvfPqIndex,
        /// Lists to probe.
        nprobe: usize,
        /// The filter's allowed rows, if any.
        allowed: Option<&'a RoaringBitmap>,
    },
    /// An exact scan of the allowed rows that lie in the `nprobe` lists of `idx` nearest to
    /// each query: the index only chooses the rows, so there is no quantisation error.
    Listed {
        /// The segment's index.
        idx: &'a IvfPqIndex,
        /// Lists whose allowed rows are scanned.
        nprobe: usize,
        /// The filter's allowed rows.
        rows: &'a RoaringBitmap,
    },
}

/// The rows of segment `id` a search may return, given the allowed rows of its filter.
pub(super) fn rows(allowed: Option<&Allowed>, id: SegmentId) -> Rows<'_> {
    match allowed.map(|a| a.get(&id)) {
        None => Rows::All,
        Some(None) => Rows::Nothing,
        Some(Some(rows)) => Rows::Only(rows),
    }
}

/// How a search with `params` reads sealed segment `s` (of dimension `dim`).
pub(super) fn plan_sealed<'a>(
    s: &'a SealedSegment,
    allowed: Option<&'a Allowed>,
    params: SearchParams,
    dim: usize,
) -> Plan<'a> {
    let index = s.index().filter(|_| !params.exact).map(|i| &**i);
    match (rows(allowed, s.id), index) {
        (Rows::All, Some(idx)) => Plan::Index {
            idx,
            nprobe: nprobe(idx, params, 1.0),
            allowed: None,
        },
        (Rows::All, None) => Plan::Exact(Rows::All),
        (Rows::Nothing, _) => Plan::Exact(Rows::Nothing),
        (Rows::Only(rows), None) => Plan::Exact(Rows::Only(rows)),
        (Rows::Only(rows), Some(idx)) => {
            let fraction = rows.len() as f64 / f64::from(s.rows().max(1));
            plan_filtered(idx, rows, s.rows(), nprobe(idx, params, fraction), dim)
        }
    }
}

/// How a filtered search reads `rows` (allowed) of a sealed segment of `seg_rows` rows with
/// index `idx`, at `nprobe` lists: the cheapest read by [`Shape::cheapest`].
pub(crate) fn plan_filtered<'a>(
    idx: &'a IvfPqIndex,
    rows: &'a RoaringBitmap,
    seg_rows: u32,
    nprobe: usize,
    dim: usize,
) -> Plan<'a> {
    match Shape::of(idx, dim).cheapest(rows.len(), seg_rows, nprobe) {
        Read::Exact => Plan::Exact(Rows::Only(rows)),
        Read::Listed => Plan::Listed { idx, nprobe, rows },
        Read::Index => Plan::Index {
            idx,
            nprobe,
            allowed: Some(rows),
        },
    }
}

/// Queries searched together in one group of a batch. Exact scans want the group's vectors in
/// L1 (~32 KiB) beside each row. An indexed segment probes a group with one matrix product of
/// its queries against the centroids, which pays more the larger the group (Fashion-MNIST,
/// batches of 100 on one thread, nprobe 8: groups of 10 gave 10,210 QPS, 25 gave 13,210, 50
/// gave 14,438, 100 gave 17,826), so there the batch is split evenly over the threads, down
/// to one query per thread: a small batch still uses every core, as the same searches sent
/// one by one would.
pub(super) fn query_group(
    sealed: &[Arc<SealedSegment>],
    params: SearchParams,
    dim: usize,
    queries: usize,
) -> usize {
    let l1 = (32 * 1024 / (4 * dim.max(1))).clamp(1, 64);
    if params.exact || !sealed.iter().any(|s| s.index().is_some()) {
        return l1;
    }
    let threads = rayon::current_num_threads().max(1);
    queries.div_ceil(threads).clamp(1, MAX_INDEX_GROUP)
}

/// Most queries in one group of an indexed search.
const MAX_INDEX_GROUP: usize = 128;

/// Whether the sealed segments are worth scanning on several threads: thread hand-offs cost
/// tens of microseconds, worth it for exact scans of several segments, not for cheap index
/// probes only.
pub(super) fn scan_in_parallel(sealed: &[Arc<SealedSegment>], params: SearchParams) -> bool {
    let cheap = sealed.iter().all(|s| s.index().is_some() && !params.exact);
    !(cheap || sealed.len() < 2)
}

/// The nprobe of a probe of `idx` when a filter allows `fraction` of the rows (1: none).
fn nprobe(idx: &IvfPqIndex, params: SearchParams, fraction: f64) -> usize {
    if fraction < 1.0 {
        filtered_nprobe(idx, params, fraction)
    } else {
        base_nprobe(idx, params)
    }
}

/// The nprobe a search asks of `idx`: explicit, else the calibrated one for the search's
/// target recall (see [`IvfPqIndex::nprobe_for`]). A search that sets neither gets the
/// calibrated nprobe for [`DEFAULT_TARGET_RECALL_BP`]. Until served queries are measured, that
/// is at least [`MIN_DEFAULT_NPROBE`] lists: the held-out calibration's queries are the
/// segment's own rows, and queries unlike the data (measured: a test whose queries come from
/// other clusters than the data, on segments of 76 lists) need more lists for the same recall
/// than a small index's held-out curve says.
fn base_nprobe(idx: &IvfPqIndex, params: SearchParams) -> usize {
    params
        .nprobe
        .unwrap_or_else(|| match params.target_recall_bp {
            Some(bp) => idx.nprobe_for(f64::from(bp) / 10_000.0),
            None => {
                let target = f64::from(DEFAULT_TARGET_RECALL_BP) / 10_000.0;
                idx.served().nprobe_for(target).unwrap_or_else(|| {
                    idx.calibration()
                        .nprobe_for(target)
                        .max(MIN_DEFAULT_NPROBE)
                        .min(idx.nlist())
                })
            }
        })
}

/// The fewest lists a search without `nprobe` or a target probes (see [`base_nprobe`]). A
/// floor as a share of nlist (nlist / 16 was measured) costs high-dimensional sets most: on
/// Fashion-MNIST it probed 61 lists where the calibration's 10 reached recall 0.97.
const MIN_DEFAULT_NPROBE: usize = 8;

/// The nprobe for a filtered search. The k nearest allowed rows are about the k / f nearest
/// rows overall (f = allowed fraction), which lie further out than the unfiltered top k but
/// mostly within the nearest lists: nprobe grows to base × f^−e (capped at every list). With
/// a target (its own or the default), e is measured on the filtered queries the segment
/// serves ([`crate::index::calibrate::Served::widening_for`]); until enough are, and with an
/// explicit nprobe, e is ½ (nprobe / √f), which kept recall at the unfiltered level in the
/// selectivity tests, where 1 / f would probe far more.
fn filtered_nprobe(idx: &IvfPqIndex, params: SearchParams, fraction: f64) -> usize {
    let base = base_nprobe(idx, params);
    let e = match params.nprobe {
        Some(_) => DEFAULT_WIDENING,
        None => {
            let bp = params.target_recall_bp.unwrap_or(DEFAULT_TARGET_RECALL_BP);
            idx.served()
                .widening_for(f64::from(bp) / 10_000.0, base, fraction)
                .unwrap_or(DEFAULT_WIDENING)
        }
    };
    // A caller's nprobe may exceed this segment's nlist: never probe more lists than exist.
    widened(base, fraction, e, idx.nlist())
}

/// The three ways to read a sealed segment's allowed rows when it has an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Every allowed row, exactly.
    Exact,
    /// The allowed rows of the nearest lists, exactly.
    Listed,
    /// The index probe, allowed rows checked on its candidates.
    Index,
}

/// What the planner's cost model needs of a segment's index.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nlist: usize,
    dim: usize,
    /// A probed code's cost in float-equivalents of the exact scan, measured on GloVe-50: a
    /// 4-bit fast-scan code costs about m / 12, an 8-bit ADC code about 2m (1.3 and 17 ns
    /// against 0.3 ns per exact float).
    per_code: f64,
}

impl Shape {
    fn of(idx: &IvfPqIndex, dim: usize) -> Shape {
        let m = idx.m() as f64;
        Shape {
            nlist: idx.nlist(),
            dim,
            per_code: if idx.bits() == 4 { m / 12.0 } else { m * 2.0 },
        }
    }

    /// The cheapest way to read `allowed` of a segment's `rows` through `nprobe` lists.
    /// Costs in float-equivalents of a sequential exact scan:
    /// * exact = allowed × dim × [`SCATTERED`];
    /// * listed = centroids × dim + allowed × (a row's list lookup, [`LIST_LOOKUP`]) + the
    ///   share of allowed rows in the probed lists × dim × [`SCATTERED`];
    /// * index = centroids × dim + probed codes × cost per code.
    fn cheapest(self, allowed: u64, rows: u32, nprobe: usize) -> Read {
        let probed = nprobe.min(self.nlist) as f64 / self.nlist.max(1) as f64;
        let (allowed, dim) = (allowed as f64, self.dim as f64);
        let coarse = self.nlist as f64 * dim;
        let row = dim * SCATTERED;
        let costs = [
            (Read::Exact, allowed * row),
            (
                Read::Listed,
                coarse + allowed * (LIST_LOOKUP + probed * row),
            ),
            (
                Read::Index,
                coarse + probed * f64::from(rows) * self.per_code,
            ),
        ];
        costs
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(Read::Exact, |c| c.0)
    }
}

/// The cost of a float of a row read out of order (the allowed rows of a filter), against one
/// read in order: GloVe-50's 1% filter reads its 3,900 scattered rows at 26–36 ns each (0.5–0.7
/// ns per float; `filter-bench`, 2026-12-07), a sequential scan at about 0.3 ns per float.
const SCATTERED: f64 = 2.0;

/// A listed scan's cost per allowed row to find and group it by its list, in float-equivalents
/// (about 4 ns, a cache line of the row-to-list map per row): measured on GloVe-50's 1% filter
/// (3,900 allowed rows), where a listed scan of nearly every list took 165 µs a query against
/// 134 µs for the exact scan, the coarse ranking (1024 × 50 floats) accounting for 15 µs.
const LIST_LOOKUP: f64 = 12.0;

impl Collection {
    /// Floats a search with `params` would scan exactly (rows without a usable index ×
    /// dimension): a cost estimate, so a server can run cheap searches inline and send
    /// expensive ones to a worker pool.
    pub fn exact_scan_floats(&self, params: SearchParams) -> usize {
        let snap = self.snapshot();
        let sealed: usize = snap
            .sealed
            .iter()
            .filter(|s| params.exact || s.index().is_none())
            .map(|s| s.rows() as usize)
            .sum();
        let memory: usize = [snap.frozen.as_ref(), Some(&snap.mutable)]
            .into_iter()
            .flatten()
            .map(|m| read(m).rows())
            .sum();
        (sealed + memory) * self.config.dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plans the cost model picks for GloVe-50's one 390k-row segment (nlist 1024, 4-bit
    /// codes, m 50) at the selectivities of `filter-bench`, at the nprobe the planner asks for
    /// (a base of 64 lists over √f): an exact scan of few rows, the nearest lists' allowed
    /// rows at 1%, the index probe from 10% up; and 8-bit codes (17 ns each) keep the listed
    /// scan to 10%.
    #[test]
    fn each_selectivity_gets_the_read_measured_cheapest() {
        let rows = 390_000u32;
        let fast = Shape {
            nlist: 1024,
            dim: 50,
            per_code: 50.0 / 12.0,
        };
        let probe = |f: f64| ((64.0 / f.sqrt()).ceil() as usize).min(1024);
        let at =
            |shape: Shape, f: f64| shape.cheapest((f * f64::from(rows)) as u64, rows, probe(f));
        assert_eq!(at(fast, 0.001), Read::Exact);
        assert_eq!(at(fast, 0.01), Read::Listed);
        assert_eq!(at(fast, 0.1), Read::Index);
        assert_eq!(at(fast, 0.5), Read::Index);
        let adc = Shape {
            per_code: 100.0,
            ..fast
        };
        assert_eq!(at(adc, 0.1), Read::Listed);
        // A caller's nprobe above nlist reads every list, no more: half the rows allowed, the
        // index (every code) still beats an exact scan of them.
        assert_eq!(fast.cheapest(195_000, rows, 1_000_000), Read::Index);
    }
}
