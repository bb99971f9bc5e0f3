//! k-means (Lloyd) for the IVF coarse quantizer and the PQ codebooks.
//!
//! Seeded and deterministic: sampled initialisation (distinct random rows, as FAISS does —
//! k-means++ costs O(n·k·d) per centre, too slow for k = 1024), bounded iterations with a
//! relative-objective tolerance, empty clusters repaired by splitting the largest one, and
//! assignment in parallel (rayon) with a fixed chunking so results do not depend on threads.
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::cpu::HAS_AVX2_FMA;
use crate::distance::l2sq;
/// Moved to [`crate::rng`]; kept here for callers of `kmeans::SplitMix64`.
pub use crate::rng::SplitMix64;

/// Training parameters.
#[derive(Debug, Clone, Copy)]
pub struct KMeansParams {
    /// Number of centroids.
    pub k: usize,
    /// Iteration cap.
    pub max_iters: usize,
    /// Stop when the objective improves by less than this fraction.
    pub tolerance: f64,
    /// Seed for sampling and initialisation.
    pub seed: u64,
    /// Training rows per centroid (sample size = k × this, capped by the data).
    pub max_points_per_centroid: usize,
}

impl KMeansParams {
    /// Defaults for `k` centroids.
    pub fn new(k: usize, seed: u64) -> Self {
        KMeansParams {
            k,
            max_iters: 20,
            tolerance: 1e-4,
            seed,
            max_points_per_centroid: 256,
        }
    }
}

/// `count` distinct row indices out of `n` (all of them, in order, if `count >= n`).
pub fn sample_rows(n: usize, count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    // Partial Fisher–Yates over a virtual permutation (a map of swapped slots).
    let mut swapped = std::collections::HashMap::with_capacity(count * 2);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let j = i + rng.below(n - i);
        let vj = *swapped.get(&j).unwrap_or(&j);
        let vi = *swapped.get(&i).unwrap_or(&i);
        swapped.insert(j, vi);
        out.push(vj);
    }
    out.sort_unstable();
    out
}

/// Index of the nearest centroid (L2) and its squared distance.
/// For the short sub-vectors of PQ training (≤ 16 floats) an inlined loop is several times
/// faster than a call into simsimd per centroid.
#[inline]
pub fn nearest(x: &[f32], centroids: &[f32], dim: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    if dim <= 16 {
        for (c, cent) in centroids.chunks_exact(dim).enumerate() {
            let d: f32 = x.iter().zip(cent).map(|(a, b)| (a - b) * (a - b)).sum();
            if d < best.1 {
                best = (c, d);
            }
        }
    } else {
        for (c, cent) in centroids.chunks_exact(dim).enumerate() {
            let d = l2sq(x, cent);
            if d < best.1 {
                best = (c, d);
            }
        }
    }
    best
}

const CHUNK: usize = 4096;

/// Centroids laid out dimension-major (padded to a multiple of 16) with their squared norms,
/// for assigning many rows: `‖x − c‖² = ‖x‖² + ‖c‖² − 2·x·c`. The kernel computes `x·c` for a
/// block of 4 rows against a tile of 16 centroids at a time, keeping the 4 × 16 sums in
/// registers across all dimensions (the shape of a GEMM micro-kernel), so each centroid value
/// loaded serves 4 rows and no partial sum goes through memory. It is compiled for AVX2 + FMA
/// when the CPU has them (detected once), with fused multiply-adds (half the instructions of a
/// multiply then an add); [`CentroidTable::nearest4_scalar`] runs the same fused operations in
/// the same order, so the two are bit-identical. CPUs without FMA get an unfused plain build.
#[derive(Debug, Clone)]
pub struct CentroidTable {
    k: usize,
    /// `k` rounded up to a multiple of [`TILE`].
    kp: usize,
    dim: usize,
    /// Tile-major: the 16 centroids of a tile are stored as `dim` rows of 16 values, so a
    /// kernel streams one contiguous `dim × 16` block per tile (a `dim × kp` layout stepped a
    /// page per dimension). Entry `(c, d)` at `(c / 16)·16·dim + 16·d + c % 16`; padding
    /// centroids are zero.
    transposed: Vec<f32>,
    /// `kp` squared norms; padding entries are +∞ so they are never nearest.
    norms: Vec<f32>,
}

const ROWS: usize = 4;
const TILE: usize = 16;

