//! Checkpoint (seal): under the writer lock the mutable segment is frozen at LSN `C` and the
//! WAL rotated; then, without blocking reads or writes, the frozen rows are written as a sealed
//! segment, changed tombstones of older segments as new tombstone files, and one synced
//! metadata batch records the new segment list, `C`, and the id map and payloads of the frozen
//! rows. Only then is the frozen segment swapped for the sealed one and the WAL behind `C`
//! deleted. The metadata store therefore always holds exactly the state as of `C`, and replay
//! of the WAL after `C` rebuilds everything newer, deterministically.
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use fs_err as fs;
use roaring::RoaringBitmap;

use super::filtering::persist_fields;
use super::{
    Collection, CollectionRecord, SegmentRecord, Shared, encode_record, load_or_build_index, lock,
    read, write,
};
use crate::error::Result;
use crate::meta::keys::{catalog_key, encode_location, point_key};
use crate::meta::{MetaOp, Space};
use crate::segment::mutable::MutableSegment;
use crate::segment::sealed::{SealedSegment, tombstone_file_name, write_segment, write_tombstones};
use crate::segment::{SEGMENT_ID_STRIDE, SegmentId};
use crate::wal::Lsn;

/// A checkpoint that has been frozen but not yet committed (kept to retry after a failure).
#[derive(Debug)]
pub(crate) struct PendingSeal {
    frozen: Shared<MutableSegment>,
    frozen_dead: RoaringBitmap,
    checkpoint: Lsn,
    applied_seq: u64,
    tombstones: Vec<(SegmentId, RoaringBitmap)>,
}

impl Collection {
    /// Seals when the mutable segment is full, unless another thread is sealing already.
    pub(super) fn maybe_seal(&self) -> Result<()> {
        let full = read(&read(&self.state).mutable).rows() >= self.config.segment_max_rows as usize;
        if !full {
            return Ok(());
        }
        // Another thread sealing already: it will pick this up on the next write.
        let Ok(mut guard) = self.seal.try_lock() else {
            return Ok(());
        };
        self.seal_with(&mut guard, false)
    }

    /// Seals the mutable segment to disk now (even if not full) and truncates the WAL behind
    /// it. Returns the checkpoint LSN.
    #[tracing::instrument(skip_all, fields(collection = %self.config.name))]
    pub fn flush(&self) -> Result<Lsn> {
        self.seal_with(&mut lock(&self.seal), true)?;
        Ok(read(&self.state).record.checkpoint_lsn)
    }

    /// Commits `pending` (a checkpoint left by a failed attempt), or freezes and commits a new
    /// one (when the mutable segment is full, or `force`). The seal lock is the caller's.
    pub(crate) fn seal_with(&self, pending: &mut Option<PendingSeal>, force: bool) -> Result<()> {
        if lock(&self.writer).dropped {
            // Dropped or swapped out: its catalog entry is no longer its own to write.
            *pending = None;
            return Ok(());
        }
        if pending.is_none() {
            match self.freeze(force)? {
                Some(p) => *pending = Some(p),
                None => return Ok(()),
            }
        }
        let p = pending.as_ref().expect("invariant: set above");
        self.commit(p)?;
        *pending = None;
        Ok(())
    }

    /// Cuts the history at the last applied LSN: the mutable segment becomes the frozen one.
    fn freeze(&self, force: bool) -> Result<Option<PendingSeal>> {
        let mut w = lock(&self.writer);
        if w.dropped {
            return Ok(None);
        }
        let mut st = write(&self.state);
        let rows = read(&st.mutable).rows();
        let last = w.wal.next_lsn() - 1;
        if rows == 0 && st.dirty.is_empty() && st.record.checkpoint_lsn == last {
            return Ok(None); // nothing since the last checkpoint
        }
        if !force && rows < self.config.segment_max_rows as usize {
            return Ok(None);
        }
        let checkpoint = last;
        let applied_seq = self.last_seq.load(Ordering::Acquire);
        w.wal.rotate()?;
        let tombstones = std::mem::take(&mut st.dirty)
            .into_iter()
            .filter_map(|id| st.sealed(id).map(|s| (id, s.tombstones())))
            .collect();
        let next = MutableSegment::new(
            read(&st.mutable).id + SEGMENT_ID_STRIDE,
            self.config.dim,
            &read(&self.schema),
        );
        let frozen = std::mem::replace(&mut st.mutable, Arc::new(RwLock::new(next)));
        let frozen_dead = read(&frozen).dead_rows().collect();
        st.frozen = Some(Arc::clone(&frozen));
        Ok(Some(PendingSeal {
            frozen,
            frozen_dead,
            checkpoint,
            applied_seq,
            tombstones,
        }))
    }

