//! Recall calibration for `target_recall`: at build time the index measures, on held-out rows of
//! its own segment used as queries, the recall@10 it reaches at each nprobe of a geometric
//! grid (with the default refine factor and exact re-rank, as searches run). A query with a
//! target recall then takes the smallest nprobe whose measured recall, less one standard error,
//! reaches the target.
//!
//! The held-out rows are excluded from training (coarse k-means and PQ) so that they behave as
//! unseen queries; each is excluded from its own ground truth and from its own results.
//!
//! File `ivfpq.calib` beside `ivfpq.bin`: `b"QCAL"`, u32 CRC32 of the rest, then JSON.
//!
//! Held-out rows are not always like the queries a collection serves: questions embedded by a
//! RAG model sit apart from the passages (measured: asked 0.95, the rows' curve gave 0.988 on
//! MiniLM), and rows with near-duplicates in the data find them in their own list (measured:
//! asked 0.95, it gave 0.930 on a 4M set derived from GloVe by interpolation). So the index
//! also keeps [`Served`]: the recall curves of sampled *served* queries, measured exactly in
//! the background by [`crate::index::audit`]. Once [`MIN_SERVED`] of them are measured, their
//! curve replaces the held-out one. File `ivfpq.served`: `b"QSRV"`, CRC32, then JSON.
//!
//! Filtered searches need more lists than unfiltered ones: the k nearest *allowed* rows lie
//! further out. The planner widens nprobe to base × f^−e for an allowed share f. Until
//! [`MIN_SERVED`] filtered queries are measured, e is [`DEFAULT_WIDENING`] (1/√f). The audit
//! also measures sampled filtered queries, each at every nprobe of the grid, read as the planner
//! reads it at that nprobe, and [`Served::widening_for`] then picks the smallest e of
//! [`WIDENINGS`] whose mean recall on them, less one standard error, reaches the target. So a
//! filter that allows rows near the query (uniform at random: measured on GloVe-50, √f probes
//! up to 3× more lists than needed at 10%) probes fewer lists, and one whose allowed rows lie
//! away from the query (correlated with the clusters) probes more.
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fs_err as fs;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::{TopK, distance, dot};
use crate::error::{Error, Result};
use crate::index::ivf::IvfPqIndex;
use crate::index::kmeans::{self, CentroidTable};
use crate::rng::SplitMix64;
use crate::types::{DEFAULT_REFINE, Metric};

/// File name inside a segment directory.
pub const FILE_NAME: &str = "ivfpq.calib";
const MAGIC: &[u8; 4] = b"QCAL";
/// Neighbours per calibration query.
pub const K: usize = 10;
/// Most held-out queries per segment.
const MAX_QUERIES: usize = 128;

/// One measured point of the recall curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Lists probed.
    pub nprobe: usize,
    /// Mean recall@10 over the held-out queries.
    pub recall: f64,
    /// Standard error of that mean.
    pub stderr: f64,
}

/// The measured recall curve of one index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Held-out queries measured.
    pub queries: usize,
    /// Refine factor used.
    pub refine: usize,
    /// Ascending in nprobe.
    pub points: Vec<Point>,
}

/// The rows held out of training as calibration queries: a seeded sample, so a rebuild with the
/// same seed holds out the same rows.
pub fn held_out(n: usize, seed: u64) -> Vec<usize> {
    let count = (n / 10).min(MAX_QUERIES);
    kmeans::sample_rows(n, count, &mut SplitMix64::new(seed ^ 0xCA11_B8A7))
}

/// nprobe values measured: 1, 2, 3, … growing by about a quarter each step, ending at `nlist`.
pub(crate) fn grid(nlist: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut p = 1usize;
    while p < nlist {
        out.push(p);
        p = (p + p / 4).max(p + 1);
    }
    out.push(nlist);
    out
}

