//! `watchlist_hit`: traffic to or from a listed address or network.

use std::{collections::HashMap, net::IpAddr};

use serde_json::json;

use super::{Detector, Input, Output, State};
use crate::{
    model::{AlertUpdate, Flow, Severity},
    util::{net::NetSet, time::rfc3339},
};

/// `watchlist_hit`: traffic to or from a listed address or network (`Settings::watchlist`). The
/// alert is about the other end, the entity that talked to the listed address; one observation
/// per (entity, listed address) per 10 minutes of data time.
#[derive(Default)]
pub struct Watchlist {
    /// (network, label) by network.
    nets: NetSet<(String, String)>,
    last_hit: HashMap<(IpAddr, IpAddr), i64>,
}

const WATCHLIST_REPEAT_NS: i64 = 600_000_000_000;
const WATCHLIST_HITS_KEPT: usize = 100_000;

impl Watchlist {
    /// From stored (CIDR, label) entries; an entry that does not parse is logged and skipped.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Watchlist {
            nets: NetSet::new(
                entries.into_iter().map(|e| (e.0.clone(), e)).collect(),
                "watchlist",
            ),
            last_hit: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The most specific entry holding `ip`: (network, label).
    pub fn lookup(&self, ip: IpAddr) -> Option<&(String, String)> {
        self.nets.lookup(ip)
    }

    /// Looks at one conversation: `src` talked to `dst` on `port`.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: u32,
        packets: u64,
        bytes: u64,
        time_ns: i64,
        seen_by: &str,
    ) -> Option<AlertUpdate> {
        if self.nets.is_empty() {
            return None;
        }
        let (listed, entity, direction, entry) = if let Some(e) = self.lookup(dst) {
            (dst, src, "to", e.clone())
        } else if let Some(e) = self.lookup(src) {
            (src, dst, "from", e.clone())
        } else {
            return None;
        };
        if self.last_hit.len() >= WATCHLIST_HITS_KEPT {
            self.last_hit.clear();
        }
        let last = self.last_hit.entry((entity, listed)).or_insert(i64::MIN);
        if *last != i64::MIN && (time_ns - *last).abs() < WATCHLIST_REPEAT_NS {
            return None;
        }
        *last = time_ns;
        Some(AlertUpdate {
            kind: "watchlist_hit",
            severity: Severity::Medium,
            source: entity.to_string(),
            targets: vec![listed.to_string()],
            time_ns,
            observation: json!({
                "kind": "watchlisted_address",
                "listed": listed.to_string(),
                "entry": entry.0,
                "label": entry.1,
                "direction": direction,
                "port": port,
                "protocol": protocol,
                "packets": packets,
                "bytes": bytes,
                "time": rfc3339(time_ns),
                "seen_by": seen_by,
            }),
            seen_by: seen_by.to_string(),
            strength: f64::INFINITY,
        })
    }

    pub fn observe_flows(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        if self.nets.is_empty() {
            return Vec::new();
        }
        flows
            .iter()
            .filter_map(|f| {
                self.observe(
                    f.src_ip,
                    f.dst_ip,
                    f.dst_port,
                    f.protocol.into(),
                    f.packets.saturating_add(f.reverse_packets),
                    f.bytes.saturating_add(f.reverse_bytes),
                    f.end_ns,
                    &format!("{}:{}", f.source.as_str(), f.observer),
                )
            })
            .collect()
    }
}

impl Detector for Watchlist {
    fn name(&self) -> &'static str {
        "watchlist"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.updates.extend(self.observe_flows(input.flows));
    }

    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        self.reload(state)
    }

    fn reload(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        // The hits already reported stay: a reload does not repeat them.
        self.nets = Watchlist::new(state.store.watchlist()?).nets;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchlist_matches_the_most_specific_entry_and_repeats_every_10_minutes() {
        let entries = vec![
            ("198.51.100.0/24".to_string(), "feed".to_string()),
            ("198.51.100.7/32".to_string(), "known c2".to_string()),
            ("2001:db8::/32".to_string(), "v6 net".to_string()),
            ("not a network".to_string(), String::new()),
        ];
        let mut w = Watchlist::new(entries);
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        assert_eq!(
            w.lookup(ip("198.51.100.7")).map(|e| &e.1[..]),
            Some("known c2")
        );
        assert_eq!(w.lookup(ip("198.51.100.8")).map(|e| &e.1[..]), Some("feed"));
        assert_eq!(
            w.lookup(ip("2001:db8::1")).map(|e| &e.1[..]),
            Some("v6 net")
        );
        assert!(w.lookup(ip("198.51.101.1")).is_none());
        assert!(w.lookup(ip("::ffff:10.0.0.1")).is_none());
        let hit = |w: &mut Watchlist, src: &str, dst: &str, t_s: i64| {
            w.observe(
                ip(src),
                ip(dst),
                443,
                6,
                10,
                1000,
                t_s * 1_000_000_000,
                "aws:1",
            )
        };
        let u = hit(&mut w, "10.0.0.5", "198.51.100.7", 100).expect("a hit");
        assert_eq!(
            (u.kind, &u.source[..], &u.targets[..]),
            (
                "watchlist_hit",
                "10.0.0.5",
                &["198.51.100.7".to_string()][..]
            )
        );
        assert_eq!(u.observation["label"], "known c2");
        assert_eq!(u.observation["direction"], "to");
        // The same pair within 10 minutes: nothing new; later, or inbound from another listed
        // address: again.
        assert!(hit(&mut w, "10.0.0.5", "198.51.100.7", 500).is_none());
        assert!(hit(&mut w, "10.0.0.5", "198.51.100.7", 800).is_some());
        let inbound = hit(&mut w, "198.51.100.9", "10.0.0.5", 100).expect("inbound");
        assert_eq!(inbound.observation["direction"], "from");
        assert_eq!(inbound.source, "10.0.0.5");
        assert!(hit(&mut w, "10.0.0.5", "10.0.0.6", 100).is_none());
        assert_eq!(
            crate::util::net::parse_network("10.1.2.3/16")
                .expect("cidr")
                .to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            crate::util::net::parse_network(" 10.1.2.3 ")
                .expect("ip")
                .to_string(),
            "10.1.2.3/32"
        );
        assert!(crate::util::net::parse_network("10.1.2.3/33").is_err());
    }
}
