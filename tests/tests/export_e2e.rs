//! The sensor exporting to the real control plane over gRPC, in namespaces: a control-plane
//! outage in the middle of a trafgen flood loses nothing and doubles nothing.

use std::{
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use tests::{ControlPlane, Lab, Sensor, TempDir, export_flags, mac, strs, trafgen_at, udp4_frame};

/// A control-plane data dir in `dir` with one sensor `name`, and the file holding its key.
fn data_dir_with_sensor(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let data = dir.0.join("cp");
    let key_file = dir.0.join("sensor.key");
    std::fs::write(&key_file, ControlPlane::add_sensor(&data, name)).expect("key file");
    (data, key_file)
}

/// Sensor flags: watch `iface`, export every second to `url` with `key_file`, spool in `spool`.
#[test]
fn control_plane_outage_mid_flood_loses_and_doubles_nothing() {
    const FRAMES: u64 = 450_000;
    let lab = Lab::new();
    let dir = TempDir::new("export");
    let (data, key_file) = data_dir_with_sensor(&dir, "lab-a");
    let listen = "127.0.0.1:7443";
    let cp = ControlPlane::start(&lab.a, &data, listen, &dir.0.join("cp1.log"));
    let flags = export_flags(
        &lab.va,
        &format!("http://{listen}"),
        &key_file,
        &dir.0.join("spool"),
    );
    let mut sensor = Sensor::start(&lab.a, &strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));

    // 450,000 frames at 5,000/s (90 s) out of a's veth: tc egress counts every one.
    let flood = tests::udp_flood_a_to_b(&lab, &dir.0, FRAMES, "5000pps");
    thread::sleep(Duration::from_secs(10));
    cp.kill();
    thread::sleep(Duration::from_secs(60));
    let cp = ControlPlane::start(&lab.a, &data, listen, &dir.0.join("cp2.log"));
    flood.join().expect("trafgen");
    let out = sensor.stop();

    let own = out.totals(&lab.ip_a, &lab.ip_b, 17, Some(4000), Some(5000));
    assert_eq!(
        (own.0, own.1),
        (FRAMES, FRAMES * 46),
        "the sensor's own records"
    );
    cp.stop();
    assert_eq!(
        tests::servers::stored_udp(&data, &lab.ip_a, &lab.ip_b, 4000, 5000),
        (FRAMES, FRAMES * 46),
        "the control plane's store: nothing lost, nothing doubled"
    );
    let last = out.stats.last().expect("stats");
    let ex = &last["export"];
    assert_eq!(ex["spool_dropped_records"], 0, "{ex}");
    assert_eq!(ex["spool_batches"], 0, "everything acknowledged: {ex}");
    assert!(
        ex["connects"].as_u64().expect("connects") >= 2,
        "reconnected after the outage: {ex}"
    );
    assert!(
        out.stderr
            .contains("export to the control plane interrupted"),
        "the outage is in the log"
    );
    eprintln!("export: {ex}");
}

#[test]
fn mutual_tls_refuses_a_sensor_without_a_certificate_and_its_spool_waits() {
    let lab = Lab::new();
    let dir = TempDir::new("tls");
    tests::make_pki(&dir.0);
    let p = |f: &str| dir.0.join(f).to_str().expect("utf8").to_string();
    let (data, key_file) = data_dir_with_sensor(&dir, "lab-a");
    let listen = "127.0.0.1:7444";
    let cp = ControlPlane::start_with(
        &lab.a,
        &data,
        listen,
        &dir.0.join("cp.log"),
        &[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
        ],
    );
    let url = format!("https://{listen}");
    let spool = p("spool");
    let base = [
        "--iface",
        &lab.va,
        "--export-interval",
        "1",
        "--controlplane",
        &url,
        "--sensor-key-file",
        key_file.to_str().expect("utf8"),
        "--spool-dir",
        &spool,
        "--ca-cert",
        &p("ca.pem"),
    ];
    let frame = udp4_frame(
        &mac(&lab.b, &lab.vb),
        &mac(&lab.a, &lab.va),
        &[],
        (&lab.ip_a, 4001),
        (&lab.ip_b, 5001),
        18,
    );
    // Without a client certificate the handshake fails: nothing is stored, all stays spooled.
    let mut s = Sensor::start(&lab.a, &base);
    trafgen_at(&lab.a, &lab.va, &dir, "one.cfg", &frame, 1000, "400000pps");
    s.wait_for_log(
        "export to the control plane interrupted",
        Duration::from_secs(20),
    );
    let out = s.stop();
    let ex = &out.stats.last().expect("stats")["export"];
    assert_eq!(ex["batches_acked"], 0, "{ex}");
    assert!(ex["spool_batches"].as_u64().expect("n") > 0, "{ex}");
    assert_eq!(
        tests::servers::stored_udp(&data, &lab.ip_a, &lab.ip_b, 4001, 5001),
        (0, 0)
    );

    // With one, the same spool is replayed at start, then the new traffic follows.
    let mut with_cert: Vec<&str> = base.to_vec();
    let (cert, key) = (p("client.pem"), p("client.key"));
    with_cert.extend(["--tls-cert", &cert, "--tls-key", &key]);
    let mut s = Sensor::start(&lab.a, &with_cert);
    s.wait_for_log("connected to the control plane", Duration::from_secs(20));
    trafgen_at(&lab.a, &lab.va, &dir, "two.cfg", &frame, 1000, "400000pps");
    let out = s.stop();
    let ex = &out.stats.last().expect("stats")["export"];
    assert_eq!(ex["spool_batches"], 0, "{ex}");
    cp.stop();
    assert_eq!(
        tests::servers::stored_udp(&data, &lab.ip_a, &lab.ip_b, 4001, 5001),
        (2000, 2000 * 46),
        "both runs' records, once each"
    );
}

