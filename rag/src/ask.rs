//! One question, end to end, as named stages:
//!
//! 1. **validate** the question against the limits;
//! 2. **retrieve**: the exact answer cache, the question's embedding, the semantic cache, then
//!    a filtered search;
//! 3. answer by mode: the ranked chunks, **extract** quoted sentences, or **generate**:
//!    - **prompt**: fit the context into the model's window and build the spotlighted prompt;
//!    - **budget**: reserve the tokens against the tenant's daily budget (cluster-wide);
//!    - **redact** PII for hosted providers;
//!    - **call** the generator, streaming restored tokens;
//!    - **meter**: metrics, cost, the audit record, settling the reservation;
//!    - **check** citations against what the model was shown, and flag the answer;
//! 4. **review** mode queues the answer instead of returning it;
//! 5. **remember** the answer in the caches.
//!
//! A stream gets the retrieval event first, then tokens as they are generated (placeholders
//! restored); the caller sends the final answer.
use std::sync::Arc;
use std::time::Instant;

use quiver_storage::{PointId, ReadOptions, SearchParams};
use serde_json::{Map, Value};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::Instrument;

use crate::cache::{Answered, Key};
use crate::error::{Error, Result};
use crate::llm::{GenParams, Generation, Generator, Prompt};
use crate::prompt::{self, ContextChunk};
use crate::state::Reservation;
use crate::types::{
    Answer, AuditRecord, ChatMessage, Citation, Event, Mode, Policy, Question, RagConfig,
    Retrieval, Review, Usage,
};
use crate::{CallContext, Rag, blocking, extract, micros, pii};
use quiver_storage::collection::{HybridQuery, TextSearch};

/// Most chunks a question retrieves.
pub const MAX_K: u32 = 100;
/// Longest question, bytes.
pub const MAX_QUESTION_BYTES: usize = 8192;
/// Largest answer a request may ask for, tokens.
pub const MAX_ANSWER_TOKENS: u32 = 4096;
/// Largest context a request may ask for, tokens.
pub const MAX_CONTEXT_TOKENS: u32 = 100_000;

/// Where streamed events go.
pub type EventSink = UnboundedSender<Event>;

/// A retrieved chunk: payload, score, id, and its ranks in the dense and BM25 branches (0: not
/// found there).
struct Source {
    payload: Map<String, Value>,
    score: f32,
    id: String,
    dense_rank: u32,
    text_rank: u32,
}

