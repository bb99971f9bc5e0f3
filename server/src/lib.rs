//! quiverd: the gRPC front of the storage engine. Thin handlers, one error mapping, config,
//! telemetry and an orderly shutdown: health NOT_SERVING → stop accepting → drain → fsync the
//! WAL → close the metadata store.
#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod idle_poll;
pub mod rag;
/// Secrets in memory (shared with the RAG pipeline, which holds provider keys).
pub use quiver_rag::secret;
mod serve;
pub mod telemetry;
pub mod tls;
pub mod write;

pub use serve::{MAX_HEADER_LIST_BYTES, MAX_STREAMS_PER_CONNECTION, serve};

/// Names reported by the health service (plus `""` for the whole server).
const SERVICES: [&str; 6] = [
    "quiver.v1.Collections",
    "quiver.v1.Points",
    "quiver.v1.Search",
    "quiver.v1.Rag",
    "quiver.v1.Cluster",
    "quiver.v1.Keys",
];

/// The health service name Kubernetes readiness probes ask for: SERVING once storage is open
/// and, on a cluster, the node has a leader and is caught up (see [`cluster::Cluster::is_ready`]).
/// The empty name ("") is SERVING whenever the process serves (liveness).
pub const READINESS: &str = "quiver.readiness";

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Storage failed to open or close.
    #[error("storage: {0}")]
    Storage(#[from] quiver_storage::Error),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection setup failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A task panicked.
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A RAG provider could not be set up.
    #[error(transparent)]
    Rag(#[from] rag::RagSetupError),
    /// The metrics port cannot be bound.
    #[error("metrics listener: {0}")]
    MetricsListen(std::io::Error),
    /// The idle-polling thread could not start.
    #[error("idle poller: {0}")]
    Poller(std::io::Error),
    /// Replication could not start.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The TLS files cannot be loaded.
    #[error("tls: {0}")]
    Tls(String),
}
