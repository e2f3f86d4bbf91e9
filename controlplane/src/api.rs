//! The REST API under `/api/v1/` (documented in controlplane/openapi.yaml): flows, sensors,
//! health. JSON in and out; errors are `{"error": {"code": ..., "message": ...}}` with the
//! matching HTTP status. Queries run on the blocking pool: the store is synchronous.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Instant};

use axum::{
    Extension, Json, Router,
    extract::{Query, Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

mod settings;

pub(crate) use crate::util::time::{now_ns, rfc3339};
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
    opts: Options,
    /// Failed logins per user name: (count, last failure).
    failures: Arc<std::sync::Mutex<HashMap<String, (u32, Instant)>>>,
}

/// How the API is served.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Session cookies only over HTTPS (`Secure`): when the dashboard is reached by https://.
    pub secure_cookies: bool,
}

/// Every path served, with its methods (openapi.yaml documents exactly these; a test checks
/// it).
pub const ROUTES: [(&str, &[&str]); 17] = [
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
];

/// What answers without credentials.
fn public(method: &Method, path: &str) -> bool {
    (method == Method::GET && path == "/api/v1/health")
        || (method == Method::POST && path == "/api/v1/session")
}

/// The API's routes; anything else under the router answers a JSON 404.
pub fn router(store: Arc<dyn Store>, opts: Options) -> Router {
    let api = Api {
        store,
        started: Instant::now(),
        opts,
        failures: Default::default(),
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
        // Only matched routes need credentials: the dashboard's files are public.
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .route(
            "/api/{*rest}",
            axum::routing::any(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such path")
            }),
        )
        .fallback(crate::web::serve)
        .with_state(api)
}

/// Finds who is calling (API token or session cookie) and checks that they may: viewers only
/// read, and a session's state-changing request carries its CSRF token.
async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    if public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let principal = match principal(&api, req.headers()).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "log in (POST /api/v1/session) or send an API token as `Authorization: Bearer`",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Logging out is every user's right.
    let logout = req.method() == Method::DELETE && req.uri().path() == "/api/v1/session";
    if !reads && !logout && principal.role < crate::model::Role::Admin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "`{}` is a viewer: only admins change things",
                principal.name
            ),
        )
        .into_response();
    }
    if !reads && let Some(csrf) = &principal.csrf {
        let sent = req
            .headers()
            .get(crate::auth::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if sent != Some(csrf.as_str()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "a session's changes need its CSRF token in X-CSRF-Token (from GET /api/v1/session)",
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The session cookie's value, from any of the Cookie headers.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| crate::auth::cookie(c, crate::auth::SESSION_COOKIE))
}

async fn principal(
    api: &Api,
    headers: &HeaderMap,
) -> Result<Option<crate::auth::Principal>, ApiError> {
    use crate::auth::{Principal, token_hash, token_well_formed};
    let now = now_ns();
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let Some(t) = auth.strip_prefix("Bearer ").map(str::trim) else {
            return Ok(None);
        };
        if !token_well_formed(t) {
            return Ok(None);
        }
        let (store, h) = (api.store.clone(), token_hash(t));
        return Ok(blocking(move || store.token(&h, now))
            .await?
            .map(|(name, role)| Principal {
                name: format!("token:{name}"),
                role,
                csrf: None,
            }));
    }
    let Some(sid) = session_cookie(headers) else {
        return Ok(None);
    };
    let (store, h) = (api.store.clone(), token_hash(sid));
    Ok(blocking(move || store.session(&h, now))
        .await?
        .map(|s| Principal {
            name: s.user,
            role: s.role,
            csrf: Some(s.csrf),
        }))
}

/// Consecutive failed logins of one user name after which logins wait.
pub const LOGIN_FAILURES: u32 = 10;
pub const LOGIN_LOCKOUT: std::time::Duration = std::time::Duration::from_secs(300);

async fn login(
    State(api): State<Api>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    use crate::auth::{SESSION_COOKIE, SESSION_NS, new_secret, token_hash, verify_password};
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (Some(user), Some(password)) = (body["username"].as_str(), body["password"].as_str())
    else {
        return Err(ApiError::bad_request(
            "send {\"username\": ..., \"password\": ...}",
        ));
    };
    let user = user.to_string();
    if let Some((n, last)) = api.failures.lock().map_or(None, |f| f.get(&user).copied())
        && n >= LOGIN_FAILURES
        && last.elapsed() < LOGIN_LOCKOUT
    {
        let wait = (LOGIN_LOCKOUT - last.elapsed()).as_secs() + 1;
        tracing::warn!(user, "login refused: too many failed attempts");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed logins for `{user}`; try again in {wait} s"),
        ));
    }
    let (store, u, pw) = (api.store.clone(), user.clone(), password.to_string());
    let ok = blocking(move || {
        Ok(match store.user_credentials(&u)? {
            Some((hash, _)) => verify_password(&pw, &hash),
            None => {
                // As slow as a real check, so timing does not tell which names exist.
                let _ = verify_password(&pw, DUMMY_HASH);
                false
            }
        })
    })
    .await?;
    if !ok {
        if let Ok(mut f) = api.failures.lock() {
            let e = f.entry(user.clone()).or_insert((0, Instant::now()));
            *e = (e.0 + 1, Instant::now());
        }
        tracing::warn!(user, "failed login");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user name or password",
        ));
    }
    if let Ok(mut f) = api.failures.lock() {
        f.remove(&user);
    }
    let (sid, csrf) = (
        new_secret().map_err(ApiError::internal)?,
        new_secret().map_err(ApiError::internal)?,
    );
    let now = now_ns();
    let (store, h, u, c) = (
        api.store.clone(),
        token_hash(&sid),
        user.clone(),
        csrf.clone(),
    );
    blocking(move || store.create_session(&h, &u, &c, now, now + SESSION_NS)).await?;
    let (store, u) = (api.store.clone(), user.clone());
    let role = blocking(move || store.user_credentials(&u))
        .await?
        .map(|(_, r)| r);
    tracing::info!(user, "login");
    let cookie = format!(
        "{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_NS / 1_000_000_000,
        if api.opts.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "user": user, "role": role, "csrf_token": csrf })),
    )
        .into_response())
}

