//! A hostile client against a real `quiverd`: requests built to crash the server, exhaust its
//! memory or CPU, flood its metrics, or widen a key's powers. Each case asserts the precise
//! status naming the limit, that the server still answers, that its peak memory (VmHWM) stayed
//! under a stated bound, and that acknowledged data is intact.
use std::time::Duration;

use quiver_client::{Client, Headers, num_id, pb};
use quiver_tests::{
    ADMIN_KEY as ADMIN, KEYED, Server, as_key, fails_with, free_port, http_get, new_key, ok,
};
use serde_json::Value;

/// Peak memory a server may reach in these tests (the debug build idles at ~60 MiB and the
/// largest legitimate request here is a few MiB; the attacks, unbounded, reach gigabytes).
const PEAK_MIB: u64 = 1024;

async fn create(c: &mut Client, name: &str, dim: u32) {
    c.collections
        .create(pb::CreateCollectionRequest {
            name: name.into(),
            dim,
            metric: pb::Metric::L2 as i32,
            ..Default::default()
        })
        .await
        .expect("create");
}

async fn upsert(c: &mut Client, name: &str, points: Vec<pb::Point>) {
    c.points
        .upsert(pb::UpsertRequest {
            collection: name.into(),
            points,
            ..Default::default()
        })
        .await
        .expect("upsert");
}

fn point(i: u64, payload: Option<String>) -> pb::Point {
    pb::Point {
        id: Some(num_id(i)),
        vector: vec![i as f32, 1.0],
        payload_json: payload,
    }
}

async fn count(c: &mut Client, name: &str) -> u64 {
    c.points
        .count(pb::CountRequest {
            collection: name.into(),
            ..Default::default()
        })
        .await
        .expect("the server still answers")
        .into_inner()
        .count
}

/// The refusal of a call that must fail (without printing a possibly huge answer otherwise).
trait Refused {
    fn refused(self) -> tonic::Status;
}

impl<T> Refused for Result<T, tonic::Status> {
    fn refused(self) -> tonic::Status {
        match self {
            Ok(_) => panic!("the call succeeded; it must be refused"),
            Err(e) => e,
        }
    }
}

fn assert_status(e: &tonic::Status, code: tonic::Code, needles: &[&str]) {
    assert_eq!(e.code(), code, "{e:?}");
    for n in needles {
        assert!(e.message().contains(n), "{n:?} not in {:?}", e.message());
    }
}

/// One IngestDocuments message creating collection `docs`; the call must be refused.
async fn ingest_refused(c: &mut Client, doc: pb::Document) -> tonic::Status {
    let msg = pb::IngestDocumentsRequest {
        collection: "docs".into(),
        create: true,
        documents: vec![doc],
        ..Default::default()
    };
    c.rag
        .ingest_documents(tokio_stream::iter([msg]))
        .await
        .refused()
}

fn big_payload(bytes: usize) -> String {
    format!("{{\"blob\":\"{}\"}}", "x".repeat(bytes))
}

