//! Built-in RAG: documents are chunked, flagged for injected instructions, embedded and stored
//! as points; `Ask` embeds the question, retrieves chunks (with the caller's filter) and
//! answers without an LLM: the ranked chunks (`retrieve_only`) or quoted sentences with
//! citations (`extractive`). The storage engine knows nothing of this: chunks are ordinary
//! points whose payload carries the text and its provenance.
pub mod cache;
pub mod chunk;
pub mod embed;
pub mod extract;
pub mod inject;
pub mod pii;

use std::sync::Arc;
use std::time::Instant;

use quiver_proto::v1 as pb;
use quiver_proto::v1::rag_server::Rag;
use quiver_storage::filter::{Condition, FieldType, Filter, Literal, Range};
use quiver_storage::{
    Collection, CollectionConfig, Engine, Metric, PointId, PointWrite, ReadOptions, SearchParams,
};
use serde_json::{Map, Value, json};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};
use chunk::ChunkParams;
use embed::Embedder;

/// Most chunks a question retrieves.
const MAX_K: u32 = 100;

/// The `Rag` gRPC service.
#[derive(Debug, Clone)]
pub struct RagService {
    state: Arc<AppState>,
    answers: Arc<cache::AnswerCache>,
}

/// Answers kept in the exact answer cache.
const ANSWER_CACHE_ENTRIES: usize = 4096;

impl RagService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        RagService {
            state,
            answers: Arc::new(cache::AnswerCache::new(ANSWER_CACHE_ENTRIES)),
        }
    }
}

fn embedder() -> embed::Builtin {
    embed::Builtin
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

/// The collection for documents, created on request with the embedder's dimension.
fn rag_collection(
    engine: &Engine,
    name: &str,
    create: bool,
    segment_max_rows: u32,
) -> ApiResult<Arc<Collection>> {
    let e = embedder();
    let c = match engine.collection(name) {
        Ok(c) => c,
        Err(quiver_storage::Error::CollectionNotFound { .. }) if create => engine
            .create_collection(CollectionConfig {
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
            })?,
        Err(err) => return Err(err.into()),
    };
    if c.config().dim != e.dim() {
        return Err(ApiError::Precondition(format!(
            "collection {name} has dimension {}, the {} embedder makes {}: use a collection created for documents (ingest-docs --create)",
            c.config().dim,
            e.name(),
            e.dim()
        )));
    }
    Ok(c)
}

/// Chunks, flags, embeds and stores one message's documents; returns (chunks, flagged).
fn ingest(c: &Collection, docs: Vec<pb::Document>, max_payload: usize) -> ApiResult<(u64, u64)> {
    let (mut chunks, mut flagged) = (0u64, 0u64);
    for (i, d) in docs.into_iter().enumerate() {
        let field = format!("documents[{i}]");
        if d.id.is_empty() || d.id.len() > 1000 {
            return Err(ApiError::bad(
                format!("{field}.id"),
                "must have 1 to 1000 bytes",
            ));
        }
        let meta: Map<String, Value> = match convert::payload(
            d.metadata_json.as_deref(),
            &format!("{field}.metadata_json"),
            max_payload,
        )? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| ApiError::bad(format!("{field}.metadata_json"), e.to_string()))?,
            None => Map::new(),
        };
        let texts = chunk::chunk(&d.text, ChunkParams::default());
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embedder().embed(&refs);
        let mut points = Vec::with_capacity(texts.len());
        for (n, (text, vector)) in texts.iter().zip(vectors).enumerate() {
            let reasons = inject::reasons(text);
            flagged += u64::from(!reasons.is_empty());
            let mut payload = meta.clone();
            payload.extend([
                ("document_id".to_owned(), json!(d.id)),
                ("source".to_owned(), json!(d.source)),
                ("position".to_owned(), json!(n)),
                ("text".to_owned(), json!(text)),
                ("flagged".to_owned(), json!(!reasons.is_empty())),
                ("flag_reasons".to_owned(), json!(reasons)),
            ]);
            points.push(PointWrite {
                id: PointId::Str(format!("{}#{n}", d.id)),
                vector,
                payload: Some(Value::Object(payload).to_string().into_bytes()),
            });
        }
        chunks += points.len() as u64;
        // New chunks first (same ids overwrite), then the old ones past the new end: a crash in
        // between leaves stale extra chunks, never a document with none.
        let n = points.len() as i64;
        if !points.is_empty() {
            c.upsert(points)?;
        }
        c.delete_by_filter(&doc_filter(&d.id, Some(n)))?;
    }
    Ok((chunks, flagged))
}

fn text_of(payload: &Option<Vec<u8>>) -> Map<String, Value> {
    payload
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default()
}

