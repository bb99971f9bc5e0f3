//! One segment's index of one `text` field: per term the rows holding it with their term
//! frequencies, per row the field's length in terms, and the term dictionary.
//!
//! The mutable segment appends to a hash map of growable lists. Sealing encodes it once into
//! the form below, which a sealed segment keeps in its field index file and reads in place
//! from the mapped file (nothing is decoded at open beyond the header):
//!
//! ```text
//! "QTXT" u32 format, u32 rows, u32 docs (rows with a value), u64 total length,
//! u32 terms, u32 FST bytes, u64 posting bytes,
//! rows × u32 length (0: no value),
//! terms × (u64 posting offset, u32 document frequency, u16 max tf, u16 min length),
//! the FST (term → ordinal, terms in byte order),
//! postings: per term, blocks of 128 (the last one padded) of
//!   u32 last row, u16 max tf, u16 min length, u8 row bits, u8 tf bits, u16 count,
//!   bit-packed row deltas (from the previous block's last row), bit-packed tf − 1.
//! ```
//!
//! Little-endian throughout. The enclosing file is checksummed; still, every offset and count
//! read here is bounds-checked, so a damaged index yields fewer postings, never a panic.
//! Block maxima (max tf and min length) bound a block's BM25 contribution for pruning.
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bitpacking::{BitPacker, BitPacker4x};

use super::{has_header, le_u16, le_u32, le_u64};

const MAGIC: &[u8; 4] = b"QTXT";
const FORMAT: u32 = 1;
const HEADER: usize = 40;
const TERM_ENTRY: usize = 16;
const BLOCK_HEADER: usize = 12;
/// Postings per block.
pub(crate) const BLOCK: usize = BitPacker4x::BLOCK_LEN;

/// Bytes shared with their owner (a mapped file or a vector): a cheap-to-clone slice.
#[derive(Clone)]
pub struct Blob {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl Blob {
    /// All of `owner`.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Blob {
        let len = (*owner).as_ref().len();
        Blob {
            owner,
            start: 0,
            len,
        }
    }

    /// Bytes `start..start + len` of this blob, if in range.
    pub fn slice(&self, start: usize, len: usize) -> Option<Blob> {
        let end = start.checked_add(len)?;
        (end <= self.len).then(|| Blob {
            owner: Arc::clone(&self.owner),
            start: self.start + start,
            len,
        })
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.len)
    }
}

#[derive(Debug, Clone, Default)]
struct Postings {
    rows: Vec<u32>,
    tfs: Vec<u32>,
}

/// The mutable form.
#[derive(Debug, Clone, Default)]
struct Building {
    terms: HashMap<Box<str>, Postings>,
    lens: Vec<u32>,
    docs: u32,
    total: u64,
}

/// The sealed form, read in place.
#[derive(Clone)]
struct Sealed {
    blob: Blob,
    rows: u32,
    docs: u32,
    total: u64,
    terms: u32,
    dict: fst::Map<Blob>,
    table_at: usize,
    postings_at: usize,
    postings_len: usize,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(rows {}, docs {}, terms {})",
            self.rows, self.docs, self.terms
        )
    }
}

/// A term's entry: where its postings are, how many, and their maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermInfo {
    /// Rows holding the term (dead ones included).
    pub df: u32,
    /// The largest term frequency of any row.
    pub max_tf: u32,
    /// The smallest field length of any row holding it.
    pub min_len: u32,
    offset: usize,
}

/// One segment's index of one text field.
#[derive(Debug, Clone)]
pub struct TextIndex(Inner);

#[derive(Debug, Clone)]
enum Inner {
    Building(Building),
    Sealed(Sealed),
}

impl Default for TextIndex {
    fn default() -> Self {
        TextIndex(Inner::Building(Building::default()))
    }
}

impl TextIndex {
    /// An empty, mutable index.
    pub fn new() -> TextIndex {
        TextIndex::default()
    }

    /// Indexes `row` (rows arrive in increasing order, each once) with its terms. A row with
    /// no terms still counts as a document of length 0 when `has_value`.
    pub fn insert(&mut self, row: u32, terms: &[String]) {
        let Inner::Building(b) = &mut self.0 else {
            debug_assert!(false, "insert into a sealed text index");
            return;
        };
        if b.lens.len() <= row as usize {
            b.lens.resize(row as usize + 1, 0);
        }
        if terms.is_empty() {
            return;
        }
        let mut tf: HashMap<&str, u32> = HashMap::with_capacity(terms.len());
        for t in terms {
            *tf.entry(t.as_str()).or_default() += 1;
        }
        for (t, n) in tf {
            let p = match b.terms.get_mut(t) {
                Some(p) => p,
                None => b.terms.entry(t.into()).or_default(),
            };
            p.rows.push(row);
            p.tfs.push(n);
        }
        let len = u32::try_from(terms.len()).unwrap_or(u32::MAX);
        b.lens[row as usize] = len;
        b.docs += 1;
        b.total += u64::from(len);
    }

