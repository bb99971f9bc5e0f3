//! Running the server: [`serve`] starts the transport, opens storage (and replication) while
//! health says NOT_SERVING, starts the background tasks, and on shutdown stops everything in
//! order: health NOT_SERVING → stop accepting → drain in-flight requests (up to the grace
//! period) → stop background tasks → leave the cluster → fsync and close storage.
use std::future::Future;
use std::sync::Arc;

use http::HeaderValue;
use quiver_proto::v1::collections_server::CollectionsServer;
use quiver_proto::v1::points_server::PointsServer;
use quiver_proto::v1::search_server::SearchServer;
use quiver_storage::{Engine, EngineOptions, FsyncPolicy};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::cluster::Cluster;
use crate::config::Settings;
use crate::grpc::AppState;
use crate::grpc::collections::CollectionsService;
use crate::grpc::points::PointsService;
use crate::grpc::search::SearchService;
use crate::{READINESS, SERVICES, ServerError, auth, compactor, grpc, idle_poll, rag};
use crate::{telemetry, tls};

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
    let state = AppState::new(settings.clone());
    let (reporter, health) = tonic_health::server::health_reporter();
    not_serving(&reporter).await;
    let auth = settings.auth.clone().map(auth::Auth::new);
    if let Some(a) = &auth {
        tracing::info!(
            bootstrap_admin_key = settings.auth.as_ref().is_some_and(|k| k.is_some()),
            "API keys required"
        );
        state.set_auth(Arc::clone(a));
    }
    let mut tasks = Vec::new();
    if let Some(addr) = settings.metrics_listen {
        tasks.push(metrics_http(addr, &state).await?);
    }
    let routes = routes(&state, health, settings.max_message_bytes)?;
    let mut transport = Transport::start(listener, &settings, routes, auth.clone(), &mut tasks)?;
    // Storage opens while health says NOT_SERVING (WAL replay can take a while).
    let (engine, cluster) = open_storage(&settings, &state, auth.as_ref(), api_addr).await?;
    set_all(&reporter, ServingStatus::Serving).await;
    let (background, helpers) = background(&engine, &state, &reporter, &settings);
    tasks.extend(helpers);
    tracing::info!(data_dir = %settings.data_dir.display(), collections = engine.list().len(), "storage open, serving");

    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut transport.task => Some(r),
    };
    tracing::info!("shutting down: health NOT_SERVING, draining requests");
    // First the tasks that would report readiness again or start new work.
    for t in background {
        t.abort();
    }
    not_serving(&reporter).await;
    let served = transport.drain(early, settings.shutdown_grace).await;
    for t in tasks {
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

/// tonic's decoder reports an oversized request as OUT_OF_RANGE; the API (and gRPC's own
/// convention) says RESOURCE_EXHAUSTED. Rewrites the trailers-only status of unary calls.
fn oversized_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| crate::error::is_oversized(tonic::Code::OutOfRange, m));
    if too_large {
        h.insert("grpc-status", HeaderValue::from_static("8"));
    }
    resp
}

