//! The whole of a scan that a sensor's kernel flagged. The kernel reports a source once per
//! window, when it crosses its threshold (20 ports, 25 hosts): [`super::kernel_scan`] makes
//! that the alert. From then on this detector follows the source's conversations and probe
//! records in the sensors' batches and updates the same alert with the scan's extent: distinct
//! ports and hosts, the port ranges, probe kinds, first and last probe, rate and packets, the
//! targets (each given once, so the alert's `targets_total` is exact), and per target the
//! ports that answered as open (a SYN-ACK, a UDP reply), apart from the closed (RST, ICMP
//! unreachable) and the silent ones. Severity follows the extent by the scale the other scan
//! detectors use.
//!
//! A followed source is reported for what its extent shows too (20 ports of a host make a port
//! scan, 25 hosts a sweep), since the kernel reports a source once per window.
//!
//! It reports at each doubling of the ports or hosts, when an open port is found, and once
//! the scan's records stop coming ([`QUIET_NS`] without growth): a 65,535-port scan is about
//! a dozen updates. A source whose probes no target ever answered is not reported (a forged
//! decoy, see [`super::decoys`]).
//!
//! Recon then contact: when the source, within the follow-up time (24 h by default), opens a
//! TCP session that carries data to a port it found open (or to any port of a host it swept),
//! the alert is raised to high with a `follow_up` observation naming the session.
//!
//! The follow-up and the open-port lists outlive a restart: the followed sources are saved
//! with the other detectors' state.
//!
//! Over cloud flow logs (the import feed) the same follows the sources of the flow-log scan
//! detectors' findings, and a record's answer is the record the other way ([`ScanExtent::cloud`]).
//! `probe` reads a conversation as a probe; `report` writes a scan's observation and updates.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Detector, Input, Output, State,
    common::{Bounded, Fast, Stamped, TCP},
};
use crate::{
    model::{Action, AlertUpdate, Flow, ScanEvent, Severity, Source},
    util::time::{now_ns, rfc3339},
};

mod probe;
mod report;

use probe::{Answer, Probe};
#[cfg(test)]
use report::port_ranges;

/// The default time within which a session to a port the scan found open is its follow-up.
pub const FOLLOW_UP_NS: i64 = 86_400_000_000_000;
/// Without new records of a scan for this long (by the control plane's clock: the records of
/// a scan come up to an idle timeout and an export interval after its last probe), it is over
/// and its final extent is reported.
pub const QUIET_NS: i64 = 20_000_000_000;
/// How long (data time) the probe-like conversations of sources not followed are kept after
/// the source's last one, and how many: per source and in all (beyond, they are dropped and
/// counted). Flow logs: long enough for a slow scan's first failures (the sequential test
/// names a scanner at its 4th: nmap -T0 probes every 5 minutes).
const RECENT_NS: i64 = 120_000_000_000;
const CLOUD_RECENT_NS: i64 = 900_000_000_000;
const RECENT_PER_SOURCE: usize = 4096;
const RECENT_MAX: usize = 200_000;
/// Scanners followed at once; beyond it the stalest is forgotten (counted).
const MAX_SOURCES: usize = 256;
/// (host, port) pairs counted per source: every TCP and UDP port of one host, and more.
const PORT_BUDGET: usize = 140_000;
/// Targets followed per source.
const MAX_HOSTS: usize = 4096;
/// Hosts, and ports per host, listed in an observation.
const SHOWN: usize = 100;
/// Reports of a scan's growth kept for its chart (the first ones, and always the last).
const GROWTH: usize = 32;
/// Port ranges written out in an observation.
const SHOWN_RANGES: usize = 40;
/// The kernel's default thresholds, for an update's strength.
const PORT_THRESHOLD: f64 = 20.0;
const HOST_THRESHOLD: f64 = 25.0;

const PSH: u8 = 0x08;

/// What one source did to one target.
#[derive(Default, Serialize, Deserialize)]
struct HostScan {
    /// (protocol, port) probed; ICMP echo as (protocol, 0).
    ports: HashSet<(u8, u16), Fast>,
    open: BTreeSet<(u8, u16)>,
    /// Probes answered closed (a RST, an ICMP unreachable) and not answered at all.
    closed: u64,
    silent: u64,
    /// Probes answered otherwise: neither open nor closed, or not known which (a flow log
    /// without TCP flags tells that an answer came, not what it said).
    other: u64,
    /// Ports whose follow-up session was reported.
    followed: BTreeSet<(u8, u16)>,
}

