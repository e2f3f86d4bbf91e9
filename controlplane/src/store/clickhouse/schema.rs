//! The flow store's tables on ClickHouse, and their migrations.
//!
//! `picket_schema` lists the migrations applied. ClickHouse has no transactions or locks: two
//! control planes starting at once may run a migration twice, so every statement is written to
//! be run again (`IF NOT EXISTS`; a column added twice is taken as added, since this server
//! knows no `ADD COLUMN IF NOT EXISTS`).

use super::ChStore;

/// Whether a flow's destination really answered (SQL over a `flows` row), as the embedded
/// store counts it: a TCP handshake it completed (SYN-ACK back; a RST is a closed port), any
/// return traffic of other protocols, or, in a one-way cloud record, the cloud's accept.
macro_rules! answered {
    () => {
        "toFloat64(if(source = 'sensor', if(protocol = 6, bitAnd(reverse_tcp_flags, 18) = 18, \
         reverse_packets > 0), action = 'accept' OR reverse_packets > 0))"
    };
}
pub(super) const ANSWERED: &str = answered!();

/// Whether a sensor flow's initiator was a guess (see [`crate::model::GUESSED_INITIATOR`]),
/// as a condition, and as a count.
macro_rules! guessed_where {
    () => {
        "source = 'sensor' AND initiator_by IN ('one_way', 'first_seen')"
    };
}
pub(super) const GUESSED: &str = concat!("toFloat64(", guessed_where!(), ")");

/// Each flow three times, once per kind of `top_1h` row (dim 0: its source address, 1: its
/// destination address, 2: its destination port and protocol), for the view that fills
/// `top_1h` and for the undo that takes a cut write away from it (they must agree).
macro_rules! top_dims {
    () => {
        "ARRAY JOIN [toUInt8(0), toUInt8(1), toUInt8(2)] AS dim, \
         [src_ip, dst_ip, toFixedString('', 16)] AS ip, \
         [toUInt16(0), toUInt16(0), dst_port] AS port, \
         [toUInt8(0), toUInt8(0), protocol] AS proto"
    };
}
pub(super) const TOP_DIMS: &str = top_dims!();

