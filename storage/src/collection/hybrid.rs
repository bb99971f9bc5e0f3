//! Hybrid search: a dense vector, a BM25 text query and a sparse vector, each retrieving its
//! own candidates under the same filter in the same snapshot, fused by rank (RRF) or by
//! normalised score (DBSF). A search with one branch returns that branch's own scores.
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::planner::{self, Rows};
use super::{Collection, Snapshot, read};
use crate::error::{Error, Result};
use crate::filter::allowed::Allowed;
use crate::filter::{FieldType, Filter};
use crate::payload_index::FieldIndexes;
use crate::segment::RowKey;
use crate::segment::SegmentId;
use crate::segment::mutable::MutableSegment;
use crate::text::bm25::{self, Bm25Params, SegmentView, TextQuery};
use crate::text::fusion::{self, BranchRank, Fusion};
use crate::text::{MAX_SPARSE_ENTRIES, SparseVector};
use crate::types::{Hit, ReadOptions, SearchParams};

/// The most fields one text query may search.
pub const MAX_TEXT_FIELDS: usize = 8;

impl TextSearch {
    /// Every field searched, `field` first.
    pub fn fields(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.field).chain(&self.more_fields)
    }
}

/// The most candidates a branch may retrieve.
pub const MAX_CANDIDATES: usize = 10_000;

/// Candidates per branch when a hybrid search does not say: enough for fusion to find
/// documents ranked well by one branch and moderately by another.
pub fn default_candidates(k: usize) -> usize {
    (2 * k).clamp(50, MAX_CANDIDATES)
}

/// A BM25 text query on one or more `text` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSearch {
    /// The field (declared `text`).
    pub field: String,
    /// More text fields searched with it: a row's score is the sum of its fields' BM25
    /// scores, each with its own statistics (a document's title and body, say).
    pub more_fields: Vec<String>,
    /// The query: words, `+required`, `-excluded`.
    pub query: String,
    /// k1 and b.
    pub bm25: Bm25Params,
}

/// A sparse query on one `sparse` field.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseSearch {
    /// The field (declared `sparse`).
    pub field: String,
    /// The query's term weights.
    pub vector: SparseVector,
}

/// Per-branch weights (≥ 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Dense branch.
    pub dense: f32,
    /// Text branch.
    pub text: f32,
    /// Sparse branch.
    pub sparse: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            dense: 1.0,
            text: 1.0,
            sparse: 1.0,
        }
    }
}

/// A search with any of a dense vector, a text query and a sparse vector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HybridQuery {
    /// Dense query vector.
    pub dense: Option<Vec<f32>>,
    /// Text query.
    pub text: Option<TextSearch>,
    /// Sparse query.
    pub sparse: Option<SparseSearch>,
    /// Results wanted.
    pub k: usize,
    /// Candidates each branch retrieves (`None`: [`default_candidates`]).
    pub candidates: Option<usize>,
    /// How branches are fused (with two or more).
    pub fusion: Fusion,
    /// Branch weights in fusion.
    pub weights: Weights,
}

/// A hit of a hybrid search, with where each branch ranked it.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridHit {
    /// The hit; its score is the fused score (or the branch's own with one branch).
    pub hit: Hit,
    /// Rank and score in the dense branch.
    pub dense: Option<BranchRank>,
    /// Rank and BM25 score in the text branch.
    pub text: Option<BranchRank>,
    /// Rank and dot product in the sparse branch.
    pub sparse: Option<BranchRank>,
}

/// A segment's field indexes, held for one search.
enum Held<'a> {
    Sealed(Option<Arc<FieldIndexes>>),
    Memory(std::sync::RwLockReadGuard<'a, MutableSegment>),
}

struct Part<'a> {
    id: SegmentId,
    rows: u32,
    fields: Held<'a>,
    dead: RoaringBitmap,
    allowed: Option<&'a RoaringBitmap>,
}

impl Part<'_> {
    fn fields(&self) -> Option<&FieldIndexes> {
        match &self.fields {
            Held::Sealed(f) => f.as_deref(),
            Held::Memory(m) => Some(m.fields()),
        }
    }

    fn view(&self) -> SegmentView<'_> {
        SegmentView {
            id: self.id,
            dead: &self.dead,
            allowed: self.allowed,
        }
    }
}

fn not_ready(kind: &str, field: &str, seg: SegmentId) -> Error {
    Error::NotReady {
        what: format!("the {kind} index of field {field} in segment {seg}"),
    }
}

