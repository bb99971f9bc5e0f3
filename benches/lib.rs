//! Shared helpers for the benchmarks: the classic fvecs/ivecs readers and recall@k.
#![forbid(unsafe_code)]

use std::path::Path;

/// Reads an fvecs file (each row: i32 dim, then dim f32).
pub fn read_fvecs(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    quiver_client::parse_fvecs(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads an ivecs file (same layout, i32 values).
pub fn read_ivecs(path: &Path) -> anyhow::Result<Vec<Vec<u32>>> {
    let rows = read_fvecs(path)?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|x| x.to_bits()).collect())
        .collect())
}

/// Exact neighbour ids per query, nearest first.
pub type GroundTruth = Vec<Vec<u32>>;

/// `n` queries of `dir/query.fvecs` with their ground truth (`dir/gt100.ivecs`), taken at an
/// even stride over the file. The GloVe query file is in word-frequency order and frequent
/// words are easier, so a prefix would flatter every system; the Python peers take the same
/// rows (`np.arange(n) * (total // n)`).
pub fn read_queries(dir: &Path, n: usize) -> anyhow::Result<(Vec<Vec<f32>>, GroundTruth)> {
    let queries = read_fvecs(&dir.join("query.fvecs"))?;
    let gt = read_ivecs(&dir.join("gt100.ivecs"))?;
    anyhow::ensure!(
        queries.len() == gt.len(),
        "query and ground-truth files differ in length"
    );
    let n = n.clamp(1, queries.len());
    let step = queries.len() / n;
    let pick = |i: usize| i * step;
    Ok((
        (0..n).map(|i| queries[pick(i)].clone()).collect(),
        (0..n).map(|i| gt[pick(i)].clone()).collect(),
    ))
}

/// Fraction of the true top-`k` found among the returned ids.
pub fn recall_at(k: usize, got: &[u64], truth: &[u32]) -> f64 {
    let truth: std::collections::HashSet<u64> =
        truth.iter().take(k).map(|x| u64::from(*x)).collect();
    got.iter().take(k).filter(|g| truth.contains(g)).count() as f64 / k as f64
}

/// One configuration of an IVF sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepPoint {
    /// Lists probed (`None` when a target recall chooses them).
    pub nprobe: Option<u32>,
    /// Target recall@10 asked of the index's calibration.
    pub target_recall: Option<f32>,
    /// Refine factor.
    pub refine: u32,
}

impl SweepPoint {
    /// The engine's search parameters for this configuration.
    pub fn params(&self) -> quiver_storage::SearchParams {
        quiver_storage::SearchParams {
            exact: false,
            nprobe: self.nprobe.map(|n| n as usize),
            refine: Some(self.refine as usize),
            target_recall_bp: self
                .target_recall
                .map(|t| (f64::from(t) * 10_000.0).round() as u16),
            deadline: None,
            response_budget: 0,
        }
    }
}

/// Parses `nprobe:refine` or `rTARGET:refine` entries, comma-separated (`32:4,r0.95:4`).
pub fn parse_sweep(s: &str) -> anyhow::Result<Vec<SweepPoint>> {
    s.split(',')
        .map(|cfg| {
            let (p, r) = cfg
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("sweep entry {cfg:?} is not nprobe:refine"))?;
            let refine = r.parse()?;
            Ok(match p.strip_prefix('r') {
                Some(t) => SweepPoint {
                    nprobe: None,
                    target_recall: Some(t.parse()?),
                    refine,
                },
                None => SweepPoint {
                    nprobe: Some(p.parse()?),
                    target_recall: None,
                    refine,
                },
            })
        })
        .collect()
}

/// A temporary in-process engine whose collection holds a whole base set in one sealed,
/// indexed segment (so its IVF index has the requested nlist, as a FAISS index would).
pub struct Loaded {
    /// The collection.
    pub collection: std::sync::Arc<quiver_storage::Collection>,
    /// Seconds to seal the segment to disk.
    pub flush_seconds: f64,
    /// Seconds from the seal until the index (and any declared field indexes) were ready.
    pub build_seconds: f64,
    /// Kept open (and its directory kept) as long as the collection is used.
    _engine: quiver_storage::Engine,
    _dir: tempfile::TempDir,
}

impl Loaded {
    /// Loads `base` (ids are row numbers, payloads from `payload`), seals it, and waits for the
    /// background index and field builds.
    pub fn new(
        base: &[Vec<f32>],
        metric: quiver_storage::Metric,
        index: quiver_storage::IndexConfig,
        schema: quiver_storage::filter::Schema,
        payload: impl Fn(u64) -> Option<Vec<u8>>,
    ) -> anyhow::Result<Loaded> {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir()?;
        let engine = quiver_storage::Engine::open(
            dir.path(),
            quiver_storage::EngineOptions {
                fsync: quiver_storage::FsyncPolicy::Never,
            },
        )?;
        let c = engine.create_collection(quiver_storage::CollectionConfig {
            name: "glove".into(),
            dim: base.first().map_or(0, Vec::len),
            metric,
            index,
            segment_max_rows: base.len() as u32 + 1,
            schema,
            labels: Default::default(),
        })?;
        for (b, chunk) in base.chunks(10_000).enumerate() {
            c.upsert(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let n = (b * 10_000 + i) as u64;
                        quiver_storage::PointWrite {
                            id: quiver_storage::PointId::Num(n),
                            vector: v.clone(),
                            payload: payload(n),
                        }
                    })
                    .collect(),
            )?;
        }
        let t = Instant::now();
        c.flush()?;
        let flush_seconds = t.elapsed().as_secs_f64();
        while c.index_progress().0 < 1 || c.fields_progress().0 < c.fields_progress().1 {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(1800),
                "index build timed out"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Loaded {
            collection: c,
            flush_seconds,
            build_seconds: t.elapsed().as_secs_f64() - flush_seconds,
            _engine: engine,
            _dir: dir,
        })
    }
}

/// `n` queries of `data/query.fvecs` that [`read_queries`] does not pick for `measured`
/// queries, spread evenly over the file as the measured ones are: the queries a benchmark
/// sends to warm the recall audit, unseen among the measured. (Until 2026-12-07 these were the
/// `n` queries after the first `measured`, which overlapped the picked ones whenever
/// `read_queries` stepped over the file, and came from one stretch of it: GloVe's query file
/// is ordered by word frequency.)
pub fn warm_queries(data: &Path, measured: usize, n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let all = read_fvecs(&data.join("query.fvecs"))?;
    let measured = measured.clamp(1, all.len().max(1));
    let step = (all.len() / measured).max(1);
    let picked = |i: usize| i.is_multiple_of(step) && i / step < measured;
    let mut unseen: Vec<Vec<f32>> = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !picked(*i))
        .map(|(_, q)| q)
        .collect();
    anyhow::ensure!(
        n > 0 && unseen.len() >= n,
        "--warm-queries {n}: query.fvecs holds {} queries besides the {measured} measured",
        unseen.len()
    );
    let every = unseen.len() / n;
    Ok((0..n)
        .map(|i| std::mem::take(&mut unseen[i * every]))
        .collect())
}
