//! Decoys (nmap `-D`): one scanner sends every probe also from forged addresses, so that
//! several sources scan the same target at the same moment and the real one hides among them.
//! [`DecoyGroups`] takes the per-source scan findings of a chunk (kernel scan events, the
//! flow-log fan-out, the slow-scan walks), groups those against the same target, and names the
//! one source the target answered: replies go to the address they answer, so a forged address
//! that is nobody's (or somebody's far away) receives none that the sensor or the flow log sees,
//! while the real scanner receives its SYN-ACKs and RSTs. One alert names that source, with the
//! decoys in its observation; the decoys get none. When the replies do not single out one source
//! (decoys that are live hosts, or a scan whose replies were not seen), each source keeps its
//! alert, and each alert names the others as the same scan. (Several sources that each stay
//! below the thresholds are [`super::distributed`]'s.)
//!
//! Time comes from the data, as everywhere in detection.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use tracing::info;

use super::{Detector, Input, Output};
use crate::{model::AlertUpdate, util::time::rfc3339};

/// Findings of different sources against the same target within this much data time of the
/// group's first are one scan: nmap sends each probe from every decoy in turn, so they cross
/// thresholds within microseconds of each other (and a flow log gives them the same second).
/// Independent scans of one host seconds apart stay apart.
pub const GROUP_WINDOW_NS: i64 = 1_000_000_000;

/// Groups remembered at once; the stalest go first.
const MAX_GROUPS: usize = 10_000;

/// One source's scan finding, before grouping.
#[derive(Clone, Debug)]
pub struct Finding {
    pub update: AlertUpdate,
    /// What the source scanned: `port_scan <host>` or `address_sweep <protocol>/<port>`.
    pub target: String,
    /// The source's conversations (or failed contacts) with that target that the target
    /// answered with anything at all (a SYN-ACK, a RST, a datagram): seen only by the real
    /// scanner when the others are forged.
    pub replied: u32,
}

struct Group {
    first_ns: i64,
    last_ns: i64,
    /// Every source seen in the group, with the replies it got.
    sources: BTreeMap<String, u32>,
    /// The source named the real scanner, once decided.
    real: Option<String>,
}

/// Groups the findings of decoy scans (see the module's documentation).
#[derive(Default)]
pub struct DecoyGroups {
    /// By target, the groups of the last `GROUP_KEEP_NS`.
    groups: HashMap<String, Vec<Group>>,
    /// Findings folded into another source's alert as decoys.
    pub decoys_folded: u64,
    /// Hold a lone source's findings (see [`DecoyGroups::holding`]).
    hold: bool,
    held: Vec<Finding>,
    newest_ns: i64,
}

/// A lone source's findings wait at most this much data time for others to join its group
/// (when holding).
pub const HOLD_NS: i64 = 60_000_000_000;

/// A group's members keep being judged with it while they report within this much data time
/// (the flow-log fan-out reports a source again as its count doubles).
pub const GROUP_KEEP_NS: i64 = 60_000_000_000;

impl DecoyGroups {
    /// Groups that hold a lone source's findings until others join its group, data time moves
    /// `HOLD_NS` past it, or [`Self::flush`]: for flow logs, read a chunk at a time, where the
    /// decoys' records and the scanner's may fall on either side of a chunk's end. (Kernel
    /// scan events of one scan come in one batch; they are not held.)
    pub fn holding() -> Self {
        DecoyGroups {
            hold: true,
            ..DecoyGroups::default()
        }
    }

