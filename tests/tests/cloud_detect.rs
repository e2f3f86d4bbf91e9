//! Detection from cloud flow logs alone, through `picket-controlplane import`: scans, sweeps,
//! slow scans, the watchlist, the allowlist, sensitivity, the baselines (countries, exfiltration)
//! and reject storms, each from records written in the providers' documented formats.

use std::{
    path::Path,
    process::{Command, Output},
};

use tests::TempDir;

mod common;
use common::{alert_json, alerts, import, summary, the_alert};

/// AWS v2 records of 198.51.100.7 probing `ports` ports of 10.0.0.5 (one a second from `t0`),
/// then port 3389 of `hosts` hosts of 10.0.1.0/24, every probe rejected.
fn aws_scan(t0: u64, ports: u64, hosts: u64) -> String {
    let mut log = String::new();
    for p in 1..=ports {
        log += &format!(
            "2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 61000 {p} 6 1 44 {} {} REJECT OK\n",
            t0 + p,
            t0 + p + 1
        );
    }
    for h in 1..=hosts {
        log += &format!(
            "2 123456789010 eni-0a2 198.51.100.7 10.0.1.{h} 61001 3389 6 1 44 {} {} REJECT OK\n",
            t0 + 100 + h,
            t0 + 101 + h
        );
    }
    log
}

/// Scans seen only in AWS flow logs: rejected probes from one source to 100 ports of one host
/// (a port scan) and to port 3389 of 40 hosts (a sweep), among a busy web server's accepted
/// connections from 300 clients (no alert). The import stores the flows and raises one alert of
/// each kind, naming the scanner; importing more of the same scan updates those alerts.
#[test]
fn aws_records_alone_raise_port_scan_and_sweep_alerts_and_benign_traffic_none() {
    let dir = TempDir::new("aws-scan");
    let data = dir.0.join("data");
    let t0 = 1_795_860_000u64;
    let mut log = String::from(
        "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n",
    );
    log += &aws_scan(t0, 100, 40);
    for c in 1..=300u64 {
        log += &format!(
            "2 123456789010 eni-0a3 203.0.113.{} 10.0.0.80 {} 443 6 12 4800 {t0} {} ACCEPT OK\n",
            c % 250 + 1,
            20000 + c,
            t0 + 60
        );
    }
    let f = dir.0.join("scan.log");
    std::fs::write(&f, &log).expect("write");
    let out = summary(&import(&data, &["aws", f.to_str().expect("utf8")], None));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "aws: 1 file(s): read 440, stored 440, rejected 0, skipped 0 (NODATA: no traffic), SKIPDATA 0 (flows the provider dropped from its log)",
            // 100 ports: medium, once the alert grew with the scan's extent.
            "alert #1: medium port_scan from 198.51.100.7 against 10.0.0.5",
            // A sweep's targets are every host the scanner reached, the port-scanned one too.
            &format!(
                "alert #2: low address_sweep from 198.51.100.7 against 10.0.0.5, {}",
                (1..=40)
                    .map(|h| format!("10.0.1.{h}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ]
    );
    let rows: Vec<(String, String, String, i64)> = alerts(&data)
        .into_iter()
        .map(|a| (a.kind, a.source, a.severity, a.first_seen))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "port_scan".to_string(),
                "198.51.100.7".to_string(),
                "medium".to_string(),
                // The 4th failed first contact (the sequential test) ended at t0 + 5: data
                // time.
                (t0 as i64 + 5) * 1_000_000_000
            ),
            (
                "address_sweep".to_string(),
                "198.51.100.7".to_string(),
                "low".to_string(),
                (t0 as i64 + 126) * 1_000_000_000
            ),
        ]
    );
    let body = alert_json(&data, 1);
    assert_eq!(body["sources"], serde_json::json!(["aws:123456789010"]));
    // The sequential test at the 4th failed port, then the fan-out at the 15th and the 30th
    // and the 60th, then the scan's whole extent at the end of the file: one alert.
    let kinds: Vec<(&str, Option<u64>)> = body["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().expect("kind"),
                o["distinct_ports"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("sequential_test", None),
            ("flow_log_fanout", Some(15)),
            ("flow_log_fanout", Some(30)),
            ("flow_log_fanout", Some(60)),
            ("scan_extent", Some(101)),
        ]
    );
    assert_eq!(body["observations"][1]["interface"], "eni-0a1");
    // v2 records carry no TCP flags: every probe was rejected, so silent.
    let x = &body["observations"][4];
    assert_eq!(x["seen_by"], serde_json::json!(["aws:123456789010"]));
    assert_eq!(x["port_ranges"]["tcp"], "1-100, 3389");
    assert_eq!(
        (
            &x["most_ports_on_a_host"],
            &x["distinct_hosts"],
            &x["packets"]
        ),
        (&100.into(), &41.into(), &140.into())
    );
    assert_eq!(
        (&x["open_total"], &x["closed_total"], &x["silent_total"]),
        (&0.into(), &0.into(), &140.into())
    );
    assert_eq!(x["open_found"], serde_json::json!([]));
    assert_eq!(x["scan_over"], true);
    assert_eq!(x["first_probe"], "2026-11-28T10:00:01Z", "t0 + 1");
    assert_eq!(body["targets_total"], 1);
    assert_eq!(the_alert(&data, "address_sweep")["targets_total"], 41);
}

