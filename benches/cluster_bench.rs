//! Replication benchmark on loopback, all in one run on the same machine:
//!
//! 1. write throughput and latency of a single node and of a 3-node cluster (same clients,
//!    same GloVe batches);
//! 2. failover: `kill -9` of the leader while a client writes through a follower → time to the
//!    next acknowledged write (and to a new leader), repeated;
//! 3. catch-up: the whole GloVe set loaded into the cluster, one follower's data directory
//!    wiped → time until it has installed a snapshot and applied everything.
//!
//! Prints one JSON object per measurement, then a summary line.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use quiver_client::{Client, num_id, pb};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// The quiverd binary.
    #[arg(long)]
    quiverd: PathBuf,
    /// GloVe-50 directory (base.fvecs).
    #[arg(long)]
    data: PathBuf,
    /// Seconds of each write-throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Points per upsert.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Leader kills for the failover measurement.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Points loaded before wiping a replica (0 = the whole file).
    #[arg(long, default_value_t = 0)]
    catchup_points: usize,
}

struct Node {
    child: Option<Child>,
    addr: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    quiverd: PathBuf,
}

impl Node {
    fn start(quiverd: &Path, dir: &Path, env: &[(String, String)]) -> Result<Node> {
        let mut cmd = Command::new(quiverd);
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn quiverd")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let addr = line
            .trim()
            .strip_prefix("quiverd listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        Ok(Node {
            child: Some(child),
            addr: format!("http://{addr}"),
            dir: dir.to_path_buf(),
            env: env.to_vec(),
            quiverd: quiverd.to_path_buf(),
        })
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) -> Result<()> {
        self.kill9();
        *self = Node::start(&self.quiverd, &self.dir, &self.env)?;
        Ok(())
    }

    /// A client, once storage is open (a listed catalog).
    async fn client(&self) -> Result<Client> {
        let started = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(&self.addr).await
                && c.collections
                    .list(pb::ListCollectionsRequest {})
                    .await
                    .is_ok()
            {
                return Ok(c);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} not serving after 60 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn cluster(args: &Args, base: &Path, extra: &[(&str, &str)]) -> Result<Vec<Node>> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let mut env = vec![
            ("QUIVER__CLUSTER__NODE_ID".to_owned(), (i + 1).to_string()),
            (
                "QUIVER__CLUSTER__LISTEN".to_owned(),
                format!("127.0.0.1:{p}"),
            ),
            ("QUIVER__CLUSTER__PEERS".to_owned(), peers.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        nodes.push(Node::start(
            &args.quiverd,
            &base.join(format!("n{}", i + 1)),
            &env,
        )?);
    }
    leader(&nodes, Duration::from_secs(30)).await?;
    Ok(nodes)
}

async fn status(n: &Node) -> Result<pb::ClusterStatusResponse> {
    Ok(n.client()
        .await?
        .cluster
        .status(pb::ClusterStatusRequest {})
        .await?
        .into_inner())
}

/// Index of the live leader.
async fn leader(nodes: &[Node], limit: Duration) -> Result<usize> {
    let started = Instant::now();
    loop {
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(s) = status(n).await {
                let l = s.leader_id as usize;
                if l > 0 && nodes[l - 1].child.is_some() {
                    return Ok(l - 1);
                }
            }
        }
        if started.elapsed() > limit {
            bail!("no leader within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn points(base: &[Vec<f32>], from: usize, n: usize) -> Vec<pb::Point> {
    (from..from + n)
        .map(|i| pb::Point {
            id: Some(num_id(i as u64)),
            vector: base[i % base.len()].clone(),
            payload_json: None,
        })
        .collect()
}

async fn create(c: &mut Client, name: &str) -> Result<()> {
    c.create_collection(name, 50, pb::Metric::Cosine).await?;
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `clients` writers against `addrs` (round-robin) for `seconds`: (points/s, p50 ms, p99 ms).
async fn write_load(
    args: &Args,
    addrs: &[String],
    base: Arc<Vec<Vec<f32>>>,
) -> Result<serde_json::Value> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (addr, stop, base) = (
            addrs[w % addrs.len()].clone(),
            Arc::clone(&stop),
            Arc::clone(&base),
        );
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr).await?;
            let mut lat = Vec::new();
            let mut next = w * 10_000_000;
            while !stop.load(Ordering::Acquire) {
                let t = Instant::now();
                c.points
                    .upsert(pb::UpsertRequest {
                        collection: "w".into(),
                        points: points(&base, next, batch),
                        ..Default::default()
                    })
                    .await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                next += batch;
            }
            anyhow::Ok(lat)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Release);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(json!({
        "batches": lat.len(),
        "points_per_s": (lat.len() * args.batch) as f64 / secs,
        "batches_per_s": lat.len() as f64 / secs,
        "p50_ms": pct(&lat, 0.5),
        "p99_ms": pct(&lat, 0.99),
    }))
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let base = Arc::new(quiver_benches::read_fvecs(&args.data.join("base.fvecs"))?);
    let tmp = tempfile::tempdir()?;

    // 1. Write throughput: single node, then 3 nodes (through the leader, then a follower).
    let single = {
        let n = Node::start(&args.quiverd, &tmp.path().join("single"), &[])?;
        create(&mut n.client().await?, "w").await?;
        let r = write_load(&args, std::slice::from_ref(&n.addr), Arc::clone(&base)).await?;
        println!(
            "{}",
            json!({"phase": "write", "setup": "single node", "clients": args.clients, "batch": args.batch, "result": r})
        );
        r
    };
    let nodes = cluster(&args, &tmp.path().join("c1"), &[]).await?;
    let l = leader(&nodes, Duration::from_secs(10)).await?;
    create(&mut nodes[l].client().await?, "w").await?;
    let three = write_load(
        &args,
        std::slice::from_ref(&nodes[l].addr),
        Arc::clone(&base),
    )
    .await?;
    println!(
        "{}",
        json!({"phase": "write", "setup": "3 nodes, clients on the leader", "clients": args.clients, "batch": args.batch, "result": three})
    );
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != l)
        .map(|i| nodes[i].addr.clone())
        .collect();
    let fwd = write_load(&args, &followers, Arc::clone(&base)).await?;
    println!(
        "{}",
        json!({"phase": "write", "setup": "3 nodes, clients on the followers (forwarded)", "clients": args.clients, "batch": args.batch, "result": fwd})
    );

    // 2. Failover: a client writes through a follower; the leader is killed.
    let mut nodes = nodes;
    let mut failovers = Vec::new();
    for k in 0..args.kills {
        let l = leader(&nodes, Duration::from_secs(30)).await?;
        let f = (l + 1) % 3;
        let mut c = nodes[f].client().await?;
        // Writes flow before the kill.
        for i in 0..20 {
            c.points
                .upsert(pb::UpsertRequest {
                    collection: "w".into(),
                    points: points(&base, 50_000_000 + k * 1000 + i, 1),
                    ..Default::default()
                })
                .await?;
        }
        nodes[l].kill9();
        let killed = Instant::now();
        let mut i = 0;
        loop {
            i += 1;
            let r = c
                .points
                .upsert(pb::UpsertRequest {
                    collection: "w".into(),
                    points: points(&base, 60_000_000 + k * 1000 + i, 1),
                    ..Default::default()
                })
                .await;
            if r.is_ok() {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no write within 60 s of the kill");
            }
        }
        let first_write = killed.elapsed();
        let new_leader = leader(&nodes, Duration::from_secs(30)).await?;
        let ms = first_write.as_secs_f64() * 1000.0;
        println!(
            "{}",
            json!({"phase": "failover", "kill": k + 1, "old_leader": l + 1, "new_leader": new_leader + 1, "first_write_ms": ms})
        );
        failovers.push(ms);
        nodes[l].restart()?;
        // Let it catch up before the next round.
        let started = Instant::now();
        loop {
            let s = status(&nodes[new_leader]).await?;
            if s.nodes
                .iter()
                .all(|n| n.error.is_empty() && n.applied_index >= s.commit_index)
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("restarted node did not catch up");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(nodes);
    failovers.sort_by(f64::total_cmp);

    // 3. Catch-up of a wiped replica holding the GloVe collection, by snapshot.
    let total = if args.catchup_points == 0 {
        base.len()
    } else {
        args.catchup_points.min(base.len())
    };
    // A few snapshots during the load (one log entry per 1000-point batch).
    let every = (total / 1000 / 4).max(5).to_string();
    let mut nodes = cluster(
        &args,
        &tmp.path().join("c2"),
        &[
            ("QUIVER__CLUSTER__SNAPSHOT_EVERY", every.as_str()),
            ("QUIVER__CLUSTER__KEEP_LOGS", "2"),
        ],
    )
    .await?;
    let l = leader(&nodes, Duration::from_secs(10)).await?;
    let mut c = nodes[l].client().await?;
    create(&mut c, "w").await?;
    let load_started = Instant::now();
    for from in (0..total).step_by(1000) {
        let n = 1000.min(total - from);
        c.points
            .upsert(pb::UpsertRequest {
                collection: "w".into(),
                points: points(&base, from, n),
                ..Default::default()
            })
            .await?;
    }
    let load_s = load_started.elapsed().as_secs_f64();
    let victim = (l + 1) % 3;
    // Wait until the leader's log is compacted behind a snapshot, so the wiped node needs one.
    let started = Instant::now();
    loop {
        let s = status(&nodes[l]).await?;
        let me = s
            .nodes
            .iter()
            .find(|n| n.id == l as u64 + 1)
            .context("leader in status")?;
        if me.purged_index > 0 && s.nodes.iter().all(|n| n.applied_index >= s.commit_index) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("no compaction");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replica_bytes = dir_bytes(&nodes[victim].dir);
    nodes[victim].kill9();
    std::fs::remove_dir_all(&nodes[victim].dir)?;
    let wiped = Instant::now();
    nodes[victim].restart()?;
    let commit = status(&nodes[l]).await?.commit_index;
    loop {
        let s = status(&nodes[l]).await?;
        let v = s
            .nodes
            .iter()
            .find(|n| n.id == victim as u64 + 1)
            .context("victim")?;
        if v.error.is_empty() && v.applied_index >= commit && v.snapshot_index > 0 {
            break;
        }
        if wiped.elapsed() > Duration::from_secs(600) {
            bail!("wiped replica did not catch up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catchup_s = wiped.elapsed().as_secs_f64();
    let count = nodes[victim].client().await?.count("w").await?;
    anyhow::ensure!(
        count == total as u64,
        "wiped replica has {count} points, expected {total}"
    );
    println!(
        "{}",
        json!({"phase": "catch-up", "points": total, "replica_bytes": replica_bytes, "load_s": load_s, "catchup_s": catchup_s, "count_ok": true})
    );

    let ratio = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        a[k].as_f64().unwrap_or(0.0) / b[k].as_f64().unwrap_or(1.0)
    };
    println!(
        "summary: writes {:.0} pts/s single, {:.0} pts/s 3 nodes ({:.2}x), p99 {:.1} ms vs {:.1} ms; failover median {:.0} ms (max {:.0}) over {} kills; wiped replica with {} points caught up in {:.1} s",
        single["points_per_s"].as_f64().unwrap_or(0.0),
        three["points_per_s"].as_f64().unwrap_or(0.0),
        ratio(&three, &single, "points_per_s"),
        single["p99_ms"].as_f64().unwrap_or(0.0),
        three["p99_ms"].as_f64().unwrap_or(0.0),
        pct(&failovers, 0.5),
        failovers.last().copied().unwrap_or(0.0),
        failovers.len(),
        total,
        catchup_s,
    );
    Ok(())
}
