//! Embedders. `builtin` is deterministic and offline: hashed word unigrams and bigrams plus
//! character trigrams, with sublinear term frequency, common English words down-weighted
//! (an IDF stand-in that needs no corpus statistics), signed feature hashing into 384
//! dimensions, L2-normalised. It matches on shared words and word pieces, so it finds
//! paraphrases only when they share vocabulary; it is no substitute for a trained model.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::llm::{LlmError, OpenAiEmbeddings, estimate_tokens};

/// Runs CPU-bound embedding off the async workers.
pub(crate) async fn off_thread<F>(f: F) -> Result<Vec<Vec<f32>>, LlmError>
where
    F: FnOnce() -> Result<Vec<Vec<f32>>, LlmError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LlmError::Failed(format!("embedding worker failed: {e}")))?
}

/// Owned copies of `texts`, to move onto a worker thread.
pub(crate) fn owned(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

/// Vectors and what they cost.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embedded {
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens counted (by the provider, else estimated).
    pub tokens: u32,
}

/// Turns texts into vectors. Async: remote embedders await their HTTP calls, in-process ones
/// run on the blocking pool.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// Name as configured (`builtin`, `local` or a `[rag.embedders]` name).
    fn name(&self) -> &str;
    /// Model name (part of the embedding cache key).
    fn model(&self) -> &str;
    /// Output dimension.
    fn dim(&self) -> usize;
    /// Text sent to it leaves our environment.
    fn hosted(&self) -> bool;
    /// One vector per text.
    async fn embed(&self, texts: &[&str]) -> Result<Embedded, LlmError>;
}

/// An OpenAI-compatible embedding endpoint. Texts sent to a hosted endpoint are PII-redacted
/// first (the placeholders are embedded instead).
pub struct RemoteEmbedder {
    /// The client.
    pub inner: OpenAiEmbeddings,
    /// The redactor applied when the endpoint is hosted.
    pub redactor: crate::pii::Redactor,
}

