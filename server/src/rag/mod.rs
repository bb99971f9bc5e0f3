//! Built-in RAG: documents are chunked, flagged for injected instructions, embedded and stored
//! as points; `Ask` embeds the question, retrieves chunks (with the caller's filter) and
//! answers: the ranked chunks (`retrieve_only`), quoted sentences with citations
//! (`extractive`, no LLM), or an LLM's answer from a spotlighted prompt with checked
//! citations (`generate`), optionally held for human review (`review`). Every LLM and
//! embedding call is audited, counted against the tenant's token budget, priced, traced with
//! OpenTelemetry GenAI attributes and measured. The storage engine knows nothing of this:
//! chunks are ordinary points whose payload carries the text and its provenance, and RAG state
//! lives in the engine's service keyspaces.
pub mod ask;
#[cfg(test)]
mod attack_rate;
pub mod audit;
pub mod cache;
pub mod chunk;
pub mod embed;
pub mod extract;
pub mod fold;
pub mod inject;
pub mod llm;
#[cfg(feature = "local-models")]
pub mod local;
pub mod models;
pub mod pii;
pub mod prompt;
pub mod settings;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quiver_proto::v1 as pb;
use quiver_proto::v1::rag_server::Rag as RagRpc;
use quiver_storage::filter::{Condition, FieldType, Filter, Literal, Range};
use quiver_storage::{Collection, CollectionConfig, Engine, Metric, PointId, PointWrite};
use serde_json::{Map, Value, json};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};
use chunk::ChunkParams;
use embed::{Embedder, EmbeddingCache};
use llm::{Generator, Remote};
use quiver_storage::Mutation;
use settings::RagSection;

/// Everything the RAG endpoints share: settings, providers, caches and durable state.
pub struct Rag {
    /// The `[rag]` section.
    pub cfg: RagSection,
    /// Collection settings, review queue, token usage.
    pub state: state::RagState,
    /// Audit records.
    pub audit: audit::AuditLog,
    answers: cache::AnswerCache,
    semantic: cache::SemanticCache,
    embeddings: EmbeddingCache,
    generators: BTreeMap<String, Arc<dyn Generator>>,
    remote_embedders: BTreeMap<String, Remote>,
    embedders: Mutex<HashMap<String, Arc<dyn Embedder>>>,
    local: models::LocalModels,
    redactor: pii::Redactor,
}

