//! Filtered search on GloVe-50, in-process and single-threaded: synthetic payloads (the same as
//! `peers/glove_payloads.py`: a keyword with 1,000 values, a uniform integer 0..999, a tag
//! array), four filters of selectivity 0.1%, 1%, 10% and 50%, exact filtered ground truth, and
//! recall@10 / QPS per (filter, nprobe, refine), unfiltered included. One JSON line each.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use quiver_benches::{Loaded, parse_sweep, read_fvecs, read_queries, recall_at};
use quiver_storage::filter::{FieldType, parse};
use quiver_storage::{IndexConfig, IndexKind, PointId, ReadOptions, SearchParams};
use rayon::prelude::*;

#[derive(Debug, Parser)]
struct Args {
    /// Directory with base.fvecs, query.fvecs, gt100.ivecs (make_glove50.py).
    #[arg(long)]
    data: PathBuf,
    /// Queries per configuration.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// IVF lists (one segment holds the whole set).
    #[arg(long, default_value_t = 1024)]
    nlist: u32,
    /// nprobe:refine configurations (the filtered planner scales nprobe by 1 / selectivity).
    #[arg(long, default_value = "32:4,48:4,64:4,96:4")]
    sweep: String,
}

/// The payload columns of row `i`, as `glove_payloads.py` computes them.
fn columns(i: u64) -> (u64, u64, u64, u64) {
    let h = i.wrapping_mul(2_654_435_761) % (1 << 32);
    (h % 1000, (h >> 10) % 1000, (h >> 20) % 10, (h >> 24) % 10)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let base = read_fvecs(&a.data.join("base.fvecs"))?;
    let (queries, gt) = read_queries(&a.data, a.queries)?;
    let loaded = Loaded::new(
        &base,
        quiver_storage::Metric::Cosine,
        IndexConfig {
            kind: IndexKind::IvfPq,
            nlist: Some(a.nlist),
            pq_m: None,
            pq_bits: Some(4),
        },
        [
            ("kw".to_owned(), FieldType::Keyword),
            ("num".to_owned(), FieldType::Integer),
            ("tags".to_owned(), FieldType::KeywordArray),
        ]
        .into(),
        |n| {
            let (kw, num, t0, t1) = columns(n);
            Some(
                serde_json::json!({"kw": format!("k{kw}"), "num": num, "tags": [format!("t{t0}"), format!("t{t1}")]})
                    .to_string()
                    .into_bytes(),
            )
        },
    )?;
    let c = &loaded.collection;
    eprintln!(
        "built in {:.1}s: {}",
        loaded.flush_seconds + loaded.build_seconds,
        c.stats().index_state
    );
    type Pass = Box<dyn Fn(u64) -> bool + Sync>;
    let filters: [(&str, &str, Pass); 4] = [
        ("0.1%", r#"kw = "k42""#, Box::new(|n| columns(n).0 == 42)),
        ("1%", "num < 10", Box::new(|n| columns(n).1 < 10)),
        ("10%", "num < 100", Box::new(|n| columns(n).1 < 100)),
        ("50%", "num < 500", Box::new(|n| columns(n).1 < 500)),
    ];
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let sweep = parse_sweep(&a.sweep)?;
    let run = |name: &str,
               text: Option<&str>,
               selectivity: f64,
               truth: &[Vec<u32>]|
     -> Result<()> {
        let filter = text.map(parse).transpose()?;
        // Cost of evaluating the filter alone (the allowed-rows bitmaps), as Count does it.
        let eval_us = match &filter {
            Some(f) => {
                let t = Instant::now();
                for _ in 0..200 {
                    c.count_filtered(f)?;
                }
                t.elapsed().as_secs_f64() * 1e6 / 200.0
            }
            None => 0.0,
        };
        for p in &sweep {
            let params = SearchParams {
                exact: false,
                nprobe: p.nprobe.map(|n| n as usize),
                refine: Some(p.refine as usize),
                target_recall_bp: None,
                deadline: None,
                response_budget: 0,
            };
            let (recall, qps) = single.install(|| -> Result<(f64, f64)> {
                let t = Instant::now();
                let mut recall = 0.0;
                for (q, want) in queries.iter().zip(truth) {
                    let hits = c
                        .search_batch_filtered(
                            &[(q, 10)],
                            ReadOptions::default(),
                            params,
                            filter.as_ref(),
                        )
                        .pop()
                        .expect("one result")?;
                    let ids: Vec<u64> = hits
                        .iter()
                        .filter_map(|h| match h.id {
                            PointId::Num(n) => Some(n),
                            PointId::Str(_) => None,
                        })
                        .collect();
                    recall += recall_at(10, &ids, want);
                }
                Ok((
                    recall / queries.len() as f64,
                    queries.len() as f64 / t.elapsed().as_secs_f64(),
                ))
            })?;
            println!(
                "{}",
                serde_json::json!({"system": "quiver-ivfpq4", "filter": name, "selectivity": selectivity, "nprobe": p.nprobe, "refine": p.refine, "recall10": recall, "qps": qps, "filter_eval_us": eval_us, "threads": 1})
            );
        }
        Ok(())
    };
    run("none", None, 1.0, &gt)?;
    for (name, text, pass) in &filters {
        let allowed: Vec<u32> = (0..base.len() as u64)
            .filter(|&n| pass(n))
            .map(|n| n as u32)
            .collect();
        // Exact filtered ground truth (vectors are unit-norm: cosine order = inner product).
        let truth: Vec<Vec<u32>> = queries
            .par_iter()
            .map(|q| {
                let mut best: Vec<(f32, u32)> = allowed
                    .iter()
                    .map(|&r| {
                        (
                            -q.iter()
                                .zip(&base[r as usize])
                                .map(|(x, y)| x * y)
                                .sum::<f32>(),
                            r,
                        )
                    })
                    .collect();
                let k = best.len().min(10);
                if k > 0 {
                    best.select_nth_unstable_by(k - 1, |x, y| x.0.total_cmp(&y.0));
                }
                best.truncate(k);
                best.sort_by(|x, y| x.0.total_cmp(&y.0));
                best.into_iter().map(|x| x.1).collect()
            })
            .collect();
        run(
            name,
            Some(text),
            allowed.len() as f64 / base.len() as f64,
            &truth,
        )?;
    }
    Ok(())
}
