//! Readers for every input format, all streaming (a row at a time or a record batch at a time,
//! never a whole file): JSONL, CSV, Parquet, NumPy `.npy`, `.fvecs`/`.bvecs`/`.ivecs`; gzip
//! and zstd inputs are decompressed on the fly.
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{id_from_json, num_id, str_id};
use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use quiver_proto::v1 as pb;
use serde_json::{Map, Value};

/// One input row, before validation against the collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: Option<pb::PointId>,
    pub vector: Vec<f32>,
    pub payload: Option<Map<String, Value>>,
}

/// What the reader produced at one position: a row, or why the row is unusable.
pub type Item = std::result::Result<Row, String>;

/// How input fields map to id, vector and payload.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub id_field: Option<String>,
    pub vector_field: Option<String>,
    pub payload_fields: Option<Vec<String>>,
    /// JSONL side file with one object per row (ids and payloads) for `.npy` inputs.
    pub side: Option<PathBuf>,
}

/// A line of a text input that could not be read (an I/O error or invalid UTF-8).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: read failed")]
pub struct ReadFailed {
    /// The 1-based line.
    pub line: u64,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A streaming reader over one file.
pub trait Source: Send {
    /// The next item and its 1-based position (line for text formats, row otherwise); `None`
    /// at the end. An `Err` is fatal (unreadable or truncated file).
    fn next_item(&mut self) -> Result<Option<(u64, Item)>>;
    /// "line" or "row": what a position counts.
    fn unit(&self) -> &'static str;
    /// A one-line description of what was detected (format, columns, dimension).
    fn summary(&self) -> String;
}

/// Counts the compressed (on-disk) bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The format named by a path's extension (after `.gz` / `.zst`), and the compression.
fn format_of(path: &Path) -> Result<(String, Option<&'static str>)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (base, comp) = if let Some(b) = name.strip_suffix(".gz") {
        (b.to_owned(), Some("gzip"))
    } else if let Some(b) = name.strip_suffix(".zst") {
        (b.to_owned(), Some("zstd"))
    } else {
        (name, None)
    };
    let ext = base.rsplit('.').next().unwrap_or_default().to_owned();
    Ok((ext, comp))
}

/// Opens `path` as a decompressed byte stream, counting raw bytes into `read`.
fn open_raw(path: &Path, read: &Arc<AtomicU64>) -> Result<Box<dyn Read + Send>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let counted = Counting {
        inner: f,
        read: Arc::clone(read),
    };
    Ok(match format_of(path)?.1 {
        Some("gzip") => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 16,
            counted,
        ))),
        Some(_) => Box::new(
            zstd::stream::read::Decoder::new(counted)
                .with_context(|| format!("{}: not a zstd stream", path.display()))?,
        ),
        None => Box::new(counted),
    })
}

/// Opens a reader for `path`, chosen by its extension.
pub fn open(path: &Path, mapping: &Mapping, read: &Arc<AtomicU64>) -> Result<Box<dyn Source>> {
    let (ext, comp) = format_of(path)?;
    let name = path.display().to_string();
    Ok(match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Box::new(Jsonl {
            lines: BufReader::with_capacity(1 << 20, open_raw(path, read)?),
            line: 0,
            buf: String::new(),
            mapping: mapping.clone(),
            points: false,
        }),
        "csv" => Box::new(Csv::open(open_raw(path, read)?, mapping, &name)?),
        "fvecs" | "bvecs" | "ivecs" => Box::new(Vecs {
            r: BufReader::with_capacity(1 << 20, open_raw(path, read)?),
            kind: ext.clone(),
            row: 0,
            dim: None,
        }),
        "npy" => Box::new(Npy::open(open_raw(path, read)?, mapping, &name)?),
        "parquet" => {
            if comp.is_some() {
                bail!(
                    "{name}: Parquet compresses its pages itself; give the .parquet file, not a compressed copy"
                );
            }
            Box::new(Parquet::open(path, mapping, read)?)
        }
        "h5" | "hdf5" => bail!(
            "{name}: HDF5 is not supported (the Rust HDF5 crates need the C libhdf5 at build time); \
             convert the `train` dataset with h5py: numpy.save('train.npy', f['train'][:])"
        ),
        other => bail!(
            "{name}: unknown format {other:?}; expected .jsonl, .csv, .parquet, .npy, .fvecs, .bvecs or .ivecs (optionally .gz or .zst)"
        ),
    })
}

