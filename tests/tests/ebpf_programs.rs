//! The real eBPF programs run on crafted frames with BPF_PROG_TEST_RUN: every header shape the
//! parser claims to handle, every unparsed reason, and the per-source scan logic with a clock the
//! test controls (no sleeping). Needs root (loading BPF programs).

use sensor_common::{
    FlowKey, KEY_FLAG_FRAGMENT, KEY_FLAG_L4_TRUNCATED, REASON_HOSTS, REASON_PORTS, probe, v4_mapped,
};
use sensor_user::records::FlowTotals;
use tests::harness::{
    Harness,
    frame::{self, ACK, FIN, Frame, PSH, SYN, URG},
};

const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

fn harness() -> Harness {
    tests::require_root();
    // Runs of one test must share one CPU's flow slots.
    tests::harness::pin_to_current_cpu().expect("pin test thread");
    Harness::load(16_384).expect("load eBPF object")
}

fn v4(a: &str) -> [u8; 16] {
    v4_mapped(a.parse::<std::net::Ipv4Addr>().expect("v4").octets())
}

fn v6(a: &str) -> [u8; 16] {
    a.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}

/// The one flow matching the given addresses, protocol and ports.
fn find(
    flows: &sensor_user::records::FlowMap<FlowTotals>,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
) -> (FlowKey, FlowTotals) {
    let m: Vec<_> = flows
        .iter()
        .filter(|(k, _)| {
            k.src_addr == src
                && k.dst_addr == dst
                && k.protocol == proto
                && k.src_port == sport
                && k.dst_port == dport
        })
        .collect();
    assert_eq!(m.len(), 1, "exactly one flow expected among {flows:?}");
    (*m[0].0, *m[0].1)
}

#[test]
fn parses_every_supported_shape_and_counts_ip_bytes() {
    let h = harness();
    let run = |f: &[u8], n: u32| {
        assert_eq!(
            h.run_xdp(f, n).expect("run").0,
            XDP_PASS,
            "monitoring only: always pass"
        )
    };
    run(
        &frame::ip("10.0.0.1", "10.0.0.2", 6, 40000, 443, ACK | PSH, 100),
        3,
    );
    run(&frame::ip("10.0.0.1", "10.0.0.2", 17, 5000, 53, 0, 30), 2);
    run(&frame::ip("10.0.0.1", "10.0.0.2", 1, 8, 0, 0, 56), 1);
    run(&frame::ip("fd00::1", "fd00::2", 58, 128, 0, 0, 56), 1);
    run(&frame::ip("fd00::1", "fd00::2", 6, 40001, 80, SYN, 0), 1);
    let q = Frame {
        tags: vec![(0x8100, 10)],
        ..Frame::default()
    };
    run(&q.build("10.0.1.1", "10.0.1.2", 17, 1, 2, 0, 10), 1);
    let qinq = Frame {
        tags: vec![(0x88a8, 20), (0x8100, 30)],
        ..Frame::default()
    };
    run(&qinq.build("fd00::a", "fd00::b", 17, 3, 4, 0, 10), 1);
    let opts = Frame {
        ip_options: vec![1, 1, 1, 0],
        ..Frame::default()
    };
    run(&opts.build("10.0.2.1", "10.0.2.2", 6, 1234, 22, ACK, 5), 1);
    let ext = Frame {
        ext: vec![(0, 8), (60, 16), (43, 24)],
        ..Frame::default()
    };
    run(&ext.build("fd00::c", "fd00::d", 6, 5555, 443, ACK, 7), 1);
    let ah = Frame {
        ext: vec![(51, 24)],
        ..Frame::default()
    };
    run(&ah.build("fd00::e", "fd00::f", 17, 6, 7, 0, 1), 1);

    let f = h.take_flows().expect("flows");
    let (_, t) = find(&f, v4("10.0.0.1"), v4("10.0.0.2"), 6, 40000, 443);
    assert_eq!((t.packets, t.bytes, t.tcp_flags), (3, 3 * 140, ACK | PSH));
    assert_eq!(
        find(&f, v4("10.0.0.1"), v4("10.0.0.2"), 17, 5000, 53)
            .1
            .bytes,
        2 * 58
    );
    assert_eq!(
        find(&f, v4("10.0.0.1"), v4("10.0.0.2"), 1, 8, 0).1.bytes,
        84
    );
    assert_eq!(
        find(&f, v6("fd00::1"), v6("fd00::2"), 58, 128, 0).1.bytes,
        104
    );
    let (k, t) = find(&f, v6("fd00::1"), v6("fd00::2"), 6, 40001, 80);
    assert_eq!((k.ip_version, t.bytes, t.tcp_flags), (6, 60, SYN));
    assert_eq!(
        find(&f, v4("10.0.1.1"), v4("10.0.1.2"), 17, 1, 2).1.bytes,
        38,
        "802.1Q"
    );
    assert_eq!(
        find(&f, v6("fd00::a"), v6("fd00::b"), 17, 3, 4).1.bytes,
        58,
        "QinQ + IPv6"
    );
    assert_eq!(
        find(&f, v4("10.0.2.1"), v4("10.0.2.2"), 6, 1234, 22)
            .1
            .bytes,
        24 + 20 + 5,
        "IPv4 options"
    );
    assert_eq!(
        find(&f, v6("fd00::c"), v6("fd00::d"), 6, 5555, 443).1.bytes,
        40 + 48 + 20 + 7,
        "hop-by-hop, dst opts, routing"
    );
    assert_eq!(
        find(&f, v6("fd00::e"), v6("fd00::f"), 17, 6, 7).1.bytes,
        40 + 24 + 8 + 1,
        "AH"
    );

    let c = h.counters().expect("counters");
    assert_eq!(c["packets_seen"], 13);
    assert_eq!(c["packets_parsed"], 13);
    assert_eq!(c["vlan_tagged"], 2);
    assert_eq!(c["ingress_packets"], 13);
}

