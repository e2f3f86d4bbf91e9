//! Command line and TOML configuration. Flags override the file; the file overrides defaults.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use serde::Deserialize;

use crate::sensor::{SensorOptions, TcModeChoice, XdpModeChoice};

pub const DEFAULT_EXPORT_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_SCAN_WINDOW_SECS: u64 = 60;
pub const DEFAULT_ACTIVE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 15;
/// Zeek flags 15 ports of one host; the kernel counts ports across hosts, so a little higher.
pub const DEFAULT_PORT_THRESHOLD: u32 = 20;
/// Zeek flags 25 hosts on one port.
pub const DEFAULT_HOST_THRESHOLD: u32 = 25;

/// Picket's network sensor: counts flows and flags scan-like fan-outs in the kernel (XDP on
/// ingress, tc on egress) and exports them.
///
/// Example: picket-sensor --iface eth0 --stdout
#[derive(Debug, Parser, Default)]
#[command(
    name = "picket-sensor",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Interface to monitor (repeatable). Ingress through XDP, egress through tc.
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,

    /// Control plane gRPC URL to export to (e.g. https://picket.example:7443). Repeat it for
    /// the replicas of a cluster: the sensor uses the first that answers and moves to the
    /// next when its connection fails, sending again what was not acknowledged.
    #[arg(long, value_name = "URL")]
    pub controlplane: Vec<String>,

    /// CA certificate (PEM) that signed the control plane's certificate, for an https:// URL
    /// (default: the system's trusted roots).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS, with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// File holding this sensor's key (from `picket-controlplane sensors add NAME`).
    #[arg(long, value_name = "F")]
    pub sensor_key_file: Option<PathBuf>,

    /// Seconds between two drains of the flow table (default 10).
    #[arg(long, value_name = "SECS")]
    pub export_interval: Option<u64>,

    /// Seconds after which a long flow is exported as a slice and goes on in a new one
    /// (NetFlow's active timeout; default 60).
    #[arg(long, value_name = "SECS")]
    pub active_timeout: Option<u64>,

    /// Seconds without a packet after which a flow is exported and forgotten (default 15).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Address of the Prometheus metrics endpoint (GET /metrics), or `off`
    /// (default 127.0.0.1:9469).
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_listen: Option<String>,

    /// Print flow records and scan events as JSON lines on stdout (also while exporting).
    #[arg(long)]
    pub stdout: bool,

    /// Where batches wait for the control plane's acknowledgement (default
    /// /var/lib/picket-sensor/spool). Survives restarts: unacknowledged batches are sent then.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Most megabytes the spool may hold while the control plane is unreachable (default 256);
    /// beyond it the oldest batches go, counted in `spool_dropped_records`.
    #[arg(long, value_name = "MB")]
    pub spool_max_mb: Option<u64>,

    /// TOML configuration file; flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// XDP attach mode (default auto: native, falling back to generic).
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeChoice>,

    /// tc egress attach mode (default auto: TCX on 6.6+, clsact before).
    #[arg(long, value_enum)]
    pub tc_mode: Option<TcModeChoice>,

    /// Entries in each of the two flow tables (default 262144), shared out among the CPUs.
    #[arg(long, value_name = "N")]
    pub flow_table_size: Option<u32>,

    /// Length in seconds of the per-source scan window (default 60).
    #[arg(long, value_name = "SECS")]
    pub scan_window: Option<u64>,

    /// Distinct destination ports by one source in a window that raise a scan event (default 20;
    /// 0 turns it off; at most 256).
    #[arg(long, value_name = "N")]
    pub scan_port_threshold: Option<u32>,

    /// Distinct destination hosts by one source in a window that raise a scan event (default 25;
    /// 0 turns it off; at most 256).
    #[arg(long, value_name = "N")]
    pub scan_host_threshold: Option<u32>,

    /// Timestamp every packet with the kernel clock (nanoseconds) instead of the agent's 10 ms
    /// clock. Costs a helper call per packet.
    #[arg(long)]
    pub precise_timestamps: bool,

    /// Follow this SSH/auth log (e.g. /var/log/auth.log), or `journal` for systemd's journal,
    /// and report failed and accepted logins as `kind: "auth"` records (for brute-force
    /// detection).
    #[arg(long, value_name = "FILE|journal")]
    pub auth_log: Option<PathBuf>,

    /// Log lines on stderr as text (default) or JSON objects (for log shippers). The level is
    /// set by PICKET_LOG (default info; e.g. PICKET_LOG=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Stop by itself after this many seconds (flushing everything, as on SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Report what this host supports and lacks for the sensor and exit 0 if it can run:
    /// capabilities, the kernel's map and program types, the tc egress path (TCX or clsact), the
    /// BPF JIT, batched map operations, the verifier's verdict on the real programs, and for each
    /// --iface the XDP mode it takes (attached for an instant, then detached).
    Check {
        /// An interface to try XDP on (repeatable).
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
    },
}

