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
    // Per row, per lane: the best value so far and its centroid (lanes 0–7 and 8–15 of each
    // tile). A strict `<` keeps each lane's first minimum, so the final reduction (smallest
    // index among the lanes holding the minimum) picks the same centroid as the scalar scan.
    // SAFETY: (whole block) `d < dim` and `tile + 16 <= kp`, so every load reads inside
    // `transposed` (`kp × dim`, tile `tile` at `tile·dim`) and `norms` (`kp`), and every row
    // slice has at least `dim` values (asserted above).
    unsafe {
        let mut bestv = [_mm256_set1_ps(f32::INFINITY); 2 * ROWS];
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut besti = [lanes; 2 * ROWS];
        for tile in (0..t.kp).step_by(TILE) {
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
            let norms = t.norms.as_ptr().add(tile);
            let n = [_mm256_loadu_ps(norms), _mm256_loadu_ps(norms.add(8))];
            for h in 0..2 {
                let idx = _mm256_add_epi32(lanes, _mm256_set1_epi32((tile + 8 * h) as i32));
                for r in 0..ROWS {
                    let a = acc[2 * r + h];
                    // `norm − 2·dot`, exactly as the scalar kernel rounds it.
                    let v = _mm256_sub_ps(n[h], _mm256_add_ps(a, a));
                    let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(v, bestv[2 * r + h]);
                    bestv[2 * r + h] = _mm256_blendv_ps(bestv[2 * r + h], v, lt);
                    besti[2 * r + h] =
                        _mm256_blendv_epi8(besti[2 * r + h], idx, _mm256_castps_si256(lt));
                }
            }
        }
        let mut best = [(0usize, f32::INFINITY); ROWS];
        for (r, b) in best.iter_mut().enumerate() {
            *b = argmin16(
                bestv[2 * r],
                bestv[2 * r + 1],
                besti[2 * r],
                besti[2 * r + 1],
            );
        }
        best
    }
}

/// The smallest value over two 8-lane vectors and the smallest index among the lanes holding
/// it, without branches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn argmin16(
    v0: std::arch::x86_64::__m256,
    v1: std::arch::x86_64::__m256,
    i0: std::arch::x86_64::__m256i,
    i1: std::arch::x86_64::__m256i,
) -> (usize, f32) {
    use std::arch::x86_64::*;
    let mut m = _mm256_min_ps(v0, v1);
    m = _mm256_min_ps(m, _mm256_permute2f128_ps::<1>(m, m));
    m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b0100_1110>(m, m));
    m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b1011_0001>(m, m));
    let none = _mm256_set1_epi32(i32::MAX);
    let c0 = _mm256_blendv_epi8(
        none,
        i0,
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(v0, m)),
    );
    let c1 = _mm256_blendv_epi8(
        none,
        i1,
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(v1, m)),
    );
    let mut c = _mm256_min_epi32(c0, c1);
    c = _mm256_min_epi32(c, _mm256_permute2x128_si256::<1>(c, c));
    c = _mm256_min_epi32(c, _mm256_shuffle_epi32::<0b0100_1110>(c));
    c = _mm256_min_epi32(c, _mm256_shuffle_epi32::<0b1011_0001>(c));
    let i = _mm256_cvtsi256_si32(c);
    let v = _mm256_cvtss_f32(m);
    // The lanes never hold NaN (only values below the running best are taken), so some lane
    // equals the minimum and `i` is a real centroid.
    (i as usize, v)
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

/// Below this many centroids or dimensions the register-tiled kernel beats a matrix product
/// (PQ codebooks: 16–256 centroids of 1–16 floats).
const GEMM_MIN_K: usize = 64;
const GEMM_MIN_DIM: usize = 16;

/// Assigns every row to its nearest centroid, in parallel; returns (assignment, objective).
///
/// Large problems (the coarse quantizer) go through a cache-blocked matrix product of rows
/// against centroids (`gemm`, the kernel candle uses), then an argmin of `‖c‖² − 2·x·c`:
/// measured on Fashion-MNIST (60k × 784, k = 980) it halves coarse training against the
/// tiled kernel. Chunking is fixed, so the result does not depend on the thread count.
pub fn assign(data: &[f32], dim: usize, centroids: &[f32]) -> (Vec<u32>, f64) {
    let k = centroids.len() / dim.max(1);
    if k >= GEMM_MIN_K && dim >= GEMM_MIN_DIM {
        return assign_gemm(data, dim, centroids);
    }
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
    concat_parts(parts, data.len() / dim)
}

