//! Fuzz target (proptest-driven): any bytes a client can send, decoded as the API's request
//! messages and converted to engine types, give a value or a field-naming error — never a
//! panic. `QUIVER_FUZZ_CASES` cases (default 2000).
use proptest::prelude::*;
use prost::Message;
use quiver_proto::v1 as pb;
use quiver_server::convert;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("QUIVER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Valid encodings to mutate, so the fuzzer gets past the protobuf framing.
fn seeds() -> Vec<Vec<u8>> {
    let f = pb::Filter {
        text: r#"a = 1 and (b any ["x","y"] or not c exists)"#.into(),
        ..Default::default()
    };
    let nested = pb::Filter {
        must: vec![pb::Condition {
            key: "k".into(),
            kind: Some(pb::condition::Kind::Filter(f.clone())),
        }],
        ..Default::default()
    };
    vec![
        pb::UpsertRequest {
            collection: "c".into(),
            points: vec![pb::Point {
                id: Some(pb::PointId {
                    kind: Some(pb::point_id::Kind::Str("x".into())),
                }),
                vector: vec![1.0, 2.0],
                payload_json: Some(r#"{"a":{"b":[1,2]}}"#.into()),
            }],
            ..Default::default()
        }
        .encode_to_vec(),
        pb::CountRequest {
            collection: "c".into(),
            filter: Some(nested),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::CreateCollectionRequest {
            name: "c".into(),
            dim: 3,
            ..Default::default()
        }
        .encode_to_vec(),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            0..3usize,
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            any::<prop::sample::Index>()
        )
            .prop_map(|(s, flips, cut)| {
                let mut b = seeds()[s].clone();
                for (i, x) in flips {
                    let i = i.index(b.len());
                    b[i] ^= x;
                }
                let keep = cut.index(b.len() + 1);
                b.truncate(keep);
                b
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_conversion_never_panics(bytes in input()) {
        if let Ok(r) = pb::UpsertRequest::decode(bytes.as_slice()) {
            let _ = convert::points(r.points, 1 << 20);
        }
        if let Ok(r) = pb::CountRequest::decode(bytes.as_slice()) {
            let _ = convert::filter(r.filter.as_ref());
        }
        if let Ok(r) = pb::SearchRequest::decode(bytes.as_slice()) {
            let _ = convert::filter(r.filter.as_ref());
            let _ = convert::k(r.k, 10_000);
        }
        if let Ok(r) = pb::CreateCollectionRequest::decode(bytes.as_slice()) {
            let _ = convert::metric(r.metric);
            let _ = convert::schema(&r.schema);
        }
        if let Ok(r) = pb::ScrollRequest::decode(bytes.as_slice()) {
            let _ = convert::cursor(&r.cursor);
        }
    }
}
