//! The in-process models (feature `local-models`): SmolLM2-135M-Instruct as the `local`
//! generator and all-MiniLM-L6-v2 as the `local` embedder, loaded from the models directory on
//! first use (`scripts/fetch-models.sh` puts them there). Nothing leaves the machine.
use std::path::PathBuf;
use std::sync::Arc;

use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::llm::Generator;

/// Directory names under the models directory.
pub const LLM_FILE: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The embedding model's directory.
pub const EMBEDDER_DIR: &str = "all-minilm-l6-v2";

/// Lazily loaded local models.
pub struct LocalModels {
    dir: PathBuf,
    /// `[rag] local_price`: what self-hosted compute is accounted at.
    #[cfg_attr(not(feature = "local-models"), allow(dead_code))]
    price: crate::settings::Price,
    #[cfg(feature = "local-models")]
    llm: std::sync::Mutex<Option<Arc<imp::LocalGenerator>>>,
    #[cfg(feature = "local-models")]
    embedder: std::sync::Mutex<Option<Arc<imp::LocalEmbedding>>>,
}

impl LocalModels {
    /// Models under `dir` (nothing is read yet).
    pub fn new(dir: PathBuf, price: crate::settings::Price) -> Self {
        LocalModels {
            dir,
            price,
            #[cfg(feature = "local-models")]
            llm: std::sync::Mutex::new(None),
            #[cfg(feature = "local-models")]
            embedder: std::sync::Mutex::new(None),
        }
    }

    /// The local generator (loaded on first use; call from a blocking thread).
    #[cfg(feature = "local-models")]
    pub fn generator(&self) -> Result<Arc<dyn Generator>> {
        let mut g = self.llm.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &*g {
            return Ok(Arc::clone(m) as Arc<dyn Generator>);
        }
        let path = self.dir.join(LLM_FILE);
        let started = std::time::Instant::now();
        let m = crate::local::LocalLlm::load(&path)
            .map_err(|e| Error::Precondition(format!("local generator: {e}")))?;
        tracing::info!(model = m.model_name(), path = %path.display(), took_ms = started.elapsed().as_millis() as u64, "local generator loaded");
        let info = crate::llm::GeneratorInfo {
            name: "local".into(),
            model: m.model_name().to_owned(),
            system: "quiver.local",
            hosted: false,
            price: self.price,
        };
        let m = Arc::new(imp::LocalGenerator::new(Arc::new(m), info));
        *g = Some(Arc::clone(&m));
        Ok(m)
    }

    /// The local embedder (loaded on first use).
    #[cfg(feature = "local-models")]
    pub fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        let mut g = self.embedder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &*g {
            return Ok(Arc::clone(m) as Arc<dyn Embedder>);
        }
        let path = self.dir.join(EMBEDDER_DIR);
        let m = crate::local::LocalEmbedder::load(&path)
            .map_err(|e| Error::Precondition(format!("local embedder: {e}")))?;
        tracing::info!(path = %path.display(), "local embedder loaded");
        let m = Arc::new(imp::LocalEmbedding(Arc::new(m)));
        *g = Some(Arc::clone(&m));
        Ok(m)
    }

    /// Without the feature: a clear refusal.
    #[cfg(not(feature = "local-models"))]
    pub fn generator(&self) -> Result<Arc<dyn Generator>> {
        Err(Error::Precondition(format!(
            "the local generator needs a quiverd built with the local-models feature (models in {})",
            self.dir.display()
        )))
    }

    /// Without the feature: a clear refusal.
    #[cfg(not(feature = "local-models"))]
    pub fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        Err(Error::Precondition(format!(
            "the local embedder needs a quiverd built with the local-models feature (models in {})",
            self.dir.display()
        )))
    }
}

