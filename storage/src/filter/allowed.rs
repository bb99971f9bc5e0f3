//! The allowed rows of a filter in one segment: its live rows that pass, from the segment's
//! field indexes where they answer a condition, from located ids for `has_id`, and from
//! payloads otherwise (read once per segment, on first need).
use std::collections::HashMap;
use std::marker::PhantomData;

use roaring::RoaringBitmap;
use serde_json::Value;

use super::ast::{Condition, Filter};
use super::bitmaps::{all_rows, eval_tree, has_id_conditions};
use crate::error::Result;
use crate::segment::mutable::MutableSegment;
use crate::segment::sealed::SealedSegment;
use crate::segment::{RowKey, SegmentId};
use crate::types::PointId;

/// Allowed rows per segment (segments with none are absent).
pub(crate) type Allowed = HashMap<SegmentId, RoaringBitmap>;

/// The rows of the ids of each `has_id` condition of one filter, located once for every
/// segment. Keyed by the condition's address: the filter stays borrowed throughout.
#[derive(Debug)]
pub(crate) struct LocatedIds<'f> {
    by_condition: HashMap<usize, Allowed>,
    filter: PhantomData<&'f Filter>,
}

impl<'f> LocatedIds<'f> {
    /// Locates the ids of every `has_id` condition of `f`; `locate` gives the live rows of
    /// ids.
    pub(crate) fn new(
        f: &'f Filter,
        mut locate: impl FnMut(&[PointId]) -> Result<Vec<RowKey>>,
    ) -> Result<LocatedIds<'f>> {
        let mut conds = Vec::new();
        has_id_conditions(f, &mut conds);
        let mut by_condition = HashMap::new();
        for c in conds {
            let Condition::HasId(ids) = c else { continue };
            let mut per: Allowed = HashMap::new();
            for (seg, row) in locate(ids)? {
                per.entry(seg).or_default().insert(row);
            }
            by_condition.insert(std::ptr::from_ref(c) as usize, per);
        }
        Ok(LocatedIds {
            by_condition,
            filter: PhantomData,
        })
    }

    /// The rows of segment `seg` that `has_id` condition `c` (of the filter) allows.
    fn rows(&self, c: &Condition, seg: SegmentId) -> RoaringBitmap {
        self.by_condition
            .get(&(std::ptr::from_ref(c) as usize))
            .and_then(|m| m.get(&seg))
            .cloned()
            .unwrap_or_default()
    }
}

/// The live rows of sealed segment `s` that pass `f`. `payloads` reads every row's parsed
/// payload (called at most once, for the first condition no field index answers).
pub(crate) fn sealed_rows(
    s: &SealedSegment,
    f: &Filter,
    ids: &LocatedIds<'_>,
    payloads: impl Fn() -> Result<Vec<Option<Value>>>,
) -> Result<RoaringBitmap> {
    let n = s.rows();
    let all = move || all_rows(n);
    let fields = s.fields();
    let mut loaded: Option<Vec<Option<Value>>> = None;
    let mut rows = eval_tree(f, &all, &mut |c| {
        if let Condition::HasId(_) = c {
            return Ok(ids.rows(c, s.id));
        }
        if let Some(b) = fields.as_ref().and_then(|x| x.eval(c)) {
            return Ok(b);
        }
        if loaded.is_none() {
            loaded = Some(payloads()?);
        }
        let p = loaded.as_ref().expect("invariant: loaded above");
        let leaf = Filter::Cond(c.clone());
        Ok((0..n)
            .filter(|&r| leaf.matches(&PointId::Num(0), p[r as usize].as_ref()))
            .collect())
    })?;
    rows -= &*s.deleted_guard();
    Ok(rows)
}

/// The live rows of in-memory segment `m` that pass `f`.
pub(crate) fn memory_rows(
    m: &MutableSegment,
    f: &Filter,
    ids: &LocatedIds<'_>,
) -> Result<RoaringBitmap> {
    let n = m.rows() as u32;
    let all = move || all_rows(n);
    let mut rows = eval_tree(f, &all, &mut |c| {
        if let Condition::HasId(_) = c {
            return Ok(ids.rows(c, m.id));
        }
        if let Some(b) = m.fields().eval(c) {
            return Ok(b);
        }
        let leaf = Filter::Cond(c.clone());
        Ok((0..n)
            .filter(|&r| leaf.matches(&PointId::Num(0), m.payload_value(r).as_ref()))
            .collect())
    })?;
    for dead in m.dead_rows() {
        rows.remove(dead);
    }
    Ok(rows)
}
