//! The sensor protocol's front (picket.v1.SensorIngest, gRPC): the one place that knows the wire
//! format. It converts what sensors send into the domain's types (`convert.rs`) and hands batches
//! to the ingest pipeline (`pipeline::ingest`).
//!
//! Every call is authenticated by the sensor key in `authorization: Bearer <key>` before its
//! message is read (`auth.rs`); unknown or revoked keys get UNAUTHENTICATED, and a key revoked
//! while its export stream is open ends the stream at its next batch. Malformed batches and
//! messages that do not decode get INVALID_ARGUMENT, oversized messages RESOURCE_EXHAUSTED
//! (tonic's decoding limit), each with a log line naming the peer or the sensor. A batch is
//! acknowledged only after it is stored; a replay is acknowledged as a duplicate and not stored.

use std::{pin::Pin, sync::Arc};

use picket_proto::v1::{
    ExportAck, ExportBatch, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    sensor_ingest_server::{SensorIngest as SensorIngestRpc, SensorIngestServer},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{
    detect::Config,
    pipeline::ingest::SensorIngest,
    store::{Stored, Stores},
    util::time::now_ns,
};

/// Turns waiting between an export stream's reader and its acker. With the turn the acker
/// awaits and the batch the reader holds, up to three batches of one stream are with the
/// writer at once. With one, the writer's groups (so the flow store's writes) held at most one
/// batch per sensor; more than three measured no faster.
const READ_AHEAD: usize = 1;

/// A batch of an export stream, in its turn to be acknowledged.
enum Turn {
    /// Queued for the writer: its ack waits for `outcome`.
    Queued {
        id: u64,
        flows: usize,
        outcome: crate::pipeline::ingest::Outcome,
    },
    /// Refused (or the stream failed): the stream ends with this, after the acks before it.
    Failed(Status),
}

pub mod auth;
pub mod convert;

pub use auth::{Sensor, SensorAuth};

/// Largest message accepted from a sensor (a batch of about 50,000 flow records).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const HEARTBEAT_INTERVAL_S: u32 = 10;
/// How often an open export stream's key is looked up again (a revoked key ends it).
pub const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The `picket.v1.SensorIngest` service.
pub struct IngestService {
    stores: Stores,
    ingest: Arc<SensorIngest>,
}

impl IngestService {
    /// The service over the ingest pipeline (its writer and detector threads start now);
    /// `config` is the detectors'.
    pub fn new(stores: Stores, config: Config) -> Self {
        IngestService {
            ingest: Arc::new(SensorIngest::start(stores.clone(), config)),
            stores,
        }
    }

    /// See [`SensorIngest::finished`].
    pub fn finished(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.ingest.finished()
    }

    /// The service behind its sensor-key check, with tonic's limit on message size; and what
    /// tells when the sensor flows' detectors saved their state (see [`SensorIngest::finished`]).
    pub fn server(
        stores: Stores,
        config: Config,
    ) -> (
        SensorAuth<SensorIngestServer<IngestService>>,
        Option<std::sync::mpsc::Receiver<()>>,
    ) {
        let service = IngestService::new(stores.clone(), config);
        let finished = service.finished();
        let server = SensorIngestServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES);
        (SensorAuth::new(server, stores), finished)
    }
}

/// The sensor that `auth::SensorAuth` found for the call.
fn sensor<T>(req: &Request<T>) -> Result<Sensor, Status> {
    req.extensions()
        .get::<Sensor>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing sensor key"))
}

fn internal(e: anyhow::Error) -> Status {
    warn!(error = %format!("{e:#}"), "storage error");
    Status::internal("storage error (see the control plane's log)")
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ExportAck, Status>> + Send>>;

#[tonic::async_trait]
impl SensorIngestRpc for IngestService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let sensor = sensor(&req)?.name;
        let r = convert::registration(req.into_inner()).map_err(Status::invalid_argument)?;
        let stores = self.stores.clone();
        let (name, rr) = (sensor.clone(), r.clone());
        let last = tokio::task::spawn_blocking(move || {
            stores.state.register(&name, &rr, now_ns())?;
            stores.flows.last_stored_batch(&rr.instance_id)
        })
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
        let sensor = sensor(&req)?.name;
        let r = convert::heartbeat(req.into_inner());
        let store = self.stores.state.clone();
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
        let Sensor {
            name: sensor,
            key_hash,
        } = self::sensor(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let (ingest, stores) = (self.ingest.clone(), self.stores.clone());
        // The stream's batches in order, stored or failed: the next ones are queued for the
        // writer while the first waits for its transaction (see READ_AHEAD), each acked in
        // its turn.
        let (queued, mut turns) = mpsc::channel::<Turn>(READ_AHEAD);
        let sensor_name = sensor.clone();
        tokio::spawn(async move {
            while let Some(turn) = turns.recv().await {
                let ack = match turn {
                    Turn::Queued { id, flows, outcome } => {
                        match crate::pipeline::ingest::SensorIngest::outcome(outcome).await {
                            Ok(s) => {
                                debug!(
                                    sensor = sensor_name,
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
                            Err(e) => Err(internal(e)),
                        }
                    }
                    Turn::Failed(status) => Err(status),
                };
                let failed = ack.is_err();
                // Dropping `turns` ends the reader at its next batch.
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            // The key was checked as the stream opened.
            let mut checked = std::time::Instant::now();
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
                        } else if auth::undecodable(&status) {
                            Status::invalid_argument(status.message().to_string())
                        } else {
                            status
                        };
                        if status.code() == tonic::Code::Cancelled {
                            debug!(sensor, %status, "export stream ended");
                        } else {
                            warn!(sensor, %status, "export stream failed");
                        }
                        let _ = queued.send(Turn::Failed(status)).await;
                        break;
                    }
                };
                let id = batch.batch_id;
                // A key revoked while its stream is open ends the stream at the next batch
                // (looked up at most once a second: a sensor replaying its spool sends batches
                // back to back).
                if checked.elapsed() >= REVOCATION_CHECK {
                    let refused = match auth::current(&stores, &key_hash).await {
                        Ok(Some(_)) => None,
                        Ok(None) => {
                            warn!(sensor, batch = id, "sensor key revoked: ending its stream");
                            Some(Status::unauthenticated("sensor key revoked"))
                        }
                        Err(status) => Some(status),
                    };
                    if let Some(status) = refused {
                        let _ = queued.send(Turn::Failed(status)).await;
                        break;
                    }
                    checked = std::time::Instant::now();
                }
                let batch = match convert::batch(&sensor, batch) {
                    Ok(b) => b,
                    Err(why) => {
                        warn!(sensor, batch = id, why, "rejected a malformed batch");
                        let _ = queued
                            .send(Turn::Failed(Status::invalid_argument(why)))
                            .await;
                        break;
                    }
                };
                let flows = batch.flows.len();
                let turn = match ingest.submit(batch).await {
                    Ok(outcome) => Turn::Queued { id, flows, outcome },
                    Err(e) => Turn::Failed(internal(e)),
                };
                if queued.send(turn).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
