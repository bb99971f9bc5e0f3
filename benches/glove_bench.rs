//! End-to-end exact-search benchmark over gRPC on GloVe-50 (see benches/README.md): loads the
//! base vectors into a running quiverd through the client (UpsertStream), then measures
//! queries/s one request at a time (latency-bound, like a service) and with SearchBatch
//! (throughput), and recall@10 against the exact ground truth.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use quiver_benches::{read_fvecs, read_ivecs, recall_at};
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
    /// Rounds of the query loop (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut c = Client::connect(&a.addr).await?;
    let queries = read_fvecs(&a.data.join("query.fvecs"))?;
    let gt = read_ivecs(&a.data.join("gt100.ivecs"))?;
    let nq = a.queries.min(queries.len());
    if !a.skip_load {
        let base = read_fvecs(&a.data.join("base.fvecs"))?;
        let _ = c
            .collections
            .delete(pb::DeleteCollectionRequest {
                name: a.collection.clone(),
            })
            .await;
        c.create_collection(&a.collection, base[0].len() as u32, pb::Metric::Cosine)
            .await?;
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
    let mut single = Vec::new();
    let mut batched = Vec::new();
    let mut recall = 0.0;
    for _ in 0..a.rounds {
        let t = Instant::now();
        let mut r = 0.0;
        for (q, truth) in queries.iter().zip(&gt).take(nq) {
            let hits = c.search(&a.collection, q.clone(), 10, false).await?;
            let ids: Vec<u64> = hits
                .iter()
                .filter_map(|h| match h.id.as_ref()?.kind.as_ref()? {
                    pb::point_id::Kind::Num(n) => Some(*n),
                    pb::point_id::Kind::Str(_) => None,
                })
                .collect();
            r += recall_at(10, &ids, truth);
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
    println!(
        "quiver exact over gRPC: {nq} queries, recall@10 {recall:.4}, single-request QPS {:.1}, SearchBatch(100) QPS {:.1} (median of {} rounds)",
        median(single.clone()),
        median(batched.clone()),
        a.rounds
    );
    println!(
        "{}",
        serde_json::json!({"system": "quiver-exact-grpc", "queries": nq, "recall10": recall, "qps_single": median(single), "qps_batch": median(batched)})
    );
    Ok(())
}
