//! Detectors: what the control plane sees becomes alert observations ([`AlertUpdate`]s), which
//! the alerts service then records (allowlist, sensitivity, merging into incidents,
//! notifications).
//!
//! Every detector keeps one contract, [`Detector`]: it is given an [`Input`] (a chunk of flows,
//! a sensor batch's kernel scan events and logins, or the internal addresses no sensor
//! watches), adds what it finds to an [`Output`], and loads and saves through the state store
//! what must outlive the process. One [`REGISTRY`] says which detector runs on which [`Feed`]
//! (cloud flow log imports, a sensor batch's events, sensor flows, coverage), in which order;
//! [`Detectors`] is the set of one feed, built from it. Time always comes from the data, so a
//! replayed log alerts as it would have live.
//!
//! | file | alert types | feeds |
//! |---|---|---|
//! | `fanout.rs` | `port_scan`, `address_sweep` from failed attempts in flows | import |
//! | `slow_scan.rs` | the same, by a sequential test without a window | import |
//! | `kernel_scan.rs` | the same, from the sensors' kernel scan events | sensor events |
//! | `scan_extent.rs` | those alerts grown with the scan: extent, open ports, follow-up | sensor flows |
//! | `decoys.rs` | groups the three above: decoys fold into the real scanner | import, sensor events |
//! | `distributed.rs` | `distributed_scan` | import, sensor flows |
//! | `brute_force.rs` | `brute_force` from short connections, and from failed logins | import; sensor events |
//! | `watchlist.rs` | `watchlist_hit` | import, sensor flows |
//! | `novelty.rs` | `geo_unusual_access`, `new_service`, `new_internal_device` | import, sensor flows |
//! | `exfiltration.rs` | `data_exfiltration` | import, sensor flows |
//! | `reject_storm.rs` | `reject_storm` | import |
//! | `coverage.rs` | `sensor_coverage_gap` | import, coverage |

use std::cell::OnceCell;

use crate::{
    model::{AlertUpdate, Flow, SensorBatch},
    store::{CoverageGap, StateStore},
};

pub mod brute_force;
pub(crate) mod common;
pub mod coverage;
pub mod decoys;
pub mod distributed;
pub mod exfiltration;
pub mod fanout;
pub mod kernel_scan;
pub mod novelty;
pub mod partition;
pub mod reject_storm;
pub mod scan_extent;
pub mod slow_scan;
pub mod watchlist;

pub use common::{ChunkView, failed};
pub use decoys::Finding;

/// What a detector is given: one chunk of what the control plane received. Each detector
/// reads the parts it knows and ignores the rest.
pub struct Input<'a> {
    /// Flows of one chunk: a part of a file, or a sensor batch's flows.
    pub flows: &'a [Flow],
    /// The sensor batch the chunk is, with its kernel scan events and logins.
    pub batch: Option<&'a SensorBatch>,
    /// Internal addresses that cloud flow logs show and no sensor watches.
    pub coverage: Option<Coverage<'a>>,
    view: OnceCell<ChunkView>,
}

/// The coverage of the cloud's internal addresses (see [`coverage`]).
#[derive(Clone, Copy)]
pub struct Coverage<'a> {
    pub gaps: &'a [CoverageGap],
    /// Whether any sensor is registered (before one is, every address would be a gap).
    pub sensors_registered: bool,
}

impl<'a> Input<'a> {
    /// A chunk of flows.
    pub fn flows(flows: &'a [Flow]) -> Self {
        Input {
            flows,
            batch: None,
            coverage: None,
            view: OnceCell::new(),
        }
    }

    /// A sensor batch: its flows, kernel scan events and logins.
    pub fn batch(batch: &'a SensorBatch) -> Self {
        Input {
            batch: Some(batch),
            ..Input::flows(&batch.flows)
        }
    }