#[async_trait::async_trait]
impl Embedder for RemoteEmbedder {
    fn name(&self) -> &str {
        &self.inner.remote().name
    }
    fn model(&self) -> &str {
        &self.inner.remote().cfg.model
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn hosted(&self) -> bool {
        self.inner.remote().cfg.hosted
    }
    async fn embed(&self, texts: &[&str]) -> Result<Embedded, LlmError> {
        let sent: Vec<String> = if self.hosted() {
            texts.iter().map(|t| self.redactor.redact(t).text).collect()
        } else {
            owned(texts)
        };
        let (vectors, mut tokens) = self.inner.embed(&sent).await?;
        if tokens == 0 {
            tokens = texts.iter().map(|t| estimate_tokens(t) as u32).sum();
        }
        Ok(Embedded { vectors, tokens })
    }
}

/// Cached vectors by (model, text), and their insertion order for eviction.
type Lru = (
    HashMap<(String, String), Vec<f32>>,
    VecDeque<(String, String)>,
);

/// Embeddings already computed, keyed by (model, text); bounded, oldest evicted first.
#[derive(Debug)]
pub struct EmbeddingCache {
    capacity: usize,
    inner: Mutex<Lru>,
}

impl EmbeddingCache {
    /// A cache of at most `capacity` vectors (0 = off).
    pub fn new(capacity: usize) -> Self {
        EmbeddingCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Embeds through the cache; returns the vectors, the tokens of the texts that missed, and
    /// how many hit.
    pub async fn embed(
        &self,
        e: &dyn Embedder,
        texts: &[&str],
    ) -> Result<(Embedded, usize), LlmError> {
        let model = format!("{}/{}", e.name(), e.model());
        let mut out: Vec<Option<Vec<f32>>> = {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            texts
                .iter()
                .map(|t| g.0.get(&(model.clone(), (*t).to_owned())).cloned())
                .collect()
        };
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        let hits = texts.len() - missing.len();
        let mut tokens = 0;
        if !missing.is_empty() {
            let batch: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
            let got = e.embed(&batch).await?;
            if got.vectors.len() != batch.len() {
                return Err(LlmError::Failed(format!(
                    "embedder {} returned {} vectors for {} texts",
                    e.name(),
                    got.vectors.len(),
                    batch.len()
                )));
            }
            tokens = got.tokens;
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            for (&i, v) in missing.iter().zip(got.vectors) {
                if self.capacity > 0 {
                    let k = (model.clone(), texts[i].to_owned());
                    if g.0.insert(k.clone(), v.clone()).is_none() {
                        g.1.push_back(k);
                    }
                    while g.0.len() > self.capacity {
                        match g.1.pop_front() {
                            Some(old) => {
                                g.0.remove(&old);
                            }
                            None => break,
                        }
                    }
                }
                out[i] = Some(v);
            }
        }
        Ok((
            Embedded {
                vectors: out.into_iter().map(Option::unwrap_or_default).collect(),
                tokens,
            },
            hits,
        ))
    }
}

/// Dimension of the builtin embedder.
pub const BUILTIN_DIM: usize = 384;

/// The builtin hashed n-gram embedder.
#[derive(Debug, Default)]
pub struct Builtin;

/// Common English words, weighted down (embedder) or ignored (extractive matching).
pub const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he",
    "her", "his", "i", "in", "is", "it", "its", "of", "on", "or", "she", "that", "the", "their",
    "they", "this", "to", "was", "were", "what", "when", "where", "which", "who", "why", "how",
    "will", "with", "you", "your", "do", "does", "did", "not", "no", "so", "if", "then", "than",
];

fn hash(s: &str, salt: u64) -> u64 {
    // FNV-1a, then a SplitMix finaliser: stable across builds and platforms.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Lower-cased alphanumeric words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl Builtin {
    fn features(text: &str) -> HashMap<(u8, String), f32> {
        let ws = words(text);
        let mut f: HashMap<(u8, String), f32> = HashMap::new();
        for (i, w) in ws.iter().enumerate() {
            let weight = if STOPWORDS.contains(&w.as_str()) {
                0.1
            } else {
                1.0
            };
            *f.entry((0, w.clone())).or_default() += weight;
            if let Some(next) = ws.get(i + 1) {
                *f.entry((1, format!("{w} {next}"))).or_default() += 0.5 * weight;
            }
            if weight == 1.0 {
                let padded: Vec<char> = format!("^{w}$").chars().collect();
                for tri in padded.windows(3) {
                    *f.entry((2, tri.iter().collect())).or_default() += 0.25;
                }
            }
        }
        f
    }
}

#[async_trait::async_trait]
impl Embedder for Builtin {
    fn name(&self) -> &str {
        "builtin"
    }
    fn model(&self) -> &str {
        "builtin-hash-384"
    }
    fn dim(&self) -> usize {
        BUILTIN_DIM
    }
    fn hosted(&self) -> bool {
        false
    }
    async fn embed(&self, texts: &[&str]) -> Result<Embedded, LlmError> {
        let batch = owned(texts);
        let vectors = off_thread(move || {
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            Ok(Builtin.vectors(&refs))
        })
        .await?;
        Ok(Embedded {
            vectors,
            tokens: texts.iter().map(|t| estimate_tokens(t) as u32).sum(),
        })
    }
}

impl Builtin {
    /// The vectors of `texts`.
    pub fn vectors(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        texts
            .iter()
            .map(|t| {
                let mut v = vec![0.0f32; BUILTIN_DIM];
                for ((kind, feat), tf) in Self::features(t) {
                    let h = hash(&feat, u64::from(kind));
                    let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
                    // Sublinear term frequency: repetition counts, with diminishing returns.
                    v[(h % BUILTIN_DIM as u64) as usize] += sign * (1.0 + tf.ln_1p());
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                } else {
                    // Empty text: a fixed unit vector, so it is still a valid cosine point.
                    v[0] = 1.0;
                }
                v
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_normalised_and_related_texts_are_closer() {
        let e = Builtin;
        let v = e.vectors(&[
            "The cat sat on the mat",
            "A cat sat on a mat",
            "Quarterly revenue grew",
            "",
        ]);
        assert_eq!(
            v,
            e.vectors(&[
                "The cat sat on the mat",
                "A cat sat on a mat",
                "Quarterly revenue grew",
                ""
            ])
        );
        for x in &v {
            assert!((x.iter().map(|a| a * a).sum::<f32>() - 1.0).abs() < 1e-4);
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!(dot(&v[0], &v[1]) > 0.7, "{}", dot(&v[0], &v[1]));
        assert!(dot(&v[0], &v[2]).abs() < 0.3, "{}", dot(&v[0], &v[2]));
    }
}
