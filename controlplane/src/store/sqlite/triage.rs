//! Alert triage in the embedded store: status, snooze, assignee, tags, comments, and the
//! timeline of who did what.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::alerts::{ALERT_COLUMNS, alert_body, alert_row};
use crate::model::{Alert, Change, HistoryEntry};

pub(super) fn change_alert(
    c: &mut Connection,
    id: i64,
    changes: &[Change],
    actor: &str,
    now_ns: i64,
) -> anyhow::Result<Option<Alert>> {
    let tx = c.transaction()?;
    let Some(mut a) = tx
        .query_row(
            &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
            [id],
            alert_row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    let history = crate::store::rows::apply_changes(&mut a, changes, now_ns)?;
    tx.execute(
        "UPDATE alerts SET status = ?2, assignee = ?3, snoozed_until_ns = ?4, body = ?5 \
         WHERE id = ?1",
        params![a.id, a.status, a.assignee, a.snoozed_until, alert_body(&a)?],
    )?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO alert_history (alert_id, time_ns, actor, action, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (action, detail) in history {
            put.execute(params![id, now_ns, actor, action, detail])?;
        }
    }
    tx.commit()?;
    Ok(Some(a))
}

pub(super) fn alert_history(c: &Connection, id: i64) -> anyhow::Result<Vec<HistoryEntry>> {
    let mut st = c.prepare_cached(
        "SELECT time_ns, actor, action, detail FROM alert_history WHERE alert_id = ?1 \
         ORDER BY id",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(HistoryEntry {
            time: r.get(0)?,
            actor: r.get(1)?,
            action: r.get(2)?,
            detail: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn wake_snoozed(c: &mut Connection, now_ns: i64) -> anyhow::Result<u64> {
    let tx = c.transaction()?;
    tx.execute(
        "INSERT INTO alert_history (alert_id, time_ns, actor, action, detail) \
         SELECT id, ?1, 'picket', 'status', 'open (snooze over)' FROM alerts \
         WHERE status = 'snoozed' AND snoozed_until_ns <= ?1",
        [now_ns],
    )?;
    let n = tx.execute(
        "UPDATE alerts SET status = 'open', snoozed_until_ns = NULL \
         WHERE status = 'snoozed' AND snoozed_until_ns <= ?1",
        [now_ns],
    )?;
    tx.commit()?;
    Ok(n as u64)
}
