//! Cluster mode's detectors: the stored sensor batches from the bus's detectors' stream, split
//! into [`PARTITIONS`] partitions by the key the detectors keep their state under
//! (`detect::partition`), each run through the sensor detectors (a batch's events, then its
//! flows) by one replica at a time: the holder of the partition's lease ([`lease`]). So every
//! source's scan and brute-force state, and every entity's baselines, are in one place
//! whichever replica stored the batches, and the partitions spread the work over the replicas.
//!
//! Each replica holds a lease of its own ([`member_lease`]) while it runs, and so knows how many
//! replicas there are; it takes free partitions up to its share (the partitions divided by the
//! replicas, rounded up) and gives back those above it when replicas join.
//!
//! A partition's holder saves its detectors' state every [`CHECKPOINT`], and only then
//! acknowledges the messages that state includes (one ack covers every message before it).
//! When the holder dies, another replica takes the partition's lease once it expires, loads
//! the partition's last saved state, and the bus gives it the messages after the last
//! acknowledgement: every batch is seen once by the state that is kept.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use picket_proto::v1::ExportBatch;
use prost::Message as _;
use tracing::{info, warn};

use crate::{
    bus::{self, Bus, Delivery},
    detect::{
        Config, Detectors, Feed, Input,
        partition::{self, PARTITIONS},
    },
    store::{Held, StateStore, Stores},
    util::time::now_ns,
};

/// The lease of a partition's detectors.
pub fn lease(partition: u32) -> String {
    format!("detectors/{partition}")
}

/// The lease a replica holds while it runs, by which the others count it.
pub fn member_lease(replica: &str) -> String {
    format!("replica/{replica}")
}

/// How long a holder that stopped renewing a lease (it died) keeps the others waiting.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a partition's holder saves its detectors' state and acknowledges what it includes.
pub const CHECKPOINT: Duration = Duration::from_secs(10);
/// How often a partition's detectors are told that time passed (a scan that ended is reported).
const TICK: Duration = Duration::from_secs(5);
/// How often the detectors read the watchlist again.
const RELOAD: Duration = Duration::from_secs(10);
/// Batches asked of the bus at once.
const FETCH: usize = 256;
/// How often a replica counts the replicas and looks for partitions to take or give back.
const BALANCE: Duration = Duration::from_secs(2);

/// This replica's part of the detectors, for health.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Share {
    /// Replicas running (holding their member lease), this one included; 0 before the first
    /// count.
    pub replicas: u32,
    /// The most partitions this replica takes: the partitions divided by the replicas, rounded
    /// up.
    pub share: u32,
    /// The partitions this replica runs now.
    pub partitions: BTreeSet<u32>,
    /// Of [`PARTITIONS`].
    pub of: u32,
}

static SHARE: Mutex<Share> = Mutex::new(Share {
    replicas: 0,
    share: 0,
    partitions: BTreeSet::new(),
    of: PARTITIONS,
});

