//! Filters on a collection: the declared-field schema, the field indexes of sealed segments
//! (built from their payloads), and the allowed rows of a filter in each segment of a
//! snapshot, which filtered searches, counts, scrolls and deletes start from.
use std::sync::{Arc, Weak};

use serde_json::Value;

use super::{Collection, Snapshot, lock, read, write};
use crate::error::{Error, Result};
use crate::filter::allowed::{self, Allowed, LocatedIds};
use crate::filter::{Filter, Schema, validate_key};
use crate::meta::keys::point_key;
use crate::meta::{MetaStore, Space};
use crate::payload_index::FieldIndexes;
use crate::segment::sealed::SealedSegment;

/// Payloads fetched from the metadata store per batch when a filter reads undeclared keys.
const PAYLOAD_BATCH: usize = 4096;

/// The file of a sealed segment's field indexes, beside its other files.
pub(crate) const FIELDS_FILE: &str = "fields.idx";

/// The field indexes `seg` wrote for exactly `schema`, if its file is whole. The file is
/// mapped: text and sparse indexes are read in place from it (only keyword and numeric ones
/// are decoded onto the heap).
fn load_fields(seg: &SealedSegment, schema: &Schema) -> Option<FieldIndexes> {
    let file = crate::mmap::MappedFile::open(&seg.dir().join(FIELDS_FILE)).ok()?;
    let f = FieldIndexes::from_blob(&crate::text::Blob::new(Arc::new(file)));
    if f.is_none() {
        tracing::warn!(segment = seg.id, "field index file unusable; rebuilding it");
    }
    f.filter(|f| f.covers(schema) && f.rows() == seg.rows())
}

/// Writes `fields` as `seg`'s field index file (temp name, fsync, rename, directory sync).
/// A failure only costs a rebuild at the next open, so it is logged, not returned.
pub(super) fn save_fields(seg: &SealedSegment, fields: &FieldIndexes) {
    // A name of its own per write: a seal's writer and a declaration's rebuild may write the
    // same segment's file at once, and must not interleave in one temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = seg.dir();
    let tmp = dir.join(format!("{FIELDS_FILE}.{n}.tmp"));
    let written = (|| -> Result<()> {
        use std::io::Write;
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(&fields.to_bytes())?;
        f.sync_all()?;
        fs_err::rename(&tmp, dir.join(FIELDS_FILE))?;
        crate::fsutil::sync_dir(dir)
    })();
    if let Err(e) = written {
        tracing::warn!(segment = seg.id, error = %e, "cannot write the field index file; it is rebuilt at the next open");
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Removes temp files of field index writes that a crash interrupted (at open, before any
/// writer of this segment runs).
pub(super) fn remove_stale_field_files(seg: &SealedSegment) {
    let Ok(entries) = std::fs::read_dir(seg.dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&format!("{FIELDS_FILE}.")) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// [`save_fields`] on a background thread (after a seal, which must not wait for it).
pub(super) fn persist_fields(seg: &Arc<SealedSegment>, fields: Arc<FieldIndexes>) {
    let weak: Weak<SealedSegment> = Arc::downgrade(seg);
    let spawned = std::thread::Builder::new()
        .name("quiver-fields".into())
        .spawn(move || {
            if let Some(seg) = weak.upgrade() {
                save_fields(&seg, &fields);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a field index writer; the file is rebuilt at the next open");
    }
}

/// Gives a sealed segment its field indexes for `schema`: read from its file when that holds
/// exactly this schema (at open: no payload is read), else built from its stored payloads on
/// a background thread and written to the file (at open after a schema change, or when
/// fields are declared); filters read payloads until they are ready.
pub(super) fn build_fields(
    seg: &Arc<SealedSegment>,
    schema: &Schema,
    meta: &Arc<dyn MetaStore>,
    uid: u64,
) {
    if schema.is_empty() {
        return;
    }
    if let Some(f) = load_fields(seg, schema) {
        return seg.set_fields(Arc::new(f));
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
                Ok(f) => {
                    save_fields(&seg, &f);
                    seg.set_fields(Arc::new(f));
                }
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

    /// The live rows of every segment that pass `f`.
    pub(super) fn allowed_rows(&self, snap: &Snapshot, f: &Filter) -> Result<Allowed> {
        self.check_filter(f)?;
        // `has_id` conditions: located once, then split by segment.
        let ids = LocatedIds::new(f, |ids| self.locate(snap, ids))?;
        let mut out = Allowed::new();
        for s in &snap.sealed {
            if s.live_count() == 0 {
                continue;
            }
            let payloads = || sealed_payloads(s, self.meta.as_ref(), self.uid);
            let rows = allowed::sealed_rows(s, f, &ids, payloads)?;
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
            let rows = allowed::memory_rows(&m, f, &ids)?;
            if !rows.is_empty() {
                out.insert(m.id, rows);
            }
        }
        Ok(out)
    }
}
