//! The search executor. A batch of queries is answered in four steps:
//! 1. a snapshot of the segments, and the rows a filter (if any) allows in each;
//! 2. the queries validated (each fails alone) and normalised;
//! 3. per segment, the plan of [`super::planner`] (exact scan, scan of the allowed rows, scan of
//!    the allowed rows of each query's nearest lists, or an index probe) run for a group of
//!    queries, the per-query top-k merged across segments;
//! 4. the hits resolved (ids, vectors, payloads) within the response budget.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use roaring::RoaringBitmap;

use super::planner::{self, Plan, Rows};
use super::{Collection, Snapshot, read};
use crate::distance::{TopK, distance};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::filter::allowed::Allowed;
use crate::index::audit;
use crate::index::calibrate::K;
use crate::index::ivf::IvfPqIndex;
use crate::segment::sealed::SealedSegment;
use crate::segment::{RowKey, SegmentId};
use crate::types::{
    DEFAULT_REFINE, Hit, Metric, PointRecord, ReadOptions, SearchParams, normalize, validate_vector,
};

fn too_many_hit_bytes(budget: usize) -> Error {
    Error::TooLarge {
        field: "k".into(),
        detail: format!(
            "the hits exceed the response budget of {budget} bytes; ask for fewer hits, or without vectors or payloads"
        ),
    }
}

impl Collection {
    fn check_query(&self, vector: &[f32], field: &str) -> Result<Vec<f32>> {
        validate_vector(vector, self.config.dim, field)?;
        let mut v = vector.to_vec();
        if self.config.metric == Metric::Cosine {
            normalize(&mut v, field)?;
        }
        Ok(v)
    }