/// This replica's part of the detectors now.
pub fn share() -> Share {
    SHARE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_held(partition: u32, held: bool) {
    let mut s = SHARE.lock().unwrap_or_else(|e| e.into_inner());
    if held {
        s.partitions.insert(partition);
    } else {
        s.partitions.remove(&partition);
    }
}

/// The replicas and the share they make, shared by this replica's partition workers.
struct Balance {
    /// Partitions held or being taken by this replica.
    held: AtomicU32,
    /// The most it takes (0 until the replicas were first counted).
    share: AtomicU32,
}

impl Balance {
    /// Claims a place for one more partition, if under the share.
    fn claim(&self) -> bool {
        let share = self.share.load(Ordering::Relaxed);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h < share).then_some(h + 1)
            })
            .is_ok()
    }

    /// Claims the giving back of one partition, if over the share.
    fn claim_release(&self) -> bool {
        let share = self.share.load(Ordering::Relaxed);
        share > 0
            && self
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                    (h > share).then_some(h - 1)
                })
                .is_ok()
    }

    fn unclaim(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The share of `partitions` among `replicas` (at least one: this one).
fn share_of(partitions: u32, replicas: u32) -> u32 {
    partitions.div_ceil(replicas.max(1))
}

/// Runs until `stop` is set: counts the replicas, and runs a worker per partition that takes
/// the partition when this replica is under its share. Blocking: on a thread of its own; bus
/// calls go through `rt`.
pub fn run(
    bus: Bus,
    stores: Stores,
    config: Config,
    replica: String,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let balance = Balance {
        held: AtomicU32::new(0),
        share: AtomicU32::new(0),
    };
    let member = Held::new(member_lease(&replica), &replica, LEASE_TTL);
    std::thread::scope(|scope| {
        for p in 0..PARTITIONS {
            let worker = Worker {
                partition: p,
                bus: &bus,
                stores: &stores,
                config: &config,
                replica: &replica,
                rt: &rt,
                stop: &stop,
                balance: &balance,
            };
            if let Err(e) = std::thread::Builder::new()
                .name(format!("detectors-{p}"))
                .spawn_scoped(scope, move || worker.run())
            {
                warn!(error = %e, partition = p, "a detectors' thread could not start");
            }
        }
        while !stop.load(Ordering::Relaxed) {
            count(stores.state.as_ref(), &member, &balance);
            sleep_unless(&stop, BALANCE);
        }
    });
    if let Err(e) = member.release(stores.state.as_ref()) {
        warn!(error = %format!("{e:#}"), "giving up this replica's member lease failed; it expires");
    }
}

/// Renews this replica's member lease and counts the replicas holding theirs.
fn count(state: &dyn StateStore, member: &Held, balance: &Balance) {
    let now = now_ns();
    let replicas = member.hold(state, now).and_then(|_| {
        let leases = state.leases()?;
        Ok(leases
            .iter()
            .filter(|l| l.name.starts_with("replica/") && l.until_ns > now)
            .count() as u32)
    });
    match replicas {
        Ok(n) => {
            let share = share_of(PARTITIONS, n);
            let before = balance.share.swap(share, Ordering::Relaxed);
            if before != share {
                info!(
                    replicas = n,
                    share,
                    partitions = PARTITIONS,
                    "the replicas share the detectors' partitions"
                );
            }
            let mut s = SHARE.lock().unwrap_or_else(|e| e.into_inner());
            s.replicas = n;
            s.share = share;
        }
        // The share stays as it was: partitions held are kept while their leases renew.
        Err(e) => warn!(error = %format!("{e:#}"), "counting the replicas failed (retried)"),
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100).min(d));
    }
}

/// One partition, on this replica.
struct Worker<'a> {
    partition: u32,
    bus: &'a Bus,
    stores: &'a Stores,
    config: &'a Config,
    replica: &'a str,
    rt: &'a tokio::runtime::Handle,
    stop: &'a AtomicBool,
    balance: &'a Balance,
}

/// The sensor detectors of a partition's holder.
struct Holding {
    events: Detectors,
    flows: Detectors,
    consumer: Option<bus::Consumer>,
    /// The last message handled since the last checkpoint.
    last: Option<Delivery>,
    saved: Instant,
    reloaded: Instant,
    ticked: Instant,
}

