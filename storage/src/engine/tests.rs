//! Engine tests: exact search against a naive reference, and random operation sequences
//! (upsert, delete, seal, reopen) against an in-memory model.
use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::types::{Metric, PointId, PointRecord, PointWrite, ReadOptions, SearchParams};

fn config(name: &str, dim: usize, metric: Metric, seg: u32) -> CollectionConfig {
    CollectionConfig {
        name: name.into(),
        dim,
        metric,
        index: crate::types::IndexConfig::flat(),
        segment_max_rows: seg,
        schema: Default::default(),
        labels: Default::default(),
    }
}

fn naive_distance(metric: Metric, q: &[f32], v: &[f32]) -> f64 {
    let dot: f64 = q
        .iter()
        .zip(v)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    match metric {
        Metric::Cosine => {
            let nq = q.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nv = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            1.0 - dot / (nq * nv)
        }
        Metric::Dot => -dot,
        Metric::L2 => q
            .iter()
            .zip(v)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum(),
    }
}

#[test]
fn exact_search_matches_naive_reference_for_every_metric() {
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let dim = 13;
        let c = engine
            .create_collection(config("c", dim, metric, 128))
            .unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut model: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
        for batch in 0..10 {
            let points: Vec<PointWrite> = (0..60)
                .map(|i| {
                    // Overwrites: ids repeat across batches.
                    let id = rng.random_range(0..450u64);
                    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let _ = (batch, i);
                    PointWrite {
                        id: PointId::Num(id),
                        vector: v,
                        payload: Some(format!("{{\"id\":{id}}}").into_bytes()),
                    }
                })
                .collect();
            for p in &points {
                let PointId::Num(n) = p.id else {
                    unreachable!()
                };
                model.insert(n, p.vector.clone());
            }
            c.upsert(points).unwrap();
            let dels: Vec<u64> = (0..5).map(|_| rng.random_range(0..450u64)).collect();
            c.delete(dels.iter().map(|d| PointId::Num(*d)).collect())
                .unwrap();
            for d in dels {
                model.remove(&d);
            }
        }
        assert!(
            c.stats().sealed_segments >= 3,
            "test must cover sealed segments"
        );
        assert_eq!(c.count(), model.len() as u64);
        for _ in 0..20 {
            let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let hits = c
                .search(
                    &q,
                    10,
                    ReadOptions {
                        with_payload: true,
                        with_vectors: false,
                    },
                    SearchParams::default(),
                )
                .unwrap();
            let mut expect: Vec<(f64, u64)> = model
                .iter()
                .map(|(id, v)| (naive_distance(metric, &q, v), *id))
                .collect();
            expect.sort_by(|a, b| a.0.total_cmp(&b.0));
            let want: Vec<PointId> = expect[..10].iter().map(|e| PointId::Num(e.1)).collect();
            let got: Vec<PointId> = hits.iter().map(|h| h.id.clone()).collect();
            assert_eq!(got, want, "{metric:?}");
            for (h, e) in hits.iter().zip(&expect) {
                let score = f64::from(h.score);
                let want_score = match metric {
                    Metric::Cosine => 1.0 - e.0,
                    Metric::Dot => -e.0,
                    Metric::L2 => e.0.sqrt(),
                };
                assert!(
                    (score - want_score).abs() < 1e-4,
                    "{metric:?}: {score} vs {want_score}"
                );
                let PointId::Num(n) = h.id else {
                    unreachable!()
                };
                assert_eq!(
                    h.payload.as_deref(),
                    Some(format!("{{\"id\":{n}}}").as_bytes())
                );
            }
        }
    }
}

#[test]
fn validation_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("v", 3, Metric::Cosine, 100))
        .unwrap();
    let p = |v: Vec<f32>| PointWrite {
        id: PointId::Num(1),
        vector: v,
        payload: None,
    };
    assert!(
        matches!(c.upsert(vec![p(vec![1.0; 3]), p(vec![1.0; 4])]), Err(Error::DimensionMismatch { field, expected: 3, got: 4 }) if field == "points[1].vector")
    );
    assert!(
        matches!(c.upsert(vec![p(vec![1.0, f32::INFINITY, 0.0])]), Err(Error::NonFinite { field, .. }) if field == "points[0].vector[1]")
    );
    assert!(matches!(
        c.upsert(vec![p(vec![])]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(
        matches!(
            c.upsert(vec![p(vec![0.0; 3])]),
            Err(Error::InvalidArgument { .. })
        ),
        "zero vector under cosine"
    );
    assert!(matches!(
        c.search(
            &[1.0, 2.0],
            3,
            ReadOptions::default(),
            SearchParams::default()
        ),
        Err(Error::DimensionMismatch { .. })
    ));
    assert_eq!(c.count(), 0, "rejected batches write nothing");
    assert!(matches!(
        engine.create_collection(config("v", 3, Metric::L2, 100)),
        Err(Error::CollectionExists { .. })
    ));
    assert!(matches!(
        engine.create_collection(config("../x", 3, Metric::L2, 100)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        engine.create_collection(config("x", 0, Metric::L2, 100)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        engine.collection("nope"),
        Err(Error::CollectionNotFound { .. })
    ));
    // Duplicate ids in one batch: the last one wins.
    c.upsert(vec![
        PointWrite {
            id: PointId::Num(9),
            vector: vec![1.0, 0.0, 0.0],
            payload: Some(b"{\"v\":1}".to_vec()),
        },
        PointWrite {
            id: PointId::Num(9),
            vector: vec![0.0, 1.0, 0.0],
            payload: Some(b"{\"v\":2}".to_vec()),
        },
    ])
    .unwrap();
    let got = c
        .get(
            &[PointId::Num(9)],
            ReadOptions {
                with_payload: true,
                with_vectors: true,
            },
        )
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].vector.as_deref(), Some(&[0.0, 1.0, 0.0][..]));
    assert_eq!(got[0].payload.as_deref(), Some(&b"{\"v\":2}"[..]));
    assert_eq!(c.count(), 1);
}

#[test]
fn drop_and_recreate_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("d", 2, Metric::L2, 16))
        .unwrap();
    c.upsert(
        (0..40)
            .map(|i| PointWrite {
                id: PointId::Num(i),
                vector: vec![i as f32, 0.0],
                payload: None,
            })
            .collect(),
    )
    .unwrap();
    engine.drop_collection("d").unwrap();
    assert!(matches!(
        c.upsert(vec![PointWrite {
            id: PointId::Num(1),
            vector: vec![1.0, 0.0],
            payload: None
        }]),
        Err(Error::CollectionNotFound { .. })
    ));
    let c2 = engine
        .create_collection(config("d", 2, Metric::L2, 16))
        .unwrap();
    assert_eq!(c2.count(), 0);
    assert!(
        c2.get(&[PointId::Num(3)], ReadOptions::default())
            .unwrap()
            .is_empty()
    );
    drop((c, c2, engine));
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(engine.list().len(), 1);
    assert_eq!(engine.collection("d").unwrap().count(), 0);
}

