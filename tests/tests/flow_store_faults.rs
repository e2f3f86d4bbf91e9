//! The flow store (ClickHouse) killed (SIGKILL) while a sensor streams: `serve` says so
//! (`/health` 503, the log), stops acknowledging batches (they wait in the sensor's spool), and
//! when the server is back every packet the sensor counted is stored exactly once, whatever
//! write the kill cut short.

use std::{thread, time::Duration};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, export_flags, servers::ClickHouse, strs};

#[test]
fn a_flow_store_killed_mid_flood_loses_and_doubles_nothing() {
    const FRAMES: u64 = 100_000;
    let lab = Lab::new();
    let dir = TempDir::new("flow-outage");
    let mut ch = ClickHouse::start();
    let data = dir.0.join("cp");
    tests::servers::use_flow_store(&data, ch.http_port);
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "lab-b")).expect("key");
    let cp = ControlPlane::start(&lab.b, &data, "127.0.0.1:7443", &dir.0.join("cp.log"));
    let mut flags = export_flags(&lab.vb, "http://127.0.0.1:7443", &key, &dir.0.join("spool"));
    // Short flows: a batch every export, so that the kill lands among writes.
    flags.extend(["--active-timeout".to_string(), "1".to_string()]);
    let mut sensor = Sensor::start(&lab.b, &strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));
    let (status, body) = cp.get("/api/v1/health");
    assert_eq!(status, 200, "{body}");

    // 100,000 frames at 5,000/s (20 s) into b's veth; ClickHouse is killed 5 s in, and
    // started again 8 s later.
    let flood = tests::udp_flood_a_to_b(&lab, &dir.0, FRAMES, "5000pps");
    thread::sleep(Duration::from_secs(5));
    ch.kill();
    thread::sleep(Duration::from_secs(2));
    let (status, body) = cp.get("/api/v1/health");
    assert_eq!(status, 503, "{body}");
    let h: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["flow_store"], "unreachable");
    assert_eq!(h["state_store"], "ok");
    thread::sleep(Duration::from_secs(6));
    ch.start_again();
    flood.join().expect("trafgen");
    thread::sleep(Duration::from_secs(4));
    let (status, body) = cp.get("/api/v1/health");
    assert_eq!(status, 200, "{body}");
    let out = sensor.stop();
    cp.stop();
    let own = out.totals(&lab.ip_a, &lab.ip_b, 17, Some(4000), Some(5000));
    assert_eq!(
        (own.0, own.1),
        (FRAMES, FRAMES * 46),
        "the sensor's records"
    );
    assert_eq!(
        tests::servers::stored_udp(&data, &lab.ip_a, &lab.ip_b, 4000, 5000),
        (FRAMES, FRAMES * 46),
        "nothing lost, nothing doubled"
    );
    let ex = &out.stats.last().expect("stats")["export"];
    assert_eq!(ex["spool_dropped_records"], 0, "{ex}");
    assert_eq!(ex["spool_batches"], 0, "everything acknowledged: {ex}");
    // The rollups agree with the flows.
    let flows = tests::servers::open_flows(&data);
    let raw = flows.flow_totals(None).expect("totals");
    let hour = flows
        .rollup_totals("1h", controlplane::model::Source::Sensor)
        .expect("rollup");
    assert_eq!((raw.packets, raw.bytes), (hour.packets, hour.bytes));
    let log = std::fs::read_to_string(dir.0.join("cp.log")).unwrap_or_default();
    assert!(
        log.contains("the flow store does not answer"),
        "the outage is in the log: {log}"
    );
    eprintln!("export: {ex}");
}