impl Worker<'_> {
    fn run(self) {
        let p = self.partition;
        let lease = Held::new(lease(p), self.replica, LEASE_TTL);
        let state = self.stores.state.as_ref();
        let mut holding: Option<Holding> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(h) = &mut holding else {
                if self.balance.claim() {
                    match self.take(&lease) {
                        Some(h) => {
                            set_held(p, true);
                            holding = Some(h);
                            continue;
                        }
                        None => self.balance.unclaim(),
                    }
                }
                sleep_unless(self.stop, Duration::from_secs(1));
                continue;
            };
            let held = lease.hold(state, now_ns()).unwrap_or_else(|e| {
                warn!(partition = p, error = %format!("{e:#}"), "a detectors' lease could not be renewed");
                // Kept until it is known lost: the store may be back before it expires.
                lease_alive(&lease)
            });
            if !held {
                // Another replica has it now: what was handled since the last checkpoint is not
                // acknowledged, so the bus gives it to the new holder.
                warn!(
                    replica = self.replica,
                    partition = p,
                    "lost a detectors' partition; another replica runs it now"
                );
                holding = None;
                set_held(p, false);
                self.balance.unclaim();
                continue;
            }
            if self.balance.claim_release() {
                self.checkpoint(h);
                if let Err(e) = lease.release(state) {
                    warn!(partition = p, error = %format!("{e:#}"), "giving back a detectors' partition failed; it expires");
                }
                info!(
                    replica = self.replica,
                    partition = p,
                    "gave a detectors' partition back, for a replica that joined"
                );
                holding = None;
                set_held(p, false);
                // Time for the others to take it before this replica counts again.
                sleep_unless(self.stop, BALANCE * 3);
                continue;
            }
            self.detect(h);
        }
        if let Some(mut h) = holding {
            self.checkpoint(&mut h);
            set_held(p, false);
            if let Err(e) = lease.release(state) {
                warn!(partition = p, error = %format!("{e:#}"), "giving up a detectors' lease failed; another replica takes it when it expires");
            }
        }
    }

    /// The partition with the state its last holder saved, if its lease is free.
    fn take(&self, lease: &Held) -> Option<Holding> {
        let p = self.partition;
        let state = self.stores.state.as_ref();
        match lease.hold(state, now_ns()) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                warn!(partition = p, error = %format!("{e:#}"), "a detectors' lease could not be read");
                return None;
            }
        }
        let prefix = partition::state_prefix(p);
        let loaded = Detectors::load_under(
            Feed::SensorEvents,
            self.config,
            state,
            format!("{prefix}events/"),
        )
        .and_then(|events| {
            Ok((
                events,
                Detectors::load_under(Feed::SensorFlows, self.config, state, prefix)?,
            ))
        });
        match loaded {
            Ok((events, flows)) => {
                info!(
                    replica = self.replica,
                    partition = p,
                    "this replica runs a detectors' partition (its lease held)"
                );
                Some(Holding {
                    events,
                    flows,
                    consumer: None,
                    last: None,
                    saved: Instant::now(),
                    reloaded: Instant::now(),
                    ticked: Instant::now(),
                })
            }
            Err(e) => {
                warn!(partition = p, error = %format!("{e:#}"), "loading a partition's detectors' state failed (retried)");
                let _ = lease.release(state);
                None
            }
        }
    }

    /// Takes the partition's next batches through the detectors, and checkpoints when due.
    fn detect(&self, h: &mut Holding) {
        let p = self.partition;
        if h.consumer.is_none() {
            match self.rt.block_on(self.bus.detectors(p)) {
                Ok(c) => h.consumer = Some(c),
                Err(e) => {
                    warn!(partition = p, error = %format!("{e:#}"), "a partition's consumer on the bus is not there (retried)");
                    sleep_unless(self.stop, Duration::from_secs(1));
                    return;
                }
            }
        }
        let Some(c) = &h.consumer else { return };
        match self.rt.block_on(c.fetch(FETCH, Duration::from_secs(1))) {
            Ok(msgs) => {
                for d in msgs {
                    observe(h, self.stores, &d);
                    h.last = Some(d);
                }
            }
            Err(e) => {
                warn!(partition = p, error = %format!("{e:#}"), "taking batches for the detectors failed (retried)");
                sleep_unless(self.stop, Duration::from_secs(1));
            }
        }
        if h.ticked.elapsed() >= TICK {
            h.ticked = Instant::now();
            let updates = h.flows.tick();
            if let Err(e) = crate::alerts::record_or_keep(self.stores.state.as_ref(), &updates) {
                warn!(partition = p, error = %format!("{e:#}"), waiting = crate::alerts::waiting(), "alerts could not be recorded yet (kept, retried)");
            }
        }
        if h.saved.elapsed() >= CHECKPOINT {
            self.checkpoint(h);
        }
    }

    /// Saves the partition's detectors' state, then acknowledges every message it includes.
    /// When the save fails nothing is acknowledged: the messages come again to whoever holds
    /// the state next.
    fn checkpoint(&self, h: &mut Holding) {
        let state = self.stores.state.as_ref();
        let saved = h.events.save(state).and_then(|_| h.flows.save(state));
        h.saved = Instant::now();
        if let Err(e) = saved {
            warn!(partition = self.partition, error = %format!("{e:#}"), "saving a partition's detectors' state failed (retried at the next checkpoint)");
            return;
        }
        if let Some(d) = h.last.take()
            && let Err(e) = self.rt.block_on(d.ack())
        {
            warn!(partition = self.partition, error = %format!("{e:#}"), "acknowledging the detected batches failed; they come again");
        }
    }
}

/// Whether a lease this process took has not expired yet (when the store cannot say).
fn lease_alive(lease: &Held) -> bool {
    lease.until_ns() > now_ns()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partitions_spread_over_the_replicas() {
        assert_eq!(share_of(8, 0), 8);
        assert_eq!(share_of(8, 1), 8);
        assert_eq!(share_of(8, 3), 3);
        assert_eq!(share_of(8, 8), 1);
        assert_eq!(share_of(8, 20), 1);
        let b = Balance {
            held: AtomicU32::new(0),
            share: AtomicU32::new(0),
        };
        // Nothing is taken before the replicas are counted.
        assert!(!b.claim());
        b.share.store(3, Ordering::Relaxed);
        assert!(b.claim() && b.claim() && b.claim());
        assert!(!b.claim());
        assert!(!b.claim_release());
        // A replica joined: one of three is given back.
        b.share.store(2, Ordering::Relaxed);
        assert!(b.claim_release());
        assert!(!b.claim_release());
        assert_eq!(b.held.load(Ordering::Relaxed), 2);
    }
}
