//! Filters on a collection: the declared-field schema, the allowed-rows bitmap of each segment
//! (from field indexes where declared, from payloads otherwise), and the filtered reads and
//! writes built on it (count, scroll, delete by filter, payload updates).
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use roaring::RoaringBitmap;
use serde_json::Value;

use super::{
    Collection, Snapshot, catalog_key, decode_location, encode_record, lock, point_key, read,
    translate, write,
};
use crate::error::{Error, Result};
use crate::filter::{Condition, Filter, Schema, validate_key};
use crate::meta::{MetaOp, MetaStore, Space};
use crate::payload_index::FieldIndexes;
use crate::segment::sealed::SealedSegment;
use crate::segment::{RowKey, SegmentId};
use crate::types::{PointId, PointRecord, PointWrite, ReadOptions};
use crate::wal::Lsn;

/// Payloads fetched from the metadata store per batch when a filter reads undeclared keys.
const PAYLOAD_BATCH: usize = 4096;

/// Allowed rows per segment (segments with none are absent).
pub(super) type Allowed = HashMap<SegmentId, RoaringBitmap>;

/// How a payload update combines with the stored payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadUpdate {
    /// Set the given keys, keep the others.
    Merge,
    /// Replace the whole payload.
    Overwrite,
}

/// Bounds on what one payload update may write (0: no bound). They travel with the update
/// (in the replicated log too), so every replica refuses or applies it alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PayloadLimits {
    /// Largest merged payload of one point, bytes.
    pub per_point: usize,
    /// Largest total of the merged payloads, bytes.
    pub total: usize,
}

/// Builds a sealed segment's field indexes from its stored payloads on a background thread
/// (at open, or when fields are declared); filters read payloads until they are ready.
pub(super) fn build_fields(
    seg: &Arc<SealedSegment>,
    schema: &Schema,
    meta: &Arc<dyn MetaStore>,
    uid: u64,
) {
    if schema.is_empty() {
        return;
    }
    // Weak references: a dropped segment or a closed engine cancels the build.
    let weak: Weak<SealedSegment> = Arc::downgrade(seg);
    let (schema, weak_meta) = (schema.clone(), Arc::downgrade(meta));
    let spawned = std::thread::Builder::new()
        .name("quiver-fields".into())
        .spawn(move || {
            let Some(seg) = weak.upgrade() else { return };
            let Some(meta) = weak_meta.upgrade() else { return };
            let fields = index_fields(&seg, &schema, meta.as_ref(), uid);
            drop(meta);
            match fields {
                Ok(f) => seg.set_fields(Arc::new(f)),
                Err(e) => {
                    tracing::error!(segment = seg.id, error = %e, "cannot index payload fields; filters read payloads");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a field index thread");
    }
}

/// Indexes the `schema` fields of a sealed segment from its stored payloads.
pub(super) fn index_fields(
    seg: &SealedSegment,
    schema: &Schema,
    meta: &dyn MetaStore,
    uid: u64,
) -> Result<FieldIndexes> {
    let payloads = sealed_payloads(seg, meta, uid)?;
    let mut f = FieldIndexes::build(
        schema,
        payloads
            .iter()
            .enumerate()
            .map(|(r, p)| (r as u32, p.as_ref())),
    );
    f.set_rows(seg.rows());
    Ok(f)
}

/// Every row's parsed payload (dead rows included; callers mask them).
fn sealed_payloads(
    seg: &SealedSegment,
    meta: &dyn MetaStore,
    uid: u64,
) -> Result<Vec<Option<Value>>> {
    let mut out = Vec::with_capacity(seg.rows() as usize);
    let rows: Vec<u32> = (0..seg.rows()).collect();
    for chunk in rows.chunks(PAYLOAD_BATCH) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|&r| point_key(uid, &seg.id(r))).collect();
        for v in meta.multi_get(Space::Payloads, &keys)? {
            out.push(v.and_then(|b| serde_json::from_slice(&b).ok()));
        }
    }
    Ok(out)
}

/// Evaluates a filter tree to a bitmap of rows; `leaf` answers conditions and `all` gives
/// every row of the segment (built only for `must_not` and empty groups, which need it).
/// Dead rows are the caller's to remove.
fn eval_tree(
    f: &Filter,
    all: &dyn Fn() -> RoaringBitmap,
    leaf: &mut impl FnMut(&Condition) -> Result<RoaringBitmap>,
) -> Result<RoaringBitmap> {
    Ok(match f {
        Filter::Cond(c) => leaf(c)?,
        Filter::Must(fs) | Filter::Should(fs) if fs.is_empty() => all(),
        Filter::Must(fs) => {
            let mut acc = eval_tree(&fs[0], all, leaf)?;
            for x in &fs[1..] {
                if acc.is_empty() {
                    break;
                }
                acc &= eval_tree(x, all, leaf)?;
            }
            acc
        }
        Filter::Should(fs) => {
            let mut acc = RoaringBitmap::new();
            for x in fs {
                acc |= eval_tree(x, all, leaf)?;
            }
            acc
        }
        Filter::MustNot(fs) => {
            let mut acc = all();
            for x in fs {
                if acc.is_empty() {
                    break;
                }
                acc -= eval_tree(x, all, leaf)?;
            }
            acc
        }
    })
}

fn has_id_conditions<'a>(f: &'a Filter, out: &mut Vec<&'a Condition>) {
    match f {
        Filter::Cond(c @ Condition::HasId(_)) => out.push(c),
        Filter::Cond(_) => {}
        Filter::Must(fs) | Filter::Should(fs) | Filter::MustNot(fs) => {
            fs.iter().for_each(|x| has_id_conditions(x, out));
        }
    }
}

