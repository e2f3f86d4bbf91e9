//! Detectors: what the control plane sees becomes alert observations (see `alerts`).
//!
//! - Kernel scan events from sensors become `port_scan` and `address_sweep` alerts. A sensor
//!   reports a source once per scan window, when it crosses the distinct-port or distinct-host
//!   threshold, so these alerts are live from the first minute.
//! - [`FanOutDetector`] finds the same in flows alone (cloud flow logs): failed attempts from
//!   one source to many ports of one host, or to one port of many hosts, within a window of
//!   data time.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use picket_proto::v1::ScanEvent;
use serde_json::json;

use crate::{
    model::{Action, Flow},
    model::{AlertUpdate, Sensitivity, Severity},
    store::Store,
    util::net::{NetSet, ip_addr, ip_text},
    util::time::rfc3339,
};
use tracing::{info, warn};

fn port_scan_severity(distinct_ports: u32) -> Severity {
    match distinct_ports {
        1000.. => Severity::High,
        100.. => Severity::Medium,
        _ => Severity::Low,
    }
}

fn sweep_severity(distinct_hosts: u32) -> Severity {
    match distinct_hosts {
        256.. => Severity::High,
        64.. => Severity::Medium,
        _ => Severity::Low,
    }
}

/// The alert observations of one kernel scan event from `sensor`: a `port_scan` if it crossed
/// the port threshold, an `address_sweep` if it crossed the host threshold (both if both).
pub fn scan_event_alerts(sensor: &str, e: &ScanEvent) -> anyhow::Result<Vec<AlertUpdate>> {
    Ok(scan_event_findings(sensor, e)?
        .into_iter()
        .map(|f| f.update)
        .collect())
}

/// [`scan_event_alerts`] as findings for decoy grouping (`scangroup::DecoyGroups`).
pub fn scan_event_findings(
    sensor: &str,
    e: &ScanEvent,
) -> anyhow::Result<Vec<crate::scangroup::Finding>> {
    let src = ip_text(&e.src_ip)?;
    let dst = ip_text(&e.last_dst_ip)?;
    // Failures are the evidence: a fan-out whose contacts were mostly answered is a busy client
    // (a metrics scraper, a crawler), not a scanner. Events without the agent's counts (older
    // agents) are taken as they are.
    if e.answered_contacts > e.unanswered_contacts {
        info!(
            sensor,
            source = src,
            answered = e.answered_contacts,
            unanswered = e.unanswered_contacts,
            "a fan-out whose contacts were mostly answered: not a scan"
        );
        return Ok(Vec::new());
    }
    let probes: std::collections::BTreeMap<_, _> = e.probes.iter().collect();
    let time_ns = i64::try_from(e.end_unix_ns).unwrap_or(i64::MAX);
    let observation = json!({
        "kind": "kernel_scan_event",
        "sensor": sensor,
        "iface": e.iface,
        "probe": e.probe,
        "probes": probes,
        "distinct_ports": e.distinct_ports,
        "distinct_hosts": e.distinct_hosts,
        "probe_bytes": e.probe_bytes,
        "answered_contacts": e.answered_contacts,
        "unanswered_contacts": e.unanswered_contacts,
        "replied_contacts": e.replied_contacts,
        "last_target": format!("{dst}:{}", e.last_dst_port),
        "start": rfc3339(i64::try_from(e.start_unix_ns).unwrap_or(i64::MAX)),
        "end": rfc3339(time_ns),
    });
    let mut out = Vec::new();
    let mut push = |kind, severity, target| {
        out.push(crate::scangroup::Finding {
            update: AlertUpdate {
                kind,
                severity,
                source: src.clone(),
                targets: vec![dst.clone()],
                time_ns,
                observation: observation.clone(),
                seen_by: format!("sensor:{sensor}"),
                // The kernel reports at its threshold.
                strength: 1.0,
            },
            target,
            replied: e.replied_contacts,
        });
    };
    if e.reason.iter().any(|r| r == "ports") {
        push(
            "port_scan",
            port_scan_severity(e.distinct_ports),
            // Decoys send the same probes: a SYN scan and a UDP scan of one host are two scans.
            format!("port_scan {dst} {}", e.probe),
        );
    }
    if e.reason.iter().any(|r| r == "hosts") {
        push(
            "address_sweep",
            sweep_severity(e.distinct_hosts),
            format!(
                "address_sweep {}/{}",
                match e.probe.as_str() {
                    "udp" => UDP,
                    "icmp_echo" => 1,
                    _ => TCP,
                },
                e.last_dst_port
            ),
        );
    }
    Ok(out)
}

/// Says that a detector dropped live state to stay bounded: at the 1st, 2nd, 4th, 8th... time,
/// so a storm of spoofed sources is heard without flooding the log.
fn forgot(detector: &str, total: u64) {
    if total.is_power_of_two() {
        warn!(
            detector,
            dropped_live_sources = total,
            "detector state is full: a live source was dropped and its counts start again"
        );
    }
}

/// Settings of [`FanOutDetector`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FanOutConfig {
    /// Failures count together within this much data time from a source's first one.
    pub window_ns: i64,
    /// Distinct ports of one host that make a port scan (Zeek's default is 15).
    pub port_threshold: u32,
    /// Distinct hosts on one port that make an address sweep (Zeek's default is 25).
    pub host_threshold: u32,
    /// Sources followed at once; beyond it the stalest is forgotten (counted).
    pub max_sources: usize,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        FanOutConfig {
            window_ns: 300_000_000_000,
            port_threshold: 15,
            host_threshold: 25,
            max_sources: 100_000,
        }
    }
}

/// Distinct targets kept per (source, host) or (source, port): enough for any severity.
const MAX_DISTINCT: usize = 4096;

/// What one source failed against in its current window.
#[derive(Default)]
struct SourceState {
    window_start_ns: i64,
    last_ns: i64,
    ports_by_host: HashMap<IpAddr, HashSet<u16>>,
    hosts_by_port: HashMap<(u8, u16), HashSet<IpAddr>>,
    /// What was already reported (an alert again at each doubling).
    reported_ports: HashMap<IpAddr, Reported>,
    reported_hosts: HashMap<(u8, u16), Reported>,
    /// Failures the target answered with something (a RST, a reply record): decoy evidence.
    replied_by_host: HashMap<IpAddr, u32>,
    replied_by_port: HashMap<(u8, u16), u32>,
}

/// Reports of one (source, host) or (source, port): once at half the threshold (for high
/// sensitivity), then at the threshold and at each doubling.
#[derive(Default)]
struct Reported {
    early: bool,
    count: usize,
}