#[test]
fn a_lost_wal_is_data_loss_not_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("w", 2, Metric::L2, 1000))
        .unwrap();
    c.upsert(vec![PointWrite {
        id: PointId::Num(1),
        vector: vec![1.0, 0.0],
        payload: None,
    }])
    .unwrap();
    let wal = c.dir().join("wal");
    drop((c, engine));
    // The acknowledged write lives only in the WAL: losing its files must not open as empty.
    for f in std::fs::read_dir(&wal).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    match Engine::open(dir.path(), EngineOptions::default()) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("no WAL file"), "{detail}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened without its WAL"),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(Vec<(u64, f32, bool)>),
    Delete(Vec<u64>),
    Flush,
    Compact(bool),
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec((0..40u64, -100.0f32..100.0, any::<bool>()), 1..12).prop_map(Op::Upsert),
        2 => proptest::collection::vec(0..40u64, 1..6).prop_map(Op::Delete),
        1 => Just(Op::Flush),
        2 => any::<bool>().prop_map(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn id_of(n: u64) -> PointId {
    // Mix numeric and string ids.
    if n.is_multiple_of(3) {
        PointId::Str(format!("key-{n}"))
    } else {
        PointId::Num(n)
    }
}

fn check(c: &Collection, model: &BTreeMap<u64, (f32, bool)>) -> Result<(), TestCaseError> {
    prop_assert_eq!(c.count(), model.len() as u64);
    let all: Vec<PointId> = (0..40).map(id_of).collect();
    let got = c
        .get(
            &all,
            ReadOptions {
                with_payload: true,
                with_vectors: true,
            },
        )
        .unwrap();
    let want: Vec<PointId> = model.keys().map(|n| id_of(*n)).collect();
    let mut got_ids: Vec<PointId> = got.iter().map(|r| r.id.clone()).collect();
    got_ids.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    prop_assert_eq!(&got_ids, &want_sorted);
    for r in &got {
        let n = match &r.id {
            PointId::Num(n) => *n,
            PointId::Str(s) => s.trim_start_matches("key-").parse().unwrap(),
        };
        let (x, has_payload) = model[&n];
        prop_assert_eq!(r.vector.as_deref(), Some(&[x, 1.0][..]));
        let want_payload = has_payload.then(|| format!("{{\"x\":{x}}}").into_bytes());
        prop_assert_eq!(&r.payload, &want_payload);
    }
    // Scrolling in pages returns every live point exactly once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = c.scroll(cursor, 7, ReadOptions::default(), 0).unwrap();
        seen.extend(page.into_iter().map(|r| r.id));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    seen.sort();
    prop_assert_eq!(&seen, &want_sorted);
    // A byte budget ends pages early but still yields every point exactly once.
    let opts = ReadOptions {
        with_vectors: true,
        with_payload: true,
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = c.scroll(cursor, 7, opts, 120).unwrap();
        prop_assert!(page.iter().map(PointRecord::response_bytes).sum::<usize>() <= 120);
        prop_assert!(!page.is_empty() || next.is_none());
        seen.extend(page.into_iter().map(|r| r.id));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    seen.sort();
    prop_assert_eq!(&seen, &want_sorted);
    // Repeated ids are answered once; a budget too small for them is refused, not exceeded.
    let twice: Vec<PointId> = want.iter().chain(want.iter()).cloned().collect();
    prop_assert_eq!(c.get(&twice, opts).unwrap().len(), want.len());
    if !want.is_empty() {
        let e = c.get_within(&twice, opts, 10).unwrap_err();
        prop_assert!(matches!(e, crate::Error::TooLarge { .. }), "{e}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_match_a_model(ops in proptest::collection::vec(arb_op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        engine.create_collection(config("m", 2, Metric::L2, 16)).unwrap();
        let mut model: BTreeMap<u64, (f32, bool)> = BTreeMap::new();
        for op in ops {
            let c = engine.collection("m").unwrap();
            match op {
                Op::Upsert(points) => {
                    let writes = points.iter().map(|(n, x, p)| PointWrite {
                        id: id_of(*n),
                        vector: vec![*x, 1.0],
                        payload: p.then(|| format!("{{\"x\":{x}}}").into_bytes()),
                    }).collect();
                    c.upsert(writes).unwrap();
                    for (n, x, p) in points {
                        model.insert(n, (x, p));
                    }
                }
                Op::Delete(ids) => {
                    let existing = ids.iter().collect::<std::collections::BTreeSet<_>>().iter().filter(|n| model.contains_key(n)).count() as u64;
                    let (deleted, _) = c.delete(ids.iter().map(|n| id_of(*n)).collect()).unwrap();
                    prop_assert_eq!(deleted, existing);
                    for n in ids {
                        model.remove(&n);
                    }
                }
                Op::Flush => {
                    c.flush().unwrap();
                    prop_assert_eq!(c.stats().wal_bytes, 16, "WAL truncated to one empty file after a flush");
                }
                Op::Compact(force) => {
                    let before = c.stats();
                    let reports = c.compact(crate::collection::CompactionOptions { force, ..Default::default() }).unwrap();
                    let after = c.stats();
                    if force {
                        prop_assert_eq!(after.dead_points, 0, "a forced compaction leaves no dead row");
                    }
                    let dropped: u64 = reports.iter().map(|r| r.rows_before - r.rows_after).sum();
                    prop_assert_eq!(before.dead_points - after.dead_points, dropped);
                    prop_assert!(after.sealed_segments <= before.sealed_segments);
                }
                Op::Reopen => {
                    drop(c);
                    drop(engine);
                    engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
                }
            }
            check(&engine.collection("m").unwrap(), &model)?;
        }
    }
}

#[test]
fn search_batch_equals_single_searches() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let dim = 9;
    let c = engine
        .create_collection(config("b", dim, Metric::L2, 100))
        .unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let points: Vec<PointWrite> = (0..350u64)
        .map(|i| PointWrite {
            id: PointId::Num(i),
            vector: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
            payload: None,
        })
        .collect();
    c.upsert(points).unwrap();
    c.delete((0..350u64).step_by(7).map(PointId::Num).collect())
        .unwrap();
    let qs: Vec<Vec<f32>> = (0..70)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let bad = vec![1.0f32; dim + 1];
    let mut batch: Vec<(&[f32], usize)> = qs
        .iter()
        .enumerate()
        .map(|(i, q)| (q.as_slice(), 1 + i % 13))
        .collect();
    batch.insert(5, (bad.as_slice(), 3));
    let results = c.search_batch(&batch, ReadOptions::default(), SearchParams::default());
    assert_eq!(results.len(), batch.len());
    for ((q, k), r) in batch.iter().zip(results) {
        match c.search(q, *k, ReadOptions::default(), SearchParams::default()) {
            Ok(single) => assert_eq!(r.unwrap(), single),
            Err(_) => assert!(matches!(r, Err(Error::DimensionMismatch { .. }))),
        }
    }
}

/// Clustered points (like real embeddings): `n` rows around 30 random centres.
/// Points `first..` carrying `vectors`, with no payload.
fn vector_writes(vectors: &[Vec<f32>], first: usize) -> Vec<PointWrite> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| PointWrite {
            id: PointId::Num((first + i) as u64),
            vector: v.clone(),
            payload: None,
        })
        .collect()
}

fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..30)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    (0..n)
        .map(|i| {
            centres[i % 30]
                .iter()
                .map(|c| c + rng.random_range(-0.4..0.4))
                .collect()
        })
        .collect()
}

