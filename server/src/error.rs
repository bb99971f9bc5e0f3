//! The server's error type and its one mapping to gRPC statuses: domain error (storage, auth,
//! validation, replication) → [`ApiError`] → [`Kind`] → [`Status`]. Nothing else in the server
//! builds a `Status`; statuses that arrive from elsewhere (a peer's answer) come back in through
//! [`ApiError::from_status`].
use std::time::Duration;

use serde::{Deserialize, Serialize};
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
    /// Over a rate: the caller should retry after `retry_after` (sent as gRPC RetryInfo).
    #[error("{message}")]
    RateLimited {
        /// What was exceeded.
        message: String,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// Storage is opening, the server is shutting down, or no leader is reachable.
    #[error("{0}")]
    Unavailable(String),
    /// The request is valid but the target is not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// A named thing (e.g. a review item) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A named thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// No credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A deadline or an upstream timeout passed.
    #[error("{0}")]
    Deadline(String),
    /// A bug or a lost worker thread.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error decided elsewhere (the replicated state machine, the leader, a peer) and
    /// carried here as its kind and message.
    #[error("{message}")]
    Failed {
        /// Its kind.
        kind: Kind,
        /// Its message, as the deciding node wrote it.
        message: String,
    },
}

/// The kinds of failure, one per gRPC code the API uses. Also what a replica reports to the
/// node that proposed a write (serialised by name, not by a transport's code number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// INVALID_ARGUMENT.
    InvalidArgument,
    /// NOT_FOUND.
    NotFound,
    /// ALREADY_EXISTS.
    AlreadyExists,
    /// RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// FAILED_PRECONDITION.
    FailedPrecondition,
    /// ABORTED: a lost read-modify-write race; re-read and retry.
    Aborted,
    /// UNAVAILABLE.
    Unavailable,
    /// DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// UNAUTHENTICATED.
    Unauthenticated,
    /// PERMISSION_DENIED.
    PermissionDenied,
    /// DATA_LOSS.
    DataLoss,
    /// INTERNAL.
    Internal,
}

impl Kind {
    /// Its gRPC code.
    pub fn code(self) -> Code {
        match self {
            Kind::InvalidArgument => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::ResourceExhausted => Code::ResourceExhausted,
            Kind::FailedPrecondition => Code::FailedPrecondition,
            Kind::Aborted => Code::Aborted,
            Kind::Unavailable => Code::Unavailable,
            Kind::DeadlineExceeded => Code::DeadlineExceeded,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::PermissionDenied => Code::PermissionDenied,
            Kind::DataLoss => Code::DataLoss,
            Kind::Internal => Code::Internal,
        }
    }

    /// The kind of a gRPC code received from elsewhere (codes the API does not use count as
    /// internal, except a peer's OUT_OF_RANGE for an oversized message: resource exhausted).
    pub fn of_code(code: Code) -> Kind {
        match code {
            Code::InvalidArgument => Kind::InvalidArgument,
            Code::NotFound => Kind::NotFound,
            Code::AlreadyExists => Kind::AlreadyExists,
            Code::ResourceExhausted | Code::OutOfRange => Kind::ResourceExhausted,
            Code::FailedPrecondition => Kind::FailedPrecondition,
            Code::Aborted => Kind::Aborted,
            Code::Unavailable | Code::Cancelled => Kind::Unavailable,
            Code::DeadlineExceeded => Kind::DeadlineExceeded,
            Code::Unauthenticated => Kind::Unauthenticated,
            Code::PermissionDenied => Kind::PermissionDenied,
            Code::DataLoss => Kind::DataLoss,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal => Kind::Internal,
        }
    }
}

impl ApiError {
    /// A bad field.
    pub fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A status received from elsewhere (a peer, a forwarded call), as an error of this server.
    pub fn from_status(s: &Status) -> Self {
        ApiError::Failed {
            kind: Kind::of_code(s.code()),
            message: s.message().to_owned(),
        }
    }

