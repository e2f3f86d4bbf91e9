//! Reads of raw flows: by filters (through `flows_by_ip` when by address), top-N, totals.

use std::collections::HashMap;

use clickhouse::Row;
use serde::Deserialize;

use super::{ChStore, SAT, hex16, id_list, ip_of, ip_text_sql, ip16, sat_sum, secs, why};
use crate::{
    model::Source,
    store::{FlowQuery, FlowRow, FlowTotals, TopBy, TopGroup, TopQuery, TopRow},
};

/// A `flows` row as `query_flows` reads it.
#[derive(Row, Deserialize)]
struct FlowOut {
    id: u64,
    source: String,
    observer: String,
    iface: String,
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    packets: u64,
    bytes: u64,
    reverse_packets: u64,
    reverse_bytes: u64,
    tcp_flags: u8,
    start_ns: i64,
    end_ns: i64,
    action: String,
    sampling_rate: f64,
    observed: String,
    vpc: Option<String>,
    subnet: Option<String>,
    instance: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    pkt_src_ip: Option<[u8; 16]>,
    pkt_dst_ip: Option<[u8; 16]>,
    cloud_json: Option<String>,
    src_pod: Option<String>,
    dst_pod: Option<String>,
    initiator_by: String,
    reverse_tcp_flags: u8,
}

use crate::store::rows::counter as i;

impl FlowOut {
    fn row(self, correlated: i64) -> FlowRow {
        let extra = crate::store::rows::flow_extra(
            self.cloud_json.as_deref(),
            self.src_pod.as_deref(),
            self.dst_pod.as_deref(),
        );
        let (initiator_by, initiator_guessed) =
            crate::store::rows::initiator(&self.source, self.initiator_by);
        let reverse_tcp_flags =
            crate::store::rows::reverse_flags(&self.source, i64::from(self.reverse_tcp_flags));
        FlowRow {
            id: i(self.id),
            source: self.source,
            observer: self.observer,
            interface: self.iface,
            src_ip: ip_of(self.src_ip).to_string(),
            dst_ip: ip_of(self.dst_ip).to_string(),
            src_port: Some(self.src_port),
            dst_port: Some(self.dst_port),
            protocol: Some(self.protocol),
            packets: Some(i(self.packets)),
            bytes: Some(i(self.bytes)),
            reverse_packets: Some(i(self.reverse_packets)),
            reverse_bytes: Some(i(self.reverse_bytes)),
            tcp_flags: self.tcp_flags,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            action: self.action,
            sampling_rate: self.sampling_rate,
            direction: self.observed,
            vpc: self.vpc,
            subnet: self.subnet,
            instance: self.instance,
            region: self.region,
            zone: self.zone,
            pkt_src_ip: self.pkt_src_ip.map(|a| ip_of(a).to_string()),
            pkt_dst_ip: self.pkt_dst_ip.map(|a| ip_of(a).to_string()),
            extra,
            correlated,
            initiator_by,
            initiator_guessed,
            reverse_tcp_flags,
        }
        .blank_absent()
    }
}

/// The columns of [`FlowOut`], in order.
const FLOW_COLUMNS: &str = "id, source, observer, iface, src_ip, dst_ip, src_port, dst_port, \
    protocol, packets, bytes, reverse_packets, reverse_bytes, tcp_flags, start_ns, end_ns, \
    action, sampling_rate, observed, vpc, subnet, instance, region, zone, pkt_src_ip, \
    pkt_dst_ip, cloud_json, src_pod, dst_pod, initiator_by, reverse_tcp_flags";

#[derive(Row, Deserialize)]
struct LinkOut {
    sensor_flow: u64,
    cloud_flow: u64,
    linked_ns: i64,
    vpc: Option<String>,
    subnet: Option<String>,
    instance: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    action: String,
}

#[derive(Row, Deserialize)]
struct Totals {
    records: u64,
    packets: i64,
    bytes: i64,
    reverse_packets: i64,
    reverse_bytes: i64,
}

impl From<Totals> for FlowTotals {
    fn from(t: Totals) -> Self {
        FlowTotals {
            records: t.records,
            packets: t.packets as u64,
            bytes: t.bytes as u64,
            reverse_packets: t.reverse_packets as u64,
            reverse_bytes: t.reverse_bytes as u64,
        }
    }
}

