//! `quiverd`: parse flags, load and validate configuration, serve until SIGTERM/SIGINT. The
//! binary's `main` is [`main`] (the end-to-end tests build the same entry point as a target of
//! their own).
use std::io::Write;
use std::path::PathBuf;

use crate::config::{Config, Overrides};
use anyhow::Context;
use clap::Parser;

/// The Quiver vector database server.
#[derive(Debug, Parser)]
#[command(name = "quiverd", version, about)]
struct Args {
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address, HOST:PORT (overrides server.listen); port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address for Prometheus /metrics, /healthz and /readyz (overrides
    /// server.metrics_listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// This node's id in a replicated cluster (a positive integer, or `auto` = StatefulSet pod
    /// ordinal + 1 from the hostname); overrides cluster.node_id.
    #[arg(long)]
    node_id: Option<String>,
    /// Node-to-node listen address HOST:PORT; enables replication (overrides cluster.listen).
    #[arg(long)]
    cluster_listen: Option<String>,
    /// Bootstrap voters by cluster address: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT (overrides
    /// cluster.peers).
    #[arg(long)]
    peers: Option<String>,
    /// SERVICE:REPLICAS: peers from a StatefulSet's headless service (overrides
    /// cluster.statefulset).
    #[arg(long)]
    statefulset: Option<String>,
    /// Require API keys (overrides auth.enabled); the bootstrap admin key is QUIVER_ADMIN_KEY.
    #[arg(long)]
    auth: bool,
    /// TOML configuration file; environment variables QUIVER__SECTION__KEY override it.
    #[arg(long, env = "QUIVER_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML-compatible JSON and exit.
    #[arg(long)]
    print_config: bool,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Parses the command line, loads the configuration and serves until a signal.
#[tokio::main]
pub async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let overrides = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        node_id: args.node_id,
        cluster_listen: args.cluster_listen,
        peers: args.peers,
        statefulset: args.statefulset,
        auth: args.auth,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    let settings = config.validate()?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    let telemetry = crate::telemetry::init(&settings);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read the bound address (useful with port 0) from this first line.
    println!("quiverd listening on {addr}");
    std::io::stdout().flush()?;
    let served = crate::serve(listener, settings, shutdown_signal()).await;
    // Flushes buffered spans; off the runtime's workers, which run the exporter.
    let flushed = tokio::task::spawn_blocking(move || telemetry.shutdown());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flushed).await;
    served?;
    Ok(())
}