fn wait_for_indexes(c: &Collection) {
    let started = std::time::Instant::now();
    loop {
        let (built, total) = c.index_progress();
        if built == total && total > 0 {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "indexes not built: {built}/{total}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The IVF-PQ conformance suite: against the exact scan on seeded data, for every metric.
#[test]
fn ivf_pq_conformance_against_exact_search() {
    let dim = 16;
    for (metric, bits) in [Metric::Cosine, Metric::L2, Metric::Dot]
        .into_iter()
        .flat_map(|m| [(m, 8), (m, 4)])
    {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let mut cfg = config("ivf", dim, metric, 3000);
        cfg.index = crate::types::IndexConfig {
            kind: crate::types::IndexKind::IvfPq,
            nlist: None,
            pq_m: None,
            pq_bits: Some(bits),
        };
        let c = engine.create_collection(cfg).unwrap();
        let data = clustered(9500, dim, 21);
        for (b, chunk) in data.chunks(500).enumerate() {
            c.upsert(vector_writes(chunk, b * 500)).unwrap();
        }
        // Deletes both before and after the indexes exist.
        c.delete(
            (0..9500u64)
                .filter(|i| i % 10 == 0)
                .map(PointId::Num)
                .collect(),
        )
        .unwrap();
        wait_for_indexes(&c);
        c.delete(
            (0..9500u64)
                .filter(|i| i % 10 == 5)
                .map(PointId::Num)
                .collect(),
        )
        .unwrap();
        assert_eq!(c.index_progress(), (3, 3));
        let queries = clustered(60, dim, 77);
        let approx = |c: &Collection, params: SearchParams| -> Vec<Vec<PointId>> {
            queries
                .iter()
                .map(|q| {
                    c.search(q, 10, ReadOptions::default(), params)
                        .unwrap()
                        .into_iter()
                        .map(|h| h.id)
                        .collect()
                })
                .collect()
        };
        let exact = approx(
            &c,
            SearchParams {
                exact: true,
                ..Default::default()
            },
        );
        let recall = |got: &[Vec<PointId>]| -> f64 {
            got.iter()
                .zip(&exact)
                .map(|(g, e)| g.iter().filter(|id| e.contains(id)).count())
                .sum::<usize>() as f64
                / (10 * queries.len()) as f64
        };
        let defaults = approx(&c, SearchParams::default());
        let wide = approx(
            &c,
            SearchParams {
                nprobe: Some(32),
                refine: Some(8),
                ..Default::default()
            },
        );
        for hits in defaults.iter().chain(&wide) {
            for id in hits {
                let PointId::Num(n) = id else { unreachable!() };
                assert!(
                    n % 10 != 0 && n % 10 != 5,
                    "{metric:?} {bits}-bit: deleted id {n} returned"
                );
            }
        }
        let (r_default, r_wide) = (recall(&defaults), recall(&wide));
        eprintln!(
            "{metric:?} {bits}-bit: recall@10 {r_default:.3} (defaults), {r_wide:.3} (nprobe 32, refine 8)"
        );
        assert!(
            r_default >= 0.9,
            "{metric:?} {bits}-bit: recall@10 {r_default} at default nprobe/refine"
        );
        assert!(
            r_wide >= 0.97,
            "{metric:?} {bits}-bit: recall@10 {r_wide} at nprobe 32, refine 8"
        );
        // Restart: the index files are loaded, not retrained, and give identical results.
        drop(c);
        drop(engine);
        engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let c = engine.collection("ivf").unwrap();
        assert_eq!(
            c.index_progress(),
            (3, 3),
            "indexes loaded at open, without a rebuild"
        );
        assert_eq!(
            approx(&c, SearchParams::default()),
            defaults,
            "{metric:?} {bits}-bit: results differ after restart"
        );
    }
}

/// Filtered search against the exact filtered reference at selectivities 0.1%, 1%, 10% and
/// 50%, over indexed sealed segments and the mutable one; a declared field (index path) and an
/// undeclared one (payload path) must agree; count, scroll, delete-by-filter, payload updates
/// and declaring a field later keep every answer consistent, across a reopen.
#[test]
fn filtered_search_keeps_recall_at_every_selectivity() {
    let dim = 16;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("f", dim, Metric::Cosine, 6000);
    cfg.index = crate::types::IndexConfig {
        kind: crate::types::IndexKind::IvfPq,
        nlist: None,
        pq_m: None,
        pq_bits: None,
    };
    cfg.schema = [("r".to_owned(), crate::filter::FieldType::Integer)].into();
    let c = engine.create_collection(cfg).unwrap();
    let data = clustered(20_000, dim, 77);
    let mut rng = StdRng::seed_from_u64(5);
    let rs: Vec<i64> = (0..data.len())
        .map(|_| rng.random_range(0..10_000))
        .collect();
    for (b, chunk) in data.chunks(1000).enumerate() {
        let pts = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = b * 1000 + i;
                PointWrite {
                    id: PointId::Num(n as u64),
                    vector: v.clone(),
                    payload: Some(
                        serde_json::json!({"r": rs[n], "u": rs[n], "kw": format!("k{}", n % 7)})
                            .to_string()
                            .into_bytes(),
                    ),
                }
            })
            .collect();
        c.upsert(pts).unwrap();
    }
    wait_for_indexes(&c);
    let queries = clustered(30, dim, 991);
    let exact = |q: &[f32], pass: &dyn Fn(usize) -> bool| -> Vec<u64> {
        let mut all: Vec<(f64, u64)> = (0..data.len())
            .filter(|&n| pass(n))
            .map(|n| (naive_distance(Metric::Cosine, q, &data[n]), n as u64))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.into_iter().take(10).map(|x| x.1).collect()
    };
    let ids = |hits: Vec<crate::types::Hit>| -> Vec<u64> {
        hits.into_iter()
            .map(|h| match h.id {
                PointId::Num(n) => n,
                PointId::Str(_) => unreachable!(),
            })
            .collect()
    };
    let check = |c: &Collection, when: &str| {
        for (limit, share) in [(10, "0.1%"), (100, "1%"), (1000, "10%"), (5000, "50%")] {
            for key in ["r", "u"] {
                let f = crate::filter::parse(&format!("{key} < {limit} and kw != \"k3\"")).unwrap();
                let pass = |n: usize| rs[n] < limit && n % 7 != 3;
                let want = rs.iter().enumerate().filter(|(n, _)| pass(*n)).count() as u64;
                assert_eq!(
                    c.count_filtered(&f).unwrap(),
                    want,
                    "{when} {key} {share}: count"
                );
                let (mut hit, mut total) = (0, 0);
                for q in &queries {
                    let truth = exact(q, &pass);
                    let got = ids(c
                        .search_batch_filtered(
                            &[(q, 10)],
                            ReadOptions::default(),
                            SearchParams::default(),
                            Some(&f),
                        )
                        .pop()
                        .unwrap()
                        .unwrap());
                    assert!(
                        got.iter().all(|&n| pass(n as usize)),
                        "{when} {key} {share}: a hit fails the filter"
                    );
                    hit += got.iter().filter(|n| truth.contains(n)).count();
                    total += truth.len();
                }
                let recall = hit as f64 / total as f64;
                assert!(recall >= 0.95, "{when} {key} {share}: recall@10 {recall}");
            }
        }
    };
    check(&c, "fresh");
    // A caller's nprobe beyond every segment's nlist probes every list (it once panicked in
    // the filtered planner's clamp): hits pass the filter and match the exact answer.
    let f = crate::filter::parse("r < 1000").unwrap();
    let q = &queries[0];
    let got = ids(c
        .search_batch_filtered(
            &[(q, 10)],
            ReadOptions::default(),
            SearchParams {
                nprobe: Some(1_000_000),
                ..Default::default()
            },
            Some(&f),
        )
        .pop()
        .unwrap()
        .unwrap());
    let truth = exact(q, &|n| rs[n] < 1000);
    assert!(
        got.iter().all(|&n| rs[n as usize] < 1000),
        "nprobe above nlist: {got:?}"
    );
    let same = got.iter().filter(|n| truth.contains(n)).count();
    assert!(same >= 8, "nprobe above nlist: {same} of 10 exact hits");
    // Scroll yields exactly the passing points.
    let f = crate::filter::parse("r < 100").unwrap();
    let (page, next) = c
        .scroll_filtered(
            &f,
            None,
            100_000,
            ReadOptions {
                with_vectors: false,
                with_payload: true,
            },
            0,
        )
        .unwrap();
    assert!(next.is_none());
    assert_eq!(page.len() as u64, c.count_filtered(&f).unwrap());
    // Payload updates move points in and out of the index answers.
    let moved: Vec<PointId> = (0..50u64).map(PointId::Num).collect();
    let set = serde_json::json!({"r": 123_456})
        .as_object()
        .unwrap()
        .clone();
    let (n, _) = c
        .update_payload(&moved, &set, &[], crate::collection::PayloadUpdate::Merge)
        .unwrap();
    assert_eq!(n, 50);
    let big = crate::filter::parse("r = 123456 and u exists").unwrap();
    assert_eq!(
        c.count_filtered(&big).unwrap(),
        50,
        "merge kept u and set r"
    );
    // Declaring a field later: same answers, from the index once built.
    c.declare_fields(&[("u".to_owned(), crate::filter::FieldType::Integer)].into())
        .unwrap();
    assert_eq!(
        c.count_filtered(&crate::filter::parse("u < 1000").unwrap())
            .unwrap(),
        rs.iter().skip(50).filter(|r| **r < 1000).count() as u64
            + rs.iter().take(50).filter(|r| **r < 1000).count() as u64
    );
    let started = std::time::Instant::now();
    while c.fields_progress().0 < c.fields_progress().1 {
        assert!(started.elapsed().as_secs() < 120, "fields not indexed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Delete by filter.
    let before = c.count();
    let gone = crate::filter::parse("r = 123456").unwrap();
    let (deleted, _) = c.delete_by_filter(&gone).unwrap();
    assert_eq!(deleted, 50);
    assert_eq!(c.count(), before - 50);
    assert_eq!(c.count_filtered(&gone).unwrap(), 0);
    drop(c);
    engine.close().unwrap();
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("f").unwrap();
    assert_eq!(
        c.schema().keys().cloned().collect::<Vec<_>>(),
        vec!["r".to_owned(), "u".to_owned()],
        "declared fields survive a restart"
    );
    assert_eq!(c.count_filtered(&gone).unwrap(), 0);
    let f = crate::filter::parse("r < 1000").unwrap();
    assert_eq!(
        c.count_filtered(&f).unwrap(),
        rs.iter().skip(50).filter(|r| **r < 1000).count() as u64
    );
}

#[test]
fn aux_pages_forward_and_backward_within_a_prefix_and_survive_reopen() {
    use crate::{AuxSpace, EngineOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let e = Engine::open(dir.path(), EngineOptions::default()).expect("open");
        let aux = e.aux();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0u8..10)
            .map(|i| (vec![b'a', i], vec![i]))
            .chain([
                (b"b".to_vec(), b"x".to_vec()),
                (vec![b'a' - 1, 0xff], vec![]),
            ])
            .collect();
        aux.put(AuxSpace::Audit, entries, false).expect("put");
        let keys =
            |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k[1]).collect::<Vec<_>>();
        let page = aux
            .scan(AuxSpace::Audit, b"a", None, 4, false)
            .expect("scan");
        assert_eq!(keys(page), vec![0, 1, 2, 3]);
        let page = aux
            .scan(AuxSpace::Audit, b"a", Some(&[b'a', 3]), 4, false)
            .expect("scan");
        assert_eq!(keys(page), vec![4, 5, 6, 7]);
        let page = aux
            .scan(AuxSpace::Audit, b"a", None, 3, true)
            .expect("scan");
        assert_eq!(keys(page), vec![9, 8, 7]);
        let page = aux
            .scan(AuxSpace::Audit, b"a", Some(&[b'a', 2]), 5, true)
            .expect("scan");
        assert_eq!(keys(page), vec![1, 0]);
        aux.delete_range(AuxSpace::Audit, &[b'a', 0], &[b'a', 5])
            .expect("range");
        assert!(
            aux.get(AuxSpace::App, &[b'a', 7]).expect("get").is_none(),
            "spaces are separate"
        );
        e.close().expect("close");
    }
    let e = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    let page = e
        .aux()
        .scan(AuxSpace::Audit, b"a", None, 100, false)
        .expect("scan");
    assert_eq!(page.len(), 5);
    assert_eq!(page[0], (vec![b'a', 5], vec![5]));
}

fn points(range: std::ops::Range<u64>, dim: usize) -> Vec<PointWrite> {
    range
        .map(|i| PointWrite {
            id: PointId::Num(i),
            vector: (0..dim)
                .map(|d| (i * 7 + d as u64) as f32 % 13.0 + 1.0)
                .collect(),
            payload: Some(format!("{{\"i\":{i}}}").into_bytes()),
        })
        .collect()
}

fn all_points(e: &Engine, name: &str) -> Vec<(PointId, Vec<f32>, Option<Vec<u8>>)> {
    let c = e.collection(name).unwrap();
    let ids: Vec<PointId> = (0..400).map(PointId::Num).collect();
    let mut got: Vec<_> = c
        .get(
            &ids,
            ReadOptions {
                with_vectors: true,
                with_payload: true,
            },
        )
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.vector.unwrap(), p.payload))
        .collect();
    got.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
    got
}

#[test]
fn sequence_numbers_survive_seal_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        e.create_collection_seq(config("a", 4, Metric::L2, 50), 3)
            .unwrap();
        assert_eq!(e.catalog_seq(), 3);
        let c = e.collection("a").unwrap();
        assert_eq!(c.applied_seq(), 3);
        c.upsert_seq(points(0..60, 4), 5).unwrap(); // seals (50 rows per segment)
        c.delete_seq(vec![PointId::Num(1)], 8).unwrap();
        assert_eq!(c.applied_seq(), 8);
        c.upsert(points(60..61, 4)).unwrap(); // unsequenced: leaves it alone
        assert_eq!(c.applied_seq(), 8);
    }
    let e = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(e.catalog_seq(), 3);
    let c = e.collection("a").unwrap();
    assert_eq!(c.applied_seq(), 8);
    c.flush().unwrap();
    drop(c);
    drop(e);
    let e = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(e.collection("a").unwrap().applied_seq(), 8);
    e.drop_collection_seq("a", 9).unwrap();
    assert_eq!(e.catalog_seq(), 9);
}

