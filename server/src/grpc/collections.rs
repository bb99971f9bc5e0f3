//! `quiver.v1.Collections`.
use std::sync::Arc;

use quiver_proto::v1 as pb;
use quiver_proto::v1::collections_server::Collections;
use quiver_storage::{Collection, CollectionConfig, DEFAULT_PQ_BITS, IndexConfig, IndexKind};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};
use quiver_storage::Mutation;

/// The Collections service.
#[derive(Debug, Clone)]
pub struct CollectionsService {
    state: Arc<AppState>,
}

impl CollectionsService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        CollectionsService { state }
    }
}

/// A collection's config and live stats in proto form.
pub fn info(c: &Collection) -> pb::CollectionInfo {
    let cfg = c.config();
    let s = c.stats();
    pb::CollectionInfo {
        config: Some(pb::CollectionConfig {
            name: cfg.name.clone(),
            dim: cfg.dim as u32,
            metric: convert::to_pb_metric(cfg.metric) as i32,
            index: Some(pb::IndexParams {
                kind: match cfg.index.kind {
                    IndexKind::Flat => pb::IndexKind::Flat as i32,
                    IndexKind::IvfPq => pb::IndexKind::IvfPq as i32,
                },
                nlist: cfg.index.nlist.unwrap_or(0),
                // What the defaults chose: the PQ shape follows from the dimension. nlist
                // stays 0 (auto) here: it is ≈ 4·√rows of each segment.
                pq_m: match cfg.index.kind {
                    IndexKind::IvfPq => cfg.index.pq_m.unwrap_or_else(|| {
                        let bits = cfg.index.pq_bits.unwrap_or(DEFAULT_PQ_BITS);
                        let m = if bits == 4 {
                            quiver_storage::index::pq::default_m4(cfg.dim)
                        } else {
                            quiver_storage::index::pq::default_m(cfg.dim)
                        };
                        m as u32
                    }),
                    IndexKind::Flat => 0,
                },
                pq_bits: if cfg.index.kind == IndexKind::IvfPq {
                    cfg.index.pq_bits.unwrap_or(DEFAULT_PQ_BITS)
                } else {
                    0
                },
            }),
            segment_max_rows: cfg.segment_max_rows,
            schema: c
                .schema()
                .into_iter()
                .map(|(key, t)| convert::to_pb_field(key, t))
                .collect(),
        }),
        stats: Some(pb::CollectionStats {
            points: s.points,
            sealed_segments: s.sealed_segments,
            mutable_points: s.mutable_points,
            bytes_on_disk: s.bytes_on_disk,
            wal_bytes: s.wal_bytes,
            index_bytes: s.index_bytes,
            dead_points: s.dead_points,
            index_state: s.index_state,
            last_lsn: s.last_lsn,
            checkpoint_lsn: s.checkpoint_lsn,
        }),
    }
}

fn index_config(p: Option<pb::IndexParams>) -> ApiResult<IndexConfig> {
    let Some(p) = p else {
        return Ok(IndexConfig::default());
    };
    let kind = match pb::IndexKind::try_from(p.kind) {
        Ok(pb::IndexKind::Flat) => IndexKind::Flat,
        Ok(pb::IndexKind::Unspecified | pb::IndexKind::IvfPq) => IndexKind::IvfPq,
        Err(_) => {
            return Err(ApiError::bad(
                "index.kind",
                format!("unknown index kind {}", p.kind),
            ));
        }
    };
    if !matches!(p.pq_bits, 0 | 4 | 8) {
        return Err(ApiError::bad(
            "index.pq_bits",
            format!("{} is not supported; use 4 (fast-scan) or 8", p.pq_bits),
        ));
    }
    if kind == IndexKind::Flat && (p.nlist != 0 || p.pq_m != 0 || p.pq_bits != 0) {
        return Err(ApiError::bad(
            "index",
            "nlist, pq_m and pq_bits apply to INDEX_KIND_IVF_PQ (the default) only",
        ));
    }
    Ok(IndexConfig {
        kind,
        nlist: (p.nlist > 0).then_some(p.nlist),
        pq_m: (p.pq_m > 0).then_some(p.pq_m),
        pq_bits: (p.pq_bits > 0).then_some(p.pq_bits),
    })
}

