//! Hybrid search latency over gRPC against a running `quiverd`: loads chunks of
//! `benches/text/make_chunks.py` with a text field and a `--dim` vector each (seeded random,
//! unit length), waits for the indexes, then sends one search at a time — dense only, BM25
//! only, and both fused by RRF — and prints p50/p99 and QPS of each as JSON lines.
//!
//! `hybrid-latency --addr http://127.0.0.1:PORT --data ~/.cache/quiver/text [--chunks 200000]
//! [--dim 64] [--queries 500]`
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use quiver_client::{Client, pb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long)]
    addr: String,
    /// Directory with chunks.jsonl and queries.jsonl.
    #[arg(long)]
    data: PathBuf,
    /// Chunks loaded.
    #[arg(long, default_value_t = 200_000)]
    chunks: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Queries timed per kind.
    #[arg(long, default_value_t = 500)]
    queries: usize,
}

fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / n).collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut c = Client::connect(&a.addr).await?;
    let name = "hybrid_latency";
    let _ = c
        .collections
        .delete(pb::DeleteCollectionRequest { name: name.into() })
        .await;
    c.collections
        .create(pb::CreateCollectionRequest {
            name: name.into(),
            dim: a.dim as u32,
            metric: pb::Metric::Cosine as i32,
            schema: vec![pb::FieldSchema {
                key: "text".into(),
                r#type: pb::FieldType::Text as i32,
                language: "english".into(),
                stop_words: true,
            }],
            ..Default::default()
        })
        .await?;
    let f = std::fs::File::open(a.data.join("chunks.jsonl")).context("chunks.jsonl")?;
    let mut rng = StdRng::seed_from_u64(7);
    let mut batch = Vec::new();
    let started = Instant::now();
    for (i, line) in std::io::BufReader::new(f)
        .lines()
        .take(a.chunks)
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        batch.push(pb::Point {
            id: Some(pb::PointId {
                kind: Some(pb::point_id::Kind::Num(i as u64)),
            }),
            vector: unit(&mut rng, a.dim),
            payload_json: Some(json!({"text": v["text"]}).to_string()),
        });
        if batch.len() == 1000 {
            c.points
                .upsert(pb::UpsertRequest {
                    collection: name.into(),
                    points: std::mem::take(&mut batch),
                    batch_id: 0,
                })
                .await?;
        }
    }
    if !batch.is_empty() {
        c.points
            .upsert(pb::UpsertRequest {
                collection: name.into(),
                points: batch,
                batch_id: 0,
            })
            .await?;
    }
    c.collections
        .flush(pb::FlushCollectionRequest { name: name.into() })
        .await?;
    let loaded = started.elapsed().as_secs_f64();
    // The IVF-PQ indexes build in the background: wait for them (as a user would before
    // measuring), at most 10 minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = c
            .collections
            .get(pb::GetCollectionRequest { name: name.into() })
            .await?
            .into_inner();
        let state = info.stats.map(|s| s.index_state).unwrap_or_default();
        if state.starts_with("ivf_pq ready") || Instant::now() > deadline {
            println!(
                "{}",
                json!({"event": "load", "chunks": a.chunks, "dim": a.dim, "seconds": loaded, "index": state})
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let qf = std::fs::File::open(a.data.join("queries.jsonl")).context("queries.jsonl")?;
    let texts: Vec<String> = std::io::BufReader::new(qf)
        .lines()
        .take(a.queries)
        .filter_map(|l| l.ok())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect();
    let vectors: Vec<Vec<f32>> = texts.iter().map(|_| unit(&mut rng, a.dim)).collect();
    for kind in ["dense", "text", "hybrid"] {
        let req = |i: usize| pb::SearchRequest {
            collection: name.into(),
            k: 10,
            vector: if kind == "text" {
                Vec::new()
            } else {
                vectors[i].clone()
            },
            text: (kind != "dense").then(|| pb::TextQuery {
                field: "text".into(),
                query: texts[i].clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for i in 0..texts.len().min(50) {
            c.search.search(req(i)).await?;
        }
        let mut lat = Vec::with_capacity(texts.len());
        let t0 = Instant::now();
        for i in 0..texts.len() {
            let t = Instant::now();
            c.search.search(req(i)).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = t0.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "{}",
            json!({"event": "search", "kind": kind, "queries": texts.len(), "qps": texts.len() as f64 / total,
                   "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
        );
    }
    Ok(())
}
