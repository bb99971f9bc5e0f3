//! Product quantizer: `m` sub-spaces of `dim / m` dimensions, with 256 centroids each (8-bit
//! codes) or 16 (4-bit codes, scanned by [`crate::index::fastscan`]), trained by k-means per
//! sub-space (in parallel). Distances are computed by asymmetric distance computation (ADC): a
//! lookup table per query holds the distance from each query sub-vector to each centroid of
//! its sub-space, and a code's distance is the sum of `m` table entries.
use rayon::prelude::*;

#[cfg(test)]
use crate::distance::{dot, l2sq};
use crate::index::kmeans::{self, KMeansParams};

/// Centroids per sub-space with 8-bit codes.
pub const KSUB: usize = 256;

/// A trained product quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductQuantizer {
    /// Full dimension.
    pub dim: usize,
    /// Sub-spaces.
    pub m: usize,
    /// Centroids per sub-space: 256 (8-bit codes) or 16 (4-bit).
    pub ksub: usize,
    /// `m × ksub × dsub` floats: centroid `c` of sub-space `j` at `(j·ksub + c)·dsub`.
    pub codebooks: Vec<f32>,
}

/// The default number of sub-spaces for a dimension: 2-d sub-vectors up to 64 dims, 4-d up to
/// 256, 8-d beyond, then the largest divisor of `dim` not above that.
pub fn default_m(dim: usize) -> usize {
    let dsub = if dim <= 64 {
        2
    } else if dim <= 256 {
        4
    } else {
        8
    };
    largest_divisor_up_to(dim, dim / dsub)
}

/// The default number of sub-spaces for 4-bit codes: 1-d sub-vectors up to 64 dims, 2-d up to
/// 1024, 4-d beyond (16 centroids describe only a short sub-vector well).
pub fn default_m4(dim: usize) -> usize {
    let dsub = if dim <= 64 {
        1
    } else if dim <= 1024 {
        2
    } else {
        4
    };
    largest_divisor_up_to(dim, dim / dsub)
}

fn largest_divisor_up_to(dim: usize, target: usize) -> usize {
    (1..=target.max(1))
        .rev()
        .find(|m| dim.is_multiple_of(*m))
        .unwrap_or(1)
}

impl ProductQuantizer {
    /// Dimensions per sub-space.
    pub fn dsub(&self) -> usize {
        self.dim / self.m
    }

    /// Trains `ksub` centroids per sub-space on row-major `data` (residuals).
    pub fn train(data: &[f32], dim: usize, m: usize, ksub: usize, seed: u64) -> ProductQuantizer {
        assert!(m > 0 && dim.is_multiple_of(m), "invariant: m divides dim");
        let dsub = dim / m;
        let n = data.len() / dim;
        let books: Vec<Vec<f32>> = (0..m)
            .into_par_iter()
            .map(|j| {
                let sub: Vec<f32> = (0..n)
                    .flat_map(|r| {
                        data[r * dim + j * dsub..r * dim + (j + 1) * dsub]
                            .iter()
                            .copied()
                    })
                    .collect();
                let mut p = KMeansParams::new(ksub, seed ^ (j as u64).wrapping_mul(0x9E37_79B9));
                p.max_iters = 15;
                // Small codebooks are cheap to train: 1,024 rows per centroid for 4-bit codes
                // (16k rows), FAISS's 256 for 8-bit ones (64k rows).
                p.max_points_per_centroid = (16_384 / ksub).max(256);
                kmeans::train(&sub, dsub, &p)
            })
            .collect();
        ProductQuantizer {
            dim,
            m,
            ksub,
            codebooks: books.concat(),
        }
    }

    fn centroid(&self, j: usize, c: usize) -> &[f32] {
        let dsub = self.dsub();
        let s = (j * self.ksub + c) * dsub;
        &self.codebooks[s..s + dsub]
    }

    /// Encodes `x` into `out` (`m` bytes).
    pub fn encode(&self, x: &[f32], out: &mut [u8]) {
        let (dsub, ks) = (self.dsub(), self.ksub);
        for (j, o) in out.iter_mut().enumerate().take(self.m) {
            let book = &self.codebooks[j * ks * dsub..(j + 1) * ks * dsub];
            *o = kmeans::nearest(&x[j * dsub..(j + 1) * dsub], book, dsub).0 as u8;
        }
    }

