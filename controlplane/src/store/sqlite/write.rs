//! Writes of flows: a group of sensor batches, a chunk of flows, a file of flows exactly once.

use std::net::IpAddr;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{chunks, i};
use crate::{
    model::{Flow, FlowSink, ImportedFile, SensorBatch, SensorMeta, Source},
    store::Stored,
};

pub(super) fn store_batches(
    c: &mut Connection,
    batches: &[&SensorBatch],
    now_ns: i64,
) -> anyhow::Result<Vec<anyhow::Result<Stored>>> {
    // All batches in one transaction. A savepoint per batch would journal every page a
    // batch touches first (the conversation index's pages are at random positions: that
    // halved the rate), so savepoints are only the way back when a batch fails.
    {
        let tx = c.transaction()?;
        let all: anyhow::Result<Vec<Stored>> = batches
            .iter()
            .map(|b| store_batch_tx(&tx, b, now_ns))
            .collect();
        if let Ok(all) = all {
            tx.commit()?;
            return Ok(all.into_iter().map(Ok).collect());
        }
        // Dropping the transaction rolls it back.
    }
    let mut tx = c.transaction()?;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        // A savepoint per batch: a bad batch is undone alone (dropping it rolls back).
        let sp = tx.savepoint()?;
        match store_batch_tx(&sp, b, now_ns) {
            Ok(stored) => {
                sp.commit()?;
                out.push(Ok(stored));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    tx.commit()?;
    Ok(out)
}

pub(super) fn import_file_once(
    c: &mut Connection,
    file: &ImportedFile,
    now_ns: i64,
    fill: &mut dyn FnMut(&mut FlowSink<'_>) -> anyhow::Result<String>,
) -> anyhow::Result<Option<String>> {
    let tx = c.transaction()?;
    let seen: Option<String> = tx
        .query_row(
            "SELECT name FROM imported_files WHERE sha256 = ?1",
            [&file.sha256],
            |r| r.get(0),
        )
        .optional()?;
    if seen.is_some() {
        return Ok(None);
    }
    let summary = fill(&mut |flows: &[Flow]| insert_flows_tx(&tx, flows))?;
    tx.execute(
        "INSERT INTO imported_files (sha256, provider, name, bytes, imported_ns, summary) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            file.sha256,
            file.provider.as_str(),
            file.name,
            i(file.bytes),
            now_ns,
            summary
        ],
    )?;
    tx.commit()?;
    Ok(Some(summary))
}

pub(super) fn last_stored_batch(c: &Connection, instance_id: &str) -> anyhow::Result<u64> {
    let last: Option<i64> = c.query_row(
        "SELECT MAX(batch_id) FROM batches WHERE instance_id = ?1",
        [instance_id],
        |r| r.get(0),
    )?;
    Ok(last.unwrap_or(0) as u64)
}

/// Stores one batch inside the caller's transaction or savepoint (see `store_batches`).
fn store_batch_tx(tx: &Connection, b: &SensorBatch, now_ns: i64) -> anyhow::Result<Stored> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO batches (instance_id, batch_id, sensor, stored_ns, flows) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            b.instance_id,
            i(b.batch_id),
            b.sensor,
            now_ns,
            b.flows.len() as i64
        ],
    )?;
    if inserted == 0 {
        return Ok(Stored::Duplicate);
    }
    insert_flows_tx(tx, &b.flows)?;
    let mut st = tx.prepare_cached(
        "INSERT INTO scan_events (sensor, iface, src_ip, distinct_ports, distinct_hosts, \
         probe, probes_json, probe_bytes, last_dst_ip, last_dst_port, reason, start_ns, \
         end_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for s in &b.scans {
        st.execute(params![
            b.sensor,
            s.iface,
            s.src_ip.to_string(),
            s.distinct_ports,
            s.distinct_hosts,
            s.probe,
            serde_json::to_string(&s.probes)?,
            i(s.probe_bytes),
            s.last_dst_ip.to_string(),
            s.last_dst_port,
            s.reason.join(","),
            s.start_ns,
            s.end_ns,
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO probe_records (sensor, iface, src_ip, protocol, probe, packets, \
         bytes, start_ns, end_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for p in &b.probes {
        st.execute(params![
            b.sensor,
            p.iface,
            p.src_ip.to_string(),
            p.protocol,
            p.probe,
            i(p.packets),
            i(p.bytes),
            p.start_ns,
            p.end_ns,
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO auth_events (sensor, time_ns, service, outcome, user, src_ip, \
         src_port) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for a in &b.logins {
        st.execute(params![
            b.sensor,
            a.time_ns,
            a.service,
            a.outcome,
            a.user,
            a.src_ip.to_string(),
            a.src_port,
        ])?;
    }
    Ok(Stored::New)
}

/// An address's text form in a reused buffer (the store's hot path: `to_string` allocates
/// and goes through `fmt`).
#[derive(Default)]
struct IpText(String);

impl IpText {
    fn of(&mut self, ip: IpAddr) -> &str {
        use std::fmt::Write as _;
        self.0.clear();
        match ip {
            IpAddr::V4(a) => {
                for (n, o) in a.octets().into_iter().enumerate() {
                    if n > 0 {
                        self.0.push('.');
                    }
                    if o >= 100 {
                        self.0.push((b'0' + o / 100) as char);
                    }
                    if o >= 10 {
                        self.0.push((b'0' + o / 10 % 10) as char);
                    }
                    self.0.push((b'0' + o % 10) as char);
                }
            }
            IpAddr::V6(_) => {
                let _ = write!(self.0, "{ip}");
            }
        }
        &self.0
    }
}

/// Where a flow was seen, as the `observed` column keeps it: the sensor's side, or the cloud's
/// direction.
fn observed(f: &Flow) -> &str {
    match &f.sensor {
        Some(s) => s.observed.as_str(),
        None => f.cloud.direction.as_deref().unwrap_or(""),
    }
}

/// The insert of a flow. A cloud flow has none of a sensor's columns: a statement with their
/// defaults in it instead of parameters imports 15-20% faster (the bench's AWS import: 406-470k
/// -> 507-540k records/s).
fn statement(sensor: bool) -> &'static str {
    if sensor {
        "INSERT INTO flows (sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
         packets, bytes, reverse_packets, reverse_bytes, tcp_flags, reverse_tcp_flags, \
         start_ns, end_ns, observed, initiator_by, partial, end_reason, src_pod, dst_pod, \
         source, action, sampling_rate, vpc, subnet, instance, region, zone, pkt_src_ip, \
         pkt_dst_ip, cloud_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, \
         ?30, ?31, ?32)"
    } else {
        "INSERT INTO flows (sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
         packets, bytes, reverse_packets, reverse_bytes, tcp_flags, reverse_tcp_flags, \
         start_ns, end_ns, observed, initiator_by, partial, end_reason, source, action, \
         sampling_rate, vpc, subnet, instance, region, zone, pkt_src_ip, pkt_dst_ip, \
         cloud_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?14, ?15, \
         ?16, '', '', '', ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)"
    }
}

/// Inserts flows of any source, with their chunk (addresses, and the conversations of sensor
/// flows for correlation).
pub(super) fn insert_flows_tx(tx: &Connection, flows: &[Flow]) -> anyhow::Result<()> {
    let mut sensor = false;
    let mut st = tx.prepare_cached(statement(sensor))?;
    let mut chunk = chunks::Chunk::default();
    let (mut text, mut dst_text) = (IpText::default(), IpText::default());
    // What a flow shares with the one before (observer, interface, cloud metadata, a sensor's
    // labels: most of a file's or a batch's records) keeps its binding: SQLite holds bindings
    // from one execution to the next.
    let mut prev: Option<&Flow> = None;
    let none = SensorMeta::default();
    for f in flows {
        if f.sensor.is_some() != sensor {
            // The other kind of flow: the other statement, every parameter bound anew.
            sensor = f.sensor.is_some();
            st = tx.prepare_cached(statement(sensor))?;
            prev = None;
        }
        let (m, pc) = (&f.cloud, prev.map(|p| &p.cloud));
        if prev.is_none_or(|p| p.observer != f.observer) {
            st.raw_bind_parameter(1, &f.observer)?;
        }
        if prev.is_none_or(|p| p.interface != f.interface) {
            st.raw_bind_parameter(2, &f.interface)?;
        }
        st.raw_bind_parameter(3, text.of(f.src_ip))?;
        st.raw_bind_parameter(4, dst_text.of(f.dst_ip))?;
        st.raw_bind_parameter(5, f.src_port)?;
        st.raw_bind_parameter(6, f.dst_port)?;
        st.raw_bind_parameter(7, f.protocol)?;
        st.raw_bind_parameter(8, i(f.packets))?;
        st.raw_bind_parameter(9, i(f.bytes))?;
        st.raw_bind_parameter(10, i(f.reverse_packets))?;
        st.raw_bind_parameter(11, i(f.reverse_bytes))?;
        st.raw_bind_parameter(12, f.tcp_flags)?;
        st.raw_bind_parameter(14, f.start_ns)?;
        st.raw_bind_parameter(15, f.end_ns)?;
        if !sensor {
            if pc.is_none_or(|p| p.direction != m.direction) {
                st.raw_bind_parameter(16, m.direction.as_deref().unwrap_or(""))?;
            }
        } else {
            let sm = f.sensor.as_deref().unwrap_or(&none);
            let ps = prev.map(|p| p.sensor.as_deref().unwrap_or(&none));
            st.raw_bind_parameter(13, sm.reverse_tcp_flags)?;
            if prev.is_none_or(|p| observed(p) != observed(f)) {
                st.raw_bind_parameter(16, observed(f))?;
            }
            for (n, now, before) in [
                (17, &sm.initiator_by, ps.map(|p| &p.initiator_by)),
                (18, &sm.partial, ps.map(|p| &p.partial)),
                (19, &sm.end_reason, ps.map(|p| &p.end_reason)),
            ] {
                if before != Some(now) {
                    st.raw_bind_parameter(n, now)?;
                }
            }
            if ps.is_none_or(|p| p.src_pod != sm.src_pod) {
                st.raw_bind_parameter(20, crate::store::rows::pod_json(&sm.src_pod))?;
            }
            if ps.is_none_or(|p| p.dst_pod != sm.dst_pod) {
                st.raw_bind_parameter(21, crate::store::rows::pod_json(&sm.dst_pod))?;
            }
        }
        if prev.is_none_or(|p| p.source != f.source) {
            st.raw_bind_parameter(22, f.source.as_str())?;
        }
        if prev.is_none_or(|p| p.action != f.action) {
            st.raw_bind_parameter(23, f.action.as_str())?;
        }
        if prev.is_none_or(|p| p.sampling_rate != f.sampling_rate) {
            st.raw_bind_parameter(24, f.sampling_rate)?;
        }
        for (n, now, before) in [
            (25, &m.vpc, pc.map(|p| &p.vpc)),
            (26, &m.subnet, pc.map(|p| &p.subnet)),
            (27, &m.instance, pc.map(|p| &p.instance)),
            (28, &m.region, pc.map(|p| &p.region)),
            (29, &m.zone, pc.map(|p| &p.zone)),
        ] {
            if before != Some(now) {
                st.raw_bind_parameter(n, now)?;
            }
        }
        st.raw_bind_parameter(30, m.pkt_src_ip.map(|a| a.to_string()))?;
        st.raw_bind_parameter(31, m.pkt_dst_ip.map(|a| a.to_string()))?;
        if pc.is_none_or(|p| p.extra != m.extra) {
            st.raw_bind_parameter(
                32,
                if m.extra.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&m.extra)?)
                },
            )?;
        }
        st.raw_execute()?;
        prev = Some(f);
        let id = tx.last_insert_rowid();
        chunk.add(
            id,
            f.start_ns,
            f.end_ns,
            [Some(f.src_ip), Some(f.dst_ip), m.pkt_src_ip, m.pkt_dst_ip]
                .into_iter()
                .flatten(),
        );
        // Sensor flows are listed for correlation.
        if f.source == Source::Sensor {
            let key =
                chunks::conversation_key(f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.protocol);
            chunk.conversation(id, key);
        }
    }
    chunk.write(tx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{batch, fail_flows_of, flow};
    use super::*;
    use crate::{
        model::Registration,
        store::{FlowStore as _, Sensors as _, SqliteStore},
    };

    #[test]
    fn a_replayed_batch_is_stored_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        s.add_sensor("web-1", "h", 1).expect("add");
        let b = batch("web-1", "i1", 7, vec![flow(3), flow(4)]);
        assert_eq!(s.store_batch(&b, 2).expect("store"), Stored::New);
        assert_eq!(s.store_batch(&b, 3).expect("store"), Stored::Duplicate);
        let t = s.flow_totals(Some("web-1")).expect("totals");
        assert_eq!((t.records, t.packets, t.bytes), (2, 7, 700));
        // Another instance may reuse the id.
        let other = SensorBatch {
            instance_id: "i2".into(),
            ..b.clone()
        };
        assert_eq!(s.store_batch(&other, 4).expect("store"), Stored::New);
        let req = Registration {
            instance_id: "i1".into(),
            ..Default::default()
        };
        s.register("web-1", &req, 5).expect("register");
        assert_eq!(s.last_stored_batch("i1").expect("last"), 7);
    }

    #[test]
    fn a_batch_that_fails_stores_nothing_and_is_not_marked_stored() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        fail_flows_of(&s, 666);
        let b = batch("x", "i1", 1, vec![flow(1), flow(666)]);
        assert!(s.store_batch(&b, 1).is_err());
        assert_eq!(s.flow_totals(None).expect("totals").records, 0);
        // Nothing was marked stored: a corrected resend is accepted.
        let good = SensorBatch {
            flows: vec![flow(1)],
            ..b
        };
        assert_eq!(s.store_batch(&good, 2).expect("store"), Stored::New);
    }

    #[test]
    fn a_group_of_batches_commits_together_and_a_bad_one_fails_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        fail_flows_of(&s, 666);
        let (a, bad, b) = (
            batch("x", "i1", 1, vec![flow(1), flow(2)]),
            batch("x", "i1", 2, vec![flow(3), flow(666)]),
            batch("y", "i1", 3, vec![flow(4)]),
        );
        let r = s.store_batches(&[&a, &bad, &b, &a], 1).expect("the group");
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].as_ref().expect("a"), &Stored::New);
        assert!(r[1].is_err(), "the failing flow fails its batch");
        assert_eq!(r[2].as_ref().expect("b"), &Stored::New);
        assert_eq!(
            r[3].as_ref().expect("a again"),
            &Stored::Duplicate,
            "a batch twice in one group is stored once"
        );
        let t = s.flow_totals(None).expect("totals");
        assert_eq!(
            t.records, 3,
            "a's two flows and b's one, nothing of the bad batch"
        );
        assert_eq!(s.flow_totals(Some("y")).expect("y").records, 1);
        // The bad batch was not marked stored: a corrected resend is taken.
        let fixed = batch("x", "i1", 2, vec![flow(3)]);
        assert_eq!(s.store_batch(&fixed, 2).expect("resend"), Stored::New);
    }

    #[test]
    fn a_chunk_of_both_kinds_keeps_each_flows_own_columns() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let mut cloud = flow(1);
        cloud.source = Source::Aws;
        cloud.observer = "123456789010".into();
        cloud.sensor = None;
        cloud.cloud.direction = Some("egress".into());
        let mut sensor = flow(2);
        sensor.observer = "web-1".into();
        sensor.sensor = Some(Box::new(SensorMeta {
            reverse_tcp_flags: 0x12,
            observed: "ingress".into(),
            initiator_by: "syn".into(),
            partial: String::new(),
            end_reason: "end".into(),
            src_pod: Some(crate::model::PodContext {
                namespace: "web".into(),
                pod: "web-1".into(),
                labels: Default::default(),
                node: "n1".into(),
            }),
            dst_pod: None,
        }));
        s.insert_flows(&[cloud.clone(), sensor, cloud])
            .expect("insert");
        type Row = (String, String, u8, String, String, String, Option<String>);
        let rows: Vec<Row> = s
            .conn()
            .prepare(
                "SELECT source, sensor, reverse_tcp_flags, observed, initiator_by, end_reason, \
                 src_pod FROM flows ORDER BY id",
            )
            .expect("q")
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("rows");
        let cloud_row: Row = (
            "aws".into(),
            "123456789010".into(),
            0,
            "egress".into(),
            String::new(),
            String::new(),
            None,
        );
        assert_eq!(rows[0], cloud_row);
        assert_eq!(
            rows[1],
            (
                "sensor".into(),
                "web-1".into(),
                0x12,
                "ingress".into(),
                "syn".into(),
                "end".into(),
                Some(r#"{"labels":{},"namespace":"web","node":"n1","pod":"web-1"}"#.into())
            )
        );
        assert_eq!(rows[2], cloud_row, "the cloud statement again, bound anew");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let mut t = IpText::default();
        for a in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "10.0.200.7",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = a.parse().expect("ip");
            assert_eq!(t.of(ip), ip.to_string());
        }
    }
}
