//! Hybrid retrieval end to end through the real server, CLI and gRPC client: text and sparse
//! fields declared at creation, BM25 finding the rare term that a dense query misses, fusion
//! with each hit's branch ranks, filters, `SearchBatch`, a `kill -9` restart, and bad input
//! refused with the field at fault.
use std::io::Write;

use quiver_client::pb;
use quiver_tests::{Server, fails_with, json_lines, ok, vector};
use tonic::Code;

const DIM: usize = 8;
const WORDS: [&str; 16] = [
    "river", "stone", "market", "winter", "signal", "garden", "copper", "harbor", "engine",
    "lantern", "meadow", "falcon", "ledger", "orbit", "pepper", "walnut",
];

fn body(i: u64) -> String {
    (0..(5 + i % 7))
        .map(|j| WORDS[((i * 7 + j * 3 + j * j) % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn hits(out: &std::process::Output) -> Vec<serde_json::Value> {
    json_lines(out)[0]["hits"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_search_through_server_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    ok(&server.cli(&[
        "collection",
        "create",
        "h",
        "--dim",
        "8",
        "--segment-max-rows",
        "400",
        "--field",
        "body:text:english",
        "--field",
        "sp:sparse",
        "--field",
        "grp:keyword",
    ]));
    let file = dir.path().join("p.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..1500u64 {
        // One needle: the only row with "abacuses" (stemmed to the query's "abacus").
        let text = if i == 777 {
            format!("{} abacuses", body(i))
        } else {
            body(i)
        };
        let payload = serde_json::json!({
            "body": text,
            "grp": format!("g{}", i % 2),
            "sp": {"indices": [i % 50, 100 + i % 7], "values": [1.0 + (i % 5) as f32, 0.5]},
        });
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": i, "vector": vector(i, DIM), "payload": payload})
        )
        .unwrap();
    }
    drop(f);
    ok(&server.cli(&["upsert", "--collection", "h", file.to_str().unwrap()]));

    // Text alone finds the needle first; its branch rank says so.
    let t = hits(&server.cli(&["search", "--collection", "h", "--text", "Abacus", "--json"]));
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0]["id"], 777);
    assert_eq!(t[0]["branches"]["text"]["rank"], 1);
    // A dense query near another point misses it; fused with text, it is found.
    let q = serde_json::to_string(&vector(5, DIM)).unwrap();
    let dense = hits(&server.cli(&["search", "--collection", "h", "--vector", &q, "--json"]));
    assert!(dense.iter().all(|h| h["id"] != 777));
    let fused_args = [
        "search",
        "--collection",
        "h",
        "--vector",
        &q,
        "--text",
        "abacus",
        "--json",
    ];
    let fused = hits(&server.cli(&fused_args));
    let needle = fused.iter().find(|h| h["id"] == 777).expect("the needle");
    assert_eq!(needle["branches"]["text"]["rank"], 1);
    assert!(needle["branches"].get("dense").is_none());
    assert_eq!(
        fused[0]["id"], 5,
        "dense rank 1 ties with text rank 1; ids break ties"
    );
    // Weights: silencing dense puts the text hit first.
    let mut args = fused_args.to_vec();
    args.extend(["--weights", "0,1,0"]);
    assert_eq!(hits(&server.cli(&args))[0]["id"], 777);
    // Sparse: the dot product's top hit holds dimension 7 with the largest weight.
    let s = hits(&server.cli(&[
        "search",
        "--collection",
        "h",
        "--sparse",
        r#"{"indices": [7], "values": [1.0]}"#,
        "--json",
    ]));
    assert_eq!(s.len(), 10);
    for h in &s {
        let id = h["id"].as_u64().unwrap();
        assert_eq!(id % 50, 7);
        assert!((h["score"].as_f64().unwrap() - (1.0 + (id % 5) as f64)).abs() < 1e-6);
    }
    assert!(
        s.windows(2)
            .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64())
    );
    // Filters apply in every branch.
    let filtered = hits(&server.cli(&[
        "search",
        "--collection",
        "h",
        "--vector",
        &q,
        "--text",
        "river copper",
        "--sparse",
        r#"{"indices": [7, 101], "values": [1.0, 1.0]}"#,
        "--filter",
        r#"grp = "g1""#,
        "--fusion",
        "dbsf",
        "--json",
    ]));
    assert_eq!(filtered.len(), 10);
    for h in &filtered {
        assert_eq!(h["id"].as_u64().unwrap() % 2, 1, "{h}");
    }

    // SearchBatch mixes dense and hybrid searches.
    let mut c = server.client().await;
    let req = |text: Option<&str>| pb::SearchRequest {
        collection: "h".into(),
        vector: vector(5, DIM),
        k: 5,
        text: text.map(|t| pb::TextQuery {
            field: "body".into(),
            query: t.into(),
            ..Default::default()
        }),
        weights: text.map(|_| pb::BranchWeights {
            dense: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let batch = c
        .search
        .search_batch(pb::SearchBatchRequest {
            searches: vec![req(None), req(Some("abacus")), req(None)],
        })
        .await
        .unwrap()
        .into_inner();
    let first = |r: &pb::SearchResponse| match r.hits[0].id.as_ref().and_then(|i| i.kind.clone()) {
        Some(pb::point_id::Kind::Num(n)) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(first(&batch.results[0]), 5);
    assert_eq!(first(&batch.results[1]), 777);
    assert!(batch.results[1].hits[0].text.is_some());
    assert!(batch.results[0].hits[0].text.is_none());

    // Bad input: refused up front, naming the field.
    let bad = |mut r: pb::SearchRequest, f: &dyn Fn(&mut pb::SearchRequest)| {
        f(&mut r);
        r
    };
    let text = |field: &str| {
        Some(pb::TextQuery {
            field: field.into(),
            query: "x".into(),
            ..Default::default()
        })
    };
    let cases: Vec<(pb::SearchRequest, &str)> = vec![
        (bad(req(None), &|r| r.text = text("nope")), "text.field"),
        (bad(req(None), &|r| r.text = text("grp")), "text.field"),
        (bad(req(Some("x")), &|r| r.fusion = 9), "fusion"),
        (
            bad(req(Some("x")), &|r| {
                r.weights = Some(pb::BranchWeights {
                    text: Some(-1.0),
                    ..Default::default()
                })
            }),
            "weights.text",
        ),
        (bad(req(Some("x")), &|r| r.rrf_k = Some(0.0)), "rrf_k"),
        (bad(req(None), &|r| r.rrf_k = Some(10.0)), "rrf_k"),
        (
            bad(req(None), &|r| {
                r.sparse = Some(pb::SparseQuery {
                    field: "sp".into(),
                    vector: Some(pb::SparseVector {
                        indices: vec![4, 2],
                        values: vec![1.0, 1.0],
                    }),
                })
            }),
            "indices[1]",
        ),
        (
            bad(req(None), &|r| {
                r.sparse = Some(pb::SparseQuery {
                    field: "body".into(),
                    vector: Some(pb::SparseVector::default()),
                })
            }),
            "sparse.field",
        ),
        (
            bad(req(None), &|r| {
                r.sparse = Some(pb::SparseQuery {
                    field: "sp".into(),
                    vector: Some(pb::SparseVector {
                        indices: (0..5000).collect(),
                        values: vec![1.0; 5000],
                    }),
                })
            }),
            "at most 4096",
        ),
        (
            bad(req(Some("x")), &|r| r.candidates = Some(20_000)),
            "candidates",
        ),
    ];
    for (r, needle) in cases {
        let e = c.search.search(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{needle}: {e:?}");
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    // A malformed sparse value is refused at write time, naming the point and the entry.
    let badfile = dir.path().join("bad.jsonl");
    std::fs::write(
        &badfile,
        r#"{"id": 9001, "vector": [1,0,0,0,0,0,0,0], "payload": {"sp": {"indices": [3, 3], "values": [1, 2]}}}"#,
    )
    .unwrap();
    fails_with(
        &server.cli(&["upsert", "--collection", "h", badfile.to_str().unwrap()]),
        &["points[0].payload.sp", "9001", "indices[1]"],
    );
    fails_with(
        &server.cli(&[
            "search",
            "--collection",
            "h",
            "--text",
            "x",
            "--filter",
            r#"body = "x""#,
        ]),
        &["filter.body", "searched"],
    );

    // kill -9: acknowledged writes, sealed and in the WAL, answer the same after restart.
    let before = hits(&server.cli(&fused_args));
    server.kill9();
    server.reopen().await;
    let mut after = Vec::new();
    for _ in 0..200 {
        let out = server.cli(&fused_args);
        if out.status.success() {
            after = hits(&out);
            break;
        }
        // Field indexes of a segment whose file was not yet written are rebuilt first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ids = |v: &[serde_json::Value]| v.iter().map(|h| h["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after));
}
