//! `quiver ingest-docs` and `quiver ask`: documents from text, Markdown, HTML and JSONL files
//! to the `Rag` service, and questions back.
use std::path::{Path, PathBuf};

use crate::{Client, ClientError, pb};
use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

/// Text of an HTML page: scripts, styles and comments dropped, tags removed, block tags as line
/// breaks, the common entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        if lower[i..].starts_with("<!--") {
            i = lower[i..].find("-->").map_or(html.len(), |e| i + e + 3);
            continue;
        }
        if lower[i..].starts_with("<script") || lower[i..].starts_with("<style") {
            let close = if lower[i..].starts_with("<script") {
                "</script>"
            } else {
                "</style>"
            };
            i = lower[i..]
                .find(close)
                .map_or(html.len(), |e| i + e + close.len());
            continue;
        }
        if html.as_bytes()[i] == b'<' {
            let end = html[i..].find('>').map_or(html.len(), |e| i + e + 1);
            let tag = &lower[i..end];
            if [
                "<p", "</p", "<br", "<div", "</div", "<h1", "<h2", "<h3", "<h4", "<li", "<tr",
                "</h",
            ]
            .iter()
            .any(|t| tag.starts_with(t))
            {
                out.push('\n');
            }
            i = end;
            continue;
        }
        let ch = html[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The documents of one file: a whole `.txt`/`.md`/`.html` file is one document (its path is
/// the id); each line of a `.jsonl` file is one (`id_field`, `text_field`, the rest metadata).
pub fn documents(path: &Path, text_field: &str, id_field: &str) -> Result<Vec<pb::Document>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{name}: cannot read"))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let at = format!("{name}:{}", i + 1);
                let mut o = match serde_json::from_str::<Value>(l) {
                    Ok(Value::Object(o)) => o,
                    Ok(_) => return Err(anyhow!("{at}: expected a JSON object")),
                    Err(e) => return Err(anyhow!("{at}: invalid JSON: {e}")),
                };
                let text = match o.remove(text_field) {
                    Some(Value::String(s)) => s,
                    _ => return Err(anyhow!("{at}: no string field '{text_field}'")),
                };
                let id = match o.remove(id_field) {
                    Some(Value::String(s)) if !s.is_empty() => s,
                    Some(Value::Number(n)) => n.to_string(),
                    _ => format!("{name}:{}", i + 1),
                };
                Ok(pb::Document {
                    id,
                    text,
                    source: at,
                    metadata_json: (!o.is_empty()).then(|| Value::Object(o).to_string()),
                })
            })
            .collect(),
        "html" | "htm" => Ok(vec![pb::Document {
            id: name.clone(),
            text: html_to_text(&text),
            source: name,
            metadata_json: None,
        }]),
        _ => Ok(vec![pb::Document {
            id: name.clone(),
            text,
            source: name,
            metadata_json: None,
        }]),
    }
}

/// Streams the documents of `files` to `IngestDocuments` in messages of about 1 MiB of text.
pub async fn ingest(
    client: &mut Client,
    collection: &str,
    files: &[PathBuf],
    create: Option<pb::RagConfig>,
    text_field: &str,
    id_field: &str,
) -> Result<pb::IngestDocumentsResponse> {
    let mut messages = Vec::new();
    let mut cur: Vec<pb::Document> = Vec::new();
    let mut bytes = 0;
    for f in files {
        for d in documents(f, text_field, id_field)? {
            bytes += d.text.len();
            cur.push(d);
            if bytes >= 1 << 20 {
                messages.push(std::mem::take(&mut cur));
                bytes = 0;
            }
        }
    }
    if !cur.is_empty() {
        messages.push(cur);
    }
    let reqs: Vec<pb::IngestDocumentsRequest> = messages
        .into_iter()
        .map(|documents| pb::IngestDocumentsRequest {
            collection: collection.to_owned(),
            documents,
            create: create.is_some(),
            config: create.clone(),
        })
        .collect();
    Ok(client
        .rag
        .ingest_documents(tokio_stream::iter(reqs))
        .await
        .map_err(ClientError::from)?
        .into_inner())
}

