//! Quiver's built-in RAG pipeline: documents are chunked, flagged for injected instructions,
//! embedded and stored as points; a question is embedded, its chunks retrieved (with the
//! caller's filter) and answered: the ranked chunks (`retrieve_only`), quoted sentences with
//! citations (`extractive`, no LLM), or an LLM's answer from a spotlighted prompt with checked
//! citations (`generate`), optionally held for human review (`review`). Every LLM and
//! embedding call is audited, counted against the tenant's token budget, priced, traced with
//! OpenTelemetry GenAI attributes and measured.
//!
//! The crate knows no transport: the server maps its gRPC messages onto [`types`] and reaches
//! the pipeline through [`Rag`]; the pipeline reaches the database through [`Host`]. Chunks
//! are ordinary points whose payload carries the text and its provenance; budgets and reviews
//! are engine records written through the host (replicated on a cluster).
#![forbid(unsafe_code)]

pub mod ask;
#[cfg(test)]
mod attack_rate;
pub mod audit;
pub mod cache;
pub mod chunk;
pub mod embed;
pub mod error;
pub mod extract;
pub mod fold;
pub mod host;
pub mod ingest;
pub mod inject;
pub mod llm;
#[cfg(feature = "local-models")]
pub mod local;
pub mod models;
pub mod pii;
pub mod prompt;
pub mod rerank;
pub mod secret;
pub mod settings;
pub mod state;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_storage::Mutation;

pub use error::{Error, HostKind, Result};
pub use host::{Direct, Host, Limits, blocking, now_ms};
pub use settings::Settings;
pub use types::*;

use embed::{Embedder, EmbeddingCache};
use llm::{Generator, Remote};

/// The pipeline: settings, providers, caches and durable state.
pub struct Rag {
    /// The `[rag]` settings.
    pub cfg: Settings,
    host: Arc<dyn Host>,
    /// Collection settings, review queue, token usage.
    pub state: state::RagState,
    /// Audit records.
    pub audit: audit::AuditLog,
    answers: cache::AnswerCache,
    semantic: cache::SemanticCache,
    embeddings: EmbeddingCache,
    generators: BTreeMap<String, Arc<dyn Generator>>,
    remote_embedders: BTreeMap<String, Remote>,
    rerankers: BTreeMap<String, Remote>,
    embedders: Mutex<HashMap<String, Arc<dyn Embedder>>>,
    local: Arc<models::LocalModels>,
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
pub struct SetupError(pub String);

/// HTTP clients and provider keys, read once at start (so a missing key fails start-up).
#[derive(Clone)]
pub struct Providers {
    generators: BTreeMap<String, Arc<dyn Generator>>,
    embedders: BTreeMap<String, Remote>,
    rerankers: BTreeMap<String, Remote>,
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
    pub fn new(cfg: &Settings) -> std::result::Result<Providers, SetupError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("quiver/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError(format!("HTTP client: {e}")))?;
        let mut generators: BTreeMap<String, Arc<dyn Generator>> = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let r = Remote::new(name, p, http.clone())
                .map_err(|e| SetupError(format!("rag.providers.{name}: {e}")))?;
            let g: Arc<dyn Generator> = match p.kind.as_str() {
                "anthropic" => Arc::new(llm::AnthropicChat::new(r)),
                _ => Arc::new(llm::OpenAiChat::new(r)),
            };
            generators.insert(name.clone(), g);
        }
        let mut embedders = BTreeMap::new();
        for (name, p) in &cfg.embedders {
            let r = Remote::new(name, p, http.clone())
                .map_err(|e| SetupError(format!("rag.embedders.{name}: {e}")))?;
            embedders.insert(name.clone(), r);
        }
        let mut rerankers = BTreeMap::new();
        for (name, p) in &cfg.rerankers {
            if name == rerank::EMBEDDER || name == "none" {
                return Err(SetupError(format!(
                    "rag.rerankers.{name}: the name is reserved"
                )));
            }
            let r = Remote::new(name, p, http.clone())
                .map_err(|e| SetupError(format!("rag.rerankers.{name}: {e}")))?;
            rerankers.insert(name.clone(), r);
        }
        Ok(Providers {
            generators,
            embedders,
            rerankers,
        })
    }
}

