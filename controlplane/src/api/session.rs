//! Who is calling (API token or session cookie), what they may do; logging out.

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