    /// The coverage gaps of a time range.
    pub fn coverage(gaps: &'a [CoverageGap], sensors_registered: bool) -> Self {
        Input {
            coverage: Some(Coverage {
                gaps,
                sensors_registered,
            }),
            ..Input::flows(&[])
        }
    }

    /// What the chunk's records say about each other, built once for the detectors that ask.
    pub fn view(&self) -> &ChunkView {
        self.view.get_or_init(|| ChunkView::of(self.flows))
    }
}

/// What the detectors of one chunk found.
#[derive(Default)]
pub struct Output {
    pub updates: Vec<AlertUpdate>,
    /// Scan findings of one source each, for decoy grouping ([`decoys`]) to turn into updates.
    pub findings: Vec<Finding>,
    /// The chunk's scan findings as found, before decoy grouping holds or folds them: the
    /// sources a detector that follows scanners (`scan_extent`) starts following at once.
    pub found: Vec<AlertUpdate>,
}

/// A detector's saved state in the state store, under its feed's prefix (the sensor flows'
/// baselines and an import's learn apart).
pub struct State<'a> {
    pub store: &'a dyn StateStore,
    pub prefix: &'a str,
}

impl State<'_> {
    /// The (key, state) pairs saved under `name`.
    pub fn read(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.store.detector_state(&format!("{}{name}", self.prefix))
    }

    /// Saves (key, state or None to forget it, last data time) entries under `name`.
    pub fn write(
        &self,
        name: &str,
        entries: &[(String, Option<String>, i64)],
    ) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.store
            .save_detector_state(&format!("{}{name}", self.prefix), entries)
    }
}

/// The one contract of every detector.
pub trait Detector: Send {
    /// Its name in the registry and in logs.
    fn name(&self) -> &'static str;
    /// Looks at one chunk and adds what it finds to `out`.
    fn observe(&mut self, input: &Input<'_>, out: &mut Output);
    /// What it held back, at the end of an input (a file).
    fn flush(&mut self, _out: &mut Output) {}
    /// Time passed without input (the sensor feeds, every few seconds): what was waiting for
    /// the end of something that has ended.
    fn tick(&mut self, _out: &mut Output) {}
    /// Takes up what it saved before.
    fn load(&mut self, _state: &State<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Saves what changed since the last save.
    fn save(&mut self, _state: &State<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Reads again what users change while it runs (the watchlist).
    fn reload(&mut self, _state: &State<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Live state dropped to stay within its bounds (counted, and logged as it happens).
    fn forgotten(&self) -> u64 {
        0
    }
}

/// What detectors are fed, and where they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Cloud flow logs, a file at a time (`import`, the watched directory).
    Import,
    /// A sensor batch's kernel scan events and logins, on the batch writer as it stores them.
    SensorEvents,
    /// Sensor flows, on a thread of their own beside the batch writer.
    SensorFlows,
    /// The cloud's internal addresses that no sensor watches, at each maintenance pass.
    Coverage,
}

impl Feed {
    /// The prefix of its detectors' state names: the sensor flows' baselines learn apart from
    /// the imports', so neither overwrites the other's.
    pub fn state_prefix(self) -> &'static str {
        match self {
            Feed::SensorFlows => "sensor/",
            _ => "",
        }
    }
}

/// Settings the detectors take from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The baseline detectors' learning period (data time).
    pub learning_ns: i64,
    /// How long after a scan a session to a port it found open is its follow-up.
    pub follow_up_ns: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            learning_ns: novelty::LEARNING_NS,
            follow_up_ns: scan_extent::FOLLOW_UP_NS,
        }
    }
}

/// A detector in the registry: its name, the feeds it runs on, how to make one.
pub struct Entry {
    pub name: &'static str,
    pub feeds: &'static [Feed],
    make: fn(&Config, Feed) -> Box<dyn Detector>,
}

use Feed::{Coverage as Cov, Import, SensorEvents, SensorFlows};

