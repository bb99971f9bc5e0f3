//! The RAG pipeline's own types: what a caller asks and gets back, a collection's settings,
//! review items and audit records. Plain serde types, independent of any transport; the
//! server maps its gRPC messages onto them (and the stored review items and audit records are
//! their JSON).
use quiver_storage::filter::Filter;
use serde::{Deserialize, Serialize};

/// How a question is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The ranked chunks, no answer text.
    RetrieveOnly,
    /// Quotes of the most relevant retrieved sentences, with citations; no LLM.
    #[default]
    Extractive,
    /// An LLM answers from the retrieved chunks, citing them.
    Generate,
    /// As `Generate`, but the answer is queued for human review, not returned.
    Review,
}

/// How a document collection retrieves chunks for a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retrieval {
    /// The question's embedding against the chunks' (what collections made before text
    /// indexing do).
    #[default]
    Dense,
    /// BM25 over the chunks' text and context headers.
    Text,
    /// Both, fused by reciprocal rank (the default for new document collections).
    Hybrid,
}

impl Retrieval {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Retrieval::Dense => "dense",
            Retrieval::Text => "text",
            Retrieval::Hybrid => "hybrid",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Retrieval> {
        Some(match s {
            "dense" => Retrieval::Dense,
            "text" | "bm25" => Retrieval::Text,
            "hybrid" => Retrieval::Hybrid,
            _ => return None,
        })
    }
}

/// One question to a collection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Question {
    /// The collection asked.
    pub collection: String,
    /// The question text.
    pub question: String,
    /// Only chunks passing this filter are retrieved.
    pub filter: Option<Filter>,
    /// Chunks retrieved (0 = 5).
    pub k: u32,
    /// How to answer.
    pub mode: Mode,
    /// Generator for generate/review (empty = the collection's, else the server default).
    pub provider: String,
    /// Context budget, tokens (0 = the configured default).
    pub max_context_tokens: u32,
    /// Answer limit, tokens (0 = the configured default).
    pub max_answer_tokens: u32,
    /// Sampling temperature (unset = 0, greedy).
    pub temperature: Option<f32>,
    /// Retrieval for this question (`None`: the collection's).
    pub retrieval: Option<Retrieval>,
    /// Reranker for this question: `embedder`, a `[rag.rerankers]` name, or `none`
    /// (`None`: the collection's).
    pub rerank: Option<String>,
}

/// A retrieved chunk cited by an answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Citation {
    /// The document the chunk belongs to.
    pub document_id: String,
    /// The chunk's point id.
    pub chunk_id: String,
    /// Its retrieval score.
    pub score: f32,
    /// The document's source (a path or URL).
    pub source: String,
    /// The chunk text (retrieve_only) or the quoted sentences (extractive).
    pub text: String,
    /// The chunk looked like instructions to a model.
    pub flagged: bool,
    /// Its rank (from 1) in the dense branch of retrieval (0: not found there).
    pub dense_rank: u32,
    /// Its rank in the BM25 branch (0: not found there).
    pub text_rank: u32,
}

/// Tokens, cost and time of one answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Prompt tokens the provider served from its prompt cache.
    pub cached_prompt_tokens: u32,
    /// Tokens embedded for this answer.
    pub embedding_tokens: u32,
    /// From the configured price table.
    pub cost_usd: f64,
    /// Some counts are estimates (the provider gave none).
    pub estimated: bool,
    /// The generator's name.
    pub provider: String,
    /// The model that answered.
    pub model: String,
    /// Time spent in the model, µs.
    pub model_us: u64,
    /// Time to the first generated token (streaming), µs.
    pub first_token_us: u64,
}

/// The answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Answer {
    /// The answer text (empty for retrieve_only and queued reviews).
    pub answer: String,
    /// The chunks it cites.
    pub citations: Vec<Citation>,
    /// E.g. `no_results`, `no_answer`, `flagged_sources`, `ungrounded`, `pending_review`.
    pub flags: Vec<String>,
    /// Time taken, µs.
    pub took_us: u64,
    /// Served from a cache (the collection has not changed since).
    pub cached: bool,
    /// Generator usage (generate/review).
    pub usage: Option<Usage>,
    /// Citations of chunks the model was not shown.
    pub invalid_citations: Vec<String>,
    /// The key of this answer's audit records.
    pub request_id: String,
    /// Review mode: the queued item.
    pub review_id: String,
    /// `exact` or `semantic` when cached.
    pub cache: String,
}

/// What a streamed answer sends, in order: the retrieval, tokens, then the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The retrieved chunks.
    Retrieval(Vec<Citation>),
    /// A piece of the answer text.
    Token(String),
    /// The finished answer.
    Done(Box<Answer>),
}

/// Whether a collection's text may be sent to hosted providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Hosted providers may be used (prompts are PII-redacted).
    #[default]
    AllowHosted,
    /// No text leaves the server: hosted providers are refused.
    LocalOnly,
}