    /// Exact k-nearest-neighbour search over every segment.
    #[tracing::instrument(skip_all, fields(collection = %self.config.name, k))]
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        opts: ReadOptions,
        params: SearchParams,
    ) -> Result<Vec<Hit>> {
        self.search_batch(&[(query, k)], opts, params)
            .pop()
            .expect("invariant: one result per query")
    }

    /// [`Collection::search_batch`] without a filter.
    pub fn search_batch(
        &self,
        queries: &[(&[f32], usize)],
        opts: ReadOptions,
        params: SearchParams,
    ) -> Vec<Result<Vec<Hit>>> {
        self.search_batch_filtered(queries, opts, params, None)
    }

    /// Exact search for many queries, each with its own k; one result per query, in order.
    /// Queries are scanned in groups that fit in L1, so every segment row is read once per group
    /// rather than once per query: less cache traffic per query, measured +59% QPS on GloVe-50.
    ///
    /// With a filter, each segment first computes its allowed rows as a bitmap (declared fields
    /// from their indexes, the rest from payloads); with an index, nprobe is raised for the
    /// allowed fraction f (to nprobe / √f, or as measured on served filtered queries: see
    /// [`planner`]). The planner then picks the cheapest read per
    /// segment: an exact scan of the allowed rows, an exact scan of the allowed rows in each
    /// query's nearest lists, or the IVF probe with the bitmap checked on every candidate.
    #[tracing::instrument(skip_all, fields(collection = %self.config.name, queries = queries.len()))]
    pub fn search_batch_filtered(
        &self,
        queries: &[(&[f32], usize)],
        opts: ReadOptions,
        params: SearchParams,
        filter: Option<&Filter>,
    ) -> Vec<Result<Vec<Hit>>> {
        let started = std::time::Instant::now();
        let expired = || Error::DeadlineExceeded {
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        if params.expired() {
            return queries.iter().map(|_| Err(expired())).collect();
        }
        // 1. The snapshot, and the rows the filter allows in each of its segments.
        let snap = self.snapshot();
        let allowed = match filter.map(|f| self.allowed_rows(&snap, f)).transpose() {
            Ok(a) => a,
            Err(e) => return queries.iter().map(|_| Err(e.duplicate())).collect(),
        };
        // 2. The queries, validated and normalised.
        let checked: Vec<Result<Vec<f32>>> = queries
            .iter()
            .map(|(q, _)| self.check_query(q, "vector"))
            .collect();
        let valid: Vec<usize> = (0..queries.len()).filter(|i| checked[*i].is_ok()).collect();
        let vectors: Vec<Vec<f32>> = valid
            .iter()
            .map(|i| checked[*i].as_ref().cloned().unwrap_or_default())
            .collect();
        let ks: Vec<usize> = valid.iter().map(|i| queries[*i].1).collect();
        if params.expired() {
            return queries.iter().map(|_| Err(expired())).collect();
        }
        // 3. Every segment read as planned, the top-k of each valid query merged.
        let exec = Executor {
            snap: &snap,
            allowed: allowed.as_ref(),
            params,
            metric: self.config.metric,
            dim: self.config.dim,
            parallel: planner::scan_in_parallel(&snap.sealed, params),
            stopped: AtomicBool::new(false),
        };
        let tops = exec.run(&vectors, &ks);
        if exec.stopped.load(Ordering::Relaxed) {
            return queries.iter().map(|_| Err(expired())).collect();
        }
        // The audit measures at the default refine factor, so only searches that use it.
        if params.nprobe.is_none() && params.refine.is_none() && !params.exact && audit::due() {
            self.offer_to_audit(&snap, &vectors, allowed.as_ref());
        }
        // 4. The hits.
        self.hits(&snap, checked, tops, opts, params.response_budget)
    }

    /// The dense branch of a hybrid search: the top `k` of one query in `snap`, among the
    /// rows `allowed` (if a filter was given), planned as [`Collection::search_batch_filtered`]
    /// plans; candidates with the metric's user-facing score (higher is better).
    pub(super) fn dense_top(
        &self,
        snap: &Snapshot,
        allowed: Option<&Allowed>,
        query: &[f32],
        k: usize,
        params: SearchParams,
        started: std::time::Instant,
    ) -> Result<Vec<(RowKey, f32)>> {
        let q = self.check_query(query, "vector")?;
        let exec = Executor {
            snap,
            allowed,
            params,
            metric: self.config.metric,
            dim: self.config.dim,
            parallel: planner::scan_in_parallel(&snap.sealed, params),
            stopped: AtomicBool::new(false),
        };
        let vectors = [q];
        let top = exec
            .run(&vectors, &[k])
            .pop()
            .unwrap_or_else(|| TopK::new(k));
        if exec.stopped.load(Ordering::Relaxed) {
            return Err(Error::DeadlineExceeded {
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
        }
        let metric = self.config.metric;
        Ok(top
            .into_sorted()
            .into_iter()
            .map(|c| (c.key, metric.score(c.distance)))
            .collect())
    }

    /// Measures `query` now, in this thread, on every indexed sealed segment, as the sampled
    /// recall audit does in the background (see [`audit`]); returns how many segments were
    /// measured. For benchmarks and tests that want the served curve without waiting for the
    /// sampled audit.
    pub fn audit_recall(&self, query: &[f32]) -> Result<usize> {
        let q = self.check_query(query, "vector")?;
        let snap = self.snapshot();
        Ok(snap
            .sealed
            .iter()
            .filter(|s| audit::measure(s, &q, self.config.metric).is_some())
            .count())
    }

    /// [`Collection::audit_recall`] for a filtered search: measures `query` with `filter` now,
    /// on every indexed sealed segment where the filter allows some rows but not all, as the
    /// audit measures sampled filtered searches (see [`measure_filtered`]); returns how many
    /// segments were measured.
    pub fn audit_recall_filtered(&self, query: &[f32], filter: &Filter) -> Result<usize> {
        let q = self.check_query(query, "vector")?;
        let snap = self.snapshot();
        let allowed = self.allowed_rows(&snap, filter)?;
        let (metric, dim) = (self.config.metric, self.config.dim);
        Ok(snap
            .sealed
            .iter()
            .filter(|s| {
                allowed
                    .get(&s.id)
                    .is_some_and(|rows| measure_filtered(s, rows, &q, metric, dim).is_some())
            })
            .count())
    }

    /// Hands the first of `vectors` to the recall audit, with the indexed segments it read and,
    /// for a filtered search, the rows its filter allowed in each.
    fn offer_to_audit(&self, snap: &Snapshot, vectors: &[Vec<f32>], allowed: Option<&Allowed>) {
        let Some(q) = vectors.first() else {
            return;
        };
        let (metric, dim) = (self.config.metric, self.config.dim);
        audit::offer(|| {
            // (segment, the rows its filter allows; `None`: no filter), copied only once the
            // audit has taken this query. Segments where the filter allows nothing are
            // measured without it.
            let indexed: Vec<(Arc<SealedSegment>, Option<RoaringBitmap>)> = snap
                .sealed
                .iter()
                .filter(|s| s.index().is_some())
                .map(|s| (s.clone(), allowed.and_then(|a| a.get(&s.id)).cloned()))
                .collect();
            let q = q.clone();
            (!indexed.is_empty()).then_some(move || {
                for (seg, rows) in &indexed {
                    audit::measure(seg, &q, metric);
                    if let Some(rows) = rows {
                        measure_filtered(seg, rows, &q, metric, dim);
                    }
                }
            })
        });
    }

    /// The hits of each query from its top-k (`tops`: one per valid query of `checked`, in
    /// order), resolved within `budget` bytes for the whole batch (0: no limit).
    fn hits(
        &self,
        snap: &Snapshot,
        checked: Vec<Result<Vec<f32>>>,
        tops: Vec<TopK<RowKey>>,
        opts: ReadOptions,
        budget: usize,
    ) -> Vec<Result<Vec<Hit>>> {
        let metric = self.config.metric;
        let mut tops = tops.into_iter();
        let mut spent = 0usize;
        checked
            .into_iter()
            .map(|c| {
                c?;
                let top = tops.next().expect("invariant: one top-k per valid query");
                let cands = top.into_sorted();
                let keys: Vec<RowKey> = cands.iter().map(|c| c.key).collect();
                let left = if budget == 0 {
                    0
                } else if spent >= budget {
                    return Err(too_many_hit_bytes(budget));
                } else {
                    budget - spent
                };
                let (records, truncated) = self.resolve_within(snap, &keys, opts, left)?;
                if truncated {
                    spent = budget;
                    return Err(too_many_hit_bytes(budget));
                }
                spent += records
                    .iter()
                    .map(PointRecord::response_bytes)
                    .sum::<usize>();
                Ok(cands
                    .into_iter()
                    .zip(records)
                    .map(|(c, r)| Hit {
                        id: r.id,
                        score: metric.score(c.distance),
                        vector: r.vector,
                        payload: r.payload,
                    })
                    .collect())
            })
            .collect()
    }
}

/// One batch's scan of a snapshot: what every query group shares.
struct Executor<'a> {
    snap: &'a Snapshot,
    allowed: Option<&'a Allowed>,
    params: SearchParams,
    metric: Metric,
    dim: usize,
    /// Sealed segments are scanned on several threads (see [`planner::scan_in_parallel`]).
    parallel: bool,
    /// Set when the deadline passed during the scan.
    stopped: AtomicBool,
}

impl Executor<'_> {
    /// The top-k of each query, in groups of [`planner::query_group`] queries: L1-sized for
    /// exact scans, the batch split over the threads for indexed segments.
    fn run(&self, vectors: &[Vec<f32>], ks: &[usize]) -> Vec<TopK<RowKey>> {
        let group = planner::query_group(&self.snap.sealed, self.params, self.dim, vectors.len());
        if vectors.len() <= group {
            self.group(vectors, ks)
        } else {
            vectors
                .par_chunks(group)
                .zip(ks.par_chunks(group))
                .flat_map_iter(|(qs, ks)| self.group(qs, ks))
                .collect()
        }
    }

    /// The top-k of each query of one group over every segment.
    fn group(&self, qs: &[Vec<f32>], ks: &[usize]) -> Vec<TopK<RowKey>> {
        let fresh = || fresh_tops(ks);
        let sealed = &self.snap.sealed;
        let mut tops = if self.parallel {
            sealed
                .par_iter()
                .map(|s| self.sealed(s, qs, ks))
                .reduce(fresh, merge)
        } else {
            sealed
                .iter()
                .map(|s| self.sealed(s, qs, ks))
                .fold(fresh(), merge)
        };
        for m in [self.snap.frozen.as_ref(), Some(&self.snap.mutable)]
            .into_iter()
            .flatten()
        {
            let m = read(m);
            match planner::rows(self.allowed, m.id) {
                Rows::All => m.scan(self.metric, qs, &mut tops),
                Rows::Nothing => {}
                Rows::Only(rows) => {
                    scan_allowed(self.metric, qs, rows, |r| m.vector(r), m.id, &mut tops)
                }
            }
        }
        tops
    }

    /// The top-k of each query of one group in sealed segment `s`, as planned.
    fn sealed(&self, s: &Arc<SealedSegment>, qs: &[Vec<f32>], ks: &[usize]) -> Vec<TopK<RowKey>> {
        let mut t = fresh_tops(ks);
        if self.params.expired() {
            self.stopped.store(true, Ordering::Relaxed);
            return t;
        }
        let plan = planner::plan_sealed(s, self.allowed, self.params, self.dim);
        if read_planned(s, plan, self.metric, qs, ks, self.params, &mut t) == Reread::Expired {
            // Short queries left short: the search ends as past its deadline.
            self.stopped.store(true, Ordering::Relaxed);
        }
        t
    }
}