/// Opens `path` (`-` for stdin) as points JSONL, whatever its extension and without
/// decompression: `{"id", "vector", "payload"}` per line, other keys ignored (`quiver upsert`).
pub fn open_points(path: &Path, read: &Arc<AtomicU64>) -> Result<Box<dyn Source>> {
    let raw: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).with_context(|| format!("{}: cannot open", path.display()))?)
    };
    Ok(Box::new(Jsonl {
        lines: BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: raw,
                read: Arc::clone(read),
            },
        ),
        line: 0,
        buf: String::new(),
        mapping: Mapping::default(),
        points: true,
    }))
}

/// Builds a row from a points-JSONL object (`quiver upsert`): `id` (required), `vector` (a JSON
/// array of numbers), `payload` (an object, optional); other keys are ignored. Errors name the
/// field.
pub fn point_from_object(mut obj: Map<String, Value>) -> Item {
    let id = obj.remove("id").ok_or("field 'id' is missing")?;
    let id = id_from_json(&id).ok_or_else(|| {
        format!("field 'id': {id} is not a non-negative integer or a non-empty string")
    })?;
    let vector = numbers(
        &obj.remove("vector").ok_or("field 'vector' is missing")?,
        "field 'vector'",
    )?;
    let payload = match obj.remove("payload") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(other) => {
            return Err(format!(
                "field 'payload': expected a JSON object, got {other}"
            ));
        }
    };
    Ok(Row {
        id: Some(id),
        vector,
        payload,
    })
}

/// A JSON array of numbers as a vector; errors name `what` (and the element: `what[i]`).
pub fn numbers(v: &Value, what: &str) -> std::result::Result<Vec<f32>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| format!("{what}: expected a JSON array of numbers"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| format!("{what}[{i}]: {x} is not a number"))
        })
        .collect()
}

/// Builds a row from a JSON object: id, vector and payload fields per `mapping`.
/// Payload: `payload_fields` if given; otherwise the `payload` object (if any) plus every other
/// key except the id and vector.
pub fn row_from_object(mut obj: Map<String, Value>, m: &Mapping) -> Item {
    let id_key = m.id_field.as_deref().unwrap_or("id");
    let id = match obj.remove(id_key) {
        None | Some(Value::Null) => return Err(format!("missing id (field '{id_key}')")),
        Some(v) => Some(id_from_json(&v).ok_or_else(|| {
            format!("field '{id_key}': {v} is not a non-negative integer or a non-empty string")
        })?),
    };
    let vkey = match &m.vector_field {
        Some(k) => k.clone(),
        None if obj.contains_key("vector") => "vector".into(),
        None if obj.contains_key("embedding") => "embedding".into(),
        None => return Err("missing vector (no field 'vector' or 'embedding')".into()),
    };
    let vector = vector_of(
        obj.remove(&vkey)
            .ok_or_else(|| format!("missing vector (field '{vkey}')"))?,
        &vkey,
    )?;
    let payload = match &m.payload_fields {
        Some(fields) => {
            let p: Map<String, Value> = fields
                .iter()
                .filter_map(|f| obj.remove(f).map(|v| (f.clone(), v)))
                .collect();
            (!p.is_empty()).then_some(p)
        }
        None => {
            let mut p = match obj.remove("payload") {
                Some(Value::Object(o)) => o,
                None | Some(Value::Null) => Map::new(),
                Some(other) => {
                    return Err(format!(
                        "field 'payload': expected a JSON object, got {other}"
                    ));
                }
            };
            p.extend(obj);
            (!p.is_empty()).then_some(p)
        }
    };
    Ok(Row {
        id,
        vector,
        payload,
    })
}

fn vector_of(v: Value, key: &str) -> std::result::Result<Vec<f32>, String> {
    let arr = match v {
        Value::Array(a) => a,
        Value::String(s) => serde_json::from_str::<Vec<Value>>(&s)
            .map_err(|e| format!("field '{key}': not a JSON array of numbers: {e}"))?,
        other @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_)) => {
            return Err(format!(
                "field '{key}': expected an array of numbers, got {other}"
            ));
        }
    };
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| format!("field '{key}'[{i}]: {x} is not a number"))
        })
        .collect()
}

