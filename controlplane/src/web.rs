//! The web dashboard: files built from controlplane/web by build.rs and embedded here, served
//! at `/` by `serve` next to the REST API. The pages call `/api/v1/` with the session cookie.

use axum::{
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// Scripts and styles only from here; no framing (clickjacking); no referrer leaves the page.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                       img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'self'";

pub fn asset(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS
        .iter()
        .find(|(p, ..)| *p == path)
        .map(|(_, body, ctype)| (*body, *ctype))
}

/// Serves a dashboard file, or 404.
pub async fn serve(uri: Uri) -> Response {
    let path = uri.path();
    let Some((body, ctype)) = asset(path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    // Built names carry a content hash: they never change. index.html must be fetched again
    // to see a new build.
    let cache = if path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_dashboard_is_embedded() {
        let (html, ctype) = asset("/").expect("index.html");
        assert_eq!(ctype, "text/html; charset=utf-8");
        let html = std::str::from_utf8(html).expect("utf8");
        assert!(html.contains("<title>Picket</title>"), "{html}");
        // Every script and stylesheet the page loads is embedded too.
        for part in html.split("=\"/assets/").skip(1) {
            let name = part.split('"').next().expect("name");
            assert!(
                asset(&format!("/assets/{name}")).is_some(),
                "/assets/{name} is not embedded"
            );
        }
        assert!(asset("/nothing").is_none());
    }
}
