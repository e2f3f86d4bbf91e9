//! Reads of raw flows: by filters (through the chunks when by address), top-N, totals, and the
//! internal addresses of cloud flows that no sensor watches.

use std::{collections::HashSet, net::IpAddr};

use rusqlite::{Connection, params};

use super::{chunks, narrow, sat_sum};
use crate::{
    model::Source,
    store::{CoverageGap, FlowQuery, FlowRow, FlowTotals, TopBy, TopGroup, TopQuery, TopRow},
    util::net::internal,
};

pub(super) fn query_flows(c: &Connection, q: &FlowQuery) -> anyhow::Result<Vec<FlowRow>> {
    use rusqlite::types::Value;
    let mut wh: Vec<String> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut arg = |v: Value| {
        args.push(v);
        format!("?{}", args.len())
    };
    if let Some(ip) = q.ip {
        let a = arg(Value::Text(ip.to_string()));
        wh.push(format!("(src_ip = {a} OR dst_ip = {a})"));
    }
    if let Some(p) = q.port {
        let a = arg(Value::Integer(p.into()));
        wh.push(format!("(src_port = {a} OR dst_port = {a})"));
    }
    if let Some(p) = q.protocol {
        wh.push(format!("protocol = {}", arg(Value::Integer(p.into()))));
    }
    if let Some(t) = q.since_ns {
        wh.push(format!("end_ns >= {}", arg(Value::Integer(t))));
    }
    if let Some(t) = q.until_ns {
        wh.push(format!("start_ns < {}", arg(Value::Integer(t))));
    }
    if let Some(s) = q.source {
        wh.push(format!("source = {}", arg(Value::Text(s.as_str().into()))));
    }
    if let Some(b) = q.before {
        let (end, id) = (arg(Value::Integer(b.end_ns)), arg(Value::Integer(b.id)));
        wh.push(format!("(end_ns, id) < ({end}, {id})"));
    }
    // By address: only the id ranges of the chunks that may hold it, each sorted on its own
    // (not by the time index, which would walk every flow for one chunk's).
    let ranges = match q.ip {
        Some(ip) => {
            let r = chunks::ranges_holding(c, ip, q.since_ns, q.before.map(|b| b.end_ns))?;
            let (lo, hi) = (arg(Value::Null), arg(Value::Null));
            wh.push(format!("id BETWEEN {lo} AND {hi}"));
            Some(r)
        }
        None => None,
    };
    let order = if ranges.is_some() {
        "+end_ns"
    } else {
        "end_ns"
    };
    let limit = arg(Value::Integer(q.limit as i64));
    let sql = format!(
        "SELECT id, source, sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
         packets, bytes, reverse_packets, reverse_bytes, tcp_flags, start_ns, end_ns, action, \
         sampling_rate, observed, vpc, subnet, instance, region, zone, pkt_src_ip, \
         pkt_dst_ip, cloud_json, src_pod, dst_pod, \
         (SELECT COUNT(*) FROM flow_links l WHERE l.sensor_flow = flows.id) + \
         (SELECT COUNT(*) FROM flow_links l WHERE l.cloud_flow = flows.id), initiator_by, \
         reverse_tcp_flags FROM flows {} ORDER BY {order} DESC, id DESC LIMIT {limit}",
        if wh.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", wh.join(" AND "))
        }
    );
    let mut st = c.prepare(&sql)?;
    let mut read = |args: &[Value]| -> rusqlite::Result<Vec<FlowRow>> {
        st.query_map(rusqlite::params_from_iter(args), flow_row)?
            .collect()
    };
    let Some(ranges) = ranges else {
        return Ok(read(&args)?);
    };
    // The chunks latest end first: once the page is full with rows that end after the next
    // chunk's latest, no row of that chunk or a later one comes before them.
    let n = args.len();
    let mut out: Vec<FlowRow> = Vec::new();
    for (lo, hi, max_end_ns) in ranges {
        if out.len() >= q.limit && out[q.limit - 1].end_ns > max_end_ns {
            break;
        }
        args[n - 3] = Value::Integer(lo);
        args[n - 2] = Value::Integer(hi);
        out.extend(read(&args)?);
        out.sort_unstable_by_key(|r| std::cmp::Reverse(r.cursor()));
        out.truncate(q.limit);
    }
    Ok(out)
}

