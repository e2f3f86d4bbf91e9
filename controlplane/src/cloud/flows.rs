//! Cloud flow-log records in the common flow model: what each provider's fields become, the
//! rest kept in the flow's extras.

use crate::model::{Absent, Action, CloudMeta, Flow, Source};

use super::{aws, azure, gcp};

/// The common fields a record did not write (the flow holds 0 there), also listed in its
/// extras (`absent`), which is how the stores keep them.
fn mark_absent(
    extra: &mut serde_json::Map<String, serde_json::Value>,
    fields: &[(Absent, bool)],
) -> Absent {
    let absent = fields
        .iter()
        .fold(Absent::default(), |a, &(f, missing)| a.with(f, missing));
    if !absent.is_empty() {
        extra.insert(
            "absent".into(),
            absent.names().map(serde_json::Value::from).collect(),
        );
    }
    absent
}

/// An AWS record in the flow model. A record without a start takes its end, one without an
/// end its start, and one without both `delivered_ns` (its file's delivery), marked in the
/// extras (`time_from: "delivery"`): never 1970.
pub fn aws_flow(r: &aws::Record<'_>, delivered_ns: i64) -> Flow {
    let mut extra = serde_json::Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            extra.insert(k.into(), v.into());
        }
    };
    put("type", r.traffic_type);
    put("pkt_src_aws_service", r.pkt_src_aws_service);
    put("pkt_dst_aws_service", r.pkt_dst_aws_service);
    put("reject_reason", r.reject_reason);
    put("resource_type", r.resource_type);
    put("tgw_id", r.tgw_id);
    put("tgw_attachment_id", r.tgw_attachment_id);
    if let Some(p) = r.traffic_path {
        extra.insert("traffic_path".into(), p.into());
    }
    if let Some(p) = r.packets_lost {
        extra.insert("packets_lost".into(), p.into());
    }
    // Everything else the record carries, under the provider's field name (snake case): the
    // lost-packet causes as numbers (checked by `parse`), the rest as written.
    for &(k, v) in &r.verbatim {
        let value = if k.starts_with("packets_lost_") {
            v.parse::<u64>().map_or_else(|_| v.into(), Into::into)
        } else {
            v.into()
        };
        extra.insert(k.into(), value);
    }
    let absent = mark_absent(
        &mut extra,
        &[
            (Absent::PROTOCOL, r.protocol.is_none()),
            (Absent::SRC_PORT, r.src_port.is_none()),
            (Absent::DST_PORT, r.dst_port.is_none()),
            (Absent::PACKETS, r.packets.is_none()),
            (Absent::BYTES, r.bytes.is_none()),
        ],
    );
    // A transit-gateway record has no vpc-id or subnet-id of its own: the source side's.
    let of = |key: &str| {
        r.verbatim
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    let tgw = r.tgw_id.is_some() || r.resource_type == Some("TransitGateway");
    let ms = |t: u64| (t.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64;
    let (start_ns, end_ns) = match (r.start_ms, r.end_ms) {
        (Some(s), Some(e)) => (ms(s), ms(e)),
        (Some(t), None) | (None, Some(t)) => (ms(t), ms(t)),
        (None, None) => {
            extra.insert("time_from".into(), "delivery".into());
            (delivered_ns, delivered_ns)
        }
    };
    Flow {
        source: Source::Aws,
        observer: r.account_id.unwrap_or("aws").to_string(),
        interface: r
            .interface_id
            .or(r.tgw_attachment_id)
            .unwrap_or("")
            .to_string(),
        start_ns,
        end_ns,
        // Both present: `parse` rejects an OK record without them.
        src_ip: r.src_addr.expect("checked by parse"),
        dst_ip: r.dst_addr.expect("checked by parse"),
        src_port: r.src_port.unwrap_or(0),
        dst_port: r.dst_port.unwrap_or(0),
        protocol: r.protocol.unwrap_or(0),
        packets: r.packets.unwrap_or(0),
        bytes: r.bytes.unwrap_or(0),
        reverse_packets: 0,
        reverse_bytes: 0,
        tcp_flags: r.tcp_flags.unwrap_or(0),
        action: match r.action {
            Some("ACCEPT") => Action::Accept,
            Some("REJECT") => Action::Reject,
            _ => Action::Unknown,
        },
        sampling_rate: 1.0,
        cloud: CloudMeta {
            vpc: r
                .vpc_id
                .map(str::to_string)
                .or_else(|| tgw.then(|| of("tgw_src_vpc_id")).flatten()),
            subnet: r
                .subnet_id
                .map(str::to_string)
                .or_else(|| tgw.then(|| of("tgw_src_subnet_id")).flatten()),
            instance: r.instance_id.map(str::to_string),
            region: r.region.map(str::to_string),
            zone: r
                .az_id
                .map(str::to_string)
                .or_else(|| tgw.then(|| of("tgw_src_az_id")).flatten()),
            pkt_src_ip: r.pkt_src_addr,
            pkt_dst_ip: r.pkt_dst_addr,
            direction: r.flow_direction.map(str::to_string),
            extra,
            absent,
        },
        sensor: None,
    }
}

/// GCP's default sampling rate for VPC Flow Logs (a subnet setting, not in the records).
pub const GCP_DEFAULT_SAMPLING: f64 = 0.5;

/// A GCP record in the flow model: the reporting side's instance and VPC are the observation
/// point.
pub fn gcp_flow(r: &gcp::Record<'_>, sampling_rate: f64) -> Flow {
    let p = &r.payload;
    let dest_side = p.reporter.as_deref().is_some_and(|s| s.starts_with("DEST"));
    let (inst, vpc) = if dest_side {
        (p.dest_instance.as_ref(), p.dest_vpc.as_ref())
    } else {
        (p.src_instance.as_ref(), p.src_vpc.as_ref())
    };
    let s = |v: Option<&std::borrow::Cow<'_, str>>| v.map(|c| c.to_string());
    let mut extra = serde_json::Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            extra.insert(k.into(), v.into());
        }
    };
    put("reporter", s(p.reporter.as_ref()));
    put(
        "src_country",
        s(p.src_location.as_ref().and_then(|l| l.country.as_ref())),
    );
    put(
        "dest_country",
        s(p.dest_location.as_ref().and_then(|l| l.country.as_ref())),
    );
    put(
        "src_vm",
        s(p.src_instance.as_ref().and_then(|i| i.vm_name.as_ref())),
    );
    put(
        "dest_vm",
        s(p.dest_instance.as_ref().and_then(|i| i.vm_name.as_ref())),
    );
    if let Some(rtt) = p.rtt_msec {
        extra.insert("rtt_msec".into(), rtt.into());
    }
    if r.time_from_entry {
        extra.insert("time_from".into(), "entry".into());
    }
    let c = p.connection.as_ref();
    let absent = mark_absent(
        &mut extra,
        &[
            (Absent::PROTOCOL, c.is_none_or(|c| c.protocol.is_none())),
            (Absent::SRC_PORT, c.is_none_or(|c| c.src_port.is_none())),
            (Absent::DST_PORT, c.is_none_or(|c| c.dest_port.is_none())),
            (Absent::PACKETS, p.packets_sent.is_none()),
            (Absent::BYTES, p.bytes_sent.is_none()),
        ],
    );
    gcp_details(p, &mut extra);
    let instance = s(inst.and_then(|i| i.vm_name.as_ref()));
    let subnet = s(vpc.and_then(|v| v.subnetwork_name.as_ref()));
    Flow {
        source: Source::Gcp,
        observer: s(r.project.as_ref()).unwrap_or_else(|| "gcp".into()),
        interface: instance.clone().or(subnet.clone()).unwrap_or_default(),
        start_ns: r.start_ns,
        end_ns: r.end_ns,
        src_ip: r.src_ip,
        dst_ip: r.dst_ip,
        src_port: r.src_port,
        dst_port: r.dst_port,
        protocol: r.protocol,
        packets: r.packets,
        bytes: r.bytes,
        reverse_packets: 0,
        reverse_bytes: 0,
        tcp_flags: 0,
        action: Action::Unknown,
        sampling_rate,
        cloud: CloudMeta {
            vpc: s(vpc.and_then(|v| v.vpc_name.as_ref())),
            subnet,
            instance,
            region: s(inst.and_then(|i| i.region.as_ref())),
            zone: s(inst.and_then(|i| i.zone.as_ref())),
            pkt_src_ip: None,
            pkt_dst_ip: None,
            direction: Some(if dest_side { "ingress" } else { "egress" }.into()),
            extra,
            absent,
        },
        sensor: None,
    }
}

