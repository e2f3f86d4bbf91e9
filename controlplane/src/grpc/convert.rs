//! The sensor protocol's messages into the domain's types. Everything that does not convert
//! (an address that is not 4 or 16 bytes, a port past 65535, a protocol or TCP flags past 255,
//! ids out of bounds) refuses the batch with a sentence naming the record; the sensor then
//! hears INVALID_ARGUMENT. Strings are moved, not copied: a batch is taken by value.

use std::net::IpAddr;

use picket_proto::v1 as pb;

use crate::{
    detect::partition,
    model::{
        Action, Flow, Heartbeat, Interface, LoginEvent, PodContext, ProbeRecord, Registration,
        ScanEvent, SensorBatch, SensorMeta, Source,
    },
    util::net::ip_addr,
};

/// Longest instance id a sensor may send.
pub const MAX_INSTANCE_ID: usize = 128;

/// A batch of `sensor` in the domain's terms, or why it is malformed.
pub fn batch(sensor: &str, b: pb::ExportBatch) -> Result<SensorBatch, String> {
    if b.instance_id.is_empty() || b.instance_id.len() > MAX_INSTANCE_ID {
        return Err(format!(
            "instance_id must be 1 to {MAX_INSTANCE_ID} characters"
        ));
    }
    if b.batch_id == 0 {
        return Err("batch_id must be at least 1".into());
    }
    let flows = b
        .flows
        .into_iter()
        .enumerate()
        .map(|(i, f)| flow(sensor, f).map_err(|e| format!("flow #{i}: {e}")))
        .collect::<Result<_, _>>()?;
    let scans = b
        .scans
        .into_iter()
        .enumerate()
        .map(|(i, s)| scan(s).map_err(|e| format!("scan event #{i}: {e}")))
        .collect::<Result<_, _>>()?;
    let probes = b
        .probes
        .into_iter()
        .enumerate()
        .map(|(i, p)| probe(p).map_err(|e| format!("probe record #{i}: {e}")))
        .collect::<Result<_, _>>()?;
    let logins = b
        .auth
        .into_iter()
        .enumerate()
        .map(|(i, a)| login(a).map_err(|e| format!("auth event #{i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(SensorBatch {
        sensor: sensor.to_string(),
        instance_id: b.instance_id,
        batch_id: b.batch_id,
        flows,
        scans,
        probes,
        logins,
    })
}

fn addr(b: &[u8]) -> Result<IpAddr, String> {
    ip_addr(b).map_err(|e| e.to_string())
}

fn port(what: &str, p: u32) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| format!("{what} {p} is not a port (0 to 65535)"))
}

fn byte(what: &str, v: u32) -> Result<u8, String> {
    u8::try_from(v).map_err(|_| format!("{what} {v} is out of range (0 to 255)"))
}