/// Joins per-chunk (assignment, objective) parts in chunk order.
fn concat_parts(parts: Vec<(Vec<u32>, f64)>, n: usize) -> (Vec<u32>, f64) {
    let mut assignment = Vec::with_capacity(n);
    let mut objective = 0.0;
    for (a, o) in parts {
        assignment.extend(a);
        objective += o;
    }
    (assignment, objective)
}

/// Rows in one matrix product: the `rows × k` dot block stays near 4 MB.
fn gemm_block_rows(k: usize) -> usize {
    ((1usize << 20) / k.max(1)).clamp(ROWS, CHUNK)
}

/// `dst[r·k + c] = x_r · c_c` for the `rows` rows of `x` (row-major, `dim` wide) against the
/// `k` row-major centroids, as one matrix product on the calling thread.
pub(crate) fn dots(x: &[f32], dim: usize, centroids: &[f32], k: usize, dst: &mut [f32]) {
    let rows = x.len() / dim;
    assert!(x.len() == rows * dim && centroids.len() == k * dim && dst.len() == rows * k);
    if rows == 0 || k == 0 {
        return;
    }
    // SAFETY: the three pointers cover exactly the `rows × k`, `rows × dim` and `k × dim`
    // matrices described by the strides (checked above); dst does not alias the inputs (it is
    // a distinct `&mut`), and `read_dst = false` means its old contents are never read.
    unsafe {
        gemm::gemm(
            rows,
            k,
            dim,
            dst.as_mut_ptr(),
            1,
            k as isize,
            false,
            x.as_ptr(),
            1,
            dim as isize,
            centroids.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn assign_gemm(data: &[f32], dim: usize, centroids: &[f32]) -> (Vec<u32>, f64) {
    let k = centroids.len() / dim;
    let norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    let block = gemm_block_rows(k);
    let parts: Vec<(Vec<u32>, f64)> = data
        .par_chunks(block * dim)
        .map(|chunk| {
            let rows = chunk.len() / dim;
            let mut products = vec![0.0f32; rows * k];
            dots(chunk, dim, centroids, k, &mut products);
            let mut a = Vec::with_capacity(rows);
            let mut obj = 0.0f64;
            for (x, d) in chunk.chunks_exact(dim).zip(products.chunks_exact(k)) {
                let (best, best_d) = argmin_shifted(&norms, d);
                let xx: f32 = x.iter().map(|v| v * v).sum();
                a.push(best as u32);
                obj += f64::from((best_d + xx).max(0.0));
            }
            (a, obj)
        })
        .collect();
    concat_parts(parts, data.len() / dim)
}

/// Lanes of [`argmin_shifted`]: one AVX-512 register, or two AVX2 ones.
const ARGMIN_LANES: usize = 16;

/// The centroid `c` minimising `norms[c] − 2·dots[c]`, and that value: the first such `c`, as
/// a scalar scan with `<` finds it (NaN never wins; all-NaN or all-∞ gives centroid 0, ∞).
///
/// Written as independent per-lane minima so the compiler vectorises the scan into compares
/// and blends; a scalar scan's compare-and-branch per centroid was 54% of a GloVe-50 build
/// (390k rows × 2,498 lists), more than the matrix product it reads.
fn argmin_shifted(norms: &[f32], dots: &[f32]) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX2_FMA {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time), all the function needs.
        return unsafe { argmin_shifted_avx2(norms, dots) };
    }
    argmin_shifted_body(norms, dots)
}

/// [`argmin_shifted_body`] compiled for AVX2 (the crate's baseline is SSE2: 4 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn argmin_shifted_avx2(norms: &[f32], dots: &[f32]) -> (usize, f32) {
    argmin_shifted_body(norms, dots)
}

