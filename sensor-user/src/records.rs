//! Flow records and scan events as the agent emits them (the `--stdout` JSON-lines contract in
//! DESIGN.md), and the join of the two directions of a conversation into one record.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use sensor_common::{
    DIR_EGRESS, DIR_INGRESS, FlowKey, FlowValue, KEY_FLAG_FRAGMENT, KEY_FLAG_L4_TRUNCATED,
    REASON_HOSTS, REASON_PORTS, ScanEvent, probe,
};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, sampled when the clock was made.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn monotonic_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn to_wall(self, mono_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.offset_ns + mono_ns as i128)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn unix_ns(self, mono_ns: u64) -> u64 {
        (self.offset_ns + mono_ns as i128).clamp(0, u64::MAX as i128) as u64
    }

    pub fn rfc3339(self, mono_ns: u64) -> String {
        self.to_wall(mono_ns).format(&Rfc3339).unwrap_or_default()
    }
}

fn rfc3339_ns<S: serde::Serializer>(ns: &u64, s: S) -> Result<S::Ok, S::Error> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(*ns as i128)
        .map_err(serde::ser::Error::custom)?;
    s.serialize_str(&t.format(&Rfc3339).map_err(serde::ser::Error::custom)?)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// The sum over CPUs of one flow's per-CPU values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
    pub directions: u8,
    /// This direction opened with a bare SYN (the kernel marks it): the TCP initiator.
    pub bare_syn: bool,
}

impl FlowTotals {
    pub fn add(&mut self, v: &FlowValue) {
        if v.packets == 0 {
            return;
        }
        self.packets += v.packets;
        self.bytes += v.bytes;
        if self.first_seen_ns == 0 || (v.first_seen_ns != 0 && v.first_seen_ns < self.first_seen_ns)
        {
            self.first_seen_ns = v.first_seen_ns;
        }
        self.last_seen_ns = self.last_seen_ns.max(v.last_seen_ns);
        self.tcp_flags |= v.tcp_flags;
        self.directions |= v.directions;
        self.bare_syn |= v.opened_by_syn != 0;
    }

    /// Adds `d` (counts of the same direction of the same flow, from another CPU, slot or drain).
    pub fn merge(&mut self, d: &FlowTotals) {
        if d.packets == 0 {
            return;
        }
        if self.packets == 0 || d.first_seen_ns < self.first_seen_ns {
            self.first_seen_ns = d.first_seen_ns;
        }
        self.packets += d.packets;
        self.bytes += d.bytes;
        self.last_seen_ns = self.last_seen_ns.max(d.last_seen_ns);
        self.tcp_flags |= d.tcp_flags;
        self.directions |= d.directions;
        self.bare_syn |= d.bare_syn;
    }
}

/// Bare SYNs of one source that were summed instead of recorded per flow (see
/// `sensor_common::ProbeAggregate`), over one export interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeTotals {
    pub ifindex: u32,
    pub src_addr: [u8; 16],
    pub ip_version: u8,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub directions: u8,
}

/// One `kind: "probes"` line: a source's TCP SYNs to many destinations, counted but not split
/// per flow. Flow records plus probe records account for every packet and byte.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProbeRecord {
    pub kind: &'static str,
    pub iface: String,
    pub ifindex: u32,
    pub src_ip: IpAddr,
    pub protocol: u8,
    pub probe: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub start: String,
    pub end: String,
    /// `start` and `end` as Unix nanoseconds (for the gRPC export).
    #[serde(skip)]
    pub start_unix_ns: u64,
    #[serde(skip)]
    pub end_unix_ns: u64,
    pub observed: &'static str,
}

