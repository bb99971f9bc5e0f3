//! `quiver ingest`: streams files of any supported format into a collection over
//! `Points.UpsertStream`, with client-side validation, byte-sized batches, several batches in
//! flight (the server acknowledges each once durable and reads the next only then, so HTTP/2
//! flow control slows a fast reader instead of filling memory), a progress bar, an abort or
//! skip policy for bad rows with a reject file, and a checkpoint for `--resume`.
//!
//! `quiver export`: pages a collection (optionally filtered) out to JSONL or Parquet.
pub mod read;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use quiver_client::{Client, ClientError, code_name, id_to_json};
use quiver_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use read::{Item, Mapping, Row};

/// What to do with a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop at the first bad row (nothing after it is sent).
    Abort,
    /// Write it to the reject file and go on.
    Skip,
}

/// Options of one ingest run.
#[derive(Debug, Clone)]
pub struct Options {
    pub collection: String,
    pub files: Vec<PathBuf>,
    pub mapping: Mapping,
    pub on_error: OnError,
    pub reject_file: Option<PathBuf>,
    pub batch_bytes: usize,
    pub in_flight: usize,
    pub create: Option<pb::Metric>,
    pub dry_run: bool,
    pub resume: bool,
    pub checkpoint: Option<PathBuf>,
    pub quiet: bool,
    pub json: bool,
    pub max_payload_bytes: usize,
}

/// Progress saved after every acknowledged batch: every source position up to `position` of
/// `files[file]` is either written or rejected.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Checkpoint {
    collection: String,
    files: Vec<String>,
    file: usize,
    position: u64,
    upserted: u64,
    rejected: u64,
}

fn write_checkpoint(path: &Path, c: &Checkpoint) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(c)?)
        .with_context(|| format!("{}: cannot write the checkpoint", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot write the checkpoint", path.display()))?;
    Ok(())
}

/// Validates a row against the collection (the server checks the same; catching it here lets
/// `--on-error skip` drop just the row).
fn validate(row: &Row, dim: usize, max_payload: usize) -> std::result::Result<(), String> {
    if row.vector.len() != dim {
        return Err(format!(
            "wrong dimension: {} values, the collection has {dim}",
            row.vector.len()
        ));
    }
    if let Some((i, x)) = row.vector.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(format!("vector[{i}] is {x}, not a finite number"));
    }
    if let Some(pb::PointId {
        kind: Some(pb::point_id::Kind::Str(s)),
    }) = &row.id
        && (s.is_empty() || s.len() > 1024)
    {
        return Err("string id must have 1 to 1024 bytes".into());
    }
    if let Some(p) = &row.payload {
        let n = serde_json::to_vec(p).map_or(0, |b| b.len());
        if n > max_payload {
            return Err(format!("payload is {n} bytes, the limit is {max_payload}"));
        }
    }
    Ok(())
}

/// A batch on its way: the source position of each row, for error messages.
struct Sent {
    file: usize,
    last_position: u64,
    positions: Vec<u64>,
}

struct Rejects {
    out: Option<std::io::BufWriter<std::fs::File>>,
    count: u64,
}

impl Rejects {
    fn add(&mut self, file: &str, unit: &str, pos: u64, reason: &str) -> Result<()> {
        self.count += 1;
        if let Some(w) = &mut self.out {
            writeln!(w, "{}", json!({"file": file, unit: pos, "reason": reason}))?;
        }
        Ok(())
    }
}

/// Hands batches to the upsert stream, remembering each one's source positions.
struct Outbox<'a> {
    o: &'a Options,
    sent: &'a Mutex<VecDeque<(u64, Sent)>>,
    tx: &'a tokio::sync::mpsc::Sender<pb::UpsertRequest>,
    batch_id: u64,
}

