//! What several detectors share: severities by extent, what counts as a failed attempt, the
//! view of a chunk's other records, per-key state bounded in size, and reports at thresholds
//! and their doublings.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use tracing::warn;

use crate::model::{Action, Flow, Severity, Source};

pub(crate) fn port_scan_severity(distinct_ports: u32) -> Severity {
    match distinct_ports {
        1000.. => Severity::High,
        100.. => Severity::Medium,
        _ => Severity::Low,
    }
}

pub(crate) fn sweep_severity(distinct_hosts: u32) -> Severity {
    match distinct_hosts {
        256.. => Severity::High,
        64.. => Severity::Medium,
        _ => Severity::Low,
    }
}

/// Says that a detector dropped live state to stay bounded: at the 1st, 2nd, 4th, 8th... time,
/// so a storm of spoofed sources is heard without flooding the log.
pub(crate) fn forgot(detector: &str, total: u64) {
    if total.is_power_of_two() {
        warn!(
            detector,
            dropped_live_sources = total,
            "detector state is full: a live source was dropped and its counts start again"
        );
    }
}

/// Distinct targets kept per (source, host) or (source, port): enough for any severity.
pub(crate) const MAX_DISTINCT: usize = 4096;

/// Reports of one (source, host) or (source, port): once at half the threshold (for high
/// sensitivity), then at the threshold and at each doubling.
#[derive(Default)]
pub(crate) struct Reported {
    early: bool,
    count: usize,
}

impl Reported {
    /// Whether `n` distinct failures are worth a report against `threshold`.
    pub(crate) fn due(&mut self, n: usize, threshold: usize) -> bool {
        if n >= threshold && n >= 2 * self.count {
            self.count = n;
            self.early = true;
            return true;
        }
        if !self.early && self.count == 0 && n >= threshold.div_ceil(2) {
            self.early = true;
            return true;
        }
        false
    }
}

pub(crate) const TCP: u8 = 6;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const FIN: u8 = 0x01;
pub(crate) const ACK: u8 = 0x10;

/// Largest packet of a probe: IP and TCP headers with options, no payload.
pub(crate) const HEADER_ONLY_BYTES: u64 = 64;

/// Whether a flow record is a failed attempt. Rejected is failed. With TCP flags (sensors, AWS
/// v3+), a flow that never got past its SYN is failed, and so is a half-open one: a SYN and
/// the prober's own RST in at most 2 header-only packets, without an ACK (a SYN scan that
/// found the port open or closed; AWS logs no ACK but a SYN-ACK's). Without flags (AWS v2,
/// GCP), a TCP flow of at most 2 packets carrying no payload either way is probe-like: a SYN
/// or two, answered by at most a RST. A completed handshake takes at least 3 packets from the
/// client. A record that did not write its protocol is failed only when rejected.
pub fn failed(f: &Flow) -> bool {
    if f.action == Action::Reject {
        return true;
    }
    if f.protocol != TCP {
        return false;
    }
    if f.tcp_flags != 0 {
        let flags = f.tcp_flags & (SYN | ACK | RST | FIN);
        return flags == SYN || flags == SYN | RST && probe_sized(f);
    }
    probe_sized(f) && f.reverse_packets <= 2 && header_only(f.reverse_packets, f.reverse_bytes)
}

fn header_only(packets: u64, bytes: u64) -> bool {
    bytes <= HEADER_ONLY_BYTES * packets
}

/// At most 2 packets, no payload (unknown, so not, when the record wrote no counts).
fn probe_sized(f: &Flow) -> bool {
    f.counts_known() && (1..=2).contains(&f.packets) && header_only(f.packets, f.bytes)
}

/// What the detectors of one chunk look up about its other records, built once per chunk and
/// shared by the fan-out, the walks and the distributed-scan detector.
pub struct ChunkView {
    /// (from, to) of the records that carried packets: a failure whose target sent anything back
    /// to its source was answered (a RST; in a one-way log, a record the other way). Built on
    /// first use: the sensor flows' detectors never ask.
    talked: std::cell::OnceCell<HashSet<(IpAddr, IpAddr)>>,
    /// (protocol, src, src port, dst, dst port) of the one-way (cloud) records that carried
    /// packets, with their TCP flags, packets and bytes. Sensor records carry their answers
    /// themselves.
    one_way: HashMap<FiveTuple, (u8, u64, u64)>,
}

/// (protocol, src, src port, dst, dst port).
type FiveTuple = (u8, IpAddr, u16, IpAddr, u16);