/// The totals' select list.
fn totals_sql() -> String {
    format!(
        "SELECT count(), {}, {}, {}, {}",
        sat_sum("packets"),
        sat_sum("bytes"),
        sat_sum("reverse_packets"),
        sat_sum("reverse_bytes")
    )
}

/// A value bound into SQL text (ClickHouse 18.16 has no query parameters; the client's
/// `bind` escapes, and numbers are written as numbers).
enum Arg {
    Str(String),
    Int(i64),
}

impl ChStore {
    pub(super) fn flow_totals(&self, sensor: Option<&str>) -> anyhow::Result<FlowTotals> {
        let mut q = format!("{} FROM flows WHERE source = 'sensor'", totals_sql());
        if sensor.is_some() {
            q.push_str(" AND observer = ?");
        }
        let mut query = self.client.query(&q);
        if let Some(s) = sensor {
            query = query.bind(s);
        }
        let t: Totals = self
            .run(query.fetch_one())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        Ok(t.into())
    }

    pub(super) fn source_totals(&self, source: Source) -> anyhow::Result<FlowTotals> {
        let q = format!("{} FROM flows WHERE source = ?", totals_sql());
        let t: Totals = self
            .run(self.client.query(&q).bind(source.as_str()).fetch_one())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        Ok(t.into())
    }

    pub(super) fn query_flows(&self, q: &FlowQuery) -> anyhow::Result<Vec<FlowRow>> {
        let mut wh: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        if let Some(p) = q.port {
            wh.push("(src_port = ? OR dst_port = ?)".into());
            args.push(Arg::Int(p.into()));
            args.push(Arg::Int(p.into()));
        }
        if let Some(p) = q.protocol {
            wh.push("protocol = ?".into());
            args.push(Arg::Int(p.into()));
        }
        if let Some(t) = q.since_ns {
            wh.push("end >= ? AND end_ns >= ?".into());
            args.push(Arg::Int(secs(t) as i64));
            args.push(Arg::Int(t));
        }
        if let Some(t) = q.until_ns {
            wh.push("start_ns < ?".into());
            args.push(Arg::Int(t));
        }
        if let Some(s) = q.source {
            wh.push("source = ?".into());
            args.push(Arg::Str(s.as_str().into()));
        }
        if let Some(b) = q.before {
            // The whole seconds first (the sort key's), then the exact place.
            wh.push("end <= ? AND (end_ns < ? OR end_ns = ? AND id < ?)".into());
            args.push(Arg::Int(secs(b.end_ns).into()));
            args.push(Arg::Int(b.end_ns));
            args.push(Arg::Int(b.end_ns));
            args.push(Arg::Int(b.id));
        }
        let rows = match q.ip {
            None => self.fetch_flows(&wh, &args, q.limit)?,
            Some(ip) => self.flows_of(ip, q, &wh, &args)?,
        };
        let links = self.links_of(&rows.iter().map(|r| r.id).collect::<Vec<_>>())?;
        let mut count: HashMap<u64, i64> = HashMap::new();
        for l in &links {
            *count.entry(l.sensor_flow).or_default() += 1;
            *count.entry(l.cloud_flow).or_default() += 1;
        }
        Ok(rows
            .into_iter()
            .map(|mut r| {
                // A linked sensor flow takes its cloud records' metadata where it has none,
                // the first link first (as the embedded store fills it in at linking).
                if r.source == "sensor" {
                    for l in links.iter().filter(|l| l.sensor_flow == r.id) {
                        r.vpc = r.vpc.or_else(|| l.vpc.clone());
                        r.subnet = r.subnet.or_else(|| l.subnet.clone());
                        r.instance = r.instance.or_else(|| l.instance.clone());
                        r.region = r.region.or_else(|| l.region.clone());
                        r.zone = r.zone.or_else(|| l.zone.clone());
                        if r.action.is_empty() {
                            r.action = l.action.clone();
                        }
                    }
                }
                let n = count.get(&r.id).copied().unwrap_or(0);
                r.row(n)
            })
            .collect())
    }

