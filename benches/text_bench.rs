//! Full-text search in process: ingest throughput with and without a text field, then BM25
//! query latency (one thread) on the chunks of `benches/text/make_chunks.py`.
//!
//! `text-bench --data ~/.cache/quiver/text [--chunks N] [--queries N] [--field-type text:english+stop]
//! [--rounds 3] [--k 10] [--merge]` prints one JSON line per phase.
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use quiver_storage::collection::{CompactionOptions, HybridQuery, TextSearch};
use quiver_storage::filter::FieldType;
use quiver_storage::types::IndexConfig;
use quiver_storage::{
    CollectionConfig, Engine, EngineOptions, Metric, PointId, PointWrite, ReadOptions, SearchParams,
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Directory with chunks.jsonl and queries.jsonl.
    #[arg(long)]
    data: PathBuf,
    /// Chunks loaded (0 = all).
    #[arg(long, default_value_t = 0)]
    chunks: usize,
    /// Queries measured (0 = all).
    #[arg(long, default_value_t = 0)]
    queries: usize,
    /// The text field's type.
    #[arg(long, default_value = "text:english+stop")]
    field_type: String,
    /// Timed passes over the queries (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Hits per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// After loading, merge the segments into as few as the merge policy allows (as an idle
    /// server does after 30 s).
    #[arg(long)]
    merge: bool,
    /// Skip the ingest run without a text field.
    #[arg(long)]
    skip_plain: bool,
}

fn read_lines(p: &std::path::Path, limit: usize) -> Result<Vec<serde_json::Value>> {
    let f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        out.push(serde_json::from_str(&line?)?);
        if limit > 0 && out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Loads `chunks` into a new collection (with the text field when `text` is set); returns
/// the collection and the seconds taken, flush included.
fn load(
    engine: &Engine,
    name: &str,
    chunks: &[serde_json::Value],
    text: Option<FieldType>,
) -> Result<(std::sync::Arc<quiver_storage::Collection>, f64)> {
    let mut cfg = CollectionConfig {
        name: name.into(),
        dim: 4,
        metric: Metric::L2,
        index: IndexConfig::flat(),
        segment_max_rows: quiver_storage::types::DEFAULT_SEGMENT_MAX_ROWS,
        schema: Default::default(),
        labels: Default::default(),
    };
    if let Some(t) = text {
        cfg.schema.insert("text".into(), t);
    }
    let c = engine.create_collection(cfg)?;
    let started = Instant::now();
    for batch in chunks.chunks(1000) {
        let points = batch
            .iter()
            .map(|v| {
                let id = v["id"].as_u64().unwrap_or(0);
                PointWrite {
                    id: PointId::Num(id),
                    vector: vec![(id % 97) as f32, (id % 89) as f32, 1.0, 0.5],
                    payload: Some(json!({"text": v["text"]}).to_string().into_bytes()),
                }
            })
            .collect();
        c.upsert(points)?;
    }
    c.flush()?;
    Ok((c, started.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let chunks = read_lines(&a.data.join("chunks.jsonl"), a.chunks)?;
    let queries: Vec<String> = read_lines(&a.data.join("queries.jsonl"), a.queries)?
        .into_iter()
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect();
    let ty = FieldType::parse(&a.field_type)
        .with_context(|| format!("--field-type {}: not a type", a.field_type))?;
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), EngineOptions::default())?;
    let bytes: usize = chunks
        .iter()
        .map(|c| c["text"].as_str().map_or(0, str::len))
        .sum();
    if !a.skip_plain {
        let (plain, secs) = load(&engine, "plain", &chunks, None)?;
        println!(
            "{}",
            json!({"event": "ingest", "text_field": false, "chunks": chunks.len(), "seconds": secs,
                   "chunks_per_s": chunks.len() as f64 / secs, "mb_per_s": bytes as f64 / secs / 1e6})
        );
        drop(plain);
        engine.drop_collection("plain")?;
    }
    let (c, secs) = load(&engine, "text", &chunks, Some(ty))?;
    println!(
        "{}",
        json!({"event": "ingest", "text_field": a.field_type, "chunks": chunks.len(), "seconds": secs,
               "chunks_per_s": chunks.len() as f64 / secs, "mb_per_s": bytes as f64 / secs / 1e6})
    );
    if a.merge {
        let started = Instant::now();
        let opts = CompactionOptions {
            merge_when_idle: Some(std::time::Duration::ZERO),
            ..Default::default()
        };
        let reports = c.compact(opts)?;
        println!(
            "{}",
            json!({"event": "merge", "seconds": started.elapsed().as_secs_f64(), "merges": reports.len(),
                   "segments": c.segment_count()})
        );
    }
    let search = |q: &str| -> Result<usize> {
        let hq = HybridQuery {
            text: Some(TextSearch {
                field: "text".into(),
                more_fields: Vec::new(),
                query: q.into(),
                bm25: Default::default(),
            }),
            k: a.k,
            candidates: Some(a.k),
            ..Default::default()
        };
        Ok(
            c.hybrid_search(&hq, ReadOptions::default(), SearchParams::default(), None)?
                .len(),
        )
    };
    // Warm-up pass (page cache, allocator), then timed rounds.
    let mut hits = 0usize;
    for q in &queries {
        hits += search(q)?;
    }
    let mut rounds = Vec::new();
    for _ in 0..a.rounds {
        let mut lat = Vec::with_capacity(queries.len());
        let started = Instant::now();
        for q in &queries {
            let t = Instant::now();
            search(q)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        rounds.push((queries.len() as f64 / total, pct(0.5), pct(0.99)));
    }
    rounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (qps, p50, p99) = rounds[rounds.len() / 2];
    let stats = c.stats();
    println!(
        "{}",
        json!({"event": "search", "system": "quiver", "field_type": a.field_type, "chunks": chunks.len(),
               "queries": queries.len(), "k": a.k, "segments": stats.sealed_segments,
               "mean_hits": hits as f64 / queries.len().max(1) as f64,
               "qps": qps, "p50_ms": p50, "p99_ms": p99, "rounds": a.rounds,
               "bytes_on_disk": stats.bytes_on_disk})
    );
    Ok(())
}
