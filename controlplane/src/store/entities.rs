//! What the entity views read from the embedded store: the 1-hour rollups' conversations, an
//! address's hourly activity, and the context the rollups lack (sensor hosts, open alerts).

use std::net::IpAddr;

use rusqlite::params;

use super::SqliteStore;
use crate::entities::{Context, Conversation};

pub trait EntityData {
    /// Conversations of the 1-hour rollups with a bucket in [since, until), summed; only those
    /// of `ip` when given.
    fn conversations(
        &self,
        since_ns: i64,
        until_ns: i64,
        ip: Option<IpAddr>,
    ) -> anyhow::Result<Vec<Conversation>>;
    /// (hour bucket, flows) of `ip`'s conversations in [since, until).
    fn hourly(&self, ip: IpAddr, since_ns: i64, until_ns: i64) -> anyhow::Result<Vec<(i64, u64)>>;
    fn entity_context(&self) -> anyhow::Result<Context>;
}

impl EntityData for SqliteStore {
    fn conversations(
        &self,
        since_ns: i64,
        until_ns: i64,
        ip: Option<IpAddr>,
    ) -> anyhow::Result<Vec<Conversation>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT src_ip, dst_ip, dst_port, protocol, SUM(flows), SUM(packets), SUM(bytes), \
             SUM(reverse_packets), SUM(reverse_bytes), SUM(answered), MIN(bucket_ns), \
             MAX(bucket_ns) FROM flows_1h \
             WHERE bucket_ns >= ?1 AND bucket_ns < ?2 AND (?3 IS NULL OR src_ip = ?3 OR dst_ip = ?3) \
             GROUP BY src_ip, dst_ip, dst_port, protocol",
        )?;
        let rows = st.query_map(
            params![since_ns, until_ns, ip.map(|i| i.to_string())],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    Conversation {
                        src: IpAddr::from([0, 0, 0, 0]),
                        dst: IpAddr::from([0, 0, 0, 0]),
                        dst_port: r.get(2)?,
                        protocol: r.get(3)?,
                        flows: r.get::<_, i64>(4)? as u64,
                        packets: r.get::<_, i64>(5)? as u64,
                        bytes: r.get::<_, i64>(6)? as u64,
                        reverse_packets: r.get::<_, i64>(7)? as u64,
                        reverse_bytes: r.get::<_, i64>(8)? as u64,
                        answered: r.get::<_, i64>(9)? as u64,
                        first_ns: r.get(10)?,
                        last_ns: r.get::<_, i64>(11)? + 3_600_000_000_000,
                    },
                ))
            },
        )?;
        let mut out = Vec::new();
        for r in rows {
            let (src, dst, mut conv) = r?;
            // Rows are written from parsed addresses; anything else is skipped.
            if let (Ok(s), Ok(d)) = (src.parse(), dst.parse()) {
                conv.src = s;
                conv.dst = d;
                out.push(conv);
            }
        }
        Ok(out)
    }

    fn hourly(&self, ip: IpAddr, since_ns: i64, until_ns: i64) -> anyhow::Result<Vec<(i64, u64)>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT bucket_ns, SUM(flows) FROM flows_1h WHERE bucket_ns >= ?1 AND bucket_ns < ?2 \
             AND (src_ip = ?3 OR dst_ip = ?3) GROUP BY bucket_ns ORDER BY bucket_ns",
        )?;
        let rows = st.query_map(params![since_ns, until_ns, ip.to_string()], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn entity_context(&self) -> anyhow::Result<Context> {
        let c = self.conn();
        let mut ctx = Context::default();
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
            let h: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let k8s = h["k8s_node"].as_str().is_some_and(|n| !n.is_empty());
            let label = hostname.filter(|h| !h.is_empty()).unwrap_or(name);
            for ip in super::interface_addresses(&h) {
                ctx.hosts.insert(ip, (label.clone(), k8s));
            }
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
}
