//! The recall audit of served queries. Now and then a search that leaves nprobe to the
//! calibration hands one of its queries to a background thread, which measures it on every
//! indexed segment the search read: the exact top-10 of the segment (a full scan), then the
//! recall@10 the index reaches at each nprobe of the calibration grid (with the default refine
//! factor and exact re-rank, as searches run). Each segment's [`Served`] record keeps the
//! results, and once it holds enough, `target_recall` is answered from the queries the
//! collection actually serves rather than from held-out rows (see [`crate::index::calibrate`]).
//! A filtered search's query is also measured with its filter, to choose how far filtered
//! searches widen nprobe (see `Collection`'s `measure_filtered`).
//!
//! The audit's cost is bounded as a share of one core: one query at a time, and after a
//! measurement that took `t`, none for `t × (1 / share − 1)` (at least [`MIN_GAP`]). A share of
//! 0 turns it off. Only searches start it, so an idle server does no audit work. The library
//! starts with it off, so that embedding applications and tests get repeatable nprobes unless
//! they [`set_share`]; `quiverd` sets [`DEFAULT_SHARE`] unless configured otherwise.
//!
//! [`Served`]: crate::index::calibrate::Served
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::distance::{TopK, distance};
use crate::index::calibrate::K;
use crate::segment::sealed::SealedSegment;
use crate::types::{DEFAULT_REFINE, Metric};

/// The share of one core `quiverd`'s audit uses unless configured otherwise.
pub const DEFAULT_SHARE: f64 = 0.05;
/// The largest share that can be configured.
pub const MAX_SHARE: f64 = 0.5;
/// The shortest pause between two audited queries.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// The share, in parts per million of one core (0 until [`set_share`]).
static SHARE_PPM: AtomicU64 = AtomicU64::new(0);
/// A query is being measured.
static BUSY: AtomicBool = AtomicBool::new(false);
/// Milliseconds since [`epoch`] before which no query is taken.
static NEXT_DUE_MS: AtomicU64 = AtomicU64::new(0);
/// Queries measured since the process started (for tests and metrics).
static AUDITED: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Sets the share of one core the audit may use (clamped to 0..=[`MAX_SHARE`]; 0: off).
pub fn set_share(share: f64) {
    let share = if share.is_finite() {
        share.clamp(0.0, MAX_SHARE)
    } else {
        0.0
    };
    SHARE_PPM.store((share * 1e6) as u64, Ordering::Relaxed);
}

/// The share of one core the audit may use.
pub fn share() -> f64 {
    SHARE_PPM.load(Ordering::Relaxed) as f64 / 1e6
}

/// Queries measured since the process started.
pub fn audited() -> u64 {
    AUDITED.load(Ordering::Relaxed)
}

/// Whether a query offered now would be taken (two atomic loads: cheap enough for every
/// search).
pub fn due() -> bool {
    SHARE_PPM.load(Ordering::Relaxed) > 0
        && !BUSY.load(Ordering::Relaxed)
        && now_ms() >= NEXT_DUE_MS.load(Ordering::Relaxed)
}

/// Clears [`BUSY`] and schedules the next audit when the measuring thread ends, even by a
/// panic.
struct Turn {
    started: Instant,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let spent = self.started.elapsed();
        let share = share().max(1e-6);
        let gap = spent.mul_f64((1.0 / share - 1.0).max(0.0)).max(MIN_GAP);
        NEXT_DUE_MS.store(now_ms() + gap.as_millis() as u64, Ordering::Relaxed);
        BUSY.store(false, Ordering::Release);
    }
}

/// Runs the work `make` returns (the measurement of one served query, see [`measure`]) in a
/// background thread, if an audit is [`due`] and none is running; otherwise does nothing, not
/// even call `make` (which may copy a search's allowed rows). The time the work takes sets the
/// pause before the next.
pub fn offer<W: FnOnce() + Send + 'static>(make: impl FnOnce() -> Option<W>) {
    if !due()
        || BUSY
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let turn = Turn {
        started: Instant::now(),
    };
    let Some(work) = make() else {
        // Nothing to measure: the turn ends here, and the pause is the shortest.
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("quiver-audit".into())
        .spawn(move || {
            let _turn = turn;
            work();
            AUDITED.fetch_add(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        // The closure, and with it the turn, was dropped: the audit is free again.
        tracing::debug!(error = %e, "recall audit thread not started");
    }
}

/// Measures `query` on `seg`'s index and records the recall at each nprobe of its grid;
/// returns what was recorded (`None`: no index, or no live row).
pub fn measure(seg: &SealedSegment, query: &[f32], metric: Metric) -> Option<Vec<f32>> {
    let idx = seg.index()?;
    let mut truth = [TopK::new(K)];
    seg.scan(metric, &[query.to_vec()], &mut truth);
    let [truth] = truth;
    let want: Vec<u32> = truth.into_sorted().iter().map(|c| c.key.1).collect();
    if want.is_empty() {
        return None;
    }
    let deleted = seg.tombstones();
    let grid = idx.served().grid();
    let mut recalls = Vec::with_capacity(grid.len());
    for &nprobe in grid {
        let mut top = TopK::new(K);
        for c in idx
            .search(query, nprobe, K * DEFAULT_REFINE, |r| deleted.contains(r))
            .into_sorted()
        {
            top.push(distance(metric, query, seg.vector(c.key)), c.key);
        }
        let recall = recall_of(top, &want);
        recalls.push(recall);
        if recall >= 1.0 {
            // Every true neighbour found; larger nprobes are counted as finding them too (more
            // lists could only lose one by pushing it out of the refine candidates), which
            // saves the longest probes of the audit.
            recalls.resize(grid.len(), 1.0);
            break;
        }
    }
    idx.served().record(recalls.clone(), seg.dir());
    Some(recalls)
}

/// The share of `want` (the exact top-k, not empty) that `top` holds.
pub(crate) fn recall_of<K: Ord + Copy>(top: TopK<K>, want: &[K]) -> f32 {
    let found = top
        .into_sorted()
        .iter()
        .filter(|c| want.contains(&c.key))
        .count();
    found as f32 / want.len().max(1) as f32
}