/// Exact top-K of each held-out row among the other rows. The queries are laid out as a
/// [`CentroidTable`], so one pass over the rows computes every row's inner product with all of
/// them in SIMD tiles (far fewer loads than a distance call per pair); distances follow from
/// the inner products (and norms, for l2).
fn ground_truth(vectors: &[f32], dim: usize, metric: Metric, queries: &[usize]) -> Vec<Vec<u32>> {
    let row = |r: usize| &vectors[r * dim..(r + 1) * dim];
    let qs: Vec<f32> = queries
        .iter()
        .flat_map(|&h| row(h).iter().copied())
        .collect();
    let table = CentroidTable::new(&qs, dim);
    let n = vectors.len() / dim;
    let fresh = || -> Vec<TopK<u32>> { queries.iter().map(|_| TopK::new(K)).collect() };
    let tops = (0..n)
        .into_par_iter()
        .with_min_len(4096)
        .fold(
            || (fresh(), Vec::new()),
            |(mut tops, mut ips), r| {
                let x = row(r);
                table.inner_products(x, &mut ips);
                let xx = if metric == Metric::L2 { dot(x, x) } else { 0.0 };
                for ((j, top), ip) in tops.iter_mut().enumerate().zip(&ips) {
                    let d = match metric {
                        Metric::Cosine => 1.0 - ip,
                        Metric::Dot => -ip,
                        Metric::L2 => xx + table.norm(j) - 2.0 * ip,
                    };
                    if d < top.threshold() && r != queries[j] {
                        top.push(d, r as u32);
                    }
                }
                (tops, ips)
            },
        )
        .map(|(tops, _)| tops)
        .reduce(fresh, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        });
    tops.into_iter()
        .map(|t| t.into_sorted().into_iter().map(|c| c.key).collect())
        .collect()
}

impl Calibration {
    /// Measures `index` over its segment's row-major `vectors`.
    pub fn measure(
        index: &IvfPqIndex,
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        seed: u64,
    ) -> Calibration {
        let n = vectors.len() / dim;
        let row = |r: usize| &vectors[r * dim..(r + 1) * dim];
        let queries = held_out(n, seed);
        let truth = ground_truth(vectors, dim, metric, &queries);
        let mut points = Vec::new();
        for nprobe in grid(index.nlist()) {
            let recalls: Vec<f64> = queries
                .par_iter()
                .zip(&truth)
                .map(|(&h, want)| {
                    let q = row(h);
                    let mut top = TopK::new(K);
                    for c in index
                        .search(q, nprobe, K * DEFAULT_REFINE, |r| r as usize == h)
                        .into_sorted()
                    {
                        top.push(distance(metric, q, row(c.key as usize)), c.key);
                    }
                    let got = top.into_sorted();
                    let found = got.iter().filter(|c| want.contains(&c.key)).count();
                    found as f64 / want.len().max(1) as f64
                })
                .collect();
            let nq = recalls.len().max(1) as f64;
            let mean = recalls.iter().sum::<f64>() / nq;
            let var = recalls.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (nq - 1.0).max(1.0);
            points.push(Point {
                nprobe,
                recall: mean,
                stderr: (var / nq).sqrt(),
            });
            // Past 0.999 the curve is flat: larger nprobe only costs time.
            if mean >= 0.999 {
                break;
            }
        }
        Calibration {
            queries: queries.len(),
            refine: DEFAULT_REFINE,
            points,
        }
    }

    /// The smallest measured nprobe whose recall, less one standard error, reaches `target`;
    /// the largest measured one if none does.
    pub fn nprobe_for(&self, target: f64) -> usize {
        self.points
            .iter()
            .find(|p| p.recall - p.stderr >= target)
            .or(self.points.last())
            .map_or(1, |p| p.nprobe)
    }