impl Outbox<'_> {
    /// Sends `points` (read up to `last_position` of file `file`); a dry run drops them.
    /// Returns false once the stream has failed (its error arrives with the acknowledgements).
    fn send(
        &mut self,
        file: usize,
        last_position: u64,
        points: Vec<pb::Point>,
        positions: Vec<u64>,
    ) -> bool {
        if self.o.dry_run || points.is_empty() {
            return true;
        }
        self.batch_id += 1;
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((
                self.batch_id,
                Sent {
                    file,
                    last_position,
                    positions,
                },
            ));
        self.tx
            .blocking_send(pb::UpsertRequest {
                collection: self.o.collection.clone(),
                points,
                batch_id: self.batch_id,
            })
            .is_ok()
    }
}

/// Keeps the reject file's entries up to the checkpoint (a resumed run writes the rest again).
fn trim_rejects(path: &Path, files: &[String], cp: &Checkpoint) -> Result<u64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let mut kept = String::new();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let fi = files
            .iter()
            .position(|f| Some(f.as_str()) == v["file"].as_str())
            .unwrap_or(usize::MAX);
        let pos = v["line"]
            .as_u64()
            .or_else(|| v["row"].as_u64())
            .unwrap_or(u64::MAX);
        if fi < cp.file || (fi == cp.file && pos <= cp.position) {
            kept.push_str(line);
            kept.push('\n');
            n += 1;
        }
    }
    std::fs::write(path, kept)?;
    Ok(n)
}

