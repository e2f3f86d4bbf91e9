//! `distributed_scan`: several sources, each below the per-source threshold, failing together
//! against many ports of one host within a short window: one alert about the target, naming
//! the sources.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Detector, Input, Output, State,
    common::{Bounded, ChunkView, Stamped},
};
use crate::{
    model::{AlertUpdate, Flow, Severity, Source},
    util::time::rfc3339,
};

/// Settings of [`DistributedScan`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistributedConfig {
    /// Failures against one host count together within this much data time.
    pub window_ns: i64,
    /// Distinct ports of the host that the sources failed on together.
    pub ports: u32,
    /// Sources, each below `per_source` ports of the host.
    pub sources: u32,
    /// A source with this many failed ports of the host is a port scanner of its own (its own
    /// alert), not a part of a distributed scan.
    pub per_source: u32,
    /// Targets followed at once; beyond it the stalest is forgotten.
    pub max_targets: usize,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig {
            window_ns: 60_000_000_000,
            ports: 40,
            sources: 4,
            per_source: 15,
            max_targets: 50_000,
        }
    }
}

/// Distinct ports kept per (target, source).
const MAX_PORTS: usize = 1024;
/// Sources kept per target.
const MAX_SOURCES: usize = 1024;

#[derive(Default, Serialize, Deserialize)]
struct TargetState {
    window_start_ns: i64,
    last_ns: i64,
    ports_by_source: HashMap<IpAddr, HashSet<u16>>,
    /// Of the sources below the per-source threshold (the participants): how many failed on
    /// each port. Its length is the ports they failed on together, kept as failures come, so a
    /// failure costs the same however many sources hit the host.
    port_sources: HashMap<u16, u32>,
    participants: usize,
    reported: usize,
}

/// `distributed_scan`: sources that each stay below the per-source port-scan threshold, failing
/// together against many ports of one host (see the module's documentation). Failures are
/// judged as the fan-out detector judges them (`detect::failed`).
pub struct DistributedScan {
    config: DistributedConfig,
    targets: Bounded<IpAddr, TargetState>,
}

impl Stamped for TargetState {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

impl Default for DistributedScan {
    fn default() -> Self {
        Self::new(DistributedConfig::default())
    }
}

impl DistributedScan {
    pub fn new(config: DistributedConfig) -> Self {
        DistributedScan {
            config,
            targets: Bounded::new(config.max_targets, "distributed-scan").saved(),
        }
    }

    /// Live targets dropped to stay within `max_targets` (their counts start again).
    pub fn forgotten(&self) -> u64 {
        self.targets.forgotten()
    }

