//! `quiver.v1.Points`.
use std::sync::Arc;

use quiver_proto::v1 as pb;
use quiver_proto::v1::points_server::Points;
use quiver_storage::ReadOptions;
use quiver_storage::collection::PayloadLimits;
use quiver_storage::types::PointWrite;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};
use quiver_storage::Mutation;

/// The Points service.
#[derive(Debug, Clone)]
pub struct PointsService {
    state: Arc<AppState>,
}

impl PointsService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        PointsService { state }
    }

    async fn upsert_batch(&self, r: pb::UpsertRequest) -> ApiResult<(u64, u64)> {
        let (collection, points) = self.prepare(r)?;
        self.write_points(collection, points).await
    }

    /// Checks and converts a message's points (no write yet).
    fn prepare(&self, r: pb::UpsertRequest) -> ApiResult<(String, Vec<PointWrite>)> {
        self.state.check_rows("points", r.points.len())?;
        let points = convert::points(r.points, self.state.settings.max_payload_bytes)?;
        Ok((r.collection, points))
    }

    /// Writes converted points; returns how many and the LSN.
    async fn write_points(
        &self,
        collection: String,
        points: Vec<PointWrite>,
    ) -> ApiResult<(u64, u64)> {
        let n = points.len() as u64;
        let out = self
            .state
            .write(Mutation::Upsert { collection, points })
            .await?;
        Ok((n, out.lsn))
    }
}

/// One message of an upsert stream, read and converted ahead of the write.
struct Prepared {
    /// Its position on the stream (1 = first).
    message: u64,
    batch_id: u64,
    /// The collection and points, or why the message ends the stream.
    points: Result<(String, Vec<PointWrite>), Refused>,
}

/// Why a stream message is not written.
enum Refused {
    /// The stream itself failed (a message too large or malformed), or the key may not write
    /// the collection: reported as it is.
    Plain(Status),
    /// The message's content: reported with where it stands on the stream.
    Content(ApiError),
}

/// A stream message's refusal, with where it stands on the stream.
fn at_batch(e: ApiError, batch_id: u64, message: u64, total: u64) -> Status {
    e.context(format_args!(
        "batch {batch_id} (message {message} on this stream; {total} points acknowledged before it)"
    ))
    .into()
}

type AckStream = ReceiverStream<Result<pb::UpsertAck, Status>>;

#[tonic::async_trait]
impl Points for PointsService {
    async fn upsert(
        &self,
        req: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let (upserted, lsn) = self.upsert_batch(req.into_inner()).await?;
        Ok(Response::new(pb::UpsertResponse { upserted, lsn }))
    }

    type UpsertStreamStream = AckStream;

