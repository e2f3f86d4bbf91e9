//! The options every command that opens the stores takes: the data directory, and the servers
//! that replace the embedded store.

use std::path::PathBuf;

use controlplane::store::{Backends, Stores, clickhouse, postgres};
use tracing::warn;

#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Where the embedded store (SQLite, WAL) lives; created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Keep the flows (and their rollups, links, exactly-once marks) in ClickHouse instead:
    /// clickhouse://USER@HOST:8123/DB over HTTP, clickhouses://... over HTTPS. The database
    /// must exist; its tables are created and migrated at the start.
    #[arg(
        long,
        env = "PICKET_FLOW_STORE",
        hide_env_values = true,
        value_name = "URL"
    )]
    flow_store: Option<String>,
    /// The flow store's password: the first line of FILE. Without it, the environment's
    /// PICKET_FLOW_STORE_PASSWORD, else the URL's (which other users can read in the process
    /// list).
    #[arg(long, value_name = "FILE", requires = "flow_store")]
    flow_store_password_file: Option<PathBuf>,
    /// A CA (PEM) that the flow store's certificate may chain to, besides the system's
    /// (for clickhouses:// URLs).
    #[arg(long, value_name = "FILE", requires = "flow_store")]
    flow_store_ca: Option<PathBuf>,
    /// Keep the control state (users, sessions, tokens, sensors, alerts, lists, notifiers,
    /// what detectors learned) in PostgreSQL instead: postgres://USER@HOST:5432/DB, with
    /// `?sslmode=require` to insist on TLS (the server's certificate is always verified).
    /// The database must exist; its tables are created and migrated at the start.
    #[arg(
        long,
        env = "PICKET_STATE_STORE",
        hide_env_values = true,
        value_name = "URL"
    )]
    state_store: Option<String>,
    /// The state store's password: the first line of FILE. Without it, the environment's
    /// PICKET_STATE_STORE_PASSWORD, else the URL's (which other users can read in the
    /// process list).
    #[arg(long, value_name = "FILE", requires = "state_store")]
    state_store_password_file: Option<PathBuf>,
    /// A CA (PEM) that the state store's certificate may chain to, besides the system's.
    #[arg(long, value_name = "FILE", requires = "state_store")]
    state_store_ca: Option<PathBuf>,
}

/// Where the state store's password may come from, besides a file.
const PASSWORD_ENV: &str = "PICKET_STATE_STORE_PASSWORD";
/// Where the flow store's password may come from, besides a file.
const FLOW_PASSWORD_ENV: &str = "PICKET_FLOW_STORE_PASSWORD";

/// A password from `file`, else from the environment's `env`.
fn password(file: &Option<PathBuf>, env: &str) -> anyhow::Result<Option<String>> {
    Ok(match file {
        Some(f) => Some(crate::secret(f)?),
        None => std::env::var(env).ok().filter(|p| !p.is_empty()),
    })
}

impl StoreArgs {
    /// What the options name, checked.
    pub fn backends(&self) -> anyhow::Result<Backends> {
        let mut b = Backends::embedded(&self.data_dir);
        if let Some(url) = &self.state_store {
            let config: ::postgres::Config = url.parse().map_err(|e| {
                anyhow::anyhow!("--state-store: not a PostgreSQL URL or settings: {e}")
            })?;
            let password = password(&self.state_store_password_file, PASSWORD_ENV)?;
            if password.is_none() && config.get_password().is_some() {
                warn!(
                    "the --state-store URL holds a password, which other users can read in the process list: use --state-store-password-file or {PASSWORD_ENV}"
                );
            }
            b.state = Some(postgres::Options {
                url: url.clone(),
                password,
                ca: self.state_store_ca.clone(),
            });
        }
        if let Some(url) = &self.flow_store {
            let password = password(&self.flow_store_password_file, FLOW_PASSWORD_ENV)?;
            if password.is_none() && userinfo_password(url) {
                warn!(
                    "the --flow-store URL holds a password, which other users can read in the process list: use --flow-store-password-file or {FLOW_PASSWORD_ENV}"
                );
            }
            b.flows = Some(clickhouse::Options {
                url: url.clone(),
                password,
                ca: self.flow_store_ca.clone(),
            });
        }
        Ok(b)
    }

    /// Opens them.
    pub fn open(&self) -> anyhow::Result<Stores> {
        Stores::open(&self.backends()?)
    }

    /// Opens the state store alone.
    pub fn open_state(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn controlplane::store::StateStore>> {
        Stores::open_state(&self.backends()?)
    }
}

/// The bus of cluster mode (`serve` as a replica; `import` handing files to the replicas).
#[derive(clap::Args)]
pub struct BusArgs {
    /// Cluster mode: the NATS JetStream bus (nats://[USER@]HOST:4222) shared by the replicas,
    /// which share the --flow-store and the --state-store too. `serve` runs as one replica:
    /// sensor batches go through the bus, acknowledged to the sensor once it stored them, and
    /// any replica's writer stores them. `import` hands its files to the replicas through it.
    #[arg(
        long,
        env = "PICKET_BUS",
        hide_env_values = true,
        value_name = "URL",
        requires_all = ["flow_store", "state_store"]
    )]
    pub bus: Option<String>,
    /// The bus's password: the first line of FILE. Without it, the environment's
    /// PICKET_BUS_PASSWORD, else the URL's (which other users can read in the process list).
    #[arg(long, value_name = "FILE", requires = "bus")]
    pub bus_password_file: Option<PathBuf>,
}

impl BusArgs {
    /// The bus to connect to, if any, with its password.
    pub fn config(&self) -> anyhow::Result<Option<controlplane::serve::BusConfig>> {
        let Some(url) = &self.bus else {
            return Ok(None);
        };
        let password = password(&self.bus_password_file, "PICKET_BUS_PASSWORD")?;
        if password.is_none() && userinfo_password(url) {
            tracing::warn!(
                "the --bus URL holds a password, which other users can read in the process list: use --bus-password-file or PICKET_BUS_PASSWORD"
            );
        }
        Ok(Some(controlplane::serve::BusConfig {
            url: url.clone(),
            password,
        }))
    }
}

/// Whether a URL's user part holds a password (`scheme://user:password@host...`).
pub fn userinfo_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}
