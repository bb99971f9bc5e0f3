//! Replication: every mutating operation goes through an openraft log, and every node applies
//! the committed log to its engine. See the README's "Replication" section.
//!
//! - [`log_store`]: the Raft log, vote and commit index in the engine's RocksDB.
//! - [`sm`]: the engine as the state machine (apply, durable applied index, snapshots).
//! - [`command`]: writes as log entries.
//! - [`net`]: the internal gRPC transport; `service` serves it, `leader` routes requests to
//!   the leader, `status` reports each node's view.
//! - [`Cluster`]: what the API handlers use: replicated writes (forwarded to the leader from
//!   a follower), read barriers, status, membership changes, readiness.
#![allow(clippy::result_large_err)] // openraft's error types are large

pub mod command;
pub mod guard;
mod leader;
pub mod log_store;
#[cfg(test)]
mod log_store_suite;
pub mod net;
mod service;
pub mod sm;
mod status;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft};
use quiver_proto::internal::raft_client::RaftClient;
use quiver_storage::Engine;
use tonic::transport::Channel;

use self::command::{Command, Mutation, Outcome, Reply};
use self::leader::{Forward, Forwarded};
use self::log_store::RocksLog;
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
        let server = service::spawn(Arc::clone(&cluster), listener)?;
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
