//! What every state backend stores the same way, whatever its SQL: an alert's lists as one JSON
//! body, a registration's host as JSON, the addresses of a sensor's interfaces, the rules of a
//! triage change, and the entity views' context from those rows; and what every flow backend
//! keeps alike: a pod's identity as JSON, a flow's extras as the API shows them, counters as
//! signed numbers. The backends only move these in and out of their tables.

use std::net::IpAddr;

use crate::{
    model::{Alert, Change, PodContext, Registration},
    store::EntityContext,
};

/// The lists of an alert, stored as one JSON column.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct AlertBody {
    targets: Vec<String>,
    targets_total: u64,
    observations: Vec<serde_json::Value>,
    observations_total: u64,
    sources: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// An alert's columns besides its body.
pub(crate) struct AlertHead {
    pub id: i64,
    pub kind: String,
    pub severity: String,
    pub status: String,
    pub source: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub assignee: Option<String>,
    pub snoozed_until: Option<i64>,
}

/// The body column of `a`.
pub(crate) fn alert_body(a: &Alert) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&AlertBody {
        targets: a.targets.clone(),
        targets_total: a.targets_total,
        observations: a.observations.clone(),
        observations_total: a.observations_total,
        sources: a.sources.clone(),
        tags: a.tags.clone(),
    })?)
}

/// An alert from its columns and its body.
pub(crate) fn alert(h: AlertHead, body: &str) -> serde_json::Result<Alert> {
    let b: AlertBody = serde_json::from_str(body)?;
    Ok(Alert {
        id: h.id,
        kind: h.kind,
        severity: h.severity,
        status: h.status,
        source: h.source,
        first_seen: h.first_seen,
        last_seen: h.last_seen,
        targets: b.targets,
        targets_total: b.targets_total,
        observations: b.observations,
        observations_total: b.observations_total,
        sources: b.sources,
        tags: b.tags,
        assignee: h.assignee,
        snoozed_until: h.snoozed_until,
    })
}

/// A registration's host (interfaces with their addresses and attach modes, the Kubernetes
/// node) as the JSON the sensors table keeps.
pub(crate) fn host_json(req: &Registration) -> String {
    serde_json::json!({
        "hostname": req.hostname,
        "machine_id": req.machine_id,
        "k8s_node": req.k8s_node,
        "interfaces": req.interfaces.iter().map(|i| serde_json::json!({
            "name": i.name, "index": i.index, "mac": i.mac, "addresses": i.addresses,
            "xdp_mode": i.xdp_mode, "tc_mode": i.tc_mode,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The addresses of a registration's interfaces (`host_json`: "10.0.0.5/24" each).
pub(crate) fn interface_addresses(host: &serde_json::Value) -> impl Iterator<Item = IpAddr> + '_ {
    host["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str()?.split('/').next()?.parse().ok())
}

/// Adds a sensor's interface addresses to the entity views' context, labelled by its host name
/// (or its name) and whether it is a Kubernetes node.
pub(crate) fn add_sensor_host(
    ctx: &mut EntityContext,
    name: String,
    hostname: Option<String>,
    host_json: &str,
) {
    let h: serde_json::Value = serde_json::from_str(host_json).unwrap_or_default();
    let k8s = h["k8s_node"].as_str().is_some_and(|n| !n.is_empty());
    let label = hostname.filter(|h| !h.is_empty()).unwrap_or(name);
    for ip in interface_addresses(&h) {
        ctx.hosts.insert(ip, (label.clone(), k8s));
    }
}

/// Applies triage `changes` to `a` at `now_ns`; returns the timeline's entries (action,
/// detail) in order. Fails, changing nothing stored, on a change that is not allowed.
pub(crate) fn apply_changes(
    a: &mut Alert,
    changes: &[Change],
    now_ns: i64,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut history = Vec::new();
    for ch in changes {
        let entry = match ch {
            Change::Status(s) => {
                anyhow::ensure!(
                    s == "open" || s == "closed",
                    "status must be open or closed (snooze with snooze_until)"
                );
                a.status = s.clone();
                a.snoozed_until = None;
                ("status", s.clone())
            }
            Change::Snooze(until) => {
                anyhow::ensure!(*until > now_ns, "snooze_until must be in the future");
                a.status = "snoozed".into();
                a.snoozed_until = Some(*until);
                ("snooze", crate::util::time::rfc3339_text(*until))
            }
            Change::Assign(who) => {
                a.assignee = who.clone();
                ("assign", who.clone().unwrap_or_default())
            }
            Change::Tags(tags) => {
                let mut t = tags.clone();
                t.sort();
                t.dedup();
                a.tags = t;
                ("tags", a.tags.join(", "))
            }
            Change::Comment(text) => ("comment", text.clone()),
        };
        history.push(entry);
    }
    Ok(history)
}

/// A pod's identity as the flow stores keep it (JSON).
pub(crate) fn pod_json(p: &Option<PodContext>) -> Option<String> {
    p.as_ref().map(|p| {
        serde_json::json!({"namespace": p.namespace, "pod": p.pod, "labels": p.labels,
            "node": p.node})
        .to_string()
    })
}

/// A flow's extras as the API shows them: the cloud's, else the sensor's pods, from the
/// stored JSON texts (a text that does not parse counts as absent).
pub(crate) fn flow_extra(
    cloud_json: Option<&str>,
    src_pod: Option<&str>,
    dst_pod: Option<&str>,
) -> Option<serde_json::Value> {
    let json = |t: Option<&str>| t.and_then(|t| serde_json::from_str(t).ok());
    let (src_pod, dst_pod): (Option<serde_json::Value>, Option<serde_json::Value>) =
        (json(src_pod), json(dst_pod));
    json(cloud_json).or_else(|| {
        (src_pod.is_some() || dst_pod.is_some())
            .then(|| serde_json::json!({"src_pod": src_pod, "dst_pod": dst_pod}))
    })
}

/// A stored flow's reverse TCP flags as the API shows them: a sensor flow's eight flags; none
/// for a cloud record.
pub(crate) fn reverse_flags(source: &str, flags: i64) -> Option<u8> {
    (source == crate::model::Source::Sensor.as_str()).then_some((flags & 0xff) as u8)
}

/// A stored flow's initiator as the API shows it: a sensor flow's `initiator_by` and whether
/// it was a guess; nothing for a cloud record (or a sensor record stored without one).
pub(crate) fn initiator(source: &str, initiator_by: String) -> (Option<String>, Option<bool>) {
    if source != crate::model::Source::Sensor.as_str() || initiator_by.is_empty() {
        return (None, None);
    }
    let guessed = crate::model::initiator_guessed(&initiator_by);
    (Some(initiator_by), Some(guessed))
}

/// A counter as the flow stores show it: signed 64-bit, saturating rather than wrapping.
pub(crate) fn counter(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}
