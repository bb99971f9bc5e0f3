//! Sealed segments: write-once directories of memory-mapped files.
//!
//! Directory `segments/{id}/`:
//!
//! | file | layout |
//! |---|---|
//! | `vectors.f32` | 64-byte header (`b"QVEC"`, u32 version, u32 dim, u64 rows, zero padding), then `rows × dim` f32 LE, row-major; the data starts 64-byte aligned |
//! | `ids.bin` | 16-byte header (`b"QIDS"`, u32 version, u64 rows), `rows + 1` u64 LE offsets into the blob, then the blob of [`PointId::encode_into`] keys |
//! | `deleted.roaring` | tombstones at seal time, as a [tombstone file](write_tombstones) |
//! | `manifest.json` | format version, id, dim, rows, and each file's size and CRC32; written last |
//! | `deleted-{lsn}.roaring` | tombstones as of checkpoint `lsn`, written after the seal (each write-once) |
//!
//! The directory is written as `{id}.tmp`, every file fsynced, then renamed to `{id}` and the
//! parent fsynced: a segment directory either is complete or does not exist. Opening verifies
//! every size and checksum; any mismatch is [`Error::Corrupt`].
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use fs_err as fs;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::distance::TopK;
use crate::error::{Error, Result};
use crate::fsutil::sync_dir;
use crate::index::ivf::IvfPqIndex;
use crate::mmap::MappedFile;
use crate::payload_index::FieldIndexes;
use crate::segment::{RowKey, SegmentId, scan_rows};
use crate::types::{Metric, PointId};
use crate::wal::Lsn;

const VEC_MAGIC: &[u8; 4] = b"QVEC";
const IDS_MAGIC: &[u8; 4] = b"QIDS";
const DEL_MAGIC: &[u8; 4] = b"QDEL";
const FORMAT: u32 = 1;
const VEC_HEADER: usize = 64;
const IDS_HEADER: usize = 16;

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Segment id.
    pub segment_id: SegmentId,
    /// Vector dimension.
    pub dim: usize,
    /// Rows (live and dead).
    pub rows: u64,
    /// Every file with its size and CRC32.
    pub files: Vec<FileEntry>,
}

/// One file in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// File name within the segment directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC32 (IEEE) of the content.
    pub crc32: u32,
}

/// A sealed, memory-mapped segment.
#[derive(Debug)]
pub struct SealedSegment {
    /// Segment id.
    pub id: SegmentId,
    dir: PathBuf,
    dim: usize,
    rows: u32,
    vectors: MappedFile,
    ids: MappedFile,
    deleted: RwLock<RoaringBitmap>,
    bytes_on_disk: u64,
    /// The IVF-PQ index once built (or loaded); until then the segment is scanned exactly.
    index: OnceLock<Arc<IvfPqIndex>>,
    /// Indexes of the declared payload fields (rebuilt when the schema changes); until they
    /// cover the schema, filters read payloads.
    fields: RwLock<Option<Arc<FieldIndexes>>>,
}

fn write_file(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<FileEntry> {
    write_file_paced(dir, name, parts, &mut |_| {})
}

/// Writes a file in 1 MiB pieces, reporting each piece to `pace` (which may sleep).
fn write_file_paced(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    pace: &mut dyn FnMut(usize),
) -> Result<FileEntry> {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&path)?);
    let mut crc = crc32fast::Hasher::new();
    let mut bytes = 0u64;
    for p in parts {
        for piece in p.chunks(1 << 20) {
            f.write_all(piece)?;
            crc.update(piece);
            pace(piece.len());
        }
        bytes += p.len() as u64;
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(FileEntry {
        name: name.to_owned(),
        bytes,
        crc32: crc.finalize(),
    })
}

/// Writes a tombstone file: `b"QDEL"`, u32 CRC32 of the bitmap bytes, the portable roaring
/// serialisation. Written to a temp name, fsynced, renamed.
pub fn write_tombstones(dir: &Path, name: &str, deleted: &RoaringBitmap) -> Result<FileEntry> {
    let mut bytes = Vec::with_capacity(deleted.serialized_size());
    deleted.serialize_into(&mut bytes)?;
    let crc = crc32fast::hash(&bytes).to_le_bytes();
    let tmp = format!("{name}.tmp");
    let entry = write_file(dir, &tmp, &[DEL_MAGIC, &crc, &bytes])?;
    fs::rename(dir.join(&tmp), dir.join(name))?;
    sync_dir(dir)?;
    Ok(FileEntry {
        name: name.to_owned(),
        ..entry
    })
}