    /// Writes `dir/ivfpq.calib` (temp name, fsync, rename; the caller syncs the directory).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).expect("invariant: plain numbers serialise");
        write_sealed(dir, FILE_NAME, MAGIC, &json)
    }

    /// Reads and verifies `dir/ivfpq.calib`.
    pub fn read(dir: &Path) -> Result<Calibration> {
        let path = dir.join(FILE_NAME);
        let c: Calibration = read_sealed(&path, MAGIC, "calibration")?;
        if c.points.is_empty() || c.points.windows(2).any(|w| w[0].nprobe >= w[1].nprobe) {
            return Err(Error::corrupt(
                &path,
                0,
                "calibration points are not ascending".to_owned(),
            ));
        }
        Ok(c)
    }
}

/// Writes `dir/name` as `magic`, CRC32 of `json`, `json` (temp name, fsync, rename, directory
/// sync).
fn write_sealed(dir: &Path, name: &str, magic: &[u8; 4], json: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(magic)?;
        f.write_all(&crc32fast::hash(json).to_le_bytes())?;
        f.write_all(json)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    crate::fsutil::sync_dir(dir)?;
    Ok(())
}

/// Reads a file written by [`write_sealed`], verifying its magic and checksum.
fn read_sealed<T: serde::de::DeserializeOwned>(
    path: &Path,
    magic: &[u8; 4],
    what: &str,
) -> Result<T> {
    let bytes = fs::read(path)?;
    let bad = |d: String| Error::corrupt(path, 0, d);
    if bytes.len() < 8 || &bytes[..4] != magic {
        return Err(bad(format!("not a {what} file")));
    }
    if crc32fast::hash(&bytes[8..]) != u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]])
    {
        return Err(bad(format!("{what} checksum mismatch")));
    }
    serde_json::from_slice(&bytes[8..]).map_err(|e| bad(format!("{what}: {e}")))
}

/// File of the served-query curves inside a segment directory.
pub const SERVED_FILE: &str = "ivfpq.served";
/// The first bytes of [`SERVED_FILE`].
pub const SERVED_MAGIC: &[u8; 4] = b"QSRV";
/// Served queries measured before their curve replaces the held-out rows' one: enough that
/// one standard error of the mean is about 0.02 at the spread of per-query recall measured.
pub const MIN_SERVED: usize = 32;
/// The most recent served queries kept: the curve follows a workload that changes.
pub const SERVED_WINDOW: usize = 256;
/// New measurements between two writes of [`SERVED_FILE`].
const SAVE_EVERY: usize = 16;

/// What [`SERVED_FILE`] holds: per measured query, its recall at each nprobe of `grid`; the
/// same for filtered queries, with their allowed share (absent from files of earlier versions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ServedFile {
    grid: Vec<usize>,
    recalls: Vec<Vec<f32>>,
    #[serde(default)]
    filtered: Vec<FilteredRecall>,
}

/// One measured filtered query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FilteredRecall {
    /// The share of the segment's rows its filter allowed, in (0, 1].
    fraction: f32,
    /// Its recall@10 at each nprobe of the grid.
    recalls: Vec<f32>,
}

#[derive(Debug)]
struct ServedState {
    recalls: VecDeque<Vec<f32>>,
    filtered: VecDeque<FilteredRecall>,
    unsaved: usize,
}

/// The exponents e a filtered search's nprobe = base × f^−e may take ([`widened`]); the last
/// probes every list.
pub const WIDENINGS: [f64; 12] = [
    0.0,
    0.0625,
    0.125,
    0.1875,
    0.25,
    0.3125,
    0.375,
    0.5,
    0.625,
    0.75,
    1.0,
    f64::INFINITY,
];
/// The exponent until enough filtered queries are measured: nprobe / √f, which kept recall at
/// the unfiltered level in the engine's selectivity tests (uniform filters, 0.1–50%).
pub const DEFAULT_WIDENING: f64 = 0.5;

/// The nprobe of a filtered search: `base` × `fraction`^−`e`, at least `base`, at most `nlist`.
pub fn widened(base: usize, fraction: f64, e: f64, nlist: usize) -> usize {
    if e.is_infinite() {
        return nlist;
    }
    ((base as f64 * fraction.clamp(1e-9, 1.0).powf(-e)).ceil() as usize)
        .max(base)
        .min(nlist)
}