    /// Looks at a chunk of flows.
    ///
    /// In one-way records without TCP flags (AWS v2, GCP), both records of a conversation whose
    /// answer was a RST look like probes, and so do a server's short replies. Of such a pair in
    /// the chunk, the record from the lower port to the higher (a service's to a client's
    /// ephemeral port) is taken for the reply and not counted: otherwise the clients of a NAT
    /// gateway or a load balancer's backends would be "many sources failing on many ports" of
    /// it.
    pub fn observe(&mut self, flows: &[Flow], view: &ChunkView) -> Vec<AlertUpdate> {
        let cfg = self.config;
        let mut out = Vec::new();
        let reply = |f: &Flow| {
            f.tcp_flags == 0
                && f.source != Source::Sensor
                && f.src_port < f.dst_port
                && view.has_reverse(f)
        };
        for f in flows
            .iter()
            .filter(|f| f.port_known() && view.failed(f) && !reply(f))
        {
            let st = self.targets.entry(f.dst_ip, f.end_ns, cfg.window_ns);
            if st.ports_by_source.is_empty()
                || f.end_ns - st.window_start_ns > cfg.window_ns
                || f.end_ns < st.window_start_ns - cfg.window_ns
            {
                *st = TargetState {
                    window_start_ns: f.end_ns,
                    ..TargetState::default()
                };
            }
            st.last_ns = st.last_ns.max(f.end_ns);
            if !st.ports_by_source.contains_key(&f.src_ip)
                && st.ports_by_source.len() >= MAX_SOURCES
            {
                continue;
            }
            let per_source = cfg.per_source.max(2) as usize;
            let ports = st.ports_by_source.entry(f.src_ip).or_default();
            let first = ports.is_empty();
            if ports.len() >= per_source {
                // A port scanner of its own: not a participant.
                if ports.len() < MAX_PORTS {
                    ports.insert(f.dst_port);
                }
                continue;
            }
            if !ports.insert(f.dst_port) {
                continue;
            }
            if ports.len() == per_source {
                // It just became a port scanner of its own: it leaves.
                for p in ports.iter().filter(|p| **p != f.dst_port) {
                    if let Some(n) = st.port_sources.get_mut(p) {
                        *n -= 1;
                        if *n == 0 {
                            st.port_sources.remove(p);
                        }
                    }
                }
                st.participants -= 1;
                continue;
            }
            *st.port_sources.entry(f.dst_port).or_default() += 1;
            if first {
                st.participants += 1;
            }
            if st.participants < cfg.sources as usize {
                continue;
            }
            let n = st.port_sources.len();
            let threshold = cfg.ports as usize;
            if n < threshold || n < 2 * st.reported {
                continue;
            }
            st.reported = n;
            let part: Vec<(&IpAddr, &HashSet<u16>)> = st
                .ports_by_source
                .iter()
                .filter(|(_, p)| p.len() < per_source)
                .collect();
            let mut sources: Vec<(IpAddr, usize)> =
                part.iter().map(|(ip, p)| (**ip, p.len())).collect();
            sources.sort();
            out.push(AlertUpdate {
                kind: "distributed_scan",
                severity: if n >= 1000 {
                    Severity::High
                } else if n >= 200 {
                    Severity::Medium
                } else {
                    Severity::Low
                },
                source: f.dst_ip.to_string(),
                targets: sources
                    .iter()
                    .take(crate::model::MAX_TARGETS)
                    .map(|(ip, _)| ip.to_string())
                    .collect(),
                time_ns: f.end_ns,
                observation: json!({
                    "kind": "distributed_failures",
                    "provider": f.source.as_str(),
                    "observer": f.observer,
                    "distinct_ports": n,
                    "distinct_sources": sources.len(),
                    "ports_by_source": sources
                        .iter()
                        .take(50)
                        .map(|(ip, k)| (ip.to_string(), *k))
                        .collect::<BTreeMap<_, _>>(),
                    "per_source_threshold": cfg.per_source,
                    "window_start": rfc3339(st.window_start_ns),
                    "last_failure": rfc3339(f.end_ns),
                }),
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                strength: n as f64 / threshold as f64,
            });
        }
        out
    }
}

impl Detector for DistributedScan {
    fn name(&self) -> &'static str {
        "distributed_scan"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.updates
            .extend(DistributedScan::observe(self, input.flows, input.view()));
    }

    fn forgotten(&self) -> u64 {
        self.targets.forgotten()
    }

