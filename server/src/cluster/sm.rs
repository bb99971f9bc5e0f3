//! The engine as openraft's state machine.
//!
//! **Apply.** Committed entries are applied in log order, each write stamped with its log
//! index ([`quiver_storage::Engine::apply`]); the engine's WALs run without fsync in cluster mode, because the
//! Raft log already holds every acknowledged write durably on a quorum.
//!
//! **Durable applied index.** At least every `durable_every` (and at every snapshot) the WALs
//! are synced and then the applied log id and membership are recorded (`s/applied` in the
//! `raft` column family). After a crash, openraft re-applies the log from there; an entry whose
//! effect survived (its index is at or below the target collection's or the catalog's applied
//! sequence number) is skipped, so no write is applied twice.
//!
//! **Snapshots.** Building one checkpoints every collection and exports the engine
//! ([`Engine::export`]: sealed files + metadata + the applied log id) at the current applied
//! index, then packs it into one checksummed file off the apply path. Installing one records
//! an "installing" marker, unpacks, verifies and imports it; a crash mid-way redoes the import
//! at the next start. The log is purged behind snapshots by openraft.
#![allow(clippy::result_large_err)] // openraft's StorageError

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use quiver_storage::{AuxSpace, AuxStore, Engine};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::TypeConfig;
use super::command::{Failure, Mutation, Outcome, Reply};

type SErr = StorageError<u64>;
type Membership = StoredMembership<u64, BasicNode>;
type Meta = SnapshotMeta<u64, BasicNode>;

const APPLIED: &[u8] = b"s/applied";
const INSTALLING: &[u8] = b"s/installing";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Durable {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
}

#[derive(Debug)]
struct State {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    durable_at: Instant,
    current: Option<Meta>,
    receiving: Option<PathBuf>,
}

#[derive(Debug)]
struct Shared {
    engine: Arc<Engine>,
    store: AuxStore,
    dir: PathBuf,
    durable_every: Duration,
    state: Mutex<State>,
    /// Serialises durability records so an older one never overwrites a newer one.
    durable: Mutex<u64>,
}

/// The state machine (cheap to clone: a handle).
#[derive(Debug, Clone)]
pub struct EngineSm {
    shared: Arc<Shared>,
}

fn io<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::write_state_machine(&e).into()
}

