//! Routing to the leader: a follower forwards writes, read-index requests and membership
//! changes to the node that leads; the leader executes them.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tonic::Request;

use super::command::{Command, Failure, Reply};
use super::net::{self, decode, encode};
use super::{Cluster, ms};
use crate::error::{ApiError, ApiResult};

/// A follower's request to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Forward {
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
pub(super) enum Forwarded {
    Write(Reply),
    ReadIndex(u64),
    Done,
}

/// Why a forwarded call failed.
enum ForwardError {
    /// It never reached a leader: safe to retry.
    Retry(String),
    /// It may have been applied, or was refused: report.
    Fail(ApiError),
}

impl Cluster {
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
    pub(super) async fn on_leader(&self, f: Forward, deadline: Instant) -> ApiResult<Forwarded> {
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
    pub(super) async fn lead(
        &self,
        f: &Forward,
        deadline: Instant,
    ) -> Result<Forwarded, LeadError> {
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

    pub(super) async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .is_ok()
    }
}

pub(super) enum LeadError {
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