impl Collection {
    /// The declared payload fields.
    pub fn schema(&self) -> Schema {
        read(&self.schema).clone()
    }

    /// Declares more payload fields. Existing rows are indexed in the background (filters
    /// read payloads until then). Re-declaring a field with its type is a no-op; with another
    /// type it is an error.
    pub fn declare_fields(&self, fields: &Schema) -> Result<()> {
        self.declare_fields_seq(fields, 0)
    }

    /// [`Collection::declare_fields`] stamped with sequence number `seq` (0 = none).
    pub fn declare_fields_seq(&self, fields: &Schema, seq: u64) -> Result<()> {
        for (k, ty) in fields {
            validate_key(k, &format!("schema.{k}"))?;
            if let Some(old) = read(&self.schema).get(k)
                && old != ty
            {
                return Err(Error::invalid(
                    format!("schema.{k}"),
                    format!(
                        "already declared as {}, cannot change to {}",
                        old.name(),
                        ty.name()
                    ),
                ));
            }
        }
        // The seal lock keeps a concurrent checkpoint from writing an older record over this
        // one; the writer lock orders the change with writes to the mutable segment.
        let _seal = lock(&self.seal);
        let mut w = lock(&self.writer);
        if w.dropped {
            return Err(Error::CollectionNotFound {
                name: self.config.name.clone(),
            });
        }
        let mut schema = write(&self.schema);
        let mut merged = schema.clone();
        merged.extend(fields.iter().map(|(k, t)| (k.clone(), *t)));
        if merged == *schema {
            return Ok(());
        }
        let mut st = write(&self.state);
        let mut record = st.record.clone();
        record.config.schema = merged.clone();
        self.write_record(&mut w.wal, &mut record, seq)?;
        st.record = record;
        *schema = merged.clone();
        write(&st.mutable).set_schema(&merged);
        if let Some(f) = &st.frozen {
            write(f).set_schema(&merged);
        }
        for s in &st.sealed {
            build_fields(s, &merged, &self.meta, self.uid);
        }
        tracing::info!(collection = %self.config.name, fields = ?fields.keys().collect::<Vec<_>>(), "payload fields declared");
        Ok(())
    }

    /// Stores a changed catalog record (under the seal and writer locks), stamped with `seq`:
    /// the record will then claim every write up to `seq`, so the WAL behind it is made
    /// durable first and a crash cannot lose writes the record says are in.
    fn write_record(
        &self,
        wal: &mut crate::wal::Wal,
        record: &mut super::CollectionRecord,
        seq: u64,
    ) -> Result<()> {
        if seq != 0 {
            wal.sync()?;
            record.applied_seq = record.applied_seq.max(seq);
            self.last_seq.fetch_max(seq, Ordering::AcqRel);
        }
        self.meta.write(vec![MetaOp::Put(
            Space::Catalog,
            catalog_key(&self.config.name),
            encode_record(record)?,
        )])
    }

    /// A label (see [`crate::CollectionConfig::labels`]).
    pub fn label(&self, key: &str) -> Option<String> {
        read(&self.state).record.config.labels.get(key).cloned()
    }

