//! `picket-controlplane import`: cloud flow logs, as the providers document them, read and
//! stored with every field; gzip and standard input; bad lines counted and the import going on;
//! the watched directory importing each file once. (What the detectors make of flow logs is
//! `cloud_detect.rs`.)

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use tests::TempDir;

mod common;
use common::{flows_where, import, on_clickhouse, stored_aws, summary, the_flow, totals};

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

    let (n, packets, bytes, _, _) = totals(&flows_where(&data, |f| f.source == "aws"));
    assert_eq!((n, packets, bytes), (3, 94, 17353));
    let f = the_flow(&data, |f| f.source == "aws" && f.dst_port == Some(3389));
    assert_eq!(
        (
            &f.observer[..],
            &f.interface[..],
            &f.src_ip[..],
            f.dst_port,
            &f.action[..],
            f.start_ns,
            f.end_ns,
            f.sampling_rate
        ),
        (
            "123456789010",
            "eni-1235b8ca123456789",
            "172.31.9.69",
            Some(3389),
            "reject",
            1_418_530_010_000_000_000,
            1_418_530_070_000_000_000,
            1.0
        )
    );
    let v6 = flows_where(&data, |f| {
        f.src_ip == "2001:db8:1234:a100:8d6e:3477:df66:f105"
    });
    assert_eq!(v6.len(), 1);
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
    let f = the_flow(&data, |f| f.dst_port == Some(80));
    assert_eq!(
        (
            f.vpc.as_deref(),
            f.instance.as_deref(),
            f.pkt_dst_ip.as_deref(),
            &f.direction[..],
            f.start_ns,
            f.end_ns,
            f.region.as_deref(),
            f.tcp_flags
        ),
        (
            Some("vpc-abcdefab012345678"),
            Some("i-01234567890123456"),
            Some("203.0.113.5"),
            "egress",
            1_566_848_875_123_000_000,
            1_566_848_933_456_000_000,
            Some("us-east-1"),
            19
        )
    );
}

