//! Okapi BM25 over the text indexes of a snapshot's segments, and the dot-product scoring of
//! sparse vectors.
//!
//! A term's weight in a row is Lucene's:
//! `idf · tf·(k1 + 1) / (tf + k1·(1 − b + b·len/avglen))`, `idf = ln(1 + (N − df + 0.5)/(df + 0.5))`,
//! where N (rows with a value), df (rows holding the term) and avglen are counted over every
//! segment's live rows: the same rows score the same whether they sit in one segment or many,
//! and before or after compaction. The exact lengths are used (Lucene keeps one byte).
//!
//! Query syntax: words separated by spaces; `+word` must occur, `-word` must not. Each word
//! goes through the field's analyzer (a word may give several terms, or none if it is a stop
//! word). A query term repeated counts once per repetition.
//!
//! Scoring is term at a time into an accumulator of the rows touched, so its cost is the
//! postings read; rows are checked against tombstones and the filter only when they would
//! enter the top-k.
use std::cell::RefCell;
use std::collections::HashMap;

use roaring::RoaringBitmap;

use super::{Analyzer, SparseIndex, SparseVector, TextIndex};
use crate::distance::TopK;
use crate::segment::{RowKey, SegmentId};

/// BM25's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation (default 1.2).
    pub k1: f32,
    /// Length normalisation (default 0.75), in 0..=1.
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

/// The most terms a text query may have after analysis.
pub const MAX_QUERY_TERMS: usize = 256;

/// A parsed text query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextQuery {
    /// Terms that score (with their counts in the query): optional and required ones.
    pub scoring: Vec<(String, u32)>,
    /// Terms a row must hold.
    pub must: Vec<String>,
    /// Terms a row must not hold.
    pub must_not: Vec<String>,
}

impl TextQuery {
    /// Parses `q` with `analyzer`; `Err` names what is wrong (too many terms).
    pub fn parse(analyzer: &Analyzer, q: &str) -> Result<TextQuery, String> {
        let mut out = TextQuery::default();
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut order = Vec::new();
        for word in q.split_whitespace() {
            let (kind, rest) = match word.as_bytes().first() {
                Some(b'+') => (1, &word[1..]),
                Some(b'-') => (2, &word[1..]),
                _ => (0, word),
            };
            for t in analyzer.terms(rest) {
                match kind {
                    2 => out.must_not.push(t),
                    _ => {
                        if kind == 1 {
                            out.must.push(t.clone());
                        }
                        let c = counts.entry(t.clone()).or_default();
                        if *c == 0 {
                            order.push(t);
                        }
                        *c += 1;
                    }
                }
            }
        }
        out.scoring = order
            .into_iter()
            .map(|t| {
                let c = counts[&t];
                (t, c)
            })
            .collect();
        let n = out.scoring.len() + out.must_not.len();
        if n > MAX_QUERY_TERMS {
            return Err(format!(
                "{n} distinct terms after analysis; at most {MAX_QUERY_TERMS}"
            ));
        }
        out.must.sort();
        out.must.dedup();
        out.must_not.sort();
        out.must_not.dedup();
        Ok(out)
    }

    /// Whether no term scores (an empty query, or stop words only).
    pub fn is_empty(&self) -> bool {
        self.scoring.is_empty()
    }
}

/// One segment as the text and sparse scorers see it.
#[derive(Debug, Clone, Copy)]
pub struct SegmentView<'a> {
    /// Its id.
    pub id: SegmentId,
    /// Rows deleted or overwritten.
    pub dead: &'a RoaringBitmap,
    /// The rows a filter allows (`None`: no filter).
    pub allowed: Option<&'a RoaringBitmap>,
}

/// Collection-wide statistics of a query's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Bm25Stats {
    /// Live rows with a value.
    pub docs: u64,
    /// Their mean length.
    pub avg_len: f64,
    /// Per scoring term, the live rows holding it.
    pub df: Vec<u64>,
}

