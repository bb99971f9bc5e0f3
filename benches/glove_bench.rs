//! End-to-end search benchmark over gRPC on GloVe-50 (see benches/README.md): loads the base
//! vectors into a running quiverd through the client (UpsertStream) into a flat collection,
//! one created with the defaults (`--defaults`), or one IVF-PQ segment (`--ivf-nlist`), then
//! measures queries/s one request at a time (latency-bound, like a service) and with
//! SearchBatch (throughput), and recall@10 against the exact ground truth.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use quiver_benches::{parse_sweep, read_fvecs, read_queries, recall_at};
use quiver_client::{Client, num_id, pb};

#[derive(Debug, Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = quiver_client::DEFAULT_ADDR)]
    addr: String,
    /// Directory with base.fvecs, query.fvecs, gt100.ivecs (make_glove50.py).
    #[arg(long)]
    data: PathBuf,
    /// Queries to run.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Collection name.
    #[arg(long, default_value = "glove50")]
    collection: String,
    /// Reuse an already loaded collection.
    #[arg(long)]
    skip_load: bool,
    /// Concurrent clients, comma-separated (e.g. 1,4,16): each opens its own connection and
    /// sends default searches one at a time; their summed throughput is reported per count.
    #[arg(long, default_value = "")]
    clients: String,
    /// Measure only the --clients counts: no sweep, no single/batch rounds (for profiling
    /// the concurrent phase alone).
    #[arg(long)]
    clients_only: bool,
    /// With --clients: also measure the same clients against a 16-point flat collection of the
    /// same dimension (`<collection>-floor`), whose search costs next to nothing: what the RPC
    /// path alone (transport, HTTP/2, protobuf, the engine's fixed costs) sustains.
    #[arg(long)]
    rpc_floor: bool,
    /// Rounds of the query loop (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Build an IVF-PQ index with this many lists (one segment holds the whole set) and
    /// sweep --sweep instead of measuring the exact scan.
    #[arg(long)]
    ivf_nlist: Option<u32>,
    /// Appended to the system name in the output (e.g. `-idlepoll` for a server setting).
    #[arg(long, default_value = "")]
    label: String,
    /// Bits per PQ code with --ivf-nlist: 4 (fast-scan) or 8.
    #[arg(long, default_value_t = 4)]
    pq_bits: u32,
    /// nprobe:refine (or rTARGET_RECALL:refine) configurations for --ivf-nlist, comma-separated.
    #[arg(long, default_value = "8:4,16:4,24:4,32:4,48:4,64:4,32:8,64:8")]
    sweep: String,
    /// Create the collection as a new user would (no index or segment settings), wait until
    /// the background merges and index builds settle, and measure searches with no search
    /// parameters. Without this or --ivf-nlist the collection is flat (exact scan).
    #[arg(long, conflicts_with = "ivf_nlist")]
    defaults: bool,
    /// Distance metric of the collection: cosine or l2.
    #[arg(long, default_value = "cosine")]
    metric: String,
    /// With --defaults: before measuring, send the N queries that follow the measured ones in
    /// query.fvecs (default searches, one at a time, over and over) until the server's recall
    /// audit has measured enough of them in every indexed segment for `target_recall` to use
    /// the served queries' curve. The measured queries stay unseen by the audit's curve.
    #[arg(long, default_value_t = 0)]
    warm_queries: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