/// A custom format without `start` and `end`, as AWS's own NAT-gateway example uses: each
/// record takes its file's delivery time (its modification time; standard input: the time it
/// was read), never 1970, and the summary and the record's extras say so.
#[test]
fn aws_records_without_times_take_their_files_delivery_time() {
    let dir = TempDir::new("aws-untimed");
    let data = dir.0.join("data");
    let text = "\
version interface-id srcaddr dstaddr pkt-srcaddr pkt-dstaddr
5 eni-1235b8ca123456789 10.0.1.5 10.0.0.220 10.0.1.5 203.0.113.5
5 eni-1235b8ca123456789 10.0.0.220 203.0.113.5 10.0.1.5 203.0.113.5
";
    let f = dir.0.join("nat.log");
    std::fs::write(&f, text).expect("write");
    // Delivered at 2026-11-28T10:00:00Z.
    let mtime = 1_795_860_000i64;
    assert!(
        Command::new("touch")
            .arg("-d")
            .arg(format!("@{mtime}"))
            .arg(&f)
            .status()
            .expect("touch")
            .success()
    );
    let stdout = summary(&import(&data, &["aws", f.to_str().expect("utf8")], None));
    assert!(
        stdout.ends_with(", 2 without start/end given their file's delivery time"),
        "{stdout}"
    );
    let flows = flows_where(&data, |f| f.source == "aws");
    assert_eq!(flows.len(), 2);
    for f in &flows {
        assert_eq!(
            (f.start_ns, f.end_ns),
            (mtime * 1_000_000_000, mtime * 1_000_000_000)
        );
        let extra = f.extra.as_ref().expect("extras");
        assert_eq!(extra["time_from"], "delivery");
        // Nor are the fields the format leaves out taken for 0s the provider wrote.
        assert_eq!(
            extra["absent"],
            serde_json::json!(["protocol", "src_port", "dst_port", "packets", "bytes"])
        );
    }
    // From standard input: the time it was read.
    let data2 = dir.0.join("data2");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    summary(&import(&data2, &["aws", "-"], Some(text)));
    let flows = flows_where(&data2, |f| f.source == "aws");
    assert_eq!(flows.len(), 2);
    assert!(
        flows.iter().all(|f| f.start_ns >= before - 1_000_000_000),
        "{flows:?}"
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
        String::from_utf8_lossy(&o.stderr).contains(r#"cannot open \"/nonexistent/flows.log\""#),
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
    let f = the_flow(&data, |f| f.source == "gcp" && f.dst_port == Some(443));
    assert_eq!(
        (
            &f.observer[..],
            &f.interface[..],
            f.vpc.as_deref(),
            f.zone.as_deref(),
            &f.direction[..]
        ),
        (
            "p-42",
            "web-2",
            Some("prod"),
            Some("europe-west1-b"),
            "ingress"
        )
    );
    assert_eq!((f.sampling_rate, f.bytes), (0.25, Some(1500)));
    let extra = f.extra.expect("the cloud's extras");
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
    let gcp = flows_where(&data2, |f| f.source == "gcp");
    let (n, _, bytes, _, _) = totals(&gcp);
    let rates: Vec<f64> = gcp.iter().map(|f| f.sampling_rate).collect();
    assert_eq!((n, bytes, rates), (2, 3168 + 1500, vec![0.5, 0.5]));
    let f = the_flow(&data2, |f| f.dst_port == Some(41548));
    assert_eq!(f.extra.expect("extras")["dest_country"], "usa");
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
    let (n, packets, bytes, _, _) = totals(&flows_where(&data, |f| f.source == "gcp"));
    assert_eq!((n, bytes, packets), (2, 3168 + 1500, 13 + 2));
    let f = the_flow(&data, |f| f.dst_port == Some(41548));
    assert_eq!((&f.observer[..], &f.interface[..]), ("my-project", "vm-1"));

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
    let (n, _, bytes, _, _) = totals(&flows_where(&data2, |f| f.source == "gcp"));
    assert_eq!((n, bytes), (4, 2 * (3168 + 1500)));
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
    let azure = flows_where(&data, |f| f.source == "azure");
    assert_eq!(totals(&azure), (7, 4, 833, 3, 1646));
    let rdp = the_flow(&data, |f| f.source == "azure" && f.dst_port == Some(3389));
    assert_eq!(
        (
            &rdp.observer[..],
            &rdp.interface[..],
            &rdp.action[..],
            &rdp.direction[..],
            rdp.vpc.as_deref(),
            rdp.start_ns
        ),
        (
            "11111111-2222-3333-4444-555555555555",
            "00224871C205",
            "reject",
            "ingress",
            Some("myVNet"),
            1_663_146_004_000_000_000
        )
    );
    let denied_v2 = azure
        .iter()
        .filter(|f| {
            f.action == "reject"
                && f.extra
                    .as_ref()
                    .is_some_and(|e| e["nsg"] == "FABRIAKMVM1-NSG")
        })
        .count();
    assert_eq!(denied_v2, 2);
    // A VNet flow names the security rule set (aclID) that decided it; its state is the
    // tuple's. The 8-field version-1 tuple has no state, and none is invented.
    let extra = rdp.extra.as_ref().expect("extras");
    assert_eq!(
        (&extra["acl_id"], &extra["state"]),
        (
            &serde_json::json!("00000000-1234-abcd-ef00-c1c2c3c4c5c6"),
            &serde_json::json!("D")
        )
    );
    let stateless: Vec<_> = azure
        .iter()
        .filter(|f| f.extra.as_ref().is_none_or(|e| e.get("state").is_none()))
        .collect();
    assert_eq!(stateless.len(), 1, "{stateless:?}");
    assert_eq!(stateless[0].src_port, Some(51529));
    // Nor any counts: null, not 0, both ways.
    let v1 = stateless[0];
    assert_eq!(
        (v1.packets, v1.bytes, v1.reverse_packets, v1.reverse_bytes),
        (None, None, None, None)
    );
    // The v4 tuple's written zeros are zeros; the VNet log names what it watches.
    assert_eq!(
        (
            rdp.packets,
            rdp.bytes,
            rdp.reverse_packets,
            rdp.reverse_bytes
        ),
        (Some(0), Some(0), Some(0), Some(0))
    );
    assert_eq!(
        extra["target_resource_id"],
        "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/myResourceGroup/providers/Microsoft.Network/virtualNetworks/myVNet"
    );
    assert_eq!(extra["encryption"], "NX");
    // Tuples that wrote no counts (version 1, and version 2's begin tuples, ",,,,") say so;
    // those that wrote them (zeros included) do not.
    let counts_absent =
        |f: &&controlplane::store::FlowRow| f.extra.as_ref().and_then(|e| e.get("absent")).cloned();
    let absent: Vec<_> = azure.iter().filter_map(|f| counts_absent(&f)).collect();
    assert_eq!(absent.len(), 3, "{absent:?}");
    assert!(
        absent
            .iter()
            .all(|a| a
                == &serde_json::json!(["packets", "bytes", "reverse_packets", "reverse_bytes"]))
    );
    assert!(
        counts_absent(&&rdp).is_none(),
        "the v4 tuple wrote its zeros"
    );
}

/// `import` takes each file exactly once, by its content, like the watched directory: again,
/// under another name, or from standard input, it is not stored twice; an import killed
/// midway or a file cut short stores nothing of it, and running it again stores it once.
#[test]
fn an_import_is_exactly_once_by_content_even_when_cut_short() {
    let dir = TempDir::new("import-once");
    let data = dir.0.join("data");
    let records = |n: usize, first_port: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "2 123456789010 eni-1 10.0.{}.{} 10.1.0.1 {} 443 6 3 180 1795860000 1795860060 ACCEPT OK\n",
                    (i >> 8) & 0xff,
                    i & 0xff,
                    first_port + i % 20_000
                )
            })
            .collect()
    };
    let a = dir.0.join("a.log");
    std::fs::write(&a, records(1000, 10_000)).expect("write");
    let a = a.to_str().expect("utf8");
    assert!(summary(&import(&data, &["aws", a], None)).contains("stored 1000"));
    let again = summary(&import(&data, &["aws", a], None));
    assert!(
        again.contains("stored 0") && again.contains("1 file(s) imported before"),
        "{again}"
    );
    let copy = dir.0.join("copy-of-a.log");
    std::fs::copy(a, &copy).expect("copy");
    let text = std::fs::read_to_string(a).expect("read");
    assert!(
        summary(&import(&data, &["aws", copy.to_str().expect("utf8")], None)).contains("stored 0")
    );
    assert!(summary(&import(&data, &["aws", "-"], Some(&text))).contains("stored 0"));
    assert_eq!(stored_aws(&data), 1000);
    // From standard input, new content: once, then not again.
    let b = records(500, 30_000);
    assert!(summary(&import(&data, &["aws", "-"], Some(&b))).contains("stored 500"));
    assert!(summary(&import(&data, &["aws", "-"], Some(&b))).contains("stored 0"));
    assert_eq!(stored_aws(&data), 1500);

    // A gzip file cut short: exit 1, nothing of it stored, the other file imported; twice.
    let big = gzip(&records(200_000, 40_000));
    let cut = dir.0.join("cut.log.gz");
    std::fs::write(&cut, &big[..big.len() * 2 / 3]).expect("write");
    let c = dir.0.join("c.log");
    std::fs::write(&c, records(10, 60_000)).expect("write");
    for run in 0..2 {
        let o = import(
            &data,
            &[
                "aws",
                cut.to_str().expect("utf8"),
                c.to_str().expect("utf8"),
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{stderr}");
        assert!(stderr.contains("not imported"), "{stderr}");
        assert!(stderr.contains("1 file(s) not imported"), "{stderr}");
        assert_eq!(stored_aws(&data), 1510, "run {run}");
    }

    // Killed midway (SIGKILL), then run again: every record once.
    let big_file = dir.0.join("big.log.gz");
    std::fs::write(&big_file, &big).expect("write");
    let mut child = Command::new(tests::bin("picket-controlplane"))
        .args([
            "import",
            "aws",
            big_file.to_str().expect("utf8"),
            "--data-dir",
        ])
        .arg(&data)
        .envs(tests::servers::store_env(&data))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("import");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let running = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(running, "the import ended before it could be killed midway");
    let left = stored_aws(&data);
    if on_clickhouse(&data) {
        // No transactions: the killed attempt's rows stay until the file is imported again,
        // which takes them away before writing (docs/servers.md, "Exactly once").
        assert!((1510..=201_510).contains(&left), "{left}");
    } else {
        assert_eq!(left, 1510, "a killed import left nothing");
    }
    let o = summary(&import(
        &data,
        &["aws", big_file.to_str().expect("utf8")],
        None,
    ));
    assert!(o.contains("stored 200000"), "{o}");
    assert_eq!(stored_aws(&data), 201_510);
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

/// Every field of AWS's VPC flow log versions 2 to 8, in one custom format (the header names
/// them in an order of its own), read back as the API returns them, field by field: mapped to
/// the flow's columns, or kept in its extras under the provider's name; and a record that
/// writes `-` for most of them, whose absent fields are null or not listed, never 0.
#[test]
fn aws_every_documented_field_is_mapped_or_kept() {
    let dir = TempDir::new("aws-fields");
    let data = dir.0.join("data");
    let text = "\
version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr region az-id sublocation-type sublocation-id pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path ecs-cluster-arn ecs-cluster-name ecs-container-instance-arn ecs-container-instance-id ecs-container-id ecs-second-container-id ecs-service-name ecs-task-definition-arn ecs-task-arn ecs-task-id reject-reason
8 123456789010 eni-0a1b2c3d4e5f60718 10.0.4.20 52.94.133.131 48622 443 6 12 5120 1732000000 1732000060 ACCEPT OK vpc-0c0ffee0c0ffee000 subnet-0aa0aa0aa0aa0aa00 i-0123456789abcdef0 27 IPv4 10.0.4.20 52.94.133.131 us-west-2 usw2-wl1-lax-wlz1 wavelength subloc-0123456789abcdef0 - S3 egress 8 arn:aws:ecs:us-west-2:123456789010:cluster/shop shop arn:aws:ecs:us-west-2:123456789010:container-instance/shop/0f1e2d3c4b5a69788 0f1e2d3c4b5a69788 5a6b7c8d9e0f1a2b3c4d5e6f 9f8e7d6c5b4a39281706f5e4 cart arn:aws:ecs:us-west-2:123456789010:task-definition/cart:42 arn:aws:ecs:us-west-2:123456789010:task/shop/aaaabbbbccccdddd aaaabbbbccccdddd -
8 123456789010 eni-0a1b2c3d4e5f60718 198.51.100.23 10.0.4.20 - - - - - 1732000100 1732000160 REJECT OK vpc-0c0ffee0c0ffee000 - - - - - - - - - - - - ingress - - - - - - - - - - - BPA
";
    let o = import(&data, &["aws", "-"], Some(text));
    assert_eq!(
        summary(&o),
        "aws: 1 file(s): read 2, stored 2, rejected 0, skipped 0 (NODATA: no traffic), SKIPDATA 0 (flows the provider dropped from its log)"
    );
    let f = the_flow(&data, |f| f.src_ip == "10.0.4.20");
    assert_eq!(
        (
            &f.source[..],
            &f.observer[..],
            &f.interface[..],
            &f.dst_ip[..]
        ),
        (
            "aws",
            "123456789010",
            "eni-0a1b2c3d4e5f60718",
            "52.94.133.131"
        )
    );
    assert_eq!(
        (f.src_port, f.dst_port, f.protocol, f.packets, f.bytes),
        (Some(48622), Some(443), Some(6), Some(12), Some(5120))
    );
    assert_eq!(
        (f.start_ns, f.end_ns),
        (1_732_000_000_000_000_000, 1_732_000_060_000_000_000)
    );
    assert_eq!(
        (&f.action[..], f.tcp_flags, &f.direction[..]),
        ("accept", 27, "egress")
    );
    assert_eq!(
        (
            f.vpc.as_deref(),
            f.subnet.as_deref(),
            f.instance.as_deref(),
            f.region.as_deref(),
            f.zone.as_deref(),
            f.pkt_src_ip.as_deref(),
            f.pkt_dst_ip.as_deref()
        ),
        (
            Some("vpc-0c0ffee0c0ffee000"),
            Some("subnet-0aa0aa0aa0aa0aa00"),
            Some("i-0123456789abcdef0"),
            Some("us-west-2"),
            Some("usw2-wl1-lax-wlz1"),
            Some("10.0.4.20"),
            Some("52.94.133.131")
        )
    );
    // One direction: nothing is said of the other.
    assert_eq!((f.reverse_packets, f.reverse_bytes), (None, None));
    assert_eq!(
        f.extra.expect("extras"),
        serde_json::json!({
            "type": "IPv4",
            "pkt_dst_aws_service": "S3",
            "traffic_path": 8,
            "sublocation_type": "wavelength",
            "sublocation_id": "subloc-0123456789abcdef0",
            "ecs_cluster_arn": "arn:aws:ecs:us-west-2:123456789010:cluster/shop",
            "ecs_cluster_name": "shop",
            "ecs_container_instance_arn":
                "arn:aws:ecs:us-west-2:123456789010:container-instance/shop/0f1e2d3c4b5a69788",
            "ecs_container_instance_id": "0f1e2d3c4b5a69788",
            "ecs_container_id": "5a6b7c8d9e0f1a2b3c4d5e6f",
            "ecs_second_container_id": "9f8e7d6c5b4a39281706f5e4",
            "ecs_service_name": "cart",
            "ecs_task_definition_arn": "arn:aws:ecs:us-west-2:123456789010:task-definition/cart:42",
            "ecs_task_arn": "arn:aws:ecs:us-west-2:123456789010:task/shop/aaaabbbbccccdddd",
            "ecs_task_id": "aaaabbbbccccdddd",
        })
    );
    // The rejected record wrote `-` for all but its addresses, times, action, VPC, direction
    // and the reason: nothing else is given a value.
    let r = the_flow(&data, |f| f.src_ip == "198.51.100.23");
    assert_eq!(
        (r.src_port, r.dst_port, r.protocol, r.packets, r.bytes),
        (None, None, None, None, None)
    );
    assert_eq!(
        (&r.action[..], r.tcp_flags, &r.direction[..]),
        ("reject", 0, "ingress")
    );
    assert_eq!(
        (
            r.subnet,
            r.instance,
            r.region,
            r.zone,
            r.pkt_src_ip,
            r.pkt_dst_ip
        ),
        (None, None, None, None, None, None)
    );
    assert_eq!(r.vpc.as_deref(), Some("vpc-0c0ffee0c0ffee000"));
    assert_eq!(
        r.extra.expect("extras"),
        serde_json::json!({
            "reject_reason": "BPA",
            "absent": ["protocol", "src_port", "dst_port", "packets", "bytes"],
        })
    );
}

/// A transit gateway's flow log (AWS's documented TGW fields, version 6): the source and
/// destination context and the four lost-packet causes apart, field by field; the columns take
/// the source side's VPC, subnet and zone, and the attachment as the interface.
#[test]
fn aws_transit_gateway_fields_are_kept_apart() {
    let dir = TempDir::new("aws-tgw-fields");
    let data = dir.0.join("data");
    let text = "\
version resource-type account-id tgw-id tgw-attachment-id tgw-src-vpc-account-id tgw-dst-vpc-account-id tgw-src-vpc-id tgw-dst-vpc-id tgw-src-subnet-id tgw-dst-subnet-id tgw-src-eni tgw-dst-eni tgw-src-az-id tgw-dst-az-id tgw-pair-attachment-id srcaddr dstaddr srcport dstport protocol packets bytes start end log-status type packets-lost-no-route packets-lost-blackhole packets-lost-mtu-exceeded packets-lost-ttl-expired tcp-flags region flow-direction pkt-src-aws-service pkt-dst-aws-service
6 TransitGateway 123456789010 tgw-0123456789abcdef0 tgw-attach-0a0a0a0a0a0a0a0a0 123456789010 210987654321 vpc-0aaaaaaaaaaaaaaa1 vpc-0bbbbbbbbbbbbbbb2 subnet-0aaaaaaaaaaaaaaa1 subnet-0bbbbbbbbbbbbbbb2 eni-0aaaaaaaaaaaaaaa1 eni-0bbbbbbbbbbbbbbb2 use1-az1 use1-az2 tgw-attach-0b0b0b0b0b0b0b0b0 10.1.0.5 10.2.0.9 40100 5432 6 30 9000 1732000000 1732000060 OK IPv4 0 0 7 0 19 us-east-1 egress - -
";
    let o = import(&data, &["aws", "-"], Some(text));
    assert_eq!(
        summary(&o),
        "aws: 1 file(s): read 1, stored 1, rejected 0, skipped 0 (NODATA: no traffic), SKIPDATA 0 (flows the provider dropped from its log)"
    );
    let f = the_flow(&data, |f| f.source == "aws");
    assert_eq!(
        (
            &f.observer[..],
            &f.interface[..],
            f.vpc.as_deref(),
            f.subnet.as_deref(),
            f.zone.as_deref(),
            f.region.as_deref(),
            &f.direction[..]
        ),
        (
            "123456789010",
            "tgw-attach-0a0a0a0a0a0a0a0a0",
            Some("vpc-0aaaaaaaaaaaaaaa1"),
            Some("subnet-0aaaaaaaaaaaaaaa1"),
            Some("use1-az1"),
            Some("us-east-1"),
            "egress"
        )
    );
    assert_eq!(
        (
            f.src_port,
            f.dst_port,
            f.protocol,
            f.packets,
            f.bytes,
            f.tcp_flags
        ),
        (Some(40100), Some(5432), Some(6), Some(30), Some(9000), 19)
    );
    assert_eq!(
        f.extra.expect("extras"),
        serde_json::json!({
            "type": "IPv4",
            "resource_type": "TransitGateway",
            "tgw_id": "tgw-0123456789abcdef0",
            "tgw_attachment_id": "tgw-attach-0a0a0a0a0a0a0a0a0",
            "tgw_src_vpc_account_id": "123456789010",
            "tgw_dst_vpc_account_id": "210987654321",
            "tgw_src_vpc_id": "vpc-0aaaaaaaaaaaaaaa1",
            "tgw_dst_vpc_id": "vpc-0bbbbbbbbbbbbbbb2",
            "tgw_src_subnet_id": "subnet-0aaaaaaaaaaaaaaa1",
            "tgw_dst_subnet_id": "subnet-0bbbbbbbbbbbbbbb2",
            "tgw_src_eni": "eni-0aaaaaaaaaaaaaaa1",
            "tgw_dst_eni": "eni-0bbbbbbbbbbbbbbb2",
            "tgw_src_az_id": "use1-az1",
            "tgw_dst_az_id": "use1-az2",
            "tgw_pair_attachment_id": "tgw-attach-0b0b0b0b0b0b0b0b0",
            "packets_lost": 7,
            "packets_lost_no_route": 0,
            "packets_lost_blackhole": 0,
            "packets_lost_mtu_exceeded": 7,
            "packets_lost_ttl_expired": 0,
        })
    );
}

/// Every field of GCP's VPC Flow Logs record format, read back as the API returns it: the
/// reporting side's instance and VPC as the columns, both sides' details, locations (with the
/// ASN), Google services, instance groups, GKE details, gateways and the newer fields kept
/// under their own names; and an entry without counts or times: counts null, its time the
/// entry's `timestamp`, marked.
#[test]
fn gcp_every_documented_field_is_mapped_or_kept() {
    let dir = TempDir::new("gcp-fields");
    let data = dir.0.join("data");
    let full = r#"{"insertId":"f1","jsonPayload":{"connection":{"src_ip":"10.10.0.7","src_port":38211,"dest_ip":"10.20.0.9","dest_port":8443,"protocol":6},"reporter":"DEST","rtt_msec":"4","round_trip_time":{"median_msec":"3.9"},"bytes_sent":"64000","packets_sent":"80","start_time":"2026-11-29T10:00:00.5Z","end_time":"2026-11-29T10:00:05.25Z","src_instance":{"project_id":"p-a","vm_name":"batch-1","region":"europe-west1","zone":"europe-west1-c","managed_instance_group":{"name":"batch","region":"europe-west1"}},"dest_instance":{"project_id":"p-b","vm_name":"gke-node-3","region":"europe-west4","zone":"europe-west4-a","managed_instance_group":{"name":"gke-pool","zone":"europe-west4-a"}},"src_vpc":{"project_id":"p-a","vpc_name":"batch","subnetwork_name":"batch-eu"},"dest_vpc":{"project_id":"p-b","vpc_name":"shared","subnetwork_name":"gke-eu"},"src_location":{"continent":"Europe","country":"bel","region":"Brussels","city":"Brussels"},"dest_google_service":{"type":"GOOGLE_API_VPC_SC","service_name":"pubsub.googleapis.com","connectivity":"PRIVATE_SERVICE_CONNECT"},"dest_gke_details":{"cluster":{"cluster_location":"europe-west4","cluster_name":"prod"},"pod":{"pod_name":"api-5d8f","pod_namespace":"shop","pod_workload":{"workload_name":"api","workload_type":"DEPLOYMENT"}},"service":[{"service_name":"api","service_namespace":"shop"}]},"src_gateway":{"type":"INTERCONNECT_ATTACHMENT","project_id":"p-net","vpc":{"project_id":"p-net","vpc_name":"hub"},"name":"ic-1","location":"europe-west1","interconnect_attachment":{"name":"ic-1","cloud_router_name":"r-1"}},"network_service":{"dscp":46}},"logName":"projects/p-b/logs/compute.googleapis.com%2Fvpc_flows","resource":{"type":"gce_subnetwork","labels":{"project_id":"p-b","subnetwork_name":"gke-eu","location":"europe-west4-a"}},"timestamp":"2026-11-29T10:00:10Z"}"#;
    let bare = r#"{"insertId":"f2","jsonPayload":{"connection":{"src_ip":"10.10.0.8","src_port":53,"dest_ip":"10.20.0.10","dest_port":40000,"protocol":17},"reporter":"SRC"},"logName":"projects/p-a/logs/compute.googleapis.com%2Fvpc_flows","timestamp":"2026-11-29T11:00:00.75Z"}"#;
    let o = import(
        &data,
        &["gcp", "--sampling-rate", "1", "-"],
        Some(&format!("{full}\n{bare}\n")),
    );
    assert_eq!(summary(&o), "gcp: 1 file(s): read 2, stored 2, rejected 0");
    let f = the_flow(&data, |f| f.src_ip == "10.10.0.7");
    assert_eq!(
        (
            &f.observer[..],
            &f.interface[..],
            &f.dst_ip[..],
            f.src_port,
            f.dst_port,
            f.protocol,
            f.packets,
            f.bytes
        ),
        (
            "p-b",
            "gke-node-3",
            "10.20.0.9",
            Some(38211),
            Some(8443),
            Some(6),
            Some(80),
            Some(64000)
        )
    );
    assert_eq!(
        (
            f.start_ns,
            f.end_ns,
            f.sampling_rate,
            &f.direction[..],
            &f.action[..]
        ),
        (
            1_795_946_400_500_000_000,
            1_795_946_405_250_000_000,
            1.0,
            "ingress",
            ""
        )
    );
    assert_eq!(
        (
            f.vpc.as_deref(),
            f.subnet.as_deref(),
            f.instance.as_deref(),
            f.region.as_deref(),
            f.zone.as_deref()
        ),
        (
            Some("shared"),
            Some("gke-eu"),
            Some("gke-node-3"),
            Some("europe-west4"),
            Some("europe-west4-a")
        )
    );
    assert_eq!((f.reverse_packets, f.reverse_bytes), (None, None));
    assert_eq!(
        f.extra.expect("extras"),
        serde_json::json!({
            "reporter": "DEST",
            "rtt_msec": 4,
            "src_vm": "batch-1",
            "dest_vm": "gke-node-3",
            "src_country": "bel",
            "src_instance": {"project_id": "p-a", "vm_name": "batch-1", "region": "europe-west1",
                "zone": "europe-west1-c",
                "managed_instance_group": {"name": "batch", "region": "europe-west1"}},
            "dest_instance": {"project_id": "p-b", "vm_name": "gke-node-3",
                "region": "europe-west4", "zone": "europe-west4-a",
                "managed_instance_group": {"name": "gke-pool", "zone": "europe-west4-a"}},
            "src_vpc": {"project_id": "p-a", "vpc_name": "batch", "subnetwork_name": "batch-eu"},
            "dest_vpc": {"project_id": "p-b", "vpc_name": "shared", "subnetwork_name": "gke-eu"},
            "src_location": {"continent": "Europe", "country": "bel", "region": "Brussels",
                "city": "Brussels"},
            "dest_google_service": {"type": "GOOGLE_API_VPC_SC",
                "service_name": "pubsub.googleapis.com",
                "connectivity": "PRIVATE_SERVICE_CONNECT"},
            "round_trip_time": {"median_msec": "3.9"},
            "dest_gke_details": {"cluster": {"cluster_location": "europe-west4",
                "cluster_name": "prod"},
                "pod": {"pod_name": "api-5d8f", "pod_namespace": "shop",
                    "pod_workload": {"workload_name": "api", "workload_type": "DEPLOYMENT"}},
                "service": [{"service_name": "api", "service_namespace": "shop"}]},
            "src_gateway": {"type": "INTERCONNECT_ATTACHMENT", "project_id": "p-net",
                "vpc": {"project_id": "p-net", "vpc_name": "hub"}, "name": "ic-1",
                "location": "europe-west1",
                "interconnect_attachment": {"name": "ic-1", "cloud_router_name": "r-1"}},
            "network_service": {"dscp": 46},
        })
    );
    let b = the_flow(&data, |f| f.src_ip == "10.10.0.8");
    assert_eq!(
        (b.src_port, b.dst_port, b.protocol, b.packets, b.bytes),
        (Some(53), Some(40000), Some(17), None, None)
    );
    assert_eq!(
        (b.start_ns, b.end_ns, &b.observer[..], &b.direction[..]),
        (
            1_795_950_000_750_000_000,
            1_795_950_000_750_000_000,
            "p-a",
            "egress"
        )
    );
    assert_eq!(
        (b.vpc, b.subnet, b.instance, b.region, b.zone),
        (None, None, None, None, None)
    );
    assert_eq!(
        b.extra.expect("extras"),
        serde_json::json!({
            "reporter": "SRC",
            "time_from": "entry",
            "absent": ["packets", "bytes"],
        })
    );
}