#[test]
fn fragments_are_counted_without_ports() {
    let h = harness();
    let first = Frame {
        fragment: Some((true, 0)),
        ..Frame::default()
    };
    let rest = Frame {
        fragment: Some((false, 185)),
        ..Frame::default()
    };
    h.run_xdp(
        &first.build("10.1.0.1", "10.1.0.2", 17, 7000, 8000, 0, 1472),
        1,
    )
    .expect("run");
    h.run_xdp(
        &rest.build("10.1.0.1", "10.1.0.2", 17, 7000, 8000, 0, 500),
        1,
    )
    .expect("run");
    let v6first = Frame {
        ext: vec![(44, 8)],
        ..Frame::default()
    };
    h.run_xdp(&v6first.build("fd01::1", "fd01::2", 17, 9, 10, 0, 100), 1)
        .expect("run");
    let f = h.take_flows().expect("flows");
    assert_eq!(
        find(&f, v4("10.1.0.1"), v4("10.1.0.2"), 17, 7000, 8000)
            .1
            .bytes,
        20 + 8 + 1472,
        "first fragment keeps ports"
    );
    let (k, t) = find(&f, v4("10.1.0.1"), v4("10.1.0.2"), 17, 0, 0);
    assert_eq!(
        (k.flags & KEY_FLAG_FRAGMENT, t.packets, t.bytes),
        (KEY_FLAG_FRAGMENT, 1, 20 + 8 + 500)
    );
    // An IPv6 fragment header with offset 0: a first fragment, which keeps its ports.
    assert_eq!(
        find(&f, v6("fd01::1"), v6("fd01::2"), 17, 9, 10).1.packets,
        1
    );
    let c = h.counters().expect("counters");
    assert_eq!(c["fragments"], 3);
    assert_eq!(c["packets_parsed"], 3);
}

