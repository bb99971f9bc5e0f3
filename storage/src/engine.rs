//! The engine: opens the data directory, owns the metadata store and every collection.
//!
//! Data directory layout:
//!
//! | path | what |
//! |---|---|
//! | `meta/` | RocksDB: catalog, id map, payloads (see [`crate::meta`]) |
//! | `collections/{uid}/wal/` | the collection's WAL files |
//! | `collections/{uid}/segments/{id}/` | sealed segments |
//!
//! Directories are named by numeric uid, never by the user's collection name, so no name can
//! reach outside the data directory, and a dropped-then-recreated name never sees old files.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fs_err as fs;

use crate::collection::{Collection, CollectionRecord, encode_record};
use crate::error::{Error, Result};
use crate::meta::keys::{
    CATALOG_PREFIX, CATALOG_SEQ, IMPORT_PENDING, NEXT_UID, catalog_key, collection_range,
};
use crate::meta::{self, MetaOp, MetaStore, Space};
use crate::types::{CollectionConfig, is_staging_name, validate_collection_name};
use crate::wal::FsyncPolicy;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// When WAL appends are fsynced.
    pub fsync: FsyncPolicy,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            fsync: FsyncPolicy::PerBatch,
        }
    }
}

/// The storage engine.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    meta: Arc<dyn MetaStore>,
    options: EngineOptions,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Serialises catalog changes (create, drop).
    catalog: Mutex<()>,
    /// The sequence number (Raft log index) of the last catalog change applied.
    catalog_seq: AtomicU64,
    /// An import was interrupted: the data is partial and must be imported again.
    import_pending: AtomicBool,
    /// Serialises record mutations ([`crate::mutation`]).
    pub(crate) records: Mutex<()>,
}

fn read_u64(meta: &dyn MetaStore, root: &Path, key: &[u8]) -> Result<Option<u64>> {
    match meta.get(Space::Catalog, key)? {
        Some(v) => Ok(Some(u64::from_le_bytes(v.as_slice().try_into().map_err(
            |_| {
                Error::corrupt(
                    root.join("meta"),
                    0,
                    format!("{} is malformed", String::from_utf8_lossy(key)),
                )
            },
        )?))),
        None => Ok(None),
    }
}

