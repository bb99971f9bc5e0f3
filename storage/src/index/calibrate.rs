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
use std::io::Write;
use std::path::Path;

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
fn grid(nlist: usize) -> Vec<usize> {
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
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&crc32fast::hash(&json).to_le_bytes())?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(FILE_NAME))?;
        crate::fsutil::sync_dir(dir)?;
        Ok(())
    }

    /// Reads and verifies `dir/ivfpq.calib`.
    pub fn read(dir: &Path) -> Result<Calibration> {
        let path = dir.join(FILE_NAME);
        let bytes = fs::read(&path)?;
        let bad = |d: &str| Error::corrupt(&path, 0, d.to_owned());
        if bytes.len() < 8 || &bytes[..4] != MAGIC {
            return Err(bad("not a calibration file"));
        }
        if crc32fast::hash(&bytes[8..])
            != u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]])
        {
            return Err(bad("calibration checksum mismatch"));
        }
        let c: Calibration =
            serde_json::from_slice(&bytes[8..]).map_err(|e| bad(&format!("calibration: {e}")))?;
        if c.points.is_empty() || c.points.windows(2).any(|w| w[0].nprobe >= w[1].nprobe) {
            return Err(bad("calibration points are not ascending"));
        }
        Ok(c)
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
}