#[test]
fn every_unparsed_packet_has_a_reason() {
    let h = harness();
    h.run_xdp(&frame::arp(), 2).expect("arp");
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header: a VLAN EtherType with
    // no tag after it is the shortest truncation it lets through.
    let mut runt = vec![0u8; 14];
    runt[12] = 0x81;
    h.run_xdp(&runt, 1).expect("runt");
    let mut cut_ip = frame::ip("10.2.0.1", "10.2.0.2", 6, 1, 2, SYN, 0);
    cut_ip.truncate(14 + 12);
    h.run_xdp(&cut_ip, 1).expect("cut ip");
    let mut bad_ihl = frame::ip("10.2.0.1", "10.2.0.2", 6, 1, 2, SYN, 0);
    bad_ihl[14] = 0x43;
    h.run_xdp(&bad_ihl, 1).expect("bad ihl");
    let cut_tcp = Frame {
        truncate: Some(14 + 20 + 10),
        ..Frame::default()
    }
    .build("10.2.0.1", "10.2.0.2", 6, 1, 2, SYN, 0);
    h.run_xdp(&cut_tcp, 1).expect("cut tcp");
    let c = h.counters().expect("counters");
    assert_eq!(c["packets_seen"], 6);
    assert_eq!(c["unparsed_non_ip"], 2);
    assert_eq!(c["unparsed_truncated_l2"], 1);
    assert_eq!(c["unparsed_truncated_l3"], 1);
    assert_eq!(c["unparsed_bad_l3"], 1);
    // A cut transport header still counts the packet (ports unknown), flagged.
    assert_eq!(c["packets_parsed"], 1);
    assert_eq!(c["l4_truncated"], 1);
    let f = h.take_flows().expect("flows");
    let (k, _) = find(&f, v4("10.2.0.1"), v4("10.2.0.2"), 6, 0, 0);
    assert_eq!(k.flags & KEY_FLAG_L4_TRUNCATED, KEY_FLAG_L4_TRUNCATED);
}

#[test]
fn egress_program_counts_the_same_way() {
    let h = harness();
    let f = frame::ip("10.3.0.2", "10.3.0.1", 6, 443, 40000, ACK, 1000);
    assert_eq!(
        h.run_tc(&f).expect("tc"),
        TC_ACT_UNSPEC,
        "tc: continue to the next filter"
    );
    let flows = h.take_flows().expect("flows");
    let (_, t) = find(&flows, v4("10.3.0.2"), v4("10.3.0.1"), 6, 443, 40000);
    assert_eq!(
        (t.packets, t.bytes, t.directions),
        (1, 1040, sensor_common::DIR_EGRESS)
    );
    assert_eq!(
        h.counter(sensor_common::counter::EGRESS).expect("egress"),
        1
    );
}

#[test]
fn port_scan_emits_one_event_per_window_with_probe_kinds() {
    let mut h = harness();
    h.cfg.port_bits_threshold = 10;
    h.cfg.window_ns = 60_000_000_000;
    h.set_now(1_000_000_000).expect("now");
    // 9 distinct ports: below the threshold.
    for p in 1..=9u16 {
        h.run_xdp(&frame::ip("10.4.0.66", "10.4.0.1", 6, 50000, p, SYN, 0), 1)
            .expect("syn");
    }
    assert!(h.scan_events().is_empty(), "below threshold");
    // FIN, NULL, Xmas probes to new ports: the 10th distinct port crosses the threshold.
    h.run_xdp(
        &frame::ip("10.4.0.66", "10.4.0.1", 6, 50000, 100, FIN, 0),
        1,
    )
    .expect("fin");
    let ev = h.scan_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].src_addr, v4("10.4.0.66"));
    assert_eq!(ev[0].port_bits_set, 10, "10 ports, 10 bits: no collision");
    assert_eq!(ev[0].reason, REASON_PORTS);
    assert_eq!(ev[0].probes[probe::SYN], 9);
    assert_eq!(ev[0].probes[probe::FIN], 1);
    h.run_xdp(&frame::ip("10.4.0.66", "10.4.0.1", 6, 50000, 101, 0, 0), 1)
        .expect("null");
    h.run_xdp(
        &frame::ip("10.4.0.66", "10.4.0.1", 6, 50000, 102, FIN | PSH | URG, 0),
        1,
    )
    .expect("xmas");
    assert!(
        h.scan_events().is_empty(),
        "one event per source per window"
    );
    // Next window: state starts over, and a new event comes once the threshold is crossed again.
    h.set_now(62_000_000_000).expect("now");
    for p in 200..210u16 {
        h.run_xdp(
            &frame::ip("10.4.0.66", "10.4.0.1", 6, 50000, p, FIN | PSH | URG, 0),
            1,
        )
        .expect("xmas");
    }
    let ev = h.scan_events();
    assert_eq!(ev.len(), 1);
    // The window starts at the probe, to the state's unit of 2^20 ns.
    assert_eq!(ev[0].window_start_ns, 62_000_000_000 >> 20 << 20);
    assert_eq!(ev[0].probes[probe::XMAS], 10);
}

