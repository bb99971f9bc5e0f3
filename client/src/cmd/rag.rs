//! RAG commands: `ingest-docs`, `delete-doc`, `ask`, `eval` and `rag config` (the document
//! and question helpers are in [`crate::docs`]).
use std::path::PathBuf;

use crate::{Client, ClientError, pb};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::common::text_filter;
use crate::docs;

/// How `ask` answers.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AskModeArg {
    /// The ranked chunks, no answer text.
    RetrieveOnly,
    /// The most relevant retrieved sentences, quoted with citations.
    Extractive,
    /// An LLM answers from the retrieved chunks, citing them.
    Generate,
    /// As generate, but the answer is queued for human review.
    Review,
}

impl AskModeArg {
    /// The proto value.
    fn proto(self) -> i32 {
        (match self {
            AskModeArg::RetrieveOnly => pb::AskMode::RetrieveOnly,
            AskModeArg::Extractive => pb::AskMode::Extractive,
            AskModeArg::Generate => pb::AskMode::Generate,
            AskModeArg::Review => pb::AskMode::Review,
        }) as i32
    }
}

/// A collection's data policy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Hosted providers allowed (PII redacted before sending).
    AllowHosted,
    /// Nothing leaves the server: hosted providers refused.
    LocalOnly,
}

impl PolicyArg {
    /// The proto value.
    pub fn proto(self) -> i32 {
        match self {
            PolicyArg::AllowHosted => pb::RagPolicy::AllowHosted as i32,
            PolicyArg::LocalOnly => pb::RagPolicy::LocalOnly as i32,
        }
    }
}

/// `quiver rag ...`
#[derive(Debug, Subcommand)]
pub enum RagCmd {
    /// Show (or change) a collection's RAG settings.
    Config {
        /// Collection.
        collection: String,
        /// Set the data policy.
        #[arg(long, value_enum)]
        policy: Option<PolicyArg>,
        /// Set the default generator for generate/review ("" = the server default).
        #[arg(long)]
        generator: Option<String>,
        /// Set how questions retrieve: dense, text (BM25) or hybrid (both, RRF).
        #[arg(long, value_parser = ["dense", "text", "hybrid"])]
        retrieval: Option<String>,
        /// Set the reranker of fused candidates: embedder, a [rag.rerankers] name, or none.
        #[arg(long)]
        rerank: Option<String>,
    },
}

/// `quiver ingest-docs`.
#[derive(Debug, clap::Args)]
pub struct IngestDocsArgs {
    /// Input files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Create the collection for documents if missing.
    #[arg(long)]
    create: bool,
    /// JSONL: the field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// JSONL: the field holding the document id (default: file:line).
    #[arg(long, default_value = "id")]
    id_field: String,
    /// With --create: the embedder (builtin, local, or a configured name).
    #[arg(long)]
    embedder: Option<String>,
    /// With --create: the data policy.
    #[arg(long, value_enum)]
    policy: Option<PolicyArg>,
    /// With --create: the default generator for generate/review.
    #[arg(long)]
    generator: Option<String>,
    /// With --create: how questions retrieve, dense, text (BM25) or hybrid (default: hybrid).
    #[arg(long, value_parser = ["dense", "text", "hybrid"])]
    retrieval: Option<String>,
    /// With --create: re-score the fused candidates with "embedder" or a [rag.rerankers] name (default: none).
    #[arg(long)]
    rerank: Option<String>,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

/// `quiver delete-doc`.
#[derive(Debug, clap::Args)]
pub struct DeleteDocArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Document id.
    id: String,
}

