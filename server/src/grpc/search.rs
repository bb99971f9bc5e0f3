//! `quiver.v1.Search`.
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use quiver_proto::v1 as pb;
use quiver_proto::v1::search_server::Search;
use quiver_storage::collection::{HybridQuery, SparseSearch, TextSearch, Weights};
use quiver_storage::filter::Filter;
use quiver_storage::text::bm25::Bm25Params;
use quiver_storage::text::fusion::{DEFAULT_RRF_K, Fusion};
use quiver_storage::text::{MAX_SPARSE_ENTRIES, SparseVector};
use quiver_storage::{Collection, Engine, ReadOptions, SearchParams};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::grpc::{AppState, blocking};

/// The Search service.
#[derive(Debug, Clone)]
pub struct SearchService {
    state: Arc<AppState>,
}

impl SearchService {
    /// A service over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        SearchService { state }
    }
}

/// Searches that scan at most this many floats exactly (about 0.2 ms of SIMD work) run
/// inline on the async worker.
const INLINE_SCAN_FLOATS: usize = 1 << 20;

/// A validated search, ready to run on a blocking thread.
struct Query {
    collection: String,
    vector: Vec<f32>,
    k: usize,
    opts: ReadOptions,
    params: SearchParams,
    filter: Option<Filter>,
    /// A text or sparse branch (the dense one is `vector`, empty for none).
    hybrid: Option<Hybrid>,
}

/// The non-dense parts of a hybrid search.
#[derive(Debug, Clone, PartialEq)]
struct Hybrid {
    text: Option<TextSearch>,
    sparse: Option<SparseSearch>,
    fusion: Fusion,
    weights: Weights,
    candidates: Option<usize>,
}

/// The hybrid parts of a request, if it has a text or sparse query.
fn hybrid(r: &pb::SearchRequest) -> ApiResult<Option<Hybrid>> {
    if r.text.is_none() && r.sparse.is_none() {
        for (set, name) in [
            (r.rrf_k.is_some(), "rrf_k"),
            (r.weights.is_some(), "weights"),
            (r.candidates.is_some(), "candidates"),
            (r.fusion != 0, "fusion"),
        ] {
            if set {
                return Err(ApiError::bad(
                    name,
                    "applies to hybrid searches only (with text or sparse)",
                ));
            }
        }
        return Ok(None);
    }
    let text = match &r.text {
        Some(t) => {
            if t.field.is_empty() {
                return Err(ApiError::bad("text.field", "name the text field to search"));
            }
            let d = Bm25Params::default();
            Some(TextSearch {
                field: t.field.clone(),
                more_fields: t.more_fields.clone(),
                query: t.query.clone(),
                bm25: Bm25Params {
                    k1: t.k1.unwrap_or(d.k1),
                    b: t.b.unwrap_or(d.b),
                },
            })
        }
        None => None,
    };
    let sparse = match &r.sparse {
        Some(s) => {
            let v = s.vector.clone().unwrap_or_default();
            if v.indices.len() > MAX_SPARSE_ENTRIES {
                return Err(ApiError::bad(
                    "sparse.vector",
                    format!("{} entries; at most {MAX_SPARSE_ENTRIES}", v.indices.len()),
                ));
            }
            Some(SparseSearch {
                field: s.field.clone(),
                vector: SparseVector {
                    indices: v.indices,
                    values: v.values,
                },
            })
        }
        None => None,
    };
    let fusion = match pb::Fusion::try_from(r.fusion) {
        Ok(pb::Fusion::Unspecified | pb::Fusion::Rrf) => Fusion::Rrf {
            k: r.rrf_k.unwrap_or(DEFAULT_RRF_K),
        },
        Ok(pb::Fusion::Dbsf) if r.rrf_k.is_some() => {
            return Err(ApiError::bad("rrf_k", "applies to RRF fusion only"));
        }
        Ok(pb::Fusion::Dbsf) => Fusion::Dbsf,
        Err(_) => {
            return Err(ApiError::bad(
                "fusion",
                format!("unknown fusion {}; use RRF or DBSF", r.fusion),
            ));
        }
    };
    let w = r.weights.unwrap_or_default();
    let weights = Weights {
        dense: w.dense.unwrap_or(1.0),
        text: w.text.unwrap_or(1.0),
        sparse: w.sparse.unwrap_or(1.0),
    };
    Ok(Some(Hybrid {
        text,
        sparse,
        fusion,
        weights,
        candidates: r.candidates.map(|c| c as usize),
    }))
}

