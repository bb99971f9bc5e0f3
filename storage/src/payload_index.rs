//! Per-segment indexes of declared payload fields, answering filter conditions as roaring
//! bitmaps of rows.
//!
//! * keyword, keyword[] and bool fields: value → bitmap of the rows holding it;
//! * integer, float and datetime fields: a column of (value, row) pairs. In a sealed segment it
//!   is sorted, and cut into buckets of consecutive values with a bitmap each, so a range is a
//!   union of whole-bucket bitmaps plus the rows of at most two partial buckets (found by binary
//!   search). The mutable segment appends and scans its column instead;
//! * every field keeps the bitmap of rows where it has a value, for `exists` / `is_null`.
//!
//! Conditions on undeclared keys are not answered here (the caller evaluates them from the
//! payloads, slower).
mod codec;

use std::collections::HashMap;

use roaring::{MultiOps, RoaringBitmap};
use serde_json::Value;

use crate::filter::{Condition, FieldType, Literal, Range, Schema, parse_datetime, values_at};
use crate::text::{Analyzer, Blob, SparseIndex, TextIndex, parse_sparse};

/// Entries per bucket of a sealed numeric column: a range costs at most two buckets of single
/// inserts plus one bitmap union per bucket it covers.
const BUCKET: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Term {
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, Default)]
struct NumericColumn {
    /// (value, row); sorted by value once sealed.
    entries: Vec<(f64, u32)>,
    /// Sealed: rows of `entries[b·BUCKET..(b+1)·BUCKET]`.
    buckets: Vec<RoaringBitmap>,
    /// Sealed, single-valued columns: `prefix[j]` = rows of the first `j·PREFIX_STRIDE` buckets,
    /// so a wide range is one difference of two prefixes plus a few buckets.
    prefix: Vec<RoaringBitmap>,
    sorted: bool,
    /// Sealed: one past the largest row in `entries`.
    row_span: u32,
}

/// A sealed range that holds at least `row_span / DENSE_RANGE` entries but spans no whole
/// prefix step is gathered into a plain bitset of the segment's rows, then converted: merging
/// its buckets' array containers one into another costs more. Measured on GloVe-50's 390k rows
/// (`num < k`, one segment): at 1% 16.6 µs from the buckets, 11.4 µs through the bitset; at 2%
/// 27.8 and 17.0; at 5% 29.2 and 31.7. From one prefix step up the buckets win (10%: 10.0
/// against 33.8 µs), and below 1% the bitset's zeroing and conversion of the whole segment's
/// span would dominate.
const DENSE_RANGE: usize = 100;

/// The rows of `entries` as a bitmap, through a bitset of `span` rows (every row < `span`).
fn bitset_of(entries: &[(f64, u32)], span: u32) -> RoaringBitmap {
    let mut bytes = vec![0u8; (span as usize).div_ceil(8)];
    for &(_, row) in entries {
        if let Some(b) = bytes.get_mut((row >> 3) as usize) {
            *b |= 1 << (row & 7);
        }
    }
    RoaringBitmap::from_lsb0_bytes(0, &bytes)
}

/// The terms of a text field's values at `key` (a string, or an array of strings: their terms
/// follow one another); `None` when it has no string value.
fn text_terms(a: &Analyzer, payload: Option<&Value>, key: &str) -> Option<Vec<String>> {
    let mut terms = Vec::new();
    let mut any = false;
    for v in values_at(payload, key) {
        if let Some(s) = v.as_str() {
            any = true;
            a.for_each_term(s, |t| terms.push(t));
        }
    }
    any.then_some(terms)
}

/// Buckets per prefix step.
const PREFIX_STRIDE: usize = 16;

/// A bitmap of unsorted rows: sorted first, so each container is built by appends (inserting
/// out of order into an array container shifts it every time).
fn bitmap_of(mut rows: Vec<u32>) -> RoaringBitmap {
    rows.sort_unstable();
    rows.dedup();
    RoaringBitmap::from_sorted_iter(rows).expect("invariant: sorted and deduplicated")
}

