//! Correlation: the sensor flows and cloud flow-log records of one conversation.
//!
//! Sensor flows are found through their chunks' conversation lists (chunks.rs), not a per-flow
//! index: the cloud records of the range are keyed in memory, and only the lists of the sensor
//! chunks that overlap them in time are read. Each key match is then checked on the rows: the
//! whole 5-tuple one of four ways (as the sensor's initiator saw it or the other way round,
//! with the cloud's own addresses or its packet addresses for NAT) and the times.

use std::net::IpAddr;

use rusqlite::{OptionalExtension, Transaction, params};

use super::chunks::{self, conversation_key};

/// A cloud record of the range: what the key match is checked against.
struct Cloud {
    id: i64,
    start_ns: i64,
    end_ns: i64,
}

/// A conversation key and the index of the cloud record that has it.
type Key = (u64, u32);

/// A sensor flow's source and destination addresses (text), ports and protocol.
type Tuple = (String, String, u16, u16, u8);

/// The address in column `i` of `r` (None if NULL or not an address).
fn ip_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<IpAddr>> {
    Ok(r.get_ref(i)?.as_str_or_null()?.and_then(|t| t.parse().ok()))
}

/// Links sensor flows to the cloud flows ending in [since_ns, until_ns] (see
/// `FlowStore::correlate`); returns the new links.
pub fn correlate(
    tx: &Transaction<'_>,
    since_ns: i64,
    until_ns: i64,
    tolerance_ns: i64,
) -> anyhow::Result<u64> {
    // A store without sensor flows (cloud logs only) has nothing to match.
    let sensor_chunks: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM flow_chunks WHERE tuples IS NULL OR length(tuples) > 0)",
        [],
        |r| r.get(0),
    )?;
    if !sensor_chunks {
        return Ok(0);
    }
    let (cloud, mut keys) = cloud_records(tx, since_ns, until_ns)?;
    let (Some(lo), Some(hi)) = (
        cloud.iter().map(|c| c.start_ns).min(),
        cloud.iter().map(|c| c.end_ns).max(),
    ) else {
        return Ok(0);
    };
    keys.sort_unstable();
    let candidates = candidates(tx, &keys, lo - tolerance_ns, hi + tolerance_ns)?;
    link(tx, candidates, &cloud, tolerance_ns)
}

/// The cloud records ending in [since_ns, until_ns], and their conversation keys (with their
/// own addresses, and with their packet addresses under NAT): (key, index into the records).
fn cloud_records(
    tx: &Transaction<'_>,
    since_ns: i64,
    until_ns: i64,
) -> anyhow::Result<(Vec<Cloud>, Vec<Key>)> {
    let mut cloud = Vec::new();
    let mut keys: Vec<Key> = Vec::new();
    let mut st = tx.prepare(
        "SELECT id, start_ns, end_ns, src_ip, src_port, dst_ip, dst_port, protocol, \
         pkt_src_ip, pkt_dst_ip FROM flows \
         WHERE end_ns BETWEEN ?1 AND ?2 AND source != 'sensor'",
    )?;
    let mut rows = st.query(params![since_ns, until_ns])?;
    while let Some(r) = rows.next()? {
        let ip = |i| ip_at(r, i);
        let (Some(src), Some(dst)) = (ip(3)?, ip(5)?) else {
            continue;
        };
        let (sp, dp): (u16, u16) = (r.get(4)?, r.get(6)?);
        let proto: u8 = r.get(7)?;
        let at = u32::try_from(cloud.len())?;
        let own = conversation_key(src, sp, dst, dp, proto);
        keys.push((own, at));
        if let (Some(ps), Some(pd)) = (ip(8)?, ip(9)?) {
            let nat = conversation_key(ps, sp, pd, dp, proto);
            if nat != own {
                keys.push((nat, at));
            }
        }
        cloud.push(Cloud {
            id: r.get(0)?,
            start_ns: r.get(1)?,
            end_ns: r.get(2)?,
        });
    }
    Ok((cloud, keys))
}

