//! Alert triage in the embedded store: status, snooze, assignee, tags, comments, and the
//! timeline of who did what.

use rusqlite::{OptionalExtension as _, params};

use super::{ALERT_COLUMNS, SqliteStore, alert_body, alert_row};
use crate::model::{Alert, Change, HistoryEntry};

pub trait Triage {
    /// Applies `changes` to alert `id` in one transaction, each recorded in its timeline as done
    /// by `actor` at `now_ns`. None if there is no such alert.
    fn change_alert(
        &self,
        id: i64,
        changes: &[Change],
        actor: &str,
        now_ns: i64,
    ) -> anyhow::Result<Option<Alert>>;
    /// The alert's timeline, oldest first.
    fn alert_history(&self, id: i64) -> anyhow::Result<Vec<HistoryEntry>>;
    /// Snoozed alerts whose time is up become open again; returns how many.
    fn wake_snoozed(&self, now_ns: i64) -> anyhow::Result<u64>;
}

impl Triage for SqliteStore {
    fn change_alert(
        &self,
        id: i64,
        changes: &[Change],
        actor: &str,
        now_ns: i64,
    ) -> anyhow::Result<Option<Alert>> {
        let mut c = self.conn();
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
        let mut history = Vec::new();
        for ch in changes {
            let (action, detail) = match ch {
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
                    (
                        "snooze",
                        crate::util::time::rfc3339(*until)
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
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
            history.push((action, detail));
        }
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

    fn alert_history(&self, id: i64) -> anyhow::Result<Vec<HistoryEntry>> {
        let c = self.conn();
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

    fn wake_snoozed(&self, now_ns: i64) -> anyhow::Result<u64> {
        let mut c = self.conn();
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
}
