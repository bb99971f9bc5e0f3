//! OTLP trace export: quiverd sends its spans to a collector (a fake one here, on loopback),
//! with the service name, RPC spans and the storage spans under them, and continues a trace
//! whose `traceparent` the caller sent.
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use quiver_proto::v1 as pb;
use quiver_tests::{Server, ok};

/// (service.name, span name, trace id, parent span id) of every span received.
type Spans = Arc<Mutex<Vec<(String, String, Vec<u8>, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push((service.clone(), s.name, s.trace_id, s.parent_span_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_continue_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let s = Server::start_with(
        dir.path(),
        &[
            ("QUIVER__LOG__OTLP_ENDPOINT", &endpoint),
            ("QUIVER__LOG__SERVICE_NAME", "quiver-e2e"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    ok(&s.cli(&["collection", "create", "t", "--dim", "2", "--metric", "l2"]));
    // A search carrying the caller's trace context.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut c = s.client().await;
    let mut req = tonic::Request::new(pb::SearchRequest {
        collection: "t".into(),
        vector: vec![0.5, 0.5],
        k: 3,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01").parse().unwrap(),
    );
    c.search.search(req).await.unwrap();

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let started = std::time::Instant::now();
    loop {
        {
            let spans = collector.0.lock().unwrap();
            let create = spans.iter().any(|s| s.1 == "quiver.v1.Collections/Create");
            let search = spans
                .iter()
                .find(|s| s.1 == "quiver.v1.Search/Search" && hex(&s.2) == trace_id);
            if create && let Some(search) = search {
                assert_eq!(
                    hex(&search.3),
                    parent,
                    "the RPC span's parent is the caller's"
                );
                assert!(
                    search.0.contains("quiver-e2e"),
                    "service.name: {}",
                    search.0
                );
                // The storage search ran inside it: same trace.
                assert!(
                    spans
                        .iter()
                        .any(|s| s.1 == "search_batch_filtered" && hex(&s.2) == trace_id),
                    "no storage span in the caller's trace: {:?}",
                    spans.iter().map(|s| &s.1).collect::<Vec<_>>()
                );
                break;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "spans received: {:?}",
            collector
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|s| &s.1)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    serving.abort();
}

#[tokio::test]
async fn a_bad_otlp_endpoint_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(quiver_tests::bin("quiverd"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("QUIVER__LOG__OTLP_ENDPOINT", "collector:4317")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.otlp_endpoint"), "{err}");
}
