//! `cargo xtask bench`: what the sensor costs, as differences and ratios against references
//! measured in the same run.
//!
//! 1. Per-packet cost of the XDP program with BPF_PROG_TEST_RUN on a corpus of frames, with the
//!    flow table prefilled to 16K and 256K entries, minus an empty XDP program (`r0 = XDP_PASS`).
//! 2. On the real veth path (bpf_stats run_time_ns / run_cnt), trafgen traffic of one established
//!    flow and a 50% SYN-scan mix (random ports: every SYN a new flow), minus the empty program
//!    attached the same way.
//! 3. veth packet rate with and without picket-sensor attached (trafgen, delivered packets/s).
//! 4. The agent: flow-table drain rate (batched vs entry by entry), and the real picket-sensor's
//!    CPU and peak memory at about 100,000 flows per 5 s export interval.

use std::{
    fmt::Write as _,
    os::fd::AsFd,
    thread,
    time::{Duration, Instant},
};

use sensor_user::{sys, tables};
use tests::{
    Lab, Sensor, TempDir,
    harness::{
        Harness, Peer,
        frame::{self, ACK, Frame, PSH, SYN},
    },
    sh, sh_in,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut trunc = frame::ip("10.0.0.1", "10.0.0.2", 6, 1, 2, SYN, 0);
    trunc.truncate(14 + 10);
    vec![
        (
            "established TCP",
            frame::ip("10.0.0.1", "10.0.0.2", 6, 40000, 443, ACK | PSH, 100),
        ),
        (
            "TCP SYN (repeated)",
            frame::ip("10.0.0.3", "10.0.0.2", 6, 40001, 22, SYN, 0),
        ),
        (
            "UDP",
            frame::ip("10.0.0.1", "10.0.0.2", 17, 5353, 53, 0, 40),
        ),
        (
            "ICMP echo",
            frame::ip("10.0.0.1", "10.0.0.2", 1, 8, 0, 0, 56),
        ),
        (
            "IPv6 TCP",
            frame::ip("fd00::1", "fd00::2", 6, 40000, 443, ACK, 100),
        ),
        (
            "802.1Q UDP",
            Frame {
                tags: vec![(0x8100, 7)],
                ..Frame::default()
            }
            .build("10.0.0.1", "10.0.0.2", 17, 1, 2, 0, 40),
        ),
        ("non-IP (ARP)", frame::arp()),
        ("truncated IPv4", trunc),
    ]
}

fn test_run_section(report: &mut String, repeat: u32, rounds: usize) {
    let empty = sys::load_empty_xdp().expect("load empty XDP program");
    writeln!(
        report,
        "### Per packet, BPF_PROG_TEST_RUN ({repeat} runs x {rounds} rounds, median)\n"
    )
    .ok();
    added_cost_header(report);
    let mut empty_ns = Vec::new();
    for fill in [16_384u32, 262_144] {
        let mut h = Harness::load(262_144).expect("load sensor programs");
        h.cfg.clock = sensor_common::CLOCK_CONFIG; // as the agent runs by default
        h.apply().expect("config");
        h.prefill(fill).expect("prefill");
        let peer = Peer::load(262_144, fill).expect("load peer program");
        let (fd, peer_fd) = (h.xdp_fd().expect("fd"), peer.xdp_fd().expect("peer fd"));
        for (name, f) in corpus() {
            sys::test_run(fd, &f, 1).expect("warm up");
            sys::test_run(peer_fd, &f, 1).expect("warm up peer");
            let mut runs = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..rounds {
                // Interleaved, so that a slow phase of the machine hits all three alike.
                for (i, p) in [fd, peer_fd, empty.as_fd()].into_iter().enumerate() {
                    runs[i].push(sys::test_run(p, &f, repeat).expect("run").1 as f64);
                }
            }
            let [o, p, r] = runs.map(median);
            empty_ns.push(r);
            added_cost_row(report, name, fill, o, p, r);
        }
    }
    writeln!(
        report,
        "\nEmpty XDP program in the same runs: {:.1} ns/run (median).\n",
        median(empty_ns)
    )
    .ok();
}

/// Frames that each open a new flow cannot be measured with `repeat` (the second run finds the
/// flow): run `n` distinct frames once each, for the sensor and for the empty program, and
/// compare the sums. A single run's timing includes the kernel's clock reads around it; they
/// cancel out in the difference.
/// Header of the tables that compare the sensor and the peer with the empty program.
fn added_cost_header(report: &mut String) {
    writeln!(
        report,
        "| traffic | flow table | sensor ns/pkt | peer ns/pkt | empty ns/pkt | sensor added | peer added | sensor / peer (added) |"
    )
    .ok();
    writeln!(report, "|---|---|---|---|---|---|---|---|").ok();
}

fn added_cost_row(report: &mut String, name: &str, fill: u32, ours: f64, peer: f64, empty: f64) {
    let fill = if fill == 16_384 { "16K" } else { "256K" };
    let (a, b) = (ours - empty, peer - empty);
    let ratio = if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    };
    writeln!(
        report,
        "| {name} | {fill} | {ours:.1} | {peer:.1} | {empty:.1} | {a:+.1} | {b:+.1} | {ratio} |"
    )
    .ok();
}