#[test]
fn export_pack_unpack_import_reproduces_the_data() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Engine::open(src_dir.path(), EngineOptions::default()).unwrap();
    src.create_collection_seq(config("a", 4, Metric::L2, 100), 1)
        .unwrap();
    src.create_collection_seq(config("b", 3, Metric::Cosine, 1000), 2)
        .unwrap();
    let a = src.collection("a").unwrap();
    a.upsert_seq(points(0..250, 4), 3).unwrap();
    a.delete_seq(vec![PointId::Num(7), PointId::Num(120)], 4)
        .unwrap();
    src.collection("b")
        .unwrap()
        .upsert_seq(points(0..30, 3), 5)
        .unwrap();

    let work = tempfile::tempdir().unwrap();
    let info = src.export(&work.path().join("x")).unwrap();
    assert_eq!(info.catalog_seq, 2);
    assert_eq!(info.collections.len(), 2);
    // Writes after the export are not in it.
    a.upsert_seq(points(300..310, 4), 6).unwrap();
    let archive = work.path().join("snap.bin");
    pack(&work.path().join("x"), &archive).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Engine::open(dst_dir.path(), EngineOptions::default()).unwrap();
    dst.create_collection(config("stale", 2, Metric::L2, 16))
        .unwrap();
    unpack(&archive, &dst_dir.path().join("incoming")).unwrap();
    dst.import(&dst_dir.path().join("incoming")).unwrap();
    assert!(dst.collection("stale").is_err());
    assert_eq!(dst.catalog_seq(), 2);
    assert_eq!(dst.collection("a").unwrap().applied_seq(), 4);
    assert_eq!(dst.collection("a").unwrap().count(), 248);
    assert_eq!(dst.collection("b").unwrap().count(), 30);
    let want: Vec<_> = all_points(&src, "a")
        .into_iter()
        .filter(|p| !matches!(p.0, PointId::Num(n) if n >= 300))
        .collect();
    assert_eq!(all_points(&dst, "a"), want);
    assert_eq!(all_points(&dst, "b"), all_points(&src, "b"));
    drop(dst);
    // It survives a reopen, and the importer's writes continue after it.
    let dst = Engine::open(dst_dir.path(), EngineOptions::default()).unwrap();
    assert!(!dst.import_pending());
    assert_eq!(all_points(&dst, "b"), all_points(&src, "b"));
    dst.create_collection(config("c", 2, Metric::L2, 16))
        .unwrap();
}

#[test]
fn unpack_rejects_damage() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Engine::open(src_dir.path(), EngineOptions::default()).unwrap();
    src.create_collection(config("a", 4, Metric::L2, 100))
        .unwrap();
    src.collection("a")
        .unwrap()
        .upsert(points(0..150, 4))
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    src.export(&work.path().join("x")).unwrap();
    let archive = work.path().join("snap.bin");
    pack(&work.path().join("x"), &archive).unwrap();
    let bytes = std::fs::read(&archive).unwrap();
    // Truncated.
    let cut = work.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let e = unpack(&cut, &work.path().join("u1")).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // A flipped byte in the middle.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x5a;
    let flipped = work.path().join("flip.bin");
    std::fs::write(&flipped, &bad).unwrap();
    assert!(unpack(&flipped, &work.path().join("u2")).is_err());
    // A path escaping the target.
    let mut evil = b"QSNAPv1\n".to_vec();
    let p = b"../escape";
    evil.extend_from_slice(&(p.len() as u16).to_le_bytes());
    evil.extend_from_slice(p);
    evil.extend_from_slice(&1u64.to_le_bytes());
    evil.push(b'x');
    evil.extend_from_slice(&crc32fast::hash(b"x").to_le_bytes());
    let ev = work.path().join("evil.bin");
    std::fs::write(&ev, &evil).unwrap();
    let e = unpack(&ev, &work.path().join("u3")).unwrap_err();
    assert!(e.to_string().contains("unsafe path"), "{e}");
    assert!(!work.path().join("escape").exists());
}

/// Writers and deleters race a compactor that runs all the time; afterwards, and after a
/// reopen (WAL replay over the compacted segments), every id holds its last write.
#[test]
fn compaction_under_concurrent_writes_loses_and_resurrects_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("w", 2, Metric::L2, 64))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (c, stop) = (Arc::clone(&c), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let opts = crate::collection::CompactionOptions {
                    min_dead_fraction: 0.1,
                    ..Default::default()
                };
                n += c.compact(opts).unwrap().len();
            }
            n
        })
    };
    let mut model: BTreeMap<u64, f32> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(11);
    for step in 0..3000u32 {
        let n = rng.random_range(0..500u64);
        if rng.random_bool(0.2) {
            c.delete(vec![id_of(n)]).unwrap();
            model.remove(&n);
        } else {
            let x = step as f32;
            c.upsert(vec![PointWrite {
                id: id_of(n),
                vector: vec![x, 1.0],
                payload: Some(format!("{{\"x\":{x}}}").into_bytes()),
            }])
            .unwrap();
            model.insert(n, x);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let compactions = compactor.join().unwrap();
    assert!(compactions > 0, "the compactor never found work");
    let verify = |c: &Collection| {
        let all: Vec<PointId> = (0..500).map(id_of).collect();
        let got = c
            .get(
                &all,
                ReadOptions {
                    with_vectors: true,
                    with_payload: true,
                },
            )
            .unwrap();
        let got: BTreeMap<PointId, (f32, Vec<u8>)> = got
            .into_iter()
            .map(|r| (r.id, (r.vector.unwrap()[0], r.payload.unwrap())))
            .collect();
        let want: BTreeMap<PointId, (f32, Vec<u8>)> = model
            .iter()
            .map(|(n, x)| (id_of(*n), (*x, format!("{{\"x\":{x}}}").into_bytes())))
            .collect();
        assert_eq!(got, want);
        assert_eq!(c.count(), model.len() as u64);
    };
    verify(&c);
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    verify(&engine.collection("w").unwrap());
}

/// A compacted segment goes live with its IVF-PQ index and field indexes, and searches and
/// filters answer the same before and after.
#[test]
fn compacted_segments_are_indexed_before_they_go_live() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("ix", 16, Metric::L2, 2000);
    cfg.index.kind = crate::types::IndexKind::IvfPq;
    cfg.schema
        .insert("even".into(), crate::filter::FieldType::Bool);
    let c = engine.create_collection(cfg).unwrap();
    let data = clustered(6000, 16, 5);
    let writes = |range: std::ops::Range<usize>| -> Vec<PointWrite> {
        range
            .map(|i| PointWrite {
                id: PointId::Num(i as u64),
                vector: data[i].clone(),
                payload: Some(format!("{{\"even\":{}}}", i % 2 == 0).into_bytes()),
            })
            .collect()
    };
    for start in [0, 2000, 4000] {
        c.upsert(writes(start..start + 2000)).unwrap();
    }
    c.flush().unwrap();
    wait_for_indexes(&c);
    // Delete two thirds of the first two segments (2 x 2000 rows): their live rows fit in one.
    let dels: Vec<PointId> = (0..4000u64)
        .filter(|i| i % 3 != 0)
        .map(PointId::Num)
        .collect();
    c.delete(dels).unwrap();
    let filter = crate::filter::parse("even = true").unwrap();
    let queries: Vec<Vec<f32>> = data.iter().step_by(397).cloned().collect();
    let run = |c: &Collection| -> Vec<Vec<PointId>> {
        queries
            .iter()
            .flat_map(|q| {
                let params = SearchParams {
                    exact: true,
                    ..Default::default()
                };
                let plain = c.search(q, 10, ReadOptions::default(), params).unwrap();
                let filtered = c
                    .search_batch_filtered(
                        &[(q, 10)],
                        ReadOptions::default(),
                        params,
                        Some(&filter),
                    )
                    .pop()
                    .unwrap()
                    .unwrap();
                [plain, filtered]
            })
            .map(|hits| hits.into_iter().map(|h| h.id).collect())
            .collect()
    };
    let before = run(&c);
    let stats = c.stats();
    assert_eq!((stats.dead_points, stats.sealed_segments), (2666, 3));
    let reports = c.compact(Default::default()).unwrap();
    assert!(!reports.is_empty());
    let after = c.stats();
    assert_eq!(after.dead_points, 0);
    assert_eq!(
        after.sealed_segments, 2,
        "the two thinned segments merged: {reports:?}"
    );
    assert_eq!(
        c.index_progress().0,
        c.index_progress().1,
        "indexed as soon as it is live"
    );
    assert_eq!(
        c.fields_progress().0,
        c.fields_progress().1,
        "field indexes too"
    );
    assert_eq!(run(&c), before);
    assert_eq!(c.count(), 6000 - 2666);
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("ix").unwrap();
    assert_eq!(run(&c), before);
    assert_eq!(c.stats().dead_points, 0);
}