    /// Encodes `n` rows, `m` bytes per row, in parallel, without ever holding them all:
    /// `row(i, out)` writes row `i` (`dim` floats) into `out`, a chunk of 1,024 rows at a
    /// time per worker. Sub-vectors are matched four rows at a time against each sub-space's
    /// [`kmeans::CentroidTable`].
    pub fn encode_rows(&self, n: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<u8> {
        const CHUNK: usize = 1024;
        let (dim, m, dsub, ks) = (self.dim, self.m, self.dsub(), self.ksub);
        let mut out = vec![0u8; n * m];
        if m == 0 {
            return out;
        }
        let tables: Vec<kmeans::CentroidTable> = (0..m)
            .map(|j| {
                kmeans::CentroidTable::new(
                    &self.codebooks[j * ks * dsub..(j + 1) * ks * dsub],
                    dsub,
                )
            })
            .collect();
        out.par_chunks_mut(CHUNK * m)
            .enumerate()
            .for_each(|(c, codes)| {
                let mut buf = vec![0.0f32; codes.len() / m * dim];
                for (i, r) in buf.chunks_exact_mut(dim).enumerate() {
                    row(c * CHUNK + i, r);
                }
                let rows: Vec<&[f32]> = buf.chunks_exact(dim).collect();
                for (b, block) in rows.chunks(4).enumerate() {
                    for (j, table) in tables.iter().enumerate() {
                        let subs: Vec<&[f32]> =
                            block.iter().map(|r| &r[j * dsub..(j + 1) * dsub]).collect();
                        for (i, (c, _)) in table
                            .nearest4(&subs)
                            .into_iter()
                            .take(block.len())
                            .enumerate()
                        {
                            codes[(b * 4 + i) * m + j] = c as u8;
                        }
                    }
                }
            });
        out
    }

    /// Reconstructs a vector from its code.
    pub fn decode(&self, code: &[u8], out: &mut Vec<f32>) {
        out.clear();
        for (j, &c) in code.iter().enumerate() {
            out.extend_from_slice(self.centroid(j, c as usize));
        }
    }

    /// ADC table for inner products: `lut[j][c] = q_j · centroid(j, c)`.
    pub fn ip_table(&self, q: &[f32], lut: &mut Lut) {
        self.table(q, lut, |a, b| a.iter().zip(b).map(|(x, y)| x * y).sum());
    }

    /// ADC table for squared L2: `lut[j][c] = ‖r_j − centroid(j, c)‖²`.
    pub fn l2_table(&self, r: &[f32], lut: &mut Lut) {
        self.table(r, lut, |a, b| {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
        });
    }

    /// Sub-vectors are short (2–8 floats): a plain loop the compiler vectorises beats a call
    /// into simsimd per entry here.
    fn table(&self, q: &[f32], lut: &mut Lut, f: impl Fn(&[f32], &[f32]) -> f32) {
        debug_assert_eq!(self.ksub, KSUB, "invariant: 8-bit tables");
        let dsub = self.dsub();
        lut.clear();
        lut.resize(self.m, [0.0; KSUB]);
        for (j, row) in lut.iter_mut().enumerate() {
            let qj = &q[j * dsub..(j + 1) * dsub];
            let book = &self.codebooks[j * KSUB * dsub..(j + 1) * KSUB * dsub];
            for (slot, c) in row.iter_mut().zip(book.chunks_exact(dsub)) {
                *slot = f(qj, c);
            }
        }
    }
}

/// 16-centroid codebooks (4-bit codes) laid out for per-query tables: row `j·dsub + d` holds
/// dimension `d` of sub-space `j`'s 16 centroids side by side, so a table row is `dsub`
/// 16-wide multiply-adds (a call per entry over 1–4 floats cost more than the scan at 784-d).
#[derive(Debug, Clone, PartialEq)]
pub struct Books16 {
    m: usize,
    dsub: usize,
    rows: Vec<[f32; 16]>,
}

impl Books16 {
    /// Transposes a 4-bit quantizer's codebooks.
    pub fn new(pq: &ProductQuantizer) -> Books16 {
        assert_eq!(pq.ksub, 16, "invariant: 4-bit codebooks");
        let dsub = pq.dsub();
        let mut rows = vec![[0.0f32; 16]; pq.m * dsub];
        for (j, sub) in rows.chunks_exact_mut(dsub).enumerate() {
            for (d, row) in sub.iter_mut().enumerate() {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = pq.centroid(j, k)[d];
                }
            }
        }
        Books16 {
            m: pq.m,
            dsub,
            rows,
        }
    }

