//! gRPC services, one file per service. Handlers stay thin: convert → engine (off the async
//! runtime) → convert.
pub mod collections;
pub mod points;
pub mod search;

use std::sync::{Arc, OnceLock};

use quiver_storage::Engine;

use crate::config::Settings;
use crate::error::{ApiError, ApiResult};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
    /// Validated settings.
    pub settings: Settings,
}

impl AppState {
    /// State whose engine is not open yet.
    pub fn new(settings: Settings) -> Arc<AppState> {
        Arc::new(AppState {
            engine: OnceLock::new(),
            settings,
        })
    }

    /// Publishes the opened engine.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
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
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker thread failed: {e}")))?
}
