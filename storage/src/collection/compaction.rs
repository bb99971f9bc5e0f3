//! Compaction (vacuum): rewrites runs of consecutive sealed segments that hold many dead rows
//! (deleted or overwritten), or that are small, as one segment of their live rows, with its
//! index and field indexes built before it goes live. The victims' memory and disk are then
//! released, and searches touch fewer rows and segments.
//!
//! Build, without any collection lock: the victims' tombstones are copied (time `D0`), their
//! live rows written as segment `last victim id + 1` (ids stay ordered and unique, see
//! [`SEGMENT_ID_STRIDE`](crate::segment::SEGMENT_ID_STRIDE)), and the index built in the
//! background pool, with disk traffic paced to the configured budget.
//!
//! Commit, under the seal lock (no checkpoint, field declaration or export meanwhile), in
//! three steps:
//! 1. The move is published (old row ↔ new row), so writers and readers that find either
//!    location in the id map reach the row wherever it lives right now.
//! 2. One synced metadata batch points the id map at the new rows that are still live and
//!    replaces the victims with the new segment in the catalog record. Moved rows that died
//!    since `D0` are written as the new segment's tombstone file first: their ids may already
//!    map to newer rows, and replaying the WAL after a crash must not bring them back.
//! 3. Under the writer lock, every row now dead in a victim is tombstoned in the new segment
//!    and the segment list swapped. Readers holding the old list keep their memory maps.
//!
//! The result is equivalent to the state before for every read and for WAL replay: a crash
//! before step 2 keeps the old segments (the new directory is removed at the next open),
//! after it the new one.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_err as fs;
use roaring::RoaringBitmap;

use super::filtering::{index_fields, save_fields};
use super::indexes::build_index;
use super::{Collection, SegmentRecord, encode_record, lock, read, write};
use crate::background::{self, Pacer};
use crate::error::Result;
use crate::meta::keys::{catalog_key, encode_location, point_key};
use crate::meta::{MetaOp, Space};
use crate::segment::sealed::{
    SealedSegment, tombstone_file_name, write_segment_paced, write_tombstones,
};
use crate::segment::{RowKey, SegmentId};
use crate::types::{IndexKind, MIN_INDEXED_ROWS};

/// How long a move stays published after its commit. A reader's segment list lives for one
/// request, far less than this; a scroll cursor taken before a compaction resumes across it
/// for this long (see [`resume_cursor`]).
pub(crate) const MOVE_TTL: Duration = Duration::from_secs(600);

/// Rows a tiered merge grows a segment to, at most, unless configured otherwise.
pub const DEFAULT_MERGE_MAX_ROWS: u64 = 4_000_000;
/// Segments of one tier merged at once, unless configured otherwise.
pub const DEFAULT_MERGE_FACTOR: u32 = 4;

/// What counts as worth compacting, and the disk budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionOptions {
    /// A segment whose dead rows reach this fraction of its rows is rewritten.
    pub min_dead_fraction: f64,
    /// Disk traffic (bytes read and written) per second; 0 = unlimited.
    pub io_bytes_per_sec: u64,
    /// Rewrite every segment with a dead row, whatever the fraction.
    pub force: bool,
    /// Tiered merging: the most live rows a merged segment may hold (0 or at most the
    /// collection's `segment_max_rows`: no tiered merging). See [`merge_run`].
    pub merge_max_rows: u64,
    /// Tiered merging: how many segments of one tier are merged into one (at least 2).
    pub merge_factor: u32,
    /// Once the collection has taken no write for this long, the segments the tiers leave
    /// open (under half the target) are merged together regardless of tier, up to the
    /// target: a collection that stops growing ends with as few indexes as its size allows
    /// (1M rows: one segment, not 400k + 400k + 100k + 100k). `None`: never.
    pub merge_when_idle: Option<Duration>,
}

/// An idle consolidation adds at least 1/this of its largest segment's rows to it.
const IDLE_MIN_GROWTH: u64 = 8;

/// How long a collection goes without writes before its open segments are consolidated,
/// unless configured otherwise.
pub const DEFAULT_MERGE_WHEN_IDLE: Duration = Duration::from_secs(30);

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            min_dead_fraction: 0.2,
            io_bytes_per_sec: 0,
            force: false,
            merge_max_rows: DEFAULT_MERGE_MAX_ROWS,
            merge_factor: DEFAULT_MERGE_FACTOR,
            merge_when_idle: Some(DEFAULT_MERGE_WHEN_IDLE),
        }
    }
}