/// `quiver ask --stream`: prints the answer as it arrives (with `json`, one line per event:
/// `{"event": "retrieval"|"token"|"done", ...}`).
pub async fn ask_stream(client: &mut Client, req: pb::AskRequest, as_json: bool) -> Result<()> {
    use std::io::Write as _;
    use tokio_stream::StreamExt;
    let mut events = client
        .rag
        .ask_stream(req)
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let mut out = std::io::stdout();
    while let Some(e) = events.next().await {
        let e = e.map_err(ClientError::from)?;
        match e.event {
            // Without --json the sources are not printed: the citations follow the answer.
            Some(pb::ask_event::Event::Retrieval(r)) if as_json => {
                let sources: Vec<Value> = r
                    .sources
                    .iter()
                    .map(|c| json!({"chunk_id": c.chunk_id, "document_id": c.document_id, "score": c.score}))
                    .collect();
                writeln!(out, "{}", json!({"event": "retrieval", "sources": sources}))?;
            }
            Some(pb::ask_event::Event::Retrieval(_)) | None => {}
            Some(pb::ask_event::Event::Token(t)) => {
                if as_json {
                    writeln!(out, "{}", json!({"event": "token", "text": t}))?;
                } else {
                    write!(out, "{t}")?;
                    out.flush()?;
                }
            }
            Some(pb::ask_event::Event::Done(r)) => {
                if as_json {
                    let mut v = ask_json(&r);
                    v["event"] = json!("done");
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out)?;
                    for c in &r.citations {
                        writeln!(out, "[{}] {:.3} {}", c.chunk_id, c.score, c.source)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// `quiver ask` output as JSON.
pub fn ask_json(r: &pb::AskResponse) -> Value {
    json!({
        "answer": r.answer,
        "citations": r.citations.iter().map(|c| json!({
            "document_id": c.document_id, "chunk_id": c.chunk_id, "score": c.score,
            "source": c.source, "text": c.text, "flagged": c.flagged,
            "dense_rank": (c.dense_rank > 0).then_some(c.dense_rank),
            "text_rank": (c.text_rank > 0).then_some(c.text_rank),
        })).collect::<Vec<_>>(),
        "flags": r.flags,
        "invalid_citations": r.invalid_citations,
        "usage": r.usage.as_ref().map(|u| json!({
            "provider": u.provider, "model": u.model, "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cached_prompt_tokens": u.cached_prompt_tokens, "cost_usd": u.cost_usd,
            "estimated": u.estimated, "model_us": u.model_us, "first_token_us": u.first_token_us,
        })).unwrap_or_else(|| json!({})),
        "took_us": r.took_us,
        "cached": r.cached,
        "cache": r.cache,
        "request_id": r.request_id,
        "review_id": r.review_id,
    })
}

/// One evaluation question: expected source documents and/or an expected answer.
#[derive(Debug, serde::Deserialize)]
struct EvalCase {
    question: String,
    #[serde(default)]
    expected_documents: Vec<String>,
    #[serde(default)]
    expected_answer: Option<String>,
}

/// What `quiver eval` asks.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Chunks retrieved.
    pub k: u32,
    /// Print a line per question.
    pub per_question: bool,
    /// The answer mode evaluated (extractive or generate).
    pub mode: i32,
    /// Generator for generate.
    pub provider: String,
    /// Answer length limit (0 = server default).
    pub max_answer_tokens: u32,
    /// Retrieval of the evaluated asks (dense, text, hybrid; "" = the collection's).
    pub retrieval: String,
    /// Reranker of the evaluated asks ("" = the collection's).
    pub rerank: String,
}

/// The retrieval modes `quiver eval` compares.
const RETRIEVAL_MODES: [&str; 3] = ["dense", "text", "hybrid"];

/// `quiver eval`: per question, retrieval recall@k and reciprocal rank of the expected documents
/// (from a `retrieve_only` ask), whether the answer (extractive or generated) contains or
/// equals the expected answer, the share of its citations that name retrieved chunks, tokens,
/// cost and latency. Prints one JSON line per question (with `per_question`) and returns the
/// totals.
pub async fn eval(
    client: &mut Client,
    collection: &str,
    questions: &Path,
    o: &EvalOptions,
) -> Result<Value> {
    let name = questions.display().to_string();
    let text =
        std::fs::read_to_string(questions).with_context(|| format!("{name}: cannot read"))?;
    let mut rows = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let case: EvalCase =
            serde_json::from_str(line).map_err(|e| anyhow!("{name}:{}: {e}", i + 1))?;
        let row = eval_case(client, collection, &case, o).await?;
        if o.per_question {
            println!("{row}");
        }
        rows.push(row);
    }
    Ok(eval_totals(&rows, o.k))
}

/// One question: a retrieve-only ask, the evaluated ask, and the same ask again (served from
/// the answer cache); the row of its measures.
async fn eval_case(
    client: &mut Client,
    collection: &str,
    case: &EvalCase,
    o: &EvalOptions,
) -> Result<Value> {
    let ask = |mode: i32| pb::AskRequest {
        collection: collection.to_owned(),
        question: case.question.clone(),
        k: o.k,
        mode,
        provider: o.provider.clone(),
        max_answer_tokens: o.max_answer_tokens,
        retrieval: o.retrieval.clone(),
        rerank: o.rerank.clone(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let retrieved = client
        .rag
        .ask(ask(pb::AskMode::RetrieveOnly as i32))
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let answered = client
        .rag
        .ask(ask(o.mode))
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    // The same question again: served from the answer cache (the collection is unchanged).
    let cached = client
        .rag
        .ask(ask(o.mode))
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let (recall, rr) = retrieval_scores(&retrieved, &case.expected_documents);
    // Each retrieval mode's recall and reciprocal rank (null where the collection cannot
    // retrieve that way, e.g. text on a collection without text fields).
    let mut by_mode = serde_json::Map::new();
    let modes: Vec<(&str, &str, &str)> = RETRIEVAL_MODES
        .iter()
        .map(|m| (*m, *m, "none"))
        .chain((!o.rerank.is_empty() && o.rerank != "none").then_some((
            "hybrid+rerank",
            "hybrid",
            o.rerank.as_str(),
        )))
        .collect();
    for (mode, retrieval, rerank) in modes {
        let r = client
            .rag
            .ask(pb::AskRequest {
                retrieval: retrieval.into(),
                rerank: rerank.into(),
                ..ask(pb::AskMode::RetrieveOnly as i32)
            })
            .await;
        let v = match r {
            Ok(r) => {
                let (recall, rr) = retrieval_scores(&r.into_inner(), &case.expected_documents);
                json!({"recall_at_k": recall, "reciprocal_rank": rr})
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Value::Null,
            Err(s) => return Err(ClientError::from(s).into()),
        };
        by_mode.insert(mode.into(), v);
    }
    let valid = citation_validity(&retrieved, &answered);
    let usage = answered.usage.clone().unwrap_or_default();
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let answer_text = norm(&answered.answer);
    let contains = case
        .expected_answer
        .as_deref()
        .map(|e| answer_text.contains(&norm(e)));
    let exact = case
        .expected_answer
        .as_deref()
        .map(|e| answer_text == norm(e));
    Ok(json!({
        "question": case.question, "recall_at_k": recall, "reciprocal_rank": rr,
        "by_retrieval": by_mode,
        "answer_contains": contains, "answer_exact": exact, "citation_validity": valid,
        "latency_ms": latency_ms, "server_us": answered.took_us,
        // The retrieve-only ask embeds the question (the answer's ask reuses the cached
        // embedding): its server time is the full retrieval cost.
        "retrieve_us": retrieved.took_us,
        "cache_hit_us": cached.cached.then_some(cached.took_us), "answer": answered.answer,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd, "model_ms": usage.model_us as f64 / 1e3,
        "first_token_ms": (usage.first_token_us > 0).then(|| usage.first_token_us as f64 / 1e3),
        // The server's own work (embed, retrieve, prompt, checks), without the model.
        "overhead_us": answered.took_us.saturating_sub(usage.model_us),
        "flags": answered.flags,
    }))
}

/// Recall@k and reciprocal rank of the expected documents among the retrieved ones (`None`
/// without expected documents).
fn retrieval_scores(
    retrieved: &pb::AskResponse,
    expected: &[String],
) -> (Option<f64>, Option<f64>) {
    let mut docs: Vec<&str> = Vec::new();
    for c in &retrieved.citations {
        if !docs.contains(&c.document_id.as_str()) {
            docs.push(&c.document_id);
        }
    }
    let recall = (!expected.is_empty()).then(|| {
        expected
            .iter()
            .filter(|d| docs.contains(&d.as_str()))
            .count() as f64
            / expected.len() as f64
    });
    let rr = (!expected.is_empty()).then(|| {
        docs.iter()
            .position(|d| expected.iter().any(|e| e == d))
            .map_or(0.0, |r| 1.0 / (r + 1) as f64)
    });
    (recall, rr)
}

/// The share of the answer's citations that name retrieved chunks (`None` without citations).
fn citation_validity(retrieved: &pb::AskResponse, answered: &pb::AskResponse) -> Option<f64> {
    let chunk_ids: Vec<&str> = retrieved
        .citations
        .iter()
        .map(|c| c.chunk_id.as_str())
        .collect();
    // Citations the server removed (naming no retrieved chunk) count as invalid.
    let cited = answered.citations.len() + answered.invalid_citations.len();
    (cited > 0).then(|| {
        answered
            .citations
            .iter()
            .filter(|c| chunk_ids.contains(&c.chunk_id.as_str()))
            .count() as f64
            / cited as f64
    })
}

/// The totals of `quiver eval`: means, percentiles and sums over the question rows.
fn eval_totals(rows: &[Value], k: u32) -> Value {
    let mean = |key: &str| -> Option<f64> {
        let v: Vec<f64> = rows
            .iter()
            .filter_map(|r| {
                r[key]
                    .as_f64()
                    .or_else(|| r[key].as_bool().map(|b| f64::from(u8::from(b))))
            })
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let sorted = |key: &str| -> Vec<f64> {
        let mut v: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let pct = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    let (lat, server, hit) = (
        sorted("latency_ms"),
        sorted("server_us"),
        sorted("cache_hit_us"),
    );
    let model_ms: f64 = rows.iter().filter_map(|r| r["model_ms"].as_f64()).sum();
    let generated: u64 = rows
        .iter()
        .filter_map(|r| r["completion_tokens"].as_u64())
        .sum();
    let tokens_per_s = (model_ms > 0.0).then(|| generated as f64 / (model_ms / 1e3));
    let by_retrieval: serde_json::Map<String, Value> = RETRIEVAL_MODES
        .iter()
        .chain(&["hybrid+rerank"])
        .filter(|m| rows.iter().any(|r| r["by_retrieval"].get(**m).is_some()))
        .map(|m| {
            let vals = |key: &str| -> Vec<f64> {
                rows.iter()
                    .filter_map(|r| r["by_retrieval"][*m][key].as_f64())
                    .collect()
            };
            let mean =
                |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            let recall = vals("recall_at_k");
            let v = if recall.is_empty() {
                Value::Null
            } else {
                json!({"recall_at_k": mean(recall), "mrr": mean(vals("reciprocal_rank"))})
            };
            ((*m).to_owned(), v)
        })
        .collect();
    json!({
        "questions": rows.len(), "k": k,
        "by_retrieval": by_retrieval,
        "recall_at_k": mean("recall_at_k"), "mrr": mean("reciprocal_rank"),
        "answer_contains": mean("answer_contains"), "answer_exact": mean("answer_exact"),
        "citation_validity": mean("citation_validity"),
        "latency_ms_p50": pct(&lat, 0.5), "latency_ms_max": lat.last(),
        "server_us_p50": pct(&server, 0.5), "server_us_p99": pct(&server, 0.99),
        "cache_hit_us_p50": pct(&hit, 0.5), "cache_hit_us_p99": pct(&hit, 0.99),
        "prompt_tokens": rows.iter().filter_map(|r| r["prompt_tokens"].as_u64()).sum::<u64>(),
        "completion_tokens": rows.iter().filter_map(|r| r["completion_tokens"].as_u64()).sum::<u64>(),
        "cost_usd": rows.iter().filter_map(|r| r["cost_usd"].as_f64()).sum::<f64>(),
        "model_ms_p50": pct(&sorted("model_ms"), 0.5),
        "retrieve_us_p50": pct(&sorted("retrieve_us"), 0.5),
        "retrieve_us_p99": pct(&sorted("retrieve_us"), 0.99),
        "overhead_us_p50": pct(&sorted("overhead_us"), 0.5),
        "overhead_us_p99": pct(&sorted("overhead_us"), 0.99),
        "first_token_ms_p50": pct(&sorted("first_token_ms"), 0.5),
        "tokens_per_s": tokens_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_becomes_text() {
        let t = html_to_text(
            "<html><style>p{}</style><h1>Title</h1><p>A &amp; B<br>C</p><!-- x --><script>evil()</script></html>",
        );
        assert_eq!(
            t.split_whitespace().collect::<Vec<_>>(),
            ["Title", "A", "&", "B", "C"]
        );
    }
}
