//! Writes. The write path: validate → append to the WAL (fsync per policy) → apply to the
//! mutable segment → acknowledge. Applying an upsert tombstones the id's previous row wherever
//! it lives, so an id has at most one live row.
//!
//! Deletes by filter and payload updates are built on reads, then go down the same path;
//! label changes rewrite the catalog record; syncs make the WAL durable.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::compaction::{Moved, translate};
use super::{Collection, CollectionRecord, State, encode_record, lock, read, write};
use crate::error::{Error, Result};
use crate::filter::{FieldType, Filter};
use crate::meta::keys::{catalog_key, decode_location, point_key};
use crate::meta::{MetaOp, MetaStore, Space};
use crate::segment::mutable::MutableSegment;
use crate::segment::{RowKey, SegmentId};
use crate::types::{
    Metric, PointId, PointRecord, PointWrite, ReadOptions, normalize, validate_vector,
};
use crate::wal::{Lsn, Wal, WalRecord};

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

/// Checks the values of `sparse` keys in payload `v`; errors are named `{at}.{key}...`.
pub(super) fn check_sparse_values(
    v: &serde_json::Value,
    sparse: &[&String],
    at: &str,
    id: &PointId,
) -> Result<()> {
    for key in sparse {
        for x in crate::filter::values_at(Some(v), key) {
            crate::text::parse_sparse(x)
                .map_err(|e| Error::invalid(format!("{at}.{key}"), format!("point {id}: {e}")))?;
        }
    }
    Ok(())
}

/// The sealed location of each id, as of the checkpoint, fetched in one batch and followed
/// across recent compactions to the segments `state` holds.
fn sealed_locations(
    state: &State,
    meta: &dyn MetaStore,
    uid: u64,
    moves: &[Arc<Moved>],
    ids: &[&PointId],
) -> Result<HashMap<PointId, (SegmentId, u32)>> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| point_key(uid, id)).collect();
    let locations = if state.sealed.is_empty() {
        vec![None; keys.len()]
    } else {
        meta.multi_get(Space::Ids, &keys)?
    };
    Ok(ids
        .iter()
        .zip(&locations)
        .filter_map(|(id, l)| {
            let (seg, row) = decode_location(l.as_deref()?)?;
            let at = translate(moves, |s| state.sealed(s).is_some(), seg, row)?;
            Some(((*id).clone(), at))
        })
        .collect())
}

