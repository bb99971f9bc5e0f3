//! Replication: every mutating operation goes through an openraft log, and every node applies
//! the committed log to its engine. See the README's "Replication" section.
//!
//! - [`log_store`]: the Raft log, vote and commit index in the engine's RocksDB.
//! - [`sm`]: the engine as the state machine (apply, durable applied index, snapshots).
//! - [`command`]: writes as log entries.
//! - [`net`]: the internal gRPC transport.
//! - [`Cluster`]: what the API handlers use: replicated writes (forwarded to the leader from
//!   a follower), read barriers, status, membership changes, readiness.
#![allow(clippy::result_large_err)] // openraft's error types are large

pub mod command;
pub mod guard;
pub mod log_store;
pub mod net;
pub mod sm;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use quiver_proto::internal::RaftBytes;
use quiver_proto::internal::raft_client::RaftClient;
use quiver_proto::internal::raft_server::{Raft as RaftRpc, RaftServer};
use quiver_proto::v1 as pb;
use quiver_storage::Engine;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use self::command::{Command, Failure, Mutation, Outcome, Reply};
use self::log_store::RocksLog;
use self::net::{decode, encode};
use self::sm::EngineSm;
use crate::config::ClusterSettings;
use crate::error::{ApiError, ApiResult};

// `Cursor` is the macro's default snapshot type; ours is a file.
#[allow(unused_imports)]
use Cursor as _;

