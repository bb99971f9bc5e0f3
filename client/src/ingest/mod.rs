//! `quiver ingest`: streams files of any supported format into a collection over
//! `Points.UpsertStream`, with client-side validation, byte-sized batches, several batches in
//! flight (the server acknowledges each once durable and reads the next only then, so HTTP/2
//! flow control slows a fast reader instead of filling memory), a progress bar, an abort or
//! skip policy for bad rows with a reject file, and a checkpoint for `--resume`.
//!
//! `quiver upsert` is the same pipeline in [`Style::Upsert`] ([`Options::upsert`]): one points
//! JSONL file, batches of `--batch-size` rows, checked by the server, with upsert's messages.
//!
//! `quiver export` ([`export()`], in `export.rs`): pages a collection (optionally filtered) out to
//! JSONL or Parquet.
mod export;
pub mod read;

pub use export::export;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{Client, ClientError, code_name};
use anyhow::{Context, Result, anyhow, bail};
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
    /// Target collection.
    pub collection: String,
    /// Input files, loaded in order.
    pub files: Vec<PathBuf>,
    /// How input fields map to id, vector and payload.
    pub mapping: Mapping,
    /// What to do with a bad row.
    pub on_error: OnError,
    /// Where skipped rows go (with [`OnError::Skip`]).
    pub reject_file: Option<PathBuf>,
    /// A batch is sent once its points reach about this many bytes.
    pub batch_bytes: usize,
    /// A batch is sent once it has this many points (whatever its bytes).
    pub batch_rows: Option<usize>,
    /// Batches in flight ahead of the server's acknowledgements.
    pub in_flight: usize,
    /// Create the collection with this metric if missing (dimension from the first row).
    pub create: Option<pb::Metric>,
    /// Read and validate only; write nothing.
    pub dry_run: bool,
    /// Continue after the checkpoint of an interrupted run.
    pub resume: bool,
    /// Checkpoint file (default `.quiver-ingest-COLLECTION.checkpoint`).
    pub checkpoint: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
    /// The caller prints a JSON summary (no progress bar).
    pub json: bool,
    /// The server's payload limit, checked client-side.
    pub max_payload_bytes: usize,
    /// How the run reads, checks and reports.
    pub style: Style,
}

/// How a run reads, checks and reports: `quiver ingest`'s way or `quiver upsert`'s. The
/// pipeline (reading lines, batching, batches in flight, acknowledgements, naming the file line
/// of a row the server refused) is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `quiver ingest`: any supported format (by extension), opened as it is reached; rows
    /// checked client-side against the collection (`--on-error`); a checkpoint for `--resume`;
    /// a failure says how many rows are written and suggests `--resume`.
    Ingest,
    /// `quiver upsert`: points JSONL (`{"id", "vector", "payload"}` per line, whatever the
    /// extension, `-` for stdin, other keys ignored), every file opened before the stream
    /// starts; rows checked by the server only (its refusal names the file line); no
    /// checkpoint; one-line failures: `FILE:LINE: reason (stopped; N points were written before
    /// it)`, `FILE:LINE: CODE: message (N points acknowledged before it are written)` or
    /// `FILE: CODE: message (N points acknowledged)`.
    Upsert,
}

impl Style {
    /// Rows are checked against the collection before they are sent (else the server checks).
    fn checks_rows(self) -> bool {
        self == Style::Ingest
    }

    /// Progress is saved to a checkpoint after every acknowledged batch.
    fn keeps_checkpoint(self) -> bool {
        self == Style::Ingest
    }

    /// Opens input `path` as this style reads it.
    fn open(
        self,
        path: &Path,
        mapping: &Mapping,
        read_bytes: &Arc<AtomicU64>,
    ) -> Result<Box<dyn read::Source>> {
        match self {
            Style::Ingest => read::open(path, mapping, read_bytes),
            Style::Upsert => read::open_points(path, read_bytes),
        }
    }

    /// A fatal error of the reader of file `name` (unreadable or truncated input).
    fn source_error(self, name: &str, e: anyhow::Error) -> anyhow::Error {
        match (self, e.downcast_ref::<read::ReadFailed>()) {
            (Style::Upsert, Some(r)) => anyhow!("{name}:{}: read failed", r.line),
            (Style::Upsert | Style::Ingest, _) => anyhow!("{name}: {e:#}"),
        }
    }

