//! `serve --admin-listen ADDR`: what operators and orchestrators ask of the
//! process, on a listener of its own (never the API's, so a load balancer
//! exposing the API exposes none of this):
//!
//! - `GET /metrics`: every metric of [`crate::metrics`], in the OpenMetrics text
//!   format Prometheus scrapes;
//! - `GET /healthz`: 200 while the process runs (a liveness probe);
//! - `GET /readyz`: 200 when a broker connection is up and the config is
//!   loaded, else 503 naming what is missing (a readiness probe).
//!
//! Anything else is 404 or 405, with a JSON body like the API's errors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::warn;

/// What `/readyz` asks: whether the service can publish now.
pub trait Readiness: Send + Sync + 'static {
    /// `None` when ready, else what is missing.
    fn not_ready(&self) -> Option<&'static str>;
}

/// Time a scraper has to send its request's line and headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, readiness: Arc<dyn Readiness>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "the admin listener failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let readiness = Arc::clone(&readiness);
        tokio::spawn(async move {
            let handler = service_fn(move |request: Request<Incoming>| {
                let answer = answer(request.method(), request.uri().path(), readiness.as_ref());
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
}

fn answer(method: &Method, path: &str, readiness: &dyn Readiness) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return json(StatusCode::NOT_FOUND, "not_found", "the admin listener serves /metrics, /healthz and /readyz");
    }
    if method != Method::GET && method != Method::HEAD {
        return json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET");
    }
    match path {
        "/metrics" => text(StatusCode::OK, crate::metrics::CONTENT_TYPE, crate::metrics::encode()),
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        _ => match readiness.not_ready() {
            None => text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n".into()),
            Some(missing) => json(StatusCode::SERVICE_UNAVAILABLE, "not_ready", missing),
        },
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    text(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<&'static str>);

    impl Readiness for Fixed {
        fn not_ready(&self) -> Option<&'static str> {
            self.0
        }
    }

    #[test]
    fn readyz_says_what_is_missing_and_unknown_paths_are_json_404s() {
        assert_eq!(answer(&Method::GET, "/readyz", &Fixed(None)).status(), StatusCode::OK);
        let down = answer(&Method::GET, "/readyz", &Fixed(Some("no broker connection is up")));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(&Method::GET, "/healthz", &Fixed(Some("down"))).status(), StatusCode::OK);
        assert_eq!(answer(&Method::GET, "/nope", &Fixed(None)).status(), StatusCode::NOT_FOUND);
        assert_eq!(answer(&Method::POST, "/metrics", &Fixed(None)).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
