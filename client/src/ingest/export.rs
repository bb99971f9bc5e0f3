//! `quiver export`: pages a collection (optionally filtered) out to JSONL or Parquet.
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::{Client, ClientError, id_to_json};
use anyhow::{Context, Result, anyhow};
use quiver_proto::v1 as pb;
use serde_json::{Value, json};

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