pub fn probe_record(t: &ProbeTotals, clock: Clock, iface: String) -> ProbeRecord {
    ProbeRecord {
        kind: "probes",
        iface,
        ifindex: t.ifindex,
        src_ip: addr(t.src_addr, t.ip_version),
        protocol: 6,
        probe: "syn",
        packets: t.packets,
        bytes: t.bytes,
        start: clock.rfc3339(t.first_seen_ns),
        end: clock.rfc3339(t.last_seen_ns),
        start_unix_ns: clock.unix_ns(t.first_seen_ns),
        end_unix_ns: clock.unix_ns(t.last_seen_ns),
        observed: observed(t.directions),
    }
}

/// One flow record line (`kind: "flow"`): a conversation seen on one interface during one export
/// interval, both directions joined, `src` being the initiator as best known.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FlowRecord {
    pub kind: &'static str,
    pub iface: String,
    pub ifindex: u32,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    pub tcp_flags: u8,
    pub reverse_tcp_flags: u8,
    /// First and last packet, as Unix nanoseconds; `start` and `end` (RFC 3339) in JSON. Text
    /// only when printed: the export sends the numbers.
    #[serde(rename = "start", serialize_with = "rfc3339_ns")]
    pub start_unix_ns: u64,
    #[serde(rename = "end", serialize_with = "rfc3339_ns")]
    pub end_unix_ns: u64,
    /// Where the packets were seen: "ingress" (XDP), "egress" (tc) or both.
    pub observed: &'static str,
    /// Non-first IP fragments (ports unknown) or a cut transport header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<&'static str>,
    /// How `src` was chosen: "syn", "syn_ack", "icmp_type", "port", "first_seen", "reply",
    /// "one_way" (see `pair_flows`).
    pub initiator_by: &'static str,
    /// Why the record was exported now: "active_timeout" (a slice of a long flow),
    /// "idle_timeout", "end" (FIN both ways or RST), "shutdown", or "interval".
    pub end_reason: &'static str,
    /// Kubernetes pods of the two ends (in a cluster, for pod addresses of this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<crate::k8s::Pod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<crate::k8s::Pod>,
}

/// One scan event line (`kind: "scan"`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScanRecord {
    pub kind: &'static str,
    pub iface: String,
    pub src_ip: IpAddr,
    pub distinct_ports: u32,
    pub distinct_hosts: u32,
    /// The dominant probe kind.
    pub probe: &'static str,
    pub probes: HashMap<&'static str, u32>,
    pub last_dst_ip: IpAddr,
    pub last_dst_port: u16,
    /// Which thresholds were crossed: "ports", "hosts".
    pub reason: Vec<&'static str>,
    pub start: String,
    pub end: String,
    /// `start` and `end` as Unix nanoseconds (for the gRPC export).
    #[serde(skip)]
    pub start_unix_ns: u64,
    #[serde(skip)]
    pub end_unix_ns: u64,
}

pub fn addr(bytes: [u8; 16], ip_version: u8) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    if ip_version == 4 {
        IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        )
    } else {
        IpAddr::V6(v6)
    }
}

fn reverse(k: &FlowKey) -> FlowKey {
    let mut r = *k;
    r.src_addr = k.dst_addr;
    r.dst_addr = k.src_addr;
    r.src_port = k.dst_port;
    r.dst_port = k.src_port;
    r
}

/// The key of the other direction of `k`, if it has one (see `partner`).
pub fn partner_key(k: &FlowKey) -> Option<FlowKey> {
    partner(k)
}

/// The key of the other direction of `k`. ICMP echo request/reply (and their ICMPv6 twins) carry
/// the type in `src_port`, so their pair is found by type, not by swapping ports.
fn partner(k: &FlowKey) -> Option<FlowKey> {
    let mut r = reverse(k);
    match k.protocol {
        1 | 58 => {
            let (req, rep) = if k.protocol == 1 { (8, 0) } else { (128, 129) };
            let ty = k.src_port;
            let other = if ty == req {
                rep
            } else if ty == rep {
                req
            } else {
                return None;
            };
            r.src_port = other;
            r.dst_port = k.dst_port;
            Some(r)
        }
        _ if k.flags & KEY_FLAG_FRAGMENT != 0 => None,
        _ => Some(r),
    }
}