impl NumericColumn {
    fn seal(&mut self) {
        self.entries
            .sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.buckets = self
            .entries
            .chunks(BUCKET)
            .map(|c| bitmap_of(c.iter().map(|e| e.1).collect()))
            .collect();
        let total: u64 = self.buckets.iter().map(RoaringBitmap::len).sum();
        let single_valued = self.buckets.iter().union().len() == total;
        self.prefix.clear();
        if single_valued {
            let mut acc = RoaringBitmap::new();
            self.prefix.push(acc.clone());
            for chunk in self.buckets.chunks(PREFIX_STRIDE) {
                acc |= chunk.iter().union();
                self.prefix.push(acc.clone());
            }
        }
        self.row_span = self.entries.iter().map(|e| e.1 + 1).max().unwrap_or(0);
        self.sorted = true;
    }

    /// Rows of whole buckets `a..b`.
    fn buckets_between(&self, a: usize, b: usize) -> RoaringBitmap {
        let (j1, j2) = (a.div_ceil(PREFIX_STRIDE), b / PREFIX_STRIDE);
        if self.prefix.is_empty() || j1 >= j2 {
            let mut out = RoaringBitmap::new();
            self.buckets[a..b].iter().for_each(|bucket| out |= bucket);
            return out;
        }
        // Buckets are disjoint here (single-valued column): a prefix difference is their union.
        let mut out = if j1 == 0 {
            self.prefix[j2].clone()
        } else {
            &self.prefix[j2] - &self.prefix[j1]
        };
        // One bucket at a time into the (mostly dense) result, not a multi-way union merged in
        // afterwards: GloVe-50's 390k rows, buckets 0..38 of `num < 100`, 24.7 → 9.1 µs.
        for bucket in self.buckets[a..j1 * PREFIX_STRIDE]
            .iter()
            .chain(&self.buckets[j2 * PREFIX_STRIDE..b])
        {
            out |= bucket;
        }
        out
    }

    fn range(&self, r: &Range) -> RoaringBitmap {
        if !self.sorted {
            return self
                .entries
                .iter()
                .filter(|e| r.contains(e.0))
                .map(|e| e.1)
                .collect();
        }
        let lo = match (r.gt, r.gte) {
            (Some(g), _) => self.entries.partition_point(|e| e.0 <= g),
            (None, Some(g)) => self.entries.partition_point(|e| e.0 < g),
            (None, None) => 0,
        };
        let lo = match (r.gt, r.gte) {
            (Some(_), Some(g)) => lo.max(self.entries.partition_point(|e| e.0 < g)),
            _ => lo,
        };
        let hi = match (r.lt, r.lte) {
            (Some(l), _) => self.entries.partition_point(|e| e.0 < l),
            (None, Some(l)) => self.entries.partition_point(|e| e.0 <= l),
            (None, None) => self.entries.len(),
        };
        let hi = match (r.lt, r.lte) {
            (Some(_), Some(l)) => hi.min(self.entries.partition_point(|e| e.0 <= l)),
            _ => hi,
        };
        if lo >= hi {
            return RoaringBitmap::new();
        }
        let (first_full, last_full) = (lo.div_ceil(BUCKET), hi / BUCKET);
        if first_full >= last_full {
            return bitmap_of(self.entries[lo..hi].iter().map(|e| e.1).collect());
        }
        let prefixed = !self.prefix.is_empty()
            && first_full.div_ceil(PREFIX_STRIDE) < last_full / PREFIX_STRIDE;
        if !prefixed && (hi - lo) * DENSE_RANGE >= self.row_span as usize {
            return bitset_of(&self.entries[lo..hi], self.row_span);
        }
        let mut out = self.buckets_between(first_full, last_full);
        out |= bitmap_of(
            self.entries[lo..first_full * BUCKET]
                .iter()
                .chain(&self.entries[last_full * BUCKET..hi])
                .map(|e| e.1)
                .collect(),
        );
        out
    }
}

#[derive(Debug, Clone)]
enum FieldIndex {
    Terms(HashMap<Term, RoaringBitmap>),
    Numbers(NumericColumn),
    /// A text field's postings (see [`crate::text`]).
    Text(TextIndex),
    /// A sparse field's inverted index.
    Sparse(SparseIndex),
}

#[derive(Debug, Clone)]
struct Field {
    ty: FieldType,
    index: FieldIndex,
    present: RoaringBitmap,
}

/// The indexes of one segment's declared fields.
#[derive(Debug, Clone, Default)]
pub struct FieldIndexes {
    fields: HashMap<String, Field>,
    rows: u32,
}