    /// Rows covered (one past the last row indexed or sealed).
    pub fn rows(&self) -> u32 {
        match &self.0 {
            Inner::Building(b) => b.lens.len() as u32,
            Inner::Sealed(s) => s.rows,
        }
    }

    /// Rows with a value (dead ones included) and their total length.
    pub fn docs_and_total(&self) -> (u32, u64) {
        match &self.0 {
            Inner::Building(b) => (b.docs, b.total),
            Inner::Sealed(s) => (s.docs, s.total),
        }
    }

    /// The field's length in terms at `row` (0: no value, or out of range).
    pub fn len_of(&self, row: u32) -> u32 {
        match &self.0 {
            Inner::Building(b) => b.lens.get(row as usize).copied().unwrap_or(0),
            Inner::Sealed(s) => le_u32(s.blob.as_ref(), HEADER + 4 * row as usize).unwrap_or(0),
        }
    }

    /// A term's entry, if the segment holds it.
    pub fn term(&self, term: &str) -> Option<TermInfo> {
        match &self.0 {
            Inner::Building(b) => {
                let p = b.terms.get(term)?;
                Some(TermInfo {
                    df: p.rows.len() as u32,
                    max_tf: p.tfs.iter().copied().max().unwrap_or(0),
                    min_len: p
                        .rows
                        .iter()
                        .map(|&r| b.lens.get(r as usize).copied().unwrap_or(0))
                        .min()
                        .unwrap_or(0),
                    offset: 0,
                })
            }
            Inner::Sealed(s) => {
                let ord = usize::try_from(s.dict.get(term)?).ok()?;
                if ord >= s.terms as usize {
                    return None;
                }
                let b = s.blob.as_ref();
                let at = s.table_at + ord * TERM_ENTRY;
                Some(TermInfo {
                    offset: usize::try_from(le_u64(b, at)?).ok()?,
                    df: le_u32(b, at + 8)?,
                    max_tf: u32::from(le_u16(b, at + 12)?),
                    min_len: u32::from(le_u16(b, at + 14)?),
                })
            }
        }
    }

    /// Calls `f` with the postings of `term` (its entry `info`, from [`TextIndex::term`]) a
    /// block at a time: rows ascending, and their term frequencies. `f` also gets the block's
    /// maxima (max tf, min length) and returns whether to go on.
    pub fn for_each_block(
        &self,
        term: &str,
        info: &TermInfo,
        mut f: impl FnMut(&[u32], &[u32], (u32, u32)) -> bool,
    ) {
        match &self.0 {
            Inner::Building(b) => {
                if let Some(p) = b.terms.get(term) {
                    for (rows, tfs) in p.rows.chunks(BLOCK).zip(p.tfs.chunks(BLOCK)) {
                        if !f(rows, tfs, (info.max_tf, info.min_len)) {
                            return;
                        }
                    }
                }
            }
            Inner::Sealed(s) => s.for_each_block(info, f),
        }
    }

    /// Calls `f` with every (row, tf) of `term`.
    pub fn for_each_posting(&self, term: &str, mut f: impl FnMut(u32, u32)) {
        if let Some(info) = self.term(term) {
            self.for_each_block(term, &info, |rows, tfs, _| {
                rows.iter().zip(tfs).for_each(|(&r, &t)| f(r, t));
                true
            });
        }
    }

    /// Turns the mutable form into the sealed one (a no-op when sealed), covering `rows` rows.
    pub fn seal(&mut self, rows: u32) {
        if let Inner::Building(b) = &self.0 {
            let bytes = encode(b, rows);
            let blob = Blob::new(Arc::new(bytes));
            match Sealed::open(blob) {
                Some(s) => self.0 = Inner::Sealed(s),
                None => debug_assert!(false, "invariant: an encoded index opens"),
            }
        }
    }

    /// The sealed form's bytes (sealing a copy first if mutable).
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            Inner::Building(b) => encode(b, b.lens.len() as u32),
            Inner::Sealed(s) => s.blob.as_ref().to_vec(),
        }
    }

    /// Opens the sealed form in place; `None` unless its header and sections are consistent.
    pub fn open(blob: Blob) -> Option<TextIndex> {
        Sealed::open(blob).map(|s| TextIndex(Inner::Sealed(s)))
    }
}

