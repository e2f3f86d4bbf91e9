//! Alerts in the embedded store: the transaction the alerts service changes them in, queries,
//! and (in `triage.rs`) triage and timelines.

use rusqlite::{Connection, OptionalExtension as _, params};

pub(super) use crate::store::rows::alert_body;
use crate::{
    model::{Alert, AlertQuery, Event, Severity},
    store::{AlertTx, EntityContext, rows::AlertHead},
};

pub(super) const ALERT_COLUMNS: &str = "id, type, severity, status, source, first_seen_ns, last_seen_ns, \
                             body, assignee, snoozed_until_ns";

pub(super) fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let head = AlertHead {
        id: r.get(0)?,
        kind: r.get(1)?,
        severity: r.get(2)?,
        status: r.get(3)?,
        source: r.get(4)?,
        first_seen: r.get(5)?,
        last_seen: r.get(6)?,
        assignee: r.get(8)?,
        snoozed_until: r.get(9)?,
    };
    let body: String = r.get(7)?;
    crate::store::rows::alert(head, &body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The alerts service's unit of work over one transaction (see [`AlertTx`]).
struct Tx<'c>(rusqlite::Transaction<'c>);

impl AlertTx for Tx<'_> {
    fn open_alert(
        &mut self,
        kind: &str,
        source: &str,
        since_ns: i64,
    ) -> anyhow::Result<Option<Alert>> {
        Ok(self
            .0
            .query_row(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE type = ?1 AND source = ?2 \
                     AND status != 'closed' AND last_seen_ns >= ?3 \
                     ORDER BY last_seen_ns DESC LIMIT 1"
                ),
                params![kind, source, since_ns],
                alert_row,
            )
            .optional()?)
    }

    fn save_alert(&mut self, a: &mut Alert) -> anyhow::Result<()> {
        if a.id != 0 {
            self.0.execute(
                "UPDATE alerts SET severity = ?2, first_seen_ns = ?3, last_seen_ns = ?4, \
                 body = ?5 WHERE id = ?1",
                params![a.id, a.severity, a.first_seen, a.last_seen, alert_body(a)?],
            )?;
            return Ok(());
        }
        self.0.execute(
            "INSERT INTO alerts (type, severity, status, source, first_seen_ns, last_seen_ns, \
             body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                a.kind,
                a.severity,
                a.status,
                a.source,
                a.first_seen,
                a.last_seen,
                alert_body(a)?
            ],
        )?;
        a.id = self.0.last_insert_rowid();
        Ok(())
    }

    fn notifier_levels(&mut self) -> anyhow::Result<Vec<(String, Severity)>> {
        let mut st = self
            .0
            .prepare_cached("SELECT name, min_severity FROM notifiers")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (name, min) = r?;
            Ok((name, Severity::parse(&min).unwrap_or(Severity::Low)))
        })
        .collect()
    }

    fn queue_notification(
        &mut self,
        notifier: &str,
        alert_id: i64,
        event: Event,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO outbox (notifier, alert_id, event, created_ns, next_ns, state) \
                 VALUES (?1, ?2, ?3, ?4, ?4, 'pending')",
            )?
            .execute(params![notifier, alert_id, event.as_str(), now_ns])?;
        Ok(())
    }
}

/// Runs `work` in one transaction, committed if it succeeds.
pub(super) fn transaction(
    c: &mut Connection,
    work: &mut dyn FnMut(&mut dyn AlertTx) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut tx = Tx(c.transaction()?);
    work(&mut tx)?;
    tx.0.commit()?;
    Ok(())
}

pub(super) fn alerts(c: &Connection, q: &AlertQuery) -> anyhow::Result<Vec<Alert>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR type = ?1) \
         AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR source = ?3) \
         AND (?5 IS NULL OR severity = ?5) AND (?6 IS NULL OR assignee = ?6) \
         AND (?7 IS NULL OR last_seen_ns >= ?7) \
         AND (?8 IS NULL OR last_seen_ns < ?8 OR (last_seen_ns = ?8 AND id < ?9)) \
         ORDER BY last_seen_ns DESC, id DESC LIMIT ?4"
    ))?;
    let rows = st.query_map(
        params![
            q.kind,
            q.status,
            q.source,
            q.limit as i64,
            q.severity,
            q.assignee,
            q.since_ns,
            q.after.map(|a| a.0),
            q.after.map(|a| a.1)
        ],
        alert_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}
pub(super) fn alert(c: &Connection, id: i64) -> anyhow::Result<Option<Alert>> {
    Ok(c.query_row(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
        [id],
        alert_row,
    )
    .optional()?)
}

pub(super) fn entity_context(c: &Connection) -> anyhow::Result<EntityContext> {
    let mut ctx = EntityContext::default();
    let mut st = c.prepare_cached(
        "SELECT name, hostname, host_json FROM sensors WHERE host_json IS NOT NULL",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for r in rows {
        let (name, hostname, json) = r?;
        crate::store::rows::add_sensor_host(&mut ctx, name, hostname, &json);
    }
    let mut st = c.prepare_cached(
        "SELECT source, COUNT(*), MAX(type IN ('port_scan', 'address_sweep')) FROM alerts \
         WHERE status != 'closed' GROUP BY source",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? != 0,
        ))
    })?;
    for r in rows {
        let (src, n, scan) = r?;
        ctx.alerts.insert(src, (n, scan));
    }
    Ok(ctx)
}
