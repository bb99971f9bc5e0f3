//! Reads: points by id, counts and scrolls (plain and filtered), all from one snapshot of the
//! segments, with the records bounded by a response budget.
use roaring::RoaringBitmap;

use super::compaction::{self, translate};
use super::{Collection, Snapshot, read};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::meta::Space;
use crate::meta::keys::{decode_location, point_key};
use crate::segment::{RowKey, SegmentId};
use crate::types::{PointId, PointRecord, ReadOptions};

/// The ids without repeats, first occurrences in order.
fn dedup_ids(ids: &[PointId]) -> Vec<PointId> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter().filter(|id| seen.insert(*id)).cloned().collect()
}

impl Collection {
    /// Reads ids, vectors and payloads of rows.
    pub(super) fn resolve(
        &self,
        snap: &Snapshot,
        keys: &[RowKey],
        opts: ReadOptions,
    ) -> Result<Vec<PointRecord>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut sealed_payloads = Vec::new(); // (index in out, key)
        for &(seg, row) in keys {
            let in_memory = [Some(&snap.mutable), snap.frozen.as_ref()]
                .into_iter()
                .flatten()
                .find(|m| read(m).id == seg);
            if let Some(m) = in_memory {
                let m = read(m);
                out.push(PointRecord {
                    id: m.id(row).clone(),
                    vector: opts.with_vectors.then(|| m.vector(row).to_vec()),
                    payload: if opts.with_payload {
                        m.payload(row).map(<[u8]>::to_vec)
                    } else {
                        None
                    },
                });
            } else {
                let s =
                    snap.sealed.iter().find(|s| s.id == seg).ok_or_else(|| {
                        Error::Meta(format!("segment {seg} vanished during a read"))
                    })?;
                let id = s.id(row);
                if opts.with_payload {
                    sealed_payloads.push((out.len(), point_key(self.uid, &id)));
                }
                out.push(PointRecord {
                    id,
                    vector: opts.with_vectors.then(|| s.vector(row).to_vec()),
                    payload: None,
                });
            }
        }
        if !sealed_payloads.is_empty() {
            let keys: Vec<Vec<u8>> = sealed_payloads.iter().map(|(_, k)| k.clone()).collect();
            let values = self.meta.multi_get(Space::Payloads, &keys)?;
            for ((i, _), v) in sealed_payloads.into_iter().zip(values) {
                out[i].payload = v;
            }
        }
        Ok(out)
    }

    /// [`Collection::resolve`] in chunks, stopping before the records exceed `budget` bytes
    /// (0: no limit). Returns the records that fit (a prefix of `keys`) and whether any was
    /// left out.
    pub(super) fn resolve_within(
        &self,
        snap: &Snapshot,
        keys: &[RowKey],
        opts: ReadOptions,
        budget: usize,
    ) -> Result<(Vec<PointRecord>, bool)> {
        if budget == 0 {
            return Ok((self.resolve(snap, keys, opts)?, false));
        }
        const CHUNK: usize = 64;
        let mut out = Vec::new();
        let mut total = 0usize;
        for chunk in keys.chunks(CHUNK) {
            for r in self.resolve(snap, chunk, opts)? {
                total = total.saturating_add(r.response_bytes());
                if total > budget {
                    return Ok((out, true));
                }
                out.push(r);
            }
        }
        Ok((out, false))
    }

    /// Points by id; missing ids are left out, an id asked for twice is answered once, order
    /// follows the request.
    pub fn get(&self, ids: &[PointId], opts: ReadOptions) -> Result<Vec<PointRecord>> {
        self.get_within(ids, opts, 0)
    }

    /// [`Collection::get`] whose records may total at most `budget` bytes (0: no limit): the
    /// read stops with [`Error::TooLarge`] as soon as they would exceed it, so a request can
    /// never make the engine hold more than the budget (plus one chunk of records).
    pub fn get_within(
        &self,
        ids: &[PointId],
        opts: ReadOptions,
        budget: usize,
    ) -> Result<Vec<PointRecord>> {
        for (i, id) in ids.iter().enumerate() {
            id.validate(&format!("ids[{i}]"))?;
        }
        let ids = dedup_ids(ids);
        let snap = self.snapshot();
        let found = self.locate(&snap, &ids)?;
        let (records, truncated) = self.resolve_within(&snap, &found, opts, budget)?;
        if truncated {
            return Err(Error::TooLarge {
                field: "ids".into(),
                detail: format!(
                    "the {} points asked for exceed the response budget of {budget} bytes after {} of them; ask for fewer ids, or without vectors or payloads",
                    found.len(),
                    records.len()
                ),
            });
        }
        Ok(records)
    }

    /// Where the given ids live now (live rows only).
    pub(super) fn locate(&self, snap: &Snapshot, ids: &[PointId]) -> Result<Vec<RowKey>> {
        let mut keys: Vec<Option<RowKey>> = Vec::with_capacity(ids.len());
        let mut need_meta = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let found = [Some(&snap.mutable), snap.frozen.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|m| {
                    let m = read(m);
                    m.lookup(id).map(|row| (m.id, row))
                });
            if found.is_none() && !snap.sealed.is_empty() {
                need_meta.push(i);
            }
            keys.push(found);
        }
        if !need_meta.is_empty() {
            let mk: Vec<Vec<u8>> = need_meta
                .iter()
                .map(|&i| point_key(self.uid, &ids[i]))
                .collect();
            for (i, v) in need_meta
                .into_iter()
                .zip(self.meta.multi_get(Space::Ids, &mk)?)
            {
                let moves = read(&self.moves);
                if let Some((seg, row)) = v
                    .as_deref()
                    .and_then(decode_location)
                    .and_then(|(seg, row)| translate(&moves, |s| snap.has_sealed(s), seg, row))
                    && snap.sealed.iter().any(|s| s.id == seg && s.is_live(row))
                {
                    keys[i] = Some((seg, row));
                }
            }
        }
        Ok(keys.into_iter().flatten().collect())
    }

    /// Live points.
    pub fn count(&self) -> u64 {
        let snap = self.snapshot();
        let mem: u64 = [Some(&snap.mutable), snap.frozen.as_ref()]
            .into_iter()
            .flatten()
            .map(|m| read(m).live_count() as u64)
            .sum();
        mem + snap.sealed.iter().map(|s| s.live_count()).sum::<u64>()
    }

    /// Live points passing `f`.
    pub fn count_filtered(&self, f: &Filter) -> Result<u64> {
        let snap = self.snapshot();
        Ok(self.allowed_rows(&snap, f)?.values().map(|b| b.len()).sum())
    }

    /// Where a scroll resumes in `snap` (see [`compaction::resume_cursor`]).
    fn resume(&self, snap: &Snapshot, cursor: Option<RowKey>) -> Result<RowKey> {
        let Some(cursor) = cursor else {
            return Ok((0, 0));
        };
        let frozen = snap.frozen.as_ref().map(|f| read(f).id);
        let mutable = read(&snap.mutable).id;
        let visible = |id| snap.has_sealed(id) || Some(id) == frozen || id == mutable;
        compaction::resume_cursor(&read(&self.moves), visible, cursor)
    }

    /// One page of live points in storage order, starting at `cursor` (segment, row); returns
    /// the page and the cursor of the next page (`None` when done).
    /// The page's records total at most `budget` bytes (0: no limit); a page that would
    /// exceed it ends early, its cursor at the first point left out.
    pub fn scroll(
        &self,
        cursor: Option<RowKey>,
        limit: usize,
        opts: ReadOptions,
        budget: usize,
    ) -> Result<(Vec<PointRecord>, Option<RowKey>)> {
        let snap = self.snapshot();
        let (start_seg, start_row) = self.resume(&snap, cursor)?;
        let mut keys = Vec::with_capacity(limit);
        let mut next = None;
        'outer: {
            for s in snap.sealed.iter().filter(|s| s.id >= start_seg) {
                let from = if s.id == start_seg { start_row } else { 0 };
                for row in from..s.rows() {
                    if s.is_live(row) {
                        if keys.len() == limit {
                            next = Some((s.id, row));
                            break 'outer;
                        }
                        keys.push((s.id, row));
                    }
                }
            }
            for m in [snap.frozen.as_ref(), Some(&snap.mutable)]
                .into_iter()
                .flatten()
            {
                let m = read(m);
                if m.id < start_seg {
                    continue;
                }
                let from = if m.id == start_seg { start_row } else { 0 };
                for row in from..m.rows() as u32 {
                    if m.is_live(row) {
                        if keys.len() == limit {
                            next = Some((m.id, row));
                            break 'outer;
                        }
                        keys.push((m.id, row));
                    }
                }
            }
        }
        self.page_within(&snap, &keys, next, opts, budget)
    }

    /// [`Collection::scroll`] over the points passing `f`.
    pub fn scroll_filtered(
        &self,
        f: &Filter,
        cursor: Option<RowKey>,
        limit: usize,
        opts: ReadOptions,
        budget: usize,
    ) -> Result<(Vec<PointRecord>, Option<RowKey>)> {
        let snap = self.snapshot();
        let (start_seg, start_row) = self.resume(&snap, cursor)?;
        let allowed = self.allowed_rows(&snap, f)?;
        let mut segs: Vec<(&SegmentId, &RoaringBitmap)> = allowed.iter().collect();
        segs.sort_by_key(|(id, _)| **id);
        let mut keys = Vec::with_capacity(limit);
        let mut next = None;
        'outer: for (&seg, rows) in segs.into_iter().filter(|(id, _)| **id >= start_seg) {
            let from = if seg == start_seg { start_row } else { 0 };
            for row in rows.iter().filter(|r| *r >= from) {
                if keys.len() == limit {
                    next = Some((seg, row));
                    break 'outer;
                }
                keys.push((seg, row));
            }
        }
        self.page_within(&snap, &keys, next, opts, budget)
    }

    /// Resolves a scroll page within `budget` bytes: a page that would exceed it ends early,
    /// with the cursor at the first point left out.
    fn page_within(
        &self,
        snap: &Snapshot,
        keys: &[RowKey],
        next: Option<RowKey>,
        opts: ReadOptions,
        budget: usize,
    ) -> Result<(Vec<PointRecord>, Option<RowKey>)> {
        let (records, truncated) = self.resolve_within(snap, keys, opts, budget)?;
        if !truncated {
            return Ok((records, next));
        }
        if records.is_empty() {
            return Err(Error::TooLarge {
                field: "limit".into(),
                detail: format!(
                    "one point alone exceeds the response budget of {budget} bytes; scroll without vectors or payloads"
                ),
            });
        }
        let next = keys.get(records.len()).copied();
        Ok((records, next))
    }
}
