//! Settings under `/api/v1/`: notifiers, the allowlist and the watchlist. Reading needs any
//! role; changes need an admin (checked by the authentication layer). Secrets (webhook secrets,
//! Slack URLs' paths, Webex tokens) are never returned.

use std::collections::HashMap;

use axum::{Extension, Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::{Api, ApiError, blocking, now_ns};
use crate::{
    auth::Principal,
    model::Severity,
    notify::{self, Notifier, Target},
    store::Counts,
};

type Body = Result<Json<Value>, axum::extract::rejection::JsonRejection>;

fn body(b: Body) -> Result<Value, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn bad(e: anyhow::Error) -> ApiError {
    ApiError::bad_request(format!("{e:#}"))
}

fn notifier_json(n: &Notifier, c: &Counts) -> Value {
    json!({
        "name": n.name,
        "kind": n.target.kind(),
        "destination": n.target.describe(),
        "min_severity": n.min_severity.as_str(),
        "delivered": c.delivered,
        "pending": c.pending,
        "failed": c.failed,
    })
}

pub(super) async fn notifiers(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.stores.state.clone();
    let (list, counts) = blocking(move || {
        Ok((
            notify::notifiers(store.as_ref())?,
            store.notification_counts()?,
        ))
    })
    .await?;
    let counts: HashMap<_, _> = counts.into_iter().collect();
    let v: Vec<Value> = list
        .iter()
        .map(|n| notifier_json(n, &counts.get(&n.name).cloned().unwrap_or_default()))
        .collect();
    Ok(Json(json!({ "notifiers": v })))
}

pub(super) async fn add_notifier(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    b: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    let name = b["name"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("name: required"))?
        .to_string();
    notify::check_name(&name).map_err(bad)?;
    let min_severity = match b.get("min_severity") {
        None => Severity::Low,
        Some(v) => v.as_str().and_then(Severity::parse).ok_or_else(|| {
            ApiError::bad_request("min_severity: one of low, medium, high, critical")
        })?,
    };
    let target: Target = serde_json::from_value(b["target"].clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "target: {e} (kinds: webhook {{url, secret?}}, slack {{url}}, webex {{token, room_id, \
             api_url?}}, syslog {{address, transport: udp|tcp, facility: 0-23, cef?}})"
        ))
    })?;
    target.validate().map_err(bad)?;
    let n = Notifier {
        name,
        target,
        min_severity,
    };
    let store = api.stores.state.clone();
    let n2 = n.clone();
    let r = blocking(move || Ok(notify::add(store.as_ref(), &n2, now_ns()))).await?;
    r.map_err(bad)?;
    tracing::info!(
        notifier = n.name,
        by = who.name,
        kind = n.target.kind(),
        "notifier added"
    );
    Ok((
        StatusCode::CREATED,
        Json(notifier_json(&n, &Counts::default())),
    ))
}

pub(super) async fn remove_notifier(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    super::Segment(name): super::Segment,
) -> Result<Json<Value>, ApiError> {
    let store = api.stores.state.clone();
    let n = name.clone();
    match blocking(move || store.remove_notifier(&n)).await? {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no notifier `{name}`"),
        )),
        Some(dropped) => {
            tracing::info!(notifier = name, by = who.name, dropped, "notifier removed");
            Ok(Json(
                json!({ "removed": name, "dropped_messages": dropped }),
            ))
        }
    }
}

/// Sends a sample alert now; 502 with the receiver's answer if it fails.
pub(super) async fn test_notifier(
    State(api): State<Api>,
    super::Segment(name): super::Segment,
) -> Result<Json<Value>, ApiError> {
    let store = api.stores.state.clone();
    let n = blocking(move || notify::notifiers(store.as_ref()))
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no notifier `{name}`"),
            )
        })?;
    api.opts
        .sender
        .send(
            &n.target,
            &notify::sample_alert(now_ns()),
            crate::model::Event::Test,
            0,
        )
        .await
        .map_err(|f| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "delivery_failed",
                format!("{}: {}", n.target.describe(), f.message),
            )
        })?;
    Ok(Json(
        json!({ "sent": true, "destination": n.target.describe() }),
    ))
}

fn entry(b: &Value, key: &str) -> Result<String, ApiError> {
    let t = b[key]
        .as_str()
        .ok_or_else(|| ApiError::bad_request(format!("{key}: required (an address or CIDR)")))?;
    Ok(crate::util::net::parse_network(t).map_err(bad)?.to_string())
}

pub(super) async fn allowlist(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.stores.state.clone();
    let rows = blocking(move || store.allowlist()).await?;
    let v: Vec<Value> = rows
        .into_iter()
        .map(|(cidr, t, label)| json!({"entry": cidr, "type": t, "label": label}))
        .collect();
    Ok(Json(json!({ "allowlist": v })))
}

