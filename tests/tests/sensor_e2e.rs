//! End-to-end tests of the sensor: the real picket-sensor binary with the real embedded eBPF
//! object, attached to veths in namespaces each test creates, counting real packets. Counts are
//! compared with exact expectations and with an independent oracle (tcpdump on the peer).
//!
//! Needs root. Run with `cargo xtask test`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use tests::{
    Capture, Lab, Sensor, TempDir, attached_xdp, deep_fifo, hex_ip, hex_mac, mac, pcap::FlowId,
    sh_in, tc_filters, tc_programs, trafgen, udp4_frame,
};

/// Long interval: everything lands in the final drain, so each conversation is one record.
const ONE_DRAIN: &[&str] = &["--export-interval", "600"];

fn oracle(
    cap: &std::collections::HashMap<FlowId, (u64, u64)>,
    src: &str,
    dst: &str,
    proto: u8,
    sport: Option<u16>,
    dport: Option<u16>,
) -> (u64, u64) {
    let mut t = (0, 0);
    for (id, (p, b)) in cap {
        if id.src == tests::ip(src)
            && id.dst == tests::ip(dst)
            && id.protocol == proto
            && sport.is_none_or(|s| id.sport == s)
            && dport.is_none_or(|d| id.dport == d)
        {
            t.0 += p;
            t.1 += b;
        }
    }
    t
}

#[test]
fn icmp_echo_counts_exactly_in_both_directions() {
    let lab = Lab::new();
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, ONE_DRAIN[0], ONE_DRAIN[1]]);
    sh_in(
        &lab.a,
        "ping",
        &["-c", "4", "-i", "0.2", "-s", "100", "-W", "2", &lab.ip_b],
    );
    let out = sensor.stop();
    // 4 requests in (XDP), 4 replies out (tc), each 20 (IP) + 8 (ICMP) + 100 bytes.
    assert_eq!(
        out.totals(&lab.ip_a, &lab.ip_b, 1, Some(8), Some(0)),
        (4, 4 * 128, 4, 4 * 128)
    );
    let rec = &out.flows_where(|f| f["protocol"] == 1 && f["src_ip"] == lab.ip_a.as_str())[0];
    assert_eq!(rec["observed"], "ingress+egress");
    assert_eq!(rec["iface"], lab.vb.as_str());
    assert_eq!(
        out.kernel("packets_seen"),
        out.kernel("packets_parsed") + out.kernel("unparsed_non_ip")
    );
    assert_eq!(out.kernel("flow_insert_failed"), 0);
    assert_eq!(out.kernel("flow_entries_evicted_or_pending"), 0);
}

#[test]
fn tcp_exchange_with_data_matches_the_wire() {
    let lab = Lab::new();
    lab.no_offloads();
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, ONE_DRAIN[0], ONE_DRAIN[1]]);
    let cap = Capture::start(&lab.a, &lab.va);
    let addr: SocketAddr = format!("{}:5001", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 100_000];
        s.read_exact(&mut buf).expect("read request");
        s.write_all(&vec![7u8; 50_000]).expect("write reply");
    });
    rx.recv().expect("server ready");
    let client = tests::in_netns(&lab.a, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.write_all(&vec![1u8; 100_000]).expect("write");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), 50_000);
        s.local_addr().expect("local").port()
    });
    server.join().expect("server");
    let cport = client.join().expect("client");
    thread::sleep(Duration::from_millis(300)); // the final FIN/ACK exchange
    let wire = cap.stop();
    let out = sensor.stop();
    let fwd = oracle(&wire, &lab.ip_a, &lab.ip_b, 6, Some(cport), Some(5001));
    let rev = oracle(&wire, &lab.ip_b, &lab.ip_a, 6, Some(5001), Some(cport));
    assert!(
        fwd.0 > 70 && fwd.1 > 100_000,
        "oracle saw the request: {fwd:?}"
    );
    let got = out.totals(&lab.ip_a, &lab.ip_b, 6, Some(cport as u64), Some(5001));
    assert_eq!(got, (fwd.0, fwd.1, rev.0, rev.1), "sensor vs tcpdump");
    let rec = &out.flows_where(|f| f["protocol"] == 6 && f["dst_port"] == 5001)[0];
    assert_eq!(rec["initiator_by"], "syn");
    assert_eq!(
        rec["tcp_flags"].as_u64().expect("flags") & 0x13,
        0x13,
        "SYN, ACK and FIN from the client"
    );
}