#[test]
fn ssh_log_lines_become_auth_events_in_the_store() {
    let lab = Lab::new();
    let dir = TempDir::new("auth");
    let (data, key_file) = data_dir_with_sensor(&dir, "lab-b");
    let listen = "127.0.0.1:7445";
    let cp = ControlPlane::start(&lab.b, &data, listen, &dir.0.join("cp.log"));
    let log = dir.0.join("auth.log");
    std::fs::write(&log, "2026-11-28T09:00:00+00:00 h sshd[1]: Failed password for root from 203.0.113.1 port 1 ssh2\n")
        .expect("old log");
    let mut flags = export_flags(
        &lab.vb,
        &format!("http://{listen}"),
        &key_file,
        &dir.0.join("spool"),
    );
    flags.extend([
        "--auth-log".to_string(),
        log.to_str().expect("utf8").to_string(),
    ]);
    let mut sensor = Sensor::start(&lab.b, &strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("append");
    use std::io::Write as _;
    for (i, user) in ["admin", "oracle", "test"].iter().enumerate() {
        writeln!(
            f,
            "2026-11-28T10:00:0{i}+00:00 h sshd[9{i}]: Failed password for invalid user {user} from {} port 5000{i} ssh2",
            lab.ip_a
        )
        .expect("line");
    }
    writeln!(
        f,
        "2026-11-28T10:00:09+00:00 h sshd[99]: Accepted publickey for alice from {} port 50009 ssh2: ED25519 SHA256:x",
        lab.ip_a
    )
    .expect("line");
    drop(f);
    thread::sleep(Duration::from_millis(2500));
    let out = sensor.stop();
    cp.stop();
    assert_eq!(out.auth.len(), 4, "the old line is history: {:?}", out.auth);
    assert_eq!(out.auth[0]["outcome"], "failed");
    assert_eq!(out.auth[0]["user"], "admin");
    assert_eq!(out.auth[3]["outcome"], "accepted");
    let (failed, accepted) = logins(&data, &lab.ip_a);
    assert_eq!((failed, accepted), (3, 1));
}

/// (failed, accepted) logins the store holds from `src` on sensor lab-b.
fn logins(data: &Path, src: &str) -> (i64, i64) {
    let env = tests::servers::store_env(data);
    if let Some((_, url)) = env.iter().find(|(k, _)| *k == "PICKET_FLOW_STORE") {
        // clickhouse://default@127.0.0.1:PORT/DB
        let (host, db) = url
            .trim_start_matches("clickhouse://default@")
            .split_once('/')
            .expect("url");
        let port: u16 = host
            .rsplit_once(':')
            .expect("port")
            .1
            .parse()
            .expect("port");
        let (status, body) = tests::servers::http(
            port,
            "POST",
            "/",
            &format!(
                "SELECT countIf(outcome = 'failed'), countIf(outcome = 'accepted') FROM {db}.auth_events \
                 WHERE sensor = 'lab-b' AND src_ip = IPv4ToIPv6(IPv4StringToNum('{src}'))"
            ),
        )
        .expect("clickhouse");
        assert_eq!(status, 200, "{body}");
        let (f, a) = body.trim().split_once('\t').expect("two columns");
        return (f.parse().expect("n"), a.parse().expect("n"));
    }
    let db = rusqlite::Connection::open(data.join("picket.db")).expect("store");
    db.query_row(
        "SELECT SUM(outcome = 'failed'), SUM(outcome = 'accepted') FROM auth_events \
         WHERE sensor = 'lab-b' AND src_ip = ?1",
        [src],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("query")
}
