//! Correlation on ClickHouse: the sensor flows and cloud flow-log records of one conversation.
//!
//! The server narrows both sides by set membership (a sensor flow's 5-tuple among the cloud
//! records' tuples taken four ways: as logged, reversed, and both again through the packet
//! addresses of NAT), then each pair is checked here exactly as the embedded store checks it
//! (protocol, the tuple one of the four ways, times overlapping within the tolerance). A link
//! carries the cloud record's metadata; the flow's reads fill it in (see `query.rs`).

use std::collections::{HashMap, HashSet};

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::{ChStore, id_list, secs, why};

/// The cloud records of a range, as a `WHERE` clause.
fn cloud_range(since_ns: i64, until_ns: i64) -> String {
    format!(
        "source != 'sensor' AND end >= {} AND end <= {} AND end_ns >= {since_ns} \
         AND end_ns <= {until_ns}",
        secs(since_ns),
        secs(until_ns)
    )
}

/// The 5-tuples of the rows `wh` selects, four ways (as logged, reversed, and through the
/// packet addresses when there are any), as a subquery.
fn four_ways(wh: &str) -> String {
    format!(
        "SELECT src_ip, dst_ip, src_port, dst_port, protocol FROM flows WHERE {wh} \
         UNION ALL SELECT dst_ip, src_ip, dst_port, src_port, protocol FROM flows WHERE {wh} \
         UNION ALL SELECT assumeNotNull(pkt_src_ip), assumeNotNull(pkt_dst_ip), src_port, \
         dst_port, protocol FROM flows WHERE {wh} AND pkt_src_ip IS NOT NULL \
         AND pkt_dst_ip IS NOT NULL \
         UNION ALL SELECT assumeNotNull(pkt_dst_ip), assumeNotNull(pkt_src_ip), dst_port, \
         src_port, protocol FROM flows WHERE {wh} AND pkt_src_ip IS NOT NULL \
         AND pkt_dst_ip IS NOT NULL"
    )
}

#[derive(Row, Deserialize)]
struct SensorSide {
    id: u64,
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    start_ns: i64,
    end_ns: i64,
}

#[derive(Row, Deserialize)]
struct CloudSide {
    id: u64,
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    pkt_src_ip: Option<[u8; 16]>,
    pkt_dst_ip: Option<[u8; 16]>,
    start_ns: i64,
    end_ns: i64,
    end: u32,
    vpc: Option<String>,
    subnet: Option<String>,
    instance: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    action: String,
}

#[derive(Row, Serialize)]
struct LinkIn {
    sensor_flow: u64,
    cloud_flow: u64,
    end: u32,
    linked_ns: i64,
    vpc: Option<String>,
    subnet: Option<String>,
    instance: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    action: String,
}

/// A 5-tuple: (source, destination, source port, destination port, protocol).
type Tuple = ([u8; 16], [u8; 16], u16, u16, u8);