impl Reported {
    /// Whether `n` distinct failures are worth a report against `threshold`.
    fn due(&mut self, n: usize, threshold: usize) -> bool {
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

/// Port scans and address sweeps found in flow records, for sources that leave no kernel
/// event: what cloud flow logs show. A failure is a rejected flow, or a TCP flow that never got
/// past its SYN (no ACK, RST or FIN in its flags). Thresholds scale with the sampling rate
/// (GCP samples; a sampled log shows about `rate` of the distinct targets), never below 3.
/// Time is the flows' own, so a replayed log alerts as it would have live.
pub struct FanOutDetector {
    config: FanOutConfig,
    sources: Bounded<IpAddr, SourceState>,
    decoys: crate::scangroup::DecoyGroups,
}

impl Default for FanOutDetector {
    fn default() -> Self {
        Self::new(FanOutConfig::default())
    }
}

const TCP: u8 = 6;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;

/// Largest packet of a probe: IP and TCP headers with options, no payload.
const HEADER_ONLY_BYTES: u64 = 64;

/// Whether a flow record is a failed attempt. Rejected is failed. With TCP flags (sensors, AWS
/// v3+), a flow that never got past its SYN is failed. Without them (AWS v2, GCP), a TCP flow
/// of at most 2 packets carrying no payload either way is probe-like: a SYN or two, answered
/// by at most a RST. A completed handshake takes at least 3 packets from the client.
pub(crate) fn failed(f: &Flow) -> bool {
    if f.action == Action::Reject {
        return true;
    }
    if f.protocol != TCP {
        return false;
    }
    if f.tcp_flags != 0 {
        return f.tcp_flags & (SYN | ACK | RST | FIN) == SYN;
    }
    let header_only = |packets: u64, bytes: u64| bytes <= HEADER_ONLY_BYTES * packets;
    (1..=2).contains(&f.packets)
        && header_only(f.packets, f.bytes)
        && f.reverse_packets <= 2
        && header_only(f.reverse_packets, f.reverse_bytes)
}

/// What the detectors of one chunk look up about its other records, built once per chunk and
/// shared by the fan-out, the walks and the distributed-scan detector.
pub struct ChunkView {
    /// (from, to) of the records that carried packets: a failure whose target sent anything back
    /// to its source was answered (a RST; in a one-way log, a record the other way). Built on
    /// first use: the sensor flows' detectors never ask.
    talked: std::cell::OnceCell<HashSet<(IpAddr, IpAddr)>>,
    /// (protocol, src, src port, dst, dst port) of the one-way (cloud) records that carried
    /// packets. Sensor records carry their answers themselves.
    one_way: HashSet<(u8, IpAddr, u16, IpAddr, u16)>,
}

impl ChunkView {
    pub fn of(flows: &[Flow]) -> Self {
        ChunkView {
            talked: std::cell::OnceCell::new(),
            one_way: flows
                .iter()
                .filter(|f| f.packets > 0 && f.source != crate::model::Source::Sensor)
                .map(|f| (f.protocol, f.src_ip, f.src_port, f.dst_ip, f.dst_port))
                .collect(),
        }
    }

    /// Whether `from` sent `to` anything in the chunk.
    fn talked(&self, flows: &[Flow], from: IpAddr, to: IpAddr) -> bool {
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
        self.one_way
            .contains(&(f.protocol, f.dst_ip, f.dst_port, f.src_ip, f.src_port))
    }

    /// UDP in one-way records (AWS, GCP, Azure: a record per direction): a probe is a record of
    /// at most 2 small packets whose answer, a record the other way for the same ports, is not
    /// in the same chunk of the log. Only for unsampled logs: a sampled log drops answers as
    /// well, and a busy resolver would look like a sweep. A record with return counts of its
    /// own (a sensor's) is judged by those.
    fn udp_unanswered(&self, f: &Flow) -> bool {
        f.protocol == UDP
            && f.sampling_rate >= 1.0
            && f.source != crate::model::Source::Sensor
            && f.action != Action::Reject
            && (1..=2).contains(&f.packets)
            && f.bytes <= 2 * UDP_PROBE_BYTES
            && f.reverse_packets == 0
            && !self.has_reverse(f)
    }

    /// A failed attempt, as the scan detectors judge it: [`failed`], or unanswered UDP.
    pub fn failed(&self, f: &Flow) -> bool {
        failed(f) || self.udp_unanswered(f)
    }
}

const UDP: u8 = 17;
/// The largest UDP probe counted, per packet (IP and UDP headers and a small payload).
const UDP_PROBE_BYTES: u64 = 128;

fn scaled(threshold: u32, rate: f64) -> usize {
    let rate = if rate > 0.0 && rate <= 1.0 { rate } else { 1.0 };
    ((threshold as f64 * rate).ceil() as usize).max(3)
}

impl FanOutDetector {
    pub fn new(config: FanOutConfig) -> Self {
        FanOutDetector {
            config,
            sources: Bounded::new(config.max_sources, "fan-out"),
            decoys: crate::scangroup::DecoyGroups::default(),
        }
    }

    /// Live sources dropped to stay within `max_sources` (their counts start again).
    pub fn forgotten(&self) -> u64 {
        self.sources.forgotten
    }

    /// Looks at a chunk of flows; returns the alert observations they complete, decoys
    /// grouped (`scangroup`).
    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let findings = self.findings(flows, &ChunkView::of(flows));
        self.decoys.group(findings)
    }

    /// [`Self::observe`] before decoy grouping.
    pub fn findings(&mut self, flows: &[Flow], view: &ChunkView) -> Vec<crate::scangroup::Finding> {
        let mut out = Vec::new();
        for f in flows.iter().filter(|f| view.failed(f)) {
            let replied = f.reverse_packets > 0 || view.talked(flows, f.dst_ip, f.src_ip);
            self.observe_failure(f, replied, &mut out);
        }
        out
    }

    /// Scan findings of other sources folded into a real scanner's alert as its decoys.
    pub fn decoys_folded(&self) -> u64 {
        self.decoys.decoys_folded
    }

    fn observe_failure(
        &mut self,
        f: &Flow,
        replied: bool,
        out: &mut Vec<crate::scangroup::Finding>,
    ) {
        let cfg = self.config;
        let st = self.sources.entry(f.src_ip, f.end_ns, cfg.window_ns);
        if st.ports_by_host.is_empty() && st.hosts_by_port.is_empty()
            || f.end_ns - st.window_start_ns > cfg.window_ns
            || f.end_ns < st.window_start_ns - cfg.window_ns
        {
            *st = SourceState {
                window_start_ns: f.end_ns,
                ..SourceState::default()
            };
        }
        st.last_ns = st.last_ns.max(f.end_ns);
        let seen_by = format!("{}:{}", f.source.as_str(), f.observer);
        let observation = |kind: &str, target: String, distinct: usize| {
            json!({
                "kind": "flow_log_fanout",
                "provider": f.source.as_str(),
                "observer": f.observer,
                "interface": f.interface,
                "protocol": f.protocol,
                kind: distinct,
                "target": target,
                "sampling_rate": f.sampling_rate,
                "window_start": rfc3339(st.window_start_ns),
                "last_failure": rfc3339(f.end_ns),
            })
        };
        // Severity from the estimated real count (sampled logs show a fraction of it).
        let estimate = |n: usize| (n as f64 / f.sampling_rate.clamp(0.01, 1.0)) as u32;

        if replied {
            *st.replied_by_host.entry(f.dst_ip).or_default() += 1;
            *st.replied_by_port
                .entry((f.protocol, f.dst_port))
                .or_default() += 1;
        }
        let ports = st.ports_by_host.entry(f.dst_ip).or_default();
        if ports.len() < MAX_DISTINCT {
            ports.insert(f.dst_port);
        }
        let n = ports.len();
        let threshold = scaled(cfg.port_threshold, f.sampling_rate);
        if st
            .reported_ports
            .entry(f.dst_ip)
            .or_default()
            .due(n, threshold)
        {
            out.push(crate::scangroup::Finding {
                update: AlertUpdate {
                    kind: "port_scan",
                    severity: port_scan_severity(estimate(n)),
                    source: f.src_ip.to_string(),
                    targets: vec![f.dst_ip.to_string()],
                    time_ns: f.end_ns,
                    observation: observation("distinct_ports", f.dst_ip.to_string(), n),
                    seen_by: seen_by.clone(),
                    strength: n as f64 / threshold as f64,
                },
                target: format!("port_scan {}", f.dst_ip),
                replied: st.replied_by_host.get(&f.dst_ip).copied().unwrap_or(0),
            });
        }

        let port = (f.protocol, f.dst_port);
        let hosts = st.hosts_by_port.entry(port).or_default();
        if hosts.len() < MAX_DISTINCT {
            hosts.insert(f.dst_ip);
        }
        let n = hosts.len();
        let threshold = scaled(cfg.host_threshold, f.sampling_rate);
        if st.reported_hosts.entry(port).or_default().due(n, threshold) {
            let mut sorted: Vec<IpAddr> = hosts.iter().copied().collect();
            sorted.sort();
            sorted.truncate(crate::model::MAX_TARGETS);
            let targets = sorted.iter().map(IpAddr::to_string).collect();
            out.push(crate::scangroup::Finding {
                update: AlertUpdate {
                    kind: "address_sweep",
                    severity: sweep_severity(estimate(n)),
                    source: f.src_ip.to_string(),
                    targets,
                    time_ns: f.end_ns,
                    observation: observation("distinct_hosts", format!("port {}", f.dst_port), n),
                    seen_by,
                    strength: n as f64 / threshold as f64,
                },
                target: format!("address_sweep {}/{}", f.protocol, f.dst_port),
                replied: st.replied_by_port.get(&port).copied().unwrap_or(0),
            });
        }
    }
}

/// `reject_storm`: many flows the cloud rejected toward one internal address, from many
/// sources, within a window: a flood of blocked traffic (or a scan spread over many sources,
/// each below the per-source thresholds) that an operator should hear about once, about the
/// address it hits. Only cloud flow logs carry rejects. Thresholds scale with the sampling rate.
pub struct RejectStorm {
    config: RejectStormConfig,
    targets: Bounded<IpAddr, StormState>,
}

#[derive(Clone, Copy, Debug)]
pub struct RejectStormConfig {
    /// Rejects count together within this much data time from a target's first one.
    pub window_ns: i64,
    /// Rejected flows that make a storm.
    pub flows: u32,
    /// Distinct sources it takes (fewer is one source's business: port_scan, address_sweep).
    pub sources: u32,
    /// Targets followed at once; beyond it the stalest is forgotten (counted).
    pub max_targets: usize,
}

impl Default for RejectStormConfig {
    fn default() -> Self {
        RejectStormConfig {
            window_ns: 300_000_000_000,
            flows: 200,
            sources: 10,
            max_targets: 100_000,
        }
    }
}

#[derive(Default)]
struct StormState {
    window_start_ns: i64,
    last_ns: i64,
    flows: usize,
    sources: HashSet<IpAddr>,
    ports: std::collections::BTreeSet<u16>,
    reported: Reported,
}

impl Stamped for StormState {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

impl Default for RejectStorm {
    fn default() -> Self {
        Self::new(RejectStormConfig::default())
    }
}

impl RejectStorm {
    pub fn new(config: RejectStormConfig) -> Self {
        RejectStorm {
            config,
            targets: Bounded::new(config.max_targets, "reject-storm"),
        }
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let cfg = self.config;
        let mut out = Vec::new();
        for f in flows.iter().filter(|f| {
            f.action == Action::Reject
                && f.source != crate::model::Source::Sensor
                && crate::util::net::internal(&f.dst_ip)
        }) {
            let st = self.targets.entry(f.dst_ip, f.end_ns, cfg.window_ns);
            if st.flows == 0
                || f.end_ns - st.window_start_ns > cfg.window_ns
                || f.end_ns < st.window_start_ns - cfg.window_ns
            {
                *st = StormState {
                    window_start_ns: f.end_ns,
                    ..StormState::default()
                };
            }
            st.last_ns = st.last_ns.max(f.end_ns);
            st.flows += 1;
            if st.sources.len() < MAX_DISTINCT {
                st.sources.insert(f.src_ip);
            }
            if st.ports.len() < MAX_DISTINCT {
                st.ports.insert(f.dst_port);
            }
            let threshold = scaled(cfg.flows, f.sampling_rate);
            if st.sources.len() < scaled(cfg.sources, f.sampling_rate)
                || !st.reported.due(st.flows, threshold)
            {
                continue;
            }
            let mut sources: Vec<IpAddr> = st.sources.iter().copied().collect();
            sources.sort();
            let estimate = st.flows as f64 / f.sampling_rate.clamp(0.01, 1.0);
            out.push(AlertUpdate {
                kind: "reject_storm",
                severity: if estimate >= 10.0 * f64::from(cfg.flows) {
                    Severity::Medium
                } else {
                    Severity::Low
                },
                source: f.dst_ip.to_string(),
                targets: sources
                    .iter()
                    .take(crate::model::MAX_TARGETS)
                    .map(IpAddr::to_string)
                    .collect(),
                time_ns: f.end_ns,
                observation: json!({
                    "kind": "rejected_flows",
                    "provider": f.source.as_str(),
                    "observer": f.observer,
                    "interface": f.interface,
                    "rejected_flows": st.flows,
                    "distinct_sources": st.sources.len(),
                    "ports": st.ports.iter().take(20).collect::<Vec<_>>(),
                    "distinct_ports": st.ports.len(),
                    "sampling_rate": f.sampling_rate,
                    "window_start": rfc3339(st.window_start_ns),
                    "last_reject": rfc3339(f.end_ns),
                }),
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                strength: st.flows as f64 / threshold as f64,
            });
        }
        out
    }
}

/// Ports of services that take passwords (SSH, Telnet, FTP, RDP, VNC, SMB, databases).
pub const AUTH_PORTS: [u16; 10] = [21, 22, 23, 445, 1433, 3306, 3389, 5432, 5900, 5985];

/// Settings of the brute-force detectors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BruteForceConfig {
    /// Attempts count together within this much data time from the first one.
    pub window_ns: i64,
    /// Failed logins (auth log) from one source to one host that make a brute force.
    pub failed_logins: u32,
    /// Short connections (flow logs) from one source to one authentication port of one host.
    pub short_connections: u32,
    /// A connection with at most this many packets (both ways) is short: a login attempt, not a
    /// session.
    pub short_packets: u64,
    /// Keys followed at once (see `FanOutConfig::max_sources`).
    pub max_keys: usize,
}

impl Default for BruteForceConfig {
    fn default() -> Self {
        BruteForceConfig {
            window_ns: 600_000_000_000,
            failed_logins: 10,
            short_connections: 20,
            short_packets: 40,
            max_keys: 100_000,
        }
    }
}

/// Attempts of one source against one target in its current window.
#[derive(Default)]
struct Attempts {
    window_start_ns: i64,
    last_ns: i64,
    count: u32,
    reported: u32,
    users: Vec<String>,
    accepted_reported: bool,
}

impl Attempts {
    /// Counts one attempt at `t`; starts a new window when the old one is over.
    fn add(&mut self, t: i64, window_ns: i64) {
        if self.count == 0 || t - self.window_start_ns > window_ns {
            *self = Attempts {
                window_start_ns: t,
                ..Attempts::default()
            };
        }
        self.last_ns = self.last_ns.max(t);
        self.count += 1;
    }

