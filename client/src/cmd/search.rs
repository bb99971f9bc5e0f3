//! `quiver search`: one query (`--vector` or `--like`) or a file of queries (`--queries`,
//! sent 64 at a time with `SearchBatch`).
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::{Client, ClientError, id_to_json, pb};
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use super::common::{open_lines, parse_id, parse_vector, payload_value, text_filter};

/// Queries sent per `SearchBatch` call.
const QUERIES_PER_BATCH: usize = 64;

/// `quiver search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
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
    /// IVF lists probed per segment (default: the calibrated nprobe for --target-recall; with
    /// no target, for 0.95 and at least 8).
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
}

/// Where the hits go: JSON lines or a table, with or without vectors.
#[derive(Debug, Clone, Copy)]
struct Output {
    json: bool,
    with_vectors: bool,
}

/// Runs `quiver search`.
pub async fn run(client: &mut Client, a: SearchArgs, consistency: i32) -> Result<()> {
    let out = Output {
        json: a.json,
        with_vectors: a.with_vectors,
    };
    let base = pb::SearchRequest {
        collection: a.collection.clone(),
        k: a.k,
        exact: a.exact,
        with_payload: true,
        with_vectors: a.with_vectors,
        vector: Vec::new(),
        nprobe: a.nprobe,
        refine_factor: a.refine,
        target_recall: a.target_recall,
        filter: text_filter(a.filter),
        consistency,
    };
    if let Some(path) = a.queries {
        return queries_file(client, &path, &base, out).await;
    }
    let vector = match (a.vector, a.like) {
        (Some(v), _) => parse_vector(
            &serde_json::from_str(&v).map_err(|e| anyhow!("--vector: invalid JSON: {e}"))?,
            "--vector",
        )?,
        (None, Some(id)) => stored_vector(client, &a.collection, &id, consistency).await?,
        (None, None) => bail!("give a query: --vector '[..]', --queries FILE or --like ID"),
    };
    let r = client
        .search
        .search(pb::SearchRequest { vector, ..base })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    print_hits(&r.hits, out);
    Ok(())
}

/// `--like ID`: the stored vector of that point.
async fn stored_vector(
    client: &mut Client,
    collection: &str,
    id: &str,
    consistency: i32,
) -> Result<Vec<f32>> {
    let r = client
        .points
        .get(pb::GetPointsRequest {
            collection: collection.to_owned(),
            ids: vec![parse_id(id)],
            with_vectors: true,
            with_payload: false,
            consistency,
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    Ok(r.points
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("--like {id}: no such point in {collection}"))?
        .vector)
}

/// `--queries FILE`: one result line per query, in order; errors name the file and line.
async fn queries_file(
    client: &mut Client,
    path: &Path,
    base: &pb::SearchRequest,
    out: Output,
) -> Result<()> {
    let name = path.display().to_string();
    let mut batch: Vec<pb::SearchRequest> = Vec::new();
    let mut reader = open_lines(path)?;
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
            let vector = query_vector(&name, lineno, line.trim())?;
            if batch.is_empty() {
                first_line = lineno;
            }
            batch.push(pb::SearchRequest {
                vector,
                ..base.clone()
            });
        }
        if (eof && !batch.is_empty()) || batch.len() >= QUERIES_PER_BATCH {
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
                print_hits(&r.hits, out);
            }
        }
        if eof {
            return Ok(());
        }
    }
}

/// The `vector` of one line of a queries file.
fn query_vector(name: &str, lineno: usize, text: &str) -> Result<Vec<f32>> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{name}:{lineno}: invalid JSON at column {}: {e}",
            e.column()
        )
    })?;
    parse_vector(
        v.get("vector")
            .ok_or_else(|| anyhow!("{name}:{lineno}: field 'vector' is missing"))?,
        "field 'vector'",
    )
    .map_err(|e| anyhow!("{name}:{lineno}: {e}"))
}

/// One query's hits: a JSON line, or a ranked table.
fn print_hits(hits: &[pb::ScoredPoint], out: Output) {
    if out.json {
        let hits: Vec<Value> = hits
            .iter()
            .map(|h| {
                let mut o = json!({"id": id_to_json(&h.id), "score": h.score, "payload": payload_value(&h.payload_json)});
                if out.with_vectors {
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