/// Reads sealed segment `s` as `plan` says, for each query of `qs` into its top-k; after a
/// filtered index probe, short queries read again ([`reread_short`]).
#[allow(clippy::too_many_arguments)]
fn read_planned(
    s: &SealedSegment,
    plan: Plan<'_>,
    metric: Metric,
    qs: &[Vec<f32>],
    ks: &[usize],
    params: SearchParams,
    t: &mut [TopK<RowKey>],
) -> Reread {
    match plan {
        Plan::Exact(Rows::All) => s.scan(metric, qs, t),
        Plan::Exact(Rows::Nothing) => {} // nothing allowed here
        Plan::Exact(Rows::Only(rows)) => scan_allowed(metric, qs, rows, |r| s.vector(r), s.id, t),
        Plan::Listed { idx, nprobe, rows } => {
            scan_listed(metric, qs, rows, idx, nprobe, |r| s.vector(r), s.id, t)
        }
        Plan::Index {
            idx,
            nprobe,
            allowed: None,
        } => {
            let deleted = s.deleted_guard();
            let excluded = |r| deleted.contains(r);
            search_index(s, idx, metric, qs, ks, params, nprobe, excluded, t);
        }
        Plan::Index {
            idx,
            nprobe,
            allowed: Some(rows),
        } => {
            let excluded = |r| !rows.contains(r);
            search_index(s, idx, metric, qs, ks, params, nprobe, excluded, t);
            return reread_short(s, rows, metric, qs, ks, params, t);
        }
    }
    Reread::Nothing
}