/// Sets every service's health (readiness has its own reporter, [`readiness`]).
async fn set_all(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

/// Every service NOT_SERVING, readiness too.
async fn not_serving(reporter: &HealthReporter) {
    set_all(reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(READINESS, ServingStatus::NotServing)
        .await;
}

async fn metrics_http(
    addr: std::net::SocketAddr,
    state: &Arc<AppState>,
) -> Result<AbortHandle, ServerError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(ServerError::MetricsListen)?;
    tracing::info!(addr = %l.local_addr().map_err(ServerError::MetricsListen)?, "metrics on /metrics, /healthz, /readyz");
    let st = Arc::clone(state);
    Ok(tokio::spawn(telemetry::serve_http(l, move || st.ready())).abort_handle())
}

/// Every gRPC service, with the message size limits.
fn routes(
    state: &Arc<AppState>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    max: usize,
) -> Result<Routes, ServerError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let st = || Arc::clone(state);
    let mut b = Routes::builder();
    b.add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            CollectionsServer::new(CollectionsService::new(st()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            PointsServer::new(PointsService::new(st()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            SearchServer::new(SearchService::new(st()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            quiver_proto::v1::rag_server::RagServer::new(rag::RagService::new(st())?)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(quiver_proto::v1::cluster_server::ClusterServer::new(
            grpc::cluster::ClusterService::new(st()),
        ))
        .add_service(quiver_proto::v1::keys_server::KeysServer::new(
            grpc::keys::KeysService::new(st()),
        ))
        .add_service(
            quiver_proto::v1::snapshots_server::SnapshotsServer::new(
                grpc::snapshots::SnapshotsService::new(st()),
            )
            .max_encoding_message_size(max),
        );
    Ok(b.routes())
}

/// The gRPC transport, serving in its own task.
struct Transport {
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Transport {
    /// Starts accepting on `listener` (TLS when configured); background helpers it needs (the
    /// idle poller's touch, the TLS reloader) go to `tasks`.
    fn start(
        listener: TcpListener,
        settings: &Settings,
        routes: Routes,
        auth: Option<Arc<auth::Auth>>,
        tasks: &mut Vec<AbortHandle>,
    ) -> Result<Transport, ServerError> {
        let poller = match settings.idle_poll {
            Some(window) => {
                Some(idle_poll::IdlePoller::start(window).map_err(ServerError::Poller)?)
            }
            None => None,
        };
        let touch = move |req: http::Request<_>| {
            if let Some(p) = &poller {
                p.touch();
            }
            req
        };
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
                auth,
                auth::Limiter::new(settings.limits),
            ))
            .add_routes(routes);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stop_rx.await;
        };
        let task = match &settings.tls {
            Some(files) => {
                let reloader = tls::Reloader::new(files.clone()).map_err(ServerError::Tls)?;
                tasks.push(reloader.spawn_watcher().abort_handle());
                tracing::info!(cert = %files.cert.display(), mutual = files.client_ca.is_some(), "TLS on the gRPC port");
                let incoming = reloader.incoming(listener);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                // gRPC answers are several small HTTP/2 frames: never let Nagle's algorithm
                // hold them back.
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
        Ok(Transport { task, stop })
    }

    /// Stops accepting and waits up to `grace` for in-flight requests (`early`: the transport
    /// had already ended by itself).
    async fn drain(
        mut self,
        early: Option<Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>>,
        grace: std::time::Duration,
    ) -> Result<Result<(), tonic::transport::Error>, tokio::task::JoinError> {
        let _ = self.stop.send(());
        match early {
            Some(r) => r,
            None => match tokio::time::timeout(grace, &mut self.task).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        ?grace,
                        "requests still running after the grace period; closing anyway"
                    );
                    self.task.abort();
                    Ok(Ok(()))
                }
            },
        }
    }
}

/// Opens the engine (off the runtime), finishes an interrupted restore's key swap, and joins
/// the cluster when one is configured.
async fn open_storage(
    settings: &Settings,
    state: &Arc<AppState>,
    auth: Option<&Arc<auth::Auth>>,
    api_addr: std::net::SocketAddr,
) -> Result<(Arc<Engine>, Option<(Arc<Cluster>, JoinHandle<()>)>), ServerError> {
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
    quiver_storage::index::audit::set_share(settings.recall_audit_share);
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
    if let Some(a) = auth {
        a.set_store(auth::KeyStore::new(engine.aux()));
    }
    let cluster = match settings.cluster.clone() {
        Some(cs) => {
            let (c, task) = Cluster::start(Arc::clone(&engine), cs, api_addr.to_string()).await?;
            state.set_cluster(Arc::clone(&c));
            Some((c, task))
        }
        None => None,
    };
    Ok((engine, cluster))
}

/// The tasks that run while the server serves: per-collection gauges, the compactor and the
/// readiness reporter (stopped first at shutdown), and, with `fsync = "interval"`, the WAL
/// fsync ticker (stopped after the drain).
fn background(
    engine: &Arc<Engine>,
    state: &Arc<AppState>,
    reporter: &HealthReporter,
    settings: &Settings,
) -> (Vec<AbortHandle>, Vec<AbortHandle>) {
    let mut helpers = Vec::new();
    let mut tasks = vec![
        gauges(Arc::clone(engine)).abort_handle(),
        readiness(Arc::clone(state), reporter.clone()).abort_handle(),
    ];
    if let Some(c) = compactor::spawn(Arc::clone(engine), settings.compaction) {
        tasks.push(c.abort_handle());
    }
    if let FsyncPolicy::Interval(every) = settings.fsync {
        let e = Arc::clone(engine);
        let t = tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                let e = Arc::clone(&e);
                if let Ok(Err(err)) = tokio::task::spawn_blocking(move || e.sync_all()).await {
                    tracing::error!(error = %err, "periodic WAL fsync failed");
                }
            }
        });
        helpers.push(t.abort_handle());
    }
    (tasks, helpers)
}