fn other(msg: String) -> SErr {
    io(std::io::Error::other(msg))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Snapshot ids become file names: only the shape this module builds
/// (`{index:020}-{unix ms}`, digits and dashes, at most 64 bytes) is accepted from a peer.
pub fn check_snapshot_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(format!(
            "snapshot_id {:?} is not a snapshot id (digits and '-', at most 64 bytes)",
            id.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

fn snap_path(dir: &Path, meta: &Meta) -> PathBuf {
    dir.join(format!("{}.snap", meta.snapshot_id))
}

/// Whether a storage error is a property of the request (the same on every replica) rather
/// than of this machine (disk, corruption): only the former may become a client error; the
/// latter stops this replica instead of letting it diverge.
fn deterministic(e: &quiver_storage::Error) -> bool {
    use quiver_storage::Error as E;
    match e {
        E::DimensionMismatch { .. }
        | E::NonFinite { .. }
        | E::InvalidArgument { .. }
        | E::CollectionNotFound { .. }
        | E::CollectionExists { .. }
        | E::TooLarge { .. }
        | E::Conflict { .. } => true,
        E::Corrupt { .. }
        | E::Io(_)
        | E::Meta(_)
        | E::Closed
        | E::NotReady { .. }
        | E::DeadlineExceeded { .. } => false,
    }
}

impl EngineSm {
    /// Opens the state machine over `engine`; `dir` holds snapshot files. Redoes an
    /// interrupted snapshot install. Blocking.
    pub fn open(
        engine: Arc<Engine>,
        dir: PathBuf,
        durable_every: Duration,
    ) -> Result<EngineSm, quiver_storage::Error> {
        fs_err::create_dir_all(&dir)?;
        let store = engine.aux();
        let durable: Durable = store
            .get(AuxSpace::Raft, APPLIED)?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        let current = newest_snapshot(&dir)?;
        let sm = EngineSm {
            shared: Arc::new(Shared {
                engine,
                store,
                dir,
                durable_every,
                state: Mutex::new(State {
                    last_applied: durable.last_applied,
                    membership: durable.membership,
                    durable_at: Instant::now(),
                    current,
                    receiving: None,
                }),
                durable: Mutex::new(durable.last_applied.map_or(0, |l| l.index)),
            }),
        };
        let installing: Option<Meta> = sm
            .shared
            .store
            .get(AuxSpace::Raft, INSTALLING)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        if let Some(meta) = installing {
            tracing::warn!(snapshot = %meta.snapshot_id, "redoing an interrupted snapshot install");
            sm.shared.import(&meta)?;
        } else if sm.shared.engine.import_pending() {
            return Err(quiver_storage::Error::Meta(
                "the engine has an unfinished import but no snapshot install is recorded".into(),
            ));
        }
        Ok(sm)
    }

    /// The last applied log index.
    pub fn applied_index(&self) -> u64 {
        lock(&self.shared.state).last_applied.map_or(0, |l| l.index)
    }

    /// Syncs the engine and records the applied index, if the last record is older than the
    /// configured interval. Blocking.
    pub fn make_durable_if_due(&self) -> Result<(), quiver_storage::Error> {
        let due = lock(&self.shared.state).durable_at.elapsed() >= self.shared.durable_every;
        if due {
            self.shared.make_durable()?;
        }
        Ok(())
    }

    /// Syncs the engine and records the applied index now (shutdown). Blocking.
    pub fn make_durable(&self) -> Result<(), quiver_storage::Error> {
        self.shared.make_durable()
    }
}

fn newest_snapshot(dir: &Path) -> Result<Option<Meta>, quiver_storage::Error> {
    let mut best: Option<Meta> = None;
    for entry in fs_err::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        if name.ends_with(".part") || name.ends_with(".tmp") {
            let _ = fs_err::remove_file(&path);
            continue;
        }
        if let Some(stem) = name.strip_suffix(".json") {
            let meta: Option<Meta> = fs_err::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(m) = meta
                && dir.join(format!("{stem}.snap")).is_file()
                && best.as_ref().is_none_or(|b| b.last_log_id < m.last_log_id)
            {
                best = Some(m);
            }
        }
    }
    Ok(best)
}

impl Shared {
    fn make_durable(&self) -> Result<(), quiver_storage::Error> {
        let mut recorded = lock(&self.durable);
        let (applied, membership) = {
            let st = lock(&self.state);
            (st.last_applied, st.membership.clone())
        };
        // Everything applied up to `applied` is in the WALs: make it durable (without
        // stalling the apply path), then say so.
        self.engine.sync_all_concurrently()?;
        let index = applied.map_or(0, |l| l.index);
        if index > *recorded || applied.is_none() {
            self.record(applied, membership)?;
            *recorded = index;
        }
        lock(&self.state).durable_at = Instant::now();
        Ok(())
    }

    fn record(
        &self,
        last_applied: Option<LogId<u64>>,
        membership: Membership,
    ) -> Result<(), quiver_storage::Error> {
        let v = serde_json::to_vec(&Durable {
            last_applied,
            membership,
        })
        .map_err(|e| quiver_storage::Error::Meta(e.to_string()))?;
        self.store
            .put(AuxSpace::Raft, vec![(APPLIED.to_vec(), v)], true)
    }

    fn apply_blocking(&self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<Reply>, SErr> {
        let mut replies = Vec::with_capacity(entries.len());
        for e in entries {
            let log_id = e.log_id;
            let index = log_id.index;
            let reply = match e.payload {
                EntryPayload::Blank => Ok(Outcome {
                    index,
                    ..Outcome::default()
                }),
                EntryPayload::Membership(m) => {
                    lock(&self.state).membership = StoredMembership::new(Some(log_id), m);
                    Ok(Outcome {
                        index,
                        ..Outcome::default()
                    })
                }
                EntryPayload::Normal(cmd) => match Mutation::decode(&cmd) {
                    Err(message) => Err(Failure {
                        kind: crate::error::Kind::InvalidArgument,
                        message,
                    }),
                    Ok(w) if self.engine.already_applied(&w, index) => Ok(Outcome {
                        index,
                        ..Outcome::default()
                    }),
                    Ok(w) => match self.engine.apply(w, index) {
                        Ok(o) => Ok(o),
                        Err(err) if deterministic(&err) => {
                            Err(Failure::from(&crate::error::ApiError::from(err)))
                        }
                        Err(err) => {
                            tracing::error!(index, error = %err, "applying a committed entry failed on this node; stopping replication here");
                            return Err(StorageIOError::apply(log_id, &err).into());
                        }
                    },
                },
            };
            lock(&self.state).last_applied = Some(log_id);
            replies.push(reply);
        }
        // Durability of the applied index is the background ticker's job (EngineSm::
        // make_durable_if_due), off this path.
        Ok(replies)
    }

    /// Unpacks the snapshot file of `meta` and imports it (blocking), then records it as the
    /// applied state.
    fn import(&self, meta: &Meta) -> Result<(), quiver_storage::Error> {
        let file = snap_path(&self.dir, meta);
        let staging = self.dir.join("import.tmp");
        if staging.exists() {
            fs_err::remove_dir_all(&staging)?;
        }
        let started = Instant::now();
        quiver_storage::engine::unpack(&file, &staging)?;
        self.engine.import(&staging)?;
        let _ = fs_err::remove_dir_all(&staging);
        {
            let mut st = lock(&self.state);
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            st.current = Some(meta.clone());
        }
        let mut recorded = lock(&self.durable);
        self.record(meta.last_log_id, meta.last_membership.clone())?;
        *recorded = meta.last_log_id.map_or(0, |l| l.index);
        self.store.delete(AuxSpace::Raft, INSTALLING)?;
        self.drop_older_than(meta);
        tracing::info!(snapshot = %meta.snapshot_id, ms = started.elapsed().as_millis() as u64, "snapshot installed");
        Ok(())
    }

    /// Removes snapshot files other than `keep`'s.
    fn drop_older_than(&self, keep: &Meta) {
        let Ok(entries) = fs_err::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_snapshot = name.ends_with(".snap") || name.ends_with(".json");
            if is_snapshot && !name.starts_with(&keep.snapshot_id) {
                let _ = fs_err::remove_file(entry.path());
            }
        }
    }

    fn open_snapshot(&self, meta: &Meta) -> Result<Snapshot<TypeConfig>, SErr> {
        let f = std::fs::File::open(snap_path(&self.dir, meta))
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        })
    }
}