/// JSONL, an object per line (blank lines skipped, still counted).
struct Jsonl<R> {
    lines: R,
    line: u64,
    buf: String,
    mapping: Mapping,
    /// Strict points lines ([`point_from_object`]) instead of `mapping`.
    points: bool,
}

impl<R: BufRead + Send> Source for Jsonl<R> {
    fn next_item(&mut self) -> Result<Option<(u64, Item)>> {
        loop {
            self.buf.clear();
            let n = self
                .lines
                .read_line(&mut self.buf)
                .map_err(|source| ReadFailed {
                    line: self.line + 1,
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            let item = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(o)) if self.points => point_from_object(o),
                Ok(Value::Object(o)) => row_from_object(o, &self.mapping),
                Ok(_) => Err("expected a JSON object".into()),
                Err(e) => Err(format!("invalid JSON at column {}: {e}", e.column())),
            };
            return Ok(Some((self.line, item)));
        }
    }
    fn unit(&self) -> &'static str {
        "line"
    }
    fn summary(&self) -> String {
        if self.points {
            return "JSONL points: {\"id\", \"vector\", \"payload\"} per line".into();
        }
        format!(
            "JSONL: id '{}', vector '{}', payload: {}",
            self.mapping.id_field.as_deref().unwrap_or("id"),
            self.mapping
                .vector_field
                .as_deref()
                .unwrap_or("vector|embedding"),
            self.mapping
                .payload_fields
                .as_ref()
                .map_or("every other key".into(), |f| f.join(","))
        )
    }
}

/// A CSV cell as a payload value: integers, floats and booleans keep their type.
fn cell_value(s: &str) -> Option<Value> {
    if s.is_empty() {
        return None;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Some(Value::from(f));
    }
    match s {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => Some(Value::String(s.to_owned())),
    }
}

struct Csv {
    rows: csv::StringRecordsIntoIter<Box<dyn Read + Send>>,
    id_col: usize,
    /// One JSON-array column, or the `v0..vN` columns in order.
    vector: Result<usize, Vec<usize>>,
    payload: Vec<(usize, String)>,
    headers: Vec<String>,
    line: u64,
}

impl Csv {
    fn open(r: Box<dyn Read + Send>, m: &Mapping, name: &str) -> Result<Csv> {
        let mut rd = csv::ReaderBuilder::new().has_headers(true).from_reader(r);
        let headers: Vec<String> = rd
            .headers()
            .with_context(|| format!("{name}: cannot read the CSV header"))?
            .iter()
            .map(str::to_owned)
            .collect();
        let find = |k: &str| headers.iter().position(|h| h == k);
        let id_key = m.id_field.as_deref().unwrap_or("id");
        let id_col = find(id_key).ok_or_else(|| {
            anyhow!(
                "{name}: no id column '{id_key}' (header: {})",
                headers.join(",")
            )
        })?;
        let vector = match &m.vector_field {
            Some(k) => Ok(find(k).ok_or_else(|| anyhow!("{name}: no vector column '{k}'"))?),
            None => match find("vector").or_else(|| find("embedding")) {
                Some(c) => Ok(c),
                None => {
                    let mut vs: Vec<(usize, usize)> = headers
                        .iter()
                        .enumerate()
                        .filter_map(|(c, h)| Some((h.strip_prefix('v')?.parse().ok()?, c)))
                        .collect();
                    vs.sort_unstable();
                    if vs.is_empty() || vs.iter().enumerate().any(|(i, (n, _))| *n != i) {
                        bail!(
                            "{name}: no vector column: expected 'vector' (a JSON array) or v0..vN columns"
                        );
                    }
                    Err(vs.into_iter().map(|(_, c)| c).collect::<Vec<usize>>())
                }
            },
        };
        let used: Vec<usize> = match &vector {
            Ok(c) => vec![id_col, *c],
            Err(cs) => std::iter::once(id_col).chain(cs.iter().copied()).collect(),
        };
        let payload = headers
            .iter()
            .enumerate()
            .filter(|(c, h)| {
                !used.contains(c)
                    && m.payload_fields
                        .as_ref()
                        .is_none_or(|f| f.iter().any(|x| x == *h))
            })
            .map(|(c, h)| (c, h.clone()))
            .collect();
        Ok(Csv {
            rows: rd.into_records(),
            id_col,
            vector,
            payload,
            headers,
            line: 1,
        })
    }
}

