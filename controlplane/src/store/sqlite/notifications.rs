//! Notifiers and the outbox of messages to them in the embedded store.

use rusqlite::{Connection, params};

use crate::{
    model::Severity,
    store::{Counts, NotifierRow, Pending},
};

pub(super) fn notifiers(c: &Connection) -> anyhow::Result<Vec<NotifierRow>> {
    let mut st =
        c.prepare_cached("SELECT name, target, min_severity FROM notifiers ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    rows.map(|r| {
        let (name, target, min) = r?;
        Ok(NotifierRow {
            name,
            target,
            min_severity: Severity::parse(&min).unwrap_or(Severity::Low),
        })
    })
    .collect()
}

pub(super) fn add_notifier(c: &Connection, n: &NotifierRow, now_ns: i64) -> anyhow::Result<()> {
    let exists = c
        .prepare_cached("SELECT 1 FROM notifiers WHERE name = ?1")?
        .exists([&n.name])?;
    anyhow::ensure!(!exists, "a notifier named `{}` exists already", n.name);
    c.execute(
        "INSERT INTO notifiers (name, target, min_severity, created_ns) \
         VALUES (?1, ?2, ?3, ?4)",
        params![n.name, n.target, n.min_severity.as_str(), now_ns],
    )?;
    Ok(())
}

pub(super) fn remove_notifier(c: &mut Connection, name: &str) -> anyhow::Result<Option<u64>> {
    let tx = c.transaction()?;
    if tx.execute("DELETE FROM notifiers WHERE name = ?1", [name])? == 0 {
        return Ok(None);
    }
    let dropped = tx.execute(
        "DELETE FROM outbox WHERE notifier = ?1 AND state = 'pending'",
        [name],
    )?;
    tx.commit()?;
    Ok(Some(dropped as u64))
}

pub(super) fn notification_counts(c: &Connection) -> anyhow::Result<Vec<(String, Counts)>> {
    let mut st = c.prepare_cached(
        "SELECT notifier, \
         SUM(state = 'pending'), SUM(state = 'delivered'), SUM(state = 'failed') \
         FROM outbox GROUP BY notifier ORDER BY notifier",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get(0)?,
            Counts {
                pending: r.get::<_, i64>(1)? as u64,
                delivered: r.get::<_, i64>(2)? as u64,
                failed: r.get::<_, i64>(3)? as u64,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn due_notifications(
    c: &Connection,
    now_ns: i64,
    limit: usize,
) -> anyhow::Result<Vec<Pending>> {
    let mut st = c.prepare_cached(
        "SELECT id, notifier, alert_id, event, attempts FROM outbox \
         WHERE state = 'pending' AND next_ns <= ?1 ORDER BY next_ns, id LIMIT ?2",
    )?;
    let rows = st.query_map(params![now_ns, limit as i64], |r| {
        Ok(Pending {
            id: r.get(0)?,
            notifier: r.get(1)?,
            alert_id: r.get(2)?,
            event: r.get(3)?,
            attempts: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn notification_delivered(
    c: &Connection,
    id: i64,
    attempts: u32,
    now_ns: i64,
) -> anyhow::Result<()> {
    c.execute(
        "UPDATE outbox SET state = 'delivered', attempts = ?2, done_ns = ?3, \
         last_error = NULL WHERE id = ?1",
        params![id, attempts, now_ns],
    )?;
    Ok(())
}

pub(super) fn notification_failed(
    c: &Connection,
    id: i64,
    attempts: u32,
    next_ns: Option<i64>,
    error: &str,
    now_ns: i64,
) -> anyhow::Result<()> {
    match next_ns {
        Some(t) => c.execute(
            "UPDATE outbox SET attempts = ?2, next_ns = ?3, last_error = ?4 WHERE id = ?1",
            params![id, attempts, t, error],
        )?,
        None => c.execute(
            "UPDATE outbox SET state = 'failed', attempts = ?2, last_error = ?3, \
             done_ns = ?4 WHERE id = ?1",
            params![id, attempts, error, now_ns],
        )?,
    };
    Ok(())
}