#[test]
fn tcp_with_segmentation_offload_counts_wire_packets() {
    // Offloads on: the sender's stack hands tc egress GSO super-packets; the sensor must count
    // the segments that will cross the wire, not the skbs. The receiving side (XDP on the peer
    // disables GSO towards it) sees real segments, so the two sensors must agree exactly.
    let lab = Lab::new();
    deep_fifo(&lab.a, &lab.va);
    let dropped_before = tx_dropped(&lab.a, &lab.va);
    let sa = Sensor::start(&lab.a, &["--iface", &lab.va, ONE_DRAIN[0], ONE_DRAIN[1]]);
    let sb = Sensor::start(&lab.b, &["--iface", &lab.vb, ONE_DRAIN[0], ONE_DRAIN[1]]);
    let addr: SocketAddr = format!("{}:5002", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got.len()
    });
    rx.recv().expect("ready");
    let client = tests::in_netns(&lab.a, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.write_all(&vec![3u8; 2_000_000]).expect("write");
    });
    client.join().expect("client");
    assert_eq!(server.join().expect("server"), 2_000_000);
    thread::sleep(Duration::from_millis(300));
    let oa = sa.stop();
    let ob = sb.stop();
    let a = oa.totals(&lab.ip_a, &lab.ip_b, 6, None, Some(5002));
    let b = ob.totals(&lab.ip_a, &lab.ip_b, 6, None, Some(5002));
    assert!(a.0 > 1000, "2 MB is well over 1000 segments: {a:?}");
    let dropped = tx_dropped(&lab.a, &lab.va) - dropped_before;
    assert_eq!(dropped, 0, "the veth dropped segments (a: {a:?}, b: {b:?})");
    assert_eq!(
        (a.0, a.1),
        (b.0, b.1),
        "egress (tc, GSO) on a vs ingress (XDP) on b"
    );
    assert!(
        oa.kernel("gso_extra_segments") > 0,
        "the sender really used GSO"
    );
}

#[test]
fn udp_both_directions() {
    let lab = Lab::new();
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, ONE_DRAIN[0], ONE_DRAIN[1]]);
    let cap = Capture::start(&lab.a, &lab.va);
    let saddr: SocketAddr = format!("{}:5353", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let s = UdpSocket::bind(saddr).expect("bind");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            let (n, from) = s.recv_from(&mut buf).expect("recv");
            assert_eq!(n, 200);
            s.send_to(&[9u8; 300], from).expect("reply");
        }
    });
    rx.recv().expect("ready");
    let client = tests::in_netns(&lab.a, move || {
        let s = UdpSocket::bind("0.0.0.0:40000").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            s.send_to(&[1u8; 200], saddr).expect("send");
            let (n, _) = s.recv_from(&mut buf).expect("reply");
            assert_eq!(n, 300);
        }
    });
    client.join().expect("client");
    server.join().expect("server");
    let wire = cap.stop();
    let out = sensor.stop();
    let got = out.totals(&lab.ip_a, &lab.ip_b, 17, Some(40000), Some(5353));
    assert_eq!(got, (10, 10 * 228, 10, 10 * 328));
    let fwd = oracle(&wire, &lab.ip_a, &lab.ip_b, 17, Some(40000), Some(5353));
    let rev = oracle(&wire, &lab.ip_b, &lab.ip_a, 17, Some(5353), Some(40000));
    assert_eq!(got, (fwd.0, fwd.1, rev.0, rev.1));
}

