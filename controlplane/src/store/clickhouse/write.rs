//! Writes: flows, a group of sensor batches, a file of flows exactly once.

use std::collections::HashMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::{
    ChStore, ip16,
    schema::{ANSWERED, GUESSED, INGESTED, TOP_DIMS},
    secs, why,
};
use crate::{
    model::{Flow, FlowSink, ImportedFile, SensorBatch},
    store::Stored,
};

/// A `flows` row as written.
#[derive(Row, Serialize)]
struct FlowIn<'a> {
    id: u64,
    end: u32,
    ingest: u64,
    source: &'a str,
    observer: &'a str,
    iface: &'a str,
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
    reverse_tcp_flags: u8,
    start_ns: i64,
    end_ns: i64,
    action: &'a str,
    sampling_rate: f64,
    observed: &'a str,
    initiator_by: &'a str,
    partial: &'a str,
    end_reason: &'a str,
    vpc: Option<&'a str>,
    subnet: Option<&'a str>,
    instance: Option<&'a str>,
    region: Option<&'a str>,
    zone: Option<&'a str>,
    pkt_src_ip: Option<[u8; 16]>,
    pkt_dst_ip: Option<[u8; 16]>,
    cloud_json: Option<String>,
    src_pod: Option<String>,
    dst_pod: Option<String>,
}

#[derive(Row, Serialize)]
struct ScanIn<'a> {
    end: u32,
    ingest: u64,
    sensor: &'a str,
    iface: &'a str,
    src_ip: [u8; 16],
    distinct_ports: u32,
    distinct_hosts: u32,
    probe: &'a str,
    start_ns: i64,
    end_ns: i64,
    detail: String,
}

#[derive(Row, Serialize)]
struct ProbeIn<'a> {
    end: u32,
    ingest: u64,
    sensor: &'a str,
    iface: &'a str,
    src_ip: [u8; 16],
    protocol: u8,
    probe: &'a str,
    packets: u64,
    bytes: u64,
    start_ns: i64,
    end_ns: i64,
}

#[derive(Row, Serialize)]
struct LoginIn<'a> {
    time: u32,
    ingest: u64,
    sensor: &'a str,
    time_ns: i64,
    service: &'a str,
    outcome: &'a str,
    user: &'a str,
    src_ip: [u8; 16],
    src_port: u16,
}

#[derive(Row, Serialize, Deserialize)]
struct BatchMark {
    instance_id: String,
    batch_id: u64,
    ingest: u64,
    state: u8,
    sensor: String,
    stored_ns: i64,
    flows: u64,
}

#[derive(Row, Serialize, Deserialize)]
struct FileMark {
    sha256: String,
    ingest: u64,
    state: u8,
    provider: String,
    name: String,
    bytes: u64,
    imported_ns: i64,
    summary: String,
}

/// Mark states.
const PENDING: u8 = 0;
const DONE: u8 = 1;

/// The key of one attempt at a write that must count once: random, so that undoing an attempt
/// that was cut short never touches the rows of the next. Never 0, the key of writes without
/// a mark.
fn attempt_key() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    Ok(u64::from_le_bytes(b).max(1))
}

/// What the marks say of one write: done, or the keys of attempts that were cut short.
#[derive(Debug, Default)]
struct Marks {
    done: bool,
    cut: Vec<u64>,
}

impl Marks {
    fn from_rows(rows: impl IntoIterator<Item = (u64, u8)>) -> Marks {
        let mut m = Marks::default();
        let mut pending = Vec::new();
        let mut finished = Vec::new();
        for (ingest, state) in rows {
            match state {
                DONE => finished.push(ingest),
                _ => pending.push(ingest),
            }
        }
        m.done = !finished.is_empty();
        m.cut = pending
            .into_iter()
            .filter(|k| !finished.contains(k))
            .collect();
        m
    }
}

