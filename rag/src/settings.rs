//! The `[rag]` configuration section: defaults for answers, caches, audit retention, token
//! budgets, and the hosted (or self-hosted) providers and embedders a deployment adds.
//!
//! ```toml
//! [rag]
//! default_generator = "local"          # SmolLM2 in-process; or a provider name, or "extractive"
//! token_budget_per_day = 200000        # per tenant (x-quiver-tenant header); 0 = unlimited
//! tenant_budgets = { acme = 1000000 }
//!
//! [rag.providers.gpt]
//! kind = "openai"                      # any /v1/chat/completions server (OpenAI, vLLM, Ollama...)
//! base_url = "https://api.openai.com/v1"
//! model = "gpt-4o-mini"
//! api_key_env = "OPENAI_API_KEY"       # or api_key_file = "/run/secrets/openai"
//! input_usd_per_mtok = 0.15
//! output_usd_per_mtok = 0.60
//! cached_input_usd_per_mtok = 0.075
//!
//! [rag.embedders.oai]
//! kind = "openai"                      # any /v1/embeddings server
//! base_url = "http://tei.internal:8080/v1"
//! model = "bge-small-en"
//! hosted = false                       # runs inside our environment: allowed for local_only
//!
//! [rag.rerankers.tei]
//! base_url = "http://tei-rerank.internal:8080"   # POST {base_url}/rerank
//! model = "bge-reranker-base"
//! hosted = false
//! ```
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A `[rag]` setting that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `[rag]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where `scripts/fetch-models.sh` put the local models; empty = `$QUIVER_MODELS`, else
    /// `~/.cache/quiver/models`.
    pub models_dir: PathBuf,
    /// Generator for generate/review when neither the request nor the collection names one.
    pub default_generator: String,
    /// Context budget of a prompt, tokens (requests may ask for less or more, up to the model).
    pub max_context_tokens: u32,
    /// Answer length limit, tokens.
    pub max_answer_tokens: u32,
    /// Answers kept by the exact answer cache (0 = off).
    pub answer_cache_entries: usize,
    /// Cosine similarity of question embeddings above which a cached answer to another
    /// wording is reused (0 = semantic cache off).
    pub semantic_cache_threshold: f32,
    /// Embeddings kept by the embedding cache, keyed by (model, text).
    pub embedding_cache_entries: usize,
    /// Days audit records are kept (0 = forever).
    pub audit_retention_days: u32,
    /// Longest prompt or output stored in one audit record, bytes (longer: truncated, marked).
    pub audit_max_text_bytes: usize,
    /// LLM tokens a tenant may use per UTC day (0 = unlimited).
    pub token_budget_per_day: u64,
    /// Per-tenant overrides of `token_budget_per_day`.
    pub tenant_budgets: BTreeMap<String, u64>,
    /// Chat providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Embedding endpoints by name.
    pub embedders: BTreeMap<String, ProviderConfig>,
    /// Rerank endpoints by name (Cohere `/v1/rerank` shape; Jina, Voyage, TEI).
    pub rerankers: BTreeMap<String, ProviderConfig>,
    /// The in-process model's price (for cost accounting of self-hosted compute; default 0).
    pub local_price: Price,
}

/// Prices per million tokens, USD.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input_usd_per_mtok: f64,
    /// Generated tokens.
    pub output_usd_per_mtok: f64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input_usd_per_mtok: f64,
}

impl Price {
    /// Cost of one call.
    pub fn cost(&self, prompt: u32, cached: u32, completion: u32) -> f64 {
        let uncached = prompt.saturating_sub(cached);
        (f64::from(uncached) * self.input_usd_per_mtok
            + f64::from(cached) * self.cached_input_usd_per_mtok
            + f64::from(completion) * self.output_usd_per_mtok)
            / 1e6
    }
}

/// One provider or embedding endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// `openai` (any OpenAI-compatible server) or `anthropic`.
    pub kind: String,
    /// e.g. `https://api.openai.com/v1` or `https://api.anthropic.com`.
    pub base_url: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Environment variable holding the API key.
    pub api_key_env: String,
    /// File holding the API key (a mounted secret); read at start.
    pub api_key_file: Option<PathBuf>,
    /// Per-attempt timeout (time to the response headers, and between streamed chunks), ms.
    pub timeout_ms: u64,
    /// Retries after 429, 5xx, timeouts and connection errors (with backoff, honouring
    /// `retry-after`).
    pub max_retries: u32,
    /// Text sent here leaves our environment: refused for `local_only` collections, and PII
    /// is redacted first. Set false for a server you run yourself (vLLM, Ollama, TEI).
    pub hosted: bool,
    /// Uncached prompt tokens, USD per million.
    pub input_usd_per_mtok: f64,
    /// Generated tokens, USD per million.
    pub output_usd_per_mtok: f64,
    /// Prompt tokens served from the provider's cache, USD per million.
    pub cached_input_usd_per_mtok: f64,
    /// Embedders: output dimension (0 = asked of the endpoint at start).
    pub dim: usize,
    /// Embedders: texts per request.
    pub batch_size: usize,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: "openai".into(),
            base_url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            api_key_file: None,
            timeout_ms: 30_000,
            max_retries: 3,
            hosted: true,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            cached_input_usd_per_mtok: 0.0,
            dim: 0,
            batch_size: 64,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            models_dir: PathBuf::new(),
            default_generator: "local".into(),
            max_context_tokens: 1500,
            max_answer_tokens: 256,
            answer_cache_entries: 4096,
            semantic_cache_threshold: 0.0,
            embedding_cache_entries: 100_000,
            audit_retention_days: 30,
            audit_max_text_bytes: 64 << 10,
            token_budget_per_day: 0,
            tenant_budgets: BTreeMap::new(),
            providers: BTreeMap::new(),
            embedders: BTreeMap::new(),
            rerankers: BTreeMap::new(),
            local_price: Price::default(),
        }
    }
}

