//! The one import pipeline of cloud flow logs, for `import`, the watched directory and any
//! source that comes later. For each input, in this order:
//!
//! 1. read and parse it (`cloud::read`) on a thread of its own, a chunk at a time, with the
//!    detectors of [`Feed::Import`] looking at each chunk there, while the store takes the
//!    previous chunk on the caller's thread (all in one transaction with the file's digest when
//!    it is to be imported exactly once);
//! 2. what the detectors held back at the end of the input (decoy grouping);
//! 3. correlation of the imported records with the sensors' flows, and the coverage gaps among
//!    their internal addresses;
//! 4. the alerts (also when the input failed midway: the detectors remember what they
//!    reported, so a retry does not report it twice), then the detectors' learned state.

use std::{io::BufRead, time::Instant};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    cloud::read::{self, Summary},
    detect::{Config, Detectors, Feed, Input},
    model::{Flow, FlowSink, ImportedFile, Source},
    store::Stores,
    util::time::now_ns,
};

/// Where an import puts its flows, a chunk at a time: the store directly (`import`), or one
/// transaction per file (the watched directory).
pub type Sink<'a> = FlowSink<'a>;

/// How far apart in time a sensor flow and a cloud flow may be and still be linked (clock skew
/// and the cloud's delivery of its aggregation windows).
pub const CORRELATION_TOLERANCE_NS: i64 = 60_000_000_000;

/// Wraps `sink`, noting the range of the flows' end times (to correlate what was imported).
fn tracking<'a>(
    sink: &'a mut Sink<'_>,
    range: &'a mut Option<(i64, i64)>,
) -> impl FnMut(&[Flow]) -> anyhow::Result<()> + 'a {
    move |flows| {
        for f in flows {
            *range = Some(match *range {
                None => (f.end_ns, f.end_ns),
                Some((a, b)) => (a.min(f.end_ns), b.max(f.end_ns)),
            });
        }
        sink(flows)
    }
}

/// Imports one input of `provider`'s format (`sampling_rate`: GCP only) delivered at
/// `delivered_ns`.
pub fn import_input(
    provider: Source,
    input: impl BufRead + Send,
    file: (&str, i64),
    sampling_rate: f64,
    sink: &mut Sink<'_>,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    import_inspecting(provider, input, file, sampling_rate, &mut |_| {}, sink, sum)
}

/// When `f` was delivered: its modification time (now, if the file system cannot say).
pub fn delivered_ns(f: &std::fs::File) -> i64 {
    f.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or_else(now_ns)
}

/// As [`import_input`], with `inspect` (the detectors) run over each chunk before it goes to
/// `sink`. `file`: the input's name (for the log) and when it was delivered.
///
/// Reading, parsing and `inspect` run on a thread of their own while `sink` (the store) takes
/// the previous chunk on this one: the stages overlap on two cores. Chunks move between the
/// threads, not copied, and go back to the parse thread once stored, where their flows are
/// freed and the space filled again. At most three chunks are in memory: the one being
/// filled, the one being stored and one on its way back.
pub fn import_inspecting(
    provider: Source,
    input: impl BufRead + Send,
    (file, delivered_ns): (&str, i64),
    sampling_rate: f64,
    inspect: &mut (dyn FnMut(&[Flow]) + Send),
    sink: &mut Sink<'_>,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    if provider == Source::Sensor {
        anyhow::bail!("sensor flows arrive over gRPC, not as files");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Flow>>(0);
    let (used_tx, used_rx) = std::sync::mpsc::sync_channel::<Vec<Flow>>(1);
    let mut local = std::mem::take(sum);
    let (parsed, stored) = std::thread::scope(|s| {
        let parser = std::thread::Builder::new()
            .name("import-parse".into())
            .spawn_scoped(s, move || {
                let mut send = |flows: Vec<Flow>| -> anyhow::Result<Vec<Flow>> {
                    inspect(&flows);
                    tx.send(flows)
                        .map_err(|_| anyhow::anyhow!("the store stopped taking flows"))?;
                    Ok(match used_rx.try_recv() {
                        Ok(mut used) => {
                            used.clear();
                            used
                        }
                        Err(_) => Vec::with_capacity(read::CHUNK),
                    })
                };
                let r = match provider {
                    Source::Aws => read::read_aws(&mut send, input, file, delivered_ns, &mut local),
                    Source::Gcp => {
                        read::read_gcp(&mut send, input, file, sampling_rate, &mut local)
                    }
                    Source::Azure => read::read_azure(&mut send, input, file, &mut local),
                    Source::Sensor => unreachable!("refused above"),
                };
                (r, local)
            });
        let parser = match parser {
            Ok(p) => p,
            Err(e) => return (Err(e), Ok(())),
        };
        let mut stored = Ok(());
        for flows in rx.iter() {
            if let Err(e) = sink(&flows) {
                stored = Err(e);
                break;
            }
            // Freed on the parse thread (or here, if one is still on its way back).
            let _ = used_tx.try_send(flows);
        }
        // The parser's next send fails and it stops.
        drop(rx);
        let parsed = parser
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (Ok(parsed), stored)
    });
    let (parsed, back) = parsed.context("starting the parse thread")?;
    *sum = back;
    stored?;
    parsed
}

/// SHA-256 of `f` from its start (hex), and its length; `f` is left at its start. A file is
/// imported once by this digest.
pub fn digest(f: &mut std::fs::File) -> anyhow::Result<(String, u64)> {
    use sha2::{Digest as _, Sha256};
    use std::io::{Read as _, Seek as _};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    f.rewind()?;
    Ok((h.finalize().iter().map(|b| format!("{b:02x}")).collect(), n))
}