/// Runs an ingest; returns the summary printed with `--json`.
pub async fn ingest(client: &mut Client, o: Options) -> Result<Value> {
    let started = Instant::now();
    let names: Vec<String> = o.files.iter().map(|p| p.display().to_string()).collect();
    let total_bytes: u64 = o
        .files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let cp_path = o
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!(".quiver-ingest-{}.checkpoint", o.collection)));
    let mut resume_from = Checkpoint::default();
    if o.resume {
        let text = std::fs::read_to_string(&cp_path).with_context(|| {
            format!(
                "--resume: no checkpoint at {} (run without --resume first)",
                cp_path.display()
            )
        })?;
        resume_from = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a checkpoint", cp_path.display()))?;
        if resume_from.files != names || resume_from.collection != o.collection {
            bail!(
                "--resume: the checkpoint at {} is for collection {} and files {:?}, not these",
                cp_path.display(),
                resume_from.collection,
                resume_from.files
            );
        }
    }
    // The collection's dimension (created from the first row with --create).
    let existing = client
        .collections
        .get(pb::GetCollectionRequest {
            name: o.collection.clone(),
        })
        .await;
    let mut dim = match existing {
        Ok(info) => info.into_inner().config.map(|c| c.dim as usize),
        Err(s) if s.code() == tonic::Code::NotFound && (o.create.is_some() || o.dry_run) => None,
        Err(s) => return Err(ClientError::from(s).into()),
    };
    let read_bytes = Arc::new(AtomicU64::new(0));
    let bar = if o.quiet || o.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(total_bytes);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    };
    let mut rejects = Rejects {
        out: None,
        count: 0,
    };
    if let Some(p) = &o.reject_file {
        let kept = if o.resume {
            trim_rejects(p, &names, &resume_from)?
        } else {
            0
        };
        rejects.count = kept;
        rejects.out = Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .truncate(false)
                .open(p)
                .with_context(|| format!("{}: cannot open the reject file", p.display()))?,
        ));
        if !o.resume {
            rejects
                .out
                .as_mut()
                .map(|w| w.get_ref().set_len(0))
                .transpose()?;
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UpsertRequest>(o.in_flight.max(1));
    let sent: Arc<Mutex<VecDeque<(u64, Sent)>>> = Arc::default();
    let rejects = Arc::new(Mutex::new(rejects));
    // The reader runs on a blocking thread: parse, validate, batch by bytes, send.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Option<usize>>();
    let producer = tokio::task::spawn_blocking({
        let (o, names, sent, rejects, read_bytes, bar) = (
            o.clone(),
            names.clone(),
            Arc::clone(&sent),
            Arc::clone(&rejects),
            Arc::clone(&read_bytes),
            bar.clone(),
        );
        let resume = resume_from.clone();
        move || -> Result<(u64, u64)> {
            let mut first_tx = Some(first_tx);
            let mut dim = dim;
            let mut batch: Vec<pb::Point> = Vec::new();
            let mut positions = Vec::new();
            let mut bytes = 0usize;
            let mut outbox = Outbox {
                o: &o,
                sent: &sent,
                tx: &tx,
                batch_id: 0,
            };
            let (mut read_rows, mut valid_rows) = (0u64, 0u64);
            for (fi, path) in o.files.iter().enumerate() {
                if fi < resume.file {
                    continue;
                }
                let mut src = read::open(path, &o.mapping, &read_bytes)?;
                if !o.quiet && !o.json {
                    bar.println(format!("{}: {}", names[fi], src.summary()));
                }
                let skip_to = if fi == resume.file {
                    resume.position
                } else {
                    0
                };
                let mut last_pos = 0;
                loop {
                    let next = src
                        .next_item()
                        .map_err(|e| anyhow!("{}: {e:#}", names[fi]))?;
                    let Some((pos, item)) = next else { break };
                    last_pos = pos;
                    bar.set_position(read_bytes.load(Ordering::Relaxed));
                    if pos <= skip_to {
                        continue;
                    }
                    read_rows += 1;
                    if read_rows.is_multiple_of(4096) {
                        bar.set_message(format!("{read_rows} rows"));
                    }
                    let item: Item = item.and_then(|row| {
                        let d = *dim.get_or_insert(row.vector.len());
                        if let Some(t) = first_tx.take() {
                            let _ = t.send(Some(d));
                        }
                        validate(&row, d, o.max_payload_bytes).map(|()| row)
                    });
                    let row = match item {
                        Ok(r) => r,
                        Err(reason) => match o.on_error {
                            OnError::Abort => {
                                bail!("{}:{}: {reason}", names[fi], pos);
                            }
                            OnError::Skip => {
                                rejects.lock().unwrap_or_else(|p| p.into_inner()).add(
                                    &names[fi],
                                    src.unit(),
                                    pos,
                                    &reason,
                                )?;
                                continue;
                            }
                        },
                    };
                    valid_rows += 1;
                    let payload_json = row.payload.map(|p| Value::Object(p).to_string());
                    bytes +=
                        4 * row.vector.len() + 16 + payload_json.as_ref().map_or(0, String::len);
                    batch.push(pb::Point {
                        id: row.id,
                        vector: row.vector,
                        payload_json,
                    });
                    positions.push(pos);
                    if bytes >= o.batch_bytes {
                        bytes = 0;
                        let (points, at) =
                            (std::mem::take(&mut batch), std::mem::take(&mut positions));
                        if !outbox.send(fi, pos, points, at) {
                            return Ok((read_rows, valid_rows)); // the stream failed; its error follows
                        }
                    }
                }
                // A batch never spans files, so a checkpoint position always refers to one file.
                bytes = 0;
                let (points, at) = (std::mem::take(&mut batch), std::mem::take(&mut positions));
                if !outbox.send(fi, last_pos, points, at) {
                    return Ok((read_rows, valid_rows));
                }
            }
            if let Some(t) = first_tx.take() {
                let _ = t.send(dim);
            }
            Ok((read_rows, valid_rows))
        }
    });
    // --create: the dimension comes from the first valid row.
    if dim.is_none() {
        let first = first_rx.await.ok().flatten();
        if let (Some(d), Some(metric), false) = (first, o.create, o.dry_run) {
            client
                .collections
                .create(pb::CreateCollectionRequest {
                    name: o.collection.clone(),
                    dim: d as u32,
                    metric: metric as i32,
                    ..Default::default()
                })
                .await
                .map_err(ClientError::from)?;
            if !o.quiet && !o.json {
                bar.println(format!("created collection {} (dim {d})", o.collection));
            }
        }
        dim = first;
    }
    let mut upserted = resume_from.upserted;
    let mut failure: Option<anyhow::Error> = None;
    if !o.dry_run {
        let mut acks = client
            .points
            .upsert_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(ClientError::from)?
            .into_inner();
        while let Some(a) = acks.next().await {
            match a {
                Ok(a) => {
                    upserted += a.upserted;
                    let done = {
                        let mut q = sent.lock().unwrap_or_else(|p| p.into_inner());
                        let mut done = None;
                        while let Some((id, s)) = q.pop_front() {
                            if id == a.batch_id {
                                done = Some(s);
                                break;
                            }
                        }
                        done
                    };
                    if let Some(s) = done {
                        let rejected = rejects.lock().unwrap_or_else(|p| p.into_inner()).count;
                        write_checkpoint(
                            &cp_path,
                            &Checkpoint {
                                collection: o.collection.clone(),
                                files: names.clone(),
                                file: s.file,
                                position: s.last_position,
                                upserted,
                                rejected,
                            },
                        )?;
                    }
                    bar.set_message(format!("{upserted} rows written"));
                }
                Err(s) => {
                    let msg = s.message().to_owned();
                    let batch = msg
                        .strip_prefix("batch ")
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|b| b.parse::<u64>().ok());
                    let q = sent.lock().unwrap_or_else(|p| p.into_inner());
                    let at = batch
                        .and_then(|b| q.iter().find(|(id, _)| *id == b))
                        .and_then(|(_, s)| {
                            let i: usize = msg
                                .find("points[")
                                .and_then(|at| msg[at + 7..].split(']').next()?.parse().ok())?;
                            Some(format!("{}:{}", names[s.file], s.positions.get(i)?))
                        });
                    failure = Some(anyhow!(
                        "{}: {}: {msg}",
                        at.unwrap_or_else(|| o.collection.clone()),
                        code_name(s.code())
                    ));
                    break;
                }
            }
        }
    } else {
        drop(rx);
    }
    let produced = producer.await?;
    bar.finish_and_clear();
    let rejected = {
        let mut r = rejects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = &mut r.out {
            w.flush()?;
        }
        r.count
    };
    let secs = started.elapsed().as_secs_f64();
    let (read_rows, valid_rows) = match (&failure, produced) {
        (Some(_), _) => (0, 0),
        (None, Ok(x)) => x,
        (None, Err(e)) => {
            failure = Some(e);
            (0, 0)
        }
    };
    if let Some(e) = failure {
        bail!(
            "{e:#}\n{upserted} rows are written (acknowledged){}; rerun with --resume to continue after them",
            if rejected > 0 {
                format!(", {rejected} rejected")
            } else {
                String::new()
            }
        );
    }
    if !o.dry_run {
        let _ = std::fs::remove_file(&cp_path);
    }
    let summary = json!({
        "collection": o.collection, "files": names, "dry_run": o.dry_run,
        "rows_read": read_rows, "rows_valid": valid_rows, "upserted": upserted - resume_from.upserted,
        "upserted_total": upserted, "rejected": rejected, "dim": dim,
        "reject_file": o.reject_file.as_ref().map(|p| p.display().to_string()),
        "seconds": secs, "rows_per_s": (upserted - resume_from.upserted) as f64 / secs.max(1e-9),
        "bytes": total_bytes,
    });
    Ok(summary)
}

