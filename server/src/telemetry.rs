//! Logging: `tracing` to stderr, text or JSON; `RUST_LOG` overrides the configured level.
//! Traces: with `[log] otlp_endpoint`, every span (each RPC, its storage calls, RAG stages,
//! LLM calls) is also exported by OTLP/gRPC to a collector, batched on the runtime, and the
//! caller's W3C `traceparent` header continues its trace.
//! Metrics: the `metrics` facade, exported in the Prometheus text format on `/metrics` of the
//! optional HTTP port, beside `/healthz` (the process serves) and `/readyz` (storage is open).
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtlpSettings, Settings};

/// Keeps the trace exporter running; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

fn otlp_provider(o: &OtlpSettings) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(o.endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    // Batches are sent from the Tokio runtime, which the gRPC exporter needs.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            o.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(o.service_name.clone())
                .build(),
        )
        .build())
}

/// Installs the global subscriber (once; later calls are ignored), with OTLP export when
/// configured. Call from within the Tokio runtime.
pub fn init(settings: &Settings) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let (otel, provider, otel_error) = match settings.otlp.as_ref().map(otlp_provider) {
        Some(Ok(p)) => {
            let tracer = p.tracer("quiverd");
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(p),
                None,
            )
        }
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    // Spans are exported at `info` and above whatever the log level: quiet logs must not
    // switch tracing off.
    let otel = otel.map(|l| l.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(filter)).try_init(),
    };
    if let Some(o) = &settings.otlp {
        match &otel_error {
            None => {
                tracing::info!(endpoint = %o.endpoint, sample_ratio = o.sample_ratio, "exporting traces by OTLP")
            }
            Some(e) => {
                tracing::error!(endpoint = %o.endpoint, error = %e, "cannot set up OTLP trace export; traces stay local")
            }
        }
    }
    Telemetry { provider }
}

/// Continues the caller's trace: the W3C `traceparent`/`tracestate` headers of a request
/// become the parent of `span` (a no-op without OTLP export or without the headers).
pub fn link_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !headers.contains_key("traceparent") {
        return;
    }
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
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