    /// True when the count reaches `threshold` or doubles since the last report.
    fn due(&mut self, threshold: u32) -> bool {
        let due = self.count >= threshold && self.count >= 2 * self.reported;
        if due {
            self.reported = self.count;
        }
        due
    }
}

/// Per-key detector state with the data time it was last touched.
pub(crate) trait Stamped: Default {
    fn last_ns(&self) -> i64;
}

/// Per-key detector state bounded to `max` keys. When full, the keys whose window is over go
/// first (at most every tenth of a window, so a storm of new keys does not rescan the map each
/// time), then any one, counted and logged as forgotten.
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V>,
    max: usize,
    /// For the log line.
    detector: &'static str,
    now_ns: i64,
    pruned_ns: i64,
    forgotten: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V: Stamped> Bounded<K, V> {
    pub(crate) fn new(max: usize, detector: &'static str) -> Self {
        Bounded {
            map: HashMap::new(),
            max,
            detector,
            now_ns: 0,
            pruned_ns: 0,
            forgotten: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
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
                self.map.retain(|_, v| v.last_ns() >= horizon);
                self.pruned_ns = self.now_ns;
            }
            if self.map.len() >= self.max
                && let Some(old) = self.map.keys().next().cloned()
            {
                self.map.remove(&old);
                self.forgotten += 1;
                forgot(self.detector, self.forgotten);
            }
        }
        self.map.entry(k).or_default()
    }
}

impl Stamped for Attempts {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

impl Stamped for SourceState {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

/// `brute_force` from sensors' login events: failed logins from one source to one host within
/// 10 minutes, and an accepted login from that source after them (high severity: the guess
/// may have worked).
pub struct LoginBruteForce {
    config: BruteForceConfig,
    attempts: Bounded<(IpAddr, String), Attempts>,
}

impl Default for LoginBruteForce {
    fn default() -> Self {
        Self::new(BruteForceConfig::default())
    }
}

impl LoginBruteForce {
    pub fn new(config: BruteForceConfig) -> Self {
        LoginBruteForce {
            config,
            attempts: Bounded::new(config.max_keys, "brute-force"),
        }
    }

    /// Keys dropped to stay bounded.
    pub fn forgotten(&self) -> u64 {
        self.attempts.forgotten
    }

    /// Looks at one login event from `sensor`'s auth log.
    pub fn observe(
        &mut self,
        sensor: &str,
        e: &picket_proto::v1::AuthEvent,
    ) -> anyhow::Result<Option<AlertUpdate>> {
        let src = ip_addr(&e.src_ip)?;
        let t = i64::try_from(e.time_unix_ns).unwrap_or(i64::MAX);
        let cfg = self.config;
        let a = self
            .attempts
            .entry((src, sensor.to_string()), t, cfg.window_ns);
        let severity = match e.outcome.as_str() {
            "failed" => {
                a.add(t, cfg.window_ns);
                if a.users.len() < 20 && !a.users.contains(&e.user) {
                    a.users.push(e.user.clone());
                }
                if !a.due(cfg.failed_logins) {
                    return Ok(None);
                }
                if a.count >= 10 * cfg.failed_logins {
                    Severity::High
                } else {
                    Severity::Medium
                }
            }
            "accepted" if a.count >= cfg.failed_logins && !a.accepted_reported => {
                a.accepted_reported = true;
                Severity::High
            }
            _ => return Ok(None),
        };
        Ok(Some(AlertUpdate {
            kind: "brute_force",
            severity,
            source: src.to_string(),
            targets: vec![sensor.to_string()],
            time_ns: t,
            observation: json!({
                "kind": "failed_logins",
                "sensor": sensor,
                "service": e.service,
                "failed": a.count,
                "users": a.users,
                "accepted_after": (e.outcome == "accepted").then(|| e.user.clone()),
                "window_start": rfc3339(a.window_start_ns),
                "last_attempt": rfc3339(t),
            }),
            seen_by: format!("sensor:{sensor}"),
            strength: a.count as f64 / cfg.failed_logins as f64,
        }))
    }
}

/// `brute_force` from flows alone (cloud flow logs): many short accepted connections from one
/// source to one authentication port of one host within 10 minutes. Counts scale with the
/// sampling rate.
pub struct FlowBruteForce {
    config: BruteForceConfig,
    attempts: Bounded<(IpAddr, IpAddr, u16), Attempts>,
}

impl Default for FlowBruteForce {
    fn default() -> Self {
        FlowBruteForce::new(BruteForceConfig::default())
    }
}

impl FlowBruteForce {
    pub fn new(config: BruteForceConfig) -> Self {
        FlowBruteForce {
            config,
            attempts: Bounded::new(config.max_keys, "brute-force"),
        }
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let cfg = self.config;
        let mut out = Vec::new();
        for f in flows {
            if f.protocol != TCP
                || f.action == Action::Reject
                || !AUTH_PORTS.contains(&f.dst_port)
                || f.packets + f.reverse_packets > cfg.short_packets
            {
                continue;
            }
            let a = self
                .attempts
                .entry((f.src_ip, f.dst_ip, f.dst_port), f.end_ns, cfg.window_ns);
            a.add(f.end_ns, cfg.window_ns);
            let threshold = scaled(cfg.short_connections, f.sampling_rate) as u32;
            if !a.due(threshold) {
                continue;
            }
            out.push(AlertUpdate {
                kind: "brute_force",
                severity: Severity::Medium,
                source: f.src_ip.to_string(),
                targets: vec![format!("{}:{}", f.dst_ip, f.dst_port)],
                time_ns: f.end_ns,
                observation: json!({
                    "kind": "short_connections",
                    "provider": f.source.as_str(),
                    "observer": f.observer,
                    "interface": f.interface,
                    "connections": a.count,
                    "port": f.dst_port,
                    "sampling_rate": f.sampling_rate,
                    "window_start": rfc3339(a.window_start_ns),
                    "last_attempt": rfc3339(f.end_ns),
                }),
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                strength: a.count as f64 / threshold as f64,
            });
        }
        out
    }
}

/// Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan, 2004): a sequential test on
/// the outcomes of a source's first contacts (here a new host and port), with no window, so a
/// scan spread over hours adds up. Each failed first contact multiplies the odds of "scanner" by
/// (1 - θ1) / (1 - θ0), each success by θ1 / θ0 (θ0 = 0.8 success for a benign source, θ1 =
/// 0.2 for a scanner). Odds of 99 (detection 0.99, false positives 0.01) mean a scanner: 4
/// failures in a row. Odds of 1/99 mean benign, and the walk starts again. The state persists
/// in the store (see [`SlowScan::load`] and [`SlowScan::dirty`]), so a scan spread over restarts
/// adds up too.
#[derive(Default)]
pub struct SlowScan {
    sources: HashMap<IpAddr, Walk>,
    dirty: HashSet<IpAddr>,
    /// Live sources dropped to stay within `SLOW_SCAN_SOURCES`.
    pub forgotten: u64,
}

/// Sources the slow-scan test follows at once (the stalest go first).
pub const SLOW_SCAN_SOURCES: usize = 50_000;
/// First contacts remembered per source (the oldest go first).
const WALK_CONTACTS: usize = 64;
/// ln((1 - θ1) / (1 - θ0)) and ln(θ1 / θ0) with θ0 = 0.8, θ1 = 0.2.
const LN_FAILURE: f64 = 1.386_294_361_119_890_6;
const LN_SUCCESS: f64 = -1.386_294_361_119_890_6;
/// ln(0.99 / 0.01).
const LN_SCANNER: f64 = 4.595_119_850_134_59;

/// One source's walk.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Walk {
    /// Log odds of "scanner".
    llr: f64,
    /// (host, port) first contacts already counted.
    contacted: Vec<(IpAddr, u16)>,
    /// The failed first contacts since the walk last started again: (host, port, time).
    failures: Vec<(IpAddr, u16, i64)>,
    last_ns: i64,
    reported: bool,
}

impl SlowScan {
    /// Starts from walks saved earlier (`key` = source address, `state` = JSON).
    pub fn load(saved: &[(String, String)]) -> Self {
        let mut s = SlowScan::default();
        for (k, v) in saved {
            if let (Ok(ip), Ok(w)) = (k.parse(), serde_json::from_str::<Walk>(v)) {
                s.sources.insert(ip, w);
            }
        }
        s
    }

