//! IVF-PQ end to end: created with the CLI, built in the background by the real server,
//! shown by `collection info`, searched with `--nprobe/--refine` and `--exact`, loaded again
//! after a restart, with the server's idle polling on.
use std::io::Write;

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
    let file = dir.path().join("p.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..7500u64 {
        writeln!(f, "{}", serde_json::json!({"id": i, "vector": point(i)})).unwrap();
    }
    drop(f);
    assert!(
        server
            .cli(&["upsert", "--collection", "ix", file.to_str().unwrap()])
            .status
            .success()
    );
    // Batches of 1000 seal at 3000 and 6000 rows; the flush seals the last 1500.
    assert!(server.cli(&["collection", "flush", "ix"]).status.success());
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
    let qfile = dir.path().join("q.jsonl");
    std::fs::write(
        &qfile,
        (0..30u64)
            .map(|i| serde_json::json!({"vector": point(50_000 + i)}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let q = qfile.to_str().unwrap();
    let exact = ids(&search(&server, q, &["--exact"]));
    let approx_out = search(&server, q, &["--nprobe", "16", "--refine", "8"]);
    let approx = ids(&approx_out);
    let hit: usize = approx
        .iter()
        .zip(&exact)
        .map(|(a, e)| a.iter().filter(|x| e.contains(x)).count())
        .sum();
    let recall = hit as f64 / 300.0;
    assert!(recall >= 0.9, "recall@10 {recall} at nprobe 16, refine 8");
    // A target recall picks nprobe per segment from the build-time calibration.
    for target in ["0.7", "0.95"] {
        let got = ids(&search(&server, q, &["--target-recall", target]));
        let hit: usize = got
            .iter()
            .zip(&exact)
            .map(|(a, e)| a.iter().filter(|x| e.contains(x)).count())
            .sum();
        let recall = hit as f64 / 300.0;
        let want: f64 = target.parse().unwrap();
        assert!(
            recall >= want - 0.05,
            "recall@10 {recall} for --target-recall {target}"
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
