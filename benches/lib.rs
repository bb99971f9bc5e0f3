//! Shared helpers for the benchmarks: the classic fvecs/ivecs readers and recall@k.
#![forbid(unsafe_code)]

use std::path::Path;

/// Reads an fvecs file (each row: i32 dim, then dim f32).
pub fn read_fvecs(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    quiver_client::parse_fvecs(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads an ivecs file (same layout, i32 values).
pub fn read_ivecs(path: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let rows = read_fvecs(path)?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|x| x.to_bits()).collect())
        .collect())
}

/// Fraction of the true top-`k` found among the returned ids.
pub fn recall_at(k: usize, got: &[u64], truth: &[u32]) -> f64 {
    let truth: std::collections::HashSet<u64> =
        truth.iter().take(k).map(|x| u64::from(*x)).collect();
    got.iter().take(k).filter(|g| truth.contains(g)).count() as f64 / k as f64
}