fn new_flow_section(report: &mut String, n: u32) {
    let empty = sys::load_empty_xdp().expect("load empty XDP program");
    writeln!(
        report,
        "### New flows, BPF_PROG_TEST_RUN ({n} distinct frames, each run once)\n"
    )
    .ok();
    added_cost_header(report);
    let established = frame::ip("10.0.0.1", "10.0.0.2", 6, 40000, 443, ACK | PSH, 100);
    for fill in [16_384u32, 262_144] {
        for (name, syn_every, forged) in [
            ("established flow, run once each", 0u32, false),
            ("SYN, each a new flow", 1, false),
            ("50% SYN scan mix", 2, false),
            // A storm of spoofed sources: every SYN claims scan state for a new source.
            ("SYN, each from a new forged source", 1, true),
        ] {
            let mut h = Harness::load(262_144).expect("load sensor programs");
            h.cfg.clock = sensor_common::CLOCK_CONFIG;
            h.apply().expect("config");
            h.prefill(fill).expect("prefill");
            let peer = Peer::load(262_144, fill).expect("load peer program");
            let (fd, peer_fd) = (h.xdp_fd().expect("fd"), peer.xdp_fd().expect("peer fd"));
            sys::test_run(fd, &established, 1).expect("warm up");
            sys::test_run(peer_fd, &established, 1).expect("warm up peer");
            let mut sums = [0u64; 3];
            for i in 0..n {
                let f = if syn_every != 0 && i % syn_every == 0 {
                    // Scanner 10.9.x.y probing ever new ports of 10.0.0.2 (or a forged
                    // source per SYN).
                    let src = if forged {
                        format!(
                            "10.{}.{}.{}",
                            64 + ((i >> 16) & 0x3f),
                            (i >> 8) & 0xff,
                            i & 0xff
                        )
                    } else {
                        format!("10.9.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff)
                    };
                    frame::ip(
                        &src,
                        "10.0.0.2",
                        6,
                        40000 + (i & 0xff) as u16,
                        (i % 65000) as u16 + 1,
                        SYN,
                        0,
                    )
                } else {
                    established.clone()
                };
                for (j, p) in [fd, peer_fd, empty.as_fd()].into_iter().enumerate() {
                    sums[j] += sys::test_run(p, &f, 1).expect("run").1 as u64;
                }
            }
            let [o, p, r] = sums.map(|t| t as f64 / n as f64);
            added_cost_row(report, name, fill, o, p, r);
        }
    }
    writeln!(report).ok();
}

/// Sends `count` frames from `ns`/`dev` through a FIFO deep enough to hold them all: trafgen
/// gives up on the first frame the stack refuses (a veth stops its queue while its peer falls
/// behind), and with the backlog in the qdisc the receiver runs at its own full speed. Returns
/// when `delivered()` reaches `count` or stops moving.
fn blast(
    ns: &str,
    dev: &str,
    dir: &TempDir,
    conf: &str,
    count: u64,
    delivered: &dyn Fn() -> u64,
) -> Duration {
    let path = dir.0.join("t.cfg");
    std::fs::write(&path, conf).expect("conf");
    let limit = (count + 10_000).to_string();
    sh_in(
        ns,
        "tc",
        &[
            "qdisc", "replace", "dev", dev, "root", "pfifo", "limit", &limit,
        ],
    );
    let start = delivered();
    let t0 = Instant::now();
    sh_in(
        ns,
        "trafgen",
        &[
            "--dev",
            dev,
            "--conf",
            path.to_str().expect("utf8"),
            "--num",
            &count.to_string(),
            "--cpus",
            "1",
            "--qdisc-path",
            "--no-sock-mem",
        ],
    );
    let mut last = (delivered(), Instant::now());
    loop {
        let n = delivered();
        if n - start >= count {
            return t0.elapsed();
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(300) {
            return last.1 - t0;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Sets a sysctl for the benchmark and restores it when dropped (also on panic): left on,
/// `kernel.bpf_stats_enabled` slows every BPF program on the machine.
struct Sysctl {
    key: &'static str,
    prev: String,
}
impl Sysctl {
    fn set(key: &'static str, value: &str) -> Sysctl {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let prev = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        sh("sysctl", &["-q", "-w", &format!("{key}={value}")]);
        Sysctl {
            key,
            prev: prev.trim().to_string(),
        }
    }
}
impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sysctl")
            .args(["-q", "-w", &format!("{}={}", self.key, self.prev)])
            .status();
    }
}

/// `dev`'s MAC address as trafgen's byte list ("0x02, 0x00, ...").
fn mac(ns: &str, dev: &str) -> String {
    tests::mac(ns, dev)
        .split(':')
        .map(|b| format!("0x{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rx_packets(ns: &str, dev: &str) -> u64 {
    let j = sh_in(ns, "ip", &["-s", "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("json");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

fn frames(lab: &Lab) -> (String, String) {
    let (ma, mb) = (mac(&lab.a, &lab.va), mac(&lab.b, &lab.vb));
    let ip = |s: &str| s.split('.').collect::<Vec<_>>().join(", ");
    let (sa, sb) = (ip(&lab.ip_a), ip(&lab.ip_b));
    // One established UDP flow (fixed ports).
    let est = format!(
        "{{ {mb}, {ma}, 0x08, 0x00, 0x45, 0, const16(46), const16(1), 0x40, 0, 64, 17, csumip(14, 33), {sa}, {sb}, const16(4000), const16(5000), const16(26), const16(0), fill(0x41, 18) }}\n"
    );
    // 50% SYN scan: a SYN to a random port from a random source port, then an established packet.
    let syn = format!(
        "{{ {mb}, {ma}, 0x08, 0x00, 0x45, 0, const16(40), const16(1), 0x40, 0, 64, 6, csumip(14, 33), {sa}, {sb}, drnd(2), drnd(2), drnd(4), const32(0), 0x50, 0x02, const16(1024), const16(0), const16(0), fill(0, 6) }}\n{est}"
    );
    (est, syn)
}

/// Attaches `prog` (XDP) to b's veth, sends `count` frames of `conf` from a, and returns the
/// program's (run_time_ns, run_cnt) from bpf_stats. Detaches before returning.
fn run_attached(
    lab: &Lab,
    dir: &TempDir,
    ifindex: u32,
    prog: std::os::fd::OwnedFd,
    conf: &str,
    count: u64,
) -> (u64, u64) {
    let (prog, link) = tests::in_netns(&lab.b, move || {
        let link = sys::xdp_link(prog.as_fd(), ifindex, 0).expect("attach XDP");
        (prog, link)
    })
    .join()
    .expect("attach thread");
    blast(&lab.a, &lab.va, dir, conf, count, &|| {
        sys::prog_run_stats(prog.as_fd()).expect("stats").1
    });
    let stats = sys::prog_run_stats(prog.as_fd()).expect("stats");
    drop(link);
    stats
}

fn veth_section(report: &mut String, count: u64) {
    let lab = Lab::new();
    let dir = TempDir::new("bench");
    let (est, syn) = frames(&lab);
    let vb_index: u32 = {
        let j = sh_in(&lab.b, "ip", &["-j", "link", "show", "dev", &lab.vb]);
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        v[0]["ifindex"].as_u64().expect("ifindex") as u32
    };
    // trafgen's socket must be able to hold the whole backlog (see `blast`): raise the default
    // send buffer for the run, as trafgen itself would without --no-sock-mem, and restore it.
    let wmem = (count * 2048).to_string();
    let _wmem_max = Sysctl::set("net.core.wmem_max", &wmem);
    let _wmem = Sysctl::set("net.core.wmem_default", &wmem);
    let stats = Sysctl::set("kernel.bpf_stats_enabled", "1");
    writeln!(
        report,
        "### Per packet on the veth path (bpf_stats, {count} trafgen frames per case)\n"
    )
    .ok();
    added_cost_header(report);
    for fill in [16_384u32, 262_144] {
        for (name, conf) in [
            ("established flow", &est),
            ("50% SYN scan (new flow per SYN)", &syn),
        ] {
            // References: the empty program and the peer, attached and driven the same way.
            let (ref_ns, ref_cnt) = run_attached(
                &lab,
                &dir,
                vb_index,
                sys::load_empty_xdp().expect("empty"),
                conf,
                count,
            );
            let peer = Peer::load(262_144, fill).expect("load peer");
            let pfd = peer
                .xdp_fd()
                .expect("fd")
                .try_clone_to_owned()
                .expect("dup");
            let (peer_ns, peer_cnt) = run_attached(&lab, &dir, vb_index, pfd, conf, count);
            let mut h = Harness::load(262_144).expect("load");
            h.cfg.clock = sensor_common::CLOCK_CONFIG; // as the agent runs by default
            h.apply().expect("cfg");
            h.prefill(fill).expect("prefill");
            let xfd = h.xdp_fd().expect("fd").try_clone_to_owned().expect("dup");
            let (ns, cnt) = run_attached(&lab, &dir, vb_index, xfd, conf, count);
            let per = |ns: u64, cnt: u64| ns as f64 / cnt.max(1) as f64;
            added_cost_row(
                report,
                name,
                fill,
                per(ns, cnt),
                per(peer_ns, peer_cnt),
                per(ref_ns, ref_cnt),
            );
        }
    }
    drop(stats);

    // Packet rate delivered to b: nothing attached, an empty XDP program (a veth with an XDP
    // program receives in NAPI mode, which changes its speed by itself), the real picket-sensor
    // (XDP + tc, default export interval).
    #[derive(Clone, Copy)]
    enum Setup {
        Bare,
        EmptyXdp,
        Peer,
        Sensor,
    }
    let rate = |setup: Setup| -> f64 {
        let sensor =
            matches!(setup, Setup::Sensor).then(|| Sensor::start(&lab.b, &["--iface", &lab.vb]));
        let peer = matches!(setup, Setup::Peer).then(|| Peer::load(262_144, 0).expect("peer"));
        let xdp = matches!(setup, Setup::EmptyXdp | Setup::Peer).then(|| {
            let prog = match &peer {
                Some(p) => p.xdp_fd().expect("fd").try_clone_to_owned().expect("dup"),
                None => sys::load_empty_xdp().expect("empty"),
            };
            tests::in_netns(&lab.b, move || {
                let link = sys::xdp_link(prog.as_fd(), vb_index, 0).expect("attach empty");
                (prog, link)
            })
            .join()
            .expect("attach thread")
        });
        let before = rx_packets(&lab.b, &lab.vb);
        let t = blast(&lab.a, &lab.va, &dir, &est, count, &|| {
            rx_packets(&lab.b, &lab.vb)
        });
        let got = rx_packets(&lab.b, &lab.vb) - before;
        drop(xdp);
        drop(peer);
        if let Some(s) = sensor {
            s.stop();
        }
        got as f64 / t.as_secs_f64()
    };
    let mut runs = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    // Interleaved, so that a slow phase of the machine hits all four alike.
    for _ in 0..3 {
        for (i, setup) in [Setup::Bare, Setup::EmptyXdp, Setup::Peer, Setup::Sensor]
            .into_iter()
            .enumerate()
        {
            runs[i].push(rate(setup));
        }
    }
    let [bare, empty, peer, with] = runs.map(median);
    writeln!(
        report,
        "\n### veth packet rate, trafgen 60-byte frames a -> b ({count} per run, median of 3)\n"
    )
    .ok();
    writeln!(report, "| nothing attached | empty XDP program | peer flow counter (XDP) | picket-sensor (XDP + tc) | sensor / nothing | peer / nothing | sensor / peer |").ok();
    writeln!(report, "|---|---|---|---|---|---|---|").ok();
    writeln!(
        report,
        "| {bare:.0} pps | {empty:.0} pps | {peer:.0} pps | {with:.0} pps | {:.1}% | {:.1}% | {:.1}% |",
        100.0 * with / bare,
        100.0 * peer / bare,
        100.0 * with / peer
    )
    .ok();
}

/// Drain rate of a full flow table (262,144 entries) with BPF_MAP_LOOKUP_AND_DELETE_BATCH,
/// against the entry-by-entry drain (lookup + delete per key) measured in the same run; and the
/// real agent's CPU and memory with about 100,000 active flows, exporting every 5 s.
fn drain_section(report: &mut String) {
    use std::mem::size_of;
    writeln!(report, "### Agent\n").ok();
    let n = 262_144u32;
    let (mut rates, mut counts) = (Vec::new(), Vec::new());
    // 0: the batched syscalls alone; 1: the agent's own path (batches summed into its flow
    // map); 2: the reference, key by key (lookup + delete), with the same summing.
    for way in 0..3 {
        let mut h = Harness::load(n).expect("load");
        h.prefill(n).expect("prefill");
        let fd = h.flow_table_fd(0);
        let (key_size, stride) = (
            size_of::<sensor_common::FlowKey>(),
            size_of::<sensor_common::FlowValue>().div_ceil(8) * 8 * h.nr_cpus(),
        );
        let mut flows = sensor_user::records::FlowMap::default();
        let t0 = Instant::now();
        let got = match way {
            0 => {
                sys::drain_map(
                    fd,
                    key_size,
                    stride,
                    sensor_user::tables::DRAIN_BATCH,
                    |_, _| {},
                )
                .expect("drain")
                .count
            }
            1 => {
                sensor_user::tables::drain_flow_table(fd, h.nr_cpus(), tables::into_map(&mut flows))
                    .expect("drain")
                    .0
            }
            _ => {
                let sink = tables::per_cpu_sum(h.nr_cpus(), tables::into_map(&mut flows));
                sys::drain_map_one_by_one(fd, key_size, stride, sink)
                    .expect("drain")
                    .count
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        // A per-CPU LRU table filled from one CPU keeps that CPU's share of the entries.
        assert!(got > 0, "entries drained");
        counts.push(got);
        rates.push(got as f64 / secs);
    }
    assert!(
        counts.iter().all(|c| *c == counts[0]),
        "every drain sees the same table"
    );
    writeln!(
        report,
        "Flow table drain, {} entries of a {n}-entry per-CPU table ({} CPUs' values each): batched syscalls alone {:.2} M entries/s; the agent's batched drain into its flow map {:.2} M entries/s; entry by entry (lookup + delete) into the map {:.2} M entries/s (the agent's is {:.1}x that).\n",
        counts[0],
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(0),
        rates[0] / 1e6,
        rates[1] / 1e6,
        rates[2] / 1e6,
        rates[1] / rates[2]
    )
    .ok();
}

fn agent_section(report: &mut String, quick: bool) {
    // The real agent, exporting to a local control plane every 5 s, at 20,000 frames/s:
    // - 99,998 active flows: source ports 1024..51022 and two destination ports, so each flow
    //   gets a packet every 5 s and stays in the cache; its 60 s active timeout exports them all;
    // - churn: a random source port and address byte per frame, so about 100,000 new flows per
    //   interval and 300,000 in the cache until their 15 s idle timeout.
    let lab = Lab::new();
    let prefix: Vec<&str> = lab.ip_a.split('.').take(3).collect();
    let (ma, mb) = (mac(&lab.a, &lab.va), mac(&lab.b, &lab.vb));
    let active = format!(
        "{{ eth(da={}, sa={}), ipv4(sa={}, da={}, ttl=64), udp(sp=dinc(1024, 51022), dp=dinc(5000, 5001)), fill(0x41, 18) }}\n",
        tests::mac(&lab.b, &lab.vb),
        tests::mac(&lab.a, &lab.va),
        lab.ip_a,
        lab.ip_b
    );
    let ip = |s: &str| s.split('.').collect::<Vec<_>>().join(", ");
    let churn = format!(
        "{{ {mb}, {ma}, 0x08, 0x00, 0x45, 0, const16(46), const16(1), 0x40, 0, 64, 17, csumip(14, 33), {}, drnd(1), {}, drnd(2), const16(5000), const16(26), const16(0), fill(0x41, 18) }}\n",
        prefix.join(", "),
        ip(&lab.ip_b)
    );
    let cases = [
        ("99,998 active flows", active, if quick { 20 } else { 75 }),
        (
            "churn of 20,000 new flows/s",
            churn,
            if quick { 15 } else { 30 },
        ),
    ];
    for (label, conf, secs) in cases {
        agent_run(report, &lab, label, &conf, secs);
    }
}

/// One run of the real agent under `conf` at 20,000 frames/s for `secs`: its CPU share, peak
/// RSS and largest drain.
fn agent_run(report: &mut String, lab: &Lab, label: &str, conf: &str, secs: u64) {
    let dir = TempDir::new("agent");
    let data = dir.0.join("cp");
    let key = dir.0.join("key");
    std::fs::write(&key, tests::ControlPlane::add_sensor(&data, "bench")).expect("key");
    let cp = tests::ControlPlane::start(&lab.b, &data, "127.0.0.1:7443", &dir.0.join("cp.log"));
    // As deployed: exporting only (no --stdout JSON), metrics on the namespace's loopback.
    let sensor = Sensor::start_exporting(
        &lab.b,
        &[
            "--iface",
            &lab.vb,
            "--export-interval",
            "5",
            "--controlplane",
            "http://127.0.0.1:7443",
            "--sensor-key-file",
            key.to_str().expect("utf8"),
            "--spool-dir",
            dir.0.join("spool").to_str().expect("utf8"),
            "--metrics-listen",
            "127.0.0.1:9469",
        ],
    );
    let pid = sensor.pid();
    let frames = 20_000 * secs;
    let cpu = |pid: i32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat")
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 (1-based), in clock ticks of 1/100 s.
        (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / 100.0
    };
    let c0 = cpu(pid);
    let t0 = Instant::now();
    let path = dir.0.join("flows.cfg");
    std::fs::write(&path, conf).expect("conf");
    // The largest drain, read from the metrics while the traffic runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (ns, stop) = (lab.b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, _, m) = tests::scrape(&ns, "127.0.0.1:9469");
                max = max.max(tests::metric(&m, "picket_agent_last_drain_entries"));
                std::thread::sleep(Duration::from_secs(1));
            }
            max
        })
    };
    sh_in(
        &lab.a,
        "trafgen",
        &[
            "--dev",
            &lab.va,
            "--conf",
            path.to_str().expect("utf8"),
            "--num",
            &frames.to_string(),
            "--cpus",
            "1",
            "--rate",
            "20000pps",
            "--no-sock-mem",
        ],
    );
    let busy = cpu(pid) - c0;
    let elapsed = t0.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_entries = poller.join().expect("metrics poller");
    // Exported during the run (the shutdown flush comes after).
    let records = tests::metric(
        &tests::scrape(&lab.b, "127.0.0.1:9469").2,
        "picket_agent_flow_records_total",
    );
    sensor.stop();
    cp.stop();
    writeln!(
        report,
        "Agent, {label}: {frames} frames at 20,000/s over {elapsed:.0} s, up to {max_entries} flow-table entries per drain, {records} flow records exported: {:.1}% of one core, peak RSS {:.0} MiB.\n",
        100.0 * busy / elapsed,
        hwm_kb as f64 / 1024.0
    )
    .ok();
}

/// Cloud flow logs: parse rates of the AWS and GCP parsers on generated records, one thread,
/// and the end-to-end import into the embedded store.
fn cloud_section(report: &mut String, quick: bool) {
    use controlplane::{
        cloud::{aws, gcp},
        pipeline::import,
        store::{FlowStore as _, SqliteStore},
    };
    writeln!(report, "### Cloud flow logs\n").ok();
    let n: u64 = if quick { 200_000 } else { 1_000_000 };
    // A small LCG: the same records in every run.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut aws_text = String::with_capacity(n as usize * 110);
    for i in 0..n {
        let r = next();
        writeln!(
            aws_text,
            "2 123456789012 eni-0123456789abcdef0 10.0.{}.{} 172.31.{}.{} {} {} 6 {} {} {} {} {} OK",
            r & 0xff,
            (r >> 8) & 0xff,
            (r >> 16) & 0xff,
            (r >> 24) & 0xff,
            1024 + (r % 60000),
            [22, 80, 443, 5432][(r % 4) as usize],
            1 + r % 200,
            60 + r % 300_000,
            1_795_860_000 + i / 1000,
            1_795_860_060 + i / 1000,
            if r % 10 == 0 { "REJECT" } else { "ACCEPT" }
        )
        .ok();
    }
    let format = aws::Format::default();
    let t0 = Instant::now();
    let mut packets = 0u64;
    for line in aws_text.lines() {
        packets += aws::parse(&format, line)
            .expect("generated")
            .packets
            .unwrap_or(0);
    }
    let aws_rate = n as f64 / t0.elapsed().as_secs_f64();
    assert!(packets > 0);
    let vrl = vrl_peer(&aws_text, n);

    let m = n / 5;
    let mut gcp_text = String::with_capacity(m as usize * 700);
    for i in 0..m {
        let r = next();
        writeln!(
            gcp_text,
            r#"{{"insertId":"{i:x}","jsonPayload":{{"bytes_sent":"{}","packets_sent":"{}","connection":{{"src_ip":"10.128.{}.{}","src_port":{},"dest_ip":"10.132.{}.{}","dest_port":443,"protocol":6}},"start_time":"2026-11-28T10:00:00.123456789Z","end_time":"2026-11-28T10:00:05.123456789Z","reporter":"SRC","rtt_msec":"3","src_instance":{{"project_id":"p-1","vm_name":"vm-{}","region":"us-central1","zone":"us-central1-a"}},"src_vpc":{{"project_id":"p-1","vpc_name":"default","subnetwork_name":"default"}}}},"logName":"projects/p-1/logs/compute.googleapis.com%2Fvpc_flows","resource":{{"type":"gce_subnetwork","labels":{{"project_id":"p-1","subnetwork_name":"default","location":"us-central1-a"}}}},"timestamp":"2026-11-28T10:00:10Z"}}"#,
            100 + r % 100_000,
            1 + r % 100,
            r & 0xff,
            (r >> 8) & 0xff,
            1024 + r % 60000,
            (r >> 16) & 0xff,
            (r >> 24) & 0xff,
            r % 50
        )
        .ok();
    }
    let t0 = Instant::now();
    let mut bytes = 0u64;
    for line in gcp_text.lines() {
        bytes += gcp::parse(line).expect("generated").bytes;
    }
    let gcp_rate = m as f64 / t0.elapsed().as_secs_f64();
    assert!(bytes > 0);

    let dir = TempDir::new("cloud-bench");
    let store = SqliteStore::open(&dir.0).expect("store");
    let mut sum = controlplane::cloud::read::Summary::default();
    let t0 = Instant::now();
    import::import_input(
        controlplane::model::Source::Aws,
        std::io::Cursor::new(aws_text.as_bytes()),
        ("generated", 1_795_860_000_000_000_000),
        1.0,
        &mut |f| store.insert_flows(f),
        &mut sum,
    )
    .expect("import");
    let import_rate = sum.stored as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(sum.stored, n);
    writeln!(
        report,
        "On one thread: AWS v2 parsing {:.2} M records/s ({n} generated records); GCP JSON parsing {:.0} k records/s ({m} entries); AWS import into the embedded store (`pipeline::import::import_input`: parse and model on one thread, SQLite in transactions of 100,000 on another) {:.0} k records/s end to end.\n",
        aws_rate / 1e6,
        gcp_rate / 1e3,
        import_rate / 1e3
    )
    .ok();
    match vrl {
        Ok(vrl_rate) => writeln!(
            report,
            "Peer on the same {n} records in the same run: Vector's VRL `parse_aws_vpc_flow_log` (the program `. = parse_aws_vpc_flow_log!(.message)` per record, as Vector runs it) {:.0} k records/s; Picket's AWS parser is {:.1}x that.\n",
            vrl_rate / 1e3,
            aws_rate / vrl_rate
        ),
        Err(why) => writeln!(report, "VRL peer not measured: {why}\n"),
    }
    .ok();
}

/// Runs the VRL peer (bench-vrl, built by `cargo xtask bench`, path in PICKET_BENCH_VRL) on
/// the generated AWS records; its records per second.
fn vrl_peer(aws_text: &str, n: u64) -> Result<f64, String> {
    let bin = std::env::var_os("PICKET_BENCH_VRL")
        .ok_or("PICKET_BENCH_VRL is not set (`cargo xtask bench` builds bench-vrl and sets it)")?;
    let dir = TempDir::new("vrl-bench");
    let file = dir.0.join("aws.log");
    std::fs::write(&file, aws_text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let o = std::process::Command::new(&bin)
        .arg(&file)
        .output()
        .map_err(|e| format!("running {}: {e}", bin.to_string_lossy()))?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!(
            "picket-bench-vrl failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let field = |k: &str| -> Option<f64> {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    let (records, seconds, fields) = (
        field("records").ok_or_else(|| format!("no records in {out:?}"))?,
        field("seconds").ok_or_else(|| format!("no seconds in {out:?}"))?,
        field("fields").ok_or_else(|| format!("no fields in {out:?}"))?,
    );
    if records as u64 != n || fields as u64 != n * 14 {
        return Err(format!(
            "VRL parsed {records} records into {fields} fields, not {n} x 14"
        ));
    }
    Ok(records / seconds)
}

/// gRPC ingest: 100 simulated sensors, each on its own connection, stream batches of 1,000
/// flow records at once to a real control plane; the rate is records stored and acknowledged.
/// Sensor batches of 1,000 flows: busy clients' sessions with web servers, a scanner the
/// kernel flagged in the first batch probing every port of one host (about 65 conversations a
/// batch, 3 ports open), and an unflagged source's probe-like conversations (10 a batch, kept
/// a while in case it is flagged later).
fn detect_batches(n: usize) -> Vec<controlplane::model::SensorBatch> {
    use controlplane::model::{
        Action, CloudMeta, Flow, ScanEvent, SensorBatch, SensorMeta, Source,
    };
    let ip = |s: String| s.parse::<std::net::IpAddr>().expect("ip");
    let t0 = 1_795_860_000_000_000_000i64;
    let flow =
        |src: String, dst: String, sport: u16, dport: u16, t: i64, session: bool, answer: u8| {
            Flow {
                source: Source::Sensor,
                observer: "web-1".into(),
                interface: "eth0".into(),
                start_ns: t,
                end_ns: t + 1_000_000,
                src_ip: ip(src),
                dst_ip: ip(dst),
                src_port: sport,
                dst_port: dport,
                protocol: 6,
                packets: if session { 12 } else { 1 },
                bytes: if session { 2_000 } else { 44 },
                reverse_packets: if session || answer != 0 { 10 } else { 0 },
                reverse_bytes: if session {
                    9_000
                } else if answer != 0 {
                    40
                } else {
                    0
                },
                tcp_flags: if session { 0x1a } else { 0x02 },
                action: Action::Unknown,
                sampling_rate: 1.0,
                cloud: CloudMeta::default(),
                sensor: Some(Box::new(SensorMeta {
                    reverse_tcp_flags: if session { 0x12 | 0x08 } else { answer },
                    observed: "ingress+egress".into(),
                    initiator_by: "syn".into(),
                    end_reason: "end".into(),
                    ..SensorMeta::default()
                })),
            }
        };
    let mut port = 0u32;
    (0..n)
        .map(|b| {
            let t = t0 + b as i64 * 1_000_000_000;
            let mut flows = Vec::with_capacity(1000);
            for k in 0..1000usize {
                let i = b * 1000 + k;
                let at = t + k as i64 * 1_000;
                if k % 15 == 0 && port < 65_535 {
                    port += 1;
                    let answer = if [22, 443, 8080].contains(&port) {
                        0x12
                    } else {
                        0x14
                    };
                    flows.push(flow(
                        "198.51.100.9".into(),
                        "10.2.0.5".into(),
                        40000,
                        port as u16,
                        at,
                        false,
                        answer,
                    ));
                } else if k % 100 == 1 {
                    let p = 1 + (i / 100 % 60_000) as u16;
                    flows.push(flow(
                        "198.51.100.77".into(),
                        format!("10.2.1.{}", i % 200),
                        40001,
                        p,
                        at,
                        false,
                        0x14,
                    ));
                } else {
                    flows.push(flow(
                        format!("10.1.{}.{}", i / 250 % 200, i % 250),
                        format!("10.2.0.{}", 10 + i % 40),
                        (32768 + i % 28000) as u16,
                        443,
                        at,
                        true,
                        0,
                    ));
                }
            }
            let scans = if b == 0 {
                vec![ScanEvent {
                    iface: "eth0".into(),
                    src_ip: ip("198.51.100.9".into()),
                    distinct_ports: 20,
                    distinct_hosts: 1,
                    probe: "syn".into(),
                    probes: [("syn".to_string(), 20)].into(),
                    probe_bytes: 0,
                    last_dst_ip: ip("10.2.0.5".into()),
                    last_dst_port: 20,
                    reason: vec!["ports".into()],
                    start_ns: t,
                    end_ns: t + 1_000_000_000,
                    answered_contacts: 0,
                    unanswered_contacts: 20,
                    replied_contacts: 20,
                }]
            } else {
                Vec::new()
            };
            SensorBatch {
                sensor: "web-1".into(),
                instance_id: "bench".into(),
                batch_id: b as u64,
                flows,
                scans,
                probes: Vec::new(),
                logins: Vec::new(),
            }
        })
        .collect()
}

/// What `scan_extent` adds to the sensor flows' detectors (the thread beside the ingest's
/// writer), in process: every detector of that feed over the same batches, and `scan_extent`
/// alone, in interleaved rounds.
fn detect_section(report: &mut String, quick: bool) {
    use controlplane::detect::{
        Config, Detector as _, Detectors, Feed, Input, Output, scan_extent::ScanExtent,
    };
    writeln!(report, "### Sensor flow detectors\n").ok();
    let batches = detect_batches(if quick { 100 } else { 1000 });
    let flows: usize = batches.iter().map(|b| b.flows.len()).sum();
    let rounds = if quick { 2 } else { 5 };
    let (mut all, mut extent) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..rounds {
        let config = Config::default();
        let mut d = Detectors::new(Feed::SensorFlows, &config);
        let t = Instant::now();
        for b in &batches {
            std::hint::black_box(d.observe(&Input::batch(b)));
        }
        all.push(t.elapsed().as_secs_f64());
        let mut x = ScanExtent::new(config.follow_up_ns);
        let t = Instant::now();
        let mut updates = Vec::new();
        for b in &batches {
            let mut out = Output::default();
            x.observe(&Input::batch(b), &mut out);
            updates.extend(out.updates);
        }
        let mut out = Output::default();
        x.flush(&mut out);
        updates.extend(out.updates);
        extent.push(t.elapsed().as_secs_f64());
        last = updates
            .last()
            .map(|u| (u.observation["distinct_ports"].clone(), updates.len()));
        std::hint::black_box(&updates);
    }
    let per_m = |s: f64| s / flows as f64 * 1e6;
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.2}", per_m(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratios: Vec<f64> = extent.iter().zip(&all).map(|(e, a)| e / a).collect();
    writeln!(
        report,
        "{flows} sensor flows in batches of 1,000 (a followed scanner's {} ports among them, reported in {} updates, and an unflagged source's probe-like conversations), {rounds} interleaved rounds, seconds of one thread per 1,000,000 flows:\n\n| | rounds | median |\n|---|---|---|\n| every sensor-flow detector, `scan_extent` included (reference) | {} | {:.2} |\n| `scan_extent` alone | {} | {:.2} |\n| `scan_extent` / every detector | {} | {:.2} |\n",
        last.as_ref().map_or(serde_json::Value::Null, |l| l.0.clone()),
        last.as_ref().map_or(0, |l| l.1),
        list(&all),
        per_m(median(all.clone())),
        list(&extent),
        per_m(median(extent.clone())),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
        median(ratios.clone()),
    )
    .ok();
}

fn ingest_section(report: &mut String, quick: bool) {
    writeln!(report, "### gRPC ingest\n").ok();
    let (sensors, batches, per) = (100usize, if quick { 3u64 } else { 10 }, 1000usize);
    let lab = Lab::new();
    let dir = TempDir::new("ingest");
    let data = dir.0.join("cp");
    let (cp, secs) = tests::grpc_ingest(&lab, &data, sensors, batches, per);
    // The detectors over sensor flows run on a thread of their own beside the writer.
    let baselines = cp.thread_cpu_secs("sensor-baselines");
    cp.stop();
    use controlplane::store::FlowStore as _;
    let store = controlplane::store::SqliteStore::open(&data).expect("store");
    let stored = store.flow_totals(None).expect("totals").records;
    let want = (sensors * batches as usize * per) as u64;
    assert_eq!(stored, want, "every acknowledged record is stored once");
    writeln!(
        report,
        "{sensors} simulated sensors on their own connections, {batches} batches of {per} flow records each: {stored} records stored and acknowledged in {secs:.1} s, {:.0} k records/s.\n",
        stored as f64 / secs / 1e3
    )
    .ok();
    if let Some(cpu) = baselines {
        writeln!(
            report,
            "The sensor-baselines thread (the sensor flows' detectors: geo, new_service, new_internal_device, data_exfiltration, distributed_scan, an empty watchlist, over the same flows): {cpu:.2} CPU-s, {:.2} CPU-s per 1,000,000 flows, {:.0} k flows/s of one core.\n",
            cpu / stored as f64 * 1e6,
            stored as f64 / cpu.max(1e-9) / 1e3
        )
        .ok();
    }
    // Correlation on that store: cloud records of the same time, every other one a sensor
    // flow's conversation seen the other way round, the rest strangers.
    let cloud: Vec<controlplane::model::Flow> = (0..sensors)
        .flat_map(|sensor| (1..=batches).map(move |id| (sensor, id)))
        .flat_map(|(sensor, id)| (0..per / 10).map(move |k| (sensor, id, k * 10)))
        .map(|(sensor, id, k)| {
            let seen = k % 20 == 0;
            let start = 1_795_860_000_000_000_000 + id as i64 * 1_000_000_000;
            controlplane::model::Flow {
                source: controlplane::model::Source::Aws,
                observer: "123456789012".into(),
                interface: "eni-1".into(),
                start_ns: start,
                end_ns: start + 60_000_000_000,
                src_ip: std::net::Ipv4Addr::new(172, 16, (id % 250) as u8, (k % 250) as u8).into(),
                dst_ip: std::net::Ipv4Addr::new(
                    if seen { 10 } else { 11 },
                    (sensor % 250) as u8,
                    (k >> 8) as u8,
                    k as u8,
                )
                .into(),
                src_port: [22, 80, 443, 5432][k % 4],
                dst_port: 40000 + (k as u16 % 20000),
                protocol: 6,
                packets: 8,
                bytes: 4000,
                reverse_packets: 10,
                reverse_bytes: 1000,
                tcp_flags: 0x1b,
                action: controlplane::model::Action::Accept,
                sampling_rate: 1.0,
                cloud: Default::default(),
                sensor: None,
            }
        })
        .collect();
    store.insert_flows(&cloud).expect("cloud records");
    let t0 = Instant::now();
    let links = store
        .correlate(
            0,
            i64::MAX,
            controlplane::pipeline::import::CORRELATION_TOLERANCE_NS,
        )
        .expect("correlate");
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(
        links as usize,
        cloud.len() / 2,
        "every seen conversation is linked"
    );
    writeln!(
        report,
        "Correlation on that store: {} AWS records of the same minutes, half of them conversations the sensors saw: {links} links in {took:.2} s, {:.0} k records/s.\n",
        cloud.len(),
        cloud.len() as f64 / took / 1e3
    )
    .ok();
}

/// One section of the report.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Section {
    /// Per-packet cost of the XDP program with BPF_PROG_TEST_RUN, against a peer flow counter
    /// and an empty program (with new-flow).
    TestRun,
    /// The cost of new flows alone.
    NewFlow,
    /// gRPC ingest into the control plane from simulated sensors.
    Ingest,
    /// Cloud flow-log parsing and import, against a peer parser.
    Cloud,
    /// The embedded store against ClickHouse (needs about 20 GB free for 100M flows).
    Stores,
    /// Only the gRPC ingest of the stores section.
    StoresIngest,
    /// Cluster mode: records/s through 1 and 3 replicas on NATS, ClickHouse and PostgreSQL,
    /// and failover time.
    Cluster,
    /// The agent's drain of the kernel's flow table.
    Drain,
    /// The agent's CPU and memory under load.
    Agent,
    /// Packets through veths in namespaces, with and without the sensor.
    Veth,
    /// The sensor flows' detectors in process: the whole set, and `scan_extent` alone.
    Detect,
}

/// Picket's benchmarks: every figure beside a reference measured in the same run. Writes
/// target/bench/report.md. Needs root (BPF, namespaces).
#[derive(clap::Parser)]
struct Args {
    /// Fewer runs and smaller data: a quick check that each section works.
    #[arg(long)]
    quick: bool,
    /// Run one section only.
    #[arg(long, value_enum)]
    only: Option<Section>,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let quick = args.quick;
    tests::require_root();
    let mut report = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    writeln!(
        report,
        "Measured on Linux {} ({} CPUs), {}.\n",
        kernel.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if quick { "quick mode" } else { "full mode" }
    )
    .ok();
    // `--only test-run` / `--only veth`: one section (a quicker loop while tuning).
    let only = args.only;
    let run = |s: Section| only.is_none_or(|o| o == s);
    if only == Some(Section::NewFlow) {
        report = thread::spawn(move || {
            tests::harness::pin_to_current_cpu().expect("pin");
            new_flow_section(&mut report, if quick { 20_000 } else { 100_000 });
            report
        })
        .join()
        .expect("new-flow thread");
    }
    if run(Section::TestRun) {
        // On one pinned thread: successive test runs must meet the same CPU's flow slots (as
        // the packets of one flow do on a real NIC queue). The veth section stays unpinned.
        report = thread::spawn(move || {
            tests::harness::pin_to_current_cpu().expect("pin");
            test_run_section(
                &mut report,
                if quick { 100_000 } else { 1_000_000 },
                if quick { 3 } else { 7 },
            );
            new_flow_section(&mut report, if quick { 20_000 } else { 100_000 });
            report
        })
        .join()
        .expect("test-run thread");
    }
    if run(Section::Ingest) {
        ingest_section(&mut report, quick);
    }
    if run(Section::Cloud) {
        cloud_section(&mut report, quick);
    }
    if run(Section::Stores) {
        tests::stores_bench::section(&mut report, quick);
    }
    if only == Some(Section::StoresIngest) {
        tests::stores_bench::ingest_section(&mut report, quick);
    }
    if run(Section::Cluster) {
        tests::cluster_bench::section(&mut report, quick);
    }
    if run(Section::Drain) {
        drain_section(&mut report);
    }
    if run(Section::Agent) {
        agent_section(&mut report, quick);
    }
    if run(Section::Veth) {
        veth_section(&mut report, if quick { 200_000 } else { 500_000 });
    }
    if run(Section::Detect) {
        detect_section(&mut report, quick);
    }
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("mkdir target/bench");
    std::fs::write(dir.join("report.md"), &report).expect("write report");
    eprintln!("report written to target/bench/report.md");
}