#[cfg(feature = "local-models")]
mod imp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::mpsc::UnboundedSender;

    use crate::embed::{Embedded, Embedder, off_thread, owned};
    use crate::llm::{GenParams, Generation, Generator, GeneratorInfo, LlmError, Prompt};
    use crate::local::{ChatMessage, LocalEmbedder, LocalLlm, Role};

    /// SmolLM2 behind [`Generator`], with its identity. One generation runs at a time (it
    /// uses every core); at most [`LOCAL_QUEUE`] more wait for it, each on no thread at all.
    /// Beyond that a request is refused at once with RESOURCE_EXHAUSTED instead of pinning
    /// a blocking thread for minutes.
    pub struct LocalGenerator(
        pub Arc<LocalLlm>,
        pub GeneratorInfo,
        Arc<tokio::sync::Semaphore>,
        Arc<tokio::sync::Semaphore>,
    );

    /// Requests that may wait for the local model.
    pub const LOCAL_QUEUE: usize = 8;

    impl LocalGenerator {
        /// Wraps a loaded model.
        pub fn new(model: Arc<LocalLlm>, info: GeneratorInfo) -> Self {
            LocalGenerator(
                model,
                info,
                Arc::new(tokio::sync::Semaphore::new(1 + LOCAL_QUEUE)),
                Arc::new(tokio::sync::Semaphore::new(1)),
            )
        }
    }

    /// Sets the flag when the generating future is dropped (the caller went away).
    struct CancelOnDrop(Arc<AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[async_trait::async_trait]
    impl Generator for LocalGenerator {
        fn info(&self) -> &GeneratorInfo {
            &self.1
        }
        fn count_tokens(&self, text: &str) -> usize {
            self.0.count_tokens(text)
        }
        fn context_len(&self) -> Option<usize> {
            Some(self.0.context_len())
        }

        async fn generate(
            &self,
            prompt: &Prompt,
            p: GenParams,
            tokens: Option<UnboundedSender<String>>,
        ) -> Result<Generation, LlmError> {
            // A place in the queue, or a refusal; then the single running slot (awaited
            // without a thread).
            let _queued = Arc::clone(&self.2)
                .try_acquire_owned()
                .map_err(|_| LlmError::Busy {
                    provider: "local".into(),
                    queued: LOCAL_QUEUE,
                })?;
            let _running = Arc::clone(&self.3)
                .acquire_owned()
                .await
                .map_err(|_| LlmError::Cancelled)?;
            let cancel = Arc::new(AtomicBool::new(false));
            let _guard = CancelOnDrop(Arc::clone(&cancel));
            let model = Arc::clone(&self.0);
            let messages = vec![
                ChatMessage {
                    role: Role::System,
                    content: prompt.system.clone(),
                },
                ChatMessage {
                    role: Role::User,
                    content: prompt.user(),
                },
            ];
            let out = tokio::task::spawn_blocking(move || {
                let params = crate::local::GenParams {
                    max_tokens: p.max_tokens,
                    temperature: p.temperature,
                    seed: 42,
                };
                let mut on_token = |piece: &str| {
                    if cancel.load(Ordering::Relaxed) {
                        return false;
                    }
                    match &tokens {
                        Some(t) => t.send(piece.to_owned()).is_ok(),
                        None => true,
                    }
                };
                model.generate(&messages, &params, &mut on_token)
            })
            .await
            .map_err(|e| LlmError::Failed(format!("local generator thread: {e}")))?
            .map_err(|e| LlmError::Failed(format!("local generator: {e}")))?;
            if out.finish_reason == "cancelled" {
                return Err(LlmError::Cancelled);
            }
            Ok(Generation {
                text: out.text,
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
                cached_tokens: 0,
                estimated: false,
                finish_reason: out.finish_reason.to_owned(),
                first_token: out.first_token,
                model: self.0.model_name().to_owned(),
            })
        }
    }

    /// MiniLM behind [`Embedder`].
    pub struct LocalEmbedding(pub Arc<LocalEmbedder>);

    #[async_trait::async_trait]
    impl Embedder for LocalEmbedding {
        fn name(&self) -> &str {
            "local"
        }
        fn model(&self) -> &str {
            "all-MiniLM-L6-v2"
        }
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn hosted(&self) -> bool {
            false
        }
        async fn embed(&self, texts: &[&str]) -> Result<Embedded, LlmError> {
            let (model, batch) = (Arc::clone(&self.0), owned(texts));
            let vectors = off_thread(move || {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                model
                    .embed(&refs)
                    .map_err(|e| LlmError::Failed(format!("local embedder: {e}")))
            })
            .await?;
            Ok(Embedded {
                vectors,
                tokens: texts
                    .iter()
                    .map(|t| crate::llm::estimate_tokens(t) as u32)
                    .sum(),
            })
        }
    }
}