/// The statistics of `q`'s scoring terms over `segments`, dead rows excluded.
pub fn stats(segments: &[(SegmentView<'_>, &TextIndex)], q: &TextQuery) -> Bm25Stats {
    let mut docs = 0u64;
    let mut total = 0u64;
    let mut df = vec![0u64; q.scoring.len()];
    for (view, idx) in segments {
        let (d, t) = idx.docs_and_total();
        let (mut d, mut t) = (u64::from(d), t);
        for r in view.dead.iter() {
            let len = idx.len_of(r);
            if len > 0 {
                d = d.saturating_sub(1);
                t = t.saturating_sub(u64::from(len));
            }
        }
        docs += d;
        total += t;
        for (i, (term, _)) in q.scoring.iter().enumerate() {
            let Some(info) = idx.term(term) else { continue };
            if view.dead.is_empty() {
                df[i] += u64::from(info.df);
            } else {
                let mut n = 0u64;
                idx.for_each_block(term, &info, |rows, _, _| {
                    n += rows.iter().filter(|&&r| !view.dead.contains(r)).count() as u64;
                    true
                });
                df[i] += n;
            }
        }
    }
    let avg_len = if docs == 0 {
        1.0
    } else {
        (total as f64 / docs as f64).max(f64::MIN_POSITIVE)
    };
    Bm25Stats { docs, avg_len, df }
}

/// Lucene's idf.
pub fn idf(docs: u64, df: u64) -> f64 {
    let (n, df) = (docs as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// Rows touched by a query in one segment, with their scores.
#[derive(Debug, Default)]
struct Accumulator {
    scores: Vec<f32>,
    seen: Vec<bool>,
    touched: Vec<u32>,
}

impl Accumulator {
    fn reset(&mut self, rows: usize) {
        for &r in &self.touched {
            self.scores[r as usize] = 0.0;
            self.seen[r as usize] = false;
        }
        self.touched.clear();
        if self.scores.len() < rows {
            self.scores.resize(rows, 0.0);
            self.seen.resize(rows, false);
        }
    }

    #[inline]
    fn add(&mut self, row: u32, s: f32) {
        let r = row as usize;
        if let (Some(score), Some(seen)) = (self.scores.get_mut(r), self.seen.get_mut(r)) {
            *score += s;
            if !*seen {
                *seen = true;
                self.touched.push(row);
            }
        }
    }

    /// Pushes every touched row that passes `keep` into `top` (score negated: the top-k keeps
    /// the smallest).
    fn select(&self, seg: SegmentId, top: &mut TopK<RowKey>, keep: impl Fn(u32) -> bool) {
        for &r in &self.touched {
            let d = -self.scores[r as usize];
            if d < top.threshold() && keep(r) {
                top.push(d, (seg, r));
            }
        }
    }
}

thread_local! {
    static ACC: RefCell<Accumulator> = RefCell::new(Accumulator::default());
}

/// The rows of `idx` holding `term`, as a bitmap.
fn rows_with(idx: &TextIndex, term: &str) -> RoaringBitmap {
    let mut rows = Vec::new();
    idx.for_each_posting(term, |r, _| rows.push(r));
    rows.sort_unstable();
    rows.dedup();
    RoaringBitmap::from_sorted_iter(rows).unwrap_or_default()
}

/// The BM25 top-k of `q` in one segment, into `top` (distance = −score). `fields` holds the
/// segment's index of each field searched, with that field's collection-wide statistics: a
/// row's score is the sum of its fields' scores, and a required term may occur in any field.
pub fn score_segment(
    view: SegmentView<'_>,
    fields: &[(&TextIndex, &Bm25Stats)],
    q: &TextQuery,
    p: Bm25Params,
    top: &mut TopK<RowKey>,
) {
    if q.is_empty() || fields.iter().all(|(_, st)| st.docs == 0) {
        return;
    }
    let in_any = |t: &str| {
        fields.iter().fold(RoaringBitmap::new(), |acc, (idx, _)| {
            acc | rows_with(idx, t)
        })
    };
    // Required terms: a row must hold all of them, so a segment missing one has no hits.
    let mut must: Option<RoaringBitmap> = None;
    for t in &q.must {
        let rows = in_any(t);
        must = Some(match must {
            Some(m) => m & rows,
            None => rows,
        });
        if must.as_ref().is_some_and(RoaringBitmap::is_empty) {
            return;
        }
    }
    let mut must_not = RoaringBitmap::new();
    for t in &q.must_not {
        must_not |= in_any(t);
    }
    let (k1, b) = (p.k1, p.b);
    let rows = fields.iter().map(|(i, _)| i.rows()).max().unwrap_or(0);
    ACC.with_borrow_mut(|acc| {
        acc.reset(rows as usize);
        for (idx, st) in fields {
            if st.docs == 0 {
                continue;
            }
            let avg = st.avg_len as f32;
            for (i, (term, qtf)) in q.scoring.iter().enumerate() {
                let Some(info) = idx.term(term) else { continue };
                let w = (idf(st.docs, st.df[i]) * f64::from(*qtf)) as f32 * (k1 + 1.0);
                idx.for_each_block(term, &info, |rows, tfs, _| {
                    for (&r, &tf) in rows.iter().zip(tfs) {
                        let tf = tf as f32;
                        let len = idx.len_of(r) as f32;
                        let norm = k1 * (1.0 - b + b * len / avg);
                        acc.add(r, w * tf / (tf + norm));
                    }
                    true
                });
            }
        }
        acc.select(view.id, top, |r| {
            !view.dead.contains(r)
                && view.allowed.is_none_or(|a| a.contains(r))
                && must.as_ref().is_none_or(|m| m.contains(r))
                && !must_not.contains(r)
        });
    });
}

/// The dot-product top-k of sparse query `q` in one segment, into `top` (distance = −score).
/// Only rows sharing a dimension with the query are candidates.
pub fn score_sparse_segment(
    view: SegmentView<'_>,
    idx: &SparseIndex,
    rows: u32,
    q: &SparseVector,
    top: &mut TopK<RowKey>,
) {
    ACC.with_borrow_mut(|acc| {
        acc.reset(rows as usize);
        for (&dim, &w) in q.indices.iter().zip(&q.values) {
            if w == 0.0 {
                continue;
            }
            idx.for_each_dim(dim, |rs, vs| {
                for (&r, &v) in rs.iter().zip(vs) {
                    acc.add(r, w * v);
                }
            });
        }
        acc.select(view.id, top, |r| {
            !view.dead.contains(r) && view.allowed.is_none_or(|a| a.contains(r))
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Language;

    /// A hand computation, from raw counts, of the scores of a five-document corpus.
    #[test]
    fn scores_match_a_reference_computation() {
        let docs = [
            "the quick brown fox jumps over the lazy dog",
            "the lazy dog sleeps",
            "a quick brown dog",
            "foxes and dogs are not friends, said the fox",
            "nothing to see here",
        ];
        let a = Analyzer::default();
        let mut idx = TextIndex::new();
        let tokenized: Vec<Vec<String>> = docs.iter().map(|d| a.terms(d)).collect();
        for (r, t) in tokenized.iter().enumerate() {
            idx.insert(r as u32, t);
        }
        let p = Bm25Params::default();
        let q = TextQuery::parse(&a, "fox dog the").unwrap();
        // Reference: the formula evaluated directly on the tokenized documents.
        let n = docs.len() as f64;
        let avg = tokenized.iter().map(Vec::len).sum::<usize>() as f64 / n;
        let reference: Vec<f64> = tokenized
            .iter()
            .map(|d| {
                q.scoring
                    .iter()
                    .map(|(t, _)| {
                        let df = tokenized.iter().filter(|x| x.contains(t)).count() as f64;
                        let tf = d.iter().filter(|x| *x == t).count() as f64;
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        let (k1, b) = (1.2, 0.75);
                        idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * d.len() as f64 / avg))
                    })
                    .sum()
            })
            .collect();
        // The table this computes, written out: doc 0 and 1 lead, doc 4 matches nothing.
        assert!(reference[4] == 0.0 && reference[0] > reference[2]);
        let dead = RoaringBitmap::new();
        let view = SegmentView {
            id: 0,
            dead: &dead,
            allowed: None,
        };
        for sealed in [false, true] {
            let mut idx = idx.clone();
            if sealed {
                idx.seal(5);
            }
            let st = stats(&[(view, &idx)], &q);
            assert_eq!(st.docs, 5);
            let mut top = TopK::new(10);
            score_segment(view, &[(&idx, &st)], &q, p, &mut top);
            let got = top.into_sorted();
            assert_eq!(got.len(), 4, "doc 4 has none of the terms");
            for c in got {
                let want = reference[c.key.1 as usize];
                assert!(
                    ((-c.distance) as f64 - want).abs() < 1e-5 * want.max(1.0),
                    "doc {}: {} vs {want}",
                    c.key.1,
                    -c.distance
                );
            }
        }
        // Required and excluded terms.
        let q = TextQuery::parse(&a, "+dog -lazy fox").unwrap();
        let st = stats(&[(view, &idx)], &q);
        let mut top = TopK::new(10);
        score_segment(view, &[(&idx, &st)], &q, p, &mut top);
        let rows: Vec<u32> = top.into_sorted().iter().map(|c| c.key.1).collect();
        assert_eq!(rows, [2], "doc 3 has dogs, not dog; docs 0 and 1 are lazy");
        // Stemming joins dog and dogs.
        let en = Analyzer {
            language: Some(Language::English),
            stop_words: true,
        };
        let q = TextQuery::parse(&en, "the Dogs").unwrap();
        assert_eq!(q.scoring, [("dog".to_owned(), 1)]);
    }

    #[test]
    fn sparse_scores_equal_an_exact_scan() {
        let vs: Vec<SparseVector> = (0..300u32)
            .map(|r| {
                let mut idx: Vec<u32> = (0..(r % 9)).map(|j| (r * 7 + j * 13) % 50).collect();
                idx.sort_unstable();
                idx.dedup();
                let values = idx.iter().map(|&i| ((i + r) % 11) as f32 - 3.0).collect();
                SparseVector {
                    indices: idx,
                    values,
                }
            })
            .collect();
        let mut idx = SparseIndex::new();
        for (r, v) in vs.iter().enumerate() {
            idx.insert(r as u32, v);
        }
        let q = SparseVector {
            indices: vec![1, 7, 13, 20, 49],
            values: vec![0.5, 2.0, -1.0, 1.5, 3.0],
        };
        let mut dead = RoaringBitmap::new();
        dead.insert(5);
        let allowed: RoaringBitmap = (0..300u32).filter(|r| !r.is_multiple_of(4)).collect();
        let view = SegmentView {
            id: 1,
            dead: &dead,
            allowed: Some(&allowed),
        };
        let mut exact: Vec<(f32, u32)> = vs
            .iter()
            .enumerate()
            .filter(|(r, v)| {
                let r = *r as u32;
                r != 5 && !r.is_multiple_of(4) && v.indices.iter().any(|i| q.indices.contains(i))
            })
            .map(|(r, v)| (v.dot(&q), r as u32))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for sealed in [false, true] {
            let mut idx = idx.clone();
            if sealed {
                idx.seal(300);
            }
            let mut top = TopK::new(10);
            score_sparse_segment(view, &idx, 300, &q, &mut top);
            let got: Vec<f32> = top.into_sorted().iter().map(|c| -c.distance).collect();
            let want: Vec<f32> = exact.iter().take(10).map(|e| e.0).collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
            }
        }
    }
}
