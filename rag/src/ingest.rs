//! Documents → chunks → points. A batch of documents is checked and chunked before anything
//! is created or embedded, embedded in one call (the embedder batches), then written in writes
//! of about 4 MiB (one replicated log entry each on a cluster): new chunks first (same ids
//! overwrite), then each document's old chunks past its new end, so a crash in between leaves
//! stale extra chunks, never a document with none.
use std::sync::Arc;

use quiver_storage::filter::{Condition, FieldType, Filter, Literal, Range};
use quiver_storage::{Collection, CollectionConfig, Metric, Mutation, PointId, PointWrite};
use serde_json::{Map, Value, json};

use crate::chunk::{self, ChunkParams};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::types::{Document, Ingested, RagConfig, Retrieval};
use crate::{CallContext, Rag, blocking, inject, state};
use quiver_storage::text::{Analyzer, Language};

/// Largest document text, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Most metadata bytes one batch may have copied into its chunks.
const MAX_COPIED_METADATA: usize = 64 << 20;
/// Chunk writes are split at about this many bytes.
const INGEST_WRITE_BYTES: usize = 4 << 20;
/// Longest document id, bytes.
const MAX_ID_BYTES: usize = 1000;
/// Longest source, bytes.
const MAX_SOURCE_BYTES: usize = 4096;

/// A collection for documents with its RAG settings and embedder.
pub struct DocCollection {
    /// The collection.
    pub c: Arc<Collection>,
    /// Its settings.
    pub cfg: RagConfig,
    /// Its embedder.
    pub embedder: Arc<dyn Embedder>,
}

/// A document, checked, with its metadata and chunk texts.
struct Parsed {
    doc: Document,
    meta: Map<String, Value>,
    texts: Vec<String>,
    /// Per chunk, its context header: the document's title (or source, or id) and the
    /// section heading in effect, if any ("contextual retrieval").
    contexts: Vec<String>,
    /// Per chunk, what is embedded: the header, a line break, the chunk.
    embedded: Vec<String>,
}

/// The chunk payload key indexed as text (the chunk itself).
pub const TEXT_FIELD: &str = "text";
/// The chunk payload key holding its context header, indexed as text too.
pub const CONTEXT_FIELD: &str = "context";
/// Longest context header, bytes (a longer title is cut at a character boundary).
const MAX_CONTEXT_BYTES: usize = 300;

/// The analyzer of document text fields: English stemming and stop words (questions are
/// sentences; their "what is the" must not outweigh the rare term that matters).
pub fn text_field_type() -> FieldType {
    FieldType::Text(Analyzer {
        language: Some(Language::English),
        stop_words: true,
    })
}

/// Checks that `c` indexes its chunks' text for BM25 (collections created before text
/// indexing do not, until the fields are declared).
pub fn check_text_fields(c: &Collection) -> Result<()> {
    let schema = c.schema();
    for key in [TEXT_FIELD, CONTEXT_FIELD] {
        if !matches!(schema.get(key), Some(FieldType::Text(_))) {
            return Err(Error::Precondition(format!(
                "collection {} does not index its chunks' {key} for text retrieval (it predates text indexing): declare it with `quiver collection declare-fields {} --field {key}:text:english+stop`, or use retrieval dense",
                c.config().name,
                c.config().name
            )));
        }
    }
    Ok(())
}

/// A chunk's context header: `title › section` (the title from the metadata's `title`, else
/// the source, else the document id).
fn context_header(doc: &Document, meta: &Map<String, Value>, heading: Option<&str>) -> String {
    let title = meta
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .unwrap_or(if doc.source.trim().is_empty() {
            &doc.id
        } else {
            &doc.source
        })
        .trim();
    let mut h = match heading {
        Some(s) if !s.eq_ignore_ascii_case(title) => format!("{title} › {s}"),
        _ => title.to_owned(),
    };
    if h.len() > MAX_CONTEXT_BYTES {
        let mut end = MAX_CONTEXT_BYTES;
        while !h.is_char_boundary(end) {
            end -= 1;
        }
        h.truncate(end);
    }
    h
}

