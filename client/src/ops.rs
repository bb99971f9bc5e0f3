//! `quiver rag`, `quiver audit`, `quiver review` and `quiver cluster`: a collection's RAG
//! settings, the audit log of LLM and embedding calls, the human-review queue (with a
//! fine-tuning export), and replication status and membership.
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use quiver_client::{Client, ClientError, pb};
use serde_json::{Value, json};

/// A collection's data policy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Hosted providers allowed (PII redacted before sending).
    AllowHosted,
    /// Nothing leaves the server: hosted providers refused.
    LocalOnly,
}

impl PolicyArg {
    /// The proto value.
    pub fn proto(self) -> i32 {
        match self {
            PolicyArg::AllowHosted => pb::RagPolicy::AllowHosted as i32,
            PolicyArg::LocalOnly => pb::RagPolicy::LocalOnly as i32,
        }
    }
}

/// `quiver rag ...`
#[derive(Debug, Subcommand)]
pub enum RagCmd {
    /// Show (or change) a collection's RAG settings.
    Config {
        /// Collection.
        collection: String,
        /// Set the data policy.
        #[arg(long, value_enum)]
        policy: Option<PolicyArg>,
        /// Set the default generator for generate/review ("" = the server default).
        #[arg(long)]
        generator: Option<String>,
    },
}

/// Which review items.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// Waiting for a decision.
    Pending,
    /// Approved (as generated or edited).
    Approved,
    /// Rejected.
    Rejected,
    /// Every item.
    All,
}

/// `quiver audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit records (oldest first).
    List {
        #[command(flatten)]
        q: AuditQuery,
        /// Most records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Write every matching record as JSONL.
    Export {
        #[command(flatten)]
        q: AuditQuery,
        /// Output file (- = stdout).
        #[arg(long, short)]
        output: PathBuf,
    },
}

/// Filters of `audit list|export`.
#[derive(Debug, clap::Args)]
pub struct AuditQuery {
    /// Only records newer than this (e.g. 30s, 15m, 2h, 7d) or a Unix time in milliseconds.
    #[arg(long)]
    since: Option<String>,
    /// Only records older than this (same forms).
    #[arg(long)]
    until: Option<String>,
    /// Only this collection.
    #[arg(long)]
    collection: Option<String>,
    /// Only `chat` or `embeddings`.
    #[arg(long)]
    operation: Option<String>,
}

/// `quiver review ...`
#[derive(Debug, Subcommand)]
pub enum ReviewCmd {
    /// List review items.
    List {
        /// Which items.
        #[arg(long, value_enum, default_value = "pending")]
        status: StatusArg,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one item (with the prompt the model saw).
    Show {
        /// Item id.
        id: String,
    },
    /// Approve the draft answer.
    Approve {
        /// Item id.
        id: String,
        #[command(flatten)]
        by: Reviewer,
    },
    /// Reject the draft answer.
    Reject {
        /// Item id.
        id: String,
        #[command(flatten)]
        by: Reviewer,
    },
    /// Approve with a corrected answer.
    Edit {
        /// Item id.
        id: String,
        /// The corrected answer.
        #[arg(long)]
        answer: String,
        #[command(flatten)]
        by: Reviewer,
    },
    /// Write approved items as chat-format JSONL for fine-tuning:
    /// {"messages": [{"role": "system", ..}, {"role": "user", ..}, {"role": "assistant", ..}]}.
    Export {
        /// Output file (- = stdout).
        #[arg(long, short)]
        output: PathBuf,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
    },
}

/// Who decided, and why.
#[derive(Debug, clap::Args)]
pub struct Reviewer {
    /// Reviewer name (default: $USER).
    #[arg(long, env = "USER", default_value = "")]
    reviewer: String,
    /// A note kept with the decision.
    #[arg(long, default_value = "")]
    note: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `30s`, `15m`, `2h`, `7d` before now, or absolute Unix milliseconds.
fn parse_time(s: &str, flag: &str) -> Result<u64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num
        .parse()
        .with_context(|| format!("--{flag} {s:?}: expected e.g. 30s, 15m, 2h, 7d or Unix ms"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("--{flag} {s:?}: unit must be s, m, h or d"),
    };
    Ok(now_ms().saturating_sub(Duration::from_secs(secs).as_millis() as u64))
}

fn audit_request(q: &AuditQuery, limit: u32) -> Result<pb::ListAuditRequest> {
    Ok(pb::ListAuditRequest {
        since_ms: q
            .since
            .as_deref()
            .map(|s| parse_time(s, "since"))
            .transpose()?
            .unwrap_or(0),
        until_ms: q
            .until
            .as_deref()
            .map(|s| parse_time(s, "until"))
            .transpose()?
            .unwrap_or(0),
        limit,
        after_id: String::new(),
        collection: q.collection.clone().unwrap_or_default(),
        operation: q.operation.clone().unwrap_or_default(),
    })
}

/// An audit record as JSON.
pub fn audit_json(r: &pb::AuditRecord) -> Value {
    json!({
        "id": r.id, "request_id": r.request_id, "time_ms": r.time_ms, "tenant": r.tenant,
        "collection": r.collection, "operation": r.operation, "provider": r.provider,
        "model": r.model, "prompt": r.prompt, "output": r.output, "latency_us": r.latency_us,
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "cached_prompt_tokens": r.cached_prompt_tokens, "estimated": r.estimated,
        "cost_usd": r.cost_usd, "cache_hit": r.cache_hit, "error": r.error,
        "redactions": r.redactions,
    })
}

fn review_json(i: &pb::ReviewItem) -> Value {
    json!({
        "id": i.id, "collection": i.collection, "question": i.question, "draft": i.draft,
        "answer": i.answer,
        "status": pb::ReviewStatus::try_from(i.status).map_or("unknown", |s| s.as_str_name()),
        "citations": i.citations.iter().map(|c| json!({"document_id": c.document_id, "chunk_id": c.chunk_id, "score": c.score})).collect::<Vec<_>>(),
        "flags": i.flags, "created_ms": i.created_ms, "decided_ms": i.decided_ms,
        "reviewer": i.reviewer, "note": i.note, "request_id": i.request_id,
        "prompt": i.prompt.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
    })
}

fn open_out(path: &PathBuf) -> Result<Box<dyn Write>> {
    Ok(if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("{}", path.display()))?,
        ))
    })
}

