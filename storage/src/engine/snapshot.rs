//! A point-in-time copy of the whole engine ([`Engine::export`]), packed into one checksummed
//! archive ([`pack`], [`unpack`]) and loaded in place of a node's data ([`Engine::import`]):
//! what a Raft snapshot is made of, so a new or wiped replica catches up without replaying
//! the world.
//!
//! An export directory holds:
//!
//! | path | what |
//! |---|---|
//! | `engine.json` | [`ExportInfo`] |
//! | `meta.ckpt/` | a RocksDB checkpoint (hard links), replaced by `meta.kv` when packed |
//! | `meta.kv` | catalog, id map and payload key-values: `u8 space, u32 key len, key, u32 value len, value` |
//! | `collections/{uid}/segments/{id}/…` | hard links to the sealed segment files |
//!
//! Every collection is checkpointed first, so sealed files plus metadata are its whole state:
//! no WAL travels.
//!
//! Archive format: `b"QSNAPv1\n"`, then per file `u16` path length, the relative `/`-separated
//! path, `u64` length, the bytes, `u32` CRC32 of the bytes; then a `u16` 0 and the `u64` file
//! count. [`unpack`] rejects absolute paths, `..`, bad checksums and a missing end, before
//! anything touches live data.
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::{Engine, open_catalog};
use crate::error::{Error, Result};
use crate::meta::keys::{CATALOG_SEQ, IMPORT_PENDING, catalog_key, point_key};
use crate::meta::{MetaOp, MetaStore, Space};

const MAGIC: &[u8; 8] = b"QSNAPv1\n";
/// Spaces exported whole, by tag.
const SPACES: [(u8, Space); 3] = [(1, Space::Catalog), (2, Space::Ids), (3, Space::Payloads)];
/// Tag of the replicated part of the `app` space (keys under [`REPLICATED_PREFIX`]).
const APP_TAG: u8 = 4;

/// Keys of the `app` space under this prefix are replicated service records (e.g. API keys):
/// exported and imported with the engine's data. The rest of `app` is node-local.
pub const REPLICATED_PREFIX: &str = "repl/";

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// What an export holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportInfo {
    /// The exporting engine's [`Engine::catalog_seq`].
    pub catalog_seq: u64,
    /// Collections: name → uid.
    pub collections: BTreeMap<String, u64>,
}

