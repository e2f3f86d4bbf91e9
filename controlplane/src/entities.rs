//! Entities: the organisation's own addresses (RFC 1918, CGNAT, ULA) as flows show them, with
//! what they serve and use, their peers, their hours of activity, and a role inferred from all
//! that with a confidence.
//!
//! Built from the 1-hour rollups, so it covers their retention (400 days by default) and lags
//! the raw flows by at most one maintenance pass (30 s).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    store::{Conversation, EntityContext},
    util::net::{internal, port_name},
};

/// A port an entity serves or uses, with its peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PortUse {
    pub port: String,
    pub peers: u64,
    pub flows: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Role {
    pub role: &'static str,
    /// 0 to 1.
    pub confidence: f64,
    /// Why, in words.
    pub evidence: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Peer {
    pub ip: String,
    pub flows: u64,
    pub bytes: u64,
    /// Who started the conversations: `in` (the peer), `out` (this entity), `both`, or
    /// `unknown` (only flows whose initiator the sensor had to guess).
    pub direction: &'static str,
}

/// An entity as the list shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entity {
    pub ip: String,
    /// A sensor's host name, when the address is on a sensor's interface.
    pub name: Option<String>,
    pub role: &'static str,
    pub role_confidence: f64,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub flows: u64,
    /// Bytes this entity sent and received, over both directions of its conversations.
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub peers: u64,
    /// Ports it serves (answered), the busiest first.
    pub serves: Vec<PortUse>,
    pub open_alerts: u64,
}

/// External peers of one country (`geo::country_code`: the user's MaxMind database if given,
/// else the RIR's assignment of their address block from the embedded iptocc data; no network
/// lookup).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Country {
    /// ISO 3166-1 alpha-2, or `unknown` (unassigned or reserved blocks).
    pub country: String,
    pub peers: u64,
    pub flows: u64,
    pub bytes: u64,
}

/// An entity in detail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntityDetail {
    #[serde(flatten)]
    pub entity: Entity,
    pub roles: Vec<Role>,
    pub uses: Vec<PortUse>,
    pub peers_top: Vec<Peer>,
    /// Its external peers by country, the most bytes first.
    pub countries: Vec<Country>,
    /// Flows per hour of the week (UTC), Monday 00:00 first: 168 values.
    pub hour_of_week: Vec<u64>,
}

/// What is known about one address.
#[derive(Default)]
struct Acc {
    first: i64,
    last: i64,
    flows: u64,
    bytes_out: u64,
    bytes_in: u64,
    peers: HashMap<IpAddr, (u64, u64, bool, bool)>,
    serves: BTreeMap<String, (HashSet<IpAddr>, u64, u64)>,
    uses: BTreeMap<String, (HashSet<IpAddr>, u64, u64)>,
}

fn ports(m: &BTreeMap<String, (HashSet<IpAddr>, u64, u64)>) -> Vec<PortUse> {
    let mut v: Vec<PortUse> = m
        .iter()
        .map(|(port, (peers, flows, bytes))| PortUse {
            port: port.clone(),
            peers: peers.len() as u64,
            flows: *flows,
            bytes: *bytes,
        })
        .collect();
    v.sort_by(|a, b| (b.peers, b.flows, &a.port).cmp(&(a.peers, a.flows, &b.port)));
    v
}

const WEB: &[&str] = &["80/tcp", "443/tcp", "8080/tcp", "8443/tcp", "443/udp"];
const DNS: &[&str] = &["53/udp", "53/tcp", "853/tcp"];
const DATABASE: &[&str] = &[
    "3306/tcp",
    "5432/tcp",
    "1433/tcp",
    "1521/tcp",
    "27017/tcp",
    "6379/tcp",
    "9042/tcp",
    "9200/tcp",
];
const MAIL: &[&str] = &[
    "25/tcp", "465/tcp", "587/tcp", "993/tcp", "995/tcp", "143/tcp", "110/tcp",
];
const DIRECTORY: &[&str] = &[
    "389/tcp", "636/tcp", "88/tcp", "88/udp", "3268/tcp", "3269/tcp", "464/tcp",
];