impl ChunkView {
    pub fn of(flows: &[Flow]) -> Self {
        ChunkView {
            talked: std::cell::OnceCell::new(),
            one_way: flows
                .iter()
                .filter(|f| f.packets > 0 && f.source != Source::Sensor)
                .map(|f| {
                    (
                        (f.protocol, f.src_ip, f.src_port, f.dst_ip, f.dst_port),
                        (f.tcp_flags, f.packets, f.bytes),
                    )
                })
                .collect(),
        }
    }

    /// Whether `from` sent `to` anything in the chunk.
    pub(crate) fn talked(&self, flows: &[Flow], from: IpAddr, to: IpAddr) -> bool {
        self.talked
            .get_or_init(|| {
                flows
                    .iter()
                    .filter(|f| f.packets > 0)
                    .map(|f| (f.src_ip, f.dst_ip))
                    .collect()
            })
            .contains(&(from, to))
    }

    /// Whether the chunk holds the one-way record the other way of `f` (same ports).
    pub(crate) fn has_reverse(&self, f: &Flow) -> bool {
        self.reverse_of(f).is_some()
    }

    /// The one-way record the other way of `f` in the chunk: its TCP flags, packets, bytes.
    pub(crate) fn reverse_of(&self, f: &Flow) -> Option<(u8, u64, u64)> {
        self.one_way
            .get(&(f.protocol, f.dst_ip, f.dst_port, f.src_ip, f.src_port))
            .copied()
    }

    /// UDP in one-way records (AWS, GCP, Azure: a record per direction): a probe is a record of
    /// at most 2 small packets whose answer, a record the other way for the same ports, is not
    /// in the same chunk of the log. Only for unsampled logs: a sampled log drops answers as
    /// well, and a busy resolver would look like a sweep. A record with return counts of its
    /// own (a sensor's) is judged by those.
    pub(crate) fn udp_unanswered(&self, f: &Flow) -> bool {
        f.protocol == UDP
            && f.sampling_rate >= 1.0
            && f.source != Source::Sensor
            && f.action != Action::Reject
            && (1..=2).contains(&f.packets)
            && f.bytes <= 2 * UDP_PROBE_BYTES
            && f.reverse_packets == 0
            && !self.has_reverse(f)
    }

    /// A failed attempt, as the scan detectors judge it: [`failed`], unanswered UDP, or a
    /// refused stealth probe.
    pub fn failed(&self, f: &Flow) -> bool {
        failed(f) || self.udp_unanswered(f) || self.stealth_refused(f)
    }

    /// A one-way (cloud) TCP record with flags but no SYN or ACK (a FIN, Xmas or NULL-like
    /// probe: AWS logs a Xmas probe's FIN only) of at most 2 header-only packets, answered by a
    /// RST in the record the other way: a connection that never was, refused. (A client's
    /// closing FIN is answered by a FIN.)
    pub(crate) fn stealth_refused(&self, f: &Flow) -> bool {
        f.protocol == TCP
            && f.source != Source::Sensor
            && f.tcp_flags != 0
            && f.tcp_flags & (SYN | ACK) == 0
            && probe_sized(f)
            && self
                .reverse_of(f)
                .is_some_and(|(flags, ..)| flags & RST != 0 && flags & FIN == 0)
    }
}

pub(crate) const UDP: u8 = 17;
/// The largest UDP probe counted, per packet (IP and UDP headers and a small payload).
pub(crate) const UDP_PROBE_BYTES: u64 = 128;

pub(crate) fn scaled(threshold: u32, rate: f64) -> usize {
    let rate = if rate > 0.0 && rate <= 1.0 { rate } else { 1.0 };
    ((threshold as f64 * rate).ceil() as usize).max(3)
}

/// The hasher of the detectors' hot maps: foldhash, seeded per process (the standard SipHash
/// cost about 220 instructions an address, most of `scan_extent`'s time).
pub(crate) type Fast = foldhash::fast::RandomState;

/// Per-key detector state with the data time it was last touched.
pub(crate) trait Stamped: Default {
    fn last_ns(&self) -> i64;
}

/// Per-key detector state bounded to `max` keys. When full, the keys whose window is over go
/// first (at most every tenth of a window, so a storm of new keys does not rescan the map each
/// time), then any one, counted and logged as forgotten.
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V, Fast>,
    max: usize,
    /// For the log line.
    detector: &'static str,
    now_ns: i64,
    pruned_ns: i64,
    forgotten: u64,
    /// Keys touched or dropped since the last [`Bounded::changes`], for a detector that saves
    /// its windows (kept only [`Bounded::saved`]).
    dirty: HashSet<K, Fast>,
    saved: bool,
}