openraft::declare_raft_types!(
    /// Quiver's Raft types: [`Command`] entries, [`Reply`] responses, snapshot files.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// A follower's request to the leader.
#[derive(Debug, Serialize, Deserialize)]
enum Forward {
    Write(Command),
    ReadIndex,
    AddNode {
        id: u64,
        addr: String,
        learner_only: bool,
    },
    RemoveNode {
        id: u64,
    },
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Forwarded {
    Write(Reply),
    ReadIndex(u64),
    Done,
}

/// One node's own view, answered by `LocalStatus`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalView {
    id: u64,
    role: String,
    term: u64,
    last_log_index: u64,
    applied_index: u64,
    snapshot_index: u64,
    purged_index: u64,
    leader: Option<u64>,
    api_addr: String,
}

/// The replication handle the API uses.
pub struct Cluster {
    /// The Raft node.
    pub raft: Raft<TypeConfig>,
    id: u64,
    settings: ClusterSettings,
    sm: EngineSm,
    api_addr: String,
    ready: AtomicBool,
    /// One HTTP/2 channel per peer address, for forwarding and status calls.
    peers: std::sync::Mutex<std::collections::HashMap<String, RaftClient<Channel>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("id", &self.id).finish()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Why a forwarded call failed.
enum ForwardError {
    /// It never reached a leader: safe to retry.
    Retry(String),
    /// It may have been applied, or was refused: report.
    Fail(ApiError),
}

impl Cluster {
    /// Opens the Raft node over `engine`, serves the internal port, and bootstraps a new
    /// cluster from the peer list when this is its first start.
    pub async fn start(
        engine: Arc<Engine>,
        settings: ClusterSettings,
        api_addr: String,
    ) -> Result<(Arc<Cluster>, tokio::task::JoinHandle<()>), crate::ServerError> {
        let raw = &settings.raw;
        let config = openraft::Config {
            cluster_name: "quiver".into(),
            heartbeat_interval: raw.heartbeat_ms,
            election_timeout_min: raw.election_timeout_ms,
            // openraft's leader lease is election_timeout_max, and a follower waits lease +
            // timeout before standing: a narrow range keeps failover near 2.5× the timeout.
            election_timeout_max: raw.election_timeout_ms * 3 / 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(raw.snapshot_every),
            max_in_snapshot_log_to_keep: raw.keep_logs,
            snapshot_max_chunk_size: 4 << 20,
            install_snapshot_timeout: raw.rpc_timeout_ms.max(10_000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| crate::ServerError::Cluster(format!("raft config: {e}")))?;
        let dir = engine.root().join("raft").join("snapshots");
        let durable_every = ms(raw.durable_every_ms);
        let e = Arc::clone(&engine);
        let sm =
            tokio::task::spawn_blocking(move || EngineSm::open(e, dir, durable_every)).await??;
        let log = RocksLog::<TypeConfig>::new(engine.aux())
            .map_err(|e| crate::ServerError::Cluster(format!("raft log flusher: {e}")))?;
        let network = net::Network {
            timeout: ms(raw.rpc_timeout_ms),
            tls: settings.tls.clone(),
            key: settings.key.clone(),
        };
        if !settings.protected() {
            tracing::warn!(
                addr = %settings.listen,
                "the cluster port is UNAUTHENTICATED (no cluster.secret_file / {} and no cluster TLS): anyone who reaches it can replace this node's data",
                guard::SECRET_ENV
            );
        }
        let raft = Raft::new(settings.node_id, Arc::new(config), network, log, sm.clone())
            .await
            .map_err(|e| crate::ServerError::Cluster(format!("raft: {e}")))?;
        let cluster = Arc::new(Cluster {
            raft,
            id: settings.node_id,
            settings,
            sm,
            api_addr,
            ready: AtomicBool::new(false),
            peers: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind(cluster.settings.listen)
            .await
            .map_err(|e| {
                crate::ServerError::Cluster(format!(
                    "cannot listen on {}: {e}",
                    cluster.settings.listen
                ))
            })?;
        tracing::info!(node = cluster.id, addr = %cluster.settings.listen, "cluster listener up");
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
        let server = tokio::spawn(async move {
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
        });
        let c = Arc::clone(&cluster);
        tokio::spawn(async move { c.bootstrap().await });
        let c = Arc::clone(&cluster);
        tokio::spawn(async move { c.background().await });
        Ok((cluster, server))
    }

    /// First start of a new cluster: the lowest-numbered peer initialises it, unless another
    /// peer already holds a log (then this node was wiped and rejoins through the leader).
    async fn bootstrap(&self) {
        let peers = &self.settings.peers;
        if peers.is_empty() || peers.keys().next() != Some(&self.id) {
            return;
        }
        match self.raft.is_initialized().await {
            Ok(false) => {}
            Ok(true) | Err(_) => return,
        }
        for (id, addr) in peers {
            if *id == self.id {
                continue;
            }
            if let Ok(v) = self.local_view_of(addr, ms(1000)).await
                && (v.last_log_index > 0 || v.leader.is_some())
            {
                tracing::info!(
                    peer = id,
                    "a peer already has a log: not initialising; waiting for the leader"
                );
                return;
            }
        }
        let members: BTreeMap<u64, BasicNode> = peers
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a)))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(voters = peers.len(), "cluster initialised"),
            Err(e) => tracing::warn!(error = %e, "cluster initialisation skipped"),
        }
    }

    /// Readiness and periodic durability.
    async fn background(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ms(500));
        loop {
            tick.tick().await;
            let sm = self.sm.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || sm.make_durable_if_due()).await
            {
                tracing::error!(error = %e, "recording the applied index failed");
            }
            let ready = self.compute_ready().await;
            if ready != self.ready.swap(ready, Ordering::AcqRel) {
                tracing::info!(ready, "cluster readiness changed");
            }
        }
    }

    async fn compute_ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else {
            return false;
        };
        if leader == self.id {
            return true;
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        match self.leader_addr(leader) {
            Some(addr) => match self.local_view_of(&addr, ms(1000)).await {
                Ok(v) => {
                    v.last_log_index.saturating_sub(applied) <= self.settings.raw.max_ready_lag
                }
                Err(_) => false,
            },
            None => false,
        }
    }

    /// Member of a cluster with a leader, and caught up within `max_ready_lag` entries.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn leader_addr(&self, leader: u64) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    fn local_view(&self) -> LocalView {
        let m = self.raft.metrics().borrow().clone();
        LocalView {
            id: self.id,
            role: role(m.state).into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            leader: m.current_leader,
            api_addr: self.api_addr.clone(),
        }
    }

    /// The (shared, lazily connected) client of the node at `addr`.
    fn peer(&self, addr: &str) -> Result<RaftClient<Channel>, String> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let c = net::client(
            addr,
            ms(self.settings.raw.rpc_timeout_ms),
            self.settings.tls.as_ref(),
        )?;
        peers.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    async fn local_view_of(&self, addr: &str, timeout: Duration) -> Result<LocalView, Status> {
        let mut c = self
            .peer(addr)
            .map_err(|e| Status::from(ApiError::bad("address", e)))?;
        let mut req = Request::new(RaftBytes::default());
        req.set_timeout(timeout);
        let key = self.settings.key.as_deref();
        let resp =
            net::signed_call(key, net::path::LOCAL_STATUS, req, |r| c.local_status(r)).await?;
        decode(resp.get_ref())
    }

    async fn forward(
        &self,
        addr: &str,
        f: &Forward,
        timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let timeout = timeout.max(ms(100));
        let mut c = self.peer(addr).map_err(ForwardError::Retry)?;
        let mut req =
            Request::new(encode(f).map_err(|s| ForwardError::Fail(ApiError::from_status(&s)))?);
        req.set_timeout(timeout);
        let key = self.settings.key.as_deref();
        match net::signed_call(key, net::path::FORWARD, req, |r| c.forward(r)).await {
            Ok(resp) => {
                let out: Result<Forwarded, Failure> = decode(resp.get_ref())
                    .map_err(|s| ForwardError::Fail(ApiError::from_status(&s)))?;
                out.map_err(|f| {
                    // The leader could not serve it (it stepped down, or lost its quorum
                    // before accepting): nothing was applied, so it is safe to try again.
                    if f.kind == crate::error::Kind::Unavailable
                        || f.message.contains("not the leader")
                    {
                        ForwardError::Retry(f.message)
                    } else {
                        ForwardError::Fail(f.into())
                    }
                })
            }
            Err(s) if net::unreachable(&s) => Err(ForwardError::Retry(s.message().to_owned())),
            Err(s) => Err(ForwardError::Fail(ApiError::from_status(&s))),
        }
    }

    /// Runs `f` on the leader: locally when this node leads, else forwarded to it; waits for
    /// a leader until `deadline`.
    async fn on_leader(&self, f: Forward, deadline: Instant) -> ApiResult<Forwarded> {
        let mut last_err = String::from("no leader elected");
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(l) if l == self.id => match self.lead(&f, deadline).await {
                    Ok(out) => return Ok(out),
                    Err(LeadError::NotLeader) => last_err = "leadership moved".into(),
                    Err(LeadError::Fail(e)) => return Err(e),
                },
                Some(l) => match self.leader_addr(l) {
                    Some(addr) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match self.forward(&addr, &f, left).await {
                            Ok(out) => return Ok(out),
                            Err(ForwardError::Retry(m)) => {
                                last_err = format!("leader {l} at {addr}: {m}")
                            }
                            Err(ForwardError::Fail(e)) => return Err(e),
                        }
                    }
                    None => last_err = format!("leader {l} has no known address"),
                },
                None => {}
            }
            if Instant::now() >= deadline {
                let voters = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count();
                return Err(ApiError::Unavailable(format!(
                    "no leader could take the request within {} ms ({last_err}); a majority of the {voters} voters must be up and connected",
                    self.settings.raw.write_timeout_ms
                )));
            }
            tokio::time::sleep(ms(50)).await;
        }
    }

    /// Executes a forwarded request as the leader.
    async fn lead(&self, f: &Forward, deadline: Instant) -> Result<Forwarded, LeadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || {
            LeadError::Fail(ApiError::Unavailable(format!(
                "not committed within {} ms: a quorum of replicas did not answer (the request may still take effect)",
                left.as_millis()
            )))
        };
        match f {
            Forward::Write(cmd) => {
                match tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await {
                    Err(_) => Err(timed_out()),
                    Ok(Ok(resp)) => Ok(Forwarded::Write(resp.data)),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                        Err(LeadError::NotLeader)
                    }
                    Ok(Err(e)) => Err(LeadError::Fail(ApiError::Unavailable(e.to_string()))),
                }
            }
            Forward::ReadIndex => {
                match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                    Err(_) => Err(timed_out()),
                    Ok(Ok(id)) => Ok(Forwarded::ReadIndex(id.map_or(0, |l| l.index))),
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                        Err(LeadError::NotLeader)
                    }
                    Ok(Err(e)) => Err(LeadError::Fail(ApiError::Unavailable(e.to_string()))),
                }
            }
            Forward::AddNode {
                id,
                addr,
                learner_only,
            } => {
                self.raft
                    .add_learner(*id, BasicNode::new(addr), true)
                    .await
                    .map_err(membership_err)?;
                if !learner_only {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                        .await
                        .map_err(membership_err)?;
                }
                Ok(Forwarded::Done)
            }
            Forward::RemoveNode { id } => {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false)
                    .await
                    .map_err(membership_err)?;
                Ok(Forwarded::Done)
            }
        }
    }

    async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .is_ok()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + ms(self.settings.raw.write_timeout_ms)
    }

    /// Replicates a write and returns once it is committed and applied on the leader and on
    /// this node (so the caller reads its own write here).
    pub async fn write(&self, w: Mutation) -> ApiResult<Outcome> {
        let cmd = w.encode();
        // An entry travels whole in AppendEntries (with its neighbours) and in snapshots'
        // logs: one the transport cannot carry would stall every follower forever.
        let size = cmd.op.len() + cmd.data.len();
        if size > net::MAX_ENTRY {
            return Err(ApiError::TooLarge(format!(
                "the write encodes to {size} bytes; one replicated log entry carries at most {} (split the request)",
                net::MAX_ENTRY
            )));
        }
        let deadline = self.deadline();
        match self.on_leader(Forward::Write(cmd), deadline).await? {
            Forwarded::Write(reply) => {
                let out = reply.map_err(ApiError::from)?;
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_applied(out.index, left.max(ms(100))).await;
                Ok(out)
            }
            Forwarded::ReadIndex(_) | Forwarded::Done => {
                Err(ApiError::Internal("unexpected answer to a write".into()))
            }
        }
    }

    /// A linearizable read point: returns once this node has applied everything the leader
    /// had committed when the read arrived (confirmed by a quorum).
    pub async fn read_barrier(&self) -> ApiResult<()> {
        let deadline = self.deadline();
        match self.on_leader(Forward::ReadIndex, deadline).await? {
            Forwarded::ReadIndex(index) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if self.wait_applied(index, left.max(ms(100))).await {
                    Ok(())
                } else {
                    Err(ApiError::Unavailable(format!(
                        "this replica did not apply log index {index} in time"
                    )))
                }
            }
            Forwarded::Write(_) | Forwarded::Done => Err(ApiError::Internal(
                "unexpected answer to a read index".into(),
            )),
        }
    }

    /// Adds a node (as a learner, caught up, then a voter unless `learner_only`).
    pub async fn add_node(&self, id: u64, addr: String, learner_only: bool) -> ApiResult<()> {
        if id == 0 {
            return Err(ApiError::bad("id", "node ids start at 1"));
        }
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ApiError::bad(
                "cluster_addr",
                format!("{addr:?} is not HOST:PORT"),
            ));
        }
        let f = Forward::AddNode {
            id,
            addr,
            learner_only,
        };
        self.on_leader(
            f,
            Instant::now() + ms(self.settings.raw.write_timeout_ms.max(60_000)),
        )
        .await
        .map(|_| ())
    }

    /// Removes a node from the voters and the cluster.
    pub async fn remove_node(&self, id: u64) -> ApiResult<()> {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().get_node(&id).is_none() {
            return Err(ApiError::NotFound(format!("node {id} is not a member")));
        }
        self.on_leader(Forward::RemoveNode { id }, self.deadline())
            .await
            .map(|_| ())
    }

    /// Every member's view, asked concurrently (unreachable members are marked).
    pub async fn status(&self) -> pb::ClusterStatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let timeout = ms(self.settings.raw.rpc_timeout_ms.min(2000));
        let asks = membership.nodes().map(|(id, node)| {
            let id = *id;
            let addr = node.addr.clone();
            async move {
                let view = if id == self.id {
                    Ok(self.local_view())
                } else {
                    self.local_view_of(&addr, timeout).await
                };
                (id, addr, view)
            }
        });
        let views = futures::future::join_all(asks).await;
        let leader = m.current_leader.unwrap_or(0);
        let commit = views
            .iter()
            .find_map(|(id, _, v)| match v {
                Ok(v) if *id == leader => Some(v.last_log_index),
                _ => None,
            })
            .unwrap_or(0);
        let nodes = views
            .into_iter()
            .map(|(id, addr, v)| match v {
                Ok(v) => pb::ClusterNode {
                    id,
                    cluster_addr: addr,
                    api_addr: v.api_addr,
                    role: v.role,
                    voter: voters.contains(&id),
                    term: v.term,
                    last_log_index: v.last_log_index,
                    applied_index: v.applied_index,
                    snapshot_index: v.snapshot_index,
                    purged_index: v.purged_index,
                    lag: commit.saturating_sub(v.applied_index),
                    error: String::new(),
                },
                Err(e) => pb::ClusterNode {
                    id,
                    cluster_addr: addr,
                    role: "unreachable".into(),
                    voter: voters.contains(&id),
                    error: e.message().to_owned(),
                    ..Default::default()
                },
            })
            .collect();
        pb::ClusterStatusResponse {
            enabled: true,
            node_id: self.id,
            leader_id: leader,
            term: m.current_term,
            commit_index: commit,
            nodes,
        }
    }

    /// Records the applied index and stops the Raft node (shutdown).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let sm = self.sm.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || sm.make_durable()).await {
            tracing::error!(error = %e, "recording the applied index at shutdown failed");
        }
    }
}

