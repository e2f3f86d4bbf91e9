//! The watchlist, the allowlist, the sensitivity settings and the detectors' state in
//! PostgreSQL.

use super::PgStore;
use crate::store::Settings;

impl Settings for PgStore {
    fn watchlist(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .conn()?
            .query("SELECT cidr, label FROM watchlist ORDER BY cidr", &[])?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn add_watchlist(&self, entries: &[(String, String)], now_ns: i64) -> anyhow::Result<usize> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let mut new = 0;
        for (cidr, label) in entries {
            // xmax = 0: the row was inserted, not updated.
            let inserted: bool = tx
                .query_one(
                    "INSERT INTO watchlist (cidr, label, added_ns) VALUES ($1, $2, $3) \
                     ON CONFLICT (cidr) DO UPDATE SET label = excluded.label \
                     RETURNING (xmax = 0)",
                    &[cidr, label, &now_ns],
                )?
                .get(0);
            new += usize::from(inserted);
        }
        tx.commit()?;
        Ok(new)
    }

    fn remove_watchlist(&self, cidr: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn()?
            .execute("DELETE FROM watchlist WHERE cidr = $1", &[&cidr])?
            > 0)
    }

    fn allowlist(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(self
            .conn()?
            .query(
                "SELECT cidr, alert_type, label FROM allowlist ORDER BY cidr, alert_type",
                &[],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn add_allowlist(
        &self,
        cidr: &str,
        alert_type: &str,
        label: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool> {
        Ok(self
            .conn()?
            .query_one(
                "INSERT INTO allowlist (cidr, alert_type, label, added_ns) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (cidr, alert_type) \
                 DO UPDATE SET label = excluded.label RETURNING (xmax = 0)",
                &[&cidr, &alert_type, &label, &now_ns],
            )?
            .get(0))
    }

    fn remove_allowlist(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool> {
        Ok(self.conn()?.execute(
            "DELETE FROM allowlist WHERE cidr = $1 AND alert_type = $2",
            &[&cidr, &alert_type],
        )? > 0)
    }

    fn sensitivities(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(self
            .conn()?
            .query(
                "SELECT cidr, alert_type, level FROM sensitivity ORDER BY cidr, alert_type",
                &[],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn set_sensitivity(
        &self,
        cidr: &str,
        alert_type: &str,
        level: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool> {
        Ok(self
            .conn()?
            .query_one(
                "INSERT INTO sensitivity (cidr, alert_type, level, added_ns) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (cidr, alert_type) \
                 DO UPDATE SET level = excluded.level RETURNING (xmax = 0)",
                &[&cidr, &alert_type, &level, &now_ns],
            )?
            .get(0))
    }

    fn remove_sensitivity(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool> {
        Ok(self.conn()?.execute(
            "DELETE FROM sensitivity WHERE cidr = $1 AND alert_type = $2",
            &[&cidr, &alert_type],
        )? > 0)
    }

    fn detector_state(&self, detector: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .conn()?
            .query(
                "SELECT key, state FROM detector_state WHERE detector = $1",
                &[&detector],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn save_detector_state(
        &self,
        detector: &str,
        entries: &[(String, Option<String>, i64)],
    ) -> anyhow::Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let put = tx.prepare(
            "INSERT INTO detector_state (detector, key, state, last_ns) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (detector, key) DO UPDATE SET state = excluded.state, \
             last_ns = excluded.last_ns",
        )?;
        let delete = tx.prepare("DELETE FROM detector_state WHERE detector = $1 AND key = $2")?;
        // In key order: two processes saving overlapping keys then lock rows in the same
        // order and wait for each other instead of deadlocking (seen with two replicas).
        let mut entries: Vec<_> = entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v, t) in entries {
            match v {
                Some(v) => tx.execute(&put, &[&detector, k, v, t])?,
                None => tx.execute(&delete, &[&detector, k])?,
            };
        }
        tx.commit()?;
        Ok(())
    }
}

impl crate::store::Leases for PgStore {
    fn lease(&self, name: &str, holder: &str, now_ns: i64, ttl_ns: i64) -> anyhow::Result<bool> {
        // One statement: of several replicas asking at once, the row lock makes one win. The
        // upsert's WHERE leaves a lease held by another, unexpired, alone: no row returned.
        let got = self.conn()?.query_opt(
            "INSERT INTO leases (name, holder, until_ns) VALUES ($1, $2, $3::BIGINT + $4::BIGINT) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             until_ns = excluded.until_ns \
             WHERE leases.holder = excluded.holder OR leases.until_ns < $3::BIGINT \
             RETURNING holder",
            &[&name, &holder, &now_ns, &ttl_ns],
        )?;
        Ok(got.is_some())
    }

    fn release(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        self.conn()?.execute(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )?;
        Ok(())
    }

    fn leases(&self) -> anyhow::Result<Vec<crate::store::LeaseRow>> {
        Ok(self
            .conn()?
            .query(
                "SELECT name, holder, until_ns FROM leases ORDER BY name",
                &[],
            )?
            .into_iter()
            .map(|r| crate::store::LeaseRow {
                name: r.get(0),
                holder: r.get(1),
                until_ns: r.get(2),
            })
            .collect())
    }
}
