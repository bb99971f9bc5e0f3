//! `quiver cluster ...`: replication status and membership.
use crate::{Client, ClientError, pb};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

/// `quiver cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every member: role, term, log and applied indexes, lag behind the leader.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a node (started with its own --node-id and --cluster-listen): it is caught up as a
    /// learner, then made a voter.
    Add {
        /// The new node's id.
        id: u64,
        /// Its cluster address, HOST:PORT.
        cluster_addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
        /// Print the resulting status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        /// Node id.
        id: u64,
        /// Print the resulting status as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The cluster status as JSON.
fn cluster_json(s: &pb::ClusterStatusResponse) -> Value {
    json!({
        "enabled": s.enabled,
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "term": s.term,
        "commit_index": s.commit_index,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id,
            "cluster_addr": n.cluster_addr,
            "api_addr": n.api_addr,
            "role": n.role,
            "voter": n.voter,
            "term": n.term,
            "last_log_index": n.last_log_index,
            "applied_index": n.applied_index,
            "snapshot_index": n.snapshot_index,
            "purged_index": n.purged_index,
            "lag": n.lag,
            "error": n.error,
        })).collect::<Vec<_>>(),
    })
}

/// The cluster status as JSON or as a table of members.
fn print_cluster(s: &pb::ClusterStatusResponse, json: bool) {
    if json {
        println!("{}", cluster_json(s));
        return;
    }
    if !s.enabled {
        println!("replication off (a single node)");
        return;
    }
    let leader = if s.leader_id == 0 {
        "none".to_owned()
    } else {
        s.leader_id.to_string()
    };
    println!(
        "asked node {}: leader {leader}, term {}, commit index {}",
        s.node_id, s.term, s.commit_index
    );
    println!(
        "{:>4}  {:<11} {:<5} {:>5} {:>10} {:>10} {:>9} {:>7}  {:<22} api",
        "id", "role", "voter", "term", "last log", "applied", "snapshot", "lag", "cluster addr"
    );
    for n in &s.nodes {
        println!(
            "{:>4}  {:<11} {:<5} {:>5} {:>10} {:>10} {:>9} {:>7}  {:<22} {}",
            n.id,
            n.role,
            if n.voter { "yes" } else { "no" },
            n.term,
            n.last_log_index,
            n.applied_index,
            n.snapshot_index,
            n.lag,
            n.cluster_addr,
            if n.error.is_empty() {
                n.api_addr.clone()
            } else {
                format!("({})", n.error)
            },
        );
    }
}

/// Runs a `quiver cluster` command.
pub async fn run(client: &mut Client, cmd: ClusterCmd) -> Result<()> {
    let (s, json) = match cmd {
        ClusterCmd::Status { json } => (
            client.cluster.status(pb::ClusterStatusRequest {}).await,
            json,
        ),
        ClusterCmd::Add {
            id,
            cluster_addr,
            learner,
            json,
        } => (
            client
                .cluster
                .add_node(pb::AddNodeRequest {
                    id,
                    cluster_addr,
                    learner_only: learner,
                })
                .await,
            json,
        ),
        ClusterCmd::Remove { id, json } => (
            client
                .cluster
                .remove_node(pb::RemoveNodeRequest { id })
                .await,
            json,
        ),
    };
    print_cluster(&s.map_err(ClientError::from)?.into_inner(), json);
    Ok(())
}
