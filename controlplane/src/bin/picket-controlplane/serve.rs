//! `picket-controlplane serve`: the flags, checked, into `controlplane::serve`.

use std::{net::SocketAddr, path::PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use controlplane::listen::Caps;

use crate::use_geo_db;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(flatten)]
    bus: crate::stores::BusArgs,
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
    /// The largest file imported from --watch-dir, in MiB once decompressed; a larger one
    /// (a gzip bomb...) moves to `failed/` unimported.
    #[arg(long, value_name = "MIB", default_value_t = controlplane::cloud::read::DEFAULT_MAX_FILE_BYTES >> 20)]
    max_file_mb: u64,
    /// The GCP subnets' flow-log sampling rate, for files of DIR/gcp.
    #[arg(long, value_name = "RATE", default_value_t = controlplane::cloud::flows::GCP_DEFAULT_SAMPLING)]
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
    #[command(flatten)]
    follow_up: crate::FollowUp,
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
    /// Notifications go only to these networks (address or CIDR, repeatable): a notifier
    /// whose URL or syslog address resolves elsewhere is refused. Without it, anywhere.
    #[arg(long, value_name = "NET")]
    notify_allow: Vec<String>,
    /// Seconds a client may stay silent: an HTTP connection waiting for a request's head (also
    /// between keep-alive requests) or a request's body, a sensor's connection not answering
    /// the control plane's pings. Then it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    idle_timeout: u64,
    /// Open HTTP connections allowed in all (dashboard and API); fitted under the limit of
    /// open files.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    http_max_connections: usize,
    /// Open HTTP connections allowed from one client address (an IPv6 client is its /64).
    #[arg(long, value_name = "N", default_value_t = 64)]
    http_max_per_address: usize,
    /// Open sensor (gRPC) connections allowed in all; fitted under the limit of open files.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    grpc_max_connections: usize,
    /// Open sensor connections allowed from one address: sensors behind one NAT share it.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    grpc_max_per_address: usize,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    const DAY: i64 = 86_400_000_000_000;
    let grpc_tls = tls_config(a.tls_cert, a.tls_key, a.tls_client_ca)?;
    use_geo_db(a.geo_db.as_deref())?;
    for (flag, days) in [
        ("--retention-raw-days", a.retention_raw_days),
        ("--retention-1m-days", a.retention_1m_days),
        ("--retention-1h-days", a.retention_1h_days),
    ] {
        if !(1..=36_500).contains(&days) {
            anyhow::bail!("{flag} must be 1 to 36500 days, got {days}");
        }
    }
    let https = match (&a.http_tls_cert, &a.http_tls_key) {
        (Some(c), Some(k)) => Some(controlplane::listen::server_config(c, k)?),
        _ => None,
    };
    let bus = a.bus.config()?;
    controlplane::serve::run(controlplane::serve::Config {
        bus,
        stores: a.stores.backends()?,
        grpc_listen: a.grpc_listen,
        grpc_tls,
        http_listen: a.http_listen,
        https,
        watch: a.watch_dir.map(|d| (d, a.gcp_sampling_rate)),
        max_file_bytes: crate::max_file_bytes(a.max_file_mb)?,
        retention: controlplane::store::Retention {
            raw_ns: a.retention_raw_days as i64 * DAY,
            minute_ns: a.retention_1m_days as i64 * DAY,
            hour_ns: a.retention_1h_days as i64 * DAY,
        },
        maintenance_interval: std::time::Duration::from_secs(a.maintenance_interval),
        detect: controlplane::detect::Config {
            learning_ns: a.learning_days as i64 * DAY,
            follow_up_ns: a.follow_up.ns(),
        },
        public_url: a.public_url,
        notify_allow: controlplane::notify::Destinations::only(&a.notify_allow)
            .map_err(|e| anyhow::anyhow!("--notify-allow: {e:#}"))?,
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
        http_caps: Caps {
            total: a.http_max_connections,
            per_client: a.http_max_per_address,
        },
        grpc_caps: Caps {
            total: a.grpc_max_connections,
            per_client: a.grpc_max_per_address,
        },
        retry: controlplane::notify::Retry {
            max_attempts: a.notify_max_attempts,
            base: std::time::Duration::from_millis(a.notify_retry_ms),
        },
    })
}
