//! Rollups (kept by materialized views as flows arrive), retention by whole days, the entity
//! views' reads of the 1-hour rollups, and coverage gaps.

use std::{collections::HashSet, net::IpAddr};

use super::{ChStore, hex16, ip_of, ip16, secs, why};
use crate::{
    model::Source,
    store::{Conversation, CoverageGap, FlowTotals, Maintenance, Retention},
    util::net::internal,
};

const NS: i64 = 1_000_000_000;
const HOUR_NS: i64 = 3_600 * NS;
const DAY_NS: i64 = 86_400 * NS;

/// A rollup level's rows with their guessed initiators' counts, with what writes cut short
/// had added taken away.
fn rollup(level: &str) -> String {
    let key = "bucket, source, observer, src_ip, dst_ip, dst_port, protocol, action";
    let sums = "sum_flows, sum_packets, sum_bytes, sum_reverse_packets, sum_reverse_bytes, \
                sum_answered";
    format!(
        "(SELECT {key}, {sums}, toFloat64(0) AS sum_guessed FROM flows_{level} UNION ALL \
         SELECT {key}, 0., 0., 0., 0., 0., 0., sum_guessed FROM guessed_{level} UNION ALL \
         SELECT {key}, {sums}, sum_guessed FROM rollup_undo FINAL WHERE level = '{level}')"
    )
}

/// The sum of a rollup's Float64 counter, saturating as the embedded store's.
fn fsum(col: &str) -> String {
    format!("toInt64(greatest(least(sum({col}), {}.), 0.))", super::SAT)
}

impl ChStore {
    /// Drops the daily partitions wholly older than what `retention` keeps; the rollups are
    /// kept up to date as flows arrive, so nothing is rolled up here. Retention goes by whole
    /// days: up to a day more than the embedded store keeps.
    pub(super) fn maintain(
        &self,
        now_ns: i64,
        retention: &Retention,
    ) -> anyhow::Result<Maintenance> {
        let mut m = Maintenance::default();
        for (tables, keep, count) in [
            (
                &[
                    "flows",
                    "flows_by_ip",
                    "top_1h",
                    "top_odd",
                    "top_undo",
                    "flow_links",
                    "scan_events",
                    "probe_records",
                    "auth_events",
                ][..],
                retention.raw_ns,
                &mut m.deleted_raw,
            ),
            (
                &["flows_1m", "guessed_1m"][..],
                retention.minute_ns,
                &mut m.deleted_minutes,
            ),
            (
                &["flows_1h", "guessed_1h"][..],
                retention.hour_ns,
                &mut m.deleted_hours,
            ),
        ] {
            // A partition of day D holds times up to D + 1 day: it goes once that is before
            // the cutoff.
            let cutoff = now_ns.saturating_sub(keep);
            let parts: Vec<(String, String, u64)> = self
                .run(
                    self.client
                        .query(
                            "SELECT table, partition, sum(rows) FROM system.parts \
                             WHERE database = currentDatabase() AND active AND has(?, table) \
                             GROUP BY table, partition",
                        )
                        .bind(tables)
                        .fetch_all(),
                )
                .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
            for (table, partition, rows) in parts {
                let Some(day) = day_start_ns(&partition) else {
                    continue;
                };
                if day.saturating_add(DAY_NS) <= cutoff {
                    self.exec(&format!("ALTER TABLE {table} DROP PARTITION {partition}"))?;
                    if table == tables[0] {
                        *count += rows;
                    }
                }
            }
        }
        Ok(m)
    }

    pub(super) fn rollup_totals(&self, level: &str, source: Source) -> anyhow::Result<FlowTotals> {
        anyhow::ensure!(
            level == "1m" || level == "1h",
            "no rollup level `{level}` (1m or 1h)"
        );
        let sql = format!(
            "SELECT {}, {}, {}, {}, {} FROM {} WHERE source = ?",
            fsum("sum_flows"),
            fsum("sum_packets"),
            fsum("sum_bytes"),
            fsum("sum_reverse_packets"),
            fsum("sum_reverse_bytes"),
            rollup(level)
        );
        let (records, packets, bytes, reverse_packets, reverse_bytes): (i64, i64, i64, i64, i64) =
            self.run(self.client.query(&sql).bind(source.as_str()).fetch_one())
                .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        Ok(FlowTotals {
            records: records as u64,
            packets: packets as u64,
            bytes: bytes as u64,
            reverse_packets: reverse_packets as u64,
            reverse_bytes: reverse_bytes as u64,
        })
    }

    /// The 1-hour rows with a bucket in [since, until) (and of `ip`), as `WHERE` terms.
    fn hours(since_ns: i64, until_ns: i64, ip: Option<IpAddr>) -> String {
        // The DateTime bounds narrow the read; the nanosecond ones are exact.
        let mut w = format!(
            "bucket >= {} AND toInt64(bucket) * {NS} >= {since_ns} \
             AND bucket <= {} AND toInt64(bucket) * {NS} < {until_ns}",
            secs(since_ns),
            secs(until_ns),
        );
        if let Some(ip) = ip {
            let lit = hex16(ip16(ip));
            w.push_str(&format!(" AND (src_ip = {lit} OR dst_ip = {lit})"));
        }
        w
    }

