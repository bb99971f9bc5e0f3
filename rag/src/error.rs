//! The pipeline's error type. The server maps it onto its own (and from there onto gRPC
//! statuses); a host's own errors travel through [`Error::Host`] untouched, so the server gets
//! back exactly what its write path said.
use crate::llm::LlmError;

/// Why a RAG call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the storage engine.
    #[error(transparent)]
    Storage(#[from] quiver_storage::Error),
    /// A request field that is not acceptable.
    #[error("{field}: {reason}")]
    BadRequest {
        /// The field, e.g. `documents[3].id`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Over a limit (sizes, the token budget, a full generator queue).
    #[error("{0}")]
    TooLarge(String),
    /// Valid, but not allowed in this state (a policy, a decided review, a missing model).
    #[error("{0}")]
    Precondition(String),
    /// A named thing (a review item) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A provider call failed.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// A bug or a lost worker thread.
    #[error("internal error: {0}")]
    Internal(String),
    /// From the host (its write path or barrier), kept whole.
    #[error("{error}")]
    Host {
        /// What the pipeline needs to know about it.
        kind: HostKind,
        /// The host's own error.
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// The classes of host failure the pipeline acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A compare-and-set lost (the record changed or exists).
    Conflict,
    /// A counter's ceiling would be exceeded.
    OverCeiling,
    /// Anything else: passed on to the caller.
    Other,
}

impl Error {
    /// A bad field.
    pub fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Whether this is a lost compare-and-set, from the engine directly or through the host.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Storage(quiver_storage::Error::Conflict { .. })
                | Error::Host {
                    kind: HostKind::Conflict,
                    ..
                }
        )
    }

    /// Whether a counter's ceiling refused the change.
    pub fn is_over_ceiling(&self) -> bool {
        matches!(
            self,
            Error::Storage(quiver_storage::Error::TooLarge { .. })
                | Error::Host {
                    kind: HostKind::OverCeiling,
                    ..
                }
        )
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