/// The filter selecting a document's chunks (from `from_position` on).
pub fn doc_filter(document_id: &str, from_position: Option<i64>) -> Filter {
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

/// Checks a batch's documents (ids, sizes, metadata) and chunks them. Blocking (chunking is
/// CPU work).
fn parse_documents(docs: Vec<Document>, max_payload: usize) -> Result<Vec<Parsed>> {
    let mut parsed = Vec::with_capacity(docs.len());
    let max_meta = max_payload / 4;
    let mut copied = 0usize;
    for (i, doc) in docs.into_iter().enumerate() {
        let field = format!("documents[{i}]");
        if doc.id.is_empty() || doc.id.len() > MAX_ID_BYTES {
            return Err(Error::bad(
                format!("{field}.id"),
                format!("must have 1 to {MAX_ID_BYTES} bytes"),
            ));
        }
        if doc.text.len() > MAX_DOCUMENT_BYTES {
            return Err(Error::TooLarge(format!(
                "{field}.text: {} bytes; a document holds at most {MAX_DOCUMENT_BYTES} (split it)",
                doc.text.len()
            )));
        }
        if doc.source.len() > MAX_SOURCE_BYTES {
            return Err(Error::bad(
                format!("{field}.source"),
                format!("at most {MAX_SOURCE_BYTES} bytes"),
            ));
        }
        // Metadata is copied into every chunk: it must leave room for the chunk's text.
        let meta = metadata(doc.metadata_json.as_deref(), &field, max_meta)?;
        let chunks = chunk::chunk_with_headings(&doc.text, ChunkParams::default());
        let contexts: Vec<String> = chunks
            .iter()
            .map(|(_, h)| context_header(&doc, &meta, h.as_deref()))
            .collect();
        let embedded = chunks
            .iter()
            .zip(&contexts)
            .map(|((t, _), c)| format!("{c}\n{t}"))
            .collect();
        let texts: Vec<String> = chunks.into_iter().map(|(t, _)| t).collect();
        let meta_bytes = doc.metadata_json.as_deref().map_or(0, str::len);
        copied = copied.saturating_add(meta_bytes.saturating_mul(texts.len()));
        if copied > MAX_COPIED_METADATA {
            return Err(Error::TooLarge(format!(
                "{field}.metadata_json: copied into each chunk, the message's metadata would total {copied} bytes; the limit is {MAX_COPIED_METADATA} (send less metadata, or fewer documents per message)"
            )));
        }
        parsed.push(Parsed {
            doc,
            meta,
            texts,
            contexts,
            embedded,
        });
    }
    Ok(parsed)
}

/// A document's metadata: a JSON object of at most `max` bytes.
fn metadata(json: Option<&str>, field: &str, max: usize) -> Result<Map<String, Value>> {
    let field = format!("{field}.metadata_json");
    let Some(text) = json else {
        return Ok(Map::new());
    };
    if text.len() > max {
        return Err(Error::TooLarge(format!(
            "{field}: payload is {} bytes, the limit is {max} (metadata is copied into every chunk)",
            text.len()
        )));
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::bad(field, "payload must be a JSON object")),
        Err(e) => Err(Error::bad(
            field,
            format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )),
    }
}

