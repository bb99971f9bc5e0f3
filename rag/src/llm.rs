//! Generators and remote embedders: the [`Generator`] trait, the prompt they receive, and the
//! HTTP clients for OpenAI-compatible servers (`/v1/chat/completions`, `/v1/embeddings`) and
//! Anthropic's Messages API. Both chat clients stream (SSE) when asked and parse usage,
//! including cached prompt tokens. Calls time out per attempt and are retried with backoff
//! after 429 (honouring `retry-after`), 5xx, timeouts and connection errors; a stream is only
//! retried before its first token.
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::secret::Secret;
use crate::settings::{Price, ProviderConfig};

/// What a generator is asked: a stable prefix (system prompt, then the retrieved context) and
/// the question. Providers with prompt caching mark the prefix as cacheable.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompt {
    /// Instructions (the same for every request).
    pub system: String,
    /// The retrieved chunks, delimited and marked as data.
    pub context: String,
    /// The user's question, with the answer format reminder.
    pub question: String,
}

impl Prompt {
    /// The user turn: context then question.
    pub fn user(&self) -> String {
        format!("{}\n\n{}", self.context, self.question)
    }

    /// The whole prompt as one text (audit records, token estimates).
    pub fn flat(&self) -> String {
        format!("[system]\n{}\n[user]\n{}", self.system, self.user())
    }
}

/// Sampling settings of one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
}

/// The result of one call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generation {
    /// The generated text.
    pub text: String,
    /// Prompt tokens (provider-reported, else estimated).
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Prompt tokens the provider served from its prompt cache.
    pub cached_tokens: u32,
    /// Some counts are estimates.
    pub estimated: bool,
    /// Why generation stopped (`stop`, `length`, ...).
    pub finish_reason: String,
    /// Time to the first token (streaming calls).
    pub first_token: Option<Duration>,
    /// The model that answered (as the provider reports it).
    pub model: String,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The provider could not be reached or kept failing (after retries).
    #[error("provider {provider} is unavailable: {message}")]
    Unavailable {
        /// Provider name.
        provider: String,
        /// The last failure.
        message: String,
    },
    /// The provider kept answering 429.
    #[error("provider {provider} is rate limiting us (retry after {retry_after_s} s)")]
    RateLimited {
        /// Provider name.
        provider: String,
        /// The provider's advice.
        retry_after_s: u64,
    },
    /// No response within the timeout (after retries).
    #[error("provider {provider} did not answer within {timeout_ms} ms")]
    Timeout {
        /// Provider name.
        provider: String,
        /// The per-attempt timeout.
        timeout_ms: u64,
    },
    /// The provider refused the request (bad key, bad model, too long...): not retried.
    #[error("provider {provider} refused the request (HTTP {status}): {message}")]
    Rejected {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// A malformed response, or a local model failure.
    #[error("{0}")]
    Failed(String),
    /// The caller went away.
    #[error("cancelled")]
    Cancelled,
    /// The generator's queue is full.
    #[error(
        "generator {provider} is busy: {queued} requests are already waiting for it; retry later"
    )]
    Busy {
        /// Generator name.
        provider: String,
        /// Queue depth.
        queued: usize,
    },
}

/// A rough token count for text with no tokenizer at hand (about 4 bytes per token for
/// English; providers' usage replaces it when they report one).
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// Who a generator is: for policy checks, prices, audit records and spans.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorInfo {
    /// Name in configuration and audit records.
    pub name: String,
    /// Model name.
    pub model: String,
    /// The OpenTelemetry `gen_ai.system` value (`openai`, `anthropic`, `quiver.local`).
    pub system: &'static str,
    /// Text sent to it leaves our environment.
    pub hosted: bool,
    /// Prices for cost accounting.
    pub price: Price,
}

