//! `quiver audit ...`: the audit log of LLM and embedding calls: list, export.
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Client, ClientError, pb};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::common::open_out;

/// `quiver audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit records (oldest first). On a cluster, from every node (each keeps the
    /// records of the calls it made).
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
    /// Write every matching record as JSONL (on a cluster, from every node, in time order).
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
    /// Only the node --addr points at, not every node of its cluster.
    #[arg(long)]
    local: bool,
}

/// Now, in Unix milliseconds.
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

/// The `ListAudit` request of the filters.
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
        "redactions": r.redactions, "node_id": r.node_id,
    })
}

/// How to reach the other nodes of a cluster (the CLI's connection settings, another address).
pub struct Nodes<F> {
    connect: F,
}

impl<F, Fut> Nodes<F>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    /// Nodes reached through `connect`.
    pub fn new(connect: F) -> Self {
        Nodes { connect }
    }

    /// One pager per node holding audit records: every node the cluster lists (with a
    /// warning for each that cannot be reached), or only `client`'s on a single node or with
    /// `--local`.
    async fn pagers(
        &self,
        client: &mut Client,
        addr: &str,
        q: &AuditQuery,
        page: u32,
    ) -> Result<Vec<Pager>> {
        let req = audit_request(q, page)?;
        let status = if q.local {
            None
        } else {
            client
                .cluster
                .status(pb::ClusterStatusRequest {})
                .await
                .ok()
        };
        let Some(status) = status.map(|s| s.into_inner()).filter(|s| s.enabled) else {
            return Ok(vec![Pager::new(client.clone(), req, String::new())]);
        };
        let scheme = if addr.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let mut out = Vec::new();
        for n in &status.nodes {
            let name = format!("node {} ({})", n.id, n.api_addr);
            if n.api_addr.is_empty() {
                eprintln!(
                    "warning: node {} did not answer ({}); its audit records are not included",
                    n.id, n.error
                );
                continue;
            }
            let url = if n.api_addr.contains("://") {
                n.api_addr.clone()
            } else {
                format!("{scheme}://{}", n.api_addr)
            };
            match (self.connect)(url).await {
                Ok(c) => out.push(Pager::new(c, req.clone(), name)),
                Err(e) => eprintln!(
                    "warning: {name}: cannot connect ({e:#}); its audit records are not included"
                ),
            }
        }
        Ok(out)
    }
}

/// Pages through one node's records.
struct Pager {
    client: Client,
    req: pb::ListAuditRequest,
    name: String,
    buf: std::collections::VecDeque<pb::AuditRecord>,
    done: bool,
}

impl Pager {
    fn new(client: Client, req: pb::ListAuditRequest, name: String) -> Self {
        Pager {
            client,
            req,
            name,
            buf: Default::default(),
            done: false,
        }
    }

    /// The node's next record, fetching a page when the buffer is empty.
    async fn peek(&mut self) -> Result<Option<&pb::AuditRecord>> {
        if self.buf.is_empty() && !self.done {
            let r = self
                .client
                .rag
                .list_audit(self.req.clone())
                .await
                .map_err(ClientError::from)
                .with_context(|| self.name.clone())?
                .into_inner();
            self.buf.extend(r.records);
            self.done = r.next_after_id.is_empty();
            self.req.after_id = r.next_after_id;
        }
        Ok(self.buf.front())
    }
}

/// Records of every pager merged in time order (then node, then id); at most `limit`.
async fn merged(
    pagers: &mut [Pager],
    limit: u64,
    mut each: impl FnMut(&pb::AuditRecord) -> Result<()>,
) -> Result<u64> {
    let mut n = 0;
    while n < limit {
        let mut best: Option<(usize, (u64, u64, String))> = None;
        for (i, p) in pagers.iter_mut().enumerate() {
            if let Some(r) = p.peek().await? {
                let k = (r.time_ms, r.node_id, r.id.clone());
                if best.as_ref().is_none_or(|(_, b)| k < *b) {
                    best = Some((i, k));
                }
            }
        }
        let Some((i, _)) = best else { break };
        if let Some(r) = pagers[i].buf.pop_front() {
            each(&r)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Runs a `quiver audit` command (`addr`: the address `client` was connected to).
pub async fn run<F, Fut>(
    client: &mut Client,
    cmd: AuditCmd,
    addr: &str,
    nodes: Nodes<F>,
) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    match cmd {
        AuditCmd::List { q, limit, json } => {
            let mut pagers = nodes
                .pagers(client, addr, &q, limit.clamp(1, 10_000))
                .await?;
            list(&mut pagers, limit, json).await
        }
        AuditCmd::Export { q, output } => {
            let mut pagers = nodes.pagers(client, addr, &q, 1000).await?;
            export(&mut pagers, &output).await
        }
    }
}

/// `quiver audit list`: one line (or JSON object) per record.
async fn list(pagers: &mut [Pager], limit: u32, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    merged(pagers, u64::from(limit), |rec| {
        if json {
            writeln!(out, "{}", audit_json(rec))?;
        } else {
            writeln!(
                out,
                "{} {} {:<10} {:<12} {:<24} {:>8.1} ms {:>6}+{:<5} tok ${:.6}{}{}{}",
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
                if rec.node_id > 0 {
                    format!(" node {}", rec.node_id)
                } else {
                    String::new()
                },
                if rec.error.is_empty() {
                    String::new()
                } else {
                    format!(" ERROR {}", rec.error)
                }
            )?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// `quiver audit export`: every matching record as JSONL, paged 1000 at a time per node.
async fn export(pagers: &mut [Pager], output: &std::path::Path) -> Result<()> {
    let mut out = open_out(output)?;
    let n = merged(pagers, u64::MAX, |rec| {
        Ok(writeln!(out, "{}", audit_json(rec))?)
    })
    .await?;
    out.flush()?;
    eprintln!("exported {n} audit records");
    Ok(())
}
