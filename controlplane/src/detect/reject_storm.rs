//! `reject_storm`: many rejected flows from many sources toward one internal address.

use std::{collections::HashSet, net::IpAddr};

use serde_json::json;

use super::{
    Detector, Input, Output,
    common::{Bounded, MAX_DISTINCT, Reported, Stamped, scaled},
};
use crate::{
    model::{Action, AlertUpdate, Flow, Severity, Source},
    util::{net::internal, time::rfc3339},
};

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
            f.action == Action::Reject && f.source != Source::Sensor && internal(&f.dst_ip)
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
            if f.port_known() && st.ports.len() < MAX_DISTINCT {
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

impl Detector for RejectStorm {
    fn name(&self) -> &'static str {
        "reject_storm"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.updates.extend(RejectStorm::observe(self, input.flows));
    }

    fn forgotten(&self) -> u64 {
        self.targets.forgotten()
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::tests::cloud;
    use super::*;

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
}
