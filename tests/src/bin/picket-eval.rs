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
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, export_flags, sh_in, strs};

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

fn sweep_targets(lab: &Lab) -> String {
    let prefix = lab.ip_b.rsplit_once('.').expect("v4").0;
    format!("{prefix}.100-139")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "nmap SYN scan (-sS), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "yes (SYN failures)",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sS", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
        },
        Case {
            name: "nmap FIN scan (-sF), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no (counts SYN only)",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sF", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
        },
        Case {
            name: "nmap NULL scan (-sN), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sN", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
        },
        Case {
            name: "nmap Xmas scan (-sX), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sX", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
        },
        Case {
            name: "nmap ACK scan (-sA), 200 ports",
            expect: Expect::Alert("port_scan"),
            zeek: "no",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sA", "-p", "1-200", &lab.ip_b]),
            allowlisted: false,
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
        },
        Case {
            name: "nmap SYN sweep of port 22 over 40 hosts",
            expect: Expect::Alert("address_sweep"),
            zeek: "yes (25 hosts in 5 min)",
            snort: "yes",
            run: |lab, src| nmap(lab, src, &["-sS", "-p", "22", &sweep_targets(lab)]),
            allowlisted: false,
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
        },
        Case {
            name: "benign: the sanctioned vulnerability scanner (allowlisted), SYN scan",
            expect: Expect::Nothing,
            zeek: "alert (no allowlist in the scan policy)",
            snort: "alert unless ignored by configuration",
            run: |lab, src| nmap(lab, src, &["-sS", "-p", "1-200", &lab.ip_b]),
            allowlisted: true,
        },
    ]
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
    let web = tests::in_netns(&lab.b, || TcpListener::bind("0.0.0.0:9100").expect("bind"))
        .join()
        .expect("listener");
    let accept = thread::spawn(move || {
        for s in web.incoming() {
            drop(s);
        }
    });
    drop(accept);
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
            if let Some(a) = alerts(&cp)
                .into_iter()
                .find(|a| a["source"] == src.as_str())
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
            (Expect::Nothing, None) => (true, "nothing (right)".into(), "-".into()),
            (Expect::Nothing, Some((a, _))) => (
                false,
                format!("false alert: {}", a["type"].as_str().unwrap_or("?")),
                "-".into(),
            ),
        };
        if !ok {
            failed += 1;
        }
        println!(
            "{} {:<58} {detected:<28} {latency:>7}  (traffic {:.1} s)",
            if ok { "PASS" } else { "FAIL" },
            case.name,
            ran.as_secs_f64()
        );
        rows.push((case, ok, detected, latency));
    }
    sensor.stop();
    cp.stop();

    let mut report = String::from(
        "| case | expected | Picket | alert after | Zeek (published) | Snort 3 (published) |\n|---|---|---|---|---|---|\n",
    );
    for (case, ok, detected, latency) in &rows {
        let expected = match case.expect {
            Expect::Alert(k) => k,
            Expect::Nothing => "no alert",
        };
        writeln!(
            report,
            "| {} | {expected} | {}{detected} | {latency} | {} | {} |",
            case.name,
            if *ok { "" } else { "FAIL: " },
            case.zeek,
            case.snort
        )
        .ok();
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/eval");
    std::fs::create_dir_all(&out).expect("target/eval");
    std::fs::write(out.join("report.md"), &report).expect("report");
    println!("\n{report}\nreport written to target/eval/report.md");
    drop(lab);
    if failed > 0 {
        eprintln!("{failed} case(s) failed");
        std::process::exit(1);
    }
}