/// The measured filtered queries of an index once there are [`MIN_SERVED`], with the widening
/// already chosen per (target in basis points, base nprobe, [`band`] of the share).
#[derive(Debug)]
struct Widening {
    records: Vec<FilteredRecall>,
    chosen: RwLock<HashMap<(u32, usize, u32), f64>>,
}

/// Most (target, base, band) keys whose widening is remembered; the map starts again when
/// full.
const MAX_CHOSEN: usize = 256;

/// A share's band: half-decades of `fraction` (0: 100–32%, 1: 32–10%, 2: 10–3.2%, …), at
/// most 20 (10^−10).
fn band(fraction: f64) -> u32 {
    let f = if fraction > 0.0 {
        fraction.min(1.0)
    } else {
        1e-10
    };
    ((-2.0 * f.log10()).floor().max(0.0) as u32).min(20)
}

/// The recall curves of sampled served queries of one index (see the module docs).
#[derive(Debug)]
pub struct Served {
    grid: Vec<usize>,
    state: std::sync::Mutex<ServedState>,
    /// The curve of the window once it holds [`MIN_SERVED`] queries; read by every search.
    curve: RwLock<Option<Arc<Calibration>>>,
    /// The filtered window once it holds [`MIN_SERVED`] queries; read by filtered searches.
    widening: RwLock<Option<Arc<Widening>>>,
}

impl Served {
    /// An empty record for an index of `nlist` lists.
    pub fn new(nlist: usize) -> Served {
        Served {
            grid: grid(nlist),
            state: std::sync::Mutex::new(ServedState {
                recalls: VecDeque::new(),
                filtered: VecDeque::new(),
                unsaved: 0,
            }),
            curve: RwLock::new(None),
            widening: RwLock::new(None),
        }
    }

    /// The record saved in `dir`, or an empty one if there is none. A damaged or mismatched
    /// file is a lost measurement, not lost data: it is logged and the record starts empty.
    pub fn open(dir: &Path, nlist: usize) -> Served {
        let served = Served::new(nlist);
        let path = dir.join(SERVED_FILE);
        if !path.exists() {
            return served;
        }
        let fits = |r: &Vec<f32>| {
            r.len() == served.grid.len() && r.iter().all(|x| (0.0..=1.0).contains(x))
        };
        match read_sealed::<ServedFile>(&path, SERVED_MAGIC, "served-recall") {
            Ok(f)
                if f.grid == served.grid
                    && f.recalls.len() <= SERVED_WINDOW
                    && f.filtered.len() <= SERVED_WINDOW
                    && f.recalls.iter().all(fits)
                    && f.filtered
                        .iter()
                        .all(|r| fits(&r.recalls) && r.fraction > 0.0 && r.fraction <= 1.0) =>
            {
                let mut st = served.lock();
                st.recalls = f.recalls.into();
                st.filtered = f.filtered.into();
                served.publish(&st);
                served.publish_filtered(&st);
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "ignoring a served-recall file that does not fit this index")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged served-recall file")
            }
        }
        served
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nprobe values a served query is measured at.
    pub fn grid(&self) -> &[usize] {
        &self.grid
    }

    /// Adds one query's recall at each nprobe of [`Served::grid`], and writes the record to
    /// `dir` every few measurements (best effort: a segment retired meanwhile has no
    /// directory, and its record no reader).
    pub fn record(&self, recalls: Vec<f32>, dir: &Path) {
        debug_assert_eq!(recalls.len(), self.grid.len());
        let mut st = self.lock();
        if st.recalls.len() == SERVED_WINDOW {
            st.recalls.pop_front();
        }
        st.recalls.push_back(recalls);
        self.publish(&st);
        self.save_now_and_then(st, dir);
    }