/// A `flows` row as `query_flows` selects it.
fn flow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRow> {
    let text = |i: usize| r.get_ref(i).and_then(|v| Ok(v.as_str_or_null()?));
    let extra = crate::store::rows::flow_extra(text(26)?, text(27)?, text(28)?);
    let source: String = r.get(1)?;
    let (initiator_by, initiator_guessed) = crate::store::rows::initiator(&source, r.get(30)?);
    let reverse_tcp_flags = crate::store::rows::reverse_flags(&source, r.get::<_, i64>(31)?);
    Ok(FlowRow {
        id: r.get(0)?,
        source,
        observer: r.get(2)?,
        interface: r.get(3)?,
        src_ip: r.get(4)?,
        dst_ip: r.get(5)?,
        src_port: Some(narrow(r, 6)?),
        dst_port: Some(narrow(r, 7)?),
        protocol: Some(narrow(r, 8)?),
        packets: Some(r.get(9)?),
        bytes: Some(r.get(10)?),
        reverse_packets: Some(r.get(11)?),
        reverse_bytes: Some(r.get(12)?),
        // The eight TCP flags, whatever an older store holds.
        tcp_flags: (r.get::<_, i64>(13)? & 0xff) as u8,
        start_ns: r.get(14)?,
        end_ns: r.get(15)?,
        action: r.get(16)?,
        sampling_rate: r.get(17)?,
        direction: r.get(18)?,
        vpc: r.get(19)?,
        subnet: r.get(20)?,
        instance: r.get(21)?,
        region: r.get(22)?,
        zone: r.get(23)?,
        pkt_src_ip: r.get(24)?,
        pkt_dst_ip: r.get(25)?,
        extra,
        correlated: r.get(29)?,
        initiator_by,
        initiator_guessed,
        reverse_tcp_flags,
    }
    .blank_absent())
}