impl FieldIndexes {
    /// Empty indexes for `schema`.
    pub fn new(schema: &Schema) -> FieldIndexes {
        let fields = schema
            .iter()
            .map(|(k, &ty)| {
                let index = match ty {
                    FieldType::Keyword | FieldType::KeywordArray | FieldType::Bool => {
                        FieldIndex::Terms(HashMap::new())
                    }
                    FieldType::Integer | FieldType::Float | FieldType::Datetime => {
                        FieldIndex::Numbers(NumericColumn::default())
                    }
                    FieldType::Text(_) => FieldIndex::Text(TextIndex::new()),
                    FieldType::Sparse => FieldIndex::Sparse(SparseIndex::new()),
                };
                (
                    k.clone(),
                    Field {
                        ty,
                        index,
                        present: RoaringBitmap::new(),
                    },
                )
            })
            .collect();
        FieldIndexes { fields, rows: 0 }
    }

    /// Builds sealed indexes from every row's payload.
    pub fn build<'a>(
        schema: &Schema,
        payloads: impl Iterator<Item = (u32, Option<&'a Value>)>,
    ) -> FieldIndexes {
        let mut f = FieldIndexes::new(schema);
        for (row, p) in payloads {
            f.insert(row, p);
        }
        f.seal();
        f
    }

    /// Whether these indexes cover exactly `schema`.
    pub fn covers(&self, schema: &Schema) -> bool {
        self.fields.len() == schema.len()
            && schema
                .iter()
                .all(|(k, ty)| self.fields.get(k).is_some_and(|f| f.ty == *ty))
    }

    /// Indexes `row` (rows arrive in increasing order). Values of the wrong type for the
    /// field are not indexed (the row simply does not match conditions on it).
    pub fn insert(&mut self, row: u32, payload: Option<&Value>) {
        self.rows = self.rows.max(row + 1);
        for (key, field) in &mut self.fields {
            let mut any = false;
            match (&mut field.index, field.ty) {
                (FieldIndex::Text(t), FieldType::Text(a)) => {
                    if let Some(terms) = text_terms(&a, payload, key) {
                        t.insert(row, &terms);
                        field.present.insert(row);
                    }
                    continue;
                }
                (FieldIndex::Sparse(sp), FieldType::Sparse) => {
                    if let Some(v) = values_at(payload, key)
                        .into_iter()
                        .find_map(|v| parse_sparse(v).ok())
                    {
                        sp.insert(row, &v);
                        field.present.insert(row);
                    }
                    continue;
                }
                _ => {}
            }
            for v in values_at(payload, key) {
                match (&mut field.index, field.ty) {
                    (FieldIndex::Terms(t), FieldType::Keyword | FieldType::KeywordArray) => {
                        if let Some(s) = v.as_str() {
                            t.entry(Term::Str(s.to_owned())).or_default().insert(row);
                            any = true;
                        }
                    }
                    (FieldIndex::Terms(t), FieldType::Bool) => {
                        if let Some(b) = v.as_bool() {
                            t.entry(Term::Bool(b)).or_default().insert(row);
                            any = true;
                        }
                    }
                    (FieldIndex::Numbers(c), FieldType::Datetime) => {
                        if let Some(x) = v.as_str().and_then(parse_datetime) {
                            c.entries.push((x, row));
                            any = true;
                        }
                    }
                    (FieldIndex::Numbers(c), FieldType::Integer | FieldType::Float) => {
                        if let Some(x) = v.as_f64() {
                            c.entries.push((x, row));
                            any = true;
                        }
                    }
                    (
                        FieldIndex::Terms(_)
                        | FieldIndex::Numbers(_)
                        | FieldIndex::Text(_)
                        | FieldIndex::Sparse(_),
                        FieldType::Keyword
                        | FieldType::KeywordArray
                        | FieldType::Bool
                        | FieldType::Datetime
                        | FieldType::Integer
                        | FieldType::Float
                        | FieldType::Text(_)
                        | FieldType::Sparse,
                    ) => {}
                }
            }
            if any {
                field.present.insert(row);
            }
        }
    }

