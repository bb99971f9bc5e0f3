//! Node-to-node transport: openraft's RPCs and the forwarding calls over gRPC
//! (`quiver.internal.v1.Raft`, its own port), bincode inside. Every call has a deadline; a
//! peer that cannot be reached is reported as `Unreachable`, so openraft backs off instead of
//! retrying in a loop; other failures are retried by openraft on its next heartbeat.
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quiver_proto::internal::RaftBytes;
use quiver_proto::internal::raft_client::RaftClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::TypeConfig;
use super::guard::ClusterKey;
use crate::error::ApiError;

/// Largest internal message (snapshot chunks and entry batches stay well below).
pub const MAX_MESSAGE: usize = 256 << 20;
/// Largest replicated log entry: a quarter of a message, so a batch of entries always fits.
pub const MAX_ENTRY: usize = MAX_MESSAGE / 4;

/// The internal methods' paths (what the cluster MAC covers).
pub mod path {
    /// openraft's AppendEntries.
    pub const APPEND_ENTRIES: &str = "/quiver.internal.v1.Raft/AppendEntries";
    /// openraft's Vote.
    pub const VOTE: &str = "/quiver.internal.v1.Raft/Vote";
    /// openraft's InstallSnapshot.
    pub const INSTALL_SNAPSHOT: &str = "/quiver.internal.v1.Raft/InstallSnapshot";
    /// A follower's request to the leader.
    pub const FORWARD: &str = "/quiver.internal.v1.Raft/Forward";
    /// A node's own view.
    pub const LOCAL_STATUS: &str = "/quiver.internal.v1.Raft/LocalStatus";
}

/// Makes one internal call, signed with the cluster secret when there is one, and checks
/// that the answer is signed by a holder of the same secret and bound to this request.
pub async fn signed_call<F, Fut>(
    key: Option<&ClusterKey>,
    path: &'static str,
    mut req: tonic::Request<RaftBytes>,
    send: F,
) -> Result<tonic::Response<RaftBytes>, tonic::Status>
where
    F: FnOnce(tonic::Request<RaftBytes>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<RaftBytes>, tonic::Status>>,
{
    let tag = key.map(|k| k.sign_request(path, &mut req));
    let resp = send(req).await?;
    if let (Some(k), Some(t)) = (key, tag) {
        k.verify_response(path, &t, &resp)?;
    }
    Ok(resp)
}

/// A lazily connecting client to the node at `addr` (HOST:PORT); over mutual TLS when `tls`
/// is set (the files are read now, so a new client picks up rotated certificates).
pub fn client(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<RaftClient<Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad cluster address {addr:?}: {e}"))?;
    if let Some(t) = tls {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca = t.client_ca.as_deref().ok_or("cluster TLS without a CA")?;
        let cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
            .identity(tonic::transport::Identity::from_pem(
                read(&t.cert)?,
                read(&t.key)?,
            ));
        ep = ep
            .tls_config(cfg)
            .map_err(|e| format!("cluster TLS: {e}"))?;
    }
    let ep = ep
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(RaftClient::new(ep.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Encodes a message.
pub fn encode<T: Serialize>(v: &T) -> Result<RaftBytes, tonic::Status> {
    bincode::serialize(v)
        .map(|data| RaftBytes { data })
        .map_err(|e| ApiError::Internal(format!("encode: {e}")).into())
}

/// Decodes a message. The byte limit bounds what a length prefix can make bincode allocate:
/// never more than the message itself holds.
pub fn decode<T: DeserializeOwned>(b: &RaftBytes) -> Result<T, tonic::Status> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(b.data.len() as u64)
        .deserialize(&b.data)
        .map_err(|e| ApiError::bad("message", format!("decode: {e}")).into())
}

/// Whether a failed call never reached the peer (so it is safe to retry anything).
pub fn unreachable(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && !s.message().contains("not the leader")
}

/// Builds [`Peer`]s.
#[derive(Debug, Clone)]
pub struct Network {
    /// Deadline of one call (openraft's per-RPC TTL applies when shorter).
    pub timeout: Duration,
    /// Node-to-node TLS.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The shared cluster secret.
    pub key: Option<std::sync::Arc<ClusterKey>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: None,
            timeout: self.timeout,
            tls: self.tls.clone(),
            key: self.key.clone(),
        }
    }
}

/// One peer.
pub struct Peer {
    target: u64,
    addr: String,
    client: Option<RaftClient<Channel>>,
    timeout: Duration,
    tls: Option<crate::tls::TlsFiles>,
    key: Option<std::sync::Arc<ClusterKey>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = client(&self.addr, self.timeout, self.tls.as_ref()).map_err(|e| {
                    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)))
                })?;
                self.client = Some(c.clone());
                c
            }
        };
        let mut client = client;
        let body = encode(req).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let mut request = tonic::Request::new(body);
        request.set_timeout(ttl.min(self.timeout));
        let key = self.key.as_deref();
        let resp = match method {
            path::APPEND_ENTRIES => {
                signed_call(key, method, request, |r| client.append_entries(r)).await
            }
            path::VOTE => signed_call(key, method, request, |r| client.vote(r)).await,
            _ => signed_call(key, method, request, |r| client.install_snapshot(r)).await,
        };
        let resp = resp.map_err(|s| {
            if unreachable(&s) {
                RPCError::Unreachable(Unreachable::new(&s))
            } else {
                RPCError::Network(NetworkError::new(&s))
            }
        })?;
        let out: Result<Resp, RaftError<u64, E>> =
            decode(resp.get_ref()).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        out.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        self.call(path::APPEND_ENTRIES, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.call(path::VOTE, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.call(path::INSTALL_SNAPSHOT, &rpc, option.hard_ttl())
            .await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // After an unreachable peer: 200 ms, then up to 1 s between attempts.
        openraft::network::Backoff::new(
            (1..)
                .map(|i: u64| Duration::from_millis((200 * i).min(1000)))
                .take(usize::MAX),
        )
    }
}