/// If the one direction `k` seen of a conversation answers something (its flags or type say
/// so), the key of the asking direction: a TCP direction that sent a SYN-ACK or a RST without
/// opening with a bare SYN; an ICMP echo reply or error (destination unreachable, time
/// exceeded...); a UDP datagram from a well-known port to an ephemeral one.
fn reply_to(k: &FlowKey, a: &FlowTotals) -> Option<FlowKey> {
    use sensor_common::tcp::{ACK, RST, SYN};
    if k.flags & KEY_FLAG_FRAGMENT != 0 {
        return None;
    }
    // ICMP errors keep the type and code in the ports: only the addresses turn round.
    let addresses_turned = || {
        let mut r = *k;
        (r.src_addr, r.dst_addr) = (k.dst_addr, k.src_addr);
        r
    };
    match k.protocol {
        6 => {
            let answers = a.tcp_flags & RST != 0 || a.tcp_flags & (SYN | ACK) == SYN | ACK;
            (answers && !a.bare_syn).then(|| reverse(k))
        }
        17 | 132 => (k.src_port < 1024 && k.dst_port >= 1024).then(|| reverse(k)),
        1 => match k.src_port {
            0 => partner(k),
            3 | 4 | 5 | 11 | 12 => Some(addresses_turned()),
            _ => None,
        },
        58 => match k.src_port {
            129 => partner(k),
            1..=4 => Some(addresses_turned()),
            _ => None,
        },
        _ => None,
    }
}

/// The lowest port of the usual ephemeral (client) ranges.
const EPHEMERAL: u16 = 32768;

/// Decides which of two directions initiated the conversation: true if `a` did, with the
/// reason. Order: a bare SYN first, then a SYN-ACK on one side only, then a lone RST+ACK on
/// one side only, then a well-known port on one side, then an ephemeral port on one side, then
/// first seen, then the higher port.
fn a_initiated(ka: &FlowKey, a: &FlowTotals, kb: &FlowKey, b: &FlowTotals) -> (bool, &'static str) {
    use sensor_common::tcp::{ACK, RST, SYN};
    // The side whose first packet was a bare SYN (the kernel marks it; a SYN-ACK never is).
    if ka.protocol == 6 && a.bare_syn != b.bare_syn {
        return (a.bare_syn, "syn");
    }
    // Without a bare SYN (a scanner's SYN summed per source, or a capture that started late),
    // the side that sent a SYN-ACK answered. Flags add up over a direction, so a client's own
    // SYN and ACKs would look alike: this comes only after the bare SYN.
    if ka.protocol == 6 {
        let syn_ack = |t: &FlowTotals| t.tcp_flags & (SYN | ACK) == SYN | ACK;
        if syn_ack(a) != syn_ack(b) {
            return (!syn_ack(a), "syn_ack");
        }
        // A side whose one packet was a RST+ACK refused a connection: a stack sends RST with
        // ACK only to a segment without ACK, a SYN (whatever the other side sent after it,
        // such as a scanner's own RST, its SYN having been summed per source).
        let refused = |t: &FlowTotals| t.packets == 1 && t.tcp_flags == RST | ACK;
        if refused(a) != refused(b) {
            return (!refused(a), "reply");
        }
    }
    if matches!(ka.protocol, 1 | 58) {
        // The echo request side initiates.
        let req = if ka.protocol == 1 { 8 } else { 128 };
        return (ka.src_port == req, "icmp_type");
    }
    // A well-known port on one side only: that side serves. This comes before first-seen
    // because a scanner's SYN may have been summed per source, leaving the server's SYN-ACK
    // as the first packet recorded.
    if (ka.src_port < 1024) != (kb.src_port < 1024) {
        return (ka.src_port >= 1024, "port");
    }
    // One port in the ephemeral range (32768 and up: Linux's default range starts there,
    // Windows' and macOS' at 49152) and the other below it: the ephemeral side is the client.
    // This decides a conversation whose capture began after its handshake, whoever spoke first.
    if matches!(ka.protocol, 6 | 17 | 132)
        && (ka.src_port >= EPHEMERAL) != (kb.src_port >= EPHEMERAL)
    {
        return (ka.src_port >= EPHEMERAL, "port");
    }
    if a.first_seen_ns != b.first_seen_ns {
        return (a.first_seen_ns < b.first_seen_ns, "first_seen");
    }
    // Ports: the client is the side with the higher (ephemeral) port.
    (ka.src_port > kb.src_port, "port")
}

