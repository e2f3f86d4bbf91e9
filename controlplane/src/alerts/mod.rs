//! The alerts service: what detectors observe becomes alerts, one per incident.
//!
//! For each observation ([`AlertUpdate`]) the allowlist and the sensitivity settings decide
//! first ([`policy`]); then the observation merges into the open alert of its type and source
//! last seen within [`crate::model::INCIDENT_GAP_NS`] (or opens one), and each notifier the
//! change concerns gets a message queued ([`crate::model::event_for`]), in one transaction with
//! the alert.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tracing::{info, warn};

use crate::{
    model::{Alert, AlertUpdate, INCIDENT_GAP_NS, event_for},
    store::StateStore,
    util::time::now_ns,
};

pub mod policy;

pub use policy::{Allowlist, Sensitivities};

/// Records alert observations, each also a log line; returns the ids of the alerts they went to
/// (an alert once, in order of first mention). The allowlist and the sensitivity settings
/// decide first; what they hold back is logged (at debug level for evidence below the
/// sensitivity's threshold, which is routine).
pub fn record(store: &dyn StateStore, updates: &[AlertUpdate]) -> anyhow::Result<Vec<i64>> {
    record_from(store, updates).map_err(|(_, e)| e)
}

/// [`record`], telling on failure how many updates were dealt with before it.
fn record_from(
    store: &dyn StateStore,
    updates: &[AlertUpdate],
) -> Result<Vec<i64>, (usize, anyhow::Error)> {
    let mut ids = Vec::new();
    if updates.is_empty() {
        return Ok(ids);
    }
    let allow = Allowlist::new(store.allowlist().map_err(|e| (0, e))?);
    let sensitivity = Sensitivities::new(store.sensitivities().map_err(|e| (0, e))?);
    for (i, u) in updates.iter().enumerate() {
        let level = sensitivity.level(u.kind, &u.source);
        if !level.raises(u.strength) {
            tracing::debug!(
                kind = u.kind,
                source = u.source,
                strength = u.strength,
                sensitivity = level.as_str(),
                "observation below the sensitivity's threshold"
            );
            continue;
        }
        if let Some(label) = allow.allows(u.kind, &u.source) {
            info!(
                kind = u.kind,
                source = u.source,
                allowlisted = label,
                "alert not raised: the source is allowlisted"
            );
            continue;
        }
        let id = merge(store, u).map_err(|e| (i, e))?;
        info!(
            alert = id,
            kind = u.kind,
            source = u.source,
            severity = u.severity.as_str(),
            seen_by = u.seen_by,
            "alert"
        );
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Observations that could not be recorded (the state store was unreachable), kept in memory,
/// oldest first, to be recorded before the next ones.
static WAITING: Mutex<VecDeque<AlertUpdate>> = Mutex::new(VecDeque::new());

/// Observations kept at most while the state store is away; beyond, the oldest are dropped
/// (and counted in [`DROPPED`]).
pub const MAX_WAITING: usize = 100_000;

/// Observations dropped because [`MAX_WAITING`] were already waiting, since the start.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many observations wait for the state store now.
pub fn waiting() -> usize {
    WAITING.lock().map(|q| q.len()).unwrap_or(0)
}

/// [`record`] for a long-running process: when the state store fails, the observations not yet
/// recorded wait (in memory, up to [`MAX_WAITING`]) and are recorded first at the next call,
/// so a state store that is away for a while loses no alert. The error is returned (to be
/// logged) all the same.
pub fn record_or_keep(store: &dyn StateStore, updates: &[AlertUpdate]) -> anyhow::Result<Vec<i64>> {
    let mut q = WAITING.lock().unwrap_or_else(|e| e.into_inner());
    if q.is_empty() {
        return match record_from(store, updates) {
            Ok(ids) => Ok(ids),
            Err((done, e)) => {
                keep(&mut q, &updates[done..]);
                Err(e)
            }
        };
    }
    let earlier = q.len();
    let all: Vec<AlertUpdate> = q.drain(..).chain(updates.iter().cloned()).collect();
    match record_from(store, &all) {
        Ok(ids) => {
            info!(
                observations = earlier,
                "recorded the alert observations that waited for the state store"
            );
            Ok(ids)
        }
        Err((done, e)) => {
            keep(&mut q, &all[done..]);
            Err(e)
        }
    }
}

fn keep(q: &mut VecDeque<AlertUpdate>, rest: &[AlertUpdate]) {
    q.extend(rest.iter().cloned());
    let over = q.len().saturating_sub(MAX_WAITING);
    if over > 0 {
        q.drain(..over);
        DROPPED.fetch_add(over as u64, Relaxed);
        warn!(
            dropped = over,
            "alert observations dropped: too many waiting for the state store"
        );
    }
}

/// Merges one observation into the open alert of its type and source last seen within
/// [`INCIDENT_GAP_NS`] (data time), or opens one; returns the alert's id. In the same
/// transaction, queues a message to each notifier the change concerns ([`event_for`]), unless
/// the alert is snoozed.
pub fn merge(store: &dyn StateStore, u: &AlertUpdate) -> anyhow::Result<i64> {
    let now = now_ns();
    let mut id = 0;
    store.alert_transaction(&mut |tx| {
        let before = tx.open_alert(u.kind, &u.source, u.time_ns.saturating_sub(INCIDENT_GAP_NS))?;
        let mut a = match &before {
            Some(b) => {
                let mut a = b.clone();
                a.merge(u);
                a
            }
            None => Alert::open(u),
        };
        tx.save_alert(&mut a)?;
        let snoozed = a.status == "snoozed" && a.snoozed_until.is_some_and(|t| t > now);
        if !snoozed {
            for (notifier, min) in tx.notifier_levels()? {
                if let Some(ev) = event_for(min, before.as_ref(), &a) {
                    tx.queue_notification(&notifier, a.id, ev, now)?;
                }
            }
        }
        id = a.id;
        Ok(())
    })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{AlertQuery, Severity},
        store::{Alerts as _, Counts, Notifications as _, NotifierRow, SqliteStore},
    };

    #[test]
    fn alert_changes_queue_one_message_per_concerned_notifier() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let hook = |name: &str, min| NotifierRow {
            name: name.into(),
            target: r#"{"kind":"slack","url":"http://127.0.0.1:9/"}"#.into(),
            min_severity: min,
        };
        s.add_notifier(&hook("all", Severity::Low), 1).expect("add");
        s.add_notifier(&hook("pager", Severity::High), 1)
            .expect("add");
        let u = |t: i64, sev, target: &str| AlertUpdate {
            kind: "port_scan",
            severity: sev,
            source: "10.0.0.9".into(),
            targets: vec![target.into()],
            time_ns: t,
            observation: serde_json::json!({ "t": t }),
            seen_by: "sensor:lab".into(),
            strength: 1.0,
        };
        let queued = || -> Vec<(String, String)> {
            s.due_notifications(i64::MAX, 100)
                .expect("due")
                .into_iter()
                .map(|p| (p.notifier, p.event))
                .collect()
        };
        let id = merge(s.as_ref(), &u(1, Severity::Low, "a")).expect("new");
        merge(s.as_ref(), &u(2, Severity::Low, "b")).expect("merge");
        merge(s.as_ref(), &u(3, Severity::Low, "c")).expect("merge");
        assert_eq!(queued(), [("all".to_string(), "alert.new".to_string())]);
        merge(s.as_ref(), &u(4, Severity::High, "d")).expect("escalate");
        assert_eq!(
            queued()[1..],
            [
                ("all".to_string(), "alert.escalated".to_string()),
                ("pager".to_string(), "alert.new".to_string())
            ]
        );
        for p in s.due_notifications(i64::MAX, 100).expect("due") {
            assert_eq!(p.alert_id, id);
            s.notification_delivered(p.id, 1, 5).expect("done");
        }
        for t in 0..100 {
            merge(s.as_ref(), &u(10 + t, Severity::High, &format!("x{t}"))).expect("grow");
        }
        assert_eq!(
            queued(),
            [
                ("all".to_string(), "alert.grew".to_string()),
                ("pager".to_string(), "alert.grew".to_string())
            ],
            "at 100 targets, once"
        );
        let p = s.due_notifications(i64::MAX, 1).expect("due").remove(0);
        s.notification_failed(p.id, 1, Some(1_000), "HTTP 500", 2)
            .expect("retry");
        assert!(
            s.due_notifications(999, 10)
                .expect("due")
                .iter()
                .all(|q| q.id != p.id)
        );
        assert_eq!(s.due_notifications(1_000, 10).expect("due")[0].attempts, 1);
        s.notification_failed(p.id, 2, None, "HTTP 404", 3)
            .expect("fail");
        assert_eq!(s.remove_notifier("pager").expect("remove"), Some(1));
        assert_eq!(s.remove_notifier("pager").expect("remove"), None);
        let counts = s.notification_counts().expect("counts");
        assert_eq!(
            counts,
            [
                (
                    "all".to_string(),
                    Counts {
                        pending: 0,
                        delivered: 2,
                        failed: 1
                    }
                ),
                (
                    "pager".to_string(),
                    Counts {
                        pending: 0,
                        delivered: 1,
                        failed: 0
                    }
                )
            ]
        );
    }

    #[test]
    fn alert_updates_join_their_incident_until_the_gap() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let u = |kind: &'static str, src: &str, t: i64, sev| AlertUpdate {
            kind,
            severity: sev,
            source: src.into(),
            targets: vec!["10.0.0.2".into()],
            time_ns: t,
            observation: serde_json::json!({ "t": t }),
            seen_by: "sensor:lab".into(),
            strength: 1.0,
        };
        let a = merge(
            s.as_ref(),
            &u("port_scan", "10.0.0.9", 1_000, Severity::Low),
        )
        .expect("open");
        let same = merge(
            s.as_ref(),
            &u("port_scan", "10.0.0.9", 2_000, Severity::High),
        )
        .expect("update");
        assert_eq!(a, same, "the same incident");
        let other_type = merge(
            s.as_ref(),
            &u("address_sweep", "10.0.0.9", 2_000, Severity::Low),
        )
        .expect("sweep");
        let other_src = merge(
            s.as_ref(),
            &u("port_scan", "10.0.0.8", 2_000, Severity::Low),
        )
        .expect("other source");
        assert!(other_type != a && other_src != a && other_type != other_src);
        let later = merge(
            s.as_ref(),
            &u(
                "port_scan",
                "10.0.0.9",
                2_000 + INCIDENT_GAP_NS + 1,
                Severity::Low,
            ),
        )
        .expect("a new incident");
        assert_ne!(later, a, "after the gap, a new alert");
        let got = s.alert(a).expect("query").expect("alert");
        assert_eq!(
            (got.first_seen, got.last_seen, &got.severity[..]),
            (1_000, 2_000, "high")
        );
        assert_eq!(got.observations_total, 2);
        assert_eq!(got.observations[1]["t"], 2_000);
        assert!(s.alert(999).expect("query").is_none());
        let q = |kind: Option<&str>, source: Option<&str>| AlertQuery {
            kind: kind.map(str::to_string),
            source: source.map(str::to_string),
            limit: 100,
            ..AlertQuery::default()
        };
        let all = s.alerts(&q(None, None)).expect("all");
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].id, later, "most recently active first");
        let scans = s
            .alerts(&q(Some("port_scan"), Some("10.0.0.9")))
            .expect("filtered");
        assert_eq!(scans.iter().map(|a| a.id).collect::<Vec<_>>(), [later, a]);
    }
}
