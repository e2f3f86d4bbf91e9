//! Detection end to end: a real nmap SYN scan in the lab, seen by a real sensor that streams to a
//! real control plane, becomes one `port_scan` alert naming the scanner, served by the REST API
//! with its evidence; a masscan of every port leaves the target's role and the top talkers as
//! they were (its replies are the scanner's conversations).

use std::{net::TcpListener, thread, time::Duration};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir};

fn get(cp: &ControlPlane, path: &str) -> (u16, Value) {
    let (status, body) = cp.get(path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    (status, v)
}

/// A lab whose sensor (on b) streams to a control plane in b, with `extra` sensor flags.
struct Setup {
    lab: Lab,
    dir: TempDir,
    cp: ControlPlane,
    sensor: Sensor,
}

fn setup(name: &str, extra: &[&str]) -> Setup {
    setup_watching(name, extra, |_| Vec::new())
}

/// [`setup`], with `cp_extra` flags for `serve`.
fn setup_serving(name: &str, cp_extra: &[&str]) -> Setup {
    setup_full(name, &[], cp_extra, |_| Vec::new())
}

/// [`setup`], with watchlist entries (made from the lab's addresses) in the store before the
/// control plane starts.
fn setup_watching(name: &str, extra: &[&str], watch: impl Fn(&Lab) -> Vec<String>) -> Setup {
    setup_full(name, extra, &[], watch)
}

fn setup_full(
    name: &str,
    extra: &[&str],
    cp_extra: &[&str],
    watch: impl Fn(&Lab) -> Vec<String>,
) -> Setup {
    let lab = Lab::new();
    let dir = TempDir::new(name);
    let data = dir.0.join("cp");
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "lab-b")).expect("key");
    let entries = watch(&lab);
    if !entries.is_empty() {
        let o = std::process::Command::new(tests::bin("picket-controlplane"))
            .args(["watchlist", "--data-dir"])
            .arg(&data)
            .envs(tests::servers::store_env(&data))
            .arg("add")
            .args(&entries)
            .args(["--label", "lab"])
            .output()
            .expect("watchlist add");
        assert!(o.status.success(), "{o:?}");
    }
    let cp = ControlPlane::start_with(
        &lab.b,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        cp_extra,
    );
    let mut flags =
        tests::export_flags(&lab.vb, "http://127.0.0.1:7443", &key, &dir.0.join("spool"));
    flags.extend(extra.iter().map(|f| f.to_string()));
    let mut sensor = Sensor::start(&lab.b, &tests::strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));
    Setup {
        lab,
        dir,
        cp,
        sensor,
    }
}

/// Polls the alerts until there is at least one (10 s at most).
fn wait_for_alerts(cp: &ControlPlane) -> Vec<Value> {
    for _ in 0..50 {
        let (status, v) = get(cp, "/api/v1/alerts");
        assert_eq!(status, 200, "{v}");
        let alerts = v["alerts"].as_array().expect("alerts").clone();
        if !alerts.is_empty() {
            return alerts;
        }
        thread::sleep(Duration::from_millis(200));
    }
    Vec::new()
}

