//! Rollups of 1 minute and 1 hour (conversations, source port dropped), retention, and the
//! entity views' reads of the 1-hour rollups.

use std::net::IpAddr;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    narrow,
    query::{totals, totals_row},
    sat_add, sat_sum,
};
use crate::{
    model::Source,
    store::{Conversation, FlowTotals, Maintenance, Retention},
};

/// Whether a flow's destination really answered (SQL over a `flows` row): a TCP handshake it
/// completed (SYN-ACK back; a RST is a closed port), any return traffic of other protocols, or,
/// in a one-way cloud record, the cloud's accept.
const ANSWERED: &str = "CASE WHEN source = 'sensor' THEN \
     CASE WHEN protocol = 6 THEN (reverse_tcp_flags & 18) = 18 ELSE reverse_packets > 0 END \
     ELSE action = 'accept' OR reverse_packets > 0 END";

/// Whether a flow's initiator was a guess (SQL over a `flows` row; see
/// [`crate::model::GUESSED_INITIATOR`]).
const GUESSED: &str = "source = 'sensor' AND initiator_by IN ('one_way', 'first_seen')";

pub(super) fn maintain(
    c: &mut Connection,
    now_ns: i64,
    retention: &Retention,
) -> anyhow::Result<Maintenance> {
    let mut m = Maintenance::default();
    let tx = c.transaction()?;
    let last: i64 = tx
        .query_row(
            "SELECT last_flow_id FROM rollup_state WHERE name = 'flows'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let max: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM flows", [], |r| r.get(0))?;
    if max > last {
        for (table, width) in [
            ("flows_1m", 60_000_000_000i64),
            ("flows_1h", 3_600_000_000_000),
        ] {
            tx.execute(
                &format!(
                    "INSERT INTO {table} (bucket_ns, source, observer, src_ip, dst_ip, \
                     dst_port, protocol, action, flows, packets, bytes, reverse_packets, \
                     reverse_bytes, answered, guessed) \
                     SELECT end_ns - (end_ns % {width}), source, sensor, src_ip, dst_ip, \
                     dst_port, protocol, action, COUNT(*), {}, {}, {}, {}, SUM({ANSWERED}), \
                     SUM({GUESSED}) \
                     FROM flows WHERE id > ?1 AND id <= ?2 \
                     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 \
                     ON CONFLICT DO UPDATE SET flows = {}, packets = {}, bytes = {}, \
                     reverse_packets = {}, reverse_bytes = {}, answered = {}, guessed = {}",
                    sat_sum("packets"),
                    sat_sum("bytes"),
                    sat_sum("reverse_packets"),
                    sat_sum("reverse_bytes"),
                    sat_add("flows", "excluded.flows"),
                    sat_add("packets", "excluded.packets"),
                    sat_add("bytes", "excluded.bytes"),
                    sat_add("reverse_packets", "excluded.reverse_packets"),
                    sat_add("reverse_bytes", "excluded.reverse_bytes"),
                    sat_add("answered", "excluded.answered"),
                    sat_add("guessed", "excluded.guessed"),
                ),
                params![last, max],
            )?;
        }
        tx.execute(
            "INSERT INTO rollup_state (name, last_flow_id) VALUES ('flows', ?1) \
             ON CONFLICT (name) DO UPDATE SET last_flow_id = excluded.last_flow_id",
            [max],
        )?;
        m.rolled_up = (max - last) as u64;
    }
    // Raw flows go only once rolled up (id <= max, all of which now are), and never the
    // row with the highest id: SQLite would give its id to the next flow, which the rollup
    // watermark would then skip.
    let cutoff = now_ns - retention.raw_ns;
    tx.execute(
        "DELETE FROM flow_links WHERE sensor_flow IN (SELECT id FROM flows WHERE end_ns < ?1 AND id < ?2) \
         OR cloud_flow IN (SELECT id FROM flows WHERE end_ns < ?1 AND id < ?2)",
        params![cutoff, max],
    )?;
    m.deleted_raw = tx.execute(
        "DELETE FROM flows WHERE end_ns < ?1 AND id < ?2",
        params![cutoff, max],
    )? as u64;
    // Chunks all of whose flows are gone.
    tx.execute(
        "DELETE FROM flow_chunks WHERE max_end_ns < ?1 AND last_id < ?2",
        params![cutoff, max],
    )?;
    m.deleted_minutes = tx.execute(
        "DELETE FROM flows_1m WHERE bucket_ns < ?1",
        [now_ns - retention.minute_ns],
    )? as u64;
    m.deleted_hours = tx.execute(
        "DELETE FROM flows_1h WHERE bucket_ns < ?1",
        [now_ns - retention.hour_ns],
    )? as u64;
    tx.commit()?;
    Ok(m)
}

