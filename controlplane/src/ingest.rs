//! gRPC ingest of the sensor protocol (picket.v1.SensorIngest).
//!
//! Every call is authenticated by the sensor key in `authorization: Bearer <key>`; unknown or
//! revoked keys get UNAUTHENTICATED, malformed batches INVALID_ARGUMENT, oversized messages
//! RESOURCE_EXHAUSTED (tonic's decoding limit), each with a log line naming the peer. A batch is
//! acknowledged only after it is stored; a replay is acknowledged as a duplicate and not stored.

use std::{pin::Pin, sync::Arc};

use picket_proto::v1::{
    ExportAck, ExportBatch, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    sensor_ingest_server::SensorIngest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{
    keys,
    store::{Store, Stored},
    util::{
        net::{ip_addr, ip_text},
        time::now_ns,
    },
};

/// Largest message accepted from a sensor (a batch of about 50,000 flow records).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const HEARTBEAT_INTERVAL_S: u32 = 10;

pub struct Ingest {
    store: Arc<dyn Store>,
    writer: mpsc::Sender<Pending>,
    /// Told once the baseline detectors saved their state at the end (see `Ingest::finished`).
    finished: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// A batch waiting for the writer, and where its outcome goes.
struct Pending {
    sensor: String,
    batch: ExportBatch,
    done: oneshot::Sender<anyhow::Result<Stored>>,
}

/// Batches waiting for the baseline detectors; the writer waits when it is full, so nothing is
/// skipped (the bench measures what that costs the ingest).
const DETECT_QUEUE: usize = 64;
/// How often the baseline detectors save what they learned.
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The thread of the baseline detectors over sensor flows (`detect::Baselines`). It also
/// frees each batch: its thousands of strings are not the one writer's work. A batch that was
/// not newly stored (a replay, or one that failed) is only freed.
fn baselines(
    store: Arc<dyn Store>,
    learning_ns: i64,
    rx: std::sync::mpsc::Receiver<(String, ExportBatch, bool)>,
    finished: std::sync::mpsc::Sender<()>,
) {
    use crate::detect::SENSOR_STATE_PREFIX;
    use std::sync::mpsc::RecvTimeoutError;
    let mut d = crate::detect::Baselines::load(store.as_ref(), learning_ns, SENSOR_STATE_PREFIX)
        .unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "reading the sensor baselines failed; learning anew");
            crate::detect::Baselines::new(learning_ns, SENSOR_STATE_PREFIX)
        });
    // Distributed scans: sources each below the kernel's per-source thresholds leave no scan
    // event, so their failures are judged from the flows.
    let mut distributed = crate::scangroup::DistributedScan::default();
    let mut saved = std::time::Instant::now();
    let mut flows = Vec::new();
    loop {
        let stop = match rx.recv_timeout(SAVE_INTERVAL) {
            Ok((sensor, batch, new)) => {
                if new {
                    flows.clear();
                    flows.extend(
                        batch
                            .flows
                            .into_iter()
                            .filter_map(|f| crate::detect::sensor_flow(&sensor, f)),
                    );
                    let mut updates = d.observe(&flows);
                    updates
                        .extend(distributed.observe(&flows, &crate::detect::ChunkView::of(&flows)));
                    if let Err(e) = crate::detect::record(store.as_ref(), &updates) {
                        warn!(sensor, error = %format!("{e:#}"), "baseline alerts could not be recorded");
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if stop || saved.elapsed() >= SAVE_INTERVAL {
            if let Err(e) = d.save(store.as_ref()) {
                warn!(error = %format!("{e:#}"), "saving the sensor baselines failed (retried)");
            }
            saved = std::time::Instant::now();
        }
        if stop {
            let _ = finished.send(());
            break;
        }
    }
}

/// Flows the writer puts in one transaction at most.
const GROUP_FLOWS: usize = 50_000;

/// The one thread that stores batches. Whatever arrived from every sensor while the previous
/// transaction was being written goes into the next one (group commit): a transaction's cost
/// is mostly the index pages it dirties, so one transaction of 50 batches costs far less than
/// 50 of one batch each. Each batch is acknowledged only after its transaction commits.
fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Pending>,
    to_baselines: std::sync::mpsc::SyncSender<(String, ExportBatch, bool)>,
) {
    // Detector state lives with the one thread that sees every batch.
    let mut logins = crate::detect::LoginBruteForce::default();
    let load_watchlist = || {
        crate::detect::Watchlist::new(store.watchlist().unwrap_or_else(|e| {
            warn!(error = %e, "reading the watchlist failed");
            Vec::new()
        }))
    };
    let mut watchlist = load_watchlist();
    let mut decoys = crate::scangroup::DecoyGroups::default();
    let mut loaded = std::time::Instant::now();
    while let Some(first) = rx.blocking_recv() {
        if loaded.elapsed() > WATCHLIST_RELOAD {
            watchlist = load_watchlist();
            loaded = std::time::Instant::now();
        }
        let mut flows = first.batch.flows.len();
        let mut group = vec![first];
        while flows < GROUP_FLOWS {
            match rx.try_recv() {
                Ok(p) => {
                    flows += p.batch.flows.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<(&str, &ExportBatch)> = group
            .iter()
            .map(|p| (p.sensor.as_str(), &p.batch))
            .collect();
        let results = store.store_batches(&batches, now_ns());
        debug!(batches = group.len(), flows, "stored a group of batches");
        match results {
            Ok(results) => {
                for (p, r) in group.into_iter().zip(results) {
                    let new = matches!(r, Ok(Stored::New));
                    if new {
                        let d = Detectors {
                            logins: &mut logins,
                            watchlist: &mut watchlist,
                            decoys: &mut decoys,
                        };
                        detect_batch(store.as_ref(), d, &p.sensor, &p.batch);
                    }
                    let _ = p.done.send(r);
                    let _ = to_baselines.send((p.sensor, p.batch, new));
                }
            }
            Err(e) => {
                for p in group {
                    let _ = p.done.send(Err(anyhow::anyhow!("{e:#}")));
                    let _ = to_baselines.send((p.sensor, p.batch, false));
                }
            }
        }
    }
}

/// Runs the detectors over a newly stored batch. A batch is stored before it is looked at, so a
/// failure here loses no flow; it is logged with what it concerned.
/// How often the writer reads the watchlist again (the CLI changes it in the store).
const WATCHLIST_RELOAD: std::time::Duration = std::time::Duration::from_secs(10);

/// The writer's detectors that keep state between batches.
struct Detectors<'a> {
    logins: &'a mut crate::detect::LoginBruteForce,
    watchlist: &'a mut crate::detect::Watchlist,
    decoys: &'a mut crate::scangroup::DecoyGroups,
}

fn detect_batch(store: &dyn Store, d: Detectors<'_>, sensor: &str, batch: &ExportBatch) {
    let mut updates = Vec::new();
    if !d.watchlist.is_empty() {
        let seen_by = format!("sensor:{sensor}");
        for f in &batch.flows {
            // Validated before storing: addresses are 4 or 16 bytes.
            let (Ok(src), Ok(dst)) = (ip_addr(&f.src_ip), ip_addr(&f.dst_ip)) else {
                continue;
            };
            let t = i64::try_from(f.end_unix_ns).unwrap_or(i64::MAX);
            updates.extend(d.watchlist.observe(
                src,
                dst,
                f.dst_port as u16,
                f.protocol,
                f.packets + f.reverse_packets,
                f.bytes + f.reverse_bytes,
                t,
                &seen_by,
            ));
        }
    }
    let mut findings = Vec::new();
    for e in &batch.scans {
        match crate::detect::scan_event_findings(sensor, e) {
            Ok(f) => findings.extend(f),
            Err(err) => {
                warn!(sensor, batch = batch.batch_id, error = %err, "scan event not evaluated")
            }
        }
    }
    updates.extend(d.decoys.group(findings));
    for e in &batch.auth {
        match d.logins.observe(sensor, e) {
            Ok(u) => updates.extend(u),
            Err(err) => {
                warn!(sensor, batch = batch.batch_id, error = %err, "login event not evaluated")
            }
        }
    }
    if let Err(err) = crate::detect::record(store, &updates) {
        warn!(sensor, batch = batch.batch_id, error = %err, "alerts could not be recorded");
    }
}

impl Ingest {
    /// The ingest service, its writer thread and the baseline detectors' thread;
    /// `learning_ns` is the baseline detectors' learning period.
    pub fn new(store: Arc<dyn Store>, learning_ns: i64) -> Self {
        let (writer, rx) = mpsc::channel(1024);
        let (to_baselines, baselines_rx) = std::sync::mpsc::sync_channel(DETECT_QUEUE);
        let (finished, finished_rx) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::Builder::new()
            .name("sensor-baselines".into())
            .spawn(move || self::baselines(s, learning_ns, baselines_rx, finished))
            .expect("spawning the baseline detectors' thread");
        let s = store.clone();
        std::thread::Builder::new()
            .name("batch-writer".into())
            .spawn(move || self::writer(s, rx, to_baselines))
            .expect("spawning the batch writer thread");
        Ingest {
            store,
            writer,
            finished: std::sync::Mutex::new(Some(finished_rx)),
        }
    }

    /// Receives once the ingest has stopped (this service and its streams are gone) and the
    /// baseline detectors have saved what they learned since their last save. For the caller
    /// to wait on before the process exits; taken once.
    pub fn finished(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.finished.lock().ok()?.take()
    }

    /// The sensor name behind the request's key.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown peer".into());
        let Some(value) = req.metadata().get("authorization") else {
            warn!(%peer, "rejected a call without a sensor key");
            return Err(Status::unauthenticated(
                "missing sensor key (authorization: Bearer <key>)",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !keys::well_formed(key) {
            warn!(%peer, "rejected a malformed sensor key");
            return Err(Status::unauthenticated("malformed sensor key"));
        }
        let store = self.store.clone();
        let hash = keys::hash(key);
        let found = tokio::task::spawn_blocking(move || store.sensor_for_key(&hash))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        match found {
            Some(name) => Ok(name),
            None => {
                warn!(%peer, "rejected an unknown or revoked sensor key");
                Err(Status::unauthenticated("unknown or revoked sensor key"))
            }
        }
    }
}

fn internal(e: anyhow::Error) -> Status {
    warn!(error = %format!("{e:#}"), "storage error");
    Status::internal("storage error (see the control plane's log)")
}

/// Checks what the store cannot: ids, and every address's length.
fn validate(b: &ExportBatch) -> Result<(), String> {
    if b.instance_id.is_empty() || b.instance_id.len() > 128 {
        return Err("instance_id must be 1 to 128 characters".into());
    }
    if b.batch_id == 0 {
        return Err("batch_id must be at least 1".into());
    }
    let check = |what: &str, i: usize, a: &[u8]| {
        ip_text(a)
            .map(|_| ())
            .map_err(|e| format!("{what} #{i}: {e}"))
    };
    for (i, f) in b.flows.iter().enumerate() {
        check("flow", i, &f.src_ip)?;
        check("flow", i, &f.dst_ip)?;
    }
    for (i, s) in b.scans.iter().enumerate() {
        check("scan event", i, &s.src_ip)?;
        check("scan event", i, &s.last_dst_ip)?;
    }
    for (i, p) in b.probes.iter().enumerate() {
        check("probe record", i, &p.src_ip)?;
    }
    for (i, a) in b.auth.iter().enumerate() {
        check("auth event", i, &a.src_ip)?;
    }
    Ok(())
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ExportAck, Status>> + Send>>;

#[tonic::async_trait]
impl SensorIngest for Ingest {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let sensor = self.authenticate(&req).await?;
        let r = req.into_inner();
        if r.instance_id.is_empty() {
            return Err(Status::invalid_argument("instance_id is empty"));
        }
        let store = self.store.clone();
        let (name, rr) = (sensor.clone(), r.clone());
        let last = tokio::task::spawn_blocking(move || store.register(&name, &rr, now_ns()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        info!(
            sensor,
            instance = r.instance_id,
            version = r.version,
            kernel = r.kernel,
            host = r.host.as_ref().map(|h| h.hostname.as_str()).unwrap_or(""),
            last_stored_batch = last,
            "sensor registered"
        );
        Ok(Response::new(RegisterResponse {
            sensor_name: sensor,
            heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
            last_stored_batch_id: last,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let sensor = self.authenticate(&req).await?;
        let r = req.into_inner();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.heartbeat(&sensor, &r, now_ns()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(internal)?;
        Ok(Response::new(HeartbeatResponse {}))
    }

    type ExportStream = AckStream;

    async fn export(
        &self,
        req: Request<Streaming<ExportBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let sensor = self.authenticate(&req).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let writer = self.writer.clone();
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        // Oversized or undecodable message, or the sensor went away.
                        let status = if status.code() == tonic::Code::OutOfRange
                            && status.message().contains("too large")
                        {
                            // gRPC's code for a message over the size limit (tonic says
                            // OUT_OF_RANGE).
                            Status::resource_exhausted(status.message().to_string())
                        } else {
                            status
                        };
                        if status.code() == tonic::Code::Cancelled {
                            debug!(sensor, %status, "export stream ended");
                        } else {
                            warn!(sensor, %status, "export stream failed");
                        }
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if let Err(why) = validate(&batch) {
                    warn!(
                        sensor,
                        batch = batch.batch_id,
                        why,
                        "rejected a malformed batch"
                    );
                    let _ = tx.send(Err(Status::invalid_argument(why))).await;
                    break;
                }
                let id = batch.batch_id;
                let flows = batch.flows.len();
                let (done, outcome) = oneshot::channel();
                let pending = Pending {
                    sensor: sensor.clone(),
                    batch,
                    done,
                };
                let stored = match writer.send(pending).await {
                    Ok(()) => outcome.await.map_err(|_| "the batch writer stopped"),
                    Err(_) => Err("the batch writer stopped"),
                };
                let ack = match stored {
                    Ok(Ok(s)) => {
                        debug!(
                            sensor,
                            batch = id,
                            flows,
                            duplicate = s == Stored::Duplicate,
                            "batch stored"
                        );
                        Ok(ExportAck {
                            batch_id: id,
                            duplicate: s == Stored::Duplicate,
                        })
                    }
                    Ok(Err(e)) => Err(internal(e)),
                    Err(e) => Err(Status::internal(e)),
                };
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
