//! The state store (PostgreSQL) stopped while a sensor streams and a scan happens: `serve`
//! says so (`/health` 503, the log), stops acknowledging batches (they wait in the sensor's
//! spool: the sensor's key cannot be checked), and when the server is back every flow is
//! stored exactly once and the scan is one alert.

use std::{net::TcpListener, thread, time::Duration};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, export_flags, servers::Postgres, strs};

#[test]
fn a_state_store_outage_loses_and_doubles_nothing() {
    const FRAMES: u64 = 100_000;
    let lab = Lab::new();
    let dir = TempDir::new("state-outage");
    let mut pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let data = dir.0.join("cp");
    tests::servers::use_state_store(&data, &format!("{} dbname=picket", pg.socket_settings()));
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "lab-b")).expect("key");
    assert_eq!(pg.psql("picket", "SELECT name FROM sensors"), "lab-b");
    let cp = ControlPlane::start(&lab.b, &data, "127.0.0.1:7443", &dir.0.join("cp.log"));
    let flags = export_flags(&lab.vb, "http://127.0.0.1:7443", &key, &dir.0.join("spool"));
    let mut sensor = Sensor::start(&lab.b, &strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));
    let (status, _) = cp.get("/api/v1/health");
    assert_eq!(status, 200);

    // 100,000 frames at 5,000/s (20 s) into b's veth; the state store stops 4 s in.
    let flood = tests::udp_flood_a_to_b(&lab, &dir.0, FRAMES, "5000pps");
    thread::sleep(Duration::from_secs(4));
    pg.stop();
    // Said at once: /health answers 503, without a detail.
    thread::sleep(Duration::from_secs(2));
    let (status, body) = cp.get("/api/v1/health");
    assert_eq!(status, 503, "{body}");
    let h: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["state_store"], "unreachable");
    // A scan while it is away.
    let open = format!("{}:8080", lab.ip_b);
    let _listener = tests::in_netns(&lab.b, move || TcpListener::bind(&open).expect("bind"))
        .join()
        .expect("listener");
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["-p", "1-200,8080"]);
    thread::sleep(Duration::from_secs(4));
    pg.start_again();
    flood.join().expect("trafgen");
    // Everything arrives: the alert, and the spool drains.
    let mut alerts = Vec::new();
    for _ in 0..100 {
        let (status, body) = cp.get("/api/v1/alerts");
        if status == 200 {
            let v: Value = serde_json::from_str(&body).expect("json");
            alerts = v["alerts"].as_array().expect("alerts").clone();
            if !alerts.is_empty() {
                break;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(3));
    let (status, body) = cp.get("/api/v1/health");
    assert_eq!(status, 200, "{body}");
    let out = sensor.stop();
    let (_, body) = cp.get("/api/v1/alerts");
    let again: Value = serde_json::from_str(&body).expect("json");
    cp.stop();
    assert_eq!(alerts.len(), 1, "one alert for the scan: {alerts:?}");
    assert_eq!(again["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(alerts[0]["type"], "port_scan");
    assert_eq!(alerts[0]["source"], lab.ip_a.as_str());
    // Every frame once: the sensor's own count, and the store's.
    let own = out.totals(&lab.ip_a, &lab.ip_b, 17, Some(4000), Some(5000));
    assert_eq!(
        (own.0, own.1),
        (FRAMES, FRAMES * 46),
        "the sensor's records"
    );
    let db = rusqlite::Connection::open(data.join("picket.db")).expect("store");
    let stored: (i64, i64) = db
        .query_row(
            "SELECT SUM(packets), SUM(bytes) FROM flows WHERE src_ip = ?1 AND dst_ip = ?2 \
             AND protocol = 17 AND src_port = 4000 AND dst_port = 5000",
            [&lab.ip_a, &lab.ip_b],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("query");
    assert_eq!(
        stored,
        (FRAMES as i64, FRAMES as i64 * 46),
        "nothing lost, nothing doubled"
    );
    let ex = &out.stats.last().expect("stats")["export"];
    assert_eq!(ex["spool_dropped_records"], 0, "{ex}");
    assert_eq!(ex["spool_batches"], 0, "everything acknowledged: {ex}");
    assert!(
        ex["connects"].as_u64().expect("connects") >= 2,
        "the stream broke while the state store was away: {ex}"
    );
    // The alert is in PostgreSQL.
    assert_eq!(pg.psql("picket", "SELECT count(*) FROM alerts"), "1");
    let log = std::fs::read_to_string(dir.0.join("cp.log")).unwrap_or_default();
    assert!(
        log.contains("the state store does not answer"),
        "the outage is in the log: {log}"
    );
}