#[test]
fn address_sweep_by_udp_and_ack_probes() {
    let mut h = harness();
    h.cfg.host_bits_threshold = 8;
    h.cfg.port_bits_threshold = 0; // disabled
    h.apply().expect("cfg");
    for i in 1..=4u8 {
        h.run_xdp(
            &frame::ip("10.5.0.9", &format!("10.5.1.{i}"), 17, 40000, 161, 0, 10),
            1,
        )
        .expect("udp");
    }
    for i in 5..=8u8 {
        h.run_xdp(
            &frame::ip("10.5.0.9", &format!("10.5.1.{i}"), 6, 40000, 80, ACK, 0),
            1,
        )
        .expect("ack");
    }
    let ev = h.scan_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].host_bits_set, ev[0].port_bits_set, ev[0].reason),
        (8, 2, REASON_HOSTS)
    );
    assert_eq!((ev[0].probes[probe::UDP], ev[0].probes[probe::ACK]), (4, 4));
}

#[test]
fn answered_conversations_are_not_probes() {
    let mut h = harness();
    h.cfg.port_bits_threshold = 3;
    h.apply().expect("cfg");
    // A DNS server answering many clients on many ephemeral ports: replies are not probes.
    for p in 0..10u16 {
        h.run_xdp(
            &frame::ip("10.6.0.1", "10.6.0.53", 17, 30000 + p, 53, 0, 30),
            1,
        )
        .expect("query");
        h.run_tc(&frame::ip(
            "10.6.0.53",
            "10.6.0.1",
            17,
            53,
            30000 + p,
            0,
            60,
        ))
        .expect("answer");
    }
    // A long-lived TCP conversation after the tables swapped: its bare ACKs are not probes.
    h.run_xdp(&frame::ip("10.6.0.7", "10.6.0.8", 6, 40000, 22, SYN, 0), 1)
        .expect("syn");
    h.run_tc(&frame::ip(
        "10.6.0.8",
        "10.6.0.7",
        6,
        22,
        40000,
        SYN | ACK,
        0,
    ))
    .expect("synack");
    h.take_flows().expect("drain");
    h.run_tc(&frame::ip("10.6.0.8", "10.6.0.7", 6, 22, 40000, ACK, 0))
        .expect("ack after swap");
    let c = h.counters().expect("counters");
    assert_eq!(
        c["probes"],
        10 + 1,
        "the queries and the SYN were first contacts; nothing else"
    );
    assert!(
        h.scan_events().is_empty(),
        "the DNS client used one port of one host"
    );
}

