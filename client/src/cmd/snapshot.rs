//! `quiver snapshot ...`: snapshots of the whole database (admin): create, list, download,
//! restore, delete.
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Client, ClientError, pb};
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Value, json};

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

/// A snapshot's description as JSON.
fn snapshot_json(s: &pb::SnapshotInfo) -> Value {
    json!({"name": s.name, "created_ms": s.created_ms, "bytes": s.bytes, "collections": s.collections})
}

/// Runs a `quiver snapshot` command.
pub async fn run(client: &mut Client, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { name, json } => create(client, name, json).await,
        SnapshotCmd::List { json } => list(client, json).await,
        SnapshotCmd::Download { name, output } => download(client, name, &output).await,
        SnapshotCmd::Restore {
            name,
            collection,
            as_name,
        } => restore(client, name, collection, as_name).await,
        SnapshotCmd::Delete { name } => {
            client
                .snapshots
                .delete(pb::DeleteSnapshotRequest { name: name.clone() })
                .await
                .map_err(ClientError::from)?;
            eprintln!("deleted snapshot {name}");
            Ok(())
        }
    }
}

/// `quiver snapshot create`: the name on stdout.
async fn create(client: &mut Client, name: Option<String>, json: bool) -> Result<()> {
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
    Ok(())
}

/// `quiver snapshot list`.
async fn list(client: &mut Client, json: bool) -> Result<()> {
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
    Ok(())
}

/// `quiver snapshot download`: written to `OUTPUT.part`, synced, then renamed to `output`.
async fn download(client: &mut Client, name: String, output: &Path) -> Result<()> {
    let mut stream = client
        .snapshots
        .download(pb::DownloadSnapshotRequest { name })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let tmp = output.with_extension("part");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut total = 0u64;
    while let Some(chunk) = stream.message().await.map_err(ClientError::from)? {
        f.write_all(&chunk.data)?;
        total += chunk.data.len() as u64;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, output)?;
    eprintln!("wrote {} bytes to {}", total, output.display());
    Ok(())
}

/// `quiver snapshot restore`: everything, or one collection (optionally renamed).
async fn restore(
    client: &mut Client,
    name: String,
    collection: Option<String>,
    as_name: Option<String>,
) -> Result<()> {
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
    Ok(())
}