impl std::fmt::Debug for Rag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rag")
            .field("generators", &self.generators.keys().collect::<Vec<_>>())
            .field(
                "embedders",
                &self.remote_embedders.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Providers that could not be set up (missing key, bad URL).
#[derive(Debug, thiserror::Error)]
#[error("rag: {0}")]
pub struct RagSetupError(pub String);

/// HTTP clients and provider keys, read once at start (so a missing key fails start-up).
#[derive(Clone)]
pub struct Providers {
    generators: BTreeMap<String, Arc<dyn Generator>>,
    embedders: BTreeMap<String, Remote>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("generators", &self.generators.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Providers {
    /// Builds the configured providers.
    pub fn new(cfg: &RagSection) -> Result<Providers, RagSetupError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("quiver/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RagSetupError(format!("HTTP client: {e}")))?;
        let mut generators: BTreeMap<String, Arc<dyn Generator>> = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let r = Remote::new(name, p, http.clone())
                .map_err(|e| RagSetupError(format!("rag.providers.{name}: {e}")))?;
            let g: Arc<dyn Generator> = match p.kind.as_str() {
                "anthropic" => Arc::new(llm::AnthropicChat::new(r)),
                _ => Arc::new(llm::OpenAiChat::new(r)),
            };
            generators.insert(name.clone(), g);
        }
        let mut embedders = BTreeMap::new();
        for (name, p) in &cfg.embedders {
            let r = Remote::new(name, p, http.clone())
                .map_err(|e| RagSetupError(format!("rag.embedders.{name}: {e}")))?;
            embedders.insert(name.clone(), r);
        }
        Ok(Providers {
            generators,
            embedders,
        })
    }
}

impl Rag {
    fn new(
        cfg: RagSection,
        engine: &Engine,
        sink: Arc<dyn state::Sink>,
        node_id: u64,
        providers: Providers,
    ) -> Rag {
        Rag {
            state: state::RagState::new(sink, engine.aux()),
            audit: audit::AuditLog::new(engine.aux(), cfg.audit_max_text_bytes, node_id),
            answers: cache::AnswerCache::new(cfg.answer_cache_entries),
            semantic: cache::SemanticCache::new(if cfg.semantic_cache_threshold > 0.0 {
                cfg.answer_cache_entries
            } else {
                0
            }),
            embeddings: EmbeddingCache::new(cfg.embedding_cache_entries),
            generators: providers.generators,
            remote_embedders: providers.embedders,
            embedders: Mutex::new(HashMap::new()),
            local: models::LocalModels::new(cfg.models_dir(), cfg.local_price),
            redactor: pii::Redactor::default(),
            cfg,
        }
    }

    /// Every generator name a request may use.
    fn generator_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.generators.keys().cloned().collect();
        v.extend(["local".to_owned(), "extractive".to_owned()]);
        v
    }

    /// The generator called `name` (`None` = extractive). Loads the local model on first use:
    /// call from a blocking thread.
    pub fn generator(&self, name: &str) -> ApiResult<Option<Arc<dyn Generator>>> {
        match name {
            "extractive" => Ok(None),
            "local" => Ok(Some(self.local.generator()?)),
            other => self
                .generators
                .get(other)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad(
                        "provider",
                        format!(
                            "unknown provider {other:?} (known: {})",
                            self.generator_names().join(", ")
                        ),
                    )
                }),
        }
    }

    /// Whether `name` is a known generator (without loading anything).
    fn generator_known(&self, name: &str) -> bool {
        name.is_empty() || self.generator_names().iter().any(|n| n == name)
    }

    /// Whether the generator `name` sends text out of our environment.
    fn generator_hosted(&self, name: &str) -> bool {
        self.generators.get(name).is_some_and(|g| g.hosted())
    }

    /// The embedder called `name`; connects or loads it on first use (blocking thread).
    pub fn embedder(&self, name: &str) -> ApiResult<Arc<dyn Embedder>> {
        if let Some(e) = self
            .embedders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(Arc::clone(e));
        }
        let e: Arc<dyn Embedder> = match name {
            "builtin" => Arc::new(embed::Builtin),
            "local" => self.local.embedder()?,
            other => {
                let r = self.remote_embedders.get(other).ok_or_else(|| {
                    ApiError::bad(
                        "embedder",
                        format!(
                            "unknown embedder {other:?} (known: builtin, local{})",
                            self.remote_embedders
                                .keys()
                                .map(|k| format!(", {k}"))
                                .collect::<String>()
                        ),
                    )
                })?;
                let rt = tokio::runtime::Handle::current();
                let inner = rt.block_on(llm::OpenAiEmbeddings::connect(r.clone()))?;
                Arc::new(embed::RemoteEmbedder {
                    inner,
                    rt,
                    redactor: pii::Redactor::default(),
                })
            }
        };
        self.embedders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::clone(&e));
        Ok(e)
    }

    fn embedder_hosted(&self, name: &str) -> bool {
        self.remote_embedders
            .get(name)
            .is_some_and(|r| r.cfg.hosted)
    }

    /// Embeds through the cache, auditing the call when the model ran.
    pub fn embed(
        &self,
        e: &dyn Embedder,
        texts: &[&str],
        ctx: &CallContext,
    ) -> ApiResult<Vec<Vec<f32>>> {
        let started = Instant::now();
        let span = tracing::info_span!(
            "gen_ai.embeddings",
            otel.name = %format!("embeddings {}", e.model()),
            gen_ai.operation.name = "embeddings",
            gen_ai.system = if e.hosted() { "openai" } else { "quiver" },
            gen_ai.request.model = e.model(),
            gen_ai.usage.input_tokens = tracing::field::Empty,
            quiver.request_id = %ctx.request_id,
            quiver.inputs = texts.len(),
        );
        let _g = span.enter();
        let result = self.embeddings.embed(e, texts);
        let took = started.elapsed();
        let (tokens, hits, error) = match &result {
            Ok((got, hits)) => (got.tokens, *hits, String::new()),
            Err(err) => (0, 0, err.to_string()),
        };
        span.record("gen_ai.usage.input_tokens", tokens);
        metrics::counter!("quiver_embedding_requests_total", "embedder" => e.name().to_owned(), "status" => if error.is_empty() { "ok" } else { "error" }).increment(1);
        metrics::counter!("quiver_embedding_tokens_total", "embedder" => e.name().to_owned())
            .increment(u64::from(tokens));
        metrics::histogram!("quiver_embedding_latency_seconds", "embedder" => e.name().to_owned())
            .record(took.as_secs_f64());
        if hits < texts.len() {
            let mut shown = String::new();
            for t in texts {
                if shown.len() > self.cfg.audit_max_text_bytes {
                    break;
                }
                shown.push_str(t);
                shown.push_str("\n---\n");
            }
            let record = pb::AuditRecord {
                request_id: ctx.request_id.clone(),
                tenant: ctx.tenant.clone(),
                collection: ctx.collection.clone(),
                operation: "embeddings".into(),
                provider: e.name().to_owned(),
                model: e.model().to_owned(),
                prompt: if e.hosted() {
                    self.redactor.redact(&shown).text
                } else {
                    shown
                },
                output: format!(
                    "{} vectors of {} dimensions ({hits} from cache)",
                    texts.len(),
                    e.dim()
                ),
                latency_us: took.as_micros() as u64,
                prompt_tokens: tokens,
                estimated: !e.hosted(),
                cache_hit: false,
                error,
                ..Default::default()
            };
            if let Err(err) = self.audit.append(record) {
                tracing::error!(error = %err, "cannot write an audit record");
            }
        }
        Ok(result?.0.vectors)
    }
}

