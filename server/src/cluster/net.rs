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

/// Largest internal message (snapshot chunks and entry batches stay well below).
pub const MAX_MESSAGE: usize = 256 << 20;

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
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

/// Decodes a message.
pub fn decode<T: DeserializeOwned>(b: &RaftBytes) -> Result<T, tonic::Status> {
    bincode::deserialize(&b.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
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
        let resp = match method {
            "append_entries" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
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
        self.call("append_entries", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.call("install_snapshot", &rpc, option.hard_ttl()).await
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