/// `quiver rag ...`
pub async fn rag(client: &mut Client, cmd: RagCmd) -> Result<()> {
    match cmd {
        RagCmd::Config {
            collection,
            policy,
            generator,
        } => {
            let cfg = if policy.is_none() && generator.is_none() {
                client
                    .rag
                    .get_rag_config(pb::GetRagConfigRequest { collection })
                    .await
            } else {
                client
                    .rag
                    .set_rag_config(pb::SetRagConfigRequest {
                        collection,
                        policy: policy.map(PolicyArg::proto),
                        generator,
                    })
                    .await
            }
            .map_err(ClientError::from)?
            .into_inner();
            let policy = match pb::RagPolicy::try_from(cfg.policy) {
                Ok(pb::RagPolicy::LocalOnly) => "local_only",
                Ok(pb::RagPolicy::AllowHosted | pb::RagPolicy::Unspecified) | Err(_) => {
                    "allow_hosted"
                }
            };
            println!(
                "{}",
                json!({"embedder": cfg.embedder, "policy": policy, "generator": cfg.generator})
            );
        }
    }
    Ok(())
}

/// `quiver audit ...`
pub async fn audit(client: &mut Client, cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::List { q, limit, json } => {
            let r = client
                .rag
                .list_audit(audit_request(&q, limit)?)
                .await
                .map_err(ClientError::from)?
                .into_inner();
            let mut out = std::io::stdout().lock();
            for rec in &r.records {
                if json {
                    writeln!(out, "{}", audit_json(rec))?;
                } else {
                    writeln!(
                        out,
                        "{} {} {:<10} {:<12} {:<24} {:>8.1} ms {:>6}+{:<5} tok ${:.6}{}{}",
                        rec.id,
                        rec.request_id,
                        rec.operation,
                        rec.provider,
                        rec.model,
                        rec.latency_us as f64 / 1000.0,
                        rec.prompt_tokens,
                        rec.completion_tokens,
                        rec.cost_usd,
                        if rec.cache_hit { " cache-hit" } else { "" },
                        if rec.error.is_empty() {
                            String::new()
                        } else {
                            format!(" ERROR {}", rec.error)
                        }
                    )?;
                }
            }
        }
        AuditCmd::Export { q, output } => {
            let mut req = audit_request(&q, 1000)?;
            let mut out = open_out(&output)?;
            let mut n = 0u64;
            loop {
                let r = client
                    .rag
                    .list_audit(req.clone())
                    .await
                    .map_err(ClientError::from)?
                    .into_inner();
                for rec in &r.records {
                    writeln!(out, "{}", audit_json(rec))?;
                    n += 1;
                }
                if r.next_after_id.is_empty() {
                    break;
                }
                req.after_id = r.next_after_id;
            }
            out.flush()?;
            eprintln!("exported {n} audit records");
        }
    }
    Ok(())
}

/// Every review item matching `status` and `collection`.
async fn all_reviews(
    client: &mut Client,
    status: i32,
    collection: Option<String>,
) -> Result<Vec<pb::ReviewItem>> {
    let mut req = pb::ListReviewsRequest {
        status,
        collection: collection.unwrap_or_default(),
        limit: 1000,
        after_id: String::new(),
    };
    let mut items = Vec::new();
    loop {
        let r = client
            .rag
            .list_reviews(req.clone())
            .await
            .map_err(ClientError::from)?
            .into_inner();
        items.extend(r.items);
        if r.next_after_id.is_empty() {
            return Ok(items);
        }
        req.after_id = r.next_after_id;
    }
}

