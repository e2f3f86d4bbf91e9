//! Storage. Everything goes through [`Store`], so a ClickHouse backend can come later without
//! touching callers; the embedded default is SQLite in the data dir (WAL, one writer).
//!
//! Durability: a batch and its "stored" mark are written in one transaction before the sensor is
//! acknowledged, so what was acknowledged survives `kill -9`, and a replayed batch is recognised
//! by (instance_id, batch_id) and not stored twice.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::{
    model::{Alert, AlertQuery, AlertUpdate, INCIDENT_GAP_NS, Severity},
    model::{
        Flow, FlowSink, Heartbeat, ImportedFile, PodContext, Registration, SensorBatch, SensorMeta,
        Source,
    },
    notify::{self, Notifier, Pending},
    util::net::internal,
};

/// A sensor as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorRow {
    pub name: String,
    pub created_unix_ns: i64,
    pub revoked: bool,
    pub instance_id: Option<String>,
    pub version: Option<String>,
    pub kernel: Option<String>,
    pub hostname: Option<String>,
    pub first_seen_unix_ns: Option<i64>,
    pub last_heartbeat_unix_ns: Option<i64>,
    /// The last heartbeat's kernel counters, as JSON.
    pub kernel_counters: Option<String>,
    /// The registration's host: interfaces (addresses, XDP and tc attach modes), Kubernetes
    /// node, as JSON.
    pub host: Option<String>,
    /// The last heartbeat's agent counters (drops included), as JSON.
    pub agent_counters: Option<String>,
}

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

/// A flows query (the REST API's filters); newest first, keyset-paged by id.
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
    /// Only flows with a smaller id (the previous page's cursor).
    pub before_id: Option<i64>,
    pub limit: usize,
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
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub packets: i64,
    pub bytes: i64,
    pub reverse_packets: i64,
    pub reverse_bytes: i64,
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
    /// Flows of the other kind (sensor / cloud) linked to this one as the same conversation.
    pub correlated: i64,
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

pub mod access;
pub mod checkpoint;
pub mod chunks;
mod correlate;
pub mod entities;
pub mod triage;

pub use access::Access;
pub use entities::EntityData;
pub use triage::Triage;

