//! create → upsert 10k through the CLI → search → restart → same results; scroll, get,
//! delete, health and reflection through the real server.
use std::io::Write;

use quiver_client::{num_id, pb, str_id};
use quiver_tests::{Server, json_lines, vector};
use serde_json::Value;

const DIM: usize = 32;

/// `quiver search --queries FILE --k 10 --json` on collection `docs`: one result per query.
fn search_file(server: &Server, queries: &std::path::Path) -> Vec<Value> {
    json_lines(&server.cli(&[
        "search",
        "--collection",
        "docs",
        "--queries",
        queries.to_str().expect("utf-8 path"),
        "--k",
        "10",
        "--json",
    ]))
}

fn naive_top(query: &[f32], n: u64, k: usize) -> Vec<u64> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let qn = norm(query);
    let mut scored: Vec<(f32, u64)> = (0..n)
        .map(|i| {
            let v = vector(i, DIM);
            let cos = query.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>() / (qn * norm(&v));
            (cos, i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored[..k].iter().map(|s| s.1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_upsert_search_restart_same_results() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so the 10k points span several sealed segments plus the mutable one.
    let mut server =
        Server::start_with(dir.path(), &[("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "3000")]).await;
    // Flat: the results must equal the brute-force reference exactly (the IVF-PQ default is
    // tested against recall floors in index.rs).
    let out = server.cli(&[
        "collection",
        "create",
        "docs",
        "--dim",
        &DIM.to_string(),
        "--metric",
        "cosine",
        "--index",
        "flat",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let n = 10_000u64;
    let file = dir.path().join("points.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..n {
        let id = if i % 2 == 0 {
            Value::from(i)
        } else {
            Value::from(format!("doc-{i}"))
        };
        let line = serde_json::json!({"id": id, "vector": vector(i, DIM), "payload": {"i": i, "even": i % 2 == 0}});
        writeln!(f, "{line}").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let out = server.cli(&[
        "upsert",
        "--collection",
        "docs",
        file.to_str().unwrap(),
        "--json",
        "--batch-size",
        "700",
    ]);
    let summary = json_lines(&out);
    assert_eq!(summary[0]["upserted"], n);
    assert_eq!(
        json_lines(&server.cli(&["count", "--collection", "docs"]))[0],
        n
    );

    let info = json_lines(&server.cli(&["collection", "info", "docs", "--json"]));
    assert_eq!(info[0]["points"], n);
    assert!(
        info[0]["sealed_segments"].as_u64().unwrap() >= 2,
        "{:?}",
        info[0]
    );

    // Queries file: 20 queries; results must equal a brute-force reference.
    let qfile = dir.path().join("queries.jsonl");
    let queries: Vec<Vec<f32>> = (0..20).map(|i| vector(1_000_000 + i, DIM)).collect();
    std::fs::write(
        &qfile,
        queries
            .iter()
            .map(|q| serde_json::json!({"vector": q}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let before = search_file(&server, &qfile);
    assert_eq!(before.len(), 20);
    for (q, res) in queries.iter().zip(&before) {
        let want = naive_top(q, n, 10);
        let got: Vec<u64> = res["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| match h["id"].as_str() {
                Some(s) => s.trim_start_matches("doc-").parse().unwrap(),
                None => h["id"].as_u64().expect("numeric id"),
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(res["hits"][0]["payload"]["i"], Value::from(want[0]));
    }

    // A stored vector finds itself first, with score ~1.
    let mut client = server.client().await;
    let hits = client
        .search("docs", vector(4242, DIM), 3, true)
        .await
        .unwrap();
    assert_eq!(hits[0].id, Some(num_id(4242)));
    assert!((hits[0].score - 1.0).abs() < 1e-5);

    // Deletes and overwrites before the restart.
    let r = client
        .points
        .delete(pb::DeletePointsRequest {
            collection: "docs".into(),
            ids: vec![num_id(4242), str_id("doc-7"), num_id(999_999)],
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 2);
    client
        .upsert(
            "docs",
            vec![pb::Point {
                id: Some(num_id(10)),
                vector: vector(11, DIM),
                payload_json: Some("{\"i\":\"moved\"}".into()),
            }],
        )
        .await
        .unwrap();
    let after_writes = search_file(&server, &qfile);

    server.restart().await;
    let after_restart = search_file(&server, &qfile);
    assert_eq!(after_writes, after_restart, "results differ after restart");
    assert_eq!(
        json_lines(&server.cli(&["count", "--collection", "docs"]))[0],
        n - 2
    );
    let got = json_lines(&server.cli(&[
        "get",
        "--collection",
        "docs",
        "4242",
        "doc-7",
        "10",
        "doc-9",
    ]));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["payload"]["i"], "moved");
    assert_eq!(got[1]["id"], "doc-9");

    // Scroll returns every live point once.
    let all = json_lines(&server.cli(&["scroll", "--collection", "docs", "--page", "777"]));
    assert_eq!(all.len() as u64, n - 2);
    let unique: std::collections::HashSet<String> =
        all.iter().map(|p| p["id"].to_string()).collect();
    assert_eq!(unique.len() as u64, n - 2);

    // Flush seals the rest; the WAL shrinks to an empty file; results unchanged.
    assert!(
        server
            .cli(&["collection", "flush", "docs"])
            .status
            .success()
    );
    let info = json_lines(&server.cli(&["collection", "info", "docs", "--json"]));
    assert_eq!(info[0]["mutable_points"], 0);
    assert_eq!(info[0]["wal_bytes"], 16);
    let after_flush = search_file(&server, &qfile);
    assert_eq!(after_writes, after_flush);

    // Drop.
    assert!(server.cli(&["collection", "drop", "docs"]).status.success());
    assert!(json_lines(&server.cli(&["collection", "list", "--json"])).is_empty());
    assert!(server.stop(), "graceful shutdown exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_batch_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    for (name, metric) in [("l2", pb::Metric::L2), ("dot", pb::Metric::Dot)] {
        c.create_collection(name, 2, metric).await.unwrap();
        let pts = vec![
            pb::Point {
                id: Some(num_id(1)),
                vector: vec![1.0, 0.0],
                payload_json: None,
            },
            pb::Point {
                id: Some(num_id(2)),
                vector: vec![3.0, 0.0],
                payload_json: None,
            },
            pb::Point {
                id: Some(num_id(3)),
                vector: vec![0.0, 1.0],
                payload_json: None,
            },
        ];
        c.upsert(name, pts).await.unwrap();
    }
    let req = |coll: &str| pb::SearchRequest {
        collection: coll.into(),
        vector: vec![1.1, 0.0],
        k: 2,
        ..Default::default()
    };
    let r = c
        .search
        .search_batch(pb::SearchBatchRequest {
            searches: vec![req("l2"), req("dot")],
        })
        .await
        .unwrap()
        .into_inner();
    let ids = |res: &pb::SearchResponse| {
        res.hits
            .iter()
            .map(|h| h.id.clone().unwrap())
            .collect::<Vec<_>>()
    };
    // l2: (1,0) at 0.1, then (0,1) at 1.487 before (3,0) at 1.9; dot: (3,0) gives 3.3, then (1,0).
    assert_eq!(ids(&r.results[0]), vec![num_id(1), num_id(3)]);
    assert!((r.results[0].hits[0].score - 0.1).abs() < 1e-5);
    assert_eq!(ids(&r.results[1]), vec![num_id(2), num_id(1)]);
    assert!((r.results[1].hits[0].score - 3.3).abs() < 1e-5);
    // One bad search in a batch names its index.
    let mut bad = req("l2");
    bad.vector = vec![1.0];
    let e = c
        .search
        .search_batch(pb::SearchBatchRequest {
            searches: vec![req("l2"), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("searches[1]"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let ch = server.client().await.channel;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "",
        "quiver.v1.Points",
        "quiver.v1.Search",
        "quiver.v1.Collections",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    // What `grpcurl -plaintext ADDR list` asks.
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "quiver.v1.Collections",
        "quiver.v1.Points",
        "quiver.v1.Search",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(server.stop(), "SIGTERM exits cleanly");
}
