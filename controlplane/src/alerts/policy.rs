//! What decides whether an observation becomes an alert at all: the allowlist (sources whose
//! alerts of a type are not raised) and the sensitivity settings (how readily alerts of a type
//! are raised for sources in a network).

use std::{collections::HashMap, net::IpAddr};

use crate::{model::Sensitivity, util::net::NetSet};

/// The allowlist (`Store::allowlist`): sources whose alerts of a type, or of every type, are
/// not raised, such as a sanctioned vulnerability scanner.
#[derive(Default)]
pub struct Allowlist {
    /// By alert type (`*`: every type): label by network.
    by_type: HashMap<String, NetSet<String>>,
}

impl Allowlist {
    pub fn new(entries: Vec<(String, String, String)>) -> Self {
        let mut grouped: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (cidr, kind, label) in entries {
            grouped.entry(kind).or_default().push((cidr, label));
        }
        Allowlist {
            by_type: grouped
                .into_iter()
                .map(|(k, v)| (k, NetSet::new(v, "allowlist")))
                .collect(),
        }
    }

    /// The label of the entry that allows `source`'s alerts of type `kind`, if one does.
    pub fn allows(&self, kind: &str, source: &str) -> Option<&str> {
        let ip: IpAddr = source.parse().ok()?;
        [kind, "*"]
            .iter()
            .find_map(|k| self.by_type.get(*k)?.lookup(ip))
            .map(String::as_str)
    }
}

/// Sensitivity settings: (network or `*`, alert type or `*`, level). For an alert, the most
/// specific network holding its source wins, and within it an entry for the alert's type over
/// `*`; `*` as the network covers every source (also those that are not addresses, such as a
/// VPC). Without a match: medium.
pub struct Sensitivities {
    /// (network, or None for `*`; alert type; level), most specific first.
    entries: Vec<(Option<ipnet::IpNet>, String, Sensitivity)>,
}

impl Sensitivities {
    pub fn new(rows: Vec<(String, String, String)>) -> Self {
        let mut entries: Vec<_> = rows
            .into_iter()
            .filter_map(|(cidr, kind, level)| {
                let net = if cidr == "*" {
                    None
                } else {
                    Some(cidr.parse::<ipnet::IpNet>().ok()?)
                };
                Some((net, kind, Sensitivity::parse(&level)?))
            })
            .collect();
        // Longer prefixes first; a type before `*`.
        entries.sort_by_key(|(net, kind, _)| {
            (
                std::cmp::Reverse(net.map_or(-1, |n| i32::from(n.prefix_len()))),
                kind == "*",
            )
        });
        Sensitivities { entries }
    }

    pub fn level(&self, kind: &str, source: &str) -> Sensitivity {
        let ip: Option<IpAddr> = source.parse().ok();
        self.entries
            .iter()
            .find(|(net, k, _)| {
                (k == kind || k == "*")
                    && match net {
                        None => true,
                        Some(n) => ip.is_some_and(|ip| n.contains(&ip)),
                    }
            })
            .map_or(Sensitivity::Medium, |e| e.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitivity_takes_the_most_specific_network_then_the_type() {
        let s = Sensitivities::new(vec![
            ("*".into(), "*".into(), "low".into()),
            ("10.0.0.0/8".into(), "port_scan".into(), "high".into()),
            ("10.1.0.0/16".into(), "*".into(), "off".into()),
            ("10.1.0.0/16".into(), "brute_force".into(), "medium".into()),
            ("bad".into(), "*".into(), "high".into()),
        ]);
        assert_eq!(s.level("port_scan", "10.2.0.1"), Sensitivity::High);
        assert_eq!(s.level("address_sweep", "10.2.0.1"), Sensitivity::Low);
        assert_eq!(s.level("port_scan", "10.1.0.1"), Sensitivity::Off);
        assert_eq!(s.level("brute_force", "10.1.0.1"), Sensitivity::Medium);
        assert_eq!(s.level("sensor_coverage_gap", "vpc-1"), Sensitivity::Low);
        assert_eq!(
            Sensitivities::new(vec![]).level("port_scan", "10.0.0.1"),
            Sensitivity::Medium
        );
        assert!(!Sensitivity::Low.raises(1.0) && Sensitivity::Low.raises(2.0));
        assert!(Sensitivity::High.raises(0.5) && !Sensitivity::Medium.raises(0.5));
        assert!(!Sensitivity::Off.raises(f64::INFINITY));
        assert!(
            Sensitivity::Low.raises(f64::INFINITY),
            "watchlist hits stay on"
        );
    }

    #[test]
    fn the_allowlist_allows_per_alert_type_or_for_all() {
        let a = Allowlist::new(vec![
            (
                "10.0.0.0/24".into(),
                "port_scan".into(),
                "vuln scanner".into(),
            ),
            ("10.9.9.9".into(), "*".into(), "pentest box".into()),
        ]);
        assert_eq!(a.allows("port_scan", "10.0.0.7"), Some("vuln scanner"));
        assert_eq!(a.allows("brute_force", "10.0.0.7"), None);
        assert_eq!(a.allows("brute_force", "10.9.9.9"), Some("pentest box"));
        assert_eq!(a.allows("port_scan", "10.0.1.7"), None);
        assert_eq!(a.allows("port_scan", "not an address"), None);
    }
}
