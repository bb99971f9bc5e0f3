//! quiverd: the gRPC front of the storage engine. Thin handlers, one error mapping, config,
//! telemetry and an orderly shutdown: health NOT_SERVING → stop accepting → drain → fsync the
//! WAL → close the metadata store.
#![deny(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod idle_poll;
pub mod rag;
pub mod secret;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use http::HeaderValue;
use quiver_proto::v1::collections_server::CollectionsServer;
use quiver_proto::v1::points_server::PointsServer;
use quiver_proto::v1::search_server::SearchServer;
use quiver_storage::{Engine, EngineOptions, FsyncPolicy};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::config::Settings;
use crate::grpc::AppState;
use crate::grpc::collections::CollectionsService;
use crate::grpc::points::PointsService;
use crate::grpc::search::SearchService;

/// Names reported by the health service (plus `""` for the whole server).
const SERVICES: [&str; 6] = [
    "quiver.v1.Collections",
    "quiver.v1.Points",
    "quiver.v1.Search",
    "quiver.v1.Rag",
    "quiver.v1.Cluster",
    "quiver.v1.Keys",
];

/// The health service name Kubernetes readiness probes ask for: SERVING once storage is open
/// and, on a cluster, the node has a leader and is caught up (see [`cluster::Cluster::is_ready`]).
/// The empty name ("") is SERVING whenever the process serves (liveness).
pub const READINESS: &str = "quiver.readiness";

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Storage failed to open or close.
    #[error("storage: {0}")]
    Storage(#[from] quiver_storage::Error),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection setup failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A task panicked.
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A RAG provider could not be set up.
    #[error(transparent)]
    Rag(#[from] rag::RagSetupError),
    /// The metrics port cannot be bound.
    #[error("metrics listener: {0}")]
    MetricsListen(std::io::Error),
    /// The idle-polling thread could not start.
    #[error("idle poller: {0}")]
    Poller(std::io::Error),
    /// Replication could not start.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The TLS files cannot be loaded.
    #[error("tls: {0}")]
    Tls(String),
}

/// tonic's decoder reports an oversized request as OUT_OF_RANGE; the API (and gRPC's own
/// convention) says RESOURCE_EXHAUSTED. Rewrites the trailers-only status of unary calls.
fn oversized_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if too_large {
        h.insert("grpc-status", HeaderValue::from_static("8"));
    }
    resp
}

