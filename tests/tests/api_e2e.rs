//! The REST API of a real `picket-controlplane serve`, on flows imported from AWS and GCP
//! records: filters, paging, errors, and the OpenAPI document against the routes.

use std::{path::Path, time::Duration};

use serde_json::Value;
use tests::{ControlPlane, Lab, TempDir, http_get};

const HTTP: &str = "127.0.0.1:8080";

fn get(cp: &ControlPlane, path: &str) -> (u16, Value) {
    let (status, body) = cp.get(path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    (status, v)
}

fn import(data: &Path, provider: &str, text: &str) {
    let f = data.with_extension(format!("{provider}.log"));
    std::fs::write(&f, text).expect("write");
    let o = ControlPlane::import(data, [provider.as_ref(), f.as_os_str()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Five SSH attempts from one source and a web flow, in the default v2 format.
const AWS: &str = "\
2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 40001 22 6 3 180 1795860000 1795860060 REJECT OK
2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 40002 22 6 3 180 1795860060 1795860120 REJECT OK
2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 40003 22 6 3 180 1795860120 1795860180 REJECT OK
2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 40004 22 6 3 180 1795860180 1795860240 REJECT OK
2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 40005 22 6 3 180 1795860240 1795860300 REJECT OK
2 123456789010 eni-0a2 203.0.113.20 10.0.0.6 51000 443 6 12 4800 1795860000 1795860060 ACCEPT OK
";

const GCP: &str = r#"{"jsonPayload":{"bytes_sent":"1500","packets_sent":"2","connection":{"src_ip":"10.128.0.2","src_port":53000,"dest_ip":"10.128.0.9","dest_port":5432,"protocol":6},"start_time":"2026-11-28T10:00:00Z","end_time":"2026-11-28T10:00:05Z","reporter":"SRC","src_instance":{"vm_name":"app-1","zone":"us-central1-a","region":"us-central1","project_id":"p-1"}},"logName":"projects/p-1/logs/compute.googleapis.com%2Fvpc_flows"}"#;

#[test]
fn flows_sensors_health_and_errors() {
    let lab = Lab::new();
    let dir = TempDir::new("api");
    let data = dir.0.join("data");
    ControlPlane::add_sensor(&data, "edge-1");
    import(&data, "aws", AWS);
    import(&data, "gcp", GCP);
    // The records have fixed dates: keep them whatever day the test runs.
    let cp = ControlPlane::start_with(
        &lab.a,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &["--retention-raw-days", "36500"],
    );
    let ns = &lab.a;

    // Health answers without credentials.
    let (s, body) = http_get(ns, HTTP, "/api/v1/health");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

    let (s, v) = get(&cp, "/api/v1/sensors");
    assert_eq!(s, 200);
    assert_eq!(v["sensors"][0]["name"], "edge-1");
    assert_eq!(v["sensors"][0]["health"], "never_connected");
    assert_eq!(v["sensors"][0]["revoked"], false);

    let (s, v) = get(&cp, "/api/v1/flows");
    assert_eq!(s, 200);
    assert_eq!(v["flows"].as_array().map(Vec::len), Some(7));
    assert_eq!(v["next_cursor"], Value::Null);

    // Filters: one address, one port, one source, a time range.
    let (_, v) = get(&cp, "/api/v1/flows?ip=198.51.100.7&port=22&source=aws");
    let f = v["flows"].as_array().expect("flows");
    assert_eq!(f.len(), 5);
    assert!(
        f.iter()
            .all(|f| f["action"] == "reject" && f["dst_port"] == 22)
    );
    assert_eq!(f[0]["src_port"], 40005, "newest first");
    assert_eq!(f[0]["start"], "2026-11-28T10:04:00Z");
    assert_eq!(f[0]["observer"], "123456789010");
    assert_eq!(f[0]["interface"], "eni-0a1");
    let (_, v) = get(
        &cp,
        "/api/v1/flows?ip=198.51.100.7&since=2026-11-28T10:02:30Z&until=1795860210",
    );
    let ports: Vec<u64> = v["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["src_port"].as_u64().expect("port"))
        .collect();
    assert_eq!(ports, [40004, 40003]);
    let (_, v) = get(&cp, "/api/v1/flows?source=gcp");
    let g = &v["flows"][0];
    assert_eq!(
        (
            &g["observer"],
            &g["interface"],
            &g["zone"],
            &g["sampling_rate"]
        ),
        (
            &Value::from("p-1"),
            &Value::from("app-1"),
            &Value::from("us-central1-a"),
            &Value::from(0.5)
        )
    );

    // Paging: 2 + 2 + 1, no flow twice, then no cursor.
    let mut seen = Vec::new();
    let mut path = "/api/v1/flows?source=aws&ip=198.51.100.7&limit=2".to_string();
    loop {
        let (s, v) = get(&cp, &path);
        assert_eq!(s, 200);
        for f in v["flows"].as_array().expect("flows") {
            seen.push(f["id"].as_i64().expect("id"));
        }
        match v["next_cursor"].as_str() {
            Some(c) => {
                path = format!("/api/v1/flows?source=aws&ip=198.51.100.7&limit=2&cursor={c}")
            }
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5), "{seen:?}");

    // Top-N over both directions: by flows per source, by packets per port.
    let (s, v) = get(&cp, "/api/v1/top?source=aws&by=flows&since=1795850000");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["top"],
        serde_json::json!([
            {"key": "198.51.100.7", "flows": 5, "packets": 15, "bytes": 900},
            {"key": "203.0.113.20", "flows": 1, "packets": 12, "bytes": 4800},
        ])
    );
    let (_, v) = get(
        &cp,
        "/api/v1/top?source=aws&group=dst_port&by=packets&since=1795850000&limit=1",
    );
    assert_eq!(
        v["top"],
        serde_json::json!([{"key": "22/tcp", "flows": 5, "packets": 15, "bytes": 900}])
    );
    let (s, v) = get(&cp, "/api/v1/top?group=country");
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "group: `country` is not one of src_ip, dst_ip, pair, dst_port"
    );

    // Errors are JSON with a code and a message that says what to fix.
    let (s, v) = get(&cp, "/api/v1/flows?port=99999");
    assert_eq!((s, &v["error"]["code"]), (400, &Value::from("bad_request")));
    assert_eq!(v["error"]["message"], "port: 0 to 65535");
    let (s, v) = get(&cp, "/api/v1/flows?limit=0");
    assert_eq!(s, 400, "{v}");
    let (s, v) = get(&cp, "/api/v1/nothing-here");
    assert_eq!((s, &v["error"]["code"]), (404, &Value::from("not_found")));
    // Parameters that do not even decode (bad percent-encoding, not UTF-8): JSON too (the
    // REST fuzz target found them answered in plain text).
    for path in [
        "/api/v1/alerts/%95",
        "/api/v1/flows?ip=%ff%fe",
        "/api/v1/entities/1%2",
    ] {
        let (s, v) = get(&cp, path);
        assert_eq!(
            (s, &v["error"]["code"]),
            (400, &Value::from("bad_request")),
            "{path}"
        );
    }
    cp.stop();
}

/// controlplane/openapi.yaml documents exactly the routes the server has, and each answers.
#[test]
fn openapi_document_matches_the_routes() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../controlplane/openapi.yaml"),
    )
    .expect("openapi.yaml");
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).expect("YAML")[0];
    assert_eq!(doc["openapi"].as_str(), Some("3.0.3"));
    let mut documented: Vec<String> = doc["paths"]
        .as_hash()
        .expect("paths")
        .keys()
        .map(|k| k.as_str().expect("path").to_string())
        .collect();
    documented.sort();
    let mut served: Vec<String> = controlplane::api::ROUTES
        .iter()
        .map(|r| r.0.to_string())
        .collect();
    served.sort();
    assert_eq!(documented, served);
    for (path, methods) in controlplane::api::ROUTES {
        let mut doc_methods: Vec<&str> = doc["paths"][path]
            .as_hash()
            .expect("methods")
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        doc_methods.sort();
        let mut ours = methods.to_vec();
        ours.sort();
        assert_eq!(doc_methods, ours, "{path}");
    }
    // Every response $ref points at a component that exists.
    for r in text
        .lines()
        .filter_map(|l| l.split("$ref: \"#/components/").nth(1))
    {
        let name = r.split('"').next().expect("ref");
        let (kind, item) = name.split_once('/').expect("kind/name");
        assert!(
            !doc["components"][kind][item].is_badvalue(),
            "dangling $ref {name}"
        );
    }
    let lab = Lab::new();
    let dir = TempDir::new("api-doc");
    let cp = ControlPlane::start(
        &lab.a,
        &dir.0.join("data"),
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
    );
    // Each GET answers; on an empty store, one with an id answers 404 for id 1. Without
    // credentials, everything but the health check and the login answers 401.
    for (p, methods) in controlplane::api::ROUTES {
        let (path, want) = if let Some((a, b)) = p.split_once("{id}") {
            (format!("{a}1{b}"), 404)
        } else if let Some((a, b)) = p.split_once("{ip}") {
            (format!("{a}10.0.0.1{b}"), 404)
        } else {
            (p.to_string(), 200)
        };
        if methods.contains(&"get") {
            assert_eq!(cp.get(&path).0, want, "{path}");
        }
        for m in methods {
            let r = tests::http_request(
                &lab.a,
                &m.to_uppercase(),
                format!("http://{HTTP}{path}"),
                &[],
                Some(&serde_json::json!({})),
            );
            let public = [
                ("/api/v1/health", "get"),
                ("/api/v1/session", "post"),
                ("/metrics", "get"),
            ]
            .contains(&(p, m));
            if public {
                assert_ne!(r.status, 401, "{m} {path} is public");
            } else {
                assert_eq!(r.status, 401, "{m} {path} without credentials: {}", r.body);
                assert_eq!(r.json()["error"]["code"], "unauthorized");
            }
        }
    }
    // The metrics say what health says, for Prometheus.
    let m = tests::http_request(&lab.a, "GET", format!("http://{HTTP}/metrics"), &[], None);
    assert_eq!(m.status, 200);
    let (_, h) = cp.get("/api/v1/health");
    let h: serde_json::Value = serde_json::from_str(&h).expect("health");
    for line in [
        format!(
            "picket_controlplane_info{{replica=\"{}\",version=\"{}\"}} 1",
            h["replica"].as_str().expect("replica"),
            env!("CARGO_PKG_VERSION")
        ),
        "picket_controlplane_up{dependency=\"state_store\"} 1".into(),
        "picket_lease_held{lease=\"notifications\"} 1".into(),
    ] {
        assert!(m.body.contains(&line), "{line} in:\n{}", m.body);
    }
    assert!(!m.body.contains("picket_bus_"), "no bus: {}", m.body);
    cp.stop();
}

