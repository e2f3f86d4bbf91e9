//! The embedded store: both the flow store and the state store on one SQLite file in the data
//! dir (WAL, one writer). What `serve` and the CLI use unless told otherwise; the demo and a
//! small site need nothing else.
//!
//! Durability: a batch and its "stored" mark are written in one transaction before the sensor is
//! acknowledged, so what was acknowledged survives `kill -9`, and a replayed batch is recognised
//! by (instance_id, batch_id) and not stored twice. The same holds for a flow-log file and its
//! digest.
//!
//! Each file holds the SQL of one concern as functions over a connection; the trait
//! implementations below only take the connection and call them.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use rusqlite::Connection;

use crate::{
    model::{
        Alert, AlertQuery, Change, Flow, FlowSink, Heartbeat, HistoryEntry, ImportedFile,
        Registration, Role, SensorBatch, Source,
    },
    store::{
        AlertTx, Alerts, Conversation, Counts, CoverageGap, EntityContext, FlowQuery, FlowRow,
        FlowStore, FlowTotals, Maintenance, Notifications, NotifierRow, Pending, Retention,
        SensorRow, Sensors, Settings, Stored, TopQuery, TopRow,
    },
};

mod access;
mod alerts;
mod checkpoint;
mod chunks;
mod correlate;
mod notifications;
mod query;
mod rollups;
mod schema;
mod sensors;
mod settings;
mod triage;
mod write;

pub struct SqliteStore {
    /// The one writer: every change, and reads that must see the writer's own transaction.
    conn: Mutex<Connection>,
    /// Read-only connections for queries: WAL lets them read the last commit while the writer
    /// is inside a long transaction (a watched-directory import), so the API and the sensors'
    /// key checks never wait for one.
    readers: Readers,
    /// Stops the checkpoint thread when the store is dropped.
    _checkpointer: checkpoint::Handle,
}

/// What the WAL file is cut back to after a checkpoint reset it.
const WAL_KEEP_BYTES: i64 = 64 << 20;

fn i(v: u64) -> i64 {
    // SQLite integers are signed 64-bit: counters beyond 2^63 saturate rather than wrap.
    crate::store::rows::counter(v)
}

/// Where sums of counters saturate: SQLite's `SUM` fails on an integer overflow, and one
/// record of 2^63 bytes would then break every query and rollup over it for good.
const SAT: &str = "9200000000000000000";

/// The sum of a counter over a group, saturating at [`SAT`]: `TOTAL` adds in floating point
/// (exact to 2^53) and never fails; 0 for no rows.
fn sat_sum(expr: &str) -> String {
    format!("CAST(MIN(TOTAL({expr}), {SAT}.0) AS INTEGER)")
}

/// A port or protocol column read back: a store written before these were checked at the
/// front may hold a value out of its type's range, which reads as 0 rather than failing every
/// query over it.
fn narrow<T: TryFrom<i64> + Default>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    Ok(T::try_from(r.get::<_, i64>(i)?).unwrap_or_default())
}

/// `a + b` of two counters, saturating at [`SAT`].
fn sat_add(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} > {SAT} - {b} THEN {SAT} ELSE {a} + {b} END")
}

impl SqliteStore {
    pub fn open(data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        private_files(data_dir)?;
        let path = data_dir.join("picket.db");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // WAL: readers do not block the writer. synchronous=NORMAL survives a process crash
        // (kill -9) with every committed transaction; FULL would add power-loss safety.
        // 16 KiB pages for a new database (an existing one keeps its size): a quarter of the
        // B-tree pages and WAL frames per flow (docs/performance.md).
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A 64 MiB page cache and memory-mapped reads: with SQLite's 2 MiB default, inserting
        // into the flow indexes spent most of its time copying pages in and out of the kernel.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(schema::SCHEMA)
            .context("creating the schema")?;
        let mut conn = conn;
        schema::migrate(&mut conn)?;
        // Checkpoints run on their own thread, off the writer's path (import: 168k -> 228k
        // records/s into the store alone).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        let checkpointer = checkpoint::start(&path)?;
        Ok(Arc::new(SqliteStore {
            conn: Mutex::new(conn),
            readers: Readers {
                path,
                idle: Mutex::new(Vec::new()),
            },
            _checkpointer: checkpointer,
        }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only connection (see [`Readers`]).
    fn reader(&self) -> anyhow::Result<Reader<'_>> {
        let idle = self
            .readers
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.readers.path)?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: &self.readers,
        })
    }
}