#[test]
fn bare_syns_go_to_flow_slots_and_merge_with_their_flow() {
    use sensor_common::counter;
    let mut h = harness();
    // One port is enough to flag a source here: flagged scanners get their colliding SYNs summed.
    h.cfg.port_bits_threshold = 1;
    h.apply().expect("config");
    let syn = frame::ip("10.7.0.1", "10.7.0.2", 6, 41000, 80, SYN, 0);
    h.run_xdp(&syn, 2).expect("SYN and its retransmission");
    assert_eq!(h.counter(counter::SYN_SLOT_CLAIMS).expect("claims"), 1);
    assert_eq!(
        h.counter(counter::FLOW_INSERTS_0).expect("inserts"),
        0,
        "no hash-table insert for a bare SYN"
    );
    h.run_xdp(&frame::ip("10.7.0.1", "10.7.0.2", 6, 41000, 80, ACK, 0), 1)
        .expect("ACK");
    assert_eq!(
        h.counter(counter::FLOW_INSERTS_0).expect("inserts"),
        0,
        "the conversation's next packets stay in its slot"
    );
    // Find a second key whose SYN lands in the same slot: the slot is taken.
    let mask = sensor_common::DEFAULT_FLOW_SLOTS - 1;
    let key = |sport: u16| FlowKey {
        ifindex: 1,
        src_addr: v4("10.7.0.1"),
        dst_addr: v4("10.7.0.2"),
        src_port: sport,
        dst_port: 80,
        protocol: 6,
        ip_version: 4,
        flags: 0,
        _pad: 0,
    };
    let slot = key(41000).slot_hash() & mask;
    let twin = (1..=u16::MAX)
        .find(|p| *p != 41000 && key(*p).slot_hash() & mask == slot)
        .expect("a colliding port");
    h.run_xdp(&frame::ip("10.7.0.1", "10.7.0.2", 6, twin, 80, SYN, 0), 1)
        .expect("colliding SYN");
    assert_eq!(
        h.counter(counter::SYN_SLOT_COLLISIONS).expect("collisions"),
        1
    );
    // ... and is summed in its source's probe aggregate, not inserted into the table.
    assert_eq!(
        h.counter(counter::PROBES_AGGREGATED).expect("aggregated"),
        1
    );
    assert_eq!(h.counter(counter::FLOW_INSERTS_0).expect("inserts"), 0);
    // A third SYN in the same slot, from a source not flagged yet (its aggregate is taken
    // anyway): a flow-table insert, so a benign client keeps exact per-flow records.
    let agg = sensor_common::ProbeAggregate::index_of(&v4("10.7.0.1"));
    let other = (0..=u32::MAX)
        .map(|i| std::net::Ipv4Addr::from(0x0a08_0000 | (i & 0xffff)))
        .find(|a| {
            sensor_common::ProbeAggregate::index_of(&v4_mapped(a.octets())) == agg
                && *a != std::net::Ipv4Addr::new(10, 7, 0, 1)
        })
        .expect("a source sharing the aggregate");
    let other_key = |sport: u16| FlowKey {
        src_addr: v4_mapped(other.octets()),
        ..key(sport)
    };
    let twin2 = (1..=u16::MAX)
        .find(|p| other_key(*p).slot_hash() & mask == slot)
        .expect("a colliding port");
    h.run_xdp(
        &frame::ip(&other.to_string(), "10.7.0.2", 6, twin2, 80, SYN, 0),
        1,
    )
    .expect("third SYN");
    assert_eq!(h.counter(counter::FLOW_INSERTS_0).expect("inserts"), 1);
    let agg = h.take_probe_aggregates().expect("aggregates");
    assert_eq!(agg.len(), 1);
    assert_eq!(
        (agg[0].src_addr, agg[0].packets, agg[0].bytes),
        (v4("10.7.0.1"), 1, 40)
    );
    let f = h.take_flows().expect("flows");
    let (_, t) = find(&f, v4("10.7.0.1"), v4("10.7.0.2"), 6, 41000, 80);
    assert_eq!(
        (t.packets, t.bytes, t.bare_syn),
        (3, 120, true),
        "slot and table merged by key"
    );
    assert!(
        f.keys()
            .all(|k| k.src_port != twin || k.src_addr != v4("10.7.0.1")),
        "the aggregated SYN is not a flow"
    );
    assert_eq!(
        find(&f, v4_mapped(other.octets()), v4("10.7.0.2"), 6, twin2, 80)
            .1
            .packets,
        1
    );
    // A new generation frees every slot: the same SYN claims again, and the old one is not read.
    h.next_generation().expect("generation");
    h.run_xdp(&syn, 1).expect("SYN");
    assert_eq!(h.counter(counter::SYN_SLOT_CLAIMS).expect("claims"), 2);
    let f = h.take_flows().expect("flows");
    assert_eq!(
        find(&f, v4("10.7.0.1"), v4("10.7.0.2"), 6, 41000, 80)
            .1
            .packets,
        1
    );
}