/// One compaction's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionReport {
    /// The segments replaced.
    pub victims: Vec<SegmentId>,
    /// The segment written (`None`: every row was dead, nothing to write).
    pub new_segment: Option<SegmentId>,
    /// Rows (live and dead) of the victims.
    pub rows_before: u64,
    /// Rows written.
    pub rows_after: u64,
    /// Bytes on disk of the victims (vectors, ids, index).
    pub bytes_before: u64,
    /// Bytes on disk of the new segment.
    pub bytes_after: u64,
    /// Bytes read and written, as paced.
    pub io_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Time asleep to stay within the disk budget.
    pub paced: Duration,
}

/// Where one compaction moved rows.
#[derive(Debug)]
pub(crate) struct Moved {
    new_id: SegmentId,
    /// New row → its old location.
    origin: Vec<RowKey>,
    /// Victim → (old row → new row; `u32::MAX` for rows that were dead).
    forward: HashMap<SegmentId, Vec<u32>>,
    published: Instant,
}

const GONE: u32 = u32::MAX;

impl Moved {
    /// Heap bytes of the two maps.
    pub(crate) fn heap_bytes(&self) -> u64 {
        let forward: usize = self
            .forward
            .values()
            .map(|v| v.capacity() * size_of::<u32>())
            .sum();
        (self.origin.capacity() * size_of::<RowKey>() + forward) as u64
    }
}

/// The current location of the row the id map says is at (`seg`, `row`), given which sealed
/// segments the caller sees (`has`): the same place, or across a recent compaction (in either
/// direction). `None`: the row is not in any segment the caller sees.
pub(crate) fn translate(
    moves: &[Arc<Moved>],
    has: impl Fn(SegmentId) -> bool,
    seg: SegmentId,
    row: u32,
) -> Option<RowKey> {
    if has(seg) {
        return Some((seg, row));
    }
    for m in moves {
        if let Some(map) = m.forward.get(&seg)
            && has(m.new_id)
        {
            let r = *map.get(row as usize)?;
            return (r != GONE).then_some((m.new_id, r));
        }
        if m.new_id == seg {
            let (old, r) = *m.origin.get(row as usize)?;
            if has(old) {
                return Some((old, r));
            }
        }
    }
    None
}

/// Where a scroll cursor resumes when its segment has been compacted away since it was
/// issued: at the first moved row at or after it, following chains of compactions. `visible`
/// says which segments (sealed, frozen, mutable) the reader sees. A cursor whose segment is
/// neither visible nor inside a recent compaction's span (a forged cursor, or one older than
/// [`MOVE_TTL`] or a restart) is refused: resuming from the next segment could return rows
/// twice.
pub(crate) fn resume_cursor(
    moves: &[Arc<Moved>],
    visible: impl Fn(SegmentId) -> bool,
    cursor: RowKey,
) -> Result<RowKey> {
    let (mut seg, mut row) = cursor;
    // A compaction's output holds its victims' rows in (segment, row) order, and its id is
    // past every victim: any position inside [first victim, output) maps to the count of
    // moved rows before it. Each step goes to a larger id, so this ends.
    for _ in 0..=moves.len() {
        if visible(seg) {
            return Ok((seg, row));
        }
        let covering = moves.iter().find(|m| {
            m.forward.contains_key(&seg)
                || m.forward
                    .keys()
                    .min()
                    .is_some_and(|f| *f <= seg && seg < m.new_id)
        });
        if let Some(m) = covering {
            let at = m.origin.partition_point(|o| *o < (seg, row));
            (seg, row) = (m.new_id, at as u32);
            continue;
        }
        if moves.iter().any(|m| m.new_id == seg && m.origin.is_empty()) {
            // A compaction of only dead rows wrote nothing: the scan goes on after it.
            return Ok((seg, 0));
        }
        break;
    }
    Err(crate::error::Error::invalid(
        "cursor",
        format!(
            "stale scroll cursor: segment {} of it no longer exists (compacted more than {} s ago, or before a restart); start the scroll again",
            cursor.0,
            MOVE_TTL.as_secs()
        ),
    ))
}