/// `quiver review ...`
pub async fn review(client: &mut Client, cmd: ReviewCmd) -> Result<()> {
    let decide = |id: String, decision: pb::ReviewDecision, answer: String, by: Reviewer| {
        pb::DecideReviewRequest {
            id,
            decision: decision as i32,
            answer,
            reviewer: by.reviewer,
            note: by.note,
        }
    };
    let req = match cmd {
        ReviewCmd::List {
            status,
            collection,
            json,
        } => {
            let status = match status {
                StatusArg::Pending => pb::ReviewStatus::Pending,
                StatusArg::Approved => pb::ReviewStatus::Approved,
                StatusArg::Rejected => pb::ReviewStatus::Rejected,
                StatusArg::All => pb::ReviewStatus::Unspecified,
            } as i32;
            let mut out = std::io::stdout().lock();
            for i in all_reviews(client, status, collection).await? {
                if json {
                    writeln!(out, "{}", review_json(&i))?;
                } else {
                    let status = pb::ReviewStatus::try_from(i.status).map_or("?", |s| {
                        s.as_str_name().trim_start_matches("REVIEW_STATUS_")
                    });
                    writeln!(
                        out,
                        "{} {:<8} {:<16} Q: {}",
                        i.id, status, i.collection, i.question
                    )?;
                    writeln!(
                        out,
                        "    A: {}",
                        if i.answer.is_empty() {
                            &i.draft
                        } else {
                            &i.answer
                        }
                    )?;
                }
            }
            return Ok(());
        }
        ReviewCmd::Show { id } => {
            let i = client
                .rag
                .get_review(pb::GetReviewRequest { id })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            println!("{}", review_json(&i));
            return Ok(());
        }
        ReviewCmd::Export { output, collection } => {
            let items = all_reviews(client, pb::ReviewStatus::Approved as i32, collection).await?;
            let mut out = open_out(&output)?;
            for i in &items {
                let mut messages: Vec<Value> = i
                    .prompt
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                messages.push(json!({"role": "assistant", "content": i.answer}));
                writeln!(out, "{}", json!({"messages": messages}))?;
            }
            out.flush()?;
            eprintln!("exported {} approved answers", items.len());
            return Ok(());
        }
        ReviewCmd::Approve { id, by } => decide(id, pb::ReviewDecision::Approve, String::new(), by),
        ReviewCmd::Reject { id, by } => decide(id, pb::ReviewDecision::Reject, String::new(), by),
        ReviewCmd::Edit { id, answer, by } => decide(id, pb::ReviewDecision::Edit, answer, by),
    };
    let i = client
        .rag
        .decide_review(req)
        .await
        .map_err(ClientError::from)?
        .into_inner();
    println!("{}", review_json(&i));
    Ok(())
}

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
pub async fn cluster(client: &mut Client, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Status { json } => {
            let s = client
                .cluster
                .status(pb::ClusterStatusRequest {})
                .await
                .map_err(ClientError::from)?
                .into_inner();
            print_cluster(&s, json);
        }
        ClusterCmd::Add {
            id,
            cluster_addr,
            learner,
            json,
        } => {
            let s = client
                .cluster
                .add_node(pb::AddNodeRequest {
                    id,
                    cluster_addr,
                    learner_only: learner,
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            print_cluster(&s, json);
        }
        ClusterCmd::Remove { id, json } => {
            let s = client
                .cluster
                .remove_node(pb::RemoveNodeRequest { id })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            print_cluster(&s, json);
        }
    }
    Ok(())
}

/// A key's role.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Queries only.
    Read,
    /// Queries, point and document writes, creating collections.
    Write,
    /// Everything, including keys, dropping collections and cluster membership.
    Admin,
}

/// `quiver key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key; prints the secret once (the server keeps only its hash).
    Create {
        /// What the key may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Limit the key to these collections (comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        collections: Vec<String>,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
        /// Print {"key", "id", ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id (the part after `qk_`).
        id: String,
    },
}

fn role_name(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Read) => "read",
        Ok(pb::Role::Write) => "write",
        Ok(pb::Role::Admin) => "admin",
        Err(_) => "unknown",
    }
}

fn key_json(k: &pb::KeyInfo) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "role": role_name(k.role),
        "collections": k.collections,
        "created_ms": k.created_ms,
        "revoked": k.revoked,
    })
}

