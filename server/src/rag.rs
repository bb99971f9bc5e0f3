//! The `Rag` gRPC service: a thin adapter over the pipeline in `quiver_rag`. Each handler
//! checks the caller (tenant, key scope), converts its message (`convert::rag`), calls the
//! pipeline and converts the answer back. The pipeline reaches the database through
//! [`AppState`]'s [`Host`] implementation: the server's one write path (local, or the
//! replicated log on a cluster), its read barrier, its limits and its node id.
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use quiver_proto::v1 as pb;
use quiver_proto::v1::rag_server::Rag as RagRpc;
use quiver_rag::{self as rag, Host, HostKind, Providers, Rag};
use quiver_storage::{Applied, Engine, Mutation};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::rag as conv;
use crate::error::{ApiError, ApiResult, Kind};
use crate::grpc::AppState;

pub use quiver_rag::SetupError as RagSetupError;

/// A server error handed to the pipeline, classified so it can act on lost compare-and-sets
/// and exceeded ceilings; it comes back out unchanged (`From<rag::Error> for ApiError`).
fn to_host(e: ApiError) -> rag::Error {
    let kind = match e.kind() {
        Kind::Aborted => HostKind::Conflict,
        Kind::ResourceExhausted => HostKind::OverCeiling,
        Kind::InvalidArgument
        | Kind::NotFound
        | Kind::AlreadyExists
        | Kind::FailedPrecondition
        | Kind::Unavailable
        | Kind::DeadlineExceeded
        | Kind::Unauthenticated
        | Kind::PermissionDenied
        | Kind::DataLoss
        | Kind::Internal => HostKind::Other,
    };
    rag::Error::Host {
        kind,
        error: Box::new(e),
    }
}

impl Host for AppState {
    fn engine(&self) -> rag::Result<Arc<Engine>> {
        AppState::engine(self).map_err(to_host)
    }
    fn write(&self, m: Mutation) -> BoxFuture<'_, rag::Result<Applied>> {
        Box::pin(async move { AppState::write(self, m).await.map_err(to_host) })
    }
    fn barrier(&self) -> BoxFuture<'_, rag::Result<()>> {
        Box::pin(async move {
            self.read_barrier(pb::Consistency::Leader as i32)
                .await
                .map_err(to_host)
        })
    }
    fn limits(&self) -> rag::Limits {
        rag::Limits {
            max_payload_bytes: self.settings.max_payload_bytes,
            segment_max_rows: self.settings.segment_max_rows,
        }
    }
    fn node_id(&self) -> u64 {
        self.settings.cluster.as_ref().map_or(0, |c| c.node_id)
    }
    fn legacy_review(&self, bytes: &[u8]) -> Option<rag::Review> {
        conv::legacy_review(bytes)
    }
    fn legacy_audit(&self, bytes: &[u8]) -> Option<rag::AuditRecord> {
        conv::legacy_audit(bytes)
    }
}

/// The tenant of a request: with API keys, the key (`key:<id>`; a header cannot claim another
/// tenant); otherwise the `x-quiver-tenant` header (letters, digits, `._-`, at most 128).
pub fn tenant_of<T>(req: &Request<T>) -> ApiResult<String> {
    if let Some(p) = req.extensions().get::<crate::auth::Principal>() {
        return Ok(format!("key:{}", p.key_id));
    }
    match req.metadata().get("x-quiver-tenant") {
        None => Ok("default".into()),
        Some(v) => {
            let t = v
                .to_str()
                .map_err(|_| ApiError::bad("x-quiver-tenant", "is not ASCII"))?;
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(ApiError::bad(
                    "x-quiver-tenant",
                    "must be 1 to 128 letters, digits, '.', '_' or '-'",
                ));
            }
            Ok(t.to_owned())
        }
    }
}

/// The `Rag` gRPC service.
#[derive(Debug, Clone)]
pub struct RagService {
    app: Arc<AppState>,
    providers: Providers,
    rag: Arc<OnceLock<Arc<Rag>>>,
}

impl RagService {
    /// A service over the shared state; fails when a configured provider cannot be set up.
    pub fn new(app: Arc<AppState>) -> Result<Self, RagSetupError> {
        let providers = Providers::new(&app.settings.rag)?;
        Ok(RagService {
            app,
            providers,
            rag: Arc::new(OnceLock::new()),
        })
    }

    /// The pipeline (once storage is open).
    fn rag(&self) -> ApiResult<Arc<Rag>> {
        if let Some(r) = self.rag.get() {
            return Ok(Arc::clone(r));
        }
        let host = Arc::clone(&self.app) as Arc<dyn Host>;
        let r = Rag::new(self.app.settings.rag.clone(), host, self.providers.clone())?;
        Ok(Arc::clone(self.rag.get_or_init(|| {
            r.start();
            r
        })))
    }
}