/// One followed scanner.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct Scan {
    /// `port_scan`, `address_sweep`: what the kernel (or a flow-log detector) flagged it for.
    kinds: BTreeSet<String>,
    /// The lowest sampling rate of the records counted, when below 1: the counts are of the
    /// records a sampled log kept, a lower bound.
    sampling_rate: Option<f64>,
    /// Who saw it: `sensor:NAME`, `aws:ACCOUNT`...
    seen_by: BTreeSet<String>,
    /// Probes of each kind, as the kernel counted them.
    probes: BTreeMap<String, u64>,
    first_ns: i64,
    last_ns: i64,
    /// Probe packets: its conversations' packets and those summed per source.
    packets: u64,
    /// Probes summed per source by the kernel (their ports unknown).
    summed: u64,
    hosts: HashMap<IpAddr, HostScan, Fast>,
    pairs: usize,
    /// Probes beyond the budgets (counted, not followed).
    beyond: u64,
    /// Some target answered it: not a forged decoy.
    replied: bool,
    /// Flow logs: followed from a scan finding that decoy grouping has not (yet) named as
    /// the real scanner; not reported until it does.
    unconfirmed: bool,
    /// The extent at the last report.
    reported_ports: usize,
    reported_hosts: usize,
    reported_open: usize,
    /// Targets named in a report already: of its port scan (hosts whose ports it scanned) and
    /// of its sweep (every host).
    named_scanned: HashSet<IpAddr, Fast>,
    named_swept: HashSet<IpAddr, Fast>,
    /// Grown since it was last reported over, and when (control plane's clock) it last grew.
    pending: bool,
    grew_ns: i64,
    reports: u64,
    /// (last probe, most ports on a host, hosts) at each report, for the alert's chart.
    growth: Vec<(i64, usize, usize)>,
}

impl Stamped for Scan {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

impl Scan {
    /// Some target answered it, and (flow logs) decoy grouping named it.
    fn reportable(&self) -> bool {
        self.replied && !self.unconfirmed
    }

    fn open_total(&self) -> usize {
        self.hosts.values().map(|h| h.open.len()).sum()
    }

    fn most_ports_on_a_host(&self) -> usize {
        self.hosts
            .values()
            .map(|h| h.ports.len())
            .max()
            .unwrap_or(0)
    }

    /// Whether the extent grew enough since the last report for another one now.
    fn due(&self) -> bool {
        let (ports, hosts) = (self.most_ports_on_a_host(), self.hosts.len());
        self.reportable()
            && (self.reports == 0
                || ports >= 2 * self.reported_ports.max(1)
                || hosts >= 2 * self.reported_hosts.max(1)
                || self.open_total() > self.reported_open)
    }
}

/// Follows the sources that the sensors' kernels flagged (see the module's documentation).
pub struct ScanExtent {
    follow_up_ns: i64,
    /// Cloud flow logs (the import feed) rather than sensor batches.
    cloud: bool,
    sources: Bounded<IpAddr, Scan>,
    /// Probe-like conversations of sources not followed, for [`RECENT_NS`]: the records of a
    /// slow scan's first probes come before the kernel flags it.
    recent: HashMap<IpAddr, Vec<Probe>, Fast>,
    recent_len: usize,
    recent_now: i64,
    recent_pruned: i64,
    recent_dropped: u64,
}

impl ScanExtent {
    pub fn new(follow_up_ns: i64) -> Self {
        ScanExtent {
            follow_up_ns,
            cloud: false,
            sources: Bounded::new(MAX_SOURCES, "scan-extent").saved(),
            recent: HashMap::default(),
            recent_len: 0,
            recent_now: 0,
            recent_pruned: 0,
            recent_dropped: 0,
        }
    }

    /// Over cloud flow logs: follows the sources of the scan alerts the import's scan detectors
    /// raise (after decoy grouping), and reports each scan's final extent at the end of a file.
    pub fn cloud(follow_up_ns: i64) -> Self {
        ScanExtent {
            cloud: true,
            ..Self::new(follow_up_ns)
        }
    }

    /// Follows the sources of a chunk's scan findings (`confirmed`: the alert updates that
    /// decoy grouping made of them, naming the real scanners).
    fn follow(&mut self, updates: &[AlertUpdate], confirmed: bool, now: i64) -> Vec<IpAddr> {
        let mut flagged = Vec::new();
        for u in updates {
            if !matches!(u.kind, "port_scan" | "address_sweep") || u.seen_by.starts_with("sensor:")
            {
                continue;
            }
            let Ok(src) = u.source.parse::<IpAddr>() else {
                continue;
            };
            let new = !self.sources.contains(&src);
            let s = self.sources.entry(src, u.time_ns, self.follow_up_ns);
            if new {
                (s.first_ns, s.last_ns) = (u.time_ns, u.time_ns);
            }
            s.kinds.insert(u.kind.to_string());
            s.seen_by.insert(u.seen_by.clone());
            if confirmed {
                // Decoy grouping named this source: its own probes, whatever answered them.
                (s.replied, s.unconfirmed) = (true, false);
            } else if new {
                s.unconfirmed = true;
            }
            if new {
                self.catch_up(src, &u.seen_by, now);
            }
            flagged.push(src);
        }
        flagged
    }

    /// A chunk of cloud flow log records (see [`ScanExtent::cloud`]).
    fn observe_cloud(&mut self, input: &Input<'_>, out: &mut Output) {
        let now = now_ns();
        self.follow(&out.found, false, now);
        let mut touched: BTreeSet<IpAddr> =
            self.follow(&out.updates, true, now).into_iter().collect();
        // The records of followed sources, and the small (or rejected) ones that can be probes
        // of a source not followed yet, in time order.
        let mut flows: Vec<(&Flow, bool)> = input
            .flows
            .iter()
            .filter(|f| f.source != Source::Sensor)
            .map(|f| (f, self.sources.contains(&f.src_ip)))
            .filter(|(f, followed)| {
                *followed || f.action == Action::Reject || f.packets <= 2 && f.bytes <= 256
            })
            .collect();
        flows.sort_by_key(|(f, _)| f.start_ns);
        for (f, followed) in flows {
            let Some(p) = Probe::of_cloud(f, input.view()) else {
                continue;
            };
            if !followed {
                self.remember(f.src_ip, p);
                continue;
            }
            let seen_by = format!("{}:{}", f.source.as_str(), f.observer);
            if let Some(u) = self.apply(&seen_by, f.src_ip, &p, now) {
                out.updates.push(u);
            }
            touched.insert(f.src_ip);
        }
        for src in touched {
            if let Some(s) = self.sources.get_mut(&src)
                && s.due()
            {
                out.updates.extend(report::report(src, s, false));
            }
        }
    }