fn flow_in(f: &Flow, id: u64, ingest: u64) -> FlowIn<'_> {
    let s = f.sensor.as_deref();
    let m = &f.cloud;
    FlowIn {
        id,
        end: secs(f.end_ns),
        ingest,
        source: f.source.as_str(),
        observer: &f.observer,
        iface: &f.interface,
        src_ip: ip16(f.src_ip),
        dst_ip: ip16(f.dst_ip),
        src_port: f.src_port,
        dst_port: f.dst_port,
        protocol: f.protocol,
        packets: f.packets,
        bytes: f.bytes,
        reverse_packets: f.reverse_packets,
        reverse_bytes: f.reverse_bytes,
        tcp_flags: f.tcp_flags,
        reverse_tcp_flags: s.map_or(0, |s| s.reverse_tcp_flags),
        start_ns: f.start_ns,
        end_ns: f.end_ns,
        action: f.action.as_str(),
        sampling_rate: f.sampling_rate,
        observed: match s {
            Some(s) => &s.observed,
            None => m.direction.as_deref().unwrap_or(""),
        },
        initiator_by: s.map_or("", |s| &s.initiator_by),
        partial: s.map_or("", |s| &s.partial),
        end_reason: s.map_or("", |s| &s.end_reason),
        vpc: m.vpc.as_deref(),
        subnet: m.subnet.as_deref(),
        instance: m.instance.as_deref(),
        region: m.region.as_deref(),
        zone: m.zone.as_deref(),
        pkt_src_ip: m.pkt_src_ip.map(ip16),
        pkt_dst_ip: m.pkt_dst_ip.map(ip16),
        cloud_json: (!m.extra.is_empty())
            .then(|| serde_json::Value::Object(m.extra.clone()).to_string()),
        src_pod: s.and_then(|s| crate::store::rows::pod_json(&s.src_pod)),
        dst_pod: s.and_then(|s| crate::store::rows::pod_json(&s.dst_pod)),
    }
}

/// Flows go into `flows` in up to this many INSERTs at once. ClickHouse runs an INSERT, and
/// the materialized views it feeds (most of its cost), on one thread: two at once wrote a
/// million flows 2.3 times as fast as one after the other on a 2-core machine.
const INSERT_STREAMS: usize = 2;
/// ... each of at least this many rows (every INSERT makes a part, which merges cost later).
const STREAM_MIN_ROWS: usize = 10_000;

/// Inserts `rows` (each flow under its write's key) with ids from `first_id` on, in order,
/// split over concurrent INSERTs ([`INSERT_STREAMS`]).
async fn insert_flow_rows(
    client: &clickhouse::Client,
    rows: &[(&Flow, u64)],
    first_id: u64,
) -> clickhouse::error::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let streams = rows
        .len()
        .div_ceil(STREAM_MIN_ROWS)
        .clamp(1, INSERT_STREAMS);
    let per = rows.len().div_ceil(streams);
    let inserts = rows.chunks(per).enumerate().map(|(c, chunk)| async move {
        let mut ins = client.insert::<FlowIn<'_>>("flows").await?;
        for (n, (f, key)) in chunk.iter().enumerate() {
            ins.write(&flow_in(f, first_id + (c * per + n) as u64, *key))
                .await?;
        }
        ins.end().await
    });
    futures_util::future::try_join_all(inserts).await?;
    Ok(())
}

impl ChStore {
    /// Inserts flows, each under `ingest` (see [`insert_flow_rows`]).
    pub(super) fn insert_flows_keyed(&self, flows: &[&Flow], ingest: u64) -> anyhow::Result<()> {
        let rows: Vec<(&Flow, u64)> = flows.iter().map(|f| (*f, ingest)).collect();
        let first = self.ids.take(rows.len() as u64);
        self.run(insert_flow_rows(&self.client, &rows, first))
            .map_err(|e| anyhow::anyhow!("the flow store {}: storing flows: {}", self.at, why(&e)))
    }