/// After a filtered index probe of segment `s` ([`Plan::Index`] with `rows` allowed): the
/// probed lists may hold fewer allowed rows than a query asks for (a filter whose rows lie
/// away from the query: measured, 0 of 10 hits through `quiverd` for a filter allowing 4 of
/// 40 clusters). Such queries read every allowed row exactly instead, in one pass, so they
/// never come back short, unless the search is past its deadline.
fn reread_short(
    s: &SealedSegment,
    rows: &RoaringBitmap,
    metric: Metric,
    qs: &[Vec<f32>],
    ks: &[usize],
    params: SearchParams,
    t: &mut [TopK<RowKey>],
) -> Reread {
    let allowed = usize::try_from(rows.len()).unwrap_or(usize::MAX);
    let short: Vec<usize> = (0..qs.len())
        .filter(|&i| t[i].len() < ks[i].min(allowed))
        .collect();
    if short.is_empty() {
        return Reread::Nothing;
    }
    if params.expired() {
        return Reread::Expired;
    }
    let again: Vec<Vec<f32>> = short.iter().map(|&i| qs[i].clone()).collect();
    let mut tops: Vec<TopK<RowKey>> = short.iter().map(|&i| TopK::new(ks[i])).collect();
    scan_allowed(metric, &again, rows, |r| s.vector(r), s.id, &mut tops);
    for (i, top) in short.into_iter().zip(tops) {
        t[i] = top;
    }
    Reread::Done
}

/// What [`reread_short`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    /// No query came back short, or the plan was not a filtered probe.
    Nothing,
    /// The short queries read every allowed row.
    Done,
    /// Some came back short, and the deadline had passed: left short.
    Expired,
}