/// Nearest centroid of each of 4 rows: (index, `‖c‖² − 2·x·c`); `FUSED` accumulates with
/// `mul_add`.
#[inline(always)]
fn nearest4_kernel<const FUSED: bool>(
    xs: [&[f32]; ROWS],
    t: &CentroidTable,
) -> [(usize, f32); ROWS] {
    // The block's values per dimension, contiguous: one load serves the 4 rows.
    let xt: Vec<[f32; ROWS]> = (0..t.dim)
        .map(|d| [xs[0][d], xs[1][d], xs[2][d], xs[3][d]])
        .collect();
    let mut best = [(0usize, f32::INFINITY); ROWS];
    for tile in (0..t.kp).step_by(TILE) {
        let mut acc = [[0.0f32; TILE]; ROWS];
        for (x, row) in xt.iter().zip(t.tile(tile).chunks_exact(TILE)) {
            let c: &[f32; TILE] = row.try_into().expect("invariant: rows of TILE");
            for (a, xv) in acc.iter_mut().zip(x) {
                for (al, cl) in a.iter_mut().zip(c) {
                    *al = if FUSED {
                        xv.mul_add(*cl, *al)
                    } else {
                        *al + xv * cl
                    };
                }
            }
        }
        for (b, a) in best.iter_mut().zip(&acc) {
            for (l, al) in a.iter().enumerate() {
                let v = t.norms[tile + l] - 2.0 * al;
                if v < b.1 {
                    *b = (tile + l, v);
                }
            }
        }
    }
    best
}

/// The fused kernel with explicit AVX2 + FMA intrinsics (the autovectoriser leaves `mul_add`
/// scalar): per dimension, two 8-lane loads of centroid values and four broadcasts of row values
/// feed eight FMAs into eight accumulators. Lane for lane the same `mul_add` sequence as
/// [`nearest4_kernel`]`::<true>`, so bit-identical to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// The CPU must support AVX2 and FMA (the caller checks [`crate::cpu::HAS_AVX2_FMA`]).
unsafe fn nearest4_avx2(xs: [&[f32]; ROWS], t: &CentroidTable) -> [(usize, f32); ROWS] {
    use std::arch::x86_64::*;
    let dim = t.dim;
    assert!(xs.iter().all(|x| x.len() >= dim) && t.transposed.len() == dim * t.kp);
    let mut best = [(0usize, f32::INFINITY); ROWS];
    let mut sums = [[0.0f32; TILE]; ROWS];
    for tile in (0..t.kp).step_by(TILE) {
        // SAFETY: `d < dim` and `tile + 16 <= kp`, so every load reads inside `transposed`
        // (`kp × dim`, tile `tile` at `tile·dim`) and every row slice has at least `dim` values (asserted above); the
        // stores write the 16-float arrays in `sums`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 2 * ROWS];
            for d in 0..dim {
                let row = t.transposed.as_ptr().add(tile * dim + d * TILE);
                let (c0, c1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                for (r, x) in xs.iter().enumerate() {
                    let xv = _mm256_set1_ps(*x.get_unchecked(d));
                    acc[2 * r] = _mm256_fmadd_ps(xv, c0, acc[2 * r]);
                    acc[2 * r + 1] = _mm256_fmadd_ps(xv, c1, acc[2 * r + 1]);
                }
            }
            for (r, s) in sums.iter_mut().enumerate() {
                _mm256_storeu_ps(s.as_mut_ptr(), acc[2 * r]);
                _mm256_storeu_ps(s.as_mut_ptr().add(8), acc[2 * r + 1]);
            }
        }
        for (b, a) in best.iter_mut().zip(&sums) {
            for (l, al) in a.iter().enumerate() {
                let v = t.norms[tile + l] - 2.0 * al;
                if v < b.1 {
                    *b = (tile + l, v);
                }
            }
        }
    }
    best
}

