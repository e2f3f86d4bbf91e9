//! `cargo xtask demo`: Picket working on a fresh machine. Builds a lab of two network namespaces
//! joined by a veth, runs the control plane on its embedded store and the real sensor on the
//! server side, sends benign traffic and then a real nmap SYN scan from the client side, shows
//! the flows and the scan event, imports sample AWS, GCP and Azure flow logs, shows what the
//! REST API answers, shows the scan's alert delivered to a local webhook receiver, prints the
//! dashboard's address and credentials, and tears everything down. With `--keep` it stays up
//! until Enter, with the dashboard forwarded to 127.0.0.1:8080 on this machine.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, receivers::HttpReceiver, sh_in};

/// Forwards connections to `listen` on this machine to `to` inside namespace `ns` (the
/// dashboard, for a browser here). Loopback at both ends.
fn forward(listen: &str, ns: &str, to: &str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(listen)?;
    let addr = l.local_addr()?;
    let (ns, to) = (ns.to_string(), to.to_string());
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(down) = c else { return };
            let (ns, to) = (ns.clone(), to.clone());
            thread::spawn(move || {
                let Ok(Ok(up)) = tests::in_netns(&ns, move || TcpStream::connect(to)).join() else {
                    return;
                };
                let (mut d2, mut u2) = (
                    down.try_clone().expect("clone"),
                    up.try_clone().expect("clone"),
                );
                let (mut down, mut up) = (down, up);
                let t = thread::spawn(move || {
                    let _ = std::io::copy(&mut d2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut up, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    Ok(addr)
}

fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    let lab = Lab::new();
    println!("== Picket demo ==");
    println!(
        "lab: namespace {} ({}) --veth-- namespace {} ({})",
        lab.a, lab.ip_a, lab.b, lab.ip_b
    );
    let dir = TempDir::new("demo");
    let data = dir.0.join("controlplane");
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "demo-b")).expect("key");
    // A webhook receiver in the lab, and a notifier that signs what it sends there.
    let hook = HttpReceiver::start(&lab.b, &[]);
    let secret = dir.0.join("webhook.secret");
    std::fs::write(&secret, "demo-secret\n").expect("secret");
    let o = std::process::Command::new(tests::bin("picket-controlplane"))
        .args(["notifiers", "--data-dir"])
        .arg(&data)
        .envs(tests::servers::store_env(&data))
        .args([
            "add",
            "demo-webhook",
            "webhook",
            "--url",
            &hook.url("/hooks/picket"),
        ])
        .arg("--secret-file")
        .arg(&secret)
        .output()
        .expect("notifiers add");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    println!("notifier: {}", String::from_utf8_lossy(&o.stdout).trim());
    // The sample cloud logs are years old: keep them (retention counts from a flow's own time).
    let cp = ControlPlane::start_with(
        &lab.b,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &["--retention-raw-days", "36500"],
    );
    println!(
        "control plane: picket-controlplane serve --data-dir {} (gRPC 127.0.0.1:7443, REST 127.0.0.1:8080, in {})",
        data.display(),
        lab.b
    );
    println!(
        "sensor: picket-sensor --iface {} --controlplane http://127.0.0.1:7443 --stdout   (XDP on ingress, tc on egress, in {})\n",
        lab.vb, lab.b
    );
    let spool = dir.0.join("spool");
    let sensor = Sensor::start(
        &lab.b,
        &[
            "--iface",
            &lab.vb,
            "--export-interval",
            "2",
            "--controlplane",
            "http://127.0.0.1:7443",
            "--sensor-key-file",
            key.to_str().expect("utf8"),
            "--spool-dir",
            spool.to_str().expect("utf8"),
            "--metrics-listen",
            "off",
        ],
    );

    // A small service on the server: answers each request with 2 KB.
    let web: SocketAddr = format!("{}:8080", lab.ip_b).parse().expect("addr");
    let dns: SocketAddr = format!("{}:53", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = tests::in_netns(&lab.b, move || {
        let l = TcpListener::bind(web).expect("bind web");
        let u = UdpSocket::bind(dns).expect("bind dns");
        tx.send(()).expect("ready");
        thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok((n, from)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..n], from);
            }
        });
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut b = [0u8; 256];
            let _ = s.read(&mut b);
            let _ = s.write_all(&[b'x'; 2048]);
        }
    });
    rx.recv().expect("server ready");

    println!(
        "1. benign traffic from {}: 3 pings, 20 HTTP-like requests, 5 DNS-like queries",
        lab.ip_a
    );
    sh_in(&lab.a, "ping", &["-c", "3", "-i", "0.2", "-q", &lab.ip_b]);
    tests::in_netns(&lab.a, move || {
        for _ in 0..20 {
            let mut s = TcpStream::connect_timeout(&web, Duration::from_secs(3)).expect("connect");
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
            let mut r = Vec::new();
            let _ = s.read_to_end(&mut r);
        }
        let u = UdpSocket::bind("0.0.0.0:0").expect("udp");
        u.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut b = [0u8; 64];
        for _ in 0..5 {
            u.send_to(b"query", dns).expect("send");
            let _ = u.recv_from(&mut b);
        }
    })
    .join()
    .expect("client");
    thread::sleep(Duration::from_millis(2500));

    println!(
        "2. nmap SYN scan from {} of 1000 ports of {}",
        lab.ip_a, lab.ip_b
    );
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["--top-ports", "1000"]);
    thread::sleep(Duration::from_millis(500));
    let out = sensor.stop();

    let mut flows: Vec<&Value> = out.flows.iter().collect();
    flows.sort_by_key(|f| {
        std::cmp::Reverse(
            f["bytes"].as_u64().unwrap_or(0) + f["reverse_bytes"].as_u64().unwrap_or(0),
        )
    });
    let proto = |p: &Value| match p.as_u64() {
        Some(1) => "icmp".to_string(),
        Some(6) => "tcp".to_string(),
        Some(17) => "udp".to_string(),
        Some(58) => "icmp6".to_string(),
        other => format!("{other:?}"),
    };
    println!(
        "\n== flow records ({} conversations; the 12 largest) ==",
        flows.len()
    );
    println!(
        "{:<22} {:<22} {:<6} {:>8} {:>9} {:>8} {:>9}",
        "src (initiator)", "dst", "proto", "packets", "bytes", "rev pkts", "rev bytes"
    );
    for f in flows.iter().take(12) {
        println!(
            "{:<22} {:<22} {:<6} {:>8} {:>9} {:>8} {:>9}",
            format!("{}:{}", f["src_ip"].as_str().unwrap_or("?"), f["src_port"]),
            format!("{}:{}", f["dst_ip"].as_str().unwrap_or("?"), f["dst_port"]),
            proto(&f["protocol"]),
            f["packets"].as_u64().unwrap_or(0),
            f["bytes"].as_u64().unwrap_or(0),
            f["reverse_packets"].as_u64().unwrap_or(0),
            f["reverse_bytes"].as_u64().unwrap_or(0)
        );
    }
    let probes = flows
        .iter()
        .filter(|f| {
            f["reverse_bytes"].as_u64() == Some(40 * f["reverse_packets"].as_u64().unwrap_or(0))
                && f["protocol"] == 6
                && f["packets"].as_u64() <= Some(2)
        })
        .count();
    println!(
        "... {} more; about {probes} of them are the scan's probes answered by a RST",
        flows.len().saturating_sub(12)
    );

    println!("\n== scan events ==");
    for s in &out.scans {
        println!(
            "{} crossed the threshold at {} distinct ports on {} host(s), mostly {} probes, between {} and {}",
            s["src_ip"].as_str().unwrap_or("?"),
            s["distinct_ports"],
            s["distinct_hosts"],
            s["probe"].as_str().unwrap_or("?"),
            s["start"].as_str().unwrap_or("?"),
            s["end"].as_str().unwrap_or("?")
        );
        println!("  {s}");
    }
    if out.scans.is_empty() {
        println!("(none: unexpected, the scan should have been flagged)");
    }
    println!("\n== kernel counters (nothing lost without a counter) ==");
    for k in [
        "packets_seen",
        "packets_parsed",
        "unparsed_non_ip",
        "flow_insert_failed",
        "scan_events",
        "scan_events_dropped",
        "flow_entries_evicted_or_pending",
    ] {
        println!("{k:<32} {}", out.kernel(k));
    }

    println!("\n== cloud flow logs (samples in deploy/samples) ==");
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples");
    for (provider, file) in [
        ("aws", "aws-vpc-flow-logs.log"),
        ("gcp", "gcp-vpc-flow-logs.json"),
        ("azure", "azure-nsg-flow-log.json"),
        ("azure", "azure-vnet-flow-log.json"),
    ] {
        let path = samples.join(file);
        let o = ControlPlane::import(&data, [provider.as_ref(), path.as_os_str()], None);
        println!(
            "picket-controlplane import {provider} {file}\n  {}",
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }

    println!("\n== REST API (http://127.0.0.1:8080 in {}) ==", lab.b);
    let api = |path: &str| -> Value {
        let (_, body) = cp.get(path);
        serde_json::from_str(&body).unwrap_or(Value::Null)
    };
    for s in api("/api/v1/sensors")["sensors"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "GET /api/v1/sensors: {} is {}, version {}, kernel {}",
            s["name"].as_str().unwrap_or("?"),
            s["health"].as_str().unwrap_or("?"),
            s["version"].as_str().unwrap_or("?"),
            s["kernel"].as_str().unwrap_or("?")
        );
    }
    for source in ["sensor", "aws", "gcp", "azure"] {
        let v = api(&format!("/api/v1/flows?source={source}&limit=1000"));
        let n = v["flows"].as_array().map_or(0, Vec::len);
        let more = if v["next_cursor"].is_null() { "" } else { "+" };
        println!("GET /api/v1/flows?source={source}: {n}{more} flows");
    }
    let gaps = api("/api/v1/coverage?since=0");
    let ips: Vec<&str> = gaps["gaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["ip"].as_str())
        .collect();
    println!(
        "GET /api/v1/coverage: {} internal addresses in cloud logs that no sensor watches: {}",
        ips.len(),
        ips.join(", ")
    );
    let alerts = api("/api/v1/alerts");
    let alerts = alerts["alerts"].as_array().cloned().unwrap_or_default();
    for a in &alerts {
        println!(
            "GET /api/v1/alerts: #{} {} {} from {} against {}, {} observation(s), seen by {}",
            a["id"],
            a["severity"].as_str().unwrap_or("?"),
            a["type"].as_str().unwrap_or("?"),
            a["source"].as_str().unwrap_or("?"),
            a["targets"],
            a["observations_total"],
            a["sources"]
        );
    }

    println!("\n== notifications ==");
    let delivered = tests::receivers::wait(Duration::from_secs(15), || {
        hook.requests()
            .into_iter()
            .find(|r| r.json()["alert"]["type"] == "port_scan")
    });
    match &delivered {
        Some(r) => {
            let v = r.json();
            let signed = r.header("x-picket-signature-256")
                == controlplane::notify::signature("demo-secret", &r.body);
            println!(
                "webhook receiver: {} {} {} #{} {} from {} (signature {})",
                r.method,
                r.path,
                v["event"].as_str().unwrap_or("?"),
                v["alert"]["id"],
                v["alert"]["type"].as_str().unwrap_or("?"),
                v["alert"]["source"].as_str().unwrap_or("?"),
                if signed { "verified" } else { "WRONG" }
            );
        }
        None => println!("webhook receiver: nothing arrived (unexpected)"),
    }
    println!(
        "({} messages so far: one per new alert, not one per observation)",
        hook.requests().len()
    );

    println!("\n== dashboard ==");
    let password = cp.admin_password();
    if keep {
        match forward("127.0.0.1:8080", &lab.b, "127.0.0.1:8080")
            .or_else(|_| forward("127.0.0.1:0", &lab.b, "127.0.0.1:8080"))
        {
            Ok(addr) => println!("open http://{addr}/ and log in as admin, password {password}"),
            Err(e) => println!("cannot forward the dashboard to this machine: {e}"),
        }
        println!("press Enter to tear the lab down");
        let _ = std::io::stdin().read_line(&mut String::new());
    } else {
        println!(
            "http://127.0.0.1:8080/ in {}: user admin, password {password} (printed once by the \
             first start). `cargo xtask demo --keep` keeps the lab up and forwards the dashboard \
             to 127.0.0.1:8080 on this machine.",
            lab.b
        );
    }
    cp.stop();
    drop(lab);
    println!("\nlab torn down; the sensor detached on SIGINT and the control plane stopped.");
    // The scan is one port_scan alert; the samples' internal addresses that no sensor watches
    // are sensor_coverage_gap alerts beside it.
    let scans = alerts.iter().filter(|a| a["type"] == "port_scan").count();
    if out.scans.len() != 1 || scans != 1 || delivered.is_none() {
        eprintln!(
            "expected one scan event, one port_scan alert and its webhook message, got {}, \
             {scans} and {}",
            out.scans.len(),
            if delivered.is_some() { "one" } else { "none" }
        );
        std::process::exit(1);
    }
}
