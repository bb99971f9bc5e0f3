//! A fake LLM provider on 127.0.0.1 that speaks the OpenAI (`/v1/chat/completions`,
//! `/v1/embeddings`) and Anthropic (`/v1/messages`) wire formats faithfully: JSON and SSE
//! responses, usage (with cached tokens), error bodies, 429 with `retry-after`, slow answers.
//! It records every request so tests can assert on exactly what left the server.
//!
//! Its answers are derived from the prompt: the first sentence of the first document block,
//! a citation of that block's id and one of a chunk that was never shown (`[ghost#9]`), and the
//! first PII placeholder it saw (so restoring can be checked). A question containing
//! `nocite` gets an answer with no citation.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path.
    pub path: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Value,
}

/// Behaviour switches (set between requests).
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Answer the next N chat requests with 429 and `retry-after: 0`.
    pub rate_limit_next: u32,
    /// Delay every chat answer by this long.
    pub delay: Duration,
    /// Answer chat requests with this HTTP status and an error body.
    pub fail_status: Option<u16>,
}

#[derive(Debug, Default)]
struct Inner {
    received: Vec<Received>,
    behaviour: Behaviour,
}

/// A running fake provider.
#[derive(Debug, Clone)]
pub struct FakeLlm {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeLlm {
    /// Starts the fake on an ephemeral port (stops with the runtime).
    pub async fn start() -> FakeLlm {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/v1/messages", post(anthropic))
            .route("/v1/rerank", post(rerank))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm { base, inner }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").received.clone()
    }

    /// Requests to paths ending with `suffix`.
    pub fn received_at(&self, suffix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    /// Changes behaviour.
    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.inner.lock().expect("lock").behaviour);
    }
}

fn record(inner: &Mutex<Inner>, path: &str, headers: &HeaderMap, body: &Value) {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    inner.lock().expect("lock").received.push(Received {
        path: path.into(),
        headers,
        body: body.clone(),
    });
}

/// What to do before answering a chat request: an early error response, or a delay.
fn gate(inner: &Mutex<Inner>) -> (Option<Response>, Duration) {
    let mut g = inner.lock().expect("lock");
    if g.behaviour.rate_limit_next > 0 {
        g.behaviour.rate_limit_next -= 1;
        let r = Response::builder()
            .status(429)
            .header("retry-after", "0")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"error": {"message": "Rate limit reached", "type": "rate_limit"}})
                    .to_string(),
            ))
            .expect("response");
        return (Some(r), Duration::ZERO);
    }
    if let Some(status) = g.behaviour.fail_status {
        let r = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "model not found"}})
                    .to_string(),
            ))
            .expect("response");
        return (Some(r), Duration::ZERO);
    }
    (None, g.behaviour.delay)
}

