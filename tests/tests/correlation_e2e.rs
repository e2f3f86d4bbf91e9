//! A real sensor streams a UDP conversation to a real control plane; an AWS flow log record of
//! the same conversation is imported; the two are linked, the sensor flow gets the cloud's
//! VPC, subnet, instance and action, and an address seen only by the cloud is a coverage gap.

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{ControlPlane, Lab, Sensor, TempDir, bin};

#[test]
fn sensor_flow_and_aws_record_are_linked_and_gaps_listed() {
    let lab = Lab::new();
    let dir = TempDir::new("correlate");
    let data = dir.0.join("cp");
    let key = dir.0.join("sensor.key");
    std::fs::write(&key, ControlPlane::add_sensor(&data, "lab-b")).expect("key");
    let cp = ControlPlane::start(&lab.b, &data, "127.0.0.1:7443", &dir.0.join("cp.log"));
    let flags = tests::export_flags(&lab.vb, "http://127.0.0.1:7443", &key, &dir.0.join("spool"));
    let mut sensor = Sensor::start(&lab.b, &tests::strs(&flags));
    sensor.wait_for_log("connected to the control plane", Duration::from_secs(20));

    let saddr: SocketAddr = format!("{}:5353", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let s = UdpSocket::bind(saddr).expect("bind");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            let (_, from) = s.recv_from(&mut buf).expect("recv");
            s.send_to(&[9u8; 300], from).expect("reply");
        }
    });
    rx.recv().expect("ready");
    tests::in_netns(&lab.a, move || {
        let s = UdpSocket::bind("0.0.0.0:40000").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            s.send_to(&[1u8; 200], saddr).expect("send");
            s.recv_from(&mut buf).expect("reply");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
    // Stopping flushes the conversation to the control plane.
    sensor.stop();

    // The cloud's view of the same conversation (a custom format with VPC metadata), and a
    // host of the VPC that no sensor watches.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (start, end) = (now - 120, now + 60);
    let log = dir.0.join("vpc.log");
    std::fs::write(
        &log,
        format!(
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status vpc-id subnet-id instance-id\n\
             5 123456789010 eni-0b1 {a} {b} 40000 5353 17 10 2280 {start} {end} ACCEPT OK vpc-0lab subnet-0lab i-0lab\n\
             5 123456789010 eni-0b1 10.99.0.7 {b} 5555 53 17 1 60 {start} {end} ACCEPT OK vpc-0lab subnet-0lab i-0lab\n",
            a = lab.ip_a,
            b = lab.ip_b
        ),
    )
    .expect("log");
    let o = Command::new(bin("picket-controlplane"))
        .args(["import", "aws"])
        .arg(&log)
        .arg("--data-dir")
        .arg(&data)
        .envs(tests::servers::store_env(&data))
        .output()
        .expect("import");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("links=1"), "{stderr}");

    let get = |path: &str| -> Value {
        let (s, body) = cp.get(path);
        assert_eq!(s, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    };
    let v = get("/api/v1/flows?source=sensor&port=5353");
    let f = v["flows"].as_array().expect("flows");
    assert_eq!(f.len(), 1, "{v}");
    let f = &f[0];
    assert_eq!(
        (&f["src_ip"], &f["packets"], &f["reverse_packets"]),
        (
            &Value::from(lab.ip_a.clone()),
            &Value::from(10),
            &Value::from(10)
        )
    );
    assert_eq!(f["vpc"], "vpc-0lab");
    assert_eq!(f["subnet"], "subnet-0lab");
    assert_eq!(f["instance"], "i-0lab");
    assert_eq!(f["action"], "accept");
    assert_eq!(f["correlated"], 1);
    let v = get("/api/v1/flows?source=aws&port=5353");
    assert_eq!(v["flows"][0]["correlated"], 1);
    let v = get("/api/v1/flows?source=aws&port=53");
    assert_eq!(v["flows"][0]["correlated"], 0);

    // Coverage: lab-b registered its interface address; the other two are only in the log.
    let v = get("/api/v1/coverage");
    let gaps: Vec<&str> = v["gaps"]
        .as_array()
        .expect("gaps")
        .iter()
        .map(|g| g["ip"].as_str().expect("ip"))
        .collect();
    // By address, not as text: 10.99.0.7 before 10.222.0.1.
    let mut want = vec![lab.ip_a.as_str(), "10.99.0.7"];
    want.sort_by_key(|a| a.parse::<std::net::IpAddr>().expect("ip"));
    assert_eq!(gaps, want, "{v}");
    assert_eq!(v["gaps"][0]["observers"][0], "123456789010");
    // The gaps are also an alert about their VPC, raised by the import.
    let v = get("/api/v1/alerts?type=sensor_coverage_gap");
    let alerts = v["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{v}");
    let a = &alerts[0];
    assert_eq!(a["source"], "vpc-0lab");
    let mut targets: Vec<&str> = a["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t.as_str().expect("address"))
        .collect();
    targets.sort_by_key(|a| a.parse::<std::net::IpAddr>().expect("ip"));
    assert_eq!(targets, want, "{a}");
    assert_eq!(a["observations"][0]["kind"], "cloud_only_addresses");
    assert_eq!(a["observations"][0]["addresses"], 2);
    assert_eq!(a["sources"], serde_json::json!(["cloud:123456789010"]));
    cp.stop();
    // The sensor baselines learned the client as a device of its network from the sensor's
    // flow, and saved it as the control plane stopped.
    let store = tests::servers::open_state(&data);
    let devices = store
        .detector_state("sensor/new_internal_device")
        .expect("state");
    let [x, y, _, _] = lab.ip_a.parse::<std::net::Ipv4Addr>().expect("v4").octets();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].0, format!("{x}.{y}.0.0"));
    assert!(
        devices[0].1.contains(&format!("\"{}\"", lab.ip_a)),
        "{devices:?}"
    );
}