/// `quiver ask`.
#[derive(Debug, clap::Args)]
pub struct AskArgs {
    /// The question.
    question: String,
    /// Collection.
    #[arg(long)]
    collection: String,
    /// retrieve-only: the ranked chunks; extractive: quoted sentences with citations (no
    /// LLM); generate: an LLM's answer with citations; review: generate, queued for review.
    #[arg(long, value_enum, default_value = "extractive")]
    mode: AskModeArg,
    /// Generator for generate/review (local, extractive or a configured provider).
    #[arg(long, default_value = "")]
    provider: String,
    /// Prompt context budget in tokens (0 = server default).
    #[arg(long, default_value_t = 0)]
    max_context_tokens: u32,
    /// Answer length limit in tokens (0 = server default).
    #[arg(long, default_value_t = 0)]
    max_answer_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Retrieval for this question: dense, text (BM25) or hybrid (default: the
    /// collection's).
    #[arg(long, value_parser = ["dense", "text", "hybrid"])]
    retrieval: Option<String>,
    /// Re-score the fused candidates with "embedder", a [rag.rerankers] name, or "none" (default: the collection's).
    #[arg(long)]
    rerank: Option<String>,
    /// Chunks retrieved.
    #[arg(long, default_value_t = 5)]
    k: u32,
    /// Only chunks passing this filter (e.g. 'flagged = false').
    #[arg(long)]
    filter: Option<String>,
    /// Print {"answer", "citations", "flags"} as JSON.
    #[arg(long)]
    json: bool,
    /// Stream the answer (AskStream): sources first, then the answer as it comes, then the
    /// citations. With --json, one line per event.
    #[arg(long)]
    stream: bool,
}

/// `quiver eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// The questions file.
    #[arg(long)]
    questions: PathBuf,
    /// Chunks retrieved per question.
    #[arg(long, default_value_t = 5)]
    k: u32,
    /// Also print one JSON line per question.
    #[arg(long)]
    per_question: bool,
    /// Answer mode evaluated (extractive or generate).
    #[arg(long, value_enum, default_value = "extractive")]
    mode: AskModeArg,
    /// Generator for --mode generate.
    #[arg(long, default_value = "")]
    provider: String,
    /// Answer length limit for --mode generate (0 = server default).
    #[arg(long, default_value_t = 0)]
    max_answer_tokens: u32,
    /// Retrieval of the evaluated answers: dense, text or hybrid (default: the collection's).
    /// Recall and MRR are reported for every mode either way.
    #[arg(long, value_parser = ["dense", "text", "hybrid"])]
    retrieval: Option<String>,
    /// Reranker of the evaluated answers: "embedder", a [rag.rerankers] name or "none" (default: the collection's); recall and MRR are also reported with and without it.
    #[arg(long)]
    rerank: Option<String>,
}

/// `quiver ingest-docs`: chunk, embed and store documents; prints the counts.
pub async fn ingest_docs(client: &mut Client, a: IngestDocsArgs) -> Result<()> {
    let config = pb::RagConfig {
        embedder: a.embedder.unwrap_or_default(),
        policy: a.policy.map_or(0, PolicyArg::proto),
        generator: a.generator.unwrap_or_default(),
        retrieval: a.retrieval.unwrap_or_default(),
        rerank: a.rerank.unwrap_or_default(),
    };
    let r = docs::ingest(
        client,
        &a.collection,
        &a.files,
        a.create.then_some(config),
        &a.text_field,
        &a.id_field,
    )
    .await?;
    if a.json {
        println!(
            "{}",
            json!({"documents": r.documents, "chunks": r.chunks, "flagged_chunks": r.flagged_chunks})
        );
    } else {
        eprintln!(
            "ingested {} documents as {} chunks ({} flagged as possible instructions to a model)",
            r.documents, r.chunks, r.flagged_chunks
        );
    }
    Ok(())
}