    /// Sorts numeric columns into buckets and encodes text and sparse indexes (for a sealed
    /// segment).
    pub fn seal(&mut self) {
        let rows = self.rows;
        for f in self.fields.values_mut() {
            match &mut f.index {
                FieldIndex::Numbers(c) => c.seal(),
                FieldIndex::Text(t) => t.seal(rows.max(t.rows())),
                FieldIndex::Sparse(s) => s.seal(rows),
                FieldIndex::Terms(_) => {}
            }
        }
    }

    /// The text index of field `key`, with its analyzer, if it is a declared text field.
    pub fn text(&self, key: &str) -> Option<(&TextIndex, Analyzer)> {
        let f = self.fields.get(key)?;
        match (&f.index, f.ty) {
            (FieldIndex::Text(t), FieldType::Text(a)) => Some((t, a)),
            _ => None,
        }
    }

    /// The sparse index of field `key`, if it is a declared sparse field.
    pub fn sparse(&self, key: &str) -> Option<&SparseIndex> {
        match &self.fields.get(key)?.index {
            FieldIndex::Sparse(s) => Some(s),
            FieldIndex::Terms(_) | FieldIndex::Numbers(_) | FieldIndex::Text(_) => None,
        }
    }

    fn literal_rows(field: &Field, l: &Literal) -> RoaringBitmap {
        match &field.index {
            FieldIndex::Terms(t) => {
                let term = match l {
                    Literal::Str(s) => Term::Str(s.clone()),
                    Literal::Bool(b) => Term::Bool(*b),
                    Literal::Int(_) | Literal::Float(_) => return RoaringBitmap::new(),
                };
                t.get(&term).cloned().unwrap_or_default()
            }
            FieldIndex::Text(_) | FieldIndex::Sparse(_) => RoaringBitmap::new(),
            FieldIndex::Numbers(c) => {
                let x = match (l, field.ty) {
                    (Literal::Int(i), _) => *i as f64,
                    (Literal::Float(f), _) => *f,
                    (Literal::Str(s), FieldType::Datetime) => match parse_datetime(s) {
                        Some(x) => x,
                        None => return RoaringBitmap::new(),
                    },
                    (Literal::Str(_) | Literal::Bool(_), _) => return RoaringBitmap::new(),
                };
                c.range(&Range {
                    gte: Some(x),
                    lte: Some(x),
                    ..Range::default()
                })
            }
        }
    }

    /// The rows matching `c`, or `None` when `c` reads an undeclared key (or is `has_id`).
    pub fn eval(&self, c: &Condition) -> Option<RoaringBitmap> {
        let field = self.fields.get(c.key()?)?;
        Some(match c {
            Condition::Match { value, .. } => Self::literal_rows(field, value),
            Condition::Any { values, .. } => values
                .iter()
                .map(|l| Self::literal_rows(field, l))
                .fold(RoaringBitmap::new(), |a, b| a | b),
            Condition::Except { values, .. } => {
                // A value, and none of them listed (for arrays: no element listed).
                let mut out = field.present.clone();
                for l in values {
                    out -= Self::literal_rows(field, l);
                }
                out
            }
            Condition::Range { range, .. } => match &field.index {
                FieldIndex::Numbers(c) => c.range(range),
                FieldIndex::Terms(_) | FieldIndex::Text(_) | FieldIndex::Sparse(_) => {
                    RoaringBitmap::new()
                }
            },
            Condition::Exists { .. } => field.present.clone(),
            Condition::IsNull { .. } => {
                let mut all = RoaringBitmap::new();
                all.insert_range(0..self.rows);
                all - &field.present
            }
            Condition::HasId(_) => return None,
        })
    }

    /// Rows covered (for `is_null` in a segment whose last rows have no payload).
    pub fn set_rows(&mut self, rows: u32) {
        self.rows = self.rows.max(rows);
    }

    /// Rows covered.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// The file form of sealed indexes (see [`codec`]), checksummed.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Reads [`FieldIndexes::to_bytes`]' output back; `None` unless it is whole and
    /// well-formed.
    pub fn from_bytes(bytes: &[u8]) -> Option<FieldIndexes> {
        codec::decode(&Blob::new(std::sync::Arc::new(bytes.to_vec())))
    }

