//! Replication: three real `quiverd` processes on 127.0.0.1 forming a Raft cluster, killed,
//! restarted, wiped and partitioned while clients write and read.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_client::{Client, num_id, pb};
use quiver_tests::{Server, fails_with, free_port, ok, vector};
use tempfile::TempDir;

const DIM: usize = 4;

/// A test cluster: node `i` (0-based) has Raft id `i + 1`.
struct TestCluster {
    nodes: Vec<Option<Server>>,
    dirs: Vec<std::path::PathBuf>,
    envs: Vec<Vec<(String, String)>>,
    _base: TempDir,
}

impl TestCluster {
    async fn start(n: usize, extra: &[(&str, &str)]) -> TestCluster {
        let base = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut envs = Vec::new();
        let mut dirs = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let mut env = vec![
                ("QUIVER__CLUSTER__NODE_ID".to_owned(), (i + 1).to_string()),
                (
                    "QUIVER__CLUSTER__LISTEN".to_owned(),
                    format!("127.0.0.1:{p}"),
                ),
                ("QUIVER__CLUSTER__PEERS".to_owned(), peers.clone()),
                ("QUIVER__CLUSTER__HEARTBEAT_MS".to_owned(), "50".into()),
                (
                    "QUIVER__CLUSTER__ELECTION_TIMEOUT_MS".to_owned(),
                    "400".into(),
                ),
            ];
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            envs.push(env);
            dirs.push(base.path().join(format!("n{}", i + 1)));
        }
        let mut c = TestCluster {
            nodes: (0..n).map(|_| None).collect(),
            dirs,
            envs,
            _base: base,
        };
        // Start concurrently-ish: each start waits for SERVING, which needs no quorum.
        for i in 0..n {
            c.up(i).await;
        }
        c.wait_leader(Duration::from_secs(20)).await;
        c
    }

    async fn up(&mut self, i: usize) {
        let env: Vec<(&str, &str)> = self.envs[i]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.nodes[i] = Some(Server::start_with(&self.dirs[i], &env).await);
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.kill9();
        }
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            assert!(s.stop(), "node {} did not shut down cleanly", i + 1);
        }
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node is up")
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    async fn status(&self, i: usize) -> pb::ClusterStatusResponse {
        self.node(i)
            .client()
            .await
            .cluster
            .status(pb::ClusterStatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// The index (0-based) of the leader, once a live node reports a live leader.
    async fn wait_leader(&self, limit: Duration) -> usize {
        let started = Instant::now();
        loop {
            for i in self.live() {
                let s = self.status(i).await;
                let l = s.leader_id as usize;
                if l > 0 && self.nodes.get(l - 1).is_some_and(|n| n.is_some()) {
                    return l - 1;
                }
            }
            assert!(started.elapsed() < limit, "no leader after {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every live node has applied the leader's last log index.
    async fn wait_caught_up(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let l = self.wait_leader(limit).await;
            let s = self.status(l).await;
            let live: BTreeSet<u64> = self.live().iter().map(|i| *i as u64 + 1).collect();
            let done = s
                .nodes
                .iter()
                .filter(|n| live.contains(&n.id))
                .all(|n| n.error.is_empty() && n.applied_index >= s.commit_index);
            if done && s.commit_index > 0 {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "replicas not caught up after {limit:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until the readiness health service reports `want`; returns the last state seen.
async fn wait_ready(s: &Server, want: bool, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        let ch = tonic::transport::Endpoint::from_shared(s.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        let ready = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: "quiver.readiness".into(),
            })
            .await
            .map(|r| {
                r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            })
            .unwrap_or(false);
        if ready == want || started.elapsed() > limit {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn point(id: u64, value: f32) -> pb::Point {
    let mut v = vector(id, DIM);
    v[0] = value;
    pb::Point {
        id: Some(num_id(id)),
        vector: v,
        payload_json: None,
    }
}

async fn upsert(c: &mut Client, points: Vec<pb::Point>) -> Result<(), tonic::Status> {
    c.points
        .upsert(pb::UpsertRequest {
            collection: "r".into(),
            points,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// The stored first vector component of each of `ids` present (local read on that node).
async fn values(c: &mut Client, ids: &[u64], consistency: pb::Consistency) -> HashMap<u64, f32> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(1000) {
        let r = c
            .points
            .get(pb::GetPointsRequest {
                collection: "r".into(),
                ids: chunk.iter().map(|i| num_id(*i)).collect(),
                with_vectors: true,
                with_payload: false,
                consistency: consistency as i32,
            })
            .await
            .expect("get")
            .into_inner();
        for p in r.points {
            if let Some(pb::PointId {
                kind: Some(pb::point_id::Kind::Num(n)),
            }) = p.id
            {
                out.insert(n, p.vector[0]);
            }
        }
    }
    out
}

async fn create(c: &Server) {
    ok(&c.cli(&["collection", "create", "r", "--dim", "4", "--metric", "l2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_node_are_read_on_all_and_survive_a_leader_kill() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    // A write to a follower is forwarded; the CLI sees one acknowledgement.
    create(c.node(follower)).await;
    for i in 0..3 {
        let mut cl = c.node(i).client().await;
        upsert(&mut cl, vec![point(1000 + i as u64, i as f32)])
            .await
            .unwrap();
    }
    c.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..3 {
        let got = ok(&c.node(i).cli(&["count", "--collection", "r"]));
        assert_eq!(got, "3", "node {} sees every write", i + 1);
        assert!(wait_ready(c.node(i), true, Duration::from_secs(10)).await);
    }
    // Documents ingested through a follower (embedded there, written through the log) are
    // answered from another node, with the collection's RAG settings replicated with it.
    let doc = c.dirs[0].parent().unwrap().join("eiffel.md");
    std::fs::write(
        &doc,
        "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.\n\nThe Colosseum is in Rome.",
    )
    .unwrap();
    ok(&c.node(follower).cli(&[
        "ingest-docs",
        "--collection",
        "docs",
        "--create",
        "--policy",
        "local-only",
        doc.to_str().unwrap(),
    ]));
    c.wait_caught_up(Duration::from_secs(10)).await;
    let other = (follower + 1) % 3;
    let ans = ok(&c.node(other).cli(&[
        "ask",
        "When was the Eiffel Tower completed?",
        "--collection",
        "docs",
        "--json",
    ]));
    assert!(ans.contains("1889"), "{ans}");
    let cfg = ok(&c.node(other).cli(&["rag", "config", "docs"]));
    assert!(
        cfg.contains("local"),
        "the policy travelled with the collection: {cfg}"
    );

    let st = ok(&c.node(follower).cli(&["cluster", "status", "--json"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["leader_id"], leader as u64 + 1);
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3);

    // Continuous writes from two clients through the survivors while the leader is killed.
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs: Vec<String> = (0..3).map(|i| c.node(i).addr.clone()).collect();
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| addrs[i].clone())
        .collect();
    let first_after_kill = Arc::new(Mutex::new(None::<Instant>));
    let mut writers = Vec::new();
    for (w, addr) in survivors.iter().enumerate() {
        let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), addr.clone());
        let first = Arc::clone(&first_after_kill);
        writers.push(tokio::spawn(async move {
            let mut cl = Client::connect(&addr).await.unwrap();
            let mut id = w as u64 * 1_000_000;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                id += 1;
                if upsert(&mut cl, vec![point(id, id as f32)]).await.is_ok() {
                    acked.lock().unwrap().push(id);
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(before_kill > 0, "writes flow before the kill");
    c.kill9(leader);
    let killed_at = Instant::now();
    *first_after_kill.lock().unwrap() = None;
    let new_leader = c.wait_leader(Duration::from_secs(15)).await;
    assert_ne!(new_leader, leader);
    // Writes resume on the new leader.
    let resumed = loop {
        if let Some(t) = *first_after_kill.lock().unwrap() {
            break t;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no write succeeded within 15 s of the leader kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "failover: first acknowledged write {:?} after kill -9 of the leader",
        resumed.duration_since(killed_at)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    assert!(acked.len() > before_kill, "writes continued after the kill");

    // Every acknowledged write is on both survivors...
    c.wait_caught_up(Duration::from_secs(10)).await;
    for i in c.live() {
        let mut cl = c.node(i).client().await;
        let got = values(&mut cl, &acked, pb::Consistency::Local).await;
        let missing: Vec<_> = acked.iter().filter(|id| !got.contains_key(id)).collect();
        assert!(missing.is_empty(), "node {} lost {missing:?}", i + 1);
    }
    // ...and on the killed leader once it is back.
    c.up(leader).await;
    c.wait_caught_up(Duration::from_secs(20)).await;
    let mut cl = c.node(leader).client().await;
    let got = values(&mut cl, &acked, pb::Consistency::Local).await;
    assert_eq!(got.len(), acked.len(), "the restarted node has every write");
    for id in &acked {
        assert_eq!(got[id], *id as f32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_and_wiped_replicas_catch_up_the_wiped_one_by_snapshot() {
    let mut c = TestCluster::start(
        3,
        &[
            ("QUIVER__CLUSTER__SNAPSHOT_EVERY", "40"),
            ("QUIVER__CLUSTER__KEEP_LOGS", "5"),
            ("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "500"),
        ],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let a = (leader + 1) % 3;
    let b = (leader + 2) % 3;
    create(c.node(leader)).await;
    let mut cl = c.node(leader).client().await;
    let mut next = 0u64;
    let batch = |n: u64, next: &mut u64| {
        let pts: Vec<_> = (*next..*next + n).map(|i| point(i, i as f32)).collect();
        *next += n;
        pts
    };
    for _ in 0..60 {
        upsert(&mut cl, batch(20, &mut next)).await.unwrap();
    }
    // Deletes and payload updates are replicated too.
    cl.points
        .delete(pb::DeletePointsRequest {
            collection: "r".into(),
            ids: (0..10).map(num_id).collect(),
            filter: None,
        })
        .await
        .unwrap();

    // A follower killed, writes go on, it comes back and catches up from the log or a snapshot.
    c.kill9(a);
    for _ in 0..60 {
        upsert(&mut cl, batch(20, &mut next)).await.unwrap();
    }
    c.up(a).await;
    c.wait_caught_up(Duration::from_secs(20)).await;
    let live = next - 10;
    assert_eq!(
        ok(&c.node(a).cli(&["count", "--collection", "r"])),
        live.to_string()
    );

    // The leader snapshots and compacts its log behind the snapshot (in the background).
    let started = Instant::now();
    loop {
        let st = c.status(leader).await;
        let me = st.nodes.iter().find(|n| n.id == leader as u64 + 1).unwrap();
        if me.snapshot_index > 0 && me.purged_index > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the leader did not compact its log: {me:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A follower's data directory wiped: it rejoins and receives a snapshot (the leader's log
    // behind its snapshot is purged, so replaying the log is impossible).
    c.stop(b);
    std::fs::remove_dir_all(&c.dirs[b]).unwrap();
    for _ in 0..50 {
        upsert(&mut cl, batch(20, &mut next)).await.unwrap();
    }
    c.up(b).await;
    c.wait_caught_up(Duration::from_secs(30)).await;
    let live = next - 10;
    assert_eq!(
        ok(&c.node(b).cli(&["count", "--collection", "r"])),
        live.to_string()
    );
    let s = c.status(b).await;
    let nb = s.nodes.iter().find(|n| n.id == b as u64 + 1).unwrap();
    assert!(
        nb.snapshot_index > 0,
        "the wiped node installed a snapshot: {nb:?}"
    );
    // Same data on the leader and the rebuilt node, vectors included.
    let ids: Vec<u64> = (0..next).collect();
    let mut lb = c.node(b).client().await;
    let got_b = values(&mut lb, &ids, pb::Consistency::Local).await;
    let got_l = values(&mut cl, &ids, pb::Consistency::Local).await;
    assert_eq!(got_b.len() as u64, live);
    assert_eq!(got_b, got_l);
    // And it keeps following.
    upsert(&mut cl, batch(5, &mut next)).await.unwrap();
    c.wait_caught_up(Duration::from_secs(10)).await;
    assert_eq!(
        ok(&c.node(b).cli(&["count", "--collection", "r"])),
        (next - 10).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_refuses_writes_and_loses_nothing() {
    let mut c = TestCluster::start(3, &[("QUIVER__CLUSTER__WRITE_TIMEOUT_MS", "1500")]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    create(c.node(leader)).await;
    let mut cl = c.node(leader).client().await;
    let acked: Vec<u64> = (0..50).collect();
    for id in &acked {
        upsert(&mut cl, vec![point(*id, *id as f32)]).await.unwrap();
    }
    c.wait_caught_up(Duration::from_secs(10)).await;
    // Two of three nodes down: the survivor (whichever it is) cannot commit.
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            c.kill9(i);
        }
    }
    let mut sc = c.node(survivor).client().await;
    let err = upsert(&mut sc, vec![point(999, 1.0)]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("majority"), "{}", err.message());
    let out = c
        .node(survivor)
        .cli(&["--consistency", "leader", "count", "--collection", "r"]);
    fails_with(&out, &["UNAVAILABLE"]);
    // Linearizable reads are refused too; local reads still answer from what it has.
    let lin = sc
        .points
        .count(pb::CountRequest {
            collection: "r".into(),
            filter: None,
            consistency: pb::Consistency::Leader as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(lin.code(), tonic::Code::Unavailable);
    // Not ready (no leader), though alive.
    assert!(!wait_ready(c.node(survivor), false, Duration::from_secs(10)).await);
    assert_eq!(
        ok(&c.node(survivor).cli(&["count", "--collection", "r"])),
        "50"
    );
    // The majority returns: service resumes and nothing acknowledged is lost.
    for i in 0..3 {
        if i != survivor {
            c.up(i).await;
        }
    }
    c.wait_leader(Duration::from_secs(20)).await;
    let mut sc = c.node(survivor).client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while upsert(&mut sc, vec![point(1000, 1000.0)]).await.is_err() {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_caught_up(Duration::from_secs(20)).await;
    for i in 0..3 {
        let mut cl = c.node(i).client().await;
        let got = values(&mut cl, &acked, pb::Consistency::Local).await;
        assert_eq!(got.len(), acked.len(), "node {} lost writes", i + 1);
    }
}

/// One operation of the recorded history.
#[derive(Debug, Clone)]
struct Op {
    key: u64,
    /// Written value, or the value read (`None`: absent).
    value: Option<u32>,
    write: bool,
    start: Instant,
    end: Instant,
    ok: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_randomized_history_is_linearizable() {
    use rand::{Rng, SeedableRng};
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    create(c.node(leader)).await;
    c.wait_caught_up(Duration::from_secs(10)).await;
    let addrs: Vec<String> = (0..3).map(|i| c.node(i).addr.clone()).collect();
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let run_for = Duration::from_secs(4);
    let mut tasks = Vec::new();
    for w in 0..4u32 {
        let (addr, history) = (addrs[w as usize % 3].clone(), Arc::clone(&history));
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(w) + 7);
            let mut cl = Client::connect(&addr).await.unwrap();
            let started = Instant::now();
            let mut n = 0u32;
            while started.elapsed() < run_for {
                let key = rng.random_range(0..8u64);
                let start = Instant::now();
                if rng.random_bool(0.5) {
                    n += 1;
                    let value = w * 1_000_000 + n; // unique per write
                    let r = upsert(&mut cl, vec![point(key, value as f32)]).await;
                    history.lock().unwrap().push(Op {
                        key,
                        value: Some(value),
                        write: true,
                        start,
                        end: Instant::now(),
                        ok: r.is_ok(),
                    });
                } else {
                    let got = cl
                        .points
                        .get(pb::GetPointsRequest {
                            collection: "r".into(),
                            ids: vec![num_id(key)],
                            with_vectors: true,
                            with_payload: false,
                            consistency: pb::Consistency::Leader as i32,
                        })
                        .await;
                    if let Ok(r) = got {
                        let value = r.into_inner().points.first().map(|p| p.vector[0] as u32);
                        history.lock().unwrap().push(Op {
                            key,
                            value,
                            write: false,
                            start,
                            end: Instant::now(),
                            ok: true,
                        });
                    }
                }
            }
        }));
    }
    // Kill the leader once in the middle of the run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let l = c.wait_leader(Duration::from_secs(5)).await;
    c.kill9(l);
    for t in tasks {
        t.await.unwrap();
    }
    c.up(l).await;
    c.wait_caught_up(Duration::from_secs(20)).await;
    let history = history.lock().unwrap().clone();
    let writes: HashMap<u32, &Op> = history
        .iter()
        .filter(|o| o.write)
        .map(|o| (o.value.unwrap(), o))
        .collect();
    let reads: Vec<&Op> = history.iter().filter(|o| !o.write).collect();
    assert!(
        writes.len() > 20 && reads.len() > 20,
        "a real history: {} writes, {} reads",
        writes.len(),
        reads.len()
    );

    // 1. A read returns only a value that was written to that key.
    for r in &reads {
        if let Some(v) = r.value {
            let w = writes
                .get(&v)
                .unwrap_or_else(|| panic!("read {r:?} returned a value never written"));
            assert_eq!(w.key, r.key, "read {r:?} returned another key's value");
            // 2. ...and not one whose write started after the read ended.
            assert!(w.start <= r.end, "read {r:?} saw the future write {w:?}");
        }
    }
    // 3. No stale read: if a write to k was acknowledged before the read began, the read
    //    returns it or a write not finished before it started.
    for r in &reads {
        let latest_before = writes
            .values()
            .filter(|w| w.ok && w.key == r.key && w.end < r.start)
            .max_by_key(|w| w.end);
        if let Some(w) = latest_before {
            let v = r
                .value
                .unwrap_or_else(|| panic!("read {r:?} found nothing after {w:?} was acknowledged"));
            let seen = writes[&v];
            assert!(
                seen.value == w.value || seen.end >= w.start,
                "stale read {r:?}: returned {seen:?} though {w:?} was acknowledged first"
            );
        }
    }
    // 4. The final state holds, per key, an acknowledged or in-doubt write that no acknowledged
    //    write followed.
    let keys: Vec<u64> = (0..8).collect();
    let mut fin = BTreeMap::new();
    for i in 0..3 {
        let mut cl = c.node(i).client().await;
        let got = values(&mut cl, &keys, pb::Consistency::Local).await;
        if i == 0 {
            fin = got.iter().map(|(k, v)| (*k, *v as u32)).collect();
        } else {
            let other: BTreeMap<u64, u32> = got.iter().map(|(k, v)| (*k, *v as u32)).collect();
            assert_eq!(other, fin, "replicas agree");
        }
    }
    for (k, v) in &fin {
        let w = writes.get(v).expect("final value was written");
        assert_eq!(w.key, *k);
        let later_acked = writes
            .values()
            .any(|o| o.ok && o.key == *k && o.start > w.end);
        assert!(
            !later_acked,
            "key {k}: final {w:?} but an acknowledged write followed it"
        );
    }
    for o in writes.values().filter(|o| o.ok) {
        assert!(fin.contains_key(&o.key), "acknowledged {o:?} vanished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_are_added_and_removed_through_the_cli() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    create(c.node(leader)).await;
    let mut cl = c.node(leader).client().await;
    upsert(&mut cl, (0..50).map(|i| point(i, i as f32)).collect())
        .await
        .unwrap();
    // A fourth node, started with its own id and cluster port and no peers: it waits.
    let port = free_port();
    let dir = c.dirs[0].parent().unwrap().join("n4");
    let n4 = Server::start_with(
        &dir,
        &[
            ("QUIVER__CLUSTER__NODE_ID", "4"),
            ("QUIVER__CLUSTER__LISTEN", &format!("127.0.0.1:{port}")),
            ("QUIVER__CLUSTER__HEARTBEAT_MS", "50"),
            ("QUIVER__CLUSTER__ELECTION_TIMEOUT_MS", "400"),
        ],
    )
    .await;
    let addr = format!("127.0.0.1:{port}");
    // Added through a follower (forwarded to the leader): caught up, then a voter.
    let follower = (leader + 1) % 3;
    let st: serde_json::Value = serde_json::from_str(&ok(&c
        .node(follower)
        .cli(&["cluster", "add", "4", &addr, "--json"])))
    .unwrap();
    let n = st["nodes"].as_array().unwrap();
    assert_eq!(n.len(), 4, "{st}");
    assert!(n.iter().all(|n| n["voter"] == true), "{st}");
    assert_eq!(ok(&n4.cli(&["count", "--collection", "r"])), "50");
    // Writes reach it.
    upsert(&mut cl, vec![point(77, 77.0)]).await.unwrap();
    assert_eq!(
        ok(&n4.cli(&["--consistency", "leader", "count", "--collection", "r"])),
        "51"
    );
    // Bad input is refused with the field named.
    fails_with(
        &c.node(follower).cli(&["cluster", "add", "5", "nohost"]),
        &["INVALID_ARGUMENT", "cluster_addr"],
    );
    fails_with(
        &c.node(follower).cli(&["cluster", "remove", "9"]),
        &["NOT_FOUND", "node 9"],
    );
    // Removed: three voters again, and the cluster keeps committing.
    let st: serde_json::Value = serde_json::from_str(&ok(&c
        .node(leader)
        .cli(&["cluster", "remove", "4", "--json"])))
    .unwrap();
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3, "{st}");
    upsert(&mut cl, vec![point(78, 78.0)]).await.unwrap();
    c.wait_caught_up(Duration::from_secs(10)).await;
    // One collection restored from a follower's snapshot goes through the log: every node
    // gets it back.
    ok(&c.node(follower).cli(&["snapshot", "create", "before-drop"]));
    ok(&c.node(leader).cli(&["collection", "drop", "r"]));
    ok(&c
        .node(follower)
        .cli(&["snapshot", "restore", "before-drop", "--collection", "r"]));
    for i in 0..3 {
        assert_eq!(
            ok(&c
                .node(i)
                .cli(&["--consistency", "leader", "count", "--collection", "r"])),
            "52",
            "node {i}"
        );
    }
    // Restoring every collection stays a single-node operation.
    fails_with(
        &c.node(follower)
            .cli(&["snapshot", "restore", "before-drop"]),
        &["FAILED_PRECONDITION"],
    );
    // A single node answers that replication is off.
    let single = Server::start(&c.dirs[0].parent().unwrap().join("single")).await;
    assert_eq!(
        ok(&single.cli(&["cluster", "status"])),
        "replication off (a single node)"
    );
    fails_with(
        &single.cli(&["cluster", "add", "2", "127.0.0.1:1"]),
        &["FAILED_PRECONDITION", "--cluster-listen"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_speak_mutual_tls_on_the_cluster_port() {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let certs = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut node = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_key = KeyPair::generate().unwrap();
    let node = node.signed_by(&node_key, &ca, &ca_key).unwrap();
    let p = |f: &str| certs.path().join(f).display().to_string();
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("node.pem"), node.pem()).unwrap();
    std::fs::write(p("node.key"), node_key.serialize_pem()).unwrap();
    let (cert, key, cap) = (p("node.pem"), p("node.key"), p("ca.pem"));
    let c = TestCluster::start(
        3,
        &[
            ("QUIVER__CLUSTER__TLS_CERT", &cert),
            ("QUIVER__CLUSTER__TLS_KEY", &key),
            ("QUIVER__CLUSTER__TLS_CA", &cap),
        ],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    create(c.node(follower)).await;
    let mut cl = c.node(follower).client().await;
    upsert(&mut cl, vec![point(1, 1.0), point(2, 2.0)])
        .await
        .unwrap();
    c.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_eq!(ok(&c.node(i).cli(&["count", "--collection", "r"])), "2");
    }
    // A plaintext peer gets nothing from the cluster port.
    let port = c.envs[0]
        .iter()
        .find(|(k, _)| k == "QUIVER__CLUSTER__LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut rc = quiver_proto::internal::raft_client::RaftClient::new(ch);
        assert!(
            rc.local_status(quiver_proto::internal::RaftBytes::default())
                .await
                .is_err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_authenticate_each_other_with_the_cluster_secret() {
    // Every internal call carries the secret's MAC: writes replicate, reads agree.
    let c = TestCluster::start(
        3,
        &[(
            "QUIVER_CLUSTER_SECRET",
            "abcdefabcdefabcdefabcdefabcdefabcdef",
        )],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    create(c.node(follower)).await;
    let mut cl = c.node(follower).client().await;
    upsert(&mut cl, (0..5).map(|i| point(i, i as f32)).collect())
        .await
        .unwrap();
    c.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_eq!(ok(&c.node(i).cli(&["count", "--collection", "r"])), "5");
    }
}

/// A tenant's daily token budget holds for the cluster as a whole (usage is a replicated
/// counter, each reservation a log entry checked in log order), and a review queued on one
/// node is shown and decided on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rag_budgets_and_reviews_hold_across_the_cluster() {
    let fake = quiver_tests::fake_llm::FakeLlm::start().await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("quiver.toml");
    // The fake reports 1,000 prompt + 20 completion tokens per call, and the server reserves
    // about 300 before one: 3,200 tokens allow three answers (3,060 used) and not a fourth.
    std::fs::write(
        &cfg,
        format!(
            "[rag]\ndefault_generator = \"gpt\"\ntenant_budgets = {{ small = 3200 }}\n\
             [rag.providers.gpt]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"fake-gpt\"\napi_key_env = \"FAKE_KEY\"\n",
            fake.base
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let c = TestCluster::start(
        3,
        &[("QUIVER_CONFIG", cfg.as_str()), ("FAKE_KEY", "sk-test")],
    )
    .await;
    let doc = cfg_dir.path().join("paris.md");
    std::fs::write(&doc, "Paris is the capital of France.\n\nRome is in Italy.").unwrap();
    ok(&c.node(0).cli(&[
        "ingest-docs",
        "--collection",
        "docs",
        "--create",
        doc.to_str().unwrap(),
    ]));
    c.wait_caught_up(Duration::from_secs(10)).await;
    let ask = |i: usize, q: &str, extra: &[&str]| {
        let mut a = vec!["--tenant", "small", "ask", q, "--collection", "docs"];
        a.extend_from_slice(&["--mode", "generate", "--max-answer-tokens", "50"]);
        a.extend_from_slice(extra);
        c.node(i).cli(&a)
    };
    // Nine questions, round-robin over the three nodes: each node alone would allow three.
    let mut answered = Vec::new();
    let mut refusals = Vec::new();
    for q in 0..9 {
        let out = ask(q % 3, &format!("What is the capital of France? ({q})"), &[]);
        if out.status.success() {
            answered.push(q);
        } else {
            refusals.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    assert_eq!(
        answered,
        vec![0, 1, 2],
        "the budget stops asks cluster-wide; refusals: {refusals:?}"
    );
    for r in &refusals {
        assert!(
            r.contains("RESOURCE_EXHAUSTED") && r.contains("tenant small used 3060 of 3200"),
            "{r}"
        );
    }

    // Audit records stay on the node that made the call, carry its id, and `audit list`
    // gathers them from every node (the three answers were made by three nodes).
    let audit = ok(&c
        .node(1)
        .cli(&["audit", "list", "--json", "--operation", "chat"]));
    let nodes: BTreeSet<u64> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["node_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(nodes, BTreeSet::from([1, 2, 3]), "{audit}");
    let local = ok(&c
        .node(1)
        .cli(&["audit", "list", "--json", "--operation", "chat", "--local"]));
    assert_eq!(
        local.lines().count(),
        1,
        "--local: node 2's own record: {local}"
    );

    // A review queued through node 1 is listed on node 3 and approved through node 2; a
    // second decision, anywhere, is refused.
    let queued = c.node(0).cli(&[
        "--tenant",
        "reviewer-test",
        "ask",
        "Where is Rome?",
        "--collection",
        "docs",
        "--mode",
        "review",
        "--json",
    ]);
    let line = ok(&queued);
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let id = v["review_id"].as_str().expect("a review id").to_owned();
    let shown = ok(&c.node(2).cli(&["review", "show", &id]));
    assert!(shown.contains("REVIEW_STATUS_PENDING"), "{shown}");
    ok(&c
        .node(1)
        .cli(&["review", "approve", &id, "--reviewer", "ann"]));
    fails_with(
        &c.node(2).cli(&["review", "reject", &id]),
        &["FAILED_PRECONDITION", "already decided"],
    );
    c.wait_caught_up(Duration::from_secs(10)).await;
    for i in 0..3 {
        let listed = ok(&c
            .node(i)
            .cli(&["review", "list", "--status", "approved", "--json"]));
        assert!(
            listed.contains(&id) && listed.contains("APPROVED"),
            "node {}: {listed}",
            i + 1
        );
    }
}