    /// Writes the frozen segment and tombstones, commits the checkpoint, swaps it in.
    fn commit(&self, p: &PendingSeal) -> Result<()> {
        let seg_dir = self.dir.join("segments");
        let started = std::time::Instant::now();
        let (frozen_id, rows, mut ops) = self.write_frozen(p, &seg_dir)?;
        for (id, bitmap) in &p.tombstones {
            write_tombstones(
                &seg_dir.join(id.to_string()),
                &tombstone_file_name(Some(p.checkpoint)),
                bitmap,
            )?;
        }
        let (record, stale_files) = self.checkpoint_record(p, &seg_dir, frozen_id, rows);
        ops.push(MetaOp::Put(
            Space::Catalog,
            catalog_key(&self.config.name),
            encode_record(&record)?,
        ));
        self.meta.write(ops)?;

        // Committed: swap the frozen segment for the sealed one.
        let sealed = if rows > 0 {
            Some(Arc::new(SealedSegment::open(
                &seg_dir,
                frozen_id,
                self.config.dim,
                None,
            )?))
        } else {
            None
        };
        if let Some(s) = &sealed {
            load_or_build_index(s, &self.config, &self.builds);
            // The frozen segment's field indexes cover the same rows: sort them for reads,
            // and write them beside the segment so the next open reads no payload.
            let mut fields = read(&p.frozen).fields().clone();
            fields.seal();
            fields.set_rows(rows);
            let fields = Arc::new(fields);
            s.set_fields(Arc::clone(&fields));
            if !self.schema().is_empty() {
                persist_fields(s, fields);
            }
        }
        self.swap_in(p, sealed, record);
        for f in stale_files {
            let _ = fs::remove_file(f);
        }
        lock(&self.writer).wal.truncate_through(p.checkpoint)?;
        tracing::info!(collection = %self.config.name, segment = frozen_id, rows, checkpoint = p.checkpoint, ms = started.elapsed().as_millis() as u64, "segment sealed");
        Ok(())
    }

    /// Writes the frozen rows as a segment (when there are any); returns its id, its rows and
    /// the metadata ops that record its id map and payloads (and forget the ids it removed
    /// from older segments).
    fn write_frozen(
        &self,
        p: &PendingSeal,
        seg_dir: &Path,
    ) -> Result<(SegmentId, u32, Vec<MetaOp>)> {
        let f = read(&p.frozen);
        let rows = f.rows() as u32;
        if rows > 0 {
            write_segment(
                seg_dir,
                f.id,
                self.config.dim,
                f.vectors(),
                f.ids(),
                &p.frozen_dead,
            )?;
        }
        let mut ops = Vec::new();
        let mut live = std::collections::HashSet::new();
        for (row, id) in f.ids().iter().enumerate() {
            if p.frozen_dead.contains(row as u32) {
                continue;
            }
            let key = point_key(self.uid, id);
            ops.push(MetaOp::Put(
                Space::Ids,
                key.clone(),
                encode_location(f.id, row as u32),
            ));
            match f.payload(row as u32) {
                Some(pl) => ops.push(MetaOp::Put(Space::Payloads, key, pl.to_vec())),
                None => ops.push(MetaOp::Delete(Space::Payloads, key)),
            }
            live.insert(id);
        }
        for id in f.removed_from_older.iter().filter(|id| !live.contains(id)) {
            let key = point_key(self.uid, id);
            ops.push(MetaOp::Delete(Space::Ids, key.clone()));
            ops.push(MetaOp::Delete(Space::Payloads, key));
        }
        Ok((f.id, rows, ops))
    }

    /// The catalog record as of the checkpoint, and the tombstone files it no longer names.
    fn checkpoint_record(
        &self,
        p: &PendingSeal,
        seg_dir: &Path,
        frozen_id: SegmentId,
        rows: u32,
    ) -> (CollectionRecord, Vec<PathBuf>) {
        let mut record = read(&self.state).record.clone();
        let mut stale_files = Vec::new();
        for s in record.segments.iter_mut() {
            if p.tombstones.iter().any(|(id, _)| *id == s.id) {
                if let Some(old) = s.tombstones.filter(|old| *old != p.checkpoint) {
                    stale_files.push(
                        seg_dir
                            .join(s.id.to_string())
                            .join(tombstone_file_name(Some(old))),
                    );
                }
                s.tombstones = Some(p.checkpoint);
            }
        }
        if rows > 0 {
            record.segments.push(SegmentRecord {
                id: frozen_id,
                rows,
                tombstones: None,
            });
        }
        record.checkpoint_lsn = p.checkpoint;
        record.applied_seq = record.applied_seq.max(p.applied_seq);
        record.next_segment_id = frozen_id + SEGMENT_ID_STRIDE;
        (record, stale_files)
    }

    /// Replaces the frozen segment with `sealed` (its rows tombstoned since the freeze carried
    /// over) and installs the committed `record`.
    fn swap_in(
        &self,
        p: &PendingSeal,
        sealed: Option<Arc<SealedSegment>>,
        record: CollectionRecord,
    ) {
        let mut st = write(&self.state);
        if let Some(s) = sealed {
            // Rows tombstoned after the freeze: carry them over, persist at the next checkpoint.
            let late: Vec<u32> = read(&p.frozen)
                .dead_rows()
                .filter(|r| !p.frozen_dead.contains(*r))
                .collect();
            for r in &late {
                s.delete(*r);
            }
            if !late.is_empty() {
                st.mark_dirty(s.id);
            }
            st.sealed.push(s);
        }
        st.frozen = None;
        st.record = record;
    }
}