/// Packs an export taken on the apply path into a snapshot file, off it.
pub struct Builder {
    shared: Arc<Shared>,
    export: Result<(PathBuf, Meta), String>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (export, meta) = self.export.clone().map_err(other)?;
        let shared = Arc::clone(&self.shared);
        let m = meta.clone();
        let started = Instant::now();
        let bytes = tokio::task::spawn_blocking(move || -> Result<u64, quiver_storage::Error> {
            let tmp = shared.dir.join(format!("{}.snap.tmp", m.snapshot_id));
            let bytes = quiver_storage::engine::pack(&export, &tmp)?;
            fs_err::rename(&tmp, snap_path(&shared.dir, &m))?;
            let json =
                serde_json::to_vec(&m).map_err(|e| quiver_storage::Error::Meta(e.to_string()))?;
            fs_err::write(shared.dir.join(format!("{}.json", m.snapshot_id)), json)?;
            quiver_storage::wal::sync_dir(&shared.dir)?;
            let _ = fs_err::remove_dir_all(&export);
            let newer = {
                let mut st = lock(&shared.state);
                let newer = st
                    .current
                    .as_ref()
                    .is_none_or(|c| c.last_log_id <= m.last_log_id);
                if newer {
                    st.current = Some(m.clone());
                }
                newer
            };
            if newer {
                shared.drop_older_than(&m);
            }
            Ok(bytes)
        })
        .await
        .map_err(io)?
        .map_err(io)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes, ms = started.elapsed().as_millis() as u64, "snapshot built");
        self.shared.open_snapshot(&meta)
    }
}