/// Writes the collection (or the points passing `filter`) to `out` as JSONL or Parquet.
pub async fn export(
    client: &mut Client,
    collection: &str,
    filter: Option<pb::Filter>,
    out: &Path,
    parquet: bool,
) -> Result<u64> {
    let mut cursor = String::new();
    let mut n = 0u64;
    let mut jsonl: Option<Box<dyn Write>> = None;
    let mut pq: Option<ParquetOut> = None;
    if !parquet {
        jsonl = Some(if out == Path::new("-") {
            Box::new(std::io::BufWriter::new(std::io::stdout()))
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(out)
                    .with_context(|| format!("{}: cannot create", out.display()))?,
            ))
        });
    }
    loop {
        let r = client
            .points
            .scroll(pb::ScrollRequest {
                collection: collection.into(),
                cursor,
                limit: 2000,
                with_vectors: true,
                with_payload: true,
                filter: filter.clone(),
            })
            .await
            .map_err(ClientError::from)?
            .into_inner();
        n += r.points.len() as u64;
        if let Some(w) = &mut jsonl {
            for p in &r.points {
                let payload = p
                    .payload_json
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok());
                let mut v = json!({"id": id_to_json(&p.id), "vector": p.vector});
                if let Some(pl) = payload {
                    v["payload"] = pl;
                }
                writeln!(w, "{v}")?;
            }
        } else if !r.points.is_empty() {
            let w = match &mut pq {
                Some(w) => w,
                None => pq.insert(ParquetOut::create(out, &r.points)?),
            };
            w.write(&r.points)?;
        }
        if r.next_cursor.is_empty() {
            break;
        }
        cursor = r.next_cursor;
    }
    if let Some(mut w) = jsonl {
        w.flush()?;
    }
    match pq {
        Some(w) => w.close()?,
        None if parquet => ParquetOut::create(out, &[])?.close()?,
        None => {}
    }
    Ok(n)
}