    /// The held findings, as they are (at the end of a file).
    pub fn flush(&mut self) -> Vec<AlertUpdate> {
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|f| f.update)
            .collect()
    }

    /// The alert updates of a batch of findings.
    pub fn group(&mut self, new: Vec<Finding>) -> Vec<AlertUpdate> {
        if new.is_empty() {
            return Vec::new();
        }
        // Held findings are judged again with the new ones (they were not emitted).
        let mut findings = std::mem::take(&mut self.held);
        findings.extend(new);
        findings.sort_by_key(|f| f.update.time_ns);
        self.newest_ns = findings
            .iter()
            .map(|f| f.update.time_ns)
            .max()
            .unwrap_or(0)
            .max(self.newest_ns);
        // Each finding to its group: the live group it is a member of, else one it can join
        // (within the window of the group's first finding), else a new one.
        let mut assigned: Vec<((String, usize), Vec<Finding>)> = Vec::new();
        for f in findings {
            let t = f.update.time_ns;
            let gs = self.groups.entry(f.target.clone()).or_default();
            let live = |g: &Group| t - g.last_ns <= GROUP_KEEP_NS;
            let idx = gs
                .iter()
                .position(|g| live(g) && g.sources.contains_key(&f.update.source))
                .or_else(|| {
                    gs.iter()
                        .position(|g| (t - g.first_ns).abs() <= GROUP_WINDOW_NS)
                })
                .unwrap_or_else(|| {
                    gs.push(Group {
                        first_ns: t,
                        last_ns: t,
                        sources: BTreeMap::new(),
                        real: None,
                    });
                    gs.len() - 1
                });
            let g = &mut gs[idx];
            g.last_ns = g.last_ns.max(t);
            let r = g.sources.entry(f.update.source.clone()).or_default();
            *r = (*r).max(f.replied);
            let key = (f.target.clone(), idx);
            match assigned.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(f),
                None => assigned.push((key, vec![f])),
            }
        }
        let mut out = Vec::new();
        for ((target, idx), batch) in assigned {
            self.judge(&target, idx, batch, &mut out);
        }
        // Forget the groups no member reported to for `GROUP_KEEP_NS` (data time), and keep
        // at most `MAX_GROUPS`.
        let newest = self.newest_ns;
        for gs in self.groups.values_mut() {
            gs.retain(|g| newest - g.last_ns <= GROUP_KEEP_NS);
        }
        self.groups.retain(|_, gs| !gs.is_empty());
        if self.groups.len() > MAX_GROUPS {
            let mut ages: Vec<i64> = self
                .groups
                .values()
                .filter_map(|gs| gs.iter().map(|g| g.last_ns).max())
                .collect();
            ages.sort_unstable();
            let cut = ages[ages.len() - MAX_GROUPS];
            self.groups
                .retain(|_, gs| gs.iter().any(|g| g.last_ns >= cut));
        }
        out.sort_by_key(|u| u.time_ns);
        out
    }

    /// The updates of one group's new findings (`batch`): as they are while the group has one
    /// source (held, when holding); folded into the real scanner's when the target's replies
    /// name one; else each naming the others.
    fn judge(&mut self, target: &str, idx: usize, batch: Vec<Finding>, out: &mut Vec<AlertUpdate>) {
        let g = &mut self.groups.get_mut(target).expect("assigned")[idx];
        if g.sources.len() < 2 {
            if self.hold && self.newest_ns - g.first_ns <= HOLD_NS {
                self.held.extend(batch);
            } else {
                out.extend(batch.into_iter().map(|f| f.update));
            }
            return;
        }
        // The members that got no reply at all are forged when others, probing the same
        // target at the same moment, got theirs: the scanner is the answered member with the
        // most replies (another answered member is a scan of its own that came at the same
        // moment). Decided once, when the group first holds both kinds.
        if g.real.is_none() && g.sources.values().any(|r| *r == 0) {
            g.real = g
                .sources
                .iter()
                .filter(|(_, r)| **r > 0)
                .max_by_key(|(_, r)| **r)
                .map(|(s, _)| s.clone());
        }
        let all: Vec<String> = g.sources.keys().cloned().collect();
        match g.real.clone() {
            Some(real) => {
                let decoys: Vec<&String> = g
                    .sources
                    .iter()
                    .filter(|(_, r)| **r == 0)
                    .map(|(s, _)| s)
                    .collect();
                let evidence = format!(
                    "the target answered {real} ({} replies); the {} sources that scanned it \
                 at the same moment got none: their addresses were forged",
                    g.sources[&real],
                    decoys.len()
                );
                let mut real_seen = batch.iter().any(|f| f.update.source == real);
                for mut f in batch {
                    if f.update.source == real {
                        annotate(&mut f.update.observation, "decoys", json!(decoys));
                        annotate(&mut f.update.observation, "decoy_evidence", json!(evidence));
                        out.push(f.update);
                        continue;
                    }
                    if g.sources[&f.update.source] > 0 {
                        // Answered: not forged; its own scan.
                        out.push(f.update);
                        continue;
                    }
                    self.decoys_folded += 1;
                    info!(
                        target,
                        decoy = f.update.source.as_str(),
                        real = real.as_str(),
                        "a decoy's scan finding folded into the real scanner's alert"
                    );
                    if !real_seen {
                        // The real source's own finding came earlier: say in its alert
                        // that this decoy joined.
                        let mut u = f.update;
                        u.source = real.clone();
                        u.observation = json!({
                            "kind": "decoys",
                            "decoys": decoys,
                            "decoy_evidence": evidence,
                            "time": rfc3339(u.time_ns),
                        });
                        out.push(u);
                        real_seen = true;
                    }
                }
            }
            None => {
                for mut f in batch {
                    let others: Vec<&String> =
                        all.iter().filter(|s| **s != f.update.source).collect();
                    annotate(&mut f.update.observation, "same_scan_from", json!(others));
                    out.push(f.update);
                }
            }
        }
    }
}