impl Source for Csv {
    fn next_item(&mut self) -> Result<Option<(u64, Item)>> {
        let Some(rec) = self.rows.next() else {
            return Ok(None);
        };
        self.line += 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) if e.is_io_error() => return Err(anyhow!("line {}: {e}", self.line)),
            Err(e) => return Ok(Some((self.line, Err(format!("unparsable CSV: {e}"))))),
        };
        if let Some(p) = rec.position() {
            self.line = p.line();
        }
        let item = (|| -> Item {
            let id_text = rec.get(self.id_col).unwrap_or_default();
            if id_text.is_empty() {
                return Err(format!(
                    "missing id (column '{}')",
                    self.headers[self.id_col]
                ));
            }
            let id = match id_text.parse::<u64>() {
                Ok(n) => num_id(n),
                Err(_) => str_id(id_text),
            };
            let vector = match &self.vector {
                Ok(c) => vector_of(
                    Value::String(rec.get(*c).unwrap_or_default().to_owned()),
                    &self.headers[*c],
                )?,
                Err(cols) => cols
                    .iter()
                    .map(|&c| {
                        let s = rec.get(c).unwrap_or_default();
                        s.trim().parse::<f32>().map_err(|_| {
                            format!("column '{}': {s:?} is not a number", self.headers[c])
                        })
                    })
                    .collect::<std::result::Result<_, _>>()?,
            };
            let payload: Map<String, Value> = self
                .payload
                .iter()
                .filter_map(|(c, h)| Some((h.clone(), cell_value(rec.get(*c)?)?)))
                .collect();
            Ok(Row {
                id: Some(id),
                vector,
                payload: (!payload.is_empty()).then_some(payload),
            })
        })();
        Ok(Some((self.line, item)))
    }
    fn unit(&self) -> &'static str {
        "line"
    }
    fn summary(&self) -> String {
        let v = match &self.vector {
            Ok(c) => format!("'{}' (JSON array)", self.headers[*c]),
            Err(cs) => format!("v0..v{} ({} columns)", cs.len() - 1, cs.len()),
        };
        let p: Vec<&str> = self.payload.iter().map(|(_, h)| h.as_str()).collect();
        format!(
            "CSV: id '{}', vector {v}, payload [{}]",
            self.headers[self.id_col],
            p.join(",")
        )
    }
}

/// `.fvecs` (f32), `.bvecs` (u8) and `.ivecs` (i32): each record is an i32 dimension and then
/// the values. Ids are row numbers (0-based).
struct Vecs<R> {
    r: R,
    kind: String,
    row: u64,
    dim: Option<usize>,
}