/// Measures one filtered query on sealed segment `s`, whose filter allows `rows`: its exact
/// top-10 among those rows, then its recall@10 at each nprobe of the index's served grid, read
/// as a filtered search at that nprobe is read (exact, listed, or the index probe with the
/// default refine, and every allowed row when the probe comes back short), and records them
/// in the index's served record (see [`crate::index::calibrate::Served::widening_for`]). `None` (nothing recorded): no index, no
/// row allowed, or every row.
fn measure_filtered(
    s: &SealedSegment,
    rows: &RoaringBitmap,
    query: &[f32],
    metric: Metric,
    dim: usize,
) -> Option<Vec<f32>> {
    let idx = s.index()?;
    let fraction = rows.len() as f64 / f64::from(s.rows().max(1));
    if rows.is_empty() || fraction >= 1.0 {
        return None;
    }
    let qs = [query.to_vec()];
    let ks = [K];
    let mut truth = fresh_tops(&ks);
    scan_allowed(metric, &qs, rows, |r| s.vector(r), s.id, &mut truth);
    let want: Vec<RowKey> = truth.pop()?.into_sorted().iter().map(|c| c.key).collect();
    if want.is_empty() {
        return None;
    }
    let grid = idx.served().grid();
    let mut recalls = Vec::with_capacity(grid.len());
    for &nprobe in grid {
        let plan = planner::plan_filtered(idx, rows, s.rows(), nprobe, dim);
        let mut top = fresh_tops(&ks);
        let reread = read_planned(s, plan, metric, &qs, &ks, SearchParams::default(), &mut top)
            != Reread::Nothing;
        let recall = audit::recall_of(top.pop()?, &want);
        recalls.push(recall);
        if recall >= 1.0 && !reread {
            // As the unfiltered audit: larger nprobes are counted as finding them all too.
            // Not when the probe came back short and every allowed row was read instead: a
            // few more lists may hold k allowed rows, but not the nearest.
            recalls.resize(grid.len(), 1.0);
            break;
        }
    }
    idx.served()
        .record_filtered(fraction, recalls.clone(), s.dir());
    Some(recalls)
}

/// An empty top-k per query.
fn fresh_tops(ks: &[usize]) -> Vec<TopK<RowKey>> {
    ks.iter().map(|k| TopK::new(*k)).collect()
}

/// Merges two sets of per-query top-k, query by query.
fn merge(mut a: Vec<TopK<RowKey>>, b: Vec<TopK<RowKey>>) -> Vec<TopK<RowKey>> {
    a.iter_mut().zip(b).for_each(|(x, y)| x.merge(y));
    a
}

/// Exact scan of the `allowed` rows of a segment.
fn scan_allowed<'a>(
    metric: Metric,
    queries: &[Vec<f32>],
    allowed: &RoaringBitmap,
    vector: impl Fn(u32) -> &'a [f32],
    segment: SegmentId,
    tops: &mut [TopK<RowKey>],
) {
    let rows: Vec<u32> = allowed.iter().collect();
    scan_rows(metric, queries, &rows, vector, segment, tops);
}

/// Exact scan, for each query, of the `allowed` rows that lie in the `nprobe` lists of `idx`
/// nearest to it ([`Plan::Listed`]). The allowed rows are grouped by list once for the group
/// of queries; each query then reads its lists' groups.
#[allow(clippy::too_many_arguments)]
fn scan_listed<'a>(
    metric: Metric,
    queries: &[Vec<f32>],
    allowed: &RoaringBitmap,
    idx: &IvfPqIndex,
    nprobe: usize,
    vector: impl Fn(u32) -> &'a [f32] + Copy,
    segment: SegmentId,
    tops: &mut [TopK<RowKey>],
) {
    let by_list = RowsByList::new(allowed, idx.list_of_rows(), idx.nlist());
    let mut rows = Vec::new();
    for (q, top) in queries.iter().zip(tops.iter_mut()) {
        rows.clear();
        rows.extend_from_slice(by_list.unlisted());
        for l in idx.nearest_lists(q, nprobe) {
            rows.extend_from_slice(by_list.list(l as usize));
        }
        if rows.len() < top.k() {
            // The nearest lists hold fewer allowed rows than the query asks for: read them
            // all (few by then), so a large k never comes back short.
            rows.clear();
            rows.extend_from_slice(&by_list.rows);
        }
        scan_rows(
            metric,
            std::slice::from_ref(q),
            &rows,
            vector,
            segment,
            std::slice::from_mut(top),
        );
    }
}

/// A segment's allowed rows grouped by their IVF list (a counting sort on the row-to-list map).
struct RowsByList {
    /// The rows, list by list; rows the index does not place come last.
    rows: Vec<u32>,
    /// List `l`'s rows are `rows[starts[l]..starts[l + 1]]`; the unplaced ones follow
    /// `starts[nlist]`.
    starts: Vec<u32>,
}

