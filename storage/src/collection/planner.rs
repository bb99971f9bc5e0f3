//! The search planner: how a search reads each segment of its snapshot.
//!
//! Without a filter, a sealed segment with a usable IVF-PQ index is probed and every other
//! segment scanned exactly. With a filter, the allowed rows of each segment are known first
//! (see [`crate::filter`]); a segment with none is skipped, and a sealed one with an index is
//! probed only when that is cheaper than an exact scan of its allowed rows, with nprobe
//! raised for the share of rows the filter allows.
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::{Collection, read};
use crate::filter::allowed::Allowed;
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
        (Rows::Only(rows), index) => {
            let fraction = rows.len() as f64 / f64::from(s.rows().max(1));
            match index.filter(|idx| !exact_is_cheaper(idx, rows.len(), s.rows(), params, dim)) {
                Some(idx) => Plan::Index {
                    idx,
                    nprobe: nprobe(idx, params, fraction),
                    allowed: Some(rows),
                },
                None => Plan::Exact(Rows::Only(rows)),
            }
        }
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
/// mostly within the nearest lists; probing nprobe / √f lists (capped at every list) keeps
/// recall at the unfiltered level in the selectivity tests, where 1 / f would probe far more.
fn filtered_nprobe(idx: &IvfPqIndex, params: SearchParams, fraction: f64) -> usize {
    let base = base_nprobe(idx, params);
    // A caller's nprobe may exceed this segment's nlist: never probe more lists than exist.
    ((base as f64 / fraction.max(1e-9).sqrt()).ceil() as usize)
        .max(base)
        .min(idx.nlist())
}

/// Is an exact scan of `allowed` rows cheaper than the filtered index probe?
/// Costs in float-equivalents of the exact scan: exact = rows × dim; index = centroids × dim +
/// probed codes × cost per code, measured on GloVe-50 (a 4-bit fast-scan code costs about
/// m / 12, an 8-bit ADC code about 2m: 1.3 and 17 ns against 0.3 ns per exact float).
fn exact_is_cheaper(
    idx: &IvfPqIndex,
    allowed: u64,
    rows: u32,
    params: SearchParams,
    dim: usize,
) -> bool {
    let fraction = allowed as f64 / f64::from(rows.max(1));
    let probed = filtered_nprobe(idx, params, fraction) as f64 / idx.nlist() as f64;
    let per_code = if idx.bits() == 4 {
        idx.m() as f64 / 12.0
    } else {
        idx.m() as f64 * 2.0
    };
    let index_cost = (idx.nlist() * dim) as f64 + probed * f64::from(rows) * per_code;
    (allowed as f64) * (dim as f64) <= index_cost
}

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