impl GeneratorInfo {
    /// The identity of a remote provider.
    fn remote(r: &Remote, system: &'static str) -> Self {
        GeneratorInfo {
            name: r.name.clone(),
            model: r.cfg.model.clone(),
            system,
            hosted: r.cfg.hosted,
            price: r.cfg.price(),
        }
    }
}

/// Produces answers.
#[async_trait::async_trait]
pub trait Generator: Send + Sync {
    /// Its identity.
    fn info(&self) -> &GeneratorInfo;
    /// Name in configuration and audit records.
    fn name(&self) -> &str {
        &self.info().name
    }
    /// Model name.
    fn model(&self) -> &str {
        &self.info().model
    }
    /// The OpenTelemetry `gen_ai.system` value.
    fn system(&self) -> &str {
        self.info().system
    }
    /// Text sent to it leaves our environment.
    fn hosted(&self) -> bool {
        self.info().hosted
    }
    /// Prices for cost accounting.
    fn price(&self) -> Price {
        self.info().price
    }
    /// Tokens of `text` in this model's vocabulary (an estimate when unknown).
    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }
    /// The model's context window in tokens, when known (prompt + answer must fit).
    fn context_len(&self) -> Option<usize> {
        None
    }
    /// Answers `prompt`; each piece of text is also sent to `tokens` as it is generated
    /// (generation stops when the receiver is gone).
    async fn generate(
        &self,
        prompt: &Prompt,
        p: GenParams,
        tokens: Option<UnboundedSender<String>>,
    ) -> Result<Generation, LlmError>;
}

/// Shared HTTP behaviour of remote providers: key, timeouts, retries, error bodies.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Provider name.
    pub name: String,
    /// Its configuration.
    pub cfg: ProviderConfig,
    key: Option<Secret>,
    http: reqwest::Client,
}

/// Longest wait honoured from a `retry-after` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(20);

impl Remote {
    /// A client for `cfg`, reading its key from the environment or the secret file.
    pub fn new(name: &str, cfg: &ProviderConfig, http: reqwest::Client) -> Result<Remote, String> {
        let key = if let Some(f) = &cfg.api_key_file {
            Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("api_key_file {}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
            )
        } else if !cfg.api_key_env.is_empty() {
            Some(std::env::var(&cfg.api_key_env).map_err(|_| {
                format!(
                    "environment variable {} (api_key_env) is not set",
                    cfg.api_key_env
                )
            })?)
        } else {
            None
        };
        Ok(Remote {
            name: name.to_owned(),
            cfg: cfg.clone(),
            key: key.map(Secret::new),
            http,
        })
    }

