//! gRPC services, one file per service. Handlers stay thin: convert → engine (off the async
//! runtime) → convert.
pub mod cluster;
pub mod collections;
pub mod keys;
pub mod points;
pub mod search;
pub mod snapshots;

use std::sync::{Arc, OnceLock};

use quiver_proto::v1 as pb;
use quiver_storage::Engine;

use crate::cluster::Cluster;
use crate::cluster::command::{Outcome, Write};
use crate::config::Settings;
use crate::error::{ApiError, ApiResult};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
    cluster: OnceLock<Arc<Cluster>>,
    auth: OnceLock<Arc<crate::auth::Auth>>,
    /// Validated settings.
    pub settings: Settings,
}

impl AppState {
    /// State whose engine is not open yet.
    pub fn new(settings: Settings) -> Arc<AppState> {
        Arc::new(AppState {
            engine: OnceLock::new(),
            cluster: OnceLock::new(),
            auth: OnceLock::new(),
            settings,
        })
    }

    /// Publishes the opened engine.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// Publishes the auth state (auth on).
    pub fn set_auth(&self, auth: Arc<crate::auth::Auth>) {
        let _ = self.auth.set(auth);
    }

    /// Whether API keys are required.
    pub fn auth_enabled(&self) -> bool {
        self.auth.get().is_some()
    }

    /// Publishes the started replication handle.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The replication handle (`None`: a single node).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Applies a write: through the replicated log on a cluster (forwarded to the leader,
    /// acknowledged once committed), directly on a single node.
    pub async fn write(&self, w: Write) -> ApiResult<Outcome> {
        refuse_staging(&w)?;
        self.write_any(w).await
    }

    /// [`AppState::write`], also to a restore's hidden copy: for the restore itself.
    pub(crate) async fn write_any(&self, w: Write) -> ApiResult<Outcome> {
        let engine = self.engine()?;
        self.check_segments(&engine, &w)?;
        match self.cluster.get() {
            Some(c) => {
                precheck(&engine, &w)?;
                c.write(w).await
            }
            None => blocking(move || Ok(w.apply(&engine, 0)?)).await,
        }
    }

    /// [`AppState::write`] from blocking code (a `spawn_blocking` closure).
    pub fn write_blocking(&self, w: Write) -> ApiResult<Outcome> {
        refuse_staging(&w)?;
        let engine = self.engine()?;
        self.check_segments(&engine, &w)?;
        match self.cluster.get() {
            Some(c) => {
                precheck(&engine, &w)?;
                tokio::runtime::Handle::current().block_on(c.write(w))
            }
            None => Ok(w.apply(&engine, 0)?),
        }
    }

    /// Refuses a write that adds rows to a collection already holding
    /// `limits.max_segments_per_collection` sealed segments (each is memory maps and files):
    /// decided here, before the write enters the log, so every replica applies the same.
    /// Deletes still pass, and compaction can bring the count back down.
    fn check_segments(&self, engine: &Engine, w: &Write) -> ApiResult<()> {
        let most = self.settings.limits.max_segments_per_collection;
        if most == 0 || !matches!(w, Write::Upsert { .. } | Write::UpdatePayload { .. }) {
            return Ok(());
        }
        let Ok(c) = engine.collection_or_staging(w.collection()) else {
            return Ok(());
        };
        let n = c.segment_count();
        if n >= most as usize {
            return Err(ApiError::TooLarge(format!(
                "collection {}: holds {n} segments, the limit is {most} (limits.max_segments_per_collection); delete points and compact, or recreate it with a larger segment_max_rows (now {})",
                c.config().name,
                c.config().segment_max_rows
            )));
        }
        Ok(())
    }

    /// Ready for traffic: storage open and, on a cluster, a leader known and this node caught
    /// up.
    pub fn ready(&self) -> bool {
        self.engine.get().is_some() && self.cluster.get().is_none_or(|c| c.is_ready())
    }

    /// Refuses a request carrying more than `limits.max_batch_rows` rows in `field`.
    pub fn check_rows(&self, field: &str, n: usize) -> ApiResult<()> {
        let max = self.settings.limits.max_batch_rows;
        if max > 0 && n > max as usize {
            return Err(ApiError::TooLarge(format!(
                "{field}: {n} rows in one request; the limit is {max} (limits.max_batch_rows)"
            )));
        }
        Ok(())
    }

    /// The most a read's records may total in one response: what the encoder would send,
    /// less room for framing. Reads stop (or a scroll page ends) before exceeding it.
    pub fn response_budget(&self) -> usize {
        self.settings
            .max_message_bytes
            .saturating_sub(64 << 10)
            .max(1 << 20)
    }

    /// Waits until a read at `consistency` may be served here.
    pub async fn read_barrier(&self, consistency: i32) -> ApiResult<()> {
        match pb::Consistency::try_from(consistency) {
            Err(_) => Err(ApiError::bad(
                "consistency",
                format!("unknown value {consistency}; expected LOCAL (0) or LEADER (1)"),
            )),
            Ok(pb::Consistency::Local) => Ok(()),
            Ok(pb::Consistency::Leader) => match self.cluster.get() {
                Some(c) => c.read_barrier().await,
                None => Ok(()),
            },
        }
    }

    /// The engine, or UNAVAILABLE while storage is still opening.
    pub fn engine(&self) -> ApiResult<Arc<Engine>> {
        self.engine.get().cloned().ok_or_else(|| {
            ApiError::Unavailable("storage is still opening (replaying the WAL)".into())
        })
    }
}

/// Runs blocking engine work on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    // The caller's span follows the work, so storage spans nest under the RPC in traces.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::Internal(format!("worker thread failed: {e}")))?
}

/// Rejects, before it enters the replicated log, a write the engine would refuse for its
/// shape (so the log holds no batch that fails on every replica, and the error names the
/// field exactly as on a single node).
/// A restore's hidden copy is not a user's to write (it is not found under its name).
fn refuse_staging(w: &Write) -> ApiResult<()> {
    if quiver_storage::types::is_staging_name(w.collection()) {
        return Err(quiver_storage::Error::CollectionNotFound {
            name: w.collection().to_owned(),
        }
        .into());
    }
    Ok(())
}

fn precheck(engine: &Engine, w: &Write) -> ApiResult<()> {
    if let Write::Upsert { collection, points } = w {
        let dim = match engine.collection_or_staging(collection) {
            Ok(c) => c.config().dim,
            Err(_) => points.first().map_or(0, |p| p.vector.len()),
        };
        for (i, p) in points.iter().enumerate() {
            quiver_storage::types::validate_vector(&p.vector, dim, &format!("points[{i}].vector"))?;
            p.id.validate(&format!("points[{i}].id"))?;
        }
    }
    Ok(())
}