/// Unix nanoseconds as the store keeps them (signed): later than 2262 saturates.
fn ns(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn pod(p: Option<pb::PodContext>) -> Option<PodContext> {
    p.map(|p| PodContext {
        namespace: p.namespace,
        pod: p.pod,
        labels: p.labels.into_iter().collect(),
        node: p.node,
    })
}

/// A sensor's flow record in the common model. A sensor sees no firewall verdict: the action
/// is unknown (whether the other end answered is [`Flow::accepted`]'s to tell).
fn flow(sensor: &str, f: pb::FlowRecord) -> Result<Flow, String> {
    Ok(Flow {
        source: Source::Sensor,
        observer: sensor.to_string(),
        src_ip: addr(&f.src_ip)?,
        dst_ip: addr(&f.dst_ip)?,
        src_port: port("src_port", f.src_port)?,
        dst_port: port("dst_port", f.dst_port)?,
        protocol: byte("protocol", f.protocol)?,
        tcp_flags: byte("tcp_flags", f.tcp_flags)?,
        interface: f.iface,
        start_ns: ns(f.start_unix_ns),
        end_ns: ns(f.end_unix_ns),
        packets: f.packets,
        bytes: f.bytes,
        reverse_packets: f.reverse_packets,
        reverse_bytes: f.reverse_bytes,
        action: Action::Unknown,
        sampling_rate: 1.0,
        cloud: Default::default(),
        sensor: Some(Box::new(SensorMeta {
            reverse_tcp_flags: byte("reverse_tcp_flags", f.reverse_tcp_flags)?,
            observed: f.observed,
            initiator_by: f.initiator_by,
            partial: f.partial,
            end_reason: f.end_reason,
            src_pod: pod(f.src_pod),
            dst_pod: pod(f.dst_pod),
        })),
    })
}

fn scan(s: pb::ScanEvent) -> Result<ScanEvent, String> {
    Ok(ScanEvent {
        src_ip: addr(&s.src_ip)?,
        last_dst_ip: addr(&s.last_dst_ip)?,
        last_dst_port: port("last_dst_port", s.last_dst_port)?,
        iface: s.iface,
        distinct_ports: s.distinct_ports,
        distinct_hosts: s.distinct_hosts,
        probe: s.probe,
        probes: s.probes.into_iter().collect(),
        probe_bytes: s.probe_bytes,
        reason: s.reason,
        start_ns: ns(s.start_unix_ns),
        end_ns: ns(s.end_unix_ns),
        answered_contacts: s.answered_contacts,
        unanswered_contacts: s.unanswered_contacts,
        replied_contacts: s.replied_contacts,
    })
}

fn probe(p: pb::ProbeRecord) -> Result<ProbeRecord, String> {
    Ok(ProbeRecord {
        src_ip: addr(&p.src_ip)?,
        protocol: byte("protocol", p.protocol)?,
        iface: p.iface,
        probe: p.probe,
        packets: p.packets,
        bytes: p.bytes,
        start_ns: ns(p.start_unix_ns),
        end_ns: ns(p.end_unix_ns),
    })
}

fn login(a: pb::AuthEvent) -> Result<LoginEvent, String> {
    Ok(LoginEvent {
        src_ip: addr(&a.src_ip)?,
        src_port: port("src_port", a.src_port)?,
        time_ns: ns(a.time_unix_ns),
        service: a.service,
        outcome: a.outcome,
        user: a.user,
    })
}

/// A stored batch split by the sensor detectors' partitions ([`partition`]): (partition, the
/// batch's records of it) for each partition that has any, in partition order. Every record
/// goes to exactly one; each part keeps the batch's instance, id, time and host.
pub fn split(b: pb::ExportBatch) -> Result<Vec<(u32, pb::ExportBatch)>, String> {
    let mut parts: Vec<pb::ExportBatch> = (0..partition::PARTITIONS)
        .map(|_| pb::ExportBatch {
            instance_id: b.instance_id.clone(),
            batch_id: b.batch_id,
            created_unix_ns: b.created_unix_ns,
            host: b.host.clone(),
            ..Default::default()
        })
        .collect();
    for (i, f) in b.flows.into_iter().enumerate() {
        let p = addr(&f.src_ip)
            .and_then(|s| Ok(partition::of_flow(s, addr(&f.dst_ip)?)))
            .map_err(|e| format!("flow #{i}: {e}"))?;
        parts[p as usize].flows.push(f);
    }
    for (i, e) in b.scans.into_iter().enumerate() {
        let p = scan(e.clone())
            .map(|s| partition::of_scan(&s))
            .map_err(|e| format!("scan event #{i}: {e}"))?;
        parts[p as usize].scans.push(e);
    }
    for (i, r) in b.probes.into_iter().enumerate() {
        let p = addr(&r.src_ip)
            .map(partition::of_probe)
            .map_err(|e| format!("probe record #{i}: {e}"))?;
        parts[p as usize].probes.push(r);
    }
    for (i, a) in b.auth.into_iter().enumerate() {
        let p = login(a.clone())
            .map(|l| partition::of_login(&l))
            .map_err(|e| format!("auth event #{i}: {e}"))?;
        parts[p as usize].auth.push(a);
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .filter(|(_, b)| {
            !(b.flows.is_empty() && b.scans.is_empty() && b.probes.is_empty() && b.auth.is_empty())
        })
        .map(|(p, b)| (p as u32, b))
        .collect())
}

/// A registration, or why it is malformed.
pub fn registration(r: pb::RegisterRequest) -> Result<Registration, String> {
    if r.instance_id.is_empty() {
        return Err("instance_id is empty".into());
    }
    let host = r.host.unwrap_or_default();
    Ok(Registration {
        instance_id: r.instance_id,
        version: r.version,
        kernel: r.kernel,
        hostname: host.hostname,
        machine_id: host.machine_id,
        k8s_node: host.k8s_node,
        interfaces: host
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                index: i.index,
                mac: i.mac,
                addresses: i.addresses,
                xdp_mode: i.xdp_mode,
                tc_mode: i.tc_mode,
            })
            .collect(),
        replica: String::new(),
    })
}

