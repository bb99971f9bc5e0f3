//! Every invalid request gets its precise status, names the field, writes nothing, and the
//! server keeps serving.
use quiver_client::{num_id, pb, str_id};
use quiver_tests::Server;
use tonic::Code;

fn point(id: u64, vector: Vec<f32>) -> pb::Point {
    pb::Point {
        id: Some(num_id(id)),
        vector,
        payload_json: None,
    }
}

/// (case, the status it got, the code it must get, text its message must contain).
type Cases = Vec<(&'static str, tonic::Status, Code, &'static str)>;

/// A server with a 1 MiB message limit (cheap oversized cases) and collection `c` (dim 4,
/// cosine) holding one point.
async fn fixture(dir: &std::path::Path) -> (Server, quiver_client::Client) {
    let server = Server::start_with(dir, &[("QUIVER__SERVER__MAX_MESSAGE_BYTES", "1048576")]).await;
    let mut c = server.client().await;
    c.create_collection("c", 4, pb::Metric::Cosine)
        .await
        .unwrap();
    c.upsert("c", vec![point(1, vec![1.0, 0.0, 0.0, 0.0])])
        .await
        .unwrap();
    (server, c)
}

/// Every case got its code and names its field; nothing was written, and the server serves.
async fn check(cases: &Cases, c: &mut quiver_client::Client) {
    for (what, status, code, needle) in cases {
        assert_eq!(status.code(), *code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: message {:?} lacks {needle:?}",
            status.message()
        );
    }
    assert_eq!(c.count("c").await.unwrap(), 1);
    let hits = c
        .search("c", vec![1.0, 0.1, 0.0, 0.0], 5, false)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_point_writes_get_precise_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut c) = fixture(dir.path()).await;
    let upsert = |points: Vec<pb::Point>| pb::UpsertRequest {
        collection: "c".into(),
        points,
        batch_id: 0,
    };
    let mut cases: Cases = Vec::new();
    let mut p = c.points.clone();
    cases.push((
        "wrong dimension",
        p.upsert(upsert(vec![point(2, vec![1.0; 4]), point(3, vec![1.0; 5])]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "points[1].vector: expected dimension 4, got 5",
    ));
    cases.push((
        "NaN",
        p.upsert(upsert(vec![point(2, vec![1.0, f32::NAN, 0.0, 0.0])]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "points[0].vector[1]",
    ));
    cases.push((
        "infinity",
        p.upsert(upsert(vec![point(2, vec![1.0, 0.0, f32::INFINITY, 0.0])]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "points[0].vector[2]",
    ));
    cases.push((
        "empty vector",
        p.upsert(upsert(vec![point(2, vec![])])).await.unwrap_err(),
        Code::InvalidArgument,
        "points[0].vector: vector is empty",
    ));
    cases.push((
        "missing id",
        p.upsert(upsert(vec![pb::Point {
            id: None,
            vector: vec![1.0; 4],
            payload_json: None,
        }]))
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "points[0].id",
    ));
    cases.push((
        "empty string id",
        p.upsert(upsert(vec![pb::Point {
            id: Some(str_id("")),
            vector: vec![1.0; 4],
            payload_json: None,
        }]))
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "points[0].id",
    ));
    cases.push((
        "payload not an object",
        p.upsert(upsert(vec![pb::Point {
            id: Some(num_id(2)),
            vector: vec![1.0; 4],
            payload_json: Some("[1,2]".into()),
        }]))
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "points[0].payload_json",
    ));
    cases.push((
        "payload not JSON",
        p.upsert(upsert(vec![pb::Point {
            id: Some(num_id(2)),
            vector: vec![1.0; 4],
            payload_json: Some("{oops".into()),
        }]))
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "points[0].payload_json: invalid JSON",
    ));
    cases.push((
        "unknown collection",
        p.upsert(pb::UpsertRequest {
            collection: "nope".into(),
            points: vec![point(2, vec![1.0; 4])],
            batch_id: 0,
        })
        .await
        .unwrap_err(),
        Code::NotFound,
        "collection 'nope' not found",
    ));
    let huge = pb::Point {
        id: Some(num_id(9)),
        vector: vec![0.5; 300_000],
        payload_json: None,
    };
    cases.push((
        "oversized message",
        p.upsert(upsert(vec![huge])).await.unwrap_err(),
        Code::ResourceExhausted,
        "too large",
    ));

    check(&cases, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_collection_requests_get_precise_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut c) = fixture(dir.path()).await;
    let mut cases: Cases = Vec::new();
    let mut col = c.collections.clone();
    let create = |name: &str, dim: u32, metric: pb::Metric| pb::CreateCollectionRequest {
        name: name.into(),
        dim,
        metric: metric as i32,
        ..Default::default()
    };
    cases.push((
        "duplicate collection",
        col.create(create("c", 4, pb::Metric::L2))
            .await
            .unwrap_err(),
        Code::AlreadyExists,
        "collection 'c' already exists",
    ));
    cases.push((
        "path in name",
        col.create(create("../etc", 4, pb::Metric::L2))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "name: collection name contains '.'",
    ));
    cases.push((
        "slash in name",
        col.create(create("a/b", 4, pb::Metric::L2))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "name:",
    ));
    cases.push((
        "long name",
        col.create(create(&"x".repeat(65), 4, pb::Metric::L2))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "the limit is 64",
    ));
    cases.push((
        "zero dim",
        col.create(create("z", 0, pb::Metric::L2))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "dim:",
    ));
    cases.push((
        "no metric",
        col.create(create("z", 4, pb::Metric::Unspecified))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "metric",
    ));
    cases.push((
        "pq_bits neither 4 nor 8",
        col.create(pb::CreateCollectionRequest {
            index: Some(pb::IndexParams {
                kind: pb::IndexKind::IvfPq as i32,
                pq_bits: 6,
                ..Default::default()
            }),
            ..create("z", 4, pb::Metric::L2)
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "index.pq_bits",
    ));
    cases.push((
        "pq_m does not divide dim",
        col.create(pb::CreateCollectionRequest {
            index: Some(pb::IndexParams {
                kind: pb::IndexKind::IvfPq as i32,
                pq_m: 3,
                ..Default::default()
            }),
            ..create("z", 4, pb::Metric::L2)
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "index.pq_m",
    ));
    cases.push((
        "get unknown collection",
        col.get(pb::GetCollectionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err(),
        Code::NotFound,
        "nope",
    ));
    cases.push((
        "drop unknown collection",
        col.delete(pb::DeleteCollectionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err(),
        Code::NotFound,
        "nope",
    ));

    check(&cases, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_searches_and_cursors_get_precise_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut c) = fixture(dir.path()).await;
    let mut cases: Cases = Vec::new();
    let mut p = c.points.clone();
    let mut s = c.search.clone();
    let search = |vector: Vec<f32>, k: u32| pb::SearchRequest {
        collection: "c".into(),
        vector,
        k,
        ..Default::default()
    };
    cases.push((
        "search dimension",
        s.search(search(vec![1.0; 3], 5)).await.unwrap_err(),
        Code::InvalidArgument,
        "vector: expected dimension 4, got 3",
    ));
    cases.push((
        "search NaN",
        s.search(search(vec![f32::NAN; 4], 5)).await.unwrap_err(),
        Code::InvalidArgument,
        "vector[0]",
    ));
    cases.push((
        "search zero vector (cosine)",
        s.search(search(vec![0.0; 4], 5)).await.unwrap_err(),
        Code::InvalidArgument,
        "zero vector",
    ));
    cases.push((
        "nprobe zero",
        s.search(pb::SearchRequest {
            nprobe: Some(0),
            ..search(vec![1.0; 4], 5)
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "nprobe",
    ));
    cases.push((
        "refine out of range",
        s.search(pb::SearchRequest {
            refine_factor: Some(5000),
            ..search(vec![1.0; 4], 5)
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "refine_factor",
    ));
    cases.push((
        "filter condition without an operator",
        s.search(pb::SearchRequest {
            filter: Some(pb::Filter {
                must: vec![pb::Condition {
                    key: "tenant".into(),
                    kind: None,
                }],
                ..Default::default()
            }),
            ..search(vec![1.0; 4], 5)
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "filter.must[0]",
    ));
    cases.push((
        "filter text and tree together",
        s.search(pb::SearchRequest {
            filter: Some(pb::Filter {
                text: "a = 1".into(),
                must_not: vec![pb::Condition {
                    key: "a".into(),
                    kind: Some(pb::condition::Kind::Exists(true)),
                }],
                ..Default::default()
            }),
            ..search(vec![1.0; 4], 5)
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "not both",
    ));
    for (what, target, nprobe) in [
        ("target recall above 1", 1.5, None),
        ("target recall zero", 0.0, None),
        ("target recall NaN", f32::NAN, None),
        ("target recall with nprobe", 0.9, Some(8)),
    ] {
        cases.push((
            what,
            s.search(pb::SearchRequest {
                target_recall: Some(target),
                nprobe,
                ..search(vec![1.0; 4], 5)
            })
            .await
            .unwrap_err(),
            Code::InvalidArgument,
            "target_recall",
        ));
    }
    cases.push((
        "k too large",
        s.search(search(vec![1.0; 4], 10_001)).await.unwrap_err(),
        Code::InvalidArgument,
        "k = 10001",
    ));
    cases.push((
        "bad cursor",
        p.scroll(pb::ScrollRequest {
            collection: "c".into(),
            cursor: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "cursor",
    ));

    check(&cases, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_error_names_the_batch_and_keeps_earlier_batches() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    c.create_collection("s", 2, pb::Metric::L2).await.unwrap();
    let batches = vec![
        pb::UpsertRequest {
            collection: "s".into(),
            points: vec![point(1, vec![1.0, 2.0]), point(2, vec![1.0, 2.0])],
            batch_id: 1,
        },
        pb::UpsertRequest {
            collection: "s".into(),
            points: vec![point(3, vec![1.0, 2.0]), point(4, vec![1.0])],
            batch_id: 2,
        },
        pb::UpsertRequest {
            collection: "s".into(),
            points: vec![point(5, vec![1.0, 2.0])],
            batch_id: 3,
        },
    ];
    let mut acks = c
        .points
        .upsert_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let first = acks.message().await.unwrap().unwrap();
    assert_eq!(
        (first.batch_id, first.upserted, first.total_upserted),
        (1, 2, 2)
    );
    let err = acks.message().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("batch 2 "), "{}", err.message());
    assert!(
        err.message()
            .contains("points[1].vector: expected dimension 2, got 1"),
        "{}",
        err.message()
    );
    assert_eq!(
        c.count("s").await.unwrap(),
        2,
        "batch 1 kept, batch 2 rejected whole, batch 3 never applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    assert!(
        server
            .cli(&["collection", "create", "t", "--dim", "2", "--metric", "l2"])
            .status
            .success()
    );
    let cases = [
        (
            "{\"id\": 1, \"vector\": [1, 2]}\n{\"id\": 2, \"vector\": [1, \"x\"]}\n",
            ":2: field 'vector'[1]",
        ),
        (
            "{\"id\": 1, \"vector\": [1, 2]}\n\n{\"vector\": [1, 2]}\n",
            ":3: field 'id' is missing",
        ),
        (
            "{\"id\": 1, \"vector\": [1, 2]}\nnot json\n",
            ":2: invalid JSON",
        ),
        (
            "{\"id\": 1, \"vector\": [1, 2]}\n{\"id\": 2, \"vector\": [1, 2, 3]}\n",
            ":2: INVALID_ARGUMENT",
        ),
        ("{\"id\": -4, \"vector\": [1, 2]}\n", ":1: field 'id'"),
    ];
    for (i, (content, needle)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&f, content).unwrap();
        let out = server.cli(&["upsert", "--collection", "t", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} should fail");
        assert!(
            err.contains(&format!("bad{i}.jsonl{needle}")),
            "case {i}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let out = server.cli(&["count", "--collection", "missing"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND: collection 'missing' not found")
    );
    let out = server.cli(&["search", "--collection", "t", "--vector", "[1, 2, 3]"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("INVALID_ARGUMENT: vector: expected dimension 2, got 3")
    );
}
