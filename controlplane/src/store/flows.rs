//! The flow store: flows of every source and what is derived from them (chunks, rollups,
//! correlation links), with the marks that make a sensor batch or a flow-log file count exactly
//! once. The data that grows with the traffic.

use std::{collections::HashSet, net::IpAddr};

use crate::model::{Absent, Flow, FlowSink, ImportedFile, SensorBatch, Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    New,
    Duplicate,
}

/// Sums over stored flows (for tests, the demo and the API's summaries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
}

/// A flows query (the REST API's filters); newest first by the flows' end, then by id, paged
/// by the last row's (end, id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowQuery {
    /// Either end of the flow.
    pub ip: Option<IpAddr>,
    /// Either port.
    pub port: Option<u16>,
    pub protocol: Option<u8>,
    /// Flows that end at or after this time.
    pub since_ns: Option<i64>,
    /// Flows that start before this time.
    pub until_ns: Option<i64>,
    pub source: Option<Source>,
    /// Only flows after this place in the order (the previous page's last row).
    pub before: Option<FlowCursor>,
    pub limit: usize,
}

/// A place in the flows, newest first: a row's end and id. A flow stored later with an older
/// end (a late cloud log) falls on a page already read, never twice on two pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowCursor {
    pub end_ns: i64,
    pub id: i64,
}

impl FlowCursor {
    /// The cursor as the API writes it: `END_ID`.
    pub fn text(self) -> String {
        format!("{}_{}", self.end_ns, self.id)
    }

    /// A cursor the API wrote, or None.
    pub fn parse(s: &str) -> Option<FlowCursor> {
        let (end, id) = s.split_once('_')?;
        Some(FlowCursor {
            end_ns: end.parse().ok()?,
            id: id.parse().ok().filter(|id: &i64| *id >= 0)?,
        })
    }
}

/// A stored flow, as the API returns it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FlowRow {
    pub id: i64,
    pub source: String,
    /// Sensor name, or cloud account / project / subscription.
    pub observer: String,
    pub interface: String,
    pub src_ip: String,
    pub dst_ip: String,
    /// Null where the record did not write it (a cloud log's custom format), like the
    /// counts below: absent is not zero.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub protocol: Option<u8>,
    pub packets: Option<i64>,
    pub bytes: Option<i64>,
    pub reverse_packets: Option<i64>,
    pub reverse_bytes: Option<i64>,
    pub tcp_flags: u8,
    pub start_ns: i64,
    pub end_ns: i64,
    /// "accept", "reject", or "" (unknown).
    pub action: String,
    pub sampling_rate: f64,
    /// ingress/egress (cloud) or the sensor's observed side.
    pub direction: String,
    pub vpc: Option<String>,
    pub subnet: Option<String>,
    pub instance: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub pkt_src_ip: Option<String>,
    pub pkt_dst_ip: Option<String>,
    /// Cloud extras, or the sensor's pod context.
    pub extra: Option<serde_json::Value>,
    /// A sensor flow's `initiator_by` (how its source was told to be the initiator); none for
    /// a cloud record, whose source is the packets' source.
    pub initiator_by: Option<String>,
    /// Whether that was a guess (`one_way`, `first_seen`): the entity views learn no role from
    /// such a flow. None for a cloud record.
    pub initiator_guessed: Option<bool>,
    /// The TCP flags the other end sent, for a sensor flow (`tcp_flags` are the source's);
    /// none for a cloud record (a record per direction).
    pub reverse_tcp_flags: Option<u8>,
    /// Flows of the other kind (sensor / cloud) linked to this one as the same conversation.
    pub correlated: i64,
}

impl FlowRow {
    /// The row's place in the order of `query_flows`.
    pub fn cursor(&self) -> FlowCursor {
        FlowCursor {
            end_ns: self.end_ns,
            id: self.id,
        }
    }

    /// Nulls the fields the stored extras list as `absent` (how the stores keep them), and
    /// the reverse counts of a one-way record (AWS, GCP: the other direction is a record of
    /// its own).
    pub(crate) fn blank_absent(mut self) -> Self {
        if self.source == Source::Aws.as_str() || self.source == Source::Gcp.as_str() {
            (self.reverse_packets, self.reverse_bytes) = (None, None);
        }
        let absent = self
            .extra
            .as_ref()
            .and_then(|e| e.get("absent"))
            .and_then(|a| a.as_array())
            .map(|a| Absent::of_names(a.iter().filter_map(|n| n.as_str())))
            .unwrap_or_default();
        if absent.is_empty() {
            return self;
        }
        let blank = |f: Absent| !absent.has(f);
        self.src_port = self.src_port.filter(|_| blank(Absent::SRC_PORT));
        self.dst_port = self.dst_port.filter(|_| blank(Absent::DST_PORT));
        self.protocol = self.protocol.filter(|_| blank(Absent::PROTOCOL));
        self.packets = self.packets.filter(|_| blank(Absent::PACKETS));
        self.bytes = self.bytes.filter(|_| blank(Absent::BYTES));
        self.reverse_packets = self
            .reverse_packets
            .filter(|_| blank(Absent::REVERSE_PACKETS));
        self.reverse_bytes = self.reverse_bytes.filter(|_| blank(Absent::REVERSE_BYTES));
        self
    }
}

/// What `/api/v1/top` ranks by: both directions' bytes or packets, or flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopBy {
    Bytes,
    Packets,
    Flows,
}

/// What `/api/v1/top` groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopGroup {
    SrcIp,
    DstIp,
    /// Source and destination address.
    Pair,
    /// Destination port and protocol.
    DstPort,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopQuery {
    pub by: TopBy,
    pub group: TopGroup,
    /// Flows that end at or after this time.
    pub since_ns: i64,
    /// Flows that start before this time.
    pub until_ns: Option<i64>,
    pub source: Option<Source>,
    pub limit: usize,
}

