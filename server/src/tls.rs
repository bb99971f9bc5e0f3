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
    /// With `client_ca`: the names (DNS or IP SANs) a client certificate must carry, beyond
    /// chaining to the CA (`None`: any certificate from the CA). The cluster port pins its
    /// members this way.
    pub peer_names: Option<Vec<String>>,
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
            match &f.peer_names {
                Some(names) => {
                    builder.with_client_cert_verifier(Arc::new(PinnedNames::new(verifier, names)?))
                }
                None => builder.with_client_cert_verifier(verifier),
            }
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} / {}: {e}", f.cert.display(), f.key.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A client-certificate verifier that also requires one of a set of subject names: the chain
/// check alone would make every certificate the CA ever issued (API clients too) a peer.
#[derive(Debug)]
struct PinnedNames {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    names: Vec<rustls::pki_types::ServerName<'static>>,
}

impl PinnedNames {
    fn new(
        inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
        names: &[String],
    ) -> Result<PinnedNames, String> {
        let names = names
            .iter()
            .map(|n| {
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("peer name {n:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err(
                "no peer names to pin (set cluster.peers or cluster.tls_peer_names)".into(),
            );
        }
        Ok(PinnedNames { inner, names })
    }
}

impl rustls::server::danger::ClientCertVerifier for PinnedNames {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self
            .names
            .iter()
            .any(|n| cert.verify_is_valid_for_subject_name(n).is_ok())
        {
            Ok(ok)
        } else {
            metrics::counter!("quiver_tls_peer_name_refused_total").increment(1);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS handshakes in progress at most, per listener: beyond it new connections wait in the
/// kernel's accept queue instead of each holding a task and a buffer.
pub const MAX_HANDSHAKES: usize = 256;

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
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
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
                    let _permit = permit;
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