impl Source {
    fn str(&self, key: &str) -> String {
        self.payload
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    fn flagged(&self) -> bool {
        self.payload
            .get("flagged")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn citation(&self, text: String) -> Citation {
        Citation {
            document_id: self.str("document_id"),
            chunk_id: self.id.clone(),
            score: self.score,
            source: self.str("source"),
            text,
            flagged: self.flagged(),
            dense_rank: self.dense_rank,
            text_rank: self.text_rank,
        }
    }
}

struct Retrieved {
    uid: u64,
    cfg: RagConfig,
    lsn: u64,
    question_vector: Vec<f32>,
    sources: Vec<Source>,
}

enum Found {
    Hit(Answered, &'static str),
    Fresh(Retrieved),
}

/// The validated question.
struct Asked {
    q: Question,
    k: usize,
    /// The exact cache key.
    key: String,
    /// Everything but the question text (the semantic cache's scope).
    scope: String,
}

/// Stage 1: the question against the limits.
fn validate(q: Question) -> Result<Asked> {
    if q.question.trim().is_empty() {
        return Err(Error::bad("question", "is empty"));
    }
    if q.question.len() > MAX_QUESTION_BYTES {
        return Err(Error::bad(
            "question",
            format!(
                "has {} bytes, more than {MAX_QUESTION_BYTES}",
                q.question.len()
            ),
        ));
    }
    let k = match q.k {
        0 => 5,
        k if k > MAX_K => return Err(Error::bad("k", format!("{k} exceeds {MAX_K}"))),
        k => k,
    } as usize;
    if q.max_answer_tokens > MAX_ANSWER_TOKENS {
        return Err(Error::bad(
            "max_answer_tokens",
            format!("{} exceeds {MAX_ANSWER_TOKENS}", q.max_answer_tokens),
        ));
    }
    if q.max_context_tokens > MAX_CONTEXT_TOKENS {
        return Err(Error::bad(
            "max_context_tokens",
            format!("{} exceeds {MAX_CONTEXT_TOKENS}", q.max_context_tokens),
        ));
    }
    if let Some(t) = q.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(Error::bad("temperature", "must be between 0 and 2"));
    }
    let scope = format!(
        "{:?}|{k}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}",
        q.filter,
        q.mode,
        q.provider,
        q.max_context_tokens,
        q.max_answer_tokens,
        q.temperature,
        q.retrieval,
        q.rerank
    );
    let key = format!("{:?}|{scope}", q.question);
    Ok(Asked { q, k, key, scope })
}

/// A cache key or scope with the collection's RAG settings: changing its retrieval,
/// reranker or generator must not serve answers made under the old ones.
fn with_settings(key: &str, cfg: &RagConfig) -> String {
    format!("{key}|{}", crate::state::config_label(cfg))
}

/// Sends a finished answer as token events (whitespace-separated pieces).
fn stream_text(sink: &EventSink, text: &str) {
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .char_indices()
            .skip(1)
            .find(|(_, c)| c.is_whitespace())
            .map_or(rest.len(), |(i, _)| i);
        if sink.send(Event::Token(rest[..end].to_owned())).is_err() {
            return;
        }
        rest = &rest[end..];
    }
}

/// What a generator's answer became after the checks.
struct Generated {
    answer: String,
    citations: Vec<Citation>,
    invalid: Vec<String>,
    usage: Usage,
    flags: Vec<String>,
    /// The messages as the model saw them (unredacted; for review and fine-tuning export).
    prompt: Vec<ChatMessage>,
}

/// The prompt stage's output.
struct Planned {
    plain: Prompt,
    shown: Vec<ContextChunk>,
    chunks: usize,
    prompt_tokens: u64,
    max_answer: u32,
}

/// Splits streamed text into what can be sent now and what must wait: a possible placeholder
/// (`[LABEL_n]`) still open at the end is held back until it closes.
fn split_for_restore(pending: &str) -> (&str, &str) {
    match pending.rfind('[') {
        Some(i) if !pending[i..].contains(']') && pending.len() - i < 32 => pending.split_at(i),
        Some(_) | None => (pending, ""),
    }
}

/// Forwards generated pieces to `sink` with placeholders restored (a placeholder split across
/// pieces is held back until it closes).
fn restoring_forwarder(
    sink: &EventSink,
    map: &[(String, String)],
) -> (UnboundedSender<String>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = unbounded_channel::<String>();
    let (sink, map) = (sink.clone(), map.to_vec());
    let task = tokio::spawn(async move {
        let mut pending = String::new();
        while let Some(piece) = rx.recv().await {
            pending.push_str(&piece);
            let (ready, hold) = split_for_restore(&pending);
            if !ready.is_empty() {
                let text = pii::Redactor::restore(ready, &map);
                if sink.send(Event::Token(text)).is_err() {
                    return;
                }
            }
            pending = hold.to_owned();
        }
        if !pending.is_empty() {
            let _ = sink.send(Event::Token(pii::Redactor::restore(&pending, &map)));
        }
    });
    (tx, task)
}

impl Rag {
    /// Answers one question for `tenant`; with `events`, streams the retrieval and the tokens.
    pub async fn ask(
        self: &Arc<Self>,
        q: Question,
        tenant: &str,
        events: Option<EventSink>,
    ) -> Result<Answer> {
        let started = Instant::now();
        let a = validate(q)?;
        let ctx = CallContext::new(tenant, a.q.collection.clone());
        let found = match self.exact_hit(&a) {
            Some(hit) => Found::Hit(hit, "exact"),
            None => self.retrieve(&a, &ctx).await?,
        };
        let got = match found {
            Found::Hit(hit, kind) => {
                return Ok(self.serve_cached(hit, kind, &a, &ctx, events.as_ref(), started));
            }
            Found::Fresh(got) => got,
        };
        metrics::counter!("quiver_rag_answer_cache_total", "result" => "miss").increment(1);
        let retrieved: Vec<Citation> = got
            .sources
            .iter()
            .map(|s| s.citation(s.str("text")))
            .collect();
        if let Some(sink) = &events {
            let _ = sink.send(Event::Retrieval(retrieved.clone()));
        }
        let mut answer = self
            .answer(&a, &got, &retrieved, &ctx, events.as_ref())
            .await?;
        answer.took_us = micros(started.elapsed());
        let out = Answered {
            response: answer,
            retrieved,
        };
        if a.q.mode != Mode::Review {
            self.remember(&a, got, &out);
        }
        Ok(out.response)
    }