impl<R: Read + Send> Source for Vecs<R> {
    fn next_item(&mut self) -> Result<Option<(u64, Item)>> {
        let mut d = [0u8; 4];
        match read_full(&mut self.r, &mut d)? {
            0 => return Ok(None),
            4 => {}
            _ => bail!("row {}: truncated record header", self.row + 1),
        }
        let dim = i32::from_le_bytes(d);
        if dim <= 0 || dim > 1 << 20 {
            bail!(
                "row {}: bad dimension {dim} (not a {} file?)",
                self.row + 1,
                self.kind
            );
        }
        let dim = dim as usize;
        let width = if self.kind == "bvecs" { 1 } else { 4 };
        let mut buf = vec![0u8; dim * width];
        if read_full(&mut self.r, &mut buf)? != buf.len() {
            bail!(
                "row {}: truncated: the file ends inside the record",
                self.row + 1
            );
        }
        self.row += 1;
        let vector: Vec<f32> = match self.kind.as_str() {
            "bvecs" => buf.iter().map(|&b| f32::from(b)).collect(),
            "ivecs" => buf
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            _ => buf
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        };
        let item = match self.dim {
            Some(first) if first != dim => {
                Err(format!("dimension {dim}, the file's first row has {first}"))
            }
            _ => {
                self.dim.get_or_insert(dim);
                Ok(Row {
                    id: Some(num_id(self.row - 1)),
                    vector,
                    payload: None,
                })
            }
        };
        Ok(Some((self.row, item)))
    }
    fn unit(&self) -> &'static str {
        "row"
    }
    fn summary(&self) -> String {
        format!("{}: ids are row numbers from 0", self.kind)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// NumPy `.npy`: a 2-D little-endian float32, float16 or float64 array in C order, streamed a
/// row at a time. Ids are row numbers, or come from a JSONL side file (`--side`), which can
/// also carry payloads.
struct Npy {
    r: Box<dyn Read + Send>,
    dtype: &'static str,
    rows: u64,
    dim: usize,
    row: u64,
    side: Option<Box<dyn BufRead + Send>>,
}

impl Npy {
    fn open(mut r: Box<dyn Read + Send>, m: &Mapping, name: &str) -> Result<Npy> {
        let mut magic = [0u8; 8];
        if read_full(&mut r, &mut magic)? != 8 || &magic[..6] != b"\x93NUMPY" {
            bail!("{name}: not a .npy file");
        }
        let hlen = if magic[6] == 1 {
            let mut l = [0u8; 2];
            read_full(&mut r, &mut l)?;
            u16::from_le_bytes(l) as usize
        } else {
            let mut l = [0u8; 4];
            read_full(&mut r, &mut l)?;
            u32::from_le_bytes(l) as usize
        };
        let mut h = vec![0u8; hlen];
        if read_full(&mut r, &mut h)? != hlen {
            bail!("{name}: truncated header");
        }
        let h = String::from_utf8_lossy(&h);
        let field = |k: &str| -> Option<String> {
            let at = h.find(&format!("'{k}':"))? + k.len() + 3;
            Some(h[at..].trim_start().to_owned())
        };
        let descr = field("descr").ok_or_else(|| anyhow!("{name}: header has no descr"))?;
        let dtype = if descr.starts_with("'<f4'") {
            "float32"
        } else if descr.starts_with("'<f2'") {
            "float16"
        } else if descr.starts_with("'<f8'") {
            "float64"
        } else {
            bail!(
                "{name}: dtype {} is not supported (float32, float16 or float64, little-endian)",
                descr.split(',').next().unwrap_or_default()
            );
        };
        if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
            bail!(
                "{name}: Fortran-order arrays are not supported; save with numpy.ascontiguousarray"
            );
        }
        let shape = field("shape").ok_or_else(|| anyhow!("{name}: header has no shape"))?;
        let dims: Vec<u64> = shape
            .trim_start_matches('(')
            .split(')')
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let [rows, dim] = dims[..] else {
            bail!(
                "{name}: expected a 2-D array, shape is ({})",
                dims.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let side = match &m.side {
            Some(p) => Some(Box::new(BufReader::new(
                File::open(p).with_context(|| format!("{}: cannot open", p.display()))?,
            )) as Box<dyn BufRead + Send>),
            None => None,
        };
        Ok(Npy {
            r,
            dtype,
            rows,
            dim: dim as usize,
            row: 0,
            side,
        })
    }
}

impl Source for Npy {
    fn next_item(&mut self) -> Result<Option<(u64, Item)>> {
        if self.row == self.rows {
            return Ok(None);
        }
        let width = match self.dtype {
            "float16" => 2,
            "float64" => 8,
            _ => 4,
        };
        let mut buf = vec![0u8; self.dim * width];
        if read_full(&mut self.r, &mut buf)? != buf.len() {
            bail!(
                "row {}: truncated: the header promises {} rows",
                self.row + 1,
                self.rows
            );
        }
        self.row += 1;
        let vector: Vec<f32> = match self.dtype {
            "float16" => buf
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "float64" => buf
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes(c.try_into().expect("invariant: chunks_exact(8)")) as f32
                })
                .collect(),
            _ => buf
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        };
        let mut row = Row {
            id: Some(num_id(self.row - 1)),
            vector,
            payload: None,
        };
        if let Some(side) = &mut self.side {
            let mut line = String::new();
            if side.read_line(&mut line)? == 0 {
                bail!("side file ends before row {}", self.row);
            }
            match serde_json::from_str::<Value>(line.trim()) {
                Ok(Value::Object(mut o)) => {
                    if let Some(v) = o.remove("id") {
                        match id_from_json(&v) {
                            Some(id) => row.id = Some(id),
                            None => {
                                return Ok(Some((
                                    self.row,
                                    Err(format!("side file line {}: bad id {v}", self.row)),
                                )));
                            }
                        }
                    }
                    if let Some(Value::Object(p)) = o.remove("payload") {
                        o.extend(p);
                    }
                    row.payload = (!o.is_empty()).then_some(o);
                }
                _ => {
                    return Ok(Some((
                        self.row,
                        Err(format!(
                            "side file line {}: expected a JSON object",
                            self.row
                        )),
                    )));
                }
            }
        }
        Ok(Some((self.row, Ok(row))))
    }
    fn unit(&self) -> &'static str {
        "row"
    }
    fn summary(&self) -> String {
        format!(
            "NumPy {} × {} {}; ids {}",
            self.rows,
            self.dim,
            self.dtype,
            if self.side.is_some() {
                "and payloads from the side file"
            } else {
                "are row numbers from 0"
            }
        )
    }
}