impl RowsByList {
    fn new(allowed: &RoaringBitmap, list_of: &[u16], nlist: usize) -> RowsByList {
        let rows: Vec<u32> = allowed.iter().collect();
        // The lists are gathered in a loop of their own, with no branch that depends on the
        // data, so that the loads (one cache line per allowed row) overlap; filtering rows as
        // they arrived put a mispredicted branch behind every miss and serialised them.
        let last = u32::try_from(nlist).unwrap_or(u32::MAX);
        let lists: Vec<u32> = rows
            .iter()
            .map(|&r| {
                list_of
                    .get(r as usize)
                    .map_or(last, |&l| u32::from(l).min(last))
            })
            .collect();
        let mut starts = vec![0u32; nlist + 2];
        lists.iter().for_each(|&l| starts[l as usize + 1] += 1);
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut grouped = vec![0u32; rows.len()];
        for (&r, &l) in rows.iter().zip(&lists) {
            let l = l as usize;
            grouped[next[l] as usize] = r;
            next[l] += 1;
        }
        RowsByList {
            rows: grouped,
            starts,
        }
    }

    /// The allowed rows of list `l`.
    fn list(&self, l: usize) -> &[u32] {
        match (self.starts.get(l), self.starts.get(l + 1)) {
            (Some(&a), Some(&b)) if l + 1 < self.starts.len() - 1 => {
                &self.rows[a as usize..b as usize]
            }
            _ => &[],
        }
    }

    /// The allowed rows the index does not place (scanned for every query).
    fn unlisted(&self) -> &[u32] {
        let n = self.starts.len();
        &self.rows[self.starts[n - 2] as usize..self.starts[n - 1] as usize]
    }
}

/// Exact scan of `rows` of a segment for every query.
fn scan_rows<'a>(
    metric: Metric,
    queries: &[Vec<f32>],
    rows: &[u32],
    vector: impl Fn(u32) -> &'a [f32],
    segment: SegmentId,
    tops: &mut [TopK<RowKey>],
) {
    // The rows are scattered through the segment: fetching a few rows ahead hides some of the
    // memory latency that dominates this loop (measured on GloVe-50 at 1%: see benches/README).
    const AHEAD: usize = 8;
    for (i, &row) in rows.iter().enumerate() {
        if let Some(&next) = rows.get(i + AHEAD) {
            crate::distance::prefetch(vector(next));
        }
        let v = vector(row);
        for (q, top) in queries.iter().zip(tops.iter_mut()) {
            let d = distance(metric, q, v);
            if d < top.threshold() {
                top.push(d, (segment, row));
            }
        }
    }
}

