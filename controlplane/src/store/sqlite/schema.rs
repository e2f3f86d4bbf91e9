//! The embedded store's schema: the tables of the first release, then every change since, in
//! order (`PRAGMA user_version` says how many a database has).

use anyhow::Context as _;
use rusqlite::Connection;

pub(super) const SCHEMA: &str = r#"
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
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 9: notifiers and the outbox of messages to them (see notify/).
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
    // 16: leases (work one process does at a time: the same table as on PostgreSQL).
    r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ns INTEGER NOT NULL
);
"#,
    // 17: the control plane (replica) each sensor last reached.
    "ALTER TABLE sensors ADD COLUMN replica TEXT;",
    // 18: rollups count the sensor flows whose initiator was a guess (`one_way`,
    // `first_seen`): the entity views learn no role from them. Older rows count none.
    r#"
ALTER TABLE flows_1m ADD COLUMN guessed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows_1h ADD COLUMN guessed INTEGER NOT NULL DEFAULT 0;
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
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
