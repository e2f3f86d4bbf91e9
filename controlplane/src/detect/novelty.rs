//! Novelty after a learning period, per internal entity (36 days by default, in data time from
//! the entity's first session of the kind):
//! - `geo_unusual_access`: an accepted inbound session from a country never seen for the
//!   entity. Countries come from the RIR assignment of address blocks, embedded by the
//!   `iptocc` crate, or first from a MaxMind GeoIP2/GeoLite2 Country or City database the user
//!   gives (`--geo-db`; [`use_country_db`]): no lookup leaves the machine.
//! - `new_service`: the entity serves a TCP port it never served: an accepted session with a
//!   completed exchange (at least 3 packets from the client, not probe-like), so probes of
//!   closed ports are not services.
//! - `new_internal_device`: an internal address starts accepted sessions in a network (IPv4
//!   /16, IPv6 /56: a VPC's usual size) whose learning period is over. The entity is the
//!   network, the address the target.
//!
//! What each entity has seen is saved in the store (`detector_state`), so the learning spans
//! restarts and separate imports.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Detector, Input, Output, State};
use crate::{
    model::{AlertUpdate, Flow, Severity},
    util::{
        country::country_code,
        net::{internal, ip_key, port_name},
        time::rfc3339,
    },
};

/// What is learned per entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Facet {
    /// Countries of accepted inbound sessions.
    Country,
    /// TCP ports served.
    Service,
    /// Internal addresses starting accepted sessions, per network.
    Device,
}

/// Addresses remembered per network (a full IPv4 /16); past that, new ones are not learned.
pub const MAX_DEVICES: usize = 65_536;

/// The network a device is learned in.
fn device_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let [x, y, _, _] = a.octets();
            IpAddr::from([x, y, 0, 0])
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[7..].fill(0);
            IpAddr::from(o)
        }
    }
}

fn network_text(net: IpAddr) -> String {
    match net {
        IpAddr::V4(_) => format!("{net}/16"),
        IpAddr::V6(_) => format!("{net}/56"),
    }
}

impl Facet {
    /// The name of its state in the store.
    pub fn state_name(self) -> &'static str {
        match self {
            Facet::Country => "geo_access",
            Facet::Service => "new_service",
            Facet::Device => "new_internal_device",
        }
    }

    /// The alert type it raises (also the detector's name).
    pub fn alert(self) -> &'static str {
        match self {
            Facet::Country => "geo_unusual_access",
            Facet::Service => "new_service",
            Facet::Device => "new_internal_device",
        }
    }

    /// The entity and what it learns from `f`, if `f` teaches this facet anything, with the
    /// key unformatted: the address (device), the port (service), the country code's letters.
    fn raw(self, f: &Flow) -> Option<(IpAddr, u128)> {
        if !f.accepted() {
            return None;
        }
        // Devices are learned from the side that starts sessions; countries and services
        // about the internal side that answers.
        match self {
            Facet::Device => internal(&f.src_ip).then(|| {
                let key = ip_key(f.src_ip);
                (device_network(f.src_ip), key)
            }),
            _ if !internal(&f.dst_ip) => None,
            Facet::Country => {
                if internal(&f.src_ip) || f.src_ip.is_loopback() {
                    return None;
                }
                let cc = country_code(f.src_ip)?.as_bytes();
                let mut key = [0u8; 16];
                key[..cc.len().min(16)].copy_from_slice(&cc[..cc.len().min(16)]);
                Some((f.dst_ip, u128::from_be_bytes(key)))
            }
            Facet::Service => (f.port_known()
                && f.counts_known()
                && f.protocol == 6
                && f.packets >= 3
                && !super::failed(f))
            .then(|| (f.dst_ip, u128::from(f.dst_port))),
        }
    }

    /// The key as it is stored and shown ("10.0.3.3", "22/tcp", "JP") for `f`'s raw key.
    fn text(self, f: &Flow) -> String {
        match self {
            Facet::Device => f.src_ip.to_string(),
            Facet::Country => country_code(f.src_ip).unwrap_or_default().to_string(),
            Facet::Service => port_name(f.dst_port, f.protocol),
        }
    }
}

/// The default learning period: 36 days.
pub const LEARNING_NS: i64 = 36 * 86_400_000_000_000;

/// Entities remembered; past that, new ones are not learned (counted and logged).
pub const MAX_ENTITIES: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    /// The first session of the facet (data time).
    first_ns: i64,
    /// Country or service -> first session with it.
    #[serde(alias = "countries")]
    keys: BTreeMap<String, i64>,
}