fn observed(dirs: u8) -> &'static str {
    match dirs & (DIR_INGRESS | DIR_EGRESS) {
        DIR_INGRESS => "ingress",
        DIR_EGRESS => "egress",
        _ => "ingress+egress",
    }
}

/// Joins the drained unidirectional flows of one interval into conversation records.
/// One conversation: both directions of a flow key, `src_key` being the initiator's direction.
/// The agent's maps keyed by flow. foldhash (seeded per process) rather than std's SipHash, which
/// took over half of the agent's CPU at 100k flows per export interval.
pub type FlowMap<V> = HashMap<FlowKey, V, foldhash::fast::RandomState>;
pub type FlowSet = HashSet<FlowKey, foldhash::fast::RandomState>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub src_key: FlowKey,
    pub fwd: FlowTotals,
    pub rev: FlowTotals,
    /// How the initiator was chosen: "syn", "syn_ack", "icmp_type", "port", "first_seen",
    /// "reply" (one direction seen, which answers), "one_way" (one direction seen, which may
    /// have started it).
    pub how: &'static str,
}

/// Joins the two directions of each conversation in one drain's flows, in a deterministic order
/// (first packet, then key bytes). Consumes the map: each direction is removed as it is joined.
pub fn pair_flows(mut flows: FlowMap<FlowTotals>) -> Vec<Conversation> {
    let mut out = Vec::with_capacity(flows.len());
    let mut keys: Vec<(u64, FlowKey)> = flows.iter().map(|(k, t)| (t.first_seen_ns, *k)).collect();
    keys.sort_unstable_by_key(|&(first, k)| {
        (
            first,
            k.ifindex,
            k.src_addr,
            k.dst_addr,
            k.src_port,
            k.dst_port,
            k.protocol,
            k.ip_version,
            k.flags,
        )
    });
    for (_, k) in keys {
        // Gone already when it was joined as the other direction of an earlier key.
        let Some(a) = flows.remove(&k) else {
            continue;
        };
        let other = partner(&k).and_then(|pk| flows.remove(&pk).map(|b| (pk, b)));
        let (src_key, fwd, rev, how) = match other {
            Some((pk, b)) => {
                let (a_first, how) = a_initiated(&k, &a, &pk, &b);
                if a_first {
                    (k, a, b, how)
                } else {
                    (pk, b, a, how)
                }
            }
            // Only one direction: a reply whose question was not recorded as a flow (a
            // flagged scanner's probes are summed per source) is the answering side, not the
            // initiator.
            None => match reply_to(&k, &a) {
                Some(asker) => (asker, FlowTotals::default(), a, "reply"),
                None => (k, a, FlowTotals::default(), "one_way"),
            },
        };
        out.push(Conversation {
            src_key,
            fwd,
            rev,
            how,
        });
    }
    out
}

