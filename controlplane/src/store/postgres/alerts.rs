//! Alerts in PostgreSQL: the alerts service's transaction (one alert per incident even when
//! several control planes record it at once), queries, triage and timelines.

use super::PgStore;
use crate::{
    model::{Alert, AlertQuery, Change, Event, HistoryEntry, Severity},
    store::{
        AlertTx, Alerts, EntityContext,
        rows::{self, AlertHead},
    },
};

const ALERT_COLUMNS: &str = "id, type, severity, status, source, first_seen_ns, last_seen_ns, \
                             body, assignee, snoozed_until_ns";

fn alert_row(r: &postgres::Row) -> anyhow::Result<Alert> {
    let head = AlertHead {
        id: r.get(0),
        kind: r.get(1),
        severity: r.get(2),
        status: r.get(3),
        source: r.get(4),
        first_seen: r.get(5),
        last_seen: r.get(6),
        assignee: r.get(8),
        snoozed_until: r.get(9),
    };
    Ok(rows::alert(head, r.get(7))?)
}

/// The alerts service's unit of work over one transaction (see [`AlertTx`]).
struct Tx<'c>(postgres::Transaction<'c>);

impl AlertTx for Tx<'_> {
    fn open_alert(
        &mut self,
        kind: &str,
        source: &str,
        since_ns: i64,
    ) -> anyhow::Result<Option<Alert>> {
        // Whoever else records this incident now waits here until this transaction ends, then
        // finds the alert it saved.
        self.0.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(10) || $2, 7))",
            &[&kind, &source],
        )?;
        self.0
            .query_opt(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE type = $1 AND source = $2 \
                     AND status != 'closed' AND last_seen_ns >= $3 \
                     ORDER BY last_seen_ns DESC LIMIT 1"
                ),
                &[&kind, &source, &since_ns],
            )?
            .map(|r| alert_row(&r))
            .transpose()
    }

    fn save_alert(&mut self, a: &mut Alert) -> anyhow::Result<()> {
        let body = rows::alert_body(a)?;
        if a.id != 0 {
            self.0.execute(
                "UPDATE alerts SET severity = $2, first_seen_ns = $3, last_seen_ns = $4, \
                 body = $5 WHERE id = $1",
                &[&a.id, &a.severity, &a.first_seen, &a.last_seen, &body],
            )?;
            return Ok(());
        }
        a.id = self
            .0
            .query_one(
                "INSERT INTO alerts (type, severity, status, source, first_seen_ns, \
                 last_seen_ns, body) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &a.kind,
                    &a.severity,
                    &a.status,
                    &a.source,
                    &a.first_seen,
                    &a.last_seen,
                    &body,
                ],
            )?
            .get(0);
        Ok(())
    }

    fn notifier_levels(&mut self) -> anyhow::Result<Vec<(String, Severity)>> {
        Ok(self
            .0
            .query("SELECT name, min_severity FROM notifiers", &[])?
            .into_iter()
            .map(|r| (r.get(0), Severity::parse(r.get(1)).unwrap_or(Severity::Low)))
            .collect())
    }

    fn queue_notification(
        &mut self,
        notifier: &str,
        alert_id: i64,
        event: Event,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        self.0.execute(
            "INSERT INTO outbox (notifier, alert_id, event, created_ns, next_ns, state) \
             VALUES ($1, $2, $3, $4, $4, 'pending')",
            &[&notifier, &alert_id, &event.as_str(), &now_ns],
        )?;
        Ok(())
    }
}

impl Alerts for PgStore {
    fn alert_transaction(
        &self,
        work: &mut dyn FnMut(&mut dyn AlertTx) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut c = self.conn()?;
        let mut tx = Tx(c.transaction()?);
        work(&mut tx)?;
        tx.0.commit()?;
        Ok(())
    }