impl RaftStateMachine<TypeConfig> for EngineSm {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), SErr> {
        let st = lock(&self.shared.state);
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.apply_blocking(entries))
            .await
            .map_err(io)?
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // On the apply path: nothing is applied while the export runs, so it is exactly the
        // state at `last_applied`.
        let shared = Arc::clone(&self.shared);
        let export = tokio::task::spawn_blocking(move || -> Result<(PathBuf, Meta), String> {
            let (last_applied, membership) = {
                let st = lock(&shared.state);
                (st.last_applied, st.membership.clone())
            };
            let id = format!(
                "{:020}-{}",
                last_applied.map_or(0, |l| l.index),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            );
            let dir = shared.dir.join(format!("{id}.export.tmp"));
            shared.engine.export(&dir).map_err(|e| e.to_string())?;
            // The export checkpointed every collection: the state is durable up to here.
            shared.make_durable().map_err(|e| e.to_string())?;
            Ok((
                dir,
                Meta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id: id,
                },
            ))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        Builder {
            shared: Arc::clone(&self.shared),
            export,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, SErr> {
        let path = self.shared.dir.join(format!(
            "incoming-{}.part",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        lock(&self.shared.state).receiving = Some(path);
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SErr> {
        let werr = |e: std::io::Error| -> SErr {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        check_snapshot_id(&meta.snapshot_id).map_err(other)?;
        snapshot.flush().await.map_err(werr)?;
        snapshot.sync_all().await.map_err(werr)?;
        drop(snapshot);
        let received = lock(&self.shared.state)
            .receiving
            .take()
            .ok_or_else(|| other("install_snapshot without a received file".into()))?;
        let shared = Arc::clone(&self.shared);
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), quiver_storage::Error> {
            fs_err::rename(&received, snap_path(&shared.dir, &meta))?;
            let json = serde_json::to_vec(&meta)
                .map_err(|e| quiver_storage::Error::Meta(e.to_string()))?;
            fs_err::write(shared.dir.join(format!("{}.json", meta.snapshot_id)), &json)?;
            quiver_storage::wal::sync_dir(&shared.dir)?;
            shared
                .store
                .put(AuxSpace::Raft, vec![(INSTALLING.to_vec(), json)], true)?;
            shared.import(&meta)
        })
        .await
        .map_err(io)?
        .map_err(io)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let current = lock(&self.shared.state).current.clone();
        match current {
            Some(m) if snap_path(&self.shared.dir, &m).is_file() => {
                Ok(Some(self.shared.open_snapshot(&m)?))
            }
            Some(_) | None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use quiver_storage::{
        CollectionConfig, EngineOptions, FsyncPolicy, Metric, PointId, PointWrite,
    };

    use super::*;

    fn entry(index: u64, w: Mutation) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(w.encode()),
        }
    }

    #[test]
    fn only_our_own_snapshot_ids_name_files() {
        assert!(super::check_snapshot_id("00000000000000000042-1764633600000").is_ok());
        for bad in [
            "",
            "../../../etc/passwd",
            "/abs",
            "a.snap",
            "1/2",
            &"1".repeat(65),
        ] {
            assert!(super::check_snapshot_id(bad).is_err(), "{bad:?}");
        }
    }

    /// Re-applying the log from an older durable index after a crash must not apply a write
    /// twice: here a delete-by-filter applied again after a later payload change would delete
    /// a point that must survive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reapplying_after_a_crash_skips_what_the_engine_holds() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions {
            fsync: FsyncPolicy::Never,
        };
        let log = |from: u64| -> Vec<Entry<TypeConfig>> {
            let ws = vec![
                Mutation::CreateCollection(CollectionConfig {
                    name: "c".into(),
                    dim: 2,
                    metric: Metric::L2,
                    index: quiver_storage::types::IndexConfig::flat(),
                    segment_max_rows: 1000,
                    schema: Default::default(),
                    labels: Default::default(),
                }),
                Mutation::Upsert {
                    collection: "c".into(),
                    points: vec![PointWrite {
                        id: PointId::Num(1),
                        vector: vec![1.0, 2.0],
                        payload: Some(br#"{"color":"blue","size":1}"#.to_vec()),
                    }],
                },
                Mutation::DeleteByFilter {
                    collection: "c".into(),
                    filter: quiver_storage::filter::parse(r#"color = "red""#).unwrap(),
                },
                Mutation::UpdatePayload {
                    collection: "c".into(),
                    ids: vec![PointId::Num(1)],
                    set: serde_json::from_str(r#"{"color":"red"}"#).unwrap(),
                    unset: vec![],
                    overwrite: false,
                    limits: Default::default(),
                },
            ];
            ws.into_iter()
                .enumerate()
                .map(|(i, w)| entry(i as u64 + 1, w))
                .filter(|e| e.log_id.index >= from)
                .collect()
        };
        {
            let engine = Arc::new(Engine::open(dir.path(), opts.clone()).unwrap());
            let mut sm = EngineSm::open(
                Arc::clone(&engine),
                dir.path().join("snaps"),
                Duration::from_secs(3600),
            )
            .unwrap();
            let replies = sm.apply(log(1)).await.unwrap();
            assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
            // "Crash": the applied index was never recorded; the WAL reached the OS.
            engine.sync_all().unwrap();
        }
        let engine = Arc::new(Engine::open(dir.path(), opts).unwrap());
        let mut sm = EngineSm::open(
            Arc::clone(&engine),
            dir.path().join("snaps"),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        // openraft re-applies everything after the recorded (absent) applied index.
        let replies = sm.apply(log(1)).await.unwrap();
        assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
        let c = engine.collection("c").unwrap();
        assert_eq!(c.count(), 1, "the point survives the replay");
        let p = c
            .get(
                &[PointId::Num(1)],
                quiver_storage::ReadOptions {
                    with_vectors: false,
                    with_payload: true,
                },
            )
            .unwrap();
        let payload: serde_json::Value =
            serde_json::from_slice(p[0].payload.as_deref().unwrap()).unwrap();
        assert_eq!(payload, serde_json::json!({"color": "red", "size": 1}));
        assert_eq!(sm.applied_index(), 4);
    }
}