/// Migrations, applied in order; each a list of statements.
pub(super) const MIGRATIONS: &[&[&str]] = &[
    // 1: flows, the table that finds them by address, the exactly-once marks, sensor events.
    &[
        // Partitioned by the day of the flow's end (retention drops whole days); sorted by
        // end time then id: time ranges read only their part, and ids page within it.
        "CREATE TABLE IF NOT EXISTS flows (
            id UInt64,
            end DateTime('UTC'),
            ingest UInt64,
            source String,
            observer String,
            iface String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            src_port UInt16,
            dst_port UInt16,
            protocol UInt8,
            packets UInt64,
            bytes UInt64,
            reverse_packets UInt64,
            reverse_bytes UInt64,
            tcp_flags UInt8,
            reverse_tcp_flags UInt8,
            start_ns Int64,
            end_ns Int64,
            action String,
            sampling_rate Float64,
            observed String,
            initiator_by String,
            partial String,
            end_reason String,
            vpc Nullable(String),
            subnet Nullable(String),
            instance Nullable(String),
            region Nullable(String),
            zone Nullable(String),
            pkt_src_ip Nullable(FixedString(16)),
            pkt_dst_ip Nullable(FixedString(16)),
            cloud_json Nullable(String),
            src_pod Nullable(String),
            dst_pod Nullable(String)
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(end) ORDER BY (end, id)",
        // Each flow twice, under each of its ends: flows by address read one address's range.
        "CREATE TABLE IF NOT EXISTS flows_by_ip (
            ip FixedString(16),
            end DateTime('UTC'),
            id UInt64
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(end) ORDER BY (ip, end, id)",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS flows_by_ip_mv TO flows_by_ip AS
            SELECT arrayJoin([src_ip, dst_ip]) AS ip, end, id FROM flows",
        // Rollups of conversations (source port dropped) by minute and by hour, summed as the
        // flows arrive. (The sums are named `sum_*`: ClickHouse 18.16 substitutes an alias
        // into every expression that names it, so `sum(x) AS x` beside another sum over `x`
        // would nest one aggregate in another.) The counters are Float64, summed as the embedded store sums them:
        // exact to 2^53, saturating rather than wrapping on absurd values.
        "CREATE TABLE IF NOT EXISTS flows_1m (
            bucket DateTime('UTC'),
            source String,
            observer String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            dst_port UInt16,
            protocol UInt8,
            action String,
            sum_flows Float64,
            sum_packets Float64,
            sum_bytes Float64,
            sum_reverse_packets Float64,
            sum_reverse_bytes Float64,
            sum_answered Float64
        ) ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(bucket)
          ORDER BY (bucket, src_ip, dst_ip, dst_port, protocol, source, observer, action)",
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS flows_1m_mv TO flows_1m AS
            SELECT toStartOfMinute(end) AS bucket, source, observer, src_ip, dst_ip, dst_port,
                protocol, action, toFloat64(count()) AS sum_flows,
                sum(toFloat64(packets)) AS sum_packets, sum(toFloat64(bytes)) AS sum_bytes,
                sum(toFloat64(reverse_packets)) AS sum_reverse_packets,
                sum(toFloat64(reverse_bytes)) AS sum_reverse_bytes,
                sum(", answered!(), ") AS sum_answered
            FROM flows
            GROUP BY bucket, source, observer, src_ip, dst_ip, dst_port, protocol, action"
        ),
        "CREATE TABLE IF NOT EXISTS flows_1h (
            bucket DateTime('UTC'),
            source String,
            observer String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            dst_port UInt16,
            protocol UInt8,
            action String,
            sum_flows Float64,
            sum_packets Float64,
            sum_bytes Float64,
            sum_reverse_packets Float64,
            sum_reverse_bytes Float64,
            sum_answered Float64
        ) ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(bucket)
          ORDER BY (bucket, src_ip, dst_ip, dst_port, protocol, source, observer, action)",
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS flows_1h_mv TO flows_1h AS
            SELECT toStartOfHour(end) AS bucket, source, observer, src_ip, dst_ip, dst_port,
                protocol, action, toFloat64(count()) AS sum_flows,
                sum(toFloat64(packets)) AS sum_packets, sum(toFloat64(bytes)) AS sum_bytes,
                sum(toFloat64(reverse_packets)) AS sum_reverse_packets,
                sum(toFloat64(reverse_bytes)) AS sum_reverse_bytes,
                sum(", answered!(), ") AS sum_answered
            FROM flows
            GROUP BY bucket, source, observer, src_ip, dst_ip, dst_port, protocol, action"
        ),
        // A sensor flow and a cloud flow that are the same conversation.
        // The link carries what the cloud record tells of the sensor's flow (its VPC, subnet,
        // instance, region, zone, verdict), which the flow's reads fill in where the flow
        // has none (ClickHouse rewrites whole parts to update a row). A pass that finds a
        // link again writes it again; reads take each link once.
        "CREATE TABLE IF NOT EXISTS flow_links (
            sensor_flow UInt64,
            cloud_flow UInt64,
            end DateTime('UTC'),
            linked_ns Int64,
            vpc Nullable(String),
            subnet Nullable(String),
            instance Nullable(String),
            region Nullable(String),
            zone Nullable(String),
            action String
        ) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(end) ORDER BY (sensor_flow, cloud_flow)",
        // What a write cut short had added to the rollups, to take away again: the rollups'
        // rows with the opposite sign, by level and write. Computed before any of the write's
        // rows is deleted, and again if the undo itself is cut short: `ver` (the flows the row
        // stands for) keeps the first, complete one (ReplacingMergeTree, read with FINAL).
        "CREATE TABLE IF NOT EXISTS rollup_undo (
            level String,
            ingest UInt64,
            bucket DateTime('UTC'),
            source String,
            observer String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            dst_port UInt16,
            protocol UInt8,
            action String,
            sum_flows Float64,
            sum_packets Float64,
            sum_bytes Float64,
            sum_reverse_packets Float64,
            sum_reverse_bytes Float64,
            sum_answered Float64,
            ver UInt64
        ) ENGINE = ReplacingMergeTree(ver)
          ORDER BY (level, ingest, bucket, src_ip, dst_ip, dst_port, protocol, source, observer, action)",
        // The marks of sensor batches: state 0 pending (rows may be partly written under the
        // attempt's `ingest` key), 1 done; a batch is stored once one of its marks is done.
        "CREATE TABLE IF NOT EXISTS batches (
            instance_id String,
            batch_id UInt64,
            ingest UInt64,
            state UInt8,
            sensor String,
            stored_ns Int64,
            flows UInt64
        ) ENGINE = MergeTree ORDER BY (instance_id, batch_id)",
        // The marks of imported files, likewise.
        "CREATE TABLE IF NOT EXISTS imported_files (
            sha256 String,
            ingest UInt64,
            state UInt8,
            provider String,
            name String,
            bytes UInt64,
            imported_ns Int64,
            summary String
        ) ENGINE = MergeTree ORDER BY sha256",
        "CREATE TABLE IF NOT EXISTS scan_events (
            end DateTime('UTC'),
            ingest UInt64,
            sensor String,
            iface String,
            src_ip FixedString(16),
            distinct_ports UInt32,
            distinct_hosts UInt32,
            probe String,
            start_ns Int64,
            end_ns Int64,
            detail String
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(end) ORDER BY (end, src_ip)",
        "CREATE TABLE IF NOT EXISTS probe_records (
            end DateTime('UTC'),
            ingest UInt64,
            sensor String,
            iface String,
            src_ip FixedString(16),
            protocol UInt8,
            probe String,
            packets UInt64,
            bytes UInt64,
            start_ns Int64,
            end_ns Int64
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(end) ORDER BY (end, src_ip)",
        "CREATE TABLE IF NOT EXISTS auth_events (
            time DateTime('UTC'),
            ingest UInt64,
            sensor String,
            time_ns Int64,
            service String,
            outcome String,
            user String,
            src_ip FixedString(16),
            src_port UInt16
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(time) ORDER BY (time, src_ip)",
    ],
    // 2: top talkers by hour, so that top-N over a day reads hours of sums, not every flow;
    // the address table fed by two cheaper views.
    &[
        // Per hour of the flows' end and source, one sum per source address (dim 0), per
        // destination address (dim 1) and per destination port and protocol (dim 2). Flows
        // whose start is after their end are kept out (in `top_odd` instead): a query with an
        // upper bound must check their start.
        "CREATE TABLE IF NOT EXISTS top_1h (
            dim UInt8,
            bucket DateTime('UTC'),
            source String,
            ip FixedString(16),
            port UInt16,
            proto UInt8,
            sum_flows Float64,
            sum_packets Float64,
            sum_bytes Float64
        ) ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(bucket)
          ORDER BY (dim, bucket, source, ip, port, proto)",
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS top_1h_mv TO top_1h AS
            SELECT dim, toStartOfHour(end) AS bucket, source, ip, port, proto,
                toFloat64(count()) AS sum_flows,
                sum(toFloat64(packets + reverse_packets)) AS sum_packets,
                sum(toFloat64(bytes + reverse_bytes)) AS sum_bytes
            FROM flows ",
            top_dims!(),
            " WHERE start_ns <= end_ns
            GROUP BY dim, bucket, source, ip, port, proto"
        ),
        // The flows `top_1h` leaves out, whole.
        "CREATE TABLE IF NOT EXISTS top_odd (
            end DateTime('UTC'),
            ingest UInt64,
            source String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            dst_port UInt16,
            protocol UInt8,
            packets UInt64,
            bytes UInt64,
            reverse_packets UInt64,
            reverse_bytes UInt64,
            start_ns Int64,
            end_ns Int64
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(end) ORDER BY end",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS top_odd_mv TO top_odd AS
            SELECT end, ingest, source, src_ip, dst_ip, dst_port, protocol, packets, bytes,
                reverse_packets, reverse_bytes, start_ns, end_ns
            FROM flows WHERE start_ns > end_ns",
        // What a write cut short had added to `top_1h`, with the opposite sign (as
        // `rollup_undo`; by day, to go with the flows at retention).
        "CREATE TABLE IF NOT EXISTS top_undo (
            ingest UInt64,
            dim UInt8,
            bucket DateTime('UTC'),
            source String,
            ip FixedString(16),
            port UInt16,
            proto UInt8,
            sum_flows Float64,
            sum_packets Float64,
            sum_bytes Float64,
            ver UInt64
        ) ENGINE = ReplacingMergeTree(ver) PARTITION BY toYYYYMMDD(bucket)
          ORDER BY (ingest, dim, bucket, source, ip, port, proto)",
        // `flows_by_ip` fed by two views (source, destination) rather than one that makes
        // two rows of each flow with arrayJoin: 500,000 flows went in 0.45 s sooner. The new
        // views come first: until the old one goes, a flow may be there twice, which reads
        // by address take once.
        "CREATE MATERIALIZED VIEW IF NOT EXISTS flows_by_src_mv TO flows_by_ip AS
            SELECT src_ip AS ip, end, id FROM flows",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS flows_by_dst_mv TO flows_by_ip AS
            SELECT dst_ip AS ip, end, id FROM flows",
        "DROP TABLE IF EXISTS flows_by_ip_mv",
        // From when `top_1h` holds every flow: 0 when it was made before any flow was
        // stored, else the hour after the newest flow then (see `migrate`). The smallest row
        // counts (two control planes may both have migrated).
        "CREATE TABLE IF NOT EXISTS top_since (since_ns Int64, made DateTime('UTC'))
            ENGINE = MergeTree ORDER BY since_ns",
    ],
    // 3: the sensor flows whose initiator was a guess, counted by rollup row in tables of
    // their own, so that the entity views learn no role from them. (A column added to the
    // rollups would need their views replaced: ClickHouse 18.16 fills no default into a
    // view's target, and a view replaced while flows arrive misses or doubles some.) Flows
    // stored before count none.
    &[
        "CREATE TABLE IF NOT EXISTS guessed_1m (
            bucket DateTime('UTC'),
            source String,
            observer String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            dst_port UInt16,
            protocol UInt8,
            action String,
            sum_guessed Float64
        ) ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(bucket)
          ORDER BY (bucket, src_ip, dst_ip, dst_port, protocol, source, observer, action)",
        "CREATE TABLE IF NOT EXISTS guessed_1h (
            bucket DateTime('UTC'),
            source String,
            observer String,
            src_ip FixedString(16),
            dst_ip FixedString(16),
            dst_port UInt16,
            protocol UInt8,
            action String,
            sum_guessed Float64
        ) ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(bucket)
          ORDER BY (bucket, src_ip, dst_ip, dst_port, protocol, source, observer, action)",
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS guessed_1m_mv TO guessed_1m AS
            SELECT toStartOfMinute(end) AS bucket, source, observer, src_ip, dst_ip, dst_port,
                protocol, action, toFloat64(count()) AS sum_guessed
            FROM flows WHERE ", guessed_where!(), "
            GROUP BY bucket, source, observer, src_ip, dst_ip, dst_port, protocol, action"
        ),
        concat!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS guessed_1h_mv TO guessed_1h AS
            SELECT toStartOfHour(end) AS bucket, source, observer, src_ip, dst_ip, dst_port,
                protocol, action, toFloat64(count()) AS sum_guessed
            FROM flows WHERE ", guessed_where!(), "
            GROUP BY bucket, source, observer, src_ip, dst_ip, dst_port, protocol, action"
        ),
        // What a write cut short had added to them is taken away with the rest.
        "ALTER TABLE rollup_undo ADD COLUMN sum_guessed Float64 AFTER sum_answered",
    ],
];