/// Parquet through arrow: record batches of 4,096 rows, so memory stays bounded by a row group.
struct Parquet {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    at: usize,
    row: u64,
    id_col: Option<usize>,
    vector_col: usize,
    payload_cols: Vec<(usize, String)>,
    desc: String,
    total_rows: u64,
    file_bytes: u64,
    read: Arc<AtomicU64>,
}

impl Parquet {
    fn open(path: &Path, m: &Mapping, read: &Arc<AtomicU64>) -> Result<Parquet> {
        let name = path.display().to_string();
        let f = File::open(path).with_context(|| format!("{name}: cannot open"))?;
        let file_bytes = f.metadata()?.len();
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .with_context(|| format!("{name}: not a Parquet file"))?;
        let total_rows = builder.metadata().file_metadata().num_rows() as u64;
        let schema = builder.schema().clone();
        let find = |k: &str| schema.index_of(k).ok();
        let id_key = m.id_field.as_deref().unwrap_or("id");
        let id_col = find(id_key);
        let vector_col = match &m.vector_field {
            Some(k) => find(k).ok_or_else(|| anyhow!("{name}: no vector column '{k}'"))?,
            None => find("vector")
                .or_else(|| find("embedding"))
                .or_else(|| {
                    schema.fields().iter().position(|f| {
                        matches!(
                            f.data_type(),
                            DataType::FixedSizeList(..)
                                | DataType::List(_)
                                | DataType::LargeList(_)
                        )
                    })
                })
                .ok_or_else(|| {
                    anyhow!("{name}: no vector column (a list<float> or fixed_size_list<float>)")
                })?,
        };
        let payload_cols: Vec<(usize, String)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(c, f)| {
                Some(*c) != id_col
                    && *c != vector_col
                    && m.payload_fields
                        .as_ref()
                        .is_none_or(|p| p.iter().any(|x| x == f.name()))
            })
            .map(|(c, f)| (c, f.name().clone()))
            .collect();
        let desc = format!(
            "Parquet {total_rows} rows: id {}, vector '{}' ({}), payload [{}]",
            id_col.map_or("= row number from 0".to_owned(), |c| format!(
                "'{}'",
                schema.field(c).name()
            )),
            schema.field(vector_col).name(),
            schema.field(vector_col).data_type(),
            payload_cols
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let reader = builder
            .with_batch_size(4096)
            .build()
            .with_context(|| format!("{name}: cannot read"))?;
        Ok(Parquet {
            reader,
            batch: None,
            at: 0,
            row: 0,
            id_col,
            vector_col,
            payload_cols,
            desc,
            total_rows,
            file_bytes,
            read: Arc::clone(read),
        })
    }