/// Who asked, for audit records and budgets.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// This request's id.
    pub request_id: String,
    /// Tenant (the `x-quiver-tenant` header; `default` without one).
    pub tenant: String,
    /// Collection asked.
    pub collection: String,
}

/// A fresh request id.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
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

    /// The runtime (once storage is open).
    fn rag(&self) -> ApiResult<Arc<Rag>> {
        let engine = self.app.engine()?;
        Ok(Arc::clone(self.rag.get_or_init(|| {
            let rag = Arc::new(Rag::new(
                self.app.settings.rag.clone(),
                &engine,
                Arc::clone(&self.app) as Arc<dyn state::Sink>,
                self.app.settings.cluster.as_ref().map_or(0, |c| c.node_id),
                self.providers.clone(),
            ));
            spawn_retention(Arc::clone(&rag));
            spawn_migration(Arc::clone(&rag));
            rag
        })))
    }
}

/// Moves an earlier version's node-local review queue and usage into the replicated records,
/// retrying while a cluster has no leader yet.
fn spawn_migration(rag: Arc<Rag>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        for attempt in 0..60u32 {
            match rag.state.migrate_local().await {
                Ok(0) => return,
                Ok(n) => {
                    tracing::info!(moved = n, "moved node-local RAG state into the replicated records");
                    return;
                }
                Err(e) => {
                    if attempt == 59 {
                        tracing::warn!(error = %e, "cannot move node-local RAG state yet; retrying at the next start");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        }
    });
}

/// Removes expired audit records now and every hour.
fn spawn_retention(rag: Arc<Rag>) {
    let days = rag.cfg.audit_retention_days;
    if days == 0 {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        loop {
            let r = Arc::clone(&rag);
            let keep = Duration::from_secs(u64::from(days) * 86_400);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || r.audit.expire(keep)).await {
                tracing::error!(error = %e, "audit retention failed");
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}

fn doc_filter(document_id: &str, from_position: Option<i64>) -> Filter {
    let mut conds = vec![Filter::Cond(Condition::Match {
        key: "document_id".into(),
        value: Literal::Str(document_id.into()),
    })];
    if let Some(p) = from_position {
        conds.push(Filter::Cond(Condition::Range {
            key: "position".into(),
            range: Range {
                gte: Some(p as f64),
                ..Range::default()
            },
        }));
    }
    Filter::Must(conds)
}

/// A collection for documents with its RAG settings and embedder.
pub struct DocCollection {
    /// The collection.
    pub c: Arc<Collection>,
    /// Its settings.
    pub cfg: pb::RagConfig,
    /// Its embedder.
    pub embedder: Arc<dyn Embedder>,
}

/// Checks that settings respect their policy.
fn check_policy(rag: &Rag, cfg: &pb::RagConfig) -> ApiResult<()> {
    if cfg.policy == pb::RagPolicy::LocalOnly as i32 {
        if rag.embedder_hosted(&cfg.embedder) {
            return Err(ApiError::Precondition(format!(
                "policy local_only: embedder {} is a hosted provider",
                cfg.embedder
            )));
        }
        if rag.generator_hosted(&cfg.generator) {
            return Err(ApiError::Precondition(format!(
                "policy local_only: generator {} is a hosted provider",
                cfg.generator
            )));
        }
    }
    if !rag.generator_known(&cfg.generator) {
        return Err(ApiError::bad(
            "config.generator",
            format!(
                "unknown generator {:?} (known: {})",
                cfg.generator,
                rag.generator_names().join(", ")
            ),
        ));
    }
    Ok(())
}

/// The collection for documents, created on request with the embedder's dimension.
pub fn doc_collection(
    app: Option<&AppState>,
    rag: &Rag,
    engine: &Engine,
    name: &str,
    create: Option<&pb::RagConfig>,
    segment_max_rows: u32,
) -> ApiResult<DocCollection> {
    quiver_storage::types::validate_collection_name(name)?;
    let c = match (engine.collection(name), create) {
        (Ok(c), _) => c,
        (Err(quiver_storage::Error::CollectionNotFound { .. }), Some(wanted)) => {
            let mut cfg = wanted.clone();
            if cfg.embedder.is_empty() {
                cfg.embedder = "builtin".into();
            }
            check_policy(rag, &cfg)?;
            let e = rag.embedder(&cfg.embedder)?;
            let config = CollectionConfig {
                name: name.into(),
                dim: e.dim(),
                metric: Metric::Cosine,
                index: Default::default(),
                segment_max_rows,
                schema: [
                    ("document_id".to_owned(), FieldType::Keyword),
                    ("source".to_owned(), FieldType::Keyword),
                    ("position".to_owned(), FieldType::Integer),
                    ("flagged".to_owned(), FieldType::Bool),
                ]
                .into(),
                labels: [(state::RAG_LABEL.to_owned(), state::config_label(&cfg))].into(),
            };
            // Settings travel with the collection, in the same replicated write.
            app.ok_or_else(|| ApiError::Internal("creating a collection without a writer".into()))?
                .write_blocking(Mutation::CreateCollection(config))?;
            let c = engine.collection(name)?;
            return Ok(DocCollection {
                c,
                cfg,
                embedder: e,
            });
        }
        (Err(err), _) => return Err(err.into()),
    };
    let cfg = rag.state.config(&c)?;
    if let Some(wanted) = create
        && !wanted.embedder.is_empty()
        && wanted.embedder != cfg.embedder
    {
        return Err(ApiError::Precondition(format!(
            "collection {name} exists with embedder {}, not {}",
            cfg.embedder, wanted.embedder
        )));
    }
    let e = rag.embedder(&cfg.embedder)?;
    if c.config().dim != e.dim() {
        return Err(ApiError::Precondition(format!(
            "collection {name} has dimension {}, the {} embedder makes {}: use a collection created for documents (ingest-docs --create)",
            c.config().dim,
            e.name(),
            e.dim()
        )));
    }
    Ok(DocCollection {
        c,
        cfg,
        embedder: e,
    })
}

/// Largest document text, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Most metadata bytes one message may have copied into its chunks.
const MAX_COPIED_METADATA: usize = 64 << 20;
/// Chunk writes are split at about this many bytes.
const INGEST_WRITE_BYTES: usize = 4 << 20;

/// Chunks, flags, embeds and stores one message's documents; returns (chunks, flagged). All
/// chunks of the message are embedded in one call (the embedder batches), then written in one
/// upsert.
/// A message's documents, checked (sizes, metadata) and chunked, before anything is created
/// or embedded.
type Parsed = Vec<(pb::Document, Map<String, Value>, Vec<String>)>;

fn parse_documents(docs: Vec<pb::Document>, max_payload: usize) -> ApiResult<Parsed> {
    let mut parsed = Vec::with_capacity(docs.len());
    let max_meta = max_payload / 4;
    let mut copied = 0usize;
    for (i, doc) in docs.into_iter().enumerate() {
        let field = format!("documents[{i}]");
        if doc.id.is_empty() || doc.id.len() > 1000 {
            return Err(ApiError::bad(
                format!("{field}.id"),
                "must have 1 to 1000 bytes",
            ));
        }
        if doc.text.len() > MAX_DOCUMENT_BYTES {
            return Err(ApiError::TooLarge(format!(
                "{field}.text: {} bytes; a document holds at most {MAX_DOCUMENT_BYTES} (split it)",
                doc.text.len()
            )));
        }
        if doc.source.len() > 4096 {
            return Err(ApiError::bad(
                format!("{field}.source"),
                "at most 4096 bytes",
            ));
        }
        // Metadata is copied into every chunk: it must leave room for the chunk's text.
        let meta: Map<String, Value> = match convert::payload(
            doc.metadata_json.as_deref(),
            &format!("{field}.metadata_json"),
            max_meta,
        )? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| ApiError::bad(format!("{field}.metadata_json"), e.to_string()))?,
            None => Map::new(),
        };
        let texts = chunk::chunk(&doc.text, ChunkParams::default());
        let meta_bytes = doc.metadata_json.as_deref().map_or(0, str::len);
        copied = copied.saturating_add(meta_bytes.saturating_mul(texts.len()));
        if copied > MAX_COPIED_METADATA {
            return Err(ApiError::TooLarge(format!(
                "{field}.metadata_json: copied into each chunk, the message's metadata would total {copied} bytes; the limit is {MAX_COPIED_METADATA} (send less metadata, or fewer documents per message)"
            )));
        }
        parsed.push((doc, meta, texts));
    }
    Ok(parsed)
}

fn ingest(
    app: &AppState,
    rag: &Rag,
    d: &DocCollection,
    parsed: Parsed,
    max_payload: usize,
    ctx: &CallContext,
) -> ApiResult<(u64, u64)> {
    let refs: Vec<&str> = parsed
        .iter()
        .flat_map(|(_, _, texts)| texts.iter().map(String::as_str))
        .collect();
    let mut vectors = if refs.is_empty() {
        Vec::new()
    } else {
        rag.embed(d.embedder.as_ref(), &refs, ctx)?
    }
    .into_iter();
    let (mut points, mut flagged) = (Vec::with_capacity(refs.len()), 0u64);
    let mut ends = Vec::with_capacity(parsed.len());
    for (doc, meta, texts) in &parsed {
        for (n, text) in texts.iter().enumerate() {
            let vector = vectors.next().ok_or_else(|| {
                ApiError::Internal("the embedder returned too few vectors".into())
            })?;
            let reasons = inject::reasons(text);
            flagged += u64::from(!reasons.is_empty());
            let mut payload = meta.clone();
            payload.extend([
                ("document_id".to_owned(), json!(doc.id)),
                ("source".to_owned(), json!(doc.source)),
                ("position".to_owned(), json!(n)),
                ("text".to_owned(), json!(text)),
                ("flagged".to_owned(), json!(!reasons.is_empty())),
                ("flag_reasons".to_owned(), json!(reasons)),
            ]);
            let payload = Value::Object(payload).to_string().into_bytes();
            if payload.len() > max_payload {
                return Err(ApiError::TooLarge(format!(
                    "document {:?} chunk {n}: its payload (text and metadata) is {} bytes; the limit is {max_payload} (server.max_payload_bytes)",
                    doc.id,
                    payload.len()
                )));
            }
            points.push(PointWrite {
                id: PointId::Str(format!("{}#{n}", doc.id)),
                vector,
                payload: Some(payload),
            });
        }
        ends.push((doc.id.as_str(), texts.len() as i64));
    }
    let chunks = points.len() as u64;
    // New chunks first (same ids overwrite), then each document's old chunks past its new end:
    // a crash in between leaves stale extra chunks, never a document with none.
    // In writes of about 4 MiB each: one replicated log entry each on a cluster.
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for p in points {
        bytes += p.vector.len() * 4 + p.payload.as_ref().map_or(0, Vec::len) + 64;
        batch.push(p);
        if bytes >= INGEST_WRITE_BYTES {
            app.write_blocking(Mutation::Upsert {
                collection: d.c.config().name.clone(),
                points: std::mem::take(&mut batch),
            })?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        app.write_blocking(Mutation::Upsert {
            collection: d.c.config().name.clone(),
            points: batch,
        })?;
    }
    for (id, n) in ends {
        app.write_blocking(Mutation::DeleteByFilter {
            collection: d.c.config().name.clone(),
            filter: doc_filter(id, Some(n)),
        })?;
    }
    Ok((chunks, flagged))
}

fn policy_name(p: i32) -> &'static str {
    match pb::RagPolicy::try_from(p) {
        Ok(pb::RagPolicy::LocalOnly) => "local_only",
        Ok(pb::RagPolicy::AllowHosted | pb::RagPolicy::Unspecified) | Err(_) => "allow_hosted",
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
        let engine = self.app.engine()?;
        let rag = self.rag()?;
        let (max_payload, seg_rows) = (
            self.app.settings.max_payload_bytes,
            self.app.settings.segment_max_rows,
        );
        let mut out = pb::IngestDocumentsResponse::default();
        let mut message = 0u64;
        let request_id = request_id();
        while let Some(item) = inbound.next().await {
            message += 1;
            let r = item?;
            crate::auth::check_principal(principal.as_ref(), &r.collection)?;
            self.app.check_rows("documents", r.documents.len())?;
            let (engine, rag, app, ndocs) = (
                Arc::clone(&engine),
                Arc::clone(&rag),
                Arc::clone(&self.app),
                r.documents.len() as u64,
            );
            let ctx = CallContext {
                request_id: request_id.clone(),
                tenant: tenant.clone(),
                collection: r.collection.clone(),
            };
            let (chunks, flagged) = blocking(move || {
                // Refused documents create nothing.
                let parsed = parse_documents(r.documents, max_payload)?;
                let create = r.create.then(|| r.config.clone().unwrap_or_default());
                let d = doc_collection(
                    Some(&app),
                    &rag,
                    &engine,
                    &r.collection,
                    create.as_ref(),
                    seg_rows,
                )?;
                ingest(&app, &rag, &d, parsed, max_payload, &ctx)
            })
            .await
            .map_err(|e| {
                e.context(format_args!(
                    "message {message} ({} documents written before it)",
                    out.documents
                ))
            })?;
            out.documents += ndocs;
            out.chunks += chunks;
            out.flagged_chunks += flagged;
        }
        metrics::counter!("quiver_rag_chunks_ingested_total").increment(out.chunks);
        metrics::counter!("quiver_rag_chunks_flagged_total").increment(out.flagged_chunks);
        Ok(Response::new(out))
    }

    async fn delete_document(
        &self,
        req: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        let engine = self.app.engine()?;
        let rag = self.rag()?;
        let app = Arc::clone(&self.app);
        let chunks = blocking(move || {
            let d = doc_collection(Some(&app), &rag, &engine, &r.collection, None, 0)?;
            let out = app.write_blocking(Mutation::DeleteByFilter {
                collection: d.c.config().name.clone(),
                filter: doc_filter(&r.document_id, None),
            })?;
            Ok(out.count)
        })
        .await?;
        Ok(Response::new(pb::DeleteDocumentResponse { chunks }))
    }

    async fn ask(&self, req: Request<pb::AskRequest>) -> Result<Response<pb::AskResponse>, Status> {
        let tenant = tenant_of(&req)?;
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        self.app.read_barrier(r.consistency).await?;
        let (engine, rag) = (self.app.engine()?, self.rag()?);
        let a = ask::ask(rag, engine, r, tenant, None).await?;
        Ok(Response::new(a.response))
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
        let (engine, rag) = (self.app.engine()?, self.rag()?);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let sink = tx.clone();
            let done = match ask::ask(rag, engine, r, tenant, Some(sink)).await {
                Ok(a) => Ok(pb::AskEvent {
                    event: Some(pb::ask_event::Event::Done(a.response)),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.send(done);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn get_rag_config(
        &self,
        req: Request<pb::GetRagConfigRequest>,
    ) -> Result<Response<pb::RagConfig>, Status> {
        let (engine, rag) = (self.app.engine()?, self.rag()?);
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        let cfg = blocking(move || {
            let c = engine.collection(&r.collection)?;
            rag.state.config(&c)
        })
        .await?;
        Ok(Response::new(cfg))
    }

    async fn set_rag_config(
        &self,
        req: Request<pb::SetRagConfigRequest>,
    ) -> Result<Response<pb::RagConfig>, Status> {
        let (engine, rag, app) = (self.app.engine()?, self.rag()?, Arc::clone(&self.app));
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let r = req.into_inner();
        let cfg = blocking(move || {
            let c = engine.collection(&r.collection)?;
            let mut cfg = rag.state.config(&c)?;
            if let Some(p) = r.policy {
                pb::RagPolicy::try_from(p)
                    .map_err(|_| ApiError::bad("policy", format!("unknown policy {p}")))?;
                cfg.policy = p;
            }
            if let Some(g) = r.generator {
                cfg.generator = g;
            }
            check_policy(&rag, &cfg)?;
            app.write_blocking(Mutation::SetLabel {
                collection: r.collection.clone(),
                key: state::RAG_LABEL.into(),
                value: Some(state::config_label(&cfg)),
            })?;
            tracing::info!(collection = %r.collection, policy = policy_name(cfg.policy), generator = %cfg.generator, "RAG settings changed");
            Ok(cfg)
        })
        .await?;
        Ok(Response::new(cfg))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        crate::auth::check_listing(&req, &req.get_ref().collection)?;
        let rag = self.rag()?;
        let r = req.into_inner();
        Ok(Response::new(blocking(move || rag.audit.list(&r)).await?))
    }

    async fn list_reviews(
        &self,
        req: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        crate::auth::check_listing(&req, &req.get_ref().collection)?;
        let rag = self.rag()?;
        let r = req.into_inner();
        Ok(Response::new(
            blocking(move || rag.state.reviews(&r)).await?,
        ))
    }

    async fn get_review(
        &self,
        req: Request<pb::GetReviewRequest>,
    ) -> Result<Response<pb::ReviewItem>, Status> {
        let rag = self.rag()?;
        let id = req.get_ref().id.clone();
        let item = rag.state.review(&id).await?;
        crate::auth::check_collection(&req, &item.collection)?;
        Ok(Response::new(item))
    }

    async fn decide_review(
        &self,
        req: Request<pb::DecideReviewRequest>,
    ) -> Result<Response<pb::ReviewItem>, Status> {
        let rag = self.rag()?;
        let pending = rag.state.review(&req.get_ref().id).await?;
        crate::auth::check_collection(&req, &pending.collection)?;
        let r = req.into_inner();
        let item = rag.state.decide(&r).await?;
        tracing::info!(review = %item.id, status = item.status, reviewer = %item.reviewer, "review decided");
        Ok(Response::new(item))
    }
}
