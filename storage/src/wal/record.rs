//! The typed WAL record and its binary body encoding.
//!
//! Body layout (little-endian):
//!
//! | field | type | notes |
//! |---|---|---|
//! | tag | u8 | 1 = upsert, 2 = delete, 3 = sequenced (then a u64 LE sequence number and a whole body) |
//! | count | u32 | number of points / ids |
//! | dim | u32 | upsert only |
//! | per point: id_len | u16 | then `id_len` bytes of [`PointId::encode_into`] |
//! | per point: vector | dim × f32 | upsert only |
//! | per point: payload_len | u32 | upsert only; `u32::MAX` = no payload, then the JSON bytes |
use crate::types::{PointId, PointWrite};

/// One logged mutation.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecord {
    /// Insert or overwrite points (vectors already normalised for cosine collections).
    Upsert(Vec<PointWrite>),
    /// Delete points by id.
    Delete(Vec<PointId>),
}

const TAG_UPSERT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_SEQUENCED: u8 = 3;
const NO_PAYLOAD: u32 = u32::MAX;

fn put_id(out: &mut Vec<u8>, id: &PointId) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    id.encode_into(out);
    let len = (out.len() - start - 2) as u16;
    out[start..start + 2].copy_from_slice(&len.to_le_bytes());
}

impl WalRecord {
    /// Appends the encoded body to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            WalRecord::Upsert(points) => Self::encode_points(points, out),
            WalRecord::Delete(ids) => Self::encode_ids(ids, out),
        }
    }

    /// Appends the body of an upsert of `points` (without building the record).
    pub fn encode_points(points: &[PointWrite], out: &mut Vec<u8>) {
        out.push(TAG_UPSERT);
        out.extend_from_slice(&(points.len() as u32).to_le_bytes());
        let dim = points.first().map_or(0, |p| p.vector.len());
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        for p in points {
            put_id(out, &p.id);
            out.extend_from_slice(bytemuck::cast_slice(&p.vector));
            match &p.payload {
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&NO_PAYLOAD.to_le_bytes()),
            }
        }
    }

    /// Appends the body of a delete of `ids`.
    pub fn encode_ids(ids: &[PointId], out: &mut Vec<u8>) {
        out.push(TAG_DELETE);
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            put_id(out, id);
        }
    }

    /// Appends the body of `self` stamped with an external sequence number `seq` (a Raft log
    /// index; 0 = none).
    pub fn encode_sequenced(&self, seq: u64, out: &mut Vec<u8>) {
        if seq != 0 {
            out.push(TAG_SEQUENCED);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        self.encode_into(out);
    }

    /// Decodes a body that may carry a sequence number: `(seq or 0, record)`.
    pub fn decode_sequenced(body: &[u8]) -> Result<(u64, WalRecord), String> {
        match body.split_first() {
            Some((&TAG_SEQUENCED, rest)) => {
                let (seq, inner) = rest
                    .split_first_chunk::<8>()
                    .ok_or("sequenced record shorter than its sequence number")?;
                let seq = u64::from_le_bytes(*seq);
                if seq == 0 {
                    return Err("sequenced record with sequence number 0".into());
                }
                Ok((seq, WalRecord::decode(inner)?))
            }
            _ => Ok((0, WalRecord::decode(body)?)),
        }
    }

    /// Decodes a body; `Err` carries a description of the first inconsistency.
    pub fn decode(body: &[u8]) -> Result<WalRecord, String> {
        let mut r = Reader { buf: body, pos: 0 };
        let rec = match r.u8()? {
            TAG_UPSERT => {
                let count = r.u32()? as usize;
                let dim = r.u32()? as usize;
                // Every point needs at least 2 + 1 + 4·dim + 4 bytes: bound `count` before allocating.
                if count.saturating_mul(7 + 4 * dim) > body.len() {
                    return Err(format!(
                        "upsert of {count} points × dim {dim} does not fit in {} bytes",
                        body.len()
                    ));
                }
                let mut points = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = r.id()?;
                    let raw = r.take(4 * dim)?;
                    let vector = raw
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    let plen = r.u32()?;
                    let payload = if plen == NO_PAYLOAD {
                        None
                    } else {
                        Some(r.take(plen as usize)?.to_vec())
                    };
                    points.push(PointWrite {
                        id,
                        vector,
                        payload,
                    });
                }
                WalRecord::Upsert(points)
            }
            TAG_DELETE => {
                let count = r.u32()? as usize;
                if count.saturating_mul(3) > body.len() {
                    return Err(format!(
                        "delete of {count} ids does not fit in {} bytes",
                        body.len()
                    ));
                }
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    ids.push(r.id()?);
                }
                WalRecord::Delete(ids)
            }
            tag => return Err(format!("unknown record tag {tag}")),
        };
        if r.pos != body.len() {
            return Err(format!(
                "{} trailing bytes after the record",
                body.len() - r.pos
            ));
        }
        Ok(rec)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end =
            end.ok_or_else(|| format!("record ends early: need {n} bytes at offset {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn id(&mut self) -> Result<PointId, String> {
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let at = self.pos;
        PointId::decode(self.take(len)?).ok_or_else(|| format!("invalid point id at offset {at}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = PointId> {
        prop_oneof![
            any::<u64>().prop_map(PointId::Num),
            "[a-z0-9-]{1,40}".prop_map(PointId::Str)
        ]
    }

    fn arb_record() -> impl Strategy<Value = WalRecord> {
        let upsert = (1usize..8).prop_flat_map(|dim| {
            proptest::collection::vec(
                (
                    arb_id(),
                    proptest::collection::vec(-1e6f32..1e6, dim),
                    proptest::option::of("\\{\"a\":[0-9]{1,5}\\}".prop_map(String::into_bytes)),
                ),
                0..10,
            )
            .prop_map(|ps| {
                WalRecord::Upsert(
                    ps.into_iter()
                        .map(|(id, vector, payload)| PointWrite {
                            id,
                            vector,
                            payload,
                        })
                        .collect(),
                )
            })
        });
        let delete = proptest::collection::vec(arb_id(), 0..10).prop_map(WalRecord::Delete);
        prop_oneof![upsert, delete]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn roundtrip(rec in arb_record()) {
            let mut buf = Vec::new();
            rec.encode_into(&mut buf);
            prop_assert_eq!(WalRecord::decode(&buf).unwrap(), rec);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WalRecord::decode(&bytes);
        }
    }
}