    async fn upsert_stream(
        &self,
        req: Request<Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let principal = req.extensions().get::<crate::auth::Principal>().cloned();
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // Two stages: a reader decodes, authorises and converts the next message while the
        // current one is written (the write, an fsynced WAL append, waits on the disk; the
        // decode is CPU). The reader runs at most one message ahead, so a fast client is still
        // held back by HTTP/2 flow control, and the server holds at most three messages of a
        // stream (one written, one converted and waiting, one being read) instead of one.
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<Prepared>(1);
        let reader = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut message = 0u64;
                while let Some(item) = inbound.next().await {
                    message += 1;
                    // Refusals go through the writer too, so they reach the client after the
                    // acknowledgements of the messages before them.
                    let (batch_id, points) = match item {
                        Ok(r) => (
                            r.batch_id,
                            match crate::auth::check_principal(principal.as_ref(), &r.collection) {
                                Ok(()) => this.prepare(r).map_err(Refused::Content),
                                Err(s) => Err(Refused::Plain(s)),
                            },
                        ),
                        Err(s) => (0, Err(Refused::Plain(crate::error::oversized(s)))),
                    };
                    let refused = points.is_err();
                    let prepared = Prepared {
                        message,
                        batch_id,
                        points,
                    };
                    if ready_tx.send(prepared).await.is_err() || refused {
                        return; // the writer stopped, or this message ends the stream
                    }
                }
            })
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut total = 0u64;
            while let Some(p) = ready.recv().await {
                let result = match p.points {
                    Ok((collection, points)) => this
                        .write_points(collection, points)
                        .await
                        .map_err(|e| at_batch(e, p.batch_id, p.message, total)),
                    Err(Refused::Plain(s)) => Err(s),
                    Err(Refused::Content(e)) => Err(at_batch(e, p.batch_id, p.message, total)),
                };
                match result {
                    Ok((n, lsn)) => {
                        total += n;
                        let ack = pb::UpsertAck {
                            batch_id: p.batch_id,
                            upserted: n,
                            total_upserted: total,
                            lsn,
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break; // client went away
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                }
            }
            // Whatever the reader has read ahead is never written.
            reader.abort();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get(
        &self,
        req: Request<pb::GetPointsRequest>,
    ) -> Result<Response<pb::GetPointsResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.state.read_barrier(r.consistency).await?;
        let engine = self.state.engine()?;
        self.state.check_rows("ids", r.ids.len())?;
        let ids = convert::unique_point_ids(&r.ids, "ids")?;
        let opts = ReadOptions {
            with_vectors: r.with_vectors,
            with_payload: r.with_payload,
        };
        let budget = self.state.response_budget();
        let records = blocking(move || {
            Ok(engine
                .collection(&r.collection)?
                .get_within(&ids, opts, budget)?)
        })
        .await?;
        Ok(Response::new(pb::GetPointsResponse {
            points: records.into_iter().map(convert::retrieved).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeletePointsRequest>,
    ) -> Result<Response<pb::DeletePointsResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.state.check_rows("ids", r.ids.len())?;
        let ids = convert::point_ids(&r.ids, "ids")?;
        let filter = convert::filter(r.filter.as_ref())?;
        if filter.is_some() && !ids.is_empty() {
            return Err(ApiError::bad("filter", "set ids or a filter, not both").into());
        }
        if let Some(f) = &filter {
            // A malformed filter is refused here, not in the log.
            let engine = self.state.engine()?;
            let c = engine.collection(&r.collection).map_err(ApiError::from)?;
            c.check_filter(f).map_err(ApiError::from)?;
        }
        let collection = r.collection;
        let w = match filter {
            Some(filter) => Mutation::DeleteByFilter { collection, filter },
            None => Mutation::Delete { collection, ids },
        };
        let out = self.state.write(w).await?;
        Ok(Response::new(pb::DeletePointsResponse {
            deleted: out.count,
            lsn: out.lsn,
        }))
    }

    async fn count(
        &self,
        req: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.state.read_barrier(r.consistency).await?;
        let engine = self.state.engine()?;
        let filter = convert::filter(r.filter.as_ref())?;
        let count = blocking(move || {
            let c = engine.collection(&r.collection)?;
            Ok(match &filter {
                Some(f) => c.count_filtered(f)?,
                None => c.count(),
            })
        })
        .await?;
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn scroll(
        &self,
        req: Request<pb::ScrollRequest>,
    ) -> Result<Response<pb::ScrollResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        let engine = self.state.engine()?;
        let cursor = convert::cursor(&r.cursor)?;
        let limit = match r.limit {
            0 => 100,
            l if l > 10_000 => {
                return Err(crate::error::ApiError::bad(
                    "limit",
                    format!("limit = {l} exceeds 10000"),
                )
                .into());
            }
            l => l as usize,
        };
        let opts = ReadOptions {
            with_vectors: r.with_vectors,
            with_payload: r.with_payload,
        };
        let filter = convert::filter(r.filter.as_ref())?;
        let budget = self.state.response_budget();
        let (page, next) = blocking(move || {
            let c = engine.collection(&r.collection)?;
            Ok(match &filter {
                Some(f) => c.scroll_filtered(f, cursor, limit, opts, budget)?,
                None => c.scroll(cursor, limit, opts, budget)?,
            })
        })
        .await?;
        Ok(Response::new(pb::ScrollResponse {
            points: page.into_iter().map(convert::retrieved).collect(),
            next_cursor: convert::to_cursor(next),
        }))
    }

    async fn update_payload(
        &self,
        req: Request<pb::UpdatePayloadRequest>,
    ) -> Result<Response<pb::UpdatePayloadResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.state.check_rows("ids", r.ids.len())?;
        let ids = convert::unique_point_ids(&r.ids, "ids")?;
        let limits = PayloadLimits {
            per_point: self.state.settings.max_payload_bytes,
            total: self.state.settings.max_message_bytes,
        };
        // Each id gets the whole `set`: refuse before the log what no merge could fit.
        let set_bytes = r.set_json.len();
        if set_bytes.saturating_mul(ids.len()) > limits.total {
            return Err(ApiError::TooLarge(format!(
                "ids: {} points × {set_bytes} bytes of set_json exceeds {} bytes per update (server.max_message_bytes); update fewer ids at a time",
                ids.len(),
                limits.total
            ))
            .into());
        }
        let set = match convert::payload(
            (!r.set_json.is_empty()).then_some(r.set_json.as_str()),
            "set_json",
            self.state.settings.max_payload_bytes,
        )? {
            Some(bytes) => {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
                    .map_err(|e| ApiError::bad("set_json", e.to_string()))?
            }
            None => serde_json::Map::new(),
        };
        let out = self
            .state
            .write(Mutation::UpdatePayload {
                collection: r.collection,
                ids,
                set,
                unset: r.unset,
                overwrite: r.overwrite,
                limits,
            })
            .await?;
        Ok(Response::new(pb::UpdatePayloadResponse {
            updated: out.count,
            lsn: out.lsn,
        }))
    }
}
