//! Sensors and their keys in PostgreSQL.

use std::{collections::HashSet, net::IpAddr};

use super::PgStore;
use crate::{
    model::{Heartbeat, Registration},
    store::{SensorRow, Sensors, rows},
};

impl Sensors for PgStore {
    fn add_sensor(&self, name: &str, key_hash: &str, now_ns: i64) -> anyhow::Result<()> {
        let n = self.conn()?.execute(
            "INSERT INTO sensors (name, key_hash, created_ns) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &key_hash, &now_ns],
        )?;
        anyhow::ensure!(n == 1, "a sensor named `{name}` exists already");
        Ok(())
    }

    fn revoke_sensor(&self, name: &str, now_ns: i64) -> anyhow::Result<bool> {
        Ok(self.conn()?.execute(
            "UPDATE sensors SET revoked_ns = $2 WHERE name = $1 AND revoked_ns IS NULL",
            &[&name, &now_ns],
        )? == 1)
    }

    fn sensors(&self) -> anyhow::Result<Vec<SensorRow>> {
        Ok(self
            .conn()?
            .query(
                "SELECT name, created_ns, revoked_ns, instance_id, version, kernel, hostname, \
                 first_seen_ns, last_heartbeat_ns, kernel_counters, host_json, agent_counters, \
                 replica FROM sensors ORDER BY name",
                &[],
            )?
            .into_iter()
            .map(|r| SensorRow {
                name: r.get(0),
                created_unix_ns: r.get(1),
                revoked: r.get::<_, Option<i64>>(2).is_some(),
                instance_id: r.get(3),
                version: r.get(4),
                kernel: r.get(5),
                hostname: r.get(6),
                first_seen_unix_ns: r.get(7),
                last_heartbeat_unix_ns: r.get(8),
                kernel_counters: r.get(9),
                host: r.get(10),
                agent_counters: r.get(11),
                replica: r.get(12),
            })
            .collect())
    }

    fn sensor_for_key(&self, key_hash: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT name FROM sensors WHERE key_hash = $1 AND revoked_ns IS NULL",
                &[&key_hash],
            )?
            .map(|r| r.get(0)))
    }

    fn register(&self, sensor: &str, req: &Registration, now_ns: i64) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE sensors SET instance_id = $2, version = $3, kernel = $4, hostname = $5, \
             machine_id = $6, host_json = $7, first_seen_ns = COALESCE(first_seen_ns, $8), \
             last_heartbeat_ns = $8, replica = NULLIF($9, '') WHERE name = $1",
            &[
                &sensor,
                &req.instance_id,
                &req.version,
                &req.kernel,
                &req.hostname,
                &req.machine_id,
                &rows::host_json(req),
                &now_ns,
                &req.replica,
            ],
        )?;
        Ok(())
    }

    fn heartbeat(&self, sensor: &str, req: &Heartbeat, now_ns: i64) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE sensors SET last_heartbeat_ns = $2, kernel_counters = $3, \
             agent_counters = $4, first_seen_ns = COALESCE(first_seen_ns, $2), replica = NULLIF($5, '') \
             WHERE name = $1",
            &[
                &sensor,
                &now_ns,
                &serde_json::to_string(&req.kernel_counters)?,
                &serde_json::to_string(&req.agent_counters)?,
                &req.replica,
            ],
        )?;
        Ok(())
    }

    fn sensor_addresses(&self) -> anyhow::Result<HashSet<IpAddr>> {
        let mut covered = HashSet::new();
        for r in self.conn()?.query(
            "SELECT host_json FROM sensors WHERE host_json IS NOT NULL",
            &[],
        )? {
            let h: serde_json::Value = serde_json::from_str(r.get(0)).unwrap_or_default();
            covered.extend(rows::interface_addresses(&h));
        }
        Ok(covered)
    }
}