    /// The same error with `what` in front of its message (e.g. which message of a stream
    /// failed), keeping its kind.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        ApiError::Failed {
            kind: self.kind(),
            message: format!("{what}: {self}"),
        }
    }

    /// A copy, for reporting one failure to several requests.
    pub fn duplicate(&self) -> Self {
        ApiError::Failed {
            kind: self.kind(),
            message: self.to_string(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            ApiError::Storage(s) => storage_kind(s),
            ApiError::BadRequest { .. } => Kind::InvalidArgument,
            ApiError::TooLarge(_) | ApiError::RateLimited { .. } => Kind::ResourceExhausted,
            ApiError::Unavailable(_) => Kind::Unavailable,
            ApiError::Precondition(_) => Kind::FailedPrecondition,
            ApiError::NotFound(_) => Kind::NotFound,
            ApiError::AlreadyExists(_) => Kind::AlreadyExists,
            ApiError::Unauthenticated(_) => Kind::Unauthenticated,
            ApiError::PermissionDenied(_) => Kind::PermissionDenied,
            ApiError::Deadline(_) => Kind::DeadlineExceeded,
            ApiError::Internal(_) => Kind::Internal,
            ApiError::Failed { kind, .. } => *kind,
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        self.kind().code()
    }
}

/// The pipeline's errors: a host error is the server's own, returned as it was; the rest map
/// by meaning.
impl From<quiver_rag::Error> for ApiError {
    fn from(e: quiver_rag::Error) -> ApiError {
        use quiver_rag::Error as E;
        match e {
            E::Storage(s) => ApiError::Storage(s),
            E::BadRequest { field, reason } => ApiError::BadRequest { field, reason },
            E::TooLarge(m) => ApiError::TooLarge(m),
            E::Precondition(m) => ApiError::Precondition(m),
            E::NotFound(m) => ApiError::NotFound(m),
            E::Internal(m) => ApiError::Internal(m),
            E::Llm(l) => ApiError::from(l),
            E::Host { error, .. } => match error.downcast::<ApiError>() {
                Ok(mine) => *mine,
                Err(other) => ApiError::Internal(other.to_string()),
            },
        }
    }
}

/// Provider failures: unreachable or rate limiting → UNAVAILABLE, a timeout →
/// DEADLINE_EXCEEDED, a refusal → FAILED_PRECONDITION, a full queue → RESOURCE_EXHAUSTED.
impl From<quiver_rag::llm::LlmError> for ApiError {
    fn from(e: quiver_rag::llm::LlmError) -> ApiError {
        use quiver_rag::llm::LlmError as L;
        match &e {
            L::Unavailable { .. } | L::RateLimited { .. } => ApiError::Unavailable(e.to_string()),
            L::Timeout { .. } => ApiError::Deadline(e.to_string()),
            L::Rejected { .. } => ApiError::Precondition(e.to_string()),
            L::Failed(_) | L::Cancelled => ApiError::Internal(e.to_string()),
            L::Busy { .. } => ApiError::TooLarge(e.to_string()),
        }
    }
}

fn storage_kind(e: &quiver_storage::Error) -> Kind {
    use quiver_storage::Error as E;
    match e {
        E::DimensionMismatch { .. } | E::NonFinite { .. } | E::InvalidArgument { .. } => {
            Kind::InvalidArgument
        }
        E::CollectionNotFound { .. } => Kind::NotFound,
        E::CollectionExists { .. } => Kind::AlreadyExists,
        E::Conflict { .. } => Kind::Aborted,
        E::Corrupt { .. } => Kind::DataLoss,
        E::Io(io) if io.raw_os_error() == Some(28) => Kind::ResourceExhausted, // ENOSPC
        E::Io(_) | E::Meta(_) => Kind::Internal,
        E::Closed | E::NotReady { .. } => Kind::Unavailable,
        E::DeadlineExceeded { .. } => Kind::DeadlineExceeded,
        E::TooLarge { .. } => Kind::ResourceExhausted,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = e.code();
        if code == Code::Internal || code == Code::DataLoss {
            tracing::error!(error = %e, "request failed");
        }
        if let ApiError::RateLimited {
            message,
            retry_after,
        } = e
        {
            use tonic_types::{ErrorDetails, StatusExt};
            return Status::with_error_details(
                code,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            );
        }
        Status::new(code, e.to_string())
    }
}

/// Whether a status is tonic's report of a message over the size limit: its decoder says
/// OUT_OF_RANGE ("message length too large"), where the API (and gRPC's convention) says
/// RESOURCE_EXHAUSTED. `message` may be percent-encoded (a `grpc-message` header). The one
/// test both rewrites use: [`oversized`] for statuses, the transport layer for trailers.
pub fn is_oversized(code: Code, message: &str) -> bool {
    code == Code::OutOfRange && (message.contains("too large") || message.contains("too%20large"))
}

/// A status with an oversized message's OUT_OF_RANGE reported as RESOURCE_EXHAUSTED.
pub fn oversized(s: Status) -> Status {
    if is_oversized(s.code(), s.message()) {
        Status::from(ApiError::TooLarge(s.message().to_owned()))
    } else {
        s
    }
}

/// Result alias for handlers' inner functions.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind survives the trip through its gRPC code, so a peer's answer keeps its kind.
    #[test]
    fn kinds_roundtrip_through_their_codes() {
        let all = [
            Kind::InvalidArgument,
            Kind::NotFound,
            Kind::AlreadyExists,
            Kind::ResourceExhausted,
            Kind::FailedPrecondition,
            Kind::Aborted,
            Kind::Unavailable,
            Kind::DeadlineExceeded,
            Kind::Unauthenticated,
            Kind::PermissionDenied,
            Kind::DataLoss,
            Kind::Internal,
        ];
        for k in all {
            assert_eq!(Kind::of_code(k.code()), k, "{k:?}");
        }
        let s: Status = ApiError::RateLimited {
            message: "over 5 requests per second".into(),
            retry_after: Duration::from_millis(200),
        }
        .into();
        use tonic_types::StatusExt;
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(200))
        );
    }
}
