//! The server's one write path: every mutation a request makes goes through here, and is
//! applied to the local engine on a single node or proposed to the replicated log on a
//! cluster (where the state machine applies it on every node, `cluster/sm.rs`). Refusals that
//! depend only on the request and the current state are decided here, before the log, so the
//! log holds nothing a replica cannot apply.
use quiver_storage::{Applied, Engine, Mutation};

use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};

impl AppState {
    /// Applies a write: through the replicated log on a cluster (forwarded to the leader,
    /// acknowledged once committed), directly on a single node.
    pub async fn write(&self, w: Mutation) -> ApiResult<Applied> {
        refuse_staging(&w)?;
        self.write_any(w).await
    }

    /// [`AppState::write`], also to a restore's hidden copy: for the restore itself.
    pub(crate) async fn write_any(&self, w: Mutation) -> ApiResult<Applied> {
        let engine = self.engine()?;
        self.check_segments(&engine, &w)?;
        match self.cluster() {
            Some(c) => {
                precheck(&engine, &w)?;
                c.write(w).await
            }
            None => blocking(move || Ok(engine.apply(w, 0)?)).await,
        }
    }

    /// Refuses a write that adds rows to a collection already holding
    /// `limits.max_segments_per_collection` sealed segments (each is memory maps and files):
    /// decided here, before the write enters the log, so every replica applies the same.
    /// Deletes still pass, and compaction can bring the count back down.
    fn check_segments(&self, engine: &Engine, w: &Mutation) -> ApiResult<()> {
        let most = self.settings.limits.max_segments_per_collection;
        if most == 0 || !matches!(w, Mutation::Upsert { .. } | Mutation::UpdatePayload { .. }) {
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
}

/// Rejects, before it enters the replicated log, a write the engine would refuse for its
/// shape (so the log holds no batch that fails on every replica, and the error names the
/// field exactly as on a single node).
/// A restore's hidden copy is not a user's to write (it is not found under its name).
fn refuse_staging(w: &Mutation) -> ApiResult<()> {
    if quiver_storage::types::is_staging_name(w.collection()) {
        return Err(quiver_storage::Error::CollectionNotFound {
            name: w.collection().to_owned(),
        }
        .into());
    }
    Ok(())
}

fn precheck(engine: &Engine, w: &Mutation) -> ApiResult<()> {
    if let Mutation::Upsert { collection, points } = w {
        let dim = match engine.collection_or_staging(collection) {
            Ok(c) => c.config().dim,
            Err(_) => points.first().map_or(0, |p| p.vector.len()),
        };
        for (i, p) in points.iter().enumerate() {
            quiver_storage::types::validate_vector(&p.vector, dim, &format!("points[{i}].vector"))?;
            p.id.validate(&format!("points[{i}].id"))?;
        }
        // Sparse field values a replica could not index never enter the log.
        if let Ok(c) = engine.collection_or_staging(collection) {
            c.check_payloads(points)?;
        }
    }
    Ok(())
}