/// The record of a conversation (over the slice its totals cover).
pub fn flow_record(
    c: &Conversation,
    clock: Clock,
    iface_name: &dyn Fn(u32) -> String,
    end_reason: &'static str,
) -> FlowRecord {
    let (k, fwd, rev) = (&c.src_key, &c.fwd, &c.rev);
    let first = match (fwd.packets > 0, rev.packets > 0) {
        (true, true) => fwd.first_seen_ns.min(rev.first_seen_ns),
        (false, true) => rev.first_seen_ns,
        _ => fwd.first_seen_ns,
    };
    let last = fwd.last_seen_ns.max(rev.last_seen_ns);
    let partial = if k.flags & KEY_FLAG_FRAGMENT != 0 {
        Some("fragment")
    } else if k.flags & KEY_FLAG_L4_TRUNCATED != 0 {
        Some("l4_truncated")
    } else {
        None
    };
    FlowRecord {
        kind: "flow",
        iface: iface_name(k.ifindex),
        ifindex: k.ifindex,
        src_ip: addr(k.src_addr, k.ip_version),
        dst_ip: addr(k.dst_addr, k.ip_version),
        src_port: k.src_port,
        dst_port: k.dst_port,
        protocol: k.protocol,
        packets: fwd.packets,
        bytes: fwd.bytes,
        reverse_packets: rev.packets,
        reverse_bytes: rev.bytes,
        tcp_flags: fwd.tcp_flags,
        reverse_tcp_flags: rev.tcp_flags,
        start_unix_ns: clock.unix_ns(first),
        end_unix_ns: clock.unix_ns(last),
        observed: observed(fwd.directions | rev.directions),
        partial,
        initiator_by: c.how,
        end_reason,
        src_pod: None,
        dst_pod: None,
    }
}

/// One drain's flows as records (each conversation's whole interval).
pub fn join_flows(
    flows: &FlowMap<FlowTotals>,
    clock: Clock,
    iface_name: &dyn Fn(u32) -> String,
) -> Vec<FlowRecord> {
    pair_flows(flows.clone())
        .iter()
        .map(|c| flow_record(c, clock, iface_name, "interval"))
        .collect()
}