    // Arrow has dozens of types: everything not listed is unsupported, by design.
    #[allow(clippy::wildcard_enum_match_arm)]
    fn row_at(&self, b: &RecordBatch, i: usize) -> Item {
        let id = match self.id_col {
            None => Some(num_id(self.row - 1)),
            Some(c) => {
                let col = b.column(c);
                if col.is_null(i) {
                    return Err("missing id (null)".into());
                }
                Some(match json_at(col.as_ref(), i) {
                    Some(v) => id_from_json(&v).ok_or_else(|| format!("bad id {v}"))?,
                    None => {
                        return Err(format!(
                            "id column type {} is not supported",
                            col.data_type()
                        ));
                    }
                })
            }
        };
        let col = b.column(self.vector_col);
        if col.is_null(i) {
            return Err("missing vector (null)".into());
        }
        let values = match col.data_type() {
            DataType::FixedSizeList(..) => col
                .as_any()
                .downcast_ref::<arrow_array::FixedSizeListArray>()
                .map(|l| l.value(i)),
            DataType::List(_) => col
                .as_any()
                .downcast_ref::<arrow_array::ListArray>()
                .map(|l| l.value(i)),
            DataType::LargeList(_) => col
                .as_any()
                .downcast_ref::<arrow_array::LargeListArray>()
                .map(|l| l.value(i)),
            _ => None,
        }
        .ok_or_else(|| format!("vector column type {} is not a list", col.data_type()))?;
        let vector = floats(values.as_ref())?;
        let payload: Map<String, Value> = self
            .payload_cols
            .iter()
            .filter_map(|(c, n)| {
                let col = b.column(*c);
                (!col.is_null(i)).then(|| json_at(col.as_ref(), i).map(|v| (n.clone(), v)))?
            })
            .collect();
        Ok(Row {
            id,
            vector,
            payload: (!payload.is_empty()).then_some(payload),
        })
    }
}

// Arrow has dozens of types: everything not listed is unsupported, by design.
#[allow(clippy::wildcard_enum_match_arm)]
fn floats(a: &dyn Array) -> std::result::Result<Vec<f32>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float16Type, Float32Type, Float64Type};
    Ok(match a.data_type() {
        DataType::Float32 => a.as_primitive::<Float32Type>().values().to_vec(),
        DataType::Float64 => a
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|x| *x as f32)
            .collect(),
        DataType::Float16 => a
            .as_primitive::<Float16Type>()
            .values()
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        other => {
            return Err(format!(
                "vector elements of type {other} (expected float16/32/64)"
            ));
        }
    })
}