/// A search whose deadline has passed stops with `DeadlineExceeded` instead of scanning on;
/// one with time left answers as usual.
#[test]
fn searches_stop_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("d", 8, Metric::L2, 500))
        .unwrap();
    for start in (0..5000u64).step_by(500) {
        c.upsert(points(start..start + 500, 8)).unwrap();
    }
    let q = vec![1.0f32; 8];
    let at = |deadline| SearchParams {
        exact: true,
        deadline: Some(deadline),
        ..Default::default()
    };
    let now = std::time::Instant::now();
    match c.search(&q, 5, ReadOptions::default(), at(now)) {
        Err(Error::DeadlineExceeded { .. }) => {}
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    let later = now + std::time::Duration::from_secs(60);
    assert_eq!(
        c.search(&q, 5, ReadOptions::default(), at(later)).unwrap(),
        c.search(&q, 5, ReadOptions::default(), SearchParams::default())
            .unwrap()
    );
}

/// A scroll whose segments are compacted between its pages still returns every live point
/// exactly once, unfiltered and filtered; a cursor into a segment that never existed is
/// refused rather than silently restarted.
#[test]
fn scroll_cursors_survive_compaction_between_pages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("s", 2, Metric::L2, 64))
        .unwrap();
    let force = crate::collection::CompactionOptions {
        force: true,
        ..Default::default()
    };
    let f = crate::filter::parse("r >= 100").unwrap();
    for filtered in [false, true] {
        let pts = (0..640)
            .map(|n| PointWrite {
                id: id_of(n),
                vector: vec![n as f32, 1.0],
                payload: Some(format!("{{\"r\":{n}}}").into_bytes()),
            })
            .collect();
        c.upsert(pts).unwrap();
        c.flush().unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut compactions = 0;
        loop {
            let (page, next) = if filtered {
                c.scroll_filtered(&f, cursor, 50, ReadOptions::default(), 0)
            } else {
                c.scroll(cursor, 50, ReadOptions::default(), 0)
            }
            .unwrap();
            seen.extend(page.into_iter().map(|r| r.id));
            let Some(n) = next else { break };
            cursor = Some(n);
            // Deleting the last point read kills a row in (usually) the cursor's own segment;
            // the forced compaction then moves the rows under the cursor.
            c.delete(vec![seen.last().unwrap().clone()]).unwrap();
            c.flush().unwrap();
            compactions += c.compact(force).unwrap().len();
        }
        assert!(
            compactions > 5,
            "only {compactions} compactions between pages"
        );
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seen.len(),
            "a point came back twice (filtered: {filtered})"
        );
        let mut want: Vec<PointId> = (0..640)
            .filter(|n| !filtered || *n >= 100)
            .map(id_of)
            .collect();
        want.sort();
        assert_eq!(sorted, want, "filtered: {filtered}");
    }
    let e = c
        .scroll(Some((123_456_789, 0)), 10, ReadOptions::default(), 0)
        .unwrap_err();
    assert!(
        e.to_string().starts_with("cursor: stale scroll cursor"),
        "{e}"
    );
}

/// The memory a compaction leaves behind is visible: the row maps it publishes (every moved
/// row's old and new place) in the collection's stats, and the id-map writes in the metadata
/// store's memtables; the points stay reachable through the streamed id-map batch (after a
/// reopen, where no row map is left to follow, by the id map alone).
#[test]
fn memory_held_after_compaction_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine
        .create_collection(config("m", 2, Metric::L2, 64))
        .unwrap();
    for batch in 0..10 {
        c.upsert(
            (batch * 64..(batch + 1) * 64)
                .map(|n| PointWrite {
                    id: id_of(n),
                    vector: vec![n as f32, 1.0],
                    payload: None,
                })
                .collect(),
        )
        .unwrap();
        c.flush().unwrap();
    }
    assert!(c.segment_count() >= 10, "{} segments", c.segment_count());
    assert_eq!(c.stats().move_map_bytes, 0);
    assert!(
        engine.meta_memory().memtables > 0,
        "{:?}",
        engine.meta_memory()
    );
    // Tiered merges of the ten 64-row segments, in pairs: every row moves at least once.
    let merge = crate::collection::CompactionOptions {
        merge_max_rows: 1024,
        merge_factor: 2,
        ..Default::default()
    };
    assert!(!c.compact(merge).unwrap().is_empty());
    let held = c.stats().move_map_bytes;
    // At least a forward entry (u32) and an origin entry per moved row.
    assert!(
        held >= 640 * 8,
        "{held} bytes of row maps for 640 moved rows"
    );
    for n in [0, 63, 64, 639] {
        let opts = ReadOptions {
            with_vectors: true,
            with_payload: false,
        };
        let got = c.get(&[id_of(n)], opts).unwrap();
        assert_eq!(got.len(), 1, "point {n} after compaction");
        assert_eq!(got[0].vector, Some(vec![n as f32, 1.0]));
    }
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("m").unwrap();
    assert_eq!(
        c.stats().move_map_bytes,
        0,
        "row maps do not survive a reopen"
    );
    let opts = ReadOptions {
        with_vectors: true,
        with_payload: false,
    };
    let ids: Vec<_> = (0..640).map(id_of).collect();
    let got = c.get(&ids, opts).unwrap();
    assert_eq!(got.len(), 640, "every point by the id map after a reopen");
    for p in got {
        let n = (0..640).find(|n| id_of(*n) == p.id).unwrap();
        assert_eq!(p.vector, Some(vec![n as f32, 1.0]), "point {n}");
    }
}

/// A restore's hidden copy swaps in for the live collection in one catalog commit, stays
/// swapped after a reopen, and is never listed or found under its own name.
#[test]
fn a_staging_copy_replaces_the_live_collection() {
    use crate::types::{is_staging_name, staging_name, staging_target};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let write = |c: &Collection, ids: std::ops::Range<u64>, x: f32| {
        let pts = ids
            .map(|n| PointWrite {
                id: id_of(n),
                vector: vec![x, n as f32],
                payload: None,
            })
            .collect();
        c.upsert(pts).unwrap();
    };
    let live = engine
        .create_collection(config("t", 2, Metric::L2, 50))
        .unwrap();
    write(&live, 0..120, 1.0);
    let staging = staging_name("t", 0xfeed);
    assert_eq!(staging_target(&staging), Some("t"));
    assert!(!is_staging_name("_restore-t") && !is_staging_name("t-000000000000feed"));
    let copy = engine
        .create_collection(config(&staging, 2, Metric::L2, 50))
        .unwrap();
    write(&copy, 100..180, 2.0);
    assert_eq!(engine.list().len(), 1, "the copy is not listed");
    assert!(
        engine.collection(&staging).is_err(),
        "nor found by its name"
    );
    assert_eq!(engine.list_all().len(), 2);

    let old_dir = live.dir().to_path_buf();
    let swapped = engine.replace_collection_seq(&staging, "t", 0).unwrap();
    assert_eq!(swapped.config().name, "t");
    // The old collection takes no more writes; its data and directory are gone.
    let late = live.upsert(vec![PointWrite {
        id: id_of(999),
        vector: vec![0.0, 0.0],
        payload: None,
    }]);
    assert!(
        matches!(late, Err(Error::CollectionNotFound { .. })),
        "{late:?}"
    );
    assert!(!old_dir.exists());
    let check = |e: &Engine| {
        let t = e.collection("t").unwrap();
        assert_eq!(t.count(), 80);
        let got = t
            .get(
                &[id_of(5), id_of(150)],
                ReadOptions {
                    with_vectors: true,
                    with_payload: false,
                },
            )
            .unwrap();
        assert_eq!(got.len(), 1, "only the copy's points");
        assert_eq!(got[0].vector.as_deref(), Some(&[2.0, 150.0][..]));
        assert!(e.collection_or_staging(&staging).is_err());
        assert_eq!(e.list_all().len(), 1);
    };
    check(&engine);
    drop((live, copy, swapped));
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    check(&engine);
    // Writes after the swap land in the copy's log and survive a reopen.
    write(&engine.collection("t").unwrap(), 0..10, 3.0);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert_eq!(engine.collection("t").unwrap().count(), 90);
    // Only a hidden copy can replace a collection.
    assert!(engine.replace_collection_seq("t", "t", 0).is_err());
}