/// Picks the first run of consecutive segments worth rewriting: a vacuum ([`vacuum_run`])
/// first, else a tiered merge ([`merge_run`]), else, when the collection is `idle`, a
/// consolidation of what the tiers leave (the same, ignoring tiers).
fn plan(
    sealed: &[Arc<SealedSegment>],
    next_id: SegmentId,
    max_rows: u64,
    opts: CompactionOptions,
    idle: bool,
) -> Option<std::ops::Range<usize>> {
    let live: Vec<u64> = sealed.iter().map(|s| s.live_count()).collect();
    let ids: Vec<SegmentId> = sealed.iter().map(|s| s.id).collect();
    // A run's output takes the id after its last victim: that id must be free.
    let id_free = |last: usize| ids[last] + 1 < ids.get(last + 1).copied().unwrap_or(next_id);
    vacuum_run(sealed, &live, max_rows, opts, &id_free)
        .or_else(|| merge_run(&live, max_rows, opts, &id_free, false))
        .or_else(|| idle.then(|| merge_run(&live, max_rows, opts, &id_free, true))?)
}

/// A run that holds a segment with many dead rows, or at least two small ones, and whose
/// live rows fit in one freshly sealed segment (`max_rows`). Runs with no free id after them
/// (data written before ids had gaps) are skipped.
fn vacuum_run(
    sealed: &[Arc<SealedSegment>],
    live: &[u64],
    max_rows: u64,
    opts: CompactionOptions,
    id_free: &dyn Fn(usize) -> bool,
) -> Option<std::ops::Range<usize>> {
    let heavy = |i: usize| {
        let rows = u64::from(sealed[i].rows());
        let dead = rows - live[i];
        dead > 0
            && (live[i] == 0 || opts.force || dead as f64 >= opts.min_dead_fraction * rows as f64)
    };
    let small = |i: usize| live[i] * 2 < max_rows;
    for i in 0..sealed.len() {
        if !heavy(i) && !small(i) {
            continue;
        }
        let (mut j, mut total) = (i, live[i]);
        while j + 1 < sealed.len()
            && (heavy(j + 1) || small(j + 1))
            && total + live[j + 1] <= max_rows
        {
            j += 1;
            total += live[j];
        }
        if !(i..=j).any(heavy) && j == i {
            continue;
        }
        if total > 0 && !id_free(j) {
            continue;
        }
        return Some(i..j + 1);
    }
    None
}

/// Tiered merging, so that a query's fixed cost per segment (its coarse quantizer, its
/// calibration) grows with the number of tiers, not with the number of rows: a segment of
/// `live` rows is in tier `t` when `live < max_rows · factor^(t+1)` (freshly sealed segments
/// are tier 0). A run of consecutive segments of one tier is merged into one when it holds
/// `factor` of them, or at least two that together reach half the merge target, and fits
/// the target. A segment holding half the target or more is final. Each row is rewritten
/// about `log_factor(merge_max_rows / max_rows)` times over its life (3 with the defaults:
/// 100k → 400k → 1.6M → 3.2M rows).
///
/// With `idle` (writes stopped for [`CompactionOptions::merge_when_idle`]), tiers are
/// ignored: the first run of two or more open segments (under half the target) that fits the
/// target is merged, so what the tiers leave is consolidated. That converges too: the merged
/// segment is final (half the target or more), or open with no open neighbour left.
fn merge_run(
    live: &[u64],
    max_rows: u64,
    opts: CompactionOptions,
    id_free: &dyn Fn(usize) -> bool,
    idle: bool,
) -> Option<std::ops::Range<usize>> {
    let target = opts.merge_max_rows;
    let factor = u64::from(opts.merge_factor.max(2));
    if target <= max_rows {
        return None;
    }
    let tier = |rows: u64| {
        let (mut t, mut cap) = (0u32, max_rows.saturating_mul(factor));
        while rows >= cap && cap < u64::MAX {
            t += 1;
            cap = cap.saturating_mul(factor);
        }
        t
    };
    let open = |i: usize| live[i] > 0 && live[i] * 2 < target;
    for i in 0..live.len() {
        if !open(i) {
            continue;
        }
        let t = tier(live[i]);
        let (mut j, mut total) = (i, live[i]);
        while j + 1 < live.len()
            && (idle || ((j + 1 - i) as u64) < factor)
            && open(j + 1)
            && (idle || tier(live[j + 1]) == t)
            && total + live[j + 1] <= target
        {
            j += 1;
            total += live[j];
        }
        let count = (j + 1 - i) as u64;
        // Idle, a run is worth rewriting only if its largest member grows by an eighth or
        // more: a trickle of small segments beside a large one waits until enough gathers,
        // so each row is rewritten a bounded number of times however often writes pause.
        let largest = live[i..=j].iter().copied().max().unwrap_or(0);
        let worth = !idle || (total - largest) * IDLE_MIN_GROWTH >= largest;
        if count >= 2 && worth && (idle || count >= factor || total * 2 >= target) && id_free(j) {
            return Some(i..j + 1);
        }
    }
    None
}

