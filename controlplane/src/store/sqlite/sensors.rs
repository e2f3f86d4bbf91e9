//! Sensors and their keys in the embedded store.

use std::{collections::HashSet, net::IpAddr};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::{
    model::{Heartbeat, Registration},
    store::SensorRow,
};

pub(super) fn add_sensor(
    c: &Connection,
    name: &str,
    key_hash: &str,
    now_ns: i64,
) -> anyhow::Result<()> {
    let exists: Option<String> = c
        .query_row("SELECT name FROM sensors WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_some() {
        anyhow::bail!("a sensor named `{name}` exists already");
    }
    c.execute(
        "INSERT INTO sensors (name, key_hash, created_ns) VALUES (?1, ?2, ?3)",
        params![name, key_hash, now_ns],
    )?;
    Ok(())
}

pub(super) fn revoke_sensor(c: &Connection, name: &str, now_ns: i64) -> anyhow::Result<bool> {
    let n = c.execute(
        "UPDATE sensors SET revoked_ns = ?2 WHERE name = ?1 AND revoked_ns IS NULL",
        params![name, now_ns],
    )?;
    Ok(n == 1)
}

pub(super) fn sensors(c: &Connection) -> anyhow::Result<Vec<SensorRow>> {
    let mut st = c.prepare(
        "SELECT name, created_ns, revoked_ns, instance_id, version, kernel, hostname, \
         first_seen_ns, last_heartbeat_ns, kernel_counters, host_json, agent_counters, \
         replica FROM sensors ORDER BY name",
    )?;
    let rows = st.query_map([], |r| {
        Ok(SensorRow {
            name: r.get(0)?,
            created_unix_ns: r.get(1)?,
            revoked: r.get::<_, Option<i64>>(2)?.is_some(),
            instance_id: r.get(3)?,
            version: r.get(4)?,
            kernel: r.get(5)?,
            hostname: r.get(6)?,
            first_seen_unix_ns: r.get(7)?,
            last_heartbeat_unix_ns: r.get(8)?,
            kernel_counters: r.get(9)?,
            host: r.get(10)?,
            agent_counters: r.get(11)?,
            replica: r.get(12)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn sensor_for_key(c: &Connection, key_hash: &str) -> anyhow::Result<Option<String>> {
    Ok(c.query_row(
        "SELECT name FROM sensors WHERE key_hash = ?1 AND revoked_ns IS NULL",
        [key_hash],
        |r| r.get(0),
    )
    .optional()?)
}

pub(super) fn register(
    c: &Connection,
    sensor: &str,
    req: &Registration,
    now_ns: i64,
) -> anyhow::Result<()> {
    c.execute(
        "UPDATE sensors SET instance_id = ?2, version = ?3, kernel = ?4, hostname = ?5, \
         machine_id = ?6, host_json = ?7, first_seen_ns = COALESCE(first_seen_ns, ?8), \
         last_heartbeat_ns = ?8, replica = NULLIF(?9, '') WHERE name = ?1",
        params![
            sensor,
            req.instance_id,
            req.version,
            req.kernel,
            req.hostname,
            req.machine_id,
            crate::store::rows::host_json(req),
            now_ns,
            req.replica
        ],
    )?;
    Ok(())
}

pub(super) fn heartbeat(
    c: &Connection,
    sensor: &str,
    req: &Heartbeat,
    now_ns: i64,
) -> anyhow::Result<()> {
    c.execute(
        "UPDATE sensors SET last_heartbeat_ns = ?2, kernel_counters = ?3, agent_counters = ?4, \
         first_seen_ns = COALESCE(first_seen_ns, ?2), replica = NULLIF(?5, '') WHERE name = ?1",
        params![
            sensor,
            now_ns,
            serde_json::to_string(&req.kernel_counters)?,
            serde_json::to_string(&req.agent_counters)?,
            req.replica
        ],
    )?;
    Ok(())
}

pub(super) fn sensor_addresses(c: &Connection) -> anyhow::Result<HashSet<IpAddr>> {
    let mut covered = HashSet::new();
    let mut st = c.prepare("SELECT host_json FROM sensors WHERE host_json IS NOT NULL")?;
    for h in st.query_map([], |r| r.get::<_, String>(0))? {
        let h: serde_json::Value = serde_json::from_str(&h?).unwrap_or_default();
        covered.extend(crate::store::rows::interface_addresses(&h));
    }
    Ok(covered)
}

#[cfg(test)]
mod tests {
    use crate::store::{Sensors as _, SqliteStore};

    #[test]
    fn revoked_keys_find_no_sensor() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        s.add_sensor("a", "hash-a", 1).expect("add");
        assert!(s.add_sensor("a", "hash-b", 1).is_err(), "names are unique");
        assert_eq!(s.sensor_for_key("hash-a").expect("q"), Some("a".into()));
        assert!(s.revoke_sensor("a", 2).expect("revoke"));
        assert!(!s.revoke_sensor("a", 3).expect("revoke twice"));
        assert_eq!(s.sensor_for_key("hash-a").expect("q"), None);
        assert!(s.sensors().expect("list")[0].revoked);
    }
}
