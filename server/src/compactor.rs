//! The background compactor: every `interval_secs` it compacts each collection whose sealed
//! segments are worth it (see [`quiver_storage::collection::CompactionOptions`]), one at a
//! time, within the thread and disk budget of `[compaction]`. Every run is logged and counted:
//!
//! | metric | what |
//! |---|---|
//! | `quiver_compactions_total{collection}` | segment runs rewritten |
//! | `quiver_compaction_rows_reclaimed_total{collection}` | dead rows dropped |
//! | `quiver_compaction_bytes_reclaimed_total{collection}` | segment bytes freed |
//! | `quiver_compaction_io_bytes_total` | bytes read and written by compaction |
//! | `quiver_compaction_paced_milliseconds_total` | time compaction slept to stay within the disk budget |
//! | `quiver_compaction_seconds` | duration of each compaction |
//! | `quiver_compaction_running` | 1 while a compaction runs |
//! | `quiver_collection_dead_points{collection}` | dead rows waiting (with the other gauges) |
use std::sync::Arc;

use quiver_storage::collection::{CompactionOptions, CompactionReport};
use quiver_storage::{Collection, Engine};

use crate::config::CompactionConfig;

/// Compacts `c` until nothing is worth it, recording metrics; returns the reports.
pub fn compact(
    c: &Collection,
    opts: CompactionOptions,
) -> quiver_storage::Result<Vec<CompactionReport>> {
    let name = c.config().name.clone();
    metrics::gauge!("quiver_compaction_running").set(1.0);
    let result = c.compact(opts);
    metrics::gauge!("quiver_compaction_running").set(0.0);
    for r in result.iter().flatten() {
        metrics::counter!("quiver_compactions_total", "collection" => name.clone()).increment(1);
        metrics::counter!("quiver_compaction_rows_reclaimed_total", "collection" => name.clone())
            .increment(r.rows_before - r.rows_after);
        metrics::counter!("quiver_compaction_bytes_reclaimed_total", "collection" => name.clone())
            .increment(r.bytes_before.saturating_sub(r.bytes_after));
        metrics::counter!("quiver_compaction_io_bytes_total").increment(r.io_bytes);
        metrics::counter!("quiver_compaction_paced_milliseconds_total")
            .increment(r.paced.as_millis() as u64);
        metrics::histogram!("quiver_compaction_seconds").record(r.elapsed.as_secs_f64());
    }
    result
}

/// Starts the compactor (if enabled); abort the task to stop it. The work itself runs on a
/// blocking thread, one collection at a time.
pub fn spawn(engine: Arc<Engine>, cfg: CompactionConfig) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.enabled {
        tracing::info!("background compaction off");
        return None;
    }
    tracing::info!(
        every_secs = cfg.interval_secs,
        min_dead_fraction = cfg.min_dead_fraction,
        io_mb_per_sec = cfg.io_mb_per_sec,
        threads = quiver_storage::background::threads(),
        "background compaction on"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(cfg.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let e = Arc::clone(&engine);
            let ran = tokio::task::spawn_blocking(move || {
                for c in e.list() {
                    if let Err(err) = compact(&c, cfg.options(false)) {
                        tracing::error!(collection = %c.config().name, error = %err, "compaction failed; the old segments stay in use");
                    }
                }
            })
            .await;
            if let Err(e) = ran {
                tracing::error!(error = %e, "compactor task failed");
            }
        }
    }))
}