pub struct Novelty {
    facet: Facet,
    learning_ns: i64,
    entities: HashMap<IpAddr, Seen>,
    /// (entity, raw key) of what is known: most flows repeat what an entity knows, and this
    /// answers them without formatting the key (the sensor baselines run at ingest rates).
    known: HashSet<(IpAddr, u128), foldhash::fast::RandomState>,
    dirty: HashSet<IpAddr>,
    forgotten: u64,
}

impl Default for Novelty {
    fn default() -> Self {
        Novelty::restore(Facet::Country, &[], LEARNING_NS)
    }
}

impl Novelty {
    /// Nothing learned yet.
    pub fn new(facet: Facet, learning_ns: i64) -> Self {
        Novelty::restore(facet, &[], learning_ns)
    }

    /// From the saved (entity, state) pairs.
    pub fn restore(facet: Facet, saved: &[(String, String)], learning_ns: i64) -> Self {
        let entities = saved
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, serde_json::from_str(v).ok()?)))
            .collect();
        Novelty {
            facet,
            learning_ns,
            entities,
            known: HashSet::default(),
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
                let last = s.keys.values().copied().max().unwrap_or(s.first_ns);
                Some((ip.to_string(), serde_json::to_string(s).ok(), last))
            })
            .collect()
    }

    /// Entities, or keys of an entity, not learned because a table was full.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let mut out = Vec::new();
        let kind = self.facet.alert();
        for f in flows {
            let Some((entity, raw)) = self.facet.raw(f) else {
                continue;
            };
            // Known already. (An earlier session of a known key would move the entity's
            // learning start back by what it shows; the known keys' entities are learned.)
            if self.known.contains(&(entity, raw)) {
                continue;
            }
            let key = self.facet.text(f);
            let full = |n: &mut u64, what: &str| {
                *n += 1;
                if n.is_power_of_two() {
                    tracing::warn!(detector = kind, forgotten = *n, "{what}");
                }
            };
            if !self.entities.contains_key(&entity) && self.entities.len() >= MAX_ENTITIES {
                full(
                    &mut self.forgotten,
                    "entity table full; new entities are not learned",
                );
                continue;
            }
            let s = self.entities.entry(entity).or_insert_with(|| Seen {
                first_ns: f.start_ns,
                keys: BTreeMap::new(),
            });
            s.first_ns = s.first_ns.min(f.start_ns);
            if s.keys.contains_key(&key) {
                self.known.insert((entity, raw));
                continue;
            }
            if s.keys.len() >= MAX_DEVICES {
                full(
                    &mut self.forgotten,
                    "an entity's table is full; what is new to it is not learned",
                );
                continue;
            }
            let learned = f.start_ns - s.first_ns >= self.learning_ns;
            // A network's devices are too many to list in each alert: counted instead.
            let known: Vec<String> = if learned && self.facet != Facet::Device {
                s.keys.keys().cloned().collect()
            } else {
                Vec::new()
            };
            let known_devices = s.keys.len();
            s.keys.insert(key.clone(), f.start_ns);
            self.known.insert((entity, raw));
            self.dirty.insert(entity);
            if !learned {
                continue;
            }
            let (severity, target, observation) = match self.facet {
                Facet::Country => (
                    Severity::Medium,
                    format!("{} ({key})", f.src_ip),
                    json!({
                        "kind": "new_country",
                        "country": key,
                        "remote": f.src_ip.to_string(),
                        "port": f.dst_port,
                        "protocol": f.protocol,
                        "known_countries": known,
                    }),
                ),
                Facet::Service => (
                    Severity::Low,
                    key.clone(),
                    json!({
                        "kind": "new_port_served",
                        "service": key,
                        "client": f.src_ip.to_string(),
                        "packets": f.packets,
                        "bytes": f.bytes,
                        "known_services": known,
                    }),
                ),
                Facet::Device => (
                    Severity::Low,
                    key.clone(),
                    json!({
                        "kind": "new_device",
                        "address": key,
                        "network": network_text(entity),
                        "peer": f.dst_ip.to_string(),
                        "port": f.dst_port,
                        "protocol": f.protocol,
                        "known_devices": known_devices,
                    }),
                ),
            };
            let mut observation = observation;
            observation["learning_since"] = json!(rfc3339(s.first_ns));
            observation["provider"] = json!(f.source.as_str());
            observation["observer"] = json!(f.observer);
            observation["time"] = json!(rfc3339(f.start_ns));
            out.push(AlertUpdate {
                kind,
                severity,
                source: match self.facet {
                    Facet::Device => network_text(entity),
                    _ => entity.to_string(),
                },
                targets: vec![target],
                time_ns: f.start_ns,
                observation,
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                // No threshold: only `off` silences it.
                strength: f64::INFINITY,
            });
        }
        out
    }
}

