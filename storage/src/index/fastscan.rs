//! 4-bit PQ "fast-scan": codes of 32 vectors are packed together so that one SIMD shuffle looks
//! up a sub-space's distance table for 16 vectors at once, with the table held in a register
//! (the technique of André et al., used by FAISS's `IndexIVFPQFastScan` and ScaNN).
//!
//! * A sub-space has 16 centroids, so its float table (16 entries) is quantised to `u8` and
//!   fits in one 128-bit lane; `_mm256_shuffle_epi8` indexes two such tables (two sub-spaces)
//!   with 32 nibbles per instruction.
//! * Scores are sums of `u8` table entries in `u16` lanes. The quantisation step is chosen so
//!   that a full sum never exceeds `u16::MAX`, which makes the SIMD result exact and
//!   bit-identical to the scalar one.
//!
//! Block layout (`m2` = sub-spaces rounded up to even, padding sub-spaces have code 0 and a zero
//! table): a block holds 32 vectors in `16 · m2` bytes, as `m2 / 2` chunks of 32 bytes. Chunk
//! `t` is 16 bytes for sub-space `2t` followed by 16 bytes for sub-space `2t + 1`. In each
//! 16-byte half, byte `b` holds vector `slot(b)` in its low nibble and vector `16 + slot(b)` in
//! its high nibble, where `slot(b) = b / 2` for even `b` and `8 + b / 2` for odd `b`. That order
//! makes the AVX2 kernel's final lane arithmetic produce scores in natural vector order without
//! a cross-lane shuffle.
use crate::cpu::HAS_AVX2;

/// Vectors per packed block.
pub const BLOCK: usize = 32;
/// Centroids per sub-space.
pub const KSUB: usize = 16;

/// The vector (0..16) held by byte `b` of a 16-byte half.
#[inline]
const fn slot(b: usize) -> usize {
    if b.is_multiple_of(2) {
        b / 2
    } else {
        8 + b / 2
    }
}

/// Sub-spaces rounded up to even.
pub fn padded_m(m: usize) -> usize {
    m + m % 2
}

/// Bytes of one packed block.
pub fn block_bytes(m: usize) -> usize {
    16 * padded_m(m)
}

/// Packs `n` codes (`m` bytes per vector, each below 16) into `ceil(n / 32)` blocks; slots
/// past `n` in the last block get code 0.
pub fn pack(codes: &[u8], m: usize) -> Vec<u8> {
    let n = codes.len() / m;
    let m2 = padded_m(m);
    let mut out = vec![0u8; n.div_ceil(BLOCK) * block_bytes(m)];
    for (bi, block) in out.chunks_exact_mut(block_bytes(m)).enumerate() {
        let code = |v: usize, j: usize| -> u8 {
            let r = bi * BLOCK + v;
            if r < n && j < m {
                codes[r * m + j] & 0x0f
            } else {
                0
            }
        };
        for j in 0..m2 {
            let half = &mut block[(j / 2) * 32 + (j % 2) * 16..][..16];
            for (b, byte) in half.iter_mut().enumerate() {
                *byte = code(slot(b), j) | (code(16 + slot(b), j) << 4);
            }
        }
    }
    out
}

/// The inverse of [`pack`]: the `n` codes (`m` bytes per vector) held by `blocks`.
pub fn unpack(blocks: &[u8], m: usize, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * m];
    for (bi, block) in blocks.chunks_exact(block_bytes(m)).enumerate() {
        for j in 0..m {
            let half = &block[(j / 2) * 32 + (j % 2) * 16..][..16];
            for (b, &byte) in half.iter().enumerate() {
                for (v, code) in [(slot(b), byte & 0x0f), (16 + slot(b), byte >> 4)] {
                    let r = bi * BLOCK + v;
                    if r < n {
                        out[r * m + j] = code;
                    }
                }
            }
        }
    }
    out
}

