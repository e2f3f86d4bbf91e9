//! Kernel scan events from sensors become `port_scan` and `address_sweep` findings. A sensor
//! reports a source once per scan window, when it crosses the distinct-port or distinct-host
//! threshold, so these alerts are live from the first minute. Findings go through decoy
//! grouping ([`super::decoys`]) like the flow-log fan-out's.

use serde_json::json;
use tracing::info;

use super::{
    Detector, Input, Output,
    common::{TCP, UDP, port_scan_severity, sweep_severity},
    decoys::Finding,
};
use crate::{
    model::{AlertUpdate, ScanEvent},
    util::time::rfc3339,
};

/// The alert observations of one kernel scan event from `sensor`: a `port_scan` if it crossed
/// the port threshold, an `address_sweep` if it crossed the host threshold (both if both).
pub fn scan_event_alerts(sensor: &str, e: &ScanEvent) -> Vec<AlertUpdate> {
    scan_event_findings(sensor, e)
        .into_iter()
        .map(|f| f.update)
        .collect()
}

/// [`scan_event_alerts`] as findings for decoy grouping ([`super::decoys::DecoyGroups`]).
pub fn scan_event_findings(sensor: &str, e: &ScanEvent) -> Vec<Finding> {
    let src = e.src_ip.to_string();
    let dst = e.last_dst_ip.to_string();
    // Failures are the evidence: a fan-out whose contacts were mostly answered is a busy client
    // (a metrics scraper, a crawler), not a scanner. Events without the agent's counts (older
    // agents) are taken as they are.
    if e.answered_contacts > e.unanswered_contacts {
        info!(
            sensor,
            source = src,
            answered = e.answered_contacts,
            unanswered = e.unanswered_contacts,
            "a fan-out whose contacts were mostly answered: not a scan"
        );
        return Vec::new();
    }
    let time_ns = e.end_ns;
    let observation = json!({
        "kind": "kernel_scan_event",
        "sensor": sensor,
        "iface": e.iface,
        "probe": e.probe,
        "probes": e.probes,
        "distinct_ports": e.distinct_ports,
        "distinct_hosts": e.distinct_hosts,
        "probe_bytes": e.probe_bytes,
        "answered_contacts": e.answered_contacts,
        "unanswered_contacts": e.unanswered_contacts,
        "replied_contacts": e.replied_contacts,
        "last_target": format!("{dst}:{}", e.last_dst_port),
        "start": rfc3339(e.start_ns),
        "end": rfc3339(time_ns),
    });
    let mut out = Vec::new();
    let mut push = |kind, severity, target| {
        out.push(Finding {
            update: AlertUpdate {
                kind,
                severity,
                source: src.clone(),
                targets: vec![dst.clone()],
                time_ns,
                observation: observation.clone(),
                seen_by: format!("sensor:{sensor}"),
                // The kernel reports at its threshold.
                strength: 1.0,
            },
            target,
            replied: e.replied_contacts,
        });
    };
    if e.reason.iter().any(|r| r == "ports") {
        push(
            "port_scan",
            port_scan_severity(e.distinct_ports),
            port_scan_target(e),
        );
    }
    if e.reason.iter().any(|r| r == "hosts") {
        push(
            "address_sweep",
            sweep_severity(e.distinct_hosts),
            sweep_target(e),
        );
    }
    out
}

/// What a port scan event was against, for decoy grouping. Decoys send the same probes: a SYN
/// scan and a UDP scan of one host are two scans.
fn port_scan_target(e: &ScanEvent) -> String {
    format!("port_scan {} {}", e.last_dst_ip, e.probe)
}

/// What a sweep event was against: the protocol and port swept.
fn sweep_target(e: &ScanEvent) -> String {
    format!(
        "address_sweep {}/{}",
        match e.probe.as_str() {
            "udp" => UDP,
            "icmp_echo" => 1,
            _ => TCP,
        },
        e.last_dst_port
    )
}

/// What decoy grouping groups an event under (the port scan's when it crossed both
/// thresholds): the key of its cluster-mode partition ([`super::partition`]).
pub fn group_target(e: &ScanEvent) -> String {
    if e.reason.iter().any(|r| r == "ports") || !e.reason.iter().any(|r| r == "hosts") {
        port_scan_target(e)
    } else {
        sweep_target(e)
    }
}

/// The kernel scan events of a sensor batch (see the module's documentation).
pub struct KernelScan;

impl Detector for KernelScan {
    fn name(&self) -> &'static str {
        "kernel_scan"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        if let Some(b) = input.batch {
            for e in &b.scans {
                out.findings.extend(scan_event_findings(&b.sensor, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Severity;

    fn event(reason: &[&str], ports: u32, hosts: u32) -> ScanEvent {
        ScanEvent {
            iface: "eth0".into(),
            src_ip: [10, 0, 0, 9].into(),
            distinct_ports: ports,
            distinct_hosts: hosts,
            probe: "syn".into(),
            probes: [("syn".to_string(), ports)].into(),
            probe_bytes: 44 * ports as u64,
            last_dst_ip: [10, 0, 0, 2].into(),
            last_dst_port: 8080,
            reason: reason.iter().map(|r| r.to_string()).collect(),
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_001_000_000_000,
            answered_contacts: 0,
            unanswered_contacts: 0,
            replied_contacts: 0,
        }
    }

    #[test]
    fn the_crossed_threshold_names_the_alert() {
        let a = scan_event_alerts("lab", &event(&["ports"], 1001, 1));
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
        let a = scan_event_alerts("lab", &event(&["hosts"], 1, 30));
        assert_eq!((a[0].kind, a[0].severity), ("address_sweep", Severity::Low));
        let a = scan_event_alerts("lab", &event(&["ports", "hosts"], 150, 70));
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
    fn a_fan_out_mostly_answered_is_not_a_scan() {
        let answered = ScanEvent {
            answered_contacts: 30,
            unanswered_contacts: 2,
            ..event(&["hosts"], 1, 30)
        };
        assert_eq!(scan_event_alerts("lab", &answered), vec![]);
        let refused = ScanEvent {
            answered_contacts: 1,
            unanswered_contacts: 199,
            ..event(&["ports"], 200, 1)
        };
        assert_eq!(scan_event_alerts("lab", &refused).len(), 1);
    }
}
