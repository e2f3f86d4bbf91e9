//! `data_exfiltration`: an internal address sends far more to external addresses within an
//! hour than it usually does.
//!
//! Each internal address (entity) keeps the bytes it sent out in each hour of data time (flows
//! to an external address, and the return bytes of flows from one: a sensor flow carries both
//! directions), scaled by the sampling rate. Its baseline is its last `HISTORY` active hours.
//! An hour is judged against the median of those and their median absolute deviation (MAD),
//! which one odd hour does not move the way it moves a mean and a standard deviation:
//!
//! threshold = max(median + `MAD_SIGMAS` x 1.4826 x MAD, `RATIO` x median, `MIN_BYTES`)
//!
//! The floor keeps quiet hosts from alerting on an ordinary upload, and the ratio keeps busy
//! ones from alerting on their usual swings. Nothing is judged until the entity's learning
//! period (the baseline detectors' `--learning-days`) has passed and it has `MIN_HOURS` active
//! hours. The alert comes as soon as the hour's running total crosses the threshold (at half
//! of it for `high` sensitivity), and again each time it doubles; an hour that crossed the
//! threshold does not join the baseline. Flows of an hour before the entity's current one are
//! counted in the current one: replayed logs are mostly in order, and no byte is dropped.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Detector, Input, Output, State};
use crate::{
    model::{Action, AlertUpdate, Flow, Severity},
    util::{net::internal, time::rfc3339},
};

/// Name of the state in the store, and the alert's type.
pub const KIND: &str = "data_exfiltration";
const HOUR_NS: i64 = 3_600_000_000_000;
/// Active hours in the baseline (a week of hours for a host that is always busy).
pub const HISTORY: usize = 168;
/// Active hours it takes before an entity is judged.
pub const MIN_HOURS: usize = 24;
/// An hour below this is never an alert (bytes, estimated).
pub const MIN_BYTES: f64 = 100e6;
/// Robust standard deviations above the median.
pub const MAD_SIGMAS: f64 = 8.0;
/// Times the median hour, at least.
pub const RATIO: f64 = 5.0;
/// Destinations kept per hour as the alert's evidence.
const PEERS: usize = 16;
/// Entities remembered; past that, new ones are not learned (counted and logged).
pub const MAX_ENTITIES: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Entity {
    /// The first outbound flow (data time): the learning period starts there.
    first_ns: i64,
    /// The current hour (data time / 1 h), its estimated bytes and largest destinations.
    hour: i64,
    bytes: f64,
    peers: Vec<(IpAddr, f64)>,
    /// The strength last reported in the current hour (0: none).
    reported: f64,
    /// Bytes of the last active hours, oldest first.
    history: VecDeque<f64>,
}

/// The baseline of an entity's hours: (median, MAD, threshold).
fn baseline(history: &VecDeque<f64>) -> (f64, f64, f64) {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let mut v: Vec<f64> = history.iter().copied().collect();
    let m = median(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&mut dev);
    let threshold = (m + MAD_SIGMAS * 1.4826 * mad)
        .max(RATIO * m)
        .max(MIN_BYTES);
    (m, mad, threshold)
}

pub struct Exfiltration {
    learning_ns: i64,
    entities: HashMap<IpAddr, Entity>,
    dirty: HashSet<IpAddr>,
    forgotten: u64,
}

impl Default for Exfiltration {
    fn default() -> Self {
        Exfiltration::new(super::novelty::LEARNING_NS)
    }
}

impl Exfiltration {
    /// Nothing learned yet.
    pub fn new(learning_ns: i64) -> Self {
        Exfiltration::restore(&[], learning_ns)
    }