    pub(crate) fn url(&self, default_base: &str, path: &str) -> String {
        let base = if self.cfg.base_url.is_empty() {
            default_base
        } else {
            self.cfg.base_url.as_str()
        };
        format!("{}/{path}", base.trim_end_matches('/'))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// Sends a JSON POST until it gets a 2xx response, retrying what is worth retrying.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &Value,
    ) -> Result<reqwest::Response, LlmError> {
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.post(url).json(body);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let retry_after;
            let failure = match tokio::time::timeout(self.timeout(), req.send()).await {
                Err(_) => {
                    retry_after = None;
                    LlmError::Timeout {
                        provider: self.name.clone(),
                        timeout_ms: self.cfg.timeout_ms,
                    }
                }
                Ok(Err(e)) => {
                    retry_after = None;
                    LlmError::Unavailable {
                        provider: self.name.clone(),
                        message: e.to_string(),
                    }
                }
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(Duration::from_secs_f64);
                    let text = resp.text().await.unwrap_or_default();
                    // Provider bodies may echo the request, key included: scrubbed before
                    // they reach an error, a log line or an audit record.
                    let known: Vec<&Secret> = self.key.iter().collect();
                    let message = crate::secret::scrub(&error_message(&text), &known);
                    match status {
                        429 => LlmError::RateLimited {
                            provider: self.name.clone(),
                            retry_after_s: retry_after.map_or(1, |d| d.as_secs().max(1)),
                        },
                        500..=599 => LlmError::Unavailable {
                            provider: self.name.clone(),
                            message: format!("HTTP {status}: {message}"),
                        },
                        _ => {
                            return Err(LlmError::Rejected {
                                provider: self.name.clone(),
                                status,
                                message,
                            });
                        }
                    }
                }
            };
            if attempt >= self.cfg.max_retries {
                return Err(failure);
            }
            let backoff = Duration::from_millis(200 * (1 << attempt.min(6)));
            let wait = match retry_after {
                Some(d) if d > MAX_RETRY_AFTER => return Err(failure),
                Some(d) => d,
                None => backoff,
            };
            tracing::warn!(provider = %self.name, attempt, error = %failure, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Reads a whole JSON response body.
    pub(crate) async fn json(&self, resp: reqwest::Response) -> Result<Value, LlmError> {
        let body = tokio::time::timeout(self.timeout(), resp.bytes())
            .await
            .map_err(|_| LlmError::Timeout {
                provider: self.name.clone(),
                timeout_ms: self.cfg.timeout_ms,
            })?
            .map_err(|e| LlmError::Unavailable {
                provider: self.name.clone(),
                message: e.to_string(),
            })?;
        serde_json::from_slice(&body).map_err(|e| {
            LlmError::Failed(format!("provider {}: malformed response: {e}", self.name))
        })
    }

    /// Reads a server-sent event stream, calling `on` with each (event, data) pair.
    async fn events(
        &self,
        resp: reqwest::Response,
        mut on: impl FnMut(&str, &str) -> Result<bool, LlmError>,
    ) -> Result<(), LlmError> {
        use futures::StreamExt;
        let mut body = resp.bytes_stream();
        let mut sse = SseParser::default();
        loop {
            let chunk = match tokio::time::timeout(self.timeout(), body.next()).await {
                Err(_) => {
                    return Err(LlmError::Timeout {
                        provider: self.name.clone(),
                        timeout_ms: self.cfg.timeout_ms,
                    });
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(LlmError::Unavailable {
                        provider: self.name.clone(),
                        message: format!("stream broke: {e}"),
                    });
                }
                Ok(Some(Ok(c))) => c,
            };
            for (event, data) in sse.push(&chunk) {
                if !on(&event, &data)? {
                    return Ok(());
                }
            }
        }
    }

    pub(crate) fn bearer(&self) -> Vec<(&'static str, String)> {
        self.key
            .iter()
            .map(|k| ("authorization", format!("Bearer {}", k.expose())))
            .collect()
    }
}

/// The message of a provider's JSON error body (OpenAI and Anthropic both use
/// `{"error": {"message": ..}}`), else the body's start.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// Splits a byte stream into server-sent events (`event:` and `data:` lines, blank-line
/// separated; `\r\n` accepted; comments ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let text = &self.buf;
            let end = text
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
                .into_iter()
                .chain(
                    text.windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|i| (i, 4)),
                )
                .min_by_key(|(i, _)| *i);
            let Some((at, sep)) = end else { break };
            let block = String::from_utf8_lossy(&self.buf[..at]).into_owned();
            self.buf.drain(..at + sep);
            let (mut event, mut data) = (String::new(), Vec::new());
            for line in block.lines() {
                let line = line.trim_end_matches('\r');
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if !data.is_empty() || !event.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
        out
    }
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// Adds a streamed piece to the answer (noting the first token's time) and sends it to the
/// caller; false when the caller is gone.
fn take_piece(
    g: &mut Generation,
    started: Instant,
    tokens: &Option<UnboundedSender<String>>,
    piece: &str,
) -> bool {
    if piece.is_empty() {
        return true;
    }
    g.first_token.get_or_insert_with(|| started.elapsed());
    g.text.push_str(piece);
    match tokens {
        Some(t) => t.send(piece.to_owned()).is_ok(),
        None => true,
    }
}