/// A per-query (or per-list) distance table quantised to bytes: the approximate distance of a
/// vector with score `s` is `bias + s / scale`.
#[derive(Debug, Clone, Default)]
pub struct QuantizedLut {
    /// `m2 × 16` bytes; padding sub-spaces are zero.
    pub table: Vec<u8>,
    /// Sum of the per-sub-space minima.
    pub bias: f32,
    /// Score units per distance unit.
    pub scale: f32,
}

impl QuantizedLut {
    /// Quantises a float table (`m × 16`, lower is closer). Each sub-space is shifted by its
    /// minimum; one scale for all sub-spaces maps the widest range to the largest entry that
    /// keeps a sum of `m2` entries within `u16`.
    pub fn quantize(lut: &[f32], m: usize, out: &mut QuantizedLut) {
        let m2 = padded_m(m);
        let qmax = (65_535 / m2).min(255) as f32;
        let rows = || {
            lut.chunks_exact(KSUB)
                .take(m)
                .map(|r| <&[f32; KSUB]>::try_from(r).expect("invariant: rows of KSUB"))
        };
        let mut lows = Vec::with_capacity(m);
        let mut bias = 0.0f32;
        let mut width = 0.0f32;
        for row in rows() {
            let (lo, hi) = min_max(row);
            lows.push(lo);
            bias += lo;
            width = width.max(hi - lo);
        }
        let scale = if width > 0.0 && width.is_finite() {
            qmax / width
        } else {
            1.0
        };
        out.table.clear();
        out.table.resize(m2 * KSUB, 0);
        for ((row, q), lo) in rows().zip(out.table.chunks_exact_mut(KSUB)).zip(lows) {
            for (x, b) in row.iter().zip(q) {
                // Non-negative, so adding ½ and truncating rounds (without a libm call).
                let v = (x - lo) * scale + 0.5;
                *b = (if v < qmax { v } else { qmax }) as u8;
            }
        }
        out.bias = bias;
        out.scale = scale;
    }

    /// The largest score whose approximate distance is below `limit` (`None`: no score is).
    pub fn score_limit(&self, limit: f32) -> Option<u16> {
        if limit == f32::INFINITY {
            return Some(u16::MAX);
        }
        let x = (limit - self.bias) * self.scale;
        if x.is_nan() || x <= 0.0 {
            return None;
        }
        Some((x.ceil() - 1.0).min(f32::from(u16::MAX)) as u16)
    }

    /// Approximate distance of a score.
    #[inline]
    pub fn distance(&self, score: u16) -> f32 {
        self.bias + f32::from(score) / self.scale
    }
}

/// The minimum and maximum of a table row, as a tree of pairwise comparisons (a chain of 15
/// dependent ones per row cost more than the rest of the quantisation). NaN-free input.
#[inline]
fn min_max(row: &[f32; KSUB]) -> (f32, f32) {
    let (mut lo, mut hi) = (*row, *row);
    let mut n = KSUB / 2;
    while n > 0 {
        for i in 0..n {
            lo[i] = if lo[i + n] < lo[i] { lo[i + n] } else { lo[i] };
            hi[i] = if hi[i + n] > hi[i] { hi[i + n] } else { hi[i] };
        }
        n /= 2;
    }
    (lo[0], hi[0])
}

/// Scores every vector of `blocks` (consecutive packed blocks) into `scores` (32 per block)
/// and sets, per block, a bit for each vector whose score is at most `limit`.
pub fn scan(
    table: &[u8],
    blocks: &[u8],
    m: usize,
    limit: u16,
    scores: &mut Vec<u16>,
    masks: &mut Vec<u32>,
) {
    let nb = blocks.len() / block_bytes(m);
    scores.clear();
    scores.resize(nb * BLOCK, 0);
    masks.clear();
    masks.resize(nb, 0);
    assert!(
        table.len() >= padded_m(m) * KSUB && blocks.len() == nb * block_bytes(m),
        "invariant: table and blocks match m"
    );
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX2 {
        // SAFETY: AVX2 is present (checked at runtime above); `scan_avx2` reads only
        // `table[..m2·16]` and `blocks[..nb·block_bytes]`, whose lengths were asserted, and
        // writes within `scores` and `masks`, which were sized for `nb` blocks.
        unsafe { scan_avx2(table, blocks, m, limit, scores, masks) };
        return;
    }
    scan_scalar(table, blocks, m, limit, scores, masks);
}

