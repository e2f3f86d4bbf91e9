//! `cargo xtask eval`: real scanners against the namespace lab, seen by a real sensor streaming
//! to a real control plane. Each case must give the right alert naming the right source (or, for
//! a benign control, no alert at all). Prints a matrix of case x detected x latency beside the
//! published behaviour of Zeek and Snort, writes it to target/eval/report.md, and exits non-zero
//! if a case fails.
//!
//! Each scan comes from its own address on the scanner's side of the lab (nmap -S), so that
//! every case is its own alert. Latency is from the start of the scan to the alert being served
//! by the REST API; it includes the sensor's 1-second export interval.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, export_flags, sh, sh_in, strs};

/// What a case expects.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Alert(&'static str),
    Nothing,
}

struct Case {
    name: &'static str,
    expect: Expect,
    /// Zeek's scan policy and Snort 3's port_scan, as published.
    zeek: &'static str,
    snort: &'static str,
    /// Runs the traffic from `src` (an address of the lab's side a).
    run: fn(&Lab, &str),
    /// `src` is on the allowlist (a sanctioned scanner).
    allowlisted: bool,
    /// Whether cloud flow logs alone are expected to show it (a failure there fails the
    /// evaluation; otherwise it is only reported).
    logs: bool,
    /// Addresses (hosts of the lab's /24) that `run` forges as decoys: none may get an alert.
    decoys: &'static [u8],
    /// The alert is about the target (`distributed_scan`), not about `src`.
    about_target: bool,
}

/// A slow scan replayed from real probes: nmap's pace (`gap_s` between probes) and the source
/// it is given.
struct SlowReplay {
    name: &'static str,
    gap_s: i64,
    host: u8,
    zeek: &'static str,
    snort: &'static str,
}

/// Probes of the replayed slow scans.
const SLOW_PROBES: usize = 30;

const SLOW_REPLAYS: [SlowReplay; 2] = [
    SlowReplay {
        name: "nmap -T1 pace (15 s between probes), 30 ports, replayed in the logs",
        gap_s: 15,
        host: 221,
        zeek: "yes (20 probes in its 5 min)",
        snort: "no (6 probes in its 90 s window)",
    },
    SlowReplay {
        name: "nmap -T0 pace (5 min between probes), 30 ports, replayed in the logs",
        gap_s: 300,
        host: 222,
        zeek: "no (1 probe in its 5 min)",
        snort: "no",
    },
];

/// Decoy addresses: nobody's, so the target's replies to them go nowhere.
const DECOY_HOSTS: [u8; 3] = [201, 202, 203];
/// The sources of the distributed scan, on the scanner's side.
const DISTRIBUTED_HOSTS: [u8; 6] = [211, 212, 213, 214, 215, 216];

fn lab_addr(lab: &Lab, host: u8) -> String {
    format!("{}.{host}", lab.ip_b.rsplit_once('.').expect("v4").0)
}

fn nmap(lab: &Lab, src: &str, args: &[&str]) {
    let mut a = vec![
        "-n",
        "-Pn",
        "-T4",
        "--max-retries",
        "1",
        "-S",
        src,
        "-e",
        &lab.va,
    ];
    a.extend_from_slice(args);
    sh_in(&lab.a, "nmap", &a);
}

/// masscan from `src` on the lab's side a. It has its own TCP/IP stack: it sends straight to b's
/// MAC (the "router" of a one-link lab) and waits 1 s for answers.
fn masscan(lab: &Lab, src: &str, args: &[&str]) {
    let link: Value =
        serde_json::from_str(&sh("ip", &["-n", &lab.b, "-j", "link", "show", &lab.vb]))
            .expect("ip -j link");
    let mac = link[0]["address"].as_str().expect("b's MAC").to_string();
    let mut a = vec![
        "--source-ip",
        src,
        "--adapter",
        &lab.va,
        "--router-mac",
        &mac,
        "--wait",
        "1",
    ];
    a.extend_from_slice(args);
    sh_in(&lab.a, "masscan", &a);
}