/// A GCP payload's details in the extras: each side's instance, VPC, location and Google
/// service, under the provider's names, each part only when written (the reporting side's are
/// also the columns); then every other field as written.
fn gcp_details(p: &gcp::Payload<'_>, extra: &mut serde_json::Map<String, serde_json::Value>) {
    let sides = [
        (
            "src",
            &p.src_location,
            &p.src_google_service,
            &p.src_instance,
            &p.src_vpc,
        ),
        (
            "dest",
            &p.dest_location,
            &p.dest_google_service,
            &p.dest_instance,
            &p.dest_vpc,
        ),
    ];
    for (side, location, service, instance, vpc) in sides {
        let mut obj = |key: &str, parts: &[(&str, Option<serde_json::Value>)]| {
            let o: serde_json::Map<String, serde_json::Value> = parts
                .iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
                .collect();
            if !o.is_empty() {
                extra.insert(format!("{side}_{key}"), o.into());
            }
        };
        let text = |v: Option<&std::borrow::Cow<'_, str>>| v.map(|c| c.to_string().into());
        if let Some(l) = location {
            obj(
                "location",
                &[
                    ("continent", text(l.continent.as_ref())),
                    ("country", text(l.country.as_ref())),
                    ("region", text(l.region.as_ref())),
                    ("city", text(l.city.as_ref())),
                    ("asn", l.asn.map(Into::into)),
                ],
            );
        }
        if let Some(g) = service {
            obj(
                "google_service",
                &[
                    ("type", text(g.kind.as_ref())),
                    ("service_name", text(g.service_name.as_ref())),
                    ("connectivity", text(g.connectivity.as_ref())),
                ],
            );
        }
        if let Some(i) = instance {
            let group = i.managed_instance_group.as_ref().map(|m| {
                [
                    ("name", m.name.as_ref()),
                    ("region", m.region.as_ref()),
                    ("zone", m.zone.as_ref()),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string().into())))
                .collect::<serde_json::Map<String, serde_json::Value>>()
                .into()
            });
            obj(
                "instance",
                &[
                    ("project_id", text(i.project_id.as_ref())),
                    ("vm_name", text(i.vm_name.as_ref())),
                    ("region", text(i.region.as_ref())),
                    ("zone", text(i.zone.as_ref())),
                    ("managed_instance_group", group),
                ],
            );
        }
        if let Some(v) = vpc {
            obj(
                "vpc",
                &[
                    ("project_id", text(v.project_id.as_ref())),
                    ("vpc_name", text(v.vpc_name.as_ref())),
                    ("subnetwork_name", text(v.subnetwork_name.as_ref())),
                ],
            );
        }
    }
    // Every other field, as written: gateways, GKE details, `round_trip_time`... (The
    // flow's own keys above come first.)
    for (k, raw) in &p.other {
        if !extra.contains_key(k.as_ref()) {
            let v = serde_json::from_str(raw.get())
                .unwrap_or_else(|_| serde_json::Value::String(raw.get().to_string()));
            extra.insert(k.to_string(), v);
        }
    }
}