fn ask(
    engine: &Engine,
    r: pb::AskRequest,
    answers: &cache::AnswerCache,
) -> ApiResult<cache::Answered> {
    let started = Instant::now();
    if r.question.trim().is_empty() {
        return Err(ApiError::bad("question", "is empty"));
    }
    let k = match r.k {
        0 => 5,
        k if k > MAX_K => return Err(ApiError::bad("k", format!("{k} exceeds {MAX_K}"))),
        k => k,
    } as usize;
    let mode = pb::AskMode::try_from(r.mode)
        .map_err(|_| ApiError::bad("mode", format!("unknown mode {}", r.mode)))?;
    let filter = convert::filter(r.filter.as_ref())?;
    let c = rag_collection(engine, &r.collection, false, 0)?;
    // The LSN is read before retrieval: a write racing with this answer makes it stale at once.
    let lsn = c.last_lsn();
    let key = cache::Key {
        uid: c.uid(),
        request: format!("{:?}|{:?}|{k}|{}", r.question, filter, r.mode),
    };
    if let Some(mut hit) = answers.get(&key, lsn) {
        hit.response.cached = true;
        hit.response.took_us = started.elapsed().as_micros() as u64;
        return Ok(hit);
    }
    let q = embedder().embed(&[r.question.as_str()]).remove(0);
    let hits = c
        .search_batch_filtered(
            &[(&q, k)],
            ReadOptions {
                with_vectors: false,
                with_payload: true,
            },
            SearchParams::default(),
            filter.as_ref(),
        )
        .pop()
        .expect("invariant: one result per query")?;
    let sources: Vec<(Map<String, Value>, f32, String)> = hits
        .into_iter()
        .map(|h| {
            let id = match h.id {
                PointId::Str(s) => s,
                PointId::Num(n) => n.to_string(),
            };
            (text_of(&h.payload), h.score, id)
        })
        .collect();
    let citation =
        |(p, score, id): &(Map<String, Value>, f32, String), text: String| pb::Citation {
            document_id: p
                .get("document_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            chunk_id: id.clone(),
            score: *score,
            source: p
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            text,
            flagged: p.get("flagged").and_then(Value::as_bool).unwrap_or(false),
        };
    let retrieved: Vec<pb::Citation> = sources
        .iter()
        .map(|s| {
            citation(
                s,
                s.0.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let mut flags = Vec::new();
    if sources.is_empty() {
        flags.push("no_results".to_owned());
    }
    let (answer, citations) = match mode {
        pb::AskMode::RetrieveOnly => (String::new(), retrieved.clone()),
        pb::AskMode::Unspecified | pb::AskMode::Extractive => {
            let ex: Vec<extract::Source> = sources
                .iter()
                .map(|(p, _, id)| extract::Source {
                    chunk_id: id.clone(),
                    text: p
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
                .collect();
            let (answer, used) = extract::answer(&r.question, &ex, 3);
            if answer.is_empty() && !sources.is_empty() {
                flags.push("no_answer".to_owned());
            }
            (
                answer,
                used.into_iter()
                    .map(|(i, quoted)| citation(&sources[i], quoted.join(" ")))
                    .collect(),
            )
        }
    };
    if citations.iter().any(|c| c.flagged) {
        flags.push("flagged_sources".to_owned());
    }
    let out = cache::Answered {
        response: pb::AskResponse {
            answer,
            citations,
            flags,
            took_us: started.elapsed().as_micros() as u64,
            cached: false,
        },
        retrieved,
    };
    answers.put(key, lsn, out.clone());
    Ok(out)
}

#[tonic::async_trait]
impl Rag for RagService {
    async fn ingest_documents(
        &self,
        req: Request<Streaming<pb::IngestDocumentsRequest>>,
    ) -> Result<Response<pb::IngestDocumentsResponse>, Status> {
        let mut inbound = req.into_inner();
        let engine = self.state.engine()?;
        let (max_payload, seg_rows) = (
            self.state.settings.max_payload_bytes,
            self.state.settings.segment_max_rows,
        );
        let mut out = pb::IngestDocumentsResponse::default();
        let mut message = 0u64;
        while let Some(item) = inbound.next().await {
            message += 1;
            let r = item?;
            let (engine, ndocs) = (Arc::clone(&engine), r.documents.len() as u64);
            let (chunks, flagged) = blocking(move || {
                let c = rag_collection(&engine, &r.collection, r.create, seg_rows)?;
                ingest(&c, r.documents, max_payload)
            })
            .await
            .map_err(|e| {
                let s = Status::from(e);
                Status::new(
                    s.code(),
                    format!(
                        "message {message} ({} documents written before it): {}",
                        out.documents,
                        s.message()
                    ),
                )
            })?;
            out.documents += ndocs;
            out.chunks += chunks;
            out.flagged_chunks += flagged;
        }
        Ok(Response::new(out))
    }

    async fn delete_document(
        &self,
        req: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        let r = req.into_inner();
        let engine = self.state.engine()?;
        let (chunks, _) = blocking(move || {
            let c = rag_collection(&engine, &r.collection, false, 0)?;
            Ok(c.delete_by_filter(&doc_filter(&r.document_id, None))?)
        })
        .await?;
        Ok(Response::new(pb::DeleteDocumentResponse { chunks }))
    }

    async fn ask(&self, req: Request<pb::AskRequest>) -> Result<Response<pb::AskResponse>, Status> {
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let answers = Arc::clone(&self.answers);
        Ok(Response::new(
            blocking(move || ask(&engine, r, &answers)).await?.response,
        ))
    }

    type AskStreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AskEvent, Status>> + Send>>;

    async fn ask_stream(
        &self,
        req: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStreamStream>, Status> {
        use pb::ask_event::{Event, Retrieval};
        let engine = self.state.engine()?;
        let r = req.into_inner();
        let answers = Arc::clone(&self.answers);
        let a = blocking(move || ask(&engine, r, &answers)).await?;
        // The extractive answer is complete at once; it is still sent as the protocol's token
        // events (whitespace-separated pieces) so clients handle every generator the same way.
        let mut events = vec![Event::Retrieval(Retrieval {
            sources: a.retrieved,
        })];
        let text = a.response.answer.clone();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let end = rest
                .char_indices()
                .skip(1)
                .find(|(_, c)| c.is_whitespace())
                .map_or(rest.len(), |(i, _)| i);
            events.push(Event::Token(rest[..end].to_owned()));
            rest = &rest[end..];
        }
        events.push(Event::Done(a.response));
        Ok(Response::new(Box::pin(tokio_stream::iter(
            events
                .into_iter()
                .map(|e| Ok(pb::AskEvent { event: Some(e) })),
        ))))
    }
}