/// Shows a compaction in the collection's index state while it runs.
struct Running<'a>(&'a Collection);

impl<'a> Running<'a> {
    fn start(c: &'a Collection, segments: usize, rows: u64) -> Running<'a> {
        *write(&c.compaction_running) = Some((segments, rows));
        Running(c)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *write(&self.0.compaction_running) = None;
    }
}

impl Collection {
    /// The compaction running now: (segments it rewrites, their live rows).
    pub fn compaction_running(&self) -> Option<(usize, u64)> {
        *read(&self.compaction_running)
    }

    /// Runs one compaction if any run of segments is worth it (see [`CompactionOptions`]);
    /// `None` when there is nothing to do, or another compaction or a retried checkpoint of
    /// this collection is in progress. Runs on the background pool's (lower-priority) threads.
    pub fn compact_once(&self, opts: CompactionOptions) -> Result<Option<CompactionReport>> {
        background::run(|| self.compact_once_here(opts))
    }

    fn compact_once_here(&self, opts: CompactionOptions) -> Result<Option<CompactionReport>> {
        let Ok(_one) = self.compacting.try_lock() else {
            return Ok(None);
        };
        let started = Instant::now();
        let snap = self.snapshot();
        let next_id = read(&snap.mutable).id;
        let idle = opts
            .merge_when_idle
            .is_some_and(|quiet| self.idle_for() >= quiet);
        let Some(range) = plan(
            &snap.sealed,
            next_id,
            u64::from(self.config.segment_max_rows),
            opts,
            idle,
        ) else {
            return Ok(None);
        };
        let victims: Vec<Arc<SealedSegment>> = snap.sealed[range].to_vec();
        drop(snap);
        let live: u64 = victims.iter().map(|v| v.live_count()).sum();
        let _shown = Running::start(self, victims.len(), live);
        let new_id = victims.last().expect("invariant: a plan is not empty").id + 1;
        let mut pacer = Pacer::new(opts.io_bytes_per_sec);
        let (new_seg, moved, rows_after) = self.build_compacted(&victims, new_id, &mut pacer)?;
        if !self.commit_compacted(&victims, new_seg.as_ref(), &moved)? {
            return Ok(None);
        }
        for v in &victims {
            let _ = fs::remove_dir_all(v.dir());
        }
        let report = CompactionReport {
            victims: victims.iter().map(|v| v.id).collect(),
            new_segment: new_seg.as_ref().map(|s| s.id),
            rows_before: victims.iter().map(|v| u64::from(v.rows())).sum(),
            rows_after,
            bytes_before: victims.iter().map(|v| v.bytes_on_disk()).sum(),
            bytes_after: new_seg.as_ref().map_or(0, |s| s.bytes_on_disk()),
            io_bytes: pacer.bytes(),
            elapsed: started.elapsed(),
            paced: pacer.slept(),
        };
        tracing::info!(collection = %self.config.name, victims = ?report.victims, segment = ?report.new_segment, rows_before = report.rows_before, rows_after = report.rows_after, bytes_before = report.bytes_before, bytes_after = report.bytes_after, ms = report.elapsed.as_millis() as u64, paced_ms = report.paced.as_millis() as u64, "segments compacted");
        Ok(Some(report))
    }