/// `quiver delete-doc`: removes a document's chunks.
pub async fn delete_doc(client: &mut Client, a: DeleteDocArgs) -> Result<()> {
    let r = client
        .rag
        .delete_document(pb::DeleteDocumentRequest {
            collection: a.collection,
            document_id: a.id,
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    eprintln!("deleted {} chunks", r.chunks);
    Ok(())
}

/// `quiver eval`: prints the totals (and, with `--per-question`, a line per question first).
pub async fn eval(client: &mut Client, a: EvalArgs) -> Result<()> {
    let opts = docs::EvalOptions {
        k: a.k,
        per_question: a.per_question,
        mode: a.mode.proto(),
        provider: a.provider,
        max_answer_tokens: a.max_answer_tokens,
        retrieval: a.retrieval.unwrap_or_default(),
        rerank: a.rerank.unwrap_or_default(),
    };
    let totals = docs::eval(client, &a.collection, &a.questions, &opts).await?;
    println!("{totals}");
    Ok(())
}

/// `quiver ask`: the answer and its citations (streamed with `--stream`).
pub async fn ask(client: &mut Client, a: AskArgs, consistency: i32) -> Result<()> {
    let req = pb::AskRequest {
        collection: a.collection,
        question: a.question,
        filter: text_filter(a.filter),
        k: a.k,
        mode: a.mode.proto(),
        provider: a.provider,
        max_context_tokens: a.max_context_tokens,
        max_answer_tokens: a.max_answer_tokens,
        temperature: a.temperature,
        consistency,
        retrieval: a.retrieval.unwrap_or_default(),
        rerank: a.rerank.unwrap_or_default(),
    };
    if a.stream {
        return docs::ask_stream(client, req, a.json).await;
    }
    let r = client
        .rag
        .ask(req)
        .await
        .map_err(ClientError::from)?
        .into_inner();
    if a.json {
        println!("{}", docs::ask_json(&r));
    } else {
        print_answer(&r);
    }
    Ok(())
}

/// An answer as text: the answer and citations on stdout, review, removed citations, usage
/// and flags on stderr.
fn print_answer(r: &pb::AskResponse) {
    if !r.answer.is_empty() {
        println!("{}\n", r.answer);
    }
    for c in &r.citations {
        let rank = |r: u32| {
            if r == 0 {
                "-".to_owned()
            } else {
                r.to_string()
            }
        };
        let ranks = if c.dense_rank > 0 || c.text_rank > 0 {
            format!(
                " (dense {}, text {})",
                rank(c.dense_rank),
                rank(c.text_rank)
            )
        } else {
            String::new()
        };
        println!(
            "[{}] {:.3}{ranks} {}{}\n    {}",
            c.chunk_id,
            c.score,
            c.source,
            if c.flagged {
                " (flagged: looks like instructions to a model)"
            } else {
                ""
            },
            c.text
        );
    }
    if !r.review_id.is_empty() {
        eprintln!("queued for review as {}", r.review_id);
    }
    if !r.invalid_citations.is_empty() {
        eprintln!(
            "removed citations of chunks that were not retrieved: {}",
            r.invalid_citations.join(", ")
        );
    }
    if let Some(u) = &r.usage {
        eprintln!(
            "{} {}: {} prompt ({} cached) + {} completion tokens{}, ${:.6}, model {:.0} ms",
            u.provider,
            u.model,
            u.prompt_tokens,
            u.cached_prompt_tokens,
            u.completion_tokens,
            if u.estimated { " (estimated)" } else { "" },
            u.cost_usd,
            u.model_us as f64 / 1000.0
        );
    }
    if !r.flags.is_empty() {
        eprintln!("flags: {}", r.flags.join(", "));
    }
}

/// Runs a `quiver rag` command.
pub async fn run(client: &mut Client, cmd: RagCmd) -> Result<()> {
    match cmd {
        RagCmd::Config {
            collection,
            policy,
            generator,
            retrieval,
            rerank,
        } => config(client, collection, policy, generator, retrieval, rerank).await,
    }
}

/// `quiver rag config`: shows the settings, after changing them when asked.
async fn config(
    client: &mut Client,
    collection: String,
    policy: Option<PolicyArg>,
    generator: Option<String>,
    retrieval: Option<String>,
    rerank: Option<String>,
) -> Result<()> {
    let cfg = if policy.is_none() && generator.is_none() && retrieval.is_none() && rerank.is_none()
    {
        client
            .rag
            .get_rag_config(pb::GetRagConfigRequest { collection })
            .await
    } else {
        client
            .rag
            .set_rag_config(pb::SetRagConfigRequest {
                collection,
                policy: policy.map(PolicyArg::proto),
                generator,
                retrieval,
                rerank,
            })
            .await
    }
    .map_err(ClientError::from)?
    .into_inner();
    let policy = match pb::RagPolicy::try_from(cfg.policy) {
        Ok(pb::RagPolicy::LocalOnly) => "local_only",
        Ok(pb::RagPolicy::AllowHosted | pb::RagPolicy::Unspecified) | Err(_) => "allow_hosted",
    };
    println!(
        "{}",
        json!({"embedder": cfg.embedder, "policy": policy, "generator": cfg.generator, "retrieval": cfg.retrieval, "rerank": cfg.rerank})
    );
    Ok(())
}
