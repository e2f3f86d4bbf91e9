//! `picket-controlplane import`: cloud flow-log files through the import pipeline.

use std::path::PathBuf;

use clap::ValueEnum;

#[derive(clap::Args)]
pub struct Args {
    provider: Provider,
    /// Flow log files, or `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The data dir of the store (as given to `serve`); created if missing.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
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
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    use controlplane::{
        cloud::read::{Summary, open_input},
        detect::Config,
        model::Source,
        pipeline::import::Importer,
        store::Stores,
    };
    crate::use_geo_db(a.geo_db.as_deref())?;
    if !(a.sampling_rate > 0.0 && a.sampling_rate <= 1.0) {
        anyhow::bail!("--sampling-rate must be in (0, 1], got {}", a.sampling_rate);
    }
    let stores = Stores::embedded(&a.data_dir)?;
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
    let mut alerts = Vec::new();
    for f in &a.files {
        let input = open_input(f)?;
        let done = importer.import(source, input, &f.display().to_string(), None, &mut sum)?;
        for id in done.alerts {
            if !alerts.contains(&id) {
                alerts.push(id);
            }
        }
    }
    println!("{}: {sum}", sum.provider);
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