    /// Adds one filtered query's recall at each nprobe of [`Served::grid`] (each read as the
    /// planner reads it at that nprobe), its filter allowing `fraction` of the segment's rows;
    /// saved as [`Served::record`] saves. A fraction outside (0, 1] is not recorded.
    pub fn record_filtered(&self, fraction: f64, recalls: Vec<f32>, dir: &Path) {
        debug_assert_eq!(recalls.len(), self.grid.len());
        if !(fraction > 0.0 && fraction <= 1.0) || recalls.len() != self.grid.len() {
            return;
        }
        let mut st = self.lock();
        if st.filtered.len() == SERVED_WINDOW {
            st.filtered.pop_front();
        }
        st.filtered.push_back(FilteredRecall {
            fraction: fraction as f32,
            recalls,
        });
        self.publish_filtered(&st);
        self.save_now_and_then(st, dir);
    }

    /// Counts a new measurement, and writes the record to `dir` every [`SAVE_EVERY`].
    fn save_now_and_then(&self, mut st: std::sync::MutexGuard<'_, ServedState>, dir: &Path) {
        st.unsaved += 1;
        if st.unsaved >= SAVE_EVERY {
            st.unsaved = 0;
            let file = ServedFile {
                grid: self.grid.clone(),
                recalls: st.recalls.iter().cloned().collect(),
                filtered: st.filtered.iter().cloned().collect(),
            };
            let json = serde_json::to_vec(&file).expect("invariant: plain numbers serialise");
            drop(st);
            // A segment being removed (replaced by compaction, or dropped with its
            // collection) may already have lost its index; its record is not worth saving
            // then. The rest of that race is `fsutil::remove_dir_all`'s to absorb.
            if !dir.join(super::ivf::FILE_NAME).exists() {
                return;
            }
            if let Err(e) = write_sealed(dir, SERVED_FILE, SERVED_MAGIC, &json) {
                tracing::debug!(dir = %dir.display(), error = %e, "served-recall record not saved");
            }
        }
    }

    fn publish(&self, st: &ServedState) {
        let curve = (st.recalls.len() >= MIN_SERVED).then(|| {
            let n = st.recalls.len() as f64;
            let points = self
                .grid
                .iter()
                .enumerate()
                .map(|(i, &nprobe)| {
                    let mean = st.recalls.iter().map(|r| f64::from(r[i])).sum::<f64>() / n;
                    let var = st
                        .recalls
                        .iter()
                        .map(|r| (f64::from(r[i]) - mean).powi(2))
                        .sum::<f64>()
                        / (n - 1.0);
                    Point {
                        nprobe,
                        recall: mean,
                        stderr: (var / n).sqrt(),
                    }
                })
                .collect();
            Arc::new(Calibration {
                queries: st.recalls.len(),
                refine: DEFAULT_REFINE,
                points,
            })
        });
        *self.curve.write().unwrap_or_else(|p| p.into_inner()) = curve;
    }

    fn publish_filtered(&self, st: &ServedState) {
        let widening = (st.filtered.len() >= MIN_SERVED).then(|| {
            Arc::new(Widening {
                records: st.filtered.iter().cloned().collect(),
                chosen: RwLock::new(HashMap::new()),
            })
        });
        *self.widening.write().unwrap_or_else(|p| p.into_inner()) = widening;
    }