#[tonic::async_trait]
impl Collections for CollectionsService {
    async fn create(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        let engine = self.state.engine()?;
        let config = CollectionConfig {
            name: r.name,
            dim: r.dim as usize,
            metric: convert::metric(r.metric)?,
            index: index_config(r.index)?,
            segment_max_rows: r
                .segment_max_rows
                .unwrap_or(self.state.settings.segment_max_rows),
            schema: convert::schema(&r.schema)?,
            labels: Default::default(),
        };
        // A user's name, never a restore's hidden one.
        quiver_storage::types::validate_collection_name(&config.name).map_err(ApiError::from)?;
        config.validate().map_err(ApiError::from)?;
        let most = self.state.settings.limits.max_collections;
        if most > 0 && engine.list().len() >= most as usize {
            return Err(ApiError::TooLarge(format!(
                "name: the server already holds {most} collections (limits.max_collections)"
            ))
            .into());
        }
        let name = config.name.clone();
        self.state.write(Mutation::CreateCollection(config)).await?;
        let out = blocking(move || Ok(info(engine.collection(&name)?.as_ref()))).await?;
        Ok(Response::new(out))
    }

    async fn get(
        &self,
        req: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let engine = self.state.engine()?;
        crate::auth::check_collection(&req, &req.get_ref().name)?;
        let name = req.into_inner().name;
        let out = blocking(move || Ok(info(engine.collection(&name)?.as_ref()))).await?;
        Ok(Response::new(out))
    }

    async fn list(
        &self,
        req: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let engine = self.state.engine()?;
        // A key limited to some collections sees only those.
        let principal = req.extensions().get::<crate::auth::Principal>().cloned();
        let collections = blocking(move || {
            Ok(engine
                .list()
                .iter()
                .filter(|c| {
                    principal
                        .as_ref()
                        .is_none_or(|p| p.allows(&c.config().name))
                })
                .map(|c| info(c))
                .collect())
        })
        .await?;
        Ok(Response::new(pb::ListCollectionsResponse { collections }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().name)?;
        let name = req.into_inner().name;
        quiver_storage::types::validate_collection_name(&name).map_err(ApiError::from)?;
        self.state.write(Mutation::DropCollection(name)).await?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }

    async fn flush(
        &self,
        req: Request<pb::FlushCollectionRequest>,
    ) -> Result<Response<pb::FlushCollectionResponse>, Status> {
        let engine = self.state.engine()?;
        crate::auth::check_collection(&req, &req.get_ref().name)?;
        let name = req.into_inner().name;
        let checkpoint_lsn = blocking(move || Ok(engine.collection(&name)?.flush()?)).await?;
        Ok(Response::new(pb::FlushCollectionResponse {
            checkpoint_lsn,
        }))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactCollectionRequest>,
    ) -> Result<Response<pb::CompactCollectionResponse>, Status> {
        let engine = self.state.engine()?;
        crate::auth::check_collection(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        let opts = self.state.settings.compaction.options(r.force);
        let started = std::time::Instant::now();
        let (before, reports, after) = blocking(move || {
            let c = engine.collection(&r.name)?;
            let before = c.stats().sealed_segments;
            let reports = crate::compactor::compact(&c, opts)?;
            Ok((before, reports, c.stats().sealed_segments))
        })
        .await?;
        Ok(Response::new(pb::CompactCollectionResponse {
            compactions: reports.len() as u32,
            segments_before: before,
            segments_after: after,
            rows_reclaimed: reports.iter().map(|r| r.rows_before - r.rows_after).sum(),
            bytes_reclaimed: reports
                .iter()
                .map(|r| r.bytes_before.saturating_sub(r.bytes_after))
                .sum(),
            seconds: started.elapsed().as_secs_f64(),
        }))
    }

    async fn declare_fields(
        &self,
        req: Request<pb::DeclareFieldsRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        let engine = self.state.engine()?;
        let fields = convert::schema(&r.fields)?;
        self.state
            .write(Mutation::DeclareFields {
                collection: r.name.clone(),
                fields,
            })
            .await?;
        let out = blocking(move || Ok(info(engine.collection(&r.name)?.as_ref()))).await?;
        Ok(Response::new(out))
    }
}
