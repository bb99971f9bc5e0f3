//! The IVF-PQ indexes of sealed segments: loaded from their files when a segment is mapped
//! (at open, after a seal), or else queued on the background build scheduler
//! ([`crate::background::builds`]) under the collection's [`BuildOwner`], so a dropped
//! collection's queued builds are skipped. Compaction builds its new segment's index inline
//! ([`build_index`]) before the segment goes live. Until an index is ready the segment is
//! scanned exactly.
use std::sync::Arc;

use fs_err as fs;

use super::Collection;
use crate::background::{self, BuildOwner};
use crate::error::Result;
use crate::index::calibrate::MIN_SERVED;
use crate::index::ivf::{self, IvfPqIndex, IvfPqParams};
use crate::segment::sealed::SealedSegment;
use crate::types::{CollectionConfig, DEFAULT_PQ_BITS, IndexKind, MIN_INDEXED_ROWS};

/// Builds and opens the IVF-PQ index of `seg` under `config`, on the background pool.
pub(super) fn build_index(
    seg: &SealedSegment,
    config: &CollectionConfig,
) -> Result<Option<IvfPqIndex>> {
    let (dim, metric, rows) = (config.dim, config.metric, seg.rows());
    let params = IvfPqParams::for_data(
        rows as usize,
        dim,
        config.index.nlist.map(|n| n as usize),
        config.index.pq_m.map(|m| m as usize),
        config.index.pq_bits.unwrap_or(DEFAULT_PQ_BITS),
    );
    background::run(|| {
        ivf::build(seg.dir(), seg.vectors(), dim, metric, params)?;
        IvfPqIndex::open(seg.dir(), dim, metric, rows as usize)
    })
}

/// Loads a sealed segment's index file, or queues its build on the background scheduler
/// under `owner`. A damaged file is reported and rebuilt; until an index is ready the segment
/// is scanned exactly.
pub(super) fn load_or_build_index(
    seg: &Arc<SealedSegment>,
    config: &CollectionConfig,
    owner: &Arc<BuildOwner>,
) {
    if config.index.kind != IndexKind::IvfPq || seg.rows() < MIN_INDEXED_ROWS {
        return;
    }
    match IvfPqIndex::open(seg.dir(), config.dim, config.metric, seg.rows() as usize) {
        Ok(Some(idx)) => return seg.set_index(Arc::new(idx)),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(segment = seg.id, error = %e, "index file unusable; rebuilding it");
            let _ = fs::remove_file(seg.dir().join(ivf::FILE_NAME));
        }
    }
    // A weak reference: a segment gone by the time the build starts (compacted away, or its
    // collection dropped) is not built.
    let weak = Arc::downgrade(seg);
    let config = config.clone();
    let label = format!(
        "IVF-PQ index of segment {} of collection {}",
        seg.id, config.name
    );
    background::builds().submit(owner, label, move || {
        let Some(seg) = weak.upgrade() else { return };
        let started = std::time::Instant::now();
        let name = &config.name;
        match build_index(&seg, &config) {
            Ok(Some(idx)) => {
                tracing::info!(collection = %name, segment = seg.id, rows = seg.rows(), nlist = idx.nlist(), m = idx.m(), bits = idx.bits(), ms = started.elapsed().as_millis() as u64, "IVF-PQ index built");
                seg.set_index(Arc::new(idx));
            }
            Ok(None) => tracing::error!(collection = %name, segment = seg.id, "index file vanished after the build"),
            Err(e) => tracing::error!(collection = %name, segment = seg.id, error = %e, "index build failed; the segment stays on exact scan"),
        }
    });
}

/// (indexed, indexable) among `sealed`.
fn progress(sealed: &[Arc<SealedSegment>]) -> (usize, usize) {
    let indexable: Vec<_> = sealed
        .iter()
        .filter(|s| s.rows() >= MIN_INDEXED_ROWS)
        .collect();
    (
        indexable.iter().filter(|s| s.index().is_some()).count(),
        indexable.len(),
    )
}

impl Collection {
    /// (indexed, indexable) sealed segments: indexes are built in the background.
    pub fn index_progress(&self) -> (usize, usize) {
        if self.config.index.kind == IndexKind::Flat {
            return (0, 0);
        }
        progress(&self.snapshot().sealed)
    }

    /// The index state of `sealed`, human-readable (for [`Collection::stats`]), with the
    /// compaction or merge running in the background, if any.
    pub(super) fn index_state(&self, sealed: &[Arc<SealedSegment>]) -> String {
        let state = self.index_state_of(sealed);
        match self.compaction_running() {
            Some((segments, rows)) => format!(
                "{state}; compacting {segments} sealed segments ({rows} live rows) into one in the background"
            ),
            None => state,
        }
    }

    fn index_state_of(&self, sealed: &[Arc<SealedSegment>]) -> String {
        match self.config.index.kind {
            IndexKind::Flat => "flat (exact scan)".to_owned(),
            IndexKind::IvfPq => {
                let (built, indexable) = progress(sealed);
                let params = sealed
                    .iter()
                    .find_map(|s| s.index())
                    .map(|i| {
                        let curve: Vec<String> = [0.9, 0.95, 0.99]
                            .iter()
                            .map(|&t| format!("{t} at nprobe {}", i.nprobe_for(t)))
                            .collect();
                        let source = served_state(sealed);
                        format!(
                            " (nlist {} in the first indexed segment, pq_m {}, pq_bits {}; target recall@10 {}, {source})",
                            i.nlist(),
                            i.m(),
                            i.bits(),
                            curve.join(", ")
                        )
                    })
                    .unwrap_or_default();
                let state = if built == indexable {
                    "ready"
                } else {
                    "building"
                };
                format!(
                    "ivf_pq {state}: {built}/{indexable} sealed segments indexed{params}; smaller and in-memory segments are scanned exactly"
                )
            }
        }
    }
}

/// Where the indexed segments of `sealed` take their nprobe from: the curve of their served
/// queries (once each has [`MIN_SERVED`]), or the held-out rows' one, with the fewest served
/// queries measured in a segment.
fn served_state(sealed: &[Arc<SealedSegment>]) -> String {
    let indexes: Vec<&Arc<IvfPqIndex>> = sealed.iter().filter_map(|s| s.index()).collect();
    let fewest = indexes
        .iter()
        .map(|i| i.served().measured())
        .min()
        .unwrap_or(0);
    let served = indexes
        .iter()
        .filter(|i| i.served().curve().is_some())
        .count();
    let unfiltered = if served == indexes.len() {
        format!("served curves in every indexed segment, from at least {fewest} queries")
    } else {
        format!(
            "held-out curve in {} of {} indexed segments; fewest served queries measured {fewest} of {MIN_SERVED}",
            indexes.len() - served,
            indexes.len()
        )
    };
    let fewest_filtered = indexes
        .iter()
        .map(|i| i.served().measured_filtered())
        .min()
        .unwrap_or(0);
    let filtered = if fewest_filtered >= MIN_SERVED {
        format!(
            "filtered searches widen nprobe as measured on at least {fewest_filtered} served filtered queries"
        )
    } else {
        format!(
            "filtered searches widen nprobe to nprobe / √(allowed share) until {MIN_SERVED} filtered queries are measured (fewest {fewest_filtered})"
        )
    };
    format!("{unfiltered}; {filtered}")
}