    /// From the saved (entity, state) pairs.
    pub fn restore(saved: &[(String, String)], learning_ns: i64) -> Self {
        Exfiltration {
            learning_ns,
            entities: saved
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, serde_json::from_str(v).ok()?)))
                .collect(),
            dirty: HashSet::new(),
            forgotten: 0,
        }
    }

    /// Entities that changed since the last call: (key, state, last data time).
    pub fn dirty(&mut self) -> Vec<(String, Option<String>, i64)> {
        let entities = &self.entities;
        self.dirty
            .drain()
            .filter_map(|ip| {
                let e = entities.get(&ip)?;
                Some((
                    ip.to_string(),
                    serde_json::to_string(e).ok(),
                    e.hour.saturating_mul(HOUR_NS),
                ))
            })
            .collect()
    }

    /// Entities not learned because the table was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let mut out = Vec::new();
        for f in flows {
            if f.action == Action::Reject {
                continue;
            }
            // What an internal address sent to an external one.
            let (entity, peer, sent) = match (internal(&f.src_ip), internal(&f.dst_ip)) {
                (true, false) => (f.src_ip, f.dst_ip, f.bytes),
                (false, true) => (f.dst_ip, f.src_ip, f.reverse_bytes),
                _ => continue,
            };
            if sent == 0 {
                continue;
            }
            if !self.entities.contains_key(&entity) && self.entities.len() >= MAX_ENTITIES {
                self.forgotten += 1;
                if self.forgotten.is_power_of_two() {
                    tracing::warn!(
                        detector = KIND,
                        forgotten = self.forgotten,
                        "entity table full; new entities are not learned"
                    );
                }
                continue;
            }
            let bytes = sent as f64 / f.sampling_rate.clamp(0.01, 1.0);
            let hour = f.end_ns.div_euclid(HOUR_NS);
            let e = self.entities.entry(entity).or_insert_with(|| Entity {
                first_ns: f.start_ns,
                hour,
                ..Entity::default()
            });
            self.dirty.insert(entity);
            e.first_ns = e.first_ns.min(f.start_ns);
            if hour > e.hour {
                // The hour is over: it joins the baseline unless it was an alert.
                if e.bytes > 0.0 && e.reported < 1.0 {
                    e.history.push_back(e.bytes);
                    if e.history.len() > HISTORY {
                        e.history.pop_front();
                    }
                }
                (e.hour, e.bytes, e.reported) = (hour, 0.0, 0.0);
                e.peers.clear();
            }
            e.bytes += bytes;
            if let Some(at) = e.peers.iter().position(|(p, _)| *p == peer) {
                e.peers[at].1 += bytes;
            } else if e.peers.len() < PEERS {
                e.peers.push((peer, bytes));
            }
            if f.end_ns - e.first_ns < self.learning_ns || e.history.len() < MIN_HOURS {
                continue;
            }
            let (median, mad, threshold) = baseline(&e.history);
            let strength = e.bytes / threshold;
            if strength < 0.5 || strength < 2.0 * e.reported {
                continue;
            }
            e.reported = strength;
            e.peers.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.push(AlertUpdate {
                kind: KIND,
                severity: if strength >= 10.0 {
                    Severity::High
                } else if strength >= 1.0 {
                    Severity::Medium
                } else {
                    Severity::Low
                },
                source: entity.to_string(),
                targets: e
                    .peers
                    .iter()
                    .take(crate::model::MAX_TARGETS)
                    .map(|(p, _)| p.to_string())
                    .collect(),
                time_ns: f.end_ns,
                observation: json!({
                    "kind": "outbound_volume",
                    "provider": f.source.as_str(),
                    "observer": f.observer,
                    "hour_start": rfc3339(e.hour * HOUR_NS),
                    "bytes": e.bytes.round(),
                    "baseline_median_bytes": median.round(),
                    "baseline_mad_bytes": mad.round(),
                    "threshold_bytes": threshold.round(),
                    "baseline_hours": e.history.len(),
                    "top_destinations": e.peers.iter().take(5)
                        .map(|(p, b)| json!({"address": p.to_string(), "bytes": b.round()}))
                        .collect::<Vec<_>>(),
                    "sampling_rate": f.sampling_rate,
                    "learning_since": rfc3339(e.first_ns),
                    "time": rfc3339(f.end_ns),
                }),
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                strength,
            });
        }
        out
    }
}

