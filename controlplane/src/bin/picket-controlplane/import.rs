//! `picket-controlplane import`: cloud flow-log files through the import pipeline.

use std::{
    fs::File,
    path::{Path, PathBuf},
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
    /// GCP: the subnets' flow-log sampling rate (0 < RATE <= 1), kept with every flow so
    /// that counts and detection thresholds can be scaled.
    #[arg(long, value_name = "RATE", default_value_t = controlplane::cloud::flows::GCP_DEFAULT_SAMPLING)]
    sampling_rate: f64,
    /// Days (data time) the baseline detectors learn an entity before what is new to it is an
    /// alert: geo_unusual_access, new_service, new_internal_device, data_exfiltration.
    #[arg(long, value_name = "DAYS", default_value_t = 36)]
    learning_days: u32,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    use controlplane::{
        cloud::read::{Summary, decoding},
        detect::Config,
        model::{ImportedFile, Source},
        pipeline::import::{Importer, digest},
    };
    crate::use_geo_db(a.geo_db.as_deref())?;
    if !(a.sampling_rate > 0.0 && a.sampling_rate <= 1.0) {
        anyhow::bail!("--sampling-rate must be in (0, 1], got {}", a.sampling_rate);
    }
    let max = crate::max_file_bytes(a.max_file_mb)?;
    let stores = a.stores.open()?;
    let source = match a.provider {
        Provider::Aws => Source::Aws,
        Provider::Gcp => Source::Gcp,
        Provider::Azure => Source::Azure,
    };
    let config = Config {
        learning_ns: a.learning_days as i64 * 86_400_000_000_000,
    };
    let mut importer = Importer::new(stores.clone(), &config, a.sampling_rate)?;
    let mut sum = Summary::default();
    let (mut alerts, mut duplicates, mut failed) = (Vec::new(), 0u64, 0u64);
    for f in &a.files {
        let stdin = f.as_os_str() == "-";
        let label = if stdin {
            "standard input".to_string()
        } else {
            f.display().to_string()
        };
        // Each file exactly once, by its content: its flows and its digest in one transaction.
        let mut one = Summary::default();
        let done = (|| {
            let mut file = if stdin {
                spool_stdin(&a.stores.data_dir, max)?
            } else {
                File::open(f).map_err(|e| {
                    anyhow::Error::new(controlplane::cloud::read::InputError(format!(
                        "cannot open {label:?}: {e}"
                    )))
                })?
            };
            let (sha256, bytes) = digest(&mut file)?;
            let record = ImportedFile {
                sha256,
                provider: source,
                name: if stdin {
                    "-".into()
                } else {
                    f.file_name()
                        .map_or_else(|| label.clone(), |n| n.to_string_lossy().into_owned())
                },
                bytes,
            };
            let input = decoding(Box::new(file), max)?;
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
        sum.provider = match a.provider {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        };
    }
    print!("{}: {sum}", sum.provider);
    if duplicates > 0 {
        print!("; {duplicates} file(s) imported before (same content), not again");
    }
    println!();
    for id in alerts {
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
    if failed > 0 {
        anyhow::bail!("{failed} file(s) not imported (see above); the others were");
    }
    if sum.stored == 0 && sum.rejected_total() > 0 {
        anyhow::bail!(
            "no record could be imported: is this a {} flow log?",
            match a.provider {
                Provider::Aws => "AWS VPC",
                Provider::Gcp => "GCP VPC",
                Provider::Azure => "Azure NSG or VNet",
            }
        );
    }
    Ok(())
}
