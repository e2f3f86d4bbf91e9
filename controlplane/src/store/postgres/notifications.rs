//! Notifiers and the outbox of messages to them in PostgreSQL.

use super::PgStore;
use crate::{
    model::Severity,
    store::{Counts, Notifications, NotifierRow, Pending},
};

impl Notifications for PgStore {
    fn notifiers(&self) -> anyhow::Result<Vec<NotifierRow>> {
        Ok(self
            .conn()?
            .query(
                "SELECT name, target, min_severity FROM notifiers ORDER BY name",
                &[],
            )?
            .into_iter()
            .map(|r| NotifierRow {
                name: r.get(0),
                target: r.get(1),
                min_severity: Severity::parse(r.get(2)).unwrap_or(Severity::Low),
            })
            .collect())
    }

    fn add_notifier(&self, n: &NotifierRow, now_ns: i64) -> anyhow::Result<()> {
        let added = self.conn()?.execute(
            "INSERT INTO notifiers (name, target, min_severity, created_ns) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
            &[&n.name, &n.target, &n.min_severity.as_str(), &now_ns],
        )?;
        anyhow::ensure!(added == 1, "a notifier named `{}` exists already", n.name);
        Ok(())
    }

    fn remove_notifier(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        if tx.execute("DELETE FROM notifiers WHERE name = $1", &[&name])? == 0 {
            return Ok(None);
        }
        let dropped = tx.execute(
            "DELETE FROM outbox WHERE notifier = $1 AND state = 'pending'",
            &[&name],
        )?;
        tx.commit()?;
        Ok(Some(dropped))
    }

    fn notification_counts(&self) -> anyhow::Result<Vec<(String, Counts)>> {
        Ok(self
            .conn()?
            .query(
                "SELECT notifier, \
                 COUNT(*) FILTER (WHERE state = 'pending'), \
                 COUNT(*) FILTER (WHERE state = 'delivered'), \
                 COUNT(*) FILTER (WHERE state = 'failed') \
                 FROM outbox GROUP BY notifier ORDER BY notifier",
                &[],
            )?
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    Counts {
                        pending: r.get::<_, i64>(1) as u64,
                        delivered: r.get::<_, i64>(2) as u64,
                        failed: r.get::<_, i64>(3) as u64,
                    },
                )
            })
            .collect())
    }

    fn due_notifications(&self, now_ns: i64, limit: usize) -> anyhow::Result<Vec<Pending>> {
        Ok(self
            .conn()?
            .query(
                "SELECT id, notifier, alert_id, event, attempts FROM outbox \
                 WHERE state = 'pending' AND next_ns <= $1 ORDER BY next_ns, id LIMIT $2",
                &[&now_ns, &(limit as i64)],
            )?
            .into_iter()
            .map(|r| Pending {
                id: r.get(0),
                notifier: r.get(1),
                alert_id: r.get(2),
                event: r.get(3),
                attempts: r.get::<_, i32>(4).max(0) as u32,
            })
            .collect())
    }

    fn notification_delivered(&self, id: i64, attempts: u32, now_ns: i64) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE outbox SET state = 'delivered', attempts = $2, done_ns = $3, \
             last_error = NULL WHERE id = $1",
            &[&id, &attempts_column(attempts), &now_ns],
        )?;
        Ok(())
    }

    fn notification_failed(
        &self,
        id: i64,
        attempts: u32,
        next_ns: Option<i64>,
        error: &str,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        let attempts = attempts_column(attempts);
        let mut c = self.conn()?;
        match next_ns {
            Some(t) => c.execute(
                "UPDATE outbox SET attempts = $2, next_ns = $3, last_error = $4 WHERE id = $1",
                &[&id, &attempts, &t, &error],
            )?,
            None => c.execute(
                "UPDATE outbox SET state = 'failed', attempts = $2, last_error = $3, \
                 done_ns = $4 WHERE id = $1",
                &[&id, &attempts, &error, &now_ns],
            )?,
        };
        Ok(())
    }
}

fn attempts_column(a: u32) -> i32 {
    i32::try_from(a).unwrap_or(i32::MAX)
}
