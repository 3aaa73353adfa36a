//! The agent's optional HTTP port (`--http-listen`): `GET /metrics` (Prometheus) and
//! `GET /healthz` (200 while the process serves; the body says whether a session is open).
//! Plain HTTP: it serves no secrets; bind it to loopback or a monitoring network.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use factotum_service::Lifecycle;
use tokio::net::TcpListener;

use crate::metrics::metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves until `life`'s token fires; returns the address bound.
pub async fn serve(addr: SocketAddr, life: &Lifecycle) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --http-listen {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                let body = metrics().encode();
                (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body)
            }),
        )
        .route(
            "/healthz",
            get(|| async {
                match metrics().connected.get() {
                    1 => "ok: connected\n".into_response(),
                    _ => "ok: no session with a coordinator\n".into_response(),
                }
            }),
        );
    let stop = life.token.clone();
    life.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP port failed");
        }
    });
    Ok(bound)
}
