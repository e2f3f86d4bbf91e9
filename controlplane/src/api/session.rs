//! Who is calling (API token or session cookie), what they may do, and the login itself.

use std::time::Instant;

use axum::{
    Extension, Json,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{Api, ApiError, blocking, now_ns, public};
/// Finds who is calling (API token or session cookie) and checks that they may: viewers only
/// read, and a session's state-changing request carries its CSRF token.
pub(super) async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
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
        let (store, h) = (api.stores.clone(), token_hash(t));
        return Ok(blocking(move || store.state.token(&h, now))
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
    let (store, h) = (api.stores.clone(), token_hash(sid));
    Ok(blocking(move || store.state.session(&h, now))
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

pub(super) async fn login(
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
    let (store, u, pw) = (api.stores.clone(), user.clone(), password.to_string());
    let ok = blocking(move || {
        Ok(match store.state.user_credentials(&u)? {
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
        api.stores.clone(),
        token_hash(&sid),
        user.clone(),
        csrf.clone(),
    );
    blocking(move || {
        store
            .state
            .create_session(&h, &u, &c, now, now + SESSION_NS)
    })
    .await?;
    let (store, u) = (api.stores.clone(), user.clone());
    let role = blocking(move || store.state.user_credentials(&u))
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

pub(super) async fn logout(
    State(api): State<Api>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::auth::{SESSION_COOKIE, token_hash};
    let Some(sid) = session_cookie(&headers) else {
        return Err(ApiError::bad_request(
            "no session to end (API tokens are revoked with `picket-controlplane tokens revoke`)",
        ));
    };
    let (store, h) = (api.stores.clone(), token_hash(sid));
    blocking(move || store.state.delete_session(&h)).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
    )
        .into_response())
}

pub(super) async fn whoami(Extension(p): Extension<crate::auth::Principal>) -> Json<Value> {
    Json(json!({
        "user": p.name,
        "role": p.role,
        "csrf_token": p.csrf,
    }))
}
