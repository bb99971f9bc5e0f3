//! How the pipeline reaches the database: [`Host`]. The server implements it over its write
//! path (local, or proposed to Raft on a cluster); [`Direct`] implements it over one engine,
//! for embedding the pipeline in a process of its own and for tests.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use quiver_storage::{Applied, Engine, Mutation};

use crate::error::{Error, Result};
use crate::types::{AuditRecord, Review};

/// Limits the host sets on what the pipeline writes (defaults: the server's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one point, bytes.
    pub max_payload_bytes: usize,
    /// Rows per sealed segment of collections the pipeline creates.
    pub segment_max_rows: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            segment_max_rows: quiver_storage::DEFAULT_SEGMENT_MAX_ROWS,
        }
    }
}

/// The database as the pipeline sees it: the engine for searches and reads (collections,
/// records, counters, the node-local audit space), one write sink for every change, a barrier
/// for read-your-writes across nodes, and a clock.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// The engine, for reads.
    fn engine(&self) -> Result<Arc<Engine>>;
    /// Applies a mutation (through the replicated log on a cluster); resolves once it is
    /// applied on this node. A lost compare-and-set and an exceeded ceiling come back as
    /// [`Error::is_conflict`] and [`Error::is_over_ceiling`].
    fn write(&self, m: Mutation) -> BoxFuture<'_, Result<Applied>>;
    /// Waits until this node has applied everything committed so far (a no-op on one node).
    fn barrier(&self) -> BoxFuture<'_, Result<()>>;
    /// The write limits.
    fn limits(&self) -> Limits;
    /// This node's id in a cluster (0 on one node); audit records carry it.
    fn node_id(&self) -> u64 {
        0
    }
    /// Now, Unix ms.
    fn now_ms(&self) -> u64 {
        now_ms()
    }
    /// A review item stored by an earlier version in another encoding, if it is one.
    fn legacy_review(&self, _bytes: &[u8]) -> Option<Review> {
        None
    }
    /// An audit record stored by an earlier version in another encoding, if it is one.
    fn legacy_audit(&self, _bytes: &[u8]) -> Option<AuditRecord> {
        None
    }
}

/// The system clock, Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A [`Host`] applying to one engine directly.
#[derive(Debug, Clone)]
pub struct Direct {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Its limits.
    pub limits: Limits,
}

impl Direct {
    /// A host over `engine` with default limits.
    pub fn new(engine: Arc<Engine>) -> Self {
        Direct {
            engine,
            limits: Limits::default(),
        }
    }
}

impl Host for Direct {
    fn engine(&self) -> Result<Arc<Engine>> {
        Ok(Arc::clone(&self.engine))
    }
    fn write(&self, m: Mutation) -> BoxFuture<'_, Result<Applied>> {
        let e = Arc::clone(&self.engine);
        Box::pin(blocking(move || Ok(e.apply(m, 0)?)))
    }
    fn barrier(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn limits(&self) -> Limits {
        self.limits
    }
}

/// Runs blocking work (storage, model inference) on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    // The caller's span follows the work, so storage spans nest under the request in traces.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Error::Internal(format!("worker thread failed: {e}")))?
}
