//! Alerts: one per incident (an alert type and the entity behind it), updated while the incident
//! goes on, with the observations that support it.
//!
//! Detectors emit [`AlertUpdate`]s; the alerts service merges each into the open alert of the
//! same type and source whose last observation is at most [`INCIDENT_GAP_NS`] older (data
//! time), or opens a new one. Time always comes from the data, so replayed logs alert at the moments they
//! describe.

use serde::Serialize;
use serde_json::Value;

use crate::util::time::rfc3339;

/// An incident with no new observation for this long (data time) is over: the next
/// observation opens a new alert.
pub const INCIDENT_GAP_NS: i64 = 3_600_000_000_000;

/// Observations kept in full per alert; later ones are counted (`observations_total`).
pub const MAX_OBSERVATIONS: usize = 50;

/// Targets kept per alert; later ones are counted (`targets_total`).
pub const MAX_TARGETS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// What a detector saw: one observation for the alert of (`kind`, `source`).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertUpdate {
    /// The alert type (`port_scan`, `address_sweep`, ...).
    pub kind: &'static str,
    pub severity: Severity,
    /// The entity the alert is about (the scanner's address).
    pub source: String,
    /// What it touched (addresses, `address:port`).
    pub targets: Vec<String>,
    /// When the observation happened (data time).
    pub time_ns: i64,
    /// The evidence, as the API shows it.
    pub observation: Value,
    /// Who saw it: `sensor:NAME`, `aws:ACCOUNT`, ...
    pub seen_by: String,
    /// How far past its detector's threshold the evidence is: 1 at the threshold, 2 at twice
    /// it, 0.5 at half (only the fan-out detector reports that early); infinite for detectors
    /// without a threshold (watchlist, coverage gaps). Sensitivity settings compare it with their
    /// factor ([`Sensitivity`]).
    pub strength: f64,
}

/// How readily alerts of a type are raised for sources in a network: `off` never, `low` at
/// twice the detectors' thresholds, `medium` (the default) at them, `high` at half (where the
/// detector reports that early: the flow-log fan-out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    Off,
    Low,
    Medium,
    High,
}

impl Sensitivity {
    pub fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Off => "off",
            Sensitivity::Low => "low",
            Sensitivity::Medium => "medium",
            Sensitivity::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Sensitivity::Off,
            "low" => Sensitivity::Low,
            "medium" => Sensitivity::Medium,
            "high" => Sensitivity::High,
            _ => return None,
        })
    }

    /// Whether evidence of `strength` raises an alert at this sensitivity.
    pub fn raises(self, strength: f64) -> bool {
        match self {
            Sensitivity::Off => false,
            Sensitivity::Low => strength >= 2.0,
            Sensitivity::Medium => strength >= 1.0,
            Sensitivity::High => strength >= 0.5,
        }
    }
}

/// An allowlist's alert type: snake_case, or `*` for every type.
pub fn check_alert_type(t: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        t == "*" || (!t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c == '_')),
        "`{t}` is not an alert type (snake_case, or * for all)"
    );
    Ok(())
}

/// A sensitivity setting's network: `*` or a canonical CIDR.
pub fn sensitivity_scope(text: &str) -> anyhow::Result<String> {
    if text.trim() == "*" {
        return Ok("*".into());
    }
    Ok(crate::util::net::parse_network(text)?.to_string())
}

/// A stored alert, as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    pub status: String,
    pub source: String,
    pub targets: Vec<String>,
    pub targets_total: u64,
    /// Unix nanoseconds (the API shows RFC 3339).
    pub first_seen: i64,
    pub last_seen: i64,
    pub observations: Vec<Value>,
    pub observations_total: u64,
    pub sources: Vec<String>,
    /// Triage: who looks after it.
    pub assignee: Option<String>,
    pub tags: Vec<String>,
    /// Unix nanoseconds; while `status` is `snoozed`, no messages are sent about it.
    pub snoozed_until: Option<i64>,
}

/// One step of an alert's triage, for its timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Unix nanoseconds (the API shows RFC 3339).
    pub time: i64,
    /// The user or API token that did it.
    pub actor: String,
    /// `status`, `snooze`, `assign`, `tags`, `comment`.
    pub action: String,
    pub detail: String,
}

/// A triage change (the API's PATCH and comments).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// `open` or `closed`.
    Status(String),
    /// Snoozed until this time (Unix ns).
    Snooze(i64),
    Assign(Option<String>),
    Tags(Vec<String>),
    Comment(String),
}

