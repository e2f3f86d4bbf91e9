//! Cluster mode's writer side: the sensor batches that the replicas' fronts published to the
//! bus, taken from its writers' consumer into this replica's writer (`pipeline::ingest`), each
//! acknowledged to the bus once the flow store took it.
//!
//! A replica killed after its writer stored a batch and before the bus heard the ack leaves
//! the batch unacknowledged: the bus gives it again after `bus::ACK_WAIT`, to this replica or
//! another, and the flow store finds its (installation, batch) mark and takes it as a
//! duplicate (on ClickHouse a half-written batch is taken away first): every flow counts once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use picket_proto::v1::ExportBatch;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::{
    bus::{self, Bus, Delivery},
    pipeline::ingest::{Outcome, SensorIngest},
};

/// Batches asked of the bus at once. With 1,000-flow batches, enough for the flow store's
/// largest write (`FlowStore::group_flows`) and the next one queued behind it.
const FETCH: usize = 256;
/// Fetched groups waiting for their outcomes while the next is fetched.
const IN_FLIGHT: usize = 1;
/// When a batch could not be stored (the flow store is away), how long before the bus gives it
/// again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the relay counted since the start.
#[derive(Default)]
pub struct RelayStats {
    /// Batches stored (new or duplicates) and acknowledged to the bus.
    pub stored: AtomicU64,
    /// Batches handed back to the bus because the store failed them (given again later).
    pub retried: AtomicU64,
    /// Messages that do not decode or name no sensor: never stored, rejected on the bus, each
    /// logged.
    pub undecodable: AtomicU64,
}

pub static STATS: RelayStats = RelayStats {
    stored: AtomicU64::new(0),
    retried: AtomicU64::new(0),
    undecodable: AtomicU64::new(0),
};

/// The batch of a bus message, or why it cannot be one.
fn decode(d: &Delivery) -> Result<crate::model::SensorBatch, String> {
    let sensor = d
        .header(bus::SENSOR_HEADER)
        .ok_or_else(|| format!("no {} header", bus::SENSOR_HEADER))?
        .to_string();
    let b = ExportBatch::decode(d.payload().clone()).map_err(|e| format!("not a batch: {e}"))?;
    super::convert::batch(&sensor, b)
}

/// Debug builds only, for the test that kills a writer between its insert and its ack: with
/// `PICKET_FAILPOINT=relay-exit-before-ack`, the process ends abruptly (as SIGKILL would) once
/// a group of batches is stored, before the bus hears of it.
fn failpoint_exit_before_ack(stored: usize) {
    if cfg!(debug_assertions)
        && stored > 0
        && std::env::var("PICKET_FAILPOINT").as_deref() == Ok("relay-exit-before-ack")
    {
        eprintln!(
            "failpoint relay-exit-before-ack: {stored} batch(es) stored, exiting before the bus's ack"
        );
        std::process::abort();
    }
}

/// Publishes a stored batch's records to the detectors' stream, one message per partition
/// that has any (`detect::partition`), each under the batch's message id and its partition;
/// returns what tells when the stream stored them all.
async fn to_detectors(
    bus: &Bus,
    d: &Delivery,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + use<>> {
    let id = d.header("Nats-Msg-Id").unwrap_or_default().to_string();
    let sensor = d.header(bus::SENSOR_HEADER).unwrap_or_default().to_string();
    let batch = ExportBatch::decode(d.payload().clone())?;
    let parts = super::convert::split(batch).map_err(|e| anyhow::anyhow!(e))?;
    let mut stored = Vec::with_capacity(parts.len());
    for (p, part) in parts {
        stored.push(
            bus.publish(
                &bus::detect_subject(p),
                &format!("{id}/{p}"),
                &[(bus::SENSOR_HEADER, &sensor)],
                part.encode_to_vec().into(),
            )
            .await?,
        );
    }
    Ok(async move {
        for s in stored {
            s.await?;
        }
        Ok(())
    })
}

/// A batch handed back to the bus, which gives it again after [`RETRY_AFTER`].
async fn retry(d: &Delivery, why: &str, e: &anyhow::Error) {
    STATS.retried.fetch_add(1, Ordering::Relaxed);
    warn!(error = %format!("{e:#}"), retry_in_s = RETRY_AFTER.as_secs(), "{why}; the bus gives it again");
    let _ = d.retry_after(RETRY_AFTER).await;
}

/// Relays until `stop` turns true, then lets the batches taken finish.
pub async fn run(bus: Bus, ingest: Arc<SensorIngest>, mut stop: watch::Receiver<bool>) {
    let consumer = loop {
        match bus.writers().await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the bus's writers' consumer is not there yet (retried in 1 s)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let (to_acker, mut groups) = mpsc::channel::<Vec<(Delivery, Outcome)>>(IN_FLIGHT);
    let detect = bus.clone();
    let acker = tokio::spawn(async move {
        while let Some(group) = groups.recv().await {
            // Stored batches go on to the detectors' stream (new or duplicates alike: a
            // duplicate may be a batch stored by a replica that died before this step; the
            // detectors' stream drops what it has by message id), then are acked here.
            let mut stored = Vec::with_capacity(group.len());
            for (d, outcome) in group {
                match SensorIngest::outcome(outcome).await {
                    Ok(_) => match to_detectors(&detect, &d).await {
                        Ok(published) => stored.push((d, published)),
                        Err(e) => {
                            retry(&d, "a stored batch could not go on to the detectors", &e).await
                        }
                    },
                    Err(e) => retry(&d, "a batch from the bus could not be stored", &e).await,
                }
            }
            failpoint_exit_before_ack(stored.len());
            for (d, published) in stored {
                match published.await {
                    Ok(()) => {
                        STATS.stored.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = d.ack().await {
                            // Given again after ACK_WAIT, then a duplicate.
                            warn!(error = %format!("{e:#}"), "a stored batch's ack did not reach the bus");
                        }
                    }
                    Err(e) => {
                        retry(&d, "the detectors' stream did not take a stored batch", &e).await
                    }
                }
            }
        }
    });
    while !*stop.borrow() {
        let fetched = tokio::select! {
            f = consumer.fetch(FETCH, Duration::from_secs(1)) => f,
            _ = stop.changed() => break,
        };
        let msgs = match fetched {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "taking batches from the bus failed (retried in 1 s)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        debug!(batches = msgs.len(), "batches taken from the bus");
        let mut group = Vec::with_capacity(msgs.len());
        for d in msgs {
            match decode(&d) {
                Ok(batch) => match ingest.submit(batch).await {
                    Ok(outcome) => group.push((d, outcome)),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "the writer stopped");
                        break;
                    }
                },
                Err(why) => {
                    STATS.undecodable.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        why,
                        delivered = d.delivered(),
                        "a message on the bus is not a sensor batch: rejected, not stored"
                    );
                    let _ = d.reject().await;
                }
            }
        }
        if to_acker.send(group).await.is_err() {
            break;
        }
    }
    drop(to_acker);
    let _ = acker.await;
}