#[test]
fn ipv6_icmp_and_udp() {
    let lab = Lab::new();
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, ONE_DRAIN[0], ONE_DRAIN[1]]);
    sh_in(
        &lab.a,
        "ping",
        &[
            "-6", "-c", "3", "-i", "0.2", "-s", "64", "-W", "2", &lab.ip6_b,
        ],
    );
    let saddr: SocketAddr = format!("[{}]:7000", lab.ip6_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let s = UdpSocket::bind(saddr).expect("bind");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..5 {
            let (_, from) = s.recv_from(&mut buf).expect("recv");
            s.send_to(&[0u8; 10], from).expect("reply");
        }
    });
    rx.recv().expect("ready");
    tests::in_netns(&lab.a, move || {
        let s = UdpSocket::bind("[::]:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            s.send_to(&[1u8; 100], saddr).expect("send");
            s.recv_from(&mut buf).expect("reply");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
    let out = sensor.stop();
    // ICMPv6 echo request (128/0): 40 + 8 + 64 bytes each way.
    assert_eq!(
        out.totals(&lab.ip6_a, &lab.ip6_b, 58, Some(128), Some(0)),
        (3, 3 * 112, 3, 3 * 112)
    );
    assert_eq!(
        out.totals(&lab.ip6_a, &lab.ip6_b, 17, None, Some(7000)),
        (5, 5 * 148, 5, 5 * 58)
    );
}

#[test]
fn vlan_and_qinq_tagged_traffic() {
    // VLAN devices need the 8021q module, which these machines cannot load: the tagged frames
    // are made by trafgen instead, in both directions (ingress XDP and egress tc on vb).
    let lab = Lab::new();
    let dir = TempDir::new("vlan");
    let (ma, mb) = (mac(&lab.a, &lab.va), mac(&lab.b, &lab.vb));
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, ONE_DRAIN[0], ONE_DRAIN[1]]);
    let q = [(0x8100, 100)];
    let qinq = [(0x88a8, 300), (0x8100, 200)];
    // In: a -> b, 802.1Q and QinQ. Out: b -> a, 802.1Q and QinQ.
    trafgen(
        &lab.a,
        &lab.va,
        &dir,
        "in1q.cfg",
        &udp4_frame(&mb, &ma, &q, ("10.77.0.1", 1111), ("10.77.0.2", 2222), 100),
        100,
    );
    trafgen(
        &lab.a,
        &lab.va,
        &dir,
        "inqq.cfg",
        &udp4_frame(
            &mb,
            &ma,
            &qinq,
            ("10.78.0.1", 1111),
            ("10.78.0.2", 2222),
            10,
        ),
        70,
    );
    trafgen(
        &lab.b,
        &lab.vb,
        &dir,
        "out1q.cfg",
        &udp4_frame(&ma, &mb, &q, ("10.77.0.2", 2222), ("10.77.0.1", 1111), 50),
        40,
    );
    trafgen(
        &lab.b,
        &lab.vb,
        &dir,
        "outqq.cfg",
        &udp4_frame(
            &ma,
            &mb,
            &qinq,
            ("10.78.0.2", 2222),
            ("10.78.0.1", 1111),
            20,
        ),
        30,
    );
    thread::sleep(Duration::from_millis(200));
    let out = sensor.stop();
    // The ingress direction is the initiator here (seen first); the egress frames are its reverse.
    assert_eq!(
        out.totals("10.77.0.1", "10.77.0.2", 17, Some(1111), Some(2222)),
        (100, 100 * 128, 40, 40 * 78),
        "802.1Q"
    );
    assert_eq!(
        out.totals("10.78.0.1", "10.78.0.2", 17, Some(1111), Some(2222)),
        (70, 70 * 38, 30, 30 * 48),
        "QinQ"
    );
    assert_eq!(out.kernel("vlan_tagged"), 240);
    let rec = &out.flows_where(|f| f["src_ip"] == "10.77.0.1")[0];
    assert_eq!(rec["observed"], "ingress+egress");
}

#[test]
fn nmap_syn_scan_yields_exactly_one_event_naming_the_scanner() {
    let lab = Lab::new();
    let open = format!("{}:8080", lab.ip_b);
    let listener = tests::in_netns(&lab.b, move || TcpListener::bind(&open).expect("bind"));
    let _listener = listener.join().expect("listener");
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["-p", "1-1000,8080"]);
    thread::sleep(Duration::from_millis(500));
    let out = sensor.stop();
    assert_eq!(
        out.scans.len(),
        1,
        "one event per source per window: {:?}",
        out.scans
    );
    let ev = &out.scans[0];
    assert_eq!(ev["src_ip"], lab.ip_a.as_str());
    assert_eq!(ev["probe"], "syn");
    assert!(ev["distinct_ports"].as_u64().expect("ports") >= 20);
    assert_eq!(ev["distinct_hosts"], 1);
    assert_eq!(ev["last_dst_ip"], lab.ip_b.as_str());
    assert_eq!(out.kernel("scan_events_dropped"), 0);
    // The target's RSTs and its SYN-ACK answer the probes, most of which were summed per
    // source once the scanner was flagged: they are the scanner's conversations, never ones
    // the target started.
    let from_target = out.flows_where(|f| f["src_ip"] == lab.ip_b.as_str());
    assert!(
        from_target.is_empty(),
        "{} flows started by the target, e.g. {:?}",
        from_target.len(),
        from_target.first()
    );
    let replies = out.flows_where(|f| {
        f["src_ip"] == lab.ip_a.as_str() && f["initiator_by"] == "reply" && f["packets"] == 0
    });
    // Every port probed answered (a RST, or the SYN-ACK of 8080): each is a conversation of
    // the scanner's, whether its probe was recorded (paired) or summed (a lone reply).
    let ports: std::collections::BTreeSet<u64> = out
        .flows_where(|f| f["src_ip"] == lab.ip_a.as_str() && f["reverse_packets"] != 0)
        .iter()
        .filter_map(|f| f["dst_port"].as_u64())
        .collect();
    assert_eq!(
        ports.len(),
        1001,
        "ports answered, as the scanner's conversations"
    );
    assert!(replies.len() >= 100, "{} lone replies", replies.len());
    let open = out.flows_where(|f| {
        f["src_ip"] == lab.ip_a.as_str() && f["dst_port"] == 8080 && f["reverse_packets"] != 0
    });
    assert!(
        !open.is_empty(),
        "the open port's answer, as the scanner's conversation"
    );
}