/// Per-collection gauges for /metrics, every 10 s.
fn gauges(engine: Arc<Engine>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            let e = Arc::clone(&engine);
            let _ = tokio::task::spawn_blocking(move || {
                metrics::gauge!("quiver_recall_audit_queries")
                    .set(quiver_storage::index::audit::audited() as f64);
                memory_gauges(&e);
                for c in e.list() {
                    let s = c.stats();
                    let name = c.config().name.clone();
                    metrics::gauge!("quiver_collection_points", "collection" => name.clone())
                        .set(s.points as f64);
                    metrics::gauge!("quiver_collection_segments", "collection" => name.clone())
                        .set(f64::from(s.sealed_segments));
                    metrics::gauge!("quiver_collection_wal_bytes", "collection" => name.clone())
                        .set(s.wal_bytes as f64);
                    metrics::gauge!("quiver_collection_disk_bytes", "collection" => name.clone())
                        .set(s.bytes_on_disk as f64);
                    metrics::gauge!("quiver_collection_dead_points", "collection" => name.clone())
                        .set(s.dead_points as f64);
                    metrics::gauge!("quiver_collection_move_map_bytes", "collection" => name.clone())
                        .set(s.move_map_bytes as f64);
                    metrics::gauge!("quiver_collection_list_map_bytes", "collection" => name.clone())
                        .set(s.list_map_bytes as f64);
                    let (built, total) = c.index_progress();
                    metrics::gauge!("quiver_index_segments_built", "collection" => name.clone())
                        .set(built as f64);
                    metrics::gauge!("quiver_index_segments_total", "collection" => name)
                        .set(total as f64);
                }
            })
            .await;
        }
    })
}

/// Where the process's anonymous memory goes: jemalloc's own statistics (in `quiverd` it is
/// the global allocator and the process's malloc, so they cover RocksDB's C++ allocations
/// too), and what RocksDB reports holding of them.
fn memory_gauges(engine: &Engine) {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken when the epoch advances.
    if epoch::advance().is_ok() {
        for (name, v) in [
            ("quiver_heap_allocated_bytes", stats::allocated::read()),
            ("quiver_heap_active_bytes", stats::active::read()),
            ("quiver_heap_resident_bytes", stats::resident::read()),
            ("quiver_heap_retained_bytes", stats::retained::read()),
        ] {
            if let Ok(v) = v {
                metrics::gauge!(name).set(v as f64);
            }
        }
    }
    let m = engine.meta_memory();
    metrics::gauge!("quiver_meta_memtable_bytes").set(m.memtables as f64);
    metrics::gauge!("quiver_meta_block_cache_bytes").set(m.block_cache as f64);
    metrics::gauge!("quiver_meta_table_readers_bytes").set(m.table_readers as f64);
}

/// Keeps the readiness service in step with [`AppState::ready`], every 500 ms.
fn readiness(state: Arc<AppState>, reporter: HealthReporter) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = state.ready();
            if last != Some(now) {
                let s = if now {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(READINESS, s).await;
                last = Some(now);
            }
        }
    })
}