#[tokio::test]
async fn deep_filters_are_refused_while_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let mut c = s.client().await;
    create(&mut c, "c", 2).await;
    upsert(&mut c, "c", vec![point(1, Some("{\"a\":1}".into()))]).await;
    // The report: 30,000 parentheses from the CLI overflowed a worker's stack.
    let deep = format!("{}a = 1{}", "(".repeat(30_000), ")".repeat(30_000));
    fails_with(
        &s.cli(&["count", "--collection", "c", "--filter", &deep]),
        &["INVALID_ARGUMENT", "nested deeper than 16"],
    );
    // `not` recursion and a proto tree nested through conditions fail the same way.
    let nots = format!("{}a = 1", "not ".repeat(50_000));
    let e = c
        .points
        .count(pb::CountRequest {
            collection: "c".into(),
            filter: Some(pb::Filter {
                text: nots,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::InvalidArgument,
        &["filter.text", "nested deeper"],
    );
    let mut tree = pb::Filter {
        text: "a = 1".into(),
        ..Default::default()
    };
    for _ in 0..60 {
        tree = pb::Filter {
            must: vec![pb::Condition {
                kind: Some(pb::condition::Kind::Filter(tree)),
                ..Default::default()
            }],
            ..Default::default()
        };
    }
    let e = c
        .points
        .count(pb::CountRequest {
            collection: "c".into(),
            filter: Some(tree),
            ..Default::default()
        })
        .await
        .refused();
    // prost's own decode limit (100) or ours (16): either way refused, never a crash.
    assert!(
        matches!(
            e.code(),
            tonic::Code::InvalidArgument | tonic::Code::Internal
        ),
        "{e:?}"
    );
    assert_eq!(count(&mut c, "c").await, 1);
    assert_eq!(
        ok(&s.cli(&["count", "--collection", "c", "--filter", "((a = 1))"])),
        "1"
    );
    assert!(s.peak_rss_mib() < PEAK_MIB, "{} MiB", s.peak_rss_mib());
}

/// A server whose responses and payload updates are bounded by an 8 MiB message size, and
/// collection `c` holding ten points with 900 KB payloads each (9 MB of acknowledged data).
async fn ten_big_points(dir: &std::path::Path) -> (Server, Client) {
    let s = Server::start_with(
        dir,
        &[(
            "QUIVER__SERVER__MAX_MESSAGE_BYTES",
            &(8u32 << 20).to_string(),
        )],
    )
    .await;
    let mut c = s.client().await;
    create(&mut c, "c", 2).await;
    for i in 0..10 {
        upsert(&mut c, "c", vec![point(i, Some(big_payload(900_000)))]).await;
    }
    (s, c)
}

#[tokio::test]
async fn repeated_ids_cannot_multiply_the_work_of_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut c) = ten_big_points(dir.path()).await;
    // Get repeating one big id 90,000 times: answered once.
    let got = c
        .points
        .get(pb::GetPointsRequest {
            collection: "c".into(),
            ids: vec![num_id(3); 90_000],
            with_payload: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.points.len(), 1);
    // Every big point at once exceeds the 8 MiB response budget: refused, not built.
    let e = c
        .points
        .get(pb::GetPointsRequest {
            collection: "c".into(),
            ids: (0..10).map(num_id).chain((0..10).map(num_id)).collect(),
            with_payload: true,
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["ids", "response budget"],
    );
    // A scroll page of them ends early instead; paging still returns every point once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = c
            .points
            .scroll(pb::ScrollRequest {
                collection: "c".into(),
                limit: 10,
                cursor: cursor.clone(),
                with_payload: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.points.len() < 10, "a page is cut to the budget");
        seen.extend(page.points.iter().map(|p| format!("{:?}", p.id)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), 10);

    // UpdatePayload repeating one id 90,000 times with a 40 KB set: applied once.
    let set = big_payload(40_000);
    let out = c
        .points
        .update_payload(pb::UpdatePayloadRequest {
            collection: "c".into(),
            ids: vec![num_id(3); 90_000],
            set_json: set.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.updated, 1);
    // Many distinct ids × a big set: refused before the log, naming the limit.
    upsert(
        &mut c,
        "c",
        (100..2100).map(|i| point(i, None)).collect::<Vec<_>>(),
    )
    .await;
    let e = c
        .points
        .update_payload(pb::UpdatePayloadRequest {
            collection: "c".into(),
            ids: (100..2100).map(num_id).collect(),
            set_json: big_payload(10_000),
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["server.max_message_bytes"],
    );
    // A merge that would outgrow the payload limit: refused, the stored payload untouched.
    let e = c
        .points
        .update_payload(pb::UpdatePayloadRequest {
            collection: "c".into(),
            ids: vec![num_id(5)],
            set_json: "{\"more\":\"".to_owned() + &"y".repeat(200_000) + "\"}",
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["set_json", "max_payload_bytes"],
    );
    // Small updates of many ids still work.
    let out = c
        .points
        .update_payload(pb::UpdatePayloadRequest {
            collection: "c".into(),
            ids: (100..2100).map(num_id).collect(),
            set_json: "{\"k\":1}".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.updated, 2000);
    // Acknowledged data is intact.
    let five = c
        .points
        .get(pb::GetPointsRequest {
            collection: "c".into(),
            ids: vec![num_id(5)],
            with_payload: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let v: Value = serde_json::from_str(five.points[0].payload_json.as_deref().unwrap()).unwrap();
    assert_eq!(v["blob"].as_str().unwrap().len(), 900_000);
    assert!(v.get("more").is_none());
    assert_eq!(count(&mut c, "c").await, 2010);
    assert!(s.peak_rss_mib() < PEAK_MIB, "{} MiB", s.peak_rss_mib());
}

#[tokio::test]
async fn concurrent_searches_each_keep_their_own_response_budget() {
    let dir = tempfile::tempdir().unwrap();
    // Five of the points (4.5 MB) fit one search's 8 MiB budget, ten do not. Searches that run
    // at the same time (or are ever batched together) must not share one budget.
    let (_s, mut c) = ten_big_points(dir.path()).await;
    let search = |c: Client, x: f32, k: u32| async move {
        let mut c = c;
        c.search
            .search(pb::SearchRequest {
                collection: "c".into(),
                vector: vec![x, 1.0],
                k,
                with_payload: true,
                ..Default::default()
            })
            .await
            .map(|r| {
                let hits = r.into_inner().hits;
                assert!(
                    hits.iter()
                        .all(|h| h.payload_json.as_ref().is_some_and(|p| p.len() > 900_000))
                );
                hits.iter()
                    .map(|h| format!("{:?}", h.id))
                    .collect::<Vec<_>>()
            })
    };
    let alone_low = search(c.clone(), 0.0, 5).await.unwrap();
    let alone_high = search(c.clone(), 9.0, 5).await.unwrap();
    assert_ne!(alone_low, alone_high);
    // 24 at once on one connection: every third asks for all ten and alone is refused.
    let calls: Vec<_> = (0..24u32)
        .map(|j| {
            let (x, k) = match j % 3 {
                0 => (0.0, 5),
                1 => (9.0, 5),
                _ => (4.0, 10),
            };
            tokio::spawn(search(c.clone(), x, k))
        })
        .collect();
    for (j, call) in calls.into_iter().enumerate() {
        match (j % 3, call.await.unwrap()) {
            (0, Ok(ids)) => assert_eq!(ids, alone_low, "search {j}"),
            (1, Ok(ids)) => assert_eq!(ids, alone_high, "search {j}"),
            (2, Err(e)) => assert_status(&e, tonic::Code::ResourceExhausted, &["response budget"]),
            (_, other) => panic!("search {j}: {:?}", other.map(|ids| ids.len())),
        }
    }
    assert_eq!(count(&mut c, "c").await, 10);
}

#[tokio::test]
async fn huge_k_times_batch_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    let mut c = s.client().await;
    create(&mut c, "c", 2).await;
    upsert(&mut c, "c", (0..100).map(|i| point(i, None)).collect()).await;
    let q = |k: u32, refine: Option<u32>| pb::SearchRequest {
        collection: "c".into(),
        vector: vec![1.0, 1.0],
        k,
        refine_factor: refine,
        ..Default::default()
    };
    let e = c
        .search
        .search_batch(pb::SearchBatchRequest {
            searches: vec![q(10_000, None); 1000],
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["searches", "candidates"],
    );
    let e = c.search.search(q(10_000, Some(1000))).await.unwrap_err();
    assert_status(
        &e,
        tonic::Code::InvalidArgument,
        &["refine_factor", "candidates"],
    );
    let hits = c
        .search
        .search(q(10, None))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 10);
    assert!(s.peak_rss_mib() < PEAK_MIB, "{} MiB", s.peak_rss_mib());
}

#[tokio::test]
async fn unknown_methods_share_one_metric_label() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let s = Server::start_with(dir.path(), &[("QUIVER__SERVER__METRICS_LISTEN", &listen)]).await;
    let ch = tonic::transport::Endpoint::from_shared(s.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let before = http_get(&listen, "/metrics").await.len();
    for i in 0..500 {
        let mut g = tonic::client::Grpc::new(ch.clone());
        g.ready().await.unwrap();
        let path: http::uri::PathAndQuery = format!("/evil.Service{i}/Method{i}").parse().unwrap();
        let e = g
            .unary::<_, pb::CountResponse, _>(
                tonic::Request::new(pb::CountRequest::default()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    }
    let metrics = http_get(&listen, "/metrics").await;
    assert!(
        !metrics.contains("evil.Service"),
        "random paths became series"
    );
    assert!(
        metrics.contains("method=\"unknown\""),
        "counted under `unknown`"
    );
    // 500 paths would have added ~500 × 20 histogram lines; one label adds a few.
    assert!(
        metrics.len() < before + 20_000,
        "/metrics grew from {before} to {} bytes",
        metrics.len()
    );
    let mut c = s.client().await;
    create(&mut c, "c", 2).await;
    assert_eq!(count(&mut c, "c").await, 0);
}

#[tokio::test]
async fn giant_documents_and_create_settings_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &[("QUIVER__LIMITS__MAX_COLLECTIONS", "3")]).await;
    let mut c = s.client().await;
    // nlist beyond segment_max_rows / 39.
    let e = c
        .collections
        .create(pb::CreateCollectionRequest {
            name: "n".into(),
            dim: 8,
            metric: pb::Metric::L2 as i32,
            segment_max_rows: Some(1000),
            index: Some(pb::IndexParams {
                kind: pb::IndexKind::IvfPq as i32,
                nlist: 1000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::InvalidArgument,
        &["index.nlist", "segment_max_rows / 39"],
    );
    // A giant document, and metadata that would be copied into thousands of chunks.
    let e = ingest_refused(
        &mut c,
        pb::Document {
            id: "big".into(),
            text: "word ".repeat(4 << 20),
            ..Default::default()
        },
    )
    .await;
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["documents[0].text", "at most"],
    );
    let e = ingest_refused(
        &mut c,
        pb::Document {
            id: "meta".into(),
            text: "a sentence of some words. ".repeat(200_000),
            metadata_json: Some(big_payload(200_000)),
            ..Default::default()
        },
    )
    .await;
    assert_status(&e, tonic::Code::ResourceExhausted, &["metadata_json"]);
    // The collection cap.
    for n in ["a", "b", "c"] {
        create(&mut c, n, 2).await;
    }
    let e = c
        .collections
        .create(pb::CreateCollectionRequest {
            name: "d".into(),
            dim: 2,
            metric: pb::Metric::L2 as i32,
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["limits.max_collections"],
    );
    assert_eq!(count(&mut c, "a").await, 0);
    assert!(s.peak_rss_mib() < PEAK_MIB, "{} MiB", s.peak_rss_mib());
}

/// Streams are bounded per message: a batch over the row limit and a message over the size
/// limit end the stream with a status naming the limit; the batches before them stay, and the
/// server keeps answering.
#[tokio::test]
async fn oversized_stream_messages_are_refused_and_earlier_batches_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__SERVER__MAX_MESSAGE_BYTES", "1048576"),
            ("QUIVER__LIMITS__MAX_BATCH_ROWS", "1000"),
        ],
    )
    .await;
    let mut c = s.client().await;
    create(&mut c, "st", 2).await;
    let batch = |id: u64, points: Vec<pb::Point>| pb::UpsertRequest {
        collection: "st".into(),
        points,
        batch_id: id,
    };
    for (second, limit) in [
        (
            (10..1510).map(|i| point(i, None)).collect::<Vec<_>>(),
            "limits.max_batch_rows",
        ),
        (vec![point(10, Some(big_payload(2 << 20)))], "too large"),
    ] {
        let msgs = vec![
            batch(1, (0..10).map(|i| point(i, None)).collect()),
            batch(2, second),
            batch(3, vec![point(9999, None)]),
        ];
        let mut acks = c
            .points
            .upsert_stream(tokio_stream::iter(msgs))
            .await
            .expect("stream opens")
            .into_inner();
        let mut acked = 0;
        let e = loop {
            match acks.message().await {
                Ok(Some(a)) => acked = a.total_upserted,
                Ok(None) => panic!("the stream ended without refusing the batch over {limit}"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{limit}: {e:?}");
        assert!(e.message().contains(limit), "{limit}: {}", e.message());
        assert!(acked <= 10, "{acked}");
        assert_eq!(
            count(&mut c, "st").await,
            10,
            "the first batch kept, nothing after"
        );
    }
    assert!(s.peak_rss_mib() < PEAK_MIB, "{} MiB", s.peak_rss_mib());
}

/// Tiny segments cannot pile up memory maps without bound: at the segment cap, writes that add
/// rows are refused up front, while reads, deletes and payload-free work go on.
#[tokio::test]
async fn segments_per_collection_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &[("QUIVER__LIMITS__MAX_SEGMENTS_PER_COLLECTION", "3")],
    )
    .await;
    let mut c = s.client().await;
    c.collections
        .create(pb::CreateCollectionRequest {
            name: "tiny".into(),
            dim: 2,
            metric: pb::Metric::L2 as i32,
            segment_max_rows: Some(16),
            ..Default::default()
        })
        .await
        .expect("create");
    // Each batch of 16 fills and seals one segment.
    for b in 0..3 {
        upsert(
            &mut c,
            "tiny",
            (b * 16..b * 16 + 16).map(|i| point(i, None)).collect(),
        )
        .await;
    }
    let e = c
        .points
        .upsert(pb::UpsertRequest {
            collection: "tiny".into(),
            points: vec![point(100, None)],
            ..Default::default()
        })
        .await
        .refused();
    assert_status(
        &e,
        tonic::Code::ResourceExhausted,
        &["tiny", "3 segments", "limits.max_segments_per_collection"],
    );
    assert_eq!(count(&mut c, "tiny").await, 48, "acknowledged data intact");
    c.points
        .delete(pb::DeletePointsRequest {
            collection: "tiny".into(),
            ids: vec![num_id(0)],
            filter: None,
        })
        .await
        .expect("deletes still pass");
    assert_eq!(count(&mut c, "tiny").await, 47);
    assert!(s.peak_rss_mib() < PEAK_MIB, "{} MiB", s.peak_rss_mib());
}

#[tokio::test]
async fn a_scoped_admin_key_cannot_widen_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_keyed(dir.path(), &["a", "b"]).await;
    let (admin_a, _) = new_key(&s, "admin", Some("a"));
    new_key(&s, "read", Some("b"));
    // Minting a key wider than itself, or for another collection: refused.
    fails_with(
        &as_key(&s, &admin_a, &["key", "create", "--role", "admin"]),
        &["PERMISSION_DENIED", "cannot mint a key for all collections"],
    );
    fails_with(
        &as_key(
            &s,
            &admin_a,
            &["key", "create", "--role", "read", "--collections", "a,b"],
        ),
        &["PERMISSION_DENIED", "cannot mint"],
    );
    // Within scope: fine.
    ok(&as_key(
        &s,
        &admin_a,
        &["key", "create", "--role", "read", "--collections", "a"],
    ));
    // It sees only keys within its scope (not the bootstrap-made key for b).
    let listed = ok(&as_key(&s, &admin_a, &["key", "list", "--json"]));
    assert!(!listed.contains("\"b\""), "{listed}");
    // Whole-server snapshots, other collections' audit and reviews: refused.
    fails_with(
        &as_key(&s, &admin_a, &["snapshot", "create", "s1"]),
        &["PERMISSION_DENIED", "whole server"],
    );
    fails_with(
        &as_key(&s, &admin_a, &["snapshot", "list"]),
        &["PERMISSION_DENIED"],
    );
    fails_with(
        &as_key(&s, &admin_a, &["audit", "list"]),
        &["PERMISSION_DENIED", "set collection"],
    );
    fails_with(
        &as_key(&s, &admin_a, &["audit", "list", "--collection", "b"]),
        &["PERMISSION_DENIED"],
    );
    fails_with(
        &as_key(&s, &admin_a, &["review", "list"]),
        &["PERMISSION_DENIED"],
    );
    ok(&as_key(
        &s,
        &admin_a,
        &["audit", "list", "--collection", "a"],
    ));
    // Restoring one collection --as another, outside the scope: refused.
    ok(&as_key(&s, ADMIN, &["snapshot", "create", "s1"]));
    fails_with(
        &as_key(
            &s,
            &admin_a,
            &[
                "snapshot",
                "restore",
                "s1",
                "--collection",
                "a",
                "--as",
                "b",
            ],
        ),
        &["PERMISSION_DENIED"],
    );
    fails_with(
        &as_key(
            &s,
            &admin_a,
            &["snapshot", "restore", "s1", "--collection", "b"],
        ),
        &["PERMISSION_DENIED"],
    );
    // Both collections are still there.
    assert_eq!(ok(&as_key(&s, ADMIN, &["count", "--collection", "b"])), "0");
}

#[tokio::test]
async fn a_whole_restore_does_not_revive_revoked_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_keyed(dir.path(), &["a"]).await;
    let (key, id) = new_key(&s, "read", None);
    let (key, id) = (key.as_str(), id.as_str());
    ok(&as_key(&s, key, &["count", "--collection", "a"]));
    ok(&as_key(&s, ADMIN, &["snapshot", "create", "before"]));
    ok(&as_key(&s, ADMIN, &["key", "revoke", id]));
    fails_with(
        &as_key(&s, key, &["count", "--collection", "a"]),
        &["revoked"],
    );
    ok(&as_key(&s, ADMIN, &["snapshot", "restore", "before"]));
    fails_with(
        &as_key(&s, key, &["count", "--collection", "a"]),
        &["UNAUTHENTICATED", "revoked"],
    );
}

#[tokio::test]
async fn failed_authentication_is_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_keyed(dir.path(), &[]).await;
    let bad = Client::connect_with(
        &s.addr,
        Headers::new(&[("authorization", "Bearer qk_0123456789abcdef_guess")]).unwrap(),
    )
    .await
    .unwrap();
    let mut codes = Vec::new();
    for _ in 0..40 {
        let mut b = bad.clone();
        let e = b
            .collections
            .list(pb::ListCollectionsRequest::default())
            .await
            .unwrap_err();
        codes.push(e.code());
    }
    let unauth = codes
        .iter()
        .filter(|c| **c == tonic::Code::Unauthenticated)
        .count();
    let throttled = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert!((18..=22).contains(&unauth), "{codes:?}");
    assert_eq!(unauth + throttled, 40, "{codes:?}");
}

/// A one-node cluster, with `env` on top.
async fn cluster_node(dir: &std::path::Path, env: &[(&str, &str)]) -> (Server, String) {
    let raft = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={raft}");
    let mut all = vec![
        ("QUIVER__CLUSTER__NODE_ID", "1"),
        ("QUIVER__CLUSTER__LISTEN", raft.as_str()),
        ("QUIVER__CLUSTER__PEERS", peers.as_str()),
    ];
    all.extend_from_slice(env);
    (Server::start_with(dir, &all).await, raft)
}

async fn raft_client(
    addr: &str,
) -> quiver_proto::internal::raft_client::RaftClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    quiver_proto::internal::raft_client::RaftClient::new(ch)
}

#[tokio::test]
async fn the_cluster_port_needs_the_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-secret\n").unwrap();
    let data = dir.path().join("data");
    let (s, raft) = cluster_node(
        &data,
        &[
            KEYED[0],
            KEYED[1],
            ("QUIVER__CLUSTER__SECRET_FILE", secret.to_str().unwrap()),
        ],
    )
    .await;
    ok(&as_key(
        &s,
        ADMIN,
        &["collection", "create", "a", "--dim", "2"],
    ));
    // An unauthenticated peer gets nothing from any internal method.
    let mut rc = raft_client(&raft).await;
    let body = || quiver_proto::internal::RaftBytes { data: vec![0; 16] };
    for e in [
        rc.local_status(body()).await.unwrap_err(),
        rc.forward(body()).await.unwrap_err(),
        rc.vote(body()).await.unwrap_err(),
        rc.append_entries(body()).await.unwrap_err(),
        rc.install_snapshot(body()).await.unwrap_err(),
    ] {
        assert_status(&e, tonic::Code::Unauthenticated, &["cluster port"]);
    }
    // A peer with another secret: refused too, then throttled.
    let wrong = quiver_server::cluster::guard::ClusterKey::new(&[b'z'; 40]).unwrap();
    let mut codes = Vec::new();
    for _ in 0..30 {
        let mut req = tonic::Request::new(body());
        wrong.sign_request(quiver_server::cluster::net::path::LOCAL_STATUS, &mut req);
        codes.push(rc.local_status(req).await.unwrap_err().code());
    }
    assert!(codes.contains(&tonic::Code::Unauthenticated), "{codes:?}");
    assert!(codes.contains(&tonic::Code::ResourceExhausted), "{codes:?}");
    // Data and the API are untouched.
    assert_eq!(ok(&as_key(&s, ADMIN, &["count", "--collection", "a"])), "0");
    ok(&as_key(&s, ADMIN, &["cluster", "status"]));
}

#[tokio::test]
async fn snapshot_ids_from_peers_cannot_name_paths() {
    use openraft::{StoredMembership, Vote};
    let dir = tempfile::tempdir().unwrap();
    let secret = "fedcba9876543210fedcba9876543210-secret";
    let data = dir.path().join("data");
    let (s, raft) = cluster_node(&data, &[("QUIVER_CLUSTER_SECRET", secret)]).await;
    let key = quiver_server::cluster::guard::ClusterKey::new(secret.as_bytes()).unwrap();
    let mut rc = raft_client(&raft).await;
    for id in ["../../../../tmp/quiver-escape", "/etc/passwd", "a.snap"] {
        let req: openraft::raft::InstallSnapshotRequest<quiver_server::cluster::TypeConfig> =
            openraft::raft::InstallSnapshotRequest {
                vote: Vote::new(99, 2),
                meta: openraft::SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                    snapshot_id: id.into(),
                },
                offset: 0,
                data: b"not a snapshot".to_vec(),
                done: true,
            };
        let mut r = tonic::Request::new(quiver_proto::internal::RaftBytes {
            data: bincode::serialize(&req).unwrap(),
        });
        key.sign_request(quiver_server::cluster::net::path::INSTALL_SNAPSHOT, &mut r);
        let e = rc.install_snapshot(r).await.unwrap_err();
        assert_status(&e, tonic::Code::InvalidArgument, &["snapshot_id"]);
    }
    assert!(!std::path::Path::new("/tmp/quiver-escape.snap").exists());
    let mut c = s.client().await;
    create(&mut c, "c", 2).await;
    assert_eq!(count(&mut c, "c").await, 0);
}

#[tokio::test]
async fn auth_with_an_open_cluster_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let raft = format!("127.0.0.1:{}", free_port());
    let out = std::process::Command::new(quiver_tests::bin("quiverd"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("QUIVER__AUTH__ENABLED", "true")
        .env("QUIVER__CLUSTER__NODE_ID", "1")
        .env("QUIVER__CLUSTER__LISTEN", &raft)
        .env("QUIVER__CLUSTER__PEERS", format!("1={raft}"))
        .env_remove("QUIVER_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster port") && err.contains("insecure"),
        "{err}"
    );
    // With the explicit escape hatch it runs, and says so.
    let (s, _) = cluster_node(
        &dir.path().join("d2"),
        &[KEYED[0], KEYED[1], ("QUIVER__CLUSTER__INSECURE", "true")],
    )
    .await;
    ok(&as_key(&s, ADMIN, &["collection", "list"]));
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_certificate_from_the_same_ca_without_a_member_name_is_no_peer() {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let certs = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let k = KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &ca, &ca_key).unwrap();
        (c.pem(), k.serialize_pem())
    };
    let (node_pem, node_key) = leaf(vec!["127.0.0.1".into()]);
    let (api_pem, api_key) = leaf(vec!["api-client.example".into()]);
    let p = |f: &str| certs.path().join(f).display().to_string();
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("node.pem"), &node_pem).unwrap();
    std::fs::write(p("node.key"), &node_key).unwrap();
    let data = certs.path().join("data");
    let (s, raft) = cluster_node(
        &data,
        &[
            ("QUIVER__CLUSTER__TLS_CERT", &p("node.pem")),
            ("QUIVER__CLUSTER__TLS_KEY", &p("node.key")),
            ("QUIVER__CLUSTER__TLS_CA", &p("ca.pem")),
        ],
    )
    .await;
    let call = |cert: String, key: String| {
        let (ca, raft) = (ca.pem(), raft.clone());
        async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .identity(tonic::transport::Identity::from_pem(cert, key));
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{raft}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await;
            match ch {
                Err(e) => Err(e.to_string()),
                Ok(ch) => quiver_proto::internal::raft_client::RaftClient::new(ch)
                    .local_status(quiver_proto::internal::RaftBytes::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            }
        }
    };
    // The member's own certificate works; an API client's, from the same CA, does not.
    call(node_pem.clone(), node_key.clone())
        .await
        .expect("a member is a peer");
    assert!(call(api_pem, api_key).await.is_err());
    let mut c = s.client().await;
    create(&mut c, "c", 2).await;
    assert_eq!(count(&mut c, "c").await, 0);
}
