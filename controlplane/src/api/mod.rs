//! The REST API under `/api/v1/` (documented in controlplane/openapi.yaml and docs/api.md):
//! `session.rs` (who calls), `login.rs` (the login and its guard), `flows.rs` (flows, top-N, coverage, sensors, health),
//! `entities.rs`, `alerts.rs` (alerts and their triage), `settings.rs` (notifiers and lists), `metrics.rs` (`GET /metrics`, health for Prometheus). JSON in and out; errors are `{"error": {"code": ..., "message": ...}}` with the
//! matching HTTP status. Queries run on the blocking pool: the store is synchronous.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    http::{Method, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

mod alerts;
mod entities;
mod flows;
mod login;
mod metrics;
mod session;
mod settings;

use crate::store::Stores;
pub(crate) use crate::util::time::{now_ns, rfc3339};
use alerts::{alert, alerts, comment, patch_alert};
use entities::{entities, entity};
use flows::{coverage, flows, health, sensors, top};
use login::login;
use session::{authenticate, logout, whoami};

pub use alerts::{MAX_COMMENT, MAX_TAGS};
pub use entities::ENTITIES_DEFAULT_NS;
pub use flows::{COVERAGE_DEFAULT_NS, TOP_DEFAULT_NS};
pub use login::{FREE_CLIENT_FAILURES, FREE_FAILURES, LoginGuard, MAX_WAIT};

/// Default and largest page of `/api/v1/flows`.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// A sensor without a heartbeat for this long is `stale`.
pub const STALE_AFTER_NS: i64 = 180_000_000_000;

#[derive(Clone)]
struct Api {
    stores: Stores,
    started: Instant,
    opts: Options,
    logins: Arc<LoginGuard>,
}

/// The largest request body (JSON settings, comments: a few KiB).
pub const MAX_BODY: usize = 64 << 10;

/// How the API is served.
#[derive(Clone)]
pub struct Options {
    /// Session cookies only over HTTPS (`Secure`): when the dashboard is reached by https://.
    pub secure_cookies: bool,
    /// A request's body must arrive whole within this.
    pub body_timeout: Duration,
    /// What sends a notifier's test message: the dispatcher's, with its allowed destinations.
    pub sender: crate::notify::Sender,
    /// This control plane's name among replicas (`serve`'s replica id).
    pub replica: String,
    /// Cluster mode's bus, for health.
    pub bus: Option<crate::bus::Bus>,
}

/// Every path served, with its methods (openapi.yaml documents exactly these; a test checks
/// it).
pub const ROUTES: [(&str, &[&str]); 18] = [
    ("/api/v1/health", &["get"]),
    ("/api/v1/session", &["get", "post", "delete"]),
    ("/api/v1/sensors", &["get"]),
    ("/api/v1/flows", &["get"]),
    ("/api/v1/coverage", &["get"]),
    ("/api/v1/alerts", &["get"]),
    ("/api/v1/alerts/{id}", &["get", "patch"]),
    ("/api/v1/alerts/{id}/comments", &["post"]),
    ("/api/v1/top", &["get"]),
    ("/api/v1/entities", &["get"]),
    ("/api/v1/entities/{ip}", &["get"]),
    ("/api/v1/notifiers", &["get", "post"]),
    ("/api/v1/notifiers/{name}", &["delete"]),
    ("/api/v1/notifiers/{name}/test", &["post"]),
    ("/api/v1/allowlist", &["get", "post", "delete"]),
    ("/api/v1/watchlist", &["get", "post", "delete"]),
    ("/api/v1/sensitivity", &["get", "post", "delete"]),
    ("/metrics", &["get"]),
];

/// What answers without credentials.
pub(super) fn public(method: &Method, path: &str) -> bool {
    (method == Method::GET && (path == "/api/v1/health" || path == "/metrics"))
        || (method == Method::POST && path == "/api/v1/session")
}

/// The API's routes; anything else under the router answers a JSON 404.
pub fn router(stores: Stores, opts: Options) -> Router {
    let api = Api {
        stores,
        started: Instant::now(),
        opts,
        logins: Default::default(),
    };
    Router::new()
        .route(ROUTES[0].0, get(health))
        .route(ROUTES[1].0, get(whoami).post(login).delete(logout))
        .route(ROUTES[2].0, get(sensors))
        .route(ROUTES[3].0, get(flows))
        .route(ROUTES[4].0, get(coverage))
        .route(ROUTES[5].0, get(alerts))
        .route(ROUTES[6].0, get(alert).patch(patch_alert))
        .route(ROUTES[7].0, axum::routing::post(comment))
        .route(ROUTES[8].0, get(top))
        .route(ROUTES[9].0, get(entities))
        .route(ROUTES[10].0, get(entity))
        .route(
            ROUTES[11].0,
            get(settings::notifiers).post(settings::add_notifier),
        )
        .route(
            ROUTES[12].0,
            axum::routing::delete(settings::remove_notifier),
        )
        .route(ROUTES[13].0, axum::routing::post(settings::test_notifier))
        .route(
            ROUTES[14].0,
            get(settings::allowlist)
                .post(settings::add_allowlist)
                .delete(settings::remove_allowlist),
        )
        .route(
            ROUTES[15].0,
            get(settings::watchlist)
                .post(settings::add_watchlist)
                .delete(settings::remove_watchlist),
        )
        .route(
            ROUTES[16].0,
            get(settings::sensitivity)
                .post(settings::set_sensitivity)
                .delete(settings::remove_sensitivity),
        )
        .route(ROUTES[17].0, get(metrics::metrics))
        // Only matched routes need credentials: the dashboard's files are public.
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .route(
            "/api/{*rest}",
            axum::routing::any(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path")
            }),
        )
        .fallback(crate::web::serve)
        .layer(middleware::from_fn_with_state(api.clone(), whole_body))
        .with_state(api)
}

/// Reads a request's body whole, within [`MAX_BODY`] bytes and the body timeout, before any
/// handler sees it: a client trickling its body cannot hold a handler, nor send more than that.
async fn whole_body(
    axum::extract::State(api): axum::extract::State<Api>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    use axum::body::{Body, HttpBody as _};
    let (parts, body) = req.into_parts();
    if body.size_hint().exact() == Some(0) {
        return next
            .run(axum::extract::Request::from_parts(parts, Body::empty()))
            .await;
    }
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a request body is at most {MAX_BODY} bytes"),
        )
        .into_response()
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    match tokio::time::timeout(api.opts.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => too_large(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request's body did not arrive within {} s",
                api.opts.body_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// A route's query parameters; a query that does not decode is a JSON 400 like any other.
pub(crate) struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// A route's one path parameter ({id}, {ip}, {name}); one that does not decode is a JSON 400.
pub(crate) struct Segment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Segment(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// With a Retry-After header (seconds).
    pub(crate) fn retry_after(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the store could not answer; see the control plane's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// RFC 3339, or Unix seconds.
pub(crate) fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    crate::util::time::parse_time(v).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
}
