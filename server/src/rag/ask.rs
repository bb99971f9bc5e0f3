//! One question, end to end: validate → answer cache → embed the question → semantic cache →
//! retrieve → answer by mode (ranked chunks, extractive quotes, or a generator behind the
//! collection's policy, the tenant's budget and PII redaction) → check citations → audit,
//! meter, cache. `AskStream` gets the retrieval event first, then tokens as they are
//! generated (placeholders restored), then the final response.
use std::sync::Arc;
use std::time::Instant;

use quiver_proto::v1 as pb;
use quiver_storage::{Engine, PointId, ReadOptions, SearchParams};
use serde_json::{Map, Value};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tonic::Status;
use tracing::Instrument;

use super::cache::{Answered, Key};
use super::llm::{GenParams, Generator, Prompt};
use super::prompt::{self, ContextChunk};
use super::{CallContext, Rag, doc_collection, extract, pii};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::grpc::blocking;

/// Most chunks a question retrieves.
pub const MAX_K: u32 = 100;
/// Longest question, bytes.
pub const MAX_QUESTION_BYTES: usize = 8192;
/// Largest answer a request may ask for, tokens.
pub const MAX_ANSWER_TOKENS: u32 = 4096;
/// Largest context a request may ask for, tokens.
pub const MAX_CONTEXT_TOKENS: u32 = 100_000;

/// Where streamed events go.
pub type EventSink = UnboundedSender<Result<pb::AskEvent, Status>>;

fn event(e: pb::ask_event::Event) -> Result<pb::AskEvent, Status> {
    Ok(pb::AskEvent { event: Some(e) })
}

/// A retrieved chunk: payload, score, id.
struct Source {
    payload: Map<String, Value>,
    score: f32,
    id: String,
}