async fn set_all(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

/// HTTP/2 streams one connection may have open at once (each is a request in flight).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Largest header block a request may send.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 << 10;

/// Serves on `listener` until `shutdown` resolves, then shuts down in order.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let api_addr = listener.local_addr().map_err(ServerError::MetricsListen)?;
    let poller = match settings.idle_poll {
        Some(window) => Some(idle_poll::IdlePoller::start(window).map_err(ServerError::Poller)?),
        None => None,
    };
    let touch = move |req: http::Request<_>| {
        if let Some(p) = &poller {
            p.touch();
        }
        req
    };
    let state = AppState::new(settings.clone());
    let metrics_http = match settings.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(ServerError::MetricsListen)?;
            tracing::info!(addr = %l.local_addr().map_err(ServerError::MetricsListen)?, "metrics on /metrics, /healthz, /readyz");
            let st = Arc::clone(&state);
            Some(tokio::spawn(telemetry::serve_http(l, move || st.ready())))
        }
        None => None,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(READINESS, ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = settings.max_message_bytes;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let auth = settings.auth.clone().map(auth::Auth::new);
    if let Some(a) = &auth {
        tracing::info!(
            bootstrap_admin_key = settings.auth.as_ref().is_some_and(|k| k.is_some()),
            "API keys required"
        );
        state.set_auth(Arc::clone(a));
    }
    let router = Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .trace_fn(|req| {
            let span = tracing::info_span!(
                "rpc",
                method = %req.uri().path(),
                otel.name = %req.uri().path().trim_start_matches('/'),
                otel.kind = "server"
            );
            telemetry::link_remote_parent(&span, req.headers());
            span
        })
        .layer(tower::util::MapResponseLayer::new(oversized_status))
        .layer(tower::util::MapRequestLayer::new(touch))
        .layer(auth::AuthLayer::new(
            auth.clone(),
            auth::Limiter::new(settings.limits),
        ))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            CollectionsServer::new(CollectionsService::new(Arc::clone(&state)))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            PointsServer::new(PointsService::new(Arc::clone(&state)))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            SearchServer::new(SearchService::new(Arc::clone(&state)))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            quiver_proto::v1::rag_server::RagServer::new(rag::RagService::new(Arc::clone(&state))?)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(quiver_proto::v1::cluster_server::ClusterServer::new(
            grpc::cluster::ClusterService::new(Arc::clone(&state)),
        ))
        .add_service(quiver_proto::v1::keys_server::KeysServer::new(
            grpc::keys::KeysService::new(Arc::clone(&state)),
        ))
        .add_service(
            quiver_proto::v1::snapshots_server::SnapshotsServer::new(
                grpc::snapshots::SnapshotsService::new(Arc::clone(&state)),
            )
            .max_encoding_message_size(max),
        );
    let stopped = async {
        let _ = stop_rx.await;
    };
    let mut tls_watcher = None;
    let mut server = match &settings.tls {
        Some(files) => {
            let reloader = tls::Reloader::new(files.clone()).map_err(ServerError::Tls)?;
            tls_watcher = Some(reloader.spawn_watcher());
            tracing::info!(cert = %files.cert.display(), mutual = files.client_ca.is_some(), "TLS on the gRPC port");
            let incoming = reloader.incoming(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            // gRPC answers are several small HTTP/2 frames: never let Nagle's algorithm hold
            // them back.
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                if let Ok(c) = &conn
                    && let Err(e) = c.set_nodelay(true)
                {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
                conn
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };

    // Open storage while health says NOT_SERVING (WAL replay can take a while).
    let dir = settings.data_dir.clone();
    let opts = EngineOptions {
        // On a cluster every acknowledged write is already fsynced in the Raft log on a
        // quorum; the engine's WALs are synced when the applied index is recorded.
        fsync: if settings.cluster.is_some() {
            FsyncPolicy::Never
        } else {
            settings.fsync
        },
    };
    if settings.compaction.threads > 0 {
        quiver_storage::background::set_threads(settings.compaction.threads as usize);
    }
    let engine = Arc::new(tokio::task::spawn_blocking(move || Engine::open(&dir, opts)).await??);
    state.set_engine(Arc::clone(&engine));
    // A whole restore that crashed after its import: the keys in force before it win.
    if !engine.import_pending() {
        let keys = auth::KeyStore::new(engine.aux());
        if keys.finish_restore(engine.root())? {
            tracing::warn!(
                "a restore was interrupted after its import; the keys in force before it were put back"
            );
        }
    }
    if let Some(a) = &auth {
        a.set_store(auth::KeyStore::new(engine.aux()));
    }
    let cluster = match settings.cluster.clone() {
        Some(cs) => {
            let (c, task) =
                cluster::Cluster::start(Arc::clone(&engine), cs, api_addr.to_string()).await?;
            state.set_cluster(Arc::clone(&c));
            Some((c, task))
        }
        None => None,
    };
    set_all(&reporter, ServingStatus::Serving).await;
    // Per-collection gauges for /metrics.
    let gauges = {
        let e = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                let e = Arc::clone(&e);
                let _ = tokio::task::spawn_blocking(move || {
                    for c in e.list() {
                        let s = c.stats();
                        let name = c.config().name.clone();
                        metrics::gauge!("quiver_collection_points", "collection" => name.clone()).set(s.points as f64);
                        metrics::gauge!("quiver_collection_segments", "collection" => name.clone()).set(f64::from(s.sealed_segments));
                        metrics::gauge!("quiver_collection_wal_bytes", "collection" => name.clone()).set(s.wal_bytes as f64);
                        metrics::gauge!("quiver_collection_disk_bytes", "collection" => name.clone()).set(s.bytes_on_disk as f64);
                        metrics::gauge!("quiver_collection_dead_points", "collection" => name.clone()).set(s.dead_points as f64);
                        let (built, total) = c.index_progress();
                        metrics::gauge!("quiver_index_segments_built", "collection" => name.clone()).set(built as f64);
                        metrics::gauge!("quiver_index_segments_total", "collection" => name).set(total as f64);
                    }
                })
                .await;
            }
        })
    };
    let compactor = compactor::spawn(Arc::clone(&engine), settings.compaction);
    let readiness = {
        let (st, rep) = (Arc::clone(&state), reporter.clone());
        tokio::spawn(async move {
            let mut last = None;
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now = st.ready();
                if last != Some(now) {
                    let s = if now {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    rep.set_service_status(READINESS, s).await;
                    last = Some(now);
                }
            }
        })
    };
    tracing::info!(data_dir = %settings.data_dir.display(), collections = engine.list().len(), "storage open, serving");

    let ticker = if let FsyncPolicy::Interval(every) = settings.fsync {
        let e = Arc::clone(&engine);
        Some(tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                let e = Arc::clone(&e);
                if let Ok(Err(err)) = tokio::task::spawn_blocking(move || e.sync_all()).await {
                    tracing::error!(error = %err, "periodic WAL fsync failed");
                }
            }
        }))
    } else {
        None
    };

    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut server => Some(r),
    };
    tracing::info!("shutting down: health NOT_SERVING, draining requests");
    readiness.abort();
    gauges.abort();
    if let Some(c) = &compactor {
        c.abort();
    }
    set_all(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(READINESS, ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(());
    let served = match early {
        Some(r) => r,
        None => match tokio::time::timeout(settings.shutdown_grace, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(grace = ?settings.shutdown_grace, "requests still running after the grace period; closing anyway");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(t) = metrics_http {
        t.abort();
    }
    if let Some(t) = tls_watcher {
        t.abort();
    }
    if let Some((c, task)) = cluster {
        c.shutdown().await;
        task.abort();
    }
    tokio::task::spawn_blocking(move || engine.close()).await??;
    tracing::info!("storage closed");
    served??;
    Ok(())
}