fn read_tombstones(path: &Path) -> Result<RoaringBitmap> {
    let bytes = fs::read(path)?;
    if bytes.len() < 8 || &bytes[0..4] != DEL_MAGIC {
        return Err(Error::corrupt(path, 0, "not a tombstone file"));
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if crc32fast::hash(&bytes[8..]) != crc {
        return Err(Error::corrupt(path, 8, "tombstone checksum mismatch"));
    }
    RoaringBitmap::deserialize_from(&bytes[8..])
        .map_err(|e| Error::corrupt(path, 8, format!("tombstone bitmap: {e}")))
}

/// The name of the tombstone file current as of checkpoint `lsn` (`None`: the seal-time file).
pub fn tombstone_file_name(lsn: Option<Lsn>) -> String {
    match lsn {
        Some(lsn) => format!("deleted-{lsn}.roaring"),
        None => "deleted.roaring".to_owned(),
    }
}

/// Writes segment `id` under `segments_dir` from rows in memory. Row `r` of the result is row
/// `r` of the input; `deleted` lists the dead rows.
pub fn write_segment(
    segments_dir: &Path,
    id: SegmentId,
    dim: usize,
    vectors: &[f32],
    ids: &[PointId],
    deleted: &RoaringBitmap,
) -> Result<()> {
    write_segment_paced(segments_dir, id, dim, &[vectors], ids, deleted, &mut |_| {})
}

/// [`write_segment`] from the vectors in pieces (runs of rows, e.g. the live rows of other
/// segments' maps, so that a merge copies nothing into memory), reporting the bytes it writes
/// to `pace` as it goes (background work holds its disk traffic to a budget this way).
pub fn write_segment_paced(
    segments_dir: &Path,
    id: SegmentId,
    dim: usize,
    vectors: &[&[f32]],
    ids: &[PointId],
    deleted: &RoaringBitmap,
    pace: &mut dyn FnMut(usize),
) -> Result<()> {
    let rows = ids.len() as u64;
    debug_assert_eq!(
        vectors.iter().map(|v| v.len()).sum::<usize>(),
        ids.len() * dim
    );
    let tmp = segments_dir.join(format!("{id}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;

    let mut vh = [0u8; VEC_HEADER];
    vh[0..4].copy_from_slice(VEC_MAGIC);
    vh[4..8].copy_from_slice(&FORMAT.to_le_bytes());
    vh[8..12].copy_from_slice(&(dim as u32).to_le_bytes());
    vh[12..20].copy_from_slice(&rows.to_le_bytes());
    let mut parts: Vec<&[u8]> = Vec::with_capacity(vectors.len() + 1);
    parts.push(&vh);
    parts.extend(vectors.iter().map(|v| bytemuck::cast_slice::<f32, u8>(v)));
    let vec_entry = write_file_paced(&tmp, "vectors.f32", &parts, pace)?;

    let mut blob = Vec::new();
    let mut offsets = Vec::with_capacity(ids.len() + 1);
    for id in ids {
        offsets.push(blob.len() as u64);
        id.encode_into(&mut blob);
    }
    offsets.push(blob.len() as u64);
    let mut ih = [0u8; IDS_HEADER];
    ih[0..4].copy_from_slice(IDS_MAGIC);
    ih[4..8].copy_from_slice(&FORMAT.to_le_bytes());
    ih[8..16].copy_from_slice(&rows.to_le_bytes());
    let offset_bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    let ids_entry = write_file_paced(&tmp, "ids.bin", &[&ih, &offset_bytes, &blob], pace)?;

    let del_entry = write_tombstones(&tmp, &tombstone_file_name(None), deleted)?;
    let manifest = Manifest {
        format: FORMAT,
        segment_id: id,
        dim,
        rows,
        files: vec![vec_entry, ids_entry, del_entry],
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    write_file(&tmp, "manifest.json", &[&json])?;
    sync_dir(&tmp)?;
    let dst = segments_dir.join(id.to_string());
    if dst.exists() {
        // Left by an earlier attempt whose checkpoint did not commit: not referenced by anyone.
        fs::remove_dir_all(&dst)?;
    }
    fs::rename(&tmp, &dst)?;
    sync_dir(segments_dir)?;
    Ok(())
}

impl SealedSegment {
    /// Opens segment `id` in `segments_dir`, verifying the manifest's sizes and checksums, with
    /// the tombstones current as of checkpoint `tombstones` (`None`: those written at seal).
    pub fn open(
        segments_dir: &Path,
        id: SegmentId,
        dim: usize,
        tombstones: Option<Lsn>,
    ) -> Result<SealedSegment> {
        let dir = segments_dir.join(id.to_string());
        let mpath = dir.join("manifest.json");
        let manifest: Manifest = serde_json::from_slice(&fs::read(&mpath)?)
            .map_err(|e| Error::corrupt(&mpath, e.column() as u64, format!("manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.segment_id != id || manifest.dim != dim {
            return Err(Error::corrupt(
                &mpath,
                0,
                format!(
                    "manifest says format {} segment {} dim {}, expected format {FORMAT} segment {id} dim {dim}",
                    manifest.format, manifest.segment_id, manifest.dim
                ),
            ));
        }
        let rows =
            u32::try_from(manifest.rows).map_err(|_| Error::corrupt(&mpath, 0, "too many rows"))?;
        let mut maps = Vec::new();
        let mut bytes_on_disk = 0;
        for name in ["vectors.f32", "ids.bin"] {
            let entry = manifest
                .files
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| {
                    Error::corrupt(&mpath, 0, format!("manifest does not list {name}"))
                })?;
            let map = MappedFile::open(&dir.join(name))?;
            if map.bytes().len() as u64 != entry.bytes {
                return Err(Error::corrupt(
                    map.path(),
                    0,
                    format!(
                        "size {} differs from the manifest's {}",
                        map.bytes().len(),
                        entry.bytes
                    ),
                ));
            }
            if crc32fast::hash(map.bytes()) != entry.crc32 {
                return Err(Error::corrupt(
                    map.path(),
                    0,
                    "checksum differs from the manifest",
                ));
            }
            bytes_on_disk += entry.bytes;
            maps.push(map);
        }
        let ids = maps.pop().expect("invariant: two maps");
        let vectors = maps.pop().expect("invariant: two maps");
        let vb = vectors.bytes();
        if vb.len() != VEC_HEADER + rows as usize * dim * 4 || &vb[0..4] != VEC_MAGIC {
            return Err(Error::corrupt(
                vectors.path(),
                0,
                "vector file header or length is wrong",
            ));
        }
        let ib = ids.bytes();
        let min_ids = IDS_HEADER + (rows as usize + 1) * 8;
        if ib.len() < min_ids || &ib[0..4] != IDS_MAGIC {
            return Err(Error::corrupt(
                ids.path(),
                0,
                "ids file header or length is wrong",
            ));
        }
        let del_path = dir.join(tombstone_file_name(tombstones));
        let deleted = read_tombstones(&del_path)?;
        if deleted.max().is_some_and(|m| m >= rows) {
            return Err(Error::corrupt(
                &del_path,
                0,
                "tombstone beyond the last row",
            ));
        }
        let seg = SealedSegment {
            id,
            dir,
            dim,
            rows,
            vectors,
            ids,
            deleted: RwLock::new(deleted),
            bytes_on_disk,
            index: OnceLock::new(),
            fields: RwLock::new(None),
        };
        // Validate every id offset once, so later reads cannot go out of bounds.
        for row in 0..rows {
            if seg.try_id(row).is_none() {
                return Err(Error::corrupt(
                    seg.ids.path(),
                    0,
                    format!("id of row {row} is malformed"),
                ));
            }
        }
        Ok(seg)
    }

    /// The segment's index, if built.
    pub fn index(&self) -> Option<&Arc<IvfPqIndex>> {
        self.index.get()
    }

    /// The payload field indexes, if built.
    pub fn fields(&self) -> Option<Arc<FieldIndexes>> {
        self.fields
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes payload field indexes (replacing older ones).
    pub fn set_fields(&self, fields: Arc<FieldIndexes>) {
        *self.fields.write().unwrap_or_else(|p| p.into_inner()) = Some(fields);
    }

    /// Publishes a built index (the first one wins). From then on searches read the rows
    /// they re-rank (and their ids) at random, so the maps' read-ahead is turned off (see
    /// [`MappedFile::advise_random`]); an unindexed segment is scanned whole and keeps it.
    pub fn set_index(&self, index: Arc<IvfPqIndex>) {
        if self.index.set(index).is_ok() {
            self.vectors.advise_random();
            self.ids.advise_random();
        }
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// A read guard on the tombstones, held across an index scan.
    pub fn deleted_guard(&self) -> std::sync::RwLockReadGuard<'_, RoaringBitmap> {
        self.read_deleted()
    }

    /// Rows (live and dead).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Live rows.
    pub fn live_count(&self) -> u64 {
        u64::from(self.rows) - self.read_deleted().len()
    }

    /// The segment directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of the vector, id and index files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.bytes_on_disk + self.index().map_or(0, |i| i.bytes())
    }

    fn read_deleted(&self) -> std::sync::RwLockReadGuard<'_, RoaringBitmap> {
        self.deleted.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Tombstones `row`; returns whether it was live.
    pub fn delete(&self, row: u32) -> bool {
        self.deleted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row)
    }

    /// A copy of the tombstones.
    pub fn tombstones(&self) -> RoaringBitmap {
        self.read_deleted().clone()
    }

    /// Whether `row` is live.
    pub fn is_live(&self, row: u32) -> bool {
        row < self.rows && !self.read_deleted().contains(row)
    }

    /// All vectors, row-major.
    pub fn vectors(&self) -> &[f32] {
        let bytes = &self.vectors.bytes()[VEC_HEADER..];
        // The map is page-aligned and the header is 64 bytes, so this cast cannot fail.
        bytemuck::cast_slice(bytes)
    }

    /// The vector of `row`.
    pub fn vector(&self, row: u32) -> &[f32] {
        let s = row as usize * self.dim;
        &self.vectors()[s..s + self.dim]
    }

    fn try_id(&self, row: u32) -> Option<PointId> {
        let b = self.ids.bytes();
        let off = |i: usize| -> Option<usize> {
            let s = IDS_HEADER + i * 8;
            Some(u64::from_le_bytes(b.get(s..s + 8)?.try_into().ok()?) as usize)
        };
        let blob = IDS_HEADER + (self.rows as usize + 1) * 8;
        let (start, end) = (off(row as usize)?, off(row as usize + 1)?);
        PointId::decode(b.get(blob + start..blob + end)?)
    }

    /// The id of `row` (validated at open).
    pub fn id(&self, row: u32) -> PointId {
        self.try_id(row).expect("invariant: ids validated at open")
    }

    /// Exact scan for a group of queries, one top-k each, skipping tombstoned rows.
    pub fn scan(&self, metric: Metric, queries: &[Vec<f32>], tops: &mut [TopK<RowKey>]) {
        let deleted = self.read_deleted();
        scan_rows(
            metric,
            queries,
            self.vectors(),
            self.dim,
            self.id,
            tops,
            |row| deleted.contains(row),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_open_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 3;
        let ids: Vec<PointId> = (0..10u64)
            .map(|i| {
                if i % 2 == 0 {
                    PointId::Num(i)
                } else {
                    PointId::Str(format!("k{i}"))
                }
            })
            .collect();
        let vectors: Vec<f32> = (0..30).map(|i| i as f32).collect();
        let mut deleted = RoaringBitmap::new();
        deleted.insert(4);
        write_segment(dir.path(), 7, dim, &vectors, &ids, &deleted).unwrap();
        let seg = SealedSegment::open(dir.path(), 7, dim, None).unwrap();
        assert_eq!(seg.rows(), 10);
        assert_eq!(seg.live_count(), 9);
        assert_eq!(seg.vector(2), &[6.0, 7.0, 8.0]);
        for (r, id) in ids.iter().enumerate() {
            assert_eq!(&seg.id(r as u32), id);
        }
        assert!(!seg.is_live(4));
        assert_eq!(
            seg.vectors().as_ptr() as usize % 64,
            0,
            "vectors must be 64-byte aligned"
        );
        // A newer tombstone generation.
        assert!(seg.delete(5));
        write_tombstones(seg.dir(), &tombstone_file_name(Some(42)), &seg.tombstones()).unwrap();
        drop(seg);
        let seg = SealedSegment::open(dir.path(), 7, dim, Some(42)).unwrap();
        assert_eq!(seg.live_count(), 8);
        drop(seg);
        // Flip one byte of the vectors: the checksum catches it.
        let p = dir.path().join("7/vectors.f32");
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(
            SealedSegment::open(dir.path(), 7, dim, None),
            Err(Error::Corrupt { .. })
        ));
    }
}