/// Sensor flows (of the chunks overlapping [lo, hi]) whose conversation key one of the sorted
/// `keys` has: (sensor flow, index of the cloud record).
fn candidates(
    tx: &Transaction<'_>,
    keys: &[Key],
    lo: i64,
    hi: i64,
) -> anyhow::Result<Vec<(i64, u32)>> {
    let mut candidates: Vec<(i64, u32)> = Vec::new();
    let mut probe = |id: i64, key: u64| {
        let from = keys.partition_point(|(k, _)| *k < key);
        candidates.extend(
            keys[from..]
                .iter()
                .take_while(|(k, _)| *k == key)
                .map(|(_, at)| (id, *at)),
        );
    };
    let mut st = tx.prepare(
        "SELECT first_id, last_id, tuples FROM flow_chunks \
         WHERE max_end_ns >= ?1 AND (min_start_ns IS NULL OR min_start_ns <= ?2) \
         AND (tuples IS NULL OR length(tuples) > 0)",
    )?;
    let mut legacy = tx.prepare(
        "SELECT id, src_ip, src_port, dst_ip, dst_port, protocol FROM flows \
         WHERE id BETWEEN ?1 AND ?2 AND source = 'sensor'",
    )?;
    let mut rows = st.query(params![lo, hi])?;
    while let Some(r) = rows.next()? {
        let first: i64 = r.get(0)?;
        match r.get_ref(2)?.as_blob_or_null()? {
            Some(list) => {
                for (id, key) in chunks::conversations(first, list) {
                    probe(id, key);
                }
            }
            // Flows stored before the lists existed: their rows are read.
            None => {
                let mut rows = legacy.query(params![first, r.get::<_, i64>(1)?])?;
                while let Some(f) = rows.next()? {
                    let ip = |i| ip_at(f, i);
                    if let (Some(src), Some(dst)) = (ip(1)?, ip(3)?) {
                        probe(
                            f.get(0)?,
                            conversation_key(src, f.get(2)?, dst, f.get(4)?, f.get(5)?),
                        );
                    }
                }
            }
        }
    }
    Ok(candidates)
}

