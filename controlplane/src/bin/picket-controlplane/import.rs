//! `picket-controlplane import`: cloud flow-log files through the import pipeline.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::ValueEnum;
use tracing::{error, info};

#[derive(clap::Args)]
pub struct Args {
    provider: Provider,
    /// Flow log files, or `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(flatten)]
    bus: crate::stores::BusArgs,
    /// Cluster mode (--bus): how long to wait for each file's import by the replica that
    /// imports, in seconds; 0 hands the files over without waiting.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    wait: u64,
    /// GCP: the subnets' flow-log sampling rate (0 < RATE <= 1), kept with every flow so
    /// that counts and detection thresholds can be scaled.
    #[arg(long, value_name = "RATE", default_value_t = controlplane::cloud::flows::GCP_DEFAULT_SAMPLING)]
    sampling_rate: f64,
    /// Days (data time) the baseline detectors learn an entity before what is new to it is an
    /// alert: geo_unusual_access, new_service, new_internal_device, data_exfiltration.
    #[arg(long, value_name = "DAYS", default_value_t = 36)]
    learning_days: u32,
    #[command(flatten)]
    follow_up: crate::FollowUp,
    /// A MaxMind GeoIP2 or GeoLite2 Country or City database (.mmdb) to take countries from
    /// first (geo_unusual_access, entity pages); addresses it does not cover, and every
    /// address without it, get the registries' country data built into Picket.
    #[arg(long, value_name = "FILE")]
    geo_db: Option<std::path::PathBuf>,
    /// The largest file imported, in MiB once decompressed; a larger one (a gzip bomb...) is
    /// not imported, and the others go on.
    #[arg(long, value_name = "MIB", default_value_t = controlplane::cloud::read::DEFAULT_MAX_FILE_BYTES >> 20)]
    max_file_mb: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
}

/// Standard input copied into an unnamed file in `dir` (at most `max` bytes), so that it is
/// hashed and imported exactly once like any file.
fn spool_stdin(dir: &Path, max: u64) -> anyhow::Result<File> {
    use std::io::{Read as _, Seek as _};
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    // With both stores on servers nothing else makes the data directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".stdin-{}.spool", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    // Unnamed from now on: nothing is left behind, whatever happens.
    std::fs::remove_file(&path)?;
    let copied = std::io::copy(&mut std::io::stdin().lock().take(max + 1), &mut f)
        .context("reading standard input")?;
    if copied > max {
        return Err(anyhow::Error::new(controlplane::cloud::read::InputError(
            format!("standard input: over {} MiB", max >> 20),
        )));
    }
    f.rewind()?;
    Ok(f)
}

/// One input as given (a path, or `-` for standard input): what the logs call it.
fn label(f: &Path) -> String {
    if f.as_os_str() == "-" {
        "standard input".to_string()
    } else {
        f.display().to_string()
    }
}

/// One input opened (standard input spooled to a file under `data_dir`, at most `max` bytes
/// of it), with the name it is recorded under and its digest.
struct Input {
    file: File,
    name: String,
    sha256: String,
    bytes: u64,
    /// Its modification time (standard input's spool: now).
    delivered_ns: i64,
}

fn open_input(f: &Path, label: &str, data_dir: &Path, max: u64) -> anyhow::Result<Input> {
    let stdin = f.as_os_str() == "-";
    let mut file = if stdin {
        spool_stdin(data_dir, max)?
    } else {
        File::open(f).map_err(|e| {
            anyhow::Error::new(controlplane::cloud::read::InputError(format!(
                "cannot open {label:?}: {e}"
            )))
        })?
    };
    let (sha256, bytes) = controlplane::pipeline::import::digest(&mut file)?;
    let name = if stdin {
        "-".into()
    } else {
        f.file_name()
            .map_or_else(|| label.to_string(), |n| n.to_string_lossy().into_owned())
    };
    Ok(Input {
        delivered_ns: controlplane::pipeline::import::delivered_ns(&file),
        file,
        name,
        sha256,
        bytes,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    use controlplane::{
        cloud::read::{Summary, decoding},
        detect::Config,
        model::{ImportedFile, Source},
        pipeline::import::Importer,
    };
    crate::use_geo_db(a.geo_db.as_deref())?;
    if !(a.sampling_rate > 0.0 && a.sampling_rate <= 1.0) {
        anyhow::bail!("--sampling-rate must be in (0, 1], got {}", a.sampling_rate);
    }
    let max = crate::max_file_bytes(a.max_file_mb)?;
    let stores = a.stores.open()?;
    if let Some(bus) = a.bus.config()? {
        return hand_over(&a, &bus, &stores, max);
    }
    let source = match a.provider {
        Provider::Aws => Source::Aws,
        Provider::Gcp => Source::Gcp,
        Provider::Azure => Source::Azure,
    };
    let config = Config {
        learning_ns: a.learning_days as i64 * 86_400_000_000_000,
        follow_up_ns: a.follow_up.ns(),
    };
    let mut importer = Importer::new(stores.clone(), &config, a.sampling_rate)?;
    let mut sum = Summary::default();
    let (mut alerts, mut duplicates, mut failed) = (Vec::new(), 0u64, 0u64);
    for f in &a.files {
        let label = label(f);
        // Each file exactly once, by its content: its flows and its digest in one transaction.
        let mut one = Summary::default();
        let done = (|| {
            let input = open_input(f, &label, &a.stores.data_dir, max)?;
            let record = ImportedFile {
                sha256: input.sha256,
                provider: source,
                name: input.name,
                bytes: input.bytes,
                delivered_ns: input.delivered_ns,
            };
            let input = decoding(Box::new(input.file), max)?;
            importer.import(source, input, &label, Some(&record), &mut one)
        })();
        match done {
            Ok(done) if done.stored => {
                sum.add(&one);
                for id in done.alerts {
                    if !alerts.contains(&id) {
                        alerts.push(id);
                    }
                }
            }
            Ok(_) => {
                duplicates += 1;
                info!(file = ?label, "already imported (same content): not imported again");
            }
            Err(e) => {
                failed += 1;
                error!(file = ?label, error = ?format!("{e:#}"), "not imported (nothing of it was stored)");
            }
        }
    }
    if sum.provider.is_empty() {
        sum.provider = a.provider.name();
    }
    print!("{}: {sum}", sum.provider);
    if duplicates > 0 {
        print!("; {duplicates} file(s) imported before (same content), not again");
    }
    println!();
    print_alerts(&stores, &alerts)?;
    if failed > 0 {
        anyhow::bail!("{failed} file(s) not imported (see above); the others were");
    }
    if sum.stored == 0 && sum.rejected_total() > 0 {
        anyhow::bail!(
            "no record could be imported: is this a {} flow log?",
            a.provider.describe()
        );
    }
    Ok(())
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Provider::Aws => "AWS VPC",
            Provider::Gcp => "GCP VPC",
            Provider::Azure => "Azure NSG or VNet",
        }
    }
}

