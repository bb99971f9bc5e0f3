//! Criterion benches: distance kernels (simsimd) and the engine's exact search.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use quiver_storage::{
    CollectionConfig, Engine, EngineOptions, Metric, PointId, PointWrite, ReadOptions,
    SearchParams, distance,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(n: usize, dim: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

fn kernels(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("kernel");
    for dim in [50, 384, 1536] {
        let v = random(2, dim, &mut rng);
        g.bench_with_input(BenchmarkId::new("dot", dim), &dim, |b, _| {
            b.iter(|| distance::dot(std::hint::black_box(&v[0]), std::hint::black_box(&v[1])))
        });
        g.bench_with_input(BenchmarkId::new("l2sq", dim), &dim, |b, _| {
            b.iter(|| distance::l2sq(std::hint::black_box(&v[0]), std::hint::black_box(&v[1])))
        });
        g.bench_with_input(BenchmarkId::new("scalar_dot", dim), &dim, |b, _| {
            b.iter(|| {
                std::hint::black_box(&v[0])
                    .iter()
                    .zip(std::hint::black_box(&v[1]))
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            })
        });
    }
    g.finish();
}

fn exact_search(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let dim = 50;
    let n = 100_000;
    let coll = engine
        .create_collection(CollectionConfig {
            name: "b".into(),
            dim,
            metric: Metric::Cosine,
            index: quiver_storage::types::IndexConfig::flat(),
            segment_max_rows: 50_000,
            schema: Default::default(),
            labels: Default::default(),
        })
        .expect("create");
    for (chunk_no, chunk) in random(n, dim, &mut rng).chunks(10_000).enumerate() {
        let pts = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| PointWrite {
                id: PointId::Num((chunk_no * 10_000 + i) as u64),
                vector: v.clone(),
                payload: None,
            })
            .collect();
        coll.upsert(pts).expect("upsert");
    }
    coll.flush().expect("flush");
    let queries = random(64, dim, &mut rng);
    let mut i = 0;
    c.bench_function("exact_search_100k_d50_k10", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            coll.search(
                &queries[i],
                10,
                ReadOptions::default(),
                SearchParams::default(),
            )
            .expect("search")
        })
    });
}

criterion_group!(benches, kernels, exact_search);
criterion_main!(benches);
