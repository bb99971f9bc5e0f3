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
    /// A BM25 text query (words, +required, -excluded) on --text-field; with --vector or
    /// --like too, a hybrid search fused by --fusion.
    #[arg(long)]
    text: Option<String>,
    /// The text field --text searches (default: the collection's only text field); several,
    /// comma-separated, sum their BM25 scores (e.g. title,body).
    #[arg(long)]
    text_field: Option<String>,
    /// A sparse query on --sparse-field, as JSON {"indices": [..], "values": [..]}.
    #[arg(long)]
    sparse: Option<String>,
    /// The sparse field --sparse searches (default: the collection's only sparse field).
    #[arg(long)]
    sparse_field: Option<String>,
    /// How a hybrid search fuses its branches: rrf (reciprocal rank) or dbsf (normalised
    /// scores).
    #[arg(long, value_parser = ["rrf", "dbsf"])]
    fusion: Option<String>,
    /// RRF's rank offset (default 60).
    #[arg(long)]
    rrf_k: Option<f32>,
    /// Branch weights in fusion, DENSE,TEXT,SPARSE (default 1,1,1).
    #[arg(long)]
    weights: Option<String>,
    /// Candidates each branch retrieves before fusion (default max(2k, 50)).
    #[arg(long)]
    candidates: Option<u32>,
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
    let weights = a.weights.as_deref().map(parse_weights).transpose()?;
    let fusion = match a.fusion.as_deref() {
        Some("dbsf") => pb::Fusion::Dbsf,
        Some(_) => pb::Fusion::Rrf,
        None => pb::Fusion::Unspecified,
    };
    let needs = |t: pb::FieldType| {
        (t == pb::FieldType::Text && a.text.is_some() && a.text_field.is_none())
            || (t == pb::FieldType::Sparse && a.sparse.is_some() && a.sparse_field.is_none())
    };
    let text_field = match (&a.text_field, needs(pb::FieldType::Text)) {
        (Some(f), _) => f.clone(),
        (None, true) => {
            only_field(client, &a.collection, pb::FieldType::Text, "--text-field").await?
        }
        (None, false) => String::new(),
    };
    let sparse_field = match (&a.sparse_field, needs(pb::FieldType::Sparse)) {
        (Some(f), _) => f.clone(),
        (None, true) => {
            only_field(
                client,
                &a.collection,
                pb::FieldType::Sparse,
                "--sparse-field",
            )
            .await?
        }
        (None, false) => String::new(),
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
        text: None,
        sparse: None,
        fusion: fusion as i32,
        rrf_k: a.rrf_k,
        weights,
        candidates: a.candidates,
    };
    let mut text_fields = text_field.split(',').map(str::trim).map(str::to_owned);
    let first_field = text_fields.next().unwrap_or_default();
    let more_fields: Vec<String> = text_fields.collect();
    let text = a.text.map(|q| pb::TextQuery {
        field: first_field.clone(),
        query: q,
        more_fields: more_fields.clone(),
        ..Default::default()
    });
    let sparse = match a.sparse {
        Some(s) => Some(pb::SparseQuery {
            field: sparse_field.clone(),
            vector: Some(parse_sparse(
                &serde_json::from_str(&s).map_err(|e| anyhow!("--sparse: invalid JSON: {e}"))?,
                "--sparse",
            )?),
        }),
        None => None,
    };
    if let Some(path) = a.queries {
        return queries_file(client, &path, &base, (&text_field, &sparse_field), out).await;
    }
    let vector = match (a.vector, a.like) {
        (Some(v), _) => parse_vector(
            &serde_json::from_str(&v).map_err(|e| anyhow!("--vector: invalid JSON: {e}"))?,
            "--vector",
        )?,
        (None, Some(id)) => stored_vector(client, &a.collection, &id, consistency).await?,
        (None, None) if text.is_some() || sparse.is_some() => Vec::new(),
        (None, None) => {
            bail!(
                "give a query: --vector '[..]', --like ID, --text '...', --sparse '{{..}}' or --queries FILE"
            )
        }
    };
    let base = pb::SearchRequest {
        text,
        sparse,
        ..base
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

/// `--weights D,T,S`.
fn parse_weights(s: &str) -> Result<pb::BranchWeights> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        bail!("--weights {s:?}: expected DENSE,TEXT,SPARSE, e.g. 1,0.5,0");
    }
    let mut w = [0f32; 3];
    for (x, p) in w.iter_mut().zip(&parts) {
        *x = p
            .parse()
            .map_err(|_| anyhow!("--weights {s:?}: {p:?} is not a number"))?;
    }
    Ok(pb::BranchWeights {
        dense: Some(w[0]),
        text: Some(w[1]),
        sparse: Some(w[2]),
    })
}

/// A sparse vector from JSON `{"indices": [..], "values": [..]}` (the server checks order
/// and values).
fn parse_sparse(v: &Value, what: &str) -> Result<pb::SparseVector> {
    let list = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("{what}: expected {{\"indices\": [..], \"values\": [..]}}"))
    };
    let indices = list("indices")?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| anyhow!("{what}: index {x} is not a u32"))
        })
        .collect::<Result<Vec<u32>>>()?;
    let values = list("values")?
        .iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| anyhow!("{what}: value {x} is not a number"))
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok(pb::SparseVector { indices, values })
}

