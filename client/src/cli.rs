//! `quiver`: the command-line client. Talks only gRPC. Errors are one line naming the
//! file, line and field; the exit code is non-zero on any failure. The binary's `main` is
//! [`main`] (the end-to-end tests build the same entry point as a target of their own).

use std::path::PathBuf;

use crate::cmd::{audit, cluster, collection, keys, points, rag, review, search, snapshot};
use crate::{Client, pb};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// Quiver command-line client.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// Read consistency of get, count, search and ask on a replicated cluster: `local` (the
    /// answering replica's state) or `leader` (linearizable: everything committed before the
    /// read).
    #[arg(long, global = true, value_enum, default_value = "local")]
    consistency: ConsistencyArg,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How to reach the server: address, headers, TLS.
#[derive(Debug, clap::Args)]
struct ConnArgs {
    /// Server address.
    #[arg(long, global = true, env = "QUIVER_ADDR", default_value = crate::DEFAULT_ADDR)]
    addr: String,
    /// Tenant sent with every call (x-quiver-tenant): audit records and token budgets are
    /// per tenant.
    #[arg(long, global = true, env = "QUIVER_TENANT")]
    tenant: Option<String>,
    /// API key sent with every call (servers started with --auth require one).
    #[arg(long, global = true, env = "QUIVER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificate (PEM) that an https:// server's certificate must chain to.
    #[arg(long, global = true, env = "QUIVER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require mutual TLS (with --tls-key).
    #[arg(long, global = true, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM), with --tls-cert.
    #[arg(long, global = true, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    /// Served from the replica's own state.
    Local,
    /// Linearizable (read-index through the leader).
    Leader,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Manage collections.
    #[command(subcommand)]
    Collection(collection::CollectionCmd),
    /// Replication: status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// API keys (admin): create, list, revoke.
    #[command(subcommand)]
    Key(keys::KeyCmd),
    /// Snapshots of the whole database (admin): create, list, download, restore, delete.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Upsert points from a JSONL file: {"id": 7 | "key", "vector": [..], "payload": {..}} per line.
    Upsert(points::UpsertArgs),
    /// Fetch points by id (integers are numeric ids; quote a number as JSON, '"7"', for a string id).
    Get(points::GetArgs),
    /// Delete points by id.
    Delete(points::DeleteArgs),
    /// Count live points.
    Count(points::CountArgs),
    /// Bulk-load files (JSONL, CSV, Parquet, .npy, .fvecs/.bvecs/.ivecs; .gz/.zst read
    /// transparently), streaming, with a progress bar, bad-row handling and resume.
    Ingest(points::IngestArgs),
    /// Chunk, embed and store documents (.txt, .md, .html: one per file; .jsonl: one per line).
    IngestDocs(rag::IngestDocsArgs),
    /// Remove a document's chunks.
    DeleteDoc(rag::DeleteDocArgs),
    /// Ask a question of a document collection.
    Ask(rag::AskArgs),
    /// Evaluate a document collection on questions (JSONL: question, expected_documents,
    /// expected_answer): retrieval recall@k, MRR, answer match, citation validity, latency.
    Eval(rag::EvalArgs),
    /// A document collection's RAG settings.
    #[command(subcommand)]
    Rag(rag::RagCmd),
    /// The audit log of LLM and embedding calls.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// The human-review queue of answers asked with --mode review.
    #[command(subcommand)]
    Review(review::ReviewCmd),
    /// Write a collection (or the points passing --filter) to JSONL or Parquet.
    Export(points::ExportArgs),
    /// Update payloads of points: merge keys in (or replace with --overwrite), remove keys.
    SetPayload(points::SetPayloadArgs),
    /// Nearest-neighbour search.
    Search(search::SearchArgs),
    /// Print every point as JSONL (paged with Scroll).
    Scroll(points::ScrollArgs),
}

/// Connects as the global flags say: headers for --tenant and --api-key, TLS for an https://
/// address or --tls-ca.
async fn connect(cli: &ConnArgs) -> Result<Client> {
    connect_to(cli, &cli.addr).await
}

/// [`connect`] to another address (another node of the cluster), with the same headers and TLS.
async fn connect_to(cli: &ConnArgs, addr: &str) -> Result<Client> {
    let bearer = cli.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = &cli.tenant {
        pairs.push(("x-quiver-tenant", t));
    }
    if let Some(b) = &bearer {
        pairs.push(("authorization", b));
    }
    let headers = crate::Headers::new(&pairs).map_err(|e| anyhow!("--api-key/--tenant: {e}"))?;
    if !addr.starts_with("https://") && cli.tls_ca.is_none() {
        return Ok(Client::connect_with(addr, headers).await?);
    }
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("{what} {}", p.display()))
    };
    let ca = match &cli.tls_ca {
        Some(p) => read(p, "--tls-ca")?,
        None => bail!("an https:// address needs --tls-ca (the CA certificate, PEM)"),
    };
    let identity = match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => Some((read(c, "--tls-cert")?, read(k, "--tls-key")?)),
        _ => None,
    };
    Ok(Client::connect_tls(
        addr,
        headers,
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .await?)
}

/// Connects and runs one command.
async fn run(cli: Cli) -> Result<()> {
    let mut client = connect(&cli.conn).await?;
    let c = &mut client;
    let consistency = match cli.consistency {
        ConsistencyArg::Local => pb::Consistency::Local,
        ConsistencyArg::Leader => pb::Consistency::Leader,
    } as i32;
    match cli.cmd {
        Cmd::Collection(a) => collection::run(c, a).await,
        Cmd::Cluster(a) => cluster::run(c, a).await,
        Cmd::Key(a) => keys::run(c, a).await,
        Cmd::Snapshot(a) => snapshot::run(c, a).await,
        Cmd::Upsert(a) => points::upsert(c, a).await,
        Cmd::Get(a) => points::get(c, a, consistency).await,
        Cmd::Delete(a) => points::delete(c, a).await,
        Cmd::Count(a) => points::count(c, a, consistency).await,
        Cmd::Ingest(a) => points::ingest(c, a).await,
        Cmd::IngestDocs(a) => rag::ingest_docs(c, a).await,
        Cmd::DeleteDoc(a) => rag::delete_doc(c, a).await,
        Cmd::Ask(a) => rag::ask(c, a, consistency).await,
        Cmd::Eval(a) => rag::eval(c, a).await,
        Cmd::Rag(a) => rag::run(c, a).await,
        Cmd::Audit(a) => {
            let conn = &cli.conn;
            let nodes =
                audit::Nodes::new(|addr: String| async move { connect_to(conn, &addr).await });
            audit::run(c, a, &conn.addr, nodes).await
        }
        Cmd::Review(a) => review::run(c, a).await,
        Cmd::Export(a) => points::export(c, a).await,
        Cmd::SetPayload(a) => points::set_payload(c, a).await,
        Cmd::Search(a) => search::run(c, a, consistency).await,
        Cmd::Scroll(a) => points::scroll(c, a).await,
    }
}

/// Parses the command line, runs the command, reports an error on one line.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn upsert_keeps_its_flags() {
        let cli = Cli::try_parse_from([
            "quiver",
            "upsert",
            "--collection",
            "c",
            "p.jsonl",
            "--batch-size",
            "7",
            "--json",
        ]);
        assert!(matches!(cli.map(|c| c.cmd), Ok(Cmd::Upsert(_))));
    }
}
