//! IVF-PQ end to end: created with the CLI, built in the background by the real server,
//! shown by `collection info`, searched with `--nprobe/--refine` and `--exact`, loaded again
//! after a restart, with the server's idle polling on.
use std::io::Write;

use quiver_client::pb;
use quiver_tests::{Server, json_lines, vector};
use serde_json::Value;

const DIM: usize = 16;

/// Clustered points: 40 centres plus noise, like real embeddings.
fn point(i: u64) -> Vec<f32> {
    let centre = vector(i % 40, DIM);
    centre
        .iter()
        .zip(vector(1_000_000 + i, DIM))
        .map(|(c, n)| c + 0.3 * n)
        .collect()
}

/// `quiver search --collection ix --queries FILE --json` plus `extra` flags.
fn search(server: &Server, queries: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "search",
        "--collection",
        "ix",
        "--queries",
        queries,
        "--json",
    ];
    args.extend_from_slice(extra);
    json_lines(&server.cli(&args))
}

/// Upserts points `0..n` into `ix` through the CLI (batches of 1000), then flushes.
fn load(server: &Server, dir: &std::path::Path, n: u64) {
    let file = dir.join("p.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..n {
        let payload = serde_json::json!({"r": i % 10});
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": i, "vector": point(i), "payload": payload})
        )
        .unwrap();
    }
    drop(f);
    for args in [
        &["upsert", "--collection", "ix", file.to_str().unwrap()][..],
        &["collection", "flush", "ix"],
    ] {
        let out = server.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// 30 queries near the data, as a `--queries` file in `dir`.
fn queries_file(dir: &std::path::Path) -> String {
    let qfile = dir.join("q.jsonl");
    std::fs::write(
        &qfile,
        (0..30u64)
            .map(|i| serde_json::json!({"vector": point(50_000 + i)}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    qfile.to_str().unwrap().to_owned()
}

/// Recall@10 of `got` against `exact`, 30 queries.
fn recall(got: &[Vec<u64>], exact: &[Vec<u64>]) -> f64 {
    let hit: usize = got
        .iter()
        .zip(exact)
        .map(|(a, e)| a.iter().filter(|x| e.contains(x)).count())
        .sum();
    hit as f64 / (10 * exact.len()) as f64
}

fn ids(results: &[Value]) -> Vec<Vec<u64>> {
    results
        .iter()
        .map(|r| {
            r["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].as_u64().unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ivf_pq_through_server_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    // With idle polling on (a latency option that must not change results).
    let mut server =
        Server::start_with(dir.path(), &[("QUIVER__SERVER__IDLE_POLL_US", "500")]).await;
    let out = server.cli(&[
        "collection",
        "create",
        "ix",
        "--dim",
        "16",
        "--metric",
        "l2",
        "--index",
        "ivf-pq",
        "--segment-max-rows",
        "2500",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Batches of 1000 seal at 3000 and 6000 rows; the flush seals the last 1500.
    load(&server, dir.path(), 7500);
    // Three sealed segments; wait for their indexes.
    let started = std::time::Instant::now();
    loop {
        let info = json_lines(&server.cli(&["collection", "info", "ix", "--json"]));
        assert_eq!(info[0]["index_kind"], "ivf_pq");
        assert_eq!(
            info[0]["index_pq_bits"], 4,
            "4-bit fast-scan is the default"
        );
        if info[0]["index"]
            .as_str()
            .unwrap()
            .starts_with("ivf_pq ready: 3/3")
        {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "index not ready: {}",
            info[0]["index"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let qfile = queries_file(dir.path());
    let q = qfile.as_str();
    let exact = ids(&search(&server, q, &["--exact"]));
    let approx_out = search(&server, q, &["--nprobe", "16", "--refine", "8"]);
    let r = recall(&ids(&approx_out), &exact);
    assert!(r >= 0.9, "recall@10 {r} at nprobe 16, refine 8");
    // A target recall picks nprobe per segment from the build-time calibration.
    for target in ["0.7", "0.95"] {
        let r = recall(
            &ids(&search(&server, q, &["--target-recall", target])),
            &exact,
        );
        let want: f64 = target.parse().unwrap();
        assert!(
            r >= want - 0.05,
            "recall@10 {r} for --target-recall {target}"
        );
    }
    // Restart: indexes are loaded from their files at open (3/3 immediately), same results.
    server.restart().await;
    let info = json_lines(&server.cli(&["collection", "info", "ix", "--json"]));
    assert!(
        info[0]["index"]
            .as_str()
            .unwrap()
            .starts_with("ivf_pq ready: 3/3"),
        "{}",
        info[0]["index"]
    );
    let again = search(&server, q, &["--nprobe", "16", "--refine", "8"]);
    assert_eq!(again, approx_out);
}

/// What a new user gets: `collection create` with no index flag is IVF-PQ, `collection info`
/// says what the defaults chose, the background compactor merges the sealed segments into
/// one indexed segment, and a search with no parameters reaches the default recall target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_give_a_merged_ivf_pq_index_at_the_target_recall() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "2000"),
            ("QUIVER__COMPACTION__INTERVAL_SECS", "1"),
        ],
    )
    .await;
    create_ix(&server);
    let info = json_lines(&server.cli(&["collection", "info", "ix", "--json"]));
    assert_eq!(info[0]["index_kind"], "ivf_pq", "{}", info[0]);
    assert_eq!(info[0]["index_pq_bits"], 4);
    assert_eq!(
        info[0]["index_pq_m"], 16,
        "1-d sub-vectors at 16 dimensions"
    );
    assert!(
        info[0]["index_nlist"].as_str().unwrap().starts_with("auto"),
        "{}",
        info[0]
    );
    load(&server, dir.path(), 8000);
    // Four sealed segments of 2,000 rows: one tier, merged by the compactor into one.
    let started = std::time::Instant::now();
    loop {
        let info = json_lines(&server.cli(&["collection", "info", "ix", "--json"]));
        let state = info[0]["index"].as_str().unwrap().to_owned();
        if info[0]["sealed_segments"] == 1 && state.starts_with("ivf_pq ready: 1/1") {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "not merged: {} sealed, {state}",
            info[0]["sealed_segments"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let qfile = queries_file(dir.path());
    let q = qfile.as_str();
    let exact = ids(&search(&server, q, &["--exact"]));
    let r = recall(&ids(&search(&server, q, &[])), &exact);
    assert!(r >= 0.9, "recall@10 {r} with no search parameters");
}

/// `collection info`'s index state of `ix`.
fn index_state(server: &Server) -> String {
    let info = json_lines(&server.cli(&["collection", "info", "ix", "--json"]));
    info[0]["index"].as_str().unwrap().to_owned()
}

/// Creates `ix`: 16-d, l2, the default index.
fn create_ix(server: &Server) {
    let out = server.cli(&[
        "collection",
        "create",
        "ix",
        "--dim",
        "16",
        "--metric",
        "l2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server started with `env` whose `ix` (16-d, l2, default index) holds 6,000 points in one
/// indexed segment.
async fn indexed_server(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let server = Server::start_with(dir, env).await;
    create_ix(&server);
    load(&server, dir, 6000);
    let started = std::time::Instant::now();
    while !index_state(&server).starts_with("ivf_pq ready: 1/1") {
        assert!(
            started.elapsed().as_secs() < 120,
            "not indexed: {}",
            index_state(&server)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server
}

/// The recall audit through the real server: searches that leave nprobe to the calibration
/// (no parameters, as a service sends them) are sampled by the server's background audit at
/// the configured share, until every indexed segment's `target_recall` comes from the served
/// queries' own curve; `collection info` says so, `/metrics` counts the audited queries, and
/// the curve is still in use after a restart. A share of 0 audits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_queries_are_audited_and_recalibrate_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", quiver_tests::free_port());
    let env = [
        ("QUIVER__STORAGE__RECALL_AUDIT_SHARE", "0.5"),
        ("QUIVER__SERVER__METRICS_LISTEN", metrics_addr.as_str()),
    ];
    let mut server = indexed_server(dir.path(), &env).await;
    let state = index_state;
    assert!(
        state(&server).contains("fewest served queries measured 0 of 32"),
        "{}",
        state(&server)
    );
    // Unary searches with no parameters; the audit takes at most one every 100 ms.
    let mut c = server.client().await;
    let started = std::time::Instant::now();
    let mut i = 0;
    while !state(&server).contains("served curves in every indexed segment") {
        for _ in 0..50 {
            c.search("ix", point(60_000 + i), 10, false).await.unwrap();
            i += 1;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            started.elapsed().as_secs() < 90,
            "no served curve after {i} searches: {}",
            state(&server)
        );
    }
    // Filtered searches (an undeclared key allowing 10% of the rows) are audited with their
    // filter too, until the index widens their nprobe as measured rather than by 1/√f.
    assert!(
        state(&server).contains("until 32 filtered queries are measured"),
        "{}",
        state(&server)
    );
    // The record is saved every 16 measurements (a filtered search's audit makes two): with
    // 40 filtered queries measured, at least 32 are on disk for the restart below.
    let filtered_measured = |s: &str| -> usize {
        s.split("as measured on at least ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while filtered_measured(&state(&server)) < 40 {
        for _ in 0..50 {
            let hits = c
                .search
                .search(pb::SearchRequest {
                    collection: "ix".into(),
                    vector: point(60_000 + i),
                    k: 10,
                    with_payload: true,
                    filter: Some(pb::Filter {
                        text: "r = 3".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .hits;
            assert_eq!(hits.len(), 10);
            for h in &hits {
                let p: Value = serde_json::from_str(h.payload_json.as_deref().unwrap()).unwrap();
                assert_eq!(p["r"], 3, "a hit fails the filter: {p}");
            }
            i += 1;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            started.elapsed().as_secs() < 90,
            "no filtered measurements after {i} searches: {}",
            state(&server)
        );
    }
    // The gauge is refreshed every 10 s.
    let started = std::time::Instant::now();
    loop {
        let metrics = quiver_tests::http_get(&metrics_addr, "/metrics").await;
        let audited = metrics
            .lines()
            .find_map(|l| l.strip_prefix("quiver_recall_audit_queries "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if audited.is_some_and(|n| n >= 32.0) {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "gauge: {audited:?}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // The record is saved every 16 measurements: at least 32 of them are back.
    server.restart().await;
    let after = state(&server);
    assert!(
        after.contains("served curves in every indexed segment, from at least")
            && after.contains("filtered searches widen nprobe as measured"),
        "served curve lost in a restart: {after}"
    );
    drop(server);

    // Off: the same searches audit nothing.
    let dir = tempfile::tempdir().unwrap();
    let server = indexed_server(dir.path(), &[("QUIVER__STORAGE__RECALL_AUDIT_SHARE", "0")]).await;
    let mut c = server.client().await;
    for i in 0..100 {
        c.search("ix", point(60_000 + i), 10, false).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        state(&server).contains("fewest served queries measured 0 of 32"),
        "{}",
        state(&server)
    );
}