fn link_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".tmp") {
            continue; // a file still being written (an index build); the importer rebuilds it
        }
        if entry.file_type()?.is_dir() {
            link_dir(&entry.path(), &to.join(&name))?;
        } else {
            fs::hard_link(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

impl Engine {
    /// Checkpoints every collection and writes a consistent copy of the engine's data to `dir`
    /// (created; must not exist): a metadata checkpoint and hard links to the sealed files.
    /// Cheap in time and space; writes applied after it returns are not in it. Catalog changes
    /// and checkpoints wait while it runs.
    pub fn export(&self, dir: &Path) -> Result<ExportInfo> {
        if dir.exists() {
            return Err(Error::invalid(
                "export",
                format!("{} already exists", dir.display()),
            ));
        }
        fs::create_dir_all(dir.join("collections"))?;
        let _catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        // Restores' hidden copies too: the catalog checkpoint names them.
        let cols = self.list_all();
        let mut guards: Vec<_> = cols.iter().map(|c| c.seal_lock()).collect();
        for (c, g) in cols.iter().zip(guards.iter_mut()) {
            c.seal_with(g, true)?;
        }
        self.meta.checkpoint(&dir.join("meta.ckpt"))?;
        let mut collections = BTreeMap::new();
        for c in &cols {
            let to = dir.join("collections").join(c.uid().to_string());
            fs::create_dir_all(to.join("segments"))?;
            for s in c.segment_records() {
                let id = s.id.to_string();
                link_dir(
                    &c.dir().join("segments").join(&id),
                    &to.join("segments").join(&id),
                )?;
            }
            collections.insert(c.config().name.clone(), c.uid());
        }
        drop(guards);
        let info = ExportInfo {
            catalog_seq: self.catalog_seq(),
            collections,
        };
        fs::write(
            dir.join("engine.json"),
            serde_json::to_vec(&info).map_err(|e| Error::invalid("export", e.to_string()))?,
        )?;
        Ok(info)
    }

    /// Replaces every collection with the content of an unpacked export in `dir` (consumed:
    /// its files are moved in). Crash-safe by redo: until it completes, a marker makes
    /// [`Engine::open`] open no collection and report [`Engine::import_pending`].
    pub fn import(&self, dir: &Path) -> Result<ExportInfo> {
        let info: ExportInfo = serde_json::from_slice(&fs::read(dir.join("engine.json"))?)
            .map_err(|e| Error::corrupt(dir.join("engine.json"), 0, e.to_string()))?;
        let kv = dir.join("meta.kv");
        if !kv.exists() {
            return Err(Error::corrupt(&kv, 0, "missing (was the export packed?)"));
        }
        let _catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        self.meta.write(vec![MetaOp::Put(
            Space::Catalog,
            IMPORT_PENDING.to_vec(),
            vec![1],
        )])?;
        self.import_pending.store(true, Ordering::Release);
        let old = std::mem::take(&mut *self.write());
        for c in old.values() {
            c.mark_dropped();
        }
        let cols = self.root.join("collections");
        for entry in fs::read_dir(&cols)? {
            crate::fsutil::remove_dir_all(&entry?.path())?;
        }
        let all = (Vec::new(), vec![0xff; 16]);
        let repl = REPLICATED_PREFIX.as_bytes();
        self.meta.write(
            SPACES
                .iter()
                .map(|(_, s)| MetaOp::DeleteRange(*s, all.0.clone(), all.1.clone()))
                .chain([
                    MetaOp::DeleteRange(Space::App, repl.to_vec(), prefix_end(repl)),
                    MetaOp::Put(Space::Catalog, IMPORT_PENDING.to_vec(), vec![1]),
                ])
                .collect(),
        )?;
        read_kv(&kv, |batch| self.meta.write_opt(batch, false))?;
        for (name, uid) in &info.collections {
            let from = dir.join("collections").join(uid.to_string());
            if !from.is_dir() {
                return Err(Error::corrupt(
                    &from,
                    0,
                    format!("collection {name} has no files in the export"),
                ));
            }
            fs::rename(&from, cols.join(uid.to_string()))?;
        }
        crate::fsutil::sync_dir(&cols)?;
        // Opened (which gives every imported collection its WAL) before the import is marked
        // done: from then on a collection without a WAL file has lost its log.
        let opened = open_catalog(&self.meta, &self.root, self.options.fsync, true)?;
        self.meta.write(vec![
            MetaOp::Delete(Space::Catalog, IMPORT_PENDING.to_vec()),
            MetaOp::Put(
                Space::Catalog,
                CATALOG_SEQ.to_vec(),
                info.catalog_seq.to_le_bytes().to_vec(),
            ),
        ])?;
        *self.write() = opened;
        self.catalog_seq.store(info.catalog_seq, Ordering::Release);
        self.import_pending.store(false, Ordering::Release);
        tracing::info!(
            collections = info.collections.len(),
            catalog_seq = info.catalog_seq,
            "import complete"
        );
        Ok(info)
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> Error {
    Error::corrupt(path, 0, what.into())
}

/// Reads `meta.kv`, handing `f` batches of puts.
fn read_kv(path: &Path, mut f: impl FnMut(Vec<MetaOp>) -> Result<()>) -> Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, fs::File::open(path)?);
    let mut batch = Vec::new();
    let mut space = [0u8; 1];
    loop {
        match r.read(&mut space)? {
            0 => break,
            _ => {
                let sp = SPACES
                    .iter()
                    .find(|(t, _)| *t == space[0])
                    .map(|(_, s)| *s)
                    .or((space[0] == APP_TAG).then_some(Space::App))
                    .ok_or_else(|| corrupt(path, format!("unknown space tag {}", space[0])))?;
                let k = read_bytes(&mut r, path)?;
                let v = read_bytes(&mut r, path)?;
                batch.push(MetaOp::Put(sp, k, v));
                if batch.len() >= 50_000 {
                    f(std::mem::take(&mut batch))?;
                }
            }
        }
    }
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(())
}

fn read_bytes(r: &mut impl Read, path: &Path) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| corrupt(path, "truncated length"))?;
    let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut v)
        .map_err(|_| corrupt(path, "truncated record"))?;
    Ok(v)
}

