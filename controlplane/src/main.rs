//! picket-controlplane: the central service. `serve` takes the sensors' streams (gRPC), imports
//! cloud flow logs from a watched directory, detects, keeps alerts, delivers notifications and
//! serves the REST API and the web dashboard, all on the embedded store; the other commands
//! manage sensors, users, tokens, notifiers and lists, and import flow logs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand, ValueEnum};
use controlplane::{
    ingest::{self, Ingest},
    keys,
    store::{Access as _, SqliteStore, Store},
};
use picket_proto::v1::sensor_ingest_server::SensorIngestServer;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};

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
    /// notifications, on the embedded store in --data-dir. The first start creates the
    /// dashboard user `admin` and prints its password.
    Serve {
        /// Where the embedded store (SQLite, WAL) lives; created if missing.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Address for sensors (gRPC).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
        grpc_listen: SocketAddr,
        /// Address for the web dashboard (/) and the REST API (/api/v1/, see
        /// controlplane/openapi.yaml).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        /// Certificate chain (PEM) for --http-listen: the dashboard and the API over HTTPS (and
        /// session cookies marked Secure).
        #[arg(long, value_name = "FILE", requires = "http_tls_key")]
        http_tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --http-tls-cert.
        #[arg(long, value_name = "FILE", requires = "http_tls_cert")]
        http_tls_key: Option<PathBuf>,
        /// Certificate chain (PEM) for the gRPC listener; with --tls-key, sensors connect with
        /// https://. Without it the ingest is plain text.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// CA (PEM) that client certificates must chain to: mutual TLS, on top of sensor keys.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Import cloud flow log files dropped into DIR/aws, DIR/gcp and DIR/azure, each exactly
        /// once (by content, also across restarts); imported files move to `imported/` there.
        #[arg(long, value_name = "DIR")]
        watch_dir: Option<PathBuf>,
        /// The GCP subnets' flow-log sampling rate, for files of DIR/gcp.
        #[arg(long, value_name = "RATE", default_value_t = controlplane::import::GCP_DEFAULT_SAMPLING)]
        gcp_sampling_rate: f64,
        /// Days raw flows are kept (they stay in the rollups). Counted from the flows' own time:
        /// importing older cloud logs needs a longer period.
        #[arg(long, value_name = "DAYS", default_value_t = 7)]
        retention_raw_days: u32,
        /// Days the 1-minute rollups are kept.
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        retention_1m_days: u32,
        /// Days the 1-hour rollups are kept.
        #[arg(long, value_name = "DAYS", default_value_t = 400)]
        retention_1h_days: u32,
        /// The dashboard's URL as users reach it (e.g. https://picket.example.com): messages
        /// link to their alert there.
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// Days (data time) the baseline detectors learn an entity before what is new to it is an
        /// alert: geo_unusual_access, new_service, new_internal_device, data_exfiltration
        /// (for sensor flows and the watched directory's cloud flow logs).
        #[arg(long, value_name = "DAYS", default_value_t = 36)]
        learning_days: u32,
        /// A MaxMind GeoIP2 or GeoLite2 Country or City database (.mmdb) to take countries from
        /// first (geo_unusual_access, entity pages); addresses it does not cover, and every
        /// address without it, get the registries' country data built into Picket.
        #[arg(long, value_name = "FILE")]
        geo_db: Option<std::path::PathBuf>,
        /// Seconds between maintenance passes: rollups (which the entity views read), retention,
        /// correlation, coverage gaps, snoozes that end.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        maintenance_interval: u64,
        /// Attempts per notification before it counts as failed.
        #[arg(long, value_name = "N", default_value_t = 10)]
        notify_max_attempts: u32,
        /// Wait after a notification's first failed attempt, doubled after each further one (at
        /// most 10 minutes).
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        notify_retry_ms: u64,
    },
    /// Sensor keys: add (prints the new key once), list, revoke.
    Sensors {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: SensorsCmd,
    },
    /// The watchlist: addresses and networks whose traffic raises a `watchlist_hit` alert
    /// (sensor flows and cloud flow logs). A running `serve` picks changes up within 10 s.
    Watchlist {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: WatchlistCmd,
    },
    /// The allowlist: sources whose alerts (of one type, or of every type) are not raised, such
    /// as a sanctioned vulnerability scanner. Takes effect at the next alert.
    Allowlist {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: AllowlistCmd,
    },
    /// How readily alerts are raised, per alert type and per network of their source: off, low
    /// (at twice the detectors' thresholds), medium (the default), high (at half, where the
    /// detector reports that early: the flow-log fan-out). The most specific network wins.
    Sensitivity {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: SensitivityCmd,
    },
    /// Where alerts are sent: generic webhooks (JSON, HMAC-signed), Slack incoming webhooks,
    /// Webex Teams rooms and syslog (RFC 5424, UDP or TCP, optionally CEF). One message per new
    /// alert and per meaningful change (higher severity; targets reaching 100, 1,000, ...),
    /// queued in the store and delivered by `serve` with retries.
    Notifiers {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: NotifiersCmd,
    },
    /// Dashboard users (argon2-hashed passwords): add, list, passwd, remove. At its first start
    /// `serve` creates `admin` and prints its password once.
    Users {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// API tokens for scripts (`Authorization: Bearer TOKEN`): add (prints the token once),
    /// list, revoke.
    Tokens {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// Import cloud flow logs into a data dir: AWS VPC / transit-gateway flow logs (default or
    /// custom format with its header line), GCP VPC Flow Logs (Cloud Logging entries as NDJSON
    /// or a JSON array), Azure NSG flow logs v1/v2 and VNet flow logs v4 (the storage account's
    /// JSON blobs). Files may be gzip-compressed (detected); `-` reads standard input. Bad
    /// lines are counted by reason and the import goes on; the summary says what was read,
    /// stored, rejected and skipped.
    Import {
        provider: Provider,
        /// Flow log files, or `-` for standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The data dir of the store (as given to `serve`); created if missing.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// GCP: the subnets' flow-log sampling rate (0 < RATE <= 1), kept with every flow so
        /// that counts and detection thresholds can be scaled.
        #[arg(long, value_name = "RATE", default_value_t = controlplane::import::GCP_DEFAULT_SAMPLING)]
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
    },
}

#[derive(Subcommand)]
enum SensitivityCmd {
    /// Set the level for a network (or all) and an alert type (or all).
    Set {
        /// off, low, medium or high.
        level: String,
        /// An address or CIDR network of the alerts' sources; `*` for every source.
        #[arg(long, default_value = "*")]
        network: String,
        /// An alert type (port_scan, address_sweep, brute_force, ...); `*` for every type.
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
    },
    /// The settings, one per line: network, alert type, level.
    List,
    /// Remove a setting (back to medium, or to a less specific setting).
    Remove {
        #[arg(long, default_value = "*")]
        network: String,
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a user; prints a generated password unless --password-file gives one.
    Add {
        name: String,
        /// viewer (reads) or admin (also triages alerts and changes settings).
        #[arg(long, default_value = "viewer", value_parser = role)]
        role: controlplane::model::Role,
        /// A file holding the password (its first line; at least 10 characters).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Users with their role and last login.
    List,
    /// Set a new password (generated and printed unless --password-file); ends their sessions.
    Passwd {
        name: String,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove a user and end their sessions.
    Remove { name: String },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token and print it (shown only now; only a hash is stored).
    Add {
        name: String,
        #[arg(long, default_value = "viewer", value_parser = role)]
        role: controlplane::model::Role,
    },
    /// Tokens with their role and last use.
    List,
    /// Revoke a token: its next call is refused.
    Revoke { name: String },
}

fn role(s: &str) -> Result<controlplane::model::Role, String> {
    controlplane::model::Role::parse(s).ok_or_else(|| format!("`{s}` is not one of viewer, admin"))
}

#[derive(Subcommand)]
enum NotifiersCmd {
    /// Add a notifier (takes effect at the next alert, also in a running `serve`).
    Add {
        /// A name for it (letters, digits, `-`, `_`).
        name: String,
        /// Alerts below this severity are not sent: low, medium, high, critical.
        #[arg(long, value_name = "SEVERITY", default_value = "low", value_parser = severity)]
        min_severity: controlplane::model::Severity,
        #[command(subcommand)]
        target: TargetArgs,
    },
    /// The notifiers, with what was delivered, is pending and failed.
    List,
    /// Remove a notifier; its undelivered messages are dropped (and counted).
    Remove { name: String },
    /// Send a sample alert to a notifier now and say what happened.
    Test { name: String },
}

#[derive(Subcommand)]
enum TargetArgs {
    /// A generic webhook: POSTs the alert as JSON. With a secret, the header
    /// X-Picket-Signature-256 is `sha256=` and the hex HMAC-SHA256 of the body.
    Webhook {
        #[arg(long)]
        url: String,
        /// A file holding the signing secret (its first line).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// A Slack incoming webhook (https://hooks.slack.com/services/...).
    Slack {
        #[arg(long)]
        url: String,
    },
    /// A Webex Teams room: messages API with a bot token, markdown.
    Webex {
        /// The room's id.
        #[arg(long, value_name = "ROOM_ID")]
        room: String,
        /// A file holding the bot's access token (its first line).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The API's base URL.
        #[arg(long, value_name = "URL", default_value = controlplane::notify::WEBEX_API)]
        api_url: String,
    },
    /// A syslog receiver: RFC 5424, over UDP (default) or TCP (octet-counted frames).
    Syslog {
        /// HOST:PORT of the receiver.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Facility: a name (auth, authpriv, local0..local7, ...) or 0-23.
        #[arg(long, default_value = "auth", value_parser = facility)]
        facility: u8,
        /// The message in ArcSight CEF instead of plain text.
        #[arg(long)]
        cef: bool,
    },
}

fn severity(s: &str) -> Result<controlplane::model::Severity, String> {
    controlplane::model::Severity::parse(s)
        .ok_or_else(|| format!("`{s}` is not one of low, medium, high, critical"))
}

fn facility(s: &str) -> Result<u8, String> {
    controlplane::notify::facility(s)
        .ok_or_else(|| format!("`{s}` is not a syslog facility (auth, local0..local7, or 0-23)"))
}

#[derive(Subcommand)]
enum AllowlistCmd {
    /// Allow a source address or network.
    Add {
        #[arg(value_name = "ADDRESS_OR_CIDR")]
        entry: String,
        /// Only alerts of this type (port_scan, address_sweep, brute_force, ...); default all.
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
        /// Why it is allowed.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The entries, one per line: network, alert type, label.
    List,
    /// Remove an entry.
    Remove {
        #[arg(value_name = "ADDRESS_OR_CIDR")]
        entry: String,
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
    },
}

#[derive(Subcommand)]
enum WatchlistCmd {
    /// Add addresses or CIDR networks (a label says why they are listed).
    Add {
        #[arg(required = true, value_name = "ADDRESS_OR_CIDR")]
        entries: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Add the entries of a feed file: one address or CIDR per line, optionally followed by a
    /// label; `#` starts a comment. Lines that are not entries are reported with their number,
    /// and the others are added.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The entries, one per line: network, label.
    List,
    /// Remove an entry (as `list` shows it).
    Remove {
        #[arg(value_name = "ADDRESS_OR_CIDR")]
        entry: String,
    },
}

#[derive(Subcommand)]
enum SensorsCmd {
    /// Create a sensor and print its key (shown only now; only a hash is stored).
    Add { name: String },
    /// Sensors with their registration and last heartbeat.
    List,
    /// Revoke a sensor's key: its next call is refused.
    Revoke { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Provider {
    Aws,
    Gcp,
    Azure,
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
        Cmd::Serve {
            data_dir,
            grpc_listen,
            http_listen,
            http_tls_cert,
            http_tls_key,
            tls_cert,
            tls_key,
            tls_client_ca,
            watch_dir,
            gcp_sampling_rate,
            retention_raw_days,
            retention_1m_days,
            retention_1h_days,
            public_url,
            learning_days,
            geo_db,
            maintenance_interval,
            notify_max_attempts,
            notify_retry_ms,
        } => tls_config(tls_cert, tls_key, tls_client_ca).and_then(|tls| {
            const DAY: i64 = 86_400_000_000_000;
            use_geo_db(geo_db.as_deref())?;
            for (flag, days) in [
                ("--retention-raw-days", retention_raw_days),
                ("--retention-1m-days", retention_1m_days),
                ("--retention-1h-days", retention_1h_days),
            ] {
                if !(1..=36_500).contains(&days) {
                    anyhow::bail!("{flag} must be 1 to 36500 days, got {days}");
                }
            }
            serve(
                data_dir,
                grpc_listen,
                http_listen,
                tls,
                watch_dir.map(|d| (d, gcp_sampling_rate)),
                controlplane::store::Retention {
                    raw_ns: retention_raw_days as i64 * DAY,
                    minute_ns: retention_1m_days as i64 * DAY,
                    hour_ns: retention_1h_days as i64 * DAY,
                },
                Notifying {
                    https: match (&http_tls_cert, &http_tls_key) {
                        (Some(c), Some(k)) => Some(controlplane::https::server_config(c, k)?),
                        _ => None,
                    },
                    maintenance_interval: std::time::Duration::from_secs(maintenance_interval),
                    learning_ns: learning_days as i64 * DAY,
                    public_url,
                    retry: controlplane::notify::Retry {
                        max_attempts: notify_max_attempts,
                        base: std::time::Duration::from_millis(notify_retry_ms),
                    },
                },
            )
        }),
        Cmd::Sensors { data_dir, cmd } => sensors(data_dir, cmd),
        Cmd::Watchlist { data_dir, cmd } => watchlist(data_dir, cmd),
        Cmd::Allowlist { data_dir, cmd } => allowlist(data_dir, cmd),
        Cmd::Notifiers { data_dir, cmd } => notifiers(data_dir, cmd),
        Cmd::Users { data_dir, cmd } => users(data_dir, cmd),
        Cmd::Sensitivity { data_dir, cmd } => sensitivity(data_dir, cmd),
        Cmd::Tokens { data_dir, cmd } => tokens(data_dir, cmd),
        Cmd::Import {
            provider,
            files,
            data_dir,
            sampling_rate,
            learning_days,
            geo_db,
        } => use_geo_db(geo_db.as_deref()).and_then(|()| {
            import(
                provider,
                &data_dir,
                &files,
                sampling_rate,
                learning_days as i64 * 86_400_000_000_000,
            )
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-controlplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn import(
    provider: Provider,
    data_dir: &std::path::Path,
    files: &[PathBuf],
    sampling_rate: f64,
    learning_ns: i64,
) -> anyhow::Result<()> {
    use controlplane::import;
    if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
        anyhow::bail!("--sampling-rate must be in (0, 1], got {sampling_rate}");
    }
    let store = SqliteStore::open(data_dir)?;
    let mut sum = import::Summary::default();
    let source = match provider {
        Provider::Aws => controlplane::model::Source::Aws,
        Provider::Gcp => controlplane::model::Source::Gcp,
        Provider::Azure => controlplane::model::Source::Azure,
    };
    let mut range = None;
    use controlplane::detect::{Config, Detectors, Feed, Input};
    let mut detector = Detectors::load(Feed::Import, &Config { learning_ns }, store.as_ref())?;
    let mut updates = Vec::new();
    let started = std::time::Instant::now();
    for f in files {
        let input = import::open_input(f)?;
        let name = f.display().to_string();
        let mut put = |flows: &[controlplane::model::Flow]| store.insert_flows(flows);
        // The detectors run on the parse thread, beside the store's.
        import::import_inspecting(
            source,
            input,
            &name,
            sampling_rate,
            &mut |flows| updates.extend(detector.observe(&Input::flows(flows))),
            &mut import::tracking(&mut put, &mut range),
            &mut sum,
        )?;
        updates.extend(detector.flush());
    }
    let secs = started.elapsed().as_secs_f64();
    info!(
        stored = sum.stored,
        seconds = format!("{secs:.1}"),
        per_second = (sum.stored as f64 / secs.max(1e-9)) as u64,
        "records parsed, checked by the detectors and stored"
    );
    if let Some((a, b)) = range {
        let t = std::time::Instant::now();
        let links = store.correlate(a, b, import::CORRELATION_TOLERANCE_NS)?;
        info!(
            links,
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            "linked sensor flows to the imported records"
        );
        let t = std::time::Instant::now();
        // Internal addresses of these records that no sensor watches.
        let gaps: Vec<_> = store
            .coverage_gaps(a - import::CORRELATION_TOLERANCE_NS)?
            .into_iter()
            .filter(|g| g.last_seen_ns >= a)
            .collect();
        let sensors = !store.sensors()?.is_empty();
        updates.extend(detector.observe(&Input::coverage(&gaps, sensors)));
        info!(
            gaps = gaps.len(),
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            "internal addresses no sensor watches"
        );
    }
    detector.save(store.as_ref())?;
    let alerts = controlplane::alerts::record(store.as_ref(), &updates)?;
    println!("{}: {sum}", sum.provider);
    for id in alerts {
        if let Some(a) = store.alert(id)? {
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
            match provider {
                Provider::Aws => "AWS VPC",
                Provider::Gcp => "GCP VPC",
                Provider::Azure => "Azure NSG or VNet",
            }
        );
    }
    Ok(())
}

fn sensitivity(data_dir: PathBuf, cmd: SensitivityCmd) -> anyhow::Result<()> {
    use controlplane::model::{check_alert_type, sensitivity_scope};
    let store = SqliteStore::open(&data_dir)?;
    match cmd {
        SensitivityCmd::Set {
            level,
            network,
            alert_type,
        } => {
            let l = controlplane::model::Sensitivity::parse(&level)
                .ok_or_else(|| anyhow::anyhow!("`{level}` is not one of off, low, medium, high"))?;
            let net = sensitivity_scope(&network).map_err(|e| anyhow::anyhow!("--network: {e}"))?;
            check_alert_type(&alert_type).map_err(|e| anyhow::anyhow!("--type: {e}"))?;
            let now = controlplane::util::time::now_ns();
            store.set_sensitivity(&net, &alert_type, l.as_str(), now)?;
            println!("{net} {alert_type}: {}", l.as_str());
        }
        SensitivityCmd::List => {
            for (net, t, level) in store.sensitivities()? {
                println!("{net}\t{t}\t{level}");
            }
        }
        SensitivityCmd::Remove {
            network,
            alert_type,
        } => {
            let net = sensitivity_scope(&network).map_err(|e| anyhow::anyhow!("--network: {e}"))?;
            if !store.remove_sensitivity(&net, &alert_type)? {
                anyhow::bail!("no sensitivity setting for {net} {alert_type}");
            }
            println!("removed {net} {alert_type}");
        }
    }
    Ok(())
}

fn when(ns: Option<i64>) -> String {
    ns.and_then(|t| {
        controlplane::util::time::rfc3339(t)
            .as_str()
            .map(str::to_string)
    })
    .unwrap_or_else(|| "never".into())
}

fn users(data_dir: PathBuf, cmd: UsersCmd) -> anyhow::Result<()> {
    use controlplane::auth::{check_name, hash_password, new_password};
    let store = SqliteStore::open(&data_dir)?;
    let now = controlplane::util::time::now_ns();
    // The given password, or a generated one to print.
    let password = |file: Option<PathBuf>| -> anyhow::Result<(String, bool)> {
        Ok(match file {
            Some(f) => (secret(&f)?, false),
            None => (new_password()?, true),
        })
    };
    match cmd {
        UsersCmd::Add {
            name,
            role,
            password_file,
        } => {
            check_name("user", &name)?;
            let (pw, show) = password(password_file)?;
            store.add_user(&name, &hash_password(&pw)?, role, now)?;
            println!("added {} `{name}`", role.as_str());
            if show {
                println!("password: {pw}");
            }
        }
        UsersCmd::List => {
            for u in store.users()? {
                println!(
                    "{}\t{}\tlast login {}",
                    u.name,
                    u.role.as_str(),
                    when(u.last_login_ns)
                );
            }
        }
        UsersCmd::Passwd {
            name,
            password_file,
        } => {
            let (pw, show) = password(password_file)?;
            if !store.set_password(&name, &hash_password(&pw)?)? {
                anyhow::bail!("there is no user `{name}`");
            }
            println!("new password set for `{name}`; their sessions are ended");
            if show {
                println!("password: {pw}");
            }
        }
        UsersCmd::Remove { name } => {
            if !store.remove_user(&name)? {
                anyhow::bail!("there is no user `{name}`");
            }
            println!("removed `{name}`");
        }
    }
    Ok(())
}

fn tokens(data_dir: PathBuf, cmd: TokensCmd) -> anyhow::Result<()> {
    use controlplane::auth::{check_name, new_token, token_hash};
    let store = SqliteStore::open(&data_dir)?;
    let now = controlplane::util::time::now_ns();
    match cmd {
        TokensCmd::Add { name, role } => {
            check_name("token", &name)?;
            let t = new_token()?;
            store.add_token(&name, &token_hash(&t), role, now)?;
            // Only the token on stdout, for scripts: `TOKEN=$(... tokens add ci)`.
            println!("{t}");
            eprintln!(
                "created {} token `{name}`; it is shown only now",
                role.as_str()
            );
        }
        TokensCmd::List => {
            for t in store.tokens()? {
                println!(
                    "{}\t{}\t{}\tlast used {}",
                    t.name,
                    t.role.as_str(),
                    if t.revoked { "revoked" } else { "active" },
                    when(t.last_used_ns)
                );
            }
        }
        TokensCmd::Revoke { name } => {
            if !store.revoke_token(&name, now)? {
                anyhow::bail!("there is no active token `{name}`");
            }
            println!("revoked `{name}`");
        }
    }
    Ok(())
}

/// The first line of a secret file.
fn secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(!line.is_empty(), "{} is empty", path.display());
    Ok(line)
}

fn notifiers(data_dir: PathBuf, cmd: NotifiersCmd) -> anyhow::Result<()> {
    use controlplane::notify::{self, Notifier, Target, Transport};
    let store = SqliteStore::open(&data_dir)?;
    match cmd {
        NotifiersCmd::Add {
            name,
            min_severity,
            target,
        } => {
            notify::check_name(&name)?;
            let target = match target {
                TargetArgs::Webhook { url, secret_file } => Target::Webhook {
                    url,
                    secret: secret_file.as_deref().map(secret).transpose()?,
                },
                TargetArgs::Slack { url } => Target::Slack { url },
                TargetArgs::Webex {
                    room,
                    token_file,
                    api_url,
                } => Target::Webex {
                    token: secret(&token_file)?,
                    room_id: room,
                    api_url,
                },
                TargetArgs::Syslog {
                    address,
                    tcp,
                    facility,
                    cef,
                } => Target::Syslog {
                    address,
                    transport: if tcp { Transport::Tcp } else { Transport::Udp },
                    facility,
                    cef,
                },
            };
            target.validate()?;
            let n = Notifier {
                name,
                target,
                min_severity,
            };
            let now = controlplane::util::time::now_ns();
            store.add_notifier(&n, now)?;
            println!(
                "added {} notifier `{}`: {}, alerts of severity {} and above",
                n.target.kind(),
                n.name,
                n.target.describe(),
                n.min_severity.as_str()
            );
        }
        NotifiersCmd::List => {
            let counts: std::collections::HashMap<_, _> =
                store.notification_counts()?.into_iter().collect();
            for n in store.notifiers()? {
                let c = counts.get(&n.name).cloned().unwrap_or_default();
                println!(
                    "{}\t{}\t{}\tmin {}\tdelivered {}, pending {}, failed {}",
                    n.name,
                    n.target.kind(),
                    n.target.describe(),
                    n.min_severity.as_str(),
                    c.delivered,
                    c.pending,
                    c.failed
                );
            }
        }
        NotifiersCmd::Remove { name } => match store.remove_notifier(&name)? {
            None => anyhow::bail!("there is no notifier `{name}`"),
            Some(dropped) => {
                println!("removed `{name}`; {dropped} undelivered message(s) dropped with it")
            }
        },
        NotifiersCmd::Test { name } => {
            let n = store
                .notifiers()?
                .into_iter()
                .find(|n| n.name == name)
                .ok_or_else(|| anyhow::anyhow!("there is no notifier `{name}`"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let now = controlplane::util::time::now_ns();
            let sender = notify::Sender::new(None)?;
            rt.block_on(sender.send(
                &n.target,
                &notify::sample_alert(now),
                controlplane::model::Event::Test,
                0,
            ))
            .map_err(|f| anyhow::anyhow!("`{name}` ({}): {}", n.target.describe(), f.message))?;
            println!("sent a test message to `{name}` ({})", n.target.describe());
        }
    }
    Ok(())
}

fn allowlist(data_dir: PathBuf, cmd: AllowlistCmd) -> anyhow::Result<()> {
    use controlplane::util::net::parse_network as watchlist_entry;
    let check_type = |t: &str| -> anyhow::Result<()> {
        controlplane::model::check_alert_type(t).map_err(|e| anyhow::anyhow!("--type: {e}"))
    };
    let store = SqliteStore::open(&data_dir)?;
    match cmd {
        AllowlistCmd::Add {
            entry,
            alert_type,
            label,
        } => {
            check_type(&alert_type)?;
            let cidr = watchlist_entry(&entry)?.to_string();
            let now = controlplane::util::time::now_ns();
            let new = store.add_allowlist(&cidr, &alert_type, &label, now)?;
            println!(
                "{} {cidr} for {}",
                if new { "allowed" } else { "relabelled" },
                if alert_type == "*" {
                    "every alert type"
                } else {
                    &alert_type
                }
            );
        }
        AllowlistCmd::List => {
            for (cidr, t, label) in store.allowlist()? {
                println!("{cidr}\t{t}\t{label}");
            }
        }
        AllowlistCmd::Remove { entry, alert_type } => {
            let cidr = watchlist_entry(&entry)?.to_string();
            if !store.remove_allowlist(&cidr, &alert_type)? {
                anyhow::bail!("{cidr} is not on the allowlist for {alert_type}");
            }
            println!("removed {cidr} ({alert_type})");
        }
    }
    Ok(())
}

fn watchlist(data_dir: PathBuf, cmd: WatchlistCmd) -> anyhow::Result<()> {
    use controlplane::util::net::parse_network as watchlist_entry;
    let store = SqliteStore::open(&data_dir)?;
    let now = controlplane::util::time::now_ns();
    match cmd {
        WatchlistCmd::Add { entries, label } => {
            let parsed = entries
                .iter()
                .map(|e| Ok((watchlist_entry(e)?.to_string(), label.clone())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let new = store.add_watchlist(&parsed, now)?;
            println!("{new} added, {} updated", parsed.len() - new);
        }
        WatchlistCmd::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let (mut entries, mut bad) = (Vec::new(), 0);
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let (entry, label) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                match watchlist_entry(entry) {
                    Ok(net) => entries.push((net.to_string(), label.trim().to_string())),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{}:{}: {e}", file.display(), i + 1);
                    }
                }
            }
            let new = store.add_watchlist(&entries, now)?;
            println!(
                "{new} added, {} updated, {bad} line(s) not entries",
                entries.len() - new
            );
        }
        WatchlistCmd::List => {
            for (cidr, label) in store.watchlist()? {
                println!("{cidr}\t{label}");
            }
        }
        WatchlistCmd::Remove { entry } => {
            let cidr = watchlist_entry(&entry)?.to_string();
            if !store.remove_watchlist(&cidr)? {
                anyhow::bail!("{cidr} is not on the watchlist");
            }
            println!("removed {cidr}");
        }
    }
    Ok(())
}

fn sensors(data_dir: PathBuf, cmd: SensorsCmd) -> anyhow::Result<()> {
    let store = SqliteStore::open(&data_dir)?;
    match cmd {
        SensorsCmd::Add { name } => {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                anyhow::bail!(
                    "a sensor name is 1 to 64 characters of letters, digits, `-`, `_` and `.`"
                );
            }
            let key = keys::new_key()?;
            store.add_sensor(&name, &keys::hash(&key), controlplane::util::time::now_ns())?;
            eprintln!(
                "sensor `{name}` created. Its key follows; it is shown only now. Give it to the \
                 sensor with --sensor-key-file."
            );
            println!("{key}");
        }
        SensorsCmd::List => {
            println!(
                "{:<24} {:<8} {:<20} {:<10} {:<24} last heartbeat",
                "name", "status", "host", "version", "kernel"
            );
            for s in store.sensors()? {
                let last = s
                    .last_heartbeat_unix_ns
                    .map(|ns| {
                        let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                        t.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    })
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{:<24} {:<8} {:<20} {:<10} {:<24} {last}",
                    s.name,
                    if s.revoked { "revoked" } else { "active" },
                    s.hostname.unwrap_or_else(|| "-".into()),
                    s.version.unwrap_or_else(|| "-".into()),
                    s.kernel.unwrap_or_else(|| "-".into()),
                );
            }
        }
        SensorsCmd::Revoke { name } => {
            if !store.revoke_sensor(&name, controlplane::util::time::now_ns())? {
                anyhow::bail!("no active sensor named `{name}`");
            }
            eprintln!("sensor `{name}` revoked: its key is refused from now on");
        }
    }
    Ok(())
}

/// Opens `--geo-db` (if given) for the whole process, and says so.
fn use_geo_db(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(p) = path {
        let about = controlplane::util::country::use_country_db(p)?;
        info!(file = %p.display(), database = about, "countries come from this MaxMind database first");
    }
    Ok(())
}

fn tls_config(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", p.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read("certificate (--tls-cert)", &cert)?,
        read("key (--tls-key)", &key)?,
    ));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(
            "client CA (--tls-client-ca)",
            &ca,
        )?));
    }
    Ok(Some(tls))
}

/// Rollups, retention and correlation of recent flows: every 30 s (correlation over cloud
/// records that ended in the last 2 hours).
const CORRELATE_WINDOW_NS: i64 = 7_200_000_000_000;
/// Cloud flows of the last day are searched for addresses no sensor watches.
const COVERAGE_GAP_WINDOW_NS: i64 = 86_400_000_000_000;

/// How often the watched directory is scanned; a file is imported once it is unchanged over one
/// interval.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// At the first start (no users yet), creates the dashboard user `admin` and prints its
/// password once.
fn first_admin(store: &dyn Store) -> anyhow::Result<()> {
    if !store.users()?.is_empty() {
        return Ok(());
    }
    let pw = controlplane::auth::new_password()?;
    let now = controlplane::util::time::now_ns();
    store.add_user(
        "admin",
        &controlplane::auth::hash_password(&pw)?,
        controlplane::model::Role::Admin,
        now,
    )?;
    // Printed, not logged as a field, so it is plainly visible once; it is never shown again.
    eprintln!(
        "picket-controlplane: first start: created the dashboard user `admin` with password {pw}\n\
         picket-controlplane: it is shown only now; change it with `picket-controlplane users --data-dir DIR passwd admin`"
    );
    Ok(())
}

/// Notification, maintenance and HTTPS settings of `serve`.
struct Notifying {
    https: Option<Arc<rustls::ServerConfig>>,
    maintenance_interval: std::time::Duration,
    /// The baseline detectors' learning period (imports of the watched directory, sensor flows).
    learning_ns: i64,
    public_url: Option<String>,
    retry: controlplane::notify::Retry,
}

fn serve(
    data_dir: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
    tls: Option<ServerTlsConfig>,
    watch: Option<(PathBuf, f64)>,
    retention: controlplane::store::Retention,
    notifying: Notifying,
) -> anyhow::Result<()> {
    let maintenance_interval = notifying.maintenance_interval;
    anyhow::ensure!(
        (1..=100).contains(&notifying.retry.max_attempts),
        "--notify-max-attempts must be 1 to 100"
    );
    anyhow::ensure!(
        (1..=3600).contains(&maintenance_interval.as_secs()),
        "--maintenance-interval must be 1 to 3600 seconds"
    );
    if let Some(u) = &notifying.public_url {
        anyhow::ensure!(
            u.starts_with("http://") || u.starts_with("https://"),
            "--public-url: `{u}` must start with http:// or https://"
        );
    }
    let store: Arc<dyn Store> = SqliteStore::open(&data_dir)?;
    first_admin(store.as_ref())?;
    let api_opts = controlplane::api::Options {
        secure_cookies: notifying.https.is_some()
            || notifying
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
    };
    let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        // Sensor flows that arrive after the cloud's records of the same conversation; rollups
        // and retention.
        let (store, stop) = (store.clone(), stop_watch.clone());
        std::thread::Builder::new()
            .name("maintenance".into())
            .spawn(move || {
                let mut gaps = controlplane::detect::Detectors::new(
                    controlplane::detect::Feed::Coverage,
                    &controlplane::detect::Config::default(),
                );
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = controlplane::util::time::now_ns();
                    match store.maintain(now, &retention) {
                        Ok(m) if m.deleted_raw + m.deleted_minutes + m.deleted_hours > 0 => info!(
                            rolled_up = m.rolled_up,
                            deleted_raw = m.deleted_raw,
                            deleted_1m = m.deleted_minutes,
                            deleted_1h = m.deleted_hours,
                            "rollups and retention"
                        ),
                        Ok(m) => tracing::debug!(rolled_up = m.rolled_up, "rollups"),
                        Err(e) => warn!(error = %format!("{e:#}"), "rollups and retention failed"),
                    }
                    match store.wake_snoozed(now) {
                        Ok(0) => {}
                        Ok(n) => info!(alerts = n, "snoozed alerts are open again"),
                        Err(e) => warn!(error = %format!("{e:#}"), "waking snoozed alerts failed"),
                    }
                    match store.correlate(
                        now - CORRELATE_WINDOW_NS,
                        now,
                        controlplane::import::CORRELATION_TOLERANCE_NS,
                    ) {
                        Ok(0) => {}
                        Ok(links) => info!(links, "linked sensor flows to cloud flow log records"),
                        Err(e) => warn!(error = %format!("{e:#}"), "correlation failed"),
                    }
                    match store.coverage_gaps(now - COVERAGE_GAP_WINDOW_NS) {
                        Ok(g) => {
                            let sensors = store.sensors().is_ok_and(|s| !s.is_empty());
                            let updates =
                                gaps.observe(&controlplane::detect::Input::coverage(&g, sensors));
                            if let Err(e) = controlplane::alerts::record(store.as_ref(), &updates) {
                                warn!(error = %format!("{e:#}"), "coverage gap alerts failed");
                            }
                        }
                        Err(e) => warn!(error = %format!("{e:#}"), "coverage gaps failed"),
                    }
                    // Sleeps in short steps, so that a stop does not wait a whole interval.
                    let t0 = std::time::Instant::now();
                    while t0.elapsed() < maintenance_interval
                        && !stop.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                }
            })?;
    }
    let learning_ns = notifying.learning_ns;
    if let Some((dir, rate)) = watch {
        if !(rate > 0.0 && rate <= 1.0) {
            anyhow::bail!("--gcp-sampling-rate must be in (0, 1], got {rate}");
        }
        let mut w = controlplane::watch::Watcher::new(&dir, rate)?;
        w.learning_ns = learning_ns;
        info!(dir = %dir.display(), "watching for cloud flow log files in aws/, gcp/ and azure/");
        let (store, stop) = (store.clone(), stop_watch.clone());
        std::thread::Builder::new()
            .name("watch-dir".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = controlplane::util::time::now_ns();
                    w.scan(store.as_ref(), now);
                    std::thread::sleep(WATCH_INTERVAL);
                }
            })?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(grpc)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {grpc} (--grpc-listen): {e}"))?;
        let http_listener = tokio::net::TcpListener::bind(http)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {http} (--http-listen): {e}"))?;
        info!(
            http = %http_listener.local_addr()?,
            https = notifying.https.is_some(),
            "web dashboard on /, REST API on /api/v1/"
        );
        if notifying.https.is_none() && !http.ip().is_loopback() {
            warn!(
                "the dashboard and the API are plain HTTP on a non-loopback address (no \
                 --http-tls-cert): passwords and sessions travel in clear unless a TLS proxy \
                 is in front"
            );
        }
        let (stop_http, mut http_stop) = tokio::sync::watch::channel(false);
        let notifier = tokio::spawn(
            controlplane::notify::Dispatcher {
                store: store.clone(),
                sender: controlplane::notify::Sender::new(notifying.public_url)?,
                retry: notifying.retry,
            }
            .run(stop_http.subscribe()),
        );
        let router = controlplane::api::router(store.clone(), api_opts);
        let shutdown_http = async move {
            let _ = http_stop.changed().await;
        };
        let api = match notifying.https.clone() {
            Some(cfg) => tokio::spawn(
                axum::serve(
                    controlplane::https::TlsListener::new(http_listener, cfg)?,
                    router,
                )
                .with_graceful_shutdown(shutdown_http)
                .into_future(),
            ),
            None => tokio::spawn(
                axum::serve(http_listener, router)
                    .with_graceful_shutdown(shutdown_http)
                    .into_future(),
            ),
        };
        info!(
            grpc = %listener.local_addr()?,
            tls = tls.is_some(),
            data_dir = %data_dir.display(),
            "control plane serving sensor ingest"
        );
        if tls.is_none() {
            warn!("the sensor ingest is plain text (no --tls-cert): sensor keys travel in clear");
        }
        let sensor_ingest = Ingest::new(store, learning_ns);
        let baselines_saved = sensor_ingest.finished();
        let svc = SensorIngestServer::new(sensor_ingest)
            .max_decoding_message_size(ingest::MAX_MESSAGE_BYTES);
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            info!("stopping");
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
        }
        builder
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await?;
        let _ = stop_http.send(true);
        let _ = notifier.await;
        // An import cut short rolls back whole: the file is imported at the next start.
        stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
        api.await??;
        // What the sensor baselines learned since their last save is saved as the ingest ends.
        if let Some(saved) = baselines_saved {
            let waited = tokio::task::spawn_blocking(move || {
                saved.recv_timeout(std::time::Duration::from_secs(10))
            })
            .await;
            if !matches!(waited, Ok(Ok(()))) {
                warn!("the sensor baselines were not saved at the stop; the last 30 s of learning may be relearned");
            }
        }
        Ok(())
    })
}
