//! Port scans and address sweeps found in flow records alone: what cloud flow logs show of a
//! source that leaves no kernel event.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use serde_json::json;

use super::{
    Detector, Input, Output,
    common::{
        Bounded, ChunkView, MAX_DISTINCT, Reported, Stamped, port_scan_severity, scaled,
        sweep_severity,
    },
    decoys::Finding,
};
use crate::{
    model::{AlertUpdate, Flow},
    util::time::rfc3339,
};

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

/// Port scans and address sweeps found in flow records, for sources that leave no kernel
/// event: what cloud flow logs show. A failure is a rejected flow, or a TCP flow that never got
/// past its SYN (no ACK, RST or FIN in its flags). Thresholds scale with the sampling rate
/// (GCP samples; a sampled log shows about `rate` of the distinct targets), never below 3.
/// Time is the flows' own, so a replayed log alerts as it would have live.
pub struct FanOutDetector {
    config: FanOutConfig,
    sources: Bounded<IpAddr, SourceState>,
}

impl Default for FanOutDetector {
    fn default() -> Self {
        Self::new(FanOutConfig::default())
    }
}

impl FanOutDetector {
    pub fn new(config: FanOutConfig) -> Self {
        FanOutDetector {
            config,
            sources: Bounded::new(config.max_sources, "fan-out"),
        }
    }

    /// Live sources dropped to stay within `max_sources` (their counts start again).
    pub fn forgotten(&self) -> u64 {
        self.sources.forgotten()
    }

    /// The scan findings a chunk of flows completes (before decoy grouping).
    pub fn findings(&mut self, flows: &[Flow], view: &ChunkView) -> Vec<Finding> {
        let mut out = Vec::new();
        for f in flows.iter().filter(|f| view.failed(f)) {
            let replied = f.reverse_packets > 0 || view.talked(flows, f.dst_ip, f.src_ip);
            self.observe_failure(f, replied, &mut out);
        }
        out
    }

    fn observe_failure(&mut self, f: &Flow, replied: bool, out: &mut Vec<Finding>) {
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
        // A record without its port (a custom format) counts towards a sweep, not a port scan.
        let ports = st.ports_by_host.entry(f.dst_ip).or_default();
        if f.port_known() && ports.len() < MAX_DISTINCT {
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
            out.push(Finding {
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
            out.push(Finding {
                update: AlertUpdate {
                    kind: "address_sweep",
                    severity: sweep_severity(estimate(n)),
                    source: f.src_ip.to_string(),
                    targets,
                    time_ns: f.end_ns,
                    observation: observation(
                        "distinct_hosts",
                        if f.port_known() {
                            format!("port {}", f.dst_port)
                        } else {
                            "port not in the log".into()
                        },
                        n,
                    ),
                    seen_by,
                    strength: n as f64 / threshold as f64,
                },
                target: format!("address_sweep {}/{}", f.protocol, f.dst_port),
                replied: st.replied_by_port.get(&port).copied().unwrap_or(0),
            });
        }
    }
}

impl Stamped for SourceState {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

impl Detector for FanOutDetector {
    fn name(&self) -> &'static str {
        "fan_out"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.findings
            .extend(self.findings(input.flows, input.view()));
    }

    fn forgotten(&self) -> u64 {
        self.sources.forgotten()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        common::{
            ACK, FIN, SYN, UDP,
            tests::{cloud, medium},
        },
        decoys::DecoyGroups,
    };
    use super::*;
    use crate::model::{Action, Severity};

    impl FanOutDetector {
        /// The chunk's findings, grouped as the import groups them (decoys).
        fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
            DecoyGroups::default().group(self.findings(flows, &ChunkView::of(flows)))
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
}