pub fn scan_record(ev: &ScanEvent, clock: Clock, iface: String) -> ScanRecord {
    let mut probes = HashMap::new();
    let mut best = (0u32, "other");
    for (i, name) in probe::NAMES.iter().enumerate() {
        let n = ev.probes[i];
        if n > 0 {
            probes.insert(*name, n);
        }
        if n > best.0 {
            best = (n, name);
        }
    }
    let mut reason = Vec::new();
    if ev.reason & REASON_PORTS != 0 {
        reason.push("ports");
    }
    if ev.reason & REASON_HOSTS != 0 {
        reason.push("hosts");
    }
    ScanRecord {
        kind: "scan",
        iface,
        src_ip: addr(ev.src_addr, ev.ip_version),
        distinct_ports: crate::scan::estimate_distinct(ev.port_bits_set),
        distinct_hosts: crate::scan::estimate_distinct(ev.host_bits_set),
        probe: best.1,
        probes,
        last_dst_ip: addr(ev.last_dst, ev.ip_version),
        last_dst_port: ev.last_dst_port,
        reason,
        start: clock.rfc3339(ev.window_start_ns),
        end: clock.rfc3339(ev.last_seen_ns),
        start_unix_ns: clock.unix_ns(ev.window_start_ns),
        end_unix_ns: clock.unix_ns(ev.last_seen_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::{tcp, v4_mapped};

    fn key(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16, proto: u8) -> FlowKey {
        FlowKey {
            ifindex: 3,
            src_addr: v4_mapped(s),
            dst_addr: v4_mapped(d),
            src_port: sp,
            dst_port: dp,
            protocol: proto,
            ip_version: 4,
            flags: 0,
            _pad: 0,
        }
    }

    fn totals(p: u64, b: u64, first: u64, flags: u8) -> FlowTotals {
        FlowTotals {
            packets: p,
            bytes: b,
            first_seen_ns: first,
            last_seen_ns: first + 10,
            tcp_flags: flags,
            directions: DIR_INGRESS,
            bare_syn: false,
        }
    }

    fn name(_: u32) -> String {
        "veth0".into()
    }

    #[test]
    fn tcp_initiator_is_the_syn_side_even_if_seen_later() {
        let c = key([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80, 6);
        let s = reverse(&c);
        let mut m = FlowMap::default();
        // The server side was seen first (the clocks of two CPUs, or a drained interval), but the
        // client's first packet was a bare SYN.
        m.insert(s, totals(4, 400, 5, tcp::SYN | tcp::ACK | tcp::PSH));
        let mut opened = totals(6, 700, 7, tcp::SYN | tcp::ACK);
        opened.bare_syn = true;
        m.insert(c, opened);
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].src_ip.to_string(), "10.0.0.1");
        assert_eq!((r[0].src_port, r[0].dst_port), (40000, 80));
        assert_eq!(
            (
                r[0].packets,
                r[0].bytes,
                r[0].reverse_packets,
                r[0].reverse_bytes
            ),
            (6, 700, 4, 400)
        );
        assert_eq!(r[0].initiator_by, "syn");
    }

    #[test]
    fn tcp_initiator_is_the_side_that_opened_with_a_bare_syn() {
        // Both directions carry SYN (SYN and SYN-ACK) and were seen in the same clock tick.
        let c = key([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000, 6);
        let s = reverse(&c);
        let mut m = FlowMap::default();
        let mut opened = totals(3, 180, 5, tcp::SYN | tcp::ACK);
        opened.bare_syn = true;
        m.insert(c, opened);
        m.insert(s, totals(2, 120, 5, tcp::SYN | tcp::ACK));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        // Even against the port heuristic (the initiator used port 80 here).
        assert_eq!(
            (r[0].src_port, r[0].dst_port, r[0].initiator_by),
            (80, 40000, "syn")
        );
    }

    #[test]
    fn scanned_open_port_is_oriented_by_the_syn_ack() {
        // The scanner's SYN was summed per source: the server's SYN-ACK is the first packet
        // recorded, and only the scanner's RST follows; on a well-known port and on a high
        // one alike (a masscan of every port).
        for port in [443, 40000] {
            let scanner = key([10, 0, 0, 66], 61000, [10, 0, 0, 2], port, 6);
            let mut m = FlowMap::default();
            m.insert(reverse(&scanner), totals(1, 44, 5, tcp::SYN | tcp::ACK));
            m.insert(scanner, totals(1, 40, 9, tcp::RST));
            let r = join_flows(&m, Clock::with_offset(0), &name);
            assert_eq!(
                (r[0].src_ip.to_string(), r[0].dst_port, r[0].initiator_by),
                ("10.0.0.66".to_string(), port, "syn_ack")
            );
        }
        // A client whose SYN was not seen (the capture started late) sent no SYN-ACK either:
        // the ports decide, as before.
        let client = key([10, 0, 0, 1], 50000, [10, 0, 0, 2], 443, 6);
        let mut m = FlowMap::default();
        m.insert(reverse(&client), totals(3, 3000, 5, tcp::ACK | tcp::PSH));
        m.insert(client, totals(3, 300, 6, tcp::ACK | tcp::PSH));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (r[0].src_ip.to_string(), r[0].dst_port, r[0].initiator_by),
            ("10.0.0.1".to_string(), 443, "port")
        );
    }

    #[test]
    fn a_lone_reply_is_recorded_as_the_askers_conversation() {
        let record = |k: FlowKey, t: FlowTotals| {
            let r = join_flows(&FlowMap::from_iter([(k, t)]), Clock::with_offset(0), &name);
            assert_eq!(r.len(), 1);
            let r = &r[0];
            (
                r.src_ip.to_string(),
                r.src_port,
                r.dst_ip.to_string(),
                r.dst_port,
                (r.packets, r.reverse_packets, r.reverse_bytes),
                r.initiator_by,
            )
        };
        let target = [10, 0, 0, 2];
        let scanner = [10, 0, 0, 66];
        // A closed port's RST to a probe summed per source: the scanner asked.
        assert_eq!(
            record(
                key(target, 40000, scanner, 61000, 6),
                totals(1, 40, 5, tcp::RST | tcp::ACK)
            ),
            (
                "10.0.0.66".into(),
                61000,
                "10.0.0.2".into(),
                40000,
                (0, 1, 40),
                "reply"
            )
        );
        // An open port's SYN-ACK.
        assert_eq!(
            record(
                key(target, 22, scanner, 61000, 6),
                totals(1, 44, 5, tcp::SYN | tcp::ACK)
            )
            .5,
            "reply"
        );
        // A port unreachable (type 3, code 3): the addresses turn, the type stays.
        assert_eq!(
            record(key(target, 3, scanner, 3, 1), totals(1, 70, 5, 0)),
            (
                "10.0.0.66".into(),
                3,
                "10.0.0.2".into(),
                3,
                (0, 1, 70),
                "reply"
            )
        );
        // An echo reply: the echo request's key.
        assert_eq!(
            record(key(target, 0, scanner, 77, 1), totals(1, 84, 5, 0)),
            (
                "10.0.0.66".into(),
                8,
                "10.0.0.2".into(),
                77,
                (0, 1, 84),
                "reply"
            )
        );
        // A DNS answer from port 53.
        assert_eq!(
            record(key(target, 53, scanner, 40001, 17), totals(1, 90, 5, 0)).5,
            "reply"
        );
        // What may have started it stays as it is: a bare SYN, a client's data with the
        // capture started late, a query to port 53, an echo request.
        let mut syn = totals(1, 60, 5, tcp::SYN);
        syn.bare_syn = true;
        for (k, t) in [
            (key(scanner, 61000, target, 22, 6), syn),
            (
                key(scanner, 50000, target, 443, 6),
                totals(2, 200, 5, tcp::ACK | tcp::PSH),
            ),
            (key(scanner, 40001, target, 53, 17), totals(1, 60, 5, 0)),
            (key(scanner, 8, target, 77, 1), totals(1, 84, 5, 0)),
        ] {
            let r = record(k, t);
            assert_eq!((r.0.as_str(), r.5), ("10.0.0.66", "one_way"), "{k:?}");
        }
    }

    #[test]
    fn a_lone_rst_ack_refused_the_other_side() {
        // A closed port's RST+ACK to a scanner's SYN that was summed per source, seen first,
        // and a RST the scanner sent after it: both ports ephemeral.
        let target = key([10, 0, 0, 2], 58634, [10, 0, 0, 66], 44896, 6);
        let mut m = FlowMap::default();
        m.insert(target, totals(1, 40, 5, tcp::RST | tcp::ACK));
        m.insert(reverse(&target), totals(1, 40, 9, tcp::RST));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (r[0].src_ip.to_string(), r[0].src_port, r[0].initiator_by),
            ("10.0.0.66".into(), 44896, "reply")
        );
        // A download's client that only ACKed and then reset: many packets, not a refusal.
        let client = key([10, 0, 0, 1], 40000, [10, 0, 0, 2], 45000, 6);
        let mut m = FlowMap::default();
        m.insert(reverse(&client), totals(30, 40000, 5, tcp::ACK | tcp::PSH));
        m.insert(client, totals(20, 800, 6, tcp::RST | tcp::ACK));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(r[0].initiator_by, "first_seen");
    }

    #[test]
    fn tcp_capture_begun_mid_conversation_keeps_the_client_as_initiator() {
        // No SYN of either side was seen, and the server spoke first in this capture.
        let client = key([10, 0, 0, 1], 45678, [10, 0, 0, 2], 8080, 6);
        let mut m = FlowMap::default();
        m.insert(reverse(&client), totals(3, 3000, 5, tcp::ACK | tcp::PSH));
        m.insert(client, totals(2, 104, 9, tcp::ACK));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (
                r[0].src_ip.to_string(),
                r[0].src_port,
                r[0].dst_port,
                r[0].packets,
                r[0].reverse_packets,
                r[0].initiator_by
            ),
            ("10.0.0.1".into(), 45678, 8080, 2, 3, "port")
        );
    }

    #[test]
    fn udp_initiator_by_port_then_first_seen_then_higher_port() {
        // A well-known port serves, whoever was seen first.
        let dns = key([10, 0, 0, 1], 5353, [10, 0, 0, 2], 53, 17);
        let mut m = FlowMap::default();
        m.insert(dns, totals(1, 60, 20, 0));
        m.insert(reverse(&dns), totals(1, 120, 10, 0));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (r[0].src_port, r[0].dst_port, r[0].initiator_by),
            (5353, 53, "port")
        );
        // An ephemeral port against a registered one: the ephemeral side, whoever was first.
        let e = key([10, 0, 0, 1], 40000, [10, 0, 0, 2], 5000, 17);
        let mut m = FlowMap::default();
        m.insert(reverse(&e), totals(1, 60, 10, 0));
        m.insert(e, totals(1, 120, 20, 0));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (r[0].src_port, r[0].dst_port, r[0].initiator_by),
            (40000, 5000, "port")
        );
        // Two registered ports: the first seen initiates...
        let c = key([10, 0, 0, 1], 20000, [10, 0, 0, 2], 5000, 17);
        let mut m = FlowMap::default();
        m.insert(reverse(&c), totals(1, 60, 10, 0));
        m.insert(c, totals(1, 120, 20, 0));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!((r[0].src_port, r[0].initiator_by), (5000, "first_seen"));
        // ... and on a tie, the higher port.
        m.insert(c, totals(1, 120, 10, 0));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (r[0].src_port, r[0].dst_port, r[0].initiator_by),
            (20000, 5000, "port")
        );
    }

    #[test]
    fn icmp_echo_request_and_reply_join() {
        let req = key([10, 0, 0, 1], 8, [10, 0, 0, 2], 0, 1);
        let mut rep = reverse(&req);
        rep.src_port = 0;
        rep.dst_port = 0;
        let mut m = FlowMap::default();
        m.insert(rep, totals(3, 252, 1, 0));
        m.insert(req, totals(3, 252, 2, 0));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].src_ip.to_string(), "10.0.0.1");
        assert_eq!((r[0].src_port, r[0].reverse_packets), (8, 3));
    }

    #[test]
    fn one_way_flow_has_zero_reverse() {
        let k = key([10, 0, 0, 9], 1234, [10, 0, 0, 2], 22, 6);
        let mut m = FlowMap::default();
        m.insert(k, totals(1, 60, 1, tcp::SYN));
        let r = join_flows(&m, Clock::with_offset(0), &name);
        assert_eq!(
            (r[0].reverse_packets, r[0].reverse_bytes, r[0].initiator_by),
            (0, 0, "one_way")
        );
    }

    #[test]
    fn per_cpu_values_add_up() {
        let mut t = FlowTotals::default();
        let mk = |p, first, last, f| FlowValue {
            packets: p,
            bytes: p * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: f,
            directions: DIR_EGRESS,
            opened_by_syn: 0,
            _pad1: 0,
            _pad4: 0,
        };
        t.add(&mk(2, 50, 60, tcp::SYN));
        t.add(&FlowValue::default()); // a CPU that never saw it
        t.add(&mk(3, 40, 90, tcp::ACK));
        assert_eq!(
            t,
            FlowTotals {
                packets: 5,
                bytes: 500,
                first_seen_ns: 40,
                last_seen_ns: 90,
                tcp_flags: tcp::SYN | tcp::ACK,
                directions: DIR_EGRESS,
                bare_syn: false,
            }
        );
    }

    #[test]
    fn wall_clock_is_rfc3339() {
        let c = Clock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(1_500_000_000), "2023-11-14T22:13:21.5Z");
    }

    #[test]
    fn v6_and_mapped_addresses_print_plainly() {
        assert_eq!(addr(v4_mapped([192, 0, 2, 1]), 4).to_string(), "192.0.2.1");
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 1;
        assert_eq!(addr(a, 6).to_string(), "fd00::1");
    }
}
