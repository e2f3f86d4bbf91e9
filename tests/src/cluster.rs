//! Cluster mode for tests: a private NATS, ClickHouse and PostgreSQL, control-plane replicas
//! that share them (each `serve --bus` on loopback ports of its own), and simulated sensors
//! that move to another replica when theirs fails, resending what was not acknowledged, as
//! the real sensor's spool does.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use picket_proto::v1::{
    ExportBatch, FlowRecord, RegisterRequest, sensor_ingest_client::SensorIngestClient,
};

use crate::{
    TempDir, bin,
    servers::{ClickHouse, Nats, Postgres, free_port},
};

/// The servers replicas share, and the folder their data directories live in.
pub struct Cluster {
    pub nats: Nats,
    pub ch: ClickHouse,
    pub pg: Postgres,
    pub dir: TempDir,
}

/// The database (on ClickHouse and on PostgreSQL) the replicas share.
pub const DB: &str = "cluster";

impl Cluster {
    /// Starts NATS, ClickHouse and PostgreSQL, each with an empty database [`DB`].
    pub fn start() -> Cluster {
        let (nats, ch, pg) = (Nats::start(), ClickHouse::start(), Postgres::start());
        ch.query(&format!("CREATE DATABASE {DB}"));
        pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
        Cluster {
            nats,
            ch,
            pg,
            dir: TempDir::new("cluster"),
        }
    }