pub(super) fn rollup_totals(
    c: &Connection,
    level: &str,
    source: Source,
) -> anyhow::Result<FlowTotals> {
    let table = match level {
        "1m" => "flows_1m",
        "1h" => "flows_1h",
        _ => anyhow::bail!("no rollup level `{level}` (1m or 1h)"),
    };
    Ok(c.query_row(
        &format!("{} WHERE source = ?1", totals(&sat_sum("flows"), table)),
        [source.as_str()],
        totals_row,
    )?)
}

pub(super) fn conversations(
    c: &Connection,
    since_ns: i64,
    until_ns: i64,
    ip: Option<IpAddr>,
) -> anyhow::Result<Vec<Conversation>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT src_ip, dst_ip, dst_port, protocol, {}, {}, {}, {}, {}, {}, {}, MIN(bucket_ns), \
         MAX(bucket_ns) FROM flows_1h \
         WHERE bucket_ns >= ?1 AND bucket_ns < ?2 AND (?3 IS NULL OR src_ip = ?3 OR dst_ip = ?3) \
         GROUP BY src_ip, dst_ip, dst_port, protocol",
        sat_sum("flows"),
        sat_sum("packets"),
        sat_sum("bytes"),
        sat_sum("reverse_packets"),
        sat_sum("reverse_bytes"),
        sat_sum("answered"),
        sat_sum("guessed"),
    ))?;
    let rows = st.query_map(
        params![since_ns, until_ns, ip.map(|i| i.to_string())],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                Conversation {
                    src: IpAddr::from([0, 0, 0, 0]),
                    dst: IpAddr::from([0, 0, 0, 0]),
                    dst_port: narrow(r, 2)?,
                    protocol: narrow(r, 3)?,
                    flows: r.get::<_, i64>(4)? as u64,
                    packets: r.get::<_, i64>(5)? as u64,
                    bytes: r.get::<_, i64>(6)? as u64,
                    reverse_packets: r.get::<_, i64>(7)? as u64,
                    reverse_bytes: r.get::<_, i64>(8)? as u64,
                    answered: r.get::<_, i64>(9)? as u64,
                    guessed: r.get::<_, i64>(10)? as u64,
                    first_ns: r.get(11)?,
                    last_ns: r.get::<_, i64>(12)? + 3_600_000_000_000,
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

pub(super) fn hourly(
    c: &Connection,
    ip: IpAddr,
    since_ns: i64,
    until_ns: i64,
) -> anyhow::Result<Vec<(i64, u64)>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT bucket_ns, {} FROM flows_1h WHERE bucket_ns >= ?1 AND bucket_ns < ?2 \
         AND (src_ip = ?3 OR dst_ip = ?3) GROUP BY bucket_ns ORDER BY bucket_ns",
        sat_sum("flows")
    ))?;
    let rows = st.query_map(params![since_ns, until_ns, ip.to_string()], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::cloud_flow;
    use super::*;
    use crate::store::{FlowStore as _, SqliteStore};

    #[test]
    fn rollups_count_each_flow_once_and_retention_keeps_their_totals() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        const DAY: i64 = 86_400;
        let now_s = 1_795_860_000;
        // One 10 days old, two in the same minute and conversation, one a minute later.
        s.insert_flows(&[
            cloud_flow("10.0.0.2", 443, now_s - 10 * DAY, 7),
            cloud_flow("10.0.0.1", 22, now_s - 30, 3),
            cloud_flow("10.0.0.1", 22, now_s - 20, 4),
            cloud_flow("10.0.0.1", 22, now_s + 40, 5),
        ])
        .expect("insert");
        let raw = s.source_totals(Source::Aws).expect("raw");
        assert_eq!((raw.records, raw.packets), (4, 19));
        let ret = Retention::default();
        let m = s.maintain(now_s * 1_000_000_000, &ret).expect("maintain");
        assert_eq!((m.rolled_up, m.deleted_raw), (4, 1), "{m:?}");
        for level in ["1m", "1h"] {
            let t = s.rollup_totals(level, Source::Aws).expect("rollup");
            assert_eq!(
                (
                    t.records,
                    t.packets,
                    t.bytes,
                    t.reverse_packets,
                    t.reverse_bytes
                ),
                (4, 19, 1900, 4, 240),
                "{level}"
            );
        }
        let buckets: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM flows_1m", [], |r| r.get(0))
            .expect("buckets");
        assert_eq!(buckets, 3, "two flows share a minute bucket");
        // Raw: the old one went; a second pass adds nothing.
        assert_eq!(s.source_totals(Source::Aws).expect("raw").records, 3);
        let m = s.maintain(now_s * 1_000_000_000, &ret).expect("again");
        assert_eq!(m, Maintenance::default());
        assert_eq!(s.rollup_totals("1m", Source::Aws).expect("1m").packets, 19);
        // New flows are added to their buckets.
        s.insert_flows(&[cloud_flow("10.0.0.1", 22, now_s - 25, 10)])
            .expect("insert");
        assert_eq!(
            s.maintain(now_s * 1_000_000_000, &ret)
                .expect("m")
                .rolled_up,
            1
        );
        assert_eq!(s.rollup_totals("1m", Source::Aws).expect("1m").packets, 29);
        assert_eq!(s.rollup_totals("1h", Source::Aws).expect("1h").records, 5);
        // 40 days on, the minutes go and the hours stay; so does the newest raw flow, whose id
        // must not be reused.
        let later = (now_s + 40 * DAY) * 1_000_000_000;
        let m = s.maintain(later, &ret).expect("later");
        assert_eq!((m.deleted_raw, m.deleted_minutes), (3, 3), "{m:?}");
        assert_eq!(s.rollup_totals("1h", Source::Aws).expect("1h").packets, 29);
        s.insert_flows(&[cloud_flow("10.0.0.3", 22, now_s + 40 * DAY, 1)])
            .expect("insert");
        assert_eq!(s.maintain(later, &ret).expect("m").rolled_up, 1);
        assert_eq!(s.rollup_totals("1h", Source::Aws).expect("1h").packets, 30);
        assert!(s.rollup_totals("5m", Source::Aws).is_err());
    }

    #[test]
    fn extreme_counters_saturate_and_break_no_query_nor_rollup() {
        use crate::store::{FlowQuery, TopBy, TopGroup, TopQuery};
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let now_s = 1_795_860_000;
        let huge = |src: &str| {
            let mut f = cloud_flow(src, 443, now_s - 30, 1);
            (f.packets, f.bytes) = (u64::MAX, u64::MAX);
            f.reverse_packets = 1 << 63;
            f.reverse_bytes = 1 << 63;
            f
        };
        // Two in one minute and conversation: their sum is past 2^64.
        s.insert_flows(&[huge("10.0.0.1"), huge("10.0.0.1"), huge("10.0.0.2")])
            .expect("insert");
        let ret = Retention::default();
        let m = s.maintain(now_s * 1_000_000_000, &ret).expect("maintain");
        assert_eq!(m.rolled_up, 3);
        let sat = 9_200_000_000_000_000_000u64;
        let t = s.rollup_totals("1m", Source::Aws).expect("1m");
        assert_eq!((t.records, t.packets, t.bytes), (3, sat, sat));
        // Another one into the same bucket: the stored sum stays saturated.
        s.insert_flows(&[huge("10.0.0.1")]).expect("insert");
        s.maintain(now_s * 1_000_000_000, &ret)
            .expect("maintain again");
        assert_eq!(s.rollup_totals("1h", Source::Aws).expect("1h").bytes, sat);
        assert_eq!(s.source_totals(Source::Aws).expect("raw").packets, sat);
        let top = s
            .top(&TopQuery {
                by: TopBy::Bytes,
                group: TopGroup::SrcIp,
                since_ns: 0,
                until_ns: None,
                source: None,
                limit: 10,
            })
            .expect("top");
        assert_eq!(top[0].bytes, sat as i64);
        let conv = s.conversations(0, i64::MAX, None).expect("conversations");
        assert!(conv.iter().all(|c| c.bytes == sat), "{conv:?}");
        // A row an older version stored without checking its ports and flags reads back.
        s.conn()
            .execute(
                "UPDATE flows SET tcp_flags = 4294967295, dst_port = 70000, protocol = 300 \
                 WHERE id = 1",
                [],
            )
            .expect("poison");
        let rows = s
            .query_flows(&FlowQuery {
                limit: 10,
                ..FlowQuery::default()
            })
            .expect("flows");
        let old = rows.iter().find(|r| r.id == 1).expect("row 1");
        assert_eq!(
            (old.tcp_flags, old.dst_port, old.protocol),
            (0xff, Some(0), Some(0))
        );
        assert_eq!(old.packets, Some(i64::MAX), "stored saturated at 2^63 - 1");
    }
}