/// The TOML file: same names as the flags, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub iface: Vec<String>,
    /// One URL, or a list of them (the replicas of a cluster).
    pub controlplane: Option<OneOrMany>,
    pub sensor_key_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub export_interval: Option<u64>,
    pub active_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub metrics_listen: Option<String>,
    pub auth_log: Option<PathBuf>,
    pub stdout: Option<bool>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_mb: Option<u64>,
    pub xdp_mode: Option<XdpModeChoice>,
    pub tc_mode: Option<TcModeChoice>,
    pub flow_table_size: Option<u32>,
    pub scan_window: Option<u64>,
    pub scan_port_threshold: Option<u32>,
    pub scan_host_threshold: Option<u32>,
    pub precise_timestamps: Option<bool>,
}

/// A TOML value that is one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sensor: SensorOptions,
    pub export_interval: Duration,
    pub active_timeout: Duration,
    pub idle_timeout: Duration,
    /// Where to serve /metrics (None: off), and whether the user chose it (a default that cannot
    /// bind is a warning, a chosen address an error).
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub metrics_listen_explicit: bool,
    pub auth_log: Option<PathBuf>,
    pub stdout: bool,
    /// Where to export: the control plane's URLs (several for a cluster's replicas).
    pub controlplane: Vec<String>,
    pub sensor_key_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// Set when exporting to a control plane.
    pub export: Option<crate::export::ExportOptions>,
}

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/picket-sensor/spool";
pub const DEFAULT_SPOOL_MAX_MB: u64 = 256;
/// Most control-plane URLs a sensor takes (the replicas of one cluster).
pub const MAX_CONTROLPLANES: usize = 16;