    /// Walks changed since the last call, to save: (source, JSON or None to forget it, last
    /// time). Only walks leaning towards "scanner" are kept: most sources are benign, and
    /// forgetting a benign walk only forgets successes.
    pub fn dirty(&mut self) -> Vec<(String, Option<String>, i64)> {
        let out = self
            .dirty
            .iter()
            .map(|ip| {
                let w = self.sources.get(ip);
                let keep = w.filter(|w| w.llr > 0.0);
                (
                    ip.to_string(),
                    keep.and_then(|w| serde_json::to_string(w).ok()),
                    w.map_or(0, |w| w.last_ns),
                )
            })
            .collect();
        self.dirty.clear();
        out
    }

    /// Drops the tenth of the walks idle the longest (one pass for many new sources).
    fn forget_stalest(&mut self) {
        let mut by_age: Vec<(i64, IpAddr)> =
            self.sources.iter().map(|(k, w)| (w.last_ns, *k)).collect();
        let n = (by_age.len() / 10).max(1);
        by_age.select_nth_unstable(n - 1);
        for (_, k) in &by_age[..n] {
            self.sources.remove(k);
            self.dirty.insert(*k);
            self.forgotten += 1;
            forgot("slow-scan", self.forgotten);
        }
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        self.findings(flows, &ChunkView::of(flows))
            .into_iter()
            .map(|f| f.update)
            .collect()
    }

    /// [`Self::observe`] as findings for decoy grouping: the target is the walk's one host
    /// (`port_scan`) or its one port (`address_sweep`), and its replies are those of its
    /// failures whose target sent anything back within the chunk.
    pub fn findings(&mut self, flows: &[Flow], view: &ChunkView) -> Vec<crate::scangroup::Finding> {
        let mut out = Vec::new();
        for f in flows {
            if f.protocol != TCP && f.action != Action::Reject {
                // Only TCP (or a rejection) says whether a contact succeeded.
                continue;
            }
            if !self.sources.contains_key(&f.src_ip) && self.sources.len() >= SLOW_SCAN_SOURCES {
                self.forget_stalest();
            }
            let w = self.sources.entry(f.src_ip).or_default();
            let contact = (f.dst_ip, f.dst_port);
            if w.contacted.contains(&contact) {
                continue;
            }
            if w.contacted.len() >= WALK_CONTACTS {
                w.contacted.remove(0);
            }
            w.contacted.push(contact);
            w.last_ns = w.last_ns.max(f.end_ns);
            self.dirty.insert(f.src_ip);
            if failed(f) {
                w.llr += LN_FAILURE;
                if w.failures.len() < WALK_CONTACTS {
                    w.failures.push((f.dst_ip, f.dst_port, f.end_ns));
                }
            } else {
                w.llr += LN_SUCCESS;
            }
            if w.llr <= -LN_SCANNER {
                // Benign: start again.
                *w = Walk {
                    contacted: std::mem::take(&mut w.contacted),
                    last_ns: w.last_ns,
                    ..Walk::default()
                };
            } else if w.llr >= LN_SCANNER && !w.reported {
                w.reported = true;
                let hosts: HashSet<IpAddr> = w.failures.iter().map(|x| x.0).collect();
                let kind = if hosts.len() == 1 {
                    "port_scan"
                } else {
                    "address_sweep"
                };
                let mut targets: Vec<IpAddr> = hosts.into_iter().collect();
                targets.sort();
                let first = w.failures.first().map_or(f.end_ns, |x| x.2);
                let ports: HashSet<u16> = w.failures.iter().map(|x| x.1).collect();
                let group = if kind == "port_scan" {
                    format!("port_scan {}", targets[0])
                } else if ports.len() == 1 {
                    format!("address_sweep {TCP}/{}", f.dst_port)
                } else {
                    format!("address_sweep {TCP}/*")
                };
                let replied = w
                    .failures
                    .iter()
                    .filter(|x| view.talked(flows, x.0, f.src_ip))
                    .count() as u32;
                let update = AlertUpdate {
                    kind,
                    // The earliest, weakest evidence: fan-out counts raise it as they grow.
                    severity: Severity::Low,
                    source: f.src_ip.to_string(),
                    targets: targets.iter().map(IpAddr::to_string).collect(),
                    time_ns: f.end_ns,
                    observation: json!({
                        "kind": "sequential_test",
                        "test": "threshold_random_walk",
                        "failed_first_contacts": w.failures.iter().map(|(h, p, t)| json!({
                            "target": format!("{h}:{p}"),
                            "time": rfc3339(*t),
                        })).collect::<Vec<_>>(),
                        "odds": w.llr.exp(),
                        "first_failure": rfc3339(first),
                        "provider": f.source.as_str(),
                        "observer": f.observer,
                    }),
                    seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                    // The walk reports once, at its decision.
                    strength: 1.0,
                };
                out.push(crate::scangroup::Finding {
                    update,
                    target: group,
                    replied,
                });
            }
        }
        out
    }
}

/// `sensor_coverage_gap`: internal addresses that cloud flow logs show and no sensor watches
/// (`Store::coverage_gaps`), one alert per network (the VPC, else the cloud account): the
/// network is the entity, its unwatched addresses the targets. Reported when a network first
/// has gaps and again when its number of unwatched addresses doubles. Only once sensors are in
/// use (`sensors_registered`): before any is, every address would be a gap.
#[derive(Default)]
pub struct CoverageGaps {
    reported: HashMap<String, usize>,
}

impl CoverageGaps {
    pub fn observe(
        &mut self,
        gaps: &[crate::store::CoverageGap],
        sensors_registered: bool,
    ) -> Vec<AlertUpdate> {
        if !sensors_registered {
            return Vec::new();
        }
        let mut by_net: std::collections::BTreeMap<String, Vec<&crate::store::CoverageGap>> =
            std::collections::BTreeMap::new();
        for g in gaps {
            let net = g
                .vpcs
                .first()
                .or(g.observers.first())
                .cloned()
                .unwrap_or_else(|| "cloud".into());
            by_net.entry(net).or_default().push(g);
        }
        let mut out = Vec::new();
        for (net, gaps) in by_net {
            let last = self.reported.entry(net.clone()).or_default();
            if *last > 0 && gaps.len() < 2 * *last {
                continue;
            }
            *last = gaps.len();
            let mut addrs: Vec<IpAddr> = gaps.iter().filter_map(|g| g.ip.parse().ok()).collect();
            addrs.sort();
            let observers: std::collections::BTreeSet<&str> = gaps
                .iter()
                .flat_map(|g| g.observers.iter().map(String::as_str))
                .collect();
            let last_seen = gaps.iter().map(|g| g.last_seen_ns).max().unwrap_or(0);
            out.push(AlertUpdate {
                kind: "sensor_coverage_gap",
                severity: Severity::Low,
                source: net,
                targets: addrs
                    .iter()
                    .take(crate::model::MAX_TARGETS)
                    .map(IpAddr::to_string)
                    .collect(),
                time_ns: last_seen,
                observation: json!({
                    "kind": "cloud_only_addresses",
                    "addresses": addrs.len(),
                    "flows": gaps.iter().map(|g| g.flows).sum::<i64>(),
                    "observers": observers,
                    "first_seen": rfc3339(gaps.iter().map(|g| g.first_seen_ns).min().unwrap_or(0)),
                    "last_seen": rfc3339(last_seen),
                }),
                seen_by: format!(
                    "cloud:{}",
                    observers.into_iter().collect::<Vec<_>>().join(",")
                ),
                // No threshold: only `off` silences it.
                strength: f64::INFINITY,
            });
        }
        if self.reported.len() > 100_000 {
            self.reported.clear();
        }
        out
    }
}

/// `watchlist_hit`: traffic to or from a listed address or network (`Store::watchlist`). The
/// alert is about the other end, the entity that talked to the listed address; one observation
/// per (entity, listed address) per 10 minutes of data time.
#[derive(Default)]
pub struct Watchlist {
    /// (network, label) by network.
    nets: NetSet<(String, String)>,
    last_hit: HashMap<(IpAddr, IpAddr), i64>,
}

const WATCHLIST_REPEAT_NS: i64 = 600_000_000_000;
const WATCHLIST_HITS_KEPT: usize = 100_000;

impl Watchlist {
    /// From stored (CIDR, label) entries; an entry that does not parse is logged and skipped.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Watchlist {
            nets: NetSet::new(
                entries.into_iter().map(|e| (e.0.clone(), e)).collect(),
                "watchlist",
            ),
            last_hit: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The most specific entry holding `ip`: (network, label).
    pub fn lookup(&self, ip: IpAddr) -> Option<&(String, String)> {
        self.nets.lookup(ip)
    }