impl<K: std::hash::Hash + Eq + Clone, V: Stamped> Bounded<K, V> {
    pub(crate) fn new(max: usize, detector: &'static str) -> Self {
        Bounded {
            map: HashMap::default(),
            max,
            detector,
            now_ns: 0,
            pruned_ns: 0,
            forgotten: 0,
            dirty: HashSet::default(),
            saved: false,
        }
    }

    /// Keeps track of what changed, for [`Bounded::changes`] (which must then be called, at
    /// each save, to keep that bounded too).
    pub(crate) fn saved(mut self) -> Self {
        self.saved = true;
        self
    }

    /// The latest data time seen.
    pub(crate) fn now_ns(&self) -> i64 {
        self.now_ns
    }

    /// What changed since the last call, to save: each key touched with its state, or None for
    /// a key dropped. Keys untouched since `horizon` (their window is over) are dropped first.
    pub(crate) fn changes(&mut self, horizon: i64) -> Vec<(K, Option<&V>)> {
        let dirty = &mut self.dirty;
        self.map.retain(|k, v| {
            let keep = v.last_ns() >= horizon;
            if !keep {
                dirty.insert(k.clone());
            }
            keep
        });
        let keys: Vec<K> = self.dirty.drain().collect();
        keys.into_iter()
            .map(|k| {
                let v = self.map.get(&k);
                (k, v)
            })
            .collect()
    }