    /// The windows under way, by target: a scan keeps counting across a restart, and across
    /// a move of its partition to another replica (cluster mode).
    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        for (k, v) in state.read(STATE)? {
            match (k.parse::<IpAddr>(), serde_json::from_str::<TargetState>(&v)) {
                (Ok(target), Ok(st)) => self.targets.restore(target, st),
                _ => tracing::warn!(
                    key = k,
                    "a saved distributed-scan window does not read; skipped"
                ),
            }
        }
        Ok(())
    }

    /// The windows that changed; those over are deleted.
    fn save(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        let horizon = self.targets.now_ns() - self.config.window_ns;
        let entries: Vec<(String, Option<String>, i64)> = self
            .targets
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

/// The name its windows are saved under.
const STATE: &str = "distributed_scan_windows";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::common::tests::record;

    #[test]
    fn many_sources_each_under_the_threshold_against_one_host_are_a_distributed_scan() {
        let mut d = DistributedScan::default();
        // 5 sources, 10 distinct ports each, within 30 s: the 4th source's 10th port makes 40.
        let mut flows = Vec::new();
        for (i, src) in [
            "10.0.0.21",
            "10.0.0.22",
            "10.0.0.23",
            "10.0.0.24",
            "10.0.0.25",
        ]
        .iter()
        .enumerate()
        {
            for p in 0..10u16 {
                let port = 1000 + i as u16 * 10 + p;
                flows.push(record(src, 40000, "10.0.1.1", port, 1000 + i as i64 * 6));
            }
        }
        // A port scanner of its own against the same host: its alert is the fan-out's, and it
        // takes no part here.
        for p in 0..30u16 {
            flows.push(record("10.0.0.99", 40000, "10.0.1.1", 5000 + p, 1000));
        }
        let u = d.observe(&flows, &ChunkView::of(&flows));
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (u[0].kind, &u[0].source[..], u[0].severity),
            ("distributed_scan", "10.0.1.1", Severity::Low)
        );
        assert_eq!(
            u[0].targets,
            ["10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.24"]
        );
        assert_eq!(u[0].observation["distinct_ports"], 40);
        assert_eq!(u[0].observation["ports_by_source"]["10.0.0.24"], 10);

        // A port scanner's failures do not count, from the moment it becomes one: three sources
        // of 10 ports, a scanner of 30 ports (a participant until its 15th), and a fourth source
        // of 9 are 39 ports of participants.
        let mut d = DistributedScan::default();
        let mut mixed = Vec::new();
        for p in 0..30u16 {
            mixed.push(record("10.0.0.99", 40000, "10.0.1.2", 5000 + p, 1500));
        }
        for (i, src) in ["10.0.0.61", "10.0.0.62", "10.0.0.63"].iter().enumerate() {
            for p in 0..10u16 {
                mixed.push(record(
                    src,
                    40000,
                    "10.0.1.2",
                    1000 + i as u16 * 10 + p,
                    1501,
                ));
            }
        }
        for p in 0..9u16 {
            mixed.push(record("10.0.0.64", 40000, "10.0.1.2", 2000 + p, 1502));
        }
        assert!(d.observe(&mixed, &ChunkView::of(&mixed)).is_empty());
        // One more port of the fourth source makes 40.
        let last = [record("10.0.0.64", 40000, "10.0.1.2", 2009, 1503)];
        let u = d.observe(&last, &ChunkView::of(&last));
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].observation["distinct_ports"], 40);
        assert_eq!(u[0].targets.len(), 4, "the scanner is not a participant");

        // Three sources are not enough, however many ports; the same failures spread over more
        // than the window are not together.
        let mut d = DistributedScan::default();
        let few: Vec<Flow> = (0..42u16)
            .map(|p| {
                let src = ["10.0.0.31", "10.0.0.32", "10.0.0.33"][p as usize % 3];
                record(src, 40000, "10.0.1.1", p + 1, 2000)
            })
            .collect();
        assert!(d.observe(&few, &ChunkView::of(&few)).is_empty());
        let mut d = DistributedScan::default();
        let slow: Vec<Flow> = (0..50u16)
            .map(|p| {
                let src = format!("10.0.0.{}", 40 + p % 5);
                record(&src, 40000, "10.0.1.1", p + 1, 3000 + i64::from(p) * 20)
            })
            .collect();
        assert!(d.observe(&slow, &ChunkView::of(&slow)).is_empty());

        // A NAT gateway's connections, as one-way records: its requests were answered, and the
        // servers' short replies to its many ephemeral ports are not failures of theirs.
        let mut d = DistributedScan::default();
        let mut nat = Vec::new();
        for h in 0..40u16 {
            let server = format!("10.0.2.{}", 100 + h);
            for k in 0..2u16 {
                let eph = 40000 + h * 2 + k;
                nat.push(record("10.0.0.7", eph, &server, 9100, 4000));
                nat.push(record(&server, 9100, "10.0.0.7", eph, 4000));
            }
        }
        assert!(d.observe(&nat, &ChunkView::of(&nat)).is_empty());
    }

    #[test]
    fn a_scan_under_way_keeps_counting_across_a_save_and_a_load() {
        use crate::{
            detect::{Detector as _, State},
            store::{Settings as _, SqliteStore},
        };
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(dir.path()).expect("open");
        let state = State {
            store: store.as_ref(),
            prefix: "sensor/3-of-8/",
        };
        // Three sources of 10 ports: below the 4 sources and 40 ports.
        let mut d = DistributedScan::default();
        let first: Vec<Flow> = ["10.0.0.21", "10.0.0.22", "10.0.0.23"]
            .iter()
            .enumerate()
            .flat_map(|(i, src)| {
                (0..10u16)
                    .map(move |p| record(src, 40000, "10.0.1.1", 1000 + i as u16 * 10 + p, 1000))
            })
            .collect();
        assert!(d.observe(&first, &ChunkView::of(&first)).is_empty());
        // A window long over is deleted at the save, not kept for ever.
        let old = [record("10.0.0.5", 40000, "10.0.1.9", 22, 1)];
        let mut stale = DistributedScan::default();
        stale.observe(&old, &ChunkView::of(&old));
        stale.observe(&first, &ChunkView::of(&first));
        stale.save(&state).expect("save");
        d.save(&state).expect("save");
        let saved = store
            .detector_state("sensor/3-of-8/distributed_scan_windows")
            .expect("read");
        assert_eq!(saved.len(), 1, "only 10.0.1.1's window: {saved:?}");
        // Another process (the partition moved) takes up the window: the fourth source makes
        // the scan.
        let mut e = DistributedScan::default();
        e.load(&state).expect("load");
        let fourth: Vec<Flow> = (0..10u16)
            .map(|p| record("10.0.0.24", 40000, "10.0.1.1", 2000 + p, 1010))
            .collect();
        let u = e.observe(&fourth, &ChunkView::of(&fourth));
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].observation["distinct_ports"], 40);
        // Without the load, the fourth source alone is nothing.
        let mut fresh = DistributedScan::default();
        assert!(fresh.observe(&fourth, &ChunkView::of(&fourth)).is_empty());
    }
}