/// Portable reference of [`scan`].
pub fn scan_scalar(
    table: &[u8],
    blocks: &[u8],
    m: usize,
    limit: u16,
    scores: &mut [u16],
    masks: &mut [u32],
) {
    let m2 = padded_m(m);
    for ((block, out), mask) in blocks
        .chunks_exact(block_bytes(m))
        .zip(scores.chunks_exact_mut(BLOCK))
        .zip(masks.iter_mut())
    {
        out.fill(0);
        for j in 0..m2 {
            let half = &block[(j / 2) * 32 + (j % 2) * 16..][..16];
            let t = &table[j * KSUB..(j + 1) * KSUB];
            for (b, &byte) in half.iter().enumerate() {
                out[slot(b)] += u16::from(t[usize::from(byte & 0x0f)]);
                out[16 + slot(b)] += u16::from(t[usize::from(byte >> 4)]);
            }
        }
        *mask = out
            .iter()
            .enumerate()
            .filter(|(_, s)| **s <= limit)
            .fold(0, |acc, (i, _)| acc | (1 << i));
    }
}

/// # Safety
/// The CPU must support AVX2; `table` must hold `padded_m(m) · 16` bytes, `blocks` whole
/// blocks, and `scores`/`masks` room for 32/1 entries per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(
    table: &[u8],
    blocks: &[u8],
    m: usize,
    limit: u16,
    scores: &mut [u16],
    masks: &mut [u32],
) {
    use std::arch::x86_64::*;
    let chunks = padded_m(m) / 2;
    let bb = block_bytes(m);
    let low = _mm256_set1_epi8(0x0f);
    let lim = _mm256_set1_epi16(limit as i16);
    for (bi, mask) in masks.iter_mut().enumerate() {
        // SAFETY: every pointer below stays inside the slices, whose sizes the caller
        // guarantees: block `bi` spans `bb` bytes of `blocks`, chunk `t < m2 / 2` reads 32 bytes
        // at `32·t` of the block and of `table`, and block `bi` writes scores `32·bi..32·bi + 32`.
        unsafe {
            let base = blocks.as_ptr().add(bi * bb);
            let mut lo_raw = _mm256_setzero_si256();
            let mut lo_odd = _mm256_setzero_si256();
            let mut hi_raw = _mm256_setzero_si256();
            let mut hi_odd = _mm256_setzero_si256();
            for t in 0..chunks {
                let c = _mm256_loadu_si256(base.add(t * 32).cast());
                let l = _mm256_loadu_si256(table.as_ptr().add(t * 32).cast());
                let r_lo = _mm256_shuffle_epi8(l, _mm256_and_si256(c, low));
                let r_hi = _mm256_shuffle_epi8(l, _mm256_and_si256(_mm256_srli_epi16(c, 4), low));
                // A u16 lane holds an even byte plus 256 × the odd byte; the odd bytes are also
                // summed on their own, and subtracted out of the even sums at the end.
                lo_raw = _mm256_add_epi16(lo_raw, r_lo);
                lo_odd = _mm256_add_epi16(lo_odd, _mm256_srli_epi16(r_lo, 8));
                hi_raw = _mm256_add_epi16(hi_raw, r_hi);
                hi_odd = _mm256_add_epi16(hi_odd, _mm256_srli_epi16(r_hi, 8));
            }
            let lo_even = _mm256_sub_epi16(lo_raw, _mm256_slli_epi16(lo_odd, 8));
            let hi_even = _mm256_sub_epi16(hi_raw, _mm256_slli_epi16(hi_odd, 8));
            // Lane 0 summed the even sub-spaces, lane 1 the odd ones: add them. Even bytes are
            // vectors 0..8 and odd bytes vectors 8..16 (see `slot`), so [even | odd] is in order.
            let lo = _mm256_add_epi16(
                _mm256_permute2x128_si256(lo_even, lo_odd, 0x20),
                _mm256_permute2x128_si256(lo_even, lo_odd, 0x31),
            );
            let hi = _mm256_add_epi16(
                _mm256_permute2x128_si256(hi_even, hi_odd, 0x20),
                _mm256_permute2x128_si256(hi_even, hi_odd, 0x31),
            );
            let out = scores.as_mut_ptr().add(bi * BLOCK);
            _mm256_storeu_si256(out.cast(), lo);
            _mm256_storeu_si256(out.add(16).cast(), hi);
            // score ≤ limit (unsigned) ⇔ min(score, limit) == score.
            let ok_lo = _mm256_cmpeq_epi16(_mm256_min_epu16(lo, lim), lo);
            let ok_hi = _mm256_cmpeq_epi16(_mm256_min_epu16(hi, lim), hi);
            // Saturating pack to bytes works per 128-bit lane: [lo.0, hi.0, lo.1, hi.1] in
            // 8-byte groups; a 64-bit permute restores [lo.0, lo.1, hi.0, hi.1].
            let packed = _mm256_permute4x64_epi64(_mm256_packs_epi16(ok_lo, ok_hi), 0b11_01_10_00);
            *mask = _mm256_movemask_epi8(packed) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn simd_matches_scalar_and_scores_are_exact_sums(
            m in 1usize..70,
            n in 1usize..100,
            seed in any::<u64>(),
            limit in any::<u16>(),
        ) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let codes: Vec<u8> = (0..n * m).map(|_| rng.below(16) as u8).collect();
            let qmax = (65_535 / padded_m(m)).min(255);
            let mut table = vec![0u8; padded_m(m) * KSUB];
            for t in table.iter_mut().take(m * KSUB) {
                *t = rng.below(qmax + 1) as u8;
            }
            let blocks = pack(&codes, m);
            prop_assert_eq!(unpack(&blocks, m, n), codes.clone());
            let (mut s, mut k) = (Vec::new(), Vec::new());
            scan(&table, &blocks, m, limit, &mut s, &mut k);
            let nb = n.div_ceil(BLOCK);
            let (mut s2, mut k2) = (vec![0u16; nb * BLOCK], vec![0u32; nb]);
            scan_scalar(&table, &blocks, m, limit, &mut s2, &mut k2);
            prop_assert_eq!(&s, &s2);
            prop_assert_eq!(&k, &k2);
            for r in 0..n {
                let want: u32 = (0..m)
                    .map(|j| u32::from(table[j * KSUB + usize::from(codes[r * m + j])]))
                    .sum();
                prop_assert_eq!(u32::from(s[r]), want);
                prop_assert_eq!(k[r / BLOCK] >> (r % BLOCK) & 1 == 1, s[r] <= limit);
            }
        }

        #[test]
        fn quantized_distance_is_close_and_limit_is_consistent(
            m in 1usize..300,
            seed in any::<u64>(),
            limit in -5.0f32..60.0,
        ) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let lut: Vec<f32> = (0..m * KSUB).map(|_| rng.below(1000) as f32 / 100.0 - 3.0).collect();
            let mut q = QuantizedLut::default();
            QuantizedLut::quantize(&lut, m, &mut q);
            let code: Vec<usize> = (0..m).map(|_| rng.below(16)).collect();
            let exact: f32 = code.iter().enumerate().map(|(j, &c)| lut[j * KSUB + c]).sum();
            let score: u32 = code.iter().enumerate().map(|(j, &c)| u32::from(q.table[j * KSUB + c])).sum();
            prop_assert!(score <= 65_535);
            let approx = q.distance(score as u16);
            // Each entry is off by at most half a step.
            prop_assert!((approx - exact).abs() <= 0.5 * m as f32 / q.scale + 1e-3 * m as f32);
            match q.score_limit(limit) {
                None => prop_assert!(approx >= limit - 1e-3),
                Some(l) => {
                    if (approx - limit).abs() > 1e-3 {
                        prop_assert_eq!(score <= u32::from(l), approx < limit);
                    }
                }
            }
        }
    }
}
