//! `/metrics` (OpenMetrics, or the classic text format when not asked for OpenMetrics),
//! `/healthz` and `/readyz`.

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};
use tokio::net::TcpListener;

use crate::{exposition, liveness::Liveness, Error, Result};

/// What `/readyz` reports. A standby replica (not leader) is ready: it is healthy and can take
/// over. It is not ready before it has talked to the API server once.
#[derive(Debug, Default)]
pub struct Readiness {
    api_reachable: AtomicBool,
}

impl Readiness {
    pub fn mark_api_reachable(&self) {
        self.api_reachable.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.api_reachable.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Served {
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    liveness: Arc<Liveness>,
}

async fn metrics(State(served): State<Served>, headers: HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match prometheus_client::encoding::text::encode(&mut body, &served.registry) {
        Ok(()) if exposition::wants_openmetrics(accept) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, exposition::OPENMETRICS)],
            body,
        )
            .into_response(),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, exposition::PROMETHEUS_TEXT)],
            exposition::to_prometheus_text(&body),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

/// Fails when a leader loop died or the health pass stalled (see [`Liveness`]).
async fn healthz(State(served): State<Served>) -> impl IntoResponse {
    match served.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(served): State<Served>) -> impl IntoResponse {
    if served.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the API server has not answered yet",
        )
    }
}

pub fn router(
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    liveness: Arc<Liveness>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Served {
            registry,
            readiness,
            liveness,
        })
}

/// Binds `addr` (port 0 picks a free port) and returns the bound address with the serving future.
pub async fn bind(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    liveness: Arc<Liveness>,
) -> Result<(SocketAddr, impl std::future::Future<Output = Result<()>>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Http { addr, source })?;
    let app = router(registry, readiness, liveness);
    Ok((bound, async move {
        axum::serve(listener, app)
            .await
            .map_err(|source| Error::Http {
                addr: bound,
                source,
            })
    }))
}
