//! The probe step's centroid table: the coarse centroids as scaled half floats, tile-major, so
//! that one query's `q · c` against every centroid streams half the bytes of an f32 table.
//!
//! Why: at 784-d with 980 lists the f32 centroids are 3 MB. A search reads all of them for
//! every query, which does not fit a 2 MB L2 cache; the scan was memory-bound (measured: half
//! of a Fashion-MNIST query's time was the probe, after its FMA chains were already
//! independent). As f16 they are 1.5 MB.
//!
//! Half floats only rank the lists. The best `shortlist` lists by the approximate keys are
//! scored again exactly from the f32 centroids (row-major in the index file), and the final
//! probe order, and every distance offset a list contributes, come from those exact values.
//! A list outside the shortlist whose exact key would have placed it among the probed ones
//! is the only way the half floats change a result; [`shortlist`] leaves a wide margin.
//!
//! Values are multiplied by a power of two chosen so the largest magnitude sits near 2^14
//! (the scaling is exact and undone on the result), so any finite data fits the f16 range.
use half::f16;

use crate::cpu::HAS_AVX2_FMA;

const TILE: usize = 16;

/// Lists scored exactly for a probe of `nprobe` lists out of `nlist`.
pub fn shortlist(nprobe: usize, nlist: usize) -> usize {
    (2 * nprobe + 16).min(nlist)
}

/// Scaled f16 centroids, tile-major: the 16 centroids of a tile are `dim` rows of 16 values.
#[derive(Debug)]
pub struct HalfTable {
    k: usize,
    kp: usize,
    dim: usize,
    /// `1 / scale`: multiplies a sum of scaled products back.
    unscale: f32,
    data: Vec<u16>,
    /// Exact squared norms (f32 centroids); padding entries are +∞.
    norms: Vec<f32>,
}