    /// The environment of a `picket-controlplane` of this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PICKET_FLOW_STORE", self.ch.store_url(DB)),
            (
                "PICKET_STATE_STORE",
                format!("{} dbname={DB}", self.pg.socket_settings()),
            ),
            ("PICKET_BUS", self.nats.url()),
        ]
    }

    /// A data directory of this cluster (each replica has its own; nothing is shared there).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// Creates sensor `name` and returns its key.
    pub fn add_sensor(&self, name: &str) -> String {
        let o = Command::new(bin("picket-controlplane"))
            .args(["sensors", "--data-dir"])
            .arg(self.data_dir("cli"))
            .envs(self.env())
            .args(["add", name])
            .output()
            .expect("run picket-controlplane sensors add");
        assert!(
            o.status.success(),
            "sensors add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Runs `picket-controlplane COMMAND --data-dir DIR ARGS...` on the cluster's stores;
    /// panics unless it succeeds; returns its standard output.
    pub fn cli(&self, command: &str, args: &[&str]) -> String {
        let o = Command::new(bin("picket-controlplane"))
            .arg(command)
            .arg("--data-dir")
            .arg(self.data_dir("cli"))
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("run picket-controlplane");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The state store the replicas share, opened here.
    pub fn state(&self) -> Arc<dyn controlplane::store::StateStore> {
        controlplane::store::PgStore::open(&format!("{} dbname={DB}", self.pg.socket_settings()))
            .expect("state store")
    }

    /// Runs `serve` of replica `name` with the bus at `bus` instead of the cluster's, for a
    /// start that must fail: its exit status and its log.
    pub fn refused_start(&self, name: &str, bus: &str) -> (std::process::ExitStatus, String) {
        let o = Command::new(bin("picket-controlplane"))
            .args(["serve", "--data-dir"])
            .arg(self.data_dir(name))
            .envs(self.env())
            .env("PICKET_BUS", bus)
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .output()
            .expect("run picket-controlplane serve");
        (o.status, String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// Starts replica `name` (`serve --bus`, gRPC and HTTP on free loopback ports) and waits
    /// until it serves.
    pub fn replica(&self, name: &str) -> Replica {
        self.replica_in(None, name)
    }

    /// As [`Cluster::replica`], in network namespace `ns` (None: this process's), where it
    /// reaches ClickHouse and NATS through forwarders of this process and PostgreSQL through
    /// its Unix socket.
    pub fn replica_in(&self, ns: Option<&str>, name: &str) -> Replica {
        self.replica_with(ns, name, &[])
    }

    /// As [`Cluster::replica`], serving sensors at `grpc`.
    pub fn replica_at(&self, name: &str, grpc: SocketAddr) -> Replica {
        self.spawn(None, name, grpc, &[], &[])
    }

    /// As [`Cluster::replica`], with more arguments for `serve` (`--watch-dir DIR`, say).
    pub fn replica_args(&self, name: &str, args: &[&str]) -> Replica {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        self.spawn(None, name, grpc, &[], args)
    }

    /// As [`Cluster::replica_in`], with more environment (a failpoint, say).
    pub fn replica_with(&self, ns: Option<&str>, name: &str, more: &[(&str, &str)]) -> Replica {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        self.spawn(ns, name, grpc, more, &[])
    }

    fn spawn(
        &self,
        ns: Option<&str>,
        name: &str,
        grpc: SocketAddr,
        more: &[(&str, &str)],
        args: &[&str],
    ) -> Replica {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = self.dir.0.join(format!("{name}.log"));
        let mut env = self.env();
        if let Some(ns) = ns {
            let ch = crate::servers::forward_into(ns, self.ch.http_port);
            let nats = crate::servers::forward_into(ns, self.nats.port);
            for (k, v) in env.iter_mut() {
                match *k {
                    "PICKET_FLOW_STORE" => *v = format!("clickhouse://default@127.0.0.1:{ch}/{DB}"),
                    "PICKET_BUS" => *v = format!("nats://127.0.0.1:{nats}"),
                    _ => {}
                }
            }
        }
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(bin("picket-controlplane"));
                c
            }
            None => Command::new(bin("picket-controlplane")),
        };
        let child = cmd
            .args(["serve", "--data-dir"])
            .arg(self.data_dir(name))
            .envs(env)
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(more.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn picket-controlplane serve");
        let mut r = Replica {
            child: Some(child),
            grpc,
            http,
            log,
            data_dir: self.data_dir(name),
        };
        let t0 = Instant::now();
        while !r.log_text().contains("control plane serving") {
            if let Some(c) = r.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("replica {name} exited ({status}): {}", r.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "replica {name} did not start: {}",
                r.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// The flow store the replicas share, opened here.
    pub fn flows(&self) -> Arc<dyn controlplane::store::FlowStore> {
        controlplane::store::ChStore::open(&self.ch.store_url(DB)).expect("flow store")
    }

    /// (packets, bytes) the shared flow store holds for one UDP flow.
    pub fn stored_udp(&self, src: &str, dst: &str, sport: u16, dport: u16) -> (u64, u64) {
        crate::servers::stored_udp_in(self.flows().as_ref(), src, dst, sport, dport)
    }

    /// (records, packets) of the sensors' flows in the shared flow store.
    pub fn sensor_totals(&self) -> (u64, u64) {
        let t = self.flows().flow_totals(None).expect("flow totals");
        (t.records, t.packets)
    }
}

/// One `serve --bus` of a [`Cluster`].
pub struct Replica {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    pub data_dir: PathBuf,
}

impl Replica {
    /// Its name among replicas (as leases show it).
    pub fn id(&self) -> String {
        fs::read_to_string(self.data_dir.join("replica-id"))
            .expect("replica-id")
            .trim()
            .to_string()
    }

    /// `/api/v1/health` (no credentials needed): (status code, JSON).
    pub fn health(&self) -> (u16, serde_json::Value) {
        let (code, body) = crate::servers::http(self.http.port(), "GET", "/api/v1/health", "")
            .expect("GET /api/v1/health");
        (code, serde_json::from_str(&body).expect("health JSON"))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ends it abruptly (SIGKILL), as a crash or a lost machine would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Batch `id` of simulated sensor `instance`: `per` TCP flow records of 10 packets each, of
/// the last hour (older ones would fall to the replicas' retention as they store them).
pub fn batch(instance: &str, sensor: usize, id: u64, per: usize) -> ExportBatch {
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .saturating_sub(3600)
        * 1_000_000_000;
    ExportBatch {
        instance_id: instance.to_string(),
        batch_id: id,
        created_unix_ns: hour_ago,
        flows: (0..per)
            .map(|k| FlowRecord {
                iface: "eth0".into(),
                src_ip: vec![10, (sensor % 250) as u8, (k >> 8) as u8, k as u8],
                dst_ip: vec![172, 16, (id % 250) as u8, (k % 250) as u8],
                src_port: 40000 + (k as u32 % 20000),
                dst_port: [22, 80, 443, 5432][k % 4],
                protocol: 6,
                packets: 10,
                bytes: 1000,
                reverse_packets: 8,
                reverse_bytes: 4000,
                tcp_flags: 0x1b,
                reverse_tcp_flags: 0x1b,
                start_unix_ns: hour_ago + id * 1_000_000_000,
                end_unix_ns: hour_ago + (id + 1) * 1_000_000_000,
                observed: "both".into(),
                initiator_by: "syn".into(),
                end_reason: "idle_timeout".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Batch `id` of simulated sensor `instance`: one unanswered SYN (a failed attempt) from each
/// (source, destination, port) of `probes`, in the last minute.
pub fn probe_batch(instance: &str, id: u64, probes: &[([u8; 4], [u8; 4], u32)]) -> ExportBatch {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    ExportBatch {
        instance_id: instance.to_string(),
        batch_id: id,
        created_unix_ns: now,
        flows: probes
            .iter()
            .enumerate()
            .map(|(k, (src, dst, port))| FlowRecord {
                iface: "eth0".into(),
                src_ip: src.to_vec(),
                dst_ip: dst.to_vec(),
                src_port: 50000,
                dst_port: *port,
                protocol: 6,
                packets: 1,
                bytes: 44,
                tcp_flags: 0x02,
                start_unix_ns: now - 60_000_000_000 + k as u64 * 1_000_000,
                end_unix_ns: now - 60_000_000_000 + k as u64 * 1_000_000 + 1,
                observed: "egress".into(),
                initiator_by: "syn".into(),
                end_reason: "idle_timeout".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Sends `batches` as a sensor with `key` to `addr` and waits for their acks (a thread and
/// runtime of its own).
pub fn send(addr: SocketAddr, key: &str, batches: Vec<ExportBatch>) -> SimReport {
    let key = key.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(sim_sensor(
                vec![addr],
                0,
                key,
                batches,
                Duration::ZERO,
                Arc::new(AtomicU64::new(0)),
                Duration::from_secs(60),
            ))
    })
    .join()
    .expect("sensor")
}

/// What a simulated sensor saw.
#[derive(Debug, Default)]
pub struct SimReport {
    /// Batches acknowledged (each once).
    pub acked: u64,
    /// Of those, acknowledged as duplicates (sent again after a failure).
    pub duplicates: u64,
    /// Times it moved to another replica after its stream failed.
    pub moves: u64,
    /// The replicas (indexes into the addresses) that acknowledged something.
    pub served_by: Vec<usize>,
    /// When the first ack came after each move.
    pub resumed: Vec<Instant>,
}

/// Simulated sensors, one per key, streaming from a thread of their own: sensor `i` (instance
/// `sim-i`) sends batches 1..=`batches` of `per` flows, one every `gap`, starting at replica
/// `i % addrs.len()` and moving on when one fails, for at most `deadline`. Returns the count of
/// acknowledged batches as they come, and what joins to their reports.
pub fn sim_fleet(
    addrs: Vec<SocketAddr>,
    keys: Vec<String>,
    batches: u64,
    per: usize,
    gap: Duration,
    deadline: Duration,
) -> (Arc<AtomicU64>, thread::JoinHandle<Vec<SimReport>>) {
    let acked = Arc::new(AtomicU64::new(0));
    let counted = acked.clone();
    let fleet = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tasks: Vec<_> = keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| {
                    let instance = format!("sim-{i}");
                    let mine = (1..=batches).map(|b| batch(&instance, i, b, per)).collect();
                    tokio::spawn(sim_sensor(
                        addrs.clone(),
                        i % addrs.len(),
                        key,
                        mine,
                        gap,
                        counted.clone(),
                        deadline,
                    ))
                })
                .collect();
            let mut reports = Vec::new();
            for t in tasks {
                reports.push(t.await.expect("sensor task"));
            }
            reports
        })
    });
    (acked, fleet)
}

/// Streams `batches` as a sensor with `key` to `addrs`, starting at `addrs[first]`: at most 16
/// unacknowledged at once, `gap` between sends; when a stream fails (its replica died), moves
/// to the next address and sends again what was not acknowledged. `acked` counts every ack of
/// every simulated sensor (for the caller to time a failure). Gives up after `deadline`.
pub async fn sim_sensor(
    addrs: Vec<SocketAddr>,
    first: usize,
    key: String,
    batches: Vec<ExportBatch>,
    gap: Duration,
    acked: Arc<AtomicU64>,
    deadline: Duration,
) -> SimReport {
    use tonic::metadata::MetadataValue;
    let t0 = Instant::now();
    let mut report = SimReport::default();
    let mut pending: std::collections::VecDeque<ExportBatch> = batches.into();
    let mut at = first;
    let bearer: MetadataValue<_> = format!("Bearer {key}").parse().expect("header");
    let instance = pending
        .front()
        .map(|b| b.instance_id.clone())
        .unwrap_or_default();
    while !pending.is_empty() {
        assert!(
            t0.elapsed() < deadline,
            "sensor {instance}: {} batches still unacknowledged after {deadline:?}",
            pending.len()
        );
        let addr = addrs[at % addrs.len()];
        let attempt = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await?;
            let b = bearer.clone();
            let mut c =
                SensorIngestClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
                    req.metadata_mut().insert("authorization", b.clone());
                    Ok(req)
                })
                .max_encoding_message_size(32 << 20);
            c.register(RegisterRequest {
                instance_id: instance.clone(),
                version: "sim".into(),
                ..Default::default()
            })
            .await?;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let mut acks = c
                .export(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let to_send: Vec<ExportBatch> = pending.iter().cloned().collect();
            let sender = tokio::spawn(async move {
                for b in to_send {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(gap).await;
                }
                // Keeps the stream open until every ack came (the receiver ends it).
                std::future::pending::<()>().await;
            });
            let mut first = report.moves > 0;
            let result: anyhow::Result<()> = async {
                while !pending.is_empty() {
                    let Some(a) = acks.message().await? else {
                        anyhow::bail!("the stream ended");
                    };
                    let front = pending.pop_front().expect("a batch waits for this ack");
                    assert_eq!(a.batch_id, front.batch_id, "acks come in order");
                    report.acked += 1;
                    if first {
                        report.resumed.push(Instant::now());
                        first = false;
                    }
                    report.duplicates += u64::from(a.duplicate);
                    if !report.served_by.contains(&(at % addrs.len())) {
                        report.served_by.push(at % addrs.len());
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            .await;
            sender.abort();
            result
        };
        let failed: anyhow::Result<()> = attempt.await;
        if failed.is_err() && !pending.is_empty() {
            at += 1;
            report.moves += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    report
}

/// Waits until `check` holds, at most `timeout`; says how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !check() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(200));
    }
    t0.elapsed()
}