impl Rag {
    /// The collection for documents; created on request (`create`) with the embedder's
    /// dimension and the chunk fields declared, its settings in the same write.
    pub async fn doc_collection(
        &self,
        name: &str,
        create: Option<&RagConfig>,
    ) -> Result<DocCollection> {
        quiver_storage::types::validate_collection_name(name)?;
        let engine = self.host.engine()?;
        let c = match (engine.collection(name), create) {
            (Ok(c), _) => c,
            (Err(quiver_storage::Error::CollectionNotFound { .. }), Some(wanted)) => {
                return self.create_doc_collection(name, wanted).await;
            }
            (Err(err), _) => return Err(err.into()),
        };
        let cfg = self.state.config(&c)?;
        if let Some(wanted) = create
            && !wanted.embedder.is_empty()
            && wanted.embedder != cfg.embedder
        {
            return Err(Error::Precondition(format!(
                "collection {name} exists with embedder {}, not {}",
                cfg.embedder, wanted.embedder
            )));
        }
        let e = self.embedder(&cfg.embedder).await?;
        if c.config().dim != e.dim() {
            return Err(Error::Precondition(format!(
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

    async fn create_doc_collection(&self, name: &str, wanted: &RagConfig) -> Result<DocCollection> {
        let mut cfg = wanted.clone();
        if cfg.embedder.is_empty() {
            cfg.embedder = "builtin".into();
        }
        // New document collections retrieve hybrid unless asked otherwise.
        cfg.retrieval.get_or_insert(Retrieval::Hybrid);
        self.check_policy(&cfg)?;
        let e = self.embedder(&cfg.embedder).await?;
        let config = CollectionConfig {
            name: name.into(),
            dim: e.dim(),
            metric: Metric::Cosine,
            index: Default::default(),
            segment_max_rows: self.host.limits().segment_max_rows,
            schema: [
                ("document_id".to_owned(), FieldType::Keyword),
                ("source".to_owned(), FieldType::Keyword),
                ("position".to_owned(), FieldType::Integer),
                ("flagged".to_owned(), FieldType::Bool),
                (TEXT_FIELD.to_owned(), text_field_type()),
                (CONTEXT_FIELD.to_owned(), text_field_type()),
            ]
            .into(),
            labels: [(state::RAG_LABEL.to_owned(), state::config_label(&cfg))].into(),
        };
        // Settings travel with the collection, in the same replicated write.
        self.host.write(Mutation::CreateCollection(config)).await?;
        let c = self.host.engine()?.collection(name)?;
        Ok(DocCollection {
            c,
            cfg,
            embedder: e,
        })
    }

    /// Chunks, flags, embeds and stores one batch of documents into `collection` (created
    /// with `create` when missing). Refused documents create nothing.
    pub async fn ingest(
        &self,
        collection: &str,
        docs: Vec<Document>,
        create: Option<&RagConfig>,
        ctx: &CallContext,
    ) -> Result<Ingested> {
        let max_payload = self.host.limits().max_payload_bytes;
        let parsed = blocking(move || parse_documents(docs, max_payload)).await?;
        let d = self.doc_collection(collection, create).await?;
        let refs: Vec<&str> = parsed
            .iter()
            .flat_map(|p| p.embedded.iter().map(String::as_str))
            .collect();
        let vectors = if refs.is_empty() {
            Vec::new()
        } else {
            self.embed(d.embedder.as_ref(), &refs, ctx).await?
        };
        let (batches, ends, out) = blocking(move || points(parsed, vectors, max_payload)).await?;
        let name = d.c.config().name.clone();
        for points in batches {
            let collection = name.clone();
            self.host
                .write(Mutation::Upsert { collection, points })
                .await?;
        }
        for (id, n) in ends {
            let filter = doc_filter(&id, Some(n));
            let collection = name.clone();
            self.host
                .write(Mutation::DeleteByFilter { collection, filter })
                .await?;
        }
        metrics::counter!("quiver_rag_chunks_ingested_total").increment(out.chunks);
        metrics::counter!("quiver_rag_chunks_flagged_total").increment(out.flagged);
        Ok(out)
    }

    /// Deletes a document's chunks; returns how many there were.
    pub async fn delete_document(&self, collection: &str, document_id: &str) -> Result<u64> {
        let d = self.doc_collection(collection, None).await?;
        let out = self
            .host
            .write(Mutation::DeleteByFilter {
                collection: d.c.config().name.clone(),
                filter: doc_filter(document_id, None),
            })
            .await?;
        Ok(out.count)
    }
}

/// Write batches of about [`INGEST_WRITE_BYTES`], plus each document's chunk count.
type Points = (Vec<Vec<PointWrite>>, Vec<(String, i64)>, Ingested);

/// The chunks as points (payload: text, provenance, injection flags), in write batches.
fn points(parsed: Vec<Parsed>, vectors: Vec<Vec<f32>>, max_payload: usize) -> Result<Points> {
    let mut vectors = vectors.into_iter();
    let (mut batches, mut batch, mut bytes) = (Vec::new(), Vec::new(), 0usize);
    let mut out = Ingested::default();
    let mut ends = Vec::with_capacity(parsed.len());
    for Parsed {
        doc,
        meta,
        texts,
        contexts,
        ..
    } in parsed
    {
        for (n, (text, context)) in texts.iter().zip(&contexts).enumerate() {
            let vector = vectors
                .next()
                .ok_or_else(|| Error::Internal("the embedder returned too few vectors".into()))?;
            let reasons = inject::reasons(text);
            out.flagged += u64::from(!reasons.is_empty());
            let mut payload = meta.clone();
            payload.extend([
                ("document_id".to_owned(), json!(doc.id)),
                ("source".to_owned(), json!(doc.source)),
                ("position".to_owned(), json!(n)),
                (TEXT_FIELD.to_owned(), json!(text)),
                (CONTEXT_FIELD.to_owned(), json!(context)),
                ("flagged".to_owned(), json!(!reasons.is_empty())),
                ("flag_reasons".to_owned(), json!(reasons)),
            ]);
            let payload = Value::Object(payload).to_string().into_bytes();
            if payload.len() > max_payload {
                return Err(Error::TooLarge(format!(
                    "document {:?} chunk {n}: its payload (text and metadata) is {} bytes; the limit is {max_payload} (server.max_payload_bytes)",
                    doc.id,
                    payload.len()
                )));
            }
            bytes += vector.len() * 4 + payload.len() + 64;
            batch.push(PointWrite {
                id: PointId::Str(format!("{}#{n}", doc.id)),
                vector,
                payload: Some(payload),
            });
            out.chunks += 1;
            if bytes >= INGEST_WRITE_BYTES {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
        }
        ends.push((doc.id, texts.len() as i64));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    Ok((batches, ends, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_a_bounded_object() {
        assert!(metadata(None, "d", 10).expect("none").is_empty());
        assert_eq!(
            metadata(Some(r#"{"a":1}"#), "d", 100).expect("object")["a"],
            json!(1)
        );
        let e = metadata(Some("[1]"), "documents[2]", 100).expect_err("an array");
        assert!(e.to_string().contains("documents[2].metadata_json"), "{e}");
        assert!(matches!(
            metadata(Some(&"x".repeat(200)), "d", 100),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn documents_are_checked_before_anything_is_written() {
        let doc = |id: &str, text: &str| Document {
            id: id.into(),
            text: text.into(),
            ..Default::default()
        };
        let e = parse_documents(vec![doc("a", "t"), doc("", "t")], 1 << 20)
            .err()
            .expect("empty id");
        assert!(e.to_string().starts_with("documents[1].id"), "{e}");
        let ok = parse_documents(vec![doc("a", "one. two.")], 1 << 20).expect("parsed");
        assert_eq!(ok.len(), 1);
        assert!(!ok[0].texts.is_empty());
    }

    /// The pipeline over one engine (`Direct`): documents in, a cited extractive answer out,
    /// re-ingesting replaces a document's chunks, and deleting removes them.
    #[tokio::test]
    async fn direct_host_ingests_answers_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e =
            Arc::new(quiver_storage::Engine::open(dir.path(), Default::default()).expect("open"));
        let cfg = crate::Settings::default();
        let providers = crate::Providers::new(&cfg).expect("providers");
        let rag =
            Rag::new(cfg, Arc::new(crate::Direct::new(Arc::clone(&e))), providers).expect("rag");
        let ctx = CallContext::new("t", "docs");
        let doc = |id: &str, text: &str| Document {
            id: id.into(),
            text: text.into(),
            source: format!("{id}.txt"),
            metadata_json: None,
        };
        let docs = vec![
            doc(
                "paris",
                "Paris is the capital of France. It lies on the Seine.",
            ),
            doc(
                "rome",
                "Rome is the capital of Italy. It has the Colosseum.",
            ),
        ];
        let got = rag
            .ingest("docs", docs, Some(&RagConfig::default()), &ctx)
            .await
            .expect("ingest");
        assert!(got.chunks >= 2, "{got:?}");
        assert_eq!(rag.config("docs").expect("config").embedder, "builtin");
        let q = crate::Question {
            collection: "docs".into(),
            question: "What is the capital of Italy?".into(),
            ..Default::default()
        };
        let a = rag.ask(q.clone(), "t", None).await.expect("ask");
        assert!(a.answer.contains("Rome"), "{a:?}");
        assert_eq!(a.citations[0].document_id, "rome");
        assert_eq!(a.citations[0].source, "rome.txt");
        rag.ingest("docs", vec![doc("rome", "Gone.")], None, &ctx)
            .await
            .expect("re-ingest");
        let c = e.collection("docs").expect("collection");
        let n = |id: &str| c.count_filtered(&doc_filter(id, None)).expect("count");
        assert_eq!(n("rome"), 1, "the old chunks are replaced");
        assert_eq!(
            rag.delete_document("docs", "rome").await.expect("delete"),
            1
        );
        assert_eq!(n("rome"), 0);
        assert!(n("paris") >= 1);
        let missing = rag.ingest("nope", Vec::new(), None, &ctx).await;
        assert!(matches!(missing, Err(Error::Storage(_))), "{missing:?}");
    }
}
