//! `quiver.v1.Snapshots`: consistent online snapshots of the whole database, stored as
//! directories of hard links under `data_dir/snapshots/` (unchanged sealed segments are shared:
//! incremental), downloadable as one checksummed archive, restorable after verification.
use std::path::PathBuf;
use std::sync::Arc;

use quiver_proto::v1 as pb;
use quiver_proto::v1::snapshots_server::Snapshots;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};

/// The Snapshots service.
#[derive(Debug, Clone)]
pub struct SnapshotsService {
    state: Arc<AppState>,
}

impl SnapshotsService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        SnapshotsService { state }
    }

    fn dir(&self) -> PathBuf {
        self.state.settings.data_dir.join("snapshots")
    }
}

/// Snapshot names are 1–64 of `[A-Za-z0-9_-]`: they can never leave the snapshots directory.
fn check_name(name: &str) -> ApiResult<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::bad(
            "name",
            format!("{name:?}: 1 to 64 letters, digits, '_' or '-'"),
        ));
    }
    Ok(())
}

fn info_of(dir: &std::path::Path) -> ApiResult<pb::SnapshotInfo> {
    let b = std::fs::read(dir.join("info.json"))
        .map_err(|_| ApiError::NotFound(format!("no snapshot at {}", dir.display())))?;
    let v: serde_json::Value =
        serde_json::from_slice(&b).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(pb::SnapshotInfo {
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        created_ms: v["created_ms"].as_u64().unwrap_or(0),
        bytes: v["bytes"].as_u64().unwrap_or(0),
        collections: v["collections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn existing(root: &std::path::Path, name: &str) -> ApiResult<PathBuf> {
    check_name(name)?;
    let d = root.join(name);
    if !d.join("info.json").is_file() {
        return Err(ApiError::NotFound(format!("no snapshot named {name:?}")));
    }
    Ok(d)
}

type ChunkStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn create(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        crate::auth::check_unscoped(&req, "a snapshot of the whole server")?;
        let mut name = req.into_inner().name;
        if name.is_empty() {
            name = format!("snap-{}", quiver_rag::now_ms());
        }
        check_name(&name)?;
        let (engine, root) = (self.state.engine()?, self.dir());
        let info = blocking(move || {
            std::fs::create_dir_all(&root).map_err(quiver_storage::Error::from)?;
            let dst = root.join(&name);
            if dst.exists() {
                return Err(ApiError::AlreadyExists(format!("snapshot {name:?} exists")));
            }
            let tmp = root.join(format!(".{name}.tmp"));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(quiver_storage::Error::from)?;
            }
            let started = std::time::Instant::now();
            let export = engine.export(&tmp)?;
            let bytes = quiver_storage::engine::seal_export(&tmp)?;
            let created_ms = quiver_rag::now_ms();
            let info = serde_json::json!({
                "name": name,
                "created_ms": created_ms,
                "bytes": bytes,
                "collections": export
                    .collections
                    .keys()
                    .filter(|c| !quiver_storage::types::is_staging_name(c))
                    .collect::<Vec<_>>(),
            });
            std::fs::write(tmp.join("info.json"), info.to_string())
                .map_err(quiver_storage::Error::from)?;
            std::fs::rename(&tmp, &dst).map_err(quiver_storage::Error::from)?;
            quiver_storage::wal::sync_dir(&root)?;
            tracing::info!(target: "quiver::audit", snapshot = %name, bytes, ms = started.elapsed().as_millis() as u64, "snapshot created");
            info_of(&dst)
        })
        .await?;
        Ok(Response::new(info))
    }

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        crate::auth::check_unscoped(&req, "listing snapshots")?;
        let root = self.dir();
        let snapshots = blocking(move || {
            let mut out = Vec::new();
            if let Ok(rd) = std::fs::read_dir(&root) {
                for e in rd.flatten() {
                    if let Ok(i) = info_of(&e.path()) {
                        out.push(i);
                    }
                }
            }
            out.sort_by_key(|i| i.created_ms);
            Ok(out)
        })
        .await?;
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        crate::auth::check_unscoped(&req, "deleting a snapshot")?;
        let d = existing(&self.dir(), &req.into_inner().name)?;
        let info = blocking(move || {
            let info = info_of(&d)?;
            std::fs::remove_dir_all(&d).map_err(quiver_storage::Error::from)?;
            Ok(info)
        })
        .await?;
        Ok(Response::new(info))
    }

    type DownloadStream = ChunkStream;

    async fn download(
        &self,
        req: Request<pb::DownloadSnapshotRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        crate::auth::check_unscoped(&req, "downloading a snapshot")?;
        let d = existing(&self.dir(), &req.into_inner().name)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let archive = d.with_extension("download.tmp");
            let run = || -> Result<(), Status> {
                quiver_storage::engine::verify_export(&d).map_err(ApiError::from)?;
                quiver_storage::engine::pack(&d, &archive).map_err(ApiError::from)?;
                let mut f = std::fs::File::open(&archive)
                    .map_err(quiver_storage::Error::from)
                    .map_err(ApiError::from)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(quiver_storage::Error::from)
                        .map_err(ApiError::from)?;
                    if n == 0 {
                        return Ok(());
                    }
                    let chunk = pb::SnapshotChunk {
                        data: buf[..n].to_vec(),
                    };
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return Ok(()); // client went away
                    }
                }
            };
            if let Err(s) = run() {
                let _ = tx.blocking_send(Err(s));
            }
            let _ = std::fs::remove_file(&archive);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        if req.get_ref().collection.is_empty() {
            crate::auth::check_unscoped(&req, "restoring a whole snapshot")?;
        } else {
            // Both the collection read from the snapshot and the one written must be in scope.
            crate::auth::check_collection(&req, &req.get_ref().collection)?;
            if !req.get_ref().as_name.is_empty() {
                crate::auth::check_collection(&req, &req.get_ref().as_name)?;
            }
        }
        let r = req.into_inner();
        if !r.collection.is_empty() {
            let d = existing(&self.dir(), &r.name)?;
            return Ok(Response::new(
                self.restore_collection(d, r.collection, r.as_name).await?,
            ));
        }
        if !r.as_name.is_empty() {
            return Err(ApiError::bad("as_name", "needs collection (the one to restore)").into());
        }
        if self.state.cluster().is_some() {
            return Err(ApiError::Precondition(
                "restore replaces this node's data; on a cluster, restore on a single node and let the others catch up from it (replicas copy each other by Raft snapshots)".into(),
            )
            .into());
        }
        let d = existing(&self.dir(), &r.name)?;
        let (engine, root) = (self.state.engine()?, self.dir());
        let info = blocking(move || {
            // Nothing live is touched until every file is proven intact.
            quiver_storage::engine::verify_export(&d)?;
            let staging = root.join(".restore.tmp");
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(quiver_storage::Error::from)?;
            }
            link_tree(&d, &staging).map_err(quiver_storage::Error::from)?;
            // Keys are not part of the restored state: the ones in force now stay in force
            // (revocations since the snapshot hold; keys made since still work).
            let keys = crate::auth::KeyStore::new(engine.aux());
            // Saved keys already there belong to an earlier restore whose import was
            // interrupted: they, not what that import left behind, were the keys in force.
            if !crate::auth::KeyStore::restore_pending(engine.root()) {
                crate::auth::KeyStore::save_for_restore(engine.root(), &keys.list()?)?;
            }
            if let Err(e) = engine.import(&staging) {
                if !engine.import_pending() {
                    // Nothing was replaced: the keys in force are still in force.
                    let _ = std::fs::remove_file(engine.root().join(crate::auth::PENDING_KEYS));
                }
                return Err(e.into());
            }
            keys.finish_restore(engine.root())?;
            // Copies of in-place restores that were under way when the snapshot was taken.
            for c in engine.list_all() {
                let name = c.config().name.clone();
                if quiver_storage::types::is_staging_name(&name) {
                    engine.drop_collection(&name)?;
                }
            }
            let _ = std::fs::remove_dir_all(&staging);
            let info = info_of(&d)?;
            tracing::info!(target: "quiver::audit", snapshot = %info.name, "snapshot restored");
            Ok(info)
        })
        .await?;
        Ok(Response::new(info))
    }
}