/// nmap's ACK, FIN and UDP scans: the target answers with RSTs and ICMP port unreachables
/// (rate-limited by its kernel), in the scanner's conversations, never in ones the target
/// started.
#[test]
fn ack_fin_and_udp_scan_replies_are_the_scanners_conversations() {
    let lab = Lab::new();
    let open = format!("{}:8080", lab.ip_b);
    let listener = tests::in_netns(&lab.b, move || TcpListener::bind(&open).expect("bind"));
    let _listener = listener.join().expect("listener");
    for (scan, ports, reply) in [
        ("-sA", "1-200", 6),
        ("-sF", "1-200", 6),
        ("-sU", "1-100", 1),
    ] {
        let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
        tests::sh_in(
            &lab.a,
            "nmap",
            &[
                scan,
                "-n",
                "-Pn",
                "-T4",
                "--max-retries",
                "1",
                "-p",
                ports,
                &lab.ip_b,
            ],
        );
        thread::sleep(Duration::from_millis(500));
        let out = sensor.stop();
        let from_target = out.flows_where(|f| f["src_ip"] == lab.ip_b.as_str());
        assert!(
            from_target.is_empty(),
            "{scan}: {} flows started by the target, e.g. {:?}",
            from_target.len(),
            from_target.first()
        );
        // Answered: RSTs in the probes' own conversations (these probes are recorded per flow,
        // the replies paired with them), ICMP errors as lone replies joined to the scanner.
        let answered = out.flows_where(|f| {
            f["src_ip"] == lab.ip_a.as_str()
                && f["protocol"] == reply
                && f["reverse_packets"] != 0
                && (reply == 6 || f["initiator_by"] == "reply")
        });
        assert!(!answered.is_empty(), "{scan}: the target's answers");
    }
}