/// Runs a `quiver key` command.
pub async fn key(client: &mut Client, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Create {
            role,
            collections,
            name,
            json,
        } => {
            let role = match role {
                RoleArg::Read => pb::Role::Read,
                RoleArg::Write => pb::Role::Write,
                RoleArg::Admin => pb::Role::Admin,
            } as i32;
            let r = client
                .keys
                .create(pb::CreateKeyRequest {
                    role,
                    collections,
                    name,
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            if json {
                let mut v = key_json(&info);
                v["key"] = json!(r.key);
                println!("{v}");
            } else {
                println!("{}", r.key);
                eprintln!(
                    "created {} key {} (shown once: store it now)",
                    role_name(info.role),
                    info.id
                );
            }
        }
        KeyCmd::List { json } => {
            let r = client
                .keys
                .list(pb::ListKeysRequest {})
                .await
                .map_err(ClientError::from)?
                .into_inner();
            for k in &r.keys {
                if json {
                    println!("{}", key_json(k));
                } else {
                    let scope = if k.collections.is_empty() {
                        "all collections".to_owned()
                    } else {
                        k.collections.join(",")
                    };
                    println!(
                        "{}  {:<5}  {}{}  {}",
                        k.id,
                        role_name(k.role),
                        scope,
                        if k.revoked { "  (revoked)" } else { "" },
                        k.name
                    );
                }
            }
        }
        KeyCmd::Revoke { id } => {
            let k = client
                .keys
                .revoke(pb::RevokeKeyRequest { id })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            eprintln!("revoked key {}", k.id);
        }
    }
    Ok(())
}

/// `quiver snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a consistent snapshot now, online (default name: snap-<time>).
    Create {
        /// Name (letters, digits, '_', '-').
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, oldest first.
    List {
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Stream a snapshot as one checksummed archive into a file.
    Download {
        /// Name.
        name: String,
        /// Output file.
        #[arg(long)]
        output: PathBuf,
    },
    /// Replace every collection with a snapshot's (its checksums are verified first).
    Restore {
        /// Name.
        name: String,
        /// Restore only this collection (through the write path: on a cluster every replica
        /// gets it). Without it, every collection of this node is replaced.
        #[arg(long)]
        collection: Option<String>,
        /// With --collection: restore it under this name (default: its own, replacing it).
        #[arg(long = "as", requires = "collection")]
        as_name: Option<String>,
    },
    /// Delete a snapshot.
    Delete {
        /// Name.
        name: String,
    },
}

fn snapshot_json(s: &pb::SnapshotInfo) -> Value {
    json!({"name": s.name, "created_ms": s.created_ms, "bytes": s.bytes, "collections": s.collections})
}

/// Runs a `quiver snapshot` command.
pub async fn snapshot(client: &mut Client, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { name, json } => {
            let s = client
                .snapshots
                .create(pb::CreateSnapshotRequest {
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            if json {
                println!("{}", snapshot_json(&s));
            } else {
                println!("{}", s.name);
                eprintln!(
                    "snapshot {}: {} collections, {} bytes referenced",
                    s.name,
                    s.collections.len(),
                    s.bytes
                );
            }
        }
        SnapshotCmd::List { json } => {
            let r = client
                .snapshots
                .list(pb::ListSnapshotsRequest {})
                .await
                .map_err(ClientError::from)?
                .into_inner();
            for s in &r.snapshots {
                if json {
                    println!("{}", snapshot_json(s));
                } else {
                    println!("{}  {} bytes  {}", s.name, s.bytes, s.collections.join(","));
                }
            }
        }
        SnapshotCmd::Download { name, output } => {
            let mut stream = client
                .snapshots
                .download(pb::DownloadSnapshotRequest { name })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            let tmp = output.with_extension("part");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            let mut total = 0u64;
            while let Some(chunk) = stream.message().await.map_err(ClientError::from)? {
                f.write_all(&chunk.data)?;
                total += chunk.data.len() as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &output)?;
            eprintln!("wrote {} bytes to {}", total, output.display());
        }
        SnapshotCmd::Restore {
            name,
            collection,
            as_name,
        } => {
            let one = collection.clone();
            let s = client
                .snapshots
                .restore(pb::RestoreSnapshotRequest {
                    name,
                    collection: collection.unwrap_or_default(),
                    as_name: as_name.clone().unwrap_or_default(),
                })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            match one {
                Some(c) => eprintln!(
                    "restored collection {c} from snapshot {} as {}",
                    s.name,
                    as_name.as_deref().unwrap_or(&c)
                ),
                None => eprintln!(
                    "restored snapshot {} ({} collections)",
                    s.name,
                    s.collections.len()
                ),
            }
        }
        SnapshotCmd::Delete { name } => {
            client
                .snapshots
                .delete(pb::DeleteSnapshotRequest { name: name.clone() })
                .await
                .map_err(ClientError::from)?;
            eprintln!("deleted snapshot {name}");
        }
    }
    Ok(())
}