    /// The error a failed run ends with, after `upserted` rows were acknowledged (and
    /// `rejected` skipped).
    fn report(
        self,
        f: Failure,
        names: &[String],
        collection: &str,
        upserted: u64,
        rejected: u64,
    ) -> anyhow::Error {
        match self {
            Style::Ingest => {
                let e = match f {
                    Failure::Input(e) => e,
                    Failure::Server { status, at } => anyhow!(
                        "{}: {}: {}",
                        at.map_or_else(
                            || collection.to_owned(),
                            |(fi, pos)| format!("{}:{pos}", names[fi])
                        ),
                        code_name(status.code()),
                        status.message()
                    ),
                };
                anyhow!(
                    "{e:#}\n{upserted} rows are written (acknowledged){}; rerun with --resume to continue after them",
                    if rejected > 0 {
                        format!(", {rejected} rejected")
                    } else {
                        String::new()
                    }
                )
            }
            Style::Upsert => match f {
                Failure::Input(e) => {
                    anyhow!("{e} (stopped; {upserted} points were written before it)")
                }
                Failure::Server {
                    status,
                    at: Some((fi, line)),
                } => anyhow!(
                    "{}:{line}: {}: {} ({upserted} points acknowledged before it are written)",
                    names[fi],
                    code_name(status.code()),
                    status.message()
                ),
                Failure::Server { status, at: None } => anyhow!(
                    "{}: {}: {} ({upserted} points acknowledged)",
                    names.first().map_or(collection, String::as_str),
                    code_name(status.code()),
                    status.message()
                ),
            },
        }
    }
}

