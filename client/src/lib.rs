//! Rust client for Quiver's gRPC API (`quiver.v1`), used by the `quiver` CLI, the benchmarks
//! and the end-to-end tests.
#![forbid(unsafe_code)]

pub mod cli;
mod cmd;
mod docs;
mod ingest;

use std::time::Duration;

pub use quiver_proto::v1 as pb;
use quiver_proto::v1::cluster_client::ClusterClient;
use quiver_proto::v1::collections_client::CollectionsClient;
use quiver_proto::v1::keys_client::KeysClient;
use quiver_proto::v1::points_client::PointsClient;
use quiver_proto::v1::rag_client::RagClient;
use quiver_proto::v1::search_client::SearchClient;
use quiver_proto::v1::snapshots_client::SnapshotsClient;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Metadata sent with every call (e.g. `x-quiver-tenant`).
#[derive(Debug, Clone, Default)]
pub struct Headers(std::sync::Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl Headers {
    /// Headers from (name, value) pairs; names are lower-cased ASCII, values ASCII.
    pub fn new(pairs: &[(&str, &str)]) -> Result<Headers, String> {
        pairs
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.parse::<AsciiMetadataKey>()
                        .map_err(|_| format!("header name {k:?} is not valid"))?,
                    v.parse::<AsciiMetadataValue>()
                        .map_err(|_| format!("header {k} value {v:?} is not printable ASCII"))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()
            .map(|v| Headers(std::sync::Arc::new(v)))
    }
}

impl Interceptor for Headers {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in self.0.iter() {
            r.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(r)
    }
}

/// The transport every service client uses: the channel plus [`Headers`].
pub type Transport = InterceptedService<Channel, Headers>;

/// The default server address (`QUIVER_ADDR` overrides it in the CLI).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:6334";

/// Largest message the client sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Errors from connecting or calling.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid URI or the server cannot be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
}

/// The canonical upper-case name of a status code (`NOT_FOUND`, ...).
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A connection to one server, with a client per service (cheap to clone).
#[derive(Debug, Clone)]
pub struct Client {
    /// `quiver.v1.Collections`
    pub collections: CollectionsClient<Transport>,
    /// `quiver.v1.Points`
    pub points: PointsClient<Transport>,
    /// `quiver.v1.Search`
    pub search: SearchClient<Transport>,
    /// `quiver.v1.Rag`
    pub rag: RagClient<Transport>,
    /// `quiver.v1.Cluster`
    pub cluster: ClusterClient<Transport>,
    /// `quiver.v1.Keys`
    pub keys: KeysClient<Transport>,
    /// `quiver.v1.Snapshots`
    pub snapshots: SnapshotsClient<Transport>,
    /// The underlying channel (for health checks).
    pub channel: Channel,
}