/// An argon2 hash of a random password, checked against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0ZrX2MP1VeSUIeW4w1eC1xV3VSYmYNAuNdNpQ6WAL5A";

async fn logout(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    use crate::auth::{SESSION_COOKIE, token_hash};
    let Some(sid) = session_cookie(&headers) else {
        return Err(ApiError::bad_request(
            "no session to end (API tokens are revoked with `picket-controlplane tokens revoke`)",
        ));
    };
    let (store, h) = (api.store.clone(), token_hash(sid));
    blocking(move || store.delete_session(&h)).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
    )
        .into_response())
}

async fn whoami(Extension(p): Extension<crate::auth::Principal>) -> Json<Value> {
    Json(json!({
        "user": p.name,
        "role": p.role,
        "csrf_token": p.csrf,
    }))
}

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
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
        "https_handshakes_failed": crate::https::FAILED_HANDSHAKES
            .load(std::sync::atomic::Ordering::Relaxed),
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
            let parse = |c: &Option<String>| -> Value {
                c.as_deref()
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or(Value::Null)
            };
            let counters = parse(&s.kernel_counters);
            let host = parse(&s.host);
            let interfaces: Vec<Value> = host["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    json!({
                        "name": i["name"],
                        "addresses": i["addresses"],
                        "xdp_mode": i["xdp_mode"],
                        "tc_mode": i["tc_mode"],
                    })
                })
                .collect();
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
                "agent_counters": parse(&s.agent_counters),
                "interfaces": interfaces,
                "k8s_node": host["k8s_node"],
            })
        })
        .collect();
    Ok(Json(json!({ "sensors": sensors })))
}

/// RFC 3339, or Unix seconds.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    crate::util::time::parse_time(v).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
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

/// Default window of `/api/v1/top`.
pub const TOP_DEFAULT_NS: i64 = 3_600_000_000_000;

