//! Embeds real text with Quiver's local embedder (all-MiniLM-L6-v2, 384-d) into an ANN data
//! set: `base.fvecs` from the documents, cut by the chunker `quiver ingest-docs` uses (or one
//! vector per line with `--whole`), and `query.fvecs` from the questions. The ground truth is
//! computed afterwards (benches/make_minilm.py). Input files are JSONL with a `text` field
//! (documents) or a `question` field (questions).
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use quiver_rag::chunk::{ChunkParams, chunk};
use quiver_rag::local::LocalEmbedder;
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    /// Directory of the embedder (model.safetensors, tokenizer.json, config.json).
    #[arg(long)]
    model: PathBuf,
    /// Output directory: base.fvecs, query.fvecs, base.txt (one chunk per line, JSON).
    #[arg(long)]
    out: PathBuf,
    /// Documents to chunk (JSONL, `text`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    docs: Vec<PathBuf>,
    /// Documents embedded one line each, unchunked (JSONL, `text`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    whole: Vec<PathBuf>,
    /// Questions (JSONL, `question`).
    #[arg(long)]
    questions: PathBuf,
    /// Words per chunk.
    #[arg(long, default_value_t = 100)]
    chunk_words: usize,
    /// Words of overlap between chunks.
    #[arg(long, default_value_t = 20)]
    overlap: usize,
    /// Texts per embedder call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

fn field(path: &Path, name: &str) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        if let Some(t) = v.get(name).and_then(|t| t.as_str()) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

fn write_fvecs(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        w.write_all(&(r.len() as i32).to_le_bytes())?;
        for x in r {
            w.write_all(&x.to_le_bytes())?;
        }
    }
    w.flush()?;
    Ok(())
}

fn embed_all(
    e: &LocalEmbedder,
    texts: &[String],
    batch: usize,
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let t = Instant::now();
    let parts: Vec<Vec<Vec<f32>>> = texts
        .par_chunks(batch.max(1))
        .map(|c| {
            let refs: Vec<&str> = c.iter().map(String::as_str).collect();
            e.embed(&refs).map_err(|e| anyhow::anyhow!("embed: {e}"))
        })
        .collect::<Result<_>>()?;
    let out: Vec<Vec<f32>> = parts.into_iter().flatten().collect();
    eprintln!(
        "{what}: {} texts embedded in {:.1}s ({:.0}/s)",
        out.len(),
        t.elapsed().as_secs_f64(),
        out.len() as f64 / t.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn main() -> Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out)?;
    let e = LocalEmbedder::load(&a.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = ChunkParams {
        target: a.chunk_words,
        overlap: a.overlap,
    };
    let mut base: Vec<String> = Vec::new();
    for d in &a.docs {
        for text in field(d, "text")? {
            base.extend(chunk(&text, p));
        }
    }
    for d in &a.whole {
        base.extend(field(d, "text")?);
    }
    base.retain(|t| !t.trim().is_empty());
    let questions = field(&a.questions, "question")?;
    anyhow::ensure!(!base.is_empty() && !questions.is_empty(), "no texts");
    let mut txt = std::io::BufWriter::new(std::fs::File::create(a.out.join("base.txt"))?);
    for t in &base {
        writeln!(txt, "{}", serde_json::Value::String(t.clone()))?;
    }
    txt.flush()?;
    let q = embed_all(&e, &questions, a.batch, "questions")?;
    write_fvecs(&a.out.join("query.fvecs"), &q)?;
    let b = embed_all(&e, &base, a.batch, "base")?;
    write_fvecs(&a.out.join("base.fvecs"), &b)?;
    println!(
        "{}",
        serde_json::json!({"event": "embedded", "base": b.len(), "queries": q.len(), "dim": e.dim()})
    );
    Ok(())
}