impl Client {
    /// Connects to `addr` (`http://host:port`).
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::open(addr, None, Headers::default()).await
    }

    /// Connects to `addr`, over TLS when `tls` is given.
    async fn open(
        addr: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
        headers: Headers,
    ) -> Result<Client, ClientError> {
        let err = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let mut ep = Endpoint::from_shared(addr.to_owned()).map_err(err)?;
        if let Some(t) = tls {
            ep = ep.tls_config(t).map_err(err)?;
        }
        let channel = ep
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(err)?;
        Ok(Client::from_channel(channel, headers))
    }

    /// Connects, sending `headers` with every call.
    pub async fn connect_with(addr: &str, headers: Headers) -> Result<Client, ClientError> {
        Client::open(addr, None, headers).await
    }

    /// Connects to an `https://` address: the server's certificate must chain to `ca_pem`
    /// (PEM); `identity` (certificate, key; PEM) is presented for mutual TLS.
    pub async fn connect_tls(
        addr: &str,
        headers: Headers,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Client, ClientError> {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Client::open(addr, Some(tls), headers).await
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel, headers: Headers) -> Client {
        let m = MAX_MESSAGE_BYTES;
        let t = |c: &Channel| InterceptedService::new(c.clone(), headers.clone());
        Client {
            collections: CollectionsClient::new(t(&channel))
                .max_decoding_message_size(m)
                .max_encoding_message_size(m),
            points: PointsClient::new(t(&channel))
                .max_decoding_message_size(m)
                .max_encoding_message_size(m),
            search: SearchClient::new(t(&channel))
                .max_decoding_message_size(m)
                .max_encoding_message_size(m),
            rag: RagClient::new(t(&channel))
                .max_decoding_message_size(m)
                .max_encoding_message_size(m),
            cluster: ClusterClient::new(t(&channel)),
            keys: KeysClient::new(t(&channel)),
            snapshots: SnapshotsClient::new(t(&channel)).max_decoding_message_size(m),
            channel,
        }
    }

    /// Creates a collection.
    pub async fn create_collection(
        &mut self,
        name: &str,
        dim: u32,
        metric: pb::Metric,
    ) -> Result<pb::CollectionInfo, ClientError> {
        let req = pb::CreateCollectionRequest {
            name: name.into(),
            dim,
            metric: metric as i32,
            ..Default::default()
        };
        Ok(self.collections.create(req).await?.into_inner())
    }

    /// Upserts one batch.
    pub async fn upsert(
        &mut self,
        collection: &str,
        points: Vec<pb::Point>,
    ) -> Result<pb::UpsertResponse, ClientError> {
        let req = pb::UpsertRequest {
            collection: collection.into(),
            points,
            batch_id: 0,
        };
        Ok(self.points.upsert(req).await?.into_inner())
    }

    /// Exact or default search.
    pub async fn search(
        &mut self,
        collection: &str,
        vector: Vec<f32>,
        k: u32,
        with_payload: bool,
    ) -> Result<Vec<pb::ScoredPoint>, ClientError> {
        let req = pb::SearchRequest {
            collection: collection.into(),
            vector,
            k,
            with_payload,
            ..Default::default()
        };
        Ok(self.search.search(req).await?.into_inner().hits)
    }

    /// Live points in a collection.
    pub async fn count(&mut self, collection: &str) -> Result<u64, ClientError> {
        Ok(self
            .points
            .count(pb::CountRequest {
                collection: collection.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .count)
    }
}

/// A numeric id.
pub fn num_id(n: u64) -> pb::PointId {
    pb::PointId {
        kind: Some(pb::point_id::Kind::Num(n)),
    }
}

/// A string id.
pub fn str_id(s: impl Into<String>) -> pb::PointId {
    pb::PointId {
        kind: Some(pb::point_id::Kind::Str(s.into())),
    }
}

/// An id as JSON: numbers stay numbers, strings stay strings.
pub fn id_to_json(id: &Option<pb::PointId>) -> serde_json::Value {
    match id.as_ref().and_then(|i| i.kind.as_ref()) {
        Some(pb::point_id::Kind::Num(n)) => serde_json::Value::from(*n),
        Some(pb::point_id::Kind::Str(s)) => serde_json::Value::from(s.clone()),
        None => serde_json::Value::Null,
    }
}

/// Parses a JSON id: a non-negative integer or a string.
pub fn id_from_json(v: &serde_json::Value) -> Option<pb::PointId> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(num_id),
        serde_json::Value::String(s) if !s.is_empty() => Some(str_id(s.clone())),
        serde_json::Value::String(_)
        | serde_json::Value::Null
        | serde_json::Value::Bool(_)
        | serde_json::Value::Array(_)
        | serde_json::Value::Object(_) => None,
    }
}

/// Reads fvecs (`int32 dim` then `dim` f32 per row) from bytes.
pub fn parse_fvecs(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let d = bytes
            .get(pos..pos + 4)
            .ok_or_else(|| format!("truncated row header at byte {pos}"))?;
        let dim = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        if dim <= 0 {
            return Err(format!("row {} has dimension {dim}", out.len()));
        }
        let end = pos + 4 + 4 * dim as usize;
        let body = bytes
            .get(pos + 4..end)
            .ok_or_else(|| format!("row {} is truncated", out.len()))?;
        out.push(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        pos = end;
    }
    Ok(out)
}
