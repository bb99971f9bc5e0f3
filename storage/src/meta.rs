//! The metadata store: catalog, id map and payloads, behind a small trait so that only
//! `meta/rocks.rs` names RocksDB.
//!
//! The engine writes it only at checkpoints (and catalog changes), in one atomic, synced batch,
//! so its content is always exactly the state as of a collection's checkpoint LSN; the WAL
//! holds everything after. The key layout is in [`keys`], beside the functions that build
//! and parse the keys.
pub mod keys;
#[cfg(feature = "rocksdb")]
pub mod rocks;

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

/// A keyspace (a RocksDB column family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Collections and counters.
    Catalog,
    /// External id → (segment, row) of sealed rows.
    Ids,
    /// External id → payload of sealed rows.
    Payloads,
    /// State kept by services above the engine (e.g. RAG settings, review queue, usage
    /// counters); the engine never reads it.
    App,
    /// Audit records written by services above the engine; the engine never reads it.
    Audit,
    /// The replication log and its metadata (vote, committed, purged); the engine never reads
    /// it.
    Raft,
}

/// One write in an atomic batch.
#[derive(Debug, Clone)]
pub enum MetaOp {
    /// Set a key.
    Put(Space, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Space, Vec<u8>),
    /// Remove every key in `[from, to)`.
    DeleteRange(Space, Vec<u8>, Vec<u8>),
}

/// A durable, atomic key-value store.
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// Reads one key.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Reads many keys of one space at once.
    fn multi_get(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;
    /// Applies every op atomically and durably (synced) before returning.
    fn write(&self, ops: Vec<MetaOp>) -> Result<()> {
        self.write_opt(ops, true)
    }
    /// Every key/value whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// At most `limit` key/values whose key starts with `prefix` and is after `after` (when
    /// given), in key order, or in reverse key order (`after` then means before) when `reverse`.
    fn scan_page(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies every op atomically; synced only when `sync` (otherwise a process crash keeps
    /// it, a machine crash may not).
    fn write_opt(&self, ops: Vec<MetaOp>, sync: bool) -> Result<()> {
        self.write_each(&mut ops.into_iter(), sync)
    }
    /// Applies the operations `ops` yields atomically, taking them one at a time (a batch of
    /// millions need not be listed first).
    fn write_each(&self, ops: &mut dyn Iterator<Item = MetaOp>, sync: bool) -> Result<()>;
    /// Flushes memtables (on shutdown).
    fn flush(&self) -> Result<()>;
    /// Makes every write so far durable (fsyncs the write-ahead log): group commit for writes
    /// made with `sync = false`.
    fn sync_wal(&self) -> Result<()>;
    /// Writes a consistent point-in-time copy of the whole store to `dir` (which must not
    /// exist), hard-linking immutable files where it can.
    fn checkpoint(&self, dir: &Path) -> Result<()>;
    /// What the store holds in memory, summed over its column families (zeros for a store
    /// that does not report it).
    fn memory(&self) -> MetaMemory {
        MetaMemory::default()
    }
}

/// Memory a [`MetaStore`] reports holding, in bytes (its own allocations, made through the
/// process's malloc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaMemory {
    /// Memtables, active and immutable (bounded by the store's memtable budget).
    pub memtables: u64,
    /// Blocks held by the block caches.
    pub block_cache: u64,
    /// Index and filter blocks of the open table files.
    pub table_readers: u64,
}

/// Opens the default store (RocksDB) in `dir`.
#[cfg(feature = "rocksdb")]
pub fn open_default(dir: &Path) -> Result<Arc<dyn MetaStore>> {
    Ok(Arc::new(rocks::RocksStore::open(dir)?))
}

/// Without the `rocksdb` feature there is no store to open (fuzz builds).
#[cfg(not(feature = "rocksdb"))]
pub fn open_default(dir: &Path) -> Result<Arc<dyn MetaStore>> {
    Err(crate::Error::Meta(format!(
        "{}: quiver-storage was built without the rocksdb feature",
        dir.display()
    )))
}
