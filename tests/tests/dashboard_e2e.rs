//! The web dashboard in a real headless Chromium: a real nmap scan in the lab, seen by a real
//! sensor streaming to a real control plane, becomes an alert that the browser test
//! (controlplane/web/e2e/dashboard.mjs, playwright-core driving Debian's chromium) finds after
//! logging in with the first start's admin password, opens, comments on and closes. The
//! screenshots are kept in target/browser-e2e/.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, receivers::wait};

#[test]
fn an_operator_finds_the_scan_alert_in_the_dashboard_and_closes_it() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controlplane/web");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-e2e");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: scripts/setup.sh installs it"
    );
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: scripts/setup.sh runs npm ci in controlplane/web"
    );
    let lab = Lab::new();
    let dir = TempDir::new("dashboard");
    let data = dir.0.join("cp");
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "lab-b")).expect("key");
    // Rollups (which the entity pages read) every 2 s instead of 30.
    let watch = dir.0.join("watch");
    std::fs::create_dir_all(watch.join("aws")).expect("watch dir");
    let cp = ControlPlane::start_with(
        &lab.b,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &[
            "--maintenance-interval",
            "2",
            "--watch-dir",
            watch.to_str().expect("utf-8"),
        ],
    );
    let flags = tests::export_flags(&lab.vb, "http://127.0.0.1:7443", &key, &dir.0.join("spool"));
    let mut sensor = Sensor::start(&lab.b, &tests::strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));
    // One open port among the 201 scanned: the scanned host serves exactly that one.
    let open = format!("{}:8080", lab.ip_b);
    let _listener = tests::in_netns(&lab.b, move || {
        std::net::TcpListener::bind(&open).expect("bind")
    })
    .join()
    .expect("listener");
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["-p", "1-200,8080"]);
    let alert = wait(Duration::from_secs(15), || {
        let (_, body) = cp.get("/api/v1/alerts?type=port_scan");
        let v: Value = serde_json::from_str(&body).ok()?;
        v["alerts"].as_array()?.first().cloned()
    })
    .expect("a port_scan alert");
    assert_eq!(alert["source"], lab.ip_a.as_str());
    // Grown to the whole scan (once its conversations are in), which the page shows first.
    wait(Duration::from_secs(60), || {
        let (_, body) = cp.get(&format!("/api/v1/alerts/{}", alert["id"]));
        let v: Value = serde_json::from_str(&body).ok()?;
        v["observations"]
            .as_array()?
            .iter()
            .any(|o| o["kind"] == "scan_extent" && o["scan_over"] == true)
            .then_some(())
    })
    .expect("the scan's whole extent");

    // An AWS log in the custom format of AWS's NAT-gateway example: no protocol, ports,
    // counts or times. The API gives null for what it did not write (the page "-"), and the
    // file's delivery as its time.
    std::fs::write(
        watch.join("aws/nat-gateway.log"),
        "instance-id interface-id srcaddr dstaddr pkt-srcaddr pkt-dstaddr\n\
         i-01234567890123456 eni-1235b8ca123456789 10.40.1.10 203.0.113.5 10.40.1.10 203.0.113.5\n",
    )
    .expect("log");
    let nat = wait(Duration::from_secs(20), || {
        let (_, body) = cp.get("/api/v1/flows?source=aws");
        let v: Value = serde_json::from_str(&body).ok()?;
        v["flows"].as_array()?.first().cloned()
    })
    .expect("the NAT gateway's record imported");
    for field in [
        "src_port",
        "dst_port",
        "protocol",
        "packets",
        "bytes",
        "reverse_packets",
        "reverse_bytes",
    ] {
        assert_eq!(nat[field], Value::Null, "{field}: {nat}");
    }
    assert_eq!(nat["extra"]["time_from"], "delivery", "{nat}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    let age = now - nat["end_ns"].as_i64().expect("end_ns");
    assert!((0..120_000_000_000).contains(&age), "delivered now: {nat}");

    let hook = tests::receivers::HttpReceiver::start(&lab.b, &[]);
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.b, "node", "e2e/dashboard.mjs"])
        .args([
            &format!("http://{}/", cp.http),
            "admin",
            &cp.admin_password(),
            &lab.ip_a,
            &lab.ip_b,
        ])
        .arg(&shots)
        .arg(hook.url("/browser"))
        .current_dir(&web)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON line");
    assert_eq!(result["alert"], alert["id"]);
    assert!(
        result["status"]
            .as_str()
            .expect("status")
            .starts_with("closed"),
        "{result}"
    );
    for shot in [
        "1-overview",
        "2-alerts",
        "3-alert",
        "4-closed",
        "5-entity",
        "6-flows",
        "7-sensors",
        "8-settings",
    ] {
        let p = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 10_000),
            "{} missing or empty",
            p.display()
        );
    }

    // The entity view counts only answered handshakes as served: the RSTs of 200 closed ports
    // are not services.
    let (_, body) = cp.get(&format!("/api/v1/entities/{}", lab.ip_b));
    let e: Value = serde_json::from_str(&body).expect("json");
    let serves: Vec<&str> = e["serves"]
        .as_array()
        .expect("serves")
        .iter()
        .map(|p| p["port"].as_str().expect("port"))
        .collect();
    assert_eq!(serves, ["8080/tcp"], "{e}");
    assert!(
        result["target_role"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{result}"
    );

    // The sensor's interface and attach modes, as the registration gave them, and the control
    // plane it reports to (the one replica: health names it), as the sensors page shows it.
    let (_, body) = cp.get("/api/v1/sensors");
    let s: Value = serde_json::from_str(&body).expect("json");
    let (_, health) = cp.get("/api/v1/health");
    let health: Value = serde_json::from_str(&health).expect("json");
    let replica = health["replica"].as_str().expect("replica");
    assert_eq!(s["sensors"][0]["replica"], replica, "{s}");
    assert_eq!(result["replica"], replica, "{result}");
    let i = &s["sensors"][0]["interfaces"][0];
    assert_eq!(i["name"], lab.vb.as_str(), "{s}");
    assert_eq!(i["xdp_mode"], "native", "{s}");
    assert!(
        i["tc_mode"]
            .as_str()
            .is_some_and(|m| m == "tcx" || m == "clsact"),
        "{s}"
    );

    // The notifier added in the browser signs with its secret, and its test message arrived.
    let got = hook.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].header("x-picket-event"), "alert.test");
    assert_eq!(
        got[0].header("x-picket-signature-256"),
        controlplane::notify::signature("browser-secret", &got[0].body)
    );
    let (_, body) = cp.get("/api/v1/allowlist");
    assert!(
        body.contains("10.99.0.0/16") && body.contains("sanctioned scanner"),
        "{body}"
    );

    // What the browser did is what the store says: closed by admin, with the comment.
    let (_, body) = cp.get(&format!("/api/v1/alerts/{}", alert["id"]));
    let a: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(a["status"], "closed");
    let steps: Vec<(&str, &str, &str)> = a["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["actor"].as_str().expect("actor"),
                h["action"].as_str().expect("action"),
                h["detail"].as_str().expect("detail"),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("admin", "comment", "lab scanner, seen in the browser test"),
            ("admin", "status", "closed")
        ]
    );
    let log = std::fs::read_to_string(&cp.log).expect("log");
    assert!(
        log.contains("failed login"),
        "the wrong password was logged"
    );
    drop(sensor);
    cp.stop();
}
