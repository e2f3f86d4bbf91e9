//! Alerts: lists, one with its timeline, and triage (status, snooze, assignee, tags, comments).

use axum::{Extension, http::StatusCode};

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{Api, ApiError, DEFAULT_LIMIT, MAX_LIMIT, blocking, now_ns, parse_time, rfc3339};
pub(super) async fn alerts(
    State(api): State<Api>,
    super::Params(p): super::Params,
) -> Result<Json<Value>, ApiError> {
    const KNOWN: [&str; 8] = [
        "type", "status", "source", "severity", "assignee", "since", "limit", "cursor",
    ];
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
    if let Some(s) = p.get("severity")
        && crate::model::Severity::parse(s).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "severity: `{s}` is not one of low, medium, high, critical"
        )));
    }
    let after = p
        .get("cursor")
        .map(|c| {
            c.split_once('.')
                .and_then(|(t, id)| Some((t.parse().ok()?, id.parse().ok()?)))
                .ok_or_else(|| ApiError::bad_request("cursor: not a cursor from a previous page"))
        })
        .transpose()?;
    let q = crate::model::AlertQuery {
        kind: p.get("type").cloned(),
        status: p.get("status").cloned(),
        source: p.get("source").cloned(),
        severity: p.get("severity").cloned(),
        assignee: p.get("assignee").cloned(),
        since_ns: p.get("since").map(|v| parse_time("since", v)).transpose()?,
        after,
        limit,
    };
    let store = api.stores.clone();
    let rows = blocking(move || store.state.alerts(&q)).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|a| format!("{}.{}", a.last_seen, a.id)))
        .flatten();
    let alerts: Vec<Value> = rows.iter().map(crate::model::Alert::to_json).collect();
    Ok(Json(json!({ "alerts": alerts, "next_cursor": next })))
}

fn alert_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not an alert id")))
}

fn no_alert(id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no alert {id}"))
}

/// An alert with its triage timeline.
fn alert_detail(a: &crate::model::Alert, history: &[crate::model::HistoryEntry]) -> Value {
    let mut v = a.to_json();
    v["history"] = history
        .iter()
        .map(|h| {
            json!({
                "time": rfc3339(h.time),
                "actor": h.actor,
                "action": h.action,
                "detail": h.detail,
            })
        })
        .collect();
    v
}

pub(super) async fn alert(
    State(api): State<Api>,
    super::Segment(id): super::Segment,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    let store = api.stores.clone();
    match blocking(move || Ok((store.state.alert(id)?, store.state.alert_history(id)?))).await? {
        (Some(a), h) => Ok(Json(alert_detail(&a, &h))),
        (None, _) => Err(no_alert(id)),
    }
}

/// The most tags an alert keeps, and the longest comment.
pub const MAX_TAGS: usize = 20;
pub const MAX_COMMENT: usize = 4000;

/// The changes a PATCH body asks for, checked.
fn triage_changes(body: &Value, now: i64) -> Result<Vec<crate::model::Change>, ApiError> {
    use crate::model::Change;
    const KNOWN: [&str; 5] = ["status", "snooze_until", "assignee", "tags", "comment"];
    let Some(m) = body.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(k) = m.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field `{k}` (known: {})",
            KNOWN.join(", ")
        )));
    }
    let mut out = Vec::new();
    match (m.get("status").map(|v| v.as_str()), m.get("snooze_until")) {
        (Some(Some("snoozed")), Some(Value::String(t))) | (None, Some(Value::String(t))) => {
            let until = parse_time("snooze_until", t)?;
            if until <= now {
                return Err(ApiError::bad_request("snooze_until must be in the future"));
            }
            out.push(Change::Snooze(until));
        }
        (Some(Some("snoozed")), _) => {
            return Err(ApiError::bad_request(
                "status snoozed needs snooze_until (RFC 3339 or Unix seconds)",
            ));
        }
        (Some(Some(s @ ("open" | "closed"))), None) => out.push(Change::Status(s.to_string())),
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "status: must be one of open, closed, snoozed",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "snooze_until: a time (RFC 3339 or Unix seconds), with status snoozed or alone",
            ));
        }
        (None, None) => {}
    }
    match m.get("assignee") {
        None => {}
        Some(Value::Null) => out.push(Change::Assign(None)),
        Some(Value::String(u)) => {
            crate::auth::check_name("user", u).map_err(|e| ApiError::bad_request(e.to_string()))?;
            out.push(Change::Assign(Some(u.clone())));
        }
        Some(_) => return Err(ApiError::bad_request("assignee: a user name or null")),
    }
    if let Some(t) = m.get("tags") {
        let tags = t
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| ApiError::bad_request("tags: a list of strings"))?;
        if tags.len() > MAX_TAGS {
            return Err(ApiError::bad_request(format!("tags: at most {MAX_TAGS}")));
        }
        if let Some(bad) = tags.iter().find(|t| {
            t.is_empty()
                || t.len() > 32
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
        }) {
            return Err(ApiError::bad_request(format!(
                "tags: `{bad}` must be 1-32 letters, digits, `-`, `_`, `:` or `.`"
            )));
        }
        out.push(Change::Tags(tags));
    }
    if let Some(c) = m.get("comment") {
        out.push(Change::Comment(comment_text(c)?));
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(format!(
            "nothing to change (fields: {})",
            KNOWN.join(", ")
        )));
    }
    Ok(out)
}

fn comment_text(v: &Value) -> Result<String, ApiError> {
    match v.as_str().map(str::trim) {
        Some(t) if !t.is_empty() && t.chars().count() <= MAX_COMMENT => Ok(t.to_string()),
        _ => Err(ApiError::bad_request(format!(
            "comment: text of 1 to {MAX_COMMENT} characters"
        ))),
    }
}

async fn change(
    api: &Api,
    id: i64,
    changes: Vec<crate::model::Change>,
    actor: String,
) -> Result<Json<Value>, ApiError> {
    let store = api.stores.clone();
    let now = now_ns();
    // An assignee must be a user of this control plane.
    let assignee = changes.iter().find_map(|c| match c {
        crate::model::Change::Assign(Some(u)) => Some(u.clone()),
        _ => None,
    });
    let r = blocking(move || {
        if let Some(u) = &assignee
            && store.state.user_credentials(u)?.is_none()
        {
            return Ok(Err(ApiError::bad_request(format!(
                "assignee: there is no user `{u}`"
            ))));
        }
        let Some(a) = store.state.change_alert(id, &changes, &actor, now)? else {
            return Ok(Err(no_alert(id)));
        };
        Ok(Ok((a, store.state.alert_history(id)?)))
    })
    .await??;
    tracing::info!(alert = id, "alert triaged");
    Ok(Json(alert_detail(&r.0, &r.1)))
}

pub(super) async fn patch_alert(
    State(api): State<Api>,
    Extension(who): Extension<crate::auth::Principal>,
    super::Segment(id): super::Segment,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let changes = triage_changes(&body, now_ns())?;
    change(&api, id, changes, who.name).await
}

pub(super) async fn comment(
    State(api): State<Api>,
    Extension(who): Extension<crate::auth::Principal>,
    super::Segment(id): super::Segment,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = alert_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(k) = body
        .as_object()
        .and_then(|m| m.keys().find(|k| k.as_str() != "text"))
    {
        return Err(ApiError::bad_request(format!(
            "unknown field `{k}` (known: text)"
        )));
    }
    let text = comment_text(&body["text"])?;
    let r = change(
        &api,
        id,
        vec![crate::model::Change::Comment(text)],
        who.name,
    )
    .await?;
    Ok((StatusCode::CREATED, r))
}