#[test]
fn clock_modes() {
    let mut h = harness();
    // Agent clock: the value in CONFIG, whatever the real time.
    h.set_now(5_000_000_000).expect("now");
    h.run_xdp(&frame::ip("10.8.0.1", "10.8.0.2", 17, 1, 2, 0, 1), 1)
        .expect("run");
    let f = h.take_flows().expect("flows");
    assert_eq!(
        find(&f, v4("10.8.0.1"), v4("10.8.0.2"), 17, 1, 2)
            .1
            .first_seen_ns,
        5_000_000_000
    );
    // --precise-timestamps: the kernel's CLOCK_MONOTONIC for every packet.
    h.cfg.clock = sensor_common::CLOCK_KERNEL;
    h.apply().expect("config");
    let before = sensor_user::records::Clock::monotonic_ns();
    h.run_xdp(&frame::ip("10.8.0.1", "10.8.0.2", 17, 3, 4, 0, 1), 1)
        .expect("run");
    let after = sensor_user::records::Clock::monotonic_ns();
    let f = h.take_flows().expect("flows");
    let t = find(&f, v4("10.8.0.1"), v4("10.8.0.2"), 17, 3, 4).1;
    assert!(
        (before..=after).contains(&t.first_seen_ns),
        "{before} <= {} <= {after}",
        t.first_seen_ns
    );
}

#[test]
fn known_flows_move_to_their_slot_and_stay_exact() {
    use sensor_common::counter;
    let h = harness();
    let f = frame::ip("10.9.0.1", "10.9.0.2", 17, 7000, 8000, 0, 100);
    // First packet: a new flow in the table (and a reverse-lookup candidate); second packet: the
    // table knows it, so it claims its slot; the rest: slot hits, no table access.
    h.run_xdp(&f, 10).expect("run");
    assert_eq!(h.counter(counter::FLOW_INSERTS_0).expect("inserts"), 1);
    let flows = h.take_flows().expect("flows");
    let (_, t) = find(&flows, v4("10.9.0.1"), v4("10.9.0.2"), 17, 7000, 8000);
    assert_eq!(
        (t.packets, t.bytes, t.bare_syn),
        (10, 1280, false),
        "table part + slot part"
    );
}

#[test]
fn a_storm_of_spoofed_sources_stays_bounded_and_the_real_scanner_is_still_flagged() {
    let mut h = harness();
    h.cfg.port_bits_threshold = sensor_user::scan::bits_threshold(20);
    h.apply().expect("cfg");
    let (_, max, bytes) = h.scan_state_usage().expect("scan state");
    assert!(
        bytes <= 64,
        "per-source state is {bytes} bytes with its key"
    );
    // 100,000 SYNs from 100,000 forged sources (one probe each), and among them a real scanner
    // probing 30 ports of one host, one probe every 3,000 forged packets.
    let storm = 100_000u32;
    let mut port = 0u16;
    for i in 0..storm {
        let src = format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255);
        h.run_xdp(&frame::ip(&src, "10.9.0.1", 6, 40000, 80, SYN, 0), 1)
            .expect("forged syn");
        if i % 3_000 == 0 && port < 30 {
            port += 1;
            h.run_xdp(
                &frame::ip("10.9.0.66", "10.9.0.1", 6, 50000, port, SYN, 0),
                1,
            )
            .expect("scanner syn");
        }
    }
    assert_eq!(port, 30);
    let (entries, _, _) = h.scan_state_usage().expect("scan state");
    eprintln!("storm: {entries} of {max} sources tracked, {bytes} bytes each with the key");
    assert!(
        entries <= max as usize,
        "{entries} sources tracked, at most {max}"
    );
    assert!(
        entries as u32 >= max / 2,
        "the storm filled the map ({entries} of {max}): the test did storm it"
    );
    let ev = h.scan_events();
    assert_eq!(ev.len(), 1, "only the scanner crossed a threshold");
    assert_eq!(ev[0].src_addr, v4("10.9.0.66"));
    assert!(
        (19..=30).contains(&ev[0].probes[probe::SYN]),
        "the scanner's SYNs up to the event all counted: {}",
        ev[0].probes[probe::SYN]
    );
    assert!(
        sensor_user::scan::estimate_distinct(ev[0].port_bits_set) >= 20,
        "{} bits",
        ev[0].port_bits_set
    );
    assert_eq!(
        h.counter(sensor_common::counter::SCAN_STATE_INSERT_FAILED)
            .expect("counter"),
        0,
        "a full LRU evicts; inserts never fail"
    );
}