impl Detector for Novelty {
    fn name(&self) -> &'static str {
        self.facet.alert()
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.updates.extend(Novelty::observe(self, input.flows));
    }

    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        let saved = state.read(self.facet.state_name())?;
        *self = Novelty::restore(self.facet, &saved, self.learning_ns);
        Ok(())
    }

    fn save(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        state.write(self.facet.state_name(), &self.dirty())
    }

    fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;
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
            sensor: None,
        }
    }

    /// What `n` learned, saved and loaded again.
    fn resumed(n: &mut Novelty, facet: Facet) -> Novelty {
        let saved: Vec<(String, String)> = n
            .dirty()
            .into_iter()
            .map(|(k, v, _)| (k, v.expect("state")))
            .collect();
        Novelty::restore(facet, &saved, LEARNING_NS)
    }

    #[test]
    fn a_new_country_after_the_learning_period_is_an_alert_and_before_it_is_learned() {
        let mut g = Novelty::restore(Facet::Country, &[], LEARNING_NS);
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
        let mut again = resumed(&mut g, Facet::Country);
        assert!(
            again
                .observe(&[session("1.1.1.1", 50 * DAY, Action::Accept)])
                .is_empty()
        );
    }

    #[test]
    fn a_new_address_in_a_learned_network_is_a_new_internal_device() {
        let from = |src: &str, t: i64, action: Action| {
            let mut f = session(src, t, action);
            f.dst_ip = "10.0.0.53".parse().expect("ip");
            f.dst_port = 53;
            f.protocol = 17;
            f
        };
        let mut n = Novelty::restore(Facet::Device, &[], LEARNING_NS);
        let u = n.observe(&[
            // Learning 10.0.0.0/16 from day 0; a device first seen on day 20 is learned too.
            from("10.0.1.5", 0, Action::Accept),
            from("10.0.2.9", 20 * DAY, Action::Accept),
            // After 36 days: a known one, a rejected newcomer (no session), an external
            // address, then a new device.
            from("10.0.1.5", 40 * DAY, Action::Accept),
            from("10.0.7.7", 40 * DAY, Action::Reject),
            from("8.8.8.8", 40 * DAY, Action::Accept),
            from("10.0.9.9", 41 * DAY, Action::Accept),
            // Another /16 seen first now: still learning.
            from("10.1.0.1", 41 * DAY, Action::Accept),
        ]);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].kind, "new_internal_device");
        assert_eq!(u[0].source, "10.0.0.0/16");
        assert_eq!(u[0].targets, ["10.0.9.9"]);
        assert_eq!(u[0].observation["known_devices"], 2);
        assert_eq!(u[0].observation["peer"], "10.0.0.53");
        assert_eq!(u[0].observation["port"], 53);
        // Saved and resumed: known now.
        let mut again = resumed(&mut n, Facet::Device);
        assert!(
            again
                .observe(&[from("10.0.9.9", 50 * DAY, Action::Accept)])
                .is_empty()
        );
        assert_eq!(
            network_text(device_network("2001:db8:1:2ff::1".parse().expect("ip"))),
            "2001:db8:1:200::/56"
        );
    }

    #[test]
    fn a_new_served_port_after_the_learning_period_is_a_new_service_and_probes_are_not() {
        let at = |port: u16, packets: u64, t: i64| {
            let mut f = session("10.0.5.1", t, Action::Accept);
            f.dst_port = port;
            f.packets = packets;
            f.bytes = packets * 500;
            f
        };
        let mut n = Novelty::restore(Facet::Service, &[], LEARNING_NS);
        let u = n.observe(&[
            at(22, 20, 0),
            at(443, 20, 5 * DAY),
            at(22, 20, 40 * DAY),
            at(9999, 1, 40 * DAY),
            at(8080, 12, 41 * DAY),
        ]);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (u[0].kind, &u[0].targets[..]),
            ("new_service", &["8080/tcp".to_string()][..])
        );
        assert_eq!(u[0].source, "10.0.0.22");
        assert_eq!(
            u[0].observation["known_services"],
            json!(["22/tcp", "443/tcp"])
        );
        assert_eq!(u[0].observation["client"], "10.0.5.1");
    }
}