pub fn heartbeat(h: pb::HeartbeatRequest) -> Heartbeat {
    Heartbeat {
        kernel_counters: h.kernel_counters.into_iter().collect(),
        agent_counters: h.agent_counters.into_iter().collect(),
        replica: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> pb::FlowRecord {
        pb::FlowRecord {
            iface: "eth0".into(),
            src_ip: vec![10, 0, 0, 1],
            dst_ip: vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            src_port: 40000,
            dst_port: 443,
            protocol: 6,
            packets: 3,
            bytes: 180,
            reverse_packets: 2,
            reverse_bytes: 120,
            tcp_flags: 0x1b,
            reverse_tcp_flags: 0x12,
            start_unix_ns: 1,
            end_unix_ns: u64::MAX,
            observed: "egress".into(),
            initiator_by: "syn".into(),
            partial: String::new(),
            end_reason: "end".into(),
            src_pod: Some(pb::PodContext {
                namespace: "web".into(),
                pod: "web-1".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                node: "n1".into(),
            }),
            dst_pod: None,
        }
    }

    fn export(flows: Vec<pb::FlowRecord>) -> pb::ExportBatch {
        pb::ExportBatch {
            instance_id: "i-1".into(),
            batch_id: 7,
            flows,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_converts_with_every_field() {
        let b = batch("web-1", export(vec![record()])).expect("valid");
        assert_eq!(
            (b.sensor.as_str(), b.instance_id.as_str(), b.batch_id),
            ("web-1", "i-1", 7)
        );
        let f = &b.flows[0];
        assert_eq!(
            (f.source, f.observer.as_str(), f.interface.as_str()),
            (Source::Sensor, "web-1", "eth0")
        );
        assert_eq!(f.src_ip.to_string(), "10.0.0.1");
        assert_eq!(f.dst_ip.to_string(), "fd00::2");
        assert_eq!(
            (f.src_port, f.dst_port, f.protocol, f.tcp_flags),
            (40000, 443, 6, 0x1b)
        );
        assert_eq!(
            (f.packets, f.bytes, f.reverse_packets, f.reverse_bytes),
            (3, 180, 2, 120)
        );
        assert_eq!(
            (f.start_ns, f.end_ns),
            (1, i64::MAX),
            "a time past 2262 saturates"
        );
        assert_eq!(f.action, Action::Unknown, "a sensor sees no verdict");
        assert!(f.accepted(), "a SYN-ACK came back");
        let m = f.sensor.as_deref().expect("sensor meta");
        assert_eq!(m.reverse_tcp_flags, 0x12);
        assert_eq!(
            (
                m.observed.as_str(),
                m.initiator_by.as_str(),
                m.end_reason.as_str()
            ),
            ("egress", "syn", "end")
        );
        let p = m.src_pod.as_ref().expect("pod");
        assert_eq!(
            (p.namespace.as_str(), p.pod.as_str(), p.node.as_str()),
            ("web", "web-1", "n1")
        );
        assert_eq!(p.labels["app"], "web");
        assert_eq!(m.dst_pod, None);
    }

    #[test]
    fn what_does_not_convert_refuses_the_batch_naming_the_record() {
        fn refused(f: impl FnOnce(&mut pb::ExportBatch)) -> String {
            let mut b = export(vec![record(), record()]);
            f(&mut b);
            batch("s", b).expect_err("refused")
        }
        assert_eq!(
            refused(|b| b.instance_id.clear()),
            "instance_id must be 1 to 128 characters"
        );
        assert_eq!(
            refused(|b| b.instance_id = "x".repeat(129)),
            "instance_id must be 1 to 128 characters"
        );
        assert_eq!(refused(|b| b.batch_id = 0), "batch_id must be at least 1");
        assert_eq!(
            refused(|b| b.flows[1].src_ip = vec![1, 2, 3]),
            "flow #1: an IP address must be 4 or 16 bytes, got 3"
        );
        assert_eq!(
            refused(|b| b.flows[0].dst_port = 65536),
            "flow #0: dst_port 65536 is not a port (0 to 65535)"
        );
        assert_eq!(
            refused(|b| b.flows[0].protocol = 256),
            "flow #0: protocol 256 is out of range (0 to 255)"
        );
        assert_eq!(
            refused(|b| b.flows[1].tcp_flags = u32::MAX),
            "flow #1: tcp_flags 4294967295 is out of range (0 to 255)"
        );
        let scan = pb::ScanEvent {
            src_ip: vec![10, 0, 0, 9],
            last_dst_ip: vec![1],
            ..Default::default()
        };
        assert_eq!(
            refused(|b| b.scans = vec![scan]),
            "scan event #0: an IP address must be 4 or 16 bytes, got 1"
        );
        let login = pb::AuthEvent {
            src_ip: vec![1],
            ..Default::default()
        };
        assert_eq!(
            refused(|b| b.auth = vec![login]),
            "auth event #0: an IP address must be 4 or 16 bytes, got 1"
        );
        let probe = pb::ProbeRecord {
            src_ip: vec![10, 0, 0, 9],
            protocol: 300,
            ..Default::default()
        };
        assert_eq!(
            refused(|b| b.probes = vec![probe]),
            "probe record #0: protocol 300 is out of range (0 to 255)"
        );
    }

    #[test]
    fn a_batch_splits_by_partition_with_every_record_once() {
        let mut b = export(Vec::new());
        b.created_unix_ns = 99;
        // 200 flows between 20 internal servers and external clients, both ways.
        for i in 0..200u8 {
            let mut f = record();
            let server = vec![10, 0, 1, i % 20];
            let client = vec![198, 51, 100, i];
            if i % 2 == 0 {
                (f.src_ip, f.dst_ip) = (client, server);
            } else {
                (f.src_ip, f.dst_ip) = (server, client);
            }
            f.src_port = u32::from(i);
            b.flows.push(f);
        }
        b.scans = (0..10u8)
            .map(|i| pb::ScanEvent {
                src_ip: vec![203, 0, 113, i],
                last_dst_ip: vec![10, 0, 1, 1],
                reason: vec!["ports".into()],
                probe: "syn".into(),
                ..Default::default()
            })
            .collect();
        b.auth = (0..10u8)
            .map(|i| pb::AuthEvent {
                src_ip: vec![203, 0, 113, i],
                ..Default::default()
            })
            .collect();
        b.probes = vec![pb::ProbeRecord {
            src_ip: vec![203, 0, 113, 1],
            ..Default::default()
        }];
        let parts = split(b.clone()).expect("valid");
        assert!(parts.len() > 2, "20 servers spread over partitions");
        let mut flows = 0;
        for (p, part) in &parts {
            assert_eq!((part.instance_id.as_str(), part.batch_id), ("i-1", 7));
            assert_eq!(part.created_unix_ns, 99);
            for f in &part.flows {
                let server = if f.src_ip[0] == 10 {
                    &f.src_ip
                } else {
                    &f.dst_ip
                };
                // Every flow of one server in one partition, whichever way it went.
                assert_eq!(
                    partition::of_flow(addr(server).unwrap(), addr(server).unwrap()),
                    *p
                );
            }
            flows += part.flows.len();
        }
        assert_eq!(flows, 200);
        // Decoys of one scan (ten sources, one target) stay together.
        let with_scans: Vec<_> = parts.iter().filter(|(_, b)| !b.scans.is_empty()).collect();
        assert_eq!(with_scans.len(), 1);
        assert_eq!(with_scans[0].1.scans.len(), 10);
        assert_eq!(parts.iter().map(|(_, b)| b.auth.len()).sum::<usize>(), 10);
        assert_eq!(parts.iter().map(|(_, b)| b.probes.len()).sum::<usize>(), 1);
        // What does not convert is refused as `batch` refuses it.
        let mut bad = b;
        bad.flows[3].dst_ip = vec![1, 2];
        assert_eq!(
            split(bad).unwrap_err(),
            "flow #3: an IP address must be 4 or 16 bytes, got 2"
        );
    }
}
