//! A followed scan's report: the `scan_extent` observation and its alert updates.

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::{Value, json};

use super::{GROWTH, HOST_THRESHOLD, HostScan, PORT_THRESHOLD, SHOWN, SHOWN_RANGES, Scan};
use crate::{
    detect::common::{port_scan_severity, sweep_severity},
    model::AlertUpdate,
    util::time::rfc3339,
};

/// "1-1000, 8080" for each protocol's ports.
/// `ports` sorted, each once.
pub(super) fn port_ranges(ports: &[(u8, u16)]) -> Value {
    let mut by_proto: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
    for &(proto, port) in ports {
        let r = by_proto.entry(proto).or_default();
        match r.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(port) => last.1 = port,
            _ => r.push((port, port)),
        }
    }
    let mut out = serde_json::Map::new();
    for (proto, ranges) in by_proto {
        let name = proto_name(proto);
        let mut text: Vec<String> = ranges
            .iter()
            .take(SHOWN_RANGES)
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        if ranges.len() > SHOWN_RANGES {
            text.push(format!("and {} more ranges", ranges.len() - SHOWN_RANGES));
        }
        out.insert(name, Value::String(text.join(", ")));
    }
    Value::Object(out)
}

fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        p => p.to_string(),
    }
}

/// "22/tcp", or "echo/icmp".
fn port_name((proto, port): (u8, u16)) -> String {
    if matches!(proto, 1 | 58) {
        format!("echo/{}", proto_name(proto))
    } else {
        format!("{port}/{}", proto_name(proto))
    }
}

/// The updates of a source's extent, one per kind it was flagged for.
pub(super) fn report(src: IpAddr, s: &mut Scan, last: bool) -> Vec<AlertUpdate> {
    let ports = s.most_ports_on_a_host();
    let hosts = s.hosts.len();
    let mut all: Vec<(u8, u16)> = s
        .hosts
        .values()
        .flat_map(|h| h.ports.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    let distinct = all.len();
    let mut targets: Vec<(&IpAddr, &HostScan)> = s.hosts.iter().collect();
    targets.sort_by_key(|(ip, _)| **ip);
    // Hosts with open ports first, then the rest.
    targets.sort_by_key(|(_, h)| h.open.is_empty());
    let per_target: Vec<Value> = targets
        .iter()
        .take(SHOWN)
        .map(|(ip, h)| {
            json!({
                "host": ip.to_string(),
                "ports": h.ports.len(),
                "open": h.open.iter().take(SHOWN).map(|p| port_name(*p)).collect::<Vec<_>>(),
                "closed": h.closed,
                "silent": h.silent,
                "other": h.other,
            })
        })
        .collect();
    let open: Vec<String> = targets
        .iter()
        .filter(|(_, h)| !h.open.is_empty())
        .take(SHOWN)
        .map(|(ip, h)| {
            let ports: Vec<String> = h.open.iter().take(SHOWN).map(|p| port_name(*p)).collect();
            format!("{ip}: {}", ports.join(", "))
        })
        .collect();
    if s.growth.len() >= GROWTH {
        s.growth.pop();
    }
    s.growth.push((s.last_ns, ports, hosts));
    let growth: Vec<Value> = s
        .growth
        .iter()
        .map(|(t, p, h)| json!({"time": rfc3339(*t), "ports": p, "hosts": h}))
        .collect();
    let secs = (s.last_ns - s.first_ns) as f64 / 1e9;
    let packets = s.packets.saturating_add(s.summed);
    let mut observation = json!({
        "kind": "scan_extent",
        "seen_by": s.seen_by,
        "distinct_ports": distinct,
        "most_ports_on_a_host": ports,
        "distinct_hosts": hosts,
        "port_ranges": port_ranges(&all),
        "probes": s.probes,
        "first_probe": rfc3339(s.first_ns),
        "last_probe": rfc3339(s.last_ns),
        "probe_rate": if secs > 0.0 { (packets as f64 / secs).round() } else { packets as f64 },
        "packets": packets,
        "probes_summed": s.summed,
        "beyond_limits": s.beyond,
        "open_found": open,
        "open_total": s.open_total(),
        "closed_total": s.hosts.values().map(|h| h.closed).sum::<u64>(),
        "silent_total": s.hosts.values().map(|h| h.silent).sum::<u64>(),
        "other_total": s.hosts.values().map(|h| h.other).sum::<u64>(),
        "targets": per_target,
        "scan_over": last,
        "update": s.reports + 1,
        "growth": growth,
    });
    if let Some(rate) = s.sampling_rate {
        observation["sampling_rate"] = json!(rate);
    }
    // A port scan's targets are the hosts whose ports it scanned (the most scanned one at
    // least); a sweep's, every host. Each is given once, for an exact `targets_total`.
    let scanned = |h: &HostScan| h.ports.len() as f64 >= PORT_THRESHOLD || h.ports.len() == ports;
    let mut new_scanned: Vec<IpAddr> = s
        .hosts
        .iter()
        .filter(|(ip, h)| scanned(h) && !s.named_scanned.contains(*ip))
        .map(|(ip, _)| *ip)
        .collect();
    new_scanned.sort();
    let mut new_swept: Vec<IpAddr> = s
        .hosts
        .keys()
        .filter(|ip| !s.named_swept.contains(*ip))
        .copied()
        .collect();
    new_swept.sort();
    let kinds: Vec<String> = s.kinds.iter().cloned().collect();
    if kinds.iter().any(|k| k == "port_scan") {
        s.named_scanned.extend(new_scanned.iter().copied());
    }
    if kinds.iter().any(|k| k == "address_sweep") {
        s.named_swept.extend(new_swept.iter().copied());
    }
    let seen_by = s.seen_by.iter().next().cloned().unwrap_or_default();
    s.reported_ports = ports;
    s.reported_hosts = hosts;
    s.reported_open = s.open_total();
    // Growth since the scan was last reported over: it is reported over again once quiet.
    s.pending = !last;
    s.reports += 1;
    kinds
        .iter()
        .map(|kind| {
            let (kind, severity, strength, new): (&'static str, _, _, _) =
                if kind == "address_sweep" {
                    (
                        "address_sweep",
                        sweep_severity(hosts as u32),
                        (hosts as f64 / HOST_THRESHOLD).max(1.0),
                        &new_swept,
                    )
                } else {
                    (
                        "port_scan",
                        port_scan_severity(ports as u32),
                        (ports as f64 / PORT_THRESHOLD).max(1.0),
                        &new_scanned,
                    )
                };
            AlertUpdate {
                kind,
                severity,
                source: src.to_string(),
                targets: new.iter().map(IpAddr::to_string).collect(),
                time_ns: s.last_ns,
                observation: observation.clone(),
                seen_by: seen_by.clone(),
                strength,
            }
        })
        .collect()
}
