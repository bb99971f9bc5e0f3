//! The file form of a sealed segment's field indexes (`fields.idx`), so that opening a
//! collection reads them instead of re-indexing every payload from the metadata store.
//!
//! Layout, little-endian: `b"QFLD"`, format `u32`, rows `u32`, field count `u32`; per field
//! (in key order): key (`u32` length + UTF-8), type `u8`, the rows holding a value (a
//! bitmap), then either terms (`u32` count; each a tag `u8` — 0 string with `u32` length +
//! UTF-8, 1 false, 2 true — and its bitmap) or a numeric column (`u64` count of `(f64, u32)`
//! pairs, sorted). A bitmap is a `u32` length and roaring's portable serialisation. A CRC32
//! of everything before it ends the file.
//!
//! The file is derived data: written once beside the segment's other files after its indexes
//! are built, and read back only when it is whole (length and CRC), names exactly the
//! collection's schema and the segment's rows. Anything else (an older format, a torn write,
//! a flipped bit, a schema declared since) is ignored and the indexes are rebuilt.
use std::collections::HashMap;

use roaring::RoaringBitmap;

use super::{Field, FieldIndex, FieldIndexes, NumericColumn, Term};
use crate::filter::FieldType;
use crate::text::{Analyzer, Blob, Language, SparseIndex, TextIndex};

const MAGIC: &[u8; 4] = b"QFLD";
const FORMAT: u32 = 1;

/// A type's code; a text field's is followed by its analyzer's language (`u8` length + name,
/// empty for none) and stop-word flag (`u8`).
fn put_type(out: &mut Vec<u8>, t: FieldType) {
    out.push(match t {
        FieldType::Keyword => 0,
        FieldType::Integer => 1,
        FieldType::Float => 2,
        FieldType::Bool => 3,
        FieldType::Datetime => 4,
        FieldType::KeywordArray => 5,
        FieldType::Text(_) => 6,
        FieldType::Sparse => 7,
    });
    if let FieldType::Text(a) = t {
        let name = a.language.map_or("", |l| l.name());
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(u8::from(a.stop_words));
    }
}

fn read_type(r: &mut Reader<'_>) -> Option<FieldType> {
    Some(match r.u8()? {
        0 => FieldType::Keyword,
        1 => FieldType::Integer,
        2 => FieldType::Float,
        3 => FieldType::Bool,
        4 => FieldType::Datetime,
        5 => FieldType::KeywordArray,
        6 => {
            let n = usize::from(r.u8()?);
            let name = std::str::from_utf8(r.take(n)?).ok()?;
            let language = if name.is_empty() {
                None
            } else {
                Some(Language::parse(name)?)
            };
            let stop_words = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            FieldType::Text(Analyzer {
                language,
                stop_words,
            })
        }
        7 => FieldType::Sparse,
        _ => return None,
    })
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_bitmap(out: &mut Vec<u8>, b: &RoaringBitmap) {
    put_u32(out, b.serialized_size() as u32);
    b.serialize_into(&mut *out)
        .expect("invariant: writing to a Vec cannot fail");
}

/// A text or sparse index's sealed form: `u64` length, then the bytes.
fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes sealed indexes (numeric columns sorted).
pub(super) fn encode(f: &FieldIndexes) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, FORMAT);
    put_u32(&mut out, f.rows);
    put_u32(&mut out, f.fields.len() as u32);
    let mut keys: Vec<&String> = f.fields.keys().collect();
    keys.sort();
    for key in keys {
        let field = &f.fields[key];
        put_str(&mut out, key);
        put_type(&mut out, field.ty);
        put_bitmap(&mut out, &field.present);
        match &field.index {
            FieldIndex::Terms(terms) => {
                put_u32(&mut out, terms.len() as u32);
                let mut sorted: Vec<(&Term, &RoaringBitmap)> = terms.iter().collect();
                sorted.sort_by_key(|(t, _)| match t {
                    Term::Str(s) => (0, s.as_str()),
                    Term::Bool(b) => (1 + u8::from(*b), ""),
                });
                for (term, rows) in sorted {
                    match term {
                        Term::Str(s) => {
                            out.push(0);
                            put_str(&mut out, s);
                        }
                        Term::Bool(b) => out.push(1 + u8::from(*b)),
                    }
                    put_bitmap(&mut out, rows);
                }
            }
            FieldIndex::Text(t) => put_blob(&mut out, &t.to_bytes()),
            FieldIndex::Sparse(sp) => put_blob(&mut out, &sp.to_bytes()),
            FieldIndex::Numbers(c) => {
                out.extend_from_slice(&(c.entries.len() as u64).to_le_bytes());
                for (v, row) in &c.entries {
                    out.extend_from_slice(&v.to_le_bytes());
                    put_u32(&mut out, *row);
                }
            }
        }
    }
    let crc = crc32fast::hash(&out);
    put_u32(&mut out, crc);
    out
}

