//! `picket-controlplane import`: cloud flow logs, as the providers document them, into a real
//! store; gzip and standard input; bad lines counted and the import going on.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use tests::{ControlPlane, TempDir};

fn import(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    ControlPlane::import(data, args, stdin.map(str::as_bytes))
}

/// The import's one-line summary, once it is known to have succeeded.
fn summary(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout.trim().to_string()
}

fn db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("picket.db")).expect("open the store")
}

/// The one geo_unusual_access alert of the store, as the API shows its body.
fn geo_alert(data: &Path) -> serde_json::Value {
    let body: String = db(data)
        .query_row(
            "SELECT body FROM alerts WHERE type = 'geo_unusual_access'",
            [],
            |r| r.get(0),
        )
        .expect("one alert");
    serde_json::from_str(&body).expect("json")
}

/// The user guide's default-format examples, an IPv6 flow, NODATA and SKIPDATA records, a
/// blank line and two bad lines, gzip-compressed as S3 delivers them.
const DEFAULT_V2: &str = "\
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK
2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA
2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA

2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010
2 123456789010 eni-1235b8ca123456789 172.31.16.300 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
";

#[test]
fn aws_default_format_gzip_with_nodata_skipdata_and_bad_lines() {
    let dir = TempDir::new("aws-import");
    let data = dir.0.join("data");
    let plain = dir.0.join("flows.log");
    std::fs::write(&plain, DEFAULT_V2).expect("write");
    let st = Command::new("gzip")
        .arg("-k")
        .arg(&plain)
        .status()
        .expect("gzip");
    assert!(st.success());
    let gz = dir.0.join("flows.log.gz");
    let o = import(&data, &["aws", gz.to_str().expect("utf8")], None);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        "aws: 1 file(s): read 7, stored 3, rejected 2 (bad_srcaddr 1, field_count 1), skipped 1 (NODATA: no traffic), SKIPDATA 1 (flows the provider dropped from its log)"
    );
    // One example per reason, with its line number, and the SKIPDATA warning.
    assert!(
        stderr.contains("line=7") && stderr.contains("field_count"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line=8") && stderr.contains("bad_srcaddr"),
        "{stderr}"
    );
    assert!(stderr.contains("SKIPDATA"), "{stderr}");

    let c = db(&data);
    let (n, packets, bytes): (i64, i64, i64) = c
        .query_row(
            "SELECT COUNT(*), SUM(packets), SUM(bytes) FROM flows WHERE source = 'aws'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("totals");
    assert_eq!((n, packets, bytes), (3, 94, 17353));
    let row: (String, String, String, i64, String, i64, i64, f64) = c
        .query_row(
            "SELECT sensor, iface, src_ip, dst_port, action, start_ns, end_ns, sampling_rate \
             FROM flows WHERE source = 'aws' AND dst_port = 3389",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .expect("the rejected RDP flow");
    assert_eq!(
        row,
        (
            "123456789010".into(),
            "eni-1235b8ca123456789".into(),
            "172.31.9.69".into(),
            3389,
            "reject".into(),
            1_418_530_010_000_000_000,
            1_418_530_070_000_000_000,
            1.0
        )
    );
    let v6: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM flows WHERE src_ip = '2001:db8:1234:a100:8d6e:3477:df66:f105'",
            [],
            |r| r.get(0),
        )
        .expect("v6");
    assert_eq!(v6, 1);
}

/// A custom format (v5 fields, NAT addresses, TCP flags, milliseconds) announced by its header
/// line, read from standard input.
#[test]
fn aws_custom_format_from_stdin() {
    let dir = TempDir::new("aws-import-custom");
    let data = dir.0.join("data");
    let text = "\
version vpc-id subnet-id instance-id interface-id account-id type srcaddr dstaddr srcport dstport pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status region flow-direction
5 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.1.5 10.0.0.220 39812 80 10.0.1.5 203.0.113.5 6 1234 10 1566848875123 1566848933456 ACCEPT 19 OK us-east-1 egress
5 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 - eni-1235b8ca123456789 123456789010 IPv4 198.51.100.7 10.0.0.220 4444 22 - - 6 40 1 1566848875 1566848933 REJECT 2 OK us-east-1 ingress
";
    let o = import(&data, &["aws", "-"], Some(text));
    let stdout = summary(&o);
    assert!(
        stdout.starts_with("aws: 1 file(s): read 2, stored 2, rejected 0,"),
        "{stdout}"
    );
    let row: (String, String, String, String, i64, i64, String, i64) = db(&data)
        .query_row(
            "SELECT vpc, instance, pkt_dst_ip, observed, start_ns, end_ns, region, tcp_flags \
             FROM flows WHERE dst_port = 80",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .expect("the NATed flow");
    assert_eq!(
        row,
        (
            "vpc-abcdefab012345678".into(),
            "i-01234567890123456".into(),
            "203.0.113.5".into(),
            "egress".into(),
            1_566_848_875_123_000_000,
            1_566_848_933_456_000_000,
            "us-east-1".into(),
            19
        )
    );
}

#[test]
fn a_file_that_is_not_a_flow_log_fails_with_a_reason() {
    let dir = TempDir::new("aws-import-bad");
    let data = dir.0.join("data");
    let f = dir.0.join("notes.txt");
    std::fs::write(&f, "hello world\nthis is not a flow log\n").expect("write");
    let o = import(&data, &["aws", f.to_str().expect("utf8")], None);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no record could be imported"), "{stderr}");
    let o = import(&data, &["aws", "/nonexistent/flows.log"], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot open /nonexistent/flows.log"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// GCP entries as Cloud Logging exports them: the documentation's example (integers as strings),
/// a DEST-reported IPv6 flow with plain numbers, an audit entry that is not a flow, and a broken
/// line; as NDJSON and as one JSON array.
const GCP_SRC: &str = r#"{"insertId":"1wbyh3ag1mngmr6","jsonPayload":{"bytes_sent":"3168","connection":{"dest_ip":"35.235.241.17","dest_port":41548,"protocol":6,"src_ip":"10.128.0.2","src_port":22},"dest_location":{"city":"Mountain View","continent":"America","country":"usa","region":"California"},"end_time":"2021-03-10T19:12:28.103218426Z","packets_sent":"13","reporter":"SRC","rtt_msec":"42","src_instance":{"project_id":"my-project","region":"us-central1","vm_name":"vm-1","zone":"us-central1-a"},"src_vpc":{"project_id":"my-project","subnetwork_name":"default","vpc_name":"default"},"start_time":"2021-03-10T19:12:27.103218426Z"},"logName":"projects/my-project/logs/compute.googleapis.com%2Fvpc_flows","resource":{"labels":{"location":"us-central1-a","project_id":"my-project","subnetwork_id":"6371418023423442923","subnetwork_name":"default"},"type":"gce_subnetwork"},"timestamp":"2021-03-10T19:12:36.236924938Z"}"#;
const GCP_DEST: &str = r#"{"jsonPayload":{"bytes_sent":1500,"packets_sent":2,"connection":{"src_ip":"2600:1900:4000:1::5","dest_ip":"2600:1900:4000:1::9","src_port":53000,"dest_port":443,"protocol":6},"start_time":"2026-11-28T10:00:00Z","end_time":"2026-11-28T10:00:05Z","reporter":"DEST","dest_instance":{"project_id":"p-42","region":"europe-west1","vm_name":"web-2","zone":"europe-west1-b"},"dest_vpc":{"project_id":"p-42","subnetwork_name":"web","vpc_name":"prod"}},"logName":"projects/p-42/logs/compute.googleapis.com%2Fvpc_flows"}"#;
const GCP_AUDIT: &str = r#"{"protoPayload":{"methodName":"v1.compute.instances.insert"},"logName":"projects/p-42/logs/cloudaudit.googleapis.com%2Factivity"}"#;

#[test]
fn gcp_ndjson_gzip_and_json_array_from_stdin() {
    let dir = TempDir::new("gcp-import");
    let data = dir.0.join("data");
    let f = dir.0.join("flows.json");
    std::fs::write(
        &f,
        format!("{GCP_SRC}\n\n{GCP_DEST}\n{GCP_AUDIT}\n{{\"jsonPayload\": \n"),
    )
    .expect("write");
    assert!(
        Command::new("gzip")
            .arg(&f)
            .status()
            .expect("gzip")
            .success()
    );
    let gz = dir.0.join("flows.json.gz");
    let o = import(
        &data,
        &["gcp", "--sampling-rate", "0.25", gz.to_str().expect("utf8")],
        None,
    );
    let stdout = summary(&o);
    assert_eq!(
        stdout.trim(),
        "gcp: 1 file(s): read 4, stored 2, rejected 2 (bad_json 1, not_a_flow_record 1)"
    );
    let c = db(&data);
    let row: (String, String, String, String, String, f64, i64, String) = c
        .query_row(
            "SELECT sensor, iface, vpc, zone, observed, sampling_rate, bytes, cloud_json \
             FROM flows WHERE source = 'gcp' AND dst_port = 443",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .expect("the DEST-reported flow");
    assert_eq!(
        (&row.0[..], &row.1[..], &row.2[..], &row.3[..], &row.4[..]),
        ("p-42", "web-2", "prod", "europe-west1-b", "ingress")
    );
    assert_eq!((row.5, row.6), (0.25, 1500));
    let extra: serde_json::Value = serde_json::from_str(&row.7).expect("cloud_json");
    assert_eq!(extra["reporter"], "DEST");
    assert_eq!(extra["dest_vm"], "web-2");

    // The same entries as one JSON array on standard input, default sampling rate.
    let data2 = dir.0.join("data2");
    let o = import(
        &data2,
        &["gcp", "-"],
        Some(&format!("[\n {GCP_SRC},\n {GCP_DEST},\n {GCP_AUDIT}\n]\n")),
    );
    let stdout = summary(&o);
    assert_eq!(
        stdout.trim(),
        "gcp: 1 file(s): read 3, stored 2, rejected 1 (not_a_flow_record 1)"
    );
    let (n, bytes, rate): (i64, i64, f64) = db(&data2)
        .query_row(
            "SELECT COUNT(*), SUM(bytes), MIN(sampling_rate) FROM flows WHERE source = 'gcp'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("totals");
    assert_eq!((n, bytes, rate), (2, 3168 + 1500, 0.5));
    let country: String = db(&data2)
        .query_row(
            "SELECT json_extract(cloud_json, '$.dest_country') FROM flows WHERE dst_port = 41548",
            [],
            |r| r.get(0),
        )
        .expect("country");
    assert_eq!(country, "usa");
    // A rate outside (0, 1] is refused with the reason.
    let o = import(&data2, &["gcp", "--sampling-rate", "2", "-"], Some(""));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--sampling-rate must be in (0, 1]"));
}

/// The entries delivered through a Pub/Sub sink, in the three forms an operator ends up with:
/// push requests (one per line, as a push endpoint receives them), `gcloud pubsub
/// subscriptions pull --format=json` (a JSON array of pulled messages), and the REST pull
/// response (`receivedMessages`). Each message's `data` is the base64 of one log entry.
#[test]
fn gcp_pubsub_push_pull_and_gcloud_forms() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let push = |entry: &str, id: u32| {
        format!(
            r#"{{"message":{{"attributes":{{"logging.googleapis.com/timestamp":"2021-03-10T19:12:36.236924938Z"}},"data":"{}","messageId":"{id}","message_id":"{id}","publishTime":"2021-03-10T19:12:37.5Z","publish_time":"2021-03-10T19:12:37.5Z"}},"subscription":"projects/my-project/subscriptions/picket"}}"#,
            b64(entry)
        )
    };
    let pulled = |entry: &str, id: u32| {
        format!(
            r#"{{"ackId":"RUFeQBJMJxhESVMrQwsqWBFOBCEhPjA-RVNEUAYWLF1GSFE3GQhoUQ5PXiM_NSAoRRoHIGoKOUJdEmJoXFx1B1ALEHQoYnxvWRYFCEdeVV5SEx9NE2M","message":{{"data":"{}","messageId":"{id}","publishTime":"2021-03-10T19:12:37.5Z"}}}}"#,
            b64(entry)
        )
    };
    let dir = TempDir::new("gcp-pubsub");
    let data = dir.0.join("data");
    // Push requests, NDJSON: two flows, an audit entry (not a flow) and a message whose data
    // is not base64.
    let bad = r#"{"message":{"data":"not base64!","messageId":"9"},"subscription":"projects/my-project/subscriptions/picket"}"#;
    let o = import(
        &data,
        &["gcp", "-"],
        Some(&format!(
            "{}\n{}\n{}\n{bad}\n",
            push(GCP_SRC, 1),
            push(GCP_DEST, 2),
            push(GCP_AUDIT, 3)
        )),
    );
    let stdout = summary(&o);
    assert_eq!(
        stdout.trim(),
        "gcp: 1 file(s): read 4, stored 2, rejected 2 (bad_pubsub_data 1, not_a_flow_record 1)"
    );
    let c = db(&data);
    let (n, bytes, packets): (i64, i64, i64) = c
        .query_row(
            "SELECT COUNT(*), SUM(bytes), SUM(packets) FROM flows WHERE source = 'gcp'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("totals");
    assert_eq!((n, bytes, packets), (2, 3168 + 1500, 13 + 2));
    let (observer, vm): (String, String) = c
        .query_row(
            "SELECT sensor, iface FROM flows WHERE dst_port = 41548",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the SRC-reported flow");
    assert_eq!((&observer[..], &vm[..]), ("my-project", "vm-1"));

    // gcloud's JSON array of pulled messages, then a REST pull response with both entries.
    let data2 = dir.0.join("data2");
    let gcloud = format!("[{}, {}]", pulled(GCP_SRC, 4), pulled(GCP_DEST, 5));
    // Pretty-printed, as curl shows it: a first line of `{` alone.
    let rest = serde_json::to_string_pretty(
        &serde_json::from_str::<serde_json::Value>(&format!(
            r#"{{"receivedMessages": [{}, {}]}}"#,
            pulled(GCP_SRC, 6),
            pulled(GCP_DEST, 7)
        ))
        .expect("JSON"),
    )
    .expect("pretty");
    assert!(rest.starts_with("{\n"));
    let (fa, fb) = (dir.0.join("gcloud.json"), dir.0.join("pull.json"));
    std::fs::write(&fa, gcloud).expect("write");
    std::fs::write(&fb, rest).expect("write");
    let o = import(
        &data2,
        &[
            "gcp",
            fa.to_str().expect("utf8"),
            fb.to_str().expect("utf8"),
        ],
        None,
    );
    let stdout = summary(&o);
    assert_eq!(
        stdout.trim(),
        "gcp: 2 file(s): read 4, stored 4, rejected 0"
    );
    let (n, bytes): (i64, i64) = db(&data2)
        .query_row(
            "SELECT COUNT(*), SUM(bytes) FROM flows WHERE source = 'gcp'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("totals");
    assert_eq!((n, bytes), (4, 2 * (3168 + 1500)));
}

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
            "alert #1: low port_scan from 198.51.100.7 against 10.0.0.5",
            &format!(
                "alert #2: low address_sweep from 198.51.100.7 against {}",
                (1..=25)
                    .map(|h| format!("10.0.1.{h}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ]
    );
    let c = db(&data);
    let rows: Vec<(String, String, String, i64)> = c
        .prepare("SELECT type, source, severity, first_seen_ns FROM alerts ORDER BY id")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("alerts");
    assert_eq!(
        rows,
        [
            (
                "port_scan".to_string(),
                "198.51.100.7".to_string(),
                "low".to_string(),
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
    let sources: String = c
        .query_row("SELECT body FROM alerts WHERE id = 1", [], |r| r.get(0))
        .expect("body");
    let body: serde_json::Value = serde_json::from_str(&sources).expect("json");
    assert_eq!(body["sources"], serde_json::json!(["aws:123456789010"]));
    // The sequential test at the 4th failed port, then the fan-out at the 15th and the 30th
    // and the 60th: one alert.
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
        ]
    );
    assert_eq!(body["observations"][1]["interface"], "eni-0a1");
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
    let body: String = db(&data)
        .query_row("SELECT body FROM alerts WHERE id = 1", [], |r| r.get(0))
        .expect("body");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["sources"], serde_json::json!(["gcp:p-7"]));
    // The sequential test (4 failed first contacts) and the fan-out: 15 ports at 0.5, so the
    // 8th sampled one crosses, and again at 16. All records end at the same second.
    let obs = body["observations"].as_array().expect("observations");
    let of = |kind: &str| obs.iter().find(|o| o["kind"] == kind).expect(kind);
    assert_eq!(obs.len(), 3, "{obs:?}");
    assert_eq!(
        of("sequential_test")["failed_first_contacts"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    assert_eq!(of("flow_log_fanout")["distinct_ports"], 8);
    assert_eq!(of("flow_log_fanout")["sampling_rate"], 0.5);
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
    let body: String = db(&data)
        .query_row("SELECT body FROM alerts WHERE id = 1", [], |r| r.get(0))
        .expect("body");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
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

/// An NSG flow log v2 blob as the documentation shows it (a denied inbound begin, allowed
/// outbound begin and end tuples, one broken tuple) followed by a VNet flow log v4 blob.
const AZURE_NSG_V2: &str = r#"{"records":[{"time":"2017-02-16T22:00:32.8950000Z","systemId":"2c002c16-72f3-4dc5-b391-3444c3527434","category":"NetworkSecurityGroupFlowEvent","resourceId":"/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/FABRIKAMRG/PROVIDERS/MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/FABRIAKMVM1-NSG","operationName":"NetworkSecurityGroupFlowEvents","properties":{"Version":2,"flows":[{"rule":"DefaultRule_DenyAllInBound","flows":[{"mac":"000D3AF87856","flowTuples":["1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,D,B,,,,","1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,D"]}]},{"rule":"DefaultRule_AllowInternetOutBound","flows":[{"mac":"000D3AF87856","flowTuples":["1487282370,10.1.0.4,13.67.143.118,59831,443,T,O,A,B,,,,","1487282393,10.1.0.4,13.67.143.117,59932,443,T,O,A,E,1,66,1,66","1487282393,10.1.0.4,13.67.143.117,59932,443,T,O,A,E,1,6x,1,66"]}]}]}}]}"#;
const AZURE_VNET_V4: &str = r#"{"records":[{"time":"2022-09-14T09:00:52.5625085Z","flowLogGUID":"66aa66aa-bb77-cc88-dd99-00ee00ee00ee","macAddress":"00224871C205","category":"FlowLogFlowEvent","flowLogResourceID":"/SUBSCRIPTIONS/11111111-2222-3333-4444-555555555555/RESOURCEGROUPS/NETWORKWATCHERRG/PROVIDERS/MICROSOFT.NETWORK/NETWORKWATCHERS/NETWORKWATCHER_EASTUS2EUAP/FLOWLOGS/VNETFLOWLOG","targetResourceID":"/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/myResourceGroup/providers/Microsoft.Network/virtualNetworks/myVNet","operationName":"FlowLogFlowEvent","flowLogVersion":4,"flowRecords":{"flows":[{"aclID":"00000000-1234-abcd-ef00-c1c2c3c4c5c6","flowGroups":[{"rule":"DefaultRule_AllowInternetOutBound","flowTuples":["1663146003599,10.0.0.6,192.0.2.180,23956,443,6,O,B,NX,0,0,0,0","1663146003606,10.0.0.6,192.0.2.180,23956,443,6,O,E,NX,3,767,2,1580"]},{"rule":"DefaultRule_DenyAllInBound","flowTuples":["1663146004000,203.0.113.9,10.0.0.6,51000,3389,6,I,D,NX,0,0,0,0"]}]}]}}]}"#;

#[test]
fn azure_nsg_v2_and_vnet_v4_blobs() {
    let dir = TempDir::new("azure-import");
    let data = dir.0.join("data");
    let (nsg, vnet) = (dir.0.join("PT1H.json"), dir.0.join("vnet.json"));
    std::fs::write(&nsg, AZURE_NSG_V2).expect("write");
    std::fs::write(&vnet, AZURE_VNET_V4).expect("write");
    let o = import(
        &data,
        &[
            "azure",
            nsg.to_str().expect("utf8"),
            vnet.to_str().expect("utf8"),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    // The 8-field tuple is a valid version-1 tuple; the 6x count is not a number.
    assert_eq!(
        stdout.trim(),
        "azure: 2 file(s): read 8, stored 7, rejected 1 (bad_count 1)"
    );
    let c = db(&data);
    let (n, packets, bytes, rpackets, rbytes): (i64, i64, i64, i64, i64) = c
        .query_row(
            "SELECT COUNT(*), SUM(packets), SUM(bytes), SUM(reverse_packets), \
             SUM(reverse_bytes) FROM flows WHERE source = 'azure'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .expect("totals");
    assert_eq!((n, packets, bytes, rpackets, rbytes), (7, 4, 833, 3, 1646));
    let rdp: (String, String, String, String, String, i64) = c
        .query_row(
            "SELECT sensor, iface, action, observed, vpc, start_ns FROM flows \
             WHERE source = 'azure' AND dst_port = 3389",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .expect("the denied RDP attempt");
    assert_eq!(
        rdp,
        (
            "11111111-2222-3333-4444-555555555555".into(),
            "00224871C205".into(),
            "reject".into(),
            "ingress".into(),
            "myVNet".into(),
            1_663_146_004_000_000_000
        )
    );
    let denied_v2: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM flows WHERE source = 'azure' AND action = 'reject' \
             AND json_extract(cloud_json, '$.nsg') = 'FABRIAKMVM1-NSG'",
            [],
            |r| r.get(0),
        )
        .expect("denied");
    assert_eq!(denied_v2, 2);
}

/// `serve --watch-dir`: a gzip file dropped into aws/ is imported once and moved; after a
/// restart the same content under another name is recognised and not imported again.
#[test]
fn watched_directory_imports_each_file_once_across_restarts() {
    let lab = tests::Lab::new();
    let dir = TempDir::new("watch");
    let data = dir.0.join("data");
    let incoming = dir.0.join("incoming");
    let args = ["--watch-dir", incoming.to_str().expect("utf8")];
    let count = |cp: &tests::ControlPlane| -> usize {
        let (status, body) = cp.get("/api/v1/flows?source=aws");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["flows"].as_array().map_or(0, Vec::len)
    };
    let wait_for = |p: &Path| {
        let t0 = std::time::Instant::now();
        while !p.exists() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "{} did not appear",
                p.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let cp = tests::ControlPlane::start_with(
        &lab.a,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp1.log"),
        &args,
    );
    assert!(incoming.join("aws").is_dir() && incoming.join("gcp").is_dir());
    // Written under a temporary name, then renamed: the way to drop a file.
    // Recent records: the control plane's retention (7 days of raw flows) applies to flow time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let records = format!(
        "2 123456789010 eni-0a1 10.0.0.1 10.0.0.2 40000 22 6 3 180 {a} {b} ACCEPT OK\n\
         2 123456789010 eni-0a1 10.0.0.1 10.0.0.2 40001 22 6 3 180 {a} {b} REJECT OK\n\
         2 123456789010 eni-0a1 - - - - - - - {a} {b} - NODATA\n\
         2 123456789010 eni-0a1 10.0.0.3 10.0.0.2 40002 443 6 9 900 {a} {b} ACCEPT OK\n",
        a = now - 120,
        b = now - 60
    );
    let staged = incoming.join("aws/flows.log.gz.part");
    std::fs::write(&staged, gzip(&records)).expect("write");
    std::fs::rename(&staged, incoming.join("aws/flows.log.gz")).expect("rename");
    wait_for(&incoming.join("aws/imported/flows.log.gz"));
    assert_eq!(count(&cp), 3);
    cp.stop();

    let cp = tests::ControlPlane::start_with(
        &lab.a,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp2.log"),
        &args,
    );
    std::fs::write(incoming.join("aws/redelivered.gz"), gzip(&records)).expect("write");
    wait_for(&incoming.join("aws/imported/redelivered.gz"));
    assert_eq!(count(&cp), 3, "the same content is not imported twice");
    let log = std::fs::read_to_string(dir.0.join("cp2.log")).expect("log");
    assert!(log.contains("already imported"), "{log}");
    cp.stop();
}

fn gzip(text: &str) -> Vec<u8> {
    let mut c = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = c.stdin.take().expect("stdin");
    let text = text.to_string();
    let w = std::thread::spawn(move || stdin.write_all(text.as_bytes()).expect("write"));
    let out = c.wait_with_output().expect("gzip output");
    w.join().expect("writer");
    out.stdout
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
        let c = db(&data);
        let bodies: Vec<(String, String)> = c
            .prepare("SELECT type, body FROM alerts ORDER BY id")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("alerts");
        let mut scan: Vec<String> = Vec::new();
        let mut sweep = 0;
        for (t, body) in bodies {
            let b: serde_json::Value = serde_json::from_str(&body).expect("json");
            for o in b["observations"].as_array().expect("observations") {
                if t == "port_scan" {
                    scan.push(match o["distinct_ports"].as_u64() {
                        Some(n) => format!("fanout {n}"),
                        None => o["kind"].as_str().expect("kind").to_string(),
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
                v(&["sequential_test", "fanout 8", "fanout 15", "fanout 30"]),
                1
            ),
            (
                "medium",
                v(&["sequential_test", "fanout 15", "fanout 30"]),
                1
            ),
            ("low", v(&["fanout 30"]), 1),
            ("off", v(&[]), 1),
        ]
    );
    let o = Command::new(tests::bin("picket-controlplane"))
        .args(["sensitivity", "--data-dir"])
        .arg(dir.0.join("off"))
        .args(["set", "loud", "--network", "10.0.0.0/8"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`loud` is not one of off, low, medium, high")
    );
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
    let body: String = db(&data)
        .query_row(
            "SELECT body FROM alerts WHERE type = 'reject_storm'",
            [],
            |r| r.get(0),
        )
        .expect("one alert");
    let b: serde_json::Value = serde_json::from_str(&body).expect("json");
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
    let body: String = db(&data)
        .query_row(
            "SELECT body FROM alerts WHERE type = 'data_exfiltration'",
            [],
            |r| r.get(0),
        )
        .expect("one alert");
    let b: serde_json::Value = serde_json::from_str(&body).expect("json");
    let o = &b["observations"][0];
    assert_eq!(o["bytes"], 300e6, "{b}");
    assert_eq!(o["baseline_median_bytes"], 1e6, "{b}");
    assert_eq!(o["threshold_bytes"], 100e6, "{b}");
    assert_eq!(o["baseline_hours"], 30, "{b}");
}
