//! Prometheus metrics of the API: requests and their latency by method, matched route and
//! status code, and the number of open watches. Served as text at `/metrics`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of request metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// The route pattern (`/apis/shoal/v1/networks/{name}`), or `unmatched`.
    pub route: String,
    /// HTTP status code.
    pub code: String,
}

/// The API's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    watches: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shoal_api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests served", requests.clone());
        let latency = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer (for watches: to start streaming)",
            latency.clone(),
        );
        let watches = Gauge::default();
        registry.register("watches", "Watch streams open now", watches.clone());
        Metrics {
            registry,
            requests,
            latency,
            watches,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one open watch until the guard is dropped.
    pub fn watch_started(&self) -> WatchGuard {
        self.watches.inc();
        WatchGuard(self.watches.clone())
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> i64 {
        self.watches.get()
    }

    fn record(&self, labels: RequestLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }
}

/// Decrements the open-watch gauge when dropped (the stream ended, or the client left).
#[derive(Debug)]
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware recording every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let start = tokio::time::Instant::now();
    let resp = next.run(req).await;
    let labels = RequestLabels {
        method,
        route,
        code: resp.status().as_u16().to_string(),
    };
    metrics.record(labels, start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
pub async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_requests_by_method_route_and_code() {
        let m = Metrics::new();
        m.record(
            RequestLabels {
                method: "GET".into(),
                route: "/healthz".into(),
                code: "200".into(),
            },
            0.01,
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"shoal_api_requests_total{method="GET",route="/healthz",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("shoal_api_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn watch_guards_count_open_watches() {
        let m = Metrics::new();
        let g = m.watch_started();
        assert_eq!(m.open_watches(), 1);
        drop(g);
        assert_eq!(m.open_watches(), 0);
    }
}