/// Checks each candidate on the rows (the whole 5-tuple one of four ways, and the times) and
/// links those that match; a newly linked sensor flow takes the cloud's metadata where it has
/// none. Returns the new links.
fn link(
    tx: &Transaction<'_>,
    candidates: Vec<(i64, u32)>,
    cloud: &[Cloud],
    tolerance_ns: i64,
) -> anyhow::Result<u64> {
    let mut sensor_row = tx.prepare(
        "SELECT src_ip, dst_ip, src_port, dst_port, protocol, start_ns, end_ns FROM flows \
         WHERE id = ?1 AND source = 'sensor'",
    )?;
    let mut cloud_row = tx.prepare(
        "SELECT src_ip, dst_ip, src_port, dst_port, protocol, pkt_src_ip, pkt_dst_ip, \
         vpc, subnet, instance, region, zone, action FROM flows WHERE id = ?1",
    )?;
    let mut link =
        tx.prepare("INSERT OR IGNORE INTO flow_links (sensor_flow, cloud_flow) VALUES (?1, ?2)")?;
    let mut enrich = tx.prepare(
        "UPDATE flows SET vpc = COALESCE(vpc, ?2), subnet = COALESCE(subnet, ?3), \
         instance = COALESCE(instance, ?4), region = COALESCE(region, ?5), \
         zone = COALESCE(zone, ?6), action = CASE WHEN action = '' THEN ?7 ELSE action END \
         WHERE id = ?1",
    )?;
    let mut new = 0;
    for (sensor_flow, at) in candidates {
        let c = &cloud[at as usize];
        let Some((s, s_start, s_end)) = sensor_row
            .query_row([sensor_flow], |r| {
                let tuple: Tuple = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                Ok((tuple, r.get::<_, i64>(5)?, r.get::<_, i64>(6)?))
            })
            .optional()?
        else {
            continue;
        };
        if s_start > c.end_ns + tolerance_ns || s_end < c.start_ns - tolerance_ns {
            continue;
        }
        let (ours, meta) = cloud_row.query_row([c.id], |r| {
            let ends: [Option<String>; 4] = [r.get(0)?, r.get(1)?, r.get(5)?, r.get(6)?];
            let ports: (u16, u16, u8) = (r.get(2)?, r.get(3)?, r.get(4)?);
            let meta: [Option<String>; 6] = [
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
            ];
            Ok(((ends, ports), meta))
        })?;
        let ([src, dst, pkt_src, pkt_dst], (sp, dp, proto)) = ours;
        let ways = [
            (&src, &dst, sp, dp),
            (&dst, &src, dp, sp),
            (&pkt_src, &pkt_dst, sp, dp),
            (&pkt_dst, &pkt_src, dp, sp),
        ];
        let same = s.4 == proto
            && ways.iter().any(|(a, b, pa, pb)| {
                a.as_deref() == Some(s.0.as_str())
                    && b.as_deref() == Some(s.1.as_str())
                    && *pa == s.2
                    && *pb == s.3
            });
        if !same {
            continue;
        }
        if link.execute(params![sensor_flow, c.id])? == 1 {
            new += 1;
            let [vpc, subnet, instance, region, zone, action] = meta;
            enrich.execute(params![
                sensor_flow,
                vpc,
                subnet,
                instance,
                region,
                zone,
                action.unwrap_or_default()
            ])?;
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::{
        schema::{MIGRATIONS, SCHEMA},
        testing::{batch, cloud_flow, flow},
    };
    use crate::store::{FlowStore as _, SqliteStore, Stored};

    #[test]
    fn correlation_reads_conversation_lists_and_the_rows_of_older_chunks() {
        let dir = tempfile::tempdir().expect("tmp");
        let s_ = 1_000_000_000i64;
        // A version-13 store with a sensor flow: after migrating, its chunk's list is unknown.
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
            c.execute(
                "INSERT INTO flows (sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
                 packets, bytes, reverse_packets, reverse_bytes, tcp_flags, reverse_tcp_flags, \
                 start_ns, end_ns, observed, initiator_by, partial, end_reason) VALUES \
                 ('web-1', 'eth0', '10.0.0.5', '192.0.2.7', 22, 50000, 6, 1, 1, 0, 0, 0, 0, \
                 850000000000, 900000000000, '', '', '', '')",
                [],
            )
            .expect("old sensor flow");
        }
        let s = SqliteStore::open(dir.path()).expect("open");
        // A sensor batch now: its chunk lists each flow's conversation (12 bytes each).
        let mut nat = flow(1);
        nat.src_ip = [10, 0, 0, 9].into();
        nat.dst_ip = [198, 51, 100, 4].into();
        nat.src_port = 41000;
        nat.start_ns = 1_000 * s_;
        nat.end_ns = 1_030 * s_;
        let mut late = nat.clone();
        late.src_port = 41001;
        late.start_ns = 5_000 * s_;
        late.end_ns = 5_030 * s_;
        let b = batch("web-2", "i1", 1, vec![nat, late]);
        assert_eq!(s.store_batch(&b, 1).expect("store"), Stored::New);
        let lists: Vec<Option<usize>> = s
            .conn()
            .prepare("SELECT length(tuples) FROM flow_chunks ORDER BY first_id")
            .expect("q")
            .query_map([], |r| r.get(0))
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("q");
        assert_eq!(lists, [None, Some(24)]);
        // Cloud records: the old flow seen the other way round; the new one behind NAT (the
        // log's own addresses are the gateway's, its packet addresses the sensor's); the late
        // one's conversation over an hour before it happened; and a stranger.
        let mut back = cloud_flow("192.0.2.7", 22, 910, 1);
        back.src_port = 50000;
        back.cloud.vpc = Some("vpc-1".into());
        let mut behind_nat = cloud_flow("10.0.0.200", 443, 1_040, 1);
        behind_nat.src_port = 41000;
        behind_nat.dst_ip = "198.51.100.4".parse().expect("ip");
        behind_nat.cloud.pkt_src_ip = Some("10.0.0.9".parse().expect("ip"));
        behind_nat.cloud.pkt_dst_ip = Some("198.51.100.4".parse().expect("ip"));
        behind_nat.cloud.subnet = Some("subnet-2".into());
        let mut early = behind_nat.clone();
        early.src_port = 41001;
        early.start_ns = 800 * s_;
        early.end_ns = 860 * s_;
        let stranger = cloud_flow("203.0.113.1", 22, 1_000, 1);
        s.insert_flows(&[back, behind_nat, early, stranger])
            .expect("cloud");
        let tol = 60 * s_;
        assert_eq!(s.correlate(0, 10_000 * s_, tol).expect("correlate"), 2);
        assert_eq!(s.correlate(0, 10_000 * s_, tol).expect("again"), 0);
        type Link = (i64, i64, Option<String>, Option<String>, String);
        let linked: Vec<Link> = s
            .conn()
            .prepare(
                "SELECT l.sensor_flow, l.cloud_flow, f.vpc, f.subnet, f.action \
                 FROM flow_links l JOIN flows f ON f.id = l.sensor_flow ORDER BY 1",
            )
            .expect("q")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("q");
        assert_eq!(
            linked,
            [
                (1, 4, Some("vpc-1".into()), None, "accept".into()),
                (2, 5, None, Some("subnet-2".into()), "accept".into()),
            ]
        );
        // Cloud records outside the range link nothing; a store of cloud records only has
        // no conversation list to read.
        assert_eq!(s.correlate(0, 100 * s_, tol).expect("none"), 0);
        let cloud_only = tempfile::tempdir().expect("tmp");
        let c = SqliteStore::open(cloud_only.path()).expect("open");
        c.insert_flows(&[cloud_flow("203.0.113.1", 22, 1_000, 1)])
            .expect("cloud");
        assert_eq!(c.correlate(0, 10_000 * s_, tol).expect("none"), 0);
        // A new store has 16 KiB pages; an older one keeps SQLite's default 4 KiB.
        let page = |s: &SqliteStore| -> i64 {
            s.conn()
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .expect("page size")
        };
        assert_eq!((page(&c), page(&s)), (16384, 4096));
    }
}
