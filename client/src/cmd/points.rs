//! Point commands: `upsert` and `ingest` (one loader, [`crate::ingest`]), `get`, `delete`,
//! `count`, `set-payload`, `scroll` and `export`.
use std::io::Write;
use std::path::PathBuf;

use crate::{Client, ClientError, pb};
use anyhow::Result;
use serde_json::{Value, json};

use super::common::{MetricArg, parse_ids, point_json, text_filter};
use crate::ingest;

/// `quiver upsert`.
#[derive(Debug, clap::Args)]
pub struct UpsertArgs {
    /// Target collection.
    #[arg(long)]
    collection: String,
    /// JSONL file (`-` for stdin).
    file: PathBuf,
    /// Points per streamed batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

/// `quiver get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Ids.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Include vectors.
    #[arg(long)]
    with_vectors: bool,
}

/// `quiver delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Ids.
    #[arg(required_unless_present = "filter", conflicts_with = "filter")]
    ids: Vec<String>,
    /// Delete every point passing this filter instead (see `search --filter`).
    #[arg(long)]
    filter: Option<String>,
}

/// `quiver count`.
#[derive(Debug, clap::Args)]
pub struct CountArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Count only points passing this filter.
    #[arg(long)]
    filter: Option<String>,
}

/// `quiver ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Input files, loaded in order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Id field or column (default "id"; .npy/.fvecs ids are row numbers).
    #[arg(long)]
    id_field: Option<String>,
    /// Vector field or column (default "vector", then "embedding"; CSV also v0..vN).
    #[arg(long)]
    vector_field: Option<String>,
    /// Payload fields, comma-separated (default: every other field).
    #[arg(long, value_delimiter = ',')]
    payload_fields: Option<Vec<String>>,
    /// For .npy: a JSONL file with one object per row ({"id": .., other keys → payload}).
    #[arg(long)]
    side: Option<PathBuf>,
    /// Bad rows: stop at the first (abort), or write them to the reject file (skip).
    #[arg(long, value_enum, default_value = "abort")]
    on_error: ingest::OnError,
    /// Where skipped rows go, one JSON line each with file, line/row and reason.
    #[arg(long, default_value = "rejects.jsonl")]
    reject_file: PathBuf,
    /// Approximate bytes per batch sent.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Batches in flight ahead of the server's acknowledgements.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Create the collection if missing (dimension from the first row).
    #[arg(long)]
    create: bool,
    /// Metric for --create.
    #[arg(long, value_enum, default_value = "cosine")]
    metric: MetricArg,
    /// Read and validate only; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Continue an interrupted ingest from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Checkpoint file (default .quiver-ingest-COLLECTION.checkpoint).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The server's payload limit, checked client-side.
    #[arg(long, default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Print a JSON summary (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// `quiver export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Output file (.jsonl, .parquet, or - for JSONL on stdout).
    #[arg(long, short)]
    output: PathBuf,
    /// Only points passing this filter.
    #[arg(long)]
    filter: Option<String>,
}

/// `quiver set-payload`.
#[derive(Debug, clap::Args)]
pub struct SetPayloadArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Ids.
    #[arg(required = true)]
    ids: Vec<String>,
    /// A JSON object of keys to set.
    #[arg(long)]
    set: Option<String>,
    /// Keys to remove (repeatable).
    #[arg(long)]
    unset: Vec<String>,
    /// Replace the whole payload with --set.
    #[arg(long)]
    overwrite: bool,
}

/// `quiver scroll`.
#[derive(Debug, clap::Args)]
pub struct ScrollArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Only points passing this filter.
    #[arg(long)]
    filter: Option<String>,
    /// Include vectors.
    #[arg(long)]
    with_vectors: bool,
    /// Points per page.
    #[arg(long, default_value_t = 1000)]
    page: u32,
}