    /// Sets (or with `None` removes) a label, stamped with sequence number `seq` (0 = none);
    /// durable when this returns.
    pub fn set_label_seq(&self, key: &str, value: Option<&str>, seq: u64) -> Result<()> {
        if key.is_empty() || key.len() > 256 {
            return Err(Error::invalid("label", "keys are 1 to 256 bytes"));
        }
        let _seal = lock(&self.seal);
        let mut w = lock(&self.writer);
        if w.dropped {
            return Err(Error::CollectionNotFound {
                name: self.config.name.clone(),
            });
        }
        let mut st = write(&self.state);
        let mut record = st.record.clone();
        match value {
            Some(v) => record.config.labels.insert(key.to_owned(), v.to_owned()),
            None => record.config.labels.remove(key),
        };
        self.write_record(&mut w.wal, &mut record, seq)?;
        st.record = record;
        Ok(())
    }

    /// (sealed segments whose field indexes cover the schema, sealed segments).
    pub fn fields_progress(&self) -> (usize, usize) {
        let schema = read(&self.schema).clone();
        let snap = self.snapshot();
        let built = snap
            .sealed
            .iter()
            .filter(|s| schema.is_empty() || s.fields().is_some_and(|f| f.covers(&schema)))
            .count();
        (built, snap.sealed.len())
    }