/// Roles that the served and used ports support, the likeliest first.
fn roles(a: &Acc, scanner: bool, k8s_node: bool) -> Vec<Role> {
    let mut out = Vec::new();
    let served_peers = |set: &[&str]| -> (u64, Vec<String>) {
        let mut n = HashSet::new();
        let mut names = Vec::new();
        for p in set {
            if let Some((peers, ..)) = a.serves.get(*p) {
                n.extend(peers.iter().copied());
                names.push((*p).to_string());
            }
        }
        (n.len() as u64, names)
    };
    // More peers, more confidence: 2 peers 0.6, 5 peers 0.75, 20 or more 0.95.
    let conf = |peers: u64| (0.5 + 0.15 * (peers as f64).log2().min(3.0)).min(0.95);
    for (role, set) in [
        ("web", WEB),
        ("dns", DNS),
        ("database", DATABASE),
        ("mail", MAIL),
        ("directory", DIRECTORY),
    ] {
        let (peers, names) = served_peers(set);
        if peers >= 2 {
            out.push(Role {
                role,
                confidence: conf(peers),
                evidence: format!("serves {} to {peers} peers", names.join(", ")),
            });
        }
    }
    let ssh_in = a.serves.get("22/tcp").map_or(0, |p| p.0.len() as u64);
    let ssh_out = a.uses.get("22/tcp").map_or(0, |p| p.0.len() as u64);
    if ssh_in >= 3 && ssh_out >= 3 {
        out.push(Role {
            role: "ssh_bastion",
            confidence: conf(ssh_in.min(ssh_out)),
            evidence: format!("SSH from {ssh_in} peers and to {ssh_out} hosts"),
        });
    }
    if k8s_node {
        out.push(Role {
            role: "kubernetes_node",
            confidence: 0.99,
            evidence: "a sensor on a Kubernetes node has this address".into(),
        });
    }
    if scanner {
        out.push(Role {
            role: "scanner",
            confidence: 0.9,
            evidence: "the source of an open scan alert".into(),
        });
    }
    if out.is_empty() && !a.uses.is_empty() {
        let served: u64 = a.serves.values().map(|p| p.0.len() as u64).sum();
        out.push(Role {
            role: "client",
            confidence: if served == 0 { 0.8 } else { 0.5 },
            evidence: format!(
                "starts conversations on {} port(s), serves {} port(s)",
                a.uses.len(),
                a.serves.len()
            ),
        });
    }
    out.sort_by(|x, y| y.confidence.total_cmp(&x.confidence));
    out
}

/// Each internal address's traffic, peers and ports. Every flow counts in the traffic and
/// the peers; only flows whose initiator is known (not guessed by the sensor: one direction
/// seen, or the first packet seen) teach which ports an address serves and uses, and who
/// started a conversation with a peer.
fn accumulate(conversations: &[Conversation]) -> HashMap<IpAddr, Acc> {
    let mut m: HashMap<IpAddr, Acc> = HashMap::new();
    for c in conversations {
        let known = c.flows.saturating_sub(c.guessed);
        let port = port_name(c.dst_port, c.protocol);
        for (me, peer, out) in [(c.src, c.dst, true), (c.dst, c.src, false)] {
            if !internal(&me) {
                continue;
            }
            let a = m.entry(me).or_insert_with(|| Acc {
                first: i64::MAX,
                last: i64::MIN,
                ..Default::default()
            });
            a.first = a.first.min(c.first_ns);
            a.last = a.last.max(c.last_ns);
            a.flows = a.flows.saturating_add(c.flows);
            let total = c.bytes.saturating_add(c.reverse_bytes);
            if out {
                a.bytes_out = a.bytes_out.saturating_add(c.bytes);
                a.bytes_in = a.bytes_in.saturating_add(c.reverse_bytes);
                if known > 0 {
                    let u = a.uses.entry(port.clone()).or_default();
                    u.0.insert(peer);
                    u.1 = u.1.saturating_add(known);
                    u.2 = u.2.saturating_add(total);
                }
            } else {
                a.bytes_in = a.bytes_in.saturating_add(c.bytes);
                a.bytes_out = a.bytes_out.saturating_add(c.reverse_bytes);
                if known > 0 && c.answered > 0 {
                    let s = a.serves.entry(port.clone()).or_default();
                    s.0.insert(peer);
                    s.1 = s.1.saturating_add(known);
                    s.2 = s.2.saturating_add(total);
                }
            }
            let p = a.peers.entry(peer).or_default();
            p.0 = p.0.saturating_add(c.flows);
            p.1 = p.1.saturating_add(total);
            if known > 0 {
                if out {
                    p.2 = true;
                } else {
                    p.3 = true;
                }
            }
        }
    }
    m
}

fn entity(ip: IpAddr, a: &Acc, ctx: &EntityContext) -> (Entity, Vec<Role>) {
    let host = ctx.hosts.get(&ip);
    let (open_alerts, scanner) = ctx
        .alerts
        .get(&ip.to_string())
        .copied()
        .unwrap_or((0, false));
    let roles = roles(a, scanner, host.is_some_and(|h| h.1));
    let mut serves = ports(&a.serves);
    serves.truncate(5);
    let e = Entity {
        ip: ip.to_string(),
        name: host.map(|h| h.0.clone()),
        role: roles.first().map_or("unknown", |r| r.role),
        role_confidence: roles.first().map_or(0.0, |r| r.confidence),
        first_seen_ns: a.first,
        last_seen_ns: a.last,
        flows: a.flows,
        bytes_out: a.bytes_out,
        bytes_in: a.bytes_in,
        peers: a.peers.len() as u64,
        serves,
        open_alerts,
    };
    (e, roles)
}

