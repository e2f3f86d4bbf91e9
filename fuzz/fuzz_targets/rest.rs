//! The REST API's query strings and paths, arbitrary, through the real router with an admin
//! token on a store with flows and an alert: every answer is JSON with a status below 500.
#![no_main]

use std::sync::OnceLock;

use controlplane::{
    api,
    auth::{new_token, token_hash},
    model::Role,
    store::Stores,
};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct World {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("picket-fuzz-rest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stores = Stores::embedded(&dir).expect("store");
        // Flows and alerts to query: the sample AWS log (a scan among them).
        let mut importer =
            controlplane::pipeline::import::Importer::new(stores.clone(), &Default::default(), 0.5)
                .expect("importer");
        importer
            .import(
                controlplane::model::Source::Aws,
                std::io::Cursor::new(include_str!("../../deploy/samples/aws-vpc-flow-logs.log")),
                "sample",
                None,
                &mut Default::default(),
            )
            .expect("sample imported");
        let token = new_token().expect("token");
        stores
            .state
            .add_token("fuzz", &token_hash(&token), Role::Admin, 1)
            .expect("token");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sender = rt.block_on(async {
            controlplane::notify::Sender::new(None, Default::default()).expect("sender")
        });
        let router = api::router(
            stores,
            api::Options {
                secure_cookies: false,
                body_timeout: std::time::Duration::from_secs(5),
                sender,
                replica: "fuzz".into(),
                bus: None,
            },
        );
        World { rt, router, token }
    })
}

const PATHS: [&str; 9] = [
    "/api/v1/flows",
    "/api/v1/top",
    "/api/v1/alerts",
    "/api/v1/entities",
    "/api/v1/coverage",
    "/api/v1/sensors",
    "/api/v1/alerts/",
    "/api/v1/entities/",
    "/api/v1/health",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(tail) = std::str::from_utf8(rest) else {
        return;
    };
    let path = PATHS[which as usize % PATHS.len()];
    // The tail is a query string, or the rest of a path for the {id} and {ip} routes.
    let uri = if path.ends_with('/') {
        format!("{path}{tail}")
    } else {
        format!("{path}?{tail}")
    };
    let Ok(req) = axum::http::Request::get(&uri)
        .header("authorization", format!("Bearer {}", world().token))
        .body(axum::body::Body::empty())
    else {
        return;
    };
    let w = world();
    let (status, body) = w.rt.block_on(async {
        let r = w.router.clone().oneshot(req).await.expect("infallible");
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 24)
            .await
            .expect("body");
        (status, body)
    });
    assert!(
        status.as_u16() < 500,
        "{uri}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    if status.as_u16() != 404 || body.first() == Some(&b'{') {
        serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{uri}: {status}: not JSON ({e})"));
    }
});
