//! Prometheus exposition, shared by the agent's and the collector's `GET /metrics`.
//!
//! Metrics are kept with `prometheus-client` and exposed as the Prometheus text format 0.0.4, or
//! as OpenMetrics text when the scraper asks for it (`Accept: application/openmetrics-text`, as
//! Prometheus does). Every name starts with `bpmon_`, so none clashes with Flink's own reporter
//! (`flink_…`).

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use prometheus_client;
use prometheus_client::registry::Registry;

/// The prefix of every bpmon metric (without its `_`).
pub const PREFIX: &str = "bpmon";

/// `Content-Type` of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry whose metrics are all named `bpmon_…`.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut fields = part.split(';').map(str::trim);
            let media = fields.next().unwrap_or("");
            // `q=0` means "not this one".
            let refused = fields.any(|f| {
                f.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// The registry as text: OpenMetrics or the Prometheus text format.
pub fn encode(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    if openmetrics {
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    }
    out
}

/// The scrape answer for a request with these headers.
pub fn response(registry: &Registry, headers: &HeaderMap) -> Response {
    let openmetrics = wants_openmetrics(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = encode(registry, openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `GET /metrics` for a registry whose metrics update themselves.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let registry = Arc::clone(&registry);
            async move { response(&registry, &headers) }
        }),
    )
}

/// Serves [`router`] on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry)).await
}

/// Milliseconds since the epoch as Prometheus's seconds.
pub fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    fn sample() -> Registry {
        let mut r = registry();
        let c: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        c.get_or_create(&vec![("outcome", "stored".to_string())])
            .inc_by(3);
        r.register("things", "Things done", c);
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(0.25);
        r.register("share_ratio", "A share", g);
        r
    }

    #[test]
    fn accept_negotiation() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("*/*")));
        // What Prometheus sends.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0, text/plain"
        )));
    }

    #[test]
    fn both_encodings_carry_the_prefixed_names() {
        let r = sample();
        let text = encode(&r, false);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let things = scrape
            .samples
            .iter()
            .find(|s| s.metric == "bpmon_things_total")
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(things.labels.get("outcome"), Some("stored"));
        assert_eq!(things.value, prometheus_parse::Value::Counter(3.0));
        let share = scrape
            .samples
            .iter()
            .find(|s| s.metric == "bpmon_share_ratio")
            .unwrap();
        assert_eq!(share.value, prometheus_parse::Value::Gauge(0.25));
        let om = encode(&r, true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE bpmon_things counter"), "{om}");
        assert!(
            om.contains("bpmon_things_total{outcome=\"stored\"} 3"),
            "{om}"
        );
    }

    #[tokio::test]
    async fn the_router_answers_with_the_negotiated_type() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(sample())));
        let get = |accept: Option<&'static str>| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let accept = accept
                .map(|a| format!("Accept: {a}\r\n"))
                .unwrap_or_default();
            let req =
                format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        };
        let plain = get(None).await;
        assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
        assert!(
            plain
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{plain}"
        );
        let om = get(Some("application/openmetrics-text; version=1.0.0")).await;
        assert!(
            om.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{om}"
        );
        assert!(om.contains("# EOF"), "{om}");
    }
}
