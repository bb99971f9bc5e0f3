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