/// The tables whose rows carry a write's `ingest` key.
/// (A write cut short leaves rollup rows too, which the rollups' materialized views made:
/// `rollup_undo` takes them away; and rows in `flows_by_ip` that find no flow, which are
/// harmless.)
pub(super) const INGESTED: &[&str] = &[
    "flows",
    "top_odd",
    "scan_events",
    "probe_records",
    "auth_events",
];

/// Brings the database to the newest version; refuses one newer than this binary.
pub(super) fn migrate(s: &ChStore) -> anyhow::Result<()> {
    s.exec(
        "CREATE TABLE IF NOT EXISTS picket_schema (version UInt32, applied DateTime('UTC')) \
         ENGINE = MergeTree ORDER BY version",
    )?;
    let have: u32 = s
        .run(
            s.client
                .query("SELECT toUInt32(max(version)) FROM picket_schema")
                .fetch_one(),
        )
        .map_err(|e| anyhow::anyhow!("reading its schema version: {}", super::why(&e)))?;
    let known = MIGRATIONS.len() as u32;
    anyhow::ensure!(
        have <= known,
        "the ClickHouse flow store is at schema version {have}, newer than this \
         picket-controlplane knows ({known}): run the newer version that wrote it"
    );
    for (i, m) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        for statement in *m {
            match s.exec(statement) {
                // Another control plane (or an interrupted run of this one) added it first.
                Err(e)
                    if statement.contains("ADD COLUMN")
                        && format!("{e:#}").contains("column with this name already exists") =>
                {
                    tracing::info!(statement, "the column is there already");
                }
                r => r.map_err(|e| anyhow::anyhow!("migrating to version {}: {e:#}", i + 1))?,
            }
        }
        if i + 1 == 2 {
            // The view sees the flows written from now on: the hours after the newest flow
            // written before it hold every flow (with none before it, all hours do).
            s.exec(
                "INSERT INTO top_since SELECT if(count() = 0, toInt64(0), \
                 (toInt64(toUInt32(toStartOfHour(max(end)))) + 3600) * 1000000000), now() \
                 FROM flows",
            )?;
        }
        s.exec(&format!(
            "INSERT INTO picket_schema SELECT {}, now()",
            i + 1
        ))?;
        tracing::info!(version = i + 1, "migrated the ClickHouse flow store");
    }
    Ok(())
}
