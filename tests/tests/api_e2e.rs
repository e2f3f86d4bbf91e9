//! The REST API of a real `picket-controlplane serve`, on flows imported from AWS and GCP
//! records: filters, paging, errors, and the OpenAPI document against the routes.

use std::path::Path;

use serde_json::Value;
use tests::{ControlPlane, Lab, TempDir, http_get};

const HTTP: &str = "127.0.0.1:8080";

fn get(ns: &str, path: &str) -> (u16, Value) {
    let (status, body) = http_get(ns, HTTP, path);
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

    let (s, v) = get(ns, "/api/v1/health");
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

    let (s, v) = get(ns, "/api/v1/sensors");
    assert_eq!(s, 200);
    assert_eq!(v["sensors"][0]["name"], "edge-1");
    assert_eq!(v["sensors"][0]["health"], "never_connected");
    assert_eq!(v["sensors"][0]["revoked"], false);

    let (s, v) = get(ns, "/api/v1/flows");
    assert_eq!(s, 200);
    assert_eq!(v["flows"].as_array().map(Vec::len), Some(7));
    assert_eq!(v["next_cursor"], Value::Null);

    // Filters: one address, one port, one source, a time range.
    let (_, v) = get(ns, "/api/v1/flows?ip=198.51.100.7&port=22&source=aws");
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
        ns,
        "/api/v1/flows?ip=198.51.100.7&since=2026-11-28T10:02:30Z&until=1795860210",
    );
    let ports: Vec<u64> = v["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["src_port"].as_u64().expect("port"))
        .collect();
    assert_eq!(ports, [40004, 40003]);
    let (_, v) = get(ns, "/api/v1/flows?source=gcp");
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
        let (s, v) = get(ns, &path);
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

    // Errors are JSON with a code and a message that says what to fix.
    let (s, v) = get(ns, "/api/v1/flows?port=99999");
    assert_eq!((s, &v["error"]["code"]), (400, &Value::from("bad_request")));
    assert_eq!(v["error"]["message"], "port: 0 to 65535");
    let (s, v) = get(ns, "/api/v1/flows?limit=0");
    assert_eq!(s, 400, "{v}");
    let (s, v) = get(ns, "/api/v1/nothing-here");
    assert_eq!((s, &v["error"]["code"]), (404, &Value::from("not_found")));
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
        .map(|r| r.to_string())
        .collect();
    served.sort();
    assert_eq!(documented, served);
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
    // Each route answers; on an empty store, one with an id answers 404 for id 1.
    for p in &served {
        let (path, want) = match p.split_once("{id}") {
            Some((a, b)) => (format!("{a}1{b}"), 404),
            None => (p.clone(), 200),
        };
        assert_eq!(http_get(&lab.a, HTTP, &path).0, want, "{path}");
    }
    cp.stop();
}
