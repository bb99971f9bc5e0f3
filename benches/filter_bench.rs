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
    /// Only these filters (by name: none, 0.1%, 1%, 10%, 50%); empty: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Timed rounds, each over every selected (filter, setting) in turn; the median is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Before the rounds, measure this many queries of query.fvecs that are not measured
    /// (`quiver_benches::warm_queries`) with the recall audit, each with the selected filters
    /// in turn (`Collection::audit_recall_filtered`; `audit_recall` for none), as `quiverd`'s
    /// sampled audit measures the searches it serves: `target_recall` then widens filtered
    /// searches as measured rather than by 1 / √f.
    #[arg(long, default_value_t = 0)]
    warm_queries: usize,
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
    let wanted = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);
    // Every selected filter with its exact filtered ground truth.
    // (name, filter text, share of rows allowed, exact filtered top-10 per query)
    type Case<'a> = (&'a str, Option<&'a str>, f64, Vec<Vec<u32>>);
    let mut cases: Vec<Case> = Vec::new();
    if wanted("none") {
        cases.push(("none", None, 1.0, gt.clone()));
    }
    for (name, text, pass) in &filters {
        if !wanted(name) {
            continue;
        }
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
        let share = allowed.len() as f64 / base.len() as f64;
        cases.push((name, Some(text), share, truth));
    }
    // One timed pass of the queries: (recall@10, QPS).
    let measure = |filter: Option<&quiver_storage::filter::Filter>,
                   params: SearchParams,
                   truth: &[Vec<u32>]|
     -> Result<(f64, f64)> {
        single.install(|| {
            let t = Instant::now();
            let mut recall = 0.0;
            for (q, want) in queries.iter().zip(truth) {
                let hits = c
                    .search_batch_filtered(&[(q, 10)], ReadOptions::default(), params, filter)
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
        })
    };
    let parsed: Vec<Option<quiver_storage::filter::Filter>> = cases
        .iter()
        .map(|c| c.1.map(parse).transpose())
        .collect::<Result<_, _>>()?;
    if a.warm_queries > 0 {
        let warm = quiver_benches::warm_queries(&a.data, queries.len(), a.warm_queries)?;
        let t = Instant::now();
        for (i, q) in warm.iter().enumerate() {
            match &parsed[i % parsed.len()] {
                Some(f) => c.audit_recall_filtered(q, f)?,
                None => c.audit_recall(q)?,
            };
        }
        eprintln!(
            "warmed: {} served queries measured in {:.1}s: {}",
            warm.len(),
            t.elapsed().as_secs_f64(),
            c.stats().index_state
        );
    }
    // Rounds interleave every (filter, setting): on a shared machine a slow spell then lowers
    // every configuration's rounds alike instead of one configuration's only, and each reports
    // its median round.
    let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); cases.len() * sweep.len()];
    for _ in 0..a.rounds.max(1) {
        for (ci, filter) in parsed.iter().enumerate() {
            // Cost of evaluating the filter alone (the allowed-rows bitmaps), as Count does it.
            let eval_us = match filter {
                Some(f) => {
                    let t = Instant::now();
                    for _ in 0..200 {
                        c.count_filtered(f)?;
                    }
                    t.elapsed().as_secs_f64() * 1e6 / 200.0
                }
                None => 0.0,
            };
            for (pi, p) in sweep.iter().enumerate() {
                let params = p.params();
                let (recall, qps) = measure(filter.as_ref(), params, &cases[ci].3)?;
                runs[ci * sweep.len() + pi].push((qps, recall, eval_us));
            }
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    for (ci, (name, _, selectivity, _)) in cases.iter().enumerate() {
        for (pi, p) in sweep.iter().enumerate() {
            let r = &runs[ci * sweep.len() + pi];
            let qps: Vec<f64> = r.iter().map(|x| x.0).collect();
            // A target-recall setting may probe differently from round to round (the recall
            // audit updates the served curve): the lowest round's recall is reported.
            let recall = r.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
            println!(
                "{}",
                serde_json::json!({"system": "quiver-ivfpq4", "filter": name, "selectivity": selectivity,
                    "nprobe": p.nprobe, "target_recall": p.target_recall, "refine": p.refine, "recall10": recall,
                    "qps": median(qps.clone()), "qps_rounds": qps,
                    "filter_eval_us": median(r.iter().map(|x| x.2).collect()), "threads": 1})
            );
        }
    }
    Ok(())
}
