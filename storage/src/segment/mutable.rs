//! The mutable segment: rows appended in memory in LSN order, never on disk by itself (the WAL
//! makes it durable). When full it is frozen and written out as a sealed segment with the same
//! row numbers, so a row keeps its `(segment, row)` address across the seal.
use std::collections::{HashMap, HashSet};

use crate::distance::TopK;
use crate::filter::Schema;
use crate::payload_index::FieldIndexes;
use crate::segment::{RowKey, SegmentId, scan_rows};
use crate::types::{Metric, PointId};

/// Rows in memory.
#[derive(Debug)]
pub struct MutableSegment {
    /// This segment's id (kept when sealed).
    pub id: SegmentId,
    dim: usize,
    vectors: Vec<f32>,
    ids: Vec<PointId>,
    payloads: Vec<Option<Vec<u8>>>,
    live: Vec<bool>,
    /// Live rows by id.
    index: HashMap<PointId, u32>,
    /// Ids whose row in an older (sealed or sealing) segment was tombstoned since the last
    /// checkpoint; the checkpoint removes their stale id-map entries unless they live here.
    pub removed_from_older: HashSet<PointId>,
    /// Indexes of the declared payload fields, kept up to date on every push.
    fields: FieldIndexes,
    schema: Schema,
}

impl MutableSegment {
    /// An empty segment indexing the fields of `schema`.
    pub fn new(id: SegmentId, dim: usize, schema: &Schema) -> Self {
        MutableSegment {
            id,
            dim,
            vectors: Vec::new(),
            ids: Vec::new(),
            payloads: Vec::new(),
            live: Vec::new(),
            index: HashMap::new(),
            removed_from_older: HashSet::new(),
            fields: FieldIndexes::new(schema),
            schema: schema.clone(),
        }
    }

    /// The payload field indexes (covering every row).
    pub fn fields(&self) -> &FieldIndexes {
        &self.fields
    }

    /// The parsed payload of `row` (payloads are JSON objects, validated at the API).
    pub fn payload_value(&self, row: u32) -> Option<serde_json::Value> {
        serde_json::from_slice(self.payload(row)?).ok()
    }

    /// Re-indexes every row for a new schema.
    pub fn set_schema(&mut self, schema: &Schema) {
        self.schema = schema.clone();
        let mut f = FieldIndexes::new(schema);
        for row in 0..self.ids.len() as u32 {
            f.insert(row, self.payload_value(row).as_ref());
        }
        f.set_rows(self.ids.len() as u32);
        self.fields = f;
    }

    /// Rows ever appended (live or not).
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Live rows.
    pub fn live_count(&self) -> usize {
        self.index.len()
    }

    /// The live row of `id`, if any.
    pub fn lookup(&self, id: &PointId) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Appends a row; the caller has tombstoned any older version of the id.
    pub fn push(&mut self, id: PointId, vector: &[f32], payload: Option<Vec<u8>>) -> u32 {
        debug_assert_eq!(vector.len(), self.dim);
        let row = self.ids.len() as u32;
        if let Some(old) = self.index.insert(id.clone(), row) {
            self.live[old as usize] = false;
        }
        self.vectors.extend_from_slice(vector);
        self.ids.push(id);
        if self.schema.is_empty() {
            self.fields.set_rows(row + 1);
        } else {
            let parsed = payload
                .as_deref()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok());
            self.fields.insert(row, parsed.as_ref());
            self.fields.set_rows(row + 1);
        }
        self.payloads.push(payload);
        self.live.push(true);
        row
    }

    /// Tombstones the live row of `id`; returns whether there was one.
    pub fn delete(&mut self, id: &PointId) -> bool {
        match self.index.remove(id) {
            Some(row) => {
                self.live[row as usize] = false;
                true
            }
            None => false,
        }
    }

    /// Whether `row` is live.
    pub fn is_live(&self, row: u32) -> bool {
        self.live.get(row as usize).copied().unwrap_or(false)
    }

    /// The id stored at `row`.
    pub fn id(&self, row: u32) -> &PointId {
        &self.ids[row as usize]
    }

    /// The vector stored at `row`.
    pub fn vector(&self, row: u32) -> &[f32] {
        let s = row as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    /// The payload stored at `row`.
    pub fn payload(&self, row: u32) -> Option<&[u8]> {
        self.payloads[row as usize].as_deref()
    }

    /// All vectors, row-major.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// All ids, by row.
    pub fn ids(&self) -> &[PointId] {
        &self.ids
    }

    /// Rows that are not live, as a sorted list.
    pub fn dead_rows(&self) -> impl Iterator<Item = u32> + '_ {
        self.live
            .iter()
            .enumerate()
            .filter(|(_, l)| !**l)
            .map(|(r, _)| r as u32)
    }

    /// Live rows with their ids, in row order.
    pub fn live_rows(&self) -> impl Iterator<Item = (u32, &PointId)> + '_ {
        self.ids
            .iter()
            .enumerate()
            .filter(|(r, _)| self.live[*r])
            .map(|(r, id)| (r as u32, id))
    }

    /// Exact scan for a group of queries, one top-k each.
    pub fn scan(&self, metric: Metric, queries: &[Vec<f32>], tops: &mut [TopK<RowKey>]) {
        scan_rows(
            metric,
            queries,
            &self.vectors,
            self.dim,
            self.id,
            tops,
            |row| !self.live[row as usize],
        );
    }
}
