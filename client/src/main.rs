//! `quiver`: the command-line client. Talks only gRPC. Errors are one line naming the
//! file, line and field; the exit code is non-zero on any failure.
mod docs;
mod ingest;
mod ops;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use quiver_client::{Client, ClientError, code_name, id_from_json, id_to_json, pb};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

/// Quiver command-line client.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    /// Server address.
    #[arg(long, global = true, env = "QUIVER_ADDR", default_value = quiver_client::DEFAULT_ADDR)]
    addr: String,
    /// Tenant sent with every call (x-quiver-tenant): audit records and token budgets are
    /// per tenant.
    #[arg(long, global = true, env = "QUIVER_TENANT")]
    tenant: Option<String>,
    /// API key sent with every call (servers started with --auth require one).
    #[arg(long, global = true, env = "QUIVER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificate (PEM) that an https:// server's certificate must chain to.
    #[arg(long, global = true, env = "QUIVER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require mutual TLS (with --tls-key).
    #[arg(long, global = true, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM), with --tls-cert.
    #[arg(long, global = true, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Read consistency of get, count, search and ask on a replicated cluster: `local` (the
    /// answering replica's state) or `leader` (linearizable: everything committed before the
    /// read).
    #[arg(long, global = true, value_enum, default_value = "local")]
    consistency: ConsistencyArg,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    /// Served from the replica's own state.
    Local,
    /// Linearizable (read-index through the leader).
    Leader,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MetricArg {
    Cosine,
    L2,
    Dot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IndexArg {
    /// Exact scan only.
    Flat,
    /// IVF-PQ per sealed segment, exact re-rank.
    IvfPq,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AskModeArg {
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
    fn proto(self) -> i32 {
        (match self {
            AskModeArg::RetrieveOnly => pb::AskMode::RetrieveOnly,
            AskModeArg::Extractive => pb::AskMode::Extractive,
            AskModeArg::Generate => pb::AskMode::Generate,
            AskModeArg::Review => pb::AskMode::Review,
        }) as i32
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PqBitsArg {
    /// 4-bit codes scanned with SIMD shuffles (fast-scan).
    #[value(name = "4")]
    Four,
    /// 8-bit codes (256 centroids per sub-space).
    #[value(name = "8")]
    Eight,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Manage collections.
    #[command(subcommand)]
    Collection(CollectionCmd),
    /// Replication: status and membership.
    #[command(subcommand)]
    Cluster(ops::ClusterCmd),
    /// API keys (admin): create, list, revoke.
    #[command(subcommand)]
    Key(ops::KeyCmd),
    /// Snapshots of the whole database (admin): create, list, download, restore, delete.
    #[command(subcommand)]
    Snapshot(ops::SnapshotCmd),
    /// Upsert points from a JSONL file: {"id": 7 | "key", "vector": [..], "payload": {..}} per line.
    Upsert {
        /// Target collection.
        #[arg(long)]
        collection: String,
        /// JSONL file (`-` for stdin).
        file: PathBuf,
        /// Points per streamed batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch points by id (integers are numeric ids; quote a number as JSON, '"7"', for a string id).
    Get {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Include vectors.
        #[arg(long)]
        with_vectors: bool,
    },
    /// Delete points by id.
    Delete {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Ids.
        #[arg(required_unless_present = "filter", conflicts_with = "filter")]
        ids: Vec<String>,
        /// Delete every point passing this filter instead (see `search --filter`).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Count live points.
    Count {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Count only points passing this filter.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Bulk-load files (JSONL, CSV, Parquet, .npy, .fvecs/.bvecs/.ivecs; .gz/.zst read
    /// transparently), streaming, with a progress bar, bad-row handling and resume.
    Ingest {
        /// Input files, loaded in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Id field or column (default "id"; .npy/.fvecs ids are row numbers).
        #[arg(long)]
        id_field: Option<String>,
        /// Vector field or column (default "vector", then "embedding"; CSV also v0..vN).
        #[arg(long)]
        vector_field: Option<String>,
        /// Payload fields, comma-separated (default: every other field).
        #[arg(long, value_delimiter = ',')]
        payload_fields: Option<Vec<String>>,
        /// For .npy: a JSONL file with one object per row ({"id": .., other keys → payload}).
        #[arg(long)]
        side: Option<PathBuf>,
        /// Bad rows: stop at the first (abort), or write them to the reject file (skip).
        #[arg(long, value_enum, default_value = "abort")]
        on_error: ingest::OnError,
        /// Where skipped rows go, one JSON line each with file, line/row and reason.
        #[arg(long, default_value = "rejects.jsonl")]
        reject_file: PathBuf,
        /// Approximate bytes per batch sent.
        #[arg(long, default_value_t = 1 << 20)]
        batch_bytes: usize,
        /// Batches in flight ahead of the server's acknowledgements.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// Create the collection if missing (dimension from the first row).
        #[arg(long)]
        create: bool,
        /// Metric for --create.
        #[arg(long, value_enum, default_value = "cosine")]
        metric: MetricArg,
        /// Read and validate only; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Continue an interrupted ingest from its checkpoint.
        #[arg(long)]
        resume: bool,
        /// Checkpoint file (default .quiver-ingest-COLLECTION.checkpoint).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The server's payload limit, checked client-side.
        #[arg(long, default_value_t = 1 << 20)]
        max_payload_bytes: usize,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Print a JSON summary (and no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Chunk, embed and store documents (.txt, .md, .html: one per file; .jsonl: one per line).
    IngestDocs {
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
        policy: Option<ops::PolicyArg>,
        /// With --create: the default generator for generate/review.
        #[arg(long)]
        generator: Option<String>,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a document's chunks.
    DeleteDoc {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Document id.
        id: String,
    },
    /// Ask a question of a document collection.
    Ask {
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
    },
    /// Evaluate a document collection on questions (JSONL: question, expected_documents,
    /// expected_answer): retrieval recall@k, MRR, answer match, citation validity, latency.
    Eval {
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
    },
    /// A document collection's RAG settings.
    #[command(subcommand)]
    Rag(ops::RagCmd),
    /// The audit log of LLM and embedding calls.
    #[command(subcommand)]
    Audit(ops::AuditCmd),
    /// The human-review queue of answers asked with --mode review.
    #[command(subcommand)]
    Review(ops::ReviewCmd),
    /// Write a collection (or the points passing --filter) to JSONL or Parquet.
    Export {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Output file (.jsonl, .parquet, or - for JSONL on stdout).
        #[arg(long, short)]
        output: PathBuf,
        /// Only points passing this filter.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Update payloads of points: merge keys in (or replace with --overwrite), remove keys.
    SetPayload {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// A JSON object of keys to set.
        #[arg(long)]
        set: Option<String>,
        /// Keys to remove (repeatable).
        #[arg(long)]
        unset: Vec<String>,
        /// Replace the whole payload with --set.
        #[arg(long)]
        overwrite: bool,
    },
    /// Nearest-neighbour search.
    Search {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Query vector as a JSON array.
        #[arg(long, conflicts_with_all = ["queries", "like"])]
        vector: Option<String>,
        /// JSONL file of queries, one {"vector": [..]} per line; one result line per query, in order.
        #[arg(long, conflicts_with = "like")]
        queries: Option<PathBuf>,
        /// Use the stored vector of this point id as the query.
        #[arg(long)]
        like: Option<String>,
        /// Number of results.
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// Force the exact scan (ignore indexes).
        #[arg(long)]
        exact: bool,
        /// IVF lists probed per segment (index default: nlist/16, at least 8).
        #[arg(long)]
        nprobe: Option<u32>,
        /// Re-rank k × F index candidates exactly (default 4).
        #[arg(long = "refine")]
        refine: Option<u32>,
        /// Probe as many IVF lists as the index's calibration needs for this recall@10, in
        /// (0, 1].
        #[arg(long, conflicts_with = "nprobe")]
        target_recall: Option<f32>,
        /// Only points passing this filter, e.g.
        /// 'tenant = "acme" and year >= 2024 and tags any ["a","b"] and not kind = "draft"'.
        #[arg(long)]
        filter: Option<String>,
        /// Include stored vectors.
        #[arg(long)]
        with_vectors: bool,
        /// One JSON line per query: {"hits": [{"id", "score", "payload"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Print every point as JSONL (paged with Scroll).
    Scroll {
        /// Collection.
        #[arg(long)]
        collection: String,
        /// Only points passing this filter.
        #[arg(long)]
        filter: Option<String>,
        /// Include vectors.
        #[arg(long)]
        with_vectors: bool,
        /// Points per page.
        #[arg(long, default_value_t = 1000)]
        page: u32,
    },
}

#[derive(Debug, Subcommand)]
enum CollectionCmd {
    /// Create a collection.
    Create {
        /// Name: letters, digits, '_' and '-'.
        name: String,
        /// Vector dimension.
        #[arg(long)]
        dim: u32,
        /// Distance metric.
        #[arg(long, value_enum, default_value = "cosine")]
        metric: MetricArg,
        /// Rows kept in memory before a segment is sealed to disk (server default if unset).
        #[arg(long)]
        segment_max_rows: Option<u32>,
        /// Vector index for sealed segments.
        #[arg(long, value_enum, default_value = "flat")]
        index: IndexArg,
        /// IVF lists per segment (default ≈ 4·√rows).
        #[arg(long)]
        nlist: Option<u32>,
        /// PQ sub-spaces; must divide the dimension (default from the dimension).
        #[arg(long)]
        pq_m: Option<u32>,
        /// Bits per PQ code (server default: 4).
        #[arg(long, value_enum)]
        pq_bits: Option<PqBitsArg>,
        /// Declare (index) a payload field, KEY:TYPE with TYPE keyword, integer, float, bool,
        /// datetime or keyword[] (repeatable).
        #[arg(long = "field", value_parser = parse_field)]
        fields: Vec<pb::FieldSchema>,
    },
    /// Declare (index) more payload fields; existing points are indexed in the background.
    Declare {
        /// Name.
        name: String,
        /// KEY:TYPE (repeatable), as for `create`.
        #[arg(long = "field", value_parser = parse_field, required = true)]
        fields: Vec<pb::FieldSchema>,
    },
    /// List collections.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a collection's configuration and statistics.
    Info {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a collection and all its points.
    Drop {
        /// Name.
        name: String,
    },
    /// Seal the in-memory segment to disk.
    Flush {
        /// Name.
        name: String,
    },
    /// Compact now: rewrite sealed segments holding many deleted or overwritten rows (or
    /// small ones) on the node you call, within the server's background budget.
    Compact {
        /// Name.
        name: String,
        /// Rewrite every segment with a dead row, not only those past the threshold.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_field(s: &str) -> Result<pb::FieldSchema, String> {
    let (key, ty) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected KEY:TYPE, e.g. tenant:keyword"))?;
    let t = match ty {
        "keyword" => pb::FieldType::Keyword,
        "integer" | "int" => pb::FieldType::Integer,
        "float" => pb::FieldType::Float,
        "bool" => pb::FieldType::Bool,
        "datetime" => pb::FieldType::Datetime,
        "keyword[]" | "tags" => pb::FieldType::KeywordArray,
        other => {
            return Err(format!(
                "{other:?}: type must be keyword, integer, float, bool, datetime or keyword[]"
            ));
        }
    };
    Ok(pb::FieldSchema {
        key: key.to_owned(),
        r#type: t as i32,
    })
}

/// The `--filter` text as a proto filter (parsed by the server, which reports the column of
/// a mistake).
fn text_filter(f: Option<String>) -> Option<pb::Filter> {
    f.map(|text| pb::Filter {
        text,
        ..Default::default()
    })
}

fn parse_id(s: &str) -> pb::PointId {
    match serde_json::from_str::<Value>(s)
        .ok()
        .as_ref()
        .and_then(id_from_json)
    {
        Some(id) => id,
        None => quiver_client::str_id(s),
    }
}

fn metric_name(m: i32) -> &'static str {
    match pb::Metric::try_from(m) {
        Ok(pb::Metric::Cosine) => "cosine",
        Ok(pb::Metric::L2) => "l2",
        Ok(pb::Metric::Dot) => "dot",
        _ => "unspecified",
    }
}

fn info_json(i: &pb::CollectionInfo) -> Value {
    let c = i.config.clone().unwrap_or_default();
    let s = i.stats.clone().unwrap_or_default();
    let ix = c.index.unwrap_or_default();
    let kind = match pb::IndexKind::try_from(ix.kind) {
        Ok(pb::IndexKind::IvfPq) => "ivf_pq",
        _ => "flat",
    };
    let auto = |v: u32| if v == 0 { json!("auto") } else { json!(v) };
    json!({
        "name": c.name, "dim": c.dim, "metric": metric_name(c.metric), "segment_max_rows": c.segment_max_rows,
        "schema": c.schema.iter().map(|f| (f.key.clone(), json!(pb::FieldType::try_from(f.r#type).map_or("unknown", |t| t.as_str_name())))).collect::<serde_json::Map<_, _>>(),
        "index_kind": kind, "index_nlist": auto(ix.nlist), "index_pq_m": auto(ix.pq_m), "index_pq_bits": auto(ix.pq_bits),
        "points": s.points, "sealed_segments": s.sealed_segments, "mutable_points": s.mutable_points, "dead_points": s.dead_points,
        "bytes_on_disk": s.bytes_on_disk, "wal_bytes": s.wal_bytes, "index_bytes": s.index_bytes, "index": s.index_state,
        "last_lsn": s.last_lsn, "checkpoint_lsn": s.checkpoint_lsn,
    })
}

fn payload_value(p: &Option<String>) -> Value {
    p.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

/// One point as a JSONL line: `{"id", "payload"[, "vector"]}`.
fn point_json(p: &pb::RetrievedPoint, with_vector: bool) -> Value {
    let mut o = json!({"id": id_to_json(&p.id), "payload": payload_value(&p.payload_json)});
    if with_vector {
        o["vector"] = json!(p.vector);
    }
    o
}

fn parse_vector(v: &Value, what: &str) -> Result<Vec<f32>> {
    let arr = v
        .as_array()
        .ok_or_else(|| anyhow!("{what}: expected a JSON array of numbers"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| anyhow!("{what}[{i}]: {x} is not a number"))
        })
        .collect()
}

fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// Parses one JSONL point; errors name the field.
fn parse_point(line: &str) -> Result<pb::Point> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| anyhow!("invalid JSON at column {}: {e}", e.column()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("expected a JSON object"))?;
    let id = obj
        .get("id")
        .ok_or_else(|| anyhow!("field 'id' is missing"))?;
    let id = id_from_json(id).ok_or_else(|| {
        anyhow!("field 'id': {id} is not a non-negative integer or a non-empty string")
    })?;
    let vector = parse_vector(
        obj.get("vector")
            .ok_or_else(|| anyhow!("field 'vector' is missing"))?,
        "field 'vector'",
    )?;
    let payload_json = match obj.get("payload") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p.to_string()),
        Some(other) => bail!("field 'payload': expected a JSON object, got {other}"),
    };
    Ok(pb::Point {
        id: Some(id),
        vector,
        payload_json,
    })
}

/// Finds `points[N]` in a server message, to name the file line of a rejected row.
fn point_index(msg: &str) -> Option<usize> {
    let at = msg.find("points[")? + "points[".len();
    msg[at..].split(']').next()?.parse().ok()
}

async fn upsert(
    client: &mut Client,
    collection: &str,
    file: &Path,
    batch_size: usize,
    as_json: bool,
) -> Result<()> {
    let name = file.display().to_string();
    let started = std::time::Instant::now();
    // Two batches in flight: the reader runs ahead by at most that much, so memory stays bounded.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UpsertRequest>(2);
    let lines: Arc<Mutex<HashMap<u64, Vec<usize>>>> = Arc::default();
    let mut reader = open_lines(file)?;
    let producer = tokio::task::spawn_blocking({
        let (name, collection, lines) = (name.clone(), collection.to_owned(), Arc::clone(&lines));
        move || -> Result<()> {
            let mut batch = Vec::with_capacity(batch_size);
            let mut batch_lines = Vec::with_capacity(batch_size);
            let mut batch_id = 0u64;
            let mut line = String::new();
            let mut lineno = 0usize;
            loop {
                line.clear();
                let eof = reader
                    .read_line(&mut line)
                    .with_context(|| format!("{name}:{}: read failed", lineno + 1))?
                    == 0;
                if !eof {
                    lineno += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    batch.push(
                        parse_point(line.trim()).map_err(|e| anyhow!("{name}:{lineno}: {e}"))?,
                    );
                    batch_lines.push(lineno);
                }
                if !batch.is_empty() && (eof || batch.len() >= batch_size) {
                    batch_id += 1;
                    lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(batch_id, std::mem::take(&mut batch_lines));
                    let req = pb::UpsertRequest {
                        collection: collection.clone(),
                        points: std::mem::take(&mut batch),
                        batch_id,
                    };
                    if tx.blocking_send(req).is_err() {
                        return Ok(()); // the stream failed; the error comes with the acks
                    }
                }
                if eof {
                    return Ok(());
                }
            }
        }
    });
    let mut acks = client
        .points
        .upsert_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let mut acked = 0u64;
    while let Some(a) = acks.next().await {
        match a {
            Ok(a) => {
                acked = a.total_upserted;
                lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&a.batch_id);
            }
            Err(s) => {
                return Err(batch_error(
                    &name,
                    &lines.lock().unwrap_or_else(|p| p.into_inner()),
                    s,
                    acked,
                ));
            }
        }
    }
    producer
        .await?
        .map_err(|e| anyhow!("{e} (stopped; {acked} points were written before it)"))?;
    let secs = started.elapsed().as_secs_f64();
    if as_json {
        println!(
            "{}",
            json!({"file": name, "upserted": acked, "seconds": secs})
        );
    } else {
        eprintln!(
            "upserted {acked} points from {name} in {secs:.2}s ({:.0} points/s)",
            acked as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

fn batch_error(
    name: &str,
    lines: &HashMap<u64, Vec<usize>>,
    s: tonic::Status,
    acked: u64,
) -> anyhow::Error {
    let msg = s.message();
    let batch = msg
        .strip_prefix("batch ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|b| b.parse::<u64>().ok());
    let line = batch
        .and_then(|b| lines.get(&b))
        .and_then(|ls| point_index(msg).and_then(|i| ls.get(i)));
    match line {
        Some(l) => anyhow!(
            "{name}:{l}: {}: {msg} ({acked} points acknowledged before it are written)",
            code_name(s.code())
        ),
        None => anyhow!(
            "{name}: {}: {msg} ({acked} points acknowledged)",
            code_name(s.code())
        ),
    }
}

fn print_hits(hits: &[pb::ScoredPoint], as_json: bool, with_vectors: bool) {
    if as_json {
        let hits: Vec<Value> = hits
            .iter()
            .map(|h| {
                let mut o = json!({"id": id_to_json(&h.id), "score": h.score, "payload": payload_value(&h.payload_json)});
                if with_vectors {
                    o["vector"] = json!(h.vector);
                }
                o
            })
            .collect();
        println!("{}", json!({ "hits": hits }));
    } else {
        println!("{:>4}  {:<24} {:>10}  payload", "rank", "id", "score");
        for (i, h) in hits.iter().enumerate() {
            let id = id_to_json(&h.id);
            let id = id
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| id.to_string());
            println!(
                "{:>4}  {:<24} {:>10.6}  {}",
                i + 1,
                id,
                h.score,
                h.payload_json.as_deref().unwrap_or("")
            );
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let bearer = cli.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = &cli.tenant {
        pairs.push(("x-quiver-tenant", t));
    }
    if let Some(b) = &bearer {
        pairs.push(("authorization", b));
    }
    let headers =
        quiver_client::Headers::new(&pairs).map_err(|e| anyhow!("--api-key/--tenant: {e}"))?;
    let mut client = if cli.addr.starts_with("https://") || cli.tls_ca.is_some() {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("{what} {}", p.display()))
        };
        let ca = match &cli.tls_ca {
            Some(p) => read(p, "--tls-ca")?,
            None => bail!("an https:// address needs --tls-ca (the CA certificate, PEM)"),
        };
        let identity = match (&cli.tls_cert, &cli.tls_key) {
            (Some(c), Some(k)) => Some((read(c, "--tls-cert")?, read(k, "--tls-key")?)),
            _ => None,
        };
        Client::connect_tls(
            &cli.addr,
            headers,
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .await?
    } else {
        Client::connect_with(&cli.addr, headers).await?
    };
    let consistency = match cli.consistency {
        ConsistencyArg::Local => pb::Consistency::Local,
        ConsistencyArg::Leader => pb::Consistency::Leader,
    } as i32;
    match cli.cmd {
        Cmd::Collection(c) => match c {
            CollectionCmd::Create {
                name,
                dim,
                metric,
                segment_max_rows,
                index,
                nlist,
                pq_m,
                pq_bits,
                fields,
            } => {
                let metric = match metric {
                    MetricArg::Cosine => pb::Metric::Cosine,
                    MetricArg::L2 => pb::Metric::L2,
                    MetricArg::Dot => pb::Metric::Dot,
                };
                let req = pb::CreateCollectionRequest {
                    name: name.clone(),
                    dim,
                    metric: metric as i32,
                    index: Some(pb::IndexParams {
                        kind: match index {
                            IndexArg::Flat => pb::IndexKind::Flat,
                            IndexArg::IvfPq => pb::IndexKind::IvfPq,
                        } as i32,
                        nlist: nlist.unwrap_or(0),
                        pq_m: pq_m.unwrap_or(0),
                        pq_bits: match pq_bits {
                            None => 0,
                            Some(PqBitsArg::Four) => 4,
                            Some(PqBitsArg::Eight) => 8,
                        },
                    }),
                    segment_max_rows,
                    schema: fields,
                };
                client
                    .collections
                    .create(req)
                    .await
                    .map_err(ClientError::from)?;
                eprintln!(
                    "created collection {name} (dim {dim}, {})",
                    metric_name(metric as i32)
                );
            }
            CollectionCmd::List { json } => {
                let list = client
                    .collections
                    .list(pb::ListCollectionsRequest {})
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                for i in &list.collections {
                    let v = info_json(i);
                    if json {
                        println!("{v}");
                    } else {
                        println!(
                            "{}\tdim={}\tmetric={}\tpoints={}",
                            v["name"].as_str().unwrap_or(""),
                            v["dim"],
                            v["metric"].as_str().unwrap_or(""),
                            v["points"]
                        );
                    }
                }
            }
            CollectionCmd::Info { name, json } => {
                let i = client
                    .collections
                    .get(pb::GetCollectionRequest { name })
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                let v = info_json(&i);
                if json {
                    println!("{v}");
                } else if let Some(o) = v.as_object() {
                    for (k, val) in o {
                        println!(
                            "{k:<18} {}",
                            val.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| val.to_string())
                        );
                    }
                }
            }
            CollectionCmd::Drop { name } => {
                client
                    .collections
                    .delete(pb::DeleteCollectionRequest { name: name.clone() })
                    .await
                    .map_err(ClientError::from)?;
                eprintln!("dropped collection {name}");
            }
            CollectionCmd::Declare { name, fields } => {
                client
                    .collections
                    .declare_fields(pb::DeclareFieldsRequest {
                        name: name.clone(),
                        fields,
                    })
                    .await
                    .map_err(ClientError::from)?;
                eprintln!(
                    "declared fields on {name}; existing points are indexed in the background"
                );
            }
            CollectionCmd::Flush { name } => {
                let r = client
                    .collections
                    .flush(pb::FlushCollectionRequest { name })
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                eprintln!("flushed; checkpoint at LSN {}", r.checkpoint_lsn);
            }
            CollectionCmd::Compact { name, force, json } => {
                let r = client
                    .collections
                    .compact(pb::CompactCollectionRequest { name, force })
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                if json {
                    println!(
                        "{}",
                        json!({"compactions": r.compactions, "segments_before": r.segments_before,
                            "segments_after": r.segments_after, "rows_reclaimed": r.rows_reclaimed,
                            "bytes_reclaimed": r.bytes_reclaimed, "seconds": r.seconds})
                    );
                } else {
                    eprintln!(
                        "{} compactions in {:.2} s: {} -> {} sealed segments, {} dead rows and {} bytes reclaimed",
                        r.compactions,
                        r.seconds,
                        r.segments_before,
                        r.segments_after,
                        r.rows_reclaimed,
                        r.bytes_reclaimed
                    );
                }
            }
        },
        Cmd::Upsert {
            collection,
            file,
            batch_size,
            json,
        } => upsert(&mut client, &collection, &file, batch_size.max(1), json).await?,
        Cmd::Get {
            collection,
            ids,
            with_vectors,
        } => {
            let ids = ids.iter().map(|s| parse_id(s)).collect();
            let r = client
                .points
                .get(pb::GetPointsRequest {
                    collection,
                    ids,
                    with_vectors,
                    with_payload: true,
                    consistency,
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            for p in r.points {
                println!("{}", point_json(&p, with_vectors));
            }
        }
        Cmd::Delete {
            collection,
            ids,
            filter,
        } => {
            let ids = ids.iter().map(|s| parse_id(s)).collect();
            let r = client
                .points
                .delete(pb::DeletePointsRequest {
                    collection,
                    ids,
                    filter: text_filter(filter),
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            eprintln!("deleted {} points", r.deleted);
        }
        Cmd::Count { collection, filter } => {
            let r = client
                .points
                .count(pb::CountRequest {
                    collection,
                    filter: text_filter(filter),
                    consistency,
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            println!("{}", r.count);
        }
        Cmd::Ingest {
            files,
            collection,
            id_field,
            vector_field,
            payload_fields,
            side,
            on_error,
            reject_file,
            batch_bytes,
            in_flight,
            create,
            metric,
            dry_run,
            resume,
            checkpoint,
            max_payload_bytes,
            quiet,
            json,
        } => {
            let metric = match metric {
                MetricArg::Cosine => pb::Metric::Cosine,
                MetricArg::L2 => pb::Metric::L2,
                MetricArg::Dot => pb::Metric::Dot,
            };
            let summary = ingest::ingest(
                &mut client,
                ingest::Options {
                    collection,
                    files,
                    mapping: ingest::read::Mapping {
                        id_field,
                        vector_field,
                        payload_fields,
                        side,
                    },
                    on_error,
                    reject_file: (on_error == ingest::OnError::Skip).then_some(reject_file),
                    batch_bytes: batch_bytes.max(1),
                    in_flight,
                    create: create.then_some(metric),
                    dry_run,
                    resume,
                    checkpoint,
                    quiet,
                    json,
                    max_payload_bytes,
                },
            )
            .await?;
            if json {
                println!("{summary}");
            } else if !quiet {
                eprintln!(
                    "{} {} rows ({} rejected) in {:.2}s, {:.0} rows/s{}",
                    if dry_run { "validated" } else { "ingested" },
                    if dry_run {
                        &summary["rows_valid"]
                    } else {
                        &summary["upserted"]
                    },
                    summary["rejected"],
                    summary["seconds"].as_f64().unwrap_or_default(),
                    summary["rows_per_s"].as_f64().unwrap_or_default(),
                    summary["reject_file"]
                        .as_str()
                        .filter(|_| summary["rejected"].as_u64() > Some(0))
                        .map(|p| format!("; rejects in {p}"))
                        .unwrap_or_default()
                );
            }
        }
        Cmd::IngestDocs {
            files,
            collection,
            create,
            text_field,
            id_field,
            embedder,
            policy,
            generator,
            json,
        } => {
            let config = pb::RagConfig {
                embedder: embedder.unwrap_or_default(),
                policy: policy.map_or(0, ops::PolicyArg::proto),
                generator: generator.unwrap_or_default(),
            };
            let r = docs::ingest(
                &mut client,
                &collection,
                &files,
                create.then_some(config),
                &text_field,
                &id_field,
            )
            .await?;
            if json {
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
        }
        Cmd::Eval {
            collection,
            questions,
            k,
            per_question,
            mode,
            provider,
            max_answer_tokens,
        } => {
            let opts = docs::EvalOptions {
                k,
                per_question,
                mode: mode.proto(),
                provider,
                max_answer_tokens,
            };
            let totals = docs::eval(&mut client, &collection, &questions, &opts).await?;
            println!("{totals}");
        }
        Cmd::Rag(c) => ops::rag(&mut client, c).await?,
        Cmd::Cluster(c) => ops::cluster(&mut client, c).await?,
        Cmd::Key(c) => ops::key(&mut client, c).await?,
        Cmd::Snapshot(c) => ops::snapshot(&mut client, c).await?,
        Cmd::Audit(c) => ops::audit(&mut client, c).await?,
        Cmd::Review(c) => ops::review(&mut client, c).await?,
        Cmd::DeleteDoc { collection, id } => {
            let r = client
                .rag
                .delete_document(pb::DeleteDocumentRequest {
                    collection,
                    document_id: id,
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            eprintln!("deleted {} chunks", r.chunks);
        }
        Cmd::Ask {
            question,
            collection,
            mode,
            provider,
            max_context_tokens,
            max_answer_tokens,
            temperature,
            k,
            filter,
            json,
            stream,
        } => {
            let req = pb::AskRequest {
                collection,
                question,
                filter: text_filter(filter),
                k,
                mode: mode.proto(),
                provider,
                max_context_tokens,
                max_answer_tokens,
                temperature,
                consistency,
            };
            if stream {
                return docs::ask_stream(&mut client, req, json).await;
            }
            let r = client
                .rag
                .ask(req)
                .await
                .map_err(ClientError::from)?
                .into_inner();
            if json {
                println!("{}", docs::ask_json(&r));
            } else {
                if !r.answer.is_empty() {
                    println!("{}\n", r.answer);
                }
                for c in &r.citations {
                    println!(
                        "[{}] {:.3} {}{}\n    {}",
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
        }
        Cmd::Export {
            collection,
            output,
            filter,
        } => {
            let parquet = output
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
            let n = ingest::export(
                &mut client,
                &collection,
                text_filter(filter),
                &output,
                parquet,
            )
            .await?;
            eprintln!("exported {n} points to {}", output.display());
        }
        Cmd::SetPayload {
            collection,
            ids,
            set,
            unset,
            overwrite,
        } => {
            let r = client
                .points
                .update_payload(pb::UpdatePayloadRequest {
                    collection,
                    ids: ids.iter().map(|s| parse_id(s)).collect(),
                    set_json: set.unwrap_or_default(),
                    unset,
                    overwrite,
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            eprintln!("updated {} points", r.updated);
        }
        Cmd::Search {
            collection,
            vector,
            queries,
            like,
            k,
            exact,
            nprobe,
            refine,
            target_recall,
            filter,
            with_vectors,
            json,
        } => {
            let base = pb::SearchRequest {
                collection: collection.clone(),
                k,
                exact,
                with_payload: true,
                with_vectors,
                vector: Vec::new(),
                nprobe,
                refine_factor: refine,
                target_recall,
                filter: text_filter(filter),
                consistency,
            };
            if let Some(path) = queries {
                let name = path.display().to_string();
                let mut batch: Vec<pb::SearchRequest> = Vec::new();
                let mut reader = open_lines(&path)?;
                let mut line = String::new();
                let mut lineno = 0;
                let mut first_line = 1;
                loop {
                    line.clear();
                    let eof = reader.read_line(&mut line)? == 0;
                    if !eof {
                        lineno += 1;
                        if line.trim().is_empty() {
                            continue;
                        }
                        let v: Value = serde_json::from_str(line.trim()).map_err(|e| {
                            anyhow!(
                                "{name}:{lineno}: invalid JSON at column {}: {e}",
                                e.column()
                            )
                        })?;
                        let vector = parse_vector(
                            v.get("vector").ok_or_else(|| {
                                anyhow!("{name}:{lineno}: field 'vector' is missing")
                            })?,
                            "field 'vector'",
                        )
                        .map_err(|e| anyhow!("{name}:{lineno}: {e}"))?;
                        if batch.is_empty() {
                            first_line = lineno;
                        }
                        batch.push(pb::SearchRequest {
                            vector,
                            ..base.clone()
                        });
                    }
                    if (eof && !batch.is_empty()) || batch.len() >= 64 {
                        let res = client
                            .search
                            .search_batch(pb::SearchBatchRequest {
                                searches: std::mem::take(&mut batch),
                            })
                            .await
                            .map_err(|s| {
                                anyhow!(
                                    "{name}: queries from line {first_line}: {}",
                                    ClientError::from(s)
                                )
                            })?
                            .into_inner();
                        for r in res.results {
                            print_hits(&r.hits, json, with_vectors);
                        }
                    }
                    if eof {
                        break;
                    }
                }
            } else {
                let vector = match (vector, like) {
                    (Some(v), _) => parse_vector(
                        &serde_json::from_str(&v)
                            .map_err(|e| anyhow!("--vector: invalid JSON: {e}"))?,
                        "--vector",
                    )?,
                    (None, Some(id)) => {
                        let r = client
                            .points
                            .get(pb::GetPointsRequest {
                                collection: collection.clone(),
                                ids: vec![parse_id(&id)],
                                with_vectors: true,
                                with_payload: false,
                                consistency,
                            })
                            .await
                            .map_err(ClientError::from)?
                            .into_inner();
                        r.points
                            .into_iter()
                            .next()
                            .ok_or_else(|| anyhow!("--like {id}: no such point in {collection}"))?
                            .vector
                    }
                    (None, None) => {
                        bail!("give a query: --vector '[..]', --queries FILE or --like ID")
                    }
                };
                let r = client
                    .search
                    .search(pb::SearchRequest { vector, ..base })
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                print_hits(&r.hits, json, with_vectors);
            }
        }
        Cmd::Scroll {
            collection,
            filter,
            with_vectors,
            page,
        } => {
            let filter = text_filter(filter);
            let mut cursor = String::new();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            loop {
                let req = pb::ScrollRequest {
                    collection: collection.clone(),
                    cursor,
                    limit: page,
                    with_vectors,
                    with_payload: true,
                    filter: filter.clone(),
                };
                let r = client
                    .points
                    .scroll(req)
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                for p in r.points {
                    writeln!(out, "{}", point_json(&p, with_vectors))?;
                }
                if r.next_cursor.is_empty() {
                    break;
                }
                cursor = r.next_cursor;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
