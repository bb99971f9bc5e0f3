//! IVF-PQ in-process and single-threaded (GloVe-50 cosine, Fashion-MNIST l2, or any fvecs set): build time, index size, and
//! recall@10 / QPS for a sweep of (nprobe, refine_factor). One JSON line per configuration.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use quiver_benches::{Loaded, parse_sweep, read_fvecs, read_queries, recall_at};
use quiver_storage::{IndexConfig, IndexKind, Metric, PointId, ReadOptions};

#[derive(Debug, Parser)]
struct Args {
    /// Directory with base.fvecs, query.fvecs, gt100.ivecs (make_glove50.py).
    #[arg(long)]
    data: PathBuf,
    /// Queries per configuration.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// IVF lists (one segment holds the whole set, so this is the index's nlist).
    #[arg(long, default_value_t = 1024)]
    nlist: u32,
    /// PQ sub-spaces (default from the dimension).
    #[arg(long)]
    pq_m: Option<u32>,
    /// Bits per PQ code: 4 (fast-scan) or 8.
    #[arg(long, default_value_t = 4)]
    pq_bits: u32,
    /// Distance: cosine (GloVe) or l2 (Fashion-MNIST).
    #[arg(long, default_value = "cosine")]
    metric: String,
    /// Search threads: queries are spread over this many threads (1: one after another).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Background threads for the index build (the server's `compaction.threads`); default
    /// the server's default, half the cores.
    #[arg(long)]
    build_threads: Option<usize>,
    /// Queries per `Collection::search_batch` call (the engine side of `SearchBatch`); 1
    /// searches one query per call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Configurations as nprobe:refine (or rTARGET_RECALL:refine), comma-separated.
    #[arg(long, default_value = "8:4,16:4,24:4,32:4,48:4,64:4,32:8,64:8")]
    sweep: String,
    /// Before the sweep, measure the N queries that follow the measured ones in query.fvecs
    /// with the recall audit (`Collection::audit_recall`, what `quiverd`'s sampled audit does
    /// in the background), so `target_recall` uses the served queries' curve, as on a server
    /// that has been serving. The measured queries stay unseen by that curve.
    #[arg(long, default_value_t = 0)]
    warm_queries: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(t) = a.build_threads {
        quiver_storage::background::set_threads(t);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let base = read_fvecs(&a.data.join("base.fvecs"))?;
    let (queries, gt) = read_queries(&a.data, a.queries)?;
    let nq = queries.len();
    let metric = match a.metric.as_str() {
        "cosine" => Metric::Cosine,
        "l2" => Metric::L2,
        "dot" => Metric::Dot,
        other => anyhow::bail!("--metric: cosine, l2 or dot, not {other:?}"),
    };
    let loaded = Loaded::new(
        &base,
        metric,
        IndexConfig {
            kind: IndexKind::IvfPq,
            nlist: Some(a.nlist),
            pq_m: a.pq_m,
            pq_bits: Some(a.pq_bits),
        },
        Default::default(),
        |_| None,
    )?;
    let c = &loaded.collection;
    let (flushed, build) = (
        loaded.flush_seconds,
        loaded.flush_seconds + loaded.build_seconds,
    );
    let stats = c.stats();
    eprintln!(
        "built: {} in {build:.1}s (flush {flushed:.1}s, then k-means + PQ + encode + calibration, 2 cores); segment files + index {} bytes, index {} bytes",
        stats.index_state, stats.bytes_on_disk, stats.index_bytes
    );
    let system = format!("quiver-ivfpq{}", a.pq_bits);
    println!(
        "{}",
        serde_json::json!({"system": system, "event": "build", "build_threads": quiver_storage::background::threads(), "seconds": build - flushed, "flush_seconds": flushed, "index_bytes": stats.index_bytes, "bytes_on_disk": stats.bytes_on_disk, "nlist": a.nlist})
    );
    if a.warm_queries > 0 {
        let warm_set = quiver_benches::warm_queries(&a.data, nq, a.warm_queries)?;
        let t = Instant::now();
        for q in &warm_set {
            c.audit_recall(q)?;
        }
        let state = c.stats().index_state;
        eprintln!(
            "warmed: {} served queries measured in {:.1}s: {state}",
            a.warm_queries,
            t.elapsed().as_secs_f64()
        );
        println!(
            "{}",
            serde_json::json!({"system": system, "event": "warmed", "queries": a.warm_queries, "seconds": t.elapsed().as_secs_f64(), "state": state})
        );
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()?;
    for point in parse_sweep(&a.sweep)? {
        let params = point.params();
        let one = |(q, truth): (&Vec<f32>, &Vec<u32>)| -> Result<f64> {
            let hits = c.search(q, 10, ReadOptions::default(), params)?;
            Ok(recall_at(10, &num_ids(&hits), truth))
        };
        let (recall, qps) = pool.install(|| -> Result<(f64, f64)> {
            use rayon::prelude::*;
            let t = Instant::now();
            // One query per task: each thread takes the next query as it finishes one.
            let recall: f64 = if a.batch > 1 {
                let mut sum = 0.0;
                for (qs, truths) in queries[..nq].chunks(a.batch).zip(gt[..nq].chunks(a.batch)) {
                    let batch: Vec<(&[f32], usize)> =
                        qs.iter().map(|q| (q.as_slice(), 10)).collect();
                    for (r, truth) in c
                        .search_batch(&batch, ReadOptions::default(), params)
                        .into_iter()
                        .zip(truths)
                    {
                        sum += recall_at(10, &num_ids(&r?), truth);
                    }
                }
                sum
            } else if a.threads <= 1 {
                queries
                    .iter()
                    .zip(&gt)
                    .take(nq)
                    .map(one)
                    .sum::<Result<f64>>()?
            } else {
                queries[..nq]
                    .par_iter()
                    .zip(&gt[..nq])
                    .with_max_len(1)
                    .map(one)
                    .sum::<Result<f64>>()?
            };
            Ok((recall / nq as f64, nq as f64 / t.elapsed().as_secs_f64()))
        })?;
        println!(
            "{}",
            serde_json::json!({"system": system, "nprobe": params.nprobe, "target_recall": point.target_recall, "refine": params.refine, "recall10": recall, "qps": qps, "threads": a.threads.max(1), "batch": a.batch.max(1)})
        );
    }
    Ok(())
}

/// The numeric ids of `hits`, in order.
fn num_ids(hits: &[quiver_storage::Hit]) -> Vec<u64> {
    hits.iter()
        .filter_map(|h| match h.id {
            PointId::Num(n) => Some(n),
            _ => None,
        })
        .collect()
}