pub trait Store: Access + EntityData + Triage + Send + Sync + 'static {
    /// Creates a sensor with the hash of its key; fails if the name exists.
    fn add_sensor(&self, name: &str, key_hash: &str, now_ns: i64) -> anyhow::Result<()>;
    /// Marks a sensor's key revoked; false if there is no such sensor.
    fn revoke_sensor(&self, name: &str, now_ns: i64) -> anyhow::Result<bool>;
    fn sensors(&self) -> anyhow::Result<Vec<SensorRow>>;
    /// The sensor a key hash belongs to, unless revoked.
    fn sensor_for_key(&self, key_hash: &str) -> anyhow::Result<Option<String>>;
    /// Records a registration; returns the highest batch id stored for this instance.
    fn register(&self, sensor: &str, req: &Registration, now_ns: i64) -> anyhow::Result<u64>;
    fn heartbeat(&self, sensor: &str, req: &Heartbeat, now_ns: i64) -> anyhow::Result<()>;
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
    /// Totals over the flows of one sensor (all sensors if None).
    fn flow_totals(&self, sensor: Option<&str>) -> anyhow::Result<FlowTotals>;
    /// Stores flows of the common model (cloud flow logs), in one transaction.
    fn insert_flows(&self, flows: &[Flow]) -> anyhow::Result<()>;
    /// Totals over the flows of one source.
    fn source_totals(&self, source: Source) -> anyhow::Result<FlowTotals>;
    /// Imports one file exactly once: `fill` hands the file's flows to the sink it is given,
    /// and they commit in one transaction with the file's record, whose summary `fill` returns.
    /// Ok(None), with nothing stored, when a file with the same digest was imported before.
    fn import_file_once(
        &self,
        file: &ImportedFile,
        now_ns: i64,
        fill: &mut dyn FnMut(&mut FlowSink<'_>) -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<String>>;
    /// Links sensor flows to the cloud flows (ending in [since_ns, until_ns]) of the same
    /// conversation: same 5-tuple either way round, or the cloud's packet addresses (NAT), with
    /// times overlapping within `tolerance_ns`. A linked sensor flow takes the cloud's VPC,
    /// subnet, instance, region, zone and action where it has none. Returns the new links.
    fn correlate(&self, since_ns: i64, until_ns: i64, tolerance_ns: i64) -> anyhow::Result<u64>;
    /// Internal addresses (RFC 1918, CGNAT, ULA) in cloud flows ending since `since_ns` that
    /// are on no registered sensor's interface, by address.
    fn coverage_gaps(&self, since_ns: i64) -> anyhow::Result<Vec<CoverageGap>>;
    /// Adds the flows stored since the last pass to the 1-minute and 1-hour rollups (each flow
    /// once, by id, in the bucket of its end), then deletes what is older than `retention`
    /// allows at `now_ns` (raw flows only once rolled up).
    fn maintain(&self, now_ns: i64, retention: &Retention) -> anyhow::Result<Maintenance>;
    /// Totals of one rollup level ("1m" or "1h") for one source.
    fn rollup_totals(&self, level: &str, source: Source) -> anyhow::Result<FlowTotals>;
    /// The top talkers (or destinations, pairs, ports) of a time range.
    fn top(&self, q: &TopQuery) -> anyhow::Result<Vec<TopRow>>;
    /// Flows matching `q`, newest first.
    fn query_flows(&self, q: &FlowQuery) -> anyhow::Result<Vec<FlowRow>>;
    /// Merges a detector's observation into the open alert of its type and source last seen
    /// within `model::INCIDENT_GAP_NS`, or opens one; returns the alert's id. In the same
    /// transaction, queues a message to each notifier the change concerns
    /// ([`crate::model::event_for`]).
    fn record_alert(&self, u: &AlertUpdate) -> anyhow::Result<i64>;
    /// Alerts matching `q`, the most recently active first.
    fn alerts(&self, q: &AlertQuery) -> anyhow::Result<Vec<Alert>>;
    fn alert(&self, id: i64) -> anyhow::Result<Option<Alert>>;
    /// The watchlist: (network in CIDR form, label), by network.
    fn watchlist(&self) -> anyhow::Result<Vec<(String, String)>>;
    /// Adds or relabels watchlist entries (networks in canonical CIDR form); returns how many
    /// were new.
    fn add_watchlist(&self, entries: &[(String, String)], now_ns: i64) -> anyhow::Result<usize>;
    /// Removes a watchlist entry; false if it was not there.
    fn remove_watchlist(&self, cidr: &str) -> anyhow::Result<bool>;
    /// The allowlist: (network, alert type or `*`, label).
    fn allowlist(&self) -> anyhow::Result<Vec<(String, String, String)>>;
    /// Adds or relabels an allowlist entry; true if it was new.
    fn add_allowlist(
        &self,
        cidr: &str,
        alert_type: &str,
        label: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool>;
    /// Removes an allowlist entry; false if it was not there.
    fn remove_allowlist(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool>;
    /// The notifiers, by name.
    fn notifiers(&self) -> anyhow::Result<Vec<Notifier>>;
    /// Adds a notifier; fails if the name exists.
    fn add_notifier(&self, n: &Notifier, now_ns: i64) -> anyhow::Result<()>;
    /// Removes a notifier and its undelivered messages: None if there was no such notifier,
    /// else how many queued messages were dropped with it.
    fn remove_notifier(&self, name: &str) -> anyhow::Result<Option<u64>>;
    /// Queue counts per notifier (also of removed notifiers' delivered and failed messages).
    fn notification_counts(&self) -> anyhow::Result<Vec<(String, notify::Counts)>>;
    /// Pending messages due at `now_ns`, oldest first.
    fn due_notifications(&self, now_ns: i64, limit: usize) -> anyhow::Result<Vec<Pending>>;
    fn notification_delivered(&self, id: i64, attempts: u32, now_ns: i64) -> anyhow::Result<()>;
    /// A failed attempt: tried again at `next_ns`, or failed for good if None.
    fn notification_failed(
        &self,
        id: i64,
        attempts: u32,
        next_ns: Option<i64>,
        error: &str,
    ) -> anyhow::Result<()>;
    /// Sensitivity settings: (network or `*`, alert type or `*`, level).
    fn sensitivities(&self) -> anyhow::Result<Vec<(String, String, String)>>;
    /// Sets the level of (network, alert type); true if the pair was new.
    fn set_sensitivity(
        &self,
        cidr: &str,
        alert_type: &str,
        level: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool>;
    /// Removes a setting (back to medium); false if it was not there.
    fn remove_sensitivity(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool>;
    /// A detector's saved state: (key, state) pairs.
    fn detector_state(&self, detector: &str) -> anyhow::Result<Vec<(String, String)>>;
    /// Saves (key, state, last data time) entries of a detector's state, replacing older ones;
    /// a `None` state deletes the key.
    fn save_detector_state(
        &self,
        detector: &str,
        entries: &[(String, Option<String>, i64)],
    ) -> anyhow::Result<()>;
}

/// The lists of an alert, stored as one JSON column.
#[derive(serde::Serialize, serde::Deserialize)]
struct AlertBody {
    targets: Vec<String>,
    targets_total: u64,
    observations: Vec<serde_json::Value>,
    observations_total: u64,
    sources: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

const ALERT_COLUMNS: &str = "id, type, severity, status, source, first_seen_ns, last_seen_ns, \
                             body, assignee, snoozed_until_ns";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let body: String = r.get(7)?;
    let b: AlertBody = serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Alert {
        id: r.get(0)?,
        kind: r.get(1)?,
        severity: r.get(2)?,
        status: r.get(3)?,
        source: r.get(4)?,
        first_seen: r.get(5)?,
        last_seen: r.get(6)?,
        targets: b.targets,
        targets_total: b.targets_total,
        observations: b.observations,
        observations_total: b.observations_total,
        sources: b.sources,
        tags: b.tags,
        assignee: r.get(8)?,
        snoozed_until: r.get(9)?,
    })
}

fn alert_body(a: &Alert) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&AlertBody {
        targets: a.targets.clone(),
        targets_total: a.targets_total,
        observations: a.observations.clone(),
        observations_total: a.observations_total,
        sources: a.sources.clone(),
        tags: a.tags.clone(),
    })?)
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Stops the checkpoint thread when the store is dropped.
    _checkpointer: checkpoint::Handle,
}

/// What the WAL file is cut back to after a checkpoint reset it.
const WAL_KEEP_BYTES: i64 = 64 << 20;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sensors (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    created_ns INTEGER NOT NULL,
    revoked_ns INTEGER,
    instance_id TEXT,
    version TEXT,
    kernel TEXT,
    hostname TEXT,
    machine_id TEXT,
    host_json TEXT,
    first_seen_ns INTEGER,
    last_heartbeat_ns INTEGER,
    kernel_counters TEXT,
    agent_counters TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    instance_id TEXT NOT NULL,
    batch_id INTEGER NOT NULL,
    sensor TEXT NOT NULL,
    stored_ns INTEGER NOT NULL,
    flows INTEGER NOT NULL,
    PRIMARY KEY (instance_id, batch_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flows (
    id INTEGER PRIMARY KEY,
    sensor TEXT NOT NULL,
    iface TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    dst_ip TEXT NOT NULL,
    src_port INTEGER NOT NULL,
    dst_port INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    reverse_packets INTEGER NOT NULL,
    reverse_bytes INTEGER NOT NULL,
    tcp_flags INTEGER NOT NULL,
    reverse_tcp_flags INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    observed TEXT NOT NULL,
    initiator_by TEXT NOT NULL,
    partial TEXT NOT NULL,
    end_reason TEXT NOT NULL,
    src_pod TEXT,
    dst_pod TEXT
);
CREATE INDEX IF NOT EXISTS flows_by_time ON flows (end_ns);
CREATE TABLE IF NOT EXISTS scan_events (
    id INTEGER PRIMARY KEY,
    sensor TEXT NOT NULL,
    iface TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    distinct_ports INTEGER NOT NULL,
    distinct_hosts INTEGER NOT NULL,
    probe TEXT NOT NULL,
    probes_json TEXT NOT NULL,
    probe_bytes INTEGER NOT NULL,
    last_dst_ip TEXT NOT NULL,
    last_dst_port INTEGER NOT NULL,
    reason TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS probe_records (
    id INTEGER PRIMARY KEY,
    sensor TEXT NOT NULL,
    iface TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    protocol INTEGER NOT NULL,
    probe TEXT NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_events (
    id INTEGER PRIMARY KEY,
    sensor TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    service TEXT NOT NULL,
    outcome TEXT NOT NULL,
    user TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    src_port INTEGER NOT NULL
);
"#;

/// Schema changes after the first release, applied in order; `PRAGMA user_version` says how
/// many a database has.
const MIGRATIONS: &[&str] = &[
    // 1: one flow model for sensors and cloud flow logs.
    r#"
ALTER TABLE flows ADD COLUMN source TEXT NOT NULL DEFAULT 'sensor';
ALTER TABLE flows ADD COLUMN action TEXT NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN sampling_rate REAL NOT NULL DEFAULT 1.0;
ALTER TABLE flows ADD COLUMN vpc TEXT;
ALTER TABLE flows ADD COLUMN subnet TEXT;
ALTER TABLE flows ADD COLUMN instance TEXT;
ALTER TABLE flows ADD COLUMN region TEXT;
ALTER TABLE flows ADD COLUMN zone TEXT;
ALTER TABLE flows ADD COLUMN pkt_src_ip TEXT;
ALTER TABLE flows ADD COLUMN pkt_dst_ip TEXT;
ALTER TABLE flows ADD COLUMN cloud_json TEXT;
CREATE INDEX IF NOT EXISTS flows_by_source ON flows (source, end_ns);
"#,
    // 2: files of the watched import directory, each imported once (by content).
    r#"
CREATE TABLE imported_files (
    sha256 TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    imported_ns INTEGER NOT NULL,
    summary TEXT NOT NULL
);
"#,
    // 3: a sensor flow and a cloud flow that are the same conversation.
    r#"
CREATE TABLE flow_links (
    sensor_flow INTEGER NOT NULL,
    cloud_flow INTEGER NOT NULL,
    PRIMARY KEY (sensor_flow, cloud_flow)
) WITHOUT ROWID;
CREATE INDEX flow_links_by_cloud ON flow_links (cloud_flow);
"#,
    // 4: 1-minute and 1-hour rollups of conversations (source port dropped), fed by flow id.
    r#"
CREATE TABLE flows_1m (
    bucket_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    observer TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    dst_ip TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    action TEXT NOT NULL,
    flows INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    reverse_packets INTEGER NOT NULL,
    reverse_bytes INTEGER NOT NULL,
    PRIMARY KEY (bucket_ns, source, observer, src_ip, dst_ip, dst_port, protocol, action)
) WITHOUT ROWID;
CREATE TABLE flows_1h (
    bucket_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    observer TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    dst_ip TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    action TEXT NOT NULL,
    flows INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    reverse_packets INTEGER NOT NULL,
    reverse_bytes INTEGER NOT NULL,
    PRIMARY KEY (bucket_ns, source, observer, src_ip, dst_ip, dst_port, protocol, action)
) WITHOUT ROWID;
CREATE TABLE rollup_state (
    name TEXT PRIMARY KEY,
    last_flow_id INTEGER NOT NULL
);
"#,
    // 5: alerts, one per incident; the lists (targets, observations, sources) as JSON.
    r#"
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX alerts_by_incident ON alerts (type, source, last_seen_ns);
CREATE INDEX alerts_by_time ON alerts (last_seen_ns);
"#,
    // 6: detectors' state that must survive a restart (slow-scan walks).
    r#"
CREATE TABLE detector_state (
    detector TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    last_ns INTEGER NOT NULL,
    PRIMARY KEY (detector, key)
) WITHOUT ROWID;
"#,
    // 7: the watchlist: addresses and networks whose traffic is an alert.
    r#"
CREATE TABLE watchlist (
    cidr TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    added_ns INTEGER NOT NULL
);
"#,
    // 8: the allowlist: sources whose alerts of a type (or of every type, `*`) are not raised.
    r#"
CREATE TABLE allowlist (
    cidr TEXT NOT NULL,
    alert_type TEXT NOT NULL,
    label TEXT NOT NULL,
    added_ns INTEGER NOT NULL,
    PRIMARY KEY (cidr, alert_type)
) WITHOUT ROWID;
"#,
    // 9: notifiers and the outbox of messages to them (see notify.rs).
    r#"
CREATE TABLE notifiers (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    min_severity TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    notifier TEXT NOT NULL,
    alert_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT,
    done_ns INTEGER
);
CREATE INDEX outbox_due ON outbox (state, next_ns);
"#,
    // 10: alert triage: assignee, snooze, and the timeline of who did what (comments too).
    r#"
ALTER TABLE alerts ADD COLUMN assignee TEXT;
ALTER TABLE alerts ADD COLUMN snoozed_until_ns INTEGER;
CREATE TABLE alert_history (
    id INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX alert_history_by_alert ON alert_history (alert_id, id);
"#,
    // 11: dashboard users, their sessions, and API tokens (see auth.rs).
    r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    last_login_ns INTEGER
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    last_used_ns INTEGER,
    revoked_ns INTEGER
);
"#,
    // 12: rollups count the flows whose destination answered (entity roles: what a host
    // serves). Older rows: return traffic or an accept, the best they can tell.
    r#"
ALTER TABLE flows_1m ADD COLUMN answered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows_1h ADD COLUMN answered INTEGER NOT NULL DEFAULT 0;
UPDATE flows_1m SET answered = flows WHERE reverse_packets > 0 OR action = 'accept';
UPDATE flows_1h SET answered = flows WHERE reverse_packets > 0 OR action = 'accept';
"#,
    // 13: sensitivity per alert type (or `*`) and network (or `*`): off, low, medium, high.
    r#"
CREATE TABLE sensitivity (
    cidr TEXT NOT NULL,
    alert_type TEXT NOT NULL,
    level TEXT NOT NULL,
    added_ns INTEGER NOT NULL,
    PRIMARY KEY (cidr, alert_type)
) WITHOUT ROWID;
"#,
    // 14: addresses are found through chunks (store/chunks.rs), not per-flow B-tree indexes.
    // Flows stored before have one chunk of unknown addresses, scanned when asked. (This
    // version also indexed sensor flows by a `tuple_key`, which 15 replaces: the column stays,
    // unused.)
    r#"
DROP INDEX IF EXISTS flows_by_src;
DROP INDEX IF EXISTS flows_by_dst;
DROP INDEX IF EXISTS flows_by_source;
CREATE TABLE flow_chunks (
    first_id INTEGER PRIMARY KEY,
    last_id INTEGER NOT NULL,
    min_end_ns INTEGER NOT NULL,
    max_end_ns INTEGER NOT NULL,
    addrs BLOB
);
CREATE INDEX flow_chunks_by_end ON flow_chunks (max_end_ns);
INSERT INTO flow_chunks SELECT MIN(id), MAX(id), MIN(end_ns), MAX(end_ns), NULL FROM flows
HAVING COUNT(*) > 0;
ALTER TABLE flows ADD COLUMN tuple_key INTEGER;
"#,
    // 15: correlation finds sensor flows through their chunk's list of conversations
    // (store/correlate.rs), not an index that took an insert at a random place per sensor flow.
    // Chunks without sensor flows get an empty list; a chunk whose list is unknown (NULL) has
    // its rows read instead.
    r#"
ALTER TABLE flow_chunks ADD COLUMN min_start_ns INTEGER;
ALTER TABLE flow_chunks ADD COLUMN tuples BLOB;
UPDATE flow_chunks SET tuples = X'' WHERE NOT EXISTS
    (SELECT 1 FROM flows WHERE id BETWEEN first_id AND last_id AND source = 'sensor');
DROP INDEX IF EXISTS flows_sensor_tuple;
"#,
];

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

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let have: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(have) {
        let tx = conn.transaction()?;
        tx.execute_batch(m)
            .with_context(|| format!("migrating the store to version {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Whether a flow's destination really answered (SQL over a `flows` row): a TCP handshake it
/// completed (SYN-ACK back; a RST is a closed port), any return traffic of other protocols, or,
/// in a one-way cloud record, the cloud's accept.
const ANSWERED: &str = "CASE WHEN source = 'sensor' THEN \
     CASE WHEN protocol = 6 THEN (reverse_tcp_flags & 18) = 18 ELSE reverse_packets > 0 END \
     ELSE action = 'accept' OR reverse_packets > 0 END";

/// Queues one message per notifier that the change from `before` to `after` concerns.
fn queue_notifications(
    tx: &rusqlite::Transaction<'_>,
    before: Option<&Alert>,
    after: &Alert,
) -> anyhow::Result<()> {
    let now = crate::util::time::now_ns();
    if after.status == "snoozed" && after.snoozed_until.is_some_and(|t| t > now) {
        return Ok(());
    }
    let mut st = tx.prepare_cached("SELECT name, min_severity FROM notifiers")?;
    let notifiers = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut put = tx.prepare_cached(
        "INSERT INTO outbox (notifier, alert_id, event, created_ns, next_ns, state) \
         VALUES (?1, ?2, ?3, ?4, ?4, 'pending')",
    )?;
    for (name, min) in notifiers {
        let min = Severity::parse(&min).unwrap_or(Severity::Low);
        if let Some(ev) = crate::model::event_for(min, before, after) {
            put.execute(params![name, after.id, ev.as_str(), now])?;
        }
    }
    Ok(())
}

fn i(v: u64) -> i64 {
    // SQLite integers are signed 64-bit: counters beyond 2^63 saturate rather than wrap.
    v.min(i64::MAX as u64) as i64
}

impl SqliteStore {
    pub fn open(data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let path = data_dir.join("picket.db");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // WAL: readers do not block the writer. synchronous=NORMAL survives a process crash
        // (kill -9) with every committed transaction; FULL would add power-loss safety.
        // 16 KiB pages for a new database (an existing one keeps its size): a quarter of the
        // B-tree pages and WAL frames per flow (gRPC ingest: 179-193k -> see README).
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A 64 MiB page cache and memory-mapped reads: with SQLite's 2 MiB default, inserting
        // into the flow indexes spent most of its time copying pages in and out of the kernel
        // (import: 17k -> see README's performance section).
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        let mut conn = conn;
        migrate(&mut conn)?;
        // Checkpoints run on their own thread, off the writer's path (import: 168k -> 228k
        // records/s into the store alone).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        let checkpointer = checkpoint::start(&path)?;
        Ok(Arc::new(SqliteStore {
            conn: Mutex::new(conn),
            _checkpointer: checkpointer,
        }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    fn add_sensor(&self, name: &str, key_hash: &str, now_ns: i64) -> anyhow::Result<()> {
        let c = self.conn();
        let exists: Option<String> = c
            .query_row("SELECT name FROM sensors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            anyhow::bail!("a sensor named `{name}` exists already");
        }
        c.execute(
            "INSERT INTO sensors (name, key_hash, created_ns) VALUES (?1, ?2, ?3)",
            params![name, key_hash, now_ns],
        )?;
        Ok(())
    }

    fn revoke_sensor(&self, name: &str, now_ns: i64) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "UPDATE sensors SET revoked_ns = ?2 WHERE name = ?1 AND revoked_ns IS NULL",
            params![name, now_ns],
        )?;
        Ok(n == 1)
    }

    fn sensors(&self) -> anyhow::Result<Vec<SensorRow>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT name, created_ns, revoked_ns, instance_id, version, kernel, hostname, \
             first_seen_ns, last_heartbeat_ns, kernel_counters, host_json, agent_counters \
             FROM sensors ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SensorRow {
                name: r.get(0)?,
                created_unix_ns: r.get(1)?,
                revoked: r.get::<_, Option<i64>>(2)?.is_some(),
                instance_id: r.get(3)?,
                version: r.get(4)?,
                kernel: r.get(5)?,
                hostname: r.get(6)?,
                first_seen_unix_ns: r.get(7)?,
                last_heartbeat_unix_ns: r.get(8)?,
                kernel_counters: r.get(9)?,
                host: r.get(10)?,
                agent_counters: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn sensor_for_key(&self, key_hash: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name FROM sensors WHERE key_hash = ?1 AND revoked_ns IS NULL",
                [key_hash],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn register(&self, sensor: &str, req: &Registration, now_ns: i64) -> anyhow::Result<u64> {
        let c = self.conn();
        let host_json = serde_json::json!({
            "hostname": req.hostname,
            "machine_id": req.machine_id,
            "k8s_node": req.k8s_node,
            "interfaces": req.interfaces.iter().map(|i| serde_json::json!({
                "name": i.name, "index": i.index, "mac": i.mac, "addresses": i.addresses,
                "xdp_mode": i.xdp_mode, "tc_mode": i.tc_mode,
            })).collect::<Vec<_>>(),
        });
        c.execute(
            "UPDATE sensors SET instance_id = ?2, version = ?3, kernel = ?4, hostname = ?5, \
             machine_id = ?6, host_json = ?7, first_seen_ns = COALESCE(first_seen_ns, ?8), \
             last_heartbeat_ns = ?8 WHERE name = ?1",
            params![
                sensor,
                req.instance_id,
                req.version,
                req.kernel,
                req.hostname,
                req.machine_id,
                host_json.to_string(),
                now_ns
            ],
        )?;
        let last: Option<i64> = c.query_row(
            "SELECT MAX(batch_id) FROM batches WHERE instance_id = ?1",
            [&req.instance_id],
            |r| r.get(0),
        )?;
        Ok(last.unwrap_or(0) as u64)
    }

    fn heartbeat(&self, sensor: &str, req: &Heartbeat, now_ns: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE sensors SET last_heartbeat_ns = ?2, kernel_counters = ?3, agent_counters = ?4, \
             first_seen_ns = COALESCE(first_seen_ns, ?2) WHERE name = ?1",
            params![
                sensor,
                now_ns,
                serde_json::to_string(&req.kernel_counters)?,
                serde_json::to_string(&req.agent_counters)?
            ],
        )?;
        Ok(())
    }

    fn store_batches(
        &self,
        batches: &[&SensorBatch],
        now_ns: i64,
    ) -> anyhow::Result<Vec<anyhow::Result<Stored>>> {
        let mut c = self.conn();
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

    fn record_alert(&self, u: &AlertUpdate) -> anyhow::Result<i64> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let open = tx
            .query_row(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE type = ?1 AND source = ?2 \
                     AND status != 'closed' AND last_seen_ns >= ?3 \
                     ORDER BY last_seen_ns DESC LIMIT 1"
                ),
                params![u.kind, u.source, u.time_ns.saturating_sub(INCIDENT_GAP_NS)],
                alert_row,
            )
            .optional()?;
        let before = open.clone();
        let a = match open {
            Some(mut a) => {
                a.merge(u);
                tx.execute(
                    "UPDATE alerts SET severity = ?2, first_seen_ns = ?3, last_seen_ns = ?4, \
                     body = ?5 WHERE id = ?1",
                    params![a.id, a.severity, a.first_seen, a.last_seen, alert_body(&a)?],
                )?;
                a
            }
            None => {
                let mut a = Alert::open(u);
                tx.execute(
                    "INSERT INTO alerts (type, severity, status, source, first_seen_ns, \
                     last_seen_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        a.kind,
                        a.severity,
                        a.status,
                        a.source,
                        a.first_seen,
                        a.last_seen,
                        alert_body(&a)?
                    ],
                )?;
                a.id = tx.last_insert_rowid();
                a
            }
        };
        queue_notifications(&tx, before.as_ref(), &a)?;
        tx.commit()?;
        Ok(a.id)
    }

    fn alerts(&self, q: &AlertQuery) -> anyhow::Result<Vec<Alert>> {
        let c = self.conn();
        let mut st = c.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR type = ?1) \
             AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR source = ?3) \
             AND (?5 IS NULL OR severity = ?5) AND (?6 IS NULL OR assignee = ?6) \
             AND (?7 IS NULL OR last_seen_ns >= ?7) \
             AND (?8 IS NULL OR last_seen_ns < ?8 OR (last_seen_ns = ?8 AND id < ?9)) \
             ORDER BY last_seen_ns DESC, id DESC LIMIT ?4"
        ))?;
        let rows = st.query_map(
            params![
                q.kind,
                q.status,
                q.source,
                q.limit as i64,
                q.severity,
                q.assignee,
                q.since_ns,
                q.after.map(|a| a.0),
                q.after.map(|a| a.1)
            ],
            alert_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn alert(&self, id: i64) -> anyhow::Result<Option<Alert>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
                [id],
                alert_row,
            )
            .optional()?)
    }

    fn watchlist(&self) -> anyhow::Result<Vec<(String, String)>> {
        let c = self.conn();
        let mut st = c.prepare_cached("SELECT cidr, label FROM watchlist ORDER BY cidr")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_watchlist(&self, entries: &[(String, String)], now_ns: i64) -> anyhow::Result<usize> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let mut new = 0;
        {
            let mut known = tx.prepare_cached("SELECT 1 FROM watchlist WHERE cidr = ?1")?;
            let mut put = tx.prepare_cached(
                "INSERT INTO watchlist (cidr, label, added_ns) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (cidr) DO UPDATE SET label = excluded.label",
            )?;
            for (cidr, label) in entries {
                if !known.exists([cidr])? {
                    new += 1;
                }
                put.execute(params![cidr, label, now_ns])?;
            }
        }
        tx.commit()?;
        Ok(new)
    }

    fn remove_watchlist(&self, cidr: &str) -> anyhow::Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM watchlist WHERE cidr = ?1", [cidr])?
            > 0)
    }

    fn allowlist(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT cidr, alert_type, label FROM allowlist ORDER BY cidr, alert_type",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_allowlist(
        &self,
        cidr: &str,
        alert_type: &str,
        label: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let known = tx
            .prepare_cached("SELECT 1 FROM allowlist WHERE cidr = ?1 AND alert_type = ?2")?
            .exists([cidr, alert_type])?;
        tx.execute(
            "INSERT INTO allowlist (cidr, alert_type, label, added_ns) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (cidr, alert_type) DO UPDATE SET label = excluded.label",
            params![cidr, alert_type, label, now_ns],
        )?;
        tx.commit()?;
        Ok(!known)
    }

    fn remove_allowlist(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM allowlist WHERE cidr = ?1 AND alert_type = ?2",
            [cidr, alert_type],
        )? > 0)
    }

    fn notifiers(&self) -> anyhow::Result<Vec<Notifier>> {
        let c = self.conn();
        let mut st =
            c.prepare_cached("SELECT name, target, min_severity FROM notifiers ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (name, target, min) = r?;
            Ok(Notifier {
                target: serde_json::from_str(&target)
                    .with_context(|| format!("notifier `{name}`: unreadable target"))?,
                min_severity: Severity::parse(&min).unwrap_or(Severity::Low),
                name,
            })
        })
        .collect()
    }

    fn add_notifier(&self, n: &Notifier, now_ns: i64) -> anyhow::Result<()> {
        let c = self.conn();
        let exists = c
            .prepare_cached("SELECT 1 FROM notifiers WHERE name = ?1")?
            .exists([&n.name])?;
        anyhow::ensure!(!exists, "a notifier named `{}` exists already", n.name);
        c.execute(
            "INSERT INTO notifiers (name, target, min_severity, created_ns) \
             VALUES (?1, ?2, ?3, ?4)",
            params![
                n.name,
                serde_json::to_string(&n.target)?,
                n.min_severity.as_str(),
                now_ns
            ],
        )?;
        Ok(())
    }

    fn remove_notifier(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        if tx.execute("DELETE FROM notifiers WHERE name = ?1", [name])? == 0 {
            return Ok(None);
        }
        let dropped = tx.execute(
            "DELETE FROM outbox WHERE notifier = ?1 AND state = 'pending'",
            [name],
        )?;
        tx.commit()?;
        Ok(Some(dropped as u64))
    }

    fn notification_counts(&self) -> anyhow::Result<Vec<(String, notify::Counts)>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT notifier, \
             SUM(state = 'pending'), SUM(state = 'delivered'), SUM(state = 'failed') \
             FROM outbox GROUP BY notifier ORDER BY notifier",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get(0)?,
                notify::Counts {
                    pending: r.get::<_, i64>(1)? as u64,
                    delivered: r.get::<_, i64>(2)? as u64,
                    failed: r.get::<_, i64>(3)? as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn due_notifications(&self, now_ns: i64, limit: usize) -> anyhow::Result<Vec<Pending>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT id, notifier, alert_id, event, attempts FROM outbox \
             WHERE state = 'pending' AND next_ns <= ?1 ORDER BY next_ns, id LIMIT ?2",
        )?;
        let rows = st.query_map(params![now_ns, limit as i64], |r| {
            Ok(Pending {
                id: r.get(0)?,
                notifier: r.get(1)?,
                alert_id: r.get(2)?,
                event: r.get(3)?,
                attempts: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn notification_delivered(&self, id: i64, attempts: u32, now_ns: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE outbox SET state = 'delivered', attempts = ?2, done_ns = ?3, \
             last_error = NULL WHERE id = ?1",
            params![id, attempts, now_ns],
        )?;
        Ok(())
    }

    fn notification_failed(
        &self,
        id: i64,
        attempts: u32,
        next_ns: Option<i64>,
        error: &str,
    ) -> anyhow::Result<()> {
        let c = self.conn();
        match next_ns {
            Some(t) => c.execute(
                "UPDATE outbox SET attempts = ?2, next_ns = ?3, last_error = ?4 WHERE id = ?1",
                params![id, attempts, t, error],
            )?,
            None => c.execute(
                "UPDATE outbox SET state = 'failed', attempts = ?2, last_error = ?3, \
                 done_ns = ?4 WHERE id = ?1",
                params![id, attempts, error, crate::util::time::now_ns()],
            )?,
        };
        Ok(())
    }

    fn sensitivities(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT cidr, alert_type, level FROM sensitivity ORDER BY cidr, alert_type",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_sensitivity(
        &self,
        cidr: &str,
        alert_type: &str,
        level: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let known = tx
            .prepare_cached("SELECT 1 FROM sensitivity WHERE cidr = ?1 AND alert_type = ?2")?
            .exists([cidr, alert_type])?;
        tx.execute(
            "INSERT INTO sensitivity (cidr, alert_type, level, added_ns) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (cidr, alert_type) DO UPDATE SET level = excluded.level",
            params![cidr, alert_type, level, now_ns],
        )?;
        tx.commit()?;
        Ok(!known)
    }

    fn remove_sensitivity(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM sensitivity WHERE cidr = ?1 AND alert_type = ?2",
            [cidr, alert_type],
        )? > 0)
    }

    fn detector_state(&self, detector: &str) -> anyhow::Result<Vec<(String, String)>> {
        let c = self.conn();
        let mut st =
            c.prepare_cached("SELECT key, state FROM detector_state WHERE detector = ?1")?;
        let rows = st.query_map([detector], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn save_detector_state(
        &self,
        detector: &str,
        entries: &[(String, Option<String>, i64)],
    ) -> anyhow::Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO detector_state (detector, key, state, last_ns) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (detector, key) \
                 DO UPDATE SET state = excluded.state, last_ns = excluded.last_ns",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM detector_state WHERE detector = ?1 AND key = ?2")?;
            for (k, v, t) in entries {
                match v {
                    Some(v) => put.execute(params![detector, k, v, t])?,
                    None => delete.execute(params![detector, k])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn flow_totals(&self, sensor: Option<&str>) -> anyhow::Result<FlowTotals> {
        let c = self.conn();
        let q = format!("{TOTALS} WHERE source = 'sensor'");
        Ok(match sensor {
            Some(s) => c.query_row(&format!("{q} AND sensor = ?1"), [s], totals_row)?,
            None => c.query_row(&q, [], totals_row)?,
        })
    }

    fn source_totals(&self, source: Source) -> anyhow::Result<FlowTotals> {
        Ok(self.conn().query_row(
            &format!("{TOTALS} WHERE source = ?1"),
            [source.as_str()],
            totals_row,
        )?)
    }

    fn top(&self, q: &TopQuery) -> anyhow::Result<Vec<TopRow>> {
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
            "SELECT {key} AS k, COUNT(*) AS flows, SUM(packets + reverse_packets) AS packets, \
             SUM(bytes + reverse_bytes) AS bytes FROM flows \
             WHERE end_ns >= ?1 AND (?2 IS NULL OR start_ns < ?2) \
             AND (?3 IS NULL OR source = ?3) \
             GROUP BY k ORDER BY {order} DESC, k LIMIT ?4"
        );
        let c = self.conn();
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

    fn query_flows(&self, q: &FlowQuery) -> anyhow::Result<Vec<FlowRow>> {
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
        if let Some(id) = q.before_id {
            wh.push(format!("id < {}", arg(Value::Integer(id))));
        }
        // By address: only the id ranges of the chunks that may hold it, newest first.
        let c = self.conn();
        let ranges = match q.ip {
            Some(ip) => {
                let r = chunks::ranges_holding(&c, ip, q.since_ns, q.before_id)?;
                let (lo, hi) = (arg(Value::Null), arg(Value::Null));
                wh.push(format!("id BETWEEN {lo} AND {hi}"));
                Some(r)
            }
            None => None,
        };
        let limit = arg(Value::Integer(q.limit as i64));
        let sql = format!(
            "SELECT id, source, sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
             packets, bytes, reverse_packets, reverse_bytes, tcp_flags, start_ns, end_ns, action, \
             sampling_rate, observed, vpc, subnet, instance, region, zone, pkt_src_ip, \
             pkt_dst_ip, cloud_json, src_pod, dst_pod, \
             (SELECT COUNT(*) FROM flow_links l WHERE l.sensor_flow = flows.id) + \
             (SELECT COUNT(*) FROM flow_links l WHERE l.cloud_flow = flows.id) \
             FROM flows {} ORDER BY id DESC LIMIT {limit}",
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
        let n = args.len();
        let mut out = Vec::new();
        for (lo, hi) in ranges {
            if out.len() >= q.limit {
                break;
            }
            args[n - 3] = Value::Integer(lo);
            args[n - 2] = Value::Integer(hi);
            args[n - 1] = Value::Integer((q.limit - out.len()) as i64);
            out.extend(read(&args)?);
        }
        Ok(out)
    }

    fn insert_flows(&self, flows: &[Flow]) -> anyhow::Result<()> {
        if flows.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        let tx = c.transaction()?;
        insert_flows_tx(&tx, flows)?;
        tx.commit()?;
        Ok(())
    }

    fn maintain(&self, now_ns: i64, retention: &Retention) -> anyhow::Result<Maintenance> {
        let mut m = Maintenance::default();
        let mut c = self.conn();
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
                         reverse_bytes, answered) \
                         SELECT end_ns - (end_ns % {width}), source, sensor, src_ip, dst_ip, \
                         dst_port, protocol, action, COUNT(*), SUM(packets), SUM(bytes), \
                         SUM(reverse_packets), SUM(reverse_bytes), SUM({ANSWERED}) FROM flows \
                         WHERE id > ?1 AND id <= ?2 \
                         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 \
                         ON CONFLICT DO UPDATE SET flows = flows + excluded.flows, \
                         packets = packets + excluded.packets, bytes = bytes + excluded.bytes, \
                         reverse_packets = reverse_packets + excluded.reverse_packets, \
                         reverse_bytes = reverse_bytes + excluded.reverse_bytes, \
                         answered = answered + excluded.answered"
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

    fn rollup_totals(&self, level: &str, source: Source) -> anyhow::Result<FlowTotals> {
        let table = match level {
            "1m" => "flows_1m",
            "1h" => "flows_1h",
            _ => anyhow::bail!("no rollup level `{level}` (1m or 1h)"),
        };
        Ok(self.conn().query_row(
            &format!(
                "SELECT COALESCE(SUM(flows), 0), COALESCE(SUM(packets), 0), \
                 COALESCE(SUM(bytes), 0), COALESCE(SUM(reverse_packets), 0), \
                 COALESCE(SUM(reverse_bytes), 0) FROM {table} WHERE source = ?1"
            ),
            [source.as_str()],
            totals_row,
        )?)
    }

    fn correlate(&self, since_ns: i64, until_ns: i64, tolerance_ns: i64) -> anyhow::Result<u64> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let new = correlate::correlate(&tx, since_ns, until_ns, tolerance_ns)?;
        tx.commit()?;
        Ok(new)
    }

    fn coverage_gaps(&self, since_ns: i64) -> anyhow::Result<Vec<CoverageGap>> {
        let c = self.conn();
        // Addresses of the sensors' interfaces ("10.0.0.5/24" in the registration).
        let mut covered = std::collections::HashSet::new();
        let mut st = c.prepare("SELECT host_json FROM sensors WHERE host_json IS NOT NULL")?;
        for h in st.query_map([], |r| r.get::<_, String>(0))? {
            let h: serde_json::Value = serde_json::from_str(&h?).unwrap_or_default();
            covered.extend(interface_addresses(&h));
        }
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

    fn import_file_once(
        &self,
        file: &ImportedFile,
        now_ns: i64,
        fill: &mut dyn FnMut(&mut FlowSink<'_>) -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<String>> {
        let mut c = self.conn();
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
}

/// The addresses of a sensor registration's interfaces (`host_json`: "10.0.0.5/24" each).
pub(crate) fn interface_addresses(host: &serde_json::Value) -> impl Iterator<Item = IpAddr> + '_ {
    host["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str()?.split('/').next()?.parse().ok())
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

/// A `flows` row as `query_flows` selects it.
fn flow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRow> {
    let json = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        Ok(r.get::<_, Option<String>>(i)?
            .and_then(|t| serde_json::from_str(&t).ok()))
    };
    let (src_pod, dst_pod) = (json(27)?, json(28)?);
    let extra = json(26)?.or_else(|| {
        (src_pod.is_some() || dst_pod.is_some())
            .then(|| serde_json::json!({"src_pod": src_pod, "dst_pod": dst_pod}))
    });
    Ok(FlowRow {
        id: r.get(0)?,
        source: r.get(1)?,
        observer: r.get(2)?,
        interface: r.get(3)?,
        src_ip: r.get(4)?,
        dst_ip: r.get(5)?,
        src_port: r.get(6)?,
        dst_port: r.get(7)?,
        protocol: r.get(8)?,
        packets: r.get(9)?,
        bytes: r.get(10)?,
        reverse_packets: r.get(11)?,
        reverse_bytes: r.get(12)?,
        tcp_flags: r.get(13)?,
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
    })
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

/// A pod's identity as the `src_pod` / `dst_pod` columns keep it (JSON).
fn pod_json(p: &Option<PodContext>) -> Option<String> {
    p.as_ref().map(|p| {
        serde_json::json!({"namespace": p.namespace, "pod": p.pod, "labels": p.labels,
            "node": p.node})
        .to_string()
    })
}

/// Where a flow was seen, as the `observed` column keeps it: the sensor's side, or the cloud's
/// direction.
fn observed(f: &Flow) -> &str {
    match &f.sensor {
        Some(s) => s.observed.as_str(),
        None => f.cloud.direction.as_deref().unwrap_or(""),
    }
}

/// Inserts flows of any source, with their chunk (addresses, and the conversations of sensor
/// flows for correlation).
fn insert_flows_tx(tx: &Connection, flows: &[Flow]) -> anyhow::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO flows (sensor, iface, src_ip, dst_ip, src_port, dst_port, protocol, \
         packets, bytes, reverse_packets, reverse_bytes, tcp_flags, reverse_tcp_flags, \
         start_ns, end_ns, observed, initiator_by, partial, end_reason, src_pod, dst_pod, \
         source, action, sampling_rate, vpc, subnet, instance, region, zone, pkt_src_ip, \
         pkt_dst_ip, cloud_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, \
         ?30, ?31, ?32)",
    )?;
    let mut chunk = chunks::Chunk::default();
    let (mut text, mut dst_text) = (IpText::default(), IpText::default());
    // What a flow shares with the one before (observer, interface, cloud metadata, a sensor's
    // labels: most of a file's or a batch's records) keeps its binding: SQLite holds bindings
    // from one execution to the next.
    let mut prev: Option<&Flow> = None;
    let none = SensorMeta::default();
    for f in flows {
        let m = &f.cloud;
        let sm = f.sensor.as_deref().unwrap_or(&none);
        let (pc, ps) = (
            prev.map(|p| &p.cloud),
            prev.map(|p| p.sensor.as_deref().unwrap_or(&none)),
        );
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
        st.raw_bind_parameter(13, sm.reverse_tcp_flags)?;
        st.raw_bind_parameter(14, f.start_ns)?;
        st.raw_bind_parameter(15, f.end_ns)?;
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
            st.raw_bind_parameter(20, pod_json(&sm.src_pod))?;
        }
        if ps.is_none_or(|p| p.dst_pod != sm.dst_pod) {
            st.raw_bind_parameter(21, pod_json(&sm.dst_pod))?;
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

const TOTALS: &str = "SELECT COUNT(*), COALESCE(SUM(packets), 0), COALESCE(SUM(bytes), 0), \
                      COALESCE(SUM(reverse_packets), 0), COALESCE(SUM(reverse_bytes), 0) FROM flows";

fn totals_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowTotals> {
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
    use super::*;

    /// A sensor's flow (its observer is set by [`batch`]).
    fn flow(packets: u64) -> Flow {
        Flow {
            source: Source::Sensor,
            observer: String::new(),
            interface: "eth0".into(),
            start_ns: 0,
            end_ns: 0,
            src_ip: [10, 0, 0, 1].into(),
            dst_ip: [10, 0, 0, 2].into(),
            src_port: 40000,
            dst_port: 443,
            protocol: 6,
            packets,
            bytes: packets * 100,
            reverse_packets: 0,
            reverse_bytes: 0,
            tcp_flags: 0,
            action: crate::model::Action::Unknown,
            sampling_rate: 1.0,
            cloud: Default::default(),
            sensor: Some(Box::default()),
        }
    }

    fn batch(sensor: &str, instance: &str, id: u64, flows: Vec<Flow>) -> SensorBatch {
        SensorBatch {
            sensor: sensor.into(),
            instance_id: instance.into(),
            batch_id: id,
            flows: flows
                .into_iter()
                .map(|f| Flow {
                    observer: sensor.into(),
                    ..f
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Makes the insert of any flow of `packets` packets fail, as a full disk would.
    fn fail_flows_of(s: &SqliteStore, packets: u64) {
        s.conn()
            .execute_batch(&format!(
                "CREATE TEMP TRIGGER fail BEFORE INSERT ON flows WHEN NEW.packets = {packets} \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ))
            .expect("trigger");
    }

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
        assert_eq!(s.register("web-1", &req, 5).expect("register"), 7);
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
    fn alert_changes_queue_one_message_per_concerned_notifier() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let hook = |name: &str, min| Notifier {
            name: name.into(),
            target: notify::Target::Slack {
                url: "http://127.0.0.1:9/".into(),
            },
            min_severity: min,
        };
        s.add_notifier(&hook("all", Severity::Low), 1).expect("add");
        s.add_notifier(&hook("pager", Severity::High), 1)
            .expect("add");
        let u = |t: i64, sev, target: &str| AlertUpdate {
            kind: "port_scan",
            severity: sev,
            source: "10.0.0.9".into(),
            targets: vec![target.into()],
            time_ns: t,
            observation: serde_json::json!({ "t": t }),
            seen_by: "sensor:lab".into(),
            strength: 1.0,
        };
        let queued = || -> Vec<(String, String)> {
            s.due_notifications(i64::MAX, 100)
                .expect("due")
                .into_iter()
                .map(|p| (p.notifier, p.event))
                .collect()
        };
        let id = s.record_alert(&u(1, Severity::Low, "a")).expect("new");
        s.record_alert(&u(2, Severity::Low, "b")).expect("merge");
        s.record_alert(&u(3, Severity::Low, "c")).expect("merge");
        assert_eq!(queued(), [("all".to_string(), "alert.new".to_string())]);
        s.record_alert(&u(4, Severity::High, "d"))
            .expect("escalate");
        assert_eq!(
            queued()[1..],
            [
                ("all".to_string(), "alert.escalated".to_string()),
                ("pager".to_string(), "alert.new".to_string())
            ]
        );
        for p in s.due_notifications(i64::MAX, 100).expect("due") {
            assert_eq!(p.alert_id, id);
            s.notification_delivered(p.id, 1, 5).expect("done");
        }
        for t in 0..100 {
            s.record_alert(&u(10 + t, Severity::High, &format!("x{t}")))
                .expect("grow");
        }
        assert_eq!(
            queued(),
            [
                ("all".to_string(), "alert.grew".to_string()),
                ("pager".to_string(), "alert.grew".to_string())
            ],
            "at 100 targets, once"
        );
        let p = s.due_notifications(i64::MAX, 1).expect("due").remove(0);
        s.notification_failed(p.id, 1, Some(1_000), "HTTP 500")
            .expect("retry");
        assert!(
            s.due_notifications(999, 10)
                .expect("due")
                .iter()
                .all(|q| q.id != p.id)
        );
        assert_eq!(s.due_notifications(1_000, 10).expect("due")[0].attempts, 1);
        s.notification_failed(p.id, 2, None, "HTTP 404")
            .expect("fail");
        assert_eq!(s.remove_notifier("pager").expect("remove"), Some(1));
        assert_eq!(s.remove_notifier("pager").expect("remove"), None);
        let counts = s.notification_counts().expect("counts");
        assert_eq!(
            counts,
            [
                (
                    "all".to_string(),
                    notify::Counts {
                        pending: 0,
                        delivered: 2,
                        failed: 1
                    }
                ),
                (
                    "pager".to_string(),
                    notify::Counts {
                        pending: 0,
                        delivered: 1,
                        failed: 0
                    }
                )
            ]
        );
    }

    #[test]
    fn alert_updates_join_their_incident_until_the_gap() {
        use crate::model::Severity;
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        let u = |kind: &'static str, src: &str, t: i64, sev| AlertUpdate {
            kind,
            severity: sev,
            source: src.into(),
            targets: vec!["10.0.0.2".into()],
            time_ns: t,
            observation: serde_json::json!({ "t": t }),
            seen_by: "sensor:lab".into(),
            strength: 1.0,
        };
        let a = s
            .record_alert(&u("port_scan", "10.0.0.9", 1_000, Severity::Low))
            .expect("open");
        let same = s
            .record_alert(&u("port_scan", "10.0.0.9", 2_000, Severity::High))
            .expect("update");
        assert_eq!(a, same, "the same incident");
        let other_type = s
            .record_alert(&u("address_sweep", "10.0.0.9", 2_000, Severity::Low))
            .expect("sweep");
        let other_src = s
            .record_alert(&u("port_scan", "10.0.0.8", 2_000, Severity::Low))
            .expect("other source");
        assert!(other_type != a && other_src != a && other_type != other_src);
        let later = s
            .record_alert(&u(
                "port_scan",
                "10.0.0.9",
                2_000 + INCIDENT_GAP_NS + 1,
                Severity::Low,
            ))
            .expect("a new incident");
        assert_ne!(later, a, "after the gap, a new alert");
        let got = s.alert(a).expect("query").expect("alert");
        assert_eq!(
            (got.first_seen, got.last_seen, &got.severity[..]),
            (1_000, 2_000, "high")
        );
        assert_eq!(got.observations_total, 2);
        assert_eq!(got.observations[1]["t"], 2_000);
        assert!(s.alert(999).expect("query").is_none());
        let q = |kind: Option<&str>, source: Option<&str>| AlertQuery {
            kind: kind.map(str::to_string),
            source: source.map(str::to_string),
            limit: 100,
            ..AlertQuery::default()
        };
        let all = s.alerts(&q(None, None)).expect("all");
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].id, later, "most recently active first");
        let scans = s
            .alerts(&q(Some("port_scan"), Some("10.0.0.9")))
            .expect("filtered");
        assert_eq!(scans.iter().map(|a| a.id).collect::<Vec<_>>(), [later, a]);
    }

    #[test]
    fn revoked_keys_find_no_sensor() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        s.add_sensor("a", "hash-a", 1).expect("add");
        assert!(s.add_sensor("a", "hash-b", 1).is_err(), "names are unique");
        assert_eq!(s.sensor_for_key("hash-a").expect("q"), Some("a".into()));
        assert!(s.revoke_sensor("a", 2).expect("revoke"));
        assert!(!s.revoke_sensor("a", 3).expect("revoke twice"));
        assert_eq!(s.sensor_for_key("hash-a").expect("q"), None);
        assert!(s.sensors().expect("list")[0].revoked);
    }

    fn cloud_flow(src: &str, dport: u16, end_s: i64, packets: u64) -> Flow {
        Flow {
            source: Source::Aws,
            observer: "123456789010".into(),
            interface: "eni-1".into(),
            start_ns: (end_s - 60) * 1_000_000_000,
            end_ns: end_s * 1_000_000_000,
            src_ip: src.parse().expect("ip"),
            dst_ip: "10.0.0.5".parse().expect("ip"),
            src_port: 40000 + dport,
            dst_port: dport,
            protocol: 6,
            packets,
            bytes: packets * 100,
            reverse_packets: 1,
            reverse_bytes: 60,
            tcp_flags: 2,
            action: crate::model::Action::Accept,
            sampling_rate: 1.0,
            cloud: Default::default(),
            sensor: None,
        }
    }

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
        assert_eq!(ids(q("192.0.2.7")), [9, 3, 2, 1]);
        assert_eq!(ids(q("2001:db8::7")), [5]);
        assert_eq!(ids(q("10.0.0.5")), [10, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(ids(q("203.0.113.9")), Vec::<i64>::new());
        // Pages of two, across chunks.
        let page = |before: Option<i64>| FlowQuery {
            limit: 2,
            before_id: before,
            ..q("10.0.0.5")
        };
        assert_eq!(ids(page(None)), [10, 8]);
        assert_eq!(ids(page(Some(8))), [7, 6]);
        assert_eq!(ids(page(Some(6))), [5, 4]);
        assert_eq!(ids(page(Some(4))), [3, 2]);
        assert_eq!(ids(page(Some(2))), [1]);
        assert_eq!(ids(page(Some(1))), Vec::<i64>::new());
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
        let gaps = s.coverage_gaps(1_000 * 1_000_000_000).expect("gaps");
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
}