#[inline(always)]
fn inner_products_kernel<const FUSED: bool>(t: &CentroidTable, q: &[f32], out: &mut [f32]) {
    for (tile, o) in out.chunks_exact_mut(TILE).enumerate() {
        let mut acc = [0.0f32; TILE];
        for (x, row) in q.iter().zip(t.tile(tile * TILE).chunks_exact(TILE)) {
            let c: &[f32; TILE] = row.try_into().expect("invariant: rows of TILE");
            for (a, cl) in acc.iter_mut().zip(c) {
                *a = if FUSED {
                    x.mul_add(*cl, *a)
                } else {
                    *a + x * cl
                };
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// [`inner_products_kernel`]`::<true>` with explicit AVX2 + FMA intrinsics (bit-identical).
/// Four tiles (64 centroids) go together: eight independent FMA chains keep both FMA units
/// busy, where one tile's two chains waited on the FMA latency (measured: half of a 784-d
/// search's time was this function before).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// The CPU must support AVX2 and FMA (the caller checks [`crate::cpu::HAS_AVX2_FMA`]).
unsafe fn inner_products_avx2(t: &CentroidTable, q: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const GROUP: usize = 4;
    let dim = t.dim;
    assert!(q.len() >= dim && out.len() == t.kp && t.transposed.len() == dim * t.kp);
    let tiles = t.kp / TILE;
    let mut tile = 0;
    while tile < tiles {
        let g = GROUP.min(tiles - tile);
        // SAFETY: tiles `tile..tile + g` exist (`g ≤ tiles − tile`) and each spans `16·dim`
        // floats of `transposed` from `16·dim·tile`; `d < dim ≤ q.len()`; the stores write
        // `out[16·tile..16·(tile + g)]`, inside its `kp` floats. All asserted above.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 2 * GROUP];
            let base = t.transposed.as_ptr().add(tile * TILE * dim);
            for d in 0..dim {
                let xv = _mm256_set1_ps(*q.get_unchecked(d));
                for i in 0..g {
                    let row = base.add(i * TILE * dim + d * TILE);
                    acc[2 * i] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(row), acc[2 * i]);
                    acc[2 * i + 1] =
                        _mm256_fmadd_ps(xv, _mm256_loadu_ps(row.add(8)), acc[2 * i + 1]);
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

impl CentroidTable {
    /// Prepares `k × dim` row-major centroids.
    pub fn new(centroids: &[f32], dim: usize) -> CentroidTable {
        let k = centroids.len() / dim;
        let kp = k.div_ceil(TILE) * TILE;
        let mut transposed = vec![0.0f32; kp * dim];
        let mut norms = vec![f32::INFINITY; kp];
        for (c, row) in centroids.chunks_exact(dim).enumerate() {
            for (d, v) in row.iter().enumerate() {
                transposed[(c / TILE) * TILE * dim + d * TILE + c % TILE] = *v;
            }
            norms[c] = row.iter().map(|v| v * v).sum();
        }
        CentroidTable {
            k,
            kp,
            dim,
            transposed,
            norms,
        }
    }

    /// Nearest centroids of up to 4 rows (missing rows repeat the last one); each result is
    /// (index, `‖x − c‖² − ‖x‖²`).
    #[inline]
    pub fn nearest4(&self, rows: &[&[f32]]) -> [(usize, f32); ROWS] {
        let last = rows[rows.len() - 1];
        let xs = [
            rows[0],
            *rows.get(1).unwrap_or(&last),
            *rows.get(2).unwrap_or(&last),
            *rows.get(3).unwrap_or(&last),
        ];
        #[cfg(target_arch = "x86_64")]
        if *HAS_AVX2_FMA {
            // SAFETY: AVX2 and FMA support were detected at run time.
            return unsafe { nearest4_avx2(xs, self) };
        }
        nearest4_kernel::<false>(xs, self)
    }

    /// The portable fused path, bit-identical to the SIMD one (for testing it against; slow
    /// where `mul_add` has no hardware instruction).
    pub fn nearest4_scalar(&self, rows: &[&[f32]]) -> [(usize, f32); ROWS] {
        let last = rows[rows.len() - 1];
        nearest4_kernel::<true>(
            [
                rows[0],
                *rows.get(1).unwrap_or(&last),
                *rows.get(2).unwrap_or(&last),
                *rows.get(3).unwrap_or(&last),
            ],
            self,
        )
    }

    /// The `dim × 16` block of the tile that starts at centroid `first`.
    fn tile(&self, first: usize) -> &[f32] {
        &self.transposed[first * self.dim..(first + TILE) * self.dim]
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Squared norm of centroid `c`.
    pub fn norm(&self, c: usize) -> f32 {
        self.norms[c]
    }

    /// `q · c` for every centroid, into `out` (`k` entries): 16 centroids at a time, their sums
    /// kept in registers across the dimensions.
    pub fn inner_products(&self, q: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.kp, 0.0);
        #[cfg(target_arch = "x86_64")]
        if *HAS_AVX2_FMA {
            // SAFETY: AVX2 and FMA support were detected at run time.
            unsafe { inner_products_avx2(self, q, out) };
            out.truncate(self.k);
            return;
        }
        inner_products_kernel::<false>(self, q, out);
        out.truncate(self.k);
    }
}

/// Assigns every row to its nearest centroid, in parallel; returns (assignment, objective).
pub fn assign(data: &[f32], dim: usize, centroids: &[f32]) -> (Vec<u32>, f64) {
    let table = CentroidTable::new(centroids, dim);
    let parts: Vec<(Vec<u32>, f64)> = data
        .par_chunks(CHUNK * dim)
        .map(|chunk| {
            let mut a = Vec::with_capacity(chunk.len() / dim);
            let mut obj = 0.0f64;
            let rows: Vec<&[f32]> = chunk.chunks_exact(dim).collect();
            for block in rows.chunks(ROWS) {
                let best = table.nearest4(block);
                for (x, (c, d)) in block.iter().zip(best) {
                    let xx: f32 = x.iter().map(|v| v * v).sum();
                    a.push(c as u32);
                    obj += f64::from((d + xx).max(0.0));
                }
            }
            (a, obj)
        })
        .collect();
    let mut assignment = Vec::with_capacity(data.len() / dim);
    let mut objective = 0.0;
    for (a, o) in parts {
        assignment.extend(a);
        objective += o;
    }
    (assignment, objective)
}

/// Trains `params.k` centroids on row-major `data` of dimension `dim`. Returns `k × dim`
/// floats. With fewer rows than `k`, the surplus centroids repeat rows (never NaN).
pub fn train(data: &[f32], dim: usize, params: &KMeansParams) -> Vec<f32> {
    let n = data.len() / dim;
    let k = params.k.max(1);
    let mut rng = SplitMix64::new(params.seed);
    if n == 0 {
        return vec![0.0; k * dim];
    }
    // Training sample.
    let sample_rows_idx = sample_rows(
        n,
        k.saturating_mul(params.max_points_per_centroid),
        &mut rng,
    );
    let sample: Vec<f32> = if sample_rows_idx.len() == n {
        data.to_vec()
    } else {
        sample_rows_idx
            .iter()
            .flat_map(|&r| data[r * dim..(r + 1) * dim].iter().copied())
            .collect()
    };
    let ns = sample.len() / dim;
    // Initialise from distinct sample rows.
    let init = sample_rows(ns, k, &mut rng);
    let mut centroids: Vec<f32> = Vec::with_capacity(k * dim);
    for i in 0..k {
        let r = init[i % init.len()];
        centroids.extend_from_slice(&sample[r * dim..(r + 1) * dim]);
    }
    if ns <= k {
        return centroids;
    }
    let mut prev = f64::INFINITY;
    for _ in 0..params.max_iters {
        let (assignment, objective) = assign(&sample, dim, &centroids);
        // New centroids: mean of assigned rows (f64 accumulation).
        let mut sums = vec![0.0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (x, &c) in sample.chunks_exact(dim).zip(&assignment) {
            let c = c as usize;
            counts[c] += 1;
            for (s, v) in sums[c * dim..(c + 1) * dim].iter_mut().zip(x) {
                *s += f64::from(*v);
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for (dst, s) in centroids[c * dim..(c + 1) * dim]
                    .iter_mut()
                    .zip(&sums[c * dim..(c + 1) * dim])
                {
                    *dst = (*s / counts[c] as f64) as f32;
                }
            }
        }
        repair_empty(&mut centroids, &mut counts, dim, &mut rng);
        if prev.is_finite()
            && (prev - objective).abs() <= params.tolerance * prev.abs().max(f64::MIN_POSITIVE)
        {
            break;
        }
        prev = objective;
    }
    centroids
}

/// Splits the largest cluster for every empty one: the empty centroid becomes a slightly
/// perturbed copy of the large one (and the large one is nudged the other way), as FAISS does.
fn repair_empty(centroids: &mut [f32], counts: &mut [usize], dim: usize, rng: &mut SplitMix64) {
    const EPS: f32 = 1.0 / 1024.0;
    for empty in 0..counts.len() {
        if counts[empty] > 0 {
            continue;
        }
        let big = (0..counts.len())
            .max_by_key(|&c| (counts[c], std::cmp::Reverse(c)))
            .unwrap_or(0);
        if counts[big] < 2 {
            return;
        }
        for j in 0..dim {
            let v = centroids[big * dim + j];
            let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
            centroids[empty * dim + j] = v * (1.0 + sign * EPS);
            centroids[big * dim + j] = v * (1.0 - sign * EPS);
        }
        counts[empty] = counts[big] / 2;
        counts[big] -= counts[empty];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, centers: &[[f32; 2]], seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut out = Vec::new();
        for c in centers {
            for _ in 0..n_per {
                out.push(c[0] + (rng.below(1000) as f32 / 1000.0 - 0.5) * 0.2);
                out.push(c[1] + (rng.below(1000) as f32 / 1000.0 - 0.5) * 0.2);
            }
        }
        out
    }

    #[test]
    fn finds_separated_blobs_and_is_deterministic() {
        let centers = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        let data = blobs(200, &centers, 1);
        let p = KMeansParams::new(4, 42);
        let c1 = train(&data, 2, &p);
        let c2 = train(&data, 2, &p);
        assert_eq!(c1, c2, "same seed, same centroids");
        for want in centers {
            let (_, d) = nearest(&want, &c1, 2);
            assert!(d < 0.05, "no centroid near {want:?}: {c1:?}");
        }
    }

    #[test]
    fn repairs_empty_clusters_and_handles_tiny_inputs() {
        // 3 distinct points, 8 centroids: never NaN, every centroid a finite point.
        let data = vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0];
        let c = train(&data, 2, &KMeansParams::new(8, 1));
        assert_eq!(c.len(), 16);
        assert!(c.iter().all(|x| x.is_finite()));
        // Duplicated rows force empty clusters during Lloyd iterations.
        let mut dup = Vec::new();
        for i in 0..500 {
            dup.extend_from_slice(&[(i % 3) as f32, 0.0]);
        }
        let c = train(&dup, 2, &KMeansParams::new(6, 3));
        assert!(c.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn centroid_table_simd_equals_scalar_and_brute_force() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(64), |(dim in 1usize..40, k in 1usize..150, nrows in 1usize..5, seed in any::<u64>())| {
            let mut rng = SplitMix64::new(seed);
            let mut u = || rng.below(2000) as f32 / 1000.0 - 1.0;
            let cents: Vec<f32> = (0..k * dim).map(|_| u()).collect();
            let xs: Vec<Vec<f32>> = (0..nrows).map(|_| (0..dim).map(|_| u()).collect()).collect();
            let rows: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
            let t = CentroidTable::new(&cents, dim);
            let fast = t.nearest4(&rows);
            let scalar = t.nearest4_scalar(&rows);
            prop_assert_eq!(fast, scalar, "dispatched SIMD and scalar differ");
            #[cfg(target_arch = "x86_64")]
            {
                let last = rows[rows.len() - 1];
                let xs4 = [rows[0], *rows.get(1).unwrap_or(&last), *rows.get(2).unwrap_or(&last), *rows.get(3).unwrap_or(&last)];
                if *HAS_AVX2_FMA {
                    // SAFETY: detected above.
                    prop_assert_eq!(unsafe { nearest4_avx2(xs4, &t) }, scalar, "AVX2 and scalar differ");
                    let (mut simd, mut fused) = (vec![0.0f32; t.kp], vec![0.0f32; t.kp]);
                    // SAFETY: detected above; both buffers hold `kp` floats.
                    unsafe { inner_products_avx2(&t, rows[0], &mut simd) };
                    inner_products_kernel::<true>(&t, rows[0], &mut fused);
                    prop_assert_eq!(simd, fused, "inner products: AVX2 and fused scalar differ");
                }
            }
            for (x, got) in xs.iter().zip(fast) {
                prop_assert!(got.0 < k);
                let (_, bd) = nearest(x, &cents, dim);
                let dd: f32 = x.iter().zip(&cents[got.0 * dim..(got.0 + 1) * dim]).map(|(a, b)| (a - b) * (a - b)).sum();
                // The chosen centroid is the nearest, up to rounding of near-ties.
                prop_assert!((dd - bd).abs() <= 1e-4 * (1.0 + bd), "picked {} at {dd}, best at {bd}", got.0);
                let xx: f32 = x.iter().map(|v| v * v).sum();
                prop_assert!((got.1 + xx - dd).abs() <= 1e-3 * (1.0 + dd));
                let mut ips = Vec::new();
                t.inner_products(x, &mut ips);
                prop_assert_eq!(ips.len(), k);
                for (c, ip) in ips.iter().enumerate() {
                    let want: f32 = x.iter().zip(&cents[c * dim..(c + 1) * dim]).map(|(a, b)| a * b).sum();
                    prop_assert!((ip - want).abs() <= 1e-4 * (1.0 + want.abs()));
                    prop_assert!((t.norm(c) - cents[c * dim..(c + 1) * dim].iter().map(|v| v * v).sum::<f32>()).abs() < 1e-4);
                }
            }
        });
    }

    #[test]
    fn sample_rows_are_distinct() {
        let mut rng = SplitMix64::new(9);
        let s = sample_rows(1000, 300, &mut rng);
        let set: std::collections::HashSet<_> = s.iter().collect();
        assert_eq!(set.len(), 300);
        assert!(s.iter().all(|&r| r < 1000));
    }
}
