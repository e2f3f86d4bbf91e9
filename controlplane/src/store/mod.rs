//! Storage, in two parts behind two traits, so that each can move to the engine made for it
//! without touching its callers:
//!
//! - the [`FlowStore`] (`flows.rs`): flows and what derives from them, which grow with the
//!   traffic: chunks, rollups, retention, top-N, flow queries, correlation, coverage gaps, the
//!   entity views' aggregates, and the exactly-once marks of sensor batches and flow-log files;
//! - the [`StateStore`] (`state.rs`): the application's own state: sensors and keys, users,
//!   sessions and tokens, alerts and their triage, the notification outbox, the lists and
//!   sensitivities, what the detectors learned.
//!
//! Storage knows the domain's types (`model`) and nothing above them: no HTTP, no wire format,
//! no detector, no notifier rule. The embedded backend ([`SqliteStore`], `sqlite/`) implements
//! both on one SQLite file; the flow store also runs on ClickHouse ([`ChStore`], `clickhouse/`)
//! and the state store on PostgreSQL ([`PgStore`], `postgres/`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

pub mod clickhouse;
mod flows;
pub mod postgres;
pub(crate) mod rows;
pub mod sqlite;
mod state;
mod tls;

pub use clickhouse::ChStore;
pub use flows::{
    Conversation, CoverageGap, FlowCursor, FlowQuery, FlowRow, FlowStore, FlowTotals, Maintenance,
    Retention, Stored, TopBy, TopGroup, TopQuery, TopRow,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use state::{
    Access, AlertTx, Alerts, Counts, EntityContext, Held, LeaseRow, Leases, Notifications,
    NotifierRow, Pending, SensorRow, Sensors, SessionRow, Settings, StateStore, TokenRow, UserRow,
};

/// The two stores a control plane runs on.
#[derive(Clone)]
pub struct Stores {
    pub flows: Arc<dyn FlowStore>,
    pub state: Arc<dyn StateStore>,
}

/// Where a control plane's stores live: the embedded store in `data_dir`, unless a server is
/// named for one of them.
#[derive(Clone, Debug)]
pub struct Backends {
    pub data_dir: PathBuf,
    /// The flow store on ClickHouse.
    pub flows: Option<clickhouse::Options>,
    /// The state store on PostgreSQL.
    pub state: Option<postgres::Options>,
}

impl Backends {
    /// The embedded store alone.
    pub fn embedded(data_dir: &Path) -> Backends {
        Backends {
            data_dir: data_dir.into(),
            flows: None,
            state: None,
        }
    }

    /// In words, for the log: `embedded` or the server's address (never a password).
    pub fn describe_flows(&self) -> String {
        match &self.flows {
            None => "embedded".into(),
            Some(o) => clickhouse::describe(&o.url),
        }
    }

    /// In words, for the log: `embedded` or the server's address (never a password).
    pub fn describe_state(&self) -> String {
        match &self.state {
            None => "embedded".into(),
            Some(o) => o
                .url
                .parse::<::postgres::Config>()
                .map(|c| postgres::describe(&c))
                .unwrap_or_else(|_| "postgres".into()),
        }
    }
}

impl Stores {
    /// Opens (and migrates) what `b` names. A server that cannot be used is an error: never a
    /// fallback to the embedded store, whose data would then be a different one.
    pub fn open(b: &Backends) -> anyhow::Result<Stores> {
        // The servers first: one that cannot be used stops the start before anything is
        // created on the local disk.
        let flows: Option<Arc<dyn FlowStore>> = match &b.flows {
            None => None,
            Some(o) => Some(ChStore::connect(o)?),
        };
        let state: Option<Arc<dyn StateStore>> = match &b.state {
            None => None,
            Some(o) => Some(PgStore::connect(o)?),
        };
        let (flows, state) = match (flows, state) {
            (Some(f), Some(s)) => (f, s),
            (f, s) => {
                let embedded = SqliteStore::open(&b.data_dir)?;
                (
                    f.unwrap_or_else(|| embedded.clone()),
                    s.unwrap_or_else(|| embedded.clone()),
                )
            }
        };
        Ok(Stores { flows, state })
    }

    /// The state store alone (the CLI's users, tokens, sensors, lists and notifiers need no
    /// flow store, and need not reach its server).
    pub fn open_state(b: &Backends) -> anyhow::Result<Arc<dyn StateStore>> {
        Ok(match &b.state {
            Some(o) => PgStore::connect(o)?,
            None => SqliteStore::open(&b.data_dir)?,
        })
    }

    /// Both on the embedded store in `data_dir`.
    pub fn embedded(data_dir: &Path) -> anyhow::Result<Stores> {
        Ok(Stores::of(SqliteStore::open(data_dir)?))
    }

    /// Both on one backend that is both.
    pub fn of<S: FlowStore + StateStore>(s: Arc<S>) -> Stores {
        Stores {
            flows: s.clone(),
            state: s,
        }
    }
}
