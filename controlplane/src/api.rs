//! The REST API under `/api/v1/` (documented in controlplane/openapi.yaml): flows, sensors,
//! health. JSON in and out; errors are `{"error": {"code": ..., "message": ...}}` with the
//! matching HTTP status. Queries run on the blocking pool: the store is synchronous.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    model::Source,
    store::{FlowQuery, Store},
};

/// Default and largest page of `/api/v1/flows`.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// A sensor without a heartbeat for this long is `stale`.
pub const STALE_AFTER_NS: i64 = 180_000_000_000;

#[derive(Clone)]
struct Api {
    store: Arc<dyn Store>,
    started: Instant,
}

/// Every path served (openapi.yaml documents exactly these; a test checks it).
pub const ROUTES: [&str; 6] = [
    "/api/v1/health",
    "/api/v1/sensors",
    "/api/v1/flows",
    "/api/v1/coverage",
    "/api/v1/alerts",
    "/api/v1/alerts/{id}",
];

/// The API's routes; anything else under the router answers a JSON 404.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route(ROUTES[0], get(health))
        .route(ROUTES[1], get(sensors))
        .route(ROUTES[2], get(flows))
        .route(ROUTES[3], get(coverage))
        .route(ROUTES[4], get(alerts))
        .route(ROUTES[5], get(alert))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .with_state(Api {
            store,
            started: Instant::now(),
        })
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
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
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

pub(crate) fn rfc3339(ns: i64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(ns.into())
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

fn now_ns() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

async fn health(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.store.clone();
    let counts = blocking(move || store.notification_counts()).await?;
    let mut total = crate::notify::Counts::default();
    for (_, c) in &counts {
        total.pending += c.pending;
        total.delivered += c.delivered;
        total.failed += c.failed;
    }
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": api.started.elapsed().as_secs(),
        "notifications": total,
    })))
}

async fn sensors(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.store.clone();
    let rows = blocking(move || store.sensors()).await?;
    let now = now_ns();
    let sensors: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            let health = if s.revoked {
                "revoked"
            } else {
                match s.last_heartbeat_unix_ns {
                    None => "never_connected",
                    Some(t) if now - t > STALE_AFTER_NS => "stale",
                    Some(_) => "ok",
                }
            };
            let counters: Value = s
                .kernel_counters
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or(Value::Null);
            json!({
                "name": s.name,
                "health": health,
                "created": rfc3339(s.created_unix_ns),
                "revoked": s.revoked,
                "instance_id": s.instance_id,
                "version": s.version,
                "kernel": s.kernel,
                "hostname": s.hostname,
                "first_seen": s.first_seen_unix_ns.map(rfc3339),
                "last_heartbeat": s.last_heartbeat_unix_ns.map(rfc3339),
                "kernel_counters": counters,
            })
        })
        .collect();
    Ok(Json(json!({ "sensors": sensors })))
}

/// RFC 3339, or Unix seconds.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.parse::<i64>() {
        return secs
            .checked_mul(1_000_000_000)
            .ok_or_else(|| ApiError::bad_request(format!("{name}: out of range")));
    }
    OffsetDateTime::parse(v, &Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as i64)
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name}: `{v}` is neither RFC 3339 (2026-11-28T10:00:00Z) nor Unix seconds"
            ))
        })
}

fn flow_query(p: &HashMap<String, String>) -> Result<FlowQuery, ApiError> {
    const KNOWN: [&str; 8] = [
        "ip", "port", "protocol", "since", "until", "source", "limit", "cursor",
    ];
    if let Some(k) = p.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: {})",
            KNOWN.join(", ")
        )));
    }
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        p.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("{name}: `{v}` is not a number")))
            })
            .transpose()
    };
    let limit = num("limit")?.unwrap_or(DEFAULT_LIMIT as u64);
    if limit == 0 || limit > MAX_LIMIT as u64 {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1 to {MAX_LIMIT}"
        )));
    }
    let q = FlowQuery {
        ip: p
            .get("ip")
            .map(|v| {
                v.parse::<IpAddr>()
                    .map_err(|_| ApiError::bad_request(format!("ip: `{v}` is not an address")))
            })
            .transpose()?,
        port: num("port")?
            .map(|v| u16::try_from(v).map_err(|_| ApiError::bad_request("port: 0 to 65535")))
            .transpose()?,
        protocol: num("protocol")?
            .map(|v| u8::try_from(v).map_err(|_| ApiError::bad_request("protocol: 0 to 255")))
            .transpose()?,
        since_ns: p.get("since").map(|v| parse_time("since", v)).transpose()?,
        until_ns: p.get("until").map(|v| parse_time("until", v)).transpose()?,
        source: p
            .get("source")
            .map(|v| match v.as_str() {
                "sensor" => Ok(Source::Sensor),
                "aws" => Ok(Source::Aws),
                "gcp" => Ok(Source::Gcp),
                "azure" => Ok(Source::Azure),
                _ => Err(ApiError::bad_request(format!(
                    "source: `{v}` is not one of sensor, aws, gcp, azure"
                ))),
            })
            .transpose()?,
        before_id: p
            .get("cursor")
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request("cursor: not a cursor from a previous page"))
            })
            .transpose()?,
        limit: limit as usize,
    };
    if let (Some(a), Some(b)) = (q.since_ns, q.until_ns)
        && b <= a
    {
        return Err(ApiError::bad_request("until must be after since"));
    }
    Ok(q)
}

