//! The admin HTTP listener: `/metrics` (Prometheus' text format),
//! `/healthz` (the agent's control plane answers) and `/ready` (the config
//! is loaded and its ports are bound), for Prometheus and for the
//! Kubernetes probes.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::Runtime;

/// Where `gateway run` serves them unless told otherwise: Istio's
/// Prometheus port, on loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:15090";

/// `--metrics ADDR` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::On)
            .map_err(|_| format!("`{s}` is not an address (IP:PORT) or `off`"))
    }
}

/// Binds `addr`: before the agent opens any gateway port, so that a
/// taken address fails the start.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics on {addr} (give --metrics another address, or `off`)")
    })
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, rt: Arc<Runtime>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let rt = rt.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(answer(&req, &rt)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A scraper that stalls holds only its own connection; it is
            // dropped after a minute.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

fn answer(req: &Request<hyper::body::Incoming>, rt: &Runtime) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            let mut r = text(StatusCode::OK, rt.metrics_text());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/ready" if rt.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the config is loading or its ports are not bound yet\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /ready\n".into(),
        ),
    }
}