/// A bounds-checked reader over the file's body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }

    fn bitmap(&mut self, rows: u32) -> Option<RoaringBitmap> {
        let n = self.u32()? as usize;
        let b = RoaringBitmap::deserialize_from(self.take(n)?).ok()?;
        // Rows past the segment's end would make `is_null` and masks lie.
        match b.max() {
            Some(m) if m >= rows => None,
            _ => Some(b),
        }
    }
}

/// Decodes a file written by [`encode`]; `None` when it is not whole and well-formed.
pub(super) fn decode(blob: &Blob) -> Option<FieldIndexes> {
    let bytes = blob.as_ref();
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let mut r = Reader { b: body, at: 0 };
    if r.take(4)? != MAGIC || r.u32()? != FORMAT {
        return None;
    }
    let rows = r.u32()?;
    let count = r.u32()?;
    let mut fields = HashMap::new();
    for _ in 0..count {
        let key = r.str()?;
        let ty = read_type(&mut r)?;
        let present = r.bitmap(rows)?;
        let index = match ty {
            FieldType::Keyword | FieldType::KeywordArray | FieldType::Bool => {
                let n = r.u32()?;
                let mut terms = HashMap::new();
                for _ in 0..n {
                    let term = match r.u8()? {
                        0 => Term::Str(r.str()?),
                        1 => Term::Bool(false),
                        2 => Term::Bool(true),
                        _ => return None,
                    };
                    terms.insert(term, r.bitmap(rows)?);
                }
                FieldIndex::Terms(terms)
            }
            FieldType::Text(_) | FieldType::Sparse => {
                let n = usize::try_from(r.u64()?).ok()?;
                let at = r.at;
                r.take(n)?;
                // Read in place from the shared bytes (the mapped file), never copied.
                let part = blob.slice(at, n)?;
                match ty {
                    FieldType::Text(_) => {
                        let t = TextIndex::open(part)?;
                        (t.rows() <= rows).then_some(())?;
                        FieldIndex::Text(t)
                    }
                    FieldType::Sparse
                    | FieldType::Keyword
                    | FieldType::Integer
                    | FieldType::Float
                    | FieldType::Bool
                    | FieldType::Datetime
                    | FieldType::KeywordArray => FieldIndex::Sparse(SparseIndex::open(part)?),
                }
            }
            FieldType::Integer | FieldType::Float | FieldType::Datetime => {
                let n = usize::try_from(r.u64()?).ok()?;
                // 12 bytes a pair: a count the file cannot hold is refused before allocating.
                if n > (body.len() - r.at) / 12 {
                    return None;
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let v = f64::from_le_bytes(r.take(8)?.try_into().ok()?);
                    let row = r.u32()?;
                    if row >= rows {
                        return None;
                    }
                    entries.push((v, row));
                }
                let mut c = NumericColumn {
                    entries,
                    ..NumericColumn::default()
                };
                c.seal();
                FieldIndex::Numbers(c)
            }
        };
        if fields.insert(key, Field { ty, index, present }).is_some() {
            return None;
        }
    }
    (r.at == body.len()).then_some(FieldIndexes { fields, rows })
}
