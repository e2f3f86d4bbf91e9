//! `sensor_coverage_gap`: internal addresses that cloud flow logs show and no sensor watches.

use std::{collections::HashMap, net::IpAddr};

use serde_json::json;

use super::{Detector, Input, Output};
use crate::{
    model::{AlertUpdate, Severity},
    store::CoverageGap,
    util::time::rfc3339,
};

/// `sensor_coverage_gap`: internal addresses that cloud flow logs show and no sensor watches
/// (`FlowStore::coverage_gaps`), one alert per network (the VPC, else the cloud account): the
/// network is the entity, its unwatched addresses the targets. Reported when a network first
/// has gaps and again when its number of unwatched addresses doubles. Only once sensors are in
/// use (`sensors_registered`): before any is, every address would be a gap.
#[derive(Default)]
pub struct CoverageGaps {
    reported: HashMap<String, usize>,
}

impl CoverageGaps {
    pub fn observe(&mut self, gaps: &[CoverageGap], sensors_registered: bool) -> Vec<AlertUpdate> {
        if !sensors_registered {
            return Vec::new();
        }
        let mut by_net: std::collections::BTreeMap<String, Vec<&CoverageGap>> =
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

impl Detector for CoverageGaps {
    fn name(&self) -> &'static str {
        "sensor_coverage_gap"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        if let Some(c) = input.coverage {
            out.updates
                .extend(CoverageGaps::observe(self, c.gaps, c.sensors_registered));
        }
    }
}