/// Tiered merging: eight sealed segments merge, a tier at a time, into one with its own
/// IVF-PQ index. Exact results are the same before the merges, after them and after a
/// reopen; deleted rows never come back; the merged index keeps its recall at the default
/// (calibrated) nprobe; and the merged segment's index loads from its file at reopen.
#[test]
fn tiered_merging_grows_indexed_segments_and_keeps_every_result() {
    let dim = 16;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("m", dim, Metric::L2, 1100);
    cfg.index.kind = crate::types::IndexKind::IvfPq;
    let c = engine.create_collection(cfg).unwrap();
    let data = clustered(8800, dim, 17);
    for (b, chunk) in data.chunks(1100).enumerate() {
        c.upsert(vector_writes(chunk, b * 1100)).unwrap();
        c.flush().unwrap();
    }
    wait_for_indexes(&c);
    assert_eq!(c.stats().sealed_segments, 8);
    let dead: Vec<u64> = (0..8800).filter(|n| n % 7 == 0).collect();
    c.delete(dead.iter().copied().map(PointId::Num).collect())
        .unwrap();
    let queries: Vec<Vec<f32>> = clustered(40, dim, 99);
    let exact = SearchParams {
        exact: true,
        ..Default::default()
    };
    let search = |c: &Collection, params: SearchParams| -> Vec<Vec<u64>> {
        queries
            .iter()
            .map(|q| {
                c.search(q, 10, ReadOptions::default(), params)
                    .unwrap()
                    .into_iter()
                    .map(|h| match h.id {
                        PointId::Num(n) => n,
                        PointId::Str(_) => unreachable!(),
                    })
                    .collect()
            })
            .collect()
    };
    let before = search(&c, exact);
    // Vacuuming off (nothing is dead enough): only the tiers merge. Eight segments of about
    // 943 live rows, tier 0 (below 4 × 1,100): the first four merge into 3,771 rows, still
    // tier 0, which takes in the next three (6,600 rows, over half the target: final). The
    // last one waits for company. The merged segment is indexed; the last is too small.
    let opts = crate::collection::CompactionOptions {
        min_dead_fraction: 0.9,
        merge_max_rows: 8000,
        merge_factor: 4,
        ..Default::default()
    };
    let reports = c.compact(opts).unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[1].rows_after, 6600, "{reports:?}");
    let stats = c.stats();
    assert_eq!(stats.sealed_segments, 2, "{reports:?}");
    assert_eq!(
        stats.dead_points,
        1100 - 942,
        "merges drop the dead rows of what they merge; the last segment keeps its own"
    );
    // The merged segment, and the last one (1,100 rows with its dead ones), indexed at seal.
    assert_eq!(c.index_progress(), (2, 2), "indexed as soon as it is live");
    assert_eq!(search(&c, exact), before);
    let recall = |c: &Collection| {
        let got = search(c, SearchParams::default());
        let hits: usize = got
            .iter()
            .zip(&before)
            .map(|(g, w)| g.iter().filter(|id| w.contains(id)).count())
            .sum();
        hits as f64 / (10 * queries.len()) as f64
    };
    let merged = recall(&c);
    assert!(merged >= 0.9, "recall@10 {merged} at the default nprobe");
    for q in dead.iter().step_by(50) {
        let v = &data[*q as usize];
        let hits = c
            .search(v, 10, ReadOptions::default(), SearchParams::default())
            .unwrap();
        assert!(
            hits.iter().all(|h| h.id != PointId::Num(*q)),
            "deleted {q} came back"
        );
    }
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("m").unwrap();
    assert_eq!(
        c.index_progress(),
        (2, 2),
        "the merged index loads from its file"
    );
    assert_eq!(search(&c, exact), before);
    assert_eq!(recall(&c), merged);
    assert_eq!(c.count(), 8800 - dead.len() as u64);
}

/// Sealed segments write their field indexes beside their files: a reopen reads them (every
/// segment's indexes are there the moment the collection opens, before any background
/// build could run), filters answer the same, and a damaged file is rebuilt and rewritten.
#[test]
fn field_indexes_are_persisted_per_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("p", 4, Metric::L2, 500);
    cfg.schema = [
        ("n".to_owned(), crate::filter::FieldType::Integer),
        ("kw".to_owned(), crate::filter::FieldType::Keyword),
    ]
    .into();
    let c = engine.create_collection(cfg).unwrap();
    for start in (0..2000u64).step_by(500) {
        let pts = (start..start + 500)
            .map(|i| PointWrite {
                id: PointId::Num(i),
                vector: vec![i as f32, 1.0, 0.0, 2.0],
                payload: Some(format!("{{\"n\":{},\"kw\":\"k{}\"}}", i % 100, i % 7).into_bytes()),
            })
            .collect();
        c.upsert(pts).unwrap();
        c.flush().unwrap();
    }
    let filters = [
        "n < 10",
        "kw = \"k3\" and n >= 50",
        "not (kw any [\"k1\", \"k2\"])",
    ]
    .map(|t| crate::filter::parse(t).unwrap());
    let counts = |c: &Collection| -> Vec<u64> {
        filters
            .iter()
            .map(|f| c.count_filtered(f).unwrap())
            .collect()
    };
    let want = counts(&c);
    assert_eq!(want, vec![200, 143, 1428]);
    fn files(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                files(&e.path(), out);
            } else if e.file_name() == "fields.idx" {
                out.push(e.path());
            }
        }
    }
    let found = || {
        let mut v = Vec::new();
        files(dir.path(), &mut v);
        v.sort();
        v
    };
    // Written after each seal on a thread of its own.
    let started = std::time::Instant::now();
    while found().len() < 4 {
        assert!(started.elapsed().as_secs() < 30, "{:?}", found());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let paths = found();
    assert_eq!(paths.len(), 4, "one per sealed segment: {paths:?}");
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("p").unwrap();
    assert_eq!(c.fields_progress(), (4, 4), "read from the files at open");
    assert_eq!(counts(&c), want);
    // A flipped byte: the file is refused, the indexes rebuilt from payloads and rewritten.
    let mut bytes = std::fs::read(&paths[1]).unwrap();
    bytes[20] ^= 0x10;
    std::fs::write(&paths[1], &bytes).unwrap();
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("p").unwrap();
    let started = std::time::Instant::now();
    while c.fields_progress() != (4, 4) {
        assert!(started.elapsed().as_secs() < 30, "not rebuilt");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(counts(&c), want);
    let fixed = std::fs::read(&paths[1]).unwrap();
    assert!(crate::payload_index::FieldIndexes::from_bytes(&fixed).is_some());
}

/// A collection that stops growing consolidates the segments its tiers leave: three sealed
/// segments wait for a fourth under the tiers alone, and merge into one once the collection is
/// idle. Exact results are the same before, after and across a reopen, the merged segment is
/// indexed, and while writes keep coming nothing is consolidated.
#[test]
fn an_idle_collection_merges_what_its_tiers_leave() {
    let dim = 16;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("idle", dim, Metric::L2, 1100);
    cfg.index.kind = crate::types::IndexKind::IvfPq;
    let c = engine.create_collection(cfg).unwrap();
    let data = clustered(3300, dim, 23);
    for (b, chunk) in data.chunks(1100).enumerate() {
        c.upsert(vector_writes(chunk, b * 1100)).unwrap();
        c.flush().unwrap();
    }
    wait_for_indexes(&c);
    assert_eq!(c.stats().sealed_segments, 3);
    let queries: Vec<Vec<f32>> = clustered(30, dim, 98);
    let exact = SearchParams {
        exact: true,
        ..Default::default()
    };
    let search = |c: &Collection| -> Vec<Vec<PointId>> {
        queries
            .iter()
            .map(|q| {
                c.search(q, 10, ReadOptions::default(), exact)
                    .unwrap()
                    .into_iter()
                    .map(|h| h.id)
                    .collect()
            })
            .collect()
    };
    let before = search(&c);
    let tiers = crate::collection::CompactionOptions {
        merge_max_rows: 8000,
        merge_factor: 4,
        merge_when_idle: None,
        ..Default::default()
    };
    assert!(
        c.compact(tiers).unwrap().is_empty(),
        "three of a tier wait for a fourth"
    );
    let busy = crate::collection::CompactionOptions {
        merge_when_idle: Some(std::time::Duration::from_secs(3600)),
        ..tiers
    };
    assert!(
        c.compact(busy).unwrap().is_empty(),
        "written a moment ago: not idle"
    );
    assert!(c.idle_for() < std::time::Duration::from_secs(3600));
    let idle = crate::collection::CompactionOptions {
        merge_when_idle: Some(std::time::Duration::ZERO),
        ..tiers
    };
    let reports = c.compact(idle).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].rows_after, 3300, "{reports:?}");
    assert_eq!(c.stats().sealed_segments, 1);
    assert_eq!(
        c.index_progress(),
        (1, 1),
        "the consolidated segment is indexed"
    );
    assert_eq!(search(&c), before);
    assert!(c.compact(idle).unwrap().is_empty(), "one segment: settled");
    drop(c);
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("idle").unwrap();
    assert_eq!(c.stats().sealed_segments, 1);
    assert_eq!(search(&c), before);
    assert_eq!(c.count(), 3300);
}