    /// Looks at one conversation: `src` talked to `dst` on `port`.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: u32,
        packets: u64,
        bytes: u64,
        time_ns: i64,
        seen_by: &str,
    ) -> Option<AlertUpdate> {
        if self.nets.is_empty() {
            return None;
        }
        let (listed, entity, direction, entry) = if let Some(e) = self.lookup(dst) {
            (dst, src, "to", e.clone())
        } else if let Some(e) = self.lookup(src) {
            (src, dst, "from", e.clone())
        } else {
            return None;
        };
        if self.last_hit.len() >= WATCHLIST_HITS_KEPT {
            self.last_hit.clear();
        }
        let last = self.last_hit.entry((entity, listed)).or_insert(i64::MIN);
        if *last != i64::MIN && (time_ns - *last).abs() < WATCHLIST_REPEAT_NS {
            return None;
        }
        *last = time_ns;
        Some(AlertUpdate {
            kind: "watchlist_hit",
            severity: Severity::Medium,
            source: entity.to_string(),
            targets: vec![listed.to_string()],
            time_ns,
            observation: json!({
                "kind": "watchlisted_address",
                "listed": listed.to_string(),
                "entry": entry.0,
                "label": entry.1,
                "direction": direction,
                "port": port,
                "protocol": protocol,
                "packets": packets,
                "bytes": bytes,
                "time": rfc3339(time_ns),
                "seen_by": seen_by,
            }),
            seen_by: seen_by.to_string(),
            strength: f64::INFINITY,
        })
    }

    pub fn observe_flows(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        if self.nets.is_empty() {
            return Vec::new();
        }
        flows
            .iter()
            .filter_map(|f| {
                self.observe(
                    f.src_ip,
                    f.dst_ip,
                    f.dst_port,
                    f.protocol.into(),
                    f.packets + f.reverse_packets,
                    f.bytes + f.reverse_bytes,
                    f.end_ns,
                    &format!("{}:{}", f.source.as_str(), f.observer),
                )
            })
            .collect()
    }
}

/// Every detector that works on flows (what an import runs).
pub struct FlowDetectors {
    pub fanout: FanOutDetector,
    pub brute_force: FlowBruteForce,
    pub slow_scan: SlowScan,
    pub watchlist: Watchlist,
    pub baselines: Baselines,
    pub reject_storm: RejectStorm,
    pub distributed: crate::scangroup::DistributedScan,
    pub decoys: crate::scangroup::DecoyGroups,
}

impl Default for FlowDetectors {
    /// Nothing learned yet, the default learning period.
    fn default() -> Self {
        FlowDetectors {
            fanout: FanOutDetector::default(),
            brute_force: FlowBruteForce::default(),
            slow_scan: SlowScan::default(),
            watchlist: Watchlist::default(),
            baselines: Baselines::new(crate::geo::LEARNING_NS, IMPORT_STATE_PREFIX),
            reject_storm: RejectStorm::default(),
            distributed: crate::scangroup::DistributedScan::default(),
            decoys: crate::scangroup::DecoyGroups::holding(),
        }
    }
}

/// Name of the slow-scan state in the store.
pub const SLOW_SCAN_STATE: &str = "slow_scan";

impl FlowDetectors {
    /// The detectors, with the slow-scan walks and the baselines saved in `store`;
    /// `learning_ns` is the baseline detectors' learning period.
    pub fn load(store: &dyn Store, learning_ns: i64) -> anyhow::Result<Self> {
        Ok(FlowDetectors {
            slow_scan: SlowScan::load(&store.detector_state(SLOW_SCAN_STATE)?),
            watchlist: Watchlist::new(store.watchlist()?),
            baselines: Baselines::load(store, learning_ns, IMPORT_STATE_PREFIX)?,
            ..FlowDetectors::default()
        })
    }

    /// What the detectors held back at the end of a file: scan findings of a lone source
    /// waiting for its decoys (`scangroup::DecoyGroups::holding`).
    pub fn flush(&mut self) -> Vec<AlertUpdate> {
        self.decoys.flush()
    }

    /// Saves what changed in the walks, the novelty facets and the outbound baselines.
    pub fn save(&mut self, store: &dyn Store) -> anyhow::Result<()> {
        store.save_detector_state(SLOW_SCAN_STATE, &self.slow_scan.dirty())?;
        self.baselines.save(store)
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        // Scan findings of the fan-out and of the walks, with decoys grouped together.
        let view = ChunkView::of(flows);
        let mut findings = self.fanout.findings(flows, &view);
        findings.extend(self.slow_scan.findings(flows, &view));
        let mut out = self.decoys.group(findings);
        out.extend(self.distributed.observe(flows, &view));
        out.extend(self.brute_force.observe(flows));
        out.extend(self.watchlist.observe_flows(flows));
        out.extend(self.baselines.observe(flows));
        out.extend(self.reject_storm.observe(flows));
        out.sort_by_key(|u| u.time_ns);
        out
    }
}

/// The baseline detectors: the novelty facets (`geo_unusual_access`, `new_service`,
/// `new_internal_device`) and the outbound baselines (`data_exfiltration`). An import runs them
/// in `FlowDetectors`; the ingest runs them over sensor flows on a thread of their own, with
/// their state names prefixed by [`SENSOR_STATE_PREFIX`], so the two never overwrite each
/// other's state. (Scans in sensor traffic are the kernel's to report; the watchlist is checked
/// on the writer thread.)
pub struct Baselines {
    pub geo: crate::geo::Novelty,
    pub new_service: crate::geo::Novelty,
    pub new_device: crate::geo::Novelty,
    pub exfiltration: crate::exfil::Exfiltration,
    /// Prefix of their state names in the store.
    prefix: &'static str,
}

/// The state names of an import's baselines have no prefix.
pub const IMPORT_STATE_PREFIX: &str = "";
/// Prefix of the sensor baselines' state names in the store.
pub const SENSOR_STATE_PREFIX: &str = "sensor/";

impl Baselines {
    /// Nothing learned yet.
    pub fn new(learning_ns: i64, prefix: &'static str) -> Self {
        use crate::geo::{Facet, Novelty};
        Baselines {
            geo: Novelty::load(Facet::Country, &[], learning_ns),
            new_service: Novelty::load(Facet::Service, &[], learning_ns),
            new_device: Novelty::load(Facet::Device, &[], learning_ns),
            exfiltration: crate::exfil::Exfiltration::load(&[], learning_ns),
            prefix,
        }
    }

    /// What was learned before, from `store`.
    pub fn load(store: &dyn Store, learning_ns: i64, prefix: &'static str) -> anyhow::Result<Self> {
        use crate::geo::{Facet, Novelty};
        let state = |name: &str| store.detector_state(&format!("{prefix}{name}"));
        let facet = |f: Facet| -> anyhow::Result<Novelty> {
            Ok(Novelty::load(f, &state(f.state_name())?, learning_ns))
        };
        Ok(Baselines {
            geo: facet(Facet::Country)?,
            new_service: facet(Facet::Service)?,
            new_device: facet(Facet::Device)?,
            exfiltration: crate::exfil::Exfiltration::load(
                &state(crate::exfil::KIND)?,
                learning_ns,
            ),
            prefix,
        })
    }

    /// Saves what changed since the last save.
    pub fn save(&mut self, store: &dyn Store) -> anyhow::Result<()> {
        use crate::geo::Facet;
        for (name, dirty) in [
            (Facet::Country.state_name(), self.geo.dirty()),
            (Facet::Service.state_name(), self.new_service.dirty()),
            (Facet::Device.state_name(), self.new_device.dirty()),
            (crate::exfil::KIND, self.exfiltration.dirty()),
        ] {
            store.save_detector_state(&format!("{}{name}", self.prefix), &dirty)?;
        }
        Ok(())
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let mut out = self.geo.observe(flows);
        out.extend(self.new_service.observe(flows));
        out.extend(self.new_device.observe(flows));
        out.extend(self.exfiltration.observe(flows));
        out.sort_by_key(|u| u.time_ns);
        out
    }
}

/// A sensor's flow record in the common model, as the baseline detectors read it. A sensor sees
/// no firewall verdict: a conversation whose other end answered (for TCP, an ACK without a
/// RST) counts as accepted; one that was not answered is unknown.
pub fn sensor_flow(sensor: &str, f: picket_proto::v1::FlowRecord) -> Option<Flow> {
    const ACK: u32 = 0x10;
    let (src_ip, dst_ip) = (ip_addr(&f.src_ip).ok()?, ip_addr(&f.dst_ip).ok()?);
    let answered = f.reverse_packets > 0
        && (f.protocol != u32::from(TCP)
            || (f.reverse_tcp_flags & ACK != 0 && f.reverse_tcp_flags & u32::from(RST) == 0));
    Some(Flow {
        source: crate::model::Source::Sensor,
        observer: sensor.to_string(),
        interface: f.iface,
        start_ns: i64::try_from(f.start_unix_ns).ok()?,
        end_ns: i64::try_from(f.end_unix_ns).ok()?,
        src_ip,
        dst_ip,
        src_port: u16::try_from(f.src_port).ok()?,
        dst_port: u16::try_from(f.dst_port).ok()?,
        protocol: u8::try_from(f.protocol).ok()?,
        packets: f.packets,
        bytes: f.bytes,
        reverse_packets: f.reverse_packets,
        reverse_bytes: f.reverse_bytes,
        tcp_flags: u8::try_from(f.tcp_flags & 0xff).unwrap_or(0),
        action: if answered {
            Action::Accept
        } else {
            Action::Unknown
        },
        sampling_rate: 1.0,
        cloud: Default::default(),
    })
}

/// The allowlist (`Store::allowlist`): sources whose alerts of a type, or of every type, are
/// not raised, such as a sanctioned vulnerability scanner.
#[derive(Default)]
pub struct Allowlist {
    /// By alert type (`*`: every type): label by network.
    by_type: HashMap<String, NetSet<String>>,
}