/// The same scan in GCP VPC Flow Logs, which carry neither action nor TCP flags, sampled at
/// 0.5: the scanned VM reports single header-only packets to 30 ports (a probe answered by at
/// most a RST). A web server's clients, and a health checker completing handshakes on port 80
/// of 30 VMs, raise nothing.
#[test]
fn gcp_records_alone_raise_a_port_scan_alert() {
    let entry = |src: &str, dst: &str, port: u16, packets: u32, bytes: u32, reporter: &str| {
        format!(
            r#"{{"jsonPayload":{{"bytes_sent":"{bytes}","packets_sent":"{packets}","connection":{{"src_ip":"{src}","src_port":61000,"dest_ip":"{dst}","dest_port":{port},"protocol":6}},"start_time":"2026-11-29T10:00:00Z","end_time":"2026-11-29T10:00:05Z","reporter":"{reporter}","dest_instance":{{"project_id":"p-7","region":"europe-west1","vm_name":"vm-5","zone":"europe-west1-b"}}}},"logName":"projects/p-7/logs/compute.googleapis.com%2Fvpc_flows"}}"#
        )
    };
    let mut log = String::new();
    for p in 1..=30 {
        log += &entry("198.51.100.7", "10.128.0.5", p, 1, 44, "DEST");
        log.push('\n');
    }
    for c in 1..=40 {
        log += &entry(
            &format!("203.0.113.{c}"),
            "10.128.0.80",
            443,
            12,
            5200,
            "DEST",
        );
        log.push('\n');
    }
    for h in 1..=30 {
        log += &entry("10.128.0.250", &format!("10.128.1.{h}"), 80, 4, 200, "SRC");
        log.push('\n');
    }
    let dir = TempDir::new("gcp-scan");
    let data = dir.0.join("data");
    let out = summary(&import(
        &data,
        &["gcp", "--sampling-rate", "0.5", "-"],
        Some(&log),
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "gcp: 1 file(s): read 100, stored 100, rejected 0",
            "alert #1: low port_scan from 198.51.100.7 against 10.128.0.5",
        ]
    );
    let body = alert_json(&data, 1);
    assert_eq!(body["sources"], serde_json::json!(["gcp:p-7"]));
    // The sequential test (4 failed first contacts) and the fan-out: 15 ports at 0.5, so the
    // 8th sampled one crosses, and again at 16. All records end at the same second.
    let obs = body["observations"].as_array().expect("observations");
    let of = |kind: &str| obs.iter().find(|o| o["kind"] == kind).expect(kind);
    assert_eq!(obs.len(), 4, "{obs:?}");
    assert_eq!(
        of("sequential_test")["failed_first_contacts"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    assert_eq!(of("flow_log_fanout")["distinct_ports"], 8);
    assert_eq!(of("flow_log_fanout")["sampling_rate"], 0.5);
    // The extent counts the records the sampled log kept (a lower bound, and said so). GCP
    // records carry no flags, and no record came back: silent.
    let x = of("scan_extent");
    assert_eq!(
        (&x["distinct_ports"], &x["silent_total"]),
        (&30.into(), &30.into())
    );
    assert_eq!(x["sampling_rate"], 0.5);
    assert_eq!(x["seen_by"], serde_json::json!(["gcp:p-7"]));
}

/// AWS records with TCP flags (format v3+) tell how each probe was answered: a SYN-ACK back is
/// an open port, a RST a closed one. A SYN scan of 200 ports of 10.0.0.5 (22, 80 and 180
/// open) gives a medium alert that names the open ports. An hour later, in another file and
/// another run, the scanner's session to port 22 makes it high, with a `follow_up`; its
/// session to a closed port, and a benign client's session to 22, add nothing.
#[test]
fn aws_records_with_tcp_flags_tell_the_open_ports_and_the_follow_up() {
    let dir = TempDir::new("aws-open");
    let data = dir.0.join("data");
    let t0 = 1_795_860_000u64;
    let header = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status tcp-flags\n";
    #[allow(clippy::too_many_arguments)]
    fn rec(
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        pk: u32,
        by: u32,
        t: u64,
        flags: u8,
    ) -> String {
        format!(
            "3 123456789010 eni-0a1 {src} {dst} {sport} {dport} 6 {pk} {by} {t} {} ACCEPT OK {flags}\n",
            t + 60
        )
    }
    let (scanner, host) = ("198.51.100.7", "10.0.0.5");
    let mut scan = header.to_string();
    for p in 1..=200u16 {
        let t = t0 + u64::from(p) / 10;
        scan += &rec(scanner, 61000, host, p, 1, 44, t, 2);
        let answer = if [22, 80, 180].contains(&p) { 18 } else { 4 };
        scan += &rec(host, p, scanner, 61000, 1, 40, t, answer);
    }
    let out = summary(&import(&data, &["aws", "-"], Some(&scan)));
    assert_eq!(
        out.lines().nth(1),
        Some("alert #1: medium port_scan from 198.51.100.7 against 10.0.0.5"),
        "{out}"
    );
    let body = alert_json(&data, 1);
    let x = body["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .rfind(|o| o["kind"] == "scan_extent")
        .expect("the extent")
        .clone();
    assert_eq!(x["distinct_ports"], 200);
    assert_eq!(x["port_ranges"]["tcp"], "1-200");
    assert_eq!(
        x["open_found"],
        serde_json::json!(["10.0.0.5: 22/tcp, 80/tcp, 180/tcp"])
    );
    assert_eq!(
        (&x["open_total"], &x["closed_total"], &x["silent_total"]),
        (&3.into(), &197.into(), &0.into())
    );
    assert_eq!(x["targets"][0]["host"], host);
    assert!(x.get("sampling_rate").is_none(), "unsampled: {x}");
    // An hour later, another file.
    let later = t0 + 3_600;
    let mut next = header.to_string();
    next += &rec("10.0.0.77", 50000, host, 22, 12, 2_000, later, 3);
    next += &rec(host, 22, "10.0.0.77", 50000, 10, 9_000, later, 19);
    next += &rec(scanner, 61500, host, 8080, 12, 2_000, later, 3);
    next += &rec(scanner, 61501, host, 22, 12, 2_000, later + 5, 3);
    next += &rec(host, 22, scanner, 61501, 10, 9_000, later + 5, 19);
    summary(&import(&data, &["aws", "-"], Some(&next)));
    let body = alert_json(&data, 1);
    assert_eq!(body["severity"], "high", "{body}");
    let follow: Vec<&serde_json::Value> = body["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .filter(|o| o["kind"] == "follow_up")
        .collect();
    assert_eq!(follow.len(), 1, "{follow:?}");
    assert_eq!(
        (
            &follow[0]["port"],
            &follow[0]["bytes"],
            &follow[0]["after_scan_s"]
        ),
        // From the last probe record's end (t0 + 20 + 60) to the session's start (t0 + 3605).
        (&22.into(), &11_000.into(), &3_525.into())
    );
    assert_eq!(follow[0]["seen_by"], "aws:123456789010");
    assert_eq!(alerts(&data).len(), 1, "nothing else");
    // The follow-up time is bounded: 1 to 720 hours.
    for bad in ["0", "721", "x"] {
        let o = import(
            &data,
            &["aws", "--scan-follow-up-hours", bad, "-"],
            Some(""),
        );
        assert!(!o.status.success(), "--scan-follow-up-hours {bad} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--scan-follow-up-hours"), "{err}");
    }
}

/// A slow scan: one rejected probe an hour, delivered in two files imported by two separate
/// runs. No window holds them, and the second run starts from what the first saved: the
/// sequential test names the scanner at the 4th failure.
#[test]
fn a_slow_scan_spread_over_imports_adds_up() {
    let dir = TempDir::new("slow-scan");
    let data = dir.0.join("data");
    let t0 = 1_795_860_000u64;
    let probe = |i: u64| {
        format!(
            "2 123456789010 eni-0a1 198.51.100.66 10.0.4.{i} 61000 22 6 1 44 {} {} REJECT OK\n",
            t0 + i * 3600,
            t0 + i * 3600 + 60
        )
    };
    let first = format!("{}{}", probe(1), probe(2));
    let out = summary(&import(&data, &["aws", "-"], Some(&first)));
    assert!(
        !out.contains("alert"),
        "two probes are not a scan yet: {out}"
    );
    let second = format!("{}{}", probe(3), probe(4));
    let out = summary(&import(&data, &["aws", "-"], Some(&second)));
    assert_eq!(
        out.lines().nth(1),
        Some(
            "alert #1: low address_sweep from 198.51.100.66 against 10.0.4.1, 10.0.4.2, 10.0.4.3, 10.0.4.4"
        ),
        "{out}"
    );
}

fn watchlist(data: &Path, args: &[&str]) -> Output {
    Command::new(tests::bin("picket-controlplane"))
        .arg("watchlist")
        .arg("--data-dir")
        .arg(data)
        .envs(tests::servers::store_env(data))
        .args(args)
        .output()
        .expect("run picket-controlplane watchlist")
}

/// The watchlist from the command line (entries, a feed file with a bad line, list, remove),
/// and an AWS record of an instance talking to a listed address: a `watchlist_hit` alert about
/// the instance.
#[test]
fn watchlisted_addresses_in_flow_logs_raise_alerts() {
    let dir = TempDir::new("watchlist");
    let data = dir.0.join("data");
    let o = watchlist(&data, &["add", "198.51.100.7", "--label", "known c2"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "1 added, 0 updated"
    );
    let feed = dir.0.join("feed.txt");
    std::fs::write(
        &feed,
        "# a feed\n203.0.113.0/24 scanners\n\n2001:db8:bad::/48\n10.0.0.300 typo\n",
    )
    .expect("feed");
    let o = watchlist(&data, &["import", feed.to_str().expect("utf8")]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "2 added, 0 updated, 1 line(s) not entries"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("feed.txt:5:"));
    let o = watchlist(&data, &["add", "not-an-address"]);
    assert!(!o.status.success());
    let o = watchlist(&data, &["list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "198.51.100.7/32\tknown c2\n2001:db8:bad::/48\t\n203.0.113.0/24\tscanners\n"
    );
    let o = watchlist(&data, &["remove", "2001:db8:bad::/48"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        !watchlist(&data, &["remove", "2001:db8:bad::/48"])
            .status
            .success()
    );

    let log = "2 123456789010 eni-0a1 10.0.0.5 198.51.100.7 43000 443 6 20 9000 1795860000 1795860060 ACCEPT OK\n\
               2 123456789010 eni-0a1 10.0.0.6 192.0.2.10 43001 443 6 20 9000 1795860000 1795860060 ACCEPT OK\n";
    let out = summary(&import(&data, &["aws", "-"], Some(log)));
    assert_eq!(
        out.lines().nth(1),
        Some("alert #1: medium watchlist_hit from 10.0.0.5 against 198.51.100.7"),
        "{out}"
    );
    let body = alert_json(&data, 1);
    let ob = &body["observations"][0];
    assert_eq!(
        (&ob["label"], &ob["entry"]),
        (&"known c2".into(), &"198.51.100.7/32".into())
    );
    assert_eq!((&ob["port"], &ob["bytes"]), (&443.into(), &9000.into()));
}

/// A sanctioned scanner on the allowlist for port scans: its port scan raises nothing, while the
/// same source's sweep still does; entries are listed and removed from the command line.
#[test]
fn allowlisted_sources_raise_no_alert_of_their_type() {
    let dir = TempDir::new("allowlist");
    let data = dir.0.join("data");
    let allow = |args: &[&str]| {
        Command::new(tests::bin("picket-controlplane"))
            .arg("allowlist")
            .arg("--data-dir")
            .arg(&data)
            .envs(tests::servers::store_env(&data))
            .args(args)
            .output()
            .expect("run picket-controlplane allowlist")
    };
    let o = allow(&[
        "add",
        "198.51.100.0/24",
        "--type",
        "port_scan",
        "--label",
        "qualys",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "allowed 198.51.100.0/24 for port_scan"
    );
    assert!(
        !allow(&["add", "198.51.100.0/24", "--type", "Port Scan"])
            .status
            .success()
    );
    let o = allow(&["add", "192.0.2.1", "--label", "lab"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&allow(&["list"]).stdout),
        "192.0.2.1/32\t*\tlab\n198.51.100.0/24\tport_scan\tqualys\n"
    );
    assert!(allow(&["remove", "192.0.2.1"]).status.success());
    assert!(!allow(&["remove", "192.0.2.1"]).status.success());

    let t0 = 1_795_860_000u64;
    let log = aws_scan(t0, 30, 30);
    let out = summary(&import(&data, &["aws", "-"], Some(&log)));
    let alerts: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(alerts.len(), 1, "{out}");
    assert!(
        alerts[0].starts_with("alert #1: low address_sweep from 198.51.100.7"),
        "{out}"
    );
}

/// Sensitivity per type and network, set with the CLI: the same 40-port scan in AWS records
/// gives a port_scan alert whose evidence starts at half the fan-out threshold (high), at the
/// sequential test and the threshold (medium, the default), at twice the threshold (low), or no
/// alert at all (off), while the sweep beside it stays at medium.
#[test]
fn sensitivity_per_type_and_network_moves_the_thresholds() {
    let t0 = 1_795_860_000u64;
    let log = aws_scan(t0, 40, 30);
    let dir = TempDir::new("sensitivity");
    let f = dir.0.join("scan.log");
    std::fs::write(&f, &log).expect("write");
    let mut seen = Vec::new();
    for level in ["high", "medium", "low", "off"] {
        let data = dir.0.join(level);
        let o = Command::new(tests::bin("picket-controlplane"))
            .args(["sensitivity", "--data-dir"])
            .arg(&data)
            .envs(tests::servers::store_env(&data))
            .args([
                "set",
                level,
                "--network",
                "198.51.100.0/24",
                "--type",
                "port_scan",
            ])
            .output()
            .expect("sensitivity set");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        summary(&import(&data, &["aws", f.to_str().expect("utf8")], None));
        let mut scan: Vec<String> = Vec::new();
        let mut sweep = 0;
        for a in alerts(&data) {
            let t = a.kind;
            for o in &a.observations {
                if t == "port_scan" {
                    scan.push(match (o["kind"].as_str(), o["distinct_ports"].as_u64()) {
                        (Some("scan_extent"), Some(n)) => format!("extent {n}"),
                        (_, Some(n)) => format!("fanout {n}"),
                        (kind, None) => kind.expect("kind").to_string(),
                    });
                } else if t == "address_sweep" && o["kind"] == "flow_log_fanout" {
                    sweep += 1;
                }
            }
        }
        seen.push((level, scan, sweep));
    }
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        seen,
        [
            (
                "high",
                v(&[
                    "sequential_test",
                    "fanout 8",
                    "fanout 15",
                    "fanout 30",
                    "extent 41"
                ]),
                1
            ),
            (
                "medium",
                v(&["sequential_test", "fanout 15", "fanout 30", "extent 41"]),
                1
            ),
            // The extent follows the alert, whatever made it: 40 ports and the sweep's 3389.
            ("low", v(&["fanout 30", "extent 41"]), 1),
            ("off", v(&[]), 1),
        ]
    );
    let o = Command::new(tests::bin("picket-controlplane"))
        .args(["sensitivity", "--data-dir"])
        .arg(dir.0.join("off"))
        .envs(tests::servers::store_env(dir.0.join("off")))
        .args(["set", "loud", "--network", "10.0.0.0/8"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`loud` is not one of off, low, medium, high")
    );
}

/// The one geo_unusual_access alert of the store, as the API shows its body.
fn geo_alert(data: &Path) -> serde_json::Value {
    the_alert(data, "geo_unusual_access")
}

/// geo_unusual_access from AWS records over two separate imports (the learned countries are
/// saved): SSH sessions to a bastion from the US and, during the 30-day learning period, from
/// Australia; 40 days later a session from Japan is an alert naming the bastion and the remote,
/// one from Australia is not, and a rejected attempt from Brazil is not a session. A port the
/// bastion starts serving then is a new_service alert; a single-packet probe of another is not.
/// An internal address that starts sessions in the learned 10.0.0.0/16 is a new_internal_device.
#[test]
fn a_session_from_a_new_country_after_learning_is_an_alert() {
    let dir = TempDir::new("geo");
    let data = dir.0.join("data");
    let day = 86_400u64;
    let t0 = 1_795_860_000u64 - 41 * day;
    let rec = |src: &str, t: u64, action: &str| {
        format!(
            "2 123456789010 eni-0b1 {src} 10.0.0.22 50000 22 6 20 4000 {t} {} {action} OK\n",
            t + 60
        )
    };
    let first = rec("8.8.8.8", t0, "ACCEPT")
        + &rec("1.1.1.1", t0 + 10 * day, "ACCEPT")
        + &rec("10.0.1.1", t0, "ACCEPT");
    let later = rec("1.0.16.1", t0 + 40 * day, "ACCEPT")
        + &rec("1.1.1.1", t0 + 40 * day, "ACCEPT")
        + &rec("200.160.2.3", t0 + 40 * day, "REJECT")
        // A port the bastion never served before: a new service. A probe of another is not.
        + &rec("8.8.8.8", t0 + 41 * day, "ACCEPT").replace(" 22 6 20 ", " 8080 6 20 ")
        + &rec("8.8.8.8", t0 + 41 * day, "ACCEPT").replace(" 22 6 20 4000 ", " 9999 6 1 44 ")
        // A device known from the first file, then one never seen in the network.
        + &rec("10.0.1.1", t0 + 41 * day, "ACCEPT")
        + &rec("10.0.3.3", t0 + 41 * day + 3600, "ACCEPT");
    for (name, text) in [("first.log", first), ("later.log", later)] {
        let f = dir.0.join(name);
        std::fs::write(&f, text).expect("write");
        let out = summary(&import(
            &data,
            &["aws", f.to_str().expect("utf8"), "--learning-days", "30"],
            None,
        ));
        if name == "first.log" {
            assert!(!out.contains("alert #"), "{out}");
        } else {
            assert!(
                out.contains(
                    "alert #1: medium geo_unusual_access from 10.0.0.22 against 1.0.16.1 (JP)"
                ),
                "{out}"
            );
            assert!(
                out.contains("alert #2: low new_service from 10.0.0.22 against 8080/tcp"),
                "{out}"
            );
            assert!(
                out.contains("alert #3: low new_internal_device from 10.0.0.0/16 against 10.0.3.3"),
                "{out}"
            );
            assert_eq!(out.matches("alert #").count(), 3, "{out}");
        }
    }
    let b = geo_alert(&data);
    assert_eq!(
        b["observations"][0]["known_countries"],
        serde_json::json!(["AU", "US"])
    );
    assert_eq!(b["observations"].as_array().map(Vec::len), Some(1));
}

/// `--geo-db`: countries come from the user's MaxMind database first (here 1.0.16.0/24 is NZ,
/// where the embedded registry data says JP, and TEST-NET-2, which the registries leave
/// unassigned, is IS), and from the embedded data for what it does not cover (8.8.8.8, US). A
/// file that is not a MaxMind DB is refused with a sentence.
#[test]
fn a_maxmind_database_names_countries_before_the_registries() {
    let dir = TempDir::new("geodb");
    let data = dir.0.join("data");
    let mmdb = dir.0.join("countries.mmdb");
    std::fs::write(
        &mmdb,
        tests::mmdb::country_db(&[("1.0.16.0/24", "NZ"), ("198.51.100.0/24", "IS")]),
    )
    .expect("write the database");
    let day = 86_400u64;
    let t0 = 1_795_860_000u64 - 41 * day;
    let rec = |src: &str, t: u64| {
        format!(
            "2 123456789010 eni-0b1 {src} 10.0.0.22 50000 22 6 20 4000 {t} {} ACCEPT OK\n",
            t + 60
        )
    };
    let geo = mmdb.to_str().expect("utf8");
    let first = rec("8.8.8.8", t0) + &rec("198.51.100.7", t0 + 10 * day);
    let later = rec("1.0.16.1", t0 + 40 * day) + &rec("198.51.100.9", t0 + 40 * day);
    for (name, text) in [("first.log", first), ("later.log", later)] {
        let f = dir.0.join(name);
        std::fs::write(&f, text).expect("write");
        let args = [
            "aws",
            f.to_str().expect("utf8"),
            "--learning-days",
            "30",
            "--geo-db",
            geo,
        ];
        let out = summary(&import(&data, &args, None));
        if name == "later.log" {
            assert!(
                out.contains(
                    "alert #1: medium geo_unusual_access from 10.0.0.22 against 1.0.16.1 (NZ)"
                ),
                "{out}"
            );
            assert_eq!(out.matches("alert #").count(), 1, "{out}");
        } else {
            assert!(!out.contains("alert #"), "{out}");
        }
    }
    let b = geo_alert(&data);
    assert_eq!(
        b["observations"][0]["known_countries"],
        serde_json::json!(["IS", "US"])
    );

    let bad = dir.0.join("not.mmdb");
    std::fs::write(&bad, "GeoIP2 country database\n").expect("write");
    let f = dir.0.join("first.log");
    let o = import(
        &data,
        &[
            "aws",
            f.to_str().expect("utf8"),
            "--geo-db",
            bad.to_str().expect("utf8"),
        ],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a readable MaxMind DB"), "{err}");
}

/// 240 AWS v2 records the security group rejected toward one instance, from 12 sources on two
/// ports within four minutes: one reject_storm alert about the instance, naming the sources;
/// no source alone crosses a port-scan or sweep threshold. The same count from one source is
/// not a storm.
#[test]
fn rejects_from_many_sources_at_one_address_are_a_reject_storm() {
    use std::fmt::Write as _;
    let dir = TempDir::new("storm");
    let data = dir.0.join("data");
    let t0 = 1_795_860_000u64;
    let mut text = String::new();
    for i in 0..240u64 {
        let t = t0 + i;
        writeln!(
            text,
            "2 123456789010 eni-0b1 198.51.100.{} 10.0.0.9 {} {} 6 1 44 {t} {} REJECT OK",
            i % 12,
            40000 + i,
            [8443, 9200][i as usize % 2],
            t + 10
        )
        .expect("write");
    }
    for i in 0..240u64 {
        let t = t0 + i;
        writeln!(
            text,
            "2 123456789010 eni-0b2 203.0.113.5 10.0.0.10 {} 8443 6 1 44 {t} {} REJECT OK",
            40000 + i,
            t + 10
        )
        .expect("write");
    }
    let f = dir.0.join("storm.log");
    std::fs::write(&f, text).expect("write");
    let out = summary(&import(&data, &["aws", f.to_str().expect("utf8")], None));
    assert_eq!(out.matches("alert #").count(), 1, "{out}");
    assert!(
        out.contains(
            "alert #1: low reject_storm from 10.0.0.9 against 198.51.100.0, 198.51.100.1,"
        ),
        "{out}"
    );
    let b = the_alert(&data, "reject_storm");
    assert_eq!(b["targets_total"], 12, "{b}");
    let last = &b["observations"][b["observations"].as_array().expect("list").len() - 1];
    assert_eq!(last["rejected_flows"], 200, "{b}");
    assert_eq!(last["distinct_sources"], 12, "{b}");
    assert_eq!(last["ports"], serde_json::json!([8443, 9200]), "{b}");
}

/// A host's usual uploads (about 1 MB an hour for 30 hours), then an hour of 300 MB to a new
/// address: one data_exfiltration alert about the host, naming where the bytes went, once
/// the learning period (`--learning-days 1` here) is over. The same upload during learning
/// raises nothing.
#[test]
fn an_upload_far_above_the_hosts_baseline_is_data_exfiltration() {
    use std::fmt::Write as _;
    let dir = TempDir::new("exfil");
    let t0 = 1_795_860_000u64;
    let rec = |text: &mut String, dst: &str, t: u64, bytes: u64| {
        writeln!(
            text,
            "2 123456789010 eni-0b1 10.0.0.5 {dst} 50000 443 6 {} {bytes} {t} {} ACCEPT OK",
            bytes / 1000,
            t + 60
        )
        .expect("write");
    };
    let mut usual = String::new();
    for h in 0..30 {
        rec(
            &mut usual,
            "203.0.113.9",
            t0 + h * 3600,
            900_000 + (h % 3) * 100_000,
        );
    }
    let mut spike = usual.clone();
    rec(&mut spike, "198.51.100.7", t0 + 30 * 3600, 300_000_000);
    // During learning (a 2-day period), nothing.
    let early = dir.0.join("early");
    let f = dir.0.join("spike.log");
    std::fs::write(&f, &spike).expect("write");
    let out = summary(&import(
        &early,
        &["aws", f.to_str().expect("utf8"), "--learning-days", "2"],
        None,
    ));
    assert!(!out.contains("alert #"), "{out}");
    let data = dir.0.join("data");
    let out = summary(&import(
        &data,
        &["aws", f.to_str().expect("utf8"), "--learning-days", "1"],
        None,
    ));
    assert_eq!(out.matches("alert #").count(), 1, "{out}");
    assert!(
        out.contains("alert #1: medium data_exfiltration from 10.0.0.5 against 198.51.100.7"),
        "{out}"
    );
    let b = the_alert(&data, "data_exfiltration");
    let o = &b["observations"][0];
    assert_eq!(o["bytes"], 300e6, "{b}");
    assert_eq!(o["baseline_median_bytes"], 1e6, "{b}");
    assert_eq!(o["threshold_bytes"], 100e6, "{b}");
    assert_eq!(o["baseline_hours"], 30, "{b}");
}
