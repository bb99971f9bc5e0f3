//! Logging: `tracing` to stderr, text or JSON; `RUST_LOG` overrides the configured level.
//! Metrics: the `metrics` facade, exported in the Prometheus text format on `/metrics` of the
//! optional HTTP port, beside `/healthz` (the process serves) and `/readyz` (storage is open).
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(settings: &Settings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is aborted.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let handle = prometheus();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            t.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "storage is opening\n")
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}