fn encode(b: &Building, rows: u32) -> Vec<u8> {
    let mut terms: Vec<(&str, &Postings)> = b.terms.iter().map(|(k, p)| (&**k, p)).collect();
    terms.sort_unstable_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    let mut builder = fst::MapBuilder::memory();
    for (ord, (t, _)) in terms.iter().enumerate() {
        builder
            .insert(t.as_bytes(), ord as u64)
            .expect("invariant: terms sorted and distinct");
    }
    let dict = builder
        .into_inner()
        .expect("invariant: writing to memory cannot fail");
    let len_of = |r: u32| b.lens.get(r as usize).copied().unwrap_or(0);
    let mut table = Vec::with_capacity(terms.len() * TERM_ENTRY);
    let mut postings = Vec::new();
    let packer = BitPacker4x::new();
    let mut rows_buf = [0u32; BLOCK];
    let mut tfs_buf = [0u32; BLOCK];
    let mut packed = [0u8; 4 * BLOCK];
    for (_, p) in &terms {
        let max_tf = p.tfs.iter().copied().max().unwrap_or(0);
        let min_len = p.rows.iter().map(|&r| len_of(r)).min().unwrap_or(0);
        table.extend_from_slice(&(postings.len() as u64).to_le_bytes());
        table.extend_from_slice(&(p.rows.len() as u32).to_le_bytes());
        table.extend_from_slice(&sat16(max_tf).to_le_bytes());
        table.extend_from_slice(&sat16(min_len).to_le_bytes());
        let mut prev = 0u32;
        for (rows, tfs) in p.rows.chunks(BLOCK).zip(p.tfs.chunks(BLOCK)) {
            let n = rows.len();
            let last = rows[n - 1];
            rows_buf[..n].copy_from_slice(rows);
            rows_buf[n..].fill(last);
            for (d, &t) in tfs_buf.iter_mut().zip(tfs) {
                *d = t.saturating_sub(1);
            }
            tfs_buf[n..].fill(0);
            let block_max_tf = tfs.iter().copied().max().unwrap_or(0);
            let block_min_len = rows.iter().map(|&r| len_of(r)).min().unwrap_or(0);
            let row_bits = packer.num_bits_sorted(prev, &rows_buf);
            let tf_bits = packer.num_bits(&tfs_buf);
            postings.extend_from_slice(&last.to_le_bytes());
            postings.extend_from_slice(&sat16(block_max_tf).to_le_bytes());
            postings.extend_from_slice(&sat16(block_min_len).to_le_bytes());
            postings.push(row_bits);
            postings.push(tf_bits);
            postings.extend_from_slice(&(n as u16).to_le_bytes());
            let w = packer.compress_sorted(prev, &rows_buf, &mut packed, row_bits);
            postings.extend_from_slice(&packed[..w]);
            let w = packer.compress(&tfs_buf, &mut packed, tf_bits);
            postings.extend_from_slice(&packed[..w]);
            prev = last;
        }
    }
    let mut out =
        Vec::with_capacity(HEADER + 4 * rows as usize + table.len() + dict.len() + postings.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&b.docs.to_le_bytes());
    out.extend_from_slice(&b.total.to_le_bytes());
    out.extend_from_slice(&(terms.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    out.extend_from_slice(&(postings.len() as u64).to_le_bytes());
    for r in 0..rows {
        out.extend_from_slice(&len_of(r).to_le_bytes());
    }
    out.extend_from_slice(&table);
    out.extend_from_slice(&dict);
    out.extend_from_slice(&postings);
    out
}

/// A maximum tf or minimum length in 16 bits: saturating keeps a max an upper bound, and a
/// min length above 65,535 only loosens the bound (smaller length, higher score).
fn sat16(x: u32) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}

impl Sealed {
    fn open(blob: Blob) -> Option<Sealed> {
        let b = blob.as_ref();
        if !has_header(b, MAGIC, FORMAT) {
            return None;
        }
        let rows = le_u32(b, 8)?;
        let docs = le_u32(b, 12)?;
        let total = le_u64(b, 16)?;
        let terms = le_u32(b, 24)?;
        let dict_len = le_u32(b, 28)? as usize;
        let postings_len = usize::try_from(le_u64(b, 32)?).ok()?;
        let table_at = HEADER.checked_add((rows as usize).checked_mul(4)?)?;
        let dict_at = table_at.checked_add((terms as usize).checked_mul(TERM_ENTRY)?)?;
        let postings_at = dict_at.checked_add(dict_len)?;
        if postings_at.checked_add(postings_len)? != b.len() || docs > rows {
            return None;
        }
        let dict = fst::Map::new(blob.slice(dict_at, dict_len)?).ok()?;
        // The FST's own checksum: its reader trusts its bytes (a damaged node would panic).
        if dict.as_fst().verify().is_err() || dict.len() != terms as usize {
            return None;
        }
        Some(Sealed {
            blob,
            rows,
            docs,
            total,
            terms,
            dict,
            table_at,
            postings_at,
            postings_len,
        })
    }

    fn for_each_block(
        &self,
        info: &TermInfo,
        mut f: impl FnMut(&[u32], &[u32], (u32, u32)) -> bool,
    ) {
        let b = self.blob.as_ref();
        let Some(p) = b.get(self.postings_at..self.postings_at + self.postings_len) else {
            return;
        };
        let packer = BitPacker4x::new();
        let mut rows = [0u32; BLOCK];
        let mut tfs = [0u32; BLOCK];
        let mut at = info.offset;
        let mut left = info.df as usize;
        let mut prev = 0u32;
        while left > 0 {
            let Some(h) = p.get(at..at + BLOCK_HEADER) else {
                return;
            };
            let last = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let max_tf = u32::from(u16::from_le_bytes([h[4], h[5]]));
            let min_len = u32::from(u16::from_le_bytes([h[6], h[7]]));
            let (row_bits, tf_bits) = (h[8], h[9]);
            let n = usize::from(u16::from_le_bytes([h[10], h[11]]));
            if row_bits > 32 || tf_bits > 32 || n == 0 || n > BLOCK || n > left {
                return;
            }
            let (rw, tw) = (16 * row_bits as usize, 16 * tf_bits as usize);
            let start = at + BLOCK_HEADER;
            let (Some(pr), Some(pt)) =
                (p.get(start..start + rw), p.get(start + rw..start + rw + tw))
            else {
                return;
            };
            packer.decompress_sorted(prev, pr, &mut rows, row_bits);
            packer.decompress(pt, &mut tfs, tf_bits);
            tfs[..n].iter_mut().for_each(|t| *t = t.saturating_add(1));
            // Rows past the segment (a damaged block) are dropped, not trusted.
            let keep = rows[..n].iter().take_while(|&&r| r < self.rows).count();
            if !f(&rows[..keep], &tfs[..keep], (max_tf, min_len)) || keep < n {
                return;
            }
            prev = last;
            at = start + rw + tw;
            left -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn sealed_postings_equal_the_mutable_ones() {
        let mut t = TextIndex::new();
        // 1000 rows: "common" everywhere, "rare" in every 97th row, tf growing with the row.
        for r in 0..1000u32 {
            let mut words = vec!["common".to_owned(); 1 + (r as usize % 5)];
            if r % 97 == 0 {
                words.extend(terms("rare rare"));
            }
            if r % 3 == 1 {
                continue; // no value
            }
            t.insert(r, &words);
        }
        let collect = |t: &TextIndex, term: &str| {
            let mut v = Vec::new();
            t.for_each_posting(term, |r, f| v.push((r, f)));
            v
        };
        let before: Vec<_> = ["common", "rare", "absent"]
            .iter()
            .map(|w| {
                (
                    collect(&t, w),
                    t.term(w).map(|i| (i.df, i.max_tf, i.min_len)),
                )
            })
            .collect();
        let lens: Vec<u32> = (0..1000).map(|r| t.len_of(r)).collect();
        let stats = t.docs_and_total();
        let mut s = t.clone();
        s.seal(1000);
        let bytes = s.to_bytes();
        let reopened = TextIndex::open(Blob::new(Arc::new(bytes.clone()))).unwrap();
        for idx in [&s, &reopened] {
            let after: Vec<_> = ["common", "rare", "absent"]
                .iter()
                .map(|w| {
                    (
                        collect(idx, w),
                        idx.term(w).map(|i| (i.df, i.max_tf, i.min_len)),
                    )
                })
                .collect();
            assert_eq!(before, after);
            assert_eq!(lens, (0..1000).map(|r| idx.len_of(r)).collect::<Vec<_>>());
            assert_eq!(idx.docs_and_total(), stats);
        }
        assert_eq!(before[1].0.len(), 7);
        assert!(before[1].0.iter().all(|&(r, f)| r % 97 == 0 && f == 2));
        // Damaged or truncated forms never panic: they open as nothing or yield fewer postings.
        for cut in [0, 10, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(TextIndex::open(Blob::new(Arc::new(bytes[..cut].to_vec()))).is_none());
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            if let Some(x) = TextIndex::open(Blob::new(Arc::new(b))) {
                let _ = collect(&x, "common");
                let _ = collect(&x, "rare");
                let _ = x.len_of(999);
            }
        }
    }
}
