//! Fusing the ranked lists of a hybrid search's branches (dense, text, sparse) into one.
//!
//! * Reciprocal-rank fusion: `Σ weight / (k + rank)` over the branches that found the hit
//!   (rank from 1; k = 60 by default, as in Cormack et al. and every peer);
//! * distribution-based score fusion (Qdrant's DBSF): each branch's scores are mapped to
//!   0..=1 through mean ± 3 standard deviations of that branch's list (clamped), then summed
//!   with the weights. Unlike RRF it keeps how far apart the scores were.
use std::collections::HashMap;
use std::hash::Hash;

/// How a hybrid search fuses its branches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal-rank fusion with this k (> 0).
    Rrf {
        /// The rank offset (default 60).
        k: f32,
    },
    /// Distribution-based score fusion.
    Dbsf,
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: DEFAULT_RRF_K }
    }
}

/// RRF's default rank offset.
pub const DEFAULT_RRF_K: f32 = 60.0;

/// Where one branch ranked a fused hit, and its score there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BranchRank {
    /// 1-based rank in the branch's list.
    pub rank: u32,
    /// The branch's own score (similarity for dense, BM25, dot product).
    pub score: f32,
}

/// A fused hit: its key, fused score, and its rank in each branch (`None`: not found there).
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<K> {
    /// The hit.
    pub key: K,
    /// The fused score (higher is better).
    pub score: f32,
    /// Per branch, in the order given to [`fuse`].
    pub branches: Vec<Option<BranchRank>>,
}

/// Fuses `lists` (per branch: its hits best first with scores, higher better, and its
/// weight ≥ 0) into the best `k`, ties broken by key.
pub fn fuse<K: Copy + Eq + Hash + Ord>(
    lists: &[(Vec<(K, f32)>, f32)],
    fusion: Fusion,
    k: usize,
) -> Vec<Fused<K>> {
    let n = lists.len();
    let mut by_key: HashMap<K, Fused<K>> = HashMap::new();
    for (b, (list, weight)) in lists.iter().enumerate() {
        let norm = match fusion {
            Fusion::Rrf { .. } => None,
            Fusion::Dbsf => Some(bounds(list)),
        };
        for (i, &(key, score)) in list.iter().enumerate() {
            let rank = i as u32 + 1;
            let part = match (fusion, norm) {
                (Fusion::Rrf { k }, _) => weight / (k + rank as f32),
                (Fusion::Dbsf, Some((lo, hi))) => {
                    let x = if hi > lo {
                        ((score - lo) / (hi - lo)).clamp(0.0, 1.0)
                    } else {
                        0.5
                    };
                    weight * x
                }
                (Fusion::Dbsf, None) => 0.0,
            };
            let e = by_key.entry(key).or_insert_with(|| Fused {
                key,
                score: 0.0,
                branches: vec![None; n],
            });
            if e.branches[b].is_none() {
                e.score += part;
                e.branches[b] = Some(BranchRank { rank, score });
            }
        }
    }
    let mut out: Vec<Fused<K>> = by_key.into_values().collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.key.cmp(&b.key)));
    out.truncate(k);
    out
}

/// Mean ± 3 standard deviations of a list's scores.
fn bounds<K>(list: &[(K, f32)]) -> (f32, f32) {
    if list.is_empty() {
        return (0.0, 0.0);
    }
    let n = list.len() as f64;
    let mean = list.iter().map(|x| f64::from(x.1)).sum::<f64>() / n;
    let var = list
        .iter()
        .map(|x| (f64::from(x.1) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    ((mean - 3.0 * sd) as f32, (mean + 3.0 * sd) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_and_dbsf_by_hand() {
        let dense = vec![(1u32, 0.9), (2, 0.8), (3, 0.7)];
        let text = vec![(3u32, 12.0), (4, 2.0)];
        let f = fuse(
            &[(dense.clone(), 1.0), (text.clone(), 1.0)],
            Fusion::Rrf { k: 60.0 },
            10,
        );
        // 3: 1/63 + 1/61 leads; then 1 (1/61), 2 (1/62) and 4 (1/62), ties by key.
        let keys: Vec<u32> = f.iter().map(|x| x.key).collect();
        assert_eq!(keys, [3, 1, 2, 4]);
        assert!((f[0].score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-7);
        assert_eq!(f[0].branches[0].unwrap().rank, 3);
        assert_eq!(f[0].branches[1].unwrap().rank, 1);
        assert_eq!(f[3].branches[0], None);
        // A zero weight silences a branch's ranking (its hits still appear, last).
        let f = fuse(
            &[(dense.clone(), 0.0), (text.clone(), 1.0)],
            Fusion::default(),
            2,
        );
        assert_eq!(f.iter().map(|x| x.key).collect::<Vec<_>>(), [3, 4]);
        // DBSF: text's 12 vs 2 is a wide gap; dense's scores are close.
        let f = fuse(&[(dense, 1.0), (text, 1.0)], Fusion::Dbsf, 10);
        assert_eq!(f[0].key, 3);
        assert!(f.iter().all(|x| (0.0..=2.0).contains(&x.score)));
    }
}