/// The data dir only its owner may enter (0700, created so) and the store's files only its
/// owner may read (0600): they hold password hashes, sessions, notifier secrets and every
/// flow. Files an older version left readable to others are made private, with a log line.
fn private_files(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let db = data_dir.join("picket.db");
    // Created here, private, before SQLite creates it with the umask's mode; the WAL and
    // shared-memory files SQLite adds take the database file's mode.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&db)
        .with_context(|| format!("opening {}", db.display()))?;
    for (path, private) in [
        (data_dir.to_path_buf(), 0o700),
        (db.clone(), 0o600),
        (data_dir.join("picket.db-wal"), 0o600),
        (data_dir.join("picket.db-shm"), 0o600),
    ] {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private))
                .with_context(|| format!("making {} private", path.display()))?;
            tracing::info!(
                file = ?path,
                was = format!("{mode:o}"),
                now = format!("{private:o}"),
                "made the store's file private to its owner"
            );
        }
    }
    Ok(())
}

/// Idle read-only connections, opened as needed and kept up to [`IDLE_READERS`].
struct Readers {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
}

const IDLE_READERS: usize = 16;

fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    use rusqlite::OpenFlags;
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} to read", path.display()))?;
    c.pragma_update(None, "cache_size", -16384)?;
    c.pragma_update(None, "mmap_size", 1i64 << 30)?;
    c.pragma_update(None, "temp_store", "MEMORY")?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(c)
}

/// A read-only connection, back to the pool when dropped.
struct Reader<'a> {
    conn: Option<Connection>,
    pool: &'a Readers,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(c);
            }
        }
    }
}

impl FlowStore for SqliteStore {
    fn store_batches(
        &self,
        batches: &[&SensorBatch],
        now_ns: i64,
    ) -> anyhow::Result<Vec<anyhow::Result<Stored>>> {
        write::store_batches(&mut self.conn(), batches, now_ns)
    }

    fn last_stored_batch(&self, instance_id: &str) -> anyhow::Result<u64> {
        write::last_stored_batch(&self.conn(), instance_id)
    }

    fn insert_flows(&self, flows: &[Flow]) -> anyhow::Result<()> {
        if flows.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        let tx = c.transaction()?;
        write::insert_flows_tx(&tx, flows)?;
        tx.commit()?;
        Ok(())
    }

    fn import_file_once(
        &self,
        file: &ImportedFile,
        now_ns: i64,
        fill: &mut dyn FnMut(&mut FlowSink<'_>) -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<String>> {
        write::import_file_once(&mut self.conn(), file, now_ns, fill)
    }

    fn flow_totals(&self, sensor: Option<&str>) -> anyhow::Result<FlowTotals> {
        query::flow_totals(&*self.reader()?, sensor)
    }

    fn source_totals(&self, source: Source) -> anyhow::Result<FlowTotals> {
        query::source_totals(&*self.reader()?, source)
    }

    fn rollup_totals(&self, level: &str, source: Source) -> anyhow::Result<FlowTotals> {
        rollups::rollup_totals(&*self.reader()?, level, source)
    }

    fn correlate(&self, since_ns: i64, until_ns: i64, tolerance_ns: i64) -> anyhow::Result<u64> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let new = correlate::correlate(&tx, since_ns, until_ns, tolerance_ns)?;
        tx.commit()?;
        Ok(new)
    }

    fn coverage_gaps(
        &self,
        since_ns: i64,
        watched: &HashSet<IpAddr>,
    ) -> anyhow::Result<Vec<CoverageGap>> {
        query::coverage_gaps(&*self.reader()?, since_ns, watched)
    }

    fn maintain(&self, now_ns: i64, retention: &Retention) -> anyhow::Result<Maintenance> {
        rollups::maintain(&mut self.conn(), now_ns, retention)
    }

    fn top(&self, q: &TopQuery) -> anyhow::Result<Vec<TopRow>> {
        query::top(&*self.reader()?, q)
    }

    fn query_flows(&self, q: &FlowQuery) -> anyhow::Result<Vec<FlowRow>> {
        query::query_flows(&*self.reader()?, q)
    }

    fn conversations(
        &self,
        since_ns: i64,
        until_ns: i64,
        ip: Option<IpAddr>,
    ) -> anyhow::Result<Vec<Conversation>> {
        rollups::conversations(&*self.reader()?, since_ns, until_ns, ip)
    }

    fn hourly(&self, ip: IpAddr, since_ns: i64, until_ns: i64) -> anyhow::Result<Vec<(i64, u64)>> {
        rollups::hourly(&*self.reader()?, ip, since_ns, until_ns)
    }
}

impl Sensors for SqliteStore {
    fn add_sensor(&self, name: &str, key_hash: &str, now_ns: i64) -> anyhow::Result<()> {
        sensors::add_sensor(&self.conn(), name, key_hash, now_ns)
    }

    fn revoke_sensor(&self, name: &str, now_ns: i64) -> anyhow::Result<bool> {
        sensors::revoke_sensor(&self.conn(), name, now_ns)
    }