    /// The build: the victims' live rows as of now, in segment and row order, written as
    /// segment `new_id` (`None` when every row was dead) with its indexes; the move it makes,
    /// and the rows written.
    fn build_compacted(
        &self,
        victims: &[Arc<SealedSegment>],
        new_id: SegmentId,
        pacer: &mut Pacer,
    ) -> Result<(Option<Arc<SealedSegment>>, Arc<Moved>, u64)> {
        let dim = self.config.dim;
        let seg_dir = self.dir.join("segments");
        // The live rows' vectors as runs of the victims' maps: nothing is copied into memory,
        // whatever the size of the merge.
        let mut vectors: Vec<&[f32]> = Vec::new();
        let mut ids = Vec::new();
        let mut origin = Vec::new();
        let mut forward = HashMap::new();
        for v in victims {
            let dead = v.tombstones();
            let mut map = vec![GONE; v.rows() as usize];
            let all = v.vectors();
            let mut run: Option<u32> = None;
            for row in 0..=v.rows() {
                let live = row < v.rows() && !dead.contains(row);
                match (live, run) {
                    (true, None) => run = Some(row),
                    (false, Some(start)) => {
                        vectors.push(&all[start as usize * dim..row as usize * dim]);
                        run = None;
                    }
                    _ => {}
                }
                if !live {
                    continue;
                }
                map[row as usize] = origin.len() as u32;
                origin.push((v.id, row));
                ids.push(v.id(row));
                pacer.pace(dim * 4);
            }
            forward.insert(v.id, map);
        }
        let new_seg = if ids.is_empty() {
            None
        } else {
            write_segment_paced(
                &seg_dir,
                new_id,
                dim,
                &vectors,
                &ids,
                &RoaringBitmap::new(),
                &mut |n| pacer.pace(n),
            )?;
            let seg = Arc::new(SealedSegment::open(&seg_dir, new_id, dim, None)?);
            self.build_indexes(&seg)?;
            Some(seg)
        };
        let moved = Arc::new(Moved {
            new_id,
            origin,
            forward,
            published: Instant::now(),
        });
        Ok((new_seg, moved, ids.len() as u64))
    }

    /// The commit, under the seal lock (see the module docs). `false`: abandoned, the new
    /// segment removed, because a checkpoint is being retried, the collection was dropped or
    /// the victims changed meanwhile.
    fn commit_compacted(
        &self,
        victims: &[Arc<SealedSegment>],
        new_seg: Option<&Arc<SealedSegment>>,
        moved: &Arc<Moved>,
    ) -> Result<bool> {
        let new_id = moved.new_id;
        let seg_dir = self.dir.join("segments");
        let seal = lock(&self.seal);
        let abandon = |why: &str| -> Result<bool> {
            tracing::info!(collection = %self.config.name, segment = new_id, why, "compaction abandoned");
            let _ = fs::remove_dir_all(seg_dir.join(new_id.to_string()));
            Ok(false)
        };
        if seal.is_some() {
            return abandon("a checkpoint is being retried");
        }
        if lock(&self.writer).dropped {
            return abandon("the collection was dropped");
        }
        let (mut record, still_there) = {
            let st = read(&self.state);
            let there = victims
                .iter()
                .all(|v| st.sealed(v.id).is_some_and(|s| Arc::ptr_eq(s, v)));
            (st.record.clone(), there)
        };
        if !still_there || record.segments.iter().any(|s| s.id == new_id) {
            return abandon("the segments changed");
        }
        self.publish_move(moved);
        let result = self.commit_move(victims, new_seg, moved, &mut record);
        if let Err(e) = result {
            write(&self.moves).retain(|m| !Arc::ptr_eq(m, moved));
            let _ = fs::remove_dir_all(seg_dir.join(new_id.to_string()));
            return Err(e);
        }
        drop(seal);
        Ok(true)
    }