impl SnapshotsService {
    /// Restores one collection of snapshot `d` as `as_name` (or its own name) through the
    /// normal write path: replicated on a cluster, durable like any write. The snapshot is
    /// verified first; an existing collection of another name is never overwritten.
    async fn restore_collection(
        &self,
        d: PathBuf,
        collection: String,
        as_name: String,
    ) -> ApiResult<pb::SnapshotInfo> {
        let target = if as_name.is_empty() {
            collection.clone()
        } else {
            as_name
        };
        quiver_storage::types::validate_collection_name(&target)?;
        // A user's collection, never a restore's hidden copy inside the snapshot.
        quiver_storage::types::validate_collection_name(&collection)?;
        let engine = self.state.engine()?;
        let scratch = self.dir().join(format!(".restore-{target}.tmp"));
        let (dd, sc) = (d.clone(), scratch.clone());
        let src = blocking(move || {
            quiver_storage::engine::verify_export(&dd)?;
            if sc.exists() {
                std::fs::remove_dir_all(&sc).map_err(quiver_storage::Error::from)?;
            }
            Ok(Arc::new(quiver_storage::engine::ExportedCollection::open(
                &dd,
                &collection,
                &sc,
            )?))
        })
        .await?;
        let result = self.load_collection(&engine, &src, &target).await;
        drop(src);
        let _ = std::fs::remove_dir_all(&scratch);
        let points = result?;
        let info = info_of(&d)?;
        tracing::info!(target: "quiver::audit", snapshot = %info.name, collection = %target, points, "collection restored from a snapshot");
        Ok(info)
    }