#[tonic::async_trait]
impl RagRpc for RagService {
    async fn ingest_documents(
        &self,
        req: Request<Streaming<pb::IngestDocumentsRequest>>,
    ) -> Result<Response<pb::IngestDocumentsResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let principal = req.extensions().get::<crate::auth::Principal>().cloned();
        let mut inbound = req.into_inner();
        let rag = self.rag()?;
        let mut out = pb::IngestDocumentsResponse::default();
        let mut message = 0u64;
        let request_id = rag::request_id();
        while let Some(item) = inbound.next().await {
            message += 1;
            let r = item?;
            crate::auth::check_principal(principal.as_ref(), &r.collection)?;
            self.app.check_rows("documents", r.documents.len())?;
            let ndocs = r.documents.len() as u64;
            let ctx = rag::CallContext {
                request_id: request_id.clone(),
                tenant: tenant.clone(),
                collection: r.collection.clone(),
            };
            let written = async {
                let create = match (r.create, r.config) {
                    (true, c) => Some(conv::rag_config(c.unwrap_or_default())?),
                    (false, _) => None,
                };
                let docs = conv::documents(r.documents);
                Ok::<_, ApiError>(
                    rag.ingest(&r.collection, docs, create.as_ref(), &ctx)
                        .await?,
                )
            }
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "message {message} ({} documents written before it)",
                    out.documents
                ))
            })?;
            out.documents += ndocs;
            out.chunks += written.chunks;
            out.flagged_chunks += written.flagged;
        }
        Ok(Response::new(out))
    }

    async fn delete_document(
        &self,
        req: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        let chunks = self
            .rag()?
            .delete_document(&r.collection, &r.document_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteDocumentResponse { chunks }))
    }

    async fn ask(&self, req: Request<pb::AskRequest>) -> Result<Response<pb::AskResponse>, Status> {
        let tenant = tenant_of(&req)?;
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.app.read_barrier(r.consistency).await?;
        let q = conv::question(r)?;
        let a = self
            .rag()?
            .ask(q, &tenant, None)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(conv::to_pb_answer(a)))
    }

    type AskStreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AskEvent, Status>> + Send>>;

    async fn ask_stream(
        &self,
        req: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStreamStream>, Status> {
        let tenant = tenant_of(&req)?;
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.app.read_barrier(r.consistency).await?;
        let q = conv::question(r)?;
        let rag = self.rag()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (events, mut from_rag) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let asking = rag.ask(q, &tenant, Some(events));
            tokio::pin!(asking);
            // Events are forwarded while the answer is made; the answer (or the error) last.
            let done = loop {
                tokio::select! {
                    biased;
                    Some(e) = from_rag.recv() => {
                        if tx.send(Ok(conv::to_pb_event(e))).is_err() {
                            return;
                        }
                    }
                    done = &mut asking => break done,
                }
            };
            while let Ok(e) = from_rag.try_recv() {
                let _ = tx.send(Ok(conv::to_pb_event(e)));
            }
            let last = match done {
                Ok(a) => Ok(conv::to_pb_event(rag::Event::Done(Box::new(a)))),
                Err(e) => Err(Status::from(ApiError::from(e))),
            };
            let _ = tx.send(last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn get_rag_config(
        &self,
        req: Request<pb::GetRagConfigRequest>,
    ) -> Result<Response<pb::RagConfig>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let cfg = self
            .rag()?
            .config(&req.get_ref().collection)
            .map_err(ApiError::from)?;
        Ok(Response::new(conv::to_pb_rag_config(cfg)))
    }

    async fn set_rag_config(
        &self,
        req: Request<pb::SetRagConfigRequest>,
    ) -> Result<Response<pb::RagConfig>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        let policy = r.policy.map(|p| conv::policy(p, "policy")).transpose()?;
        let retrieval = match r.retrieval.as_deref() {
            Some(s) => Some(
                conv::retrieval(s, "retrieval")?
                    .ok_or_else(|| ApiError::bad("retrieval", "use dense, text or hybrid"))?,
            ),
            None => None,
        };
        let cfg = self
            .rag()?
            .set_config(&r.collection, policy, r.generator, retrieval, r.rerank)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(conv::to_pb_rag_config(cfg)))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        crate::auth::check_listing(&req, &req.get_ref().collection)?;
        let q = conv::audit_query(req.into_inner());
        let page = self.rag()?.audit_records(q).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAuditResponse {
            records: page.items.into_iter().map(conv::to_pb_audit).collect(),
            next_after_id: page.next_after_id,
        }))
    }

    async fn list_reviews(
        &self,
        req: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        crate::auth::check_listing(&req, &req.get_ref().collection)?;
        let q = conv::review_query(req.into_inner())?;
        let page = self.rag()?.reviews(q).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListReviewsResponse {
            items: page.items.into_iter().map(conv::to_pb_review).collect(),
            next_after_id: page.next_after_id,
        }))
    }

    async fn get_review(
        &self,
        req: Request<pb::GetReviewRequest>,
    ) -> Result<Response<pb::ReviewItem>, Status> {
        let item = self
            .rag()?
            .review(&req.get_ref().id)
            .await
            .map_err(ApiError::from)?;
        crate::auth::check_collection(&req, &item.collection)?;
        Ok(Response::new(conv::to_pb_review(item)))
    }

    async fn decide_review(
        &self,
        req: Request<pb::DecideReviewRequest>,
    ) -> Result<Response<pb::ReviewItem>, Status> {
        let rag = self.rag()?;
        let pending = rag
            .review(&req.get_ref().id)
            .await
            .map_err(ApiError::from)?;
        crate::auth::check_collection(&req, &pending.collection)?;
        let d = conv::decision(req.into_inner())?;
        let item = rag.decide(&d).await.map_err(ApiError::from)?;
        Ok(Response::new(conv::to_pb_review(item)))
    }
}
