//! The server's error type and its one mapping to gRPC status codes.
use tonic::{Code, Status};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the storage engine.
    #[error(transparent)]
    Storage(#[from] quiver_storage::Error),
    /// A request field that cannot be converted.
    #[error("{field}: {reason}")]
    BadRequest {
        /// The field, e.g. `points[3].payload_json`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A request over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// Storage is opening or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The request is valid but the target is not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// A named thing (e.g. a review item) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A deadline or an upstream timeout passed.
    #[error("{0}")]
    Deadline(String),
    /// A bug or a lost worker thread.
    #[error("internal error: {0}")]
    Internal(String),
    /// A status decided elsewhere (the replicated state machine, the leader).
    #[error("{}", .0.message())]
    Status(Status),
}

impl ApiError {
    /// A bad field.
    pub fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn storage_code(e: &quiver_storage::Error) -> Code {
    use quiver_storage::Error as E;
    match e {
        E::DimensionMismatch { .. } | E::NonFinite { .. } | E::InvalidArgument { .. } => {
            Code::InvalidArgument
        }
        E::CollectionNotFound { .. } => Code::NotFound,
        E::CollectionExists { .. } => Code::AlreadyExists,
        E::Corrupt { .. } => Code::DataLoss,
        E::Io(io) if io.raw_os_error() == Some(28) => Code::ResourceExhausted, // ENOSPC
        E::Io(_) | E::Meta(_) => Code::Internal,
        E::Closed => Code::Unavailable,
        E::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        E::TooLarge { .. } => Code::ResourceExhausted,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        if let ApiError::Status(s) = e {
            return s;
        }
        let code = match &e {
            ApiError::Storage(s) => storage_code(s),
            ApiError::BadRequest { .. } => Code::InvalidArgument,
            ApiError::TooLarge(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Precondition(_) => Code::FailedPrecondition,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::Deadline(_) => Code::DeadlineExceeded,
            ApiError::Internal(_) => Code::Internal,
            ApiError::Status(s) => s.code(),
        };
        if code == Code::Internal || code == Code::DataLoss {
            tracing::error!(error = %e, "request failed");
        }
        Status::new(code, e.to_string())
    }
}

/// Result alias for handlers' inner functions.
pub type ApiResult<T> = Result<T, ApiError>;
