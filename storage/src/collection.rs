//! A collection: WAL + one mutable segment (+ one being sealed) + sealed segments + the id
//! map and payloads in the metadata store.
//!
//! This file holds the collection's state, its opening and small accessors. The work is in
//! the submodules:
//! * `write`: the write path (validate → WAL → mutable segment → acknowledge), deletes by
//!   filter, payload updates and labels;
//! * `checkpoint`: sealing the mutable segment and committing the checkpoint;
//! * `read`: points by id, counts and scrolls;
//! * `search`: the search executor (snapshot → per-segment plan → merged top-k → hits);
//! * `planner`: per segment, an exact scan, a scan of the allowed rows or an index probe;
//! * `indexes`: the IVF-PQ indexes of sealed segments (loaded, or queued on the background
//!   build scheduler);
//! * `filtering`: the declared-field schema, field index builds, and the allowed rows of a
//!   filter in a snapshot;
//! * `compaction`: rewriting runs of segments that hold many dead rows.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::background::BuildOwner;
use crate::error::{Error, Result};
use crate::filter::Schema;
use crate::meta::MetaStore;
use crate::segment::SegmentId;
use crate::segment::mutable::MutableSegment;
use crate::segment::sealed::{SealedSegment, tombstone_file_name};
use crate::types::CollectionConfig;
use crate::wal::{FsyncPolicy, Lsn, Wal};

mod checkpoint;
mod compaction;
mod filtering;
mod hybrid;
mod indexes;
mod planner;
mod read;
mod search;
mod write;
pub(crate) use checkpoint::PendingSeal;
use compaction::Moved;
pub use compaction::{
    CompactionOptions, CompactionReport, DEFAULT_MERGE_FACTOR, DEFAULT_MERGE_MAX_ROWS,
    DEFAULT_MERGE_WHEN_IDLE,
};
use filtering::build_fields;
pub use hybrid::{
    HybridHit, HybridQuery, MAX_CANDIDATES, SparseSearch, TextSearch, Weights, default_candidates,
};
use indexes::load_or_build_index;
pub use write::{PayloadLimits, PayloadUpdate};

/// The catalog record of a collection (JSON in the metadata store).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectionRecord {
    /// Internal id; names the directory and prefixes metadata keys.
    pub uid: u64,
    /// Configuration.
    pub config: CollectionConfig,
    /// Every write up to here is in sealed segments and the metadata store.
    pub checkpoint_lsn: Lsn,
    /// Id of the mutable segment that follows the checkpoint.
    pub next_segment_id: SegmentId,
    /// Sealed segments, ascending id.
    pub segments: Vec<SegmentRecord>,
    /// The highest external sequence number (Raft log index) of a write included as of the
    /// checkpoint or a later catalog change; writes after it in the WAL carry their own.
    #[serde(default)]
    pub applied_seq: u64,
}

/// A sealed segment in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentRecord {
    /// Segment id.
    pub id: SegmentId,
    /// Rows.
    pub rows: u32,
    /// Checkpoint of the current tombstone file (`None`: the one written at seal).
    pub tombstones: Option<Lsn>,
}

/// Live statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionStats {
    /// Live points.
    pub points: u64,
    /// Sealed segments.
    pub sealed_segments: u32,
    /// Live points in memory (mutable + sealing).
    pub mutable_points: u64,
    /// Deleted or overwritten rows still held by sealed segments (compaction reclaims them).
    pub dead_points: u64,
    /// Segment files + WAL.
    pub bytes_on_disk: u64,
    /// WAL files.
    pub wal_bytes: u64,
    /// Index files of sealed segments (included in `bytes_on_disk`; memory-mapped).
    pub index_bytes: u64,
    /// Index state, human-readable.
    pub index_state: String,
    /// Last applied LSN.
    pub last_lsn: Lsn,
    /// Checkpoint LSN.
    pub checkpoint_lsn: Lsn,
    /// Heap bytes of the row maps that recent compactions keep published (for
    /// `compaction::MOVE_TTL`), so readers and scroll cursors can follow moved rows.
    pub move_map_bytes: u64,
    /// Heap bytes of the indexes' row-to-list maps (2 per row of an indexed segment, built by
    /// the first filtered search that scans the allowed rows of the nearest lists).
    pub list_map_bytes: u64,
}

/// The catalog record's value in the metadata store (see [`crate::meta::keys`]).
pub(crate) fn encode_record(r: &CollectionRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(r).map_err(|e| Error::Meta(format!("encode catalog record: {e}")))
}

type Shared<T> = Arc<RwLock<T>>;

#[derive(Debug)]
struct State {
    mutable: Shared<MutableSegment>,
    frozen: Option<Shared<MutableSegment>>,
    sealed: Vec<Arc<SealedSegment>>,
    /// Sealed segments whose tombstones changed since the last checkpoint.
    dirty: Vec<SegmentId>,
    record: CollectionRecord,
}