/// The collection's only field of type `t` (for a query that does not name its field).
async fn only_field(
    client: &mut Client,
    collection: &str,
    t: pb::FieldType,
    flag: &str,
) -> Result<String> {
    let info = client
        .collections
        .get(pb::GetCollectionRequest {
            name: collection.to_owned(),
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let fields: Vec<String> = info
        .config
        .map(|c| c.schema)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.r#type == t as i32)
        .map(|f| f.key)
        .collect();
    match fields.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{collection} declares no {} field; declare one (--field KEY:{})",
            t.as_str_name(),
            if t == pb::FieldType::Text {
                "text"
            } else {
                "sparse"
            }
        ),
        many => bail!(
            "{collection} has several such fields ({}); choose one with {flag}",
            many.join(", ")
        ),
    }
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
    fields: (&str, &str),
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
            let q = query_line(&name, lineno, line.trim(), base, fields)?;
            if batch.is_empty() {
                first_line = lineno;
            }
            batch.push(q);
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

/// The search of one line of a queries file: `{"vector": [..], "text": "..", "sparse": {..}}`,
/// at least one of them (text and sparse on the fields `fields` the command resolved).
fn query_line(
    name: &str,
    lineno: usize,
    text: &str,
    base: &pb::SearchRequest,
    fields: (&str, &str),
) -> Result<pb::SearchRequest> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{name}:{lineno}: invalid JSON at column {}: {e}",
            e.column()
        )
    })?;
    let at = |e: anyhow::Error| anyhow!("{name}:{lineno}: {e}");
    let vector = match v.get("vector") {
        Some(x) => parse_vector(x, "field 'vector'").map_err(at)?,
        None => Vec::new(),
    };
    let text = match v.get("text") {
        Some(Value::String(q)) if fields.0.is_empty() => {
            return Err(at(anyhow!("field 'text' needs --text-field")));
        }
        Some(Value::String(q)) => {
            let mut f = fields.0.split(',').map(str::trim).map(str::to_owned);
            Some(pb::TextQuery {
                field: f.next().unwrap_or_default(),
                query: q.clone(),
                more_fields: f.collect(),
                ..Default::default()
            })
        }
        Some(_) => return Err(at(anyhow!("field 'text' must be a string"))),
        None => base.text.clone(),
    };
    let sparse = match v.get("sparse") {
        Some(_) if fields.1.is_empty() => {
            return Err(at(anyhow!("field 'sparse' needs --sparse-field")));
        }
        Some(x) => Some(pb::SparseQuery {
            field: fields.1.to_owned(),
            vector: Some(parse_sparse(x, "field 'sparse'").map_err(at)?),
        }),
        None => base.sparse.clone(),
    };
    if vector.is_empty() && text.is_none() && sparse.is_none() {
        return Err(at(anyhow!("give 'vector', 'text' or 'sparse'")));
    }
    Ok(pb::SearchRequest {
        vector,
        text,
        sparse,
        ..base.clone()
    })
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
                let branches = branches_json(h);
                if !branches.is_empty() {
                    o["branches"] = Value::Object(branches);
                }
                o
            })
            .collect();
        println!("{}", json!({ "hits": hits }));
    } else {
        let hybrid = hits
            .iter()
            .any(|h| h.dense.is_some() || h.text.is_some() || h.sparse.is_some());
        if hybrid {
            println!(
                "{:>4}  {:<24} {:>10}  {:>6} {:>6} {:>6}  payload",
                "rank", "id", "score", "dense", "text", "sparse"
            );
        } else {
            println!("{:>4}  {:<24} {:>10}  payload", "rank", "id", "score");
        }
        let rank = |b: &Option<pb::BranchRank>| b.map_or("-".to_owned(), |b| b.rank.to_string());
        for (i, h) in hits.iter().enumerate() {
            let id = id_to_json(&h.id);
            let id = id
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| id.to_string());
            let ranks = if hybrid {
                format!(
                    "{:>6} {:>6} {:>6}  ",
                    rank(&h.dense),
                    rank(&h.text),
                    rank(&h.sparse)
                )
            } else {
                String::new()
            };
            println!(
                "{:>4}  {:<24} {:>10.6}  {ranks}{}",
                i + 1,
                id,
                h.score,
                h.payload_json.as_deref().unwrap_or("")
            );
        }
    }
}

/// `{"dense": {"rank", "score"}, "text": .., "sparse": ..}` for the branches that found `h`.
fn branches_json(h: &pb::ScoredPoint) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (name, b) in [
        ("dense", &h.dense),
        ("text", &h.text),
        ("sparse", &h.sparse),
    ] {
        if let Some(b) = b {
            m.insert(name.into(), json!({"rank": b.rank, "score": b.score}));
        }
    }
    m
}