    /// Builds the restored copy as a hidden collection through the normal write path, then
    /// swaps it in with one replicated catalog change: the live collection keeps serving, whole,
    /// until the copy is complete, and a failure or crash midway leaves it untouched.
    async fn load_collection(
        &self,
        engine: &quiver_storage::Engine,
        src: &Arc<quiver_storage::engine::ExportedCollection>,
        target: &str,
    ) -> ApiResult<u64> {
        use quiver_storage::Mutation;
        let source = src.config().name.clone();
        if engine.collection(target).is_ok() && target != source {
            return Err(ApiError::Precondition(format!(
                "collection {target} exists: drop it first, or restore under another name"
            )));
        }
        let _one = RestoreGuard::take(target)?;
        // Copies of restores of this collection that crashed or failed midway (or one running
        // on another node, which then fails instead of mixing its pages with ours).
        for c in engine.list_all() {
            let name = &c.config().name;
            if quiver_storage::types::staging_target(name) == Some(target) {
                self.state
                    .write_any(Mutation::DropCollection(name.clone()))
                    .await?;
            }
        }
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let staging = quiver_storage::types::staging_name(target, nonce);
        let mut config = src.config().clone();
        config.name = staging.clone();
        self.state
            .write_any(Mutation::CreateCollection(config))
            .await?;
        match self.fill(src, &staging).await {
            Ok(n) => {
                self.state
                    .write_any(Mutation::ReplaceCollection {
                        staging,
                        target: target.to_owned(),
                    })
                    .await?;
                Ok(n)
            }
            Err(e) => {
                if let Err(d) = self
                    .state
                    .write_any(Mutation::DropCollection(staging))
                    .await
                {
                    tracing::warn!(collection = %target, error = %d, "cannot drop a failed restore's copy; the next restore of it drops it");
                }
                Err(e)
            }
        }
    }

    /// Copies every point of `src` into `collection`, in pages of about 4 MiB of vectors (one
    /// log entry each on a cluster).
    async fn fill(
        &self,
        src: &Arc<quiver_storage::engine::ExportedCollection>,
        collection: &str,
    ) -> ApiResult<u64> {
        use quiver_storage::Mutation;
        let page = ((4 << 20) / (src.config().dim * 4).max(1)).clamp(1, 1000);
        let mut cursor = Some((0, 0));
        let mut n = 0;
        while let Some(c) = cursor {
            let s = Arc::clone(src);
            let (points, next) = blocking(move || Ok(s.page(c, page)?)).await?;
            n += points.len() as u64;
            if !points.is_empty() {
                self.state
                    .write_any(Mutation::Upsert {
                        collection: collection.to_owned(),
                        points,
                    })
                    .await?;
            }
            cursor = next;
        }
        Ok(n)
    }
}

/// One restore per target collection at a time on this node (a second would drop the first's
/// copy under it).
struct RestoreGuard(String);

static RESTORING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl RestoreGuard {
    fn take(target: &str) -> ApiResult<RestoreGuard> {
        let mut running = RESTORING.lock().unwrap_or_else(|p| p.into_inner());
        if running.iter().any(|t| t == target) {
            return Err(ApiError::Precondition(format!(
                "a restore of collection {target} is already running"
            )));
        }
        running.push(target.to_owned());
        Ok(RestoreGuard(target.to_owned()))
    }
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        let mut running = RESTORING.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|t| *t != self.0);
    }
}

/// Hard-links a directory tree (the import consumes its input; the snapshot stays intact).
fn link_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            link_tree(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::hard_link(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
