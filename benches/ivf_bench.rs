//! IVF-PQ on GloVe-50, in-process and single-threaded: build time, index size, and
//! recall@10 / QPS for a sweep of (nprobe, refine_factor). One JSON line per configuration.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Parser;
use quiver_benches::{parse_sweep, read_fvecs, read_queries, recall_at};
use quiver_storage::{
    CollectionConfig, Engine, EngineOptions, IndexConfig, IndexKind, Metric, PointId, PointWrite,
    ReadOptions, SearchParams,
};

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
    /// Configurations as nprobe:refine (or rTARGET_RECALL:refine), comma-separated.
    #[arg(long, default_value = "8:4,16:4,24:4,32:4,48:4,64:4,32:8,64:8")]
    sweep: String,
}

fn main() -> Result<()> {
    let a = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let base = read_fvecs(&a.data.join("base.fvecs"))?;
    let (queries, gt) = read_queries(&a.data, a.queries)?;
    let nq = queries.len();
    let dim = base[0].len();
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            fsync: quiver_storage::FsyncPolicy::Never,
        },
    )?;
    let config = CollectionConfig {
        name: "glove".into(),
        dim,
        metric: Metric::Cosine,
        index: IndexConfig {
            kind: IndexKind::IvfPq,
            nlist: Some(a.nlist),
            pq_m: a.pq_m,
            pq_bits: Some(a.pq_bits),
        },
        segment_max_rows: base.len() as u32 + 1,
        schema: Default::default(),
    };
    let c = engine.create_collection(config)?;
    for (b, chunk) in base.chunks(10_000).enumerate() {
        c.upsert(
            chunk
                .iter()
                .enumerate()
                .map(|(i, v)| PointWrite {
                    id: PointId::Num((b * 10_000 + i) as u64),
                    vector: v.clone(),
                    payload: None,
                })
                .collect(),
        )?;
    }
    let t = Instant::now();
    c.flush()?;
    let flushed = t.elapsed().as_secs_f64();
    while c.index_progress().0 < 1 {
        ensure!(
            t.elapsed() < Duration::from_secs(1800),
            "index build timed out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let build = t.elapsed().as_secs_f64();
    let stats = c.stats();
    eprintln!(
        "built: {} in {build:.1}s (flush {flushed:.1}s, then k-means + PQ + encode + calibration, 2 cores); segment files + index {} bytes, index {} bytes",
        stats.index_state, stats.bytes_on_disk, stats.index_bytes
    );
    let system = format!("quiver-ivfpq{}", a.pq_bits);
    println!(
        "{}",
        serde_json::json!({"system": system, "event": "build", "seconds": build - flushed, "flush_seconds": flushed, "index_bytes": stats.index_bytes, "bytes_on_disk": stats.bytes_on_disk, "nlist": a.nlist})
    );
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    for point in parse_sweep(&a.sweep)? {
        let params = SearchParams {
            exact: false,
            nprobe: point.nprobe.map(|n| n as usize),
            refine: Some(point.refine as usize),
            target_recall_bp: point
                .target_recall
                .map(|t| (f64::from(t) * 10_000.0).round() as u16),
        };
        let (recall, qps) = single.install(|| -> Result<(f64, f64)> {
            let t = Instant::now();
            let mut recall = 0.0;
            for (q, truth) in queries.iter().zip(&gt).take(nq) {
                let hits = c.search(q, 10, ReadOptions::default(), params)?;
                let ids: Vec<u64> = hits
                    .iter()
                    .filter_map(|h| {
                        if let PointId::Num(n) = h.id {
                            Some(n)
                        } else {
                            None
                        }
                    })
                    .collect();
                recall += recall_at(10, &ids, truth);
            }
            Ok((recall / nq as f64, nq as f64 / t.elapsed().as_secs_f64()))
        })?;
        println!(
            "{}",
            serde_json::json!({"system": system, "nprobe": params.nprobe, "target_recall": point.target_recall, "refine": params.refine, "recall10": recall, "qps": qps, "threads": 1})
        );
    }
    Ok(())
}