enum LeadError {
    NotLeader,
    Fail(ApiError),
}

fn membership_err(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> LeadError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => LeadError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            LeadError::Fail(ApiError::Precondition(format!("membership change: {e}")))
        }
        RaftError::Fatal(e) => LeadError::Fail(ApiError::Unavailable(format!("raft: {e}"))),
    }
}

impl From<LeadError> for Failure {
    fn from(e: LeadError) -> Failure {
        match e {
            LeadError::NotLeader => Failure {
                kind: crate::error::Kind::Unavailable,
                message: "not the leader".into(),
            },
            LeadError::Fail(e) => Failure::from(&e),
        }
    }
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

#[cfg(test)]
mod tests {
    //! openraft's storage conformance suite on [`super::log_store::RocksLog`], paired with a
    //! small in-memory state machine (the engine-backed one is still to come).
    #![allow(clippy::wildcard_enum_match_arm, clippy::result_large_err)]
    use std::collections::BTreeMap;
    use std::io::Cursor;
    use std::sync::{Arc, Mutex};

    use openraft::storage::RaftStateMachine;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{
        BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
        StorageError, StorageIOError, StoredMembership,
    };
    use serde::{Deserialize, Serialize};

    use super::log_store::RocksLog;

    /// Test writes.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub enum WriteOp {
        Upsert { id: String, vector: Vec<f32> },
        Delete { id: String },
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    pub struct WriteResp {
        pub existed: bool,
    }

