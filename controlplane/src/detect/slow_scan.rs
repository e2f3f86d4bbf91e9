//! `port_scan` and `address_sweep` of slow scans, by a sequential test on first contacts.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use serde_json::json;

use super::{
    Detector, Input, Output, State,
    common::{ChunkView, TCP, failed, forgot},
    decoys::Finding,
};
use crate::{
    model::{Action, AlertUpdate, Flow, Severity},
    util::time::rfc3339,
};

/// Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan, 2004): a sequential test on
/// the outcomes of a source's first contacts (here a new host and port), with no window, so a
/// scan spread over hours adds up. Each failed first contact multiplies the odds of "scanner" by
/// (1 - θ1) / (1 - θ0), each success by θ1 / θ0 (θ0 = 0.8 success for a benign source, θ1 =
/// 0.2 for a scanner). Odds of 99 (detection 0.99, false positives 0.01) mean a scanner: 4
/// failures in a row. Odds of 1/99 mean benign, and the walk starts again. The state persists
/// in the store (see [`SlowScan::restore`] and [`SlowScan::dirty`]), so a scan spread over restarts
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
    pub fn restore(saved: &[(String, String)]) -> Self {
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
    pub fn findings(&mut self, flows: &[Flow], view: &ChunkView) -> Vec<Finding> {
        let mut out = Vec::new();
        for f in flows {
            if f.protocol != TCP && f.action != Action::Reject {
                // Only TCP (or a rejection) says whether a contact succeeded.
                continue;
            }
            if !f.port_known() || !f.counts_known() && f.action != Action::Reject {
                // Which contact, or whether it succeeded, is not in the record.
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
                out.push(Finding {
                    update,
                    target: group,
                    replied,
                });
            }
        }
        out
    }
}

/// Name of the walks' state in the store.
pub const STATE: &str = "slow_scan";

impl Detector for SlowScan {
    fn name(&self) -> &'static str {
        "slow_scan"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.findings
            .extend(self.findings(input.flows, input.view()));
    }

    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        *self = SlowScan::restore(&state.read(STATE)?);
        Ok(())
    }

    fn save(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        state.write(STATE, &self.dirty())
    }

    fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{ACK, SYN, tests::cloud};
    use super::*;

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
        let mut again = SlowScan::restore(&kept);
        assert_eq!(again.observe(&[probe(3)]), vec![]);
        assert_eq!(
            again.observe(&[probe(4)]).len(),
            1,
            "2 + 2 failures after a restart"
        );
    }
}
