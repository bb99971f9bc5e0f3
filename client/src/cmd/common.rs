//! Helpers shared by the command modules: ids, vectors and filters from the command line, and
//! points, payloads and files in the CLI's JSON forms.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::{id_from_json, id_to_json, pb};
use anyhow::{Context, Result, anyhow};
use clap::ValueEnum;
use serde_json::{Value, json};

/// A distance metric on the command line.
// The values carry no doc comments: clap would print them in `--help`, which lists bare names.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MetricArg {
    Cosine,
    L2,
    Dot,
}

impl MetricArg {
    /// The proto value.
    pub fn proto(self) -> pb::Metric {
        match self {
            MetricArg::Cosine => pb::Metric::Cosine,
            MetricArg::L2 => pb::Metric::L2,
            MetricArg::Dot => pb::Metric::Dot,
        }
    }
}

/// The lower-case name of a proto metric.
pub fn metric_name(m: i32) -> &'static str {
    match pb::Metric::try_from(m) {
        Ok(pb::Metric::Cosine) => "cosine",
        Ok(pb::Metric::L2) => "l2",
        Ok(pb::Metric::Dot) => "dot",
        _ => "unspecified",
    }
}

/// The `--filter` text as a proto filter (parsed by the server, which reports the column of
/// a mistake).
pub fn text_filter(f: Option<String>) -> Option<pb::Filter> {
    f.map(|text| pb::Filter {
        text,
        ..Default::default()
    })
}

/// An id from the command line: JSON (a bare integer is numeric, a quoted string is a string),
/// otherwise the text itself as a string id.
pub fn parse_id(s: &str) -> pb::PointId {
    match serde_json::from_str::<Value>(s)
        .ok()
        .as_ref()
        .and_then(id_from_json)
    {
        Some(id) => id,
        None => crate::str_id(s),
    }
}

/// Every id of `ids`, parsed with [`parse_id`].
pub fn parse_ids(ids: &[String]) -> Vec<pb::PointId> {
    ids.iter().map(|s| parse_id(s)).collect()
}

/// A JSON array of numbers as a vector; errors name `what` and the bad element.
pub fn parse_vector(v: &Value, what: &str) -> Result<Vec<f32>> {
    crate::ingest::read::numbers(v, what).map_err(|e| anyhow!(e))
}

/// A stored payload (JSON text) as JSON; `null` when absent or unparsable.
pub fn payload_value(p: &Option<String>) -> Value {
    p.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

/// One point as a JSONL line: `{"id", "payload"[, "vector"]}`.
pub fn point_json(p: &pb::RetrievedPoint, with_vector: bool) -> Value {
    let mut o = json!({"id": id_to_json(&p.id), "payload": payload_value(&p.payload_json)});
    if with_vector {
        o["vector"] = json!(p.vector);
    }
    o
}

/// Lines of `path` (`-` for stdin).
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// A writer to `path` (`-` for stdout).
pub fn open_out(path: &Path) -> Result<Box<dyn Write>> {
    Ok(if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("{}", path.display()))?,
        ))
    })
}