/// Rows that come in tight groups fool a calibration that uses them as queries (each row's
/// neighbours are its group, in its own list), while queries between groups need many lists.
/// The recall audit measures such queries, and `target_recall` then holds on unseen ones; the
/// curve survives a restart.
#[test]
fn served_queries_recalibrate_target_recall() {
    use crate::index::audit;
    let (dim, groups, copies) = (16, 600, 11);
    let mut rng = StdRng::seed_from_u64(5);
    let centres: Vec<Vec<f32>> = (0..groups)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let data: Vec<Vec<f32>> = (0..groups * copies)
        .map(|i| {
            centres[i / copies]
                .iter()
                .map(|c| c + rng.random_range(-0.01..0.01))
                .collect()
        })
        .collect();
    // Queries: midpoints of two random groups, so their neighbours are split between lists.
    let midpoint = |rng: &mut StdRng| -> Vec<f32> {
        let (a, b) = (rng.random_range(0..groups), rng.random_range(0..groups));
        centres[a]
            .iter()
            .zip(&centres[b])
            .map(|(x, y)| (x + y) / 2.0)
            .collect()
    };
    let seen: Vec<Vec<f32>> = (0..48).map(|_| midpoint(&mut rng)).collect();
    let unseen: Vec<Vec<f32>> = (0..100).map(|_| midpoint(&mut rng)).collect();

    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("twins", dim, Metric::L2, (groups * copies) as u32);
    cfg.index = crate::types::IndexConfig {
        kind: crate::types::IndexKind::IvfPq,
        ..crate::types::IndexConfig::flat()
    };
    let c = engine.create_collection(cfg).unwrap();
    for (b, chunk) in data.chunks(1000).enumerate() {
        c.upsert(vector_writes(chunk, b * 1000)).unwrap();
    }
    c.flush().unwrap();
    wait_for_indexes(&c);
    let target = SearchParams {
        target_recall_bp: Some(9500),
        ..Default::default()
    };
    let recall = |c: &Collection, params: SearchParams| -> f64 {
        let exact = SearchParams {
            exact: true,
            ..Default::default()
        };
        let mut found = 0;
        for q in &unseen {
            let ids = |p| -> Vec<PointId> {
                let hits = c.search(q, 10, ReadOptions::default(), p).unwrap();
                hits.into_iter().map(|h| h.id).collect()
            };
            let want = ids(exact);
            found += ids(params).iter().filter(|id| want.contains(id)).count();
        }
        found as f64 / (10 * unseen.len()) as f64
    };
    let before = recall(&c, target);
    let info_before = c.stats().index_state;
    for q in &seen {
        assert_eq!(
            c.audit_recall(q).unwrap(),
            1,
            "one indexed segment measured"
        );
    }
    let after = recall(&c, target);
    let info_after = c.stats().index_state;
    eprintln!(
        "target 0.95 on unseen queries: {before:.3} from held-out rows, {after:.3} from served queries\n{info_before}\n{info_after}"
    );
    assert!(
        before < 0.9,
        "the held-out rows' curve was expected to miss on these queries: {before}"
    );
    assert!(
        after >= 0.93,
        "target 0.95 from served queries gave {after}"
    );
    assert!(
        info_after.contains("served curves in every indexed segment, from at least 48 queries"),
        "{info_after}"
    );
    assert!(
        info_before.contains(
            "held-out curve in 1 of 1 indexed segments; fewest served queries measured 0 of 32"
        ),
        "{info_before}"
    );
    // Saved every 16 measurements: all 48 are back after a restart, with the same nprobes.
    drop(c);
    drop(engine);
    engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("twins").unwrap();
    assert_eq!(recall(&c, target), after, "served curve lost in a restart");
    // The audit is off in the library until an application turns it on.
    assert_eq!(audit::share(), 0.0);
}

/// Filtered searches widen nprobe as measured on served filtered queries. Rows in 40 tight
/// clusters carry their cluster `c` and a uniform `r`. A uniform 10% filter keeps its nearest
/// allowed rows in the nearest lists, where nprobe / √f probes more than needed: once the
/// audit has measured seen queries, it widens less and `target_recall` still holds on unseen
/// ones. A filter allowing only the first four clusters (also 10%), asked by queries from the
/// other clusters, finds no allowed row in the lists it probes: every search still returns
/// its 10 hits (the probe's short queries read every allowed row), before and after its
/// queries are measured too. The measurements survive a restart.
#[test]
fn filtered_searches_widen_nprobe_as_measured() {
    let (dim, groups, per) = (16, 40, 500);
    let mut rng = StdRng::seed_from_u64(17);
    let centres: Vec<Vec<f32>> = (0..groups)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let near = |rng: &mut StdRng, g: usize, spread: f32| -> Vec<f32> {
        centres[g]
            .iter()
            .map(|c| c + rng.random_range(-spread..spread))
            .collect()
    };
    let n = groups * per;
    let data: Vec<Vec<f32>> = (0..n).map(|i| near(&mut rng, i % groups, 0.3)).collect();
    let rs: Vec<u32> = (0..n).map(|_| rng.random_range(0..10_000)).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let mut cfg = config("w", dim, Metric::L2, n as u32);
    cfg.index = crate::types::IndexConfig {
        kind: crate::types::IndexKind::IvfPq,
        ..crate::types::IndexConfig::flat()
    };
    cfg.schema = [
        ("c".to_owned(), crate::filter::FieldType::Integer),
        ("r".to_owned(), crate::filter::FieldType::Integer),
    ]
    .into();
    let c = engine.create_collection(cfg).unwrap();
    for (b, chunk) in data.chunks(1000).enumerate() {
        let pts = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let row = b * 1000 + i;
                PointWrite {
                    id: PointId::Num(row as u64),
                    vector: v.clone(),
                    payload: Some(
                        serde_json::json!({"c": row % groups, "r": rs[row]})
                            .to_string()
                            .into_bytes(),
                    ),
                }
            })
            .collect();
        c.upsert(pts).unwrap();
    }
    c.flush().unwrap();
    wait_for_indexes(&c);
    // Queries from clusters 4.. (never allowed by the correlated filter).
    let queries = |rng: &mut StdRng, count: usize| -> Vec<Vec<f32>> {
        (0..count)
            .map(|_| {
                let g = rng.random_range(4..groups);
                near(rng, g, 0.3)
            })
            .collect()
    };
    let seen = queries(&mut rng, 40);
    let unseen = queries(&mut rng, 60);
    let correlated = crate::filter::parse("c < 4").unwrap();
    let uniform = crate::filter::parse("r < 1000").unwrap();
    let pass_correlated = |row: usize| row % groups < 4;
    let pass_uniform = |row: usize| rs[row] < 1000;
    let recall = |c: &Collection, f: &crate::filter::Filter, pass: &dyn Fn(usize) -> bool| {
        let mut found = 0;
        for q in &unseen {
            let mut all: Vec<(f64, usize)> = (0..n)
                .filter(|&r| pass(r))
                .map(|r| (naive_distance(Metric::L2, q, &data[r]), r))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            let want: Vec<PointId> = all
                .iter()
                .take(10)
                .map(|x| PointId::Num(x.1 as u64))
                .collect();
            let params = SearchParams {
                target_recall_bp: Some(9500),
                ..Default::default()
            };
            let hits = c
                .search_batch_filtered(&[(q, 10)], ReadOptions::default(), params, Some(f))
                .pop()
                .unwrap()
                .unwrap();
            assert_eq!(hits.len(), 10, "a filtered search came back short");
            assert!(hits.iter().all(|h| match h.id {
                PointId::Num(r) => pass(r as usize),
                PointId::Str(_) => false,
            }));
            found += hits.iter().filter(|h| want.contains(&h.id)).count();
        }
        found as f64 / (10 * unseen.len()) as f64
    };
    let widening = |c: &Collection| -> Option<f64> {
        let sealed = c.sealed_segments();
        let idx = sealed[0].index().unwrap();
        idx.served().widening_for(0.95, idx.nprobe_for(0.95), 0.1)
    };
    let before = (
        recall(&c, &correlated, &pass_correlated),
        recall(&c, &uniform, &pass_uniform),
    );
    assert_eq!(widening(&c), None, "nothing measured yet");
    // The uniform filter's queries measured: no wider a probe than 1/√f, recall kept.
    for q in &seen {
        assert_eq!(c.audit_recall_filtered(q, &uniform).unwrap(), 1);
    }
    let e_uniform = widening(&c).unwrap();
    let uniform_after = recall(&c, &uniform, &pass_uniform);
    let info = c.stats().index_state;
    // Then the correlated filter's (the window now holds both kinds: 80 queries).
    for q in &seen {
        assert_eq!(c.audit_recall_filtered(q, &correlated).unwrap(), 1);
    }
    let e_mixed = widening(&c).unwrap();
    let correlated_after = recall(&c, &correlated, &pass_correlated);
    eprintln!(
        "recall before (correlated, uniform): {before:?}; uniform measured: e = {e_uniform}, recall {uniform_after:.3}; both measured: e = {e_mixed}, correlated recall {correlated_after:.3}\n{info}"
    );
    assert!(before.0 >= 0.93, "correlated filter: recall {}", before.0);
    assert!(e_uniform < 0.5, "uniform filter not narrowed: {e_uniform}");
    assert!(
        uniform_after >= 0.93,
        "uniform filter: recall {uniform_after}"
    );
    assert!(
        correlated_after >= 0.93,
        "correlated filter: recall {correlated_after}"
    );
    assert!(
        recall(&c, &uniform, &pass_uniform) >= 0.93,
        "uniform filter, both measured"
    );
    assert!(
        info.contains("filtered searches widen nprobe as measured on at least 40"),
        "{info}"
    );
    // Saved every 16 measurements: all 80 are back after a restart.
    drop(c);
    drop(engine);
    engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let c = engine.collection("w").unwrap();
    assert_eq!(
        widening(&c),
        Some(e_mixed),
        "filtered measurements lost in a restart"
    );
    assert_eq!(recall(&c, &correlated, &pass_correlated), correlated_after);
}