/// Fills missing counts with estimates.
fn fill_estimates(g: &mut Generation, prompt: &Prompt) {
    if g.prompt_tokens == 0 {
        g.prompt_tokens = estimate_tokens(&prompt.flat()) as u32;
        g.estimated = true;
    }
    if g.completion_tokens == 0 && !g.text.is_empty() {
        g.completion_tokens = estimate_tokens(&g.text) as u32;
        g.estimated = true;
    }
}

/// An OpenAI-compatible chat server.
#[derive(Debug)]
pub struct OpenAiChat {
    r: Remote,
    info: GeneratorInfo,
}

impl OpenAiChat {
    /// A generator over `r`.
    pub fn new(r: Remote) -> Self {
        OpenAiChat {
            info: GeneratorInfo::remote(&r, "openai"),
            r,
        }
    }
}

#[async_trait::async_trait]
impl Generator for OpenAiChat {
    fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    async fn generate(
        &self,
        prompt: &Prompt,
        p: GenParams,
        tokens: Option<UnboundedSender<String>>,
    ) -> Result<Generation, LlmError> {
        let stream = tokens.is_some();
        let mut body = json!({
            "model": self.r.cfg.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user()},
            ],
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "stream": stream,
        });
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let started = Instant::now();
        let url = self.r.url("https://api.openai.com/v1", "chat/completions");
        let resp = self.r.post(&url, &self.r.bearer(), &body).await?;
        let mut g = Generation {
            model: self.r.cfg.model.clone(),
            ..Generation::default()
        };
        let usage = |g: &mut Generation, u: &Value| {
            if u.is_object() {
                g.prompt_tokens = u32_of(&u["prompt_tokens"]);
                g.completion_tokens = u32_of(&u["completion_tokens"]);
                g.cached_tokens = u32_of(&u["prompt_tokens_details"]["cached_tokens"]);
            }
        };
        if !stream {
            let v = self.r.json(resp).await?;
            let choice = &v["choices"][0];
            g.text = choice["message"]["content"]
                .as_str()
                .ok_or_else(|| {
                    LlmError::Failed(format!(
                        "provider {}: response has no choices[0].message.content",
                        self.r.name
                    ))
                })?
                .to_owned();
            g.finish_reason = choice["finish_reason"].as_str().unwrap_or("").to_owned();
            usage(&mut g, &v["usage"]);
            if let Some(m) = v["model"].as_str() {
                g.model = m.to_owned();
            }
        } else {
            let mut cancelled = false;
            self.r
                .events(resp, |_, data| {
                    if data.trim() == "[DONE]" {
                        return Ok(false);
                    }
                    let v: Value = serde_json::from_str(data).map_err(|e| {
                        LlmError::Failed(format!(
                            "provider {}: malformed stream chunk: {e}",
                            self.r.name
                        ))
                    })?;
                    if v["error"].is_object() {
                        return Err(LlmError::Unavailable {
                            provider: self.r.name.clone(),
                            message: error_message(data),
                        });
                    }
                    if let Some(m) = v["model"].as_str() {
                        g.model = m.to_owned();
                    }
                    usage(&mut g, &v["usage"]);
                    let choice = &v["choices"][0];
                    if let Some(f) = choice["finish_reason"].as_str() {
                        g.finish_reason = f.to_owned();
                    }
                    if let Some(piece) = choice["delta"]["content"].as_str()
                        && !take_piece(&mut g, started, &tokens, piece)
                    {
                        cancelled = true;
                        return Ok(false);
                    }
                    Ok(true)
                })
                .await?;
            if cancelled {
                return Err(LlmError::Cancelled);
            }
        }
        fill_estimates(&mut g, prompt);
        Ok(g)
    }
}