/// The caller's deadline from its `grpc-timeout` header (`<digits><H|M|S|m|u|n>`): searches
/// stop working once it passes, not only stop answering.
pub fn deadline(meta: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

fn query(r: pb::SearchRequest, max_k: u32) -> ApiResult<Query> {
    let nprobe = match r.nprobe {
        Some(0) => return Err(ApiError::bad("nprobe", "must be at least 1")),
        n => n.map(|n| n as usize),
    };
    let refine = match r.refine_factor {
        Some(f) if !(1..=1000).contains(&f) => {
            return Err(ApiError::bad(
                "refine_factor",
                format!("{f} is outside 1..=1000"),
            ));
        }
        f => f.map(|f| f as usize),
    };
    let target_recall_bp = match r.target_recall {
        None => None,
        Some(_) if nprobe.is_some() => {
            return Err(ApiError::bad(
                "target_recall",
                "set nprobe or target_recall, not both",
            ));
        }
        Some(t) if t.is_finite() && t > 0.0 && t <= 1.0 => Some((t * 10_000.0).round() as u16),
        Some(t) => {
            return Err(ApiError::bad(
                "target_recall",
                format!("{t} is outside (0, 1]"),
            ));
        }
    };
    let filter = convert::filter(r.filter.as_ref())?;
    let k = convert::k(r.k, max_k)?;
    let hybrid = hybrid(&r)?;
    if hybrid.is_none() && r.vector.is_empty() {
        return Err(ApiError::bad(
            "vector",
            "a search needs a vector, a text query or a sparse vector",
        ));
    }
    let candidates = k.saturating_mul(refine.unwrap_or(quiver_storage::types::DEFAULT_REFINE));
    if candidates > MAX_CANDIDATES {
        return Err(ApiError::bad(
            "refine_factor",
            format!(
                "k × refine_factor = {candidates} candidates exceeds the limit of {MAX_CANDIDATES}"
            ),
        ));
    }
    Ok(Query {
        filter,
        hybrid,
        k,
        collection: r.collection,
        vector: r.vector,
        opts: ReadOptions {
            with_vectors: r.with_vectors,
            with_payload: r.with_payload,
        },
        params: SearchParams {
            exact: r.exact,
            nprobe,
            refine,
            target_recall_bp,
            deadline: None,
            response_budget: 0,
        },
    })
}

/// Candidates (k × refine factor) one search may re-rank, and a whole batch.
const MAX_CANDIDATES: usize = 1 << 20;
const MAX_BATCH_CANDIDATES: usize = 4 << 20;

fn candidates(q: &Query) -> usize {
    q.k.saturating_mul(
        q.params
            .refine
            .unwrap_or(quiver_storage::types::DEFAULT_REFINE),
    )
}

/// Filter keys that are not declared fields (evaluated from payloads); logged once per key.
fn unindexed(c: &Collection, filter: Option<&Filter>) -> ApiResult<Vec<String>> {
    let Some(f) = filter else {
        return Ok(Vec::new());
    };
    let keys = c.check_filter(f)?;
    if !keys.is_empty() {
        tracing::debug!(collection = %c.config().name, keys = ?keys, "filter reads undeclared payload keys (slower); declare them to index them");
    }
    Ok(keys)
}

/// A hybrid search's hits.
fn run_hybrid(
    c: &Collection,
    q: &Query,
    h: &Hybrid,
    params: SearchParams,
) -> ApiResult<Vec<pb::ScoredPoint>> {
    let hq = HybridQuery {
        dense: (!q.vector.is_empty()).then(|| q.vector.clone()),
        text: h.text.clone(),
        sparse: h.sparse.clone(),
        k: q.k,
        candidates: h.candidates,
        fusion: h.fusion,
        weights: h.weights,
    };
    Ok(c.hybrid_search(&hq, q.opts, params, q.filter.as_ref())?
        .into_iter()
        .map(convert::scored_hybrid)
        .collect())
}

fn run(engine: &Engine, q: Query) -> ApiResult<pb::SearchResponse> {
    let started = Instant::now();
    let c = engine.collection(&q.collection)?;
    let unindexed_filter_keys = unindexed(&c, q.filter.as_ref())?;
    if let Some(h) = &q.hybrid {
        return Ok(pb::SearchResponse {
            hits: run_hybrid(&c, &q, h, q.params)?,
            took_us: started.elapsed().as_micros() as u64,
            unindexed_filter_keys,
        });
    }
    let hits = c
        .search_batch_filtered(&[(&q.vector, q.k)], q.opts, q.params, q.filter.as_ref())
        .pop()
        .expect("invariant: one result per query")?;
    Ok(pb::SearchResponse {
        hits: hits.into_iter().map(convert::scored).collect(),
        took_us: started.elapsed().as_micros() as u64,
        unindexed_filter_keys,
    })
}

#[tonic::async_trait]
impl Search for SearchService {
    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        crate::auth::check_collection(&req, &req.get_ref().collection)?;
        let until = deadline(req.metadata());
        let r = req.into_inner();
        self.state.read_barrier(r.consistency).await?;
        let engine = self.state.engine()?;
        let mut q = query(r, self.state.settings.max_k)?;
        q.params.deadline = until;
        q.params.response_budget = self.state.response_budget();
        // A hop to the blocking pool costs tens of microseconds, more than an index probe:
        // cheap searches run on the async worker, long exact scans on the pool.
        let cheap = q.hybrid.is_none()
            && engine
                .collection(&q.collection)
                .map_err(ApiError::from)?
                .exact_scan_floats(q.params)
                <= INLINE_SCAN_FLOATS;
        let out = if cheap {
            run(&engine, q)?
        } else {
            blocking(move || run(&engine, q)).await?
        };
        Ok(Response::new(out))
    }

    async fn search_batch(
        &self,
        req: Request<pb::SearchBatchRequest>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        let engine = self.state.engine()?;
        let max_k = self.state.settings.max_k;
        for q in &req.get_ref().searches {
            crate::auth::check_collection(&req, &q.collection)?;
        }
        let until = deadline(req.metadata());
        let r = req.into_inner();
        self.state.check_rows("searches", r.searches.len())?;
        // One barrier for the batch: the strictest consistency any search asks for.
        let strictest = r.searches.iter().map(|q| q.consistency).max().unwrap_or(0);
        self.state.read_barrier(strictest).await?;
        let queries = r
            .searches
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                query(r, max_k)
                    .map(|mut q| {
                        q.params.deadline = until;
                        q
                    })
                    .map_err(|e| e.context(format_args!("searches[{i}]")))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        // What the batch may make the engine hold: candidates up front, hit bytes as read.
        let total: usize = queries.iter().map(candidates).sum();
        if total > MAX_BATCH_CANDIDATES {
            return Err(ApiError::TooLarge(format!(
                "searches: the batch asks for {total} candidates (k × refine_factor summed); the limit is {MAX_BATCH_CANDIDATES}"
            ))
            .into());
        }
        let budget = self.state.response_budget();
        let results = blocking(move || Ok(run_batch(&engine, &queries, budget))).await?;
        let results = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map_err(|e| e.context(format_args!("searches[{i}]"))))
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Response::new(pb::SearchBatchResponse { results }))
    }
}