pub(super) fn top(c: &Connection, q: &TopQuery) -> anyhow::Result<Vec<TopRow>> {
    let key = match q.group {
        TopGroup::SrcIp => "src_ip",
        TopGroup::DstIp => "dst_ip",
        TopGroup::Pair => "src_ip || ' -> ' || dst_ip",
        TopGroup::DstPort => {
            "dst_port || '/' || CASE protocol WHEN 6 THEN 'tcp' \
                              WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' \
                              ELSE protocol END"
        }
    };
    let order = match q.by {
        TopBy::Bytes => "bytes",
        TopBy::Packets => "packets",
        TopBy::Flows => "flows",
    };
    let sql = format!(
        "SELECT {key} AS k, COUNT(*) AS flows, {packets} AS packets, {bytes} AS bytes FROM flows \
         WHERE end_ns >= ?1 AND (?2 IS NULL OR start_ns < ?2) \
         AND (?3 IS NULL OR source = ?3) \
         GROUP BY k ORDER BY {order} DESC, k LIMIT ?4",
        packets = sat_sum("packets + reverse_packets"),
        bytes = sat_sum("bytes + reverse_bytes"),
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(
        params![
            q.since_ns,
            q.until_ns,
            q.source.map(Source::as_str),
            q.limit as i64
        ],
        |r| {
            Ok(TopRow {
                key: r.get(0)?,
                flows: r.get(1)?,
                packets: r.get(2)?,
                bytes: r.get(3)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn flow_totals(c: &Connection, sensor: Option<&str>) -> anyhow::Result<FlowTotals> {
    let q = format!("{} WHERE source = 'sensor'", totals("COUNT(*)", "flows"));
    Ok(match sensor {
        Some(s) => c.query_row(&format!("{q} AND sensor = ?1"), [s], totals_row)?,
        None => c.query_row(&q, [], totals_row)?,
    })
}

pub(super) fn source_totals(c: &Connection, source: Source) -> anyhow::Result<FlowTotals> {
    Ok(c.query_row(
        &format!("{} WHERE source = ?1", totals("COUNT(*)", "flows")),
        [source.as_str()],
        totals_row,
    )?)
}

pub(super) fn coverage_gaps(
    c: &Connection,
    since_ns: i64,
    covered: &HashSet<IpAddr>,
) -> anyhow::Result<Vec<CoverageGap>> {
    // One pass over the cloud flows of the range, aggregated here: only internal addresses
    // count, and grouping every address in SQL (a sort of two rows per flow) took seconds
    // per million flows.
    #[derive(Default)]
    struct Seen {
        first: i64,
        last: i64,
        flows: i64,
        // Usually one or two each: a list beats a set.
        observers: Vec<String>,
        vpcs: Vec<String>,
    }
    let mut seen: std::collections::HashMap<IpAddr, Seen> = Default::default();
    let mut st = c.prepare(
        "SELECT src_ip, dst_ip, start_ns, end_ns, sensor, vpc FROM flows \
         WHERE end_ns >= ?1 AND source != 'sensor'",
    )?;
    let mut rows = st.query([since_ns])?;
    while let Some(r) = rows.next()? {
        for col in [0, 1] {
            let Ok(addr) = r.get_ref(col)?.as_str()?.parse::<IpAddr>() else {
                continue;
            };
            if !internal(&addr) || covered.contains(&addr) {
                continue;
            }
            let (start, end): (i64, i64) = (r.get(2)?, r.get(3)?);
            let e = seen.entry(addr).or_insert_with(|| Seen {
                first: start,
                last: end,
                ..Default::default()
            });
            e.first = e.first.min(start);
            e.last = e.last.max(end);
            e.flows += 1;
            let observer = r.get_ref(4)?.as_str()?;
            if !e.observers.iter().any(|o| o == observer) {
                e.observers.push(observer.to_string());
            }
            if let Some(vpc) = r.get_ref(5)?.as_str_or_null()?
                && !e.vpcs.iter().any(|v| v == vpc)
            {
                e.vpcs.push(vpc.to_string());
            }
        }
    }
    let mut seen: Vec<(IpAddr, Seen)> = seen.into_iter().collect();
    seen.sort_unstable_by_key(|(ip, _)| *ip);
    let gaps = seen
        .into_iter()
        .map(|(ip, mut s)| {
            s.observers.sort_unstable();
            s.vpcs.sort_unstable();
            CoverageGap {
                ip: ip.to_string(),
                first_seen_ns: s.first,
                last_seen_ns: s.last,
                flows: s.flows,
                observers: s.observers,
                vpcs: s.vpcs,
            }
        })
        .collect();
    Ok(gaps)
}

/// Record count and the four counters' saturating sums, over `flows` or a rollup table.
pub(super) fn totals(count: &str, table: &str) -> String {
    format!(
        "SELECT {count}, {}, {}, {}, {} FROM {table}",
        sat_sum("packets"),
        sat_sum("bytes"),
        sat_sum("reverse_packets"),
        sat_sum("reverse_bytes")
    )
}

pub(super) fn totals_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowTotals> {
    Ok(FlowTotals {
        records: r.get::<_, i64>(0)? as u64,
        packets: r.get::<_, i64>(1)? as u64,
        bytes: r.get::<_, i64>(2)? as u64,
        reverse_packets: r.get::<_, i64>(3)? as u64,
        reverse_bytes: r.get::<_, i64>(4)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{
        schema::{MIGRATIONS, SCHEMA},
        testing::cloud_flow,
        write::insert_flows_tx,
    };
    use super::*;
    use crate::{
        model::Flow,
        store::{FlowStore as _, Retention, SqliteStore},
    };

    #[test]
    fn flows_are_found_by_address_through_chunks_and_pages() {
        let dir = tempfile::tempdir().expect("tmp");
        // A database of version 13 (address B-tree indexes) with flows in it, then migrated:
        // its flows form one chunk of unknown addresses, still found.
        {
            let mut c = Connection::open(dir.path().join("picket.db")).expect("open");
            c.execute_batch(SCHEMA).expect("schema");
            for (i, m) in MIGRATIONS.iter().enumerate().take(13) {
                let tx = c.transaction().expect("tx");
                tx.execute_batch(m).expect("migrate");
                tx.pragma_update(None, "user_version", (i + 1) as i64)
                    .expect("v");
                tx.commit().expect("commit");
            }
            let tx = c.transaction().expect("tx");
            insert_flows_tx(&tx, &[cloud_flow("192.0.2.7", 22, 1_000, 1)])
                .expect_err("no chunk table yet");
            drop(tx);
            c.execute(
                "INSERT INTO flows (sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
                 packets, bytes, reverse_packets, reverse_bytes, tcp_flags, reverse_tcp_flags, \
                 start_ns, end_ns, observed, initiator_by, partial, end_reason, source) VALUES \
                 ('a', 'eni-1', '192.0.2.7', '10.0.0.5', 1, 22, 6, 1, 1, 0, 0, 0, 0, 0, \
                 1000000000000, '', '', '', '', 'aws')",
                [],
            )
            .expect("old flow");
            c.execute(
                "INSERT INTO flows (sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
                 packets, bytes, reverse_packets, reverse_bytes, tcp_flags, reverse_tcp_flags, \
                 start_ns, end_ns, observed, initiator_by, partial, end_reason) VALUES \
                 ('web-1', 'eth0', '10.0.0.5', '192.0.2.7', 22, 50000, 6, 1, 1, 0, 0, 0, 0, 0, \
                 900000000000, '', '', '', '')",
                [],
            )
            .expect("old sensor flow");
        }
        let s = SqliteStore::open(dir.path()).expect("open");
        let idx: Vec<String> = s
            .conn()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'flows'")
            .expect("q")
            .query_map([], |r| r.get(0))
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("q");
        assert_eq!(idx, ["flows_by_time"]);
        // Three writes: 192.0.2.7 is in the first and third, 2001:db8::7 only in the second.
        s.insert_flows(&[
            cloud_flow("192.0.2.7", 80, 2_000, 1),
            cloud_flow("198.51.100.1", 80, 2_000, 1),
        ])
        .expect("insert");
        s.insert_flows(&[cloud_flow("2001:db8::7", 443, 3_000, 1)])
            .expect("insert");
        let mut third: Vec<Flow> = (0..5)
            .map(|i| cloud_flow("198.51.100.2", 1000 + i, 4_000, 1))
            .collect();
        third[3].dst_ip = "192.0.2.7".parse().expect("ip");
        s.insert_flows(&third).expect("insert");
        let chunks: Vec<(i64, i64, Option<usize>, Option<usize>)> = s
            .conn()
            .prepare(
                "SELECT first_id, last_id, length(addrs), length(tuples) FROM flow_chunks \
                 ORDER BY first_id",
            )
            .expect("q")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("q");
        // The old flows' chunk (with a sensor flow: conversations unknown), then 3 addresses
        // x 16 bytes, 2 x 16, 3 x 16, and no sensor flow.
        assert_eq!(
            chunks,
            [
                (1, 2, None, None),
                (3, 4, Some(48), Some(0)),
                (5, 5, Some(32), Some(0)),
                (6, 10, Some(48), Some(0))
            ]
        );
        let ids = |q: FlowQuery| -> Vec<i64> {
            s.query_flows(&q)
                .expect("query")
                .into_iter()
                .map(|f| f.id)
                .collect()
        };
        let q = |ip: &str| FlowQuery {
            ip: Some(ip.parse().expect("ip")),
            limit: 10,
            ..Default::default()
        };
        // Latest end first, then the later stored: the old chunk's flow 1 ends after its 2.
        assert_eq!(ids(q("192.0.2.7")), [9, 3, 1, 2]);
        assert_eq!(ids(q("2001:db8::7")), [5]);
        assert_eq!(ids(q("10.0.0.5")), [10, 8, 7, 6, 5, 4, 3, 1, 2]);
        assert_eq!(ids(q("203.0.113.9")), Vec::<i64>::new());
        // Pages of two, across chunks, each after the last row's (end, id).
        let page = |before: Option<(i64, i64)>| FlowQuery {
            limit: 2,
            before: before.map(|(end_s, id)| crate::store::FlowCursor {
                end_ns: end_s * 1_000_000_000,
                id,
            }),
            ..q("10.0.0.5")
        };
        assert_eq!(ids(page(None)), [10, 8]);
        assert_eq!(ids(page(Some((4_000, 8)))), [7, 6]);
        assert_eq!(ids(page(Some((4_000, 6)))), [5, 4]);
        assert_eq!(ids(page(Some((2_000, 4)))), [3, 1]);
        assert_eq!(ids(page(Some((1_000, 1)))), [2]);
        assert_eq!(ids(page(Some((900, 2)))), Vec::<i64>::new());
        // Without an address, the same order through the time index.
        let all = |before| FlowQuery {
            ip: None,
            ..page(before)
        };
        assert_eq!(ids(all(Some((2_000, 4)))), [3, 1]);
        assert_eq!(ids(all(Some((1_000, 1)))), [2]);
        // Time and other filters still apply.
        let recent = FlowQuery {
            since_ns: Some(2_500 * 1_000_000_000),
            ..q("192.0.2.7")
        };
        assert_eq!(ids(recent), [9]);
        let port = FlowQuery {
            port: Some(80),
            ..q("192.0.2.7")
        };
        assert_eq!(ids(port), [3]);
        // Retention drops the chunks whose flows are all gone.
        let r = Retention {
            raw_ns: 1_000 * 1_000_000_000,
            ..Retention::default()
        };
        s.maintain(3_500 * 1_000_000_000, &r).expect("maintain");
        assert_eq!(ids(q("192.0.2.7")), [9]);
        let left: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM flow_chunks", [], |r| r.get(0))
            .expect("q");
        assert_eq!(left, 2);
    }

    #[test]
    fn coverage_gaps_are_internal_addresses_of_cloud_flows_in_the_range() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let mut a = cloud_flow("203.0.113.9", 443, 2_000, 1);
        a.cloud.vpc = Some("vpc-1".into());
        let mut b = cloud_flow("10.0.0.10", 5432, 2_100, 1);
        b.source = Source::Gcp;
        b.observer = "project-b".into();
        b.cloud.vpc = Some("vpc-2".into());
        // Before the range, and a sensor's own flow: neither counts.
        let old = cloud_flow("10.0.0.77", 22, 500, 1);
        let mut sensor = cloud_flow("10.0.0.78", 22, 2_000, 1);
        sensor.source = Source::Sensor;
        s.insert_flows(&[a, b, old, sensor]).expect("insert");
        let gaps = s
            .coverage_gaps(1_000 * 1_000_000_000, &HashSet::new())
            .expect("gaps");
        type Row<'a> = (&'a str, i64, i64, i64, Vec<&'a str>, Vec<&'a str>);
        let got: Vec<Row<'_>> = gaps
            .iter()
            .map(|g| {
                (
                    g.ip.as_str(),
                    g.first_seen_ns / 1_000_000_000,
                    g.last_seen_ns / 1_000_000_000,
                    g.flows,
                    g.observers.iter().map(String::as_str).collect(),
                    g.vpcs.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                // 10.0.0.5 < 10.0.0.10 as addresses (not as text).
                (
                    "10.0.0.5",
                    1_940,
                    2_100,
                    2,
                    vec!["123456789010", "project-b"],
                    vec!["vpc-1", "vpc-2"]
                ),
                (
                    "10.0.0.10",
                    2_040,
                    2_100,
                    1,
                    vec!["project-b"],
                    vec!["vpc-2"]
                ),
            ]
        );
    }
}