#[test]
fn nmap_syn_scan_becomes_one_port_scan_alert_naming_the_scanner() {
    let Setup {
        lab,
        dir: _dir,
        cp,
        sensor,
    } = setup("detect", &[]);

    // Nothing has happened yet.
    let (status, v) = get(&cp, "/api/v1/alerts");
    assert_eq!(status, 200);
    assert_eq!(v["alerts"], Value::Array(vec![]));

    let open = format!("{}:8080", lab.ip_b);
    let _listener = tests::in_netns(&lab.b, move || TcpListener::bind(&open).expect("bind"))
        .join()
        .expect("listener");
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["-p", "1-1000,8080"]);

    // The sensor exports every second; the alert follows its batch, raised when the kernel
    // flagged the scanner at 20 ports, then grown with the scan's conversations until it is
    // over.
    let first = wait_for_alerts(&cp);
    assert_eq!(first.len(), 1, "one alert for the scan: {first:?}");
    let src = lab.ip_a.clone();
    let done = wait_for_alert(&cp, "port_scan", &src, |a| extent(a)["scan_over"] == true);
    let (_, v) = get(&cp, "/api/v1/alerts");
    let alerts = v["alerts"].as_array().expect("alerts").clone();
    sensor.stop();
    assert_eq!(
        alerts.len(),
        1,
        "still one alert, not one per batch: {alerts:?}"
    );
    assert_eq!(alerts[0], done);
    assert_eq!(first[0]["id"], done["id"], "the same alert grew");
    let a = &alerts[0];
    assert_eq!(a["type"], "port_scan");
    assert_eq!(a["status"], "open");
    assert_eq!(a["source"], lab.ip_a.as_str(), "the scanner is named");
    assert_eq!(a["targets"], serde_json::json!([lab.ip_b]));
    assert_eq!(a["sources"], serde_json::json!(["sensor:lab-b"]));
    // The kernel's event at 20 ports, then the scan's whole extent: 1,001 ports is high, and
    // the one port that answered open is named.
    assert_eq!(a["severity"], "high");
    assert_eq!(a["observations_total"], 2, "{a}");
    let x = extent(a);
    assert_eq!(x["distinct_ports"], 1001, "{x}");
    assert_eq!(
        x["open_found"],
        serde_json::json!([format!("{}: 8080/tcp", lab.ip_b)])
    );
    let ob = &a["observations"][0];
    assert_eq!(ob["kind"], "kernel_scan_event");
    assert_eq!(ob["sensor"], "lab-b");
    assert_eq!(ob["iface"], lab.vb.as_str());
    assert_eq!(ob["probe"], "syn");
    assert!(ob["distinct_ports"].as_u64().expect("ports") >= 20, "{ob}");
    assert_eq!(ob["distinct_hosts"], 1);
    assert!(
        a["first_seen"].as_str().expect("time").ends_with('Z'),
        "{a}"
    );

    // The same alert by id, by filters, and the API's errors.
    let id = a["id"].as_i64().expect("id");
    let (status, mut one) = get(&cp, &format!("/api/v1/alerts/{id}"));
    assert_eq!(
        one["history"],
        serde_json::json!([]),
        "nobody triaged it yet"
    );
    one.as_object_mut().expect("object").remove("history");
    assert_eq!((status, &one), (200, a));
    let src = &src;
    let (_, v) = get(
        &cp,
        &format!("/api/v1/alerts?type=port_scan&status=open&source={src}"),
    );
    assert_eq!(v["alerts"].as_array().expect("alerts").len(), 1);
    let (_, v) = get(&cp, "/api/v1/alerts?type=address_sweep");
    assert_eq!(v["alerts"], Value::Array(vec![]));
    for (path, want, code) in [
        ("/api/v1/alerts/999999", 404, "not_found"),
        ("/api/v1/alerts/abc", 400, "bad_request"),
        ("/api/v1/alerts?limit=0", 400, "bad_request"),
        ("/api/v1/alerts?status=gone", 400, "bad_request"),
        ("/api/v1/alerts?colour=red", 400, "bad_request"),
    ] {
        let (status, v) = get(&cp, path);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (want, Some(code)),
            "{path}: {v}"
        );
    }
    let log_file = cp.log.clone();
    cp.stop();
    let log = std::fs::read_to_string(log_file).expect("control plane log");
    assert!(
        log.lines()
            .any(|l| l.contains("alert") && l.contains("port_scan") && l.contains(src.as_str())),
        "the alert is logged: {log}"
    );
}

