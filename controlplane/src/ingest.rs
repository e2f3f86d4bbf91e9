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
    detect::{Config, Detectors, Feed, Input},
    grpc::convert,
    keys,
    model::SensorBatch,
    store::{Store, Stored},
    util::time::now_ns,
};

/// Largest message accepted from a sensor (a batch of about 50,000 flow records).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const HEARTBEAT_INTERVAL_S: u32 = 10;

pub struct Ingest {
    store: Arc<dyn Store>,
    writer: mpsc::Sender<Pending>,
    /// Told once the sensor flows' detectors saved their state at the end (see
    /// `Ingest::finished`).
    finished: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// A batch waiting for the writer, and where its outcome goes.
struct Pending {
    batch: SensorBatch,
    done: oneshot::Sender<anyhow::Result<Stored>>,
}

/// Batches waiting for the sensor flows' detectors; the writer waits when it is full, so
/// nothing is skipped (the bench measures what that costs the ingest).
const DETECT_QUEUE: usize = 64;
/// How often the sensor flows' detectors save what they learned.
const SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the detectors read the watchlist again (the CLI and the API change it in the
/// store).
const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The thread of the detectors over sensor flows ([`Feed::SensorFlows`]). It also frees each
/// batch: its thousands of strings are not the one writer's work. A batch that was not newly
/// stored (a replay, or one that failed) is only freed.
fn sensor_flows(
    store: Arc<dyn Store>,
    config: Config,
    rx: std::sync::mpsc::Receiver<(SensorBatch, bool)>,
    finished: std::sync::mpsc::Sender<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut d = Detectors::load(Feed::SensorFlows, &config, store.as_ref()).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "reading the sensor baselines failed; learning anew");
        Detectors::new(Feed::SensorFlows, &config)
    });
    let (mut saved, mut loaded) = (std::time::Instant::now(), std::time::Instant::now());
    loop {
        let stop = match rx.recv_timeout(SAVE_INTERVAL) {
            Ok((batch, new)) => {
                if new {
                    if loaded.elapsed() > RELOAD_INTERVAL {
                        if let Err(e) = d.reload(store.as_ref()) {
                            warn!(error = %format!("{e:#}"), "reading the watchlist failed");
                        }
                        loaded = std::time::Instant::now();
                    }
                    let updates = d.observe(&Input::batch(&batch));
                    if let Err(e) = crate::alerts::record(store.as_ref(), &updates) {
                        warn!(sensor = batch.sensor, error = %format!("{e:#}"), "alerts from sensor flows could not be recorded");
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
/// 50 of one batch each. Each batch is acknowledged only after its transaction commits, and
/// after the detectors of its events ([`Feed::SensorEvents`]: kernel scan events, logins) saw
/// it.
fn writer(
    store: Arc<dyn Store>,
    config: Config,
    mut rx: mpsc::Receiver<Pending>,
    to_flows: std::sync::mpsc::SyncSender<(SensorBatch, bool)>,
) {
    let mut events = Detectors::new(Feed::SensorEvents, &config);
    while let Some(first) = rx.blocking_recv() {
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
        let batches: Vec<&SensorBatch> = group.iter().map(|p| &p.batch).collect();
        let results = store.store_batches(&batches, now_ns());
        debug!(batches = group.len(), flows, "stored a group of batches");
        match results {
            Ok(results) => {
                for (p, r) in group.into_iter().zip(results) {
                    let new = matches!(r, Ok(Stored::New));
                    if new {
                        // Stored before it is looked at: a failure here loses no flow.
                        let updates = events.observe(&Input::batch(&p.batch));
                        if let Err(err) = crate::alerts::record(store.as_ref(), &updates) {
                            warn!(sensor = p.batch.sensor, batch = p.batch.batch_id, error = %err, "alerts could not be recorded");
                        }
                    }
                    let _ = p.done.send(r);
                    let _ = to_flows.send((p.batch, new));
                }
            }
            Err(e) => {
                for p in group {
                    let _ = p.done.send(Err(anyhow::anyhow!("{e:#}")));
                    let _ = to_flows.send((p.batch, false));
                }
            }
        }
    }
}

impl Ingest {
    /// The ingest service, its writer thread and the sensor flows' detectors' thread;
    /// `learning_ns` is the baseline detectors' learning period.
    pub fn new(store: Arc<dyn Store>, learning_ns: i64) -> Self {
        let config = Config { learning_ns };
        let (writer, rx) = mpsc::channel(1024);
        let (to_flows, flows_rx) = std::sync::mpsc::sync_channel(DETECT_QUEUE);
        let (finished, finished_rx) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::Builder::new()
            .name("sensor-baselines".into())
            .spawn(move || self::sensor_flows(s, config, flows_rx, finished))
            .expect("spawning the sensor flows' detectors' thread");
        let s = store.clone();
        std::thread::Builder::new()
            .name("batch-writer".into())
            .spawn(move || self::writer(s, config, rx, to_flows))
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

type AckStream = Pin<Box<dyn Stream<Item = Result<ExportAck, Status>> + Send>>;

#[tonic::async_trait]
impl SensorIngest for Ingest {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let sensor = self.authenticate(&req).await?;
        let r = convert::registration(req.into_inner()).map_err(Status::invalid_argument)?;
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
            host = r.hostname,
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
        let r = convert::heartbeat(req.into_inner());
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
                let id = batch.batch_id;
                let batch = match convert::batch(&sensor, batch) {
                    Ok(b) => b,
                    Err(why) => {
                        warn!(sensor, batch = id, why, "rejected a malformed batch");
                        let _ = tx.send(Err(Status::invalid_argument(why))).await;
                        break;
                    }
                };
                let flows = batch.flows.len();
                let (done, outcome) = oneshot::channel();
                let pending = Pending { batch, done };
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