/// `quiver upsert`: `quiver ingest` of one points-JSONL file in batches of `--batch-size`
/// rows, with upsert's own messages (see [`ingest::Options::upsert`]).
pub async fn upsert(client: &mut Client, a: UpsertArgs) -> Result<()> {
    let name = a.file.display().to_string();
    let options = ingest::Options::upsert(a.collection, a.file, a.batch_size.max(1));
    let summary = ingest::ingest(client, options).await?;
    let acked = summary["upserted"].as_u64().unwrap_or_default();
    let secs = summary["seconds"].as_f64().unwrap_or_default();
    if a.json {
        println!(
            "{}",
            json!({"file": name, "upserted": acked, "seconds": secs})
        );
    } else {
        eprintln!(
            "upserted {acked} points from {name} in {secs:.2}s ({:.0} points/s)",
            acked as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// `quiver ingest`: runs the loader and prints its summary.
pub async fn ingest(client: &mut Client, a: IngestArgs) -> Result<()> {
    let (json, quiet, dry_run) = (a.json, a.quiet, a.dry_run);
    let options = ingest::Options {
        collection: a.collection,
        files: a.files,
        mapping: ingest::read::Mapping {
            id_field: a.id_field,
            vector_field: a.vector_field,
            payload_fields: a.payload_fields,
            side: a.side,
        },
        on_error: a.on_error,
        reject_file: (a.on_error == ingest::OnError::Skip).then_some(a.reject_file),
        batch_bytes: a.batch_bytes.max(1),
        batch_rows: None,
        in_flight: a.in_flight,
        create: a.create.then_some(a.metric.proto()),
        dry_run,
        resume: a.resume,
        checkpoint: a.checkpoint,
        quiet,
        json,
        max_payload_bytes: a.max_payload_bytes,
        style: ingest::Style::Ingest,
    };
    let summary = ingest::ingest(client, options).await?;
    if json {
        println!("{summary}");
    } else if !quiet {
        eprintln!("{}", ingest_line(&summary, dry_run));
    }
    Ok(())
}

/// The one-line text summary of an ingest.
fn ingest_line(summary: &Value, dry_run: bool) -> String {
    format!(
        "{} {} rows ({} rejected) in {:.2}s, {:.0} rows/s{}",
        if dry_run { "validated" } else { "ingested" },
        if dry_run {
            &summary["rows_valid"]
        } else {
            &summary["upserted"]
        },
        summary["rejected"],
        summary["seconds"].as_f64().unwrap_or_default(),
        summary["rows_per_s"].as_f64().unwrap_or_default(),
        summary["reject_file"]
            .as_str()
            .filter(|_| summary["rejected"].as_u64() > Some(0))
            .map(|p| format!("; rejects in {p}"))
            .unwrap_or_default()
    )
}

/// `quiver get`: one JSON line per point found.
pub async fn get(client: &mut Client, a: GetArgs, consistency: i32) -> Result<()> {
    let r = client
        .points
        .get(pb::GetPointsRequest {
            collection: a.collection,
            ids: parse_ids(&a.ids),
            with_vectors: a.with_vectors,
            with_payload: true,
            consistency,
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    for p in r.points {
        println!("{}", point_json(&p, a.with_vectors));
    }
    Ok(())
}

/// `quiver delete`: by ids or by filter.
pub async fn delete(client: &mut Client, a: DeleteArgs) -> Result<()> {
    let r = client
        .points
        .delete(pb::DeletePointsRequest {
            collection: a.collection,
            ids: parse_ids(&a.ids),
            filter: text_filter(a.filter),
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    eprintln!("deleted {} points", r.deleted);
    Ok(())
}

/// `quiver count`: prints the number of live points (passing the filter).
pub async fn count(client: &mut Client, a: CountArgs, consistency: i32) -> Result<()> {
    let r = client
        .points
        .count(pb::CountRequest {
            collection: a.collection,
            filter: text_filter(a.filter),
            consistency,
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    println!("{}", r.count);
    Ok(())
}

/// `quiver export`: JSONL or Parquet, by the output's extension.
pub async fn export(client: &mut Client, a: ExportArgs) -> Result<()> {
    let parquet = a
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let n = ingest::export(
        client,
        &a.collection,
        text_filter(a.filter),
        &a.output,
        parquet,
    )
    .await?;
    eprintln!("exported {n} points to {}", a.output.display());
    Ok(())
}

/// `quiver set-payload`: merge, replace or remove payload keys.
pub async fn set_payload(client: &mut Client, a: SetPayloadArgs) -> Result<()> {
    let r = client
        .points
        .update_payload(pb::UpdatePayloadRequest {
            collection: a.collection,
            ids: parse_ids(&a.ids),
            set_json: a.set.unwrap_or_default(),
            unset: a.unset,
            overwrite: a.overwrite,
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    eprintln!("updated {} points", r.updated);
    Ok(())
}

/// `quiver scroll`: every point (passing the filter) as JSONL, a page at a time.
pub async fn scroll(client: &mut Client, a: ScrollArgs) -> Result<()> {
    let filter = text_filter(a.filter);
    let mut cursor = String::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let req = pb::ScrollRequest {
            collection: a.collection.clone(),
            cursor,
            limit: a.page,
            with_vectors: a.with_vectors,
            with_payload: true,
            filter: filter.clone(),
        };
        let r = client
            .points
            .scroll(req)
            .await
            .map_err(ClientError::from)?
            .into_inner();
        for p in r.points {
            writeln!(out, "{}", point_json(&p, a.with_vectors))?;
        }
        if r.next_cursor.is_empty() {
            break;
        }
        cursor = r.next_cursor;
    }
    Ok(())
}