/// The import pipeline, with its detectors (their state carries from one input to the next).
pub struct Importer {
    stores: Stores,
    detectors: Detectors,
    /// The GCP subnets' flow-log sampling rate (not in the records).
    sampling_rate: f64,
}

/// What the import of one input did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// False when the input was imported before (the same content, under any name): nothing
    /// was stored again.
    pub stored: bool,
    /// The alerts the input's observations went to, each once.
    pub alerts: Vec<i64>,
}

impl Importer {
    /// The pipeline, with what its detectors learned before; `sampling_rate` is the GCP
    /// subnets' (0 < rate <= 1).
    pub fn new(stores: Stores, config: &Config, sampling_rate: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            sampling_rate > 0.0 && sampling_rate <= 1.0,
            "the sampling rate must be in (0, 1], got {sampling_rate}"
        );
        let detectors = Detectors::load(Feed::Import, config, stores.state.as_ref())?;
        Ok(Importer {
            stores,
            detectors,
            sampling_rate,
        })
    }

    /// The GCP subnets' sampling rate of the inputs to come (0 < rate <= 1).
    pub fn set_sampling_rate(&mut self, sampling_rate: f64) -> anyhow::Result<()> {
        anyhow::ensure!(
            sampling_rate > 0.0 && sampling_rate <= 1.0,
            "the sampling rate must be in (0, 1], got {sampling_rate}"
        );
        self.sampling_rate = sampling_rate;
        Ok(())
    }

    /// Imports one input of `provider`'s format called `name`, adding its counts to `sum`.
    /// With `once`, the input is the file it names, imported exactly once by its digest, its
    /// flows and its digest in one transaction.
    pub fn import(
        &mut self,
        provider: Source,
        input: impl BufRead + Send,
        name: &str,
        once: Option<&ImportedFile>,
        sum: &mut Summary,
    ) -> anyhow::Result<Imported> {
        let state = self.stores.state.clone();
        // What users changed since the last input (the watchlist).
        if let Err(e) = self.detectors.reload(state.as_ref()) {
            warn!(error = %format!("{e:#}"), "reading the watchlist failed; the last one read stays");
        }
        let started = Instant::now();
        let before = sum.stored;
        let mut range = None;
        let mut updates = Vec::new();
        let stored = self.store(provider, input, name, once, sum, &mut range, &mut updates);
        updates.extend(self.detectors.flush());
        let secs = started.elapsed().as_secs_f64();
        info!(
            file = name,
            stored = sum.stored - before,
            seconds = format!("{secs:.1}"),
            per_second = ((sum.stored - before) as f64 / secs.max(1e-9)) as u64,
            "records parsed, checked by the detectors and stored"
        );
        let after = match (&stored, range) {
            (Ok(true), Some((a, b))) => self.after(a, b, &mut updates),
            _ => Ok(()),
        };
        // What the detectors found is recorded whatever failed after them.
        let alerts = crate::alerts::record(state.as_ref(), &updates)?;
        self.detectors.save(state.as_ref())?;
        after?;
        Ok(Imported {
            stored: stored?,
            alerts,
        })
    }

    /// Steps 1 and 2: the flows into the store, the detectors' observations into `updates`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the input's description and the three things its import fills"
    )]
    fn store(
        &mut self,
        provider: Source,
        input: impl BufRead + Send,
        name: &str,
        once: Option<&ImportedFile>,
        sum: &mut Summary,
        range: &mut Option<(i64, i64)>,
        updates: &mut Vec<crate::model::AlertUpdate>,
    ) -> anyhow::Result<bool> {
        let (flows, rate) = (self.stores.flows.clone(), self.sampling_rate);
        let detectors = &mut self.detectors;
        let mut inspect = |f: &[Flow]| updates.extend(detectors.observe(&Input::flows(f)));
        let Some(file) = once else {
            let mut put = |f: &[Flow]| flows.insert_flows(f);
            let mut sink = tracking(&mut put, range);
            let what = (name, now_ns());
            import_inspecting(provider, input, what, rate, &mut inspect, &mut sink, sum)?;
            return Ok(true);
        };
        let what = (name, file.delivered_ns);
        let mut input = Some(input);
        let done = flows.import_file_once(file, now_ns(), &mut |sink| {
            let input = input.take().context("the file was read already")?;
            let mut sink = tracking(sink, range);
            import_inspecting(provider, input, what, rate, &mut inspect, &mut sink, sum)?;
            Ok(serde_json::json!({
                "read": sum.read,
                "stored": sum.stored,
                "rejected": sum.rejected,
                "nodata": sum.nodata,
                "skipdata": sum.skipdata,
                "untimed": sum.untimed,
            })
            .to_string())
        })?;
        Ok(done.is_some())
    }

    /// Step 3 over the records that end in [a, b]: links to the sensors' flows, and the
    /// internal addresses among them that no sensor watches.
    fn after(
        &mut self,
        a: i64,
        b: i64,
        updates: &mut Vec<crate::model::AlertUpdate>,
    ) -> anyhow::Result<()> {
        let (flows, state) = (&self.stores.flows, &self.stores.state);
        let t = Instant::now();
        let links = flows.correlate(a, b, CORRELATION_TOLERANCE_NS)?;
        info!(
            links,
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            "linked sensor flows to the imported records"
        );
        let t = Instant::now();
        let gaps: Vec<_> = flows
            .coverage_gaps(a - CORRELATION_TOLERANCE_NS, &state.sensor_addresses()?)?
            .into_iter()
            .filter(|g| g.last_seen_ns >= a)
            .collect();
        let sensors = !state.sensors()?.is_empty();
        updates.extend(self.detectors.observe(&Input::coverage(&gaps, sensors)));
        info!(
            gaps = gaps.len(),
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            "internal addresses no sensor watches"
        );
        Ok(())
    }
}