    /// Takes up a saved key (at a load), within the bound.
    pub(crate) fn restore(&mut self, k: K, v: V) {
        if self.map.len() < self.max {
            self.now_ns = self.now_ns.max(v.last_ns());
            self.map.insert(k, v);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// A key's state, if it is held (marked changed, for a save).
    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let v = self.map.get_mut(k)?;
        self.now_ns = self.now_ns.max(v.last_ns());
        if self.saved {
            self.dirty.insert(k.clone());
        }
        Some(v)
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Every key's state, read only (nothing is marked changed; change a key through
    /// [`Bounded::get_mut`]).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    /// Live keys dropped to stay within `max`.
    pub(crate) fn forgotten(&self) -> u64 {
        self.forgotten
    }

    pub(crate) fn entry(&mut self, k: K, t: i64, window_ns: i64) -> &mut V {
        self.now_ns = self.now_ns.max(t);
        if !self.map.contains_key(&k) && self.map.len() >= self.max {
            if self.now_ns - self.pruned_ns > window_ns / 10 {
                let horizon = self.now_ns - window_ns;
                let (dirty, saved) = (&mut self.dirty, self.saved);
                self.map.retain(|k, v| {
                    let keep = v.last_ns() >= horizon;
                    if !keep && saved {
                        dirty.insert(k.clone());
                    }
                    keep
                });
                self.pruned_ns = self.now_ns;
            }
            if self.map.len() >= self.max
                && let Some(old) = self.map.keys().next().cloned()
            {
                self.map.remove(&old);
                if self.saved {
                    self.dirty.insert(old.clone());
                }
                self.forgotten += 1;
                forgot(self.detector, self.forgotten);
            }
        }
        if self.saved {
            self.dirty.insert(k.clone());
        }
        self.map.entry(k).or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Helpers of the detectors' tests.
    use super::*;
    use crate::model::{AlertUpdate, Sensitivity};

    /// What the default (medium) sensitivity raises of a detector's reports.
    pub(crate) fn medium(u: Vec<AlertUpdate>) -> Vec<AlertUpdate> {
        u.into_iter()
            .filter(|u| Sensitivity::Medium.raises(u.strength))
            .collect()
    }

    pub(crate) fn cloud(
        src: &str,
        dst: &str,
        port: u16,
        t_s: i64,
        action: Action,
        flags: u8,
    ) -> Flow {
        Flow {
            source: Source::Aws,
            observer: "123456789010".into(),
            interface: "eni-1".into(),
            start_ns: t_s * 1_000_000_000,
            end_ns: t_s * 1_000_000_000,
            src_ip: src.parse().expect("src"),
            dst_ip: dst.parse().expect("dst"),
            src_port: 40000,
            dst_port: port,
            protocol: TCP,
            packets: 1,
            bytes: 44,
            reverse_packets: 0,
            reverse_bytes: 0,
            tcp_flags: flags,
            action,
            sampling_rate: 1.0,
            cloud: Default::default(),
            sensor: None,
        }
    }

    #[test]
    fn aws_flags_tell_half_open_and_refused_stealth_probes_from_sessions() {
        let a = |flags: u8, packets: u64, bytes: u64| Flow {
            packets,
            bytes,
            ..cloud("198.51.100.7", "10.0.0.5", 80, 0, Action::Accept, flags)
        };
        let back = |flags: u8| Flow {
            src_ip: "10.0.0.5".parse().expect("ip"),
            dst_ip: "198.51.100.7".parse().expect("ip"),
            src_port: 80,
            dst_port: 40000,
            ..a(flags, 1, 40)
        };
        // A SYN alone, and a SYN with the prober's RST (masscan, nmap -sS): failed.
        assert!(failed(&a(SYN, 1, 44)));
        assert!(failed(&a(SYN | RST, 2, 80)));
        // A client's SYN and FIN with data, or SYN and RST after data: not.
        assert!(!failed(&a(SYN | FIN, 8, 900)));
        assert!(!failed(&a(SYN | RST, 6, 900)));
        // A FIN probe, refused by a RST: failed; a closing FIN answered by a FIN, or with
        // nothing back in the chunk: not.
        let fin = a(FIN, 1, 40);
        assert!(ChunkView::of(&[fin.clone(), back(RST)]).failed(&fin));
        assert!(!ChunkView::of(&[fin.clone(), back(FIN)]).failed(&fin));
        assert!(!ChunkView::of(std::slice::from_ref(&fin)).failed(&fin));
        // Nor a FIN with data.
        let data = a(FIN, 2, 900);
        assert!(!ChunkView::of(&[data.clone(), back(RST)]).failed(&data));
    }

    #[test]
    fn a_record_without_its_counts_or_port_is_no_probe_unless_rejected() {
        use crate::model::{Absent, CloudMeta};
        let unwritten = |fields: Absent, action: Action, flags: u8| Flow {
            packets: 0,
            bytes: 0,
            cloud: CloudMeta {
                absent: fields,
                ..Default::default()
            },
            ..cloud("198.51.100.7", "10.0.0.5", 80, 0, action, flags)
        };
        let counts = Absent::PACKETS.with(Absent::BYTES, true);
        // Without flags or counts nothing says it was probe-sized: not failed, although 0
        // packets would look so...
        let f = unwritten(counts, Action::Accept, 0);
        assert!(!f.counts_known() && f.port_known());
        assert!(!failed(&f));
        assert!(failed(&Flow {
            cloud: Default::default(),
            packets: 1,
            bytes: 40,
            ..f.clone()
        }));
        // ...nor half-open with its RST; a lone SYN still is, and a REJECT whatever it lacks.
        assert!(!failed(&unwritten(counts, Action::Accept, SYN | RST)));
        assert!(failed(&unwritten(counts, Action::Accept, SYN)));
        let all = Absent::NAMES
            .iter()
            .fold(Absent::default(), |a, (f, _)| a.with(*f, true));
        let rejected = unwritten(all, Action::Reject, 0);
        assert!(failed(&rejected) && !rejected.port_known());
        // Its port is not one: a port scan needs the ports the records wrote. 14 ports and
        // the unwritten one stay below the threshold of 15; a 15th port reaches it.
        let cfg = super::super::fanout::FanOutConfig::default();
        assert_eq!(cfg.port_threshold, 15);
        let mut fan = super::super::fanout::FanOutDetector::new(cfg);
        let mut probes: Vec<Flow> = (1..15)
            .map(|p| Flow {
                dst_port: p,
                ..rejected.clone()
            })
            .map(|f| Flow {
                cloud: Default::default(),
                ..f
            })
            .collect();
        probes.push(rejected.clone());
        let ports = |found: Vec<super::super::decoys::Finding>| -> Vec<u64> {
            found
                .iter()
                .filter_map(|f| f.update.observation["distinct_ports"].as_u64())
                .collect()
        };
        let found = ports(fan.findings(&probes, &ChunkView::of(&probes)));
        assert!(found.iter().all(|n| *n < 15), "{found:?}");
        let last = [Flow {
            dst_port: 15,
            cloud: Default::default(),
            ..rejected.clone()
        }];
        assert_eq!(ports(fan.findings(&last, &ChunkView::of(&last))), [15]);
        assert_eq!(Absent::of_names(all.names()), all);
    }

    /// An AWS v2 record (one direction, no TCP flags) of one SYN-sized packet.
    pub(crate) fn record(src: &str, sport: u16, dst: &str, dport: u16, t_s: i64) -> Flow {
        Flow {
            src_port: sport,
            bytes: 40,
            ..cloud(src, dst, dport, t_s, Action::Accept, 0)
        }
    }
}