    openraft::declare_raft_types!(
        pub TypeConfig:
            D = WriteOp,
            R = WriteResp,
            NodeId = u64,
            Node = BasicNode,
            Entry = Entry<TypeConfig>,
            SnapshotData = Cursor<Vec<u8>>,
    );
    type NodeId = u64;
    type SErr = StorageError<NodeId>;

    // ---------------------------------------------------------------- state machine

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct SmData {
        pub vectors: BTreeMap<String, Vec<f32>>,
    }

    #[derive(Debug)]
    struct StoredSnapshot {
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    }

    #[derive(Debug, Default)]
    struct SmInner {
        last_applied: Option<LogId<NodeId>>,
        last_membership: StoredMembership<NodeId, BasicNode>,
        data: SmData,
        snapshot_idx: u64,
        current_snapshot: Option<StoredSnapshot>,
    }

    /// Cheap-to-clone handle; also serves as `SnapshotBuilder` and lets tests peek at data.
    #[derive(Debug, Clone, Default)]
    pub struct StateMachine {
        inner: Arc<Mutex<SmInner>>,
    }

    impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
        async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
            let mut g = self.inner.lock().expect("lock");
            let data =
                serde_json::to_vec(&g.data).map_err(|e| StorageIOError::read_state_machine(&e))?;
            g.snapshot_idx += 1;
            let snapshot_id = match g.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshot_idx),
                None => format!("--{}", g.snapshot_idx),
            };
            let meta = SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.last_membership.clone(),
                snapshot_id,
            };
            g.current_snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            });
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        }
    }

    impl RaftStateMachine<TypeConfig> for StateMachine {
        type SnapshotBuilder = StateMachine;

        async fn applied_state(
            &mut self,
        ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
            let g = self.inner.lock().expect("lock");
            Ok((g.last_applied, g.last_membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<WriteResp>, SErr>
        where
            I: IntoIterator<Item = Entry<TypeConfig>> + Send,
            I::IntoIter: Send,
        {
            let mut g = self.inner.lock().expect("lock");
            let mut out = Vec::new();
            for e in entries {
                g.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(WriteResp::default()),
                    EntryPayload::Normal(op) => {
                        let existed = match op {
                            WriteOp::Upsert { id, vector } => {
                                g.data.vectors.insert(id, vector).is_some()
                            }
                            WriteOp::Delete { id } => g.data.vectors.remove(&id).is_some(),
                        };
                        out.push(WriteResp { existed });
                    }
                    EntryPayload::Membership(m) => {
                        g.last_membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(WriteResp::default());
                    }
                }
            }
            Ok(out) // exactly one response per entry
        }

        async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
            self.clone()
        }

        async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
            Ok(Box::new(Cursor::new(Vec::new())))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta<NodeId, BasicNode>,
            snapshot: Box<Cursor<Vec<u8>>>,
        ) -> Result<(), SErr> {
            let bytes = snapshot.into_inner();
            let data: SmData = serde_json::from_slice(&bytes)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
            let mut g = self.inner.lock().expect("lock");
            g.data = data;
            g.last_applied = meta.last_log_id;
            g.last_membership = meta.last_membership.clone();
            g.current_snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data: bytes,
            });
            Ok(())
        }

        async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
            let g = self.inner.lock().expect("lock");
            Ok(g.current_snapshot.as_ref().map(|s| Snapshot {
                meta: s.meta.clone(),
                snapshot: Box::new(Cursor::new(s.data.clone())),
            }))
        }
    }

    struct Builder(Arc<Mutex<Vec<tempfile::TempDir>>>);

    impl StoreBuilder<TypeConfig, RocksLog<TypeConfig>, StateMachine, ()> for Builder {
        async fn build(&self) -> Result<((), RocksLog<TypeConfig>, StateMachine), SErr> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let engine = quiver_storage::Engine::open(dir.path(), Default::default())
                .map_err(|e| StorageIOError::write(&e))?;
            let log = RocksLog::new(engine.aux()).map_err(|e| StorageIOError::write(&e))?;
            self.0.lock().expect("lock").push(dir);
            Ok(((), log, StateMachine::default()))
        }
    }

    /// A plain test: the suite starts its own runtime per case.
    #[test]
    fn rocksdb_log_passes_openraft_storage_suite() -> Result<(), SErr> {
        Suite::test_all(Builder(Arc::new(Mutex::new(Vec::new()))))?;
        Ok(())
    }
}
