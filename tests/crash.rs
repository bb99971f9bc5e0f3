//! Crash safety: ingest through the server, `kill -9` it at random moments (including during
//! seals), reopen, and check that every acknowledged write is there, every acknowledged delete
//! is gone, the batch in flight is all-or-nothing, and every segment opens (checksums verified).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use quiver_client::{num_id, pb};
use quiver_tests::{Server, vector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 8;
/// Kill points per run; `QUIVER_CRASH_ITERATIONS` raises it for longer local runs.
fn iterations() -> usize {
    std::env::var("QUIVER_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// What the model knows: id → version of its vector (None = deleted), acknowledged only.
type Model = HashMap<u64, Option<u64>>;

async fn verify(server: &Server, model: &Model, in_flight: &[(u64, Option<u64>)]) {
    let mut c = server.client().await;
    let mut ids: Vec<u64> = model.keys().copied().collect();
    ids.extend(in_flight.iter().map(|p| p.0));
    ids.sort_unstable();
    ids.dedup();
    let mut found: HashMap<u64, Vec<f32>> = HashMap::new();
    for chunk in ids.chunks(2000) {
        let req = pb::GetPointsRequest {
            collection: "crash".into(),
            ids: chunk.iter().map(|i| num_id(*i)).collect(),
            with_vectors: true,
            with_payload: false,
            ..Default::default()
        };
        for p in c
            .points
            .get(req)
            .await
            .expect("get after reopen")
            .into_inner()
            .points
        {
            let Some(pb::point_id::Kind::Num(n)) = p.id.and_then(|i| i.kind) else {
                panic!("bad id")
            };
            found.insert(n, p.vector);
        }
    }
    // The in-flight batch (sent, not acknowledged) is one WAL record: all of it or none of it.
    let applied = |(id, version): &(u64, Option<u64>)| match version {
        Some(v) => found.get(id) == Some(&vector(*v, DIM)),
        None => !found.contains_key(id),
    };
    let in_flight_applied = !in_flight.is_empty() && in_flight.iter().all(applied);
    let in_flight_ids: std::collections::HashSet<u64> = in_flight.iter().map(|p| p.0).collect();
    if !in_flight.is_empty() && !in_flight_applied {
        // Entries that would change nothing (e.g. deleting an id that never existed) say nothing.
        let partially = in_flight
            .iter()
            .filter(|p| model.get(&p.0).copied().flatten() != p.1)
            .any(applied);
        assert!(!partially, "the in-flight batch was applied partially");
    }
    for (id, version) in model {
        if in_flight_applied && in_flight_ids.contains(id) {
            continue;
        }
        match version {
            Some(v) => assert_eq!(
                found.get(id),
                Some(&vector(*v, DIM)),
                "acknowledged upsert of {id} (version {v}) lost"
            ),
            None => assert!(
                !found.contains_key(id),
                "acknowledged delete of {id} came back"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: seals (segment writes, checkpoints, WAL truncation) happen constantly.
    let mut server =
        Server::start_with(dir.path(), &[("QUIVER__STORAGE__SEGMENT_MAX_ROWS", "400")]).await;
    let mut c = server.client().await;
    let req = pb::CreateCollectionRequest {
        name: "crash".into(),
        dim: DIM as u32,
        metric: pb::Metric::L2 as i32,
        ..Default::default()
    };
    c.collections.create(req).await.unwrap();
    let mut rng = StdRng::seed_from_u64(0xC0FFEE);
    let mut model: Model = HashMap::new();
    let mut version = 0u64;
    let started = Instant::now();
    let iterations = iterations();
    for iteration in 0..iterations {
        let mut c = server.client().await;
        // Write from a task; kill the server from here at a random moment.
        let kill_after = Duration::from_millis(rng.random_range(20..400));
        let seed = rng.random::<u64>();
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(Vec<(u64, Option<u64>)>, bool)>();
        let base_version = version;
        let writer = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut v = base_version;
            loop {
                let batch: Vec<(u64, Option<u64>)> = if rng.random_bool(0.8) {
                    (0..rng.random_range(1..120))
                        .map(|_| {
                            v += 1;
                            (rng.random_range(0..3000u64), Some(v))
                        })
                        .collect()
                } else {
                    (0..rng.random_range(1..30))
                        .map(|_| (rng.random_range(0..3000u64), None))
                        .collect()
                };
                // Report the batch before sending (in flight), then its acknowledgement.
                if tx.send((batch.clone(), false)).is_err() {
                    return;
                }
                let ok = if batch[0].1.is_some() {
                    let points = batch
                        .iter()
                        .map(|(id, ver)| pb::Point {
                            id: Some(num_id(*id)),
                            vector: vector(ver.unwrap_or(0), DIM),
                            payload_json: None,
                        })
                        .collect();
                    c.points
                        .upsert(pb::UpsertRequest {
                            collection: "crash".into(),
                            points,
                            batch_id: 0,
                        })
                        .await
                        .is_ok()
                } else {
                    let ids = batch.iter().map(|(id, _)| num_id(*id)).collect();
                    c.points
                        .delete(pb::DeletePointsRequest {
                            collection: "crash".into(),
                            ids,
                            filter: None,
                        })
                        .await
                        .is_ok()
                };
                if !ok || tx.send((batch, true)).is_err() {
                    return;
                }
            }
        });
        tokio::time::sleep(kill_after).await;
        server.kill9();
        let _ = writer.await;
        let mut in_flight: Vec<(u64, Option<u64>)> = Vec::new();
        while let Ok((batch, acked)) = rx.try_recv() {
            if acked {
                // Mixed batches are deduplicated the way the server does it: last one wins.
                for (id, ver) in &batch {
                    model.insert(*id, *ver);
                    if let Some(v) = ver {
                        version = version.max(*v);
                    }
                }
                in_flight.clear();
            } else {
                for (_, ver) in &batch {
                    if let Some(v) = ver {
                        version = version.max(*v);
                    }
                }
                in_flight = batch;
            }
        }
        // Within a batch the last write of an id wins: reduce the in-flight batch the same way.
        let mut last: HashMap<u64, Option<u64>> = HashMap::new();
        for (id, ver) in &in_flight {
            last.insert(*id, *ver);
        }
        let in_flight: Vec<(u64, Option<u64>)> = last.into_iter().collect();
        server.reopen().await;
        verify(&server, &model, &in_flight).await;
        // Fold the in-flight batch into the model as the server decided.
        let mut c = server.client().await;
        for (id, _) in &in_flight {
            let got = c
                .points
                .get(pb::GetPointsRequest {
                    collection: "crash".into(),
                    ids: vec![num_id(*id)],
                    with_vectors: true,
                    with_payload: false,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            match got.points.first() {
                Some(p) => {
                    let v = in_flight
                        .iter()
                        .find(|x| x.0 == *id)
                        .and_then(|x| x.1)
                        .filter(|v| p.vector == vector(*v, DIM));
                    if let Some(v) = v {
                        model.insert(*id, Some(v));
                    }
                }
                None => {
                    if in_flight.iter().any(|x| x.0 == *id && x.1.is_none()) {
                        model.insert(*id, None);
                    }
                }
            }
        }
        let live = model.values().filter(|v| v.is_some()).count() as u64;
        assert_eq!(
            c.count("crash").await.unwrap(),
            live,
            "iteration {iteration}: count"
        );
    }
    eprintln!(
        "{iterations} kill -9 iterations, {} ids tracked, in {:?}",
        model.len(),
        started.elapsed()
    );
}