/// Turns the metadata checkpoint of an export into `meta.kv` (only the engine's own spaces).
fn write_kv(dir: &Path) -> Result<()> {
    let ckpt = dir.join("meta.ckpt");
    if !ckpt.exists() {
        return Ok(());
    }
    let store: Arc<dyn MetaStore> = crate::meta::open_default(&ckpt)?;
    let mut w = BufWriter::with_capacity(1 << 20, fs::File::create(dir.join("meta.kv"))?);
    let app = [(APP_TAG, Space::App)];
    for (tag, space) in SPACES.iter().chain(app.iter()).copied() {
        let prefix: &[u8] = if space == Space::App {
            REPLICATED_PREFIX.as_bytes()
        } else {
            b""
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan_page(space, prefix, after.as_deref(), 10_000, false)?;
            for (k, v) in &page {
                if space == Space::Catalog && k.as_slice() == IMPORT_PENDING {
                    continue;
                }
                w.write_all(&[tag])?;
                for b in [k, v] {
                    w.write_all(&(b.len() as u32).to_le_bytes())?;
                    w.write_all(b)?;
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == 10_000 => after = Some(k.clone()),
                _ => break,
            }
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    drop(store);
    fs::remove_dir_all(&ckpt)?;
    Ok(())
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            files_under(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .map_err(|_| corrupt(&path, "outside the export"))?;
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((rel.join("/"), path));
        }
    }
    Ok(())
}

const CHECKSUMS: &str = "checksums.json";

fn crc_file(path: &Path) -> Result<u32> {
    let mut f = BufReader::with_capacity(1 << 20, fs::File::open(path)?);
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Finishes an export kept as a directory (a stored snapshot): converts the metadata
/// checkpoint and records a CRC32 of every file, so [`verify_export`] can prove it intact.
/// Returns the bytes it references (sealed files are hard links, shared with the live data and
/// with other snapshots that hold the same segments).
pub fn seal_export(dir: &Path) -> Result<u64> {
    write_kv(dir)?;
    let mut files = Vec::new();
    files_under(dir, dir, &mut files)?;
    let mut sums = BTreeMap::new();
    let mut bytes = 0;
    for (rel, path) in &files {
        bytes += fs::metadata(path)?.len();
        sums.insert(rel.clone(), crc_file(path)?);
    }
    fs::write(
        dir.join(CHECKSUMS),
        serde_json::to_vec(&sums).map_err(|e| Error::invalid("snapshot", e.to_string()))?,
    )?;
    Ok(bytes)
}

/// Checks every file of a sealed export against its recorded checksum (and that none is
/// missing or added) before anything is restored from it.
pub fn verify_export(dir: &Path) -> Result<()> {
    let path = dir.join(CHECKSUMS);
    let sums: BTreeMap<String, u32> =
        serde_json::from_slice(&fs::read(&path)?).map_err(|e| corrupt(&path, e.to_string()))?;
    let mut files = Vec::new();
    files_under(dir, dir, &mut files)?;
    let mut seen = 0;
    for (rel, p) in &files {
        // The checksum list itself, and descriptive files added after sealing.
        if rel == CHECKSUMS || rel == "info.json" {
            continue;
        }
        let want = sums
            .get(rel)
            .ok_or_else(|| corrupt(p, "file not in the snapshot's checksums"))?;
        if crc_file(p)? != *want {
            return Err(corrupt(p, "checksum mismatch"));
        }
        seen += 1;
    }
    if seen != sums.len() {
        return Err(corrupt(&path, "files of the snapshot are missing"));
    }
    Ok(())
}

/// Packs the export in `dir` into one archive file at `out` (synced); returns its size.
pub fn pack(dir: &Path, out: &Path) -> Result<u64> {
    write_kv(dir)?;
    let mut files = Vec::new();
    files_under(dir, dir, &mut files)?;
    let mut w = BufWriter::with_capacity(1 << 20, fs::File::create(out)?);
    w.write_all(MAGIC)?;
    let mut buf = vec![0u8; 1 << 20];
    for (rel, path) in &files {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        w.write_all(&(rel.len() as u16).to_le_bytes())?;
        w.write_all(rel.as_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        let mut crc = crc32fast::Hasher::new();
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                return Err(corrupt(path, "file shrank while packing"));
            }
            crc.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.write_all(&crc.finalize().to_le_bytes())?;
    }
    w.write_all(&0u16.to_le_bytes())?;
    w.write_all(&(files.len() as u64).to_le_bytes())?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(f.metadata()?.len())
}

/// A relative archive path made only of normal components.
fn safe_path(rel: &str, archive: &Path) -> Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(corrupt(archive, format!("unsafe path {rel:?} in archive")));
    }
    Ok(p.to_path_buf())
}

/// Unpacks an archive made by [`pack`] into `dir` (created; must not exist), verifying every
/// checksum and the end marker.
pub fn unpack(archive: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        return Err(Error::invalid(
            "unpack",
            format!("{} already exists", dir.display()),
        ));
    }
    let mut r = BufReader::with_capacity(1 << 20, fs::File::open(archive)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| corrupt(archive, "truncated header"))?;
    if &magic != MAGIC {
        return Err(corrupt(archive, "not a Quiver snapshot archive"));
    }
    fs::create_dir_all(dir)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut count = 0u64;
    loop {
        let mut l = [0u8; 2];
        r.read_exact(&mut l)
            .map_err(|_| corrupt(archive, "truncated (no end marker)"))?;
        let plen = u16::from_le_bytes(l) as usize;
        if plen == 0 {
            let mut n = [0u8; 8];
            r.read_exact(&mut n)
                .map_err(|_| corrupt(archive, "truncated end marker"))?;
            if u64::from_le_bytes(n) != count {
                return Err(corrupt(archive, "file count mismatch"));
            }
            return Ok(());
        }
        let mut rel = vec![0u8; plen];
        r.read_exact(&mut rel)
            .map_err(|_| corrupt(archive, "truncated path"))?;
        let rel = String::from_utf8(rel).map_err(|_| corrupt(archive, "path is not UTF-8"))?;
        let path = dir.join(safe_path(&rel, archive)?);
        let mut n = [0u8; 8];
        r.read_exact(&mut n)
            .map_err(|_| corrupt(archive, format!("{rel}: truncated length")))?;
        let mut left = u64::from_le_bytes(n);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut w = BufWriter::new(fs::File::create(&path)?);
        let mut crc = crc32fast::Hasher::new();
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..want])
                .map_err(|_| corrupt(archive, format!("{rel}: truncated")))?;
            crc.update(&buf[..want]);
            w.write_all(&buf[..want])?;
            left -= want as u64;
        }
        let mut c = [0u8; 4];
        r.read_exact(&mut c)
            .map_err(|_| corrupt(archive, format!("{rel}: truncated checksum")))?;
        if u32::from_le_bytes(c) != crc.finalize() {
            return Err(corrupt(archive, format!("{rel}: checksum mismatch")));
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        count += 1;
    }
}

