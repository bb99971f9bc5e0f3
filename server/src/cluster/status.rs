//! What each node reports about itself, and the cluster's status assembled from it.
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;
use quiver_proto::internal::RaftBytes;
use quiver_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use super::net::{self, decode};
use super::{Cluster, ms};
use crate::error::ApiError;

/// One node's own view, answered by `LocalStatus`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalView {
    id: u64,
    role: String,
    term: u64,
    pub(super) last_log_index: u64,
    applied_index: u64,
    snapshot_index: u64,
    purged_index: u64,
    pub(super) leader: Option<u64>,
    api_addr: String,
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

impl Cluster {
    pub(super) fn local_view(&self) -> LocalView {
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

    pub(super) async fn local_view_of(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<LocalView, Status> {
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
}