fn annotate(observation: &mut Value, key: &str, value: Value) {
    if let Value::Object(m) = observation {
        m.insert(key.to_string(), value);
    }
}

impl Detector for DecoyGroups {
    fn name(&self) -> &'static str {
        "decoys"
    }

    /// Groups the findings of the scan detectors that ran before it.
    fn observe(&mut self, _input: &Input<'_>, out: &mut Output) {
        let findings = std::mem::take(&mut out.findings);
        out.found.extend(findings.iter().map(|f| f.update.clone()));
        out.updates.extend(self.group(findings));
    }

    fn flush(&mut self, out: &mut Output) {
        out.updates.extend(DecoyGroups::flush(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::common::tests::record;
    use crate::{
        detect::{ChunkView, Config, Detectors, Feed, fanout::FanOutDetector},
        model::Severity,
    };

    fn finding(source: &str, target: &str, t_s: i64, replied: u32) -> Finding {
        Finding {
            update: AlertUpdate {
                kind: "port_scan",
                severity: Severity::Low,
                source: source.into(),
                targets: vec![target.into()],
                time_ns: t_s * 1_000_000_000,
                observation: json!({"kind": "kernel_scan_event"}),
                seen_by: "sensor:lab".into(),
                strength: 1.0,
            },
            target: format!("port_scan {target}"),
            replied,
        }
    }

    #[test]
    fn decoys_fold_into_the_one_source_the_target_answered() {
        let mut g = DecoyGroups::default();
        let u = g.group(vec![
            finding("10.0.0.51", "10.0.1.1", 100, 0),
            finding("10.0.0.9", "10.0.1.1", 100, 180),
            finding("10.0.0.52", "10.0.1.1", 100, 0),
            // Another scan of another host, by a decoy's address: its own alert.
            finding("10.0.0.51", "10.0.1.2", 100, 0),
        ]);
        assert_eq!(u.len(), 2, "{u:?}");
        let real = u.iter().find(|u| u.targets == ["10.0.1.1"]).expect("real");
        assert_eq!(real.source, "10.0.0.9");
        assert_eq!(
            real.observation["decoys"],
            json!(["10.0.0.51", "10.0.0.52"])
        );
        assert!(
            real.observation["decoy_evidence"]
                .as_str()
                .expect("evidence")
                .contains("180 replies"),
            "{}",
            real.observation
        );
        let other = u.iter().find(|u| u.targets == ["10.0.1.2"]).expect("other");
        assert_eq!(other.source, "10.0.0.51");
        assert!(other.observation.get("decoys").is_none());
        assert_eq!(g.decoys_folded, 2);

        // A decoy whose finding comes in a later batch joins the real scanner's alert.
        let u = g.group(vec![finding("10.0.0.53", "10.0.1.1", 101, 0)]);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].source, "10.0.0.9");
        assert_eq!(u[0].observation["kind"], "decoys");
        assert_eq!(
            u[0].observation["decoys"],
            json!(["10.0.0.51", "10.0.0.52", "10.0.0.53"])
        );
        assert_eq!(g.decoys_folded, 3);
        // A decoy reporting again 10 s on (a flow-log fan-out at twice its count) is still one.
        let u = g.group(vec![finding("10.0.0.51", "10.0.1.1", 110, 0)]);
        assert_eq!((u.len(), &u[0].source[..]), (1, "10.0.0.9"));
        assert_eq!(g.decoys_folded, 4);
        // Much later, the same address scanning the same host is a new scan of its own.
        let u = g.group(vec![finding("10.0.0.53", "10.0.1.1", 400, 0)]);
        assert_eq!((u.len(), &u[0].source[..]), (1, "10.0.0.53"));
        assert!(u[0].observation.get("decoys").is_none());
    }

    #[test]
    fn decoys_fold_into_the_most_answered_source_and_another_answered_scan_stays_its_own() {
        let mut g = DecoyGroups::default();
        // In a log of 1-second times, another scanner's first probes of the same host fall in
        // the decoys' second: its replies are few (its scan has just begun).
        let u = g.group(vec![
            finding("10.0.0.51", "10.0.1.1", 100, 0),
            finding("10.0.0.9", "10.0.1.1", 100, 200),
            finding("10.0.0.52", "10.0.1.1", 100, 0),
            finding("10.0.0.77", "10.0.1.1", 101, 8),
        ]);
        assert_eq!(u.len(), 2, "{u:?}");
        let real = u
            .iter()
            .find(|u| u.source == "10.0.0.9")
            .expect("the scanner");
        assert_eq!(
            real.observation["decoys"],
            json!(["10.0.0.51", "10.0.0.52"])
        );
        let other = u
            .iter()
            .find(|u| u.source == "10.0.0.77")
            .expect("the other scan");
        assert_eq!(other.observation, json!({"kind": "kernel_scan_event"}));
        assert_eq!(g.decoys_folded, 2);
    }

    #[test]
    fn holding_waits_for_the_rest_of_the_group_across_chunks() {
        let mut g = DecoyGroups::holding();
        // A decoy's finding ends one chunk; the scanner's and another decoy's open the next.
        assert!(
            g.group(vec![finding("10.0.0.51", "10.0.1.1", 100, 0)])
                .is_empty()
        );
        let u = g.group(vec![
            finding("10.0.0.9", "10.0.1.1", 100, 40),
            finding("10.0.0.52", "10.0.1.1", 101, 0),
        ]);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].source, "10.0.0.9");
        assert_eq!(
            u[0].observation["decoys"],
            json!(["10.0.0.51", "10.0.0.52"])
        );
        assert!(g.flush().is_empty());
        // A lone scanner is held until data time moves on, or until the file ends.
        assert!(
            g.group(vec![finding("10.0.0.70", "10.0.1.7", 500, 9)])
                .is_empty()
        );
        let u = g.group(vec![finding("10.0.0.71", "10.0.1.8", 600, 9)]);
        assert_eq!((u.len(), &u[0].source[..]), (1, "10.0.0.70"));
        let u = g.flush();
        assert_eq!((u.len(), &u[0].source[..]), (1, "10.0.0.71"));
    }

    #[test]
    fn when_replies_do_not_single_out_a_source_each_keeps_its_alert() {
        let mut g = DecoyGroups::default();
        // Nobody answered (or everybody did): no source is blamed for the others.
        for replied in [0, 5] {
            let u = g.group(vec![
                finding("10.0.0.51", "10.0.1.1", 100 * replied as i64, replied),
                finding("10.0.0.9", "10.0.1.1", 100 * replied as i64, replied),
            ]);
            assert_eq!(u.len(), 2, "{u:?}");
            assert_eq!(u[0].observation["same_scan_from"], json!(["10.0.0.9"]));
            assert_eq!(u[1].observation["same_scan_from"], json!(["10.0.0.51"]));
        }
        assert_eq!(g.decoys_folded, 0);
        // Two scans of one host 3 s apart are two scans, not decoys of one.
        let u = g.group(vec![finding("10.0.0.61", "10.0.1.9", 1000, 7)]);
        assert_eq!(u[0].observation, json!({"kind": "kernel_scan_event"}));
        let u = g.group(vec![finding("10.0.0.62", "10.0.1.9", 1003, 0)]);
        assert_eq!(
            (&u[0].source[..], &u[0].observation),
            ("10.0.0.62", &json!({"kind": "kernel_scan_event"}))
        );
    }

    #[test]
    fn decoys_in_one_way_flow_logs_are_told_from_the_scanner_by_the_targets_replies() {
        // nmap -D: every port probed from 10.0.0.9 (real) and from 10.0.0.51 and 10.0.0.52
        // (forged). The target's RSTs go to the real scanner only: a record the other way.
        let mut flows = Vec::new();
        for p in 1..=30u16 {
            for src in ["10.0.0.51", "10.0.0.9", "10.0.0.52"] {
                flows.push(record(src, 40000, "10.0.1.1", p, 1000));
            }
            flows.push(record("10.0.1.1", p, "10.0.0.9", 40000, 1000));
        }
        let mut d = FanOutDetector::default();
        let mut g = DecoyGroups::default();
        let u = g.group(d.findings(&flows, &ChunkView::of(&flows)));
        let scans: Vec<_> = u.iter().filter(|u| u.kind == "port_scan").collect();
        assert!(!scans.is_empty());
        assert!(
            scans.iter().all(|u| u.source == "10.0.0.9"),
            "only the real scanner is blamed: {scans:?}"
        );
        assert_eq!(
            scans[0].observation["decoys"],
            json!(["10.0.0.51", "10.0.0.52"])
        );
        assert!(g.decoys_folded >= 2);
        // With every flow detector (the sequential test decides after a few failures, before
        // the fan-out): still no alert of any kind about a decoy.
        let mut all = Detectors::new(Feed::Import, &Config::default());
        let u = all.observe(&crate::detect::Input::flows(&flows));
        assert!(
            u.iter().any(|u| u.source == "10.0.0.9"),
            "the scanner is alerted: {u:?}"
        );
        assert!(
            u.iter()
                .all(|u| u.source != "10.0.0.51" && u.source != "10.0.0.52"),
            "{u:?}"
        );
    }
}
