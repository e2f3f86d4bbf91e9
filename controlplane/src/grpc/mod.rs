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
    /// Queued for the writer, or sent to the bus: its ack waits for `outcome`.
    Queued {
        id: u64,
        flows: usize,
        outcome: Pending,
    },
    /// Refused (or the stream failed): the stream ends with this, after the acks before it.
    Failed(Status),
}

pub mod auth;
pub mod convert;
pub mod detectors;
pub mod relay;

/// What a queued batch's ack waits for: its transaction (or the bus's storing it).
type Pending = Pin<Box<dyn std::future::Future<Output = anyhow::Result<Stored>> + Send>>;

/// Where the front hands the sensors' batches.
#[derive(Clone)]
enum Route {
    /// This process's writer (`pipeline::ingest`).
    Local(Arc<SensorIngest>),
    /// The bus (cluster mode): the writers of every replica take them from there
    /// ([`relay`]); a sensor's batch is acknowledged once the bus stored it.
    Bus(Arc<crate::bus::Bus>),
}

pub use auth::{Sensor, SensorAuth};

/// Largest message accepted from a sensor (a batch of about 50,000 flow records).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const HEARTBEAT_INTERVAL_S: u32 = 10;
/// How often an open export stream's key is looked up again (a revoked key ends it).
pub const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The `picket.v1.SensorIngest` service.
pub struct IngestService {
    stores: Stores,
    route: Route,
    /// This control plane's name among replicas, recorded with each sensor it serves.
    replica: String,
}

/// The ingest behind the gRPC front, as `serve` runs it.
pub struct Ingest {
    /// The service behind its sensor-key check, with tonic's limit on message size.
    pub server: SensorAuth<SensorIngestServer<IngestService>>,
    /// Tells when the sensor flows' detectors saved their state (see
    /// [`SensorIngest::finished`]).
    pub finished: Option<std::sync::mpsc::Receiver<()>>,
    /// In cluster mode, the relay from the bus into this replica's writer: it ends once told
    /// to stop and its batches are acknowledged.
    pub relay: Option<tokio::task::JoinHandle<()>>,
}

impl IngestService {
    /// The service over the ingest pipeline (its writer and detector threads start now);
    /// `config` is the detectors'. With a bus (cluster mode) the front publishes the batches
    /// there, and a relay takes the bus's batches into this process's writer until told to
    /// stop (the receiver turns true).
    pub fn server(
        stores: Stores,
        config: Config,
        bus: Option<(crate::bus::Bus, tokio::sync::watch::Receiver<bool>)>,
        replica: &str,
    ) -> Ingest {
        let ingest = Arc::new(SensorIngest::start(stores.clone(), config, bus.is_none()));
        let finished = ingest.finished();
        let (route, relay) = match bus {
            None => (Route::Local(ingest), None),
            Some((bus, stop)) => {
                let relay = tokio::spawn(relay::run(bus.clone(), ingest, stop));
                (Route::Bus(Arc::new(bus)), Some(relay))
            }
        };
        let service = IngestService {
            stores: stores.clone(),
            route,
            replica: replica.to_string(),
        };
        let server = SensorIngestServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ingest {
            server: SensorAuth::new(server, stores),
            finished,
            relay,
        }
    }
}

/// Hands `batch` (of `sensor`) to `route`: queued for this process's writer, or published to
/// the bus; returns its flows and what its ack waits for, or why it is refused.
async fn hand_over(
    route: &Route,
    sensor: &str,
    batch: ExportBatch,
) -> Result<(usize, Pending), Status> {
    let id = batch.batch_id;
    match route {
        Route::Local(ingest) => {
            let batch = convert::batch(sensor, batch).map_err(|why| {
                warn!(sensor, batch = id, why, "rejected a malformed batch");
                Status::invalid_argument(why)
            })?;
            let flows = batch.flows.len();
            let outcome = ingest.submit(batch).await.map_err(internal)?;
            Ok((flows, Box::pin(SensorIngest::outcome(outcome))))
        }
        Route::Bus(bus) => {
            use prost::Message as _;
            let payload = bytes::Bytes::from(batch.encode_to_vec());
            let msg_id = format!("{sensor}:{}:{id}", batch.instance_id);
            // Checked here, so that the sensor hears what is wrong; the relay converts again.
            let flows = convert::batch(sensor, batch)
                .map_err(|why| {
                    warn!(sensor, batch = id, why, "rejected a malformed batch");
                    Status::invalid_argument(why)
                })?
                .flows
                .len();
            let stored = bus
                .publish(
                    crate::bus::BATCHES_SUBJECT,
                    &msg_id,
                    &[(crate::bus::SENSOR_HEADER, sensor)],
                    payload,
                )
                .await
                .map_err(internal)?;
            Ok((
                flows,
                Box::pin(async move {
                    Ok(match stored.await? {
                        crate::bus::Published::Stored => Stored::New,
                        crate::bus::Published::Duplicate => Stored::Duplicate,
                    })
                }),
            ))
        }
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
        let mut r = convert::registration(req.into_inner()).map_err(Status::invalid_argument)?;
        r.replica.clone_from(&self.replica);
        let stores = self.stores.clone();
        let (name, rr) = (sensor.clone(), r.clone());
        let last = tokio::task::spawn_blocking(move || {
            stores.state.register(&name, &rr, now_ns())?;
            // Only a hint for the sensor's spool (it drops what is stored, and numbers its
            // next batches past it): when the flow store cannot answer, 0 drops nothing, and
            // the sensor still streams (in cluster mode the bus takes its batches meanwhile).
            Ok::<_, anyhow::Error>(match stores.flows.last_stored_batch(&rr.instance_id) {
                Ok(last) => last,
                Err(e) => {
                    warn!(sensor = name, error = %format!("{e:#}"), "the flow store cannot say which batches it has; the sensor's spool is kept whole");
                    0
                }
            })
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
        let mut r = convert::heartbeat(req.into_inner());
        r.replica.clone_from(&self.replica);
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
        let (route, stores) = (self.route.clone(), self.stores.clone());
        // The stream's batches in order, stored or failed: the next ones are queued for the
        // writer while the first waits for its transaction (see READ_AHEAD), each acked in
        // its turn.
        let (queued, mut turns) = mpsc::channel::<Turn>(READ_AHEAD);
        let sensor_name = sensor.clone();
        tokio::spawn(async move {
            while let Some(turn) = turns.recv().await {
                let ack = match turn {
                    Turn::Queued { id, flows, outcome } => match outcome.await {
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
                    },
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
                let turn = match hand_over(&route, &sensor, batch).await {
                    Ok((flows, outcome)) => Turn::Queued { id, flows, outcome },
                    Err(status) => Turn::Failed(status),
                };
                let failed = matches!(turn, Turn::Failed(_));
                if queued.send(turn).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