    /// Compacts until nothing is worth it; returns every compaction done.
    pub fn compact(&self, opts: CompactionOptions) -> Result<Vec<CompactionReport>> {
        // Row maps past their time serve no reader or cursor (see [`MOVE_TTL`]): freed here
        // rather than only when the next compaction publishes one.
        write(&self.moves).retain(|m| m.published.elapsed() < MOVE_TTL);
        let mut out = Vec::new();
        // Each round removes at least one segment or dead row; the bound only guards
        // against a concurrent writer that keeps creating work.
        let rounds = read(&self.state).sealed.len() * 2;
        for _ in 0..=rounds {
            match self.compact_once(opts)? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }

    /// The IVF-PQ index and field indexes of a compacted segment, built before it goes live
    /// so searches never fall back to an exact scan of it.
    fn build_indexes(&self, seg: &Arc<SealedSegment>) -> Result<()> {
        let cfg = &self.config;
        if cfg.index.kind == IndexKind::IvfPq && seg.rows() >= MIN_INDEXED_ROWS {
            // Built here, on the background pool this compaction already runs on, not through
            // the build scheduler: the segment must not go live without its index.
            if let Some(idx) = build_index(seg, cfg)? {
                seg.set_index(Arc::new(idx));
            }
        }
        let schema = self.schema();
        if !schema.is_empty() {
            let f = index_fields(seg, &schema, self.meta.as_ref(), self.uid)?;
            save_fields(seg, &f);
            seg.set_fields(Arc::new(f));
        }
        Ok(())
    }

    fn publish_move(&self, moved: &Arc<Moved>) {
        let mut moves = write(&self.moves);
        moves.retain(|m| m.published.elapsed() < MOVE_TTL);
        moves.push(Arc::clone(moved));
    }

    /// Steps 2 and 3 of the commit (see the module docs); the seal lock is held.
    fn commit_move(
        &self,
        victims: &[Arc<SealedSegment>],
        new_seg: Option<&Arc<SealedSegment>>,
        moved: &Moved,
        record: &mut super::CollectionRecord,
    ) -> Result<()> {
        let new_id = moved.new_id;
        // Moved rows dead by now; the id-map entries of the others are made as the batch is
        // (one row's at a time: at millions of rows, a list of them would hold ~100 B each).
        let dead: Vec<RoaringBitmap> = victims.iter().map(|v| v.tombstones()).collect();
        let mut dead_now = RoaringBitmap::new();
        for (v, dead) in victims.iter().zip(&dead) {
            for (old, &new) in moved.forward[&v.id].iter().enumerate() {
                if new != GONE && dead.contains(old as u32) {
                    dead_now.insert(new);
                }
            }
        }
        let tombstones = if dead_now.is_empty() {
            None
        } else {
            let lsn = record.checkpoint_lsn;
            let dir = self.dir.join("segments").join(new_id.to_string());
            write_tombstones(&dir, &tombstone_file_name(Some(lsn)), &dead_now)?;
            Some(lsn)
        };
        let first = victims[0].id;
        let at = record
            .segments
            .iter()
            .position(|s| s.id == first)
            .expect("invariant: victims checked under the seal lock");
        record
            .segments
            .retain(|s| !victims.iter().any(|v| v.id == s.id));
        if let Some(s) = new_seg {
            record.segments.insert(
                at,
                SegmentRecord {
                    id: s.id,
                    rows: s.rows(),
                    tombstones,
                },
            );
        }
        let catalog = MetaOp::Put(
            Space::Catalog,
            catalog_key(&self.config.name),
            encode_record(record)?,
        );
        let ids = victims.iter().zip(&dead).flat_map(|(v, dead)| {
            moved.forward[&v.id]
                .iter()
                .enumerate()
                .filter(move |&(old, &new)| new != GONE && !dead.contains(old as u32))
                .map(move |(old, &new)| {
                    MetaOp::Put(
                        Space::Ids,
                        point_key(self.uid, &v.id(old as u32)),
                        encode_location(new_id, new),
                    )
                })
        });
        self.meta
            .write_each(&mut ids.chain(std::iter::once(catalog)), true)?;
        self.swap_compacted(victims, new_seg, moved, &dead_now, record);
        Ok(())
    }

    /// Step 3 of the commit: under the writer lock, the victims replaced by the new segment
    /// in the segment list, with the rows that died since `dead_now` was taken tombstoned in it.
    fn swap_compacted(
        &self,
        victims: &[Arc<SealedSegment>],
        new_seg: Option<&Arc<SealedSegment>>,
        moved: &Moved,
        dead_now: &RoaringBitmap,
        record: &super::CollectionRecord,
    ) {
        let _w = lock(&self.writer);
        let mut st = write(&self.state);
        let mut transferred = RoaringBitmap::new();
        for v in victims {
            for old in v.tombstones().iter() {
                match moved.forward[&v.id].get(old as usize) {
                    Some(&new) if new != GONE => {
                        transferred.insert(new);
                    }
                    _ => {}
                }
            }
        }
        st.sealed.retain(|s| !victims.iter().any(|v| v.id == s.id));
        st.dirty.retain(|id| !victims.iter().any(|v| v.id == *id));
        if let Some(s) = new_seg {
            for r in &transferred {
                s.delete(r);
            }
            let pos = st.sealed.partition_point(|x| x.id < s.id);
            st.sealed.insert(pos, Arc::clone(s));
            if transferred != *dead_now {
                st.mark_dirty(s.id);
            }
        }
        st.record = record.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved() -> Vec<Arc<Moved>> {
        // Segments 10 (rows 0..3, row 1 dead) and 20 (rows 0..2) merged into 21.
        vec![Arc::new(Moved {
            new_id: 21,
            origin: vec![(10, 0), (10, 2), (20, 0), (20, 1)],
            forward: HashMap::from([(10, vec![0, GONE, 1]), (20, vec![2, 3])]),
            published: Instant::now(),
        })]
    }

    #[test]
    fn translate_follows_a_move_both_ways() {
        let m = moved();
        // A reader that sees the new segment, given old locations.
        let after = |s: SegmentId| s == 21;
        assert_eq!(translate(&m, after, 10, 2), Some((21, 1)));
        assert_eq!(translate(&m, after, 20, 1), Some((21, 3)));
        assert_eq!(translate(&m, after, 10, 1), None);
        assert_eq!(translate(&m, after, 21, 0), Some((21, 0)));
        // A reader that still sees the victims, given new locations.
        let before = |s: SegmentId| s == 10 || s == 20;
        assert_eq!(translate(&m, before, 21, 2), Some((20, 0)));
        assert_eq!(translate(&m, before, 10, 1), Some((10, 1)));
        // Unknown segments and rows out of range.
        assert_eq!(translate(&m, after, 7, 0), None);
        assert_eq!(translate(&m, before, 21, 99), None);
    }

    #[test]
    fn a_scroll_cursor_resumes_across_compactions() {
        let mut m = moved();
        let after = |s: SegmentId| s == 21 || s == 30;
        // The first moved row at or after the cursor: row 1 of segment 10 died, row 2 is next.
        assert_eq!(resume_cursor(&m, after, (10, 1)).unwrap(), (21, 1));
        assert_eq!(resume_cursor(&m, after, (20, 0)).unwrap(), (21, 2));
        // Past a victim's last row: the next victim's first.
        assert_eq!(resume_cursor(&m, after, (10, 3)).unwrap(), (21, 2));
        assert_eq!(resume_cursor(&m, after, (20, 2)).unwrap(), (21, 4));
        // A visible segment is left alone.
        assert_eq!(resume_cursor(&m, after, (30, 5)).unwrap(), (30, 5));
        // A chain: 21 and 30 merged into 31, row 0 of 21 dead by then.
        m.push(Arc::new(Moved {
            new_id: 31,
            origin: vec![(21, 1), (21, 2), (21, 3), (30, 0)],
            forward: HashMap::from([(21, vec![GONE, 0, 1, 2]), (30, vec![3])]),
            published: Instant::now(),
        }));
        let last = |s: SegmentId| s == 31;
        assert_eq!(resume_cursor(&m, last, (10, 0)).unwrap(), (31, 0));
        assert_eq!(resume_cursor(&m, last, (20, 1)).unwrap(), (31, 2));
        // A compaction of only dead rows wrote nothing: the scan goes on after it.
        let empty = vec![Arc::new(Moved {
            new_id: 11,
            origin: vec![],
            forward: HashMap::from([(10, vec![GONE, GONE])]),
            published: Instant::now(),
        })];
        assert_eq!(
            resume_cursor(&empty, |s| s == 20, (10, 1)).unwrap(),
            (11, 0)
        );
        // ... and a later compaction around that empty one: 5 and 20 merged into 21.
        let mut chain = empty.clone();
        chain.push(Arc::new(Moved {
            new_id: 21,
            origin: vec![(5, 0), (5, 1), (20, 0)],
            forward: HashMap::from([(5, vec![0, 1]), (20, vec![2])]),
            published: Instant::now(),
        }));
        let only21 = |s: SegmentId| s == 21;
        assert_eq!(resume_cursor(&chain, only21, (10, 1)).unwrap(), (21, 2));
        assert_eq!(resume_cursor(&chain, only21, (11, 0)).unwrap(), (21, 2));
        // Forged or expired (outside every recent compaction): refused, naming the field.
        let e = resume_cursor(&m, last, (99, 0)).unwrap_err().to_string();
        assert!(
            e.starts_with("cursor: stale scroll cursor: segment 99"),
            "{e}"
        );
    }

    fn merges(live: &[u64], seal: u64, target: u64) -> Option<std::ops::Range<usize>> {
        let opts = CompactionOptions {
            merge_max_rows: target,
            merge_factor: 4,
            ..Default::default()
        };
        merge_run(live, seal, opts, &|_| true, false)
    }

    /// Replays the policy as the compactor would: merge, replace, repeat until settled.
    fn settle(mut live: Vec<u64>, seal: u64, target: u64) -> (Vec<u64>, u64) {
        let mut rewritten = 0;
        while let Some(r) = merges(&live, seal, target) {
            let total: u64 = live[r.clone()].iter().sum();
            rewritten += total;
            live.splice(r, [total]);
        }
        (live, rewritten)
    }

    #[test]
    fn tiered_merging_takes_a_tier_at_a_time() {
        let seal = 100;
        // Three fresh segments wait for a fourth.
        assert_eq!(merges(&[100, 100, 100], seal, 4000), None);
        assert_eq!(merges(&[100, 100, 100, 100], seal, 4000), Some(0..4));
        // A larger tier is not mixed with a smaller one.
        assert_eq!(merges(&[400, 100, 100, 100, 100], seal, 4000), Some(1..5));
        assert_eq!(merges(&[400, 400, 100, 100, 100], seal, 4000), None);
        // Two that reach half the target merge without waiting for a full tier.
        assert_eq!(merges(&[1600, 1600], seal, 4000), Some(0..2));
        // A segment of half the target or more is final; empty ones are the vacuum's.
        assert_eq!(merges(&[2000, 1600, 1600], seal, 4000), Some(1..3));
        assert_eq!(merges(&[2000, 2000, 0, 0], seal, 4000), None);
        // Off, or a target no larger than a sealed segment.
        assert_eq!(merges(&[100; 8], seal, 0), None);
        assert_eq!(merges(&[100; 8], seal, 100), None);
    }

    #[test]
    fn an_idle_collection_consolidates_what_the_tiers_leave() {
        let opts = CompactionOptions {
            merge_max_rows: 4_000_000,
            merge_factor: 4,
            ..Default::default()
        };
        let idle = |live: &[u64]| merge_run(live, 100_000, opts, &|_| true, true);
        // 1M rows as the tiers leave them: one segment when idle, untouched by the tiers.
        let tiers = [400_000, 400_000, 100_000, 100_000];
        assert_eq!(merges(&tiers, 100_000, 4_000_000), None);
        assert_eq!(idle(&tiers), Some(0..4));
        // Final segments (half the target or more) stay; the run stops at the target.
        assert_eq!(idle(&[2_000_000, 1_600_000, 400_000, 100_000]), Some(1..4));
        assert_eq!(idle(&[1_900_000, 1_900_000, 400_000]), Some(0..2));
        assert_eq!(
            idle(&[2_000_000, 100_000]),
            None,
            "one open segment: nothing to join"
        );
        assert_eq!(
            idle(&[100_000, 0, 100_000]),
            None,
            "empty ones are the vacuum's"
        );
        // A trickle beside a large segment waits: 1M + 50k + 50k rewrites only the small two,
        // and 1M + 100k + 100k + 100k (over an eighth) takes them in.
        assert_eq!(idle(&[1_000_000, 50_000, 50_000]), Some(1..3));
        assert_eq!(idle(&[1_000_000, 100_000]), None);
        assert_eq!(idle(&[1_000_000, 100_000, 100_000, 100_000]), Some(0..4));
        // Replayed, it converges, and 10M rows end as at most four segments of at most the
        // target.
        let (mut live, _) = settle(vec![100_000; 100], 100_000, 4_000_000);
        while let Some(r) = idle(&live) {
            let total: u64 = live[r.clone()].iter().sum();
            live.splice(r, [total]);
        }
        assert_eq!(live.iter().sum::<u64>(), 10_000_000);
        assert!(
            live.len() <= 4 && live.iter().all(|&n| n <= 4_000_000),
            "{live:?}"
        );
        let off = CompactionOptions {
            merge_max_rows: 0,
            ..opts
        };
        assert_eq!(merge_run(&tiers, 100_000, off, &|_| true, true), None);
    }

    #[test]
    fn tiered_merging_keeps_few_segments_and_rewrites_each_row_a_few_times() {
        // 10M rows sealed 100k at a time, merged toward 4M with factor 4.
        let (live, rewritten) = settle(vec![100_000; 100], 100_000, 4_000_000);
        assert_eq!(live.iter().sum::<u64>(), 10_000_000);
        assert!(live.len() <= 6, "{live:?}");
        assert!(live.iter().all(|&n| n <= 4_000_000), "{live:?}");
        // Three rewrites per row: 100k → 400k → 1.6M → 3.2M.
        assert!(rewritten <= 30_000_000, "{rewritten} rows rewritten");
        // 400k rows end as one segment, the case of the GloVe run.
        assert_eq!(
            settle(vec![100_000; 4], 100_000, 4_000_000).0,
            vec![400_000]
        );
    }
}