/// Text, sparse and hybrid searches give the same hits and scores whether the rows sit in one
/// segment or many, before and after compaction and after a restart; BM25 scores equal a
/// direct computation over the live rows; filters hold in every branch.
#[test]
fn hybrid_search_is_independent_of_segments_and_honours_filters() {
    use crate::collection::{HybridQuery, SparseSearch, TextSearch};
    use crate::filter::FieldType;
    use crate::text::fusion::Fusion;
    use crate::text::{Analyzer, Language, SparseVector};

    let words = [
        "abacus", "river", "quantum", "violin", "harbor", "granite", "saffron", "comet", "lantern",
        "meadow", "cobalt", "falcon", "the", "of", "and", "engine", "ledger", "orbit", "pepper",
        "tundra", "walnut", "zephyr", "beacon", "cipher",
    ];
    let analyzer = Analyzer {
        language: Some(Language::English),
        stop_words: false,
    };
    let mut rng = StdRng::seed_from_u64(11);
    // 1,200 writes over 1,000 ids (overwrites), then 60 deletes: dead rows in several segments.
    let mut writes = Vec::new();
    for n in 0..1200u64 {
        let id = if n < 1000 {
            n
        } else {
            rng.random_range(0..1000)
        };
        let len = rng.random_range(3..30);
        // Zipf-like: low word indexes far more frequent.
        let body: Vec<&str> = (0..len)
            .map(|_| words[(rng.random_range(0.0f64..1.0).powi(3) * words.len() as f64) as usize])
            .collect();
        let dims: Vec<u32> = {
            let mut d: Vec<u32> = (0..rng.random_range(1..6))
                .map(|_| rng.random_range(0..40))
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        };
        let vals: Vec<f32> = dims.iter().map(|_| rng.random_range(0.1f32..2.0)).collect();
        let payload = serde_json::json!({
            "body": body.join(" "),
            "grp": format!("g{}", id % 3),
            "sp": {"indices": dims, "values": vals},
        });
        let vector: Vec<f32> = (0..8).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        writes.push(PointWrite {
            id: PointId::Num(id),
            vector,
            payload: Some(payload.to_string().into_bytes()),
        });
    }
    let deletes: Vec<PointId> = (0..60).map(|i| PointId::Num(i * 16)).collect();
    let schema: crate::filter::Schema = [
        ("body".to_owned(), FieldType::Text(analyzer)),
        ("grp".to_owned(), FieldType::Keyword),
        ("sp".to_owned(), FieldType::Sparse),
    ]
    .into();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let load = |name: &str, seg: u32| {
        let mut cfg = config(name, 8, Metric::Cosine, seg);
        cfg.schema = schema.clone();
        let c = engine.create_collection(cfg).unwrap();
        for chunk in writes.chunks(100) {
            c.upsert(chunk.to_vec()).unwrap();
        }
        c.delete(deletes.clone()).unwrap();
        c
    };
    let one = load("one", 100_000);
    let many = load("many", 150);
    assert!(many.segment_count() >= 6, "{}", many.segment_count());
    let q_vec: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).sin()).collect();
    let text = |q: &str| TextSearch {
        field: "body".into(),
        more_fields: Vec::new(),
        query: q.into(),
        bm25: Default::default(),
    };
    let sparse = SparseSearch {
        field: "sp".into(),
        vector: SparseVector {
            indices: vec![2, 5, 17, 33],
            values: vec![1.0, 0.5, 2.0, 0.25],
        },
    };
    let queries = [
        HybridQuery {
            text: Some(text("abacus violins")),
            k: 10,
            ..Default::default()
        },
        HybridQuery {
            text: Some(text("+comet lantern -river")),
            k: 10,
            ..Default::default()
        },
        HybridQuery {
            sparse: Some(sparse.clone()),
            k: 10,
            ..Default::default()
        },
        HybridQuery {
            dense: Some(q_vec.clone()),
            text: Some(text("meadow cobalt falcon")),
            sparse: Some(sparse.clone()),
            k: 10,
            ..Default::default()
        },
        HybridQuery {
            dense: Some(q_vec.clone()),
            text: Some(text("granite saffron")),
            k: 10,
            fusion: Fusion::Dbsf,
            ..Default::default()
        },
    ];
    let filter = crate::filter::parse("grp = \"g1\"").unwrap();
    let opts = ReadOptions {
        with_vectors: false,
        with_payload: true,
    };
    let exact = SearchParams {
        exact: true,
        ..Default::default()
    };
    let run = |c: &Collection, f: Option<&crate::filter::Filter>| -> Vec<Vec<(PointId, f32)>> {
        queries
            .iter()
            .map(|q| {
                c.hybrid_search(q, opts, exact, f)
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.hit.id, h.hit.score))
                    .collect()
            })
            .collect()
    };
    let same = |a: &[Vec<(PointId, f32)>], b: &[Vec<(PointId, f32)>], what: &str| {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.len(), y.len(), "{what}, query {i}");
            for (p, q) in x.iter().zip(y) {
                assert!(
                    (p.1 - q.1).abs() <= 1e-5 * p.1.abs().max(1.0),
                    "{what}, query {i}: {x:?} vs {y:?}"
                );
            }
            // Ids equal up to ties.
            let ids = |v: &Vec<(PointId, f32)>| v.iter().map(|h| h.0.clone()).collect::<Vec<_>>();
            if ids(x) != ids(y) {
                let s = |v: &Vec<(PointId, f32)>| v.iter().map(|h| h.1).collect::<Vec<_>>();
                assert_eq!(s(x).len(), s(y).len(), "{what}, query {i}");
            }
        }
    };
    let base = run(&one, None);
    assert!(base.iter().all(|h| !h.is_empty()), "{base:?}");
    same(&base, &run(&many, None), "one vs many segments");
    let base_f = run(&one, Some(&filter));
    same(&base_f, &run(&many, Some(&filter)), "filtered, one vs many");

    // BM25 against a direct computation over the live rows.
    let live: Vec<(u64, Vec<String>, String)> = {
        let mut last: BTreeMap<u64, &PointWrite> = BTreeMap::new();
        for w in &writes {
            if let PointId::Num(n) = w.id {
                last.insert(n, w);
            }
        }
        last.into_iter()
            .filter(|(id, _)| !deletes.contains(&PointId::Num(*id)))
            .map(|(id, w)| {
                let v: serde_json::Value =
                    serde_json::from_slice(w.payload.as_ref().unwrap()).unwrap();
                (
                    id,
                    analyzer.terms(v["body"].as_str().unwrap()),
                    v["grp"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let n = live.len() as f64;
    let avg = live.iter().map(|d| d.1.len()).sum::<usize>() as f64 / n;
    let qterms = analyzer.terms("abacus violins");
    let mut reference: Vec<(f64, u64, &str)> = live
        .iter()
        .map(|(id, d, g)| {
            let s: f64 = qterms
                .iter()
                .map(|t| {
                    let df = live.iter().filter(|x| x.1.contains(t)).count() as f64;
                    let tf = d.iter().filter(|x| *x == t).count() as f64;
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * d.len() as f64 / avg))
                })
                .sum();
            (s, *id, g.as_str())
        })
        .filter(|x| x.0 > 0.0)
        .collect();
    reference.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (got, want) in base[0].iter().zip(&reference) {
        assert!(
            (f64::from(got.1) - want.0).abs() < 1e-4 * want.0,
            "{:?} vs {:?}",
            base[0],
            &reference[..10]
        );
    }
    let want_f: Vec<f64> = reference
        .iter()
        .filter(|r| r.2 == "g1")
        .take(10)
        .map(|r| r.0)
        .collect();
    let got_f: Vec<f64> = base_f[0].iter().map(|h| f64::from(h.1)).collect();
    assert_eq!(got_f.len(), want_f.len());
    for (g, w) in got_f.iter().zip(&want_f) {
        assert!(
            (g - w).abs() < 1e-4 * w,
            "filtered: {got_f:?} vs {want_f:?}"
        );
    }
    // Filters hold in every branch of every query.
    for q in &queries {
        for h in many.hybrid_search(q, opts, exact, Some(&filter)).unwrap() {
            let p: serde_json::Value =
                serde_json::from_slice(h.hit.payload.as_ref().unwrap()).unwrap();
            assert_eq!(p["grp"], "g1", "{h:?}");
        }
    }
    // Required and excluded terms hold.
    for h in &many.hybrid_search(&queries[1], opts, exact, None).unwrap() {
        let p: serde_json::Value = serde_json::from_slice(h.hit.payload.as_ref().unwrap()).unwrap();
        let body = p["body"].as_str().unwrap();
        assert!(body.contains("comet") && !body.contains("river"), "{body}");
    }

    // Compaction, then a restart: the same hits.
    many.compact(crate::collection::CompactionOptions {
        force: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(many.stats().dead_points, 0);
    same(&base, &run(&many, None), "after compaction");
    drop((one, many));
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let many = engine.collection("many").unwrap();
    let started = std::time::Instant::now();
    while many.fields_progress().0 != many.fields_progress().1 {
        assert!(started.elapsed().as_secs() < 30);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    same(&base, &run(&many, None), "after a restart");
    same(
        &base_f,
        &run(&many, Some(&filter)),
        "filtered, after a restart",
    );

    // Bad input is refused, naming the field.
    let bad = |q: HybridQuery| {
        many.hybrid_search(&q, opts, exact, None)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad(HybridQuery {
            text: Some(TextSearch {
                field: "grp".into(),
                ..text("x")
            }),
            k: 5,
            ..Default::default()
        })
        .contains("text.field")
    );
    assert!(
        bad(HybridQuery {
            text: Some(TextSearch {
                field: "nope".into(),
                ..text("x")
            }),
            k: 5,
            ..Default::default()
        })
        .contains("not declared")
    );
    let w = crate::collection::Weights {
        text: -1.0,
        ..Default::default()
    };
    assert!(
        bad(HybridQuery {
            text: Some(text("x")),
            weights: w,
            k: 5,
            ..Default::default()
        })
        .contains("weights.text")
    );
    let unsorted = SparseSearch {
        field: "sp".into(),
        vector: SparseVector {
            indices: vec![3, 1],
            values: vec![1.0, 1.0],
        },
    };
    assert!(
        bad(HybridQuery {
            sparse: Some(unsorted),
            k: 5,
            ..Default::default()
        })
        .contains("indices[1]")
    );
    let e = many
        .upsert(vec![PointWrite {
            id: PointId::Num(5000),
            vector: vec![1.0; 8],
            payload: Some(br#"{"sp": {"indices": [4, 4], "values": [1, 2]}}"#.to_vec()),
        }])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("points[0].payload.sp") && e.contains("indices[1]") && e.contains("5000"),
        "{e}"
    );
}