    pub(super) fn conversations(
        &self,
        since_ns: i64,
        until_ns: i64,
        ip: Option<IpAddr>,
    ) -> anyhow::Result<Vec<Conversation>> {
        let sql = format!(
            "SELECT src_ip, dst_ip, dst_port, protocol, {}, {}, {}, {}, {}, {}, {}, \
             toInt64(min(bucket)) * {NS}, toInt64(max(bucket)) * {NS} FROM {} WHERE {} \
             GROUP BY src_ip, dst_ip, dst_port, protocol HAVING sum(sum_flows) > 0",
            fsum("sum_flows"),
            fsum("sum_packets"),
            fsum("sum_bytes"),
            fsum("sum_reverse_packets"),
            fsum("sum_reverse_bytes"),
            fsum("sum_answered"),
            fsum("sum_guessed"),
            rollup("1h"),
            Self::hours(since_ns, until_ns, ip),
        );
        let rows: Vec<ConvRow> = self
            .run(self.client.query(&sql).fetch_all())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        Ok(rows
            .into_iter()
            .map(|r| Conversation {
                src: ip_of(r.src_ip),
                dst: ip_of(r.dst_ip),
                dst_port: r.dst_port,
                protocol: r.protocol,
                flows: r.flows as u64,
                packets: r.packets as u64,
                bytes: r.bytes as u64,
                reverse_packets: r.reverse_packets as u64,
                reverse_bytes: r.reverse_bytes as u64,
                answered: r.answered as u64,
                guessed: r.guessed as u64,
                first_ns: r.first_ns,
                last_ns: r.last_ns + HOUR_NS,
            })
            .collect())
    }

    pub(super) fn hourly(
        &self,
        ip: IpAddr,
        since_ns: i64,
        until_ns: i64,
    ) -> anyhow::Result<Vec<(i64, u64)>> {
        let sql = format!(
            "SELECT toInt64(bucket) * {NS} AS b, {} FROM {} WHERE {} GROUP BY b \
             HAVING sum(sum_flows) > 0 ORDER BY b",
            fsum("sum_flows"),
            rollup("1h"),
            Self::hours(since_ns, until_ns, Some(ip)),
        );
        let rows: Vec<(i64, i64)> = self
            .run(self.client.query(&sql).fetch_all())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        Ok(rows.into_iter().map(|(b, n)| (b, n as u64)).collect())
    }

    /// Internal addresses of cloud flows ending since `since_ns` that no sensor watches:
    /// grouped by address on the server, filtered here.
    pub(super) fn coverage_gaps(
        &self,
        since_ns: i64,
        watched: &HashSet<IpAddr>,
    ) -> anyhow::Result<Vec<CoverageGap>> {
        let sql = format!(
            "SELECT ip, min(start_ns), max(end_ns), count(), groupUniqArray(observer), \
             groupUniqArray(vpc) FROM (SELECT arrayJoin([src_ip, dst_ip]) AS ip, start_ns, \
             end_ns, observer, vpc FROM flows WHERE end >= {} AND end_ns >= {since_ns} \
             AND source != 'sensor') GROUP BY ip",
            secs(since_ns)
        );
        let rows: Vec<GapRow> = self
            .run(self.client.query(&sql).fetch_all())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        let mut gaps: Vec<(IpAddr, CoverageGap)> = rows
            .into_iter()
            .filter_map(|g| {
                let (first, last, flows, mut observers, mut vpcs) =
                    (g.first, g.last, g.flows, g.observers, g.vpcs);
                let ip = ip_of(g.ip);
                if !internal(&ip) || watched.contains(&ip) {
                    return None;
                }
                observers.sort_unstable();
                vpcs.sort_unstable();
                Some((
                    ip,
                    CoverageGap {
                        ip: ip.to_string(),
                        first_seen_ns: first,
                        last_seen_ns: last,
                        flows: flows as i64,
                        observers,
                        vpcs,
                    },
                ))
            })
            .collect();
        gaps.sort_unstable_by_key(|(ip, _)| *ip);
        Ok(gaps.into_iter().map(|(_, g)| g).collect())
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ConvRow {
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    dst_port: u16,
    protocol: u8,
    flows: i64,
    packets: i64,
    bytes: i64,
    reverse_packets: i64,
    reverse_bytes: i64,
    answered: i64,
    guessed: i64,
    first_ns: i64,
    last_ns: i64,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct GapRow {
    ip: [u8; 16],
    first: i64,
    last: i64,
    flows: u64,
    observers: Vec<String>,
    vpcs: Vec<String>,
}

/// The start of the day a `toYYYYMMDD` partition holds, in nanoseconds.
fn day_start_ns(partition: &str) -> Option<i64> {
    let p = partition.trim_matches('\'');
    if p.len() != 8 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (
        p[..4].parse::<i32>().ok()?,
        p[4..6].parse::<u8>().ok()?,
        p[6..].parse::<u8>().ok()?,
    );
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_name_their_day() {
        assert_eq!(day_start_ns("19700101"), Some(0));
        assert_eq!(day_start_ns("20261206"), Some(1_796_515_200 * NS));
        assert_eq!(day_start_ns("'20261206'"), Some(1_796_515_200 * NS));
        for bad in ["2026120", "2026-12-06", "20261341", "tuple()"] {
            assert_eq!(day_start_ns(bad), None, "{bad}");
        }
    }
}