/// A scalar arrow value as JSON (strings, integers, floats, booleans); `None` for other types.
// Arrow has dozens of types: everything not listed is unsupported, by design.
#[allow(clippy::wildcard_enum_match_arm)]
fn json_at(a: &dyn Array, i: usize) -> Option<Value> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    Some(match a.data_type() {
        DataType::Utf8 => Value::from(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Value::from(a.as_string::<i64>().value(i)),
        DataType::Boolean => Value::from(a.as_boolean().value(i)),
        DataType::Int8 => Value::from(a.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => Value::from(a.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => Value::from(a.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => Value::from(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Value::from(a.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => Value::from(a.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => Value::from(a.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => Value::from(a.as_primitive::<UInt64Type>().value(i)),
        DataType::Float32 => Value::from(f64::from(a.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => Value::from(a.as_primitive::<Float64Type>().value(i)),
        _ => return None,
    })
}

impl Source for Parquet {
    fn next_item(&mut self) -> Result<Option<(u64, Item)>> {
        loop {
            if let Some(b) = &self.batch
                && self.at < b.num_rows()
            {
                let i = self.at;
                self.at += 1;
                self.row += 1;
                let item = self.row_at(b, i);
                // Progress in bytes, in proportion to rows (the reader does its own I/O).
                if let (Some(done), Some(prev)) = (
                    (self.file_bytes * self.row).checked_div(self.total_rows),
                    (self.file_bytes * (self.row - 1)).checked_div(self.total_rows),
                ) {
                    self.read.fetch_add(done - prev, Ordering::Relaxed);
                }
                return Ok(Some((self.row, item)));
            }
            match self.reader.next() {
                None => return Ok(None),
                Some(b) => {
                    self.batch =
                        Some(b.with_context(|| format!("row {}: cannot decode", self.row + 1))?);
                    self.at = 0;
                }
            }
        }
    }
    fn unit(&self) -> &'static str {
        "row"
    }
    fn summary(&self) -> String {
        self.desc.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The items of points-JSONL `text`, as `quiver upsert` reads them.
    fn points(text: &[u8]) -> Vec<Result<(u64, Item)>> {
        let mut src = Jsonl {
            lines: std::io::Cursor::new(text.to_vec()),
            line: 0,
            buf: String::new(),
            mapping: Mapping::default(),
            points: true,
        };
        std::iter::from_fn(|| src.next_item().transpose()).collect()
    }

    fn reason(line: &str) -> String {
        match points(line.as_bytes()).remove(0) {
            Ok((_, Err(r))) => r,
            other => panic!("{line}: expected a bad row, got {other:?}"),
        }
    }

    #[test]
    fn points_lines_keep_upsert_messages() {
        let cases = [
            (
                r#"{"id": 2, "vector": [1, "x"]}"#,
                r#"field 'vector'[1]: "x" is not a number"#,
            ),
            (r#"{"vector": [1, 2]}"#, "field 'id' is missing"),
            (
                "not json",
                "invalid JSON at column 2: expected ident at line 1 column 2",
            ),
            (
                r#"{"id": -4, "vector": [1, 2]}"#,
                "field 'id': -4 is not a non-negative integer or a non-empty string",
            ),
            (
                r#"{"id": null, "vector": [1]}"#,
                "field 'id': null is not a non-negative integer or a non-empty string",
            ),
            (
                r#"{"id": 1, "embedding": [1, 2]}"#,
                "field 'vector' is missing",
            ),
            (
                r#"{"id": 1, "vector": "[1, 2]"}"#,
                "field 'vector': expected a JSON array of numbers",
            ),
            (
                r#"{"id": 1, "vector": [1], "payload": [1]}"#,
                "field 'payload': expected a JSON object, got [1]",
            ),
            ("[1, 2]", "expected a JSON object"),
        ];
        for (line, want) in cases {
            assert_eq!(reason(line), want, "{line}");
        }
    }

    #[test]
    fn points_lines_take_only_id_vector_payload() {
        let items = points(
            b"{\"id\": 7, \"vector\": [1, 2], \"payload\": {\"a\": 1}, \"extra\": 2}\n\n  \n\
              {\"id\": \"k\", \"vector\": [3], \"payload\": {}}\n{\"id\": 8, \"vector\": [], \"payload\": null}\n",
        );
        let rows: Vec<(u64, Row)> = items
            .into_iter()
            .map(|i| match i {
                Ok((pos, Ok(row))) => (pos, row),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(rows.len(), 3);
        // Blank lines are skipped but counted.
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 4, 5]);
        assert_eq!(rows[0].1.id, Some(num_id(7)));
        assert_eq!(rows[0].1.vector, [1.0, 2.0]);
        let payload = rows[0].1.payload.as_ref().map(|p| Value::Object(p.clone()));
        assert_eq!(
            payload,
            Some(serde_json::json!({"a": 1})),
            "other keys ignored"
        );
        assert_eq!(rows[1].1.id, Some(str_id("k")));
        assert_eq!(
            rows[1].1.payload,
            Some(Map::new()),
            "an empty payload stays"
        );
        assert_eq!(rows[2].1.payload, None);
    }

    #[test]
    fn unreadable_line_names_its_number() {
        let mut items = points(b"{\"id\": 1, \"vector\": [1]}\n\xff\xfe\n");
        assert!(matches!(items.remove(0), Ok((1, Ok(_)))));
        let e = match items.remove(0) {
            Err(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e.downcast_ref::<ReadFailed>().map(|r| r.line), Some(2));
        assert_eq!(
            format!("{e:#}"),
            "line 2: read failed: stream did not contain valid UTF-8"
        );
    }

    #[test]
    fn ingest_jsonl_still_maps_fields() {
        let Value::Object(o) = serde_json::json!({"id": 1, "embedding": "[1, 2]", "k": "v"}) else {
            panic!("an object");
        };
        let row = row_from_object(o, &Mapping::default()).expect("a row");
        assert_eq!(row.vector, [1.0, 2.0]);
        assert_eq!(
            row.payload.map(Value::Object),
            Some(serde_json::json!({"k": "v"}))
        );
    }
}