    /// The marks of `keys` (instance, batch).
    fn batch_marks(&self, keys: &[(&str, u64)]) -> anyhow::Result<HashMap<(String, u64), Marks>> {
        let mut out: HashMap<(String, u64), Vec<(u64, u8)>> = HashMap::new();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut instances: Vec<&str> = keys.iter().map(|k| k.0).collect();
        instances.sort_unstable();
        instances.dedup();
        let ids: Vec<u64> = keys.iter().map(|k| k.1).collect();
        let rows: Vec<(String, u64, u64, u8)> = self
            .run(
                self.client
                    .query(&format!(
                        "SELECT instance_id, batch_id, ingest, state FROM batches \
                             WHERE has(?, instance_id) AND batch_id IN {}",
                        super::id_list(&ids)
                    ))
                    .bind(instances)
                    .fetch_all(),
            )
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        for (i, b, ingest, state) in rows {
            out.entry((i, b)).or_default().push((ingest, state));
        }
        Ok(out
            .into_iter()
            .map(|(k, rows)| (k, Marks::from_rows(rows)))
            .collect())
    }

    /// Takes away what the attempts `keys` wrote before they were cut short: their rollup
    /// rows (by rows of the opposite sign in `rollup_undo`, computed before anything is
    /// deleted), then their rows, waiting until they are gone. Running it again is harmless.
    fn undo(&self, keys: &[u64]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            writes = keys.len(),
            "taking away the rows of writes that were cut short"
        );
        let list = keys
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        for (level, bucket) in [("1m", "toStartOfMinute"), ("1h", "toStartOfHour")] {
            self.exec(&format!(
                "INSERT INTO rollup_undo SELECT '{level}', ingest, {bucket}(flows.end) AS b, \
                 source, observer, src_ip, dst_ip, dst_port, protocol, action, \
                 -toFloat64(count()), -sum(toFloat64(packets)), \
                 -sum(toFloat64(bytes)), -sum(toFloat64(reverse_packets)), \
                 -sum(toFloat64(reverse_bytes)), -sum({ANSWERED}), -sum({GUESSED}), count() \
                 FROM flows WHERE ingest IN ({list}) \
                 GROUP BY ingest, b, source, observer, src_ip, dst_ip, dst_port, protocol, action"
            ))?;
        }
        self.exec(&format!(
            "INSERT INTO top_undo SELECT ingest, dim, toStartOfHour(flows.end) AS b, source, ip, \
             port, proto, -toFloat64(count()), -sum(toFloat64(packets + reverse_packets)), \
             -sum(toFloat64(bytes + reverse_bytes)), count() FROM flows \
             {TOP_DIMS} WHERE ingest IN ({list}) AND start_ns <= end_ns \
             GROUP BY ingest, dim, b, source, ip, port, proto"
        ))?;
        for table in INGESTED {
            self.exec(&format!(
                "ALTER TABLE {table} DELETE WHERE ingest IN ({list})"
            ))?;
        }
        let t0 = std::time::Instant::now();
        loop {
            let left: u64 = self
                .run(
                    self.client
                        .query(
                            "SELECT count() FROM system.mutations \
                             WHERE database = currentDatabase() AND is_done = 0",
                        )
                        .fetch_one(),
                )
                .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
            if left == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                t0.elapsed() < std::time::Duration::from_secs(300),
                "the flow store {}: taking away the rows of an interrupted write takes over \
                 5 minutes",
                self.at
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn write_marks<M>(&self, table: &str, marks: &[M]) -> anyhow::Result<()>
    where
        M: Serialize + for<'a> Row<Value<'a> = M>,
    {
        self.run(async {
            let mut ins = self.client.insert::<M>(table).await?;
            for m in marks {
                ins.write(m).await?;
            }
            ins.end().await
        })
        .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))
    }

    pub(super) fn store_batches(
        &self,
        batches: &[&SensorBatch],
        now_ns: i64,
    ) -> anyhow::Result<Vec<anyhow::Result<Stored>>> {
        let keys: Vec<(&str, u64)> = batches
            .iter()
            .map(|b| (b.instance_id.as_str(), b.batch_id))
            .collect();
        let marks = self.batch_marks(&keys)?;
        let mut out = Vec::with_capacity(batches.len());
        let mut new: Vec<(&SensorBatch, u64)> = Vec::new();
        let mut cut = Vec::new();
        for b in batches {
            let m = marks.get(&(b.instance_id.clone(), b.batch_id));
            let twice = new
                .iter()
                .any(|(n, _)| n.instance_id == b.instance_id && n.batch_id == b.batch_id);
            if m.is_some_and(|m| m.done) || twice {
                // Stored before, or earlier in this group.
                out.push(Stored::Duplicate);
                continue;
            }
            if let Some(m) = m {
                cut.extend(&m.cut);
            }
            new.push((b, attempt_key()?));
            out.push(Stored::New);
        }
        if !new.is_empty() {
            self.undo(&cut)?;
            let mark = |b: &SensorBatch, ingest, state| BatchMark {
                instance_id: b.instance_id.clone(),
                batch_id: b.batch_id,
                ingest,
                state,
                sensor: b.sensor.clone(),
                stored_ns: now_ns,
                flows: b.flows.len() as u64,
            };
            let pending: Vec<BatchMark> = new.iter().map(|(b, k)| mark(b, *k, PENDING)).collect();
            self.write_marks("batches", &pending)?;
            self.write_batch_rows(&new)?;
            let done: Vec<BatchMark> = new.iter().map(|(b, k)| mark(b, *k, DONE)).collect();
            self.write_marks("batches", &done)?;
        }
        Ok(out.into_iter().map(Ok).collect())
    }

    /// The rows of new batches: flows, scan events, probe records, logins.
    fn write_batch_rows(&self, new: &[(&SensorBatch, u64)]) -> anyhow::Result<()> {
        let rows: Vec<(&Flow, u64)> = new
            .iter()
            .flat_map(|(b, key)| b.flows.iter().map(move |f| (f, *key)))
            .collect();
        let first = self.ids.take(rows.len() as u64);
        self.run(async {
            insert_flow_rows(&self.client, &rows, first).await?;
            if new.iter().any(|(b, _)| !b.scans.is_empty()) {
                let mut ins = self.client.insert::<ScanIn<'_>>("scan_events").await?;
                for (b, key) in new {
                    for s in &b.scans {
                        let detail = serde_json::json!({
                            "probes": s.probes,
                            "probe_bytes": s.probe_bytes,
                            "last_dst_ip": s.last_dst_ip.to_string(),
                            "last_dst_port": s.last_dst_port,
                            "reason": s.reason,
                            "answered_contacts": s.answered_contacts,
                            "unanswered_contacts": s.unanswered_contacts,
                            "replied_contacts": s.replied_contacts,
                        });
                        ins.write(&ScanIn {
                            end: secs(s.end_ns),
                            ingest: *key,
                            sensor: &b.sensor,
                            iface: &s.iface,
                            src_ip: ip16(s.src_ip),
                            distinct_ports: s.distinct_ports,
                            distinct_hosts: s.distinct_hosts,
                            probe: &s.probe,
                            start_ns: s.start_ns,
                            end_ns: s.end_ns,
                            detail: detail.to_string(),
                        })
                        .await?;
                    }
                }
                ins.end().await?;
            }
            if new.iter().any(|(b, _)| !b.probes.is_empty()) {
                let mut ins = self.client.insert::<ProbeIn<'_>>("probe_records").await?;
                for (b, key) in new {
                    for p in &b.probes {
                        ins.write(&ProbeIn {
                            end: secs(p.end_ns),
                            ingest: *key,
                            sensor: &b.sensor,
                            iface: &p.iface,
                            src_ip: ip16(p.src_ip),
                            protocol: p.protocol,
                            probe: &p.probe,
                            packets: p.packets,
                            bytes: p.bytes,
                            start_ns: p.start_ns,
                            end_ns: p.end_ns,
                        })
                        .await?;
                    }
                }
                ins.end().await?;
            }
            if new.iter().any(|(b, _)| !b.logins.is_empty()) {
                let mut ins = self.client.insert::<LoginIn<'_>>("auth_events").await?;
                for (b, key) in new {
                    for a in &b.logins {
                        ins.write(&LoginIn {
                            time: secs(a.time_ns),
                            ingest: *key,
                            sensor: &b.sensor,
                            time_ns: a.time_ns,
                            service: &a.service,
                            outcome: &a.outcome,
                            user: &a.user,
                            src_ip: ip16(a.src_ip),
                            src_port: a.src_port,
                        })
                        .await?;
                    }
                }
                ins.end().await?;
            }
            Ok(())
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "the flow store {}: storing sensor batches: {}",
                self.at,
                why(&e)
            )
        })
    }

    pub(super) fn last_stored_batch(&self, instance_id: &str) -> anyhow::Result<u64> {
        self.run(
            self.client
                .query("SELECT toUInt64(max(batch_id)) FROM batches WHERE instance_id = ? AND state = 1")
                .bind(instance_id)
                .fetch_one(),
        )
        .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))
    }

    pub(super) fn import_file_once(
        &self,
        file: &ImportedFile,
        now_ns: i64,
        fill: &mut dyn FnMut(&mut FlowSink<'_>) -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<String>> {
        let rows: Vec<(u64, u8)> = self
            .run(
                self.client
                    .query("SELECT ingest, state FROM imported_files WHERE sha256 = ?")
                    .bind(&file.sha256)
                    .fetch_all(),
            )
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))?;
        let marks = Marks::from_rows(rows);
        if marks.done {
            return Ok(None);
        }
        self.undo(&marks.cut)?;
        let key = attempt_key()?;
        let mark = |state, summary: String| FileMark {
            sha256: file.sha256.clone(),
            ingest: key,
            state,
            provider: file.provider.as_str().into(),
            name: file.name.clone(),
            bytes: file.bytes,
            imported_ns: now_ns,
            summary,
        };
        self.write_marks("imported_files", &[mark(PENDING, String::new())])?;
        let filled = fill(&mut |flows: &[Flow]| {
            let all: Vec<&Flow> = flows.iter().collect();
            self.insert_flows_keyed(&all, key)
        });
        let summary = match filled {
            Ok(summary) => summary,
            Err(e) => {
                // A file that fails (cut short, unreadable) stores nothing: what it wrote is
                // taken away now. If that fails too, its `pending` mark stays and the next
                // import of the file takes them away first.
                if let Err(undo) = self.undo(&[key]) {
                    tracing::warn!(
                        file = %file.name,
                        "the rows of a failed import stay until the file is imported again: {undo:#}"
                    );
                }
                return Err(e);
            }
        };
        self.write_marks("imported_files", &[mark(DONE, summary.clone())])?;
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_tell_done_from_cut_short() {
        let m = Marks::from_rows([(7, PENDING), (7, DONE)]);
        assert!(m.done && m.cut.is_empty(), "{m:?}");
        let m = Marks::from_rows([(7, PENDING), (9, PENDING), (9, DONE)]);
        assert!(m.done);
        assert_eq!(
            m.cut,
            [7],
            "an earlier attempt cut short is still taken away"
        );
        let m = Marks::from_rows([(7, PENDING), (8, PENDING)]);
        assert!(!m.done);
        assert_eq!(m.cut, [7, 8]);
        assert_ne!(attempt_key().expect("key"), attempt_key().expect("key"));
    }
}
