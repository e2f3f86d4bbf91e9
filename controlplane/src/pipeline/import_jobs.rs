//! Cluster mode's cloud flow-log imports: a file handed to the cluster (by `picket-controlplane
//! import`, or a replica's watched directory) is stored in the bus's object bucket
//! (`bus::FILES`, named by its SHA-256) with a [`Job`] on the imports stream. One replica at a
//! time, the holder of the lease [`LEASE`], takes the jobs in order and imports each file
//! through the same import pipeline as a single control plane ([`Importer`]): the same
//! parsers and bad-line accounting, the same exactly-once by the file's digest, and one set of
//! import detectors for the whole cluster, whose state is saved after each file. What the
//! import did goes back to whoever waits for it ([`Outcome`], on the job's reply subject).
//!
//! A holder that dies in the middle leaves the job unacknowledged: after the bus's ack wait
//! (`bus::IMPORT_ACK_WAIT`; a live importer says it is still at work every
//! `bus::IMPORT_PROGRESS`), the next holder takes it and imports the file again, and the flow
//! store's digest makes that exactly once (a half-written import on ClickHouse is taken away
//! first).

use std::{
    io::{Read, Seek as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::import::{Importer, digest};
use crate::{
    bus::{self, Bus, Delivery},
    cloud::read::{InputError, Summary, decoding},
    detect::Config,
    model::{ImportedFile, Source},
    store::{Held, Stores},
    util::time::now_ns,
};

/// The lease of the replica that imports.
pub const LEASE: &str = "imports";
/// How long a holder that stopped renewing the lease (it died) keeps the others waiting.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// A file to import, as the imports stream carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// "aws", "gcp" or "azure".
    pub provider: String,
    /// The file's name where it was handed over (for the log and the import's record).
    pub name: String,
    /// SHA-256 of its bytes (hex): the name of its object in the bucket, and its identity.
    pub sha256: String,
    pub bytes: u64,
    /// GCP: the subnets' sampling rate the records stand for.
    pub sampling_rate: f64,
    /// Who handed it over (for the log).
    pub from: String,
    /// When the file was delivered (Unix ns; 0 from a release that did not say: the time of
    /// its import then).
    #[serde(default)]
    pub delivered_ns: i64,
}

/// What the import of a job did, sent to the job's reply subject.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// False when the file was imported before (the same content): nothing stored again.
    pub stored: bool,
    /// The import's summary line ("read N, stored M, rejected ...").
    pub summary: String,
    pub records_stored: u64,
    pub records_rejected: u64,
    /// The alerts the file's observations went to.
    pub alerts: Vec<i64>,
    /// Why it was not imported (nothing of it stored), if it was not.
    pub error: Option<String>,
    /// The replica that imported it.
    pub replica: String,
}

fn provider(name: &str) -> Option<Source> {
    match name {
        "aws" => Some(Source::Aws),
        "gcp" => Some(Source::Gcp),
        "azure" => Some(Source::Azure),
        _ => None,
    }
}

/// Hands `file` (whose digest and size `job` has) to the cluster: its bytes into the bucket,
/// then the job on the imports stream, with `reply` as where its outcome goes. Returns once the
/// bus stored both.
pub async fn hand_over(
    bus: &Bus,
    file: std::fs::File,
    job: &Job,
    reply: Option<&str>,
) -> anyhow::Result<()> {
    anyhow::ensure!(provider(&job.provider).is_some(), "unknown provider");
    let mut file = tokio::fs::File::from_std(file);
    let size = bus.put_file(&job.sha256, &mut file).await?;
    anyhow::ensure!(
        size == job.bytes,
        "the bus stored {size} bytes of {} ({} bytes): the file changed while it was read",
        job.name,
        job.bytes
    );
    let headers: Vec<(&'static str, &str)> = reply
        .map(|r| vec![(bus::REPLY_HEADER, r)])
        .unwrap_or_default();
    // No message id: handing the same file over twice makes two jobs, and the second is
    // answered "imported before" by the flow store's digest, as a single control plane would.
    let stored = bus
        .publish(
            bus::IMPORTS_SUBJECT,
            "",
            &headers,
            serde_json::to_vec(job)?.into(),
        )
        .await?;
    stored.await?;
    Ok(())
}

/// [`hand_over`] with a reply subject of its own, then the outcome, once the replica that
/// imports says it; an error if it does not within `wait`.
pub async fn hand_over_and_wait(
    bus: &Bus,
    file: std::fs::File,
    job: &Job,
    wait: Duration,
) -> anyhow::Result<Outcome> {
    use futures_util::StreamExt as _;
    let (inbox, mut replies) = bus.inbox().await?;
    hand_over(bus, file, job, Some(&inbox)).await?;
    match tokio::time::timeout(wait, replies.next()).await {
        Ok(Some(m)) => Ok(serde_json::from_slice(&m.payload)?),
        _ => anyhow::bail!(
            "{}: handed to the cluster, but not imported within {} s",
            job.name,
            wait.as_secs()
        ),
    }
}

/// A reader that fails: the input of a job whose file is no longer in the bucket. The flow
/// store answers "imported before" without reading it when the digest is known.
struct Gone;

impl Read for Gone {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(
            "the file is no longer on the bus (handed over again after its import?)",
        ))
    }
}

