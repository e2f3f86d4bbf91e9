//! The maintenance pass `serve` runs every `--maintenance-interval`: rollups and retention,
//! snoozes that end, correlation of recent sensor flows with cloud records (a sensor's flow may
//! arrive after the cloud's record of the same conversation), and coverage gaps.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::import::CORRELATION_TOLERANCE_NS;
use crate::{
    detect::{Config, Detectors, Feed, Input},
    store::{Held, Retention, Stores},
    util::time::now_ns,
};

/// Correlation looks at cloud records that ended in the last 2 hours.
const CORRELATE_WINDOW_NS: i64 = 7_200_000_000_000;
/// Cloud flows of the last day are searched for addresses no sensor watches.
const COVERAGE_GAP_WINDOW_NS: i64 = 86_400_000_000_000;

/// The lease of the replica that runs the passes: of several replicas on one state store,
/// one runs them (see [`lease`]).
pub const LEASE: &str = "maintenance";

/// `replica`'s hold on [`LEASE`] for passes every `interval`: a replica that stops renewing it
/// (it died) keeps the others from taking over for three intervals (at least a minute).
pub fn lease(replica: &str, interval: Duration) -> Held {
    Held::new(LEASE, replica, (interval * 3).max(Duration::from_secs(60)))
}

/// Runs a pass every `interval`, while this process holds `lease`, until `stop` is set (it
/// sleeps in short steps, so a stop does not wait a whole interval).
pub fn run(
    stores: Stores,
    retention: Retention,
    interval: Duration,
    lease: Held,
    stop: Arc<AtomicBool>,
) {
    let mut coverage = Detectors::new(Feed::Coverage, &Config::default());
    let mut holding = None;
    while !stop.load(Ordering::Relaxed) {
        let now = now_ns();
        match lease.hold(stores.state.as_ref(), now) {
            Ok(held) => {
                if holding != Some(held) {
                    info!(
                        replica = lease.holder,
                        runs_maintenance = held,
                        "maintenance lease {}",
                        if held {
                            "held"
                        } else {
                            "held by another replica"
                        }
                    );
                    holding = Some(held);
                }
                if held {
                    pass(&stores, &retention, &mut coverage, now);
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the maintenance lease could not be read; no pass")
            }
        }
        let t0 = Instant::now();
        while t0.elapsed() < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if holding == Some(true)
        && let Err(e) = lease.release(stores.state.as_ref())
    {
        warn!(error = %format!("{e:#}"), "giving up the maintenance lease failed; another replica takes it when it expires");
    }
}

/// One pass at `now`; each step logs its failure and the next one still runs.
pub fn pass(stores: &Stores, retention: &Retention, coverage: &mut Detectors, now: i64) {
    match stores.flows.maintain(now, retention) {
        Ok(m) if m.deleted_raw + m.deleted_minutes + m.deleted_hours > 0 => info!(
            rolled_up = m.rolled_up,
            deleted_raw = m.deleted_raw,
            deleted_1m = m.deleted_minutes,
            deleted_1h = m.deleted_hours,
            "rollups and retention"
        ),
        Ok(m) => debug!(rolled_up = m.rolled_up, "rollups"),
        Err(e) => warn!(error = %format!("{e:#}"), "rollups and retention failed"),
    }
    match stores.state.wake_snoozed(now) {
        Ok(0) => {}
        Ok(n) => info!(alerts = n, "snoozed alerts are open again"),
        Err(e) => warn!(error = %format!("{e:#}"), "waking snoozed alerts failed"),
    }
    match stores
        .flows
        .correlate(now - CORRELATE_WINDOW_NS, now, CORRELATION_TOLERANCE_NS)
    {
        Ok(0) => {}
        Ok(links) => info!(links, "linked sensor flows to cloud flow log records"),
        Err(e) => warn!(error = %format!("{e:#}"), "correlation failed"),
    }
    let gaps = stores.state.sensor_addresses().and_then(|watched| {
        stores
            .flows
            .coverage_gaps(now - COVERAGE_GAP_WINDOW_NS, &watched)
    });
    match gaps {
        Ok(g) => {
            let sensors = stores.state.sensors().is_ok_and(|s| !s.is_empty());
            let updates = coverage.observe(&Input::coverage(&g, sensors));
            if let Err(e) = crate::alerts::record_or_keep(stores.state.as_ref(), &updates) {
                warn!(error = %format!("{e:#}"), waiting = crate::alerts::waiting(), "alerts could not be recorded yet (kept, retried)");
            }
        }
        Err(e) => warn!(error = %format!("{e:#}"), "coverage gaps failed"),
    }
}