    /// [`FieldIndexes::from_bytes`] over shared bytes (a mapped file): text and sparse
    /// indexes are read in place from them, not copied.
    pub fn from_blob(blob: &Blob) -> Option<FieldIndexes> {
        codec::decode(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Filter, parse};
    use crate::types::PointId;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema() -> Schema {
        [
            ("kind".to_owned(), FieldType::Keyword),
            ("n".to_owned(), FieldType::Integer),
            ("x".to_owned(), FieldType::Float),
            ("ok".to_owned(), FieldType::Bool),
            ("at".to_owned(), FieldType::Datetime),
            ("tags".to_owned(), FieldType::KeywordArray),
        ]
        .into()
    }

    fn eval_tree(ix: &FieldIndexes, f: &Filter) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..ix.rows);
        match f {
            Filter::Cond(c) => ix.eval(c).expect("declared"),
            Filter::Must(fs) => fs.iter().fold(all, |a, f| a & eval_tree(ix, f)),
            Filter::Should(fs) if fs.is_empty() => all,
            Filter::Should(fs) => fs
                .iter()
                .fold(RoaringBitmap::new(), |a, f| a | eval_tree(ix, f)),
            Filter::MustNot(fs) => fs.iter().fold(all, |a, f| a - eval_tree(ix, f)),
        }
    }

    fn payload(rng: &mut crate::rng::SplitMix64) -> Value {
        let kinds = ["a", "b", "c"];
        let mut m = serde_json::Map::new();
        if rng.below(5) > 0 {
            m.insert("kind".into(), json!(kinds[rng.below(3)]));
        }
        if rng.below(5) > 0 {
            m.insert("n".into(), json!(rng.below(20) as i64 - 5));
        }
        if rng.below(5) > 0 {
            m.insert("x".into(), json!(rng.below(100) as f64 / 10.0));
        }
        if rng.below(4) > 0 {
            m.insert("ok".into(), json!(rng.below(2) == 0));
        }
        if rng.below(4) > 0 {
            m.insert(
                "at".into(),
                json!(format!("2024-01-{:02}T00:00:00Z", 1 + rng.below(28))),
            );
        }
        if rng.below(3) > 0 {
            let t: Vec<&str> = (0..rng.below(3)).map(|_| kinds[rng.below(3)]).collect();
            m.insert("tags".into(), json!(t));
        }
        if rng.below(10) == 0 {
            m.insert("n".into(), Value::Null);
        }
        Value::Object(m)
    }

    fn condition(rng: &mut crate::rng::SplitMix64) -> String {
        let kinds = ["\"a\"", "\"b\"", "\"c\"", "\"zz\""];
        let ops = ["=", "!=", ">", ">=", "<", "<="];
        match rng.below(12) {
            0 => format!("kind = {}", kinds[rng.below(4)]),
            1 => format!(
                "kind any [{}, {}]",
                kinds[rng.below(4)],
                kinds[rng.below(4)]
            ),
            2 => format!("kind except [{}]", kinds[rng.below(4)]),
            3 => format!("n {} {}", ops[rng.below(6)], rng.below(20) as i64 - 5),
            4 => format!(
                "x {} {}",
                ops[2 + rng.below(4)],
                rng.below(100) as f64 / 10.0
            ),
            5 => format!("ok = {}", rng.below(2) == 0),
            6 => format!(
                "at {} \"2024-01-{:02}T00:00:00Z\"",
                ops[2 + rng.below(4)],
                1 + rng.below(28)
            ),
            7 => format!("tags any [{}]", kinds[rng.below(4)]),
            8 => format!("tags except [{}]", kinds[rng.below(4)]),
            9 => format!("{} exists", ["kind", "n", "tags", "at"][rng.below(4)]),
            10 => format!("{} is null", ["kind", "n", "tags", "ok"][rng.below(4)]),
            _ => format!(
                "n any [{}, {}]",
                rng.below(20) as i64 - 5,
                rng.below(20) as i64 - 5
            ),
        }
    }

    fn expr(rng: &mut crate::rng::SplitMix64, depth: usize) -> String {
        if depth == 0 || rng.below(3) == 0 {
            return condition(rng);
        }
        let a = expr(rng, depth - 1);
        let b = expr(rng, depth - 1);
        match rng.below(3) {
            0 => format!("({a} and {b})"),
            1 => format!("({a} or {b})"),
            _ => format!("not ({a})"),
        }
    }

    /// Enough rows for the prefix unions of sealed numeric columns (≥ 16 buckets), single- and
    /// multi-valued, against a naive filter over the values.
    #[test]
    fn wide_numeric_ranges_use_prefixes_correctly() {
        let mut rng = crate::rng::SplitMix64::new(4);
        let n = 60_000u32;
        let single: Vec<Value> = (0..n)
            .map(|_| json!({"n": rng.below(1000) as i64}))
            .collect();
        let multi: Vec<Value> = (0..n)
            .map(|_| json!({"n": [rng.below(1000) as i64, rng.below(1000) as i64]}))
            .collect();
        let schema: Schema = [("n".to_owned(), FieldType::Integer)].into();
        for payloads in [&single, &multi] {
            let ix = FieldIndexes::build(
                &schema,
                payloads
                    .iter()
                    .enumerate()
                    .map(|(r, p)| (r as u32, Some(p))),
            );
            for _ in 0..40 {
                let (a, b) = (rng.below(1001) as i64, rng.below(1001) as i64);
                let f = parse(&format!("n >= {} and n < {}", a.min(b), a.max(b))).unwrap();
                let want: RoaringBitmap = payloads
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| f.matches(&PointId::Num(0), Some(p)))
                    .map(|(r, _)| r as u32)
                    .collect();
                assert_eq!(eval_tree(&ix, &f), want, "{a}..{b}");
            }
        }
    }

    /// The file form answers every filter exactly like the indexes it was written from, and a
    /// damaged file (any flipped byte, any truncation, another format) is refused.
    #[test]
    fn the_file_form_round_trips_and_refuses_damage() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let payloads: Vec<Value> = (0..5000).map(|_| payload(&mut rng)).collect();
        let mut ix = FieldIndexes::build(
            &schema(),
            payloads
                .iter()
                .enumerate()
                .map(|(r, p)| (r as u32, Some(p))),
        );
        ix.set_rows(5003);
        let bytes = ix.to_bytes();
        let back = FieldIndexes::from_bytes(&bytes).expect("a whole file reads back");
        assert!(back.covers(&schema()));
        assert_eq!(back.rows(), 5003);
        for _ in 0..300 {
            let text = expr(&mut rng, 3);
            let f = parse(&text).unwrap();
            assert_eq!(eval_tree(&back, &f), eval_tree(&ix, &f), "{text}");
        }
        assert_eq!(back.to_bytes(), bytes, "encoding is deterministic");
        for _ in 0..200 {
            let mut bad = bytes.clone();
            let at = rng.below(bad.len());
            bad[at] ^= 1 << rng.below(8);
            assert!(FieldIndexes::from_bytes(&bad).is_none(), "flip at {at}");
        }
        for cut in [0, 3, 4, 16, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                FieldIndexes::from_bytes(&bytes[..cut]).is_none(),
                "cut {cut}"
            );
        }
        let empty = FieldIndexes::build(&Schema::new(), std::iter::empty());
        let e = FieldIndexes::from_bytes(&empty.to_bytes()).unwrap();
        assert!(e.covers(&Schema::new()) && !e.covers(&schema()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Index evaluation (sealed buckets and mutable scans alike) equals the reference
        /// evaluation over random payloads and random nested filters, every operator.
        #[test]
        fn index_evaluation_equals_naive_scan(seed in any::<u64>(), n in 1usize..3000) {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let payloads: Vec<Value> = (0..n).map(|_| payload(&mut rng)).collect();
            let mut mutable = FieldIndexes::new(&schema());
            for (r, p) in payloads.iter().enumerate() {
                mutable.insert(r as u32, Some(p));
            }
            let sealed = FieldIndexes::build(&schema(), payloads.iter().enumerate().map(|(r, p)| (r as u32, Some(p))));
            for _ in 0..20 {
                let text = expr(&mut rng, 3);
                let f = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                let want: RoaringBitmap = payloads
                    .iter()
                    .enumerate()
                    .filter(|(r, p)| f.matches(&PointId::Num(*r as u64), Some(p)))
                    .map(|(r, _)| r as u32)
                    .collect();
                prop_assert_eq!(&eval_tree(&sealed, &f), &want, "sealed: {}", text);
                prop_assert_eq!(&eval_tree(&mutable, &f), &want, "mutable: {}", text);
            }
        }
    }
}
