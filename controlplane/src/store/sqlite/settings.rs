//! The watchlist, the allowlist, the sensitivity settings and the detectors' state in the
//! embedded store.

use rusqlite::{Connection, params};

pub(super) fn watchlist(c: &Connection) -> anyhow::Result<Vec<(String, String)>> {
    let mut st = c.prepare_cached("SELECT cidr, label FROM watchlist ORDER BY cidr")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn add_watchlist(
    c: &mut Connection,
    entries: &[(String, String)],
    now_ns: i64,
) -> anyhow::Result<usize> {
    let tx = c.transaction()?;
    let mut new = 0;
    {
        let mut known = tx.prepare_cached("SELECT 1 FROM watchlist WHERE cidr = ?1")?;
        let mut put = tx.prepare_cached(
            "INSERT INTO watchlist (cidr, label, added_ns) VALUES (?1, ?2, ?3) \
             ON CONFLICT (cidr) DO UPDATE SET label = excluded.label",
        )?;
        for (cidr, label) in entries {
            if !known.exists([cidr])? {
                new += 1;
            }
            put.execute(params![cidr, label, now_ns])?;
        }
    }
    tx.commit()?;
    Ok(new)
}

pub(super) fn remove_watchlist(c: &Connection, cidr: &str) -> anyhow::Result<bool> {
    Ok(c.execute("DELETE FROM watchlist WHERE cidr = ?1", [cidr])? > 0)
}

pub(super) fn allowlist(c: &Connection) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut st = c.prepare_cached(
        "SELECT cidr, alert_type, label FROM allowlist ORDER BY cidr, alert_type",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn add_allowlist(
    c: &mut Connection,
    cidr: &str,
    alert_type: &str,
    label: &str,
    now_ns: i64,
) -> anyhow::Result<bool> {
    let tx = c.transaction()?;
    let known = tx
        .prepare_cached("SELECT 1 FROM allowlist WHERE cidr = ?1 AND alert_type = ?2")?
        .exists([cidr, alert_type])?;
    tx.execute(
        "INSERT INTO allowlist (cidr, alert_type, label, added_ns) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (cidr, alert_type) DO UPDATE SET label = excluded.label",
        params![cidr, alert_type, label, now_ns],
    )?;
    tx.commit()?;
    Ok(!known)
}

pub(super) fn remove_allowlist(
    c: &Connection,
    cidr: &str,
    alert_type: &str,
) -> anyhow::Result<bool> {
    Ok(c.execute(
        "DELETE FROM allowlist WHERE cidr = ?1 AND alert_type = ?2",
        [cidr, alert_type],
    )? > 0)
}

pub(super) fn sensitivities(c: &Connection) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut st = c.prepare_cached(
        "SELECT cidr, alert_type, level FROM sensitivity ORDER BY cidr, alert_type",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn set_sensitivity(
    c: &mut Connection,
    cidr: &str,
    alert_type: &str,
    level: &str,
    now_ns: i64,
) -> anyhow::Result<bool> {
    let tx = c.transaction()?;
    let known = tx
        .prepare_cached("SELECT 1 FROM sensitivity WHERE cidr = ?1 AND alert_type = ?2")?
        .exists([cidr, alert_type])?;
    tx.execute(
        "INSERT INTO sensitivity (cidr, alert_type, level, added_ns) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (cidr, alert_type) DO UPDATE SET level = excluded.level",
        params![cidr, alert_type, level, now_ns],
    )?;
    tx.commit()?;
    Ok(!known)
}

pub(super) fn remove_sensitivity(
    c: &Connection,
    cidr: &str,
    alert_type: &str,
) -> anyhow::Result<bool> {
    Ok(c.execute(
        "DELETE FROM sensitivity WHERE cidr = ?1 AND alert_type = ?2",
        [cidr, alert_type],
    )? > 0)
}

pub(super) fn detector_state(
    c: &Connection,
    detector: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut st = c.prepare_cached("SELECT key, state FROM detector_state WHERE detector = ?1")?;
    let rows = st.query_map([detector], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn save_detector_state(
    c: &mut Connection,
    detector: &str,
    entries: &[(String, Option<String>, i64)],
) -> anyhow::Result<()> {
    let tx = c.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO detector_state (detector, key, state, last_ns) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (detector, key) \
             DO UPDATE SET state = excluded.state, last_ns = excluded.last_ns",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM detector_state WHERE detector = ?1 AND key = ?2")?;
        for (k, v, t) in entries {
            match v {
                Some(v) => put.execute(params![detector, k, v, t])?,
                None => delete.execute(params![detector, k])?,
            };
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn lease(
    c: &Connection,
    name: &str,
    holder: &str,
    now_ns: i64,
    ttl_ns: i64,
) -> anyhow::Result<bool> {
    // The upsert's WHERE leaves a lease held by another, unexpired, alone: no row changes.
    let changed = c.execute(
        "INSERT INTO leases (name, holder, until_ns) VALUES (?1, ?2, ?3 + ?4) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ns = excluded.until_ns \
         WHERE leases.holder = excluded.holder OR leases.until_ns < ?3",
        rusqlite::params![name, holder, now_ns, ttl_ns],
    )?;
    Ok(changed == 1)
}

pub(super) fn release(c: &Connection, name: &str, holder: &str) -> anyhow::Result<()> {
    c.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        [name, holder],
    )?;
    Ok(())
}

pub(super) fn leases(c: &Connection) -> anyhow::Result<Vec<crate::store::LeaseRow>> {
    let mut st = c.prepare_cached("SELECT name, holder, until_ns FROM leases ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok(crate::store::LeaseRow {
            name: r.get(0)?,
            holder: r.get(1)?,
            until_ns: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
