//! The internal gRPC service on the cluster port.
use std::sync::Arc;

use quiver_proto::internal::RaftBytes;
use quiver_proto::internal::raft_server::{Raft as RaftRpc, RaftServer};
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::command::Failure;
use super::leader::{Forward, Forwarded};
use super::net::{self, decode, encode};
use super::{Cluster, TypeConfig, sm};
use crate::error::ApiError;

/// Serves the cluster port on `listener` until the process ends: mutual TLS between nodes
/// when configured (certificates reloaded when the files change), else plain TCP.
pub(super) fn spawn(
    cluster: Arc<Cluster>,
    listener: tokio::net::TcpListener,
) -> Result<tokio::task::JoinHandle<()>, crate::ServerError> {
    let svc = RaftServer::new(Service {
        cluster: Arc::clone(&cluster),
        failures: crate::auth::FailureLimiter::new(),
    })
    .max_decoding_message_size(net::MAX_MESSAGE)
    .max_encoding_message_size(net::MAX_MESSAGE);
    let reloader = match &cluster.settings.tls {
        Some(files) => Some(
            crate::tls::Reloader::new(files.clone())
                .map_err(|e| crate::ServerError::Tls(format!("cluster port: {e}")))?,
        ),
        None => None,
    };
    Ok(tokio::spawn(async move {
        use tokio_stream::StreamExt;
        let builder = tonic::transport::Server::builder()
            .max_concurrent_streams(crate::MAX_STREAMS_PER_CONNECTION)
            .add_service(svc);
        let served = match reloader {
            // Mutual TLS between nodes, certificates reloaded when the files change.
            Some(r) => {
                let watcher = r.spawn_watcher();
                let out = builder.serve_with_incoming(r.incoming(listener)).await;
                watcher.abort();
                out
            }
            None => {
                // Small frames (votes, acks) must not wait for Nagle's algorithm: a 40 ms
                // stall against delayed ACKs otherwise.
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                        if let Ok(c) = &conn
                            && let Err(e) = c.set_nodelay(true)
                        {
                            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                        }
                        conn
                    });
                builder.serve_with_incoming(incoming).await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "cluster listener failed");
        }
    }))
}

/// The internal gRPC service: every call is authenticated (cluster secret, and/or mutual TLS
/// with pinned peer names at the handshake) before anything in it is decoded.
struct Service {
    cluster: Arc<Cluster>,
    failures: crate::auth::FailureLimiter,
}

impl Service {
    /// Checks the caller; returns the request's MAC tag (to bind the answer to).
    fn admit(&self, path: &str, req: &Request<RaftBytes>) -> Result<Option<[u8; 32]>, Status> {
        let Some(key) = &self.cluster.settings.key else {
            return Ok(None);
        };
        let peer = req.remote_addr().map(|a| a.ip());
        self.failures.check(peer)?;
        match key.verify_request(path, req) {
            Ok(tag) => Ok(Some(tag)),
            Err(s) => {
                self.failures.failed(peer);
                metrics::counter!("quiver_cluster_auth_refused_total").increment(1);
                tracing::warn!(target: "quiver::audit", peer = ?peer, method = path, reason = %s.message(), "cluster call refused");
                Err(s)
            }
        }
    }

    /// Authenticates, runs `f` on the decoded request, and signs the encoded answer.
    async fn serve<Req, Resp, F, Fut>(
        &self,
        path: &'static str,
        req: Request<RaftBytes>,
        f: F,
    ) -> Result<Response<RaftBytes>, Status>
    where
        Req: serde::de::DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Status>>,
    {
        let tag = self.admit(path, &req)?;
        let out = f(decode(req.get_ref())?).await?;
        let mut resp = Response::new(encode(&out)?);
        if let (Some(k), Some(t)) = (&self.cluster.settings.key, tag) {
            k.sign_response(path, &t, &mut resp);
        }
        Ok(resp)
    }
}

#[tonic::async_trait]
impl RaftRpc for Service {
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = &self.cluster.raft;
        self.serve(net::path::APPEND_ENTRIES, req, |r| async move {
            Ok(raft.append_entries(r).await)
        })
        .await
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = &self.cluster.raft;
        self.serve(
            net::path::VOTE,
            req,
            |r| async move { Ok(raft.vote(r).await) },
        )
        .await
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let raft = &self.cluster.raft;
        self.serve(
            net::path::INSTALL_SNAPSHOT,
            req,
            |r: openraft::raft::InstallSnapshotRequest<TypeConfig>| async move {
                // The id names files in the snapshot directory: refuse anything but our own
                // shape before openraft sees it.
                sm::check_snapshot_id(&r.meta.snapshot_id)
                    .map_err(|e| Status::from(ApiError::bad("snapshot_id", e)))?;
                Ok(raft.install_snapshot(r).await)
            },
        )
        .await
    }

    async fn forward(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let c = &self.cluster;
        self.serve(net::path::FORWARD, req, |f: Forward| async move {
            let deadline = c.deadline();
            let out: Result<Forwarded, Failure> = c.lead(&f, deadline).await.map_err(Failure::from);
            if let Ok(Forwarded::Write(_)) = &out {
                // The forwarding follower waits to apply the write before it answers its
                // client: send the new commit index now rather than with the next heartbeat.
                let _ = c.raft.trigger().heartbeat().await;
            }
            Ok(out)
        })
        .await
    }

    async fn local_status(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let c = &self.cluster;
        self.serve(net::path::LOCAL_STATUS, req, |_: ()| async move {
            Ok(c.local_view())
        })
        .await
    }
}