    fn flag(&mut self, sensor: &str, e: &ScanEvent, now: i64) {
        // Mostly answered contacts: a busy client, which kernel_scan does not alert on.
        if e.answered_contacts > e.unanswered_contacts {
            return;
        }
        let new = !self.sources.contains(&e.src_ip);
        self.flag_one(sensor, e);
        if new {
            self.catch_up(e.src_ip, &format!("sensor:{sensor}"), now);
        }
    }

    /// A source just followed: what it did before, kept in [`Self::remember`].
    fn catch_up(&mut self, src: IpAddr, seen_by: &str, now: i64) {
        let before = self.recent.remove(&src).unwrap_or_default();
        self.recent_len -= before.len();
        for p in &before {
            self.apply(seen_by, src, p, now);
        }
    }

    fn flag_one(&mut self, sensor: &str, e: &ScanEvent) {
        let s = self.sources.entry(e.src_ip, e.end_ns, self.follow_up_ns);
        if s.kinds.is_empty() {
            s.first_ns = e.start_ns;
        }
        for r in &e.reason {
            s.kinds.insert(
                match r.as_str() {
                    "hosts" => "address_sweep",
                    _ => "port_scan",
                }
                .to_string(),
            );
        }
        s.seen_by.insert(format!("sensor:{sensor}"));
        for (kind, n) in &e.probes {
            *s.probes.entry(kind.clone()).or_default() += u64::from(*n);
        }
        s.first_ns = s.first_ns.min(e.start_ns);
        s.last_ns = s.last_ns.max(e.end_ns);
    }

    /// Keeps a probe-like conversation of a source not followed, for [`RECENT_NS`] (flow logs:
    /// [`CLOUD_RECENT_NS`]).
    fn remember(&mut self, src: IpAddr, p: Probe) {
        if p.session || matches!(p.answer, Answer::Open) && p.port.0 != TCP {
            return;
        }
        self.recent_now = self.recent_now.max(p.end_ns);
        let window = if self.cloud {
            CLOUD_RECENT_NS
        } else {
            RECENT_NS
        };
        if self.recent_now - self.recent_pruned > window / 4 {
            let horizon = self.recent_now - window;
            self.recent
                .retain(|_, v| v.last().is_some_and(|p| p.end_ns >= horizon));
            self.recent_len = self.recent.values().map(Vec::len).sum();
            self.recent_pruned = self.recent_now;
        }
        let v = self.recent.entry(src).or_default();
        if v.len() >= RECENT_PER_SOURCE || self.recent_len >= RECENT_MAX {
            self.recent_dropped += 1;
            return;
        }
        v.push(p);
        self.recent_len += 1;
    }

    /// What a followed source's conversation adds to its scan.
    fn apply(&mut self, seen_by: &str, src: IpAddr, p: &Probe, now: i64) -> Option<AlertUpdate> {
        let follow_up_ns = self.follow_up_ns;
        let s = self.sources.get_mut(&src)?;
        let host = p.host;
        // An ICMP error answers a probe of the host (a UDP port's unreachable).
        if let Answer::Unreachable(n) = p.answer {
            if s.hosts.contains_key(&host) || s.hosts.len() < MAX_HOSTS {
                let h = s.hosts.entry(host).or_default();
                h.closed = h.closed.saturating_add(n);
                s.replied = true;
            }
            return None;
        }
        let port = p.port;
        // A session that carried data is no probe; to what the scan found open, it is the
        // follow-up.
        if p.session
            && !s.unconfirmed
            && p.start_ns > s.first_ns
            && p.start_ns <= s.last_ns.saturating_add(follow_up_ns)
            && let Some(h) = s.hosts.get_mut(&host)
            && (h.open.contains(&port) || s.kinds.contains("address_sweep"))
        {
            if !h.followed.insert(port) {
                return None;
            }
            let kind = if s.kinds.contains("port_scan") {
                "port_scan"
            } else {
                "address_sweep"
            };
            return Some(AlertUpdate {
                kind,
                severity: Severity::High,
                source: src.to_string(),
                targets: vec![host.to_string()],
                time_ns: p.start_ns,
                observation: json!({
                    "kind": "follow_up",
                    "seen_by": seen_by,
                    "host": host.to_string(),
                    "port": port.1,
                    "protocol": port.0,
                    "time": rfc3339(p.start_ns),
                    "packets": p.session_packets,
                    "bytes": p.session_bytes,
                    "after_scan_s": (p.start_ns - s.last_ns).max(0) / 1_000_000_000,
                }),
                seen_by: seen_by.to_string(),
                strength: f64::INFINITY,
            });
        }
        if p.session {
            return None;
        }
        if !s.hosts.contains_key(&host) && s.hosts.len() >= MAX_HOSTS
            || !s.hosts.get(&host).is_some_and(|h| h.ports.contains(&port))
                && s.pairs >= PORT_BUDGET
        {
            s.beyond = s.beyond.saturating_add(p.packets);
            return None;
        }
        if !s.seen_by.contains(seen_by) {
            s.seen_by.insert(seen_by.to_string());
        }
        if p.sampling_rate < 1.0 {
            s.sampling_rate = Some(
                s.sampling_rate
                    .map_or(p.sampling_rate, |r| r.min(p.sampling_rate)),
            );
        }
        let h = s.hosts.entry(host).or_default();
        if h.ports.insert(port) {
            s.pairs += 1;
        }
        match p.answer {
            Answer::Open => {
                h.open.insert(port);
            }
            Answer::Closed => h.closed += 1,
            Answer::Silent => h.silent += 1,
            Answer::Other => h.other += 1,
            Answer::Unreachable(_) => {}
        }
        // The kernel reports a source once per window: a port scan that follows its sweep (or
        // the other way round) in the window is known by its extent.
        if h.ports.len() as f64 >= PORT_THRESHOLD && !s.kinds.contains("port_scan") {
            s.kinds.insert("port_scan".into());
        }
        if s.hosts.len() as f64 >= HOST_THRESHOLD && !s.kinds.contains("address_sweep") {
            s.kinds.insert("address_sweep".into());
        }
        s.replied |= p.replied;
        s.packets = s.packets.saturating_add(p.packets);
        s.first_ns = s.first_ns.min(p.start_ns);
        s.last_ns = s.last_ns.max(p.end_ns);
        s.pending = true;
        s.grew_ns = now;
        None
    }