impl HalfTable {
    /// Prepares `k × dim` row-major centroids.
    pub fn new(centroids: &[f32], dim: usize) -> HalfTable {
        let k = centroids.len() / dim.max(1);
        let kp = k.div_ceil(TILE) * TILE;
        let max = centroids
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f32, |m, v| m.max(v.abs()));
        // A power of two: scaling by it is exact, in both directions.
        let exp = if max > 0.0 {
            14 - max.log2().ceil() as i32
        } else {
            0
        };
        let scale = 2f32.powi(exp.clamp(-100, 100));
        let mut data = vec![0u16; kp * dim];
        let mut norms = vec![f32::INFINITY; kp];
        for (c, row) in centroids.chunks_exact(dim).enumerate() {
            for (d, v) in row.iter().enumerate() {
                data[(c / TILE) * TILE * dim + d * TILE + c % TILE] =
                    f16::from_f32(v * scale).to_bits();
            }
            norms[c] = row.iter().map(|v| v * v).sum();
        }
        HalfTable {
            k,
            kp,
            dim,
            unscale: 1.0 / scale,
            data,
            norms,
        }
    }

    /// Squared norm of centroid `c`.
    pub fn norm(&self, c: usize) -> f32 {
        self.norms[c]
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2 + self.norms.len() * 4
    }

    /// Approximate `q · c` for every centroid, into `out` (`k` entries).
    pub fn inner_products(&self, q: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.kp, 0.0);
        #[cfg(target_arch = "x86_64")]
        if *HAS_AVX2_FMA && *HAS_F16C {
            // SAFETY: AVX2, FMA and F16C support were detected at run time.
            unsafe { inner_products_avx2(self, q, out) };
            out.iter_mut().for_each(|v| *v *= self.unscale);
            out.truncate(self.k);
            return;
        }
        self.inner_products_scalar(q, out);
        out.iter_mut().for_each(|v| *v *= self.unscale);
        out.truncate(self.k);
    }

    /// The portable path: the same fused multiply-adds in the same order as the SIMD one, so
    /// bit-identical to it (slow where `mul_add` has no hardware instruction).
    fn inner_products_scalar(&self, q: &[f32], out: &mut [f32]) {
        for (tile, o) in out.chunks_exact_mut(TILE).enumerate() {
            let block = &self.data[tile * TILE * self.dim..(tile + 1) * TILE * self.dim];
            let mut acc = [0.0f32; TILE];
            for (x, row) in q.iter().zip(block.chunks_exact(TILE)) {
                for (a, h) in acc.iter_mut().zip(row) {
                    *a = x.mul_add(f16::from_bits(*h).to_f32(), *a);
                }
            }
            o.copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
static HAS_F16C: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::arch::is_x86_feature_detected!("f16c"));

/// Four tiles (64 centroids) at a time: eight independent FMA chains, 8 halves converted per
/// load.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `out` holds `kp` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn inner_products_avx2(t: &HalfTable, q: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const GROUP: usize = 4;
    let dim = t.dim;
    assert!(q.len() >= dim && out.len() == t.kp && t.data.len() == dim * t.kp);
    let tiles = t.kp / TILE;
    let mut tile = 0;
    while tile < tiles {
        let g = GROUP.min(tiles - tile);
        // SAFETY: tiles `tile..tile + g` exist and each spans `16·dim` halves of `data` from
        // `16·dim·tile`; `d < dim ≤ q.len()`; the stores write `out[16·tile..16·(tile + g)]`,
        // inside its `kp` floats. All asserted above.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 2 * GROUP];
            let base = t.data.as_ptr().add(tile * TILE * dim);
            for d in 0..dim {
                let xv = _mm256_set1_ps(*q.get_unchecked(d));
                for i in 0..g {
                    let row = base.add(i * TILE * dim + d * TILE);
                    let lo = _mm256_cvtph_ps(_mm_loadu_si128(row.cast()));
                    let hi = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8).cast()));
                    acc[2 * i] = _mm256_fmadd_ps(xv, lo, acc[2 * i]);
                    acc[2 * i + 1] = _mm256_fmadd_ps(xv, hi, acc[2 * i + 1]);
                }
            }
            for i in 0..g {
                let o = out.as_mut_ptr().add((tile + i) * TILE);
                _mm256_storeu_ps(o, acc[2 * i]);
                _mm256_storeu_ps(o.add(8), acc[2 * i + 1]);
            }
        }
        tile += g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn simd_equals_scalar_and_is_close_to_exact(
            dim in 1usize..60,
            k in 1usize..150,
            magnitude in -20i32..20,
            seed in any::<u64>(),
        ) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let s = 2f32.powi(magnitude);
            let mut u = || (rng.below(2000) as f32 / 1000.0 - 1.0) * s;
            let cents: Vec<f32> = (0..k * dim).map(|_| u()).collect();
            let q: Vec<f32> = (0..dim).map(|_| u()).collect();
            let t = HalfTable::new(&cents, dim);
            let mut ips = Vec::new();
            t.inner_products(&q, &mut ips);
            prop_assert_eq!(ips.len(), k);
            let mut scalar = vec![0.0f32; t.kp];
            t.inner_products_scalar(&q, &mut scalar);
            scalar.iter_mut().for_each(|v| *v *= t.unscale);
            prop_assert_eq!(&ips[..], &scalar[..k], "dispatched and scalar differ");
            for (c, ip) in ips.iter().enumerate() {
                let row = &cents[c * dim..(c + 1) * dim];
                let want: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum();
                let mass: f32 = q.iter().zip(row).map(|(a, b)| (a * b).abs()).sum();
                // f16 keeps 11 significant bits of each (scaled) centroid value.
                prop_assert!((ip - want).abs() <= 1e-3 * mass + 1e-30, "{ip} against {want}");
                let n: f32 = row.iter().map(|v| v * v).sum();
                prop_assert_eq!(t.norm(c), n);
            }
        }
    }

    #[test]
    fn huge_and_tiny_values_stay_finite() {
        for v in [1e30f32, 3e-30, 65_504.0 * 8.0] {
            let cents = vec![v, -v, v / 2.0, 0.0];
            let t = HalfTable::new(&cents, 2);
            let mut ips = Vec::new();
            t.inner_products(&[1.0, 1.0], &mut ips);
            assert!(ips.iter().all(|x| x.is_finite()), "{v}: {ips:?}");
            assert!((ips[0]).abs() <= 1e-3 * v.abs(), "{v}: {ips:?}");
            assert!((ips[1] - v / 2.0).abs() <= 1e-3 * v.abs(), "{v}: {ips:?}");
        }
    }
}
