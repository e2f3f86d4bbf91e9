//! Cluster mode's detectors: the stored sensor batches from the bus's detectors' stream, run
//! through the sensor detectors (a batch's events, then its flows) by one replica at a time,
//! the holder of the lease [`LEASE`], so every source's scan, baseline and brute-force state is
//! in one place whichever replica stored its batches.
//!
//! The holder saves the detectors' state every [`CHECKPOINT`], and only then acknowledges the
//! messages that state includes (one ack covers every message before it). When the holder
//! dies, another replica takes the lease once it expires, loads the last saved state, and the
//! bus gives it the messages after the last acknowledgement: every batch is seen once by the
//! state that is kept.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use picket_proto::v1::ExportBatch;
use prost::Message as _;
use tracing::{info, warn};

use crate::{
    bus::{self, Bus, Delivery},
    detect::{Config, Detectors, Feed, Input},
    store::{Held, Stores},
    util::time::now_ns,
};

/// The lease of the replica that runs the sensor detectors.
pub const LEASE: &str = "detectors";
/// How long a holder that stopped renewing the lease (it died) keeps the others waiting.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often the holder saves the detectors' state and acknowledges what it includes.
pub const CHECKPOINT: Duration = Duration::from_secs(10);
/// How often the detectors read the watchlist again.
const RELOAD: Duration = Duration::from_secs(10);
/// Batches asked of the bus at once.
const FETCH: usize = 256;

/// The sensor detectors of the lease's holder.
struct Holding {
    events: Detectors,
    flows: Detectors,
    /// The last message handled since the last checkpoint.
    last: Option<Delivery>,
    saved: Instant,
    reloaded: Instant,
}

/// Runs until `stop` is set: waits for the lease, then detects while it holds it. Blocking:
/// on a thread of its own; bus calls go through `rt`.
pub fn run(
    bus: Bus,
    stores: Stores,
    config: Config,
    replica: String,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let lease = Held::new(LEASE, &replica, LEASE_TTL);
    let state = stores.state.clone();
    let mut holding: Option<Holding> = None;
    let mut consumer = None;
    while !stop.load(Ordering::Relaxed) {
        let held = match lease.hold(state.as_ref(), now_ns()) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the detectors' lease could not be read");
                false
            }
        };
        if !held {
            if holding.take().is_some() {
                // Another replica has it now: what was handled since the last checkpoint is
                // not acknowledged, so the bus gives it to the new holder.
                warn!(
                    replica,
                    "lost the detectors' lease; another replica runs them now"
                );
            }
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let h = match &mut holding {
            Some(h) => h,
            None => match take_over(&stores, &config) {
                Ok(h) => {
                    info!(
                        replica,
                        "this replica runs the sensor detectors (detectors' lease held)"
                    );
                    holding.insert(h)
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "loading the detectors' state failed (retried)");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            },
        };
        if consumer.is_none() {
            match rt.block_on(bus.detectors()) {
                Ok(c) => consumer = Some(c),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "the bus's detectors' consumer is not there (retried)");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let Some(c) = &consumer else { continue };
        match rt.block_on(c.fetch(FETCH, Duration::from_secs(1))) {
            Ok(msgs) => {
                for d in msgs {
                    observe(h, &stores, &d);
                    h.last = Some(d);
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "taking batches for the detectors failed (retried)");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if h.saved.elapsed() >= CHECKPOINT {
            checkpoint(h, &stores, &rt);
        }
    }
    if let Some(mut h) = holding {
        checkpoint(&mut h, &stores, &rt);
        if let Err(e) = lease.release(state.as_ref()) {
            warn!(error = %format!("{e:#}"), "giving up the detectors' lease failed; another replica takes it when it expires");
        }
    }
}

/// The detectors with the state the last holder saved.
fn take_over(stores: &Stores, config: &Config) -> anyhow::Result<Holding> {
    let state = stores.state.as_ref();
    Ok(Holding {
        events: Detectors::load(Feed::SensorEvents, config, state)?,
        flows: Detectors::load(Feed::SensorFlows, config, state)?,
        last: None,
        saved: Instant::now(),
        reloaded: Instant::now(),
    })
}

/// One stored batch through the detectors; its alerts recorded (or kept until the state store
/// answers).
fn observe(h: &mut Holding, stores: &Stores, d: &Delivery) {
    let state = stores.state.as_ref();
    let batch = d
        .header(bus::SENSOR_HEADER)
        .ok_or_else(|| "no sensor header".to_string())
        .and_then(|sensor| {
            let b = ExportBatch::decode(d.payload().clone()).map_err(|e| e.to_string())?;
            super::convert::batch(sensor, b)
        });
    let batch = match batch {
        Ok(b) => b,
        Err(why) => {
            // The relay stored it, so it decoded there: nothing of it is lost to the store.
            warn!(
                why,
                "a batch on the detectors' stream is not readable; not detected"
            );
            return;
        }
    };
    if h.reloaded.elapsed() >= RELOAD {
        if let Err(e) = h.flows.reload(state) {
            warn!(error = %format!("{e:#}"), "reading the watchlist failed");
        }
        h.reloaded = Instant::now();
    }
    let input = Input::batch(&batch);
    let mut updates = h.events.observe(&input);
    updates.extend(h.flows.observe(&input));
    if let Err(e) = crate::alerts::record_or_keep(state, &updates) {
        warn!(sensor = batch.sensor, error = %format!("{e:#}"), waiting = crate::alerts::waiting(), "alerts could not be recorded yet (kept, retried)");
    }
}

/// Saves the detectors' state, then acknowledges every message it includes. When the save
/// fails nothing is acknowledged: the messages come again to whoever holds the state next.
fn checkpoint(h: &mut Holding, stores: &Stores, rt: &tokio::runtime::Handle) {
    let state = stores.state.as_ref();
    let saved = h.events.save(state).and_then(|_| h.flows.save(state));
    h.saved = Instant::now();
    if let Err(e) = saved {
        warn!(error = %format!("{e:#}"), "saving the detectors' state failed (retried at the next checkpoint)");
        return;
    }
    if let Some(d) = h.last.take()
        && let Err(e) = rt.block_on(d.ack())
    {
        warn!(error = %format!("{e:#}"), "acknowledging the detected batches failed; they come again");
    }
}
