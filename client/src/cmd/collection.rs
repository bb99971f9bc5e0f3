//! `quiver collection ...`: create, declare fields, list, info, drop, flush, compact.
use crate::{Client, ClientError, pb};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::common::{MetricArg, metric_name};

/// The vector index of sealed segments.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IndexArg {
    /// Exact scan only.
    Flat,
    /// IVF-PQ per sealed segment, exact re-rank.
    IvfPq,
}

/// Bits per PQ code.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PqBitsArg {
    /// 4-bit codes scanned with SIMD shuffles (fast-scan).
    #[value(name = "4")]
    Four,
    /// 8-bit codes (256 centroids per sub-space).
    #[value(name = "8")]
    Eight,
}

/// `quiver collection ...`
#[derive(Debug, Subcommand)]
pub enum CollectionCmd {
    /// Create a collection.
    Create(CreateArgs),
    /// Declare (index) more payload fields; existing points are indexed in the background.
    Declare {
        /// Name.
        name: String,
        /// KEY:TYPE (repeatable), as for `create`.
        #[arg(long = "field", value_parser = parse_field, required = true)]
        fields: Vec<pb::FieldSchema>,
    },
    /// List collections.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a collection's configuration and statistics.
    Info {
        /// Name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a collection and all its points.
    Drop {
        /// Name.
        name: String,
    },
    /// Seal the in-memory segment to disk.
    Flush {
        /// Name.
        name: String,
    },
    /// Compact now: rewrite sealed segments holding many deleted or overwritten rows (or
    /// small ones) on the node you call, within the server's background budget.
    Compact {
        /// Name.
        name: String,
        /// Rewrite every segment with a dead row, not only those past the threshold.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `quiver collection create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Name: letters, digits, '_' and '-'.
    name: String,
    /// Vector dimension.
    #[arg(long)]
    dim: u32,
    /// Distance metric.
    #[arg(long, value_enum, default_value = "cosine")]
    metric: MetricArg,
    /// Rows kept in memory before a segment is sealed to disk (server default if unset).
    #[arg(long)]
    segment_max_rows: Option<u32>,
    /// Vector index for sealed segments (segments under 1024 rows are always scanned
    /// exactly).
    #[arg(long, value_enum, default_value = "ivf-pq")]
    index: IndexArg,
    /// IVF lists per segment (default ≈ 4·√rows).
    #[arg(long)]
    nlist: Option<u32>,
    /// PQ sub-spaces; must divide the dimension (default from the dimension).
    #[arg(long)]
    pq_m: Option<u32>,
    /// Bits per PQ code (server default: 4).
    #[arg(long, value_enum)]
    pq_bits: Option<PqBitsArg>,
    /// Declare (index) a payload field, KEY:TYPE with TYPE keyword, integer, float, bool,
    /// datetime, keyword[], text (BM25; `text:english` stems, `text:english+stop` also drops
    /// stop words) or sparse (repeatable).
    #[arg(long = "field", value_parser = parse_field)]
    fields: Vec<pb::FieldSchema>,
}

/// A `--field KEY:TYPE` value.
fn parse_field(s: &str) -> Result<pb::FieldSchema, String> {
    let (key, ty) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected KEY:TYPE, e.g. tenant:keyword"))?;
    if let Some(spec) = ty.strip_prefix("text") {
        let (language, stop_words) = match spec.strip_prefix(':') {
            None if spec.is_empty() => (String::new(), false),
            None => {
                return Err(format!(
                    "{ty:?}: expected text, text:LANGUAGE or text:LANGUAGE+stop"
                ));
            }
            Some(l) => match l.strip_suffix("+stop") {
                Some(l) => (l.to_owned(), true),
                None => (l.to_owned(), false),
            },
        };
        return Ok(pb::FieldSchema {
            key: key.to_owned(),
            r#type: pb::FieldType::Text as i32,
            language,
            stop_words,
        });
    }
    let t = match ty {
        "sparse" => pb::FieldType::Sparse,
        "keyword" => pb::FieldType::Keyword,
        "integer" | "int" => pb::FieldType::Integer,
        "float" => pb::FieldType::Float,
        "bool" => pb::FieldType::Bool,
        "datetime" => pb::FieldType::Datetime,
        "keyword[]" | "tags" => pb::FieldType::KeywordArray,
        other => {
            return Err(format!(
                "{other:?}: type must be keyword, integer, float, bool, datetime, keyword[], text[:LANGUAGE[+stop]] or sparse"
            ));
        }
    };
    Ok(pb::FieldSchema {
        key: key.to_owned(),
        r#type: t as i32,
        ..Default::default()
    })
}

/// A declared field's type as `--field` spells it (`keyword`, `text:english+stop`).
fn field_type_name(f: &pb::FieldSchema) -> String {
    let base = match pb::FieldType::try_from(f.r#type) {
        Ok(pb::FieldType::Keyword) => "keyword",
        Ok(pb::FieldType::Integer) => "integer",
        Ok(pb::FieldType::Float) => "float",
        Ok(pb::FieldType::Bool) => "bool",
        Ok(pb::FieldType::Datetime) => "datetime",
        Ok(pb::FieldType::KeywordArray) => "keyword[]",
        Ok(pb::FieldType::Text) => "text",
        Ok(pb::FieldType::Sparse) => "sparse",
        Ok(pb::FieldType::Unspecified) | Err(_) => "unknown",
    };
    match (f.language.as_str(), f.stop_words) {
        ("", _) => base.to_owned(),
        (l, false) => format!("{base}:{l}"),
        (l, true) => format!("{base}:{l}+stop"),
    }
}

/// A collection's configuration and statistics as JSON (`collection info --json`).
fn info_json(i: &pb::CollectionInfo) -> Value {
    let c = i.config.clone().unwrap_or_default();
    let s = i.stats.clone().unwrap_or_default();
    let ix = c.index.unwrap_or_default();
    let kind = match pb::IndexKind::try_from(ix.kind) {
        Ok(pb::IndexKind::IvfPq) => "ivf_pq",
        _ => "flat",
    };
    // A flat collection has no index parameters; IVF-PQ's nlist is per segment unless set.
    let flat = kind == "flat";
    let param = |v: u32| if flat { Value::Null } else { json!(v) };
    let nlist = if flat {
        Value::Null
    } else if ix.nlist == 0 {
        json!("auto (4·√rows per segment)")
    } else {
        json!(ix.nlist)
    };
    json!({
        "name": c.name, "dim": c.dim, "metric": metric_name(c.metric), "segment_max_rows": c.segment_max_rows,
        "schema": c.schema.iter().map(|f| (f.key.clone(), json!(field_type_name(f)))).collect::<serde_json::Map<_, _>>(),
        "index_kind": kind, "index_nlist": nlist, "index_pq_m": param(ix.pq_m), "index_pq_bits": param(ix.pq_bits),
        "points": s.points, "sealed_segments": s.sealed_segments, "mutable_points": s.mutable_points, "dead_points": s.dead_points,
        "bytes_on_disk": s.bytes_on_disk, "wal_bytes": s.wal_bytes, "index_bytes": s.index_bytes, "index": s.index_state,
        "last_lsn": s.last_lsn, "checkpoint_lsn": s.checkpoint_lsn,
    })
}

/// Runs a `quiver collection` command.
pub async fn run(client: &mut Client, cmd: CollectionCmd) -> Result<()> {
    match cmd {
        CollectionCmd::Create(a) => create(client, a).await,
        CollectionCmd::List { json } => list(client, json).await,
        CollectionCmd::Info { name, json } => info(client, name, json).await,
        CollectionCmd::Drop { name } => {
            client
                .collections
                .delete(pb::DeleteCollectionRequest { name: name.clone() })
                .await
                .map_err(ClientError::from)?;
            eprintln!("dropped collection {name}");
            Ok(())
        }
        CollectionCmd::Declare { name, fields } => {
            client
                .collections
                .declare_fields(pb::DeclareFieldsRequest {
                    name: name.clone(),
                    fields,
                })
                .await
                .map_err(ClientError::from)?;
            eprintln!("declared fields on {name}; existing points are indexed in the background");
            Ok(())
        }
        CollectionCmd::Flush { name } => {
            let r = client
                .collections
                .flush(pb::FlushCollectionRequest { name })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            eprintln!("flushed; checkpoint at LSN {}", r.checkpoint_lsn);
            Ok(())
        }
        CollectionCmd::Compact { name, force, json } => compact(client, name, force, json).await,
    }
}

async fn create(client: &mut Client, a: CreateArgs) -> Result<()> {
    let metric = a.metric.proto();
    let req = pb::CreateCollectionRequest {
        name: a.name.clone(),
        dim: a.dim,
        metric: metric as i32,
        index: Some(pb::IndexParams {
            kind: match a.index {
                IndexArg::Flat => pb::IndexKind::Flat,
                IndexArg::IvfPq => pb::IndexKind::IvfPq,
            } as i32,
            nlist: a.nlist.unwrap_or(0),
            pq_m: a.pq_m.unwrap_or(0),
            pq_bits: match a.pq_bits {
                None => 0,
                Some(PqBitsArg::Four) => 4,
                Some(PqBitsArg::Eight) => 8,
            },
        }),
        segment_max_rows: a.segment_max_rows,
        schema: a.fields,
    };
    client
        .collections
        .create(req)
        .await
        .map_err(ClientError::from)?;
    eprintln!(
        "created collection {} (dim {}, {})",
        a.name,
        a.dim,
        metric_name(metric as i32)
    );
    Ok(())
}

async fn list(client: &mut Client, json: bool) -> Result<()> {
    let list = client
        .collections
        .list(pb::ListCollectionsRequest {})
        .await
        .map_err(ClientError::from)?
        .into_inner();
    for i in &list.collections {
        let v = info_json(i);
        if json {
            println!("{v}");
        } else {
            println!(
                "{}\tdim={}\tmetric={}\tpoints={}",
                v["name"].as_str().unwrap_or(""),
                v["dim"],
                v["metric"].as_str().unwrap_or(""),
                v["points"]
            );
        }
    }
    Ok(())
}

async fn info(client: &mut Client, name: String, json: bool) -> Result<()> {
    let i = client
        .collections
        .get(pb::GetCollectionRequest { name })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let v = info_json(&i);
    if json {
        println!("{v}");
    } else if let Some(o) = v.as_object() {
        for (k, val) in o {
            println!(
                "{k:<18} {}",
                val.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| val.to_string())
            );
        }
    }
    Ok(())
}

async fn compact(client: &mut Client, name: String, force: bool, json: bool) -> Result<()> {
    let r = client
        .collections
        .compact(pb::CompactCollectionRequest { name, force })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({"compactions": r.compactions, "segments_before": r.segments_before,
                "segments_after": r.segments_after, "rows_reclaimed": r.rows_reclaimed,
                "bytes_reclaimed": r.bytes_reclaimed, "seconds": r.seconds})
        );
    } else {
        eprintln!(
            "{} compactions in {:.2} s: {} -> {} sealed segments, {} dead rows and {} bytes reclaimed",
            r.compactions,
            r.seconds,
            r.segments_before,
            r.segments_after,
            r.rows_reclaimed,
            r.bytes_reclaimed
        );
    }
    Ok(())
}
