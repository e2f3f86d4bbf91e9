//! `geo_unusual_access`: an accepted inbound session to an internal entity from a country never
//! seen for that entity, once the entity's learning period is over (36 days by default, in data
//! time from its first inbound session). Countries come from the RIR assignment of address
//! blocks, embedded by the `iptocc` crate: no lookup leaves the machine.
//!
//! What each entity has seen is saved in the store (`detector_state`), so the learning spans
//! restarts and separate imports.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    alerts::{AlertUpdate, Severity},
    api::rfc3339,
    model::{Action, Flow},
};

/// Name of the detector's state in the store.
pub const GEO_STATE: &str = "geo_access";

/// The default learning period: 36 days.
pub const LEARNING_NS: i64 = 36 * 86_400_000_000_000;

/// Entities remembered; past that, new ones are not learned (counted and logged).
pub const MAX_ENTITIES: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    /// The first accepted inbound session (data time).
    first_ns: i64,
    /// Country -> first session from it.
    countries: BTreeMap<String, i64>,
}

pub struct GeoAccess {
    learning_ns: i64,
    entities: HashMap<IpAddr, Seen>,
    dirty: HashSet<IpAddr>,
    forgotten: u64,
}

impl Default for GeoAccess {
    fn default() -> Self {
        GeoAccess::load(&[], LEARNING_NS)
    }
}

impl GeoAccess {
    /// From the saved (entity, state) pairs.
    pub fn load(saved: &[(String, String)], learning_ns: i64) -> Self {
        let entities = saved
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, serde_json::from_str(v).ok()?)))
            .collect();
        GeoAccess {
            learning_ns,
            entities,
            dirty: HashSet::new(),
            forgotten: 0,
        }
    }

    /// Entities whose countries changed since the last call: (key, state, last time).
    pub fn dirty(&mut self) -> Vec<(String, Option<String>, i64)> {
        let entities = &self.entities;
        self.dirty
            .drain()
            .filter_map(|ip| {
                let s = entities.get(&ip)?;
                let last = s.countries.values().copied().max().unwrap_or(s.first_ns);
                Some((ip.to_string(), serde_json::to_string(s).ok(), last))
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
            // An accepted inbound session from outside.
            if f.action != Action::Accept
                || !crate::store::internal(&f.dst_ip)
                || crate::store::internal(&f.src_ip)
                || f.src_ip.is_loopback()
            {
                continue;
            }
            let Some(cc) = iptocc::country_code(f.src_ip) else {
                continue;
            };
            if !self.entities.contains_key(&f.dst_ip) && self.entities.len() >= MAX_ENTITIES {
                self.forgotten += 1;
                if self.forgotten.is_power_of_two() {
                    tracing::warn!(
                        forgotten = self.forgotten,
                        "geo_unusual_access: entity table full; new entities are not learned"
                    );
                }
                continue;
            }
            let s = self.entities.entry(f.dst_ip).or_insert_with(|| Seen {
                first_ns: f.start_ns,
                countries: BTreeMap::new(),
            });
            s.first_ns = s.first_ns.min(f.start_ns);
            if s.countries.contains_key(cc) {
                continue;
            }
            let learned = f.start_ns - s.first_ns >= self.learning_ns;
            let known: Vec<String> = s.countries.keys().cloned().collect();
            s.countries.insert(cc.to_string(), f.start_ns);
            self.dirty.insert(f.dst_ip);
            if !learned {
                continue;
            }
            out.push(AlertUpdate {
                kind: "geo_unusual_access",
                severity: Severity::Medium,
                source: f.dst_ip.to_string(),
                targets: vec![format!("{} ({cc})", f.src_ip)],
                time_ns: f.start_ns,
                observation: json!({
                    "kind": "new_country",
                    "country": cc,
                    "remote": f.src_ip.to_string(),
                    "port": f.dst_port,
                    "protocol": f.protocol,
                    "known_countries": known,
                    "learning_since": rfc3339(s.first_ns),
                    "provider": f.source.as_str(),
                    "observer": f.observer,
                    "time": rfc3339(f.start_ns),
                }),
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                // No threshold: only `off` silences it.
                strength: f64::INFINITY,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;

    const DAY: i64 = 86_400_000_000_000;

    fn session(src: &str, t: i64, action: Action) -> Flow {
        Flow {
            source: Source::Aws,
            observer: "123456789010".into(),
            interface: "eni-1".into(),
            start_ns: t,
            end_ns: t + 60_000_000_000,
            src_ip: src.parse().expect("ip"),
            dst_ip: "10.0.0.22".parse().expect("ip"),
            src_port: 50000,
            dst_port: 22,
            protocol: 6,
            packets: 20,
            bytes: 4000,
            reverse_packets: 0,
            reverse_bytes: 0,
            tcp_flags: 0,
            action,
            sampling_rate: 1.0,
            cloud: Default::default(),
        }
    }

    #[test]
    fn a_new_country_after_the_learning_period_is_an_alert_and_before_it_is_learned() {
        let mut g = GeoAccess::load(&[], LEARNING_NS);
        // Day 0: US; day 10: Japan (still learning); day 40: another US address, then Japan
        // again (both known), then Australia (new) and a rejected attempt from Brazil.
        let u = g.observe(&[
            session("8.8.8.8", 0, Action::Accept),
            session("1.0.16.1", 10 * DAY, Action::Accept),
            session("8.8.4.4", 40 * DAY, Action::Accept),
            session("1.0.16.1", 40 * DAY, Action::Accept),
            session("1.1.1.1", 41 * DAY, Action::Accept),
            session("200.160.2.3", 42 * DAY, Action::Reject),
        ]);
        let found: Vec<(&str, String)> = u
            .iter()
            .map(|a| (a.kind, a.observation["country"].to_string()))
            .collect();
        assert_eq!(found, [("geo_unusual_access", "\"AU\"".to_string())]);
        assert_eq!(u[0].source, "10.0.0.22");
        assert_eq!(u[0].targets, ["1.1.1.1 (AU)"]);
        assert_eq!(u[0].observation["known_countries"], json!(["JP", "US"]));
        // Saved and resumed: Australia is known now.
        let saved: Vec<(String, String)> = g
            .dirty()
            .into_iter()
            .map(|(k, v, _)| (k, v.expect("state")))
            .collect();
        let mut again = GeoAccess::load(&saved, LEARNING_NS);
        assert!(
            again
                .observe(&[session("1.1.1.1", 50 * DAY, Action::Accept)])
                .is_empty()
        );
    }
}
