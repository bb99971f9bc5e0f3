//! The engine's one error type. Every variant carries the context a user needs to act on it;
//! the server maps each variant to exactly one gRPC status.
use std::path::PathBuf;

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vector's length differs from the collection's dimension.
    #[error("{field}: expected dimension {expected}, got {got}")]
    DimensionMismatch {
        /// Which value was wrong, e.g. `points[3].vector`.
        field: String,
        /// The collection's dimension.
        expected: usize,
        /// The length that was sent.
        got: usize,
    },
    /// A NaN or infinite component.
    #[error("{field}: value {value} is not finite")]
    NonFinite {
        /// e.g. `points[3].vector[17]`.
        field: String,
        /// The offending value, printed.
        value: String,
    },
    /// Any other invalid argument (empty vector, bad name, bad id, bad config).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No collection with this name.
    #[error("collection '{name}' not found")]
    CollectionNotFound {
        /// The name asked for.
        name: String,
    },
    /// A collection with this name already exists.
    #[error("collection '{name}' already exists")]
    CollectionExists {
        /// The name asked for.
        name: String,
    },
    /// On-disk data failed a checksum or structural check.
    #[error("corrupt data in {}: at offset {offset}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// An I/O error, with the path it happened on.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata store (RocksDB) failed.
    #[error("metadata store: {0}")]
    Meta(String),
    /// The engine is shutting down or was closed.
    #[error("engine is closed")]
    Closed,
    /// The request would make the engine build or write more than a limit allows.
    #[error("{field}: {detail}")]
    TooLarge {
        /// The field or limit at fault, e.g. `ids` or `set_json`.
        field: String,
        /// What was too large, and the limit.
        detail: String,
    },
    /// A compare-and-set found another value: a concurrent write got there first.
    #[error("{key}: {detail}")]
    Conflict {
        /// The record's key.
        key: String,
        /// What it holds instead.
        detail: String,
    },
    /// An index the request needs is still being built (retry shortly).
    #[error("{what} is still being built; retry shortly")]
    NotReady {
        /// What is not ready, e.g. `the text index of field body in segment 3`.
        what: String,
    },
    /// The caller's deadline passed; the work was stopped.
    #[error("deadline exceeded after {elapsed_ms} ms; the search was stopped")]
    DeadlineExceeded {
        /// Time spent before stopping.
        elapsed_ms: u64,
    },
}

impl Error {
    /// A copy of this error, for reporting one failure to several requests (an I/O error
    /// keeps its kind and message).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::DimensionMismatch {
                field,
                expected,
                got,
            } => Error::DimensionMismatch {
                field: field.clone(),
                expected: *expected,
                got: *got,
            },
            Error::NonFinite { field, value } => Error::NonFinite {
                field: field.clone(),
                value: value.clone(),
            },
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::CollectionNotFound { name } => Error::CollectionNotFound { name: name.clone() },
            Error::CollectionExists { name } => Error::CollectionExists { name: name.clone() },
            Error::Corrupt {
                path,
                offset,
                detail,
            } => Error::Corrupt {
                path: path.clone(),
                offset: *offset,
                detail: detail.clone(),
            },
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Meta(m) => Error::Meta(m.clone()),
            Error::TooLarge { field, detail } => Error::TooLarge {
                field: field.clone(),
                detail: detail.clone(),
            },
            Error::Conflict { key, detail } => Error::Conflict {
                key: key.clone(),
                detail: detail.clone(),
            },
            Error::Closed => Error::Closed,
            Error::NotReady { what } => Error::NotReady { what: what.clone() },
            Error::DeadlineExceeded { elapsed_ms } => Error::DeadlineExceeded {
                elapsed_ms: *elapsed_ms,
            },
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            detail: detail.into(),
        }
    }
}