    /// Stage 2a: an exact cache hit, answered without a hop to the blocking pool (which costs a
    /// thread wake-up, about 100 µs on a VM): the lookup needs only the collection's id and LSN.
    fn exact_hit(&self, a: &Asked) -> Option<Answered> {
        if a.q.mode == Mode::Review {
            return None;
        }
        let c = self.host.engine().ok()?.collection(&a.q.collection).ok()?;
        let cfg = self.state.config(&c).ok()?;
        let key = Key {
            uid: c.uid(),
            request: with_settings(&a.key, &cfg),
        };
        self.answers.get(&key, c.last_lsn())
    }

    /// Stage 2b: embed the question, try the semantic cache, search.
    async fn retrieve(&self, a: &Asked, ctx: &CallContext) -> Result<Found> {
        let d = self.doc_collection(&a.q.collection, None).await?;
        // The LSN is read before retrieval: a write racing with this answer makes it stale.
        let lsn = d.c.last_lsn();
        let q = self
            .embed(d.embedder.as_ref(), &[a.q.question.as_str()], ctx)
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("the embedder returned no vector".into()))?;
        let threshold = self.cfg.semantic_cache_threshold;
        if a.q.mode != Mode::Review
            && threshold > 0.0
            && let Some((hit, similarity)) = self.semantic.get(
                d.c.uid(),
                &with_settings(&a.scope, &d.cfg),
                lsn,
                &q,
                threshold,
            )
        {
            tracing::debug!(similarity, "semantic cache hit");
            return Ok(Found::Hit(hit, "semantic"));
        }
        let mode =
            a.q.retrieval
                .or(d.cfg.retrieval)
                .unwrap_or(Retrieval::Dense);
        if mode != Retrieval::Dense {
            crate::ingest::check_text_fields(&d.c)?;
        }
        let reranker = match a.q.rerank.as_deref().unwrap_or(&d.cfg.rerank) {
            "none" => String::new(),
            r => r.to_owned(),
        };
        if !reranker.is_empty() {
            self.check_reranker(&reranker, d.cfg.policy, "rerank")?;
        }
        // With a reranker, more candidates than k are fused, re-scored, then cut to k.
        let fetch = if reranker.is_empty() {
            a.k
        } else {
            a.k.max(crate::rerank::RERANK_CANDIDATES)
        };
        let with_vectors = reranker == crate::rerank::EMBEDDER;
        let (c, k, filter, qv) = (Arc::clone(&d.c), fetch, a.q.filter.clone(), q.clone());
        let question = a.q.question.clone();
        let hits = blocking(move || {
            let opts = ReadOptions {
                with_vectors,
                with_payload: true,
            };
            let text = TextSearch {
                field: crate::ingest::TEXT_FIELD.into(),
                more_fields: vec![crate::ingest::CONTEXT_FIELD.into()],
                // Questions are sentences: required/excluded syntax is not theirs.
                query: question.replace(['+', '-'], " "),
                bm25: Default::default(),
            };
            let hq = HybridQuery {
                dense: (mode != Retrieval::Text).then_some(qv),
                text: (mode != Retrieval::Dense).then_some(text),
                k,
                // Each branch's top k are fused, not deeper lists: measured with MiniLM on the
                // Wikipedia, title and FanOutQA sets (benches/README.md), fusing the top 50
                // let chunks that both branches rank middling beat one branch's first
                // (FanOutQA recall@5 0.830 against 0.902).
                candidates: Some(k),
                ..Default::default()
            };
            c.hybrid_search(&hq, opts, SearchParams::default(), filter.as_ref())
                .map_err(Error::from)
        })
        .await?;
        let rescored = match reranker.as_str() {
            "" => None,
            crate::rerank::EMBEDDER => {
                let norm = q
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
                    .sqrt()
                    .max(f32::MIN_POSITIVE);
                Some(
                    hits.iter()
                        .map(|h| {
                            h.hit.vector.as_deref().map_or(f32::MIN, |v| {
                                v.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>() / norm
                            })
                        })
                        .collect::<Vec<f32>>(),
                )
            }
            name => Some(self.rerank_remote(name, &a.q.question, &hits, ctx).await?),
        };
        let mut hits: Vec<_> = hits.into_iter().enumerate().collect();
        if let Some(scores) = &rescored {
            hits.sort_by(|x, y| scores[y.0].total_cmp(&scores[x.0]).then(x.0.cmp(&y.0)));
            hits.truncate(a.k);
        }
        let sources = hits
            .into_iter()
            .map(|(i, h)| Source {
                payload: h
                    .hit
                    .payload
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default(),
                score: rescored.as_ref().map_or(h.hit.score, |s| s[i]),
                id: match h.hit.id {
                    PointId::Str(s) => s,
                    PointId::Num(n) => n.to_string(),
                },
                dense_rank: h.dense.map_or(0, |b| b.rank),
                text_rank: h.text.map_or(0, |b| b.rank),
            })
            .collect();
        Ok(Found::Fresh(Retrieved {
            uid: d.c.uid(),
            cfg: d.cfg,
            lsn,
            question_vector: q,
            sources,
        }))
    }