/// Every detector, in the order they run: scan findings first and their decoy grouping, then
/// the rest. Each feed's alert updates are put in data-time order (stable, so this order
/// breaks ties).
pub const REGISTRY: &[Entry] = &[
    Entry {
        name: "fan_out",
        feeds: &[Import],
        make: |_, _| Box::new(fanout::FanOutDetector::default()),
    },
    Entry {
        name: "slow_scan",
        feeds: &[Import],
        make: |_, _| Box::new(slow_scan::SlowScan::default()),
    },
    Entry {
        name: "kernel_scan",
        feeds: &[SensorEvents],
        make: |_, _| Box::new(kernel_scan::KernelScan),
    },
    Entry {
        name: "decoys",
        feeds: &[Import, SensorEvents],
        // A file is read a chunk at a time: a decoy's records and the scanner's may fall on
        // either side of a chunk's end. A sensor batch holds a scan's events together.
        make: |_, feed| {
            Box::new(if feed == Import {
                decoys::DecoyGroups::holding()
            } else {
                decoys::DecoyGroups::default()
            })
        },
    },
    Entry {
        name: "distributed_scan",
        feeds: &[Import, SensorFlows],
        make: |_, _| Box::new(distributed::DistributedScan::default()),
    },
    Entry {
        name: "brute_force_flows",
        feeds: &[Import],
        make: |_, _| Box::new(brute_force::FlowBruteForce::default()),
    },
    Entry {
        name: "brute_force_logins",
        feeds: &[SensorEvents],
        make: |_, _| Box::new(brute_force::LoginBruteForce::default()),
    },
    Entry {
        name: "watchlist",
        feeds: &[Import, SensorFlows],
        make: |_, _| Box::new(watchlist::Watchlist::default()),
    },
    Entry {
        name: "geo_unusual_access",
        feeds: &[Import, SensorFlows],
        make: |c, _| {
            Box::new(novelty::Novelty::new(
                novelty::Facet::Country,
                c.learning_ns,
            ))
        },
    },
    Entry {
        name: "new_service",
        feeds: &[Import, SensorFlows],
        make: |c, _| {
            Box::new(novelty::Novelty::new(
                novelty::Facet::Service,
                c.learning_ns,
            ))
        },
    },
    Entry {
        name: "new_internal_device",
        feeds: &[Import, SensorFlows],
        make: |c, _| Box::new(novelty::Novelty::new(novelty::Facet::Device, c.learning_ns)),
    },
    Entry {
        name: "data_exfiltration",
        feeds: &[Import, SensorFlows],
        make: |c, _| Box::new(exfiltration::Exfiltration::new(c.learning_ns)),
    },
    Entry {
        name: "scan_extent",
        feeds: &[Import, SensorFlows],
        make: |c, feed| {
            Box::new(if feed == Import {
                scan_extent::ScanExtent::cloud(c.follow_up_ns)
            } else {
                scan_extent::ScanExtent::new(c.follow_up_ns)
            })
        },
    },
    Entry {
        name: "reject_storm",
        feeds: &[Import],
        make: |_, _| Box::new(reject_storm::RejectStorm::default()),
    },
    Entry {
        name: "sensor_coverage_gap",
        feeds: &[Import, Cov],
        make: |_, _| Box::new(coverage::CoverageGaps::default()),
    },
];

/// The detectors of one feed, in the registry's order.
pub struct Detectors {
    /// Where their state is saved: the feed's prefix, or a partition's ([`partition`]).
    prefix: String,
    list: Vec<Box<dyn Detector>>,
}

impl Detectors {
    /// Nothing learned yet.
    pub fn new(feed: Feed, config: &Config) -> Self {
        Detectors {
            prefix: feed.state_prefix().to_string(),
            list: REGISTRY
                .iter()
                .filter(|e| e.feeds.contains(&feed))
                .map(|e| (e.make)(config, feed))
                .collect(),
        }
    }