/// A page of an exported collection's points and the cursor of the next page.
pub type ExportPage = (Vec<crate::types::PointWrite>, Option<(usize, u32)>);

/// One collection of a sealed export (a snapshot), read page by page without touching the
/// live engine: what restoring a single collection (under its name or another) is built on.
/// Its id map and payloads are loaded into a scratch metadata store, so memory stays flat
/// whatever the collection's size.
#[derive(Debug)]
pub struct ExportedCollection {
    record: crate::collection::CollectionRecord,
    segments: Vec<crate::segment::sealed::SealedSegment>,
    meta: Arc<dyn MetaStore>,
}

impl ExportedCollection {
    /// Opens collection `name` of the export in `dir`, using `scratch` (created, and left for
    /// the caller to remove) for its metadata. Call [`verify_export`] first.
    pub fn open(dir: &Path, name: &str, scratch: &Path) -> Result<ExportedCollection> {
        let info: ExportInfo = serde_json::from_slice(&fs::read(dir.join("engine.json"))?)
            .map_err(|e| Error::corrupt(dir.join("engine.json"), 0, e.to_string()))?;
        let uid = *info
            .collections
            .get(name)
            .ok_or_else(|| Error::CollectionNotFound {
                name: name.to_owned(),
            })?;
        let meta = crate::meta::open_default(&scratch.join("meta"))?;
        let prefix = uid.to_be_bytes();
        let catalog = catalog_key(name);
        read_kv(&dir.join("meta.kv"), |batch| {
            let mine: Vec<MetaOp> = batch
                .into_iter()
                .filter(|op| match op {
                    MetaOp::Put(Space::Ids | Space::Payloads, k, _) => k.starts_with(&prefix),
                    MetaOp::Put(Space::Catalog, k, _) => *k == catalog,
                    MetaOp::Put(..) | MetaOp::Delete(..) | MetaOp::DeleteRange(..) => false,
                })
                .collect();
            meta.write_opt(mine, false)
        })?;
        let raw = meta
            .get(Space::Catalog, &catalog)?
            .ok_or_else(|| Error::corrupt(dir.join("meta.kv"), 0, "no catalog record"))?;
        let record: crate::collection::CollectionRecord = serde_json::from_slice(&raw)
            .map_err(|e| Error::corrupt(dir.join("meta.kv"), 0, e.to_string()))?;
        let seg_dir = dir
            .join("collections")
            .join(uid.to_string())
            .join("segments");
        let segments = record
            .segments
            .iter()
            .map(|s| {
                crate::segment::sealed::SealedSegment::open(
                    &seg_dir,
                    s.id,
                    record.config.dim,
                    s.tombstones,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ExportedCollection {
            record,
            segments,
            meta,
        })
    }

    /// The collection's configuration (name, dimension, metric, index, schema, labels).
    pub fn config(&self) -> &crate::types::CollectionConfig {
        &self.record.config
    }

    /// Live points.
    pub fn points(&self) -> u64 {
        self.segments.iter().map(|s| s.live_count()).sum()
    }

    /// Up to `limit` live points from `cursor` (segment index, row) with vectors and payloads,
    /// and the cursor of the next page (`None` when done).
    pub fn page(&self, cursor: (usize, u32), limit: usize) -> Result<ExportPage> {
        let (mut seg, mut row) = cursor;
        let mut rows = Vec::with_capacity(limit);
        while let Some(s) = self.segments.get(seg) {
            if row >= s.rows() {
                (seg, row) = (seg + 1, 0);
                continue;
            }
            if rows.len() == limit {
                break;
            }
            if s.is_live(row) {
                rows.push((s, row));
            }
            row += 1;
        }
        let next = (seg < self.segments.len()).then_some((seg, row));
        let ids: Vec<crate::types::PointId> = rows.iter().map(|(s, r)| s.id(*r)).collect();
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| point_key(self.record.uid, id))
            .collect();
        let payloads = self.meta.multi_get(Space::Payloads, &keys)?;
        let points = rows
            .into_iter()
            .zip(ids)
            .zip(payloads)
            .map(|(((s, r), id), payload)| crate::types::PointWrite {
                id,
                vector: s.vector(r).to_vec(),
                payload,
            })
            .collect();
        Ok((points, next))
    }
}
