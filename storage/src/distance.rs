//! Distance kernels (simsimd) and the bounded top-k used by every search path.
//!
//! Internally every metric is a *distance*, lower is closer: cosine → `1 − a·b` (vectors are
//! unit length), dot → `−a·b`, l2 → squared Euclidean. [`crate::Metric::score`] turns it into
//! the score users see.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use simsimd::SpatialSimilarity;

use crate::types::Metric;

/// Inner product through simsimd (scalar fallback only if lengths differ, which callers prevent).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match <f32 as SpatialSimilarity>::dot(a, b) {
        Some(d) => d as f32,
        None => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// Squared Euclidean distance through simsimd.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    match <f32 as SpatialSimilarity>::l2sq(a, b) {
        Some(d) => d as f32,
        None => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
    }
}

/// Hints the CPU to start loading `v` into cache (a no-op off x86_64).
#[inline]
pub fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: prefetching is a hint that never faults, and the pointer comes from a live
        // slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// The internal distance of `metric` between a query and a stored vector.
#[inline]
pub fn distance(metric: Metric, query: &[f32], stored: &[f32]) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - dot(query, stored),
        Metric::Dot => -dot(query, stored),
        Metric::L2 => l2sq(query, stored),
    }
}

/// A candidate: distance plus a caller-defined key (e.g. segment and row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<K> {
    /// Internal distance, lower is closer.
    pub distance: f32,
    /// Who it is.
    pub key: K,
}

impl<K: Ord> Eq for Candidate<K> {}
impl<K: Ord> PartialOrd for Candidate<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord> Ord for Candidate<K> {
    /// Total order: by distance, ties broken by key so results are deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then_with(|| self.key.cmp(&other.key))
    }
}

/// Keeps the `k` closest candidates seen (a max-heap on distance).
#[derive(Debug)]
pub struct TopK<K> {
    k: usize,
    heap: BinaryHeap<Candidate<K>>,
}

impl<K: Ord + Copy> TopK<K> {
    /// An empty collector for `k` results.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// How many results it keeps.
    pub fn k(&self) -> usize {
        self.k
    }

    /// How many candidates it holds (at most `k`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The distance a candidate must beat to enter, or +∞ while not full.
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |c| c.distance)
        }
    }

    /// Offers a candidate.
    #[inline]
    pub fn push(&mut self, distance: f32, key: K) {
        if self.k == 0 {
            return;
        }
        let c = Candidate { distance, key };
        if self.heap.len() < self.k {
            self.heap.push(c);
        } else if let Some(mut top) = self.heap.peek_mut()
            && c < *top
        {
            *top = c;
        }
    }

    /// Merges another collector into this one.
    pub fn merge(&mut self, other: TopK<K>) {
        for c in other.heap {
            self.push(c.distance, c.key);
        }
    }

    /// The candidates, closest first.
    pub fn into_sorted(self) -> Vec<Candidate<K>> {
        self.heap.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_keeps_smallest() {
        let mut t = TopK::new(3);
        for (i, d) in [5.0, 1.0, 4.0, 2.0, 3.0, 0.5].into_iter().enumerate() {
            t.push(d, i);
        }
        let got: Vec<usize> = t.into_sorted().into_iter().map(|c| c.key).collect();
        assert_eq!(got, vec![5, 1, 3]);
    }

    #[test]
    fn kernels_match_scalar() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).cos()).collect();
        let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let l: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - d).abs() < 1e-4);
        assert!((l2sq(&a, &b) - l).abs() < 1e-4);
    }
}