/// Anthropic's Messages API. The system prompt and the retrieved context are sent as system
/// blocks, the context block marked `cache_control: ephemeral`, so a repeated prefix is read
/// from the provider's prompt cache.
#[derive(Debug)]
pub struct AnthropicChat {
    r: Remote,
    info: GeneratorInfo,
}

impl AnthropicChat {
    /// A generator over `r`.
    pub fn new(r: Remote) -> Self {
        AnthropicChat {
            info: GeneratorInfo::remote(&r, "anthropic"),
            r,
        }
    }
}

#[async_trait::async_trait]
impl Generator for AnthropicChat {
    fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    async fn generate(
        &self,
        prompt: &Prompt,
        p: GenParams,
        tokens: Option<UnboundedSender<String>>,
    ) -> Result<Generation, LlmError> {
        let stream = tokens.is_some();
        let body = json!({
            "model": self.r.cfg.model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "stream": stream,
            "system": [
                {"type": "text", "text": prompt.system},
                {"type": "text", "text": prompt.context, "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": prompt.question}]},
            ],
        });
        let mut headers = vec![("anthropic-version", "2023-06-01".to_owned())];
        if let Some(k) = &self.r.key {
            headers.push(("x-api-key", k.expose().to_owned()));
        }
        let started = Instant::now();
        let url = self.r.url("https://api.anthropic.com", "v1/messages");
        let resp = self.r.post(&url, &headers, &body).await?;
        let mut g = Generation {
            model: self.r.cfg.model.clone(),
            ..Generation::default()
        };
        // input_tokens excludes cache reads and writes: the prompt is their sum.
        let usage = |g: &mut Generation, u: &Value| {
            if u["input_tokens"].is_u64() {
                let read = u32_of(&u["cache_read_input_tokens"]);
                g.prompt_tokens = u32_of(&u["input_tokens"])
                    .saturating_add(read)
                    .saturating_add(u32_of(&u["cache_creation_input_tokens"]));
                g.cached_tokens = read;
            }
            if u["output_tokens"].is_u64() {
                g.completion_tokens = u32_of(&u["output_tokens"]);
            }
        };
        if !stream {
            let v = self.r.json(resp).await?;
            let blocks = v["content"].as_array().ok_or_else(|| {
                LlmError::Failed(format!(
                    "provider {}: response has no content array",
                    self.r.name
                ))
            })?;
            g.text = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            g.finish_reason = v["stop_reason"].as_str().unwrap_or("").to_owned();
            usage(&mut g, &v["usage"]);
            if let Some(m) = v["model"].as_str() {
                g.model = m.to_owned();
            }
        } else {
            let mut cancelled = false;
            self.r
                .events(resp, |event, data| {
                    let v: Value = serde_json::from_str(data).map_err(|e| {
                        LlmError::Failed(format!(
                            "provider {}: malformed {event} event: {e}",
                            self.r.name
                        ))
                    })?;
                    match v["type"].as_str().unwrap_or(event) {
                        "message_start" => {
                            usage(&mut g, &v["message"]["usage"]);
                            if let Some(m) = v["message"]["model"].as_str() {
                                g.model = m.to_owned();
                            }
                        }
                        "content_block_delta" => {
                            if let Some(piece) = v["delta"]["text"].as_str()
                                && !take_piece(&mut g, started, &tokens, piece)
                            {
                                cancelled = true;
                                return Ok(false);
                            }
                        }
                        "message_delta" => {
                            usage(&mut g, &v["usage"]);
                            if let Some(r) = v["delta"]["stop_reason"].as_str() {
                                g.finish_reason = r.to_owned();
                            }
                        }
                        "message_stop" => return Ok(false),
                        "error" => {
                            return Err(LlmError::Unavailable {
                                provider: self.r.name.clone(),
                                message: error_message(data),
                            });
                        }
                        _ => {}
                    }
                    Ok(true)
                })
                .await?;
            if cancelled {
                return Err(LlmError::Cancelled);
            }
        }
        fill_estimates(&mut g, prompt);
        Ok(g)
    }
}