    /// Reports the scans whose records stopped coming (see [`QUIET_NS`]).
    fn quiet(&mut self, now: i64, out: &mut Output) {
        self.report_over(now.saturating_sub(QUIET_NS), out);
    }

    /// Reports over the scans with growth not yet reported whose last growth came at or before
    /// `grew_by`. Only those are touched (and so saved again), not every scan followed.
    fn report_over(&mut self, grew_by: i64, out: &mut Output) {
        let quiet: Vec<IpAddr> = self
            .sources
            .iter()
            .filter(|(_, s)| s.pending && s.reportable() && s.grew_ns <= grew_by)
            .map(|(src, _)| *src)
            .collect();
        for src in quiet {
            if let Some(s) = self.sources.get_mut(&src) {
                out.updates.extend(report::report(src, s, true));
            }
        }
    }
}

impl Detector for ScanExtent {
    fn name(&self) -> &'static str {
        "scan_extent"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        if self.cloud {
            return self.observe_cloud(input, out);
        }
        let Some(b) = input.batch else { return };
        let now = now_ns();
        let mut touched: BTreeSet<IpAddr> = BTreeSet::new();
        for e in &b.scans {
            self.flag(&b.sensor, e, now);
            if self.sources.contains(&e.src_ip) {
                touched.insert(e.src_ip);
            }
        }
        for p in &b.probes {
            if let Some(s) = self.sources.get_mut(&p.src_ip) {
                s.summed = s.summed.saturating_add(p.packets);
                s.first_ns = s.first_ns.min(p.start_ns);
                s.last_ns = s.last_ns.max(p.end_ns);
                s.pending = true;
                s.grew_ns = now;
                touched.insert(p.src_ip);
            }
        }
        // Most flows are sessions of sources nobody follows: nothing to keep. The others in
        // time order: a port found open before the session that follows it up.
        let mut flows: Vec<(&Flow, bool)> = b
            .flows
            .iter()
            .map(|f| (f, self.sources.contains(&f.src_ip)))
            .filter(|(f, followed)| *followed || f.tcp_flags & PSH == 0 || f.protocol != TCP)
            .collect();
        flows.sort_by_key(|(f, _)| f.start_ns);
        let seen_by = format!("sensor:{}", b.sensor);
        for (f, followed) in flows {
            let Some(p) = Probe::of(f) else { continue };
            if !followed {
                self.remember(f.src_ip, p);
                continue;
            }
            if let Some(u) = self.apply(&seen_by, f.src_ip, &p, now) {
                out.updates.push(u);
            }
            touched.insert(f.src_ip);
        }
        for src in touched {
            if let Some(s) = self.sources.get_mut(&src)
                && s.due()
            {
                out.updates.extend(report::report(src, s, false));
            }
        }
        self.quiet(now, out);
    }

    fn tick(&mut self, out: &mut Output) {
        self.quiet(now_ns(), out);
    }

    /// The end of a file: every scan it grew is reported over (with the sources of the scan
    /// alerts held until now, by decoy grouping).
    fn flush(&mut self, out: &mut Output) {
        if self.cloud {
            self.follow(&out.updates, true, now_ns());
        }
        self.report_over(i64::MAX, out);
    }

    fn forgotten(&self) -> u64 {
        self.sources.forgotten() + self.recent_dropped
    }

    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        for (k, v) in state.read(STATE)? {
            match (k.parse::<IpAddr>(), serde_json::from_str::<Scan>(&v)) {
                (Ok(src), Ok(s)) => self.sources.restore(src, s),
                _ => tracing::warn!(key = k, "a saved scan extent does not read; skipped"),
            }
        }
        Ok(())
    }

    /// The scans that changed; those past their follow-up time are deleted.
    fn save(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        let horizon = self.sources.now_ns() - self.follow_up_ns;
        let entries: Vec<(String, Option<String>, i64)> = self
            .sources
            .changes(horizon)
            .into_iter()
            .map(|(k, v)| {
                let last = v.map_or(0, |v| v.last_ns);
                (
                    k.to_string(),
                    v.and_then(|v| serde_json::to_string(v).ok()),
                    last,
                )
            })
            .collect();
        state.write(STATE, &entries)
    }
}