/// A capture that begins after the handshakes: the first packet the sensor sees of each
/// conversation is a bare ACK with data, from the server on one and from the client on the
/// other. Both keep the client as the initiator, on the ephemeral port it connected from.
#[test]
fn a_capture_begun_mid_conversation_keeps_the_client_as_initiator() {
    let lab = Lab::new();
    let addr: SocketAddr = format!("{}:8080", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    // Server: two sessions; on the first it speaks first once told to, on the second it
    // answers.
    let server = tests::in_netns(&lab.b, move || {
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        let (mut first, _) = l.accept().expect("accept");
        let (mut second, _) = l.accept().expect("accept");
        go_rx.recv().expect("go");
        let mut b = [0u8; 64];
        for _ in 0..5 {
            first.write_all(b"tick").expect("write");
            let _ = first.read(&mut b).expect("read");
        }
        for _ in 0..5 {
            let _ = second.read(&mut b).expect("read");
            second.write_all(b"pong").expect("write");
        }
    });
    rx.recv().expect("ready");
    let (ctx, crx) = std::sync::mpsc::channel();
    let (start_tx, start_rx) = std::sync::mpsc::channel::<()>();
    let client = tests::in_netns(&lab.a, move || {
        let mut first = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        let mut second =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        let ports = (
            first.local_addr().expect("addr").port(),
            second.local_addr().expect("addr").port(),
        );
        ctx.send(ports).expect("ports");
        start_rx.recv().expect("start");
        let mut b = [0u8; 64];
        for _ in 0..5 {
            let _ = first.read(&mut b).expect("read");
            first.write_all(b"tock").expect("write");
        }
        for _ in 0..5 {
            second.write_all(b"ping").expect("write");
            let _ = second.read(&mut b).expect("read");
        }
    });
    let (p1, p2) = crx.recv().expect("ports");
    // The handshakes are done (and their last ACKs sent) before the sensor starts.
    thread::sleep(Duration::from_millis(300));
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
    go_tx.send(()).expect("go");
    start_tx.send(()).expect("start");
    client.join().expect("client");
    server.join().expect("server");
    thread::sleep(Duration::from_millis(300));
    let out = sensor.stop();
    let from_server = out.flows_where(|f| f["src_ip"] == lab.ip_b.as_str());
    assert!(from_server.is_empty(), "{from_server:?}");
    for port in [p1, p2] {
        let f = out.flows_where(|f| f["src_ip"] == lab.ip_a.as_str() && f["src_port"] == port);
        assert!(
            !f.is_empty(),
            "the session from port {port}: {:?}",
            out.flows
        );
        for f in f {
            assert_eq!(f["dst_port"], 8080, "{f}");
            assert_ne!(f["initiator_by"], "first_seen", "{f}");
            assert_ne!(f["initiator_by"], "one_way", "{f}");
        }
    }
    // Ten data segments each way, plus the ACKs and the ends; the counts add up to the
    // sessions' packets as the kernel saw them.
    let total: u64 = out
        .flows
        .iter()
        .map(|f| f["packets"].as_u64().expect("p") + f["reverse_packets"].as_u64().expect("r"))
        .sum();
    assert_eq!(total, out.kernel("packets_parsed"));
}

#[test]
fn benign_client_with_hundreds_of_connections_to_one_port_yields_no_event() {
    let lab = Lab::new();
    let addr: SocketAddr = format!("{}:8081", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for _ in 0..300 {
            let (mut s, _) = l.accept().expect("accept");
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"ok");
        }
    });
    rx.recv().expect("ready");
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
    tests::in_netns(&lab.a, move || {
        for _ in 0..300 {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.write_all(b"hello").expect("write");
            let mut b = Vec::new();
            s.read_to_end(&mut b).expect("read");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
    thread::sleep(Duration::from_millis(300));
    let out = sensor.stop();
    assert!(
        out.scans.is_empty(),
        "benign traffic raised {:?}",
        out.scans
    );
    let conns = out.flows_where(|f| f["dst_port"] == 8081 && f["src_ip"] == lab.ip_a.as_str());
    assert!(
        conns.len() >= 300,
        "every connection was recorded ({} records)",
        conns.len()
    );
    assert!(
        out.kernel("probes") >= 300,
        "the SYNs were looked at as possible probes"
    );
}

fn tx_packets(ns: &str, dev: &str) -> u64 {
    let j = sh_in(ns, "ip", &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("ip -j");
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

fn tx_dropped(ns: &str, dev: &str) -> u64 {
    let j = sh_in(ns, "ip", &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("ip -j");
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .expect("tx dropped")
}

#[test]
fn two_million_trafgen_frames_counted_exactly() {
    let lab = Lab::new();
    let dir = TempDir::new("trafgen");
    // 60-byte frames: Ethernet, IPv4 (total length 46), UDP 4000 -> 5000 with 18 bytes of payload.
    let frame = udp4_frame(
        &mac(&lab.b, &lab.vb),
        &mac(&lab.a, &lab.va),
        &[],
        (&lab.ip_a, 4000),
        (&lab.ip_b, 5000),
        18,
    );
    // No IPv6 neighbour discovery on the lab's link: the device counters then count only the
    // test's frames.
    for ns in [&lab.a, &lab.b] {
        sh_in(
            ns,
            "sysctl",
            &["-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        );
    }
    // Egress on a (tc, every frame trafgen sends through the qdisc path) and ingress on b (XDP).
    let sa = Sensor::start(&lab.a, &["--iface", &lab.va, "--export-interval", "1"]);
    let sb = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
    let (sent_before, dropped_before) = (tx_packets(&lab.a, &lab.va), tx_dropped(&lab.a, &lab.va));
    trafgen(&lab.a, &lab.va, &dir, "udp.cfg", &frame, 2_000_000);
    thread::sleep(Duration::from_millis(300));
    // The kernel's own count of what went out of va (delivered + dropped by the veth) is the
    // oracle: trafgen may hand fewer frames to the stack than asked when its socket buffer is full
    // (a slow receiver on a loaded machine), and those never reach tc.
    let dropped = tx_dropped(&lab.a, &lab.va) - dropped_before;
    let delivered = tx_packets(&lab.a, &lab.va) - sent_before;
    let oa = sa.stop();
    let ob = sb.stop();
    let a = oa.totals(&lab.ip_a, &lab.ip_b, 17, Some(4000), Some(5000));
    let b = ob.totals(&lab.ip_a, &lab.ip_b, 17, Some(4000), Some(5000));
    assert!(
        delivered + dropped >= 1_500_000,
        "trafgen sent most of the 2,000,000 frames ({delivered} + {dropped} dropped)"
    );
    // Every frame of the flow that left va was seen at tc egress: the device's count may hold a
    // few more (link-local control traffic), never fewer.
    let left = delivered + dropped;
    // On failure: the sensors' last kernel and agent counters, to tell a frame the program did
    // not see from a count the agent lost.
    let counters = |o: &tests::SensorOutput| {
        let last = o.stats.last().cloned().unwrap_or_default();
        format!("kernel {} agent {}", last["kernel"], last["agent"])
    };
    assert!(
        a.0 <= left && left - a.0 <= 5,
        "tc egress on the sender: {} of the {left} frames that left va; sender {}",
        a.0,
        counters(&oa)
    );
    assert_eq!(a.1, a.0 * 46);
    // What the veth itself dropped never reached b: it is counted there, and only there.
    assert_eq!(
        b.0 + dropped,
        a.0,
        "XDP ingress on the receiver ({dropped} dropped by the veth); receiver {}; sender {}",
        counters(&ob),
        counters(&oa)
    );
    assert_eq!(b.1, b.0 * 46);
    assert!(
        oa.flows.len() > 1 || oa.stats.len() > 2,
        "several export intervals were drained"
    );
    for o in [&oa, &ob] {
        assert_eq!(o.kernel("flow_insert_failed"), 0);
        assert_eq!(o.kernel("flow_entries_evicted_or_pending"), 0);
    }
    eprintln!(
        "trafgen: {} at tc egress, {} at XDP ingress, {dropped} dropped by the veth",
        a.0, b.0
    );
}

#[test]
fn detaches_cleanly_on_sigterm_in_both_tc_modes() {
    for mode in ["tcx", "clsact"] {
        let lab = Lab::new();
        let mut s = Sensor::start(&lab.b, &["--iface", &lab.vb, "--tc-mode", mode]);
        assert!(attached_xdp(&lab.b), "XDP attached ({mode})");
        assert_eq!(
            tc_programs(&lab.b, &lab.vb),
            1,
            "tc program attached ({mode})"
        );
        let out = s.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
        assert!(out.stderr.contains("detached"), "{}", out.stderr);
        assert!(!attached_xdp(&lab.b), "XDP left behind ({mode})");
        assert_eq!(
            tc_programs(&lab.b, &lab.vb),
            0,
            "tc program left behind ({mode})"
        );
    }
}

#[test]
fn sigkill_then_restart_leaves_exactly_one_attachment_and_then_none() {
    let lab = Lab::new();
    let s = Sensor::start(&lab.b, &["--iface", &lab.vb, "--tc-mode", "clsact"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    drop(s);
    // XDP went with the process (a bpf_link); a netlink tc filter may outlive it.
    let again = Sensor::start(&lab.b, &["--iface", &lab.vb, "--tc-mode", "clsact"]);
    assert_eq!(
        tc_filters(&lab.b, &lab.vb)
            .matches("picket_tc_egress")
            .count(),
        1,
        "stale filter replaced, not doubled"
    );
    sh_in(
        &lab.a,
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "2", &lab.ip_b],
    );
    let out = again.stop();
    assert_eq!(
        out.totals(&lab.ip_a, &lab.ip_b, 1, Some(8), Some(0)),
        (2, 168, 2, 168),
        "no double counting"
    );
    assert!(!tc_filters(&lab.b, &lab.vb).contains("picket"));
    assert!(!attached_xdp(&lab.b));
}

#[test]
fn bad_input_fails_clearly_and_attaches_nothing() {
    let lab = Lab::new();
    let run = |args: &[&str]| {
        let mut a = vec!["netns", "exec", &lab.b];
        let bin = tests::bin("picket-sensor");
        a.push(bin.to_str().expect("utf8"));
        a.extend_from_slice(args);
        std::process::Command::new("ip")
            .args(&a)
            .output()
            .expect("run")
    };
    // One good interface and one that does not exist: nothing may stay attached to the good one.
    let o = run(&["--stdout", "--iface", &lab.vb, "--iface", "nosuch0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown network interface `nosuch0`"), "{err}");
    assert!(!attached_xdp(&lab.b));

    let o = run(&["--iface", &lab.vb]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--stdout"));

    let o = run(&["--stdout", "--iface", &lab.vb, "--export-interval", "0"]);
    assert_eq!(o.status.code(), Some(2));

    // Without CAP_NET_ADMIN (dropped from the bounding set, so even root lacks it).
    let bin = tests::bin("picket-sensor");
    let o = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.b,
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-net_admin",
        ])
        .arg(&bin)
        .args(["--stdout", "--iface", &lab.vb])
        .output()
        .expect("run setpriv");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing capabilities: CAP_NET_ADMIN"), "{err}");
    assert!(!attached_xdp(&lab.b));
}

#[test]
fn fast_syn_scan_accounts_every_probe_in_flows_or_probe_records() {
    // 40,000 SYNs to random ports in one interval: more than the flow slots hold, so once the
    // scanner is flagged its colliding SYNs are summed per source. Flow records plus probe
    // records must still account for every frame sent, and the benign conversations stay intact.
    let lab = Lab::new();
    let dir = TempDir::new("synscan");
    let (ma, mb) = (mac(&lab.a, &lab.va), mac(&lab.b, &lab.vb));
    let sa = Sensor::start(&lab.a, &["--iface", &lab.va, ONE_DRAIN[0], ONE_DRAIN[1]]);
    let ip = |a: &str| hex_ip(a);
    let syn = format!(
        "  {}, {},\n  0x08, 0x00,\n  0x45, 0, const16(40), const16(1), 0x40, 0, 64, 6, csumip(14, 33),\n  {},\n  {},\n  const16(45000), drnd(2), drnd(4), const32(0), 0x50, 0x02, const16(1024), const16(0), const16(0)",
        hex_mac(&mb),
        hex_mac(&ma),
        ip(&lab.ip_a),
        ip(&lab.ip_b)
    );
    trafgen(&lab.a, &lab.va, &dir, "syn.cfg", &syn, 40_000);
    thread::sleep(Duration::from_millis(300));
    let out = sa.stop();
    let flows: u64 = out
        .flows_where(|f| {
            f["protocol"] == 6 && f["src_ip"] == lab.ip_a.as_str() && f["src_port"] == 45000
        })
        .iter()
        .map(|f| f["packets"].as_u64().expect("packets"))
        .sum();
    let probes: u64 = out
        .probes
        .iter()
        .filter(|p| p["src_ip"] == lab.ip_a.as_str())
        .map(|p| p["packets"].as_u64().expect("packets"))
        .sum();
    let probe_bytes: u64 = out
        .probes
        .iter()
        .map(|p| p["bytes"].as_u64().expect("bytes"))
        .sum();
    assert!(
        out.kernel("probes_aggregated") > 0,
        "the slots overflowed and the flagged scanner was summed"
    );
    assert_eq!(out.kernel("probes_aggregated"), probes);
    assert_eq!(probe_bytes, probes * 40);
    assert_eq!(
        flows + probes,
        40_000,
        "flows ({flows}) + probe records ({probes}) = frames sent"
    );
    // The sensor runs on the scanning host itself: its outbound scan is flagged, once.
    assert_eq!(out.scans.len(), 1, "{:?}", out.scans);
    assert_eq!(out.scans[0]["src_ip"], lab.ip_a.as_str());
}

#[test]
fn check_reports_what_the_host_offers_and_what_is_missing() {
    let lab = Lab::new();
    let bin = tests::bin("picket-sensor");
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.b])
        .arg(&bin)
        .args(["check", "--iface", &lab.vb, "--iface", "nosuch0"])
        .output()
        .expect("run check");
    let out = String::from_utf8_lossy(&o.stdout);
    // An interface that does not exist is a missing requirement.
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("MISSING  interface `nosuch0`"), "{out}");
    assert!(
        out.contains("ok  programs load: the verifier accepts picket_xdp and picket_tc_egress"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ok  interface `{}`: native XDP", lab.vb)),
        "{out}"
    );
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    let path = if tcx {
        "TCX link"
    } else {
        "clsact qdisc filter"
    };
    assert!(out.contains(&format!("tc egress path: {path}")), "{out}");
    assert!(out.contains("ok  map type: ring buffer"), "{out}");
    assert!(!attached_xdp(&lab.b), "check left XDP attached");

    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.b])
        .arg(&bin)
        .args(["check", "--iface", &lab.vb])
        .output()
        .expect("run check");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // Without CAP_BPF and CAP_SYS_ADMIN: named, and not ready.
    let o = std::process::Command::new("setpriv")
        .args([
            "--bounding-set",
            "-bpf,-sys_admin",
            "--inh-caps",
            "-bpf,-sys_admin",
        ])
        .arg(&bin)
        .arg("check")
        .output()
        .expect("run setpriv");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("capabilities: CAP_BPF missing"), "{out}");
}

#[test]
fn a_long_flow_is_exported_in_active_timeout_slices_and_an_idle_one_on_idle_timeout() {
    let lab = Lab::new();
    let sensor = Sensor::start(
        &lab.b,
        &[
            "--iface",
            &lab.vb,
            "--export-interval",
            "1",
            "--active-timeout",
            "2",
            "--idle-timeout",
            "1",
        ],
    );
    let saddr: SocketAddr = format!("{}:7000", lab.ip_b).parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = tests::in_netns(&lab.b, move || {
        let s = UdpSocket::bind(saddr).expect("bind");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..83 {
            let (n, from) = s.recv_from(&mut buf).expect("recv");
            s.send_to(&buf[..n], from).expect("echo");
        }
    });
    rx.recv().expect("ready");
    // 80 exchanges over 8 s or more on one flow (never idle for 1 s), then 3 on another, which
    // then stays idle.
    let client = tests::in_netns(&lab.a, move || {
        let mut buf = [0u8; 2048];
        for (port, n) in [(40100, 80), (40101, 3)] {
            let s = UdpSocket::bind(format!("0.0.0.0:{port}")).expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            for _ in 0..n {
                s.send_to(&[1u8; 100], saddr).expect("send");
                s.recv_from(&mut buf).expect("echo");
                thread::sleep(Duration::from_millis(100));
            }
        }
    });
    client.join().expect("client");
    server.join().expect("server");
    // Idle for longer than the idle timeout plus an export interval.
    thread::sleep(Duration::from_secs(3));
    let out = sensor.stop();
    let long: Vec<_> = out.flows_where(|f| f["src_port"] == 40100 && f["dst_port"] == 7000);
    // Slices of at least the 2 s active timeout (drains every second; later on a busy machine).
    assert!(long.len() >= 2, "sliced: {long:?}");
    let reasons: Vec<_> = long
        .iter()
        .map(|f| f["end_reason"].as_str().expect("reason"))
        .collect();
    assert!(
        reasons[..reasons.len() - 1]
            .iter()
            .all(|r| *r == "active_timeout"),
        "{reasons:?}"
    );
    assert!(
        long.iter().all(|f| f["src_ip"] == lab.ip_a.as_str()),
        "the client stays src"
    );
    assert_eq!(
        out.totals(&lab.ip_a, &lab.ip_b, 17, Some(40100), Some(7000)),
        (80, 80 * 128, 80, 80 * 128),
        "slices add up exactly"
    );
    let short: Vec<_> = out.flows_where(|f| f["src_port"] == 40101);
    assert_eq!(short.len(), 1, "{short:?}");
    assert_eq!(short[0]["end_reason"], "idle_timeout");
    assert_eq!(short[0]["packets"], 3);
    assert_eq!(short[0]["reverse_packets"], 3);
}

#[test]
fn prometheus_metrics_expose_the_kernel_and_agent_counters() {
    let lab = Lab::new();
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
    let to: SocketAddr = format!("{}:9", lab.ip_b).parse().expect("addr");
    tests::in_netns(&lab.a, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..25 {
            s.send_to(&[0u8; 10], to).expect("send");
        }
    })
    .join()
    .expect("sender");
    thread::sleep(Duration::from_millis(2500));
    let (status, ctype, r) = tests::scrape(&lab.b, "127.0.0.1:9469");
    assert_eq!(status, 200, "{r}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(
        tests::metric(&r, "picket_kernel_packets_seen_total") >= 25,
        "{r}"
    );
    assert!(
        tests::metric(&r, "picket_kernel_packets_parsed_total") >= 25,
        "{r}"
    );
    assert_eq!(
        tests::metric(&r, "picket_kernel_flow_insert_failed_total"),
        0
    );
    assert!(tests::metric(&r, "picket_agent_drains_total") >= 1, "{r}");
    let out = sensor.stop();
    assert!(
        out.stderr
            .contains("Prometheus metrics at http://127.0.0.1:9469/metrics")
    );
}
