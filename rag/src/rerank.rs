//! Re-ranking the fused candidates of a question before the top k are kept: with the
//! collection's own embedder (the question's embedding against each candidate's stored one:
//! fusion finds candidates by either branch, the embedder orders them), or with a rerank
//! endpoint from `[rag.rerankers]` — Cohere's `/v1/rerank` shape, which Jina, Voyage and
//! Hugging Face TEI (`/rerank`) also serve. A hosted endpoint is refused for `local_only`
//! collections, gets the question and chunks PII-redacted, and every call is audited.
use serde_json::{Value, json};

use crate::llm::{LlmError, Remote};

/// Candidates re-scored when a reranker is on (at least k).
pub const RERANK_CANDIDATES: usize = 20;

/// The reranker that uses the collection's embedder.
pub const EMBEDDER: &str = "embedder";

/// Asks endpoint `r` to score `docs` against `query`; one score per document, in order.
pub async fn remote_scores(r: &Remote, query: &str, docs: &[String]) -> Result<Vec<f32>, LlmError> {
    let url = r.url("https://api.cohere.com/v1", "rerank");
    let body = json!({
        "model": r.cfg.model, "query": query, "documents": docs,
        "top_n": docs.len(), "return_documents": false,
        // TEI's field names, ignored by the others.
        "texts": docs, "raw_scores": false,
    });
    let resp = r.post(&url, &r.bearer(), &body).await?;
    let v = r.json(resp).await?;
    parse_scores(&v, docs.len()).map_err(|e| LlmError::Failed(format!("reranker {}: {e}", r.name)))
}

/// Scores from a response: `{"results": [{"index", "relevance_score"}]}` (Cohere, Jina,
/// Voyage's `data`) or TEI's `[{"index", "score"}]`. Every document must be scored once.
fn parse_scores(v: &Value, n: usize) -> Result<Vec<f32>, String> {
    let items = v
        .get("results")
        .or_else(|| v.get("data"))
        .unwrap_or(v)
        .as_array()
        .ok_or("the response has no results array")?;
    let mut out = vec![f32::NAN; n];
    for (i, it) in items.iter().enumerate() {
        let idx = it["index"]
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x < n)
            .ok_or_else(|| format!("results[{i}].index is missing or out of range"))?;
        let s = it
            .get("relevance_score")
            .or_else(|| it.get("score"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite())
            .ok_or_else(|| format!("results[{i}] has no finite score"))?;
        out[idx] = s as f32;
    }
    if let Some(missing) = out.iter().position(|s| s.is_nan()) {
        return Err(format!("document {missing} was not scored"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohere_and_tei_shapes_parse_and_gaps_are_refused() {
        let c = json!({"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}]});
        assert_eq!(parse_scores(&c, 2).unwrap(), [0.1, 0.9]);
        let t = json!([{"index": 0, "score": 2.5}, {"index": 1, "score": -1.0}]);
        assert_eq!(parse_scores(&t, 2).unwrap(), [2.5, -1.0]);
        assert!(
            parse_scores(&json!({"results": [{"index": 0, "relevance_score": 1}]}), 2).is_err()
        );
        assert!(
            parse_scores(&json!({"results": [{"index": 5, "relevance_score": 1}]}), 2).is_err()
        );
        assert!(parse_scores(&json!({"oops": 1}), 1).is_err());
    }
}