/// Applies one logged record to the in-memory state (live writes and WAL replay alike).
/// Returns how many ids existed (for deletes) or were written (for upserts).
pub(super) fn apply(
    state: &mut State,
    meta: &dyn MetaStore,
    uid: u64,
    moves: &[Arc<Moved>],
    rec: WalRecord,
) -> Result<u64> {
    let ids: Vec<&PointId> = match &rec {
        WalRecord::Upsert(points) => points.iter().map(|p| &p.id).collect(),
        WalRecord::Delete(ids) => ids.iter().collect(),
    };
    let located = sealed_locations(state, meta, uid, moves, &ids)?;
    drop(ids);

    let mutable = Arc::clone(&state.mutable);
    let mut m = write(&mutable);
    let remove = |state: &mut State, m: &mut MutableSegment, id: &PointId| -> bool {
        if m.delete(id) {
            return true;
        }
        if let Some(f) = &state.frozen
            && write(f).delete(id)
        {
            m.removed_from_older.insert(id.clone());
            return true;
        }
        if let Some(&(seg, row)) = located.get(id)
            && let Some(s) = state.sealed(seg)
            && s.delete(row)
        {
            state.mark_dirty(seg);
            m.removed_from_older.insert(id.clone());
            return true;
        }
        false
    };
    let mut n = 0;
    match rec {
        WalRecord::Upsert(points) => {
            for p in points {
                remove(state, &mut m, &p.id);
                m.push(p.id, &p.vector, p.payload);
                n += 1;
            }
        }
        WalRecord::Delete(ids) => {
            for id in &ids {
                // An id deleted twice in one batch counts once.
                if remove(state, &mut m, id) {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

impl Collection {
    /// Refuses points whose payload holds a malformed value for a declared `sparse` field
    /// (unsorted or repeated indices, non-finite values, too many entries), naming the point,
    /// the field and the entry: such a value could not be indexed, so it is not logged.
    pub fn check_payloads(&self, points: &[PointWrite]) -> Result<()> {
        let schema = read(&self.schema);
        let sparse: Vec<&String> = schema
            .iter()
            .filter(|(_, t)| **t == FieldType::Sparse)
            .map(|(k, _)| k)
            .collect();
        if sparse.is_empty() {
            return Ok(());
        }
        for (i, p) in points.iter().enumerate() {
            let Some(bytes) = &p.payload else { continue };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                continue;
            };
            check_sparse_values(&v, &sparse, &format!("points[{i}].payload"), &p.id)?;
        }
        Ok(())
    }

    fn log_and_apply(&self, rec: WalRecord, seq: u64) -> Result<(u64, Lsn)> {
        let mut w = lock(&self.writer);
        if w.dropped {
            return Err(Error::CollectionNotFound {
                name: self.config.name.clone(),
            });
        }
        let lsn = w.wal.append_sequenced(&rec, seq)?;
        let moves = read(&self.moves).clone();
        let n = apply(
            &mut write(&self.state),
            self.meta.as_ref(),
            self.uid,
            &moves,
            rec,
        )?;
        self.last_lsn.store(lsn, Ordering::Release);
        if seq != 0 {
            self.last_seq.fetch_max(seq, Ordering::AcqRel);
        }
        self.last_write_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        drop(w);
        self.maybe_seal()?;
        Ok((n, lsn))
    }

    /// How long since the last write (or since the collection was opened, if none).
    pub fn idle_for(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Inserts or overwrites points. Vectors are validated (dimension, finite) and normalised
    /// for cosine collections; within one batch the last occurrence of an id wins. Returns the
    /// batch's LSN once it is durable per the fsync policy.
    #[tracing::instrument(skip_all, fields(collection = %self.config.name, points = points.len()))]
    pub fn upsert(&self, points: Vec<PointWrite>) -> Result<Lsn> {
        self.upsert_seq(points, 0)
    }

    /// [`Collection::upsert`] stamped with sequence number `seq` (a Raft log index; 0 = none).
    pub fn upsert_seq(&self, mut points: Vec<PointWrite>, seq: u64) -> Result<Lsn> {
        if points.is_empty() {
            return Ok(self.last_lsn.load(Ordering::Acquire));
        }
        for (i, p) in points.iter_mut().enumerate() {
            p.id.validate(&format!("points[{i}].id"))?;
            let field = format!("points[{i}].vector");
            validate_vector(&p.vector, self.config.dim, &field)?;
            if self.config.metric == Metric::Cosine {
                normalize(&mut p.vector, &field)?;
            }
        }
        self.check_payloads(&points)?;
        self.log_and_apply(WalRecord::Upsert(points), seq)
            .map(|(_, lsn)| lsn)
    }

    /// Deletes points by id; returns how many existed and the LSN.
    #[tracing::instrument(skip_all, fields(collection = %self.config.name, ids = ids.len()))]
    pub fn delete(&self, ids: Vec<PointId>) -> Result<(u64, Lsn)> {
        self.delete_seq(ids, 0)
    }

    /// [`Collection::delete`] stamped with sequence number `seq` (0 = none).
    pub fn delete_seq(&self, ids: Vec<PointId>, seq: u64) -> Result<(u64, Lsn)> {
        for (i, id) in ids.iter().enumerate() {
            id.validate(&format!("ids[{i}]"))?;
        }
        if ids.is_empty() {
            return Ok((0, self.last_lsn.load(Ordering::Acquire)));
        }
        self.log_and_apply(WalRecord::Delete(ids), seq)
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
            let payload = merged_payload(&p, set, unset, mode)?;
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

    /// Stores a changed catalog record (under the seal and writer locks), stamped with `seq`:
    /// the record will then claim every write up to `seq`, so the WAL behind it is made
    /// durable first and a crash cannot lose writes the record says are in.
    pub(super) fn write_record(
        &self,
        wal: &mut Wal,
        record: &mut CollectionRecord,
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

    /// fsyncs the WAL (for the interval fsync policy and shutdown).
    pub fn sync(&self) -> Result<()> {
        lock(&self.writer).wal.sync()
    }

    /// Makes every write applied so far durable without holding up writers while the disk
    /// works: the WAL file is fsynced through a second handle, outside the writer lock.
    pub fn sync_concurrently(&self) -> Result<()> {
        let handle = lock(&self.writer).wal.sync_handle()?;
        if let Some(f) = handle
            && let Err(e) = f.sync_data()
        {
            return Err(lock(&self.writer).wal.poison("fsync", e));
        }
        Ok(())
    }
}

/// The payload `p` gets from an update: `set` merged into (or replacing) its payload, then
/// the `unset` keys removed; JSON text.
fn merged_payload(
    p: &PointRecord,
    set: &serde_json::Map<String, Value>,
    unset: &[String],
    mode: PayloadUpdate,
) -> Result<Vec<u8>> {
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
    serde_json::to_vec(&Value::Object(obj)).map_err(|e| Error::invalid("payload", e.to_string()))
}