/// Parquet export: `id` (uint64, or utf8 when the first id is a string), `vector`
/// (fixed_size_list<float32>), `payload` (the JSON text).
struct ParquetOut {
    w: parquet::arrow::ArrowWriter<std::fs::File>,
    schema: Arc<arrow_schema::Schema>,
    string_ids: bool,
    dim: i32,
}

impl ParquetOut {
    fn create(out: &Path, first: &[pb::RetrievedPoint]) -> Result<ParquetOut> {
        use arrow_schema::{DataType, Field, Schema};
        let string_ids = matches!(
            first
                .first()
                .and_then(|p| p.id.as_ref())
                .and_then(|i| i.kind.as_ref()),
            Some(pb::point_id::Kind::Str(_))
        );
        let dim = first.first().map_or(0, |p| p.vector.len()) as i32;
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "id",
                if string_ids {
                    DataType::Utf8
                } else {
                    DataType::UInt64
                },
                false,
            ),
            Field::new(
                "vector",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, false)),
                    dim,
                ),
                false,
            ),
            Field::new("payload", DataType::Utf8, true),
        ]));
        let f = std::fs::File::create(out)
            .with_context(|| format!("{}: cannot create", out.display()))?;
        let w = parquet::arrow::ArrowWriter::try_new(f, Arc::clone(&schema), None)?;
        Ok(ParquetOut {
            w,
            schema,
            string_ids,
            dim,
        })
    }

    fn write(&mut self, points: &[pb::RetrievedPoint]) -> Result<()> {
        use arrow_array::{
            ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt64Array,
        };
        let ids: ArrayRef = if self.string_ids {
            Arc::new(StringArray::from(
                points
                    .iter()
                    .map(|p| match p.id.as_ref().and_then(|i| i.kind.as_ref()) {
                        Some(pb::point_id::Kind::Str(s)) => Ok(s.clone()),
                        _ => Err(anyhow!(
                            "mixed numeric and string ids: export to JSONL instead"
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ))
        } else {
            Arc::new(UInt64Array::from(
                points
                    .iter()
                    .map(|p| match p.id.as_ref().and_then(|i| i.kind.as_ref()) {
                        Some(pb::point_id::Kind::Num(n)) => Ok(*n),
                        _ => Err(anyhow!(
                            "mixed numeric and string ids: export to JSONL instead"
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ))
        };
        let values = Float32Array::from(
            points
                .iter()
                .flat_map(|p| p.vector.iter().copied())
                .collect::<Vec<_>>(),
        );
        let field = Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            false,
        ));
        let vectors = FixedSizeListArray::try_new(field, self.dim, Arc::new(values), None)?;
        let payloads = StringArray::from(
            points
                .iter()
                .map(|p| p.payload_json.clone())
                .collect::<Vec<_>>(),
        );
        let batch = RecordBatch::try_new(
            Arc::clone(&self.schema),
            vec![ids, Arc::new(vectors), Arc::new(payloads)],
        )?;
        self.w.write(&batch)?;
        Ok(())
    }

    fn close(self) -> Result<()> {
        self.w.close()?;
        Ok(())
    }
}