    /// The exponent e for a filtered search at `target` whose unfiltered nprobe is `base` and
    /// whose filter allows `fraction` of the rows (see the module docs), once [`MIN_SERVED`]
    /// filtered queries are measured: the smallest of [`WIDENINGS`] at which the measured
    /// queries' mean recall, less one standard error, reaches `target` (each query read at the
    /// largest measured nprobe not above [`widened`]'s); the last (every list) if none does.
    /// The queries are those of a similar share (within a factor of about ten, [`band`]) when
    /// there are [`MIN_SERVED`] of them, else all: a workload that mixes selectivities gets
    /// each its own widening, where a mean over all of them would let the easy ones (a tiny
    /// share is scanned exactly at any nprobe) carry the hard ones.
    pub fn widening_for(&self, target: f64, base: usize, fraction: f64) -> Option<f64> {
        let w = self
            .widening
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        // Records keep their share as f32: the search's band from the same rounding.
        let b = band(f64::from(fraction as f32));
        let key = ((target.clamp(0.0, 1.0) * 10_000.0).round() as u32, base, b);
        if let Some(&e) = w.chosen.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Some(e);
        }
        let near: Vec<&FilteredRecall> = w
            .records
            .iter()
            .filter(|r| band(f64::from(r.fraction)).abs_diff(b) <= 1)
            .collect();
        let records: Vec<&FilteredRecall> = if near.len() >= MIN_SERVED {
            near
        } else {
            w.records.iter().collect()
        };
        let nlist = self.grid.last().copied().unwrap_or(1);
        let n = records.len() as f64;
        let e = WIDENINGS
            .into_iter()
            .find(|&e| {
                let recalls: Vec<f64> = records
                    .iter()
                    .map(|r| {
                        let probe = widened(base, f64::from(r.fraction), e, nlist);
                        self.recall_at(&r.recalls, probe)
                    })
                    .collect();
                let mean = recalls.iter().sum::<f64>() / n;
                let var = recalls.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
                mean - (var / n).sqrt() >= target
            })
            .unwrap_or(f64::INFINITY);
        let mut chosen = w.chosen.write().unwrap_or_else(|p| p.into_inner());
        if chosen.len() >= MAX_CHOSEN {
            chosen.clear();
        }
        chosen.insert(key, e);
        Some(e)
    }

    /// A query's recall at `probe` lists from its `recalls` on the grid: linear between the
    /// grid points around it (recall grows ever more slowly with nprobe, so the line under-
    /// rather than over-states it).
    fn recall_at(&self, recalls: &[f32], probe: usize) -> f64 {
        // The grid starts at 1, so some point is at or below `probe`.
        let at = self.grid.partition_point(|&g| g <= probe).max(1) - 1;
        let (lo, r_lo) = (self.grid[at], f64::from(recalls[at]));
        match (self.grid.get(at + 1), recalls.get(at + 1)) {
            (Some(&hi), Some(&r_hi)) if probe > lo => {
                let t = (probe - lo) as f64 / (hi - lo) as f64;
                r_lo + t * (f64::from(r_hi) - r_lo)
            }
            _ => r_lo,
        }
    }

    /// Filtered served queries measured (in the window).
    pub fn measured_filtered(&self) -> usize {
        self.lock().filtered.len()
    }

    /// The served queries' curve, once [`MIN_SERVED`] are measured.
    pub fn curve(&self) -> Option<Arc<Calibration>> {
        self.curve.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The smallest nprobe of the served queries' curve reaching `target` (as
    /// [`Calibration::nprobe_for`]), once [`MIN_SERVED`] are measured.
    pub fn nprobe_for(&self, target: f64) -> Option<usize> {
        self.curve
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.nprobe_for(target))
    }

    /// Served queries measured (in the window).
    pub fn measured(&self) -> usize {
        self.lock().recalls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_lookup() {
        assert_eq!(grid(1), vec![1]);
        assert_eq!(grid(10), vec![1, 2, 3, 4, 5, 6, 7, 8, 10]);
        let g = grid(1024);
        assert_eq!((g[0], *g.last().unwrap()), (1, 1024));
        assert!(g.len() < 40 && g.windows(2).all(|w| w[0] < w[1]));
        let c = Calibration {
            queries: 100,
            refine: 4,
            points: vec![
                Point {
                    nprobe: 1,
                    recall: 0.5,
                    stderr: 0.01,
                },
                Point {
                    nprobe: 4,
                    recall: 0.905,
                    stderr: 0.01,
                },
                Point {
                    nprobe: 8,
                    recall: 0.95,
                    stderr: 0.01,
                },
            ],
        };
        assert_eq!(c.nprobe_for(0.4), 1);
        assert_eq!(
            c.nprobe_for(0.9),
            8,
            "0.905 less its standard error misses 0.9"
        );
        assert_eq!(c.nprobe_for(0.99), 8, "unreachable: the largest measured");
        let dir = tempfile::tempdir().unwrap();
        c.write(dir.path()).unwrap();
        assert_eq!(Calibration::read(dir.path()).unwrap(), c);
        let p = dir.path().join(FILE_NAME);
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 3;
        b[last] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(matches!(
            Calibration::read(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }

    /// A query's recalls on `grid(10)`: 0.5 below `knee`, 1.0 from it on.
    fn step(knee: usize) -> Vec<f32> {
        grid(10)
            .iter()
            .map(|&p| if p >= knee { 1.0 } else { 0.5 })
            .collect()
    }

    #[test]
    fn served_curve_needs_enough_queries_and_follows_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = Served::new(10);
        for i in 0..MIN_SERVED - 1 {
            s.record(step(3), dir.path());
            assert_eq!(s.measured(), i + 1);
        }
        assert_eq!(s.nprobe_for(0.95), None, "one query short of a curve");
        s.record(step(3), dir.path());
        assert_eq!(s.nprobe_for(0.95), Some(3));
        assert_eq!(s.curve().unwrap().queries, MIN_SERVED);
        // A workload that changes: once the window holds only the new queries, their knee
        // decides.
        for _ in 0..SERVED_WINDOW {
            s.record(step(7), dir.path());
        }
        assert_eq!(s.measured(), SERVED_WINDOW);
        assert_eq!(s.nprobe_for(0.95), Some(7));
        // Half the window at each knee: the mean at nprobe 2..6 is 0.75 (less its standard
        // error, 0.016: above 0.7, below 0.75).
        for _ in 0..SERVED_WINDOW / 2 {
            s.record(step(2), dir.path());
        }
        assert_eq!(s.nprobe_for(0.7), Some(2));
        assert_eq!(s.nprobe_for(0.75), Some(7));
        assert_eq!(s.nprobe_for(0.9), Some(7));
    }

    #[test]
    fn widening_is_the_smallest_exponent_whose_recall_reaches_the_target() {
        // grid(100): 1..8, 10, 12, 15, 18, 22, 27, 33, 41, 51, 63, 78, 97, 100.
        let g = grid(100);
        let step = |knee: usize| -> Vec<f32> {
            g.iter()
                .map(|&p| if p >= knee { 1.0 } else { 0.5 })
                .collect()
        };
        assert_eq!(widened(8, 0.1, 0.0, 100), 8);
        assert_eq!(widened(8, 0.1, 0.25, 100), 15, "8 × 10^¼ = 14.2");
        assert_eq!(widened(8, 0.1, 0.5, 100), 26);
        assert_eq!(widened(8, 0.1, f64::INFINITY, 100), 100);
        assert_eq!(widened(200, 0.1, 0.5, 100), 100, "never beyond nlist");
        assert_eq!(widened(8, 1.0, 1.0, 100), 8);
        let dir = tempfile::tempdir().unwrap();
        let s = Served::new(100);
        for _ in 0..MIN_SERVED - 1 {
            s.record_filtered(0.1, step(15), dir.path());
        }
        assert_eq!(s.widening_for(0.95, 8, 0.1), None, "one query short");
        s.record_filtered(0.1, step(15), dir.path());
        // Between grid points the recall is read off the line between them: 13 lists lie a
        // third of the way from 12 (0.5) to 15 (1.0).
        assert!((s.recall_at(&step(15), 13) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.recall_at(&step(15), 100), 1.0);
        // e = 3/16 probes 13 lists (recall 0.67); e = ¼ probes 15 (1.0).
        assert_eq!(s.widening_for(0.95, 8, 0.1), Some(0.25));
        // A larger base needs less widening; one already past the knee none.
        assert_eq!(s.widening_for(0.95, 12, 0.1), Some(0.125), "12 × 10^⅛ = 16");
        assert_eq!(s.widening_for(0.95, 15, 0.1), Some(0.0));
        // Queries whose allowed rows only the full probe reaches: every list.
        for _ in 0..SERVED_WINDOW {
            s.record_filtered(0.1, step(100), dir.path());
        }
        assert_eq!(s.widening_for(0.95, 8, 0.1), Some(f64::INFINITY));
        // Each share is widened as the queries of a similar share measured: a window with
        // enough queries at 0.1% (scanned exactly, so found at one list) leaves 10% at every
        // list, and 0.1% at none; a share with too few of its own takes the whole window's.
        for _ in 0..MIN_SERVED {
            s.record_filtered(0.001, step(1), dir.path());
        }
        assert_eq!(s.widening_for(0.95, 8, 0.1), Some(f64::INFINITY));
        assert_eq!(s.widening_for(0.95, 8, 0.001), Some(0.0));
        assert_eq!(
            (band(1.0), band(0.5), band(0.1), band(0.0999), band(0.0)),
            (0, 0, 2, 2, 20)
        );
        // Shares outside (0, 1] are not recorded.
        s.record_filtered(0.0, step(1), dir.path());
        s.record_filtered(f64::NAN, step(1), dir.path());
        assert_eq!(s.measured_filtered(), SERVED_WINDOW);
        assert_eq!(s.widening_for(0.95, 8, 0.1), Some(f64::INFINITY));
    }

    #[test]
    fn served_record_survives_reopen_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = Served::new(10);
        // Nothing is saved beside a segment whose index file is gone (being removed).
        for _ in 0..SAVE_EVERY {
            s.record(step(4), dir.path());
        }
        assert!(!dir.path().join(SERVED_FILE).exists());
        std::fs::write(dir.path().join(super::super::ivf::FILE_NAME), b"index").unwrap();
        // Saved every SAVE_EVERY measurements: 48 recorded, 48 saved.
        for _ in 0..2 * SAVE_EVERY {
            s.record(step(4), dir.path());
        }
        let back = Served::open(dir.path(), 10);
        assert_eq!(back.measured(), 3 * SAVE_EVERY);
        assert_eq!(back.nprobe_for(0.95), Some(4));
        // Another index size means another grid: the file does not fit and is ignored.
        assert_eq!(Served::open(dir.path(), 64).measured(), 0);
        let p = dir.path().join(SERVED_FILE);
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x20;
        std::fs::write(&p, &b).unwrap();
        let damaged = Served::open(dir.path(), 10);
        assert_eq!((damaged.measured(), damaged.nprobe_for(0.95)), (0, None));
        // Well-formed but out of range (a recall of 2): refused as well.
        let json = br#"{"grid":[1,2,3,4,5,6,7,8,10],"recalls":[[2,2,2,2,2,2,2,2,2]]}"#;
        write_sealed(dir.path(), SERVED_FILE, SERVED_MAGIC, json).unwrap();
        assert_eq!(Served::open(dir.path(), 10).measured(), 0);
        // A filtered query with a share of 0 is refused too; a file of an earlier version
        // (no filtered queries) is read.
        let json = br#"{"grid":[1,2,3,4,5,6,7,8,10],"recalls":[],"filtered":[{"fraction":0,"recalls":[1,1,1,1,1,1,1,1,1]}]}"#;
        write_sealed(dir.path(), SERVED_FILE, SERVED_MAGIC, json).unwrap();
        assert_eq!(Served::open(dir.path(), 10).measured_filtered(), 0);
        let json = br#"{"grid":[1,2,3,4,5,6,7,8,10],"recalls":[[1,1,1,1,1,1,1,1,1]]}"#;
        write_sealed(dir.path(), SERVED_FILE, SERVED_MAGIC, json).unwrap();
        let old = Served::open(dir.path(), 10);
        assert_eq!((old.measured(), old.measured_filtered()), (1, 0));
        // Filtered queries survive a reopen.
        let s = Served::new(10);
        for _ in 0..SAVE_EVERY {
            s.record_filtered(0.25, step(4), dir.path());
        }
        let back = Served::open(dir.path(), 10);
        assert_eq!(back.measured_filtered(), SAVE_EVERY);
    }
}