impl Allowlist {
    pub fn new(entries: Vec<(String, String, String)>) -> Self {
        let mut grouped: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (cidr, kind, label) in entries {
            grouped.entry(kind).or_default().push((cidr, label));
        }
        Allowlist {
            by_type: grouped
                .into_iter()
                .map(|(k, v)| (k, NetSet::new(v, "allowlist")))
                .collect(),
        }
    }

    /// The label of the entry that allows `source`'s alerts of type `kind`, if one does.
    pub fn allows(&self, kind: &str, source: &str) -> Option<&str> {
        let ip: IpAddr = source.parse().ok()?;
        [kind, "*"]
            .iter()
            .find_map(|k| self.by_type.get(*k)?.lookup(ip))
            .map(String::as_str)
    }
}

/// Sensitivity settings: (network or `*`, alert type or `*`, level). For an alert, the most
/// specific network holding its source wins, and within it an entry for the alert's type over
/// `*`; `*` as the network covers every source (also those that are not addresses, such as a
/// VPC). Without a match: medium.
pub struct Sensitivities {
    /// (network, or None for `*`; alert type; level), most specific first.
    entries: Vec<(Option<ipnet::IpNet>, String, Sensitivity)>,
}

impl Sensitivities {
    pub fn new(rows: Vec<(String, String, String)>) -> Self {
        let mut entries: Vec<_> = rows
            .into_iter()
            .filter_map(|(cidr, kind, level)| {
                let net = if cidr == "*" {
                    None
                } else {
                    Some(cidr.parse::<ipnet::IpNet>().ok()?)
                };
                Some((net, kind, Sensitivity::parse(&level)?))
            })
            .collect();
        // Longer prefixes first; a type before `*`.
        entries.sort_by_key(|(net, kind, _)| {
            (
                std::cmp::Reverse(net.map_or(-1, |n| i32::from(n.prefix_len()))),
                kind == "*",
            )
        });
        Sensitivities { entries }
    }

    pub fn level(&self, kind: &str, source: &str) -> Sensitivity {
        let ip: Option<IpAddr> = source.parse().ok();
        self.entries
            .iter()
            .find(|(net, k, _)| {
                (k == kind || k == "*")
                    && match net {
                        None => true,
                        Some(n) => ip.is_some_and(|ip| n.contains(&ip)),
                    }
            })
            .map_or(Sensitivity::Medium, |e| e.2)
    }
}