/// Failed SSH logins in the host's auth log, followed by the sensor: one `brute_force` alert
/// naming the source, raised to high severity when a login from it is then accepted.
#[test]
fn failed_logins_then_an_accepted_one_become_one_brute_force_alert() {
    let auth_dir = TempDir::new("detect-auth-log");
    let log = auth_dir.0.join("auth.log");
    std::fs::write(&log, "").expect("log");
    let Setup {
        lab,
        dir: _dir,
        cp,
        sensor,
    } = setup("detect-auth", &["--auth-log", log.to_str().expect("utf8")]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("append");
    use std::io::Write as _;
    let users = ["root", "admin", "oracle", "test", "ubuntu", "pi"];
    for i in 0..12 {
        writeln!(
            f,
            "2026-11-29T10:00:{i:02}+00:00 h sshd[9{i}]: Failed password for invalid user {} from {} port {} ssh2",
            users[i % users.len()],
            lab.ip_a,
            51000 + i
        )
        .expect("line");
    }
    writeln!(
        f,
        "2026-11-29T10:00:30+00:00 h sshd[99]: Accepted password for pi from {} port 51099 ssh2",
        lab.ip_a
    )
    .expect("line");
    drop(f);
    let mut alerts = wait_for_alerts(&cp);
    // The accepted login may come in the next batch.
    for _ in 0..25 {
        if alerts.first().is_some_and(|a| a["severity"] == "high") {
            break;
        }
        thread::sleep(Duration::from_millis(200));
        alerts = get(&cp, "/api/v1/alerts").1["alerts"]
            .as_array()
            .expect("alerts")
            .clone();
    }
    sensor.stop();
    cp.stop();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["type"], "brute_force");
    assert_eq!(a["source"], lab.ip_a.as_str());
    assert_eq!(a["targets"], serde_json::json!(["lab-b"]));
    assert_eq!(
        a["severity"], "high",
        "a login was accepted after the failures"
    );
    // The 10th failure opened it, the accepted login updated it.
    assert_eq!(a["observations_total"], 2, "{a}");
    let ob = &a["observations"];
    assert_eq!(ob[0]["kind"], "failed_logins");
    assert_eq!(ob[0]["failed"], 10);
    assert_eq!(ob[0]["service"], "ssh");
    assert_eq!(
        ob[0]["users"],
        serde_json::json!(["root", "admin", "oracle", "test", "ubuntu", "pi"])
    );
    assert_eq!(ob[1]["failed"], 12, "{a}");
    assert_eq!(ob[1]["accepted_after"], "pi");
    assert_eq!(
        a["first_seen"], "2026-11-29T10:00:09Z",
        "data time: the 10th failure"
    );
}

/// A host (b, with the sensor) exchanging UDP with a watchlisted address (a): one
/// `watchlist_hit` alert about b, from the sensor's flows.
#[test]
fn traffic_with_a_watchlisted_address_is_an_alert_about_the_host() {
    let Setup {
        lab,
        dir: _dir,
        cp,
        sensor,
    } = setup_watching("detect-watch", &[], |lab| vec![lab.ip_a.clone()]);
    let to: std::net::SocketAddr = format!("{}:5300", lab.ip_b).parse().expect("addr");
    let server = tests::in_netns(&lab.b, move || {
        let s = std::net::UdpSocket::bind(to).expect("bind");
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            let (_, from) = s.recv_from(&mut buf).expect("recv");
            s.send_to(b"pong", from).expect("reply");
        }
    });
    thread::sleep(Duration::from_millis(200));
    tests::in_netns(&lab.a, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            s.send_to(b"ping", to).expect("send");
            s.recv_from(&mut buf).expect("reply");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
    // Stopping flushes the conversation (it would otherwise wait for its idle timeout).
    sensor.stop();
    let alerts = wait_for_alerts(&cp);
    cp.stop();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["type"], "watchlist_hit");
    assert_eq!(a["source"], lab.ip_b.as_str(), "the host that talked to it");
    assert_eq!(a["targets"], serde_json::json!([lab.ip_a]));
    assert_eq!(a["sources"], serde_json::json!(["sensor:lab-b"]));
    let ob = &a["observations"][0];
    assert_eq!(ob["label"], "lab");
    assert_eq!(ob["direction"], "from");
    assert_eq!(ob["protocol"], 17);
    assert_eq!(ob["packets"], 10, "5 each way, one joined flow: {ob}");
}