impl ChStore {
    pub(super) fn correlate(
        &self,
        since_ns: i64,
        until_ns: i64,
        tolerance_ns: i64,
    ) -> anyhow::Result<u64> {
        let err = |e: clickhouse::error::Error| {
            anyhow::anyhow!("the flow store {}: {}", self.at, why(&e))
        };
        let range = cloud_range(since_ns, until_ns);
        let (n, lo, hi): (u64, i64, i64) = self
            .run(
                self.client
                    .query(&format!(
                        "SELECT count(), min(start_ns), max(end_ns) FROM flows WHERE {range}"
                    ))
                    .fetch_one(),
            )
            .map_err(err)?;
        if n == 0 {
            return Ok(0);
        }
        let (lo, hi) = (
            lo.saturating_sub(tolerance_ns),
            hi.saturating_add(tolerance_ns),
        );
        let sensor_wh = format!(
            "source = 'sensor' AND end >= {} AND end_ns >= {lo} AND start_ns <= {hi}",
            secs(lo)
        );
        let sensors: Vec<SensorSide> = self
            .run(
                self.client
                    .query(&format!(
                        "SELECT id, src_ip, dst_ip, src_port, dst_port, protocol, start_ns, \
                         end_ns FROM flows WHERE {sensor_wh} AND \
                         (src_ip, dst_ip, src_port, dst_port, protocol) IN ({})",
                        four_ways(&range)
                    ))
                    .fetch_all(),
            )
            .map_err(err)?;
        if sensors.is_empty() {
            return Ok(0);
        }
        // The cloud records whose tuple one of those sensor flows has (either way round).
        let clouds: Vec<CloudSide> = self
            .run(
                self.client
                    .query(&format!(
                        "SELECT id, src_ip, dst_ip, src_port, dst_port, protocol, pkt_src_ip, \
                         pkt_dst_ip, start_ns, end_ns, end, vpc, subnet, instance, region, \
                         zone, action FROM flows WHERE {range} AND \
                         ((src_ip, dst_ip, src_port, dst_port, protocol) IN ({ways}) OR \
                         (ifNull(pkt_src_ip, src_ip), ifNull(pkt_dst_ip, dst_ip), src_port, \
                         dst_port, protocol) IN ({ways}))",
                        ways = four_ways(&format!(
                            "{sensor_wh} AND (src_ip, dst_ip, src_port, dst_port, protocol) IN ({})",
                            four_ways(&range)
                        ))
                    ))
                    .fetch_all(),
            )
            .map_err(err)?;
        // Each cloud record under each of its tuples.
        let mut by_tuple: HashMap<Tuple, Vec<usize>> = HashMap::new();
        for (i, c) in clouds.iter().enumerate() {
            let mut ways = vec![
                (c.src_ip, c.dst_ip, c.src_port, c.dst_port, c.protocol),
                (c.dst_ip, c.src_ip, c.dst_port, c.src_port, c.protocol),
            ];
            if let (Some(ps), Some(pd)) = (c.pkt_src_ip, c.pkt_dst_ip) {
                ways.push((ps, pd, c.src_port, c.dst_port, c.protocol));
                ways.push((pd, ps, c.dst_port, c.src_port, c.protocol));
            }
            ways.sort_unstable();
            ways.dedup();
            for w in ways {
                by_tuple.entry(w).or_default().push(i);
            }
        }
        let mut pairs: Vec<(u64, usize)> = Vec::new();
        for s in &sensors {
            let t = (s.src_ip, s.dst_ip, s.src_port, s.dst_port, s.protocol);
            for &i in by_tuple.get(&t).into_iter().flatten() {
                let c = &clouds[i];
                if s.start_ns > c.end_ns.saturating_add(tolerance_ns)
                    || s.end_ns < c.start_ns.saturating_sub(tolerance_ns)
                {
                    continue;
                }
                pairs.push((s.id, i));
            }
        }
        // Links made before are not made again.
        let ids: Vec<u64> = pairs.iter().map(|p| p.0).collect();
        let known: HashSet<(u64, u64)> = self
            .run(
                self.client
                    .query(&format!(
                        "SELECT sensor_flow, cloud_flow FROM flow_links WHERE sensor_flow IN {}",
                        id_list(&ids)
                    ))
                    .fetch_all::<(u64, u64)>(),
            )
            .map_err(err)?
            .into_iter()
            .collect();
        let now = crate::util::time::now_ns();
        let mut new: Vec<LinkIn> = Vec::new();
        let mut seen = HashSet::new();
        for (s, i) in pairs {
            let c = &clouds[i];
            if known.contains(&(s, c.id)) || !seen.insert((s, c.id)) {
                continue;
            }
            new.push(LinkIn {
                sensor_flow: s,
                cloud_flow: c.id,
                end: c.end,
                linked_ns: now,
                vpc: c.vpc.clone(),
                subnet: c.subnet.clone(),
                instance: c.instance.clone(),
                region: c.region.clone(),
                zone: c.zone.clone(),
                action: c.action.clone(),
            });
        }
        if !new.is_empty() {
            self.run(async {
                let mut ins = self.client.insert::<LinkIn>("flow_links").await?;
                for l in &new {
                    ins.write(l).await?;
                }
                ins.end().await
            })
            .map_err(err)?;
        }
        Ok(new.len() as u64)
    }
}