impl Collection {
    /// Checks a hybrid query against the schema and limits; errors name the field at fault.
    fn check_hybrid(&self, q: &HybridQuery) -> Result<()> {
        if q.dense.is_none() && q.text.is_none() && q.sparse.is_none() {
            return Err(Error::invalid(
                "vector",
                "a search needs a vector, a text query or a sparse vector",
            ));
        }
        let schema = self.schema();
        if let Some(t) = &q.text {
            if t.more_fields.len() > MAX_TEXT_FIELDS - 1 {
                return Err(Error::invalid(
                    "text.more_fields",
                    format!("at most {MAX_TEXT_FIELDS} fields in one text query"),
                ));
            }
            let mut analyzer = None;
            for (i, f) in t.fields().enumerate() {
                let at = if i == 0 {
                    "text.field".to_owned()
                } else {
                    format!("text.more_fields[{}]", i - 1)
                };
                match schema.get(f) {
                    Some(FieldType::Text(a)) => {
                        if analyzer.is_some_and(|x| x != *a) {
                            return Err(Error::invalid(
                                at,
                                format!(
                                    "field {f} is declared {}, unlike {}: fields searched together share an analyzer",
                                    FieldType::Text(*a).name(),
                                    t.field
                                ),
                            ));
                        }
                        analyzer = Some(*a);
                    }
                    Some(other) => {
                        return Err(Error::invalid(
                            at,
                            format!("field {f} is declared {}, not text", other.name()),
                        ));
                    }
                    None => {
                        return Err(Error::invalid(
                            at,
                            format!(
                                "field {f} is not declared; declare it as text (--field {f}:text)"
                            ),
                        ));
                    }
                }
            }
            let Bm25Params { k1, b } = t.bm25;
            if !(k1.is_finite() && (0.0..=100.0).contains(&k1)) {
                return Err(Error::invalid("text.k1", format!("{k1} is not in 0..=100")));
            }
            if !(b.is_finite() && (0.0..=1.0).contains(&b)) {
                return Err(Error::invalid("text.b", format!("{b} is not in 0..=1")));
            }
        }
        if let Some(s) = &q.sparse {
            match schema.get(&s.field) {
                Some(FieldType::Sparse) => {}
                Some(other) => {
                    return Err(Error::invalid(
                        "sparse.field",
                        format!("field {} is declared {}, not sparse", s.field, other.name()),
                    ));
                }
                None => {
                    return Err(Error::invalid(
                        "sparse.field",
                        format!("field {} is not declared as sparse", s.field),
                    ));
                }
            }
            s.vector
                .validate()
                .map_err(|e| Error::invalid("sparse.vector", e))?;
        }
        let w = q.weights;
        for (name, x) in [
            ("weights.dense", w.dense),
            ("weights.text", w.text),
            ("weights.sparse", w.sparse),
        ] {
            if !x.is_finite() || x < 0.0 {
                return Err(Error::invalid(name, format!("{x} is not a weight ≥ 0")));
            }
        }
        if let Fusion::Rrf { k } = q.fusion
            && !(k.is_finite() && k > 0.0)
        {
            return Err(Error::invalid("fusion.rrf_k", format!("{k} is not > 0")));
        }
        if q.candidates.is_some_and(|c| c == 0 || c > MAX_CANDIDATES) {
            return Err(Error::invalid(
                "candidates",
                format!("must be in 1..={MAX_CANDIDATES}"),
            ));
        }
        Ok(())
    }