impl ProviderConfig {
    /// The price table entry.
    pub fn price(&self) -> Price {
        Price {
            input_usd_per_mtok: self.input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
            cached_input_usd_per_mtok: self.cached_input_usd_per_mtok,
        }
    }
}

/// Names the server defines itself.
pub const RESERVED: [&str; 3] = ["builtin", "local", "extractive"];

impl Settings {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.semantic_cache_threshold) {
            return Err(ConfigError(
                "rag.semantic_cache_threshold must be between 0 and 1".into(),
            ));
        }
        if self.max_context_tokens < 64 || self.max_answer_tokens == 0 {
            return Err(ConfigError(
                "rag.max_context_tokens must be at least 64 and rag.max_answer_tokens at least 1"
                    .into(),
            ));
        }
        for (section, map) in [
            ("providers", &self.providers),
            ("embedders", &self.embedders),
        ] {
            for (name, p) in map {
                let key = format!("rag.{section}.{name}");
                if RESERVED.contains(&name.as_str()) {
                    return Err(ConfigError(format!("{key}: {name:?} is a built-in name")));
                }
                let kinds: &[&str] = if section == "providers" {
                    &["openai", "anthropic"]
                } else {
                    &["openai"]
                };
                if !kinds.contains(&p.kind.as_str()) {
                    return Err(ConfigError(format!(
                        "{key}.kind = {:?}: expected one of {kinds:?}",
                        p.kind
                    )));
                }
                if p.model.is_empty() {
                    return Err(ConfigError(format!("{key}.model is empty")));
                }
                if p.timeout_ms == 0 || p.batch_size == 0 {
                    return Err(ConfigError(format!(
                        "{key}: timeout_ms and batch_size must be > 0"
                    )));
                }
                if !(p.base_url.is_empty()
                    || p.base_url.starts_with("http://")
                    || p.base_url.starts_with("https://"))
                {
                    return Err(ConfigError(format!(
                        "{key}.base_url = {:?}: expected an http:// or https:// URL",
                        p.base_url
                    )));
                }
            }
        }
        let g = self.default_generator.as_str();
        if !RESERVED[1..].contains(&g) && !self.providers.contains_key(g) {
            return Err(ConfigError(format!(
                "rag.default_generator = {g:?}: not local, extractive or a [rag.providers] name"
            )));
        }
        Ok(())
    }

    /// The models directory.
    pub fn models_dir(&self) -> PathBuf {
        if !self.models_dir.as_os_str().is_empty() {
            return self.models_dir.clone();
        }
        if let Some(d) = std::env::var_os("QUIVER_MODELS") {
            return PathBuf::from(d);
        }
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache/quiver/models")
    }
}