    /// The flows `wh` selects, newest first, `limit` at most.
    fn fetch_flows(
        &self,
        wh: &[String],
        args: &[Arg],
        limit: usize,
    ) -> anyhow::Result<Vec<FlowOut>> {
        let sql = format!(
            "SELECT {FLOW_COLUMNS} FROM flows {} ORDER BY end_ns DESC, id DESC LIMIT {limit}",
            if wh.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", wh.join(" AND "))
            },
        );
        let mut query = self.client.query(&sql);
        for a in args {
            query = match a {
                Arg::Str(s) => query.bind(s.as_str()),
                Arg::Int(i) => query.bind(*i),
            };
        }
        self.run(query.fetch_all())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))
    }

    /// The flows of address `ip` that `wh` also selects, newest first: the address's (end
    /// second, id) pairs from `flows_by_ip` (sorted by address, then time), latest first, a
    /// window of whole seconds at a time, then those rows of `flows` by its sort key (end,
    /// id), until the page is full. A second that holds more pairs than a window is read from
    /// `flows` by its sort key alone.
    fn flows_of(
        &self,
        ip: std::net::IpAddr,
        q: &FlowQuery,
        wh: &[String],
        args: &[Arg],
    ) -> anyhow::Result<Vec<FlowOut>> {
        let lit = hex16(ip16(ip));
        let window = (q.limit * 4).max(1000);
        let mut out: Vec<FlowOut> = Vec::new();
        // The latest second still to read, whole.
        let mut until = q.before.map(|b| secs(b.end_ns));
        while out.len() < q.limit {
            let mut by_ip = format!("SELECT end, id FROM flows_by_ip WHERE ip = {lit}");
            if let Some(t) = q.since_ns {
                by_ip.push_str(&format!(" AND end >= {}", secs(t)));
            }
            if let Some(s) = until {
                by_ip.push_str(&format!(" AND end <= {s}"));
            }
            by_ip.push_str(&format!(" ORDER BY end DESC, id DESC LIMIT {window}"));
            let candidates: Vec<(u32, u64)> = self
                .run(self.client.query(&by_ip).fetch_all())
                .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
            let Some(&(last, _)) = candidates.last() else {
                break;
            };
            let full = candidates.len() >= window;
            // A full window may end inside its last second: that second is the next's.
            let whole: Vec<&(u32, u64)> =
                candidates.iter().filter(|c| !full || c.0 > last).collect();
            let mut w = wh.to_vec();
            w.push(format!("(src_ip = {lit} OR dst_ip = {lit})"));
            if whole.is_empty() {
                w.push(format!("end = {last}"));
            } else {
                let mut ends: Vec<u64> = whole.iter().map(|c| c.0 as u64).collect();
                ends.sort_unstable();
                ends.dedup();
                let ids: Vec<u64> = whole.iter().map(|c| c.1).collect();
                w.push(format!("end IN {}", id_list(&ends)));
                w.push(format!("id IN {}", id_list(&ids)));
            }
            out.extend(self.fetch_flows(&w, args, q.limit - out.len())?);
            if !full {
                break;
            }
            until = match whole.is_empty() {
                true if last == 0 => break,
                true => Some(last - 1),
                false => Some(last),
            };
        }
        Ok(out)
    }

    /// The links of `ids` (as a sensor flow or as a cloud flow), each once, in the order they
    /// were made.
    fn links_of(&self, ids: &[u64]) -> anyhow::Result<Vec<LinkOut>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows: Vec<LinkOut> = self
            .run(
                self.client
                    .query(&format!(
                        "SELECT sensor_flow, cloud_flow, linked_ns, vpc, subnet, instance, \
                         region, zone, action FROM flow_links \
                         WHERE sensor_flow IN {list} OR cloud_flow IN {list}",
                        list = id_list(ids)
                    ))
                    .fetch_all(),
            )
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        rows.sort_by_key(|l| (l.sensor_flow, l.cloud_flow, l.linked_ns));
        rows.dedup_by_key(|l| (l.sensor_flow, l.cloud_flow));
        rows.sort_by_key(|l| (l.linked_ns, l.cloud_flow));
        Ok(rows)
    }

    /// Top-N. The whole hours of the range come from `top_1h` (with what cut writes had added
    /// taken away, and the flows it leaves out from `top_odd`); the edges, and ranges within
    /// an hour, from the flows themselves. Pairs of addresses have no hourly sums: they are
    /// always read from the flows.
    pub(super) fn top(&self, q: &TopQuery) -> anyhow::Result<Vec<TopRow>> {
        const HOUR: i64 = 3_600 * 1_000_000_000;
        let key = |src: &str, dst: &str, port: &str, proto: &str| match q.group {
            TopGroup::SrcIp => ip_text_sql(src),
            TopGroup::DstIp => ip_text_sql(dst),
            TopGroup::Pair => format!("concat({}, ' -> ', {})", ip_text_sql(src), ip_text_sql(dst)),
            TopGroup::DstPort => format!(
                "concat(toString({port}), '/', multiIf({proto} = 6, 'tcp', {proto} = 17, 'udp', \
                 {proto} = 1, 'icmp', {proto} = 58, 'icmpv6', toString({proto})))"
            ),
        };
        let dim = match q.group {
            TopGroup::SrcIp => Some(0),
            TopGroup::DstIp => Some(1),
            TopGroup::DstPort => Some(2),
            TopGroup::Pair => None,
        };
        let order = match q.by {
            TopBy::Bytes => "bytes",
            TopBy::Packets => "packets",
            TopBy::Flows => "flows",
        };
        let source = q
            .source
            .map(|s| format!(" AND source = '{}'", s.as_str()))
            .unwrap_or_default();
        let until = q
            .until_ns
            .map(|t| format!(" AND start_ns < {t}"))
            .unwrap_or_default();
        // Each flow's key and sums (the sums as the embedded store adds them).
        let raw = |wh: &str| {
            format!(
                "SELECT {} AS k, 1. AS f, toFloat64(packets + reverse_packets) AS p, \
                 toFloat64(bytes + reverse_bytes) AS b FROM {wh}{source}{until}",
                key("src_ip", "dst_ip", "dst_port", "protocol")
            )
        };
        // Whole hours [from, to): at or after the first whole hour of the range (and of
        // `top_1h`), before the hour of the range's end (whose flows all started before it).
        let from = q
            .since_ns
            .saturating_add(HOUR - 1)
            .div_euclid(HOUR)
            .saturating_mul(HOUR)
            .max(self.top_since_ns)
            // (Times before 1970 are stored at 1970's first second: never in a whole hour.)
            .max(HOUR);
        let to = q
            .until_ns
            .map_or(i64::MAX, |t| t.div_euclid(HOUR).saturating_mul(HOUR));
        let parts = match dim {
            Some(dim) if from < to && from < i64::MAX - HOUR => {
                let bucket = match q.until_ns {
                    Some(_) => format!("bucket >= {} AND bucket < {}", secs(from), secs(to)),
                    None => format!("bucket >= {}", secs(from)),
                };
                let hours = |table: &str| {
                    format!(
                        "SELECT {} AS k, sum_flows AS f, sum_packets AS p, sum_bytes AS b \
                         FROM {table} WHERE dim = {dim} AND {bucket}{source}",
                        key("ip", "ip", "port", "proto")
                    )
                };
                let mut parts = vec![
                    hours("top_1h"),
                    hours("top_undo FINAL"),
                    raw(&format!(
                        "top_odd WHERE {}",
                        bucket.replace("bucket", "end")
                    )),
                    raw(&format!(
                        "flows WHERE end >= {} AND end_ns >= {} AND end < {}",
                        secs(q.since_ns),
                        q.since_ns,
                        secs(from)
                    )),
                ];
                if q.until_ns.is_some() {
                    parts.push(raw(&format!("flows WHERE end >= {}", secs(to))));
                }
                parts
            }
            _ => vec![raw(&format!(
                "flows WHERE end >= {} AND end_ns >= {}",
                secs(q.since_ns),
                q.since_ns
            ))],
        };
        let sql = format!(
            "SELECT k, toInt64(sum(f)) AS n_flows, toInt64(least(sum(p), {SAT}.)) AS n_packets, \
             toInt64(least(sum(b), {SAT}.)) AS n_bytes FROM ({}) GROUP BY k HAVING n_flows > 0 \
             ORDER BY n_{order} DESC, k LIMIT {}",
            parts.join(" UNION ALL "),
            q.limit,
        );
        let rows: Vec<(String, i64, i64, i64)> = self
            .run(self.client.query(&sql).fetch_all())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        Ok(rows
            .into_iter()
            .map(|(key, flows, packets, bytes)| TopRow {
                key,
                flows,
                packets,
                bytes,
            })
            .collect())
    }
}