async fn top(
    State(api): State<Api>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    use crate::store::{TopBy, TopGroup, TopQuery};
    const KNOWN: [&str; 6] = ["by", "group", "since", "until", "source", "limit"];
    if let Some(k) = p.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: {})",
            KNOWN.join(", ")
        )));
    }
    let by = match p.get("by").map_or("bytes", String::as_str) {
        "bytes" => TopBy::Bytes,
        "packets" => TopBy::Packets,
        "flows" => TopBy::Flows,
        v => {
            return Err(ApiError::bad_request(format!(
                "by: `{v}` is not one of bytes, packets, flows"
            )));
        }
    };
    let group = match p.get("group").map_or("src_ip", String::as_str) {
        "src_ip" => TopGroup::SrcIp,
        "dst_ip" => TopGroup::DstIp,
        "pair" => TopGroup::Pair,
        "dst_port" => TopGroup::DstPort,
        v => {
            return Err(ApiError::bad_request(format!(
                "group: `{v}` is not one of src_ip, dst_ip, pair, dst_port"
            )));
        }
    };
    let limit = match p.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::bad_request("limit: must be 1 to 100"))?,
        None => 10,
    };
    let until = p.get("until").map(|v| parse_time("until", v)).transpose()?;
    let since = match p.get("since") {
        Some(v) => parse_time("since", v)?,
        None => until.unwrap_or_else(now_ns) - TOP_DEFAULT_NS,
    };
    let source = match p.get("source") {
        Some(v) => Some(Source::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "source: `{v}` is not one of sensor, aws, gcp, azure"
            ))
        })?),
        None => None,
    };
    let q = TopQuery {
        by,
        group,
        since_ns: since,
        until_ns: until,
        source,
        limit,
    };
    let store = api.store.clone();
    let rows = blocking(move || store.top(&q)).await?;
    Ok(Json(json!({
        "since": rfc3339(since),
        "until": until.map(rfc3339),
        "top": rows,
    })))
}

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
        None => until - ENTITIES_DEFAULT_NS,
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

async fn entities(
    State(api): State<Api>,
    Query(p): Query<HashMap<String, String>>,
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
    let store = api.store.clone();
    let (conv, ctx) = blocking(move || {
        Ok((
            store.conversations(since, until, None)?,
            store.entity_context()?,
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

async fn entity(
    State(api): State<Api>,
    axum::extract::Path(ip): axum::extract::Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{ip}` is not an address")))?;
    let (since, until) = entity_window(&p, &["since", "until"])?;
    let store = api.store.clone();
    let (conv, hourly, ctx) = blocking(move || {
        Ok((
            store.conversations(since, until, Some(addr))?,
            store.hourly(addr, since, until)?,
            store.entity_context()?,
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
    let store = api.store.clone();
    let rows = blocking(move || store.alerts(&q)).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|a| format!("{}.{}", a.last_seen, a.id)))
        .flatten();
    let alerts: Vec<Value> = rows.iter().map(crate::notify::alert_json).collect();
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
    let mut v = crate::notify::alert_json(a);
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

async fn alert(
    State(api): State<Api>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    let store = api.store.clone();
    match blocking(move || Ok((store.alert(id)?, store.alert_history(id)?))).await? {
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
    let store = api.store.clone();
    let now = now_ns();
    // An assignee must be a user of this control plane.
    let assignee = changes.iter().find_map(|c| match c {
        crate::model::Change::Assign(Some(u)) => Some(u.clone()),
        _ => None,
    });
    let r = blocking(move || {
        if let Some(u) = &assignee
            && store.user_credentials(u)?.is_none()
        {
            return Ok(Err(ApiError::bad_request(format!(
                "assignee: there is no user `{u}`"
            ))));
        }
        let Some(a) = store.change_alert(id, &changes, &actor, now)? else {
            return Ok(Err(no_alert(id)));
        };
        Ok(Ok((a, store.alert_history(id)?)))
    })
    .await??;
    tracing::info!(alert = id, "alert triaged");
    Ok(Json(alert_detail(&r.0, &r.1)))
}

async fn patch_alert(
    State(api): State<Api>,
    Extension(who): Extension<crate::auth::Principal>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = alert_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let changes = triage_changes(&body, now_ns())?;
    change(&api, id, changes, who.name).await
}

async fn comment(
    State(api): State<Api>,
    Extension(who): Extension<crate::auth::Principal>,
    axum::extract::Path(id): axum::extract::Path<String>,
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