/// Who asked, for audit records and budgets.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// This request's id.
    pub request_id: String,
    /// The tenant charged.
    pub tenant: String,
    /// Collection asked.
    pub collection: String,
}

impl CallContext {
    /// A context with a fresh request id.
    pub fn new(tenant: impl Into<String>, collection: impl Into<String>) -> Self {
        CallContext {
            request_id: request_id(),
            tenant: tenant.into(),
            collection: collection.into(),
        }
    }
}

/// A fresh request id.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Rag {
    /// The pipeline over `host`, with `providers` built from the same settings. Call
    /// [`Rag::start`] once to run its background jobs.
    pub fn new(cfg: Settings, host: Arc<dyn Host>, providers: Providers) -> Result<Arc<Rag>> {
        let aux = host.engine()?.aux();
        Ok(Arc::new(Rag {
            state: state::RagState::new(Arc::clone(&host), aux.clone()),
            audit: audit::AuditLog::new(Arc::clone(&host), aux, cfg.audit_max_text_bytes),
            answers: cache::AnswerCache::new(cfg.answer_cache_entries),
            semantic: cache::SemanticCache::new(if cfg.semantic_cache_threshold > 0.0 {
                cfg.answer_cache_entries
            } else {
                0
            }),
            embeddings: EmbeddingCache::new(cfg.embedding_cache_entries),
            generators: providers.generators,
            remote_embedders: providers.embedders,
            rerankers: providers.rerankers,
            embedders: Mutex::new(HashMap::new()),
            local: Arc::new(models::LocalModels::new(cfg.models_dir(), cfg.local_price)),
            redactor: pii::Redactor::default(),
            host,
            cfg,
        }))
    }

    /// Starts the background jobs: audit retention, and moving an earlier version's
    /// node-local state into the replicated records. Needs a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        spawn_retention(Arc::clone(self));
        spawn_migration(Arc::clone(self));
    }

    /// Every generator name a request may use.
    fn generator_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.generators.keys().cloned().collect();
        v.extend(["local".to_owned(), "extractive".to_owned()]);
        v
    }

    /// The generator called `name` (`None` = extractive). Loads the local model on first use.
    pub async fn generator(&self, name: &str) -> Result<Option<Arc<dyn Generator>>> {
        match name {
            "extractive" => Ok(None),
            "local" => {
                let local = Arc::clone(&self.local);
                Ok(Some(blocking(move || local.generator()).await?))
            }
            other => self
                .generators
                .get(other)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    Error::bad(
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

    /// The embedder called `name`; connects or loads it on first use.
    pub async fn embedder(&self, name: &str) -> Result<Arc<dyn Embedder>> {
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
            "local" => {
                let local = Arc::clone(&self.local);
                blocking(move || local.embedder()).await?
            }
            other => {
                let r = self.remote_embedders.get(other).ok_or_else(|| {
                    Error::bad(
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
                let inner = llm::OpenAiEmbeddings::connect(r.clone()).await?;
                Arc::new(embed::RemoteEmbedder {
                    inner,
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
    pub async fn embed(
        &self,
        e: &dyn Embedder,
        texts: &[&str],
        ctx: &CallContext,
    ) -> Result<Vec<Vec<f32>>> {
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
        let result =
            tracing::Instrument::instrument(self.embeddings.embed(e, texts), span.clone()).await;
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
            self.record(AuditRecord {
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
                latency_us: micros(took),
                prompt_tokens: tokens,
                estimated: !e.hosted(),
                cache_hit: false,
                error,
                ..Default::default()
            });
        }
        Ok(result?.0.vectors)
    }

    /// Appends an audit record; a failure to write one is logged, not returned (the answer
    /// was already paid for).
    fn record(&self, r: AuditRecord) {
        if let Err(e) = self.audit.append(r) {
            tracing::error!(error = %e, "cannot write an audit record");
        }
    }

    /// Checks that settings respect their policy and name known providers.
    /// Checks a reranker name (`""`/`none`, `embedder` or a configured one) against the
    /// collection's policy.
    fn check_reranker(&self, name: &str, policy: Policy, field: &str) -> Result<()> {
        if name.is_empty() || name == "none" || name == rerank::EMBEDDER {
            return Ok(());
        }
        let r = self.rerankers.get(name).ok_or_else(|| {
            Error::bad(
                field,
                format!(
                    "unknown reranker {name:?} (known: none, embedder{})",
                    self.rerankers
                        .keys()
                        .map(|k| format!(", {k}"))
                        .collect::<String>()
                ),
            )
        })?;
        if policy == Policy::LocalOnly && r.cfg.hosted {
            return Err(Error::Precondition(format!(
                "policy local_only: reranker {name} is a hosted provider"
            )));
        }
        Ok(())
    }

    fn check_policy(&self, cfg: &RagConfig) -> Result<()> {
        if cfg.policy == Policy::LocalOnly {
            if self.embedder_hosted(&cfg.embedder) {
                return Err(Error::Precondition(format!(
                    "policy local_only: embedder {} is a hosted provider",
                    cfg.embedder
                )));
            }
            if self.generator_hosted(&cfg.generator) {
                return Err(Error::Precondition(format!(
                    "policy local_only: generator {} is a hosted provider",
                    cfg.generator
                )));
            }
        }
        self.check_reranker(&cfg.rerank, cfg.policy, "config.rerank")?;
        if !self.generator_known(&cfg.generator) {
            return Err(Error::bad(
                "config.generator",
                format!(
                    "unknown generator {:?} (known: {})",
                    cfg.generator,
                    self.generator_names().join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// A collection's RAG settings.
    pub fn config(&self, collection: &str) -> Result<RagConfig> {
        let c = self.host.engine()?.collection(collection)?;
        self.state.config(&c)
    }

    /// Changes a collection's policy and default generator (checked against each other).
    pub async fn set_config(
        &self,
        collection: &str,
        policy: Option<Policy>,
        generator: Option<String>,
        retrieval: Option<Retrieval>,
        rerank: Option<String>,
    ) -> Result<RagConfig> {
        let mut cfg = self.config(collection)?;
        if let Some(p) = policy {
            cfg.policy = p;
        }
        if let Some(r) = retrieval {
            if r != Retrieval::Dense {
                let engine = self.host.engine()?;
                ingest::check_text_fields(engine.collection(collection)?.as_ref())?;
            }
            cfg.retrieval = Some(r);
        }
        if let Some(r) = rerank {
            cfg.rerank = if r == "none" { String::new() } else { r };
        }
        if let Some(g) = generator {
            cfg.generator = g;
        }
        self.check_policy(&cfg)?;
        self.host
            .write(Mutation::SetLabel {
                collection: collection.to_owned(),
                key: state::RAG_LABEL.into(),
                value: Some(state::config_label(&cfg)),
            })
            .await?;
        tracing::info!(collection, policy = cfg.policy.name(), generator = %cfg.generator, "RAG settings changed");
        Ok(cfg)
    }

    /// A page of audit records (node-local).
    pub async fn audit_records(self: &Arc<Self>, q: AuditQuery) -> Result<Page<AuditRecord>> {
        let rag = Arc::clone(self);
        blocking(move || rag.audit.list(&q)).await
    }

    /// A page of review items.
    pub async fn reviews(self: &Arc<Self>, q: ReviewQuery) -> Result<Page<Review>> {
        let rag = Arc::clone(self);
        blocking(move || rag.state.reviews(&q)).await
    }

    /// One review item, from any node.
    pub async fn review(&self, id: &str) -> Result<Review> {
        self.state.review(id).await
    }

    /// Approves, rejects or edits a pending review item.
    pub async fn decide(&self, d: &Decision) -> Result<Review> {
        let item = self.state.decide(d).await?;
        tracing::info!(review = %item.id, status = item.status.name(), reviewer = %item.reviewer, "review decided");
        Ok(item)
    }
}

/// A duration in whole microseconds (saturating).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
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
                    tokio::time::sleep(Duration::from_secs(5)).await;
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
            if let Err(e) = blocking(move || r.audit.expire(keep)).await {
                tracing::error!(error = %e, "audit retention failed");
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}