impl Policy {
    /// Its name in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Policy::AllowHosted => "allow_hosted",
            Policy::LocalOnly => "local_only",
        }
    }
}

/// A collection's RAG settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RagConfig {
    /// `builtin`, `local` or a configured embedder name; fixed at create (empty = builtin).
    pub embedder: String,
    /// Where its text may go.
    pub policy: Policy,
    /// Its default generator (empty = the server default).
    pub generator: String,
    /// How questions retrieve (`None`: a collection made before text indexing, dense; new
    /// collections are created hybrid unless asked otherwise).
    pub retrieval: Option<Retrieval>,
    /// Reranker of the fused candidates: `embedder`, a `[rag.rerankers]` name, or empty (none).
    pub rerank: String,
}

/// A chat turn as a model saw it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatMessage {
    /// `system` or `user`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Where a review item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Waiting for a reviewer.
    #[default]
    Pending,
    /// Approved (as drafted or edited).
    Approved,
    /// Rejected.
    Rejected,
}

impl ReviewStatus {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
        }
    }
}

/// An answer held for human review.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Review {
    /// Time-ordered id (hex).
    pub id: String,
    /// The collection asked.
    pub collection: String,
    /// The question.
    pub question: String,
    /// The generated answer.
    pub draft: String,
    /// The approved answer (the draft, or the reviewer's edit).
    pub answer: String,
    /// Where it stands.
    pub status: ReviewStatus,
    /// The draft's citations.
    pub citations: Vec<Citation>,
    /// The draft's flags.
    pub flags: Vec<String>,
    /// The messages the model saw (for fine-tuning export).
    pub prompt: Vec<ChatMessage>,
    /// Queued at, Unix ms.
    pub created_ms: u64,
    /// Decided at, Unix ms.
    pub decided_ms: u64,
    /// Who decided.
    pub reviewer: String,
    /// The reviewer's note.
    pub note: String,
    /// The asking request's id (its audit records).
    pub request_id: String,
}

/// A page of review items.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReviewQuery {
    /// Only items in this state (`None` = any).
    pub status: Option<ReviewStatus>,
    /// Only this collection's (empty = any).
    pub collection: String,
    /// Page size (0 = 100, at most 10,000).
    pub limit: u32,
    /// Paging: the last id of the previous page.
    pub after_id: String,
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Approve the draft as it is.
    Approve,
    /// Reject it.
    Reject,
    /// Approve with the reviewer's corrected answer.
    Edit,
}

/// A decision on one review item.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The item.
    pub id: String,
    /// What to do.
    pub verdict: Verdict,
    /// Edit: the corrected answer.
    pub answer: String,
    /// Who decides.
    pub reviewer: String,
    /// A note kept with the decision.
    pub note: String,
}

/// A page of results and the cursor of the next one (empty at the end).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page<T> {
    /// This page.
    pub items: Vec<T>,
    /// Pass as `after_id` for the next page; empty when there is none.
    pub next_after_id: String,
}

/// One LLM or embedding call, as kept by the audit log.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditRecord {
    /// Time-ordered id.
    pub id: String,
    /// The request that made the call.
    pub request_id: String,
    /// Unix ms.
    pub time_ms: u64,
    /// The tenant charged.
    pub tenant: String,
    /// The collection asked or ingested into.
    pub collection: String,
    /// `chat` or `embeddings` (OpenTelemetry `gen_ai.operation.name`).
    pub operation: String,
    /// Generator or embedder name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// As sent (the redacted form for hosted providers).
    pub prompt: String,
    /// What came back.
    pub output: String,
    /// Call latency, µs.
    pub latency_us: u64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Prompt tokens served from the provider's cache.
    pub cached_prompt_tokens: u32,
    /// Some counts are estimates.
    pub estimated: bool,
    /// Priced at.
    pub cost_usd: f64,
    /// Served from Quiver's answer cache.
    pub cache_hit: bool,
    /// Empty when the call succeeded.
    pub error: String,
    /// PII items replaced by placeholders before sending.
    pub redactions: u32,
    /// The node that made the call and keeps the record (0: one node).
    pub node_id: u64,
}

/// A page of audit records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditQuery {
    /// From this time, Unix ms (0 = the oldest kept).
    pub since_ms: u64,
    /// Until this time (0 = now).
    pub until_ms: u64,
    /// Page size (0 = 100, at most 10,000).
    pub limit: u32,
    /// Paging: the last id of the previous page.
    pub after_id: String,
    /// Only this collection's (empty = any).
    pub collection: String,
    /// Only this operation's (empty = any).
    pub operation: String,
}

/// A document to ingest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    /// Re-ingesting an id replaces all its chunks.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Shown in citations (a path or URL).
    pub source: String,
    /// A JSON object copied into every chunk's payload.
    pub metadata_json: Option<String>,
}

/// What one batch of documents became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingested {
    /// Chunks written.
    pub chunks: u64,
    /// Chunks flagged as looking like instructions to a model.
    pub flagged: u64,
}