    fn sensors(&self) -> anyhow::Result<Vec<SensorRow>> {
        sensors::sensors(&*self.reader()?)
    }

    fn sensor_for_key(&self, key_hash: &str) -> anyhow::Result<Option<String>> {
        sensors::sensor_for_key(&*self.reader()?, key_hash)
    }

    fn register(&self, sensor: &str, req: &Registration, now_ns: i64) -> anyhow::Result<()> {
        sensors::register(&self.conn(), sensor, req, now_ns)
    }

    fn heartbeat(&self, sensor: &str, req: &Heartbeat, now_ns: i64) -> anyhow::Result<()> {
        sensors::heartbeat(&self.conn(), sensor, req, now_ns)
    }

    fn sensor_addresses(&self) -> anyhow::Result<HashSet<IpAddr>> {
        sensors::sensor_addresses(&self.conn())
    }
}

impl Alerts for SqliteStore {
    fn alert_transaction(
        &self,
        work: &mut dyn FnMut(&mut dyn AlertTx) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        alerts::transaction(&mut self.conn(), work)
    }

    fn alerts(&self, q: &AlertQuery) -> anyhow::Result<Vec<Alert>> {
        alerts::alerts(&*self.reader()?, q)
    }

    fn alert(&self, id: i64) -> anyhow::Result<Option<Alert>> {
        alerts::alert(&*self.reader()?, id)
    }

    fn change_alert(
        &self,
        id: i64,
        changes: &[Change],
        actor: &str,
        now_ns: i64,
    ) -> anyhow::Result<Option<Alert>> {
        triage::change_alert(&mut self.conn(), id, changes, actor, now_ns)
    }

    fn alert_history(&self, id: i64) -> anyhow::Result<Vec<HistoryEntry>> {
        triage::alert_history(&*self.reader()?, id)
    }

    fn wake_snoozed(&self, now_ns: i64) -> anyhow::Result<u64> {
        triage::wake_snoozed(&mut self.conn(), now_ns)
    }

    fn entity_context(&self) -> anyhow::Result<EntityContext> {
        alerts::entity_context(&*self.reader()?)
    }
}

impl Notifications for SqliteStore {
    fn notifiers(&self) -> anyhow::Result<Vec<NotifierRow>> {
        notifications::notifiers(&*self.reader()?)
    }

    fn add_notifier(&self, n: &NotifierRow, now_ns: i64) -> anyhow::Result<()> {
        notifications::add_notifier(&self.conn(), n, now_ns)
    }

    fn remove_notifier(&self, name: &str) -> anyhow::Result<Option<u64>> {
        notifications::remove_notifier(&mut self.conn(), name)
    }

    fn notification_counts(&self) -> anyhow::Result<Vec<(String, Counts)>> {
        notifications::notification_counts(&*self.reader()?)
    }

    fn due_notifications(&self, now_ns: i64, limit: usize) -> anyhow::Result<Vec<Pending>> {
        notifications::due_notifications(&self.conn(), now_ns, limit)
    }

    fn notification_delivered(&self, id: i64, attempts: u32, now_ns: i64) -> anyhow::Result<()> {
        notifications::notification_delivered(&self.conn(), id, attempts, now_ns)
    }

    fn notification_failed(
        &self,
        id: i64,
        attempts: u32,
        next_ns: Option<i64>,
        error: &str,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        notifications::notification_failed(&self.conn(), id, attempts, next_ns, error, now_ns)
    }
}

impl crate::store::Leases for SqliteStore {
    fn lease(&self, name: &str, holder: &str, now_ns: i64, ttl_ns: i64) -> anyhow::Result<bool> {
        settings::lease(&self.conn(), name, holder, now_ns, ttl_ns)
    }

    fn release(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        settings::release(&self.conn(), name, holder)
    }

    fn leases(&self) -> anyhow::Result<Vec<crate::store::LeaseRow>> {
        settings::leases(&*self.reader()?)
    }
}

impl Settings for SqliteStore {
    fn watchlist(&self) -> anyhow::Result<Vec<(String, String)>> {
        settings::watchlist(&*self.reader()?)
    }

    fn add_watchlist(&self, entries: &[(String, String)], now_ns: i64) -> anyhow::Result<usize> {
        settings::add_watchlist(&mut self.conn(), entries, now_ns)
    }

    fn remove_watchlist(&self, cidr: &str) -> anyhow::Result<bool> {
        settings::remove_watchlist(&self.conn(), cidr)
    }

    fn allowlist(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        settings::allowlist(&*self.reader()?)
    }