    /// `out[j·16 + k] = factor · (q_j · centroid(j, k))`.
    pub fn ip_table(&self, q: &[f32], factor: f32, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(self.m * 16);
        for (qj, rows) in q
            .chunks_exact(self.dsub)
            .zip(self.rows.chunks_exact(self.dsub))
            .take(self.m)
        {
            let mut acc = [0.0f32; 16];
            for (x, row) in qj.iter().zip(rows) {
                for (a, c) in acc.iter_mut().zip(row) {
                    *a += x * c;
                }
            }
            out.extend(acc.iter().map(|a| factor * a));
        }
    }
}

/// An ADC lookup table: one row of 256 entries per sub-space (fixed-size rows, so indexing
/// with a `u8` code needs no bounds check).
pub type Lut = Vec<[f32; KSUB]>;

/// Sum of the table entries a code selects.
#[inline]
pub fn adc(lut: &[[f32; KSUB]], code: &[u8]) -> f32 {
    code.iter().zip(lut).map(|(&c, t)| t[c as usize]).sum()
}

/// [`adc`] for four consecutive codes at once: four independent sums keep the table loads in
/// flight together instead of one dependent chain.
#[inline]
pub fn adc4(lut: &[[f32; KSUB]], codes: &[u8], m: usize) -> [f32; 4] {
    let (c0, rest) = codes.split_at(m);
    let (c1, rest) = rest.split_at(m);
    let (c2, c3) = rest.split_at(m);
    let mut s = [0.0f32; 4];
    for (j, t) in lut.iter().enumerate().take(m) {
        s[0] += t[c0[j] as usize];
        s[1] += t[c1[j] as usize];
        s[2] += t[c2[j] as usize];
        s[3] += t[c3[j] as usize];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n * dim)
            .map(|_| rng.below(20_000) as f32 / 10_000.0 - 1.0)
            .collect()
    }

    #[test]
    fn books16_tables_equal_the_direct_products() {
        let dim = 12;
        let data = random(2000, dim, 3);
        for m in [12, 6, 3] {
            let pq = ProductQuantizer::train(&data, dim, m, 16, 5);
            let books = Books16::new(&pq);
            let q = random(1, dim, 8);
            let mut table = Vec::new();
            books.ip_table(&q, -2.0, &mut table);
            assert_eq!(table.len(), m * 16);
            let dsub = dim / m;
            for j in 0..m {
                for k in 0..16 {
                    let want = -2.0 * dot(&q[j * dsub..(j + 1) * dsub], pq.centroid(j, k));
                    assert!(
                        (table[j * 16 + k] - want).abs() < 1e-5,
                        "m {m}, j {j}, k {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(default_m(50), 25);
        assert_eq!(default_m(384), 48);
        assert_eq!(default_m(1536), 192);
        assert_eq!(default_m(7), 1);
        assert_eq!(default_m(1), 1);
    }

    #[test]
    fn encode_decode_reduces_error_and_adc_matches_decoded_distance() {
        let dim = 8;
        let data = random(3000, dim, 5);
        let pq = ProductQuantizer::train(&data, dim, 4, KSUB, 7);
        assert_eq!(
            pq,
            ProductQuantizer::train(&data, dim, 4, KSUB, 7),
            "deterministic for a fixed seed"
        );
        let mut code = vec![0u8; 4];
        let mut rec = Vec::new();
        let mut err = 0.0f64;
        let mut norm = 0.0f64;
        let q = random(1, dim, 99);
        let (mut lut_ip, mut lut_l2): (Lut, Lut) = (Vec::new(), Vec::new());
        pq.ip_table(&q, &mut lut_ip);
        pq.l2_table(&q, &mut lut_l2);
        for x in data.chunks_exact(dim).take(500) {
            pq.encode(x, &mut code);
            pq.decode(&code, &mut rec);
            err += f64::from(l2sq(x, &rec));
            norm += f64::from(dot(x, x));
            assert!((adc(&lut_ip, &code) - dot(&q, &rec)).abs() < 1e-4);
            assert!((adc(&lut_l2, &code) - l2sq(&q, &rec)).abs() < 1e-4);
            let four: Vec<u8> = code
                .iter()
                .chain(&code)
                .chain(&code)
                .chain(&code)
                .copied()
                .collect();
            assert_eq!(adc4(&lut_ip, &four, 4), [adc(&lut_ip, &code); 4]);
        }
        assert!(
            err / norm < 0.1,
            "relative reconstruction error {}",
            err / norm
        );
    }
}