/// Opens every collection of the catalog and removes collection directories it does not list.
/// `fresh`: the directories were just imported (they have no WAL yet).
fn open_catalog(
    meta: &Arc<dyn MetaStore>,
    root: &Path,
    fsync: FsyncPolicy,
    fresh: bool,
) -> Result<BTreeMap<String, Arc<Collection>>> {
    let mut collections = BTreeMap::new();
    let mut known = std::collections::HashSet::new();
    for (key, value) in meta.scan_prefix(Space::Catalog, CATALOG_PREFIX)? {
        let record: CollectionRecord = serde_json::from_slice(&value).map_err(|e| {
            Error::corrupt(
                root.join("meta"),
                0,
                format!("catalog entry {}: {e}", String::from_utf8_lossy(&key)),
            )
        })?;
        known.insert(record.uid.to_string());
        let name = record.config.name.clone();
        let dir = root.join("collections").join(record.uid.to_string());
        let c = Collection::open(record, dir, Arc::clone(meta), fsync, fresh)?;
        collections.insert(name, Arc::new(c));
    }
    for entry in fs::read_dir(root.join("collections"))? {
        let entry = entry?;
        if !known.contains(&*entry.file_name().to_string_lossy()) {
            tracing::warn!(dir = %entry.path().display(), "removing collection directory not in the catalog (interrupted create or drop)");
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(collections)
}

impl Engine {
    /// Opens (or initialises) the data directory and every collection in it, replaying WALs.
    pub fn open(root: &Path, options: EngineOptions) -> Result<Engine> {
        fs::create_dir_all(root.join("collections"))?;
        let meta = meta::open_default(&root.join("meta"))?;
        let import_pending = meta.get(Space::Catalog, IMPORT_PENDING)?.is_some();
        let collections = if import_pending {
            tracing::warn!("an import was interrupted: no collection is opened until it is redone");
            BTreeMap::new()
        } else {
            open_catalog(&meta, root, options.fsync, false)?
        };
        let catalog_seq = read_u64(meta.as_ref(), root, CATALOG_SEQ)?.unwrap_or(0);
        Ok(Engine {
            root: root.to_path_buf(),
            meta,
            options,
            collections: RwLock::new(collections),
            catalog: Mutex::new(()),
            catalog_seq: AtomicU64::new(catalog_seq),
            import_pending: AtomicBool::new(import_pending),
            records: Mutex::new(()),
        })
    }

    /// The keyspaces kept for services above the engine.
    pub fn aux(&self) -> AuxStore {
        AuxStore {
            meta: Arc::clone(&self.meta),
        }
    }

    /// The sequence number (Raft log index) of the last catalog change (create, drop) applied:
    /// a replicated catalog change at or below it is already in.
    pub fn catalog_seq(&self) -> u64 {
        self.catalog_seq.load(Ordering::Acquire)
    }

    /// An [`Engine::import`] was interrupted: the engine holds no collection until an import
    /// completes.
    pub fn import_pending(&self) -> bool {
        self.import_pending.load(Ordering::Acquire)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a collection.
    pub fn create_collection(&self, config: CollectionConfig) -> Result<Arc<Collection>> {
        self.create_collection_seq(config, 0)
    }

    /// [`Engine::create_collection`] stamped with sequence number `seq` (a Raft log index;
    /// 0 = none), recorded atomically with the catalog change.
    #[tracing::instrument(skip_all, fields(collection = %config.name))]
    pub fn create_collection_seq(
        &self,
        config: CollectionConfig,
        seq: u64,
    ) -> Result<Arc<Collection>> {
        config.validate()?;
        let _guard = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if self.read().contains_key(&config.name) {
            return Err(Error::CollectionExists { name: config.name });
        }
        let uid = read_u64(self.meta.as_ref(), &self.root, NEXT_UID)?.unwrap_or(1);
        let dir = self.root.join("collections").join(uid.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        // The new directory's entry must be durable before the catalog names it.
        crate::fsutil::sync_dir(&self.root.join("collections"))?;
        let record = CollectionRecord {
            uid,
            config: config.clone(),
            checkpoint_lsn: 0,
            next_segment_id: 1,
            segments: Vec::new(),
            applied_seq: seq,
        };
        let mut ops = vec![
            MetaOp::Put(
                Space::Catalog,
                NEXT_UID.to_vec(),
                (uid + 1).to_le_bytes().to_vec(),
            ),
            MetaOp::Put(
                Space::Catalog,
                catalog_key(&config.name),
                encode_record(&record)?,
            ),
        ];
        ops.extend(self.seq_op(seq));
        self.meta.write(ops)?;
        self.note_seq(seq);
        let c = Arc::new(Collection::open(
            record,
            dir,
            Arc::clone(&self.meta),
            self.options.fsync,
            true,
        )?);
        self.write().insert(config.name, Arc::clone(&c));
        Ok(c)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Collection>>> {
        self.collections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Collection>>> {
        self.collections.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The collection called `name`. A restore's hidden collection (see
    /// [`Engine::replace_collection_seq`]) is not found under its name.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        if is_staging_name(name) {
            return Err(Error::CollectionNotFound {
                name: name.to_owned(),
            });
        }
        self.collection_or_staging(name)
    }

    /// [`Engine::collection`], and a restore's hidden collection too: for applying the writes
    /// that build it.
    pub fn collection_or_staging(&self, name: &str) -> Result<Arc<Collection>> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::CollectionNotFound {
                name: name.to_owned(),
            })
    }

    /// What the metadata store holds in memory.
    pub fn meta_memory(&self) -> meta::MetaMemory {
        self.meta.memory()
    }

    /// Every collection, by name, without restores' hidden ones.
    pub fn list(&self) -> Vec<Arc<Collection>> {
        self.read()
            .iter()
            .filter(|(name, _)| !is_staging_name(name))
            .map(|(_, c)| Arc::clone(c))
            .collect()
    }

    /// Every collection, with restores' hidden ones: what syncs, exports and Raft snapshots
    /// must cover.
    pub fn list_all(&self) -> Vec<Arc<Collection>> {
        self.read().values().cloned().collect()
    }

    /// Swaps the collection `staging` (a restore's hidden copy, complete) in as `target`, in
    /// one catalog commit: `target`'s old data (if any) is dropped and `staging` is renamed.
    /// A crash before the commit leaves `target` untouched; after it, the copy is `target`.
    /// Readers that hold the old collection finish on its memory maps.
    #[tracing::instrument(skip_all, fields(collection = %target))]
    pub fn replace_collection_seq(
        &self,
        staging: &str,
        target: &str,
        seq: u64,
    ) -> Result<Arc<Collection>> {
        if !is_staging_name(staging) {
            return Err(Error::invalid(
                "staging",
                format!("{staging} is not a restore's hidden collection"),
            ));
        }
        validate_collection_name(target)?;
        let _guard = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let src = self.collection_or_staging(staging)?;
        let old = self.read().get(target).cloned();
        // Both seal locks (catalog → seal → writer, as export takes them): no checkpoint,
        // compaction or label change of either writes its catalog entry from here on.
        let mut src_seal = src.seal_lock();
        let old_seal = old.as_ref().map(|o| o.seal_lock());
        // Everything sealed: the reopened copy maps segments and replays an empty log.
        src.seal_with(&mut src_seal, true)?;
        let mut record = src.record();
        record.config.name = target.to_owned();
        // Log entries before this one are in the copy or were the old collection's: a replay
        // must not apply them to the copy.
        record.applied_seq = record.applied_seq.max(seq);
        let mut ops = vec![
            MetaOp::Delete(Space::Catalog, catalog_key(staging)),
            MetaOp::Put(Space::Catalog, catalog_key(target), encode_record(&record)?),
        ];
        if let Some(o) = &old {
            let (from, to) = collection_range(o.uid());
            ops.push(MetaOp::DeleteRange(Space::Ids, from.clone(), to.clone()));
            ops.push(MetaOp::DeleteRange(Space::Payloads, from, to));
        }
        ops.extend(self.seq_op(seq));
        // The copy's log is complete and durable before the catalog points at it.
        src.sync()?;
        src.mark_dropped();
        if let Some(o) = &old {
            o.mark_dropped();
        }
        self.meta.write(ops)?;
        self.note_seq(seq);
        drop((src_seal, old_seal));
        // Opened before the map changes, so readers go from the old collection to the new one
        // without a moment in which `target` is missing.
        let opened = Collection::open(
            record,
            src.dir().to_path_buf(),
            Arc::clone(&self.meta),
            self.options.fsync,
            false,
        );
        let swapped = {
            let mut map = self.write();
            map.remove(staging);
            match opened {
                Ok(c) => {
                    let c = Arc::new(c);
                    map.insert(target.to_owned(), Arc::clone(&c));
                    c
                }
                Err(e) => {
                    // Committed, but not openable now: nothing stale stays in service, and the
                    // next start opens it from the catalog.
                    map.remove(target);
                    return Err(e);
                }
            }
        };
        if let Some(o) = &old
            && let Err(e) = fs::remove_dir_all(o.dir())
        {
            // Swept as an orphan at the next start; the swap itself is done.
            tracing::warn!(dir = %o.dir().display(), error = %e, "cannot remove a replaced collection's directory");
        }
        Ok(swapped)
    }

    fn seq_op(&self, seq: u64) -> Option<MetaOp> {
        (seq != 0).then(|| {
            MetaOp::Put(
                Space::Catalog,
                CATALOG_SEQ.to_vec(),
                seq.max(self.catalog_seq()).to_le_bytes().to_vec(),
            )
        })
    }

    fn note_seq(&self, seq: u64) {
        self.catalog_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Drops a collection and all its data.
    pub fn drop_collection(&self, name: &str) -> Result<()> {
        self.drop_collection_seq(name, 0)
    }

    /// [`Engine::drop_collection`] stamped with sequence number `seq` (0 = none).
    #[tracing::instrument(skip_all, fields(collection = %name))]
    pub fn drop_collection_seq(&self, name: &str, seq: u64) -> Result<()> {
        if !is_staging_name(name) {
            validate_collection_name(name)?;
        }
        let _guard = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.collection_or_staging(name)?;
        let (from, to) = collection_range(c.uid());
        // Under its seal lock: no checkpoint or compaction in flight rewrites its catalog entry
        // after the delete below.
        let _seal = c.seal_lock();
        c.mark_dropped();
        let mut ops = vec![
            MetaOp::Delete(Space::Catalog, catalog_key(name)),
            MetaOp::DeleteRange(Space::Ids, from.clone(), to.clone()),
            MetaOp::DeleteRange(Space::Payloads, from, to),
        ];
        ops.extend(self.seq_op(seq));
        self.meta.write(ops)?;
        self.note_seq(seq);
        self.write().remove(name);
        crate::fsutil::remove_dir_all(c.dir())?;
        Ok(())
    }

    /// fsyncs every collection's WAL.
    pub fn sync_all(&self) -> Result<()> {
        for c in self.list_all() {
            c.sync()?;
        }
        Ok(())
    }

    /// fsyncs every collection's WAL without blocking writers (see
    /// [`Collection::sync_concurrently`]): every write applied before the call is durable
    /// when it returns.
    pub fn sync_all_concurrently(&self) -> Result<()> {
        for c in self.list_all() {
            c.sync_concurrently()?;
        }
        Ok(())
    }

    /// Syncs WALs and flushes the metadata store; call on shutdown.
    pub fn close(&self) -> Result<()> {
        self.sync_all()?;
        self.meta.flush()
    }
}

mod snapshot;
pub use snapshot::{
    ExportInfo, ExportedCollection, REPLICATED_PREFIX, pack, seal_export, unpack, verify_export,
};

#[cfg(test)]
mod tests;

/// Which service keyspace: see [`AuxStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuxSpace {
    /// Settings and state (its own column family).
    App,
    /// Audit records (its own column family).
    Audit,
    /// The replication log (its own column family).
    Raft,
}

/// One write in an atomic [`AuxStore::batch`].
#[derive(Debug, Clone)]
pub enum AuxOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
    /// Remove every key in `[from, to)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Durable key-value keyspaces that services above the engine use for their own state (RAG
/// settings, review queue, audit records). The engine stores them beside its catalog and never
/// reads them.
#[derive(Debug, Clone)]
pub struct AuxStore {
    meta: Arc<dyn MetaStore>,
}

fn space(s: AuxSpace) -> Space {
    match s {
        AuxSpace::App => Space::App,
        AuxSpace::Audit => Space::Audit,
        AuxSpace::Raft => Space::Raft,
    }
}

impl AuxStore {
    /// Reads one key.
    pub fn get(&self, s: AuxSpace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.meta.get(space(s), key)
    }

    /// Sets keys atomically; synced when `sync`.
    pub fn put(&self, s: AuxSpace, entries: Vec<(Vec<u8>, Vec<u8>)>, sync: bool) -> Result<()> {
        let ops = entries.into_iter().map(|(k, v)| AuxOp::Put(k, v)).collect();
        self.batch(s, ops, sync)
    }

    /// Applies puts, deletes and range deletes to one space atomically; synced when `sync`.
    pub fn batch(&self, s: AuxSpace, ops: Vec<AuxOp>, sync: bool) -> Result<()> {
        let sp = space(s);
        let ops = ops
            .into_iter()
            .map(|op| match op {
                AuxOp::Put(k, v) => MetaOp::Put(sp, k, v),
                AuxOp::Delete(k) => MetaOp::Delete(sp, k),
                AuxOp::DeleteRange(a, b) => MetaOp::DeleteRange(sp, a, b),
            })
            .collect();
        self.meta.write_opt(ops, sync)
    }

    /// Makes every write so far durable, in every space (one fsync for any number of unsynced
    /// batches before it).
    pub fn sync(&self) -> Result<()> {
        self.meta.sync_wal()
    }

    /// Removes one key (synced).
    pub fn delete(&self, s: AuxSpace, key: &[u8]) -> Result<()> {
        self.batch(s, vec![AuxOp::Delete(key.to_vec())], true)
    }

    /// Removes every key in `[from, to)` (synced).
    pub fn delete_range(&self, s: AuxSpace, from: &[u8], to: &[u8]) -> Result<()> {
        self.batch(
            s,
            vec![AuxOp::DeleteRange(from.to_vec(), to.to_vec())],
            true,
        )
    }

    /// A page of keys with `prefix` after `after` (see [`MetaStore::scan_page`]).
    pub fn scan(
        &self,
        s: AuxSpace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.meta.scan_page(space(s), prefix, after, limit, reverse)
    }
}
