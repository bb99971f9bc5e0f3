//! TLS for the gRPC port (rustls), optional client-certificate verification (mTLS), and hot
//! reload: the certificate, key and client CA files are checked every `reload_secs`; when any
//! changes, a new configuration is built and used for every connection accepted after it.
//! A broken file keeps the old configuration (logged), so a half-copied certificate never
//! takes the server down.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The files.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (PEM); `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload: Duration,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(v)
}

/// Builds a server configuration from the files (ALPN h2 for gRPC).
pub fn load(f: &TlsFiles) -> Result<ServerConfig, String> {
    let chain = certs(&f.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&f.key).map_err(|e| format!("{}: {e}", f.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &f.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} / {}: {e}", f.cert.display(), f.key.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The current configuration, reloaded when the files change.
#[derive(Debug)]
pub struct Reloader {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamp: RwLock<Vec<Option<(SystemTime, u64)>>>,
}

fn stamps(f: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&f.cert), Some(&f.key), f.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

impl Reloader {
    /// Loads the files now (an error here stops the server from starting).
    pub fn new(files: TlsFiles) -> Result<Arc<Reloader>, String> {
        let cfg = load(&files)?;
        Ok(Arc::new(Reloader {
            stamp: RwLock::new(stamps(&files)),
            files,
            current: RwLock::new(Arc::new(cfg)),
        }))
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rebuilds the configuration if a file changed; returns whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        if *self.stamp.read().unwrap_or_else(|p| p.into_inner()) == now {
            return false;
        }
        match load(&self.files) {
            Ok(cfg) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
                metrics::counter!("quiver_tls_reloads_total").increment(1);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificates");
                false
            }
        }
    }

    /// Checks the files every `reload` until the task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let r = Arc::clone(self);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(r.files.reload);
            loop {
                t.tick().await;
                r.reload_if_changed();
            }
        })
    }

    /// Accepts TCP connections on `listener` and completes TLS handshakes concurrently (a
    /// slow or failing client never holds up the others); yields established streams.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let r = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(r.current());
                let out = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => {
                            let _ = out.send(Ok(s)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("quiver_tls_handshake_failures_total").increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