/// One row of a top-N: the group's key and its totals over both directions.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TopRow {
    /// An address, `src -> dst`, or `port/protocol`.
    pub key: String,
    pub flows: i64,
    pub packets: i64,
    pub bytes: i64,
}

/// An internal address seen in cloud flow logs but on no sensor's interface.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CoverageGap {
    pub ip: String,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    /// Cloud flows it appears in.
    pub flows: i64,
    /// Cloud accounts / projects / subscriptions that logged it.
    pub observers: Vec<String>,
    pub vpcs: Vec<String>,
}

/// One conversation of the 1-hour rollups (source port dropped), summed over a time range.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub protocol: u8,
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    /// Flows whose destination answered: a completed TCP handshake (not a RST), return
    /// traffic of other protocols, or a cloud's accept.
    pub answered: u64,
    /// Sensor flows whose initiator was a guess (`one_way`, `first_seen`).
    pub guessed: u64,
    pub first_ns: i64,
    pub last_ns: i64,
}

/// How long each level is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub raw_ns: i64,
    pub minute_ns: i64,
    pub hour_ns: i64,
}

impl Default for Retention {
    /// 7 days of raw flows, 30 of minutes, 400 of hours.
    fn default() -> Self {
        const DAY: i64 = 86_400_000_000_000;
        Retention {
            raw_ns: 7 * DAY,
            minute_ns: 30 * DAY,
            hour_ns: 400 * DAY,
        }
    }
}

/// What one maintenance pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Raw flows added to the rollups.
    pub rolled_up: u64,
    pub deleted_raw: u64,
    pub deleted_minutes: u64,
    pub deleted_hours: u64,
}

pub trait FlowStore: Send + Sync + 'static {
    /// Answers when the store does (for `/health`); an embedded store always does.
    fn ping(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// How many flows of sensor batches the writer gives [`FlowStore::store_batches`] at
    /// most at once: SQLite's transactions cost mostly the index pages they dirty (50,000
    /// measured best); ClickHouse's writes cost per part, so more is cheaper there.
    fn group_flows(&self) -> usize {
        50_000
    }
    /// Stores a batch once: a batch already stored is reported as a duplicate.
    fn store_batch(&self, b: &SensorBatch, now_ns: i64) -> anyhow::Result<Stored> {
        self.store_batches(&[b], now_ns)?
            .pop()
            .expect("one result per batch")
    }
    /// Stores several sensors' batches in one transaction (group commit), each batch all or
    /// nothing on its own: one result per batch, in order. The outer error means none was
    /// stored.
    fn store_batches(
        &self,
        batches: &[&SensorBatch],
        now_ns: i64,
    ) -> anyhow::Result<Vec<anyhow::Result<Stored>>>;
    /// The highest batch id stored for a sensor's instance (0: none): the sensor may drop its
    /// spool up to it.
    fn last_stored_batch(&self, instance_id: &str) -> anyhow::Result<u64>;
    /// Stores flows of the common model, in one transaction.
    fn insert_flows(&self, flows: &[Flow]) -> anyhow::Result<()>;
    /// Imports one file exactly once: `fill` hands the file's flows to the sink it is given,
    /// and they commit in one transaction with the file's digest, whose summary `fill` returns.
    /// Ok(None), with nothing stored, when a file with the same digest was imported before.
    /// (The digest is the proof that the file's flows are stored, as a batch id is for a
    /// sensor's: it lives with them.)
    fn import_file_once(
        &self,
        file: &ImportedFile,
        now_ns: i64,
        fill: &mut dyn FnMut(&mut FlowSink<'_>) -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<String>>;
    /// Totals over the flows of one sensor (all sensors if None).
    fn flow_totals(&self, sensor: Option<&str>) -> anyhow::Result<FlowTotals>;
    /// Totals over the flows of one source.
    fn source_totals(&self, source: Source) -> anyhow::Result<FlowTotals>;
    /// Totals of one rollup level ("1m" or "1h") for one source.
    fn rollup_totals(&self, level: &str, source: Source) -> anyhow::Result<FlowTotals>;
    /// Links sensor flows to the cloud flows (ending in [since_ns, until_ns]) of the same
    /// conversation: same 5-tuple either way round, or the cloud's packet addresses (NAT), with
    /// times overlapping within `tolerance_ns`. A linked sensor flow takes the cloud's VPC,
    /// subnet, instance, region, zone and action where it has none. Returns the new links.
    fn correlate(&self, since_ns: i64, until_ns: i64, tolerance_ns: i64) -> anyhow::Result<u64>;
    /// Internal addresses (RFC 1918, CGNAT, ULA) in cloud flows ending since `since_ns` that
    /// are not in `watched` (the sensors' interface addresses), by address.
    fn coverage_gaps(
        &self,
        since_ns: i64,
        watched: &HashSet<IpAddr>,
    ) -> anyhow::Result<Vec<CoverageGap>>;
    /// Adds the flows stored since the last pass to the 1-minute and 1-hour rollups (each flow
    /// once, by id, in the bucket of its end), then deletes what is older than `retention`
    /// allows at `now_ns` (raw flows only once rolled up).
    fn maintain(&self, now_ns: i64, retention: &Retention) -> anyhow::Result<Maintenance>;
    /// The top talkers (or destinations, pairs, ports) of a time range.
    fn top(&self, q: &TopQuery) -> anyhow::Result<Vec<TopRow>>;
    /// Flows matching `q`, newest first.
    fn query_flows(&self, q: &FlowQuery) -> anyhow::Result<Vec<FlowRow>>;
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
}