    fn alerts(&self, q: &AlertQuery) -> anyhow::Result<Vec<Alert>> {
        let (after_ns, after_id) = (q.after.map(|a| a.0), q.after.map(|a| a.1));
        self.conn()?
            .query(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts \
                     WHERE ($1::TEXT IS NULL OR type = $1) \
                     AND ($2::TEXT IS NULL OR status = $2) \
                     AND ($3::TEXT IS NULL OR source = $3) \
                     AND ($5::TEXT IS NULL OR severity = $5) \
                     AND ($6::TEXT IS NULL OR assignee = $6) \
                     AND ($7::BIGINT IS NULL OR last_seen_ns >= $7) \
                     AND ($8::BIGINT IS NULL OR last_seen_ns < $8 \
                          OR (last_seen_ns = $8 AND id < $9)) \
                     ORDER BY last_seen_ns DESC, id DESC LIMIT $4"
                ),
                &[
                    &q.kind,
                    &q.status,
                    &q.source,
                    &(q.limit as i64),
                    &q.severity,
                    &q.assignee,
                    &q.since_ns,
                    &after_ns,
                    &after_id,
                ],
            )?
            .iter()
            .map(alert_row)
            .collect()
    }

    fn alert(&self, id: i64) -> anyhow::Result<Option<Alert>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"),
                &[&id],
            )?
            .map(|r| alert_row(&r))
            .transpose()
    }

    fn change_alert(
        &self,
        id: i64,
        changes: &[Change],
        actor: &str,
        now_ns: i64,
    ) -> anyhow::Result<Option<Alert>> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let Some(row) = tx.query_opt(
            &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1 FOR UPDATE"),
            &[&id],
        )?
        else {
            return Ok(None);
        };
        let mut a = alert_row(&row)?;
        let history = rows::apply_changes(&mut a, changes, now_ns)?;
        tx.execute(
            "UPDATE alerts SET status = $2, assignee = $3, snoozed_until_ns = $4, body = $5 \
             WHERE id = $1",
            &[
                &a.id,
                &a.status,
                &a.assignee,
                &a.snoozed_until,
                &rows::alert_body(&a)?,
            ],
        )?;
        for (action, detail) in history {
            tx.execute(
                "INSERT INTO alert_history (alert_id, time_ns, actor, action, detail) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &now_ns, &actor, &action, &detail],
            )?;
        }
        tx.commit()?;
        Ok(Some(a))
    }

    fn alert_history(&self, id: i64) -> anyhow::Result<Vec<HistoryEntry>> {
        Ok(self
            .conn()?
            .query(
                "SELECT time_ns, actor, action, detail FROM alert_history WHERE alert_id = $1 \
                 ORDER BY id",
                &[&id],
            )?
            .into_iter()
            .map(|r| HistoryEntry {
                time: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                detail: r.get(3),
            })
            .collect())
    }

    fn wake_snoozed(&self, now_ns: i64) -> anyhow::Result<u64> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        tx.execute(
            "INSERT INTO alert_history (alert_id, time_ns, actor, action, detail) \
             SELECT id, $1, 'picket', 'status', 'open (snooze over)' FROM alerts \
             WHERE status = 'snoozed' AND snoozed_until_ns <= $1 ORDER BY id",
            &[&now_ns],
        )?;
        let n = tx.execute(
            "UPDATE alerts SET status = 'open', snoozed_until_ns = NULL \
             WHERE status = 'snoozed' AND snoozed_until_ns <= $1",
            &[&now_ns],
        )?;
        tx.commit()?;
        Ok(n)
    }

    fn entity_context(&self) -> anyhow::Result<EntityContext> {
        let mut c = self.conn()?;
        let mut ctx = EntityContext::default();
        for r in c.query(
            "SELECT name, hostname, host_json FROM sensors WHERE host_json IS NOT NULL",
            &[],
        )? {
            rows::add_sensor_host(&mut ctx, r.get(0), r.get(1), r.get(2));
        }
        for r in c.query(
            "SELECT source, COUNT(*), BOOL_OR(type IN ('port_scan', 'address_sweep')) \
             FROM alerts WHERE status != 'closed' GROUP BY source",
            &[],
        )? {
            ctx.alerts
                .insert(r.get(0), (r.get::<_, i64>(1) as u64, r.get(2)));
        }
        Ok(ctx)
    }
}