fn sweep_targets(lab: &Lab) -> String {
    let prefix = lab.ip_b.rsplit_once('.').expect("v4").0;
    format!("{prefix}.100-139")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "nmap SYN scan (-sS), 200 ports, 4 of them open",
            expect: Expect::Alert("port_scan"),
            zeek: "yes (SYN failures)",
            snort: "yes",
            // The 4 service ports listen on every address of side b.
            run: |lab, src| nmap(lab, src, &["-sS", "-p", "1-196,9100-9103", &lab.ip_b]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap FIN scan (-sF), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no (counts SYN only)",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sF", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap NULL scan (-sN), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sN", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap Xmas scan (-sX), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sX", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap ACK scan (-sA), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sA", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap UDP scan (-sU), 100 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| {
                nmap(
                    lab,
                    src,
                    &["-sU", "--max-retries", "0", "-p", "1-100", &lab.ip_b],
                )
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "hping3 SYN probes, 60 incrementing ports",
            expect: Expect::Alert("port_scan"),
            zeek: "yes",
            snort: "yes",
            run: |lab, src| {
                sh_in(
                    &lab.a,
                    "hping3",
                    &[
                        "-S", "-q", "-a", src, "-p", "++1", "-c", "60", "-i", "u2000", &lab.ip_b,
                    ],
                );
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "masscan SYN scan, 200 ports at 2,000 packets/s",
            expect: Expect::Alert("port_scan"),
            zeek: "yes (SYN failures)",
            snort: "yes",
            run: |lab, src| masscan(lab, src, &["-p1-200", "--rate", "2000", &lab.ip_b]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "masscan SYN sweep of port 443 over 40 hosts at 10,000 packets/s",
            expect: Expect::Alert("address_sweep"),
            zeek: "yes (25 hosts in 5 min)",
            snort: "yes",
            run: |lab, src| {
                let prefix = lab.ip_b.rsplit_once('.').expect("v4").0;
                let range = format!("{prefix}.100-{prefix}.139");
                masscan(lab, src, &["-p443", "--rate", "10000", &range])
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap SYN sweep of port 22 over 40 hosts",
            expect: Expect::Alert("address_sweep"),
            zeek: "yes (25 hosts in 5 min)",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sS", "-p", "22", &sweep_targets(lab)]),
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "nmap SYN scan with 3 decoys (-D), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "blames all 4 sources",
            snort: "yes (decoy portscan), source not singled out",
            run: |lab, src| {
                let decoys: Vec<String> = DECOY_HOSTS.iter().map(|h| lab_addr(lab, *h)).collect();
                let list = format!("{},ME", decoys.join(","));
                nmap(lab, src, &["-sS", "-D", &list, "-p", "1-200", &lab.ip_b])
            },
            allowlisted: false,
            logs: true,
            decoys: &DECOY_HOSTS,
            about_target: false,
        },
        Case {
            name: "distributed SYN scan: 6 sources, 10 ports each, one host",
            expect: Expect::Alert("distributed_scan"),
            zeek: "no (each source under 15 ports)",
            snort: "yes (distributed portscan)",
            run: |lab, _| {
                for (i, h) in DISTRIBUTED_HOSTS.iter().enumerate() {
                    let from = lab_addr(lab, *h);
                    let first = 2000 + i * 10;
                    let ports = format!("{first}-{}", first + 9);
                    nmap(lab, &from, &["-sS", "-p", &ports, &lab.ip_b]);
                }
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: true,
        },
        Case {
            name: "nmap SYN scan at -T2 (0.4 s between probes), 25 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "yes (SYN failures within 5 min)",
            snort: "yes (60 s window at medium sensitivity)",
            run: |lab, src| {
                // After nmap()'s -T4: the last timing flag wins.
                nmap(lab, src, &["-T2", "-sS", "-p", "3001-3025", &lab.ip_b])
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "benign: a client opening 200 connections to one web port",
            expect: Expect::Nothing,
            zeek: "no alert",
            snort: "no alert",
            run: |lab, src| {
                let to: SocketAddr = format!("{}:9100", lab.ip_b).parse().expect("addr");
                let from: SocketAddr = format!("{src}:0").parse().expect("addr");
                tests::in_netns(&lab.a, move || {
                    for _ in 0..200 {
                        let s = socket2_connect(from, to);
                        drop(s);
                    }
                })
                .join()
                .expect("client");
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "benign: a metrics scraper connecting to port 9100 of 40 hosts",
            expect: Expect::Nothing,
            zeek: "no alert",
            snort: "no alert",
            run: |lab, src| {
                let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
                let from: SocketAddr = format!("{src}:0").parse().expect("addr");
                tests::in_netns(&lab.a, move || {
                    for h in 100..140 {
                        let to: SocketAddr = format!("{prefix}.{h}:9100").parse().expect("addr");
                        drop(socket2_connect(from, to));
                    }
                })
                .join()
                .expect("scraper");
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "benign: a DNS resolver querying port 53 of 40 hosts (UDP, answered)",
            expect: Expect::Nothing,
            zeek: "no alert (TCP only)",
            snort: "no alert (counts negative responses)",
            run: |lab, src| {
                let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
                let from: SocketAddr = format!("{src}:0").parse().expect("addr");
                tests::in_netns(&lab.a, move || {
                    let s = UdpSocket::bind(from).expect("bind");
                    s.set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    let mut buf = [0u8; 512];
                    for h in 100..140 {
                        let to: SocketAddr = format!("{prefix}.{h}:53").parse().expect("addr");
                        s.send_to(&dns_query(h as u16), to).expect("query");
                        let (n, _) = s.recv_from(&mut buf).expect("an answer");
                        assert!(n >= 12, "a DNS header");
                    }
                })
                .join()
                .expect("resolver");
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "benign: a NAT gateway's connections to 4 ports of 40 hosts (answered)",
            expect: Expect::Nothing,
            zeek: "no alert (counts failures)",
            snort: "no alert (counts negative responses)",
            run: |lab, src| {
                let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
                let from: SocketAddr = format!("{src}:0").parse().expect("addr");
                tests::in_netns(&lab.a, move || {
                    for h in 100..140 {
                        for port in SERVICE_PORTS {
                            let to: SocketAddr =
                                format!("{prefix}.{h}:{port}").parse().expect("addr");
                            drop(socket2_connect(from, to));
                        }
                    }
                })
                .join()
                .expect("gateway");
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "benign: load-balancer health checks, 10 backends every 100 ms for 3 s",
            expect: Expect::Nothing,
            zeek: "no alert",
            snort: "no alert",
            run: |lab, src| {
                let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
                let from: SocketAddr = format!("{src}:0").parse().expect("addr");
                tests::in_netns(&lab.a, move || {
                    for _ in 0..30 {
                        let round = Instant::now();
                        for h in 100..110 {
                            let to: SocketAddr =
                                format!("{prefix}.{h}:9100").parse().expect("addr");
                            drop(socket2_connect(from, to));
                        }
                        thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
                    }
                })
                .join()
                .expect("health checks");
            },
            allowlisted: false,
            logs: true,
            decoys: &[],
            about_target: false,
        },
        Case {
            name: "benign: the sanctioned vulnerability scanner (allowlisted), SYN scan",
            expect: Expect::Nothing,
            zeek: "alert (no allowlist in the scan policy)",
            snort: "alert unless ignored by configuration",
            run: |lab, src| nmap(lab, src, &["-sS", "-p", "1-200", &lab.ip_b]),
            allowlisted: true,
            logs: true,
            decoys: &[],
            about_target: false,
        },
    ]
}

/// Ports that answer on every address of the lab's side b.
const SERVICE_PORTS: [u16; 4] = [9100, 9101, 9102, 9103];

/// A DNS query for `example.internal` A (RFC 1035 header and question).
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["example", "internal"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A TCP connection from a chosen local address (std cannot bind before connecting).
fn socket2_connect(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&from.into()).expect("bind");
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .expect("connect");
    s.into()
}

/// Every flow the control plane stored, oldest first, through the REST API's pages.
fn stored_flows(cp: &ControlPlane) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = "/api/v1/flows?limit=1000".to_string();
    loop {
        let (status, body) = cp.get(&path);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        out.extend(v["flows"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/flows?limit=1000&cursor={c}"),
            None => break,
        }
    }
    out.reverse();
    out
}

/// The sensor's flows as the clouds would log them: one record per direction that carried
/// packets (a cloud log has no joined conversation), every record accepted, as by a security
/// group or firewall rule that lets the lab's traffic in. AWS VPC Flow Logs lines in the
/// default fields and `tcp-flags` (a v3 custom format; AWS logs FIN, SYN, RST and SYN-ACK only)
/// and GCP VPC Flow Logs entries (Cloud Logging NDJSON, unsampled, no flags).
fn cloud_logs(flows: &[Value]) -> (String, String) {
    let mut aws = String::from(
        "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status tcp-flags\n",
    );
    let mut gcp = String::new();
    // The flags AWS logs for a side: its FIN, SYN and RST, a SYN from the answering side being
    // its SYN-ACK (18).
    let aws_flags = |flags: u64, answering: bool| {
        let f = flags & 0b111;
        if answering && f & 2 != 0 { f | 18 } else { f }
    };
    for (i, f) in flows.iter().enumerate() {
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
        let (start_ns, end_ns) = (n("start_ns"), n("end_ns"));
        let forward = (
            s("src_ip"),
            s("dst_ip"),
            n("src_port"),
            n("dst_port"),
            n("packets"),
            n("bytes"),
            aws_flags(n("tcp_flags"), false),
        );
        let reverse = (
            s("dst_ip"),
            s("src_ip"),
            n("dst_port"),
            n("src_port"),
            n("reverse_packets"),
            n("reverse_bytes"),
            aws_flags(n("reverse_tcp_flags"), true),
        );
        for (d, (src, dst, sport, dport, packets, bytes, flags)) in
            [forward, reverse].into_iter().enumerate()
        {
            if packets == 0 {
                continue;
            }
            let proto = n("protocol");
            writeln!(
                aws,
                "3 123456789012 eni-0a1b2c3d4e5f60718 {src} {dst} {sport} {dport} {proto} {packets} {bytes} {} {} ACCEPT OK {}",
                start_ns / 1_000_000_000,
                end_ns.div_ceil(1_000_000_000).max(start_ns / 1_000_000_000),
                if proto == 6 { flags.to_string() } else { "-".into() },
            )
            .ok();
            let entry = serde_json::json!({
                "insertId": format!("{i}-{d}"),
                "jsonPayload": {
                    "connection": {
                        "src_ip": src, "dest_ip": dst, "src_port": sport, "dest_port": dport,
                        "protocol": proto,
                    },
                    "bytes_sent": bytes.to_string(),
                    "packets_sent": packets.to_string(),
                    "start_time": f["start"],
                    "end_time": f["end"],
                    "reporter": "DEST",
                },
                "logName": "projects/picket-eval/logs/compute.googleapis.com%2Fvpc_flows",
                "resource": {"type": "gce_subnetwork", "labels": {
                    "project_id": "picket-eval", "subnetwork_name": "lab",
                    "location": "us-central1-a"}},
                "timestamp": f["end"],
            });
            writeln!(gcp, "{entry}").ok();
        }
    }
    (aws, gcp)
}

/// An alert's scan extent, as the report gives it: ": N ports, H hosts; open ..." (the last
/// `scan_extent` observation), or nothing.
fn extent_text(observations: &[Value]) -> String {
    let Some(x) = observations.iter().rfind(|o| o["kind"] == "scan_extent") else {
        return String::new();
    };
    let open: Vec<&str> = x["open_found"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let other = x["other_total"].as_u64().unwrap_or(0);
    format!(
        ": {} ports, {} hosts; {}",
        x["distinct_ports"],
        x["distinct_hosts"],
        match (open.is_empty(), other) {
            (false, _) => format!("open {}", open.join("; ")),
            (true, 0) => "none open".to_string(),
            // A log without TCP flags (GCP) tells that answers came, not which were open.
            (true, n) => format!("{n} answered (open or closed: not in the log)"),
        }
    )
}

/// Imports `text` as `provider`'s flow logs into a new store (the sanctioned scanner on its
/// allowlist) and returns its alerts: source -> [(type, severity, extent)].
fn import_logs(
    dir: &std::path::Path,
    provider: &str,
    text: &str,
    allowlisted: &[String],
) -> std::collections::HashMap<String, Vec<(String, String, String)>> {
    let data = dir.join(format!("logs-{provider}"));
    for src in allowlisted {
        let o = std::process::Command::new(tests::bin("picket-controlplane"))
            .args(["allowlist", "--data-dir"])
            .arg(&data)
            .envs(tests::servers::store_env(&data))
            .args(["add", src, "--label", "sanctioned scanner"])
            .output()
            .expect("allowlist add");
        assert!(o.status.success(), "{o:?}");
    }
    let file = dir.join(format!("{provider}.log"));
    std::fs::write(&file, text).expect("write the log");
    let o = std::process::Command::new(tests::bin("picket-controlplane"))
        .args(["import", provider, "--data-dir"])
        .arg(&data)
        .envs(tests::servers::store_env(&data))
        .args(["--sampling-rate", "1"])
        .arg(&file)
        .output()
        .expect("import");
    assert!(o.status.success(), "{o:?}");
    use controlplane::store::Alerts as _;
    let store = controlplane::store::SqliteStore::open(&data).expect("store");
    store
        .alerts(&controlplane::model::AlertQuery {
            limit: 1000,
            ..Default::default()
        })
        .expect("alerts")
        .into_iter()
        .fold(std::collections::HashMap::new(), |mut m, a| {
            m.entry(a.source).or_insert_with(Vec::new).push((
                a.kind,
                a.severity,
                extent_text(&a.observations),
            ));
            m
        })
}

fn alerts(cp: &ControlPlane) -> Vec<Value> {
    let (status, body) = cp.get("/api/v1/alerts?limit=1000");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["alerts"].as_array().cloned().unwrap_or_default()
}

fn main() {
    let lab = Lab::new();
    let dir = TempDir::new("eval");
    let data = dir.0.join("cp");
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "eval-b")).expect("key");
    let cp = ControlPlane::start(&lab.b, &data, "127.0.0.1:7443", &dir.0.join("cp.log"));
    let prefix = lab.ip_b.rsplit_once('.').expect("v4").0.to_string();
    let cases = cases();
    // Scanner addresses on a, sweep targets on b, and a web port answering on all of b's.
    for (i, case) in cases.iter().enumerate() {
        let src = format!("{prefix}.{}", 11 + i);
        sh_in(
            &lab.a,
            "ip",
            &["addr", "add", &format!("{src}/24"), "dev", &lab.va],
        );
        if case.allowlisted {
            let o = std::process::Command::new(tests::bin("picket-controlplane"))
                .args(["allowlist", "--data-dir"])
                .arg(&data)
                .envs(tests::servers::store_env(&data))
                .args(["add", &src, "--label", "sanctioned scanner"])
                .output()
                .expect("allowlist add");
            assert!(o.status.success(), "{o:?}");
        }
    }
    for h in 100..140 {
        let ip = format!("{prefix}.{h}/24");
        sh_in(&lab.b, "ip", &["addr", "add", &ip, "dev", &lab.vb]);
    }
    for h in DISTRIBUTED_HOSTS {
        let ip = format!("{prefix}.{h}/24");
        sh_in(&lab.a, "ip", &["addr", "add", &ip, "dev", &lab.va]);
    }
    for port in SERVICE_PORTS {
        let web = tests::in_netns(&lab.b, move || {
            TcpListener::bind(("0.0.0.0", port)).expect("bind")
        })
        .join()
        .expect("listener");
        thread::spawn(move || {
            for s in web.incoming() {
                drop(s);
            }
        });
    }
    // A resolver's upstreams: each of b's sweep addresses answers a query from its own address
    // (one socket each) with the query's header, flagged as a response.
    for h in 100..140 {
        let at = format!("{prefix}.{h}:53");
        let dns = tests::in_netns(&lab.b, move || UdpSocket::bind(&at).expect("bind"))
            .join()
            .expect("dns socket");
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                if n >= 12 {
                    buf[2] |= 0x80;
                    let _ = dns.send_to(&buf[..n], from);
                }
            }
        });
    }
    let flags = export_flags(&lab.vb, "http://127.0.0.1:7443", &key, &dir.0.join("spool"));
    let mut sensor = Sensor::start(&lab.b, &strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));

    let mut rows = Vec::new();
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        let src = format!("{prefix}.{}", 11 + i);
        let t0 = Instant::now();
        (case.run)(&lab, &src);
        let ran = t0.elapsed();
        // Wait for an alert about this source (5 s past the end of the traffic at most).
        let mut found: Option<(Value, Duration)> = None;
        while found.is_none() && t0.elapsed() < ran + Duration::from_secs(5) {
            let about = if case.about_target { &lab.ip_b } else { &src };
            if let Some(a) = alerts(&cp)
                .into_iter()
                .find(|a| a["source"] == about.as_str())
            {
                found = Some((a, t0.elapsed()));
            } else {
                thread::sleep(Duration::from_millis(100));
            }
        }
        let (ok, detected, latency) = match (&case.expect, &found) {
            (Expect::Alert(kind), Some((a, t))) => (
                a["type"] == *kind,
                format!(
                    "{} ({})",
                    a["type"].as_str().unwrap_or("?"),
                    a["severity"].as_str().unwrap_or("?")
                ),
                format!("{:.1} s", t.as_secs_f64()),
            ),
            (Expect::Alert(_), None) => (false, "nothing".into(), "-".into()),
            (Expect::Nothing, None) => {
                // Kernel fan-out events the control plane judged a busy client: what the
                // control exercised.
                let log = std::fs::read_to_string(dir.0.join("cp.log")).unwrap_or_default();
                let busy = log
                    .lines()
                    .filter(|l| {
                        l.contains("mostly answered")
                            && (l.contains(&format!("source=\"{src}\""))
                                || l.contains(&format!("source={src} ")))
                    })
                    .count();
                let why = match busy {
                    0 => "nothing (right)".into(),
                    n => format!("nothing (right; {n} kernel event(s) judged a busy client)"),
                };
                (true, why, "-".into())
            }
            (Expect::Nothing, Some((a, _))) => (
                false,
                format!("false alert: {}", a["type"].as_str().unwrap_or("?")),
                "-".into(),
            ),
        };
        // Decoys must not be blamed.
        let blamed: Vec<String> = alerts(&cp)
            .iter()
            .filter_map(|a| a["source"].as_str())
            .filter(|s| case.decoys.iter().any(|h| *s == lab_addr(&lab, *h)))
            .map(str::to_string)
            .collect();
        let (ok, detected) = if blamed.is_empty() {
            (ok, detected)
        } else {
            (
                false,
                format!("{detected}; decoys blamed: {}", blamed.join(", ")),
            )
        };
        if !ok {
            failed += 1;
        }
        println!(
            "{} {:<74} {detected:<50} {latency:>7}  (traffic {:.1} s)",
            if ok { "PASS" } else { "FAIL" },
            case.name,
            ran.as_secs_f64()
        );
        rows.push((case, ok, detected, latency));
    }
    // The alerts grow with their scans' conversations, which come an idle timeout after the
    // last probe: once every scan is over, what each alert became and the open ports it found.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(90)
        && alerts(&cp).iter().any(|a| {
            a["observations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "scan_extent" && o["scan_over"] != true)
        })
    {
        thread::sleep(Duration::from_millis(500));
    }
    let now = alerts(&cp);
    let grown: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let about = if case.about_target {
                lab.ip_b.clone()
            } else {
                format!("{prefix}.{}", 11 + i)
            };
            let Expect::Alert(kind) = case.expect else {
                return "-".into();
            };
            let Some(a) = now
                .iter()
                .find(|a| a["source"] == about.as_str() && a["type"] == kind)
            else {
                return "-".into();
            };
            let found = extent_text(a["observations"].as_array().map_or(&[], Vec::as_slice));
            format!(
                "{} ({}){found}",
                a["type"].as_str().unwrap_or("?"),
                a["severity"].as_str().unwrap_or("?")
            )
        })
        .collect();
    // The sensor flushes its flows as it stops; then the same traffic goes through each
    // cloud's flow logs alone, into stores of their own.
    sensor.stop();
    let flows = stored_flows(&cp);
    cp.stop();
    // Slow scans through replayed time: the first case's real nmap probes, re-timed to nmap's
    // T1 and T0 paces and given sources of their own, join the logs.
    let scanner = format!("{prefix}.11");
    let probes: Vec<&Value> = flows
        .iter()
        .filter(|f| f["src_ip"] == scanner.as_str() && f["protocol"] == 6)
        .take(SLOW_PROBES)
        .collect();
    assert_eq!(probes.len(), SLOW_PROBES, "the SYN scan's probes to replay");
    let mut replayed = flows.clone();
    for replay in SLOW_REPLAYS {
        let from = format!("{prefix}.{}", replay.host);
        let t0 = probes[0]["start_ns"].as_i64().expect("start_ns") + 3_600_000_000_000;
        for (k, p) in probes.iter().enumerate() {
            let t = t0 + k as i64 * replay.gap_s * 1_000_000_000;
            let mut f = (*p).clone();
            f["src_ip"] = Value::from(from.clone());
            f["start_ns"] = Value::from(t);
            f["end_ns"] = Value::from(t + 1_000_000);
            f["start"] = controlplane::util::time::rfc3339(t);
            f["end"] = controlplane::util::time::rfc3339(t + 1_000_000);
            replayed.push(f);
        }
    }
    let (aws, gcp) = cloud_logs(&replayed);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/eval");
    std::fs::create_dir_all(&out).expect("target/eval");
    std::fs::write(out.join("aws.log"), &aws).expect("aws.log");
    std::fs::write(out.join("gcp.ndjson"), &gcp).expect("gcp.ndjson");
    let allowlisted: Vec<String> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.allowlisted)
        .map(|(i, _)| format!("{prefix}.{}", 11 + i))
        .collect();
    let from_logs = [
        import_logs(&dir.0, "aws", &aws, &allowlisted),
        import_logs(&dir.0, "gcp", &gcp, &allowlisted),
    ];
    println!(
        "\nthe same traffic as {} AWS and {} GCP flow log records:",
        aws.lines().count() - 1,
        gcp.lines().count()
    );
    let mut logs_columns = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let src = if case.about_target {
            lab.ip_b.clone()
        } else {
            format!("{prefix}.{}", 11 + i)
        };
        let mut cols = Vec::new();
        for (provider, alerts) in ["AWS", "GCP"].iter().zip(&from_logs) {
            // The expected kind if it is among the alerts about `src`, else the first.
            let got = alerts.get(&src).and_then(|v| {
                v.iter()
                    .find(|(k, ..)| matches!(case.expect, Expect::Alert(e) if e == k))
                    .or(v.first())
            });
            let decoy_blamed = case
                .decoys
                .iter()
                .any(|h| alerts.contains_key(&lab_addr(&lab, *h)));
            let right = !decoy_blamed
                && match (case.expect, got) {
                    (Expect::Alert(k), Some((kind, ..))) => kind == k,
                    (Expect::Nothing, None) => true,
                    _ => false,
                };
            let text = match got {
                _ if decoy_blamed => format!(
                    "FAIL: a decoy blamed ({:?})",
                    case.decoys
                        .iter()
                        .filter_map(|h| alerts.get(&lab_addr(&lab, *h)))
                        .collect::<Vec<_>>()
                ),
                Some((kind, severity, extent)) if right => format!("{kind} ({severity}){extent}"),
                Some((kind, ..)) => format!("FAIL: {kind}"),
                None if right => "nothing (right)".into(),
                None if !case.logs => "nothing (one-way records)".into(),
                None => "FAIL: nothing".into(),
            };
            if !right && case.logs {
                failed += 1;
            }
            println!("  {provider} {:<74} {text}", case.name);
            cols.push(text);
        }
        logs_columns.push(cols);
    }

    let mut report = String::from(
        "| case | expected | Picket (sensor) | alert after | grown to (sensor) | Picket (AWS logs alone) | Picket (GCP logs alone) | Zeek (published) | Snort 3 (published) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (((case, ok, detected, latency), logs), grown) in rows.iter().zip(&logs_columns).zip(&grown)
    {
        let expected = match case.expect {
            Expect::Alert(k) => k,
            Expect::Nothing => "no alert",
        };
        writeln!(
            report,
            "| {} | {expected} | {}{detected} | {latency} | {grown} | {} | {} | {} | {} |",
            case.name,
            if *ok { "" } else { "FAIL: " },
            logs[0],
            logs[1],
            case.zeek,
            case.snort
        )
        .ok();
    }
    for replay in SLOW_REPLAYS {
        let from = format!("{prefix}.{}", replay.host);
        let mut cols = Vec::new();
        for (provider, alerts) in ["AWS", "GCP"].iter().zip(&from_logs) {
            let got = alerts
                .get(&from)
                .and_then(|v| v.iter().find(|(k, ..)| k == "port_scan"));
            let text = match got {
                Some((kind, severity, extent)) => format!("{kind} ({severity}){extent}"),
                None => {
                    failed += 1;
                    "FAIL: nothing".to_string()
                }
            };
            println!("  {provider} {:<74} {text}", replay.name);
            cols.push(text);
        }
        writeln!(
            report,
            "| {} | port_scan | (time replayed: logs only) | - | - | {} | {} | {} | {} |",
            replay.name, cols[0], cols[1], replay.zeek, replay.snort
        )
        .ok();
    }
    std::fs::write(out.join("report.md"), &report).expect("report");
    println!("\n{report}\nreport written to target/eval/report.md");
    drop(lab);
    if failed > 0 {
        eprintln!("{failed} case(s) failed");
        std::process::exit(1);
    }
}
