//! The PostgreSQL state store's schema, in versions: each migration runs once, in order, in a
//! transaction that also records the version, under an advisory lock, so control planes that
//! start together migrate once. A database of a newer version than this binary knows is refused.

use anyhow::Context as _;

/// Serialises migrations across processes (any constant no other application uses).
const MIGRATION_LOCK: i64 = 0x7069_636b_6574_0001;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the whole state as of Picket 0.1 (the embedded store's migrations 1-15, state part).
    r#"
CREATE TABLE sensors (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    created_ns BIGINT NOT NULL,
    revoked_ns BIGINT,
    instance_id TEXT,
    version TEXT,
    kernel TEXT,
    hostname TEXT,
    machine_id TEXT,
    host_json TEXT,
    first_seen_ns BIGINT,
    last_heartbeat_ns BIGINT,
    kernel_counters TEXT,
    agent_counters TEXT
);
CREATE TABLE alerts (
    id BIGSERIAL PRIMARY KEY,
    type TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen_ns BIGINT NOT NULL,
    last_seen_ns BIGINT NOT NULL,
    body TEXT NOT NULL,
    assignee TEXT,
    snoozed_until_ns BIGINT
);
CREATE INDEX alerts_by_incident ON alerts (type, source, last_seen_ns);
CREATE INDEX alerts_by_time ON alerts (last_seen_ns, id);
CREATE TABLE alert_history (
    id BIGSERIAL PRIMARY KEY,
    alert_id BIGINT NOT NULL,
    time_ns BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX alert_history_by_alert ON alert_history (alert_id, id);
CREATE TABLE detector_state (
    detector TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    last_ns BIGINT NOT NULL,
    PRIMARY KEY (detector, key)
);
CREATE TABLE watchlist (
    cidr TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    added_ns BIGINT NOT NULL
);
CREATE TABLE allowlist (
    cidr TEXT NOT NULL,
    alert_type TEXT NOT NULL,
    label TEXT NOT NULL,
    added_ns BIGINT NOT NULL,
    PRIMARY KEY (cidr, alert_type)
);
CREATE TABLE sensitivity (
    cidr TEXT NOT NULL,
    alert_type TEXT NOT NULL,
    level TEXT NOT NULL,
    added_ns BIGINT NOT NULL,
    PRIMARY KEY (cidr, alert_type)
);
CREATE TABLE notifiers (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    min_severity TEXT NOT NULL,
    created_ns BIGINT NOT NULL
);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    notifier TEXT NOT NULL,
    alert_id BIGINT NOT NULL,
    event TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ns BIGINT NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT,
    done_ns BIGINT
);
CREATE INDEX outbox_due ON outbox (state, next_ns);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    last_login_ns BIGINT
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    expires_ns BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    last_used_ns BIGINT,
    revoked_ns BIGINT
);
"#,
    // 2: leases: work one replica of several does at a time (notifications, maintenance).
    r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ns BIGINT NOT NULL
);
"#,
    // 3: the control plane (replica) each sensor last reached.
    "ALTER TABLE sensors ADD COLUMN replica TEXT;",
];

/// Brings the database to the newest version; refuses one newer than this binary.
pub(super) fn migrate(c: &mut postgres::Client) -> anyhow::Result<()> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // No "already exists, skipping" notices in the log at every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS picket_schema (version INTEGER NOT NULL)")?;
    let have: i32 = tx
        .query_opt("SELECT version FROM picket_schema", &[])?
        .map_or(0, |r| r.get(0));
    let known = MIGRATIONS.len() as i32;
    anyhow::ensure!(
        have <= known,
        "the PostgreSQL state store is at schema version {have}, newer than this \
         picket-controlplane knows ({known}): run the newer version that wrote it"
    );
    for (i, m) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.batch_execute(m)
            .with_context(|| format!("migrating the state store to version {}", i + 1))?;
    }
    if have < known {
        tx.execute("DELETE FROM picket_schema", &[])?;
        tx.execute("INSERT INTO picket_schema (version) VALUES ($1)", &[&known])?;
    }
    tx.commit()?;
    Ok(())
}
