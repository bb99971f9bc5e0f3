//! Soak: mixed search/upsert traffic on loopback against one quiverd for a fixed time at a
//! fraction of the measured maximum rate. Prints one JSON line per 10 s window (QPS, p50/p99,
//! errors, server RSS) and a summary, so memory growth and errors over time are visible.
//!
//! With `--compaction`, measures instead what a compaction costs the searches running beside
//! it: search-only traffic at `load` × the maximum, before, during and after one compaction of
//! an IVF-PQ collection whose segments hold `--overwrite-pct` overwritten rows, within the
//! background budget given by `--bg-threads` and `--io-mb`.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use quiver_client::{Client, num_id, pb};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// The quiverd binary.
    #[arg(long)]
    quiverd: PathBuf,
    /// GloVe-50 directory (base.fvecs, query.fvecs).
    #[arg(long)]
    data: PathBuf,
    /// Points loaded before the run.
    #[arg(long, default_value_t = 100_000)]
    points: usize,
    /// Minutes of the soak.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Fraction of the measured maximum rate to drive.
    #[arg(long, default_value_t = 0.8)]
    load: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Percentage of operations that are upserts (of 10 points); the rest are searches (k=10).
    #[arg(long, default_value_t = 10)]
    upsert_pct: u64,
    /// Upserts cycle through ids 0..id_space: 200,000 (twice the loaded points) lets the live
    /// set double during the run; the loaded count keeps it constant (pure overwrites).
    #[arg(long, default_value_t = 200_000)]
    id_space: u64,
    /// Measure search latency during a compaction instead of soaking.
    #[arg(long)]
    compaction: bool,
    /// Compaction mode: percentage of the loaded points overwritten before the compaction.
    #[arg(long, default_value_t = 50)]
    overwrite_pct: u64,
    /// Compaction mode: `[compaction] threads` of the server (0 = its default).
    #[arg(long, default_value_t = 0)]
    bg_threads: u32,
    /// Compaction mode: `[compaction] io_mb_per_sec` of the server (0 = unlimited).
    #[arg(long, default_value_t = 64.0)]
    io_mb: f64,
    /// Compaction mode: seconds of each phase without compaction.
    #[arg(long, default_value_t = 20)]
    phase_secs: u64,
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Shared {
    id_space: u64,
    base: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    lat_us: std::sync::Mutex<Vec<u64>>,
    errors: AtomicU64,
    next_id: AtomicU64,
    stop: AtomicBool,
}