/// The import worker of a replica: runs until `stop` is set, importing the jobs while it holds
/// the imports' lease. Blocking: on a thread of its own; bus calls go through `rt`. Files are
/// copied into `work_dir` (unnamed) while they are imported; none larger than `max_bytes`
/// (compressed or not) is.
pub struct Worker {
    pub bus: Bus,
    pub stores: Stores,
    pub config: Config,
    pub replica: String,
    pub rt: tokio::runtime::Handle,
    pub stop: Arc<AtomicBool>,
    pub work_dir: PathBuf,
    pub max_bytes: u64,
}

impl Worker {
    pub fn run(self) {
        let lease = Held::new(LEASE, &self.replica, LEASE_TTL);
        let state = self.stores.state.clone();
        let mut importer: Option<Importer> = None;
        let mut consumer = None;
        while !self.stop.load(Ordering::Relaxed) {
            let held = lease.hold(state.as_ref(), now_ns()).unwrap_or_else(|e| {
                warn!(error = %format!("{e:#}"), "the imports' lease could not be renewed");
                lease.until_ns() > now_ns()
            });
            if !held {
                if importer.take().is_some() {
                    warn!(
                        replica = self.replica,
                        "lost the imports' lease; another replica imports now"
                    );
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if importer.is_none() {
                match Importer::new(self.stores.clone(), &self.config, 1.0) {
                    Ok(i) => {
                        info!(
                            replica = self.replica,
                            "this replica imports the cloud flow logs handed to the cluster (imports' lease held)"
                        );
                        importer = Some(i);
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "loading the import detectors' state failed (retried)");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            if consumer.is_none() {
                match self.rt.block_on(self.bus.importers()) {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "the bus's importers' consumer is not there (retried)");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let (Some(c), Some(imp)) = (&consumer, importer.take()) else {
                continue;
            };
            match self.rt.block_on(c.fetch(1, Duration::from_secs(1))) {
                Ok(jobs) => {
                    let mut imp = imp;
                    for d in jobs {
                        imp = self.job(imp, &d);
                    }
                    importer = Some(imp);
                }
                Err(e) => {
                    importer = Some(imp);
                    warn!(error = %format!("{e:#}"), "taking import jobs from the bus failed (retried)");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        if importer.is_some()
            && let Err(e) = lease.release(state.as_ref())
        {
            warn!(error = %format!("{e:#}"), "giving up the imports' lease failed; it expires");
        }
    }

    /// One job: the file copied out of the bucket, imported, its outcome sent back, the job
    /// acknowledged. An import that failed for a reason that may pass (a store away) is handed
    /// back to the bus to be tried again; one that cannot succeed (the input is not a flow
    /// log, too large, changed) is answered and dropped.
    fn job(&self, importer: Importer, d: &Delivery) -> Importer {
        let job: Job = match serde_json::from_slice(d.payload()) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "a message on the imports stream is not a job: rejected");
                let _ = self.rt.block_on(d.reject());
                return importer;
            }
        };
        let reply = d.header(bus::REPLY_HEADER).map(str::to_string);
        let (importer, result) = self.import(importer, &job, d);
        let outcome = match result {
            Ok(o) => o,
            Err(e) if e.downcast_ref::<InputError>().is_none() => {
                warn!(file = job.name, error = %format!("{e:#}"), "an import failed; the bus gives it again in 10 s");
                let _ = self.rt.block_on(d.retry_after(Duration::from_secs(10)));
                return importer;
            }
            Err(e) => Outcome {
                error: Some(format!("{e:#}")),
                replica: self.replica.clone(),
                ..Default::default()
            },
        };
        if let Some(to) = reply
            && let Err(e) = self.rt.block_on(
                self.bus
                    .reply(&to, serde_json::to_vec(&outcome).unwrap_or_default().into()),
            )
        {
            warn!(error = %format!("{e:#}"), "the outcome of an import could not be sent back");
        }
        if let Err(e) = self.rt.block_on(d.ack()) {
            warn!(error = %format!("{e:#}"), "an import job's ack did not reach the bus; it comes again, and is answered as imported before");
        }
        if let Err(e) = self.rt.block_on(self.bus.delete_file(&job.sha256)) {
            warn!(error = %format!("{e:#}"), "an imported file could not be deleted from the bus");
        }
        importer
    }

    /// Imports the job's file with `importer` (given back whatever happens), saying to the bus
    /// that it is at work while it lasts.
    fn import(
        &self,
        mut importer: Importer,
        job: &Job,
        d: &Delivery,
    ) -> (Importer, anyhow::Result<Outcome>) {
        let Some(source) = provider(&job.provider) else {
            let e = InputError(format!("unknown provider {:?}", job.provider));
            return (importer, Err(e.into()));
        };
        let file = match self.fetch(job) {
            Ok(f) => f,
            Err(e) => return (importer, Err(e)),
        };
        let record = ImportedFile {
            sha256: job.sha256.clone(),
            provider: source,
            name: job.name.clone(),
            bytes: job.bytes,
            delivered_ns: if job.delivered_ns > 0 {
                job.delivered_ns
            } else {
                crate::util::time::now_ns()
            },
        };
        let (max, replica) = (self.max_bytes, self.replica.clone());
        let name = format!("{} (from {})", job.name, job.from);
        let rate = job.sampling_rate;
        let work = move || {
            let mut sum = Summary::default();
            let input: Box<dyn Read + Send> = match file {
                Some(f) => Box::new(f),
                None => Box::new(Gone),
            };
            let done = importer.set_sampling_rate(rate).and_then(|_| {
                let input = decoding(input, max)?;
                importer.import(source, input, &name, Some(&record), &mut sum)
            });
            let outcome = done.map(|d| Outcome {
                stored: d.stored,
                summary: sum.to_string(),
                records_stored: sum.stored,
                records_rejected: sum.rejected_total(),
                alerts: d.alerts,
                error: None,
                replica,
            });
            (importer, outcome)
        };
        self.rt.block_on(async {
            let mut task = tokio::task::spawn_blocking(work);
            loop {
                tokio::select! {
                    done = &mut task => break done.expect("the import's thread"),
                    _ = tokio::time::sleep(bus::IMPORT_PROGRESS) => {
                        if let Err(e) = d.in_progress().await {
                            warn!(error = %format!("{e:#}"), "telling the bus an import is at work failed");
                        }
                    }
                }
            }
        })
    }

    /// The job's file, copied out of the bucket into an unnamed file of the work directory
    /// and checked against its digest; None if the bucket no longer has it.
    fn fetch(&self, job: &Job) -> anyhow::Result<Option<std::fs::File>> {
        let Some(mut f) = self.rt.block_on(async {
            let Some((size, mut object)) = self.bus.get_file(&job.sha256).await? else {
                return Ok::<_, anyhow::Error>(None);
            };
            if size > self.max_bytes {
                return Err(InputError(format!(
                    "{}: {size} bytes, over the {} MiB limit",
                    job.name,
                    self.max_bytes >> 20
                ))
                .into());
            }
            let f = unnamed(&self.work_dir)?;
            let mut out = tokio::fs::File::from_std(f);
            tokio::io::copy(&mut object, &mut out).await?;
            Ok(Some(out.into_std().await))
        })?
        else {
            return Ok(None);
        };
        f.rewind()?;
        let (sha256, bytes) = digest(&mut f)?;
        if sha256 != job.sha256 || bytes != job.bytes {
            return Err(InputError(format!(
                "{}: the bus gave {bytes} bytes with SHA-256 {sha256}, not the {} bytes handed over",
                job.name, job.bytes
            ))
            .into());
        }
        Ok(Some(f))
    }
}

/// A new file in `dir` that has no name (nothing is left behind, whatever happens).
fn unnamed(dir: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::tempfile_in(dir).with_context(|| format!("making a file in {}", dir.display()))
}
