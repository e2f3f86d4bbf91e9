//! The entity views: the organisation's own addresses, with their roles.

use std::net::IpAddr;

use axum::http::StatusCode;

use std::collections::HashMap;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{Api, ApiError, DEFAULT_LIMIT, MAX_LIMIT, blocking, now_ns, parse_time, rfc3339};
/// Default window of the entity views.
pub const ENTITIES_DEFAULT_NS: i64 = 7 * 86_400_000_000_000;

/// `since` and `until` of an entity view (default: the last 7 days).
fn entity_window(p: &HashMap<String, String>, known: &[&str]) -> Result<(i64, i64), ApiError> {
    if let Some(k) = p.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: {})",
            known.join(", ")
        )));
    }
    let until = match p.get("until") {
        Some(v) => parse_time("until", v)?,
        None => now_ns() + 3_600_000_000_000,
    };
    let since = match p.get("since") {
        Some(v) => parse_time("since", v)?,
        None => until.saturating_sub(ENTITIES_DEFAULT_NS),
    };
    if until <= since {
        return Err(ApiError::bad_request("until must be after since"));
    }
    Ok((since, until))
}

fn entity_json(e: &crate::entities::Entity) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("first_seen_ns");
        m.remove("last_seen_ns");
        m.insert("first_seen".into(), rfc3339(e.first_seen_ns));
        m.insert("last_seen".into(), rfc3339(e.last_seen_ns));
    }
    v
}

pub(super) async fn entities(
    State(api): State<Api>,
    super::Params(p): super::Params,
) -> Result<Json<Value>, ApiError> {
    let (since, until) = entity_window(&p, &["since", "until", "role", "limit"])?;
    let limit = match p.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad_request(format!("limit: must be 1 to {MAX_LIMIT}")))?,
        None => DEFAULT_LIMIT,
    };
    let store = api.stores.clone();
    let (conv, ctx) = blocking(move || {
        Ok((
            store.flows.conversations(since, until, None)?,
            store.state.entity_context()?,
        ))
    })
    .await?;
    let mut list = crate::entities::list(&conv, &ctx);
    let total = list.len();
    if let Some(r) = p.get("role") {
        list.retain(|e| e.role == r.as_str());
    }
    list.truncate(limit);
    Ok(Json(json!({
        "since": rfc3339(since),
        "until": rfc3339(until),
        "total": total,
        "entities": list.iter().map(entity_json).collect::<Vec<_>>(),
    })))
}

pub(super) async fn entity(
    State(api): State<Api>,
    super::Segment(ip): super::Segment,
    super::Params(p): super::Params,
) -> Result<Json<Value>, ApiError> {
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{ip}` is not an address")))?;
    let (since, until) = entity_window(&p, &["since", "until"])?;
    let store = api.stores.clone();
    let (conv, hourly, ctx) = blocking(move || {
        Ok((
            store.flows.conversations(since, until, Some(addr))?,
            store.flows.hourly(addr, since, until)?,
            store.state.entity_context()?,
        ))
    })
    .await?;
    let Some(d) = crate::entities::detail(addr, &conv, &hourly, &ctx) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            if crate::util::net::internal(&addr) {
                format!("{addr} has no flows in this time range")
            } else {
                format!("{addr} is not an internal address (RFC 1918, CGNAT, ULA): not an entity")
            },
        ));
    };
    let mut v = entity_json(&d.entity);
    v["roles"] = serde_json::to_value(&d.roles).unwrap_or(Value::Null);
    v["uses"] = serde_json::to_value(&d.uses).unwrap_or(Value::Null);
    v["peers_top"] = serde_json::to_value(&d.peers_top).unwrap_or(Value::Null);
    v["countries"] = serde_json::to_value(&d.countries).unwrap_or(Value::Null);
    v["hour_of_week"] = serde_json::to_value(&d.hour_of_week).unwrap_or(Value::Null);
    v["since"] = rfc3339(since);
    v["until"] = rfc3339(until);
    Ok(Json(v))
}