/// Candidates from the segment's index (`nprobe` lists, the planner's), re-ranked exactly
/// from its memory-mapped vectors; `excluded` rows are never candidates.
#[allow(clippy::too_many_arguments)]
fn search_index(
    s: &SealedSegment,
    idx: &IvfPqIndex,
    metric: Metric,
    queries: &[Vec<f32>],
    ks: &[usize],
    params: SearchParams,
    nprobe: usize,
    excluded: impl Fn(u32) -> bool,
    tops: &mut [TopK<RowKey>],
) {
    let refine = params.refine.unwrap_or(DEFAULT_REFINE).max(1);
    let qs: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
    let wanted: Vec<usize> = ks.iter().map(|k| k.saturating_mul(refine)).collect();
    let all = idx.search_many(&qs, nprobe, &wanted, &excluded);
    for ((q, top), cands) in queries.iter().zip(tops.iter_mut()).zip(all) {
        for c in cands.into_sorted() {
            top.push(distance(metric, q, s.vector(c.key)), (s.id, c.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ivf::{self, IvfPqParams};
    use crate::rng::SplitMix64;

    fn rows_of(top: TopK<RowKey>) -> Vec<u32> {
        top.into_sorted().into_iter().map(|c| c.key.1).collect()
    }

    /// The allowed rows are grouped under their lists, each once, unplaced rows apart.
    #[test]
    fn rows_are_grouped_by_their_list() {
        let allowed: RoaringBitmap = [0, 1, 2, 3, 6].into_iter().collect();
        let list_of = [0, 1, u16::MAX, 1, 0, 0];
        let by = RowsByList::new(&allowed, &list_of, 2);
        assert_eq!(by.list(0), &[0]);
        assert_eq!(by.list(1), &[1, 3]);
        assert!(by.list(2).is_empty(), "no list 2");
        // Row 2 has no list, row 6 is beyond the map: both are scanned for every query.
        assert_eq!(by.unlisted(), &[2, 6]);
    }

    /// A listed scan of every list is the exact filtered scan; of a few lists, it is the exact
    /// top-k of the allowed rows in the lists the index's own probe reads, and nothing else; and
    /// a k larger than those lists' allowed rows is answered from every allowed row.
    #[test]
    fn a_listed_scan_reads_exactly_the_allowed_rows_of_the_nearest_lists() {
        let (n, dim, metric) = (6000usize, 16usize, Metric::L2);
        let mut rng = SplitMix64::new(3);
        let mut u = || rng.below(20_000) as f32 / 10_000.0 - 1.0;
        let centres: Vec<Vec<f32>> = (0..12).map(|_| (0..dim).map(|_| u()).collect()).collect();
        let xs: Vec<f32> = (0..n)
            .flat_map(|i| {
                centres[i % 12]
                    .iter()
                    .map(|c| c + 0.3 * u())
                    .collect::<Vec<_>>()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        ivf::build(
            dir.path(),
            &xs,
            dim,
            metric,
            IvfPqParams::for_data(n, dim, None, None, 4),
        )
        .unwrap();
        let idx = IvfPqIndex::open(dir.path(), dim, metric, n)
            .unwrap()
            .unwrap();
        let mut rng = SplitMix64::new(9);
        // Half the rows: a few lists then hold more than k allowed rows.
        let allowed: RoaringBitmap = (0..n as u32).filter(|_| rng.below(2) == 0).collect();
        let list_of = idx.list_of_rows();
        let by = RowsByList::new(&allowed, list_of, idx.nlist());
        let mut seen: Vec<u32> = Vec::new();
        for l in 0..idx.nlist() {
            for &r in by.list(l) {
                assert_eq!(usize::from(list_of[r as usize]), l, "row {r}");
                seen.push(r);
            }
        }
        assert!(by.unlisted().is_empty(), "the index places every row");
        seen.sort_unstable();
        assert_eq!(seen, allowed.iter().collect::<Vec<_>>());
        assert_eq!(idx.list_map_bytes(), 2 * n);

        let vector = |r: u32| &xs[r as usize * dim..(r as usize + 1) * dim];
        let mut compared = 0;
        for qi in 0..20 {
            let q: Vec<f32> = vector(rng.below(n) as u32)
                .iter()
                .map(|x| x + 0.05 * (qi as f32 % 3.0))
                .collect();
            let qs = [q.clone()];
            let mut every = fresh_tops(&[10]);
            scan_listed(
                metric,
                &qs,
                &allowed,
                &idx,
                idx.nlist(),
                vector,
                7,
                &mut every,
            );
            let mut exact = fresh_tops(&[10]);
            scan_allowed(metric, &qs, &allowed, vector, 7, &mut exact);
            let every = every.pop().unwrap().into_sorted();
            assert!(every.iter().all(|c| c.key.0 == 7));
            assert_eq!(
                every.iter().map(|c| c.key.1).collect::<Vec<_>>(),
                rows_of(exact.pop().unwrap())
            );

            // The rows of the 3 lists a probe reads, from the index's own scan (every row of
            // those lists is a candidate when the candidates are not limited).
            let probed: Vec<u32> = idx
                .search(&q, 3, n, |_| false)
                .into_sorted()
                .into_iter()
                .map(|c| c.key)
                .collect();
            assert!(!probed.is_empty() && probed.len() < n);
            let mut few = fresh_tops(&[10]);
            scan_listed(metric, &qs, &allowed, &idx, 3, vector, 7, &mut few);
            let mut want: Vec<(f32, u32)> = probed
                .into_iter()
                .filter(|&r| allowed.contains(r))
                .map(|r| (distance(metric, &q, vector(r)), r))
                .collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            if want.len() < 10 {
                // Too few allowed rows in those lists: the scan reads every allowed row.
                continue;
            }
            want.truncate(10);
            let mut got: Vec<(f32, u32)> = few
                .pop()
                .unwrap()
                .into_sorted()
                .into_iter()
                .map(|c| (c.distance, c.key.1))
                .collect();
            got.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            assert_eq!(got, want, "query {qi}");
            compared += 1;
        }
        assert!(compared >= 15, "only {compared} of 20 queries compared");
        // k beyond the allowed rows of one list: never short.
        let q = vector(0).to_vec();
        let mut big = fresh_tops(&[allowed.len() as usize]);
        scan_listed(metric, &[q], &allowed, &idx, 1, vector, 7, &mut big);
        assert_eq!(
            big.pop().unwrap().into_sorted().len(),
            allowed.len() as usize
        );
    }
}