impl Detector for Exfiltration {
    fn name(&self) -> &'static str {
        KIND
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.updates.extend(Exfiltration::observe(self, input.flows));
    }

    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        *self = Exfiltration::restore(&state.read(KIND)?, self.learning_ns);
        Ok(())
    }

    fn save(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        state.write(KIND, &self.dirty())
    }

    fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;

    const H: i64 = HOUR_NS;
    const DAY: i64 = 24 * H;
    const MB: u64 = 1_000_000;

    fn upload(src: &str, dst: &str, t: i64, bytes: u64) -> Flow {
        Flow {
            source: Source::Aws,
            observer: "123456789010".into(),
            interface: "eni-1".into(),
            start_ns: t,
            end_ns: t + 60_000_000_000,
            src_ip: src.parse().expect("ip"),
            dst_ip: dst.parse().expect("ip"),
            src_port: 50000,
            dst_port: 443,
            protocol: 6,
            packets: bytes / 1000 + 1,
            bytes,
            reverse_packets: 0,
            reverse_bytes: 0,
            tcp_flags: 0x1b,
            action: Action::Accept,
            sampling_rate: 1.0,
            cloud: Default::default(),
            sensor: None,
        }
    }

    /// An hour of a backup host's usual uploads, 0.8 to 1.2 MB, for each hour of `days`.
    fn usual(x: &mut Exfiltration, from_day: i64, days: i64) -> Vec<AlertUpdate> {
        (from_day * 24..(from_day + days) * 24)
            .flat_map(|h| {
                x.observe(&[upload(
                    "10.0.0.5",
                    "203.0.113.9",
                    h * H + 60_000_000_000,
                    800_000 + (h as u64 % 5) * 100_000,
                )])
            })
            .collect()
    }

    #[test]
    fn an_hour_far_above_the_baseline_is_an_alert_once_learned() {
        let mut x = Exfiltration::default();
        // Day 10, still learning: a 500 MB hour is learned, not an alert.
        assert!(usual(&mut x, 0, 10).is_empty());
        let big = |t: i64| -> Vec<Flow> {
            (0..10)
                .map(|i| upload("10.0.0.5", "198.51.100.7", t + i * 60_000_000_000, 50 * MB))
                .collect()
        };
        assert!(x.observe(&big(10 * DAY + 30 * 60_000_000_000)).is_empty());
        assert!(usual(&mut x, 11, 30).is_empty());
        // Day 41: the same 500 MB hour. Reports at 50 MB (half the 100 MB floor: low), 100
        // (medium), 200 and 400.
        let u = x.observe(&big(41 * DAY));
        let strengths: Vec<f64> = u.iter().map(|u| u.strength).collect();
        assert_eq!(strengths, [0.5, 1.0, 2.0, 4.0]);
        assert_eq!(u[0].severity, Severity::Low);
        assert_eq!(u[1].severity, Severity::Medium);
        let last = &u[3];
        assert_eq!(last.kind, KIND);
        assert_eq!(last.source, "10.0.0.5");
        assert_eq!(last.targets, ["198.51.100.7"]);
        assert_eq!(last.observation["bytes"], 400e6);
        assert_eq!(last.observation["threshold_bytes"], 100e6);
        assert_eq!(last.observation["baseline_hours"], HISTORY);
        assert_eq!(last.observation["baseline_median_bytes"], 1e6);
        assert_eq!(last.observation["hour_start"], rfc3339(41 * DAY));
        // That hour does not join the baseline: the next one, as big, alerts again.
        let saved: Vec<(String, String)> = x
            .dirty()
            .into_iter()
            .map(|(k, v, _)| (k, v.expect("state")))
            .collect();
        let mut resumed = Exfiltration::restore(&saved, crate::detect::novelty::LEARNING_NS);
        let again = resumed.observe(&big(41 * DAY + H));
        assert_eq!(again.len(), 4, "{again:?}");
        assert_eq!(again[3].observation["baseline_median_bytes"], 1e6);
        let history = &resumed.entities[&"10.0.0.5".parse().expect("ip")].history;
        assert!(history.iter().all(|b| *b < 2e6), "{history:?}");
    }

    #[test]
    fn internal_rejected_and_usual_traffic_raise_nothing_and_samples_scale() {
        let mut x = Exfiltration::default();
        assert!(usual(&mut x, 0, 40).is_empty());
        let t = 40 * DAY + 10 * 60_000_000_000;
        // To an internal address, rejected, or inbound to the host: not sent out.
        let mut rejected = upload("10.0.0.5", "198.51.100.7", t, 900 * MB);
        rejected.action = Action::Reject;
        let inbound = upload("198.51.100.7", "10.0.0.5", t, 900 * MB);
        assert!(
            x.observe(&[
                upload("10.0.0.5", "10.1.0.9", t, 900 * MB),
                rejected,
                inbound.clone(),
            ])
            .is_empty()
        );
        // A sensor flow from outside carries the host's replies: those count.
        let mut replies = inbound;
        replies.source = Source::Sensor;
        replies.bytes = 1000;
        replies.reverse_bytes = 60 * MB;
        let u = x.observe(&[replies]);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].observation["bytes"], 60e6);
        // A GCP record sampled at 10%: 12 MB stands for 120 MB.
        let mut sampled = upload("10.0.0.6", "198.51.100.8", 0, 1);
        sampled.sampling_rate = 0.1;
        let mut y = Exfiltration::restore(&[], DAY);
        for h in 0..30 {
            sampled.end_ns = h * H + 1;
            sampled.bytes = 100_000;
            assert!(y.observe(std::slice::from_ref(&sampled)).is_empty());
        }
        sampled.end_ns = 30 * H + 1;
        sampled.bytes = 12 * MB;
        let u = y.observe(std::slice::from_ref(&sampled));
        assert_eq!(u.last().expect("alert").observation["bytes"], 120e6);
        assert!(
            (u.last().expect("alert").strength - 1.2).abs() < 1e-9,
            "{u:?}"
        );
    }

    #[test]
    fn a_busy_host_is_judged_against_its_own_swings() {
        // 0.5 to 1.5 GB an hour for 40 days: the threshold is 5x the median (1 GB). 2 GB is
        // not even half of it; 6 GB is over it.
        let mut x = Exfiltration::restore(&[], DAY);
        let hour = |h: i64, bytes: u64| upload("10.0.0.7", "192.0.2.1", h * H + 1, bytes);
        for h in 0..40 * 24 {
            let b = 500 * MB + (h as u64 % 11) * 100 * MB;
            assert!(x.observe(&[hour(h, b)]).is_empty(), "hour {h}");
        }
        assert!(x.observe(&[hour(40 * 24, 2_000 * MB)]).is_empty());
        let u = x.observe(&[hour(40 * 24 + 1, 6_000 * MB)]);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].observation["threshold_bytes"], 5e9);
        assert_eq!(u[0].severity, Severity::Medium);
        let (m, mad, t) = baseline(&x.entities[&"10.0.0.7".parse().unwrap()].history);
        assert_eq!((m, mad, t), (1e9, 300e6, 5e9));
    }
}