/// The answer text for a prompt (see the module docs).
pub fn answer_for(full: &str) -> String {
    // Only the data part (the system prompt describes the block syntax itself).
    let prompt = full.split_once("<documents>").map_or(full, |(_, d)| d);
    let first_id = prompt
        .split("<document id=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("none");
    let first_text = prompt
        .split("<document id=\"")
        .nth(1)
        .and_then(|s| s.split_once(">\n"))
        .map(|(_, t)| t.split(['.', '\n']).next().unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    let placeholder = prompt
        .match_indices('[')
        .filter_map(|(i, _)| {
            let rest = &prompt[i..];
            let end = rest.find(']')?;
            let inner = &rest[1..end];
            inner
                .split_once('_')
                .filter(|(l, n)| {
                    !l.is_empty()
                        && l.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                        && n.bytes().all(|b| b.is_ascii_digit())
                })
                .map(|_| rest[..=end].to_owned())
        })
        .next();
    if full.contains("nocite") {
        return format!("{first_text}.");
    }
    let mut a = format!("{first_text} [{first_id}].");
    if let Some(p) = placeholder {
        a.push_str(&format!(" Contact {p}."));
    }
    a.push_str(" See also [ghost#9].");
    a
}

fn words(s: &str) -> Vec<String> {
    // Keep each word's trailing space so the pieces concatenate to the whole.
    s.split_inclusive(' ').map(str::to_owned).collect()
}

fn sse(events: Vec<(Option<&str>, Value)>, done: bool) -> Response {
    let mut body = String::new();
    for (event, data) in events {
        if let Some(e) = event {
            body.push_str(&format!("event: {e}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .expect("response")
}

fn json_response(v: Value) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

async fn openai_chat(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&inner, "/v1/chat/completions", &headers, &v);
    let (early, delay) = gate(&inner);
    if let Some(r) = early {
        return r;
    }
    tokio::time::sleep(delay).await;
    let prompt: String = v["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let text = answer_for(&prompt);
    let usage = json!({"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
                       "prompt_tokens_details": {"cached_tokens": 400}});
    if v["stream"] == true {
        let mut events: Vec<(Option<&str>, Value)> = vec![(
            None,
            json!({"id": "c1", "model": "fake-gpt", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
        )];
        for w in words(&text) {
            events.push((None, json!({"id": "c1", "model": "fake-gpt", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]})));
        }
        events.push((None, json!({"id": "c1", "model": "fake-gpt", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
        events.push((
            None,
            json!({"id": "c1", "model": "fake-gpt", "choices": [], "usage": usage}),
        ));
        return sse(events, true);
    }
    json_response(json!({
        "id": "c1", "object": "chat.completion", "model": "fake-gpt",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    }))
}

async fn openai_embeddings(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&inner, "/v1/embeddings", &headers, &v);
    let inputs: Vec<String> = match &v["input"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => vec![s.clone()],
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => Vec::new(),
    };
    // A deterministic 8-d bag-of-letters embedding, L2-normalised; listed in reverse order
    // (clients must sort by `index`).
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| {
            let mut e = [0.0f32; 8];
            for b in t.to_lowercase().bytes().filter(u8::is_ascii_alphabetic) {
                e[(b % 8) as usize] += 1.0;
            }
            let n = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            json!({"object": "embedding", "index": i, "embedding": e.iter().map(|x| x / n).collect::<Vec<_>>()})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    json_response(
        json!({"object": "list", "data": data, "model": "fake-embed",
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

/// Cohere's rerank shape: each document scored by how many of the query's words (of 3+
/// letters) it holds, results best first.
async fn rerank(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&inner, "/v1/rerank", &headers, &v);
    let split = |s: &str| -> Vec<String> {
        s.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 3)
            .map(str::to_owned)
            .collect()
    };
    let q = split(v["query"].as_str().unwrap_or_default());
    let docs: Vec<String> = v["documents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut results: Vec<(usize, f64)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let dw = split(d);
            (i, q.iter().filter(|w| dw.contains(w)).count() as f64 / 10.0)
        })
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    json_response(json!({
        "results": results.iter().map(|(i, s)| json!({"index": i, "relevance_score": s})).collect::<Vec<_>>(),
    }))
}

async fn anthropic(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    record(&inner, "/v1/messages", &headers, &v);
    let (early, delay) = gate(&inner);
    if let Some(r) = early {
        return r;
    }
    tokio::time::sleep(delay).await;
    let mut prompt = String::new();
    for b in v["system"].as_array().into_iter().flatten() {
        prompt.push_str(b["text"].as_str().unwrap_or(""));
        prompt.push('\n');
    }
    for m in v["messages"].as_array().into_iter().flatten() {
        for b in m["content"].as_array().into_iter().flatten() {
            prompt.push_str(b["text"].as_str().unwrap_or(""));
        }
    }
    let text = answer_for(&prompt);
    let usage = json!({"input_tokens": 50, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 900, "output_tokens": 1});
    if v["stream"] == true {
        let mut events = vec![
            (
                Some("message_start"),
                json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "model": "fake-claude", "content": [], "stop_reason": null, "usage": usage}}),
            ),
            (
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            (Some("ping"), json!({"type": "ping"})),
        ];
        for w in words(&text) {
            events.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
        }
        events.push((
            Some("content_block_stop"),
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push((Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 25}})));
        events.push((Some("message_stop"), json!({"type": "message_stop"})));
        return sse(events, false);
    }
    json_response(json!({
        "id": "m1", "type": "message", "role": "assistant", "model": "fake-claude",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 50, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 900, "output_tokens": 25},
    }))
}
