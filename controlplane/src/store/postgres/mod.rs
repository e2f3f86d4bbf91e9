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

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

mod access;
mod alerts;
mod notifications;
mod schema;
mod sensors;
mod settings;

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>;

/// How to reach the state store's server.
#[derive(Clone, Default)]
pub struct Options {
    /// A `postgres://user@host:port/db?sslmode=...` URL (or `key=value` settings).
    pub url: String,
    /// The password, when not in the URL (from a file or the environment).
    pub password: Option<String>,
    /// A CA (PEM) the server's certificate may chain to, besides the system's.
    pub ca: Option<PathBuf>,
}

/// Never the password (in the URL or beside it).
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field(
                "url",
                &describe(&self.url.parse::<postgres::Config>().unwrap_or_default()),
            )
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("ca", &self.ca)
            .finish()
    }
}

/// The state store on a PostgreSQL database.
pub struct PgStore {
    pool: Pool,
}

/// Connections kept open at most.
const POOL_SIZE: u32 = 8;

/// How long a call waits for a connection before it fails (while the server is away, every
/// call waits this long: short enough for `/health` to answer a monitor in time).
const WAIT: Duration = Duration::from_secs(3);

/// The pool's connection errors, logged once in a while rather than once per attempt.
#[derive(Debug, Default)]
struct Quiet {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl r2d2::HandleError<postgres::Error> for Quiet {
    fn handle_error(&self, e: postgres::Error) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(error = %why(&e), "the state store does not answer (connecting again)");
            *last = Some(std::time::Instant::now());
        }
    }
}

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
    /// [`PgStore::connect`] with the URL alone.
    pub fn open(url: &str) -> anyhow::Result<Arc<Self>> {
        Self::connect(&Options {
            url: url.into(),
            ..Options::default()
        })
    }

    /// Connects (TLS as the URL's `sslmode` says: `prefer` by default, `require`, `disable`;
    /// certificates always verified), migrates the schema and returns the store. A server that
    /// cannot be reached, refuses the credentials, presents a certificate nobody vouches for or
    /// holds a newer schema is an error that says so and what to do.
    pub fn connect(o: &Options) -> anyhow::Result<Arc<Self>> {
        let mut config: postgres::Config = o
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("the state store's URL is not valid: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if let Some(pw) = &o.password {
            config.password(pw);
        }
        let at = describe(&config);
        let tls = MakeRustlsConnect::new(super::tls::client_config(o.ca.as_deref())?);
        // One connection made directly first, so that its error is the server's own words
        // rather than the pool's timeout.
        let mut c = config
            .connect(tls.clone())
            .map_err(|e| anyhow::anyhow!("cannot connect to the state store {at}: {}", why(&e)))?;
        schema::migrate(&mut c).with_context(|| format!("the state store {at}"))?;
        drop(c);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(WAIT)
            .error_handler(Box::new(Quiet::default()))
            .build_unchecked(PostgresConnectionManager::new(config, tls));
        Ok(Arc::new(PgStore { pool }))
    }

    /// Answers when the server does (for `/health`).
    pub fn ping(&self) -> anyhow::Result<()> {
        self.conn()?.simple_query("SELECT 1")?;
        Ok(())
    }

    fn conn(&self) -> anyhow::Result<Conn> {
        self.pool
            .get()
            .map_err(|e| anyhow::anyhow!("no connection to the state store: {e}"))
    }
}

/// A connection error in words that say what to do.
fn why(e: &postgres::Error) -> String {
    let text = format!("{e}");
    let mut chain = text.clone();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    if let Some(db) = e.as_db_error() {
        let hint = match db.code().code() {
            "28P01" | "28000" => {
                " (check the user and the password: --state-store-password-file or \
                 PICKET_STATE_STORE_PASSWORD)"
            }
            "3D000" => " (create the database first: createdb -O USER DB)",
            _ => "",
        };
        return format!("{}{hint}", db.message());
    }
    if chain.contains("certificate") || chain.contains("UnknownIssuer") {
        return format!(
            "{chain} (the server's TLS certificate is not trusted: give its CA with \
             --state-store-ca, or sslmode=disable in the URL on a trusted network)"
        );
    }
    if chain.contains("password missing") {
        return format!(
            "{chain} (give it with --state-store-password-file or PICKET_STATE_STORE_PASSWORD)"
        );
    }
    if chain.contains("server does not support TLS") {
        return format!("{chain} (sslmode=require needs a server with TLS on)");
    }
    chain
}

/// The role column: unknown roles (a newer version's) get the least rights.
fn role(s: String) -> crate::model::Role {
    crate::model::Role::parse(&s).unwrap_or(crate::model::Role::Viewer)
}