impl Options {
    /// `quiver upsert FILE --batch-size N`: [`Style::Upsert`], batches of exactly `batch_rows`
    /// points (never split by bytes), two batches in flight, no progress bar.
    pub fn upsert(collection: String, file: PathBuf, batch_rows: usize) -> Options {
        Options {
            collection,
            files: vec![file],
            mapping: Mapping::default(),
            on_error: OnError::Abort,
            reject_file: None,
            batch_bytes: usize::MAX,
            batch_rows: Some(batch_rows),
            in_flight: 2,
            create: None,
            dry_run: false,
            resume: false,
            checkpoint: None,
            quiet: true,
            json: false,
            max_payload_bytes: usize::MAX,
            style: Style::Upsert,
        }
    }
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

/// Batches sent and not yet acknowledged, oldest first, by batch id.
type SentQueue = Arc<Mutex<VecDeque<(u64, Sent)>>>;

/// Why a run stopped.
enum Failure {
    /// The server refused a batch; `at` is the file index and source position of the row its
    /// message names (`batch N ...: points[I]...`), when it names one.
    Server {
        status: tonic::Status,
        at: Option<(usize, u64)>,
    },
    /// Reading, parsing or checking the input failed.
    Input(anyhow::Error),
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
struct Outbox {
    collection: String,
    dry_run: bool,
    sent: SentQueue,
    tx: tokio::sync::mpsc::Sender<pb::UpsertRequest>,
    batch_id: u64,
}

impl Outbox {
    /// Sends `points` (read up to `last_position` of file `file`); a dry run drops them.
    /// Returns false once the stream has failed (its error arrives with the acknowledgements).
    fn send(
        &mut self,
        file: usize,
        last_position: u64,
        points: Vec<pb::Point>,
        positions: Vec<u64>,
    ) -> bool {
        if self.dry_run || points.is_empty() {
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
                collection: self.collection.clone(),
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

/// The checkpoint `--resume` continues after (the default, nothing done, without it).
fn load_checkpoint(o: &Options, names: &[String], cp_path: &Path) -> Result<Checkpoint> {
    if !o.resume {
        return Ok(Checkpoint::default());
    }
    let text = std::fs::read_to_string(cp_path).with_context(|| {
        format!(
            "--resume: no checkpoint at {} (run without --resume first)",
            cp_path.display()
        )
    })?;
    let cp: Checkpoint = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint", cp_path.display()))?;
    if cp.files != names || cp.collection != o.collection {
        bail!(
            "--resume: the checkpoint at {} is for collection {} and files {:?}, not these",
            cp_path.display(),
            cp.collection,
            cp.files
        );
    }
    Ok(cp)
}

/// The collection's dimension; `None` when it is missing and will be created from the first
/// row (`--create`) or is only validated (`--dry-run`).
async fn collection_dim(client: &mut Client, o: &Options) -> Result<Option<usize>> {
    let existing = client
        .collections
        .get(pb::GetCollectionRequest {
            name: o.collection.clone(),
        })
        .await;
    match existing {
        Ok(info) => Ok(info.into_inner().config.map(|c| c.dim as usize)),
        Err(s) if s.code() == tonic::Code::NotFound && (o.create.is_some() || o.dry_run) => {
            Ok(None)
        }
        Err(s) => Err(ClientError::from(s).into()),
    }
}

/// The progress bar (hidden with `quiet` or `json`).
fn progress_bar(o: &Options, total_bytes: u64) -> indicatif::ProgressBar {
    if o.quiet || o.json {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total_bytes);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// The reject file, emptied (or, on `--resume`, trimmed to the checkpoint).
fn open_rejects(o: &Options, names: &[String], resume_from: &Checkpoint) -> Result<Rejects> {
    let mut rejects = Rejects {
        out: None,
        count: 0,
    };
    let Some(p) = &o.reject_file else {
        return Ok(rejects);
    };
    rejects.count = if o.resume {
        trim_rejects(p, names, resume_from)?
    } else {
        0
    };
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
    Ok(rejects)
}

/// Rows read and rows that passed the checks.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    read: u64,
    valid: u64,
}

/// The reader of a run, on a blocking thread: parse, check, batch, send.
struct Producer {
    o: Options,
    names: Vec<String>,
    rejects: Arc<Mutex<Rejects>>,
    read_bytes: Arc<AtomicU64>,
    bar: indicatif::ProgressBar,
    resume: Checkpoint,
    /// Sources opened before the run started (by file index).
    early: Vec<Option<Box<dyn read::Source>>>,
    /// The collection's dimension, once known.
    dim: Option<usize>,
    /// Reports the first row's dimension (for `--create`).
    first_tx: Option<tokio::sync::oneshot::Sender<Option<usize>>>,
    outbox: Outbox,
    counts: Counts,
}

impl Producer {
    /// Reads every file; returns the counts (so far, if the stream failed).
    fn run(mut self) -> Result<Counts> {
        for fi in 0..self.o.files.len() {
            if fi < self.resume.file {
                continue;
            }
            if !self.read_file(fi)? {
                return Ok(self.counts); // the stream failed; its error follows
            }
        }
        if let Some(t) = self.first_tx.take() {
            let _ = t.send(self.dim);
        }
        Ok(self.counts)
    }

    /// Reads file `fi` and sends its rows; false once the stream has failed.
    fn read_file(&mut self, fi: usize) -> Result<bool> {
        let mut src = match self.early.get_mut(fi).and_then(Option::take) {
            Some(s) => s,
            None => self
                .o
                .style
                .open(&self.o.files[fi], &self.o.mapping, &self.read_bytes)?,
        };
        if !self.o.quiet && !self.o.json {
            self.bar
                .println(format!("{}: {}", self.names[fi], src.summary()));
        }
        let skip_to = if fi == self.resume.file {
            self.resume.position
        } else {
            0
        };
        let mut batch: Vec<pb::Point> = Vec::new();
        let mut positions = Vec::new();
        let mut bytes = 0usize;
        let mut last_pos = 0;
        loop {
            let next = src
                .next_item()
                .map_err(|e| self.o.style.source_error(&self.names[fi], e))?;
            let Some((pos, item)) = next else { break };
            last_pos = pos;
            self.bar
                .set_position(self.read_bytes.load(Ordering::Relaxed));
            if pos <= skip_to {
                continue;
            }
            self.counts.read += 1;
            if self.counts.read.is_multiple_of(4096) {
                self.bar.set_message(format!("{} rows", self.counts.read));
            }
            let row = match self.check(item) {
                Ok(r) => r,
                Err(reason) => {
                    self.bad_row(fi, src.unit(), pos, &reason)?;
                    continue;
                }
            };
            self.counts.valid += 1;
            let payload_json = row.payload.map(|p| Value::Object(p).to_string());
            bytes += 4 * row.vector.len() + 16 + payload_json.as_ref().map_or(0, String::len);
            batch.push(pb::Point {
                id: row.id,
                vector: row.vector,
                payload_json,
            });
            positions.push(pos);
            if bytes >= self.o.batch_bytes || self.o.batch_rows.is_some_and(|n| batch.len() >= n) {
                bytes = 0;
                let (points, at) = (std::mem::take(&mut batch), std::mem::take(&mut positions));
                if !self.outbox.send(fi, pos, points, at) {
                    return Ok(false);
                }
            }
        }
        // A batch never spans files, so a checkpoint position always refers to one file.
        Ok(self.outbox.send(fi, last_pos, batch, positions))
    }

    /// Checks a row against the collection (the first row sets the dimension when it is not
    /// known); with [`Style::Upsert`] the server checks instead.
    fn check(&mut self, item: Item) -> Item {
        if !self.o.style.checks_rows() {
            return item;
        }
        item.and_then(|row| {
            let d = *self.dim.get_or_insert(row.vector.len());
            if let Some(t) = self.first_tx.take() {
                let _ = t.send(Some(d));
            }
            validate(&row, d, self.o.max_payload_bytes).map(|()| row)
        })
    }

    /// A bad row: the end of the run (abort), or a line of the reject file (skip).
    fn bad_row(&self, fi: usize, unit: &str, pos: u64, reason: &str) -> Result<()> {
        match self.o.on_error {
            OnError::Abort => bail!("{}:{}: {reason}", self.names[fi], pos),
            OnError::Skip => self.rejects.lock().unwrap_or_else(|p| p.into_inner()).add(
                &self.names[fi],
                unit,
                pos,
                reason,
            ),
        }
    }
}

/// `--create`: once the first valid row gives the dimension, creates the collection (not on a
/// dry run). Returns the dimension (`None` if no row was valid).
async fn create_from_first_row(
    client: &mut Client,
    o: &Options,
    first_rx: tokio::sync::oneshot::Receiver<Option<usize>>,
    bar: &indicatif::ProgressBar,
) -> Result<Option<usize>> {
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
    Ok(first)
}

/// A server error as a failure: when it names a batch still in `sent` (`batch N ...`) and a
/// row of it (`points[I]`), the file and source position of that row.
fn server_failure(status: tonic::Status, sent: &VecDeque<(u64, Sent)>) -> Failure {
    let msg = status.message();
    let batch = msg
        .strip_prefix("batch ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|b| b.parse::<u64>().ok());
    let at = batch
        .and_then(|b| sent.iter().find(|(id, _)| *id == b))
        .and_then(|(_, s)| {
            let i: usize = msg
                .find("points[")
                .and_then(|at| msg[at + 7..].split(']').next()?.parse().ok())?;
            Some((s.file, *s.positions.get(i)?))
        });
    Failure::Server { status, at }
}

/// One run's state, shared by its steps.
struct Run {
    o: Options,
    names: Vec<String>,
    total_bytes: u64,
    cp_path: PathBuf,
    resume_from: Checkpoint,
    read_bytes: Arc<AtomicU64>,
    /// The collection's dimension (created from the first row with --create).
    dim: Option<usize>,
    bar: indicatif::ProgressBar,
    rejects: Arc<Mutex<Rejects>>,
    sent: SentQueue,
}

/// Sources opened before the run started, by file index ([`Style::Upsert`] opens every file
/// first, so a missing file is reported as just that, before any call).
type Early = Vec<Option<Box<dyn read::Source>>>;

impl Run {
    /// Everything before the first row is read, in this order: the checkpoint (`--resume`),
    /// the early sources, the collection's dimension, the progress bar, the reject file.
    async fn prepare(client: &mut Client, o: Options) -> Result<(Run, Early)> {
        let names: Vec<String> = o.files.iter().map(|p| p.display().to_string()).collect();
        let total_bytes: u64 = o
            .files
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let cp_path = o.checkpoint.clone().unwrap_or_else(|| {
            PathBuf::from(format!(".quiver-ingest-{}.checkpoint", o.collection))
        });
        let resume_from = load_checkpoint(&o, &names, &cp_path)?;
        let read_bytes = Arc::new(AtomicU64::new(0));
        let early = match o.style {
            Style::Ingest => Vec::new(),
            Style::Upsert => o
                .files
                .iter()
                .map(|p| o.style.open(p, &o.mapping, &read_bytes).map(Some))
                .collect::<Result<Early>>()?,
        };
        let dim = if o.style.checks_rows() {
            collection_dim(client, &o).await?
        } else {
            None
        };
        let bar = progress_bar(&o, total_bytes);
        let rejects = Arc::new(Mutex::new(open_rejects(&o, &names, &resume_from)?));
        let run = Run {
            o,
            names,
            total_bytes,
            cp_path,
            resume_from,
            read_bytes,
            dim,
            bar,
            rejects,
            sent: Arc::default(),
        };
        Ok((run, early))
    }

    /// The reader, sending to `tx` and reporting the first row's dimension on `first_tx`.
    fn producer(
        &self,
        early: Early,
        tx: tokio::sync::mpsc::Sender<pb::UpsertRequest>,
        first_tx: tokio::sync::oneshot::Sender<Option<usize>>,
    ) -> Producer {
        Producer {
            o: self.o.clone(),
            names: self.names.clone(),
            rejects: Arc::clone(&self.rejects),
            read_bytes: Arc::clone(&self.read_bytes),
            bar: self.bar.clone(),
            resume: self.resume_from.clone(),
            early,
            dim: self.dim,
            first_tx: Some(first_tx),
            outbox: Outbox {
                collection: self.o.collection.clone(),
                dry_run: self.o.dry_run,
                sent: Arc::clone(&self.sent),
                tx,
                batch_id: 0,
            },
            counts: Counts::default(),
        }
    }

    /// Streams the batches from `rx` and follows the acknowledgements (a dry run sends
    /// nothing). Returns the rows written, with those of a resumed run, and the server's
    /// refusal, if any.
    async fn follow(
        &self,
        client: &mut Client,
        rx: tokio::sync::mpsc::Receiver<pb::UpsertRequest>,
    ) -> Result<(u64, Option<Failure>)> {
        let mut upserted = self.resume_from.upserted;
        if self.o.dry_run {
            drop(rx);
            return Ok((upserted, None));
        }
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
                    self.acknowledged(a.batch_id, upserted)?;
                    self.bar.set_message(format!("{upserted} rows written"));
                }
                Err(s) => {
                    let q = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                    return Ok((upserted, Some(server_failure(s, &q))));
                }
            }
        }
        Ok((upserted, None))
    }

    /// Batch `batch_id` is durable: forget it (and those before it), save the checkpoint
    /// ([`Style::Ingest`]).
    fn acknowledged(&self, batch_id: u64, upserted: u64) -> Result<()> {
        let done = {
            let mut q = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            let mut done = None;
            while let Some((id, s)) = q.pop_front() {
                if id == batch_id {
                    done = Some(s);
                    break;
                }
            }
            done
        };
        let Some(s) = done.filter(|_| self.o.style.keeps_checkpoint()) else {
            return Ok(());
        };
        let rejected = self.rejects.lock().unwrap_or_else(|p| p.into_inner()).count;
        write_checkpoint(
            &self.cp_path,
            &Checkpoint {
                collection: self.o.collection.clone(),
                files: self.names.clone(),
                file: s.file,
                position: s.last_position,
                upserted,
                rejected,
            },
        )
    }

    /// After the reader and the stream are done: the failure as the style reports it, or
    /// the summary (and the checkpoint removed).
    fn finish(
        self,
        started: Instant,
        upserted: u64,
        mut failure: Option<Failure>,
        produced: Result<Counts>,
    ) -> Result<Value> {
        self.bar.finish_and_clear();
        let rejected = {
            let mut r = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = &mut r.out {
                w.flush()?;
            }
            r.count
        };
        let secs = started.elapsed().as_secs_f64();
        let counts = match (&failure, produced) {
            (Some(_), _) => Counts::default(),
            (None, Ok(c)) => c,
            (None, Err(e)) => {
                failure = Some(Failure::Input(e));
                Counts::default()
            }
        };
        let o = &self.o;
        if let Some(f) = failure {
            return Err(o
                .style
                .report(f, &self.names, &o.collection, upserted, rejected));
        }
        if !o.dry_run && o.style.keeps_checkpoint() {
            let _ = std::fs::remove_file(&self.cp_path);
        }
        let done = upserted - self.resume_from.upserted;
        Ok(json!({
            "collection": o.collection, "files": self.names, "dry_run": o.dry_run,
            "rows_read": counts.read, "rows_valid": counts.valid, "upserted": done,
            "upserted_total": upserted, "rejected": rejected, "dim": self.dim,
            "reject_file": o.reject_file.as_ref().map(|p| p.display().to_string()),
            "seconds": secs, "rows_per_s": done as f64 / secs.max(1e-9),
            "bytes": self.total_bytes,
        }))
    }
}

/// Runs an ingest; returns the summary printed with `--json`.
pub async fn ingest(client: &mut Client, o: Options) -> Result<Value> {
    let started = Instant::now();
    let (mut run, early) = Run::prepare(client, o).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UpsertRequest>(run.o.in_flight.max(1));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Option<usize>>();
    let producer = run.producer(early, tx, first_tx);
    // The reader runs on a blocking thread: parse, validate, batch, send.
    let producer = tokio::task::spawn_blocking(move || producer.run());
    // --create: the dimension comes from the first valid row.
    if run.o.style.checks_rows() && run.dim.is_none() {
        run.dim = create_from_first_row(client, &run.o, first_rx, &run.bar).await?;
    }
    let (upserted, failure) = run.follow(client, rx).await?;
    let produced = producer.await?;
    run.finish(started, upserted, failure, produced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["points.jsonl".to_owned()]
    }

    fn refused(code: tonic::Code, msg: &str, positions: Vec<u64>) -> Failure {
        let sent = VecDeque::from([(
            4,
            Sent {
                file: 0,
                last_position: 20,
                positions,
            },
        )]);
        server_failure(tonic::Status::new(code, msg), &sent)
    }

    const REFUSAL: &str = "batch 4 (message 4 on this stream; 15 points acknowledged before it): points[1].vector: expected dimension 2, got 3";

    #[test]
    fn a_refused_row_is_named_by_its_line() {
        let f = refused(tonic::Code::InvalidArgument, REFUSAL, vec![16, 17, 18]);
        assert!(matches!(
            f,
            Failure::Server {
                at: Some((0, 17)),
                ..
            }
        ));
        let e = Style::Upsert.report(f, &names(), "c", 15, 0);
        assert_eq!(
            e.to_string(),
            format!(
                "points.jsonl:17: INVALID_ARGUMENT: {REFUSAL} (15 points acknowledged before it are written)"
            )
        );
        let f = refused(tonic::Code::InvalidArgument, REFUSAL, vec![16, 17, 18]);
        let e = Style::Ingest.report(f, &names(), "c", 15, 2);
        assert_eq!(
            e.to_string(),
            format!(
                "points.jsonl:17: INVALID_ARGUMENT: {REFUSAL}\n15 rows are written (acknowledged), 2 rejected; rerun with --resume to continue after them"
            )
        );
    }

    #[test]
    fn a_refusal_without_a_row_names_the_file_or_collection() {
        let msg = "batch 4 (message 4 on this stream; 10 points acknowledged before it): batch has 700 rows, the limit is 500";
        let f = refused(tonic::Code::ResourceExhausted, msg, vec![1]);
        assert!(matches!(f, Failure::Server { at: None, .. }));
        let e = Style::Upsert.report(f, &names(), "c", 10, 0);
        assert_eq!(
            e.to_string(),
            format!("points.jsonl: RESOURCE_EXHAUSTED: {msg} (10 points acknowledged)")
        );
        let f = refused(tonic::Code::PermissionDenied, "no", vec![1]);
        let e = Style::Ingest.report(f, &names(), "c", 0, 0);
        assert_eq!(
            e.to_string(),
            "c: PERMISSION_DENIED: no\n0 rows are written (acknowledged); rerun with --resume to continue after them"
        );
    }

    #[test]
    fn an_input_failure_says_what_was_written() {
        let e = Style::Upsert.report(
            Failure::Input(anyhow!("points.jsonl:23: field 'id' is missing")),
            &names(),
            "c",
            20,
            0,
        );
        assert_eq!(
            e.to_string(),
            "points.jsonl:23: field 'id' is missing (stopped; 20 points were written before it)"
        );
    }

    #[test]
    fn read_failures_per_style() {
        let failed = || {
            anyhow::Error::new(read::ReadFailed {
                line: 3,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad UTF-8"),
            })
        };
        assert_eq!(
            Style::Upsert.source_error("p.jsonl", failed()).to_string(),
            "p.jsonl:3: read failed"
        );
        assert_eq!(
            Style::Ingest.source_error("p.jsonl", failed()).to_string(),
            "p.jsonl: line 3: read failed: bad UTF-8"
        );
    }

    #[test]
    fn upsert_batches_by_rows_only() {
        let o = Options::upsert("c".into(), PathBuf::from("-"), 700);
        assert_eq!(o.batch_rows, Some(700));
        assert_eq!(o.batch_bytes, usize::MAX);
        assert_eq!(o.in_flight, 2);
        assert_eq!(o.on_error, OnError::Abort);
        assert!(o.quiet && !o.resume && !o.dry_run && o.create.is_none());
        assert!(!o.style.checks_rows() && !o.style.keeps_checkpoint());
    }
}