    /// Runs a hybrid search (see the module doc). Each branch retrieves its candidates among
    /// the rows `filter` allows, in one snapshot; with two or more branches their lists are
    /// fused and the best `k` resolved within the response budget.
    #[tracing::instrument(skip_all, fields(collection = %self.config.name, k = q.k))]
    pub fn hybrid_search(
        &self,
        q: &HybridQuery,
        opts: ReadOptions,
        params: SearchParams,
        filter: Option<&Filter>,
    ) -> Result<Vec<HybridHit>> {
        let started = std::time::Instant::now();
        let expired = || Error::DeadlineExceeded {
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        self.check_hybrid(q)?;
        let k = q.k;
        if k == 0 {
            return Ok(Vec::new());
        }
        let cands = q.candidates.unwrap_or_else(|| default_candidates(k)).max(k);
        let text_query = match &q.text {
            Some(t) => {
                let Some(FieldType::Text(a)) = self.schema().get(&t.field).copied() else {
                    return Err(Error::invalid("text.field", "not a text field"));
                };
                Some(TextQuery::parse(&a, &t.query).map_err(|e| Error::invalid("text.query", e))?)
            }
            None => None,
        };
        let snap = self.snapshot();
        let allowed = filter.map(|f| self.allowed_rows(&snap, f)).transpose()?;
        if params.expired() {
            return Err(expired());
        }
        // Each branch: (its list best first, weight, which branch).
        let mut lists: Vec<(Vec<(RowKey, f32)>, f32)> = Vec::new();
        let mut which: Vec<usize> = Vec::new();
        if let Some(v) = &q.dense {
            let top = self.dense_top(&snap, allowed.as_ref(), v, cands, params, started)?;
            lists.push((top, q.weights.dense));
            which.push(0);
        }
        if q.text.is_some() || q.sparse.is_some() {
            let parts = self.parts(&snap, allowed.as_ref());
            if let (Some(t), Some(tq)) = (&q.text, &text_query) {
                lists.push((
                    text_top(&parts, t, tq, cands, (&params, started))?,
                    q.weights.text,
                ));
                which.push(1);
            }
            if params.expired() {
                return Err(expired());
            }
            if let Some(s) = &q.sparse {
                lists.push((
                    sparse_top(&parts, s, cands, (&params, started))?,
                    q.weights.sparse,
                ));
                which.push(2);
            }
        }
        if params.expired() {
            return Err(expired());
        }
        let fused = fusion::fuse(&lists, q.fusion, k);
        let single = lists.len() == 1;
        let keys: Vec<RowKey> = fused.iter().map(|f| f.key).collect();
        let (records, truncated) =
            self.resolve_within(&snap, &keys, opts, params.response_budget)?;
        if truncated {
            return Err(Error::TooLarge {
                field: "k".into(),
                detail: format!(
                    "the hits exceed the response budget of {} bytes; ask for fewer hits, or without vectors or payloads",
                    params.response_budget
                ),
            });
        }
        Ok(fused
            .into_iter()
            .zip(records)
            .map(|(f, r)| {
                let mut ranks = [None; 3];
                for (b, rank) in which.iter().zip(&f.branches) {
                    ranks[*b] = *rank;
                }
                let score = match (single, f.branches.first().copied().flatten()) {
                    (true, Some(b)) => b.score,
                    _ => f.score,
                };
                HybridHit {
                    hit: Hit {
                        id: r.id,
                        score,
                        vector: r.vector,
                        payload: r.payload,
                    },
                    dense: ranks[0],
                    text: ranks[1],
                    sparse: ranks[2],
                }
            })
            .collect())
    }

    /// Every segment of `snap` with live rows the filter allows, its field indexes and dead
    /// rows held for the search.
    fn parts<'a>(&self, snap: &'a Snapshot, allowed: Option<&'a Allowed>) -> Vec<Part<'a>> {
        let mut out = Vec::new();
        for s in &snap.sealed {
            if s.live_count() == 0 {
                continue;
            }
            let allowed = match planner::rows(allowed, s.id) {
                Rows::Nothing => continue,
                Rows::All => None,
                Rows::Only(r) => Some(r),
            };
            out.push(Part {
                id: s.id,
                rows: s.rows(),
                fields: Held::Sealed(s.fields()),
                dead: s.tombstones(),
                allowed,
            });
        }
        for m in [snap.frozen.as_ref(), Some(&snap.mutable)]
            .into_iter()
            .flatten()
        {
            let g = read(m);
            if g.live_count() == 0 {
                continue;
            }
            let allowed = match planner::rows(allowed, g.id) {
                Rows::Nothing => continue,
                Rows::All => None,
                Rows::Only(r) => Some(r),
            };
            let dead: RoaringBitmap = g.dead_rows().collect();
            out.push(Part {
                id: g.id,
                rows: g.rows() as u32,
                dead,
                allowed,
                fields: Held::Memory(g),
            });
        }
        out
    }
}

/// The BM25 top `n` over `parts`, scores from statistics of all of them.
fn text_top(
    parts: &[Part<'_>],
    t: &TextSearch,
    q: &TextQuery,
    n: usize,
    (params, started): (&SearchParams, std::time::Instant),
) -> Result<Vec<(RowKey, f32)>> {
    // Per field: each segment's index, and the statistics over every segment, the filter
    // ignored (as in every engine): a filter narrows which rows are returned, not how a term
    // is weighed.
    let mut per_field = Vec::new();
    for field in t.fields() {
        let mut segs = Vec::with_capacity(parts.len());
        for p in parts {
            let idx = p
                .fields()
                .and_then(|f| f.text(field))
                .ok_or_else(|| not_ready("text", field, p.id))?;
            segs.push((p.view(), idx.0));
        }
        let st = bm25::stats(&segs, q);
        per_field.push((segs, st));
    }
    let mut top = crate::distance::TopK::new(n);
    for (i, p) in parts.iter().enumerate() {
        // Past the caller's deadline, stop scoring (within about one segment).
        if params.expired() {
            return Err(Error::DeadlineExceeded {
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
        }
        let fields: Vec<_> = per_field.iter().map(|(segs, st)| (segs[i].1, st)).collect();
        bm25::score_segment(p.view(), &fields, q, t.bm25, &mut top);
    }
    Ok(top
        .into_sorted()
        .into_iter()
        .map(|c| (c.key, -c.distance))
        .collect())
}

/// The dot-product top `n` of a sparse query over `parts`.
fn sparse_top(
    parts: &[Part<'_>],
    s: &SparseSearch,
    n: usize,
    (params, started): (&SearchParams, std::time::Instant),
) -> Result<Vec<(RowKey, f32)>> {
    debug_assert!(s.vector.indices.len() <= MAX_SPARSE_ENTRIES);
    let mut top = crate::distance::TopK::new(n);
    for p in parts {
        if params.expired() {
            return Err(Error::DeadlineExceeded {
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
        }
        let idx = p
            .fields()
            .and_then(|f| f.sparse(&s.field))
            .ok_or_else(|| not_ready("sparse", &s.field, p.id))?;
        bm25::score_sparse_segment(p.view(), idx, p.rows, &s.vector, &mut top);
    }
    Ok(top
        .into_sorted()
        .into_iter()
        .map(|c| (c.key, -c.distance))
        .collect())
}