pub(super) async fn add_allowlist(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    b: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    let cidr = entry(&b, "entry")?;
    let t = b["type"].as_str().unwrap_or("*").to_string();
    crate::model::check_alert_type(&t).map_err(|e| ApiError::bad_request(format!("type: {e}")))?;
    let label = b["label"].as_str().unwrap_or("").to_string();
    let store = api.stores.state.clone();
    let (c2, t2, l2) = (cidr.clone(), t.clone(), label.clone());
    let new = blocking(move || store.add_allowlist(&c2, &t2, &l2, now_ns())).await?;
    tracing::info!(
        entry = cidr,
        alert_type = t,
        by = who.name,
        "allowlist entry added"
    );
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({"entry": cidr, "type": t, "label": label, "new": new})),
    ))
}

pub(super) async fn remove_allowlist(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    super::Params(q): super::Params,
) -> Result<Json<Value>, ApiError> {
    let cidr = entry(&json!(q), "entry")?;
    let t = q.get("type").cloned().unwrap_or_else(|| "*".into());
    let store = api.stores.state.clone();
    let (c2, t2) = (cidr.clone(), t.clone());
    if !blocking(move || store.remove_allowlist(&c2, &t2)).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{cidr} is not on the allowlist for {t}"),
        ));
    }
    tracing::info!(
        entry = cidr,
        alert_type = t,
        by = who.name,
        "allowlist entry removed"
    );
    Ok(Json(json!({"removed": cidr, "type": t})))
}

pub(super) async fn watchlist(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.stores.state.clone();
    let rows = blocking(move || store.watchlist()).await?;
    let v: Vec<Value> = rows
        .into_iter()
        .map(|(cidr, label)| json!({"entry": cidr, "label": label}))
        .collect();
    Ok(Json(json!({ "watchlist": v })))
}

pub(super) async fn add_watchlist(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    b: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    let cidr = entry(&b, "entry")?;
    let label = b["label"].as_str().unwrap_or("").to_string();
    let store = api.stores.state.clone();
    let (c2, l2) = (cidr.clone(), label.clone());
    let new = blocking(move || store.add_watchlist(&[(c2, l2)], now_ns())).await? == 1;
    tracing::info!(entry = cidr, by = who.name, "watchlist entry added");
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({"entry": cidr, "label": label, "new": new})),
    ))
}

pub(super) async fn remove_watchlist(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    super::Params(q): super::Params,
) -> Result<Json<Value>, ApiError> {
    let cidr = entry(&json!(q), "entry")?;
    let store = api.stores.state.clone();
    let c2 = cidr.clone();
    if !blocking(move || store.remove_watchlist(&c2)).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{cidr} is not on the watchlist"),
        ));
    }
    tracing::info!(entry = cidr, by = who.name, "watchlist entry removed");
    Ok(Json(json!({"removed": cidr})))
}

pub(super) async fn sensitivity(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.stores.state.clone();
    let rows = blocking(move || store.sensitivities()).await?;
    let v: Vec<Value> = rows
        .into_iter()
        .map(|(net, t, level)| json!({"network": net, "type": t, "level": level}))
        .collect();
    Ok(Json(json!({ "sensitivity": v })))
}

fn scope(v: Option<&str>, what: &str) -> Result<String, ApiError> {
    crate::model::sensitivity_scope(v.unwrap_or("*"))
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

pub(super) async fn set_sensitivity(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    b: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b = body(b)?;
    let net = scope(b["network"].as_str(), "network")?;
    let t = b["type"].as_str().unwrap_or("*").to_string();
    crate::model::check_alert_type(&t).map_err(|e| ApiError::bad_request(format!("type: {e}")))?;
    let level = b["level"]
        .as_str()
        .and_then(crate::model::Sensitivity::parse)
        .ok_or_else(|| ApiError::bad_request("level: one of off, low, medium, high"))?;
    let store = api.stores.state.clone();
    let (n2, t2) = (net.clone(), t.clone());
    let new = blocking(move || store.set_sensitivity(&n2, &t2, level.as_str(), now_ns())).await?;
    tracing::info!(
        network = net,
        alert_type = t,
        level = level.as_str(),
        by = who.name,
        "sensitivity set"
    );
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({"network": net, "type": t, "level": level.as_str(), "new": new})),
    ))
}

pub(super) async fn remove_sensitivity(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    super::Params(q): super::Params,
) -> Result<Json<Value>, ApiError> {
    let net = scope(q.get("network").map(String::as_str), "network")?;
    let t = q.get("type").cloned().unwrap_or_else(|| "*".into());
    let store = api.stores.state.clone();
    let (n2, t2) = (net.clone(), t.clone());
    if !blocking(move || store.remove_sensitivity(&n2, &t2)).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no sensitivity setting for {net} {t}"),
        ));
    }
    tracing::info!(
        network = net,
        alert_type = t,
        by = who.name,
        "sensitivity removed"
    );
    Ok(Json(json!({"removed": net, "type": t})))
}