async fn flows(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let q = flow_query(&params)?;
    let store = api.store.clone();
    let limit = q.limit;
    let rows = blocking(move || store.query_flows(&q)).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let flows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("start".into(), rfc3339(r.start_ns));
                m.insert("end".into(), rfc3339(r.end_ns));
            }
            v
        })
        .collect();
    Ok(Json(json!({ "flows": flows, "next_cursor": next })))
}

/// Default window of `/api/v1/coverage`.
pub const COVERAGE_DEFAULT_NS: i64 = 86_400_000_000_000;

async fn coverage(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(k) = params.keys().find(|k| k.as_str() != "since") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: since)"
        )));
    }
    let since = match params.get("since") {
        Some(v) => parse_time("since", v)?,
        None => now_ns() - COVERAGE_DEFAULT_NS,
    };
    let store = api.store.clone();
    let gaps = blocking(move || store.coverage_gaps(since)).await?;
    let gaps: Vec<Value> = gaps
        .into_iter()
        .map(|g| {
            json!({
                "ip": g.ip,
                "first_seen": rfc3339(g.first_seen_ns),
                "last_seen": rfc3339(g.last_seen_ns),
                "flows": g.flows,
                "observers": g.observers,
                "vpcs": g.vpcs,
            })
        })
        .collect();
    Ok(Json(json!({ "since": rfc3339(since), "gaps": gaps })))
}

async fn alerts(
    State(api): State<Api>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    const KNOWN: [&str; 4] = ["type", "status", "source", "limit"];
    if let Some(k) = p.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: {})",
            KNOWN.join(", ")
        )));
    }
    let limit = match p.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad_request(format!("limit: must be 1 to {MAX_LIMIT}")))?,
        None => DEFAULT_LIMIT,
    };
    if let Some(s) = p.get("status")
        && !["open", "snoozed", "closed"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status: `{s}` is not one of open, snoozed, closed"
        )));
    }
    let q = crate::alerts::AlertQuery {
        kind: p.get("type").cloned(),
        status: p.get("status").cloned(),
        source: p.get("source").cloned(),
        limit,
    };
    let store = api.store.clone();
    let rows = blocking(move || store.alerts(&q)).await?;
    let alerts: Vec<Value> = rows.iter().map(crate::notify::alert_json).collect();
    Ok(Json(json!({ "alerts": alerts })))
}

async fn alert(
    State(api): State<Api>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not an alert id")))?;
    let store = api.store.clone();
    match blocking(move || store.alert(id)).await? {
        Some(a) => Ok(Json(crate::notify::alert_json(&a))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {id}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<FlowQuery, String> {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        flow_query(&m).map_err(|e| e.message)
    }

    #[test]
    fn flow_filters_are_parsed_and_checked() {
        let f = q(&[
            ("ip", "10.0.0.1"),
            ("port", "22"),
            ("protocol", "6"),
            ("since", "2026-11-28T10:00:00Z"),
            ("until", "1795863600"),
            ("source", "aws"),
            ("limit", "50"),
            ("cursor", "1234"),
        ])
        .expect("valid");
        assert_eq!(f.ip, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!((f.port, f.protocol, f.limit), (Some(22), Some(6), 50));
        assert_eq!(f.since_ns, Some(1_795_860_000_000_000_000));
        assert_eq!(f.until_ns, Some(1_795_863_600_000_000_000));
        assert_eq!((f.source, f.before_id), (Some(Source::Aws), Some(1234)));
        assert_eq!(q(&[]).expect("defaults").limit, DEFAULT_LIMIT);
        for (bad, msg) in [
            (("ip", "10.0.0.300"), "ip: `10.0.0.300` is not an address"),
            (("port", "70000"), "port: 0 to 65535"),
            (("limit", "0"), "limit: must be 1 to 1000"),
            (("limit", "5000"), "limit: must be 1 to 1000"),
            (
                ("source", "oracle"),
                "source: `oracle` is not one of sensor, aws, gcp, azure",
            ),
            (
                ("since", "yesterday"),
                "since: `yesterday` is neither RFC 3339 (2026-11-28T10:00:00Z) nor Unix seconds",
            ),
            (
                ("ports", "22"),
                "unknown parameter `ports` (known: ip, port, protocol, since, until, source, limit, cursor)",
            ),
        ] {
            assert_eq!(q(&[bad]).err().as_deref(), Some(msg), "{bad:?}");
        }
        assert_eq!(
            q(&[("since", "1795860000"), ("until", "1795860000")])
                .err()
                .as_deref(),
            Some("until must be after since")
        );
    }
}