impl State {
    fn sealed(&self, id: SegmentId) -> Option<&Arc<SealedSegment>> {
        self.sealed
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .map(|i| &self.sealed[i])
    }

    fn mark_dirty(&mut self, id: SegmentId) {
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }
}

#[derive(Debug)]
struct Writer {
    wal: Wal,
    dropped: bool,
}

/// A point-in-time view of the segments, for reads.
struct Snapshot {
    mutable: Shared<MutableSegment>,
    frozen: Option<Shared<MutableSegment>>,
    sealed: Vec<Arc<SealedSegment>>,
}

impl Snapshot {
    fn has_sealed(&self, id: SegmentId) -> bool {
        self.sealed.binary_search_by_key(&id, |s| s.id).is_ok()
    }
}

/// One collection. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct Collection {
    uid: u64,
    config: CollectionConfig,
    dir: PathBuf,
    meta: Arc<dyn MetaStore>,
    writer: Mutex<Writer>,
    state: RwLock<State>,
    seal: Mutex<Option<PendingSeal>>,
    last_lsn: AtomicU64,
    /// The highest sequence number applied (see [`CollectionRecord::applied_seq`]).
    last_seq: AtomicU64,
    /// Declared payload fields (grows with `declare_fields`).
    schema: RwLock<Schema>,
    /// Where recent compactions moved rows: the id map in the metadata store and a reader's
    /// segment list can be on either side of a compaction for a moment.
    moves: RwLock<Vec<Arc<Moved>>>,
    /// Held by the one compaction of this collection that may run at a time.
    compacting: Mutex<()>,
    /// What that compaction is rewriting (segments, live rows), for the index state.
    compaction_running: RwLock<Option<(usize, u64)>>,
    /// Owns this collection's queued index builds: cancelled when it is dropped.
    builds: Arc<BuildOwner>,
    /// When the collection was opened, and the last write in milliseconds after that (see
    /// [`Collection::idle_for`]).
    opened: std::time::Instant,
    last_write_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Collection {
    /// Opens a collection from its catalog record: maps the sealed segments, removes leftovers
    /// of interrupted seals, and replays the WAL after the checkpoint.
    /// `fresh`: the directory is new (just created, or just imported) and has no WAL yet;
    /// otherwise a collection without a WAL file lost its log, which is DATA_LOSS, never an
    /// empty log.
    pub(crate) fn open(
        record: CollectionRecord,
        dir: PathBuf,
        meta: Arc<dyn MetaStore>,
        fsync: FsyncPolicy,
        fresh: bool,
    ) -> Result<Collection> {
        let wal_dir = dir.join("wal");
        if !fresh && (!wal_dir.is_dir() || crate::wal::list_files(&wal_dir)?.is_empty()) {
            return Err(Error::corrupt(
                &wal_dir,
                0,
                format!(
                    "collection {}: no WAL file where the catalog expects its log (checkpoint at LSN {}): acknowledged writes may be lost",
                    record.config.name, record.checkpoint_lsn
                ),
            ));
        }
        let builds = Arc::new(BuildOwner::default());
        let sealed = open_sealed(&dir, &record, &meta, &builds)?;
        let mut state = State {
            mutable: Arc::new(RwLock::new(MutableSegment::new(
                record.next_segment_id,
                record.config.dim,
                &record.config.schema,
            ))),
            frozen: None,
            sealed,
            dirty: Vec::new(),
            record: record.clone(),
        };
        let uid = record.uid;
        let mut last = record.checkpoint_lsn;
        let mut last_seq = record.applied_seq;
        let wal = Wal::open(
            &dir.join("wal"),
            fsync,
            record.checkpoint_lsn,
            |lsn, seq, rec| {
                last = lsn;
                last_seq = last_seq.max(seq);
                write::apply(&mut state, meta.as_ref(), uid, &[], rec).map(|_| ())
            },
        )?;
        tracing::info!(collection = %record.config.name, checkpoint = record.checkpoint_lsn, replayed = last - record.checkpoint_lsn, segments = state.sealed.len(), "collection opened");
        Ok(Collection {
            uid,
            config: record.config.clone(),
            dir,
            meta,
            writer: Mutex::new(Writer {
                wal,
                dropped: false,
            }),
            state: RwLock::new(state),
            seal: Mutex::new(None),
            last_lsn: AtomicU64::new(last),
            last_seq: AtomicU64::new(last_seq),
            schema: RwLock::new(record.config.schema.clone()),
            moves: RwLock::new(Vec::new()),
            compacting: Mutex::new(()),
            compaction_running: RwLock::new(None),
            opened: std::time::Instant::now(),
            last_write_ms: AtomicU64::new(0),
            builds,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    /// Sealed segments, with the one being sealed: what holds memory maps.
    pub fn segment_count(&self) -> usize {
        let st = read(&self.state);
        st.sealed.len() + usize::from(st.frozen.is_some())
    }

    /// The catalog record as of the last checkpoint or catalog change.
    pub(crate) fn record(&self) -> CollectionRecord {
        read(&self.state).record.clone()
    }

    /// The collection's internal id.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// The LSN of the last applied write: changes with every write, so caches of answers
    /// computed from this collection can tell they are stale.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn.load(Ordering::Acquire)
    }

    /// The highest external sequence number (Raft log index) applied to this collection: a
    /// replicated write at or below it is already in, so re-applying the log after a crash can
    /// skip it.
    pub fn applied_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// The directory holding the WAL and segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sealed segments as of now (for tests that look at their indexes).
    #[cfg(test)]
    pub(crate) fn sealed_segments(&self) -> Vec<Arc<SealedSegment>> {
        self.snapshot().sealed
    }

    /// The segments as of now, for one read.
    fn snapshot(&self) -> Snapshot {
        let st = read(&self.state);
        Snapshot {
            mutable: Arc::clone(&st.mutable),
            frozen: st.frozen.clone(),
            sealed: st.sealed.clone(),
        }
    }

    /// Live statistics.
    pub fn stats(&self) -> CollectionStats {
        let wal_bytes = lock(&self.writer).wal.bytes_on_disk();
        let snap = self.snapshot();
        let mutable_points: u64 = [Some(&snap.mutable), snap.frozen.as_ref()]
            .into_iter()
            .flatten()
            .map(|m| read(m).live_count() as u64)
            .sum();
        let checkpoint_lsn = read(&self.state).record.checkpoint_lsn;
        CollectionStats {
            points: self.count(),
            sealed_segments: snap.sealed.len() as u32,
            mutable_points,
            dead_points: snap
                .sealed
                .iter()
                .map(|s| u64::from(s.rows()) - s.live_count())
                .sum(),
            bytes_on_disk: wal_bytes + snap.sealed.iter().map(|s| s.bytes_on_disk()).sum::<u64>(),
            wal_bytes,
            index_bytes: snap
                .sealed
                .iter()
                .filter_map(|s| s.index().map(|i| i.bytes()))
                .sum(),
            index_state: self.index_state(&snap.sealed),
            last_lsn: self.last_lsn.load(Ordering::Acquire),
            checkpoint_lsn,
            move_map_bytes: read(&self.moves).iter().map(|m| m.heap_bytes()).sum(),
            list_map_bytes: snap
                .sealed
                .iter()
                .filter_map(|s| s.index().map(|i| i.list_map_bytes() as u64))
                .sum(),
        }
    }

    /// The seal lock: held, no checkpoint of this collection can start or commit.
    pub(crate) fn seal_lock(&self) -> MutexGuard<'_, Option<PendingSeal>> {
        lock(&self.seal)
    }

    /// The sealed segments as of now, with their tombstone checkpoints.
    pub(crate) fn segment_records(&self) -> Vec<SegmentRecord> {
        read(&self.state).record.segments.clone()
    }

    /// Marks the collection dropped: later writes fail with `CollectionNotFound`, and its
    /// index builds that have not started are skipped.
    pub(crate) fn mark_dropped(&self) {
        lock(&self.writer).dropped = true;
        self.builds.cancel();
    }
}

/// Maps the sealed segments of `record`, removes what the catalog does not reference, and
/// loads (or queues builds of) their indexes and field indexes.
fn open_sealed(
    dir: &Path,
    record: &CollectionRecord,
    meta: &Arc<dyn MetaStore>,
    builds: &Arc<BuildOwner>,
) -> Result<Vec<Arc<SealedSegment>>> {
    let seg_dir = dir.join("segments");
    fs::create_dir_all(&seg_dir)?;
    let dim = record.config.dim;
    let mut sealed = Vec::with_capacity(record.segments.len());
    for s in &record.segments {
        sealed.push(Arc::new(SealedSegment::open(
            &seg_dir,
            s.id,
            dim,
            s.tombstones,
        )?));
    }
    cleanup_segments_dir(&seg_dir, record)?;
    for s in &sealed {
        load_or_build_index(s, &record.config, builds);
        filtering::remove_stale_field_files(s);
        build_fields(s, &record.config.schema, meta, record.uid);
    }
    Ok(sealed)
}

/// Removes segment directories and tombstone files that the catalog does not reference
/// (left by a seal or checkpoint that crashed before its commit).
fn cleanup_segments_dir(seg_dir: &Path, record: &CollectionRecord) -> Result<()> {
    for entry in fs::read_dir(seg_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let listed = record.segments.iter().find(|s| s.id.to_string() == name);
        match listed {
            None => {
                tracing::warn!(dir = %entry.path().display(), "removing segment directory not in the catalog (interrupted seal)");
                fs::remove_dir_all(entry.path())?;
            }
            Some(s) => {
                let keep = tombstone_file_name(s.tombstones);
                for f in fs::read_dir(entry.path())? {
                    let f = f?;
                    let fname = f.file_name().to_string_lossy().into_owned();
                    if fname.starts_with("deleted-") && fname != keep {
                        fs::remove_file(f.path())?;
                    }
                }
            }
        }
    }
    Ok(())
}