// One client issuing one request at a time: a current-thread runtime avoids cross-thread
// wake-ups on the client side (measured: nprobe 48 over gRPC 1,734 -> 1,896 QPS).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut c = Client::connect(&a.addr).await?;
    let (queries, gt) = read_queries(&a.data, a.queries)?;
    let nq = queries.len();
    if !a.skip_load {
        let base = read_fvecs(&a.data.join("base.fvecs"))?;
        let _ = c
            .collections
            .delete(pb::DeleteCollectionRequest {
                name: a.collection.clone(),
            })
            .await;
        let index = match (a.ivf_nlist, a.defaults) {
            (Some(nlist), _) => Some(pb::IndexParams {
                kind: pb::IndexKind::IvfPq as i32,
                nlist,
                pq_bits: a.pq_bits,
                ..Default::default()
            }),
            (None, true) => None,
            (None, false) => Some(pb::IndexParams {
                kind: pb::IndexKind::Flat as i32,
                ..Default::default()
            }),
        };
        let metric = match a.metric.as_str() {
            "cosine" => pb::Metric::Cosine,
            "l2" => pb::Metric::L2,
            other => anyhow::bail!("--metric {other}: cosine or l2"),
        };
        let create = pb::CreateCollectionRequest {
            name: a.collection.clone(),
            dim: base[0].len() as u32,
            metric: metric as i32,
            // One segment holds the whole set, so nlist is the index's nlist (as in FAISS).
            segment_max_rows: a.ivf_nlist.map(|_| base.len() as u32 + 1),
            index,
            schema: Vec::new(),
        };
        c.collections.create(create).await?;
        let t = Instant::now();
        let batches: Vec<pb::UpsertRequest> = base
            .chunks(2000)
            .enumerate()
            .map(|(b, chunk)| pb::UpsertRequest {
                collection: a.collection.clone(),
                batch_id: b as u64,
                points: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| pb::Point {
                        id: Some(num_id((b * 2000 + i) as u64)),
                        vector: v.clone(),
                        payload_json: None,
                    })
                    .collect(),
            })
            .collect();
        let mut acks = c
            .points
            .upsert_stream(tokio_stream::iter(batches))
            .await?
            .into_inner();
        let mut total = 0;
        while let Some(ack) = acks.message().await? {
            total = ack.total_upserted;
        }
        c.collections
            .flush(pb::FlushCollectionRequest {
                name: a.collection.clone(),
            })
            .await?;
        println!(
            "load: {total} vectors in {:.1}s ({:.0}/s, incl. flush)",
            t.elapsed().as_secs_f64(),
            total as f64 / t.elapsed().as_secs_f64()
        );
    }
    if a.ivf_nlist.is_some() {
        return ivf_sweep(&mut c, &a, &queries[..nq], &gt).await;
    }
    let system = if a.defaults {
        let state = settle(&mut c, &a.collection).await?;
        eprintln!("settled: {state}");
        println!(
            "{}",
            serde_json::json!({"system": format!("quiver-defaults-{}-grpc{}", a.metric, a.label), "event": "settled", "state": state})
        );
        if a.warm_queries > 0 {
            let warm_set = quiver_benches::warm_queries(&a.data, nq, a.warm_queries)?;
            let (secs, sent, state) = warm(&mut c, &a.collection, &warm_set).await?;
            eprintln!("warmed after {secs:.0}s and {sent} searches: {state}");
            println!(
                "{}",
                serde_json::json!({"system": format!("quiver-defaults-{}-grpc{}", a.metric, a.label), "event": "warmed", "seconds": secs, "searches": sent, "state": state})
            );
        }
        if !a.sweep.is_empty() && !a.clients_only {
            ivf_sweep(&mut c, &a, &queries[..nq], &gt).await?;
        }
        format!("quiver-defaults-{}-grpc{}", a.metric, a.label)
    } else {
        format!("quiver-exact-grpc{}", a.label)
    };
    let mut single = Vec::new();
    let mut batched = Vec::new();
    let mut recall = 0.0;
    for _ in 0..if a.clients_only { 0 } else { a.rounds } {
        let t = Instant::now();
        let mut r = 0.0;
        for (q, truth) in queries.iter().zip(&gt).take(nq) {
            let hits = c.search(&a.collection, q.clone(), 10, false).await?;
            r += recall_at(10, &ids(&hits), truth);
        }
        single.push(nq as f64 / t.elapsed().as_secs_f64());
        recall = r / nq as f64;
        let t = Instant::now();
        for chunk in queries[..nq].chunks(100) {
            let searches = chunk
                .iter()
                .map(|q| pb::SearchRequest {
                    collection: a.collection.clone(),
                    vector: q.clone(),
                    k: 10,
                    ..Default::default()
                })
                .collect();
            let res = c
                .search
                .search_batch(pb::SearchBatchRequest { searches })
                .await
                .context("search batch")?;
            anyhow::ensure!(res.into_inner().results.len() == chunk.len());
        }
        batched.push(nq as f64 / t.elapsed().as_secs_f64());
    }
    for n in a.clients.split(',').filter(|s| !s.is_empty()) {
        let n: usize = n.parse().context("--clients: counts like 1,4,16")?;
        let (qps, recall) = concurrent(&a, &a.collection, n, &queries[..nq], &gt).await?;
        println!(
            "{}",
            serde_json::json!({"system": system, "event": "clients", "clients": n, "queries": nq, "qps": qps, "recall10": recall})
        );
    }
    if a.rpc_floor {
        let floor = format!("{}-floor", a.collection);
        let _ = c
            .collections
            .delete(pb::DeleteCollectionRequest {
                name: floor.clone(),
            })
            .await;
        c.collections
            .create(pb::CreateCollectionRequest {
                name: floor.clone(),
                dim: queries[0].len() as u32,
                metric: pb::Metric::L2 as i32,
                index: Some(pb::IndexParams {
                    kind: pb::IndexKind::Flat as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        let points = queries
            .iter()
            .take(16)
            .enumerate()
            .map(|(i, v)| pb::Point {
                id: Some(num_id(i as u64)),
                vector: v.clone(),
                payload_json: None,
            })
            .collect();
        c.points
            .upsert(pb::UpsertRequest {
                collection: floor.clone(),
                batch_id: 0,
                points,
            })
            .await?;
        for n in a.clients.split(',').filter(|s| !s.is_empty()) {
            let n: usize = n.parse().context("--clients: counts like 1,4,16")?;
            let (qps, _) = concurrent(&a, &floor, n, &queries[..nq], &gt).await?;
            println!(
                "{}",
                serde_json::json!({"system": system, "event": "rpc-floor", "clients": n, "queries": nq, "qps": qps})
            );
        }
    }
    println!(
        "{system}: {nq} queries, recall@10 {recall:.4}, single-request QPS {:.1}, SearchBatch(100) QPS {:.1} (median of {} rounds)",
        median(single.clone()),
        median(batched.clone()),
        a.rounds
    );
    println!(
        "{}",
        serde_json::json!({"system": system, "queries": nq, "recall10": recall, "qps_single": median(single), "qps_batch": median(batched)})
    );
    Ok(())
}

/// `n` clients, each on its own connection, share the queries (client `i` takes every `n`-th
/// from `i`) and send them one at a time with default search parameters. Returns (summed QPS,
/// recall@10). Every client runs the whole list `rounds` times over, so each count does the
/// same total work.
async fn concurrent(
    a: &Args,
    collection: &str,
    n: usize,
    queries: &[Vec<f32>],
    gt: &[Vec<u32>],
) -> Result<(f64, f64)> {
    anyhow::ensure!(n > 0, "--clients: a count of 0");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Client::connect(&a.addr).await?);
    }
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let mine: Vec<(Vec<f32>, Vec<u32>)> = queries
            .iter()
            .zip(gt)
            .skip(i)
            .step_by(n)
            .map(|(q, g)| (q.clone(), g.clone()))
            .collect();
        let (collection, rounds) = (collection.to_string(), a.rounds);
        tasks.spawn(async move {
            let mut recall = 0.0;
            for _ in 0..rounds {
                for (q, truth) in &mine {
                    let hits = c.search(&collection, q.clone(), 10, false).await?;
                    recall += recall_at(10, &ids(&hits), truth);
                }
            }
            anyhow::Ok(recall)
        });
    }
    let mut recall = 0.0;
    while let Some(r) = tasks.join_next().await {
        recall += r??;
    }
    let total = (queries.len() * a.rounds) as f64;
    Ok((total / t.elapsed().as_secs_f64(), recall / total))
}