impl Args {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let ifaces = if self.ifaces.is_empty() {
            file.iface.clone()
        } else {
            self.ifaces.clone()
        };
        if ifaces.is_empty() {
            anyhow::bail!(
                "no interface to monitor: give --iface IF (repeatable) or `iface = [..]` in the config file"
            );
        }
        let export = self
            .export_interval
            .or(file.export_interval)
            .unwrap_or(DEFAULT_EXPORT_INTERVAL_SECS);
        if export == 0 {
            anyhow::bail!("--export-interval must be at least 1 second");
        }
        let active = self
            .active_timeout
            .or(file.active_timeout)
            .unwrap_or(DEFAULT_ACTIVE_TIMEOUT_SECS);
        let idle = self
            .idle_timeout
            .or(file.idle_timeout)
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        if active == 0 || idle == 0 {
            anyhow::bail!("--active-timeout and --idle-timeout must be at least 1 second");
        }
        let metrics_arg = self.metrics_listen.clone().or(file.metrics_listen.clone());
        let metrics_listen_explicit = metrics_arg.is_some();
        let metrics_listen = crate::metrics::parse_listen(
            metrics_arg
                .as_deref()
                .unwrap_or(crate::metrics::DEFAULT_LISTEN),
        )?;
        let window = self
            .scan_window
            .or(file.scan_window)
            .unwrap_or(DEFAULT_SCAN_WINDOW_SECS);
        if window == 0 {
            anyhow::bail!("--scan-window must be at least 1 second");
        }
        if window > 86_400 {
            anyhow::bail!("--scan-window must be at most 86400 seconds (one day), got {window}");
        }
        let port_threshold = self
            .scan_port_threshold
            .or(file.scan_port_threshold)
            .unwrap_or(DEFAULT_PORT_THRESHOLD);
        let host_threshold = self
            .scan_host_threshold
            .or(file.scan_host_threshold)
            .unwrap_or(DEFAULT_HOST_THRESHOLD);
        for (name, n) in [
            ("--scan-port-threshold", port_threshold),
            ("--scan-host-threshold", host_threshold),
        ] {
            if n > crate::scan::MAX_SCAN_THRESHOLD {
                anyhow::bail!(
                    "{name} must be 0 (off) to {} (got {n}): the kernel keeps 64 bytes per \
                     source and counts distinct values in 128 bits, which cannot tell more apart; \
                     the control plane judges larger fan-outs from the flow records",
                    crate::scan::MAX_SCAN_THRESHOLD
                );
            }
        }
        let flow_table_size = self
            .flow_table_size
            .or(file.flow_table_size)
            .unwrap_or(sensor_common::DEFAULT_FLOW_TABLE_SIZE);
        if flow_table_size < 1024 {
            anyhow::bail!("--flow-table-size must be at least 1024 (got {flow_table_size})");
        }
        let stdout = self.stdout || file.stdout.unwrap_or(false);
        let controlplane = if self.controlplane.is_empty() {
            file.controlplane
                .clone()
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
        } else {
            self.controlplane.clone()
        };
        let sensor_key_file = self
            .sensor_key_file
            .clone()
            .or(file.sensor_key_file.clone());
        let export_opts = if controlplane.is_empty() {
            None
        } else {
            Some(self.export_options(&file, &controlplane, sensor_key_file.as_ref())?)
        };
        if !stdout && export_opts.is_none() {
            anyhow::bail!(
                "nowhere to send records: give --controlplane URL with --sensor-key-file, or \
                 --stdout to print flow records and scan events as JSON lines"
            );
        }
        Ok(Settings {
            sensor: SensorOptions {
                ifaces,
                xdp_mode: self
                    .xdp_mode
                    .or(file.xdp_mode)
                    .unwrap_or(XdpModeChoice::Auto),
                tc_mode: self.tc_mode.or(file.tc_mode).unwrap_or(TcModeChoice::Auto),
                flow_table_size,
                scan_window: Duration::from_secs(window),
                port_threshold,
                precise_timestamps: self.precise_timestamps
                    || file.precise_timestamps.unwrap_or(false),
                host_threshold,
            },
            export_interval: Duration::from_secs(export),
            active_timeout: Duration::from_secs(active),
            idle_timeout: Duration::from_secs(idle),
            metrics_listen,
            metrics_listen_explicit,
            auth_log: self.auth_log.clone().or(file.auth_log),
            stdout,
            controlplane,
            sensor_key_file,
            duration: self.duration.map(Duration::from_secs),
            export: export_opts,
        })
    }

    /// Where and how to export: the control plane's URLs, the key, TLS, the spool.
    fn export_options(
        &self,
        file: &FileConfig,
        urls: &[String],
        key_file: Option<&PathBuf>,
    ) -> anyhow::Result<crate::export::ExportOptions> {
        for url in urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "--controlplane must be a URL such as https://picket.example:7443 (got `{url}`)"
                );
            }
        }
        let url = &urls[0];
        if urls
            .iter()
            .any(|u| u.starts_with("https://") != url.starts_with("https://"))
        {
            anyhow::bail!(
                "the --controlplane URLs mix http:// and https://: give the replicas of one \
                 cluster, reached the same way"
            );
        }
        if urls.len() > MAX_CONTROLPLANES {
            anyhow::bail!(
                "at most {MAX_CONTROLPLANES} --controlplane URLs (got {})",
                urls.len()
            );
        }
        let Some(kf) = key_file else {
            anyhow::bail!(
                "--controlplane needs --sensor-key-file (the key printed by \
                     `picket-controlplane sensors add NAME`)"
            );
        };
        let key = std::fs::read_to_string(kf)
            .map_err(|e| anyhow::anyhow!("cannot read the sensor key file {}: {e}", kf.display()))?
            .trim()
            .to_string();
        if key.is_empty() {
            anyhow::bail!("the sensor key file {} is empty", kf.display());
        }
        let mb = self
            .spool_max_mb
            .or(file.spool_max_mb)
            .unwrap_or(DEFAULT_SPOOL_MAX_MB);
        if mb == 0 {
            anyhow::bail!("--spool-max-mb must be at least 1");
        }
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", p.display()))
        };
        let ca_cert = self.ca_cert.clone().or(file.ca_cert.clone());
        let tls_cert = self.tls_cert.clone().or(file.tls_cert.clone());
        let tls_key = self.tls_key.clone().or(file.tls_key.clone());
        let tls = url.starts_with("https://");
        if !tls && (ca_cert.is_some() || tls_cert.is_some()) {
            anyhow::bail!(
                "--ca-cert and --tls-cert need an https:// control plane URL (got `{url}`)"
            );
        }
        let client_identity = match (&tls_cert, &tls_key) {
            (Some(c), Some(k)) => Some((
                read("client certificate (--tls-cert)", c)?,
                read("client key (--tls-key)", k)?,
            )),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        Ok(crate::export::ExportOptions {
            urls: urls.to_vec(),
            key,
            ca_pem: ca_cert
                .as_ref()
                .map(|p| read("CA certificate (--ca-cert)", p))
                .transpose()?,
            client_identity,
            spool_dir: self
                .spool_dir
                .clone()
                .or(file.spool_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
            spool_max_bytes: mb << 20,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("picket-sensor").chain(v.iter().copied()))
            .expect("parse")
    }

    #[test]
    fn defaults() {
        let s = args(&["--iface", "eth0", "--stdout"])
            .settings()
            .expect("settings");
        assert_eq!(s.sensor.ifaces, vec!["eth0"]);
        assert_eq!(s.export_interval, Duration::from_secs(10));
        assert_eq!(s.sensor.port_threshold, DEFAULT_PORT_THRESHOLD);
        assert_eq!(s.sensor.xdp_mode, XdpModeChoice::Auto);
        assert_eq!(s.active_timeout, Duration::from_secs(60));
        assert_eq!(s.idle_timeout, Duration::from_secs(15));
        assert_eq!(
            s.metrics_listen,
            Some("127.0.0.1:9469".parse().expect("addr"))
        );
        let a = args(&["--iface", "eth0", "--stdout", "--log-format", "json"]);
        assert_eq!(a.log_format, LogFormat::Json);
        let s = args(&["--iface", "eth0", "--stdout", "--metrics-listen", "off"])
            .settings()
            .expect("settings");
        assert_eq!(s.metrics_listen, None);
        assert!(s.metrics_listen_explicit);
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("picket-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("sensor.toml");
        std::fs::write(&f, "iface = [\"a0\", \"a1\"]\nexport_interval = 5\nstdout = true\nscan_port_threshold = 7\nxdp_mode = \"generic\"\n").expect("write");
        let s = args(&[
            "--config",
            f.to_str().expect("utf8"),
            "--export-interval",
            "3",
        ])
        .settings()
        .expect("settings");
        assert_eq!(s.sensor.ifaces, vec!["a0", "a1"]);
        assert_eq!(s.export_interval, Duration::from_secs(3));
        assert_eq!(s.sensor.port_threshold, 7);
        assert_eq!(s.sensor.xdp_mode, XdpModeChoice::Generic);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn bad_input_is_explained() {
        let e = args(&["--stdout"]).settings().unwrap_err().to_string();
        assert!(e.contains("no interface"), "{e}");
        let e = args(&["--iface", "x", "--stdout", "--export-interval", "0"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1 second"), "{e}");
        let e = args(&["--iface", "x"]).settings().unwrap_err().to_string();
        assert!(e.contains("--stdout"), "{e}");
        let e = args(&["--iface", "x", "--stdout", "--scan-port-threshold", "257"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--scan-port-threshold must be 0 (off) to 256 (got 257)"),
            "{e}"
        );
        let s = args(&["--iface", "x", "--stdout", "--scan-host-threshold", "256"])
            .settings()
            .expect("256 is allowed");
        assert_eq!(s.sensor.host_threshold, 256);
        let e = args(&["--iface", "x", "--stdout", "--scan-window", "90000"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 86400"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let e = toml::from_str::<FileConfig>("ifaces = [\"x\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn export_needs_a_url_and_a_readable_key() {
        let e = args(&["--iface", "x", "--controlplane", "picket:7443"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a URL"), "{e}");
        let e = args(&["--iface", "x", "--controlplane", "http://127.0.0.1:7443"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sensor-key-file"), "{e}");
        let e = args(&[
            "--iface",
            "x",
            "--controlplane",
            "http://127.0.0.1:7443",
            "--sensor-key-file",
            "/nonexistent/key",
        ])
        .settings()
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read the sensor key file"), "{e}");
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("k");
        std::fs::write(&key, "pks_abc\n").expect("write");
        let s = args(&[
            "--iface",
            "x",
            "--controlplane",
            "http://127.0.0.1:7443",
            "--sensor-key-file",
            key.to_str().expect("utf8"),
            "--spool-max-mb",
            "8",
        ])
        .settings()
        .expect("settings");
        let ex = s.export.expect("export");
        assert_eq!(ex.key, "pks_abc");
        assert_eq!(ex.spool_max_bytes, 8 << 20);
        assert_eq!(ex.spool_dir, PathBuf::from(DEFAULT_SPOOL_DIR));
        assert!(!s.stdout, "exporting alone is allowed");
        assert!(
            !format!("{ex:?}").contains("pks_abc"),
            "the key never shows"
        );
    }

    #[test]
    fn several_control_planes_from_flags_or_the_file_reached_the_same_way() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("k");
        std::fs::write(&key, "pks_abc\n").expect("write");
        let key = key.to_str().expect("utf8");
        let s = args(&[
            "--iface",
            "x",
            "--controlplane",
            "http://10.0.0.1:7443",
            "--controlplane",
            "http://10.0.0.2:7443",
            "--sensor-key-file",
            key,
        ])
        .settings()
        .expect("settings");
        assert_eq!(
            s.export.expect("export").urls,
            ["http://10.0.0.1:7443", "http://10.0.0.2:7443"]
        );
        let e = args(&[
            "--iface",
            "x",
            "--controlplane",
            "http://10.0.0.1:7443",
            "--controlplane",
            "https://10.0.0.2:7443",
            "--sensor-key-file",
            key,
        ])
        .settings()
        .unwrap_err()
        .to_string();
        assert!(e.contains("mix http:// and https://"), "{e}");
        let mut many = vec!["--iface", "x", "--sensor-key-file", key];
        for _ in 0..=MAX_CONTROLPLANES {
            many.extend(["--controlplane", "http://10.0.0.1:7443"]);
        }
        let e = args(&many).settings().unwrap_err().to_string();
        assert!(e.contains("at most 16"), "{e}");
        // The file takes one URL or a list.
        for (toml, n) in [
            ("controlplane = \"http://10.0.0.1:7443\"", 1),
            (
                "controlplane = [\"http://10.0.0.1:7443\", \"http://10.0.0.2:7443\"]",
                2,
            ),
        ] {
            let f: FileConfig = toml::from_str(toml).expect("toml");
            let urls = f.controlplane.expect("controlplane").into_vec();
            assert_eq!(urls.len(), n, "{toml}");
        }
    }
}