    /// Scores `hits` against the question with rerank endpoint `name` (checked against the
    /// collection's policy already): hosted endpoints get the PII-redacted texts; the call is
    /// audited and counted.
    async fn rerank_remote(
        &self,
        name: &str,
        question: &str,
        hits: &[quiver_storage::collection::HybridHit],
        ctx: &CallContext,
    ) -> Result<Vec<f32>> {
        let r = self
            .rerankers
            .get(name)
            .ok_or_else(|| Error::bad("rerank", format!("unknown reranker {name:?}")))?;
        let hosted = r.cfg.hosted;
        let mut redactions = 0u32;
        let mut prep = |t: &str| -> String {
            if hosted {
                let red = self.redactor.redact(t);
                redactions += red.map.len() as u32;
                red.text
            } else {
                t.to_owned()
            }
        };
        let docs: Vec<String> = hits
            .iter()
            .map(|h| {
                let p: Map<String, Value> = h
                    .hit
                    .payload
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                let s = |k: &str| {
                    p.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                prep(&format!("{}\n{}", s("context"), s("text")))
            })
            .collect();
        let query = prep(question);
        let started = Instant::now();
        let result = crate::rerank::remote_scores(r, &query, &docs).await;
        let latency_us = micros(started.elapsed());
        metrics::counter!("quiver_rerank_requests_total", "reranker" => name.to_owned(), "status" => if result.is_ok() { "ok" } else { "error" }).increment(1);
        self.record(AuditRecord {
            request_id: ctx.request_id.clone(),
            tenant: ctx.tenant.clone(),
            collection: ctx.collection.clone(),
            operation: "rerank".into(),
            provider: name.to_owned(),
            model: r.cfg.model.clone(),
            prompt: query,
            output: result
                .as_ref()
                .map(|s| format!("{} documents scored", s.len()))
                .unwrap_or_default(),
            latency_us,
            error: result
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
            redactions,
            ..Default::default()
        });
        result.map_err(Error::from)
    }

    /// A cached answer, served again: recorded (an LLM answer at no token cost; a hosted
    /// provider's record holds the redacted question, like a fresh call's) and streamed.
    fn serve_cached(
        &self,
        mut hit: Answered,
        kind: &'static str,
        a: &Asked,
        ctx: &CallContext,
        events: Option<&EventSink>,
        started: Instant,
    ) -> Answer {
        metrics::counter!("quiver_rag_answer_cache_total", "result" => kind).increment(1);
        let r = &mut hit.response;
        r.cached = true;
        r.cache = kind.into();
        r.request_id = ctx.request_id.clone();
        r.took_us = micros(started.elapsed());
        if let Some(u) = &r.usage
            && !u.provider.is_empty()
        {
            let hosted = self.generators.get(&u.provider).is_some_and(|g| g.hosted());
            let prompt = if hosted {
                self.redactor.redact(&a.q.question).text
            } else {
                a.q.question.clone()
            };
            self.record(AuditRecord {
                request_id: ctx.request_id.clone(),
                tenant: ctx.tenant.clone(),
                collection: ctx.collection.clone(),
                operation: "chat".into(),
                provider: u.provider.clone(),
                model: u.model.clone(),
                prompt,
                output: r.answer.clone(),
                latency_us: r.took_us,
                cache_hit: true,
                ..Default::default()
            });
        }
        if let Some(sink) = events {
            let _ = sink.send(Event::Retrieval(hit.retrieved.clone()));
            stream_text(sink, &hit.response.answer);
        }
        hit.response
    }

    /// Stage 3: the answer by mode.
    async fn answer(
        &self,
        a: &Asked,
        got: &Retrieved,
        retrieved: &[Citation],
        ctx: &CallContext,
        events: Option<&EventSink>,
    ) -> Result<Answer> {
        let mut response = Answer {
            request_id: ctx.request_id.clone(),
            ..Default::default()
        };
        let mut flags = Vec::new();
        if got.sources.is_empty() {
            flags.push("no_results".to_owned());
        }
        let generator = match a.q.mode {
            Mode::Generate | Mode::Review => {
                let name = [
                    &a.q.provider,
                    &got.cfg.generator,
                    &self.cfg.default_generator,
                ]
                .into_iter()
                .find(|n| !n.is_empty())
                .map_or("extractive", String::as_str);
                self.generator(name).await?
            }
            Mode::RetrieveOnly | Mode::Extractive => None,
        };
        match (a.q.mode, generator) {
            (Mode::RetrieveOnly, _) => response.citations = retrieved.to_vec(),
            (_, None) => {
                self.extract(a, got, &mut response, &mut flags);
                if let Some(sink) = events.filter(|_| a.q.mode != Mode::Review) {
                    stream_text(sink, &response.answer);
                }
            }
            (_, Some(g)) => {
                let streaming = events.filter(|_| a.q.mode != Mode::Review);
                let out = self.generate(a, got, g, ctx, streaming).await?;
                response.answer = out.answer;
                response.citations = out.citations;
                response.invalid_citations = out.invalid;
                response.usage = Some(out.usage);
                flags.extend(out.flags);
                if a.q.mode == Mode::Review {
                    self.review_stage(a, ctx, out.prompt, &mut response, &mut flags)
                        .await?;
                }
            }
        }
        if response.citations.iter().any(|c| c.flagged) {
            flags.push("flagged_sources".to_owned());
        }
        response.flags = flags;
        Ok(response)
    }

    /// Stage 3, extractive: the most relevant retrieved sentences, quoted with citations.
    fn extract(&self, a: &Asked, got: &Retrieved, out: &mut Answer, flags: &mut Vec<String>) {
        let ex: Vec<extract::Source> = got
            .sources
            .iter()
            .map(|s| extract::Source {
                chunk_id: s.id.clone(),
                text: s.str("text"),
            })
            .collect();
        let (answer, used) = extract::answer(&a.q.question, &ex, 3);
        if answer.is_empty() && !got.sources.is_empty() {
            flags.push("no_answer".to_owned());
        }
        out.answer = answer;
        out.citations = used
            .into_iter()
            .map(|(i, quoted)| got.sources[i].citation(quoted.join(" ")))
            .collect();
    }

    /// Stage 4: the answer is queued for a reviewer instead of being returned.
    async fn review_stage(
        &self,
        a: &Asked,
        ctx: &CallContext,
        prompt: Vec<ChatMessage>,
        out: &mut Answer,
        flags: &mut Vec<String>,
    ) -> Result<()> {
        let item = Review {
            collection: a.q.collection.clone(),
            question: a.q.question.clone(),
            draft: out.answer.clone(),
            citations: out.citations.clone(),
            flags: flags.clone(),
            prompt,
            request_id: ctx.request_id.clone(),
            ..Default::default()
        };
        out.review_id = self.state.queue_review(item).await?;
        out.answer.clear();
        out.citations.clear();
        flags.push("pending_review".into());
        metrics::counter!("quiver_rag_reviews_queued_total").increment(1);
        Ok(())
    }

    /// Stage 5: the answer, for the exact and semantic caches.
    fn remember(&self, a: &Asked, got: Retrieved, out: &Answered) {
        let key = Key {
            uid: got.uid,
            request: with_settings(&a.key, &got.cfg),
        };
        self.answers.put(key, got.lsn, out.clone());
        self.semantic.put(
            got.uid,
            with_settings(&a.scope, &got.cfg),
            got.lsn,
            got.question_vector,
            out.clone(),
        );
    }

    /// Stage 3, generate: prompt → budget → redact → call → meter → check.
    async fn generate(
        &self,
        a: &Asked,
        got: &Retrieved,
        g: Arc<dyn Generator>,
        ctx: &CallContext,
        events: Option<&EventSink>,
    ) -> Result<Generated> {
        if g.hosted() && got.cfg.policy == Policy::LocalOnly {
            return Err(Error::Precondition(format!(
                "collection {} is local_only: provider {} is hosted, so no text may be sent to it (use provider local or extractive)",
                a.q.collection,
                g.name()
            )));
        }
        let plan = self.plan_prompt(a, got, g.as_ref())?;
        let reservation = self
            .reserve(ctx, plan.prompt_tokens + u64::from(plan.max_answer))
            .await?;
        let (sent, map) = self.redact(g.as_ref(), &plan.plain);
        let params = GenParams {
            max_tokens: plan.max_answer,
            temperature: a.q.temperature.unwrap_or(0.0),
        };
        let (result, took, span) = call(g.as_ref(), &sent, params, &map, ctx, events).await;
        let mut record = AuditRecord {
            request_id: ctx.request_id.clone(),
            tenant: ctx.tenant.clone(),
            collection: ctx.collection.clone(),
            operation: "chat".into(),
            provider: g.name().to_owned(),
            model: g.model().to_owned(),
            prompt: sent.flat(),
            latency_us: micros(took),
            redactions: u32::try_from(map.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                count_call(g.as_ref(), "error");
                record.error = e.to_string();
                self.record(record);
                span.in_scope(|| tracing::warn!(error = %e, "LLM call failed"));
                return Err(e.into());
            }
        };
        let usage = self
            .meter(g.as_ref(), &reply, (took, &span), reservation, ctx, record)
            .await?;
        Ok(check(&reply, &map, &plan, got, usage))
    }

    /// Stage prompt: the context fitted into the model's window (leaving room for the
    /// instructions, the question and the answer), and the spotlighted prompt.
    fn plan_prompt(&self, a: &Asked, got: &Retrieved, g: &dyn Generator) -> Result<Planned> {
        let max_context = match a.q.max_context_tokens {
            0 => self.cfg.max_context_tokens,
            n => n,
        } as usize;
        let max_answer = match a.q.max_answer_tokens {
            0 => self.cfg.max_answer_tokens,
            n => n,
        };
        let chunks: Vec<ContextChunk> = got
            .sources
            .iter()
            .map(|s| ContextChunk {
                id: s.id.clone(),
                source: s.str("source"),
                text: s.str("text"),
                score: s.score,
                flagged: s.flagged(),
            })
            .collect();
        let count = |t: &str| g.count_tokens(t);
        let max_context = match g.context_len() {
            Some(window) => {
                let fixed = count(prompt::SYSTEM) + count(&a.q.question) + 64;
                let room = window.saturating_sub(fixed + max_answer as usize);
                if room < 64 {
                    return Err(Error::bad(
                        "max_answer_tokens",
                        format!(
                            "{max_answer} leaves no room for context in {}'s {window}-token window",
                            g.model()
                        ),
                    ));
                }
                max_context.min(room)
            }
            None => max_context,
        };
        let (plain, shown, context_tokens) =
            prompt::build(&a.q.question, &chunks, max_context, &count);
        let prompt_tokens = (context_tokens + count(&plain.system) + count(&plain.question)) as u64;
        Ok(Planned {
            plain,
            shown,
            chunks: chunks.len(),
            prompt_tokens,
            max_answer,
        })
    }

    /// Stage budget: refuse before spending when this call could exceed the tenant's budget.
    async fn reserve(&self, ctx: &CallContext, need: u64) -> Result<Option<Reservation>> {
        let budget = self
            .cfg
            .tenant_budgets
            .get(&ctx.tenant)
            .copied()
            .unwrap_or(self.cfg.token_budget_per_day);
        if budget == 0 {
            return Ok(None);
        }
        Ok(Some(self.state.reserve(&ctx.tenant, need, budget).await?))
    }

    /// Stage redact: hosted providers see placeholders; the map stays here.
    fn redact(&self, g: &dyn Generator, plain: &Prompt) -> (Prompt, Vec<(String, String)>) {
        if !g.hosted() {
            return (plain.clone(), Vec::new());
        }
        const SEP: &str = "\n\u{1}\u{1}\n";
        let red = self
            .redactor
            .redact(&format!("{}{SEP}{}", plain.context, plain.question));
        let (c, q) = red.text.split_once(SEP).unwrap_or((red.text.as_str(), ""));
        let sent = Prompt {
            system: plain.system.clone(),
            context: c.to_owned(),
            question: q.to_owned(),
        };
        (sent, red.map)
    }

    /// Stage meter: metrics, cost, the reservation settled with what was used, the audit
    /// record.
    async fn meter(
        &self,
        g: &dyn Generator,
        reply: &Generation,
        (took, span): (std::time::Duration, &tracing::Span),
        reservation: Option<Reservation>,
        ctx: &CallContext,
        mut record: AuditRecord,
    ) -> Result<Usage> {
        let cost = g.price().cost(
            reply.prompt_tokens,
            reply.cached_tokens,
            reply.completion_tokens,
        );
        span.record("quiver.cost_usd", cost);
        span.in_scope(|| {
            tracing::info!(
                latency_ms = took.as_millis() as u64,
                cached_tokens = reply.cached_tokens,
                "LLM call"
            )
        });
        count_call(g, "ok");
        let labels = [
            ("provider", g.name().to_owned()),
            ("model", g.model().to_owned()),
        ];
        metrics::histogram!("quiver_llm_latency_seconds", &labels).record(took.as_secs_f64());
        if let Some(t) = reply.first_token {
            metrics::histogram!("quiver_llm_time_to_first_token_seconds", &labels)
                .record(t.as_secs_f64());
        }
        for (kind, n) in [
            ("prompt", reply.prompt_tokens),
            ("completion", reply.completion_tokens),
            ("cached_prompt", reply.cached_tokens),
        ] {
            let l = [labels[0].clone(), labels[1].clone(), ("kind", kind.into())];
            metrics::counter!("quiver_llm_tokens_total", &l).increment(u64::from(n));
        }
        metrics::counter!("quiver_llm_cost_microdollars_total", &labels)
            .increment((cost * 1e6).round() as u64);
        let used = u64::from(reply.prompt_tokens) + u64::from(reply.completion_tokens);
        match reservation {
            Some(r) => r.settle(used).await?,
            None => self.state.add_usage(&ctx.tenant, used).await?,
        };
        record.output = reply.text.clone();
        record.prompt_tokens = reply.prompt_tokens;
        record.completion_tokens = reply.completion_tokens;
        record.cached_prompt_tokens = reply.cached_tokens;
        record.estimated = reply.estimated;
        record.cost_usd = cost;
        self.record(record);
        Ok(Usage {
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            cached_prompt_tokens: reply.cached_tokens,
            embedding_tokens: 0,
            cost_usd: cost,
            estimated: reply.estimated,
            provider: g.name().to_owned(),
            model: reply.model.clone(),
            model_us: micros(took),
            first_token_us: reply.first_token.map_or(0, micros),
        })
    }
}

/// `quiver_llm_requests_total` for one call.
fn count_call(g: &dyn Generator, status: &str) {
    let l = [
        ("provider", g.name().to_owned()),
        ("model", g.model().to_owned()),
        ("status", status.to_owned()),
    ];
    metrics::counter!("quiver_llm_requests_total", &l).increment(1);
}

/// Stage call: the generator, in an OpenTelemetry GenAI span, streaming restored pieces.
async fn call(
    g: &dyn Generator,
    sent: &Prompt,
    params: GenParams,
    map: &[(String, String)],
    ctx: &CallContext,
    events: Option<&EventSink>,
) -> (
    std::result::Result<Generation, crate::llm::LlmError>,
    std::time::Duration,
    tracing::Span,
) {
    let (tok_tx, forwarder) = match events {
        Some(sink) => {
            let (tx, task) = restoring_forwarder(sink, map);
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let span = tracing::info_span!(
        "gen_ai.chat",
        otel.name = %format!("chat {}", g.model()),
        gen_ai.operation.name = "chat",
        gen_ai.system = g.system(),
        gen_ai.request.model = g.model(),
        gen_ai.request.max_tokens = params.max_tokens,
        gen_ai.request.temperature = f64::from(params.temperature),
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        quiver.request_id = %ctx.request_id,
        quiver.tenant = %ctx.tenant,
        quiver.provider = g.name(),
        quiver.cost_usd = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = g
        .generate(sent, params, tok_tx)
        .instrument(span.clone())
        .await;
    let took = started.elapsed();
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    if let Ok(reply) = &result {
        span.record("gen_ai.response.model", reply.model.as_str());
        span.record(
            "gen_ai.response.finish_reasons",
            reply.finish_reason.as_str(),
        );
        span.record("gen_ai.usage.input_tokens", reply.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", reply.completion_tokens);
    }
    (result, took, span)
}

/// Stage check: placeholders restored, citations checked against what the model was shown,
/// the answer flagged.
fn check(
    reply: &Generation,
    map: &[(String, String)],
    plan: &Planned,
    got: &Retrieved,
    usage: Usage,
) -> Generated {
    let restored = pii::Redactor::restore(&reply.text, map);
    let shown_ids: Vec<String> = plan.shown.iter().map(|c| c.id.clone()).collect();
    let checked = prompt::check_citations(restored.trim(), &shown_ids);
    let mut flags = Vec::new();
    if checked.valid.is_empty() {
        flags.push("ungrounded".to_owned());
    }
    if !checked.invalid.is_empty() {
        flags.push("invalid_citations".to_owned());
    }
    if reply.finish_reason == "length" || reply.finish_reason == "max_tokens" {
        flags.push("truncated".to_owned());
    }
    if !map.is_empty() {
        flags.push("pii_redacted".to_owned());
    }
    if plan.shown.len() < plan.chunks {
        flags.push("context_trimmed".to_owned());
    }
    let citations = checked
        .valid
        .iter()
        .filter_map(|id| got.sources.iter().find(|s| &s.id == id))
        .map(|s| s.citation(s.str("text")))
        .collect();
    let message = |role: &str, content: String| ChatMessage {
        role: role.into(),
        content,
    };
    Generated {
        answer: checked.answer,
        citations,
        invalid: checked.invalid,
        usage,
        flags,
        prompt: vec![
            message("system", plan.plain.system.clone()),
            message("user", plan.plain.user()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_placeholders_are_held_back() {
        assert_eq!(split_for_restore("mail [EMA"), ("mail ", "[EMA"));
        assert_eq!(
            split_for_restore("mail [EMAIL_1] ok"),
            ("mail [EMAIL_1] ok", "")
        );
        assert_eq!(split_for_restore("no brackets"), ("no brackets", ""));
    }

    #[test]
    fn questions_are_checked_against_the_limits() {
        let q = |f: fn(&mut Question)| {
            let mut q = Question {
                collection: "c".into(),
                question: "why?".into(),
                ..Default::default()
            };
            f(&mut q);
            validate(q).err().map(|e| e.to_string())
        };
        assert_eq!(q(|_| {}), None);
        assert!(q(|q| q.question = " ".into()).is_some_and(|e| e.starts_with("question")));
        assert!(q(|q| q.k = MAX_K + 1).is_some_and(|e| e.starts_with("k:")));
        assert!(q(|q| q.temperature = Some(f32::NAN)).is_some_and(|e| e.starts_with("temp")));
        assert!(
            q(|q| q.max_context_tokens = MAX_CONTEXT_TOKENS + 1)
                .is_some_and(|e| e.starts_with("max_context_tokens"))
        );
    }
}