/// Waits until the collection's background work has settled: every sealed segment indexed,
/// no compaction running, and both so for 30 s (three compactor intervals), so merges are done.
/// Returns the final index state.
async fn settle(c: &mut Client, name: &str) -> Result<String> {
    let t = Instant::now();
    let (mut last, mut since) = ((u32::MAX, String::new()), Instant::now());
    loop {
        let info = c
            .collections
            .get(pb::GetCollectionRequest { name: name.into() })
            .await?
            .into_inner();
        let stats = info.stats.unwrap_or_default();
        let now = (stats.sealed_segments, stats.index_state.clone());
        if now != last {
            eprintln!(
                "{:.0}s: {} sealed segments: {}",
                t.elapsed().as_secs_f64(),
                stats.sealed_segments,
                stats.index_state
            );
            (last, since) = (now, Instant::now());
        }
        let ready = stats.index_state.starts_with("ivf_pq ready")
            && !stats.index_state.contains("compacting");
        if !ready {
            since = Instant::now();
        }
        if ready && since.elapsed().as_secs() >= 30 {
            return Ok(format!(
                "{} sealed segments after {:.0}s: {}",
                stats.sealed_segments,
                t.elapsed().as_secs_f64(),
                stats.index_state
            ));
        }
        anyhow::ensure!(
            t.elapsed().as_secs() < 3600,
            "not settled: {}",
            stats.index_state
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Sends `queries` as default searches, one at a time and over and over, until every indexed
/// segment answers `target_recall` from its served queries. Returns (seconds, searches sent,
/// index state).
async fn warm(c: &mut Client, name: &str, queries: &[Vec<f32>]) -> Result<(f64, usize, String)> {
    let t = Instant::now();
    let mut sent = 0;
    loop {
        for q in queries.iter().cycle().skip(sent % queries.len()).take(200) {
            c.search(name, q.clone(), 10, false).await?;
            sent += 1;
        }
        let state = c
            .collections
            .get(pb::GetCollectionRequest { name: name.into() })
            .await?
            .into_inner()
            .stats
            .map(|s| s.index_state)
            .unwrap_or_default();
        if state.contains("served curves in every indexed segment") {
            return Ok((t.elapsed().as_secs_f64(), sent, state));
        }
        anyhow::ensure!(
            t.elapsed().as_secs() < 1200,
            "not warmed after 20 minutes: {state}"
        );
    }
}

fn ids(hits: &[pb::ScoredPoint]) -> Vec<u64> {
    hits.iter()
        .filter_map(|h| match h.id.as_ref()?.kind.as_ref()? {
            pb::point_id::Kind::Num(n) => Some(*n),
            pb::point_id::Kind::Str(_) => None,
        })
        .collect()
}

/// Waits for the index, then measures one request at a time per (nprobe, refine).
async fn ivf_sweep(c: &mut Client, a: &Args, queries: &[Vec<f32>], gt: &[Vec<u32>]) -> Result<()> {
    let t = Instant::now();
    loop {
        let info = c
            .collections
            .get(pb::GetCollectionRequest {
                name: a.collection.clone(),
            })
            .await?
            .into_inner();
        let state = info.stats.map(|s| s.index_state).unwrap_or_default();
        if state.starts_with("ivf_pq ready") {
            eprintln!(
                "index ready after {:.1}s: {state}",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        anyhow::ensure!(t.elapsed().as_secs() < 1800, "index not ready: {state}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let system = if a.defaults {
        format!("quiver-defaults-{}-grpc{}", a.metric, a.label)
    } else {
        format!("quiver-ivfpq{}-grpc{}", a.pq_bits, a.label)
    };
    for point in parse_sweep(&a.sweep)? {
        let req = |q: &Vec<f32>| pb::SearchRequest {
            collection: a.collection.clone(),
            vector: q.clone(),
            k: 10,
            nprobe: point.nprobe,
            refine_factor: Some(point.refine),
            target_recall: point.target_recall,
            ..Default::default()
        };
        let t = Instant::now();
        let mut recall = 0.0;
        for (q, truth) in queries.iter().zip(gt) {
            let hits = c.search.search(req(q)).await?.into_inner().hits;
            recall += recall_at(10, &ids(&hits), truth);
        }
        let qps = queries.len() as f64 / t.elapsed().as_secs_f64();
        // The same searches as SearchBatch calls of 100.
        let t = Instant::now();
        let mut batch_recall = 0.0;
        for (chunk, truths) in queries.chunks(100).zip(gt.chunks(100)) {
            let searches = chunk.iter().map(req).collect();
            let res = c
                .search
                .search_batch(pb::SearchBatchRequest { searches })
                .await?
                .into_inner();
            for (r, truth) in res.results.iter().zip(truths) {
                batch_recall += recall_at(10, &ids(&r.hits), truth);
            }
        }
        let qps_batch = queries.len() as f64 / t.elapsed().as_secs_f64();
        let n = queries.len() as f64;
        println!(
            "{}",
            serde_json::json!({"system": system, "nprobe": point.nprobe, "target_recall": point.target_recall, "refine": point.refine, "recall10": recall / n, "qps": qps, "recall10_batch": batch_recall / n, "qps_batch": qps_batch, "threads": 1})
        );
    }
    Ok(())
}