/// Where an Azure flow tuple was logged: its record's subscription, interface and network, and
/// the rule that decided it.
pub struct Where<'a> {
    pub observer: &'a str,
    /// The interface's MAC address.
    pub interface: &'a str,
    pub vpc: Option<&'a str>,
    pub subnet: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub nsg: Option<&'a str>,
    /// A VNet flow log's `aclID`: the network security group (or admin rule set) that decided
    /// the flow.
    pub acl: Option<&'a str>,
    /// A VNet flow log's `targetResourceID`: the network, subnet or interface it watches.
    pub target: Option<&'a str>,
}

/// An Azure flow tuple in the flow model.
pub fn flow(at: &Where<'_>, t: &azure::Tuple) -> Flow {
    let mut extra = serde_json::Map::new();
    if let Some(r) = at.rule {
        extra.insert("rule".into(), r.into());
    }
    if let Some(n) = at.nsg {
        extra.insert("nsg".into(), n.into());
    }
    if let Some(a) = at.acl {
        extra.insert("acl_id".into(), a.into());
    }
    if let Some(t) = at.target {
        extra.insert("target_resource_id".into(), t.into());
    }
    let unknown = !t.counts_known;
    let absent = mark_absent(
        &mut extra,
        &[
            (Absent::PACKETS, unknown),
            (Absent::BYTES, unknown),
            (Absent::REVERSE_PACKETS, unknown),
            (Absent::REVERSE_BYTES, unknown),
        ],
    );
    // Version 1 tuples carry no state: none is given.
    if let Some(state) = t.state {
        extra.insert("state".into(), state.to_string().into());
    }
    if let Some(e) = &t.encryption {
        extra.insert("encryption".into(), e.clone().into());
    }
    let ns = (t.time_ms.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64;
    Flow {
        source: Source::Azure,
        observer: at.observer.to_string(),
        interface: at.interface.to_string(),
        start_ns: ns,
        end_ns: ns,
        src_ip: t.src_ip,
        dst_ip: t.dst_ip,
        src_port: t.src_port,
        dst_port: t.dst_port,
        protocol: t.protocol,
        packets: t.packets,
        bytes: t.bytes,
        reverse_packets: t.reverse_packets,
        reverse_bytes: t.reverse_bytes,
        tcp_flags: 0,
        action: if t.allowed {
            Action::Accept
        } else {
            Action::Reject
        },
        sampling_rate: 1.0,
        cloud: CloudMeta {
            vpc: at.vpc.map(str::to_string),
            subnet: at.subnet.map(str::to_string),
            direction: Some(if t.inbound { "ingress" } else { "egress" }.into()),
            extra,
            absent,
            ..CloudMeta::default()
        },
        sensor: None,
    }
}