    /// Checks a filter against the schema; returns the undeclared keys it reads (evaluated
    /// from payloads, slower), so callers can say so.
    pub fn check_filter(&self, f: &Filter) -> Result<Vec<String>> {
        let schema = read(&self.schema);
        f.validate(&schema, crate::filter::MAX_DEPTH)?;
        Ok(f.keys()
            .into_iter()
            .filter(|k| !schema.contains_key(*k))
            .map(str::to_owned)
            .collect())
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

    /// The live rows of every segment that pass `f`.
    pub(super) fn allowed_rows(&self, snap: &Snapshot, f: &Filter) -> Result<Allowed> {
        self.check_filter(f)?;
        // `has_id` conditions: located once, then split by segment.
        let mut conds = Vec::new();
        has_id_conditions(f, &mut conds);
        let mut located: HashMap<usize, Allowed> = HashMap::new();
        // Keyed by the condition's address: `f` is borrowed throughout.
        for c in conds {
            let Condition::HasId(ids) = c else { continue };
            let mut per: Allowed = HashMap::new();
            for (seg, row) in self.locate(snap, ids)? {
                per.entry(seg).or_default().insert(row);
            }
            located.insert(std::ptr::from_ref(c) as usize, per);
        }
        let has_id = |c: &Condition, seg: SegmentId| -> RoaringBitmap {
            located
                .get(&(std::ptr::from_ref(c) as usize))
                .and_then(|m| m.get(&seg))
                .cloned()
                .unwrap_or_default()
        };
        let mut out = Allowed::new();
        for s in &snap.sealed {
            if s.live_count() == 0 {
                continue;
            }
            let n = s.rows();
            let all = move || {
                let mut b = RoaringBitmap::new();
                b.insert_range(0..n);
                b
            };
            let fields = s.fields();
            let mut payloads: Option<Vec<Option<Value>>> = None;
            let mut rows = eval_tree(f, &all, &mut |c| {
                if let Condition::HasId(_) = c {
                    return Ok(has_id(c, s.id));
                }
                if let Some(b) = fields.as_ref().and_then(|x| x.eval(c)) {
                    return Ok(b);
                }
                if payloads.is_none() {
                    payloads = Some(sealed_payloads(s, self.meta.as_ref(), self.uid)?);
                }
                let p = payloads.as_ref().expect("invariant: loaded above");
                let leaf = Filter::Cond(c.clone());
                Ok((0..n)
                    .filter(|&r| leaf.matches(&PointId::Num(0), p[r as usize].as_ref()))
                    .collect())
            })?;
            rows -= &*s.deleted_guard();
            if !rows.is_empty() {
                out.insert(s.id, rows);
            }
        }
        for m in [snap.frozen.as_ref(), Some(&snap.mutable)]
            .into_iter()
            .flatten()
        {
            let m = read(m);
            if m.live_count() == 0 {
                continue;
            }
            let n = m.rows() as u32;
            let all = move || {
                let mut b = RoaringBitmap::new();
                b.insert_range(0..n);
                b
            };
            let mut rows = eval_tree(f, &all, &mut |c| {
                if let Condition::HasId(_) = c {
                    return Ok(has_id(c, m.id));
                }
                if let Some(b) = m.fields().eval(c) {
                    return Ok(b);
                }
                let leaf = Filter::Cond(c.clone());
                Ok((0..n)
                    .filter(|&r| leaf.matches(&PointId::Num(0), m.payload_value(r).as_ref()))
                    .collect())
            })?;
            for dead in m.dead_rows() {
                rows.remove(dead);
            }
            if !rows.is_empty() {
                out.insert(m.id, rows);
            }
        }
        Ok(out)
    }

    /// Live points passing `f`.
    pub fn count_filtered(&self, f: &Filter) -> Result<u64> {
        let snap = self.snapshot();
        Ok(self.allowed_rows(&snap, f)?.values().map(|b| b.len()).sum())
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

    /// Deletes every point passing `f`; returns how many and the LSN.
    pub fn delete_by_filter(&self, f: &Filter) -> Result<(u64, Lsn)> {
        self.delete_by_filter_seq(f, 0)
    }

    /// [`Collection::delete_by_filter`] stamped with sequence number `seq` (0 = none).
    pub fn delete_by_filter_seq(&self, f: &Filter, seq: u64) -> Result<(u64, Lsn)> {
        let snap = self.snapshot();
        let allowed = self.allowed_rows(&snap, f)?;
        let keys: Vec<RowKey> = allowed
            .iter()
            .flat_map(|(seg, rows)| rows.iter().map(move |r| (*seg, r)))
            .collect();
        let ids: Vec<PointId> = self
            .resolve(&snap, &keys, ReadOptions::default())?
            .into_iter()
            .map(|p| p.id)
            .collect();
        drop(snap);
        self.delete_seq(ids, seq)
    }

    /// Updates the payloads of `ids`: `Merge` sets the keys of `set` and keeps the others,
    /// `Overwrite` replaces the payload with `set`; then removes `unset` keys. Each updated point
    /// is rewritten (vector unchanged) through the WAL, so field indexes stay consistent.
    /// Returns how many points existed and the LSN.
    pub fn update_payload(
        &self,
        ids: &[PointId],
        set: &serde_json::Map<String, Value>,
        unset: &[String],
        mode: PayloadUpdate,
    ) -> Result<(u64, Lsn)> {
        self.update_payload_seq(ids, set, unset, mode, PayloadLimits::default(), 0)
    }

    /// [`Collection::update_payload`] stamped with sequence number `seq` (0 = none).
    pub fn update_payload_seq(
        &self,
        ids: &[PointId],
        set: &serde_json::Map<String, Value>,
        unset: &[String],
        mode: PayloadUpdate,
        limits: PayloadLimits,
        seq: u64,
    ) -> Result<(u64, Lsn)> {
        // Ids are deduplicated by `get`; the read itself is bounded like the writes (a point
        // is read with its old payload, then rewritten with the merged one).
        let read_budget = limits.total.saturating_mul(2);
        let current = self.get_within(
            ids,
            ReadOptions {
                with_vectors: true,
                with_payload: true,
            },
            read_budget,
        )?;
        let mut writes = Vec::with_capacity(current.len());
        let mut total = 0usize;
        for p in current {
            let mut obj = match mode {
                PayloadUpdate::Overwrite => serde_json::Map::new(),
                PayloadUpdate::Merge => p
                    .payload
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Map<String, Value>>(b).ok())
                    .unwrap_or_default(),
            };
            obj.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            for k in unset {
                obj.remove(k);
            }
            let payload = serde_json::to_vec(&Value::Object(obj))
                .map_err(|e| Error::invalid("payload", e.to_string()))?;
            if limits.per_point > 0 && payload.len() > limits.per_point {
                return Err(Error::TooLarge {
                    field: "set_json".into(),
                    detail: format!(
                        "the merged payload of point {} would be {} bytes; the limit is {} (server.max_payload_bytes)",
                        p.id,
                        payload.len(),
                        limits.per_point
                    ),
                });
            }
            total = total.saturating_add(payload.len());
            if limits.total > 0 && total > limits.total {
                return Err(Error::TooLarge {
                    field: "ids".into(),
                    detail: format!(
                        "the update would rewrite more than {} bytes of payloads (server.max_message_bytes); update fewer ids at a time",
                        limits.total
                    ),
                });
            }
            writes.push(PointWrite {
                id: p.id,
                vector: p.vector.unwrap_or_default(),
                payload: Some(payload),
            });
        }
        let n = writes.len() as u64;
        let lsn = self.upsert_seq(writes, seq)?;
        Ok((n, lsn))
    }
}
