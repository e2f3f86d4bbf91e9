//! The alerts service: what detectors observe becomes alerts, one per incident.
//!
//! For each observation ([`AlertUpdate`]) the allowlist and the sensitivity settings decide
//! first ([`policy`]); then the observation merges into the open alert of its type and source
//! last seen within [`crate::model::INCIDENT_GAP_NS`] (or opens one), and each notifier the
//! change concerns gets a message queued ([`crate::model::event_for`]), in one transaction with
//! the alert.

use tracing::info;

use crate::{model::AlertUpdate, store::Store};

pub mod policy;

pub use policy::{Allowlist, Sensitivities};

/// Records alert observations, each also a log line; returns the ids of the alerts they went to
/// (an alert once, in order of first mention). The allowlist and the sensitivity settings
/// decide first; what they hold back is logged (at debug level for evidence below the
/// sensitivity's threshold, which is routine).
pub fn record(store: &dyn Store, updates: &[AlertUpdate]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    if updates.is_empty() {
        return Ok(ids);
    }
    let allow = Allowlist::new(store.allowlist()?);
    let sensitivity = Sensitivities::new(store.sensitivities()?);
    for u in updates {
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
        let id = store.record_alert(u)?;
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