#[inline(always)]
fn argmin_shifted_body(norms: &[f32], dots: &[f32]) -> (usize, f32) {
    let n = norms.len().min(dots.len());
    let (mut best_v, mut best_i) = ([f32::INFINITY; ARGMIN_LANES], [0u32; ARGMIN_LANES]);
    let full = n - n % ARGMIN_LANES;
    for (c, (ns, ds)) in norms[..full]
        .chunks_exact(ARGMIN_LANES)
        .zip(dots[..full].chunks_exact(ARGMIN_LANES))
        .enumerate()
    {
        let base = (c * ARGMIN_LANES) as u32;
        for l in 0..ARGMIN_LANES {
            let v = ns[l] - 2.0 * ds[l];
            let better = v < best_v[l];
            best_v[l] = if better { v } else { best_v[l] };
            best_i[l] = if better { base + l as u32 } else { best_i[l] };
        }
    }
    // Per lane the first minimum; across lanes the smallest value, then the smallest index.
    let (mut best, mut best_d) = (0usize, f32::INFINITY);
    for (&v, &i) in best_v.iter().zip(&best_i) {
        if v < best_d || (v == best_d && (i as usize) < best) {
            (best, best_d) = (i as usize, v);
        }
    }
    for c in full..n {
        let v = norms[c] - 2.0 * dots[c];
        if v < best_d {
            (best, best_d) = (c, v);
        }
    }
    (best, best_d)
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
            // Every other case draws from a coarse grid and repeats centroids, so exact ties
            // occur and the SIMD argmin's tie-break (first index) is checked against the scan.
            let coarse = seed % 2 == 0;
            let mut u = || if coarse { rng.below(3) as f32 - 1.0 } else { rng.below(2000) as f32 / 1000.0 - 1.0 };
            let mut cents: Vec<f32> = (0..k * dim).map(|_| u()).collect();
            if coarse && k > 1 {
                let first = cents[..dim].to_vec();
                cents[(k - 1) * dim..].copy_from_slice(&first);
            }
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
    fn lane_argmin_finds_what_a_scalar_scan_finds() {
        let scalar = |norms: &[f32], dots: &[f32]| {
            let (mut best, mut best_d) = (0usize, f32::INFINITY);
            for (c, (n, d)) in norms.iter().zip(dots).enumerate() {
                let v = n - 2.0 * d;
                if v < best_d {
                    (best, best_d) = (c, v);
                }
            }
            (best, best_d)
        };
        let mut rng = SplitMix64::new(11);
        for k in [1, 2, 15, 16, 17, 31, 64, 100, 2498] {
            for round in 0..40 {
                // Few distinct values, so ties across lanes and chunks are common.
                let levels = if round % 2 == 0 { 3 } else { 1000 };
                let mut draw = || (rng.next_u64() % levels) as f32 * 0.5;
                let norms: Vec<f32> = (0..k).map(|_| draw()).collect();
                let mut dots: Vec<f32> = (0..k).map(|_| draw()).collect();
                if round % 5 == 0 {
                    dots[(round * 7) % k] = f32::NAN;
                }
                let (j, w) = scalar(&norms, &dots);
                let (i, v) = argmin_shifted(&norms, &dots);
                assert_eq!((i, v.to_bits()), (j, w.to_bits()), "k {k} round {round}");
                let (i, v) = argmin_shifted_body(&norms, &dots);
                assert_eq!((i, v.to_bits()), (j, w.to_bits()), "portable, k {k}");
            }
        }
        let nan = vec![f32::NAN; 40];
        assert_eq!(argmin_shifted(&nan, &nan), (0, f32::INFINITY));
    }

    #[test]
    fn gemm_assignment_matches_brute_force() {
        let mut rng = SplitMix64::new(11);
        for &(n, dim, k) in &[(1000usize, 16usize, 64usize), (777, 100, 130), (5, 33, 70)] {
            let data: Vec<f32> = (0..n * dim)
                .map(|_| (rng.below(1 << 20) as f32 / (1u32 << 18) as f32) - 2.0)
                .collect();
            let cents: Vec<f32> = (0..k * dim)
                .map(|_| (rng.below(1 << 20) as f32 / (1u32 << 18) as f32) - 2.0)
                .collect();
            let (a, obj) = assign(&data, dim, &cents);
            assert_eq!(a.len(), n);
            let mut brute_obj = 0.0f64;
            for (r, x) in data.chunks_exact(dim).enumerate() {
                let (_, best) = nearest(x, &cents, dim);
                let got = l2sq(x, &cents[a[r] as usize * dim..(a[r] as usize + 1) * dim]);
                // The chosen centroid is the nearest up to float rounding of the expansion.
                assert!(
                    got <= best + 1e-3 * best.max(1.0),
                    "row {r}: {got} vs {best}"
                );
                brute_obj += f64::from(best);
            }
            assert!((obj - brute_obj).abs() <= 1e-3 * brute_obj.max(1.0));
            // Deterministic across calls (fixed chunking).
            assert_eq!(assign(&data, dim, &cents).0, a);
        }
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