impl Source {
    fn str(&self, key: &str) -> String {
        self.payload
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    fn citation(&self, text: String) -> pb::Citation {
        pb::Citation {
            document_id: self.str("document_id"),
            chunk_id: self.id.clone(),
            score: self.score,
            source: self.str("source"),
            text,
            flagged: self
                .payload
                .get("flagged")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

struct Retrieved {
    uid: u64,
    cfg: pb::RagConfig,
    lsn: u64,
    question_vector: Vec<f32>,
    sources: Vec<Source>,
}

enum Found {
    Hit(Answered, &'static str),
    Fresh(Retrieved),
}

/// The validated request.
struct Asked {
    r: pb::AskRequest,
    mode: pb::AskMode,
    k: usize,
    filter: Option<quiver_storage::filter::Filter>,
    key: String,
    scope: String,
}

fn validate(r: pb::AskRequest) -> ApiResult<Asked> {
    if r.question.trim().is_empty() {
        return Err(ApiError::bad("question", "is empty"));
    }
    if r.question.len() > MAX_QUESTION_BYTES {
        return Err(ApiError::bad(
            "question",
            format!(
                "has {} bytes, more than {MAX_QUESTION_BYTES}",
                r.question.len()
            ),
        ));
    }
    let k = match r.k {
        0 => 5,
        k if k > MAX_K => return Err(ApiError::bad("k", format!("{k} exceeds {MAX_K}"))),
        k => k,
    } as usize;
    let mode = pb::AskMode::try_from(r.mode)
        .map_err(|_| ApiError::bad("mode", format!("unknown mode {}", r.mode)))?;
    if r.max_answer_tokens > MAX_ANSWER_TOKENS {
        return Err(ApiError::bad(
            "max_answer_tokens",
            format!("{} exceeds {MAX_ANSWER_TOKENS}", r.max_answer_tokens),
        ));
    }
    if r.max_context_tokens > MAX_CONTEXT_TOKENS {
        return Err(ApiError::bad(
            "max_context_tokens",
            format!("{} exceeds {MAX_CONTEXT_TOKENS}", r.max_context_tokens),
        ));
    }
    if let Some(t) = r.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(ApiError::bad("temperature", "must be between 0 and 2"));
    }
    let filter = convert::filter(r.filter.as_ref())?;
    let scope = format!(
        "{filter:?}|{k}|{}|{}|{}|{}|{:?}",
        r.mode, r.provider, r.max_context_tokens, r.max_answer_tokens, r.temperature
    );
    let key = format!("{:?}|{scope}", r.question);
    Ok(Asked {
        r,
        mode,
        k,
        filter,
        key,
        scope,
    })
}

fn retrieve(rag: &Rag, engine: &Engine, a: &Asked, ctx: &CallContext) -> ApiResult<Found> {
    let d = doc_collection(None, rag, engine, &a.r.collection, None, 0)?;
    // The LSN is read before retrieval: a write racing with this answer makes it stale at once.
    let lsn = d.c.last_lsn();
    // The exact answer cache was consulted by the caller (without the blocking hop).
    let cacheable = a.mode != pb::AskMode::Review;
    let q = rag
        .embed(d.embedder.as_ref(), &[a.r.question.as_str()], ctx)?
        .pop()
        .ok_or_else(|| ApiError::Internal("the embedder returned no vector".into()))?;
    let threshold = rag.cfg.semantic_cache_threshold;
    if cacheable
        && threshold > 0.0
        && let Some((hit, similarity)) = rag.semantic.get(d.c.uid(), &a.scope, lsn, &q, threshold)
    {
        tracing::debug!(similarity, "semantic cache hit");
        return Ok(Found::Hit(hit, "semantic"));
    }
    let hits =
        d.c.search_batch_filtered(
            &[(&q, a.k)],
            ReadOptions {
                with_vectors: false,
                with_payload: true,
            },
            SearchParams::default(),
            a.filter.as_ref(),
        )
        .pop()
        .ok_or_else(|| ApiError::Internal("search returned no result list".into()))??;
    let sources = hits
        .into_iter()
        .map(|h| Source {
            payload: h
                .payload
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default(),
            score: h.score,
            id: match h.id {
                PointId::Str(s) => s,
                PointId::Num(n) => n.to_string(),
            },
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

/// Sends a finished answer as token events (whitespace-separated pieces).
fn stream_text(sink: &EventSink, text: &str) {
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .char_indices()
            .skip(1)
            .find(|(_, c)| c.is_whitespace())
            .map_or(rest.len(), |(i, _)| i);
        if sink
            .send(event(pb::ask_event::Event::Token(rest[..end].to_owned())))
            .is_err()
        {
            return;
        }
        rest = &rest[end..];
    }
}

/// Answers one question.
pub async fn ask(
    rag: Arc<Rag>,
    engine: Arc<Engine>,
    r: pb::AskRequest,
    tenant: String,
    events: Option<EventSink>,
) -> ApiResult<Answered> {
    let started = Instant::now();
    let a = validate(r)?;
    let ctx = CallContext {
        request_id: super::request_id(),
        tenant,
        collection: a.r.collection.clone(),
    };
    // Exact cache hits are answered here, without a hop to the blocking pool (which costs a
    // thread wake-up, about 100 µs on a VM): the lookup needs only the collection's id and LSN.
    let inline_hit = (a.mode != pb::AskMode::Review)
        .then(|| engine.collection(&a.r.collection).ok())
        .flatten()
        .and_then(|c| {
            let key = Key {
                uid: c.uid(),
                request: a.key.clone(),
            };
            rag.answers.get(&key, c.last_lsn())
        });
    let (found, a) = match inline_hit {
        Some(hit) => (Found::Hit(hit, "exact"), a),
        None => {
            let (rag, ctx) = (Arc::clone(&rag), ctx.clone());
            blocking(move || Ok((retrieve(&rag, &engine, &a, &ctx)?, a))).await?
        }
    };
    let got = match found {
        Found::Hit(mut hit, kind) => {
            metrics::counter!("quiver_rag_answer_cache_total", "result" => kind).increment(1);
            hit.response.cached = true;
            hit.response.cache = kind.into();
            hit.response.request_id = ctx.request_id.clone();
            hit.response.took_us = started.elapsed().as_micros() as u64;
            if let Some(u) = &hit.response.usage
                && !u.provider.is_empty()
            {
                // An LLM answer served again: recorded, at no token cost. A hosted provider's
                // record holds what it was sent, the redacted question, like a fresh call's.
                let hosted = rag.generators.get(&u.provider).is_some_and(|g| g.hosted());
                let prompt = if hosted {
                    rag.redactor.redact(&a.r.question).text
                } else {
                    a.r.question.clone()
                };
                let record = pb::AuditRecord {
                    request_id: ctx.request_id.clone(),
                    tenant: ctx.tenant.clone(),
                    collection: ctx.collection.clone(),
                    operation: "chat".into(),
                    provider: u.provider.clone(),
                    model: u.model.clone(),
                    prompt,
                    output: hit.response.answer.clone(),
                    latency_us: hit.response.took_us,
                    cache_hit: true,
                    ..Default::default()
                };
                if let Err(e) = rag.audit.append(record) {
                    tracing::error!(error = %e, "cannot write an audit record");
                }
            }
            if let Some(sink) = &events {
                let _ = sink.send(event(pb::ask_event::Event::Retrieval(
                    pb::ask_event::Retrieval {
                        sources: hit.retrieved.clone(),
                    },
                )));
                stream_text(sink, &hit.response.answer);
            }
            return Ok(hit);
        }
        Found::Fresh(got) => got,
    };
    metrics::counter!("quiver_rag_answer_cache_total", "result" => "miss").increment(1);
    let retrieved: Vec<pb::Citation> = got
        .sources
        .iter()
        .map(|s| s.citation(s.str("text")))
        .collect();
    if let Some(sink) = &events {
        let _ = sink.send(event(pb::ask_event::Event::Retrieval(
            pb::ask_event::Retrieval {
                sources: retrieved.clone(),
            },
        )));
    }
    let mut flags = Vec::new();
    if got.sources.is_empty() {
        flags.push("no_results".to_owned());
    }
    let mut response = pb::AskResponse {
        request_id: ctx.request_id.clone(),
        ..Default::default()
    };
    let generator_name = match a.mode {
        pb::AskMode::Generate | pb::AskMode::Review => Some(
            [
                &a.r.provider,
                &got.cfg.generator,
                &rag.cfg.default_generator,
            ]
            .into_iter()
            .find(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| "extractive".into()),
        ),
        pb::AskMode::RetrieveOnly | pb::AskMode::Extractive | pb::AskMode::Unspecified => None,
    };
    let generator = match &generator_name {
        Some(name) => {
            let (rag, name) = (Arc::clone(&rag), name.clone());
            blocking(move || rag.generator(&name)).await?
        }
        None => None,
    };
    match (a.mode, generator) {
        (pb::AskMode::RetrieveOnly, _) => response.citations = retrieved.clone(),
        (_, None) => {
            let ex: Vec<extract::Source> = got
                .sources
                .iter()
                .map(|s| extract::Source {
                    chunk_id: s.id.clone(),
                    text: s.str("text"),
                })
                .collect();
            let (answer, used) = extract::answer(&a.r.question, &ex, 3);
            if answer.is_empty() && !got.sources.is_empty() {
                flags.push("no_answer".to_owned());
            }
            response.answer = answer;
            response.citations = used
                .into_iter()
                .map(|(i, quoted)| got.sources[i].citation(quoted.join(" ")))
                .collect();
            if a.mode != pb::AskMode::Review
                && let Some(sink) = &events
            {
                stream_text(sink, &response.answer);
            }
        }
        (_, Some(g)) => {
            let streaming = events.as_ref().filter(|_| a.mode != pb::AskMode::Review);
            let out = generate(&rag, &a, &got, g, &ctx, streaming).await?;
            response.answer = out.answer;
            response.citations = out.citations;
            response.invalid_citations = out.invalid;
            response.usage = Some(out.usage);
            flags.extend(out.flags);
            if a.mode == pb::AskMode::Review {
                let item = pb::ReviewItem {
                    collection: a.r.collection.clone(),
                    question: a.r.question.clone(),
                    draft: response.answer.clone(),
                    citations: response.citations.clone(),
                    flags: flags.clone(),
                    prompt: out
                        .prompt
                        .into_iter()
                        .map(|(role, content)| pb::ChatMessage {
                            role: role.into(),
                            content,
                        })
                        .collect(),
                    request_id: ctx.request_id.clone(),
                    ..Default::default()
                };
                response.review_id = rag.state.queue_review(item).await?;
                response.answer.clear();
                response.citations.clear();
                flags.push("pending_review".into());
                metrics::counter!("quiver_rag_reviews_queued_total").increment(1);
            }
        }
    }
    if response.citations.iter().any(|c| c.flagged) {
        flags.push("flagged_sources".to_owned());
    }
    response.flags = flags;
    response.took_us = started.elapsed().as_micros() as u64;
    let out = Answered {
        response,
        retrieved,
    };
    if a.mode != pb::AskMode::Review {
        rag.answers.put(
            Key {
                uid: got.uid,
                request: a.key.clone(),
            },
            got.lsn,
            out.clone(),
        );
        rag.semantic.put(
            got.uid,
            a.scope.clone(),
            got.lsn,
            got.question_vector,
            out.clone(),
        );
    }
    Ok(out)
}

/// What a generator's answer became after the checks.
struct Generated {
    answer: String,
    citations: Vec<pb::Citation>,
    invalid: Vec<String>,
    usage: pb::Usage,
    flags: Vec<String>,
    /// The messages as the model saw them (unredacted; for review and fine-tuning export).
    prompt: Vec<(&'static str, String)>,
}

/// Splits streamed text into what can be sent now and what must wait: a possible placeholder
/// (`[LABEL_n]`) still open at the end is held back until it closes.
fn split_for_restore(pending: &str) -> (&str, &str) {
    match pending.rfind('[') {
        Some(i) if !pending[i..].contains(']') && pending.len() - i < 32 => pending.split_at(i),
        Some(_) | None => (pending, ""),
    }
}

async fn generate(
    rag: &Arc<Rag>,
    a: &Asked,
    got: &Retrieved,
    g: Arc<dyn Generator>,
    ctx: &CallContext,
    events: Option<&EventSink>,
) -> ApiResult<Generated> {
    if g.hosted() && got.cfg.policy == pb::RagPolicy::LocalOnly as i32 {
        return Err(ApiError::Precondition(format!(
            "collection {} is local_only: provider {} is hosted, so no text may be sent to it (use provider local or extractive)",
            a.r.collection,
            g.name()
        )));
    }
    let max_context = match a.r.max_context_tokens {
        0 => rag.cfg.max_context_tokens,
        n => n,
    } as usize;
    let max_answer = match a.r.max_answer_tokens {
        0 => rag.cfg.max_answer_tokens,
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
            flagged: s
                .payload
                .get("flagged")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
        .collect();
    let count = |t: &str| g.count_tokens(t);
    // The context also has to leave room for the instructions, the question and the answer in
    // the model's window.
    let max_context = match g.context_len() {
        Some(window) => {
            let fixed = count(prompt::SYSTEM) + count(&a.r.question) + 64;
            let room = window.saturating_sub(fixed + max_answer as usize);
            if room < 64 {
                return Err(ApiError::bad(
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
    let (plain, shown, context_tokens) = prompt::build(&a.r.question, &chunks, max_context, &count);
    let prompt_tokens = (context_tokens + count(&plain.system) + count(&plain.question)) as u64;
    // Budget: refuse before spending when this call could exceed it.
    let budget = rag
        .cfg
        .tenant_budgets
        .get(&ctx.tenant)
        .copied()
        .unwrap_or(rag.cfg.token_budget_per_day);
    let reservation = if budget > 0 {
        let need = prompt_tokens + u64::from(max_answer);
        Some(rag.state.reserve(&ctx.tenant, need, budget).await?)
    } else {
        None
    };
    // PII: hosted providers see placeholders; the map stays here.
    let (sent, map) = if g.hosted() {
        const SEP: &str = "\n\u{1}\u{1}\n";
        let red = rag
            .redactor
            .redact(&format!("{}{SEP}{}", plain.context, plain.question));
        let (c, q) = red.text.split_once(SEP).unwrap_or((red.text.as_str(), ""));
        (
            Prompt {
                system: plain.system.clone(),
                context: c.to_owned(),
                question: q.to_owned(),
            },
            red.map,
        )
    } else {
        (plain.clone(), Vec::new())
    };
    let params = GenParams {
        max_tokens: max_answer,
        temperature: a.r.temperature.unwrap_or(0.0),
    };
    // Streaming: pieces are restored (placeholders → originals) and forwarded as they come.
    let (tok_tx, forwarder) = match events {
        Some(sink) => {
            let (tx, mut rx) = unbounded_channel::<String>();
            let (sink, map) = (sink.clone(), map.clone());
            let task = tokio::spawn(async move {
                let mut pending = String::new();
                while let Some(piece) = rx.recv().await {
                    pending.push_str(&piece);
                    let (ready, hold) = split_for_restore(&pending);
                    if !ready.is_empty() {
                        let text = pii::Redactor::restore(ready, &map);
                        if sink.send(event(pb::ask_event::Event::Token(text))).is_err() {
                            return;
                        }
                    }
                    pending = hold.to_owned();
                }
                if !pending.is_empty() {
                    let _ = sink.send(event(pb::ask_event::Event::Token(pii::Redactor::restore(
                        &pending, &map,
                    ))));
                }
            });
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
    let call_started = Instant::now();
    let result = g
        .generate(&sent, params, tok_tx)
        .instrument(span.clone())
        .await;
    let took = call_started.elapsed();
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    let labels = [
        ("provider", g.name().to_owned()),
        ("model", g.model().to_owned()),
    ];
    let mut record = pb::AuditRecord {
        request_id: ctx.request_id.clone(),
        tenant: ctx.tenant.clone(),
        collection: ctx.collection.clone(),
        operation: "chat".into(),
        provider: g.name().to_owned(),
        model: g.model().to_owned(),
        prompt: sent.flat(),
        latency_us: took.as_micros() as u64,
        redactions: map.len() as u32,
        ..Default::default()
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            metrics::counter!(
                "quiver_llm_requests_total",
                &[
                    labels[0].clone(),
                    labels[1].clone(),
                    ("status", "error".to_owned())
                ]
            )
            .increment(1);
            record.error = e.to_string();
            if let Err(err) = rag.audit.append(record) {
                tracing::error!(error = %err, "cannot write an audit record");
            }
            span.in_scope(|| tracing::warn!(error = %e, "LLM call failed"));
            return Err(e.into());
        }
    };
    let cost = g.price().cost(
        reply.prompt_tokens,
        reply.cached_tokens,
        reply.completion_tokens,
    );
    span.record("gen_ai.response.model", reply.model.as_str());
    span.record(
        "gen_ai.response.finish_reasons",
        reply.finish_reason.as_str(),
    );
    span.record("gen_ai.usage.input_tokens", reply.prompt_tokens);
    span.record("gen_ai.usage.output_tokens", reply.completion_tokens);
    span.record("quiver.cost_usd", cost);
    span.in_scope(|| {
        tracing::info!(
            latency_ms = took.as_millis() as u64,
            cached_tokens = reply.cached_tokens,
            "LLM call"
        )
    });
    metrics::counter!(
        "quiver_llm_requests_total",
        &[
            labels[0].clone(),
            labels[1].clone(),
            ("status", "ok".to_owned())
        ]
    )
    .increment(1);
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
        metrics::counter!(
            "quiver_llm_tokens_total",
            &[
                labels[0].clone(),
                labels[1].clone(),
                ("kind", kind.to_owned())
            ]
        )
        .increment(u64::from(n));
    }
    metrics::counter!("quiver_llm_cost_microdollars_total", &labels)
        .increment((cost * 1e6).round() as u64);
    let used = u64::from(reply.prompt_tokens) + u64::from(reply.completion_tokens);
    match reservation {
        Some(r) => r.settle(used).await?,
        None => rag.state.add_usage(&ctx.tenant, used).await?,
    };
    record.output = reply.text.clone();
    record.prompt_tokens = reply.prompt_tokens;
    record.completion_tokens = reply.completion_tokens;
    record.cached_prompt_tokens = reply.cached_tokens;
    record.estimated = reply.estimated;
    record.cost_usd = cost;
    if let Err(err) = rag.audit.append(record) {
        tracing::error!(error = %err, "cannot write an audit record");
    }
    // Restore placeholders, then check citations against what the model was shown.
    let restored = pii::Redactor::restore(&reply.text, &map);
    let shown_ids: Vec<String> = shown.iter().map(|c| c.id.clone()).collect();
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
    if shown.len() < chunks.len() {
        flags.push("context_trimmed".to_owned());
    }
    let citations = checked
        .valid
        .iter()
        .filter_map(|id| got.sources.iter().find(|s| &s.id == id))
        .map(|s| s.citation(s.str("text")))
        .collect();
    Ok(Generated {
        answer: checked.answer,
        citations,
        invalid: checked.invalid,
        usage: pb::Usage {
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            cached_prompt_tokens: reply.cached_tokens,
            embedding_tokens: 0,
            cost_usd: cost,
            estimated: reply.estimated,
            provider: g.name().to_owned(),
            model: reply.model,
            model_us: took.as_micros() as u64,
            first_token_us: reply.first_token.map_or(0, |t| t.as_micros() as u64),
        },
        flags,
        prompt: vec![("system", plain.system.clone()), ("user", plain.user())],
    })
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
}