    fn add_allowlist(
        &self,
        cidr: &str,
        alert_type: &str,
        label: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool> {
        settings::add_allowlist(&mut self.conn(), cidr, alert_type, label, now_ns)
    }

    fn remove_allowlist(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool> {
        settings::remove_allowlist(&self.conn(), cidr, alert_type)
    }

    fn sensitivities(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        settings::sensitivities(&*self.reader()?)
    }

    fn set_sensitivity(
        &self,
        cidr: &str,
        alert_type: &str,
        level: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool> {
        settings::set_sensitivity(&mut self.conn(), cidr, alert_type, level, now_ns)
    }

    fn remove_sensitivity(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool> {
        settings::remove_sensitivity(&self.conn(), cidr, alert_type)
    }

    fn detector_state(&self, detector: &str) -> anyhow::Result<Vec<(String, String)>> {
        settings::detector_state(&self.conn(), detector)
    }

    fn save_detector_state(
        &self,
        detector: &str,
        entries: &[(String, Option<String>, i64)],
    ) -> anyhow::Result<()> {
        settings::save_detector_state(&mut self.conn(), detector, entries)
    }
}

/// The role column: unknown roles (a newer version's) get the least rights.
fn role(s: String) -> Role {
    Role::parse(&s).unwrap_or(Role::Viewer)
}

#[cfg(test)]
mod testing {
    //! What the embedded store's tests share.
    use super::*;
    use crate::model::SensorBatch;

    /// A sensor's flow (its observer is set by [`batch`]).
    pub(super) fn flow(packets: u64) -> Flow {
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

    pub(super) fn batch(sensor: &str, instance: &str, id: u64, flows: Vec<Flow>) -> SensorBatch {
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
    pub(super) fn fail_flows_of(s: &SqliteStore, packets: u64) {
        s.conn()
            .execute_batch(&format!(
                "CREATE TEMP TRIGGER fail BEFORE INSERT ON flows WHEN NEW.packets = {packets} \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ))
            .expect("trigger");
    }

    pub(super) fn cloud_flow(src: &str, dport: u16, end_s: i64, packets: u64) -> Flow {
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
}

#[cfg(test)]
mod tests {
    use super::{testing::cloud_flow, *};
    use crate::store::Access as _;

    /// Reads go to their own connections: while a file's import holds the writer inside its
    /// transaction, the queries the API and the sensors' key checks make answer at once, from
    /// the last commit.
    #[test]
    fn a_long_import_does_not_hold_up_reads() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(dir.path()).expect("open");
        s.add_sensor("edge", "hash-e", 1).expect("add");
        s.insert_flows(&[cloud_flow("198.51.100.1", 22, 1_000, 3)])
            .expect("insert");
        let s = &*s;
        let file = &ImportedFile {
            sha256: "cd".repeat(32),
            provider: Source::Aws,
            name: "big.log".into(),
            bytes: 1,
            delivered_ns: 1,
        };
        let (inside, go_on) = (
            std::sync::mpsc::channel::<()>(),
            std::sync::mpsc::channel::<()>(),
        );
        let (entered, proceed) = (inside.0, go_on.1);
        std::thread::scope(|t| {
            let writer = t.spawn(move || {
                s.import_file_once(file, 2, &mut |sink| {
                    sink(&[cloud_flow("198.51.100.2", 22, 1_000, 5)])?;
                    entered.send(()).expect("signal");
                    proceed.recv().expect("wait");
                    Ok("{}".into())
                })
            });
            inside.1.recv().expect("inside the transaction");
            let t0 = std::time::Instant::now();
            let seen = (
                s.source_totals(Source::Aws).map(|t| t.records),
                s.sensor_for_key("hash-e"),
                s.notification_counts().map(|c| c.len()),
                s.user_credentials("nobody").map(|u| u.is_none()),
            );
            let took = t0.elapsed();
            // Let the import finish before anything is checked, so a failure cannot hang.
            go_on.0.send(()).expect("go on");
            assert_eq!(seen.0.expect("totals"), 1, "the last commit");
            assert_eq!(seen.1.expect("key"), Some("edge".into()));
            assert_eq!(seen.2.expect("counts"), 0);
            assert!(seen.3.expect("user"));
            assert!(took < std::time::Duration::from_secs(1), "{took:?}");
            writer.join().expect("writer").expect("import");
        });
        assert_eq!(s.source_totals(Source::Aws).expect("totals").records, 2);
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    /// The store's files hold password hashes, sessions and secrets: only their owner reads
    /// them, also when an older version left them readable to others.
    #[test]
    fn the_store_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let s = SqliteStore::open(&data).expect("open");
        s.insert_flows(&[cloud_flow("198.51.100.1", 22, 1_000, 3)])
            .expect("insert");
        assert_eq!(mode(&data), 0o700);
        for f in ["picket.db", "picket.db-wal", "picket.db-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
        drop(s);
        for (p, m) in [(data.clone(), 0o755), (data.join("picket.db"), 0o644)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        let _s = SqliteStore::open(&data).expect("open again");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("picket.db")), 0o600);
    }
}
