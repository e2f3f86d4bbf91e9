//! The kernel matrix's check (`cargo xtask kernel-matrix`), run inside each guest kernel (and on
//! the host): the real `picket-sensor` with its embedded eBPF object loads (this kernel's verifier
//! accepts it), attaches XDP and tc egress to a veth in a namespace, counts known traffic exactly
//! in both directions, reports exactly one scan event for a port scan, and detaches cleanly.
//!
//! Prints one `kcheck: ok ...` line per step and `kcheck: PASS` at the end. Any failure panics
//! with the reason (with the sensor's full log, which holds the verifier output when a program
//! was rejected) and exits non-zero.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use tests::{Lab, Sensor, SensorOutput, attached_xdp, in_netns, ip, tc_programs};

const DATAGRAMS: u64 = 50;
const PAYLOAD: usize = 100;
const TCP_BYTES: usize = 20_000;
const SCANNED_PORTS: u16 = 100;
const TIMEOUT: Duration = Duration::from_secs(30);

/// `DATAGRAMS` UDP datagrams from namespace a (`from`:40000) to an echo server in b (`to`:5000),
/// each answered before the next is sent.
fn udp_echo(lab: &Lab, from: IpAddr, to: IpAddr) {
    let (ready_tx, ready) = mpsc::channel();
    let server = in_netns(&lab.b, move || {
        let sock = UdpSocket::bind(SocketAddr::new(to, 5000)).expect("bind UDP echo server");
        sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        for _ in 0..DATAGRAMS {
            let (n, peer) = sock.recv_from(&mut buf).expect("UDP echo server receive");
            sock.send_to(&buf[..n], peer).expect("UDP echo");
        }
    });
    ready.recv().expect("UDP server ready");
    in_netns(&lab.a, move || {
        let sock = UdpSocket::bind(SocketAddr::new(from, 40000)).expect("bind UDP client");
        sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut buf = [0u8; 2048];
        for i in 0..DATAGRAMS {
            sock.send_to(&[i as u8; PAYLOAD], SocketAddr::new(to, 5000))
                .expect("UDP send");
            let n = sock.recv(&mut buf).expect("UDP echo reply");
            assert_eq!(n, PAYLOAD);
        }
    })
    .join()
    .expect("UDP client");
    server.join().expect("UDP server");
}

/// One TCP connection a -> b:8080 carrying `TCP_BYTES`, answered with "ok", closed by both.
fn tcp_exchange(lab: &Lab, to: IpAddr) {
    let (ready_tx, ready) = mpsc::channel();
    let server = in_netns(&lab.b, move || {
        let l = TcpListener::bind(SocketAddr::new(to, 8080)).expect("bind TCP server");
        ready_tx.send(()).expect("ready");
        let (mut c, _) = l.accept().expect("accept");
        c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("TCP read");
        assert_eq!(got.len(), TCP_BYTES);
        c.write_all(b"ok").expect("TCP reply");
    });
    ready.recv().expect("TCP server ready");
    in_netns(&lab.a, move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(to, 8080), TIMEOUT).expect("TCP connect");
        c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        c.write_all(&[7u8; TCP_BYTES]).expect("TCP write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).expect("TCP reply");
        assert_eq!(reply, b"ok");
    })
    .join()
    .expect("TCP client");
    server.join().expect("TCP server");
}

/// A connect() scan of `SCANNED_PORTS` closed ports of b (each refused with a RST).
fn connect_scan(lab: &Lab, to: IpAddr) {
    in_netns(&lab.a, move || {
        for port in 1..=SCANNED_PORTS {
            let r = TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(5));
            assert!(r.is_err(), "port {port} of the lab is unexpectedly open");
        }
    })
    .join()
    .expect("scan thread");
}

fn check_udp(out: &SensorOutput, a: &str, b: &str) {
    // The sensor prints addresses in their canonical form.
    let (a, b) = (&ip(a).to_string(), &ip(b).to_string());
    let bytes = DATAGRAMS * (PAYLOAD as u64 + 8 + if a.contains(':') { 40 } else { 20 });
    assert_eq!(
        out.totals(a, b, 17, Some(40000), Some(5000)),
        (DATAGRAMS, bytes, DATAGRAMS, bytes),
        "UDP {a} -> {b}: (packets, bytes) in at XDP and out at tc egress\n{}",
        out.stderr
    );
}

fn main() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kcheck: kernel {}", kernel.trim());
    let lab = Lab::new();
    let check = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.b])
        .arg(tests::bin("picket-sensor"))
        .args(["check", "--iface", &lab.vb])
        .output()
        .expect("run picket-sensor check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "picket-sensor check says not ready:\n{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for needle in ["tc egress path:", "programs load:", "native XDP"] {
        let line = report
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` missing from picket-sensor check:\n{report}"));
        println!("kcheck: ok check: {}", line.trim());
    }
    let sensor = Sensor::start(&lab.b, &["--iface", &lab.vb, "--export-interval", "1"]);
    let attached = sensor.log();
    let line = attached
        .lines()
        .find_map(|l| l.split_once("attached "))
        .map_or("", |(_, modes)| modes);
    println!("kcheck: ok loaded and attached: {}", line.trim());
    assert!(attached_xdp(&lab.b), "no XDP program on {}", lab.vb);
    assert_eq!(tc_programs(&lab.b, &lab.vb), 1, "tc egress program");

    udp_echo(&lab, ip(&lab.ip_a), ip(&lab.ip_b));
    udp_echo(&lab, ip(&lab.ip6_a), ip(&lab.ip6_b));
    tcp_exchange(&lab, ip(&lab.ip_b));
    connect_scan(&lab, ip(&lab.ip_b));
    let out = sensor.stop();

    check_udp(&out, &lab.ip_a, &lab.ip_b);
    check_udp(&out, &lab.ip6_a, &lab.ip6_b);
    println!(
        "kcheck: ok UDP over IPv4 and IPv6: {DATAGRAMS} packets each way counted exactly (XDP in, tc out)"
    );
    let (p, _, rp, _) = out.totals(&lab.ip_a, &lab.ip_b, 6, None, Some(8080));
    assert!(
        p > 0 && rp > 0,
        "TCP exchange seen both ways: {p} / {rp} packets"
    );
    println!("kcheck: ok TCP exchange: {p} packets a -> b, {rp} back");
    let scans: Vec<_> = out
        .scans
        .iter()
        .filter(|s| s["src_ip"] == lab.ip_a.as_str())
        .collect();
    assert_eq!(
        scans.len(),
        1,
        "one scan event naming the scanner: {scans:?}"
    );
    assert_eq!(out.scans.len(), 1, "no other scan event: {:?}", out.scans);
    println!(
        "kcheck: ok one scan event naming {} ({} ports)",
        lab.ip_a, scans[0]["distinct_ports"]
    );
    for c in ["flow_insert_failed", "scan_events_dropped"] {
        assert_eq!(out.kernel(c), 0, "kernel counter {c}");
    }
    assert!(!attached_xdp(&lab.b), "XDP left attached after SIGINT");
    assert_eq!(tc_programs(&lab.b, &lab.vb), 0, "tc program left attached");
    println!("kcheck: ok detached cleanly");
    println!("kcheck: PASS");
}