/// Packets both ways through a lab interface so far.
/// An interface's packets (rx + tx) and the packets it dropped (rx + tx).
fn iface_packets(ns: &str, dev: &str) -> (u64, u64) {
    let j = tests::sh_in(ns, "ip", &["-s", "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&j).expect("ip -j");
    let n = |d: &str, k: &str| v[0]["stats64"][d][k].as_u64().expect(k);
    (
        n("rx", "packets") + n("tx", "packets"),
        n("rx", "dropped") + n("tx", "dropped"),
    )
}

/// masscan over all 65,535 ports of a host that serves 8080 to two clients: the target's
/// RSTs and its SYN-ACK, most of them to probes the kernel summed per source, are the
/// scanner's conversations. Through the whole pipeline, the target is no source of flows,
/// the scanner leads the top sources, the target's role stays "web" from port 8080 alone, and
/// every packet on the wire is in a flow or a probe record.
#[test]
fn masscan_of_every_port_leaves_the_targets_role_and_the_top_talkers_right() {
    let Setup {
        lab,
        dir: _dir,
        cp,
        sensor,
    } = setup_serving("direction", &["--maintenance-interval", "1"]);
    let before = iface_packets(&lab.b, &lab.vb);
    let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
    let (client2, scanner) = (format!("{prefix}.3"), format!("{prefix}.66"));
    for ip in [&client2, &scanner] {
        tests::sh_in(
            &lab.a,
            "ip",
            &["addr", "add", &format!("{ip}/24"), "dev", &lab.va],
        );
    }
    // The web server on 8080, and two clients' sessions to it.
    let addr: std::net::SocketAddr = format!("{}:8080", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = tests::in_netns(&lab.b, move || {
        use std::io::{Read as _, Write as _};
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for _ in 0..6 {
            let (mut s, _) = l.accept().expect("accept");
            // The whole request (one segment), so that closing sends a FIN, not a RST.
            let mut b = [0u8; 256];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok");
        }
    });
    rx.recv().expect("ready");
    let clients = [lab.ip_a.clone(), client2.clone()];
    tests::in_netns(&lab.a, move || {
        use std::io::{Read as _, Write as _};
        for _ in 0..3 {
            for c in &clients {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("socket");
                let local: std::net::SocketAddr = format!("{c}:0").parse().expect("local");
                s.bind(&local.into()).expect("bind the client's address");
                s.connect_timeout(&addr.into(), Duration::from_secs(5))
                    .expect("connect");
                let mut s: std::net::TcpStream = s.into();
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
                let mut b = Vec::new();
                s.read_to_end(&mut b).expect("read");
            }
        }
    })
    .join()
    .expect("clients");
    // masscan's own stack sends from the scanner's address; a's kernel resets the SYN-ACK.
    let link: Value = serde_json::from_str(&tests::sh_in(
        &lab.b,
        "ip",
        &["-j", "link", "show", &lab.vb],
    ))
    .expect("ip -j link");
    let mac = link[0]["address"].as_str().expect("b's MAC").to_string();
    tests::sh_in(
        &lab.a,
        "masscan",
        &[
            "--source-ip",
            &scanner,
            "--adapter",
            &lab.va,
            "--router-mac",
            &mac,
            "--wait",
            "2",
            "-p1-65535",
            "--rate",
            "20000",
            &lab.ip_b,
        ],
    );
    thread::sleep(Duration::from_secs(3));
    let out = sensor.stop();
    let after = iface_packets(&lab.b, &lab.vb);
    let (wire, dropped) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "masscan: {wire} packets on the wire, {} flow records, {} probe records, {} probes summed, {} non-IP",
        out.flows.len(),
        out.probes.len(),
        out.kernel("probes_aggregated"),
        out.kernel("unparsed_non_ip")
    );

    // Every packet on the wire is in a flow record or a probe record (or is not IP).
    let sum = |v: &[&Value], k: &str| -> u64 { v.iter().map(|f| f[k].as_u64().expect(k)).sum() };
    let all: Vec<&Value> = out.flows.iter().collect();
    let probes: Vec<&Value> = out.probes.iter().collect();
    let recorded = sum(&all, "packets") + sum(&all, "reverse_packets") + sum(&probes, "packets");
    // The lab's IPv6 sets itself up as the sensor starts (router solicitations, multicast
    // listener reports, neighbour discovery): those the programs saw before the interface's
    // first reading are recorded, not in its difference. Only they may exceed it; a packet
    // the veth dropped after the programs saw it is in its drop count.
    let v6: Vec<&Value> =
        out.flows_where(|f| f["src_ip"].as_str().is_some_and(|a| a.contains(':')));
    let settling = sum(&v6, "packets") + sum(&v6, "reverse_packets");
    let seen = recorded + out.kernel("unparsed_non_ip");
    assert!(
        (wire..=wire + dropped + settling).contains(&seen),
        "flows {} + reverse {} + probes {} + non-IP {} against the interface's {wire} \
         (and {dropped} dropped, {settling} packets of IPv6 flows)",
        sum(&all, "packets"),
        sum(&all, "reverse_packets"),
        sum(&probes, "packets"),
        out.kernel("unparsed_non_ip")
    );
    assert!(
        out.kernel("probes_aggregated") > 0,
        "the scan outran its flow slots: some probes were summed per source"
    );
    let from_target = out.flows_where(|f| f["src_ip"] == lab.ip_b.as_str());
    assert!(
        from_target.is_empty(),
        "{} flows started by the target, e.g. {:?}",
        from_target.len(),
        from_target.first()
    );
    let answered: std::collections::BTreeSet<u64> = out
        .flows_where(|f| f["src_ip"] == scanner.as_str() && f["reverse_packets"] != 0)
        .iter()
        .filter_map(|f| f["dst_port"].as_u64())
        .collect();
    assert_eq!(answered.len(), 65_535, "every port answered the scanner");

    // The control plane: the scanner leads the top sources, the target is not among them.
    let (status, top) = get(&cp, "/api/v1/top?by=packets&group=src_ip&limit=10");
    assert_eq!(status, 200, "{top}");
    let keys: Vec<&str> = top["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|r| r["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys.first(), Some(&scanner.as_str()), "{top}");
    assert!(!keys.contains(&lab.ip_b.as_str()), "{top}");
    // The target's entity (once the rollups are in): it serves 8080 to its clients and the
    // scanner, and uses nothing: no scanner's port as a "used" service.
    let mut e = Value::Null;
    for _ in 0..50 {
        let (status, v) = get(&cp, &format!("/api/v1/entities/{}", lab.ip_b));
        if status == 200 && v["flows"].as_u64().unwrap_or(0) >= 65_535 {
            e = v;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(e["role"], "web", "{e}");
    let ports = |k: &str| -> Vec<String> {
        e[k].as_array()
            .expect(k)
            .iter()
            .map(|p| p["port"].as_str().expect("port").to_string())
            .collect()
    };
    assert_eq!(ports("serves"), ["8080/tcp"], "{e}");
    assert_eq!(ports("uses"), Vec::<String>::new(), "{e}");
    let peers = e["peers_top"].as_array().expect("peers");
    assert!(
        peers.iter().all(|p| p["direction"] == "in"),
        "every peer started its conversations: {peers:?}"
    );
    // No flow in the store has the target as its source.
    let (_, flows) = get(&cp, &format!("/api/v1/flows?ip={}&limit=1000", lab.ip_b));
    let rows = flows["flows"].as_array().expect("flows");
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|f| f["dst_ip"] == lab.ip_b.as_str()),
        "{:?}",
        rows.iter().find(|f| f["src_ip"] == lab.ip_b.as_str())
    );
    assert!(
        rows.iter().all(|f| f["initiator_guessed"] == false),
        "{:?}",
        rows.iter().find(|f| f["initiator_guessed"] != false)
    );
    cp.stop();
}

/// Polls the alert of `kind` from `source` until `done` says it is complete (90 s at most).
fn wait_for_alert(
    cp: &ControlPlane,
    kind: &str,
    source: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..450 {
        let (status, v) = get(cp, &format!("/api/v1/alerts?type={kind}&source={source}"));
        assert_eq!(status, 200, "{v}");
        if let Some(a) = v["alerts"].as_array().and_then(|a| a.first()) {
            if done(a) {
                return a.clone();
            }
            last = a.clone();
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (_, all) = get(cp, "/api/v1/alerts");
    panic!("no complete {kind} alert from {source}: {last}; all alerts: {all}");
}

/// The alert's scan extent observation.
fn extent(a: &Value) -> Value {
    a["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .find(|o| o["kind"] == "scan_extent")
        .cloned()
        .unwrap_or(Value::Null)
}

/// An nmap SYN scan of 300 ports of a host that listens on 3 of them: the kernel's alert at
/// 20 ports grows to the whole scan (medium: 300 ports; exactly the 3 open ones found). A
/// benign client's session to an open port changes nothing; the scanner's own session with
/// data to a port it found open raises the alert to high, with the session as its follow-up.
#[test]
fn a_scan_alert_grows_to_the_whole_scan_and_escalates_at_its_follow_up() {
    let Setup {
        lab,
        dir: _dir,
        cp,
        sensor,
    } = setup("extent", &["--idle-timeout", "2"]);
    let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
    let client = format!("{prefix}.3");
    tests::sh_in(
        &lab.a,
        "ip",
        &["addr", "add", &format!("{client}/24"), "dev", &lab.va],
    );
    let ip_b = lab.ip_b.clone();
    let _servers: Vec<_> = [21u16, 80, 200]
        .into_iter()
        .map(|port| {
            let addr: std::net::SocketAddr = format!("{ip_b}:{port}").parse().expect("addr");
            let (tx, rx) = std::sync::mpsc::channel();
            let t = tests::in_netns(&lab.b, move || {
                use std::io::{Read as _, Write as _};
                let l = TcpListener::bind(addr).expect("bind");
                tx.send(()).expect("ready");
                // The scan's SYNs never reach accept; the two sessions do.
                for s in l.incoming().take(2) {
                    let mut s = s.expect("accept");
                    let mut b = [0u8; 256];
                    let _ = s.read(&mut b);
                    let _ = s.write_all(b"220 ok\r\n");
                }
            });
            rx.recv().expect("ready");
            t
        })
        .collect();
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["-p", "1-300"]);
    let scanner = lab.ip_a.clone();
    let a = wait_for_alert(&cp, "port_scan", &scanner, |a| {
        extent(a)["scan_over"] == true && extent(a)["distinct_ports"] == 300
    });
    let x = extent(&a);
    assert_eq!(a["severity"], "medium", "{a}");
    assert_eq!(
        x["open_found"],
        serde_json::json!([format!("{}: 21/tcp, 80/tcp, 200/tcp", lab.ip_b)]),
        "{x}"
    );
    assert_eq!(x["distinct_hosts"], 1);
    assert_eq!(x["port_ranges"]["tcp"], "1-300");
    assert_eq!(x["closed_total"], 297, "{x}");
    assert_eq!(a["targets_total"], 1, "{a}");
    let updates = x["update"].as_u64().expect("update");
    eprintln!("a 300-port scan: {updates} updates of its extent");
    assert!(updates <= 8, "{updates} updates of the extent");

    // Sessions with data to port 80: a benign client's, then the scanner's.
    let talk = |from: String| {
        let to: std::net::SocketAddr = format!("{}:80", lab.ip_b).parse().expect("addr");
        tests::in_netns(&lab.a, move || {
            use std::io::{Read as _, Write as _};
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let local: std::net::SocketAddr = format!("{from}:0").parse().expect("local");
            s.bind(&local.into()).expect("bind");
            s.connect_timeout(&to.into(), Duration::from_secs(5))
                .expect("connect");
            let mut s: std::net::TcpStream = s.into();
            s.write_all(b"USER anonymous\r\n").expect("write");
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b);
        })
        .join()
        .expect("session");
    };
    talk(client.clone());
    thread::sleep(Duration::from_secs(5));
    let (_, v) = get(&cp, &format!("/api/v1/alerts?source={client}"));
    assert_eq!(v["alerts"], serde_json::json!([]), "a benign client: {v}");
    let (_, v) = get(&cp, &format!("/api/v1/alerts/{}", a["id"]));
    assert_eq!(
        v["severity"], "medium",
        "nothing followed the scan yet: {v}"
    );
    talk(scanner.clone());
    let a = wait_for_alert(&cp, "port_scan", &scanner, |a| a["severity"] == "high");
    let follow: Vec<&Value> = a["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .filter(|o| o["kind"] == "follow_up")
        .collect();
    assert_eq!(follow.len(), 1, "{a}");
    assert_eq!(follow[0]["host"], lab.ip_b.as_str());
    assert_eq!(follow[0]["port"], 80);
    assert!(follow[0]["bytes"].as_u64().expect("bytes") > 0);
    sensor.stop();
    cp.stop();
}

/// A SYN sweep of port 443 over 40 hosts lists the 40 (each once), and a UDP scan of 100 ports
/// names the one UDP port that answered.
#[test]
fn a_sweep_lists_every_host_and_a_udp_scan_the_port_that_answered() {
    let Setup {
        lab,
        dir: _dir,
        cp,
        sensor,
    } = setup("sweep", &["--idle-timeout", "2"]);
    let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
    for h in 100..140 {
        let ip = format!("{prefix}.{h}/24");
        tests::sh_in(&lab.b, "ip", &["addr", "add", &ip, "dev", &lab.vb]);
    }
    tests::nmap_syn_scan(&lab.a, &format!("{prefix}.100-139"), &["-p", "443"]);
    let scanner = lab.ip_a.clone();
    let a = wait_for_alert(&cp, "address_sweep", &scanner, |a| {
        extent(a)["scan_over"] == true && extent(a)["distinct_hosts"] == 40
    });
    assert_eq!(a["targets_total"], 40, "{a}");
    let x = extent(&a);
    assert_eq!(x["port_ranges"]["tcp"], "443", "{x}");
    assert_eq!(x["open_total"], 0, "{x}");
    assert_eq!(x["closed_total"], 40, "{x}");

    // A DNS server on b answers; every other UDP port is closed.
    let dns: std::net::SocketAddr = format!("{}:53", lab.ip_b).parse().expect("addr");
    let _dns = tests::in_netns(&lab.b, move || {
        let s = std::net::UdpSocket::bind(dns).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut b = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            // A reply with the query's id: enough to be an answer on the wire.
            let _ = s.send_to(&b[..n.min(12)], from);
        }
    });
    tests::sh_in(
        &lab.a,
        "nmap",
        &[
            "-sU",
            "-n",
            "-Pn",
            "-T4",
            "--max-retries",
            "1",
            "-p",
            "1-100",
            &lab.ip_b,
        ],
    );
    // The kernel flagged the scanner for its sweep in this window: the port scan that follows
    // is known by its extent, and its alert tells the scanner's whole story.
    let a = wait_for_alert(&cp, "port_scan", &scanner, |a| {
        extent(a)["scan_over"] == true && extent(a)["port_ranges"]["udp"] == "1-100"
    });
    let x = extent(&a);
    assert_eq!(
        x["open_found"],
        serde_json::json!([format!("{}: 53/udp", lab.ip_b)]),
        "{x}"
    );
    assert_eq!(x["distinct_hosts"], 41, "the sweep's 40 and this host: {x}");
    assert_eq!(
        a["targets"],
        serde_json::json!([lab.ip_b]),
        "the host it scanned, alone"
    );
    assert!(
        x["closed_total"].as_u64().expect("closed") > 0,
        "ICMP port unreachables: {x}"
    );
    sensor.stop();
    cp.stop();
}
