//! picket-controlplane: the central service (`serve`) and the commands that manage it. One file
//! per subcommand; everything they do is a library call (`controlplane::...`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::info;

mod import;
mod lists;
mod notifiers;
mod sensors;
mod serve;
mod stores;
mod users;

#[derive(Parser)]
#[command(
    name = "picket-controlplane",
    version,
    about = "Picket's control plane: sensor ingest, cloud flow logs, detection, alerts, \
             notifications, REST API and web dashboard, on an embedded store"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the sensor ingest (gRPC), the REST API and the web dashboard (HTTP), and deliver
    /// notifications, on the embedded store in --data-dir (the control state on PostgreSQL
    /// with --state-store). The first start creates the dashboard user `admin` and prints its
    /// password.
    Serve(Box<serve::Args>),
    /// Sensor keys: add (prints the new key once), list, revoke.
    Sensors(sensors::Args),
    /// The watchlist: addresses and networks whose traffic raises a `watchlist_hit` alert
    /// (sensor flows and cloud flow logs). A running `serve` picks changes up within 10 s.
    Watchlist(lists::WatchlistArgs),
    /// The allowlist: sources whose alerts (of one type, or of every type) are not raised, such
    /// as a sanctioned vulnerability scanner. Takes effect at the next alert.
    Allowlist(lists::AllowlistArgs),
    /// How readily alerts are raised, per alert type and per network of their source: off, low
    /// (at twice the detectors' thresholds), medium (the default), high (at half, where the
    /// detector reports that early: the flow-log fan-out). The most specific network wins.
    Sensitivity(lists::SensitivityArgs),
    /// Where alerts are sent: generic webhooks (JSON, HMAC-signed), Slack incoming webhooks,
    /// Webex Teams rooms and syslog (RFC 5424, UDP or TCP, optionally CEF). One message per new
    /// alert and per meaningful change (higher severity; targets reaching 100, 1,000, ...),
    /// queued in the store and delivered by `serve` with retries.
    Notifiers(notifiers::Args),
    /// Dashboard users (argon2-hashed passwords): add, list, passwd, remove. At its first start
    /// `serve` creates `admin` and prints its password once.
    Users(users::UsersArgs),
    /// API tokens for scripts (`Authorization: Bearer TOKEN`): add (prints the token once),
    /// list, revoke.
    Tokens(users::TokensArgs),
    /// Import cloud flow logs into a data dir: AWS VPC / transit-gateway flow logs (default or
    /// custom format with its header line), GCP VPC Flow Logs (Cloud Logging entries as NDJSON
    /// or a JSON array), Azure NSG flow logs v1/v2 and VNet flow logs v4 (the storage account's
    /// JSON blobs). Files may be gzip-compressed (detected); `-` reads standard input. Bad
    /// lines are counted by reason and the import goes on; the summary says what was read,
    /// stored, rejected and skipped.
    Import(import::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PICKET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let r = match cli.cmd {
        Cmd::Serve(a) => serve::run(*a),
        Cmd::Sensors(a) => sensors::run(a),
        Cmd::Watchlist(a) => lists::watchlist(a),
        Cmd::Allowlist(a) => lists::allowlist(a),
        Cmd::Sensitivity(a) => lists::sensitivity(a),
        Cmd::Notifiers(a) => notifiers::run(a),
        Cmd::Users(a) => users::run(a),
        Cmd::Tokens(a) => users::tokens(a),
        Cmd::Import(a) => import::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-controlplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A time for listings: RFC 3339, or `never`.
fn when(ns: Option<i64>) -> String {
    ns.map(controlplane::util::time::rfc3339_text)
        .unwrap_or_else(|| "never".into())
}

/// The first line of a secret file.
fn secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(!line.is_empty(), "{} is empty", path.display());
    Ok(line)
}

/// Opens `--geo-db` (if given) for the whole process, and says so.
fn use_geo_db(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(p) = path {
        let about = controlplane::util::country::use_country_db(p)?;
        info!(file = %p.display(), database = about, "countries come from this MaxMind database first");
    }
    Ok(())
}

/// `--scan-follow-up-hours`, for `serve` and `import`.
#[derive(clap::Args)]
struct FollowUp {
    /// Hours after a scan within which a session that carries data to a port the scan found
    /// open (or to a host it swept) raises its alert to high, as a follow-up (1 to 720).
    #[arg(long, value_name = "HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    scan_follow_up_hours: u32,
}

impl FollowUp {
    fn ns(&self) -> i64 {
        i64::from(self.scan_follow_up_hours) * 3_600_000_000_000
    }
}

/// `--max-file-mb` in bytes, checked.
fn max_file_bytes(mb: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        (1..=1 << 20).contains(&mb),
        "--max-file-mb must be 1 to 1048576 (1 TiB), got {mb}"
    );
    Ok(mb << 20)
}