impl Alert {
    /// The alert as JSON, as the API shows it and webhooks carry it: times in RFC 3339.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("first_seen".into(), rfc3339(self.first_seen));
            m.insert("last_seen".into(), rfc3339(self.last_seen));
            m.insert(
                "snoozed_until".into(),
                self.snoozed_until.map_or(Value::Null, rfc3339),
            );
        }
        v
    }

    /// A new open alert from its first observation.
    pub fn open(u: &AlertUpdate) -> Alert {
        let mut a = Alert {
            id: 0,
            kind: u.kind.to_string(),
            severity: u.severity.as_str().to_string(),
            status: "open".to_string(),
            source: u.source.clone(),
            targets: Vec::new(),
            targets_total: 0,
            first_seen: u.time_ns,
            last_seen: u.time_ns,
            observations: Vec::new(),
            observations_total: 0,
            sources: Vec::new(),
            assignee: None,
            tags: Vec::new(),
            snoozed_until: None,
        };
        a.merge(u);
        a
    }

    /// Adds an observation: times widen, severity only rises, targets and sources are a set. A
    /// scan's extent (`scan_extent`) replaces the alert's earlier one rather than adding up.
    pub fn merge(&mut self, u: &AlertUpdate) {
        self.first_seen = self.first_seen.min(u.time_ns);
        self.last_seen = self.last_seen.max(u.time_ns);
        if Severity::parse(&self.severity).is_none_or(|s| u.severity > s) {
            self.severity = u.severity.as_str().to_string();
        }
        for t in &u.targets {
            if !self.targets.contains(t) {
                self.targets_total += 1;
                if self.targets.len() < MAX_TARGETS {
                    self.targets.push(t.clone());
                }
            }
        }
        if !self.sources.contains(&u.seen_by) {
            self.sources.push(u.seen_by.clone());
        }
        // A scan's extent is one observation that grows: the newest replaces the one before.
        if u.observation["kind"] == "scan_extent"
            && let Some(o) = self
                .observations
                .iter_mut()
                .find(|o| o["kind"] == "scan_extent")
        {
            *o = u.observation.clone();
            return;
        }
        self.observations_total += 1;
        if self.observations.len() < MAX_OBSERVATIONS {
            self.observations.push(u.observation.clone());
        }
    }
}

/// An alerts query (the REST API's filters); the most recently active first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertQuery {
    pub kind: Option<String>,
    pub status: Option<String>,
    pub source: Option<String>,
    pub severity: Option<String>,
    pub assignee: Option<String>,
    /// Only alerts active (last seen) at or after this time.
    pub since_ns: Option<i64>,
    /// Keyset paging: only alerts after this (last seen, id) in the list's order (the previous
    /// page's last alert).
    pub after: Option<(i64, i64)>,
    pub limit: usize,
}

#[cfg(test)]
pub(crate) mod testing {
    //! An alert for the tests of what reads alerts (notification events, message formats).
    use super::*;

    /// An open `port_scan` alert of severity `sev` with `targets` targets (three listed).
    pub(crate) fn alert(sev: &str, targets: u64) -> Alert {
        Alert {
            id: 7,
            kind: "port_scan".into(),
            severity: sev.into(),
            status: "open".into(),
            source: "10.0.0.9".into(),
            targets: (0..targets.min(3))
                .map(|i| format!("10.0.0.1:{}", 20 + i))
                .collect(),
            targets_total: targets,
            first_seen: 1_795_860_000_000_000_000,
            last_seen: 1_795_860_060_500_000_000,
            observations: vec![],
            observations_total: 4,
            sources: vec!["sensor:lab".into()],
            assignee: None,
            tags: vec![],
            snoozed_until: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(t: i64, sev: Severity, target: &str, by: &str) -> AlertUpdate {
        AlertUpdate {
            kind: "port_scan",
            severity: sev,
            source: "10.0.0.9".into(),
            targets: vec![target.into()],
            time_ns: t,
            observation: serde_json::json!({ "t": t }),
            seen_by: by.into(),
            strength: 1.0,
        }
    }

    #[test]
    fn merging_widens_times_raises_severity_and_keeps_sets() {
        let mut a = Alert::open(&update(100, Severity::Medium, "10.0.0.1", "sensor:a"));
        a.merge(&update(50, Severity::Low, "10.0.0.1", "sensor:a"));
        a.merge(&update(200, Severity::High, "10.0.0.2", "aws:1"));
        assert_eq!((a.first_seen, a.last_seen), (50, 200));
        assert_eq!(a.severity, "high");
        a.merge(&update(300, Severity::Low, "10.0.0.2", "aws:1"));
        assert_eq!(a.severity, "high", "severity never falls");
        assert_eq!(a.targets, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(a.targets_total, 2);
        assert_eq!(a.sources, ["sensor:a", "aws:1"]);
        assert_eq!(a.observations_total, 4);
        assert_eq!(a.observations.len(), 4);
    }

    #[test]
    fn observations_and_targets_are_capped_and_counted() {
        let mut a = Alert::open(&update(0, Severity::Low, "t0", "sensor:a"));
        for i in 1..200 {
            a.merge(&update(i, Severity::Low, &format!("t{i}"), "sensor:a"));
        }
        assert_eq!(a.observations.len(), MAX_OBSERVATIONS);
        assert_eq!(a.observations_total, 200);
        assert_eq!(a.targets.len(), MAX_TARGETS);
        assert_eq!(a.targets_total, 200);
    }
}
