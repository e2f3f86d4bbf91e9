//! The sensor ingest behind the gRPC front: one writer thread stores the sensors' batches in
//! groups (one transaction for whatever arrived meanwhile) and runs the detectors of their
//! events; a second thread runs the detectors of their flows and frees the batches.

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::{
    detect::{Config, Detectors, Feed, Input},
    model::SensorBatch,
    store::{Stored, Stores},
    util::time::now_ns,
};

/// The ingest's threads, and the queue to its writer.
pub struct SensorIngest {
    writer: mpsc::Sender<Pending>,
    /// Told once the sensor flows' detectors saved their state at the end (see
    /// [`SensorIngest::finished`]).
    finished: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl SensorIngest {
    /// Starts the writer thread and the sensor flows' detectors' thread. Without `detect`
    /// (cluster mode, where the detectors take the stored batches from the bus) the batches
    /// are only stored.
    pub fn start(stores: Stores, config: Config, detect: bool) -> Self {
        let (writer, rx) = mpsc::channel(1024);
        let (to_flows, flows_rx) = std::sync::mpsc::sync_channel(DETECT_QUEUE);
        let (finished, finished_rx) = std::sync::mpsc::channel();
        let s = stores.clone();
        std::thread::Builder::new()
            .name("sensor-baselines".into())
            .spawn(move || {
                if detect {
                    self::sensor_flows(s, config, flows_rx, finished)
                } else {
                    // Only frees the batches: the detectors (and their state) are elsewhere.
                    for _ in flows_rx {}
                    let _ = finished.send(());
                }
            })
            .expect("spawning the sensor flows' detectors' thread");
        std::thread::Builder::new()
            .name("batch-writer".into())
            .spawn(move || self::writer(stores, config, detect, rx, to_flows))
            .expect("spawning the batch writer thread");
        SensorIngest {
            writer,
            finished: std::sync::Mutex::new(Some(finished_rx)),
        }
    }

    /// Stores `batch` once (a replay is a duplicate) and returns when its transaction
    /// committed.
    pub async fn store(&self, batch: SensorBatch) -> anyhow::Result<Stored> {
        Self::outcome(self.submit(batch).await?).await
    }

    /// Queues `batch` for the writer (waiting while its queue is full) and returns where its
    /// outcome will come: a caller may queue more before the first is stored.
    pub async fn submit(&self, batch: SensorBatch) -> anyhow::Result<Outcome> {
        let (done, outcome) = oneshot::channel();
        self.writer
            .send(Pending { batch, done })
            .await
            .map_err(|_| anyhow::anyhow!("the batch writer stopped"))?;
        Ok(outcome)
    }

    /// What became of a submitted batch, once its transaction committed (or failed).
    pub async fn outcome(outcome: Outcome) -> anyhow::Result<Stored> {
        outcome
            .await
            .map_err(|_| anyhow::anyhow!("the batch writer stopped"))?
    }

    /// Receives once the ingest has stopped (every holder of this is gone) and the sensor
    /// flows' detectors have saved what they learned since their last save. For the caller to
    /// wait on before the process exits; taken once.
    pub fn finished(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.finished.lock().ok()?.take()
    }
}

/// Where a submitted batch's outcome comes ([`SensorIngest::submit`]).
pub type Outcome = oneshot::Receiver<anyhow::Result<Stored>>;

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
/// How often the sensor flows' detectors are told that time passed (a scan whose records
/// stopped coming is over: its final extent is reported).
const TICK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the detectors read the watchlist again (the CLI and the API change it in the
/// store).
const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The thread of the detectors over sensor flows ([`Feed::SensorFlows`]). It also frees each
/// batch: its thousands of strings are not the one writer's work. A batch that was not newly
/// stored (a replay, or one that failed) is only freed.
fn sensor_flows(
    stores: Stores,
    config: Config,
    rx: std::sync::mpsc::Receiver<(SensorBatch, bool)>,
    finished: std::sync::mpsc::Sender<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let store = stores.state;
    let mut d = Detectors::load(Feed::SensorFlows, &config, store.as_ref()).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "reading the sensor baselines failed; learning anew");
        Detectors::new(Feed::SensorFlows, &config)
    });
    let (mut saved, mut loaded) = (std::time::Instant::now(), std::time::Instant::now());
    let mut ticked = std::time::Instant::now();
    loop {
        let stop = match rx.recv_timeout(TICK_INTERVAL) {
            Ok((batch, new)) => {
                if new {
                    if loaded.elapsed() > RELOAD_INTERVAL {
                        if let Err(e) = d.reload(store.as_ref()) {
                            warn!(error = %format!("{e:#}"), "reading the watchlist failed");
                        }
                        loaded = std::time::Instant::now();
                    }
                    let updates = d.observe(&Input::batch(&batch));
                    if let Err(e) = crate::alerts::record_or_keep(store.as_ref(), &updates) {
                        warn!(sensor = batch.sensor, error = %format!("{e:#}"), waiting = crate::alerts::waiting(), "alerts from sensor flows could not be recorded yet (kept, retried)");
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if ticked.elapsed() >= TICK_INTERVAL {
            ticked = std::time::Instant::now();
            let updates = d.tick();
            if let Err(e) = crate::alerts::record_or_keep(store.as_ref(), &updates) {
                warn!(error = %format!("{e:#}"), waiting = crate::alerts::waiting(), "alerts from sensor flows could not be recorded yet (kept, retried)");
            }
        }
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

/// The one thread that stores batches. Whatever arrived from every sensor while the previous
/// transaction was being written goes into the next one (group commit), up to the store's
/// [`FlowStore::group_flows`](crate::store::FlowStore::group_flows): a transaction's cost is
/// mostly the index pages it dirties (SQLite) or the parts it makes (ClickHouse), so one
/// transaction of 50 batches costs far less than 50 of one batch each. Each batch is acknowledged only after its transaction commits, and
/// after the detectors of its events ([`Feed::SensorEvents`]: kernel scan events, logins) saw
/// it.
fn writer(
    stores: Stores,
    config: Config,
    detect: bool,
    mut rx: mpsc::Receiver<Pending>,
    to_flows: std::sync::mpsc::SyncSender<(SensorBatch, bool)>,
) {
    let Stores {
        flows: store,
        state,
    } = stores;
    // The brute-force windows of logins are saved, like the flows' baselines, so that an
    // attack keeps counting across a restart.
    let mut events =
        Detectors::load(Feed::SensorEvents, &config, state.as_ref()).unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "reading the login windows failed; counting anew");
            Detectors::new(Feed::SensorEvents, &config)
        });
    let mut saved = std::time::Instant::now();
    let save = |events: &mut Detectors| {
        if let Err(e) = events.save(state.as_ref()) {
            warn!(error = %format!("{e:#}"), "saving the login windows failed (retried)");
        }
    };
    let group_flows = store.group_flows();
    while let Some(first) = rx.blocking_recv() {
        let mut flows = first.batch.flows.len();
        let mut group = vec![first];
        while flows < group_flows {
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
                    let new = detect && matches!(r, Ok(Stored::New));
                    if new {
                        // Stored before it is looked at: a failure here loses no flow.
                        let updates = events.observe(&Input::batch(&p.batch));
                        if let Err(err) = crate::alerts::record_or_keep(state.as_ref(), &updates) {
                            warn!(sensor = p.batch.sensor, batch = p.batch.batch_id, error = %format!("{err:#}"), waiting = crate::alerts::waiting(), "alerts could not be recorded yet (kept, retried)");
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
        if detect && saved.elapsed() >= SAVE_INTERVAL {
            save(&mut events);
            saved = std::time::Instant::now();
        }
    }
    if detect {
        save(&mut events);
    }
}
