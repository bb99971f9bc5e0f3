//! The Raft log, vote and commit index in the engine's `raft` column family (openraft 0.9
//! `storage-v2`). One RocksDB for data and log. An append is one write batch, readable at once;
//! a flusher thread then fsyncs RocksDB's WAL once for every append queued since its last
//! fsync (group commit) and only then tells openraft the entries are durable (`LogFlushed`).
//! The vote is written synced. Keys:
//!
//! | key | value |
//! |---|---|
//! | `l` + index (u64 BE) | the entry (bincode) |
//! | `m/vote` | the vote |
//! | `m/committed` | the last committed log id |
//! | `m/purged` | the last purged log id |
//!
//! Generic over the type configuration, so the conformance suite runs it with a test state
//! machine and the server with the engine.
// openraft's traits return its `StorageError`, which is large; the helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Condvar, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};
use quiver_storage::{AuxOp, AuxSpace, AuxStore};
use serde::Serialize;
use serde::de::DeserializeOwned;

const VOTE: &[u8] = b"m/vote";
const COMMITTED: &[u8] = b"m/committed";
const PURGED: &[u8] = b"m/purged";

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'l');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn index_of(key: &[u8]) -> Option<u64> {
    key.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Appends waiting for the next fsync.
struct Queue<C: RaftTypeConfig> {
    pending: Vec<LogFlushed<C>>,
    closed: bool,
}

struct Flusher<C: RaftTypeConfig> {
    queue: Mutex<Queue<C>>,
    wake: Condvar,
}

impl<C: RaftTypeConfig> Flusher<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<C>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flusher thread: one fsync per round, for every append queued before it.
    fn run(&self, store: &AuxStore) {
        loop {
            let batch = {
                let mut q = self.lock();
                while q.pending.is_empty() && !q.closed {
                    q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            match store.sync() {
                Ok(()) => {
                    for cb in batch {
                        cb.log_io_completed(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "fsync of the Raft log failed");
                    for cb in batch {
                        cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    }
                }
            }
        }
    }
}

/// Stops the flusher thread when the last handle goes.
struct FlusherHandle<C: RaftTypeConfig>(Arc<Flusher<C>>);

impl<C: RaftTypeConfig> Drop for FlusherHandle<C> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_all();
    }
}

/// The Raft log in RocksDB (cheap to clone: a handle).
pub struct RocksLog<C: RaftTypeConfig> {
    store: AuxStore,
    flusher: Arc<FlusherHandle<C>>,
    _c: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for RocksLog<C> {
    fn clone(&self) -> Self {
        RocksLog {
            store: self.store.clone(),
            flusher: Arc::clone(&self.flusher),
            _c: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> Debug for RocksLog<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksLog").finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> RocksLog<C> {
    /// The log kept in `store`'s raft keyspace; starts its flusher thread.
    pub fn new(store: AuxStore) -> std::io::Result<Self> {
        let flusher = Arc::new(Flusher {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let (f, s) = (Arc::clone(&flusher), store.clone());
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || f.run(&s))?;
        Ok(RocksLog {
            store,
            flusher: Arc::new(FlusherHandle(flusher)),
            _c: PhantomData,
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<C::NodeId>> {
        match self
            .store
            .get(AuxSpace::Raft, key)
            .map_err(|e| StorageIOError::read(&e))?
        {
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| StorageIOError::read(&e))?,
            )),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), std::io::Error> {
        let v = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        self.store
            .batch(AuxSpace::Raft, vec![AuxOp::Put(key.to_vec(), v)], sync)
            .map_err(std::io::Error::other)
    }
}

impl<C> RaftLogReader<C> for RocksLog<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let mut after = start.checked_sub(1).map(entry_key);
        loop {
            let page = self
                .store
                .scan(AuxSpace::Raft, b"l", after.as_deref(), 256, false)
                .map_err(|e| StorageIOError::read_logs(&e))?;
            let full = page.len() == 256;
            for (k, v) in page {
                let Some(i) = index_of(&k) else { continue };
                if !range.contains(&i) {
                    return Ok(out);
                }
                out.push(bincode::deserialize(&v).map_err(|e| StorageIOError::read_logs(&e))?);
                after = Some(k);
            }
            if !full {
                return Ok(out);
            }
        }
    }
}

impl<C> RaftLogStorage<C> for RocksLog<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = RocksLog<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let purged: Option<LogId<C::NodeId>> = self.get(PURGED)?;
        let last = self
            .store
            .scan(AuxSpace::Raft, b"l", None, 1, true)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last.first() {
            Some((_, v)) => {
                let e: C::Entry =
                    bincode::deserialize(v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(e.get_log_id().clone())
            }
            None => purged.clone(),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.put(VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.get(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // Not synced: after a crash the committed index is re-learned from the leader.
        self.put(COMMITTED, &committed, false)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.get::<Option<LogId<C::NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for e in entries {
            let v = bincode::serialize(&e).map_err(|err| StorageIOError::write_logs(&err))?;
            ops.push(AuxOp::Put(entry_key(e.get_log_id().index), v));
        }
        // One batch, readable now; durable (and openraft told so) at the flusher's next fsync.
        let r = self
            .store
            .batch(AuxSpace::Raft, ops, false)
            .map_err(std::io::Error::other);
        match r {
            Ok(()) => {
                let f = &self.flusher.0;
                f.lock().pending.push(callback);
                f.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.store
            .batch(
                AuxSpace::Raft,
                vec![
                    AuxOp::DeleteRange(entry_key(log_id.index), entry_key(u64::MAX)),
                    AuxOp::Delete(entry_key(u64::MAX)),
                ],
                true,
            )
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let v = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write(&e))?;
        // The purged marker and the deletion in one atomic batch.
        self.store
            .batch(
                AuxSpace::Raft,
                vec![
                    AuxOp::Put(PURGED.to_vec(), v),
                    AuxOp::DeleteRange(entry_key(0), entry_key(log_id.index.saturating_add(1))),
                ],
                true,
            )
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
