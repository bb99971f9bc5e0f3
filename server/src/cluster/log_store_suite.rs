//! openraft's storage conformance suite on [`super::log_store::RocksLog`], paired with a
//! small in-memory state machine, so that the suite checks the log alone (the engine-backed
//! state machine is exercised by the replication tests).
#![allow(clippy::wildcard_enum_match_arm, clippy::result_large_err)]
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log_store::RocksLog;

/// Test writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum WriteOp {
    Upsert { id: String, vector: Vec<f32> },
    Delete { id: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WriteResp {
    pub existed: bool,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = WriteOp,
        R = WriteResp,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);
type NodeId = u64;
type SErr = StorageError<NodeId>;

// ---------------------------------------------------------------- state machine

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub vectors: BTreeMap<String, Vec<f32>>,
}

#[derive(Debug)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct SmInner {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    data: SmData,
    snapshot_idx: u64,
    current_snapshot: Option<StoredSnapshot>,
}

/// Cheap-to-clone handle; also serves as `SnapshotBuilder` and lets tests peek at data.
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let mut g = self.inner.lock().expect("lock");
        let data =
            serde_json::to_vec(&g.data).map_err(|e| StorageIOError::read_state_machine(&e))?;
        g.snapshot_idx += 1;
        let snapshot_id = match g.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshot_idx),
            None => format!("--{}", g.snapshot_idx),
        };
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.last_membership.clone(),
            snapshot_id,
        };
        g.current_snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        let g = self.inner.lock().expect("lock");
        Ok((g.last_applied, g.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<WriteResp>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut g = self.inner.lock().expect("lock");
        let mut out = Vec::new();
        for e in entries {
            g.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(WriteResp::default()),
                EntryPayload::Normal(op) => {
                    let existed = match op {
                        WriteOp::Upsert { id, vector } => {
                            g.data.vectors.insert(id, vector).is_some()
                        }
                        WriteOp::Delete { id } => g.data.vectors.remove(&id).is_some(),
                    };
                    out.push(WriteResp { existed });
                }
                EntryPayload::Membership(m) => {
                    g.last_membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(WriteResp::default());
                }
            }
        }
        Ok(out) // exactly one response per entry
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let data: SmData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut g = self.inner.lock().expect("lock");
        g.data = data;
        g.last_applied = meta.last_log_id;
        g.last_membership = meta.last_membership.clone();
        g.current_snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let g = self.inner.lock().expect("lock");
        Ok(g.current_snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

struct Builder(Arc<Mutex<Vec<tempfile::TempDir>>>);

impl StoreBuilder<TypeConfig, RocksLog<TypeConfig>, StateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), RocksLog<TypeConfig>, StateMachine), SErr> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let engine = quiver_storage::Engine::open(dir.path(), Default::default())
            .map_err(|e| StorageIOError::write(&e))?;
        let log = RocksLog::new(engine.aux()).map_err(|e| StorageIOError::write(&e))?;
        self.0.lock().expect("lock").push(dir);
        Ok(((), log, StateMachine::default()))
    }
}

/// A plain test: the suite starts its own runtime per case.
#[test]
fn rocksdb_log_passes_openraft_storage_suite() -> Result<(), SErr> {
    Suite::test_all(Builder(Arc::new(Mutex::new(Vec::new()))))?;
    Ok(())
}
