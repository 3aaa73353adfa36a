//! The coordinator's HTTP port (`--http-listen`): what probes, load balancers and Prometheus
//! need, none of which speak gRPC.
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when this coordinator can do its job: it leads and its store takes
//!   writes, or it follows a leader it knows; else 503 with the reason.
//! - `GET /leader`: 200 on the leader, 503 elsewhere (naming the leader, if known), for load
//!   balancers that send everything to the leader.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]); with `--tokens`, a credential with
//!   the `read` scope (`Authorization: Bearer <token>`).
//!
//! It shares the gRPC port's TLS (and its reloads) with HTTP/1.1 allowed by ALPN; a client
//! certificate is optional at the handshake (kubelet probes have none).

mod server_api;
mod server_args;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use factotum_service::tls::Reloadable;
use factotum_service::Lifecycle;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::api::conn::{self, Conn, Incoming};
use crate::api::Routing;
use crate::auth::{Auth, Scope};
use crate::metrics::Metrics;

mod api;
mod log;
mod sse;
mod ui;
mod web;

/// What the HTTP port serves from.
#[derive(Clone)]
pub struct Port {
    pub routing: Routing,
    pub metrics: Arc<Metrics>,
    /// `--tokens`: `/metrics` needs a `read` credential.
    pub auth: Option<Arc<Auth>>,
    pub tls: Option<Arc<Reloadable>>,
    pub idle_timeout: Duration,
    /// The client API (the gRPC service, called in-process): handlers get its
    /// authentication, limits and forwarding to the leader.
    pub jobs: crate::api::JobsApi,
    /// `--server-factfile-root`: Factotum Server's `POST /submit` reads factfiles only under it.
    pub server_factfile_root: Option<std::path::PathBuf>,
}

/// OpenMetrics text, which Prometheus reads (and prefers).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes, on `port`'s state.
pub fn router(port: Port) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/leader", get(leader))
        .route("/metrics", get(metrics))
        .merge(server_api::routes())
        .merge(ui::routes())
        .with_state(port)
}

/// Serves the HTTP port on `listener` until `life`'s token fires.
pub async fn serve(port: Port, listener: TcpListener, life: Lifecycle) {
    let ui = ui::context(&listener, &life.token);
    let incoming = conn::incoming(
        listener,
        port.idle_timeout,
        port.tls.clone(),
        conn::Port::Http,
        life.clone(),
    );
    let stop = life.token.clone();
    let served = axum::serve(Accepted(incoming), router(port).layer(ui))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP port failed");
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn readyz(State(port): State<Port>) -> Response {
    let leads = port.routing.engine.borrow().is_some();
    if leads {
        let stalled = port.metrics.stalled_now();
        if stalled > 0 {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store takes no writes ({stalled} batches stalled)\n"),
            );
        }
        return text(StatusCode::OK, "ready: leading\n".into());
    }
    match port.routing.leader.borrow().clone() {
        Some(leader) => text(StatusCode::OK, format!("ready: following {leader}\n")),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader is known (an election is under way, or the store is unreachable)\n"
                .into(),
        ),
    }
}

async fn leader(State(port): State<Port>) -> Response {
    if port.routing.engine.borrow().is_some() {
        return text(StatusCode::OK, "leader\n".into());
    }
    let body = match port.routing.leader.borrow().clone() {
        Some(leader) => format!("follower: the leader is {leader}\n"),
        None => "follower: no leader is known\n".into(),
    };
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

async fn metrics(State(port): State<Port>, headers: HeaderMap) -> Response {
    if let Some(auth) = &port.auth {
        let token = (headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
            .map(str::trim);
        let tokens = auth.tokens();
        match token.map(|t| tokens.by_token(t)) {
            None => {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "a token is needed (Authorization: Bearer <token>, with the read scope)\n"
                        .into(),
                )
            }
            Some(None) => {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "the token is not one this coordinator knows\n".into(),
                )
            }
            Some(Some(p)) if !p.may(Scope::Read) => {
                let why = format!(
                    "'{}' may not read metrics: it needs the 'read' scope\n",
                    p.name
                );
                return text(StatusCode::FORBIDDEN, why);
            }
            Some(Some(_)) => {}
        }
    }
    let body = port.metrics.encode();
    (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
}

/// The accepted connections (plain or TLS) as axum takes them.
struct Accepted(Incoming);

impl axum::serve::Listener for Accepted {
    type Io = Conn;
    type Addr = Option<std::net::SocketAddr>;

    async fn accept(&mut self) -> (Conn, Self::Addr) {
        loop {
            match self.0.next().await {
                Some(Ok(conn)) => {
                    let addr = conn.peer_addr();
                    return (conn, addr);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "HTTP accept failed"),
                // The listener is gone (shutting down): wait for the graceful shutdown.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(None)
    }
}