/// Access control and triage on a real `serve`: the first start's admin logs in with the
/// printed password, changes need the session's CSRF token, viewers only read, revoked tokens
/// and ended sessions are refused; an alert from an AWS import is assigned, tagged, commented,
/// snoozed and closed, each step in its timeline.
#[test]
fn users_sessions_tokens_and_alert_triage() {
    use tests::http_request;
    let lab = Lab::new();
    let dir = TempDir::new("api-auth");
    let data = dir.0.join("data");
    let mut log = String::new();
    for p in 1..=20u64 {
        log += &format!(
            "2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 61000 {p} 6 1 44 {} {} REJECT OK\n",
            1_795_860_000 + p,
            1_795_860_001 + p
        );
    }
    import(&data, "aws", &log);
    let viewer = ControlPlane::add_token(&data, "grafana", "viewer");
    let revoked = ControlPlane::add_token(&data, "old-ci", "admin");
    let o = std::process::Command::new(tests::bin("picket-controlplane"))
        .args(["tokens", "--data-dir"])
        .arg(&data)
        .envs(tests::servers::store_env(&data))
        .args(["revoke", "old-ci"])
        .output()
        .expect("revoke");
    assert!(o.status.success());
    let cp = ControlPlane::start_with(
        &lab.a,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &["--retention-raw-days", "36500"],
    );
    let ns = &lab.a;
    let url = |p: &str| format!("http://{HTTP}{p}");
    let req = |m: &str, p: &str, h: &[(&str, &str)], b: Option<Value>| {
        http_request(ns, m, url(p), h, b.as_ref())
    };

    // Logins: wrong password, unknown user, then the printed one.
    let pw = cp.admin_password();
    assert_eq!(pw.len(), 20);
    for (u, p) in [
        ("admin", "not the password"),
        ("mallory", "whatever-password"),
    ] {
        let r = req(
            "POST",
            "/api/v1/session",
            &[],
            Some(serde_json::json!({"username": u, "password": p})),
        );
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["message"], "wrong user name or password");
    }
    let r = req(
        "POST",
        "/api/v1/session",
        &[],
        Some(serde_json::json!({"username": "admin", "password": pw})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let set_cookie = &r.headers["set-cookie"];
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("cookie").to_string();
    let csrf = r.json()["csrf_token"].as_str().expect("csrf").to_string();
    assert_eq!(r.json()["role"], "admin");
    let session = [("cookie", cookie.as_str())];
    let with_csrf = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let r = req("GET", "/api/v1/session", &session, None);
    assert_eq!(
        (
            r.status,
            r.json()["user"].clone(),
            r.json()["csrf_token"].clone()
        ),
        (200, Value::from("admin"), Value::from(csrf.clone()))
    );

    let r = req("GET", "/api/v1/alerts", &session, None);
    assert_eq!(r.status, 200);
    let alerts = r.json()["alerts"].as_array().expect("alerts").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let id = alerts[0]["id"].as_i64().expect("id");
    assert_eq!(alerts[0]["assignee"], Value::Null);
    let path = format!("/api/v1/alerts/{id}");

    // A session's change without its CSRF token is refused; with it, it is done.
    let change = serde_json::json!({"assignee": "admin", "tags": ["scan", "external", "scan"]});
    let r = req("PATCH", &path, &session, Some(change.clone()));
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, Value::from("csrf"))
    );
    let r = req("PATCH", &path, &with_csrf, Some(change));
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["assignee"], "admin");
    assert_eq!(a["tags"], serde_json::json!(["external", "scan"]));

    // A viewer token reads but cannot change; a revoked token and no credentials get 401.
    let bearer = format!("Bearer {viewer}");
    let r = req("GET", &path, &[("authorization", &bearer)], None);
    assert_eq!(r.status, 200);
    let r = req(
        "PATCH",
        &path,
        &[("authorization", &bearer)],
        Some(serde_json::json!({"status": "closed"})),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, Value::from("forbidden"))
    );
    let old = format!("Bearer {revoked}");
    assert_eq!(
        req("GET", &path, &[("authorization", &old)], None).status,
        401
    );
    assert_eq!(req("GET", &path, &[], None).status, 401);

    // Triage through the admin token too: comments, bad input, snooze, close.
    let r = cp.request(
        "POST",
        &format!("{path}/comments"),
        Some(&serde_json::json!({"text": "  external scanner, blocked at the edge  "})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    for (body, msg) in [
        (
            serde_json::json!({"status": "gone"}),
            "status: must be one of open, closed, snoozed",
        ),
        (
            serde_json::json!({"status": "snoozed"}),
            "status snoozed needs snooze_until (RFC 3339 or Unix seconds)",
        ),
        (
            serde_json::json!({"snooze_until": "2000-01-01T00:00:00Z"}),
            "snooze_until must be in the future",
        ),
        (
            serde_json::json!({"assignee": "nobody"}),
            "assignee: there is no user `nobody`",
        ),
        (
            serde_json::json!({"tags": ["a b"]}),
            "tags: `a b` must be 1-32 letters, digits, `-`, `_`, `:` or `.`",
        ),
        (
            serde_json::json!({"colour": "red"}),
            "unknown field `colour` (known: status, snooze_until, assignee, tags, comment)",
        ),
        (
            serde_json::json!({}),
            "nothing to change (fields: status, snooze_until, assignee, tags, comment)",
        ),
    ] {
        let r = cp.request("PATCH", &path, Some(&body));
        assert_eq!(
            (r.status, r.json()["error"]["message"].clone()),
            (400, Value::from(msg)),
            "{body}"
        );
    }
    let r = cp.request(
        "PATCH",
        &path,
        Some(&serde_json::json!({"status": "snoozed", "snooze_until": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(r.json()["status"], "snoozed");
    assert_eq!(r.json()["snoozed_until"], "2099-01-01T00:00:00Z");
    // Past the year 2262 (the end of nanosecond time), a snooze is "until further notice":
    // clamped, not wrapped into the past.
    let r = cp.request(
        "PATCH",
        &path,
        Some(&serde_json::json!({"snooze_until": "9999-12-31T23:59:59Z"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["snoozed_until"], "2262-04-11T23:47:16.854775807Z");
    let r = cp.request(
        "PATCH",
        &path,
        Some(&serde_json::json!({"status": "closed", "comment": "done"})),
    );
    let a = r.json();
    assert_eq!(
        (a["status"].clone(), a["snoozed_until"].clone()),
        (Value::from("closed"), Value::Null)
    );
    let steps: Vec<(String, String, String)> = a["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["actor"].as_str().expect("actor").to_string(),
                h["action"].as_str().expect("action").to_string(),
                h["detail"].as_str().expect("detail").to_string(),
            )
        })
        .collect();
    let token_name = format!("token:{}", {
        let r = cp.request("GET", "/api/v1/session", None);
        r.json()["user"]
            .as_str()
            .expect("user")
            .trim_start_matches("token:")
            .to_string()
    });
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        steps,
        [
            s("admin", "assign", "admin"),
            s("admin", "tags", "external, scan"),
            s(
                &token_name,
                "comment",
                "external scanner, blocked at the edge"
            ),
            s(&token_name, "snooze", "2099-01-01T00:00:00Z"),
            s(&token_name, "snooze", "2262-04-11T23:47:16.854775807Z"),
            s(&token_name, "status", "closed"),
            s(&token_name, "comment", "done"),
        ]
    );
    let r = cp.request("GET", "/api/v1/alerts?status=closed&assignee=admin", None);
    assert_eq!(r.json()["alerts"].as_array().map(Vec::len), Some(1));
    let r = cp.request("GET", "/api/v1/alerts?status=open", None);
    assert_eq!(r.json()["alerts"].as_array().map(Vec::len), Some(0));

    // Logging out ends the session.
    let r = req("DELETE", "/api/v1/session", &with_csrf, None);
    assert_eq!(r.status, 204);
    assert_eq!(req("GET", "/api/v1/alerts", &session, None).status, 401);
    // Failures make this name wait from this address, even with the right password after
    // them: 5 are free, then each waits 1 s doubled at each further failure.
    let mut failures = 0;
    loop {
        let r = req(
            "POST",
            "/api/v1/session",
            &[],
            Some(serde_json::json!({"username": "admin", "password": "guess-guess"})),
        );
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 401, "{}", r.body);
        failures += 1;
        assert!(failures <= 5, "a 6th failure in a row was checked at once");
    }
    assert_eq!(failures, 5);
    let r = req(
        "POST",
        "/api/v1/session",
        &[],
        Some(serde_json::json!({"username": "admin", "password": pw})),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r.headers["retry-after"]
        .parse()
        .expect("Retry-After in seconds");
    assert_eq!(wait, 1);
    // ... but not from another address: a stranger cannot lock the user out.
    let r = tests::http_request_from(
        ns,
        Some([127, 0, 0, 2].into()),
        "POST",
        url("/api/v1/session"),
        &[],
        Some(&serde_json::json!({"username": "admin", "password": pw})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    cp.stop();
}

/// Entities from AWS records: a web server with 5 clients, a DNS resolver with 3, the clients;
/// each with the role its served ports show, peers, and activity per hour of the week.
#[test]
fn entities_get_roles_from_what_they_serve() {
    let lab = Lab::new();
    let dir = TempDir::new("api-entities");
    let data = dir.0.join("data");
    // Monday 2026-11-23 10:00 UTC: hour 10 of the week.
    let t = 1_795_428_000u64;
    let mut log = String::new();
    for c in 1..=5 {
        log += &format!(
            "2 123456789010 eni-0a1 10.0.1.{c} 10.0.0.80 5{c}000 443 6 10 2000 {t} {} ACCEPT OK\n",
            t + 60
        );
    }
    for c in 1..=3 {
        log += &format!(
            "2 123456789010 eni-0a2 10.0.1.{c} 10.0.0.53 4{c}000 53 17 1 70 {t} {} ACCEPT OK\n",
            t + 60
        );
    }
    // And one external client (a record, not traffic): its country comes from the RIR data.
    log += &format!(
        "2 123456789010 eni-0a1 8.8.8.8 10.0.0.80 50000 443 6 5 600 {t} {} ACCEPT OK\n",
        t + 60
    );
    import(&data, "aws", &log);
    let cp = ControlPlane::start_with(
        &lab.a,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &["--retention-raw-days", "36500"],
    );
    let q = format!("since={}&until={}", t - 3600, t + 7200);
    // The rollups are filled by the first maintenance pass at start.
    let v = tests::receivers::wait(Duration::from_secs(10), || {
        let (s, v) = get(&cp, &format!("/api/v1/entities?{q}"));
        assert_eq!(s, 200, "{v}");
        (v["total"] == 7).then_some(v)
    })
    .expect("7 entities (8.8.8.8 is not internal)");
    let e = v["entities"].as_array().expect("entities");
    let role = |ip: &str| -> (String, f64) {
        let x = e
            .iter()
            .find(|x| x["ip"] == ip)
            .unwrap_or_else(|| panic!("{ip}"));
        (
            x["role"].as_str().expect("role").to_string(),
            x["role_confidence"].as_f64().expect("confidence"),
        )
    };
    assert_eq!(e[0]["ip"], "10.0.0.80", "the busiest first");
    assert_eq!(role("10.0.0.80").0, "web");
    assert!(
        role("10.0.0.80").1 > role("10.0.0.53").1,
        "more peers, more confidence"
    );
    assert_eq!(role("10.0.0.53").0, "dns");
    assert_eq!(role("10.0.1.1").0, "client");
    assert_eq!(e[0]["serves"][0]["port"], "443/tcp");
    assert_eq!(e[0]["serves"][0]["peers"], 6);
    assert_eq!(e[0]["bytes_in"], 10_600);
    let (_, v) = get(&cp, &format!("/api/v1/entities?{q}&role=dns"));
    assert_eq!(v["entities"].as_array().map(Vec::len), Some(1));

    let (s, d) = get(&cp, &format!("/api/v1/entities/10.0.1.1?{q}"));
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["peers"], 2);
    let mut uses: Vec<&str> = d["uses"]
        .as_array()
        .expect("uses")
        .iter()
        .map(|u| u["port"].as_str().expect("port"))
        .collect();
    uses.sort();
    assert_eq!(uses, ["443/tcp", "53/udp"]);
    let how = d["hour_of_week"].as_array().expect("hours");
    assert_eq!(how.len(), 168);
    assert_eq!(how[10], 2, "two flows on Monday 10:00 UTC");
    assert_eq!(how.iter().filter_map(Value::as_u64).sum::<u64>(), 2);
    let (_, d) = get(&cp, &format!("/api/v1/entities/10.0.0.80?{q}"));
    assert_eq!(
        d["countries"],
        serde_json::json!([{"country": "US", "peers": 1, "flows": 1, "bytes": 600}]),
        "{d}"
    );
    let (s, d) = get(&cp, "/api/v1/entities/198.51.100.7");
    assert_eq!(s, 404);
    assert!(
        d["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("not an internal address")
    );
    let (s, _) = get(&cp, "/api/v1/entities/not-an-ip");
    assert_eq!(s, 400);
    cp.stop();
}

/// Settings over the API: notifiers (secrets never shown, a test message really sent), the
/// allowlist and the watchlist; viewers read, admins change, bad input is refused with a reason.
#[test]
fn settings_notifiers_allowlist_and_watchlist() {
    use serde_json::json;
    let lab = Lab::new();
    let dir = TempDir::new("api-settings");
    let data = dir.0.join("data");
    let viewer = ControlPlane::add_token(&data, "viewer", "viewer");
    let cp = ControlPlane::start(&lab.a, &data, "127.0.0.1:7443", &dir.0.join("cp.log"));
    let hook = tests::receivers::HttpReceiver::start(&lab.a, &[]);
    let as_viewer = |m: &str, p: &str, b: Option<&Value>| {
        tests::http_request(
            &lab.a,
            m,
            format!("http://{HTTP}{p}"),
            &[("authorization", &format!("Bearer {viewer}"))],
            b,
        )
    };

    let add = json!({
        "name": "soc",
        "min_severity": "medium",
        "target": {"kind": "webhook", "url": hook.url("/in"), "secret": "topsecret"},
    });
    assert_eq!(
        as_viewer("POST", "/api/v1/notifiers", Some(&add)).status,
        403
    );
    let r = cp.request("POST", "/api/v1/notifiers", Some(&add));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = as_viewer("GET", "/api/v1/notifiers", None);
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("topsecret"), "{}", r.body);
    assert_eq!(
        r.json()["notifiers"],
        json!([{
            "name": "soc", "kind": "webhook", "min_severity": "medium",
            "destination": format!("http://127.0.0.1:{}/… (signed)", hook.port),
            "delivered": 0, "pending": 0, "failed": 0,
        }])
    );
    let r = cp.request("POST", "/api/v1/notifiers/soc/test", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let got = hook.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].header("x-picket-event"), "alert.test");
    assert_eq!(
        got[0].header("x-picket-signature-256"),
        controlplane::notify::signature("topsecret", &got[0].body)
    );
    for (b, msg) in [
        (
            json!({"name": "x", "target": {"kind": "pager"}}),
            "target: unknown variant `pager`",
        ),
        (
            json!({"name": "x y", "target": {"kind": "slack", "url": "http://x/"}}),
            "a notifier name is 1-64",
        ),
        (
            json!({"name": "x", "target": {"kind": "slack", "url": "nope"}}),
            "--url: `nope` is not a URL",
        ),
        (
            json!({"name": "soc", "target": {"kind": "slack", "url": "http://x/"}}),
            "a notifier named `soc` exists already",
        ),
        (
            json!({"name": "x", "min_severity": "urgent", "target": {"kind": "slack", "url": "http://x/"}}),
            "min_severity: one of low",
        ),
    ] {
        let r = cp.request("POST", "/api/v1/notifiers", Some(&b));
        assert_eq!(r.status, 400, "{b}: {}", r.body);
        let m = r.json()["error"]["message"]
            .as_str()
            .expect("msg")
            .to_string();
        assert!(m.contains(msg), "{b}: {m}");
    }
    // A receiver that is not there: the test says so, with the reason.
    let dead = json!({"name": "dead", "target": {"kind": "syslog", "address": "127.0.0.1:1", "transport": "tcp", "facility": 4}});
    assert_eq!(
        cp.request("POST", "/api/v1/notifiers", Some(&dead)).status,
        201
    );
    let r = cp.request("POST", "/api/v1/notifiers/dead/test", None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (502, Value::from("delivery_failed"))
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .expect("m")
            .contains("refused"),
        "{}",
        r.body
    );
    let r = cp.request("DELETE", "/api/v1/notifiers/dead", None);
    assert_eq!(r.json(), json!({"removed": "dead", "dropped_messages": 0}));
    assert_eq!(
        cp.request("DELETE", "/api/v1/notifiers/dead", None).status,
        404
    );

    // Allowlist and watchlist: add (201), again (200), list, remove, remove again (404).
    for (path, extra) in [
        ("/api/v1/allowlist", json!({"type": "port_scan"})),
        ("/api/v1/watchlist", json!({})),
    ] {
        let mut b = json!({"entry": "10.0.5.20", "label": "qualys"});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        assert_eq!(as_viewer("POST", path, Some(&b)).status, 403);
        assert_eq!(cp.request("POST", path, Some(&b)).status, 201, "{path}");
        let r = cp.request("POST", path, Some(&b));
        assert_eq!(
            (r.status, r.json()["new"].clone()),
            (200, Value::from(false))
        );
        let list = as_viewer("GET", path, None).json();
        let key = path.rsplit('/').next().expect("key");
        assert_eq!(list[key][0]["entry"], "10.0.5.20/32", "{list}");
        assert_eq!(list[key][0]["label"], "qualys");
        let bad = cp.request("POST", path, Some(&json!({"entry": "10.0.5.300"})));
        assert_eq!(bad.status, 400);
        assert_eq!(
            bad.json()["error"]["message"],
            "`10.0.5.300` is neither an address nor a CIDR network"
        );
        let del = format!("{path}?entry=10.0.5.20/32&type=port_scan");
        assert_eq!(cp.request("DELETE", &del, None).status, 200, "{path}");
        assert_eq!(cp.request("DELETE", &del, None).status, 404, "{path}");
    }
    let r = cp.request(
        "POST",
        "/api/v1/allowlist",
        Some(&json!({"entry": "10.0.0.0/8", "type": "Port Scan"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let b = json!({"network": "10.1.2.3/8", "type": "port_scan", "level": "high"});
    assert_eq!(
        as_viewer("POST", "/api/v1/sensitivity", Some(&b)).status,
        403
    );
    let r = cp.request("POST", "/api/v1/sensitivity", Some(&b));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        as_viewer("GET", "/api/v1/sensitivity", None).json()["sensitivity"],
        json!([{"network": "10.0.0.0/8", "type": "port_scan", "level": "high"}])
    );
    let r = cp.request(
        "POST",
        "/api/v1/sensitivity",
        Some(&json!({"level": "loud"})),
    );
    assert_eq!(
        (r.status, r.json()["error"]["message"].clone()),
        (400, Value::from("level: one of off, low, medium, high"))
    );
    let del = "/api/v1/sensitivity?network=10.0.0.0/8&type=port_scan";
    assert_eq!(cp.request("DELETE", del, None).status, 200);
    assert_eq!(cp.request("DELETE", del, None).status, 404);
    cp.stop();
}

/// The dashboard and the API over HTTPS (`--http-tls-cert`): curl, trusting only the test CA,
/// gets the dashboard and the health check; plain HTTP and a failed handshake get nowhere and
/// the failure is counted; the session cookie is marked Secure.
#[test]
fn dashboard_and_api_over_https() {
    let lab = Lab::new();
    let dir = TempDir::new("api-https");
    tests::make_pki(&dir.0);
    let data = dir.0.join("data");
    let p = |f: &str| dir.0.join(f).to_str().expect("utf8").to_string();
    let cp = ControlPlane::start_with(
        &lab.a,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &[
            "--http-listen",
            "127.0.0.1:8443",
            "--http-tls-cert",
            &p("server.pem"),
            "--http-tls-key",
            &p("server.key"),
        ],
    );
    let curl = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.a, "curl", "-s", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let ca = p("ca.pem");
    let (code, page) = curl(&["--cacert", &ca, "https://127.0.0.1:8443/"]);
    assert_eq!(code, Some(0), "{page}");
    assert!(page.contains("<title>Picket</title>"), "{page}");
    // Without the CA the certificate is refused (curl exit 60): a real handshake failure.
    let (code, _) = curl(&["https://127.0.0.1:8443/api/v1/health"]);
    assert_eq!(code, Some(60));
    let (code, _) = curl(&["http://127.0.0.1:8443/api/v1/health"]);
    assert_ne!(code, Some(0), "plain HTTP is not served");
    let (code, body) = curl(&["--cacert", &ca, "https://127.0.0.1:8443/api/v1/health"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["https_handshakes_failed"], 2, "{v}");
    let login = format!(
        r#"{{"username":"admin","password":"{}"}}"#,
        cp.admin_password()
    );
    let (code, headers) = curl(&[
        "--cacert",
        &ca,
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/json",
        "--data",
        &login,
        "https://127.0.0.1:8443/api/v1/session",
    ]);
    assert_eq!(code, Some(0));
    let cookie = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{headers}"));
    assert!(cookie.contains("; Secure"), "{cookie}");
    cp.stop();
}
