//! The state store on PostgreSQL (`--state-store postgres://...`): what several control planes
//! share, or what outgrows one machine's SQLite file. The same traits as the embedded store, the
//! same rows (`store::rows`), in PostgreSQL's SQL.
//!
//! The driver is `postgres`, the blocking face of `tokio-postgres` (one driver, the one the
//! Rust ecosystem keeps), in an `r2d2` pool: the store's traits are synchronous and called from
//! blocking threads, as SQLite's are, so nothing needs a runtime of its own here.
//!
//! Two processes recording the same incident at once make one alert: the alerts service's
//! transaction takes an advisory lock on (type, source) before it looks for the open alert.

use std::time::Duration;

use anyhow::Context as _;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

mod access;
mod alerts;
mod notifications;
mod schema;
mod sensors;
mod settings;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// The state store on a PostgreSQL database.
pub struct PgStore {
    pool: Pool,
}

/// Connections kept open at most.
const POOL_SIZE: u32 = 8;

/// Where `config` points, without its password (for messages and logs).
pub fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or `key=value` settings), migrates the schema and
    /// returns the store; a server that cannot be reached, refuses the credentials or holds a
    /// newer schema is an error that says so.
    pub fn open(url: &str) -> anyhow::Result<std::sync::Arc<Self>> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("the PostgreSQL URL is not valid: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let at = describe(&config);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(|e| anyhow::anyhow!("cannot connect to the state store {at}: {e}"))?;
        let mut c = pool
            .get()
            .map_err(|e| anyhow::anyhow!("cannot connect to the state store {at}: {e}"))?;
        schema::migrate(&mut c).with_context(|| format!("the state store {at}"))?;
        drop(c);
        Ok(std::sync::Arc::new(PgStore { pool }))
    }

    fn conn(&self) -> anyhow::Result<Conn> {
        self.pool
            .get()
            .map_err(|e| anyhow::anyhow!("no connection to the state store: {e}"))
    }
}

/// The role column: unknown roles (a newer version's) get the least rights.
fn role(s: String) -> crate::model::Role {
    crate::model::Role::parse(&s).unwrap_or(crate::model::Role::Viewer)
}