/// The name the followed scans are saved under.
const STATE: &str = "scan_extents";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::common::{ACK, RST, SYN},
        model::{Action, Alert, CloudMeta, SensorBatch, SensorMeta, Source},
    };

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_790_000_000 * S;
    const SCANNER: &str = "203.0.113.9";
    const HOST: &str = "10.0.0.5";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A scanner's conversation with `dst:port` as a sensor records it: its probe, and the
    /// target's answer (`answer` the answer's TCP flags; 0 for none).
    fn probe(src: &str, dst: &str, port: u16, answer: u8, t: i64) -> Flow {
        Flow {
            source: Source::Sensor,
            observer: "web-1".into(),
            interface: "eth0".into(),
            start_ns: t,
            end_ns: t + 1_000_000,
            src_ip: ip(src),
            dst_ip: ip(dst),
            src_port: 40000,
            dst_port: port,
            protocol: TCP,
            packets: 1,
            bytes: 44,
            reverse_packets: u64::from(answer != 0),
            reverse_bytes: if answer != 0 { 40 } else { 0 },
            tcp_flags: SYN | if answer & SYN != 0 { RST } else { 0 },
            action: Action::Unknown,
            sampling_rate: 1.0,
            cloud: CloudMeta::default(),
            sensor: Some(Box::new(SensorMeta {
                reverse_tcp_flags: answer,
                observed: "ingress+egress".into(),
                initiator_by: "syn".into(),
                end_reason: "end".into(),
                ..SensorMeta::default()
            })),
        }
    }

    /// A session that carries data.
    fn session(src: &str, dst: &str, port: u16, t: i64) -> Flow {
        let mut f = probe(src, dst, port, SYN | ACK, t);
        f.tcp_flags = SYN | ACK | PSH;
        (f.packets, f.bytes, f.reverse_packets, f.reverse_bytes) = (12, 2_000, 10, 9_000);
        f
    }

    fn event(src: &str, dst: &str, reason: &str, t: i64) -> ScanEvent {
        ScanEvent {
            iface: "eth0".into(),
            src_ip: ip(src),
            distinct_ports: 20,
            distinct_hosts: 1,
            probe: "syn".into(),
            probes: [("syn".to_string(), 20)].into(),
            probe_bytes: 0,
            last_dst_ip: ip(dst),
            last_dst_port: 20,
            reason: vec![reason.into()],
            start_ns: t,
            end_ns: t + S,
            answered_contacts: 0,
            unanswered_contacts: 20,
            replied_contacts: 20,
        }
    }

    fn batch(scans: Vec<ScanEvent>, flows: Vec<Flow>) -> SensorBatch {
        SensorBatch {
            sensor: "web-1".into(),
            instance_id: "i".into(),
            batch_id: 1,
            flows,
            scans,
            probes: Vec::new(),
            logins: Vec::new(),
        }
    }

    fn observe(d: &mut ScanExtent, b: &SensorBatch) -> Vec<AlertUpdate> {
        let mut out = Output::default();
        d.observe(&Input::batch(b), &mut out);
        out.updates
    }

    /// What `quiet` reports once the scan's records stopped coming.
    fn after_quiet(d: &mut ScanExtent) -> Vec<AlertUpdate> {
        let mut out = Output::default();
        d.quiet(now_ns() + QUIET_NS, &mut out);
        out.updates
    }

    /// A SYN scan of `ports` ports of HOST, 3 of them open (22, 80, 280), in batches of 100 conversations.
    fn scan(d: &mut ScanExtent, ports: u16) -> Vec<AlertUpdate> {
        let mut updates = observe(d, &batch(vec![event(SCANNER, HOST, "ports", T0)], vec![]));
        let flows: Vec<Flow> = (1..=ports)
            .map(|p| {
                let answer = if [22, 80, 280].contains(&p) {
                    SYN | ACK
                } else {
                    RST | ACK
                };
                probe(SCANNER, HOST, p, answer, T0 + i64::from(p) * 1_000_000)
            })
            .collect();
        for chunk in flows.chunks(100) {
            updates.extend(observe(d, &batch(vec![], chunk.to_vec())));
        }
        updates
    }

    #[test]
    fn the_alert_grows_with_the_scan_and_names_the_open_ports() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let updates = scan(&mut d, 300);
        // At the first answers, then at each doubling of the ports (and the open ones found).
        assert!(!updates.is_empty());
        assert!(after_quiet(&mut d).len() == 1, "the final extent, once");
        assert!(after_quiet(&mut d).is_empty(), "and not again");
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let mut all = scan(&mut d, 300);
        all.extend(after_quiet(&mut d));
        let last = all.last().expect("a report");
        let o = &last.observation;
        assert_eq!(last.kind, "port_scan");
        assert_eq!(last.severity, Severity::Medium, "100+ ports");
        assert_eq!(o["distinct_ports"], 300);
        assert_eq!(o["distinct_hosts"], 1);
        assert_eq!(o["port_ranges"]["tcp"], "1-300");
        assert_eq!(
            o["open_found"],
            json!(["10.0.0.5: 22/tcp, 80/tcp, 280/tcp"])
        );
        assert_eq!(o["targets"][0]["closed"], 297);
        assert_eq!(o["targets"][0]["silent"], 0);
        assert_eq!(o["scan_over"], true);
        assert_eq!(o["probes"]["syn"], 20);
        assert_eq!(o["first_probe"], rfc3339(T0));
        let growth = o["growth"].as_array().expect("growth");
        assert_eq!(growth.len(), all.len(), "one point per report");
        assert_eq!(growth.last().expect("point")["ports"], 300);
        assert!(
            growth
                .windows(2)
                .all(|w| w[0]["ports"].as_u64() <= w[1]["ports"].as_u64())
        );
        // Merged into one alert, the target counts once.
        let mut a = Alert::open(&all[0]);
        for u in &all[1..] {
            a.merge(u);
        }
        assert_eq!(
            (a.targets_total, a.targets.clone()),
            (1, vec![HOST.to_string()])
        );
        assert_eq!(a.severity, "medium");
        // 1,000 ports: high.
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let mut all = scan(&mut d, 1000);
        all.extend(after_quiet(&mut d));
        assert_eq!(all.last().expect("report").severity, Severity::High);
    }

    #[test]
    fn a_scan_of_every_port_is_a_handful_of_updates() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let mut all = scan(&mut d, 65_535);
        all.extend(after_quiet(&mut d));
        eprintln!(
            "a 65,535-port scan in batches of 100: {} updates",
            all.len()
        );
        assert!(all.len() <= 16, "{} updates", all.len());
        assert_eq!(
            all.last().expect("report").observation["distinct_ports"],
            65_535
        );
    }

    #[test]
    fn a_slow_scans_probes_recorded_before_its_flag_count() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        // 18 probes' records come before the kernel flags the source (at its 20th port), with
        // a benign client's sessions that are not kept.
        let mut early: Vec<Flow> = (1..=18)
            .map(|p| probe(SCANNER, HOST, p, RST | ACK, T0 + i64::from(p) * S))
            .collect();
        early.push(session("10.0.0.77", HOST, 443, T0));
        let mut u = observe(&mut d, &batch(vec![], early));
        assert!(u.is_empty());
        assert_eq!(d.recent_len, 18, "probe-like conversations only");
        let late: Vec<Flow> = (19..=25)
            .map(|p| probe(SCANNER, HOST, p, RST | ACK, T0 + i64::from(p) * S))
            .collect();
        u.extend(observe(
            &mut d,
            &batch(vec![event(SCANNER, HOST, "ports", T0 + 19 * S)], late),
        ));
        u.extend(after_quiet(&mut d));
        let x = &u.last().expect("reports").observation;
        assert_eq!(x["distinct_ports"], 25, "{x}");
        assert_eq!(x["port_ranges"]["tcp"], "1-25");
        assert_eq!(x["first_probe"], rfc3339(T0 + S));
        assert_eq!(d.recent_len, 0);
    }

    #[test]
    fn a_source_no_target_answered_is_not_reported() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let decoy = "198.51.100.7";
        let mut u = observe(
            &mut d,
            &batch(vec![event(decoy, HOST, "ports", T0)], vec![]),
        );
        let flows = (1..=200).map(|p| probe(decoy, HOST, p, 0, T0)).collect();
        u.extend(observe(&mut d, &batch(vec![], flows)));
        u.extend(after_quiet(&mut d));
        assert!(u.is_empty(), "{u:?}");
    }

    #[test]
    fn a_session_to_a_port_found_open_is_a_follow_up() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        scan(&mut d, 300);
        after_quiet(&mut d);
        let later = T0 + 3_600 * S;
        let u = observe(
            &mut d,
            &batch(
                vec![],
                vec![
                    // A benign client's session: not followed.
                    session("10.0.0.77", HOST, 22, later),
                    // The scanner, to a port it found closed: not a follow-up.
                    session(SCANNER, HOST, 8080, later),
                    // To a port it found open: one.
                    session(SCANNER, HOST, 22, later + S),
                    session(SCANNER, HOST, 22, later + 2 * S),
                ],
            ),
        );
        let follow: Vec<&AlertUpdate> = u
            .iter()
            .filter(|u| u.observation["kind"] == "follow_up")
            .collect();
        assert_eq!(follow.len(), 1, "{u:?}");
        let f = follow[0];
        assert_eq!((f.kind, f.severity), ("port_scan", Severity::High));
        assert_eq!(f.source, SCANNER);
        assert_eq!(f.observation["port"], 22);
        assert_eq!(f.observation["bytes"], 11_000);
        assert_eq!(f.observation["after_scan_s"], 3_600);
        // Past the follow-up time, nothing.
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        scan(&mut d, 300);
        let u = observe(
            &mut d,
            &batch(
                vec![],
                vec![session(SCANNER, HOST, 80, T0 + FOLLOW_UP_NS + 10 * S)],
            ),
        );
        assert!(
            u.iter().all(|u| u.observation["kind"] != "follow_up"),
            "{u:?}"
        );
    }

    #[test]
    fn a_followed_scan_outlives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::SqliteStore::open(dir.path()).expect("store");
        let state = State {
            store: store.as_ref(),
            prefix: "sensor/",
        };
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        scan(&mut d, 300);
        after_quiet(&mut d);
        d.save(&state).expect("save");
        let mut again = ScanExtent::new(FOLLOW_UP_NS);
        again.load(&state).expect("load");
        let u = observe(
            &mut again,
            &batch(vec![], vec![session(SCANNER, HOST, 280, T0 + 60 * S)]),
        );
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].observation["kind"], "follow_up");
    }

    #[test]
    fn a_tick_changes_only_the_scans_that_went_quiet() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        scan(&mut d, 300);
        after_quiet(&mut d);
        let _ = d.sources.changes(i64::MIN);
        // Nothing is pending: a tick reports nothing and leaves nothing to save again.
        assert!(after_quiet(&mut d).is_empty());
        assert!(d.sources.changes(i64::MIN).is_empty());
        // A second scanner's scan goes quiet: only it is saved again.
        let other = "203.0.113.10";
        observe(
            &mut d,
            &batch(vec![event(other, HOST, "ports", T0)], vec![]),
        );
        let flows = (1..=30)
            .map(|p| probe(other, HOST, p, RST | ACK, T0 + i64::from(p) * S))
            .collect();
        observe(&mut d, &batch(vec![], flows));
        let _ = d.sources.changes(i64::MIN);
        assert_eq!(after_quiet(&mut d).len(), 1);
        let changed: Vec<IpAddr> = d
            .sources
            .changes(i64::MIN)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(changed, vec![ip(other)]);
    }

    #[test]
    fn a_sweep_lists_every_host_once() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let mut all = observe(
            &mut d,
            &batch(vec![event(SCANNER, "10.0.1.1", "hosts", T0)], vec![]),
        );
        let flows: Vec<Flow> = (1..=40)
            .map(|h| probe(SCANNER, &format!("10.0.1.{h}"), 443, RST | ACK, T0))
            .collect();
        for chunk in flows.chunks(7) {
            all.extend(observe(&mut d, &batch(vec![], chunk.to_vec())));
        }
        all.extend(after_quiet(&mut d));
        let mut a = Alert::open(&all[0]);
        for u in &all[1..] {
            a.merge(u);
        }
        assert_eq!(a.kind, "address_sweep");
        assert_eq!(a.targets_total, 40);
        assert_eq!(
            all.last().expect("report").observation["distinct_hosts"],
            40
        );
        assert_eq!(
            all.last().expect("report").observation["port_ranges"]["tcp"],
            "443"
        );
    }

    /// AWS records (v3+, with TCP flags) of a scan of 100 ports of HOST, 22 and 80 open: each
    /// probe's record and the target's answer the other way.
    fn aws_scan(t: i64) -> Vec<Flow> {
        let rec = |src: &str, sport: u16, dst: &str, dport: u16, flags: u8, at: i64| Flow {
            source: Source::Aws,
            observer: "123456789010".into(),
            interface: "eni-1".into(),
            start_ns: at,
            end_ns: at + 60 * S,
            src_ip: ip(src),
            dst_ip: ip(dst),
            src_port: sport,
            dst_port: dport,
            protocol: TCP,
            packets: 1,
            bytes: 44,
            reverse_packets: 0,
            reverse_bytes: 0,
            tcp_flags: flags,
            action: Action::Accept,
            sampling_rate: 1.0,
            cloud: CloudMeta::default(),
            sensor: None,
        };
        let mut v = Vec::new();
        for p in 1..=100u16 {
            let at = t + i64::from(p) * 1_000_000;
            v.push(rec(SCANNER, 40000, HOST, p, SYN, at));
            let answer = if p == 22 || p == 80 {
                SYN | ACK
            } else {
                RST | ACK
            };
            v.push(rec(HOST, p, SCANNER, 40000, answer, at));
        }
        v
    }

    #[test]
    fn a_scan_in_cloud_logs_grows_its_alert_with_the_open_ports_and_the_follow_up() {
        let mut d = ScanExtent::cloud(FOLLOW_UP_NS);
        let records = aws_scan(T0);
        // The fan-out raised the alert on this chunk (decoys grouped it).
        let mut out = Output::default();
        out.updates.push(AlertUpdate {
            kind: "port_scan",
            severity: Severity::Low,
            source: SCANNER.into(),
            targets: vec![HOST.into()],
            time_ns: T0 + 15_000_000,
            observation: json!({"kind": "flow_log_fanout"}),
            seen_by: "aws:123456789010".into(),
            strength: 1.0,
        });
        d.observe(&Input::flows(&records[..60]), &mut out);
        let mut rest = Output::default();
        d.observe(&Input::flows(&records[60..]), &mut rest);
        d.flush(&mut rest);
        let all: Vec<AlertUpdate> = out.updates[1..]
            .iter()
            .chain(&rest.updates)
            .cloned()
            .collect();
        let last = all.last().expect("the final extent");
        let x = &last.observation;
        assert_eq!((last.kind, last.severity), ("port_scan", Severity::Medium));
        assert_eq!(last.seen_by, "aws:123456789010");
        assert_eq!(x["distinct_ports"], 100, "{x}");
        assert_eq!(x["open_found"], json!(["10.0.0.5: 22/tcp, 80/tcp"]));
        assert_eq!(x["targets"][0]["closed"], 98);
        assert_eq!(x["scan_over"], true);
        // The target's answers are not its probes.
        assert!(all.iter().all(|u| u.source == SCANNER));
        // An hour later, a session with data to port 22: the follow-up.
        let mut s = aws_scan(T0)[42].clone();
        s.start_ns = T0 + 3_600 * S;
        s.end_ns = s.start_ns + 60 * S;
        (s.packets, s.bytes) = (20, 4_000);
        let mut back = aws_scan(T0)[43].clone();
        (back.start_ns, back.end_ns, back.packets, back.bytes) = (s.start_ns, s.end_ns, 18, 30_000);
        let mut out = Output::default();
        d.observe(&Input::flows(&[s, back]), &mut out);
        let f: Vec<&AlertUpdate> = out
            .updates
            .iter()
            .filter(|u| u.observation["kind"] == "follow_up")
            .collect();
        assert_eq!(f.len(), 1, "{:?}", out.updates);
        assert_eq!(f[0].severity, Severity::High);
        assert_eq!(f[0].observation["port"], 22);
        assert_eq!(f[0].observation["bytes"], 34_000);
    }

    #[test]
    fn a_scanner_in_cloud_logs_is_followed_from_its_finding_and_reported_once_named() {
        let finding = |source: &str| AlertUpdate {
            kind: "port_scan",
            severity: Severity::Low,
            source: source.into(),
            targets: vec![HOST.into()],
            time_ns: T0,
            observation: json!({"kind": "sequential_test"}),
            seen_by: "aws:123456789010".into(),
            strength: 1.0,
        };
        let records = aws_scan(T0);
        let mut d = ScanExtent::cloud(FOLLOW_UP_NS);
        // Decoy grouping holds the finding: the scanner is followed, not reported.
        let mut out = Output {
            found: vec![finding(SCANNER)],
            ..Output::default()
        };
        d.observe(&Input::flows(&records[..100]), &mut out);
        assert!(out.updates.is_empty(), "{:?}", out.updates);
        let mut out = Output::default();
        d.observe(&Input::flows(&records[100..]), &mut out);
        assert!(out.updates.is_empty(), "{:?}", out.updates);
        // It names the scanner at the end of the file: the whole scan, from its first probe.
        let mut out = Output {
            updates: vec![finding(SCANNER)],
            ..Output::default()
        };
        d.flush(&mut out);
        let x = &out.updates.last().expect("the extent").observation;
        assert_eq!(x["distinct_ports"], 100, "{x}");
        assert_eq!(x["open_total"], 2);
        // A source grouping folded as a decoy is never reported.
        let mut d = ScanExtent::cloud(FOLLOW_UP_NS);
        let mut out = Output {
            found: vec![finding(SCANNER)],
            ..Output::default()
        };
        d.observe(&Input::flows(&records), &mut out);
        d.flush(&mut out);
        assert!(out.updates.is_empty(), "{:?}", out.updates);
        // Without TCP flags (AWS v2), every probe was answered, but how is not known.
        let v2: Vec<Flow> = records
            .iter()
            .map(|r| Flow {
                tcp_flags: 0,
                ..r.clone()
            })
            .collect();
        let mut d = ScanExtent::cloud(FOLLOW_UP_NS);
        let mut out = Output {
            updates: vec![finding(SCANNER)],
            ..Output::default()
        };
        d.observe(&Input::flows(&v2), &mut out);
        d.flush(&mut out);
        let x = &out.updates.last().expect("the extent").observation;
        assert_eq!(
            (&x["open_total"], &x["closed_total"], &x["other_total"]),
            (&0.into(), &0.into(), &100.into()),
            "{x}"
        );
    }

    #[test]
    fn a_port_scan_after_a_sweep_names_only_the_host_it_scanned() {
        let mut d = ScanExtent::new(FOLLOW_UP_NS);
        let mut all = observe(
            &mut d,
            &batch(vec![event(SCANNER, "10.0.1.1", "hosts", T0)], vec![]),
        );
        let mut flows: Vec<Flow> = (1..=30)
            .map(|h| probe(SCANNER, &format!("10.0.1.{h}"), 443, RST | ACK, T0))
            .collect();
        flows.extend((1..=50).map(|p| probe(SCANNER, HOST, p, RST | ACK, T0 + S)));
        all.extend(observe(&mut d, &batch(vec![], flows)));
        all.extend(after_quiet(&mut d));
        let alert = |kind: &str| {
            let mine: Vec<&AlertUpdate> = all.iter().filter(|u| u.kind == kind).collect();
            let mut a = Alert::open(mine[0]);
            for u in &mine[1..] {
                a.merge(u);
            }
            a
        };
        let scan = alert("port_scan");
        assert_eq!(
            (scan.targets_total, scan.targets.clone()),
            (1, vec![HOST.to_string()])
        );
        assert_eq!(alert("address_sweep").targets_total, 31);
    }

    #[test]
    fn port_ranges_are_compact() {
        let ports: BTreeSet<(u8, u16)> = [(6, 1), (6, 2), (6, 3), (6, 8080), (17, 53), (6, 65535)]
            .into_iter()
            .collect();
        let ports: Vec<(u8, u16)> = ports.into_iter().collect();
        assert_eq!(
            port_ranges(&ports),
            json!({"tcp": "1-3, 8080, 65535", "udp": "53"})
        );
    }
}