async fn one_op(c: &mut Client, s: &Shared, i: u64, upsert_pct: u64) -> Result<()> {
    if i % 100 < upsert_pct {
        let id = s.next_id.fetch_add(10, Ordering::Relaxed);
        let points = (id..id + 10)
            .map(|j| pb::Point {
                id: Some(num_id(j % s.id_space)),
                vector: s.base[(j as usize) % s.base.len()].clone(),
                payload_json: None,
            })
            .collect();
        c.points
            .upsert(pb::UpsertRequest {
                collection: "soak".into(),
                points,
                ..Default::default()
            })
            .await?;
    } else {
        c.search
            .search(pb::SearchRequest {
                collection: "soak".into(),
                vector: s.queries[(i as usize) % s.queries.len()].clone(),
                k: 10,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Runs `clients` workers; each paces itself to `per_client_rate` ops/s (0 = as fast as it can).
async fn drive(
    addr: &str,
    s: &Arc<Shared>,
    clients: usize,
    per_client_rate: f64,
    upsert_pct: u64,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for w in 0..clients {
        let mut c = Client::connect(addr).await?;
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut i = w as u64 * 1_000_000_007;
            let mut n = 0u64;
            while !s.stop.load(Ordering::Acquire) {
                if per_client_rate > 0.0 {
                    let due = started + Duration::from_secs_f64(n as f64 / per_client_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                n += 1;
                i += 1;
                let t = Instant::now();
                match one_op(&mut c, &s, i, upsert_pct).await {
                    Ok(()) => s
                        .lat_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t.elapsed().as_micros() as u64),
                    Err(_) => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

/// Upserts point `j` with vector `vector(j)` for every `j` of `ids`, 1,000 per request.
async fn upsert_rows(
    c: &mut Client,
    ids: &[usize],
    vector: impl Fn(usize) -> Vec<f32>,
) -> Result<()> {
    for chunk in ids.chunks(1000) {
        let points = chunk
            .iter()
            .map(|&j| pb::Point {
                id: Some(num_id(j as u64)),
                vector: vector(j),
                payload_json: None,
            })
            .collect();
        c.points
            .upsert(pb::UpsertRequest {
                collection: "soak".into(),
                points,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

impl Shared {
    fn new(id_space: u64, base: Vec<Vec<f32>>, queries: Vec<Vec<f32>>) -> Arc<Shared> {
        Arc::new(Shared {
            id_space: id_space.max(1),
            base,
            queries,
            lat_us: Default::default(),
            errors: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }
}

/// The closed-loop maximum rate (ops/s) over `secs` seconds after a 3-s warm-up; the
/// workers are stopped and the shared state left ready for the next drive.
async fn measure_max(
    addr: &str,
    s: &Arc<Shared>,
    clients: usize,
    upsert_pct: u64,
    secs: u64,
) -> Result<f64> {
    let tasks = drive(addr, s, clients, 0.0, upsert_pct).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    take_window(s);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let max = take_window(s).len() as f64 / t.elapsed().as_secs_f64();
    s.stop.store(true, Ordering::Release);
    for t in tasks {
        t.await?;
    }
    s.stop.store(false, Ordering::Release);
    Ok(max)
}

fn take_window(s: &Shared) -> Vec<u64> {
    let mut v = std::mem::take(&mut *s.lat_us.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_unstable();
    v
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let base = quiver_benches::read_fvecs(&a.data.join("base.fvecs"))?;
    let queries = quiver_benches::read_fvecs(&a.data.join("query.fvecs"))?;
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(&a.quiverd);
    cmd.args([
        "--data-dir",
        dir.path().to_str().context("path")?,
        "--listen",
        "127.0.0.1:0",
    ]);
    if a.compaction {
        cmd.env("QUIVER__COMPACTION__ENABLED", "false")
            .env("QUIVER__COMPACTION__THREADS", a.bg_threads.to_string())
            .env("QUIVER__COMPACTION__IO_MB_PER_SEC", a.io_mb.to_string());
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
        &mut line,
    )?;
    let addr = format!(
        "http://{}",
        line.trim().trim_start_matches("quiverd listening on ")
    );
    let mut c = loop {
        if let Ok(mut c) = Client::connect(&addr).await
            && c.collections
                .list(pb::ListCollectionsRequest {})
                .await
                .is_ok()
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if a.compaction {
        c.collections
            .create(pb::CreateCollectionRequest {
                name: "soak".into(),
                dim: 50,
                metric: pb::Metric::Cosine as i32,
                index: Some(pb::IndexParams {
                    kind: pb::IndexKind::IvfPq as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
    } else {
        c.create_collection("soak", 50, pb::Metric::Cosine).await?;
    }
    let loaded: Vec<usize> = (0..a.points.min(base.len())).collect();
    upsert_rows(&mut c, &loaded, |j| base[j].clone()).await?;
    if a.compaction {
        let r = compaction_phases(&a, &addr, &mut c, base, queries).await;
        let _ = child.kill();
        let _ = child.wait();
        return r;
    }
    let s = Shared::new(a.id_space, base, queries);

    // 1. The maximum: closed loop for 15 s.
    let max = measure_max(&addr, &s, a.clients, a.upsert_pct, 15).await?;
    let target = max * a.load;
    println!(
        "{}",
        json!({"phase": "max", "qps": max, "target_qps": target, "clients": a.clients, "upsert_pct": a.upsert_pct})
    );

    // 2. The soak at `load` × max, paced.
    s.errors.store(0, Ordering::Relaxed);
    let tasks = drive(
        &addr,
        &s,
        a.clients,
        target / a.clients as f64,
        a.upsert_pct,
    )
    .await?;
    let started = Instant::now();
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let (mut all_ops, mut rss_first, mut rss_max, mut rss_last) = (0usize, 0.0, 0.0f64, 0.0);
    let mut window = Instant::now();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let v = take_window(&s);
        let secs = window.elapsed().as_secs_f64();
        window = Instant::now();
        let rss = rss_mb(pid);
        if rss_first == 0.0 {
            rss_first = rss;
        }
        rss_max = rss_max.max(rss);
        rss_last = rss;
        all_ops += v.len();
        println!(
            "{}",
            json!({"phase": "soak", "t_s": started.elapsed().as_secs(), "qps": v.len() as f64 / secs,
                   "p50_ms": pct(&v, 0.5), "p99_ms": pct(&v, 0.99), "errors": s.errors.load(Ordering::Relaxed), "rss_mb": rss})
        );
    }
    s.stop.store(true, Ordering::Release);
    for t in tasks {
        t.await?;
    }
    println!(
        "{}",
        json!({"phase": "summary", "ops": all_ops, "qps": all_ops as f64 / started.elapsed().as_secs_f64(),
               "errors": s.errors.load(Ordering::Relaxed), "rss_first_mb": rss_first, "rss_max_mb": rss_max, "rss_last_mb": rss_last})
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// Search-only traffic at `load` × max before, during and after one compaction.
async fn compaction_phases(
    a: &Args,
    addr: &str,
    c: &mut Client,
    base: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
) -> Result<()> {
    let n = a.points.min(base.len());
    // Overwrite a spread of the points (every k-th), so every segment has dead rows.
    let every = (100 / a.overwrite_pct.clamp(1, 100)) as usize;
    let ids: Vec<usize> = (0..n).step_by(every).collect();
    upsert_rows(c, &ids, |j| base[(j + 1) % n].clone()).await?;
    c.collections
        .flush(pb::FlushCollectionRequest {
            name: "soak".into(),
        })
        .await?;
    // Wait for the indexes of the sealed segments.
    loop {
        let info = c
            .collections
            .get(pb::GetCollectionRequest {
                name: "soak".into(),
            })
            .await?
            .into_inner();
        let st = info.stats.unwrap_or_default();
        if st.index_state.contains(" ready") {
            println!(
                "{}",
                json!({"phase": "loaded", "points": st.points, "dead_points": st.dead_points, "segments": st.sealed_segments, "index": st.index_state})
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = Shared::new(a.id_space, base, queries);
    let max = measure_max(addr, &s, a.clients, 0, 10).await?;
    let target = max * a.load;
    println!(
        "{}",
        json!({"phase": "max", "qps": max, "target_qps": target, "clients": a.clients})
    );
    let tasks = drive(addr, &s, a.clients, target / a.clients as f64, 0).await?;
    let report = |phase: &str, v: &[u64], secs: f64, extra: serde_json::Value| {
        let mut o = json!({"phase": phase, "qps": v.len() as f64 / secs, "p50_ms": pct(v, 0.5),
            "p99_ms": pct(v, 0.99), "max_ms": pct(v, 1.0), "errors": s.errors.load(Ordering::Relaxed),
            "bg_threads": a.bg_threads, "io_mb": a.io_mb});
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        println!("{o}");
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    take_window(&s);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.phase_secs)).await;
    report(
        "before",
        &take_window(&s),
        t.elapsed().as_secs_f64(),
        json!({}),
    );
    let t = Instant::now();
    let r = c
        .collections
        .compact(pb::CompactCollectionRequest {
            name: "soak".into(),
            force: false,
        })
        .await?
        .into_inner();
    report(
        "during",
        &take_window(&s),
        t.elapsed().as_secs_f64(),
        json!({"compaction_s": r.seconds, "compactions": r.compactions, "rows_reclaimed": r.rows_reclaimed,
               "segments_before": r.segments_before, "segments_after": r.segments_after}),
    );
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.phase_secs)).await;
    report(
        "after",
        &take_window(&s),
        t.elapsed().as_secs_f64(),
        json!({}),
    );
    s.stop.store(true, Ordering::Release);
    for t in tasks {
        t.await?;
    }
    Ok(())
}
