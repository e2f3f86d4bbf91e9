//! Detectors: what the control plane sees becomes alert observations (see `alerts`).
//!
//! The first detector turns the sensors' kernel scan events into `port_scan` and
//! `address_sweep` alerts. A sensor reports a source once per scan window, when it crosses the
//! distinct-port or distinct-host threshold, so these alerts are live from the first minute.

use picket_proto::v1::ScanEvent;
use serde_json::json;

use crate::{
    alerts::{AlertUpdate, Severity},
    api::rfc3339,
    store::ip_text,
};

fn port_scan_severity(distinct_ports: u32) -> Severity {
    match distinct_ports {
        1000.. => Severity::High,
        100.. => Severity::Medium,
        _ => Severity::Low,
    }
}

fn sweep_severity(distinct_hosts: u32) -> Severity {
    match distinct_hosts {
        256.. => Severity::High,
        64.. => Severity::Medium,
        _ => Severity::Low,
    }
}

/// The alert observations of one kernel scan event from `sensor`: a `port_scan` if it crossed
/// the port threshold, an `address_sweep` if it crossed the host threshold (both if both).
pub fn scan_event_alerts(sensor: &str, e: &ScanEvent) -> anyhow::Result<Vec<AlertUpdate>> {
    let src = ip_text(&e.src_ip)?;
    let dst = ip_text(&e.last_dst_ip)?;
    let probes: std::collections::BTreeMap<_, _> = e.probes.iter().collect();
    let time_ns = i64::try_from(e.end_unix_ns).unwrap_or(i64::MAX);
    let observation = json!({
        "kind": "kernel_scan_event",
        "sensor": sensor,
        "iface": e.iface,
        "probe": e.probe,
        "probes": probes,
        "distinct_ports": e.distinct_ports,
        "distinct_hosts": e.distinct_hosts,
        "probe_bytes": e.probe_bytes,
        "last_target": format!("{dst}:{}", e.last_dst_port),
        "start": rfc3339(i64::try_from(e.start_unix_ns).unwrap_or(i64::MAX)),
        "end": rfc3339(time_ns),
    });
    let mut out = Vec::new();
    let mut push = |kind, severity| {
        out.push(AlertUpdate {
            kind,
            severity,
            source: src.clone(),
            targets: vec![dst.clone()],
            time_ns,
            observation: observation.clone(),
            seen_by: format!("sensor:{sensor}"),
        });
    };
    if e.reason.iter().any(|r| r == "ports") {
        push("port_scan", port_scan_severity(e.distinct_ports));
    }
    if e.reason.iter().any(|r| r == "hosts") {
        push("address_sweep", sweep_severity(e.distinct_hosts));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &[&str], ports: u32, hosts: u32) -> ScanEvent {
        ScanEvent {
            iface: "eth0".into(),
            src_ip: vec![10, 0, 0, 9],
            distinct_ports: ports,
            distinct_hosts: hosts,
            probe: "syn".into(),
            probes: [("syn".to_string(), ports)].into(),
            probe_bytes: 44 * ports as u64,
            last_dst_ip: vec![10, 0, 0, 2],
            last_dst_port: 8080,
            reason: reason.iter().map(|r| r.to_string()).collect(),
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_001_000_000_000,
        }
    }

    #[test]
    fn the_crossed_threshold_names_the_alert() {
        let a = scan_event_alerts("lab", &event(&["ports"], 1001, 1)).expect("alerts");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (
                a[0].kind,
                a[0].severity,
                &a[0].source[..],
                &a[0].targets[..]
            ),
            (
                "port_scan",
                Severity::High,
                "10.0.0.9",
                &["10.0.0.2".to_string()][..]
            )
        );
        assert_eq!(a[0].time_ns, 1_700_000_001_000_000_000);
        assert_eq!(a[0].seen_by, "sensor:lab");
        assert_eq!(a[0].observation["last_target"], "10.0.0.2:8080");
        assert_eq!(a[0].observation["probes"]["syn"], 1001);
        let a = scan_event_alerts("lab", &event(&["hosts"], 1, 30)).expect("alerts");
        assert_eq!((a[0].kind, a[0].severity), ("address_sweep", Severity::Low));
        let a = scan_event_alerts("lab", &event(&["ports", "hosts"], 150, 70)).expect("alerts");
        let kinds: Vec<_> = a.iter().map(|u| (u.kind, u.severity)).collect();
        assert_eq!(
            kinds,
            [
                ("port_scan", Severity::Medium),
                ("address_sweep", Severity::Medium)
            ]
        );
    }

    #[test]
    fn a_malformed_address_is_an_error() {
        let mut e = event(&["ports"], 30, 1);
        e.src_ip = vec![1, 2, 3];
        assert!(scan_event_alerts("lab", &e).is_err());
    }
}
