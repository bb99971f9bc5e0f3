//! Every configured limit answers with its own status, names the limit, and leaves the
//! server serving.
use std::time::Duration;

use quiver_client::{num_id, pb};
use quiver_tests::{Server, fails_with, ok};
use tonic_types::StatusExt;

#[tokio::test]
async fn every_limit_returns_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__LIMITS__MAX_BATCH_ROWS", "10"),
            ("QUIVER__LIMITS__REQUESTS_PER_SECOND", "20"),
            ("QUIVER__LIMITS__BURST", "20"),
            ("QUIVER__SERVER__MAX_K", "50"),
        ],
    )
    .await;
    ok(&s.cli(&["collection", "create", "l", "--dim", "2"]));
    let mut c = s.client().await;
    let pts = |n: u64| -> Vec<pb::Point> {
        (0..n)
            .map(|i| pb::Point {
                id: Some(num_id(i)),
                vector: vec![1.0, i as f32],
                payload_json: None,
            })
            .collect()
    };
    // Batch rows.
    let e = c
        .points
        .upsert(pb::UpsertRequest {
            collection: "l".into(),
            points: pts(11),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("limits.max_batch_rows"),
        "{}",
        e.message()
    );
    c.points
        .upsert(pb::UpsertRequest {
            collection: "l".into(),
            points: pts(10),
            ..Default::default()
        })
        .await
        .unwrap();
    // k and filter depth.
    fails_with(
        &s.cli(&[
            "search",
            "--collection",
            "l",
            "--vector",
            "[1,0]",
            "--k",
            "51",
        ]),
        &["INVALID_ARGUMENT", "k = 51 exceeds the limit of 50"],
    );
    let mut f = pb::Filter {
        text: "x = 1".into(),
        ..Default::default()
    };
    for _ in 0..20 {
        f = pb::Filter {
            must: vec![pb::Condition {
                key: String::new(),
                kind: Some(pb::condition::Kind::Filter(f)),
            }],
            ..Default::default()
        };
    }
    let e = c
        .points
        .count(pb::CountRequest {
            collection: "l".into(),
            filter: Some(f),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("nested deeper than"),
        "{}",
        e.message()
    );
    // A deadline the work cannot meet. A search checks the caller's deadline itself before
    // scanning, so it fails even when the work would be quick enough to beat tonic's timer.
    let mut req = tonic::Request::new(pb::SearchRequest {
        collection: "l".into(),
        vector: vec![0.5, 0.5],
        k: 1,
        exact: true,
        ..Default::default()
    });
    req.set_timeout(Duration::from_nanos(1));
    let e = c.search.search(req).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{e:?}"
    );
    // Request rate: a burst over the budget gets RESOURCE_EXHAUSTED with a retry delay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut limited = None;
    for _ in 0..60 {
        if let Err(e) = c
            .points
            .count(pb::CountRequest {
                collection: "l".into(),
                ..Default::default()
            })
            .await
        {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("60 back-to-back calls at 20/s are limited");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(
        e.message().contains("limits.requests_per_second"),
        "{}",
        e.message()
    );
    let retry = e
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(retry <= Duration::from_millis(100), "{retry:?}");
    // Health is never limited, and after the delay calls pass again.
    s.wait_serving(Duration::from_secs(1)).await;
    tokio::time::sleep(retry + Duration::from_millis(100)).await;
    assert_eq!(c.count("l").await.unwrap(), 10);
}