    /// With what they saved in `store` before.
    pub fn load(feed: Feed, config: &Config, store: &dyn StateStore) -> anyhow::Result<Self> {
        Self::load_under(feed, config, store, feed.state_prefix().to_string())
    }

    /// With what they saved under `prefix` before (a partition's detectors, in cluster mode).
    pub fn load_under(
        feed: Feed,
        config: &Config,
        store: &dyn StateStore,
        prefix: String,
    ) -> anyhow::Result<Self> {
        let mut d = Detectors::new(feed, config);
        d.prefix = prefix;
        let state = State {
            store,
            prefix: &d.prefix,
        };
        for x in &mut d.list {
            x.load(&state)?;
        }
        Ok(d)
    }

    /// Runs every detector over `input`; the alert updates in data-time order.
    pub fn observe(&mut self, input: &Input<'_>) -> Vec<AlertUpdate> {
        let mut out = Output::default();
        for d in &mut self.list {
            d.observe(input, &mut out);
        }
        Self::finish(out)
    }

    /// Time passed without input: what the detectors held until something ended.
    pub fn tick(&mut self) -> Vec<AlertUpdate> {
        let mut out = Output::default();
        for d in &mut self.list {
            d.tick(&mut out);
        }
        Self::finish(out)
    }

    /// What the detectors held back, at the end of an input (a file).
    pub fn flush(&mut self) -> Vec<AlertUpdate> {
        let mut out = Output::default();
        for d in &mut self.list {
            d.flush(&mut out);
        }
        Self::finish(out)
    }

    fn finish(out: Output) -> Vec<AlertUpdate> {
        // Findings not grouped (a feed without decoy grouping) stand as they are.
        let mut updates = out.updates;
        updates.extend(out.findings.into_iter().map(|f| f.update));
        updates.sort_by_key(|u| u.time_ns);
        updates
    }

    /// Saves what each detector learned since the last save.
    pub fn save(&mut self, store: &dyn StateStore) -> anyhow::Result<()> {
        let state = State {
            store,
            prefix: &self.prefix,
        };
        for d in &mut self.list {
            d.save(&state)?;
        }
        Ok(())
    }

    /// Reads again what users change while the detectors run (the watchlist).
    pub fn reload(&mut self, store: &dyn StateStore) -> anyhow::Result<()> {
        let state = State {
            store,
            prefix: &self.prefix,
        };
        for d in &mut self.list {
            d.reload(&state)?;
        }
        Ok(())
    }

    /// (detector, live state it dropped to stay bounded), for those that dropped any.
    pub fn forgotten(&self) -> Vec<(&'static str, u64)> {
        self.list
            .iter()
            .map(|d| (d.name(), d.forgotten()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The names of the detectors, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|d| d.name()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_feed_runs_its_detectors_in_the_registrys_order() {
        let names = |p| Detectors::new(p, &Config::default()).names();
        assert_eq!(
            names(Feed::Import),
            [
                "fan_out",
                "slow_scan",
                "decoys",
                "distributed_scan",
                "brute_force_flows",
                "watchlist",
                "geo_unusual_access",
                "new_service",
                "new_internal_device",
                "data_exfiltration",
                "scan_extent",
                "reject_storm",
                "sensor_coverage_gap"
            ]
        );
        assert_eq!(
            names(Feed::SensorEvents),
            ["kernel_scan", "decoys", "brute_force_logins"]
        );
        assert_eq!(
            names(Feed::SensorFlows),
            [
                "distributed_scan",
                "watchlist",
                "geo_unusual_access",
                "new_service",
                "new_internal_device",
                "data_exfiltration",
                "scan_extent"
            ]
        );
        assert_eq!(names(Feed::Coverage), ["sensor_coverage_gap"]);
        for e in REGISTRY {
            let d = (e.make)(&Config::default(), e.feeds[0]);
            assert_eq!(d.name(), e.name, "a detector answers to its registry name");
        }
    }
}