fn print_alerts(stores: &controlplane::store::Stores, alerts: &[i64]) -> anyhow::Result<()> {
    for &id in alerts {
        if let Some(a) = stores.state.alert(id)? {
            println!(
                "alert #{id}: {} {} from {} against {}",
                a.severity,
                a.kind,
                a.source,
                a.targets.join(", ")
            );
        }
    }
    Ok(())
}

/// Cluster mode: each file handed to the replicas through the bus, and (unless `--wait 0`)
/// what the replica that imported it says, file by file.
fn hand_over(
    a: &Args,
    bus: &controlplane::serve::BusConfig,
    stores: &controlplane::store::Stores,
    max: u64,
) -> anyhow::Result<()> {
    use controlplane::pipeline::import_jobs::{Job, hand_over, hand_over_and_wait};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bus = rt.block_on(controlplane::bus::Bus::connect(
        &bus.url,
        bus.password.as_deref(),
        controlplane::detect::partition::PARTITIONS,
    ))?;
    let from = format!(
        "import@{}",
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "?".into())
    );
    let (mut alerts, mut failed, mut stored, mut rejected) = (Vec::new(), 0u64, 0u64, 0u64);
    for f in &a.files {
        let label = label(f);
        let outcome = (|| {
            let Input {
                file,
                name,
                sha256,
                bytes,
                delivered_ns,
            } = open_input(f, &label, &a.stores.data_dir, max)?;
            anyhow::ensure!(
                bytes <= max,
                "{label}: {bytes} bytes, over the {} MiB limit (--max-file-mb)",
                max >> 20
            );
            let job = Job {
                provider: a.provider.name().into(),
                name,
                sha256,
                bytes,
                sampling_rate: a.sampling_rate,
                from: from.clone(),
                delivered_ns,
            };
            rt.block_on(async {
                if a.wait == 0 {
                    hand_over(&bus, file, &job, None).await?;
                    return Ok(None);
                }
                info!(file = ?label, "handing it to the cluster, and waiting for its import");
                hand_over_and_wait(&bus, file, &job, Duration::from_secs(a.wait))
                    .await
                    .map(Some)
            })
        })();
        match outcome {
            Ok(None) => println!("{label}: handed to the cluster"),
            Ok(Some(o)) if o.error.is_some() => {
                failed += 1;
                error!(file = ?label, replica = o.replica, error = o.error.unwrap_or_default(), "not imported (nothing of it was stored)");
            }
            Ok(Some(o)) if !o.stored => {
                println!("{label}: imported before (same content), not again");
            }
            Ok(Some(o)) => {
                println!("{label}: {} (imported by {})", o.summary, o.replica);
                stored += o.records_stored;
                rejected += o.records_rejected;
                for id in o.alerts {
                    if !alerts.contains(&id) {
                        alerts.push(id);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                error!(file = ?label, error = ?format!("{e:#}"), "not imported");
            }
        }
    }
    print_alerts(stores, &alerts)?;
    if failed > 0 {
        anyhow::bail!(
            "{failed} file(s) not imported, or not yet within --wait (see above); the others were"
        );
    }
    if stored == 0 && rejected > 0 {
        anyhow::bail!(
            "no record could be imported: is this a {} flow log?",
            a.provider.describe()
        );
    }
    Ok(())
}
