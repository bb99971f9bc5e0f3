//! `quiver key ...`: API keys (admin): create, list, revoke.
use crate::{Client, ClientError, pb};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

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

/// The lower-case name of a proto role.
fn role_name(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Read) => "read",
        Ok(pb::Role::Write) => "write",
        Ok(pb::Role::Admin) => "admin",
        Err(_) => "unknown",
    }
}

/// A key's description as JSON (never its secret).
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
pub async fn run(client: &mut Client, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Create {
            role,
            collections,
            name,
            json,
        } => create(client, role, collections, name, json).await,
        KeyCmd::List { json } => list(client, json).await,
        KeyCmd::Revoke { id } => {
            let k = client
                .keys
                .revoke(pb::RevokeKeyRequest { id })
                .await
                .map_err(ClientError::from)?
                .into_inner();
            eprintln!("revoked key {}", k.id);
            Ok(())
        }
    }
}

/// `quiver key create`: the secret on stdout, once.
async fn create(
    client: &mut Client,
    role: RoleArg,
    collections: Vec<String>,
    name: String,
    json: bool,
) -> Result<()> {
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
    Ok(())
}

/// `quiver key list`.
async fn list(client: &mut Client, json: bool) -> Result<()> {
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
    Ok(())
}