/// An OpenAI-compatible `/v1/embeddings` endpoint.
#[derive(Debug)]
pub struct OpenAiEmbeddings {
    r: Remote,
    dim: usize,
}

impl OpenAiEmbeddings {
    /// A client; asks the endpoint for the dimension when the config does not give it.
    pub async fn connect(r: Remote) -> Result<Self, LlmError> {
        let mut e = OpenAiEmbeddings { dim: r.cfg.dim, r };
        if e.dim == 0 {
            let (v, _) = e.embed(&["dimension probe".to_owned()]).await?;
            e.dim = v.first().map_or(0, Vec::len);
        }
        Ok(e)
    }

    /// Name, model, hosted flag, price.
    pub fn remote(&self) -> &Remote {
        &self.r
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds texts in batches; returns the vectors and the tokens the provider counted.
    pub async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u32), LlmError> {
        let url = self.r.url("https://api.openai.com/v1", "embeddings");
        let (mut out, mut used) = (Vec::with_capacity(texts.len()), 0u32);
        for batch in texts.chunks(self.r.cfg.batch_size.max(1)) {
            let body = json!({"model": self.r.cfg.model, "input": batch});
            let resp = self.r.post(&url, &self.r.bearer(), &body).await?;
            let v = self.r.json(resp).await?;
            let data = v["data"].as_array().ok_or_else(|| {
                LlmError::Failed(format!("provider {}: response has no data", self.r.name))
            })?;
            let mut got: Vec<(usize, Vec<f32>)> = Vec::with_capacity(data.len());
            for (i, d) in data.iter().enumerate() {
                let idx = d["index"].as_u64().map_or(i, |n| n as usize);
                let vec: Option<Vec<f32>> = d["embedding"].as_array().map(|a| {
                    a.iter()
                        .filter_map(Value::as_f64)
                        .map(|x| x as f32)
                        .collect()
                });
                match vec {
                    Some(v) if !v.is_empty() && v.iter().all(|x| x.is_finite()) => {
                        got.push((idx, v))
                    }
                    Some(_) | None => {
                        return Err(LlmError::Failed(format!(
                            "provider {}: data[{i}].embedding is missing or not finite",
                            self.r.name
                        )));
                    }
                }
            }
            got.sort_by_key(|(i, _)| *i);
            if got.len() != batch.len() || got.iter().enumerate().any(|(n, (i, _))| n != *i) {
                return Err(LlmError::Failed(format!(
                    "provider {}: {} embeddings for {} inputs",
                    self.r.name,
                    got.len(),
                    batch.len()
                )));
            }
            used = used.saturating_add(u32_of(&v["usage"]["prompt_tokens"]));
            out.extend(got.into_iter().map(|(_, v)| v));
        }
        if self.dim != 0 && out.iter().any(|v| v.len() != self.dim) {
            return Err(LlmError::Failed(format!(
                "provider {}: embedding dimension changed from {}",
                self.r.name, self.dim
            )));
        }
        Ok((out, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_and_line_endings() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: a\ndata: {\"x\"").is_empty());
        let e = p.push(b":1}\n\n: comment\n\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n");
        assert_eq!(
            e,
            vec![
                ("a".to_owned(), "{\"x\":1}".to_owned()),
                (String::new(), "two\nlines".to_owned()),
                (String::new(), "[DONE]".to_owned()),
            ]
        );
    }

    #[test]
    fn prices_split_cached_tokens() {
        let p = Price {
            input_usd_per_mtok: 1.0,
            output_usd_per_mtok: 4.0,
            cached_input_usd_per_mtok: 0.1,
        };
        let c = p.cost(1_000_000, 500_000, 250_000);
        assert!((c - (0.5 + 0.05 + 1.0)).abs() < 1e-9, "{c}");
    }
}