/// The entities of `conversations`, the busiest (bytes) first.
pub fn list(conversations: &[Conversation], ctx: &EntityContext) -> Vec<Entity> {
    let mut v: Vec<Entity> = accumulate(conversations)
        .iter()
        .map(|(ip, a)| entity(*ip, a, ctx).0)
        .collect();
    v.sort_by(|a, b| {
        let total = |e: &Entity| e.bytes_in.saturating_add(e.bytes_out);
        (total(b), &a.ip).cmp(&(total(a), &b.ip))
    });
    v
}

/// One entity in detail; `hourly` is (hour bucket start, flows) of its conversations.
pub fn detail(
    ip: IpAddr,
    conversations: &[Conversation],
    hourly: &[(i64, u64)],
    ctx: &EntityContext,
) -> Option<EntityDetail> {
    let m = accumulate(conversations);
    let a = m.get(&ip)?;
    let (entity, roles) = entity(ip, a, ctx);
    let mut by_country: BTreeMap<&str, Country> = BTreeMap::new();
    for (p, (flows, bytes, ..)) in &a.peers {
        if internal(p) || p.is_loopback() {
            continue;
        }
        let cc = crate::util::country::country_code(*p).unwrap_or("unknown");
        let c = by_country.entry(cc).or_insert_with(|| Country {
            country: cc.to_string(),
            peers: 0,
            flows: 0,
            bytes: 0,
        });
        c.peers += 1;
        c.flows = c.flows.saturating_add(*flows);
        c.bytes = c.bytes.saturating_add(*bytes);
    }
    let mut countries: Vec<Country> = by_country.into_values().collect();
    countries.sort_by(|x, y| (y.bytes, &x.country).cmp(&(x.bytes, &y.country)));
    let mut peers: Vec<Peer> = a
        .peers
        .iter()
        .map(|(p, (flows, bytes, out, inn))| Peer {
            ip: p.to_string(),
            flows: *flows,
            bytes: *bytes,
            direction: match (out, inn) {
                (true, true) => "both",
                (true, false) => "out",
                (false, true) => "in",
                (false, false) => "unknown",
            },
        })
        .collect();
    peers.sort_by(|x, y| (y.bytes, &x.ip).cmp(&(x.bytes, &y.ip)));
    peers.truncate(20);
    let mut how = vec![0u64; 168];
    for (t, flows) in hourly {
        // 1970-01-01 was a Thursday: day 3 of a week that starts on Monday.
        let hours = t.div_euclid(3_600_000_000_000);
        let i = (hours + 3 * 24).rem_euclid(168) as usize;
        how[i] = how[i].saturating_add(*flows);
    }
    let mut uses = ports(&a.uses);
    uses.truncate(20);
    let mut serves = ports(&a.serves);
    serves.truncate(20);
    Some(EntityDetail {
        entity: Entity { serves, ..entity },
        roles,
        uses,
        peers_top: peers,
        countries,
        hour_of_week: how,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(src: &str, dst: &str, port: u16, proto: u8, answered: bool) -> Conversation {
        Conversation {
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            dst_port: port,
            protocol: proto,
            flows: 2,
            packets: 10,
            bytes: 1000,
            reverse_packets: if answered { 8 } else { 1 },
            reverse_bytes: if answered { 5000 } else { 0 },
            answered: u64::from(answered) * 2,
            guessed: 0,
            first_ns: 1_000,
            last_ns: 2_000,
        }
    }

    #[test]
    fn roles_follow_served_ports_and_peers() {
        let mut c = Vec::new();
        for i in 1..=8 {
            c.push(conv(&format!("10.0.1.{i}"), "10.0.0.80", 443, 6, true));
            c.push(conv(&format!("10.0.1.{i}"), "10.0.0.53", 53, 17, true));
        }
        // Unanswered probes of port 5432 do not make a database.
        for i in 1..=5 {
            c.push(conv(&format!("10.0.2.{i}"), "10.0.0.80", 5432, 6, false));
        }
        // A bastion: SSH in from 3 admins, SSH out to 4 hosts.
        for i in 1..=3 {
            c.push(conv(&format!("10.0.3.{i}"), "10.0.0.22", 22, 6, true));
        }
        for i in 1..=4 {
            c.push(conv("10.0.0.22", &format!("10.0.4.{i}"), 22, 6, true));
        }
        // External clients of the web server: two in the US, one in Japan, one reserved.
        for ext in ["8.8.8.8", "8.8.4.4", "1.0.16.1", "192.0.2.1"] {
            c.push(conv(ext, "10.0.0.80", 443, 6, true));
        }
        let mut ctx = EntityContext::default();
        ctx.alerts.insert("10.0.2.1".into(), (1, true));
        ctx.hosts
            .insert("10.0.0.53".parse().expect("ip"), ("dns-1".into(), false));
        let l = list(&c, &ctx);
        let by = |ip: &str| l.iter().find(|e| e.ip == ip).expect(ip);
        assert_eq!(by("10.0.0.80").role, "web");
        assert!((by("10.0.0.80").role_confidence - 0.95).abs() < 1e-9);
        assert_eq!(by("10.0.0.80").serves[0].port, "443/tcp");
        assert_eq!(
            by("10.0.0.80").serves.len(),
            1,
            "unanswered 5432 is not served"
        );
        assert_eq!(by("10.0.0.53").role, "dns");
        assert_eq!(by("10.0.0.53").name.as_deref(), Some("dns-1"));
        assert_eq!(by("10.0.0.22").role, "ssh_bastion");
        assert_eq!(by("10.0.1.1").role, "client");
        assert_eq!(by("10.0.2.1").role, "scanner");
        assert_eq!(by("10.0.2.1").open_alerts, 1);
        let d = detail(
            "10.0.0.80".parse().expect("ip"),
            &c,
            // Monday 1970-01-05 00:00 UTC and Thursday 1970-01-01 01:00 UTC.
            &[(4 * 86_400_000_000_000, 3), (3_600_000_000_000, 4)],
            &ctx,
        )
        .expect("detail");
        assert_eq!(d.hour_of_week[0], 3);
        assert_eq!(d.hour_of_week[3 * 24 + 1], 4);
        assert_eq!(d.hour_of_week.iter().sum::<u64>(), 7);
        assert_eq!(d.entity.peers, 17);
        let cc: Vec<(&str, u64)> = d
            .countries
            .iter()
            .map(|c| (c.country.as_str(), c.peers))
            .collect();
        assert_eq!(cc, [("US", 2), ("JP", 1), ("unknown", 1)]);
        assert_eq!(d.peers_top[0].direction, "in");
        assert_eq!(d.entity.bytes_in, 12 * 1000 + 5 * 1000);
        assert_eq!(d.entity.bytes_out, 12 * 5000);
        assert!(
            detail("192.0.2.1".parse().expect("ip"), &c, &[], &ctx).is_none(),
            "not internal"
        );
    }

    #[test]
    fn guessed_initiators_teach_no_role_and_no_ports() {
        // A web server that really serves 8080 to 3 clients...
        let mut c: Vec<Conversation> = (1..=3)
            .map(|i| conv(&format!("10.0.1.{i}"), "10.0.0.80", 8080, 6, true))
            .collect();
        // ... and conversations whose initiator the sensor guessed: its own port 8080
        // towards 5 hosts' high ports (one direction seen), which read literally would make
        // it a client of 5 ports and those hosts servers.
        for i in 1..=5 {
            let mut g = conv("10.0.0.80", &format!("10.0.2.{i}"), 40000 + i, 6, true);
            g.guessed = g.flows;
            c.push(g);
        }
        let ctx = EntityContext::default();
        let d = detail("10.0.0.80".parse().expect("ip"), &c, &[], &ctx).expect("detail");
        assert_eq!(d.entity.role, "web");
        let serves: Vec<&str> = d.entity.serves.iter().map(|p| p.port.as_str()).collect();
        assert_eq!(serves, ["8080/tcp"]);
        assert!(d.uses.is_empty(), "{:?}", d.uses);
        // Their traffic and peers still count, with the direction unknown.
        assert_eq!(d.entity.peers, 8);
        assert_eq!(d.entity.flows, 16);
        let p = d
            .peers_top
            .iter()
            .find(|p| p.ip == "10.0.2.1")
            .expect("peer");
        assert_eq!(p.direction, "unknown");
        let l = list(&c, &ctx);
        let g = l.iter().find(|e| e.ip == "10.0.2.3").expect("guessed peer");
        assert!(g.serves.is_empty(), "{:?}", g.serves);
        // A conversation with some known flows teaches from those.
        c[3].guessed = 1;
        let d = detail("10.0.0.80".parse().expect("ip"), &c, &[], &ctx).expect("detail");
        assert_eq!(d.uses.len(), 1);
        assert_eq!(d.uses[0].flows, 1);
    }
}