/// Records alert observations, each also a log line; returns the ids of the alerts they went to
/// (an alert once, in order of first mention). The allowlist and the sensitivity settings
/// decide first; what they hold back is logged (at debug level for evidence below the
/// sensitivity's threshold, which is routine).
pub fn record(store: &dyn Store, updates: &[AlertUpdate]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    if updates.is_empty() {
        return Ok(ids);
    }
    let allow = Allowlist::new(store.allowlist()?);
    let sensitivity = Sensitivities::new(store.sensitivities()?);
    for u in updates {
        let level = sensitivity.level(u.kind, &u.source);
        if !level.raises(u.strength) {
            tracing::debug!(
                kind = u.kind,
                source = u.source,
                strength = u.strength,
                sensitivity = level.as_str(),
                "observation below the sensitivity's threshold"
            );
            continue;
        }
        if let Some(label) = allow.allows(u.kind, &u.source) {
            info!(
                kind = u.kind,
                source = u.source,
                allowlisted = label,
                "alert not raised: the source is allowlisted"
            );
            continue;
        }
        let id = store.record_alert(u)?;
        info!(
            alert = id,
            kind = u.kind,
            source = u.source,
            severity = u.severity.as_str(),
            seen_by = u.seen_by,
            "alert"
        );
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the default (medium) sensitivity raises of a detector's reports.
    fn medium(u: Vec<AlertUpdate>) -> Vec<AlertUpdate> {
        u.into_iter()
            .filter(|u| Sensitivity::Medium.raises(u.strength))
            .collect()
    }

    fn event(reason: &[&str], ports: u32, hosts: u32) -> ScanEvent {
        ScanEvent {
            iface: "eth0".into(),
            src_ip: vec![10, 0, 0, 9],
            distinct_ports: ports,
            distinct_hosts: hosts,
            probe: "syn".into(),
            probes: [("syn".to_string(), ports)].into(),
            probe_bytes: 44 * ports as u64,
            last_dst_ip: vec![10, 0, 0, 2],
            last_dst_port: 8080,
            reason: reason.iter().map(|r| r.to_string()).collect(),
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_001_000_000_000,
            answered_contacts: 0,
            unanswered_contacts: 0,
            replied_contacts: 0,
        }
    }

    #[test]
    fn the_crossed_threshold_names_the_alert() {
        let a = scan_event_alerts("lab", &event(&["ports"], 1001, 1)).expect("alerts");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (
                a[0].kind,
                a[0].severity,
                &a[0].source[..],
                &a[0].targets[..]
            ),
            (
                "port_scan",
                Severity::High,
                "10.0.0.9",
                &["10.0.0.2".to_string()][..]
            )
        );
        assert_eq!(a[0].time_ns, 1_700_000_001_000_000_000);
        assert_eq!(a[0].seen_by, "sensor:lab");
        assert_eq!(a[0].observation["last_target"], "10.0.0.2:8080");
        assert_eq!(a[0].observation["probes"]["syn"], 1001);
        let a = scan_event_alerts("lab", &event(&["hosts"], 1, 30)).expect("alerts");
        assert_eq!((a[0].kind, a[0].severity), ("address_sweep", Severity::Low));
        let a = scan_event_alerts("lab", &event(&["ports", "hosts"], 150, 70)).expect("alerts");
        let kinds: Vec<_> = a.iter().map(|u| (u.kind, u.severity)).collect();
        assert_eq!(
            kinds,
            [
                ("port_scan", Severity::Medium),
                ("address_sweep", Severity::Medium)
            ]
        );
    }

    fn cloud(src: &str, dst: &str, port: u16, t_s: i64, action: Action, flags: u8) -> Flow {
        Flow {
            source: crate::model::Source::Aws,
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
        }
    }

    #[test]
    fn unanswered_udp_in_one_way_records_is_a_scan_and_answered_udp_is_not() {
        let udp = |src: &str, sport: u16, dst: &str, dport: u16, t: i64| Flow {
            protocol: UDP,
            src_port: sport,
            bytes: 70,
            ..cloud(src, dst, dport, t, Action::Accept, 0)
        };
        // 20 ports of one host, no record comes back: a port scan (early at 8, then at 15).
        let probes: Vec<Flow> = (0..20)
            .map(|i| udp("198.51.100.7", 50000, "10.0.0.5", 100 + i, 1000 + i as i64))
            .collect();
        let u = FanOutDetector::default().observe(&probes);
        let got: Vec<_> = u.iter().map(|u| (u.kind, u.strength)).collect();
        assert_eq!(got, [("port_scan", 8.0 / 15.0), ("port_scan", 1.0)]);
        assert_eq!(u[1].source, "198.51.100.7");
        // A resolver asking port 53 of 30 hosts, each answer a record the other way: nothing.
        let mut resolver = Vec::new();
        for h in 0..30 {
            let dst = format!("10.0.1.{h}");
            resolver.push(udp("10.0.0.53", 40000 + h, &dst, 53, 1000 + i64::from(h)));
            resolver.push(udp(&dst, 53, "10.0.0.53", 40000 + h, 1000 + i64::from(h)));
        }
        assert!(FanOutDetector::default().observe(&resolver).is_empty());
        // Without its answers, the same resolver is a sweep.
        let asks: Vec<Flow> = resolver.iter().step_by(2).cloned().collect();
        let u = FanOutDetector::default().observe(&asks);
        assert_eq!(u.last().map(|u| u.kind), Some("address_sweep"));
        // In a sampled log an answer may be sampled out: unanswered UDP is not evidence there.
        let sampled: Vec<Flow> = probes
            .iter()
            .map(|f| Flow {
                sampling_rate: 0.5,
                ..f.clone()
            })
            .collect();
        assert!(FanOutDetector::default().observe(&sampled).is_empty());
        // Larger datagrams are traffic, not probes.
        let big: Vec<Flow> = probes
            .iter()
            .map(|f| Flow {
                bytes: 1400,
                ..f.clone()
            })
            .collect();
        assert!(FanOutDetector::default().observe(&big).is_empty());
    }

    #[test]
    fn many_sources_rejected_at_one_address_are_one_reject_storm() {
        let mut d = RejectStorm::default();
        // 15 sources in turn, 300 rejected flows to 10.0.0.9 on two ports within 150 s.
        let storm: Vec<Flow> = (0..300)
            .map(|i| {
                cloud(
                    &format!("198.51.100.{}", i % 15),
                    "10.0.0.9",
                    [22, 3389][i % 2],
                    1_000 + i as i64 / 2,
                    Action::Reject,
                    0,
                )
            })
            .collect();
        let u = d.observe(&storm);
        // Early at half the threshold (for `high`), then at the threshold.
        let got: Vec<(usize, f64)> = u
            .iter()
            .map(|a| {
                (
                    a.observation["rejected_flows"].as_u64().expect("n") as usize,
                    a.strength,
                )
            })
            .collect();
        assert_eq!(got, [(100, 0.5), (200, 1.0)]);
        let a = &u[1];
        assert_eq!((a.kind, a.source.as_str()), ("reject_storm", "10.0.0.9"));
        assert_eq!(a.severity, Severity::Low);
        assert_eq!(a.targets.len(), 15);
        assert_eq!(a.observation["ports"], json!([22, 3389]));
        assert_eq!(a.observation["distinct_sources"], 15);

        // One source alone, accepted flows, a sensor's flows, an external target, and rejects
        // spread over more than the window: none is a storm.
        let mut d = RejectStorm::default();
        let mut quiet: Vec<Flow> = (0..300)
            .map(|i| cloud("198.51.100.1", "10.0.0.9", 22, 1_000 + i, Action::Reject, 0))
            .collect();
        quiet.extend((0..300).map(|i| {
            cloud(
                &format!("198.51.100.{}", i % 15),
                "10.0.0.8",
                443,
                1_000,
                Action::Accept,
                0,
            )
        }));
        quiet.extend((0..300).map(|i| {
            let mut f = cloud(
                &format!("198.51.100.{}", i % 15),
                "10.0.0.7",
                22,
                1_000,
                Action::Reject,
                0,
            );
            f.source = crate::model::Source::Sensor;
            f
        }));
        quiet.extend((0..300).map(|i| {
            cloud(
                &format!("198.51.100.{}", i % 15),
                "203.0.113.7",
                22,
                1_000,
                Action::Reject,
                0,
            )
        }));
        // 90 rejects per window of 5 minutes, 20 minutes long.
        quiet.extend((0..360).map(|i| {
            cloud(
                &format!("198.51.100.{}", i % 15),
                "10.0.0.6",
                22,
                2_000 + i * 10 / 3,
                Action::Reject,
                0,
            )
        }));
        assert!(d.observe(&quiet).is_empty());
    }

    #[test]
    fn rejected_ports_of_one_host_are_a_port_scan_once_past_the_threshold() {
        let mut d = FanOutDetector::default();
        let flows: Vec<Flow> = (1..=20)
            .map(|p| {
                cloud(
                    "198.51.100.7",
                    "10.0.0.5",
                    p,
                    1000 + p as i64,
                    Action::Reject,
                    0,
                )
            })
            .collect();
        let u = medium(d.observe(&flows));
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (
                u[0].kind,
                &u[0].source[..],
                &u[0].targets[..],
                u[0].severity
            ),
            (
                "port_scan",
                "198.51.100.7",
                &["10.0.0.5".to_string()][..],
                Severity::Low
            )
        );
        assert_eq!(
            u[0].time_ns,
            1015 * 1_000_000_000,
            "when the 15th port was tried"
        );
        assert_eq!(u[0].seen_by, "aws:123456789010");
        assert_eq!(u[0].observation["distinct_ports"], 15);
        // Again at each doubling, not at each port.
        let more: Vec<Flow> = (21..=40)
            .map(|p| cloud("198.51.100.7", "10.0.0.5", p, 1040, Action::Reject, 0))
            .collect();
        let u = medium(d.observe(&more));
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].observation["distinct_ports"], 30);
    }

    #[test]
    fn one_port_of_many_hosts_is_a_sweep_and_syn_only_flows_are_failures() {
        let mut d = FanOutDetector::default();
        let flows: Vec<Flow> = (1..=30)
            .map(|h| {
                cloud(
                    "203.0.113.9",
                    &format!("10.0.1.{h}"),
                    22,
                    2000 + h,
                    Action::Accept,
                    SYN,
                )
            })
            .collect();
        let u = medium(d.observe(&flows));
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (u[0].kind, &u[0].source[..]),
            ("address_sweep", "203.0.113.9")
        );
        assert_eq!(u[0].targets.len(), 25);
        assert_eq!(u[0].observation["target"], "port 22");
    }

    #[test]
    fn answered_connections_and_slow_spread_failures_are_not_scans() {
        let mut d = FanOutDetector::default();
        // A busy server: 300 clients, each a full connection; a client that uses 50 services.
        let mut flows: Vec<Flow> = (1..=300)
            .map(|c| {
                let src = format!("10.9.{}.{}", c / 250, c % 250);
                cloud(
                    &src,
                    "10.0.0.80",
                    443,
                    3000,
                    Action::Accept,
                    SYN | ACK | FIN,
                )
            })
            .collect();
        flows.extend(
            (1..=50).map(|p| cloud("10.0.0.7", "10.0.0.8", p, 3000, Action::Accept, SYN | ACK)),
        );
        // Ten rejected ports, then ten more after the 5-minute window.
        flows.extend((1..=10).map(|p| cloud("10.0.0.66", "10.0.0.5", p, 4000, Action::Reject, 0)));
        flows.extend((11..=20).map(|p| cloud("10.0.0.66", "10.0.0.5", p, 4400, Action::Reject, 0)));
        assert_eq!(medium(d.observe(&flows)), vec![]);
    }

    #[test]
    fn without_flags_probe_like_flows_are_failures_and_handshakes_are_not() {
        let mut d = FanOutDetector::default();
        let flow = |p: u16, packets: u64, bytes: u64| Flow {
            packets,
            bytes,
            ..cloud("198.51.100.7", "10.0.0.5", p, 1000, Action::Accept, 0)
        };
        // Completed handshakes without payload (4 packets), and a payload in 2 packets.
        let benign: Vec<Flow> = (1..=30)
            .map(|p| flow(p, 4, 200))
            .chain((31..=60).map(|p| flow(p, 2, 1500)))
            .collect();
        assert_eq!(medium(d.observe(&benign)), vec![]);
        // SYNs answered by nothing or a RST.
        let probes: Vec<Flow> = (61..=80).map(|p| flow(p, 1, 44)).collect();
        let u = medium(d.observe(&probes));
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].kind, "port_scan");
    }

    #[test]
    fn thresholds_scale_with_the_sampling_rate() {
        let mut d = FanOutDetector::default();
        let flows: Vec<Flow> = (1..=8)
            .map(|p| Flow {
                source: crate::model::Source::Gcp,
                sampling_rate: 0.5,
                ..cloud("198.51.100.7", "10.0.0.5", p, 1000, Action::Reject, 0)
            })
            .collect();
        let u = medium(d.observe(&flows));
        assert_eq!(u.len(), 1, "15 x 0.5 rounds up to 8 sampled ports");
        assert_eq!(u[0].seen_by, "gcp:123456789010");
    }

    #[test]
    fn fanout_reports_at_half_the_threshold_then_at_it_and_each_doubling() {
        let mut d = FanOutDetector::default();
        let flows: Vec<Flow> = (1..=70)
            .map(|p| {
                cloud(
                    "198.51.100.7",
                    "10.0.0.5",
                    p,
                    1000 + p as i64,
                    Action::Reject,
                    0,
                )
            })
            .collect();
        let counts: Vec<(u64, f64)> = d
            .observe(&flows)
            .iter()
            .map(|u| {
                (
                    u.observation["distinct_ports"].as_u64().expect("n"),
                    u.strength,
                )
            })
            .collect();
        assert_eq!(
            counts,
            [(8, 8.0 / 15.0), (15, 1.0), (30, 2.0), (60, 4.0)],
            "high sensitivity sees 8, medium 15, low 30"
        );
    }

    #[test]
    fn sensitivity_takes_the_most_specific_network_then_the_type() {
        let s = Sensitivities::new(vec![
            ("*".into(), "*".into(), "low".into()),
            ("10.0.0.0/8".into(), "port_scan".into(), "high".into()),
            ("10.1.0.0/16".into(), "*".into(), "off".into()),
            ("10.1.0.0/16".into(), "brute_force".into(), "medium".into()),
            ("bad".into(), "*".into(), "high".into()),
        ]);
        assert_eq!(s.level("port_scan", "10.2.0.1"), Sensitivity::High);
        assert_eq!(s.level("address_sweep", "10.2.0.1"), Sensitivity::Low);
        assert_eq!(s.level("port_scan", "10.1.0.1"), Sensitivity::Off);
        assert_eq!(s.level("brute_force", "10.1.0.1"), Sensitivity::Medium);
        assert_eq!(s.level("sensor_coverage_gap", "vpc-1"), Sensitivity::Low);
        assert_eq!(
            Sensitivities::new(vec![]).level("port_scan", "10.0.0.1"),
            Sensitivity::Medium
        );
        assert!(!Sensitivity::Low.raises(1.0) && Sensitivity::Low.raises(2.0));
        assert!(Sensitivity::High.raises(0.5) && !Sensitivity::Medium.raises(0.5));
        assert!(!Sensitivity::Off.raises(f64::INFINITY));
        assert!(
            Sensitivity::Low.raises(f64::INFINITY),
            "watchlist hits stay on"
        );
    }

    #[test]
    fn a_storm_of_sources_stays_bounded_and_is_counted() {
        let mut d = FanOutDetector::new(FanOutConfig {
            max_sources: 1000,
            ..FanOutConfig::default()
        });
        let flows: Vec<Flow> = (0..5000u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
                cloud(&a, "10.0.0.5", 22, 1000, Action::Reject, 0)
            })
            .collect();
        d.observe(&flows);
        assert!(d.sources.len() <= 1000);
        assert_eq!(d.forgotten(), 4000);
    }

    fn login(t_s: u64, outcome: &str, user: &str) -> picket_proto::v1::AuthEvent {
        picket_proto::v1::AuthEvent {
            time_unix_ns: t_s * 1_000_000_000,
            service: "ssh".into(),
            outcome: outcome.into(),
            user: user.into(),
            src_ip: vec![203, 0, 113, 5],
            src_port: 50000,
        }
    }

    #[test]
    fn failed_logins_past_the_threshold_are_a_brute_force_and_an_accepted_one_raises_it() {
        let mut d = LoginBruteForce::default();
        let mut seen = Vec::new();
        for i in 0..25 {
            seen.extend(
                d.observe("web-1", &login(1000 + i, "failed", "root"))
                    .expect("ok"),
            );
        }
        // At the 10th failure and at the 20th (the count doubled).
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            (seen[0].kind, seen[0].severity, &seen[0].source[..]),
            ("brute_force", Severity::Medium, "203.0.113.5")
        );
        assert_eq!(seen[0].time_ns, 1009 * 1_000_000_000);
        assert_eq!(seen[0].targets, ["web-1"]);
        assert_eq!(seen[1].observation["failed"], 20);
        let u = d
            .observe("web-1", &login(1030, "accepted", "root"))
            .expect("ok")
            .expect("an accepted login after the failures");
        assert_eq!(u.severity, Severity::High);
        assert_eq!(u.observation["accepted_after"], "root");
        // Once.
        assert!(
            d.observe("web-1", &login(1031, "accepted", "root"))
                .expect("ok")
                .is_none()
        );
        // Another host is another count; so is a window later.
        assert!(
            d.observe("web-2", &login(1032, "failed", "root"))
                .expect("ok")
                .is_none()
        );
        for i in 0..9 {
            let late = d
                .observe("web-1", &login(2000 + i, "failed", "x"))
                .expect("ok");
            assert!(late.is_none(), "a new window starts from zero");
        }
    }

    #[test]
    fn accepted_logins_alone_and_malformed_events_are_not_alerts() {
        let mut d = LoginBruteForce::default();
        for i in 0..50 {
            assert!(
                d.observe("web-1", &login(i, "accepted", "alice"))
                    .expect("ok")
                    .is_none()
            );
        }
        let mut bad = login(1, "failed", "root");
        bad.src_ip = vec![1];
        assert!(d.observe("web-1", &bad).is_err());
    }

    #[test]
    fn short_connections_to_an_auth_port_are_a_brute_force_and_sessions_are_not() {
        let mut d = FlowBruteForce::default();
        let conn = |t: i64, port: u16, packets: u64| Flow {
            packets,
            reverse_packets: packets,
            ..cloud(
                "198.51.100.20",
                "10.0.0.22",
                port,
                t,
                Action::Accept,
                SYN | ACK | FIN,
            )
        };
        // 25 short SSH attempts; long sessions and a web client's many connections.
        let mut flows: Vec<Flow> = (0..25).map(|i| conn(1000 + i, 22, 12)).collect();
        flows.extend((0..50).map(|i| conn(1000 + i, 443, 12)));
        flows.extend((0..50).map(|i| Flow {
            src_ip: "198.51.100.21".parse().expect("ip"),
            ..conn(1000 + i, 3389, 400)
        }));
        let u = d.observe(&flows);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (u[0].kind, &u[0].source[..], &u[0].targets[..]),
            (
                "brute_force",
                "198.51.100.20",
                &["10.0.0.22:22".to_string()][..]
            )
        );
        assert_eq!(u[0].observation["connections"], 20);
        assert_eq!(u[0].time_ns, 1019 * 1_000_000_000);
    }

    #[test]
    fn slow_failures_add_up_without_a_window_and_successes_clear_them() {
        let mut d = SlowScan::default();
        // One probe an hour: no window catches these; the walk does, at the 4th failure.
        let probes: Vec<Flow> = (1..=5)
            .map(|i| {
                cloud(
                    "198.51.100.9",
                    &format!("10.0.2.{i}"),
                    22,
                    i * 3600,
                    Action::Reject,
                    0,
                )
            })
            .collect();
        let u = d.observe(&probes[..3]);
        assert_eq!(u, vec![]);
        let u = d.observe(&probes[3..]);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (u[0].kind, &u[0].source[..], u[0].time_ns),
            ("address_sweep", "198.51.100.9", 4 * 3600 * 1_000_000_000)
        );
        assert_eq!(u[0].targets.len(), 4);
        assert_eq!(u[0].observation["kind"], "sequential_test");
        assert_eq!(
            u[0].observation["failed_first_contacts"][0]["target"],
            "10.0.2.1:22"
        );
        // A client whose failures are outweighed by successes, and repeats that count once.
        let mut flows = Vec::new();
        for i in 1..=40u16 {
            let ok = cloud(
                "10.0.0.7",
                &format!("10.0.3.{i}"),
                443,
                100,
                Action::Accept,
                SYN | ACK,
            );
            flows.push(ok);
            if i % 4 == 0 {
                flows.push(cloud(
                    "10.0.0.7",
                    "10.0.9.9",
                    8000 + i,
                    100,
                    Action::Reject,
                    0,
                ));
            }
        }
        for _ in 0..10 {
            flows.push(cloud("10.0.0.8", "10.0.9.9", 9999, 100, Action::Reject, 0));
        }
        assert_eq!(d.observe(&flows), vec![]);
    }

    #[test]
    fn walks_leaning_to_scanner_are_saved_and_resume() {
        let mut d = SlowScan::default();
        let probe = |i: i64| {
            cloud(
                "198.51.100.9",
                &format!("10.0.2.{i}"),
                22,
                i,
                Action::Reject,
                0,
            )
        };
        d.observe(&[probe(1), probe(2)]);
        d.observe(&[cloud(
            "10.0.0.7",
            "10.0.3.1",
            443,
            1,
            Action::Accept,
            SYN | ACK,
        )]);
        let mut saved = d.dirty();
        saved.sort();
        assert_eq!(saved.len(), 2);
        assert_eq!(saved[0].0, "10.0.0.7");
        assert_eq!(saved[0].1, None, "a benign-leaning walk is not kept");
        assert_eq!(saved[1].0, "198.51.100.9");
        assert!(d.dirty().is_empty(), "saved once");
        let kept: Vec<(String, String)> = saved
            .into_iter()
            .filter_map(|(k, v, _)| Some((k, v?)))
            .collect();
        let mut again = SlowScan::load(&kept);
        assert_eq!(again.observe(&[probe(3)]), vec![]);
        assert_eq!(
            again.observe(&[probe(4)]).len(),
            1,
            "2 + 2 failures after a restart"
        );
    }

    #[test]
    fn the_allowlist_allows_per_alert_type_or_for_all() {
        let a = Allowlist::new(vec![
            (
                "10.0.0.0/24".into(),
                "port_scan".into(),
                "vuln scanner".into(),
            ),
            ("10.9.9.9".into(), "*".into(), "pentest box".into()),
        ]);
        assert_eq!(a.allows("port_scan", "10.0.0.7"), Some("vuln scanner"));
        assert_eq!(a.allows("brute_force", "10.0.0.7"), None);
        assert_eq!(a.allows("brute_force", "10.9.9.9"), Some("pentest box"));
        assert_eq!(a.allows("port_scan", "10.0.1.7"), None);
        assert_eq!(a.allows("port_scan", "not an address"), None);
    }

    #[test]
    fn watchlist_matches_the_most_specific_entry_and_repeats_every_10_minutes() {
        let entries = vec![
            ("198.51.100.0/24".to_string(), "feed".to_string()),
            ("198.51.100.7/32".to_string(), "known c2".to_string()),
            ("2001:db8::/32".to_string(), "v6 net".to_string()),
            ("not a network".to_string(), String::new()),
        ];
        let mut w = Watchlist::new(entries);
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert_eq!(
            w.lookup(ip("198.51.100.7")).map(|e| &e.1[..]),
            Some("known c2")
        );
        assert_eq!(w.lookup(ip("198.51.100.8")).map(|e| &e.1[..]), Some("feed"));
        assert_eq!(
            w.lookup(ip("2001:db8::1")).map(|e| &e.1[..]),
            Some("v6 net")
        );
        assert!(w.lookup(ip("198.51.101.1")).is_none());
        assert!(w.lookup(ip("::ffff:10.0.0.1")).is_none());
        let hit = |w: &mut Watchlist, src: &str, dst: &str, t_s: i64| {
            w.observe(
                ip(src),
                ip(dst),
                443,
                6,
                10,
                1000,
                t_s * 1_000_000_000,
                "aws:1",
            )
        };
        let u = hit(&mut w, "10.0.0.5", "198.51.100.7", 100).expect("a hit");
        assert_eq!(
            (u.kind, &u.source[..], &u.targets[..]),
            (
                "watchlist_hit",
                "10.0.0.5",
                &["198.51.100.7".to_string()][..]
            )
        );
        assert_eq!(u.observation["label"], "known c2");
        assert_eq!(u.observation["direction"], "to");
        // The same pair within 10 minutes: nothing new; later, or inbound from another listed
        // address: again.
        assert!(hit(&mut w, "10.0.0.5", "198.51.100.7", 500).is_none());
        assert!(hit(&mut w, "10.0.0.5", "198.51.100.7", 800).is_some());
        let inbound = hit(&mut w, "198.51.100.9", "10.0.0.5", 100).expect("inbound");
        assert_eq!(inbound.observation["direction"], "from");
        assert_eq!(inbound.source, "10.0.0.5");
        assert!(hit(&mut w, "10.0.0.5", "10.0.0.6", 100).is_none());
        assert_eq!(
            crate::util::net::parse_network("10.1.2.3/16")
                .expect("cidr")
                .to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            crate::util::net::parse_network(" 10.1.2.3 ")
                .expect("ip")
                .to_string(),
            "10.1.2.3/32"
        );
        assert!(crate::util::net::parse_network("10.1.2.3/33").is_err());
    }

    #[test]
    fn a_fan_out_mostly_answered_is_not_a_scan() {
        let answered = ScanEvent {
            answered_contacts: 30,
            unanswered_contacts: 2,
            ..event(&["hosts"], 1, 30)
        };
        assert_eq!(scan_event_alerts("lab", &answered).expect("ok"), vec![]);
        let refused = ScanEvent {
            answered_contacts: 1,
            unanswered_contacts: 199,
            ..event(&["ports"], 200, 1)
        };
        assert_eq!(scan_event_alerts("lab", &refused).expect("ok").len(), 1);
    }

    #[test]
    fn a_malformed_address_is_an_error() {
        let mut e = event(&["ports"], 30, 1);
        e.src_ip = vec![1, 2, 3];
        assert!(scan_event_alerts("lab", &e).is_err());
    }
}