/// Runs a batch: queries on the same collection (and output options) share one pass over
/// each segment. Results come back in request order.
/// The hits of all groups together stay within `budget` bytes.
fn run_batch(
    engine: &Engine,
    queries: &[Query],
    budget: usize,
) -> Vec<Result<pb::SearchResponse, ApiError>> {
    let mut left = budget;
    type Key<'a> = (&'a str, bool, bool, SearchParams);
    let mut groups: Vec<(Key<'_>, Vec<usize>)> = Vec::new();
    let mut out: Vec<Option<Result<pb::SearchResponse, ApiError>>> =
        queries.iter().map(|_| None).collect();
    for (i, q) in queries.iter().enumerate() {
        // Hybrid searches run one at a time, within what is left of the budget.
        if let Some(h) = &q.hybrid {
            let started = Instant::now();
            let params = SearchParams {
                response_budget: left.max(1),
                ..q.params
            };
            let r = engine
                .collection(&q.collection)
                .map_err(ApiError::from)
                .and_then(|c| {
                    let unindexed_filter_keys = unindexed(&c, q.filter.as_ref())?;
                    let hits = run_hybrid(&c, q, h, params)?;
                    left = left.saturating_sub(hits.iter().map(|p| p.encoded_len()).sum());
                    Ok(pb::SearchResponse {
                        hits,
                        took_us: started.elapsed().as_micros() as u64,
                        unindexed_filter_keys,
                    })
                });
            out[i] = Some(r);
            continue;
        }
        let key = (
            q.collection.as_str(),
            q.opts.with_vectors,
            q.opts.with_payload,
            q.params,
        );
        match groups
            .iter_mut()
            .find(|(k, idxs)| *k == key && queries[idxs[0]].filter == q.filter)
        {
            Some((_, idxs)) => idxs.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    for ((name, _, _, params), idxs) in groups {
        let opts = queries[idxs[0]].opts;
        let started = Instant::now();
        let filter = queries[idxs[0]].filter.as_ref();
        match engine
            .collection(name)
            .map_err(ApiError::from)
            .and_then(|c| unindexed(&c, filter).map(|u| (c, u)))
        {
            Ok((c, unindexed_filter_keys)) => {
                let batch: Vec<(&[f32], usize)> = idxs
                    .iter()
                    .map(|&i| (queries[i].vector.as_slice(), queries[i].k))
                    .collect();
                let params = SearchParams {
                    // At least one byte: 0 would mean no limit.
                    response_budget: left.max(1),
                    ..params
                };
                let results = c.search_batch_filtered(&batch, opts, params, filter);
                let spent: usize = results
                    .iter()
                    .flatten()
                    .flatten()
                    .map(quiver_storage::Hit::response_bytes)
                    .sum();
                left = left.saturating_sub(spent);
                let took_us = started.elapsed().as_micros() as u64;
                for (&i, r) in idxs.iter().zip(results) {
                    out[i] = Some(r.map_err(ApiError::from).map(|hits| pb::SearchResponse {
                        hits: hits.into_iter().map(convert::scored).collect(),
                        took_us,
                        unindexed_filter_keys: unindexed_filter_keys.clone(),
                    }));
                }
            }
            Err(e) => {
                for &i in &idxs {
                    out[i] = Some(Err(e.duplicate()));
                }
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::Internal("search not run".into()))))
        .collect()
}
