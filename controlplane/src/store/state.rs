//! The state store: the application's own state, small and changed by people and by the
//! alerts service: sensors and their keys, users, sessions and API tokens, alerts with their
//! triage history, the notification outbox, the lists and sensitivity settings, and what the
//! detectors learned. Grouped in traits by concern; [`StateStore`] is all of them.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::model::{
    Alert, AlertQuery, Change, Event, Heartbeat, HistoryEntry, Registration, Role, Severity,
};

/// A sensor as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorRow {
    pub name: String,
    pub created_unix_ns: i64,
    pub revoked: bool,
    pub instance_id: Option<String>,
    pub version: Option<String>,
    pub kernel: Option<String>,
    pub hostname: Option<String>,
    pub first_seen_unix_ns: Option<i64>,
    pub last_heartbeat_unix_ns: Option<i64>,
    /// The last heartbeat's kernel counters, as JSON.
    pub kernel_counters: Option<String>,
    /// The registration's host: interfaces (addresses, XDP and tc attach modes), Kubernetes
    /// node, as JSON.
    pub host: Option<String>,
    /// The last heartbeat's agent counters (drops included), as JSON.
    pub agent_counters: Option<String>,
    /// The control plane (replica) that received its last registration or heartbeat.
    pub replica: Option<String>,
}

/// Sensors and their keys.
pub trait Sensors {
    /// Creates a sensor with the hash of its key; fails if the name exists.
    fn add_sensor(&self, name: &str, key_hash: &str, now_ns: i64) -> anyhow::Result<()>;
    /// Marks a sensor's key revoked; false if there is no such sensor.
    fn revoke_sensor(&self, name: &str, now_ns: i64) -> anyhow::Result<bool>;
    fn sensors(&self) -> anyhow::Result<Vec<SensorRow>>;
    /// The sensor a key hash belongs to, unless revoked.
    fn sensor_for_key(&self, key_hash: &str) -> anyhow::Result<Option<String>>;
    /// Records a registration: the sensor's instance, version, kernel and host.
    fn register(&self, sensor: &str, req: &Registration, now_ns: i64) -> anyhow::Result<()>;
    fn heartbeat(&self, sensor: &str, req: &Heartbeat, now_ns: i64) -> anyhow::Result<()>;
    /// The addresses of the registered sensors' interfaces: what the sensors watch.
    fn sensor_addresses(&self) -> anyhow::Result<HashSet<IpAddr>>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    pub created_ns: i64,
    pub last_login_ns: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub role: Role,
    pub created_ns: i64,
    pub last_used_ns: Option<i64>,
    pub revoked: bool,
}

/// A live session: the user, their role, and the session's CSRF token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub user: String,
    pub role: Role,
    pub csrf: String,
}

/// Dashboard users, their sessions, and API tokens. Only hashes are kept.
pub trait Access {
    /// Fails if the name exists.
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        now_ns: i64,
    ) -> anyhow::Result<()>;
    fn users(&self) -> anyhow::Result<Vec<UserRow>>;
    /// The password hash and role of a user.
    fn user_credentials(&self, name: &str) -> anyhow::Result<Option<(String, Role)>>;
    /// Sets a new password hash and ends the user's sessions; false if no such user.
    fn set_password(&self, name: &str, password_hash: &str) -> anyhow::Result<bool>;
    /// Removes a user and ends their sessions; false if no such user.
    fn remove_user(&self, name: &str) -> anyhow::Result<bool>;
    /// Opens a session (and stamps the user's last login); expired ones are removed.
    fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        csrf: &str,
        now_ns: i64,
        expires_ns: i64,
    ) -> anyhow::Result<()>;
    fn session(&self, token_hash: &str, now_ns: i64) -> anyhow::Result<Option<SessionRow>>;
    fn delete_session(&self, token_hash: &str) -> anyhow::Result<()>;
    /// Fails if the name exists.
    fn add_token(
        &self,
        name: &str,
        token_hash: &str,
        role: Role,
        now_ns: i64,
    ) -> anyhow::Result<()>;
    fn tokens(&self) -> anyhow::Result<Vec<TokenRow>>;
    /// The name and role of a live token (stamping its last use).
    fn token(&self, token_hash: &str, now_ns: i64) -> anyhow::Result<Option<(String, Role)>>;
    /// False if there is no such live token.
    fn revoke_token(&self, name: &str, now_ns: i64) -> anyhow::Result<bool>;
}

/// One change of an alert and the notifications it causes, in one transaction (the alerts
/// service drives it: see `alerts::merge`).
pub trait AlertTx {
    /// The latest alert of `kind` about `source` that is not closed and was last seen at or
    /// after `since_ns`.
    fn open_alert(
        &mut self,
        kind: &str,
        source: &str,
        since_ns: i64,
    ) -> anyhow::Result<Option<Alert>>;
    /// Saves `a`; a new alert (id 0) gets its id.
    fn save_alert(&mut self, a: &mut Alert) -> anyhow::Result<()>;
    /// Every notifier with the least severity it is told of.
    fn notifier_levels(&mut self) -> anyhow::Result<Vec<(String, Severity)>>;
    /// Queues a message to `notifier` about `alert_id`, due at `now_ns`.
    fn queue_notification(
        &mut self,
        notifier: &str,
        alert_id: i64,
        event: Event,
        now_ns: i64,
    ) -> anyhow::Result<()>;
}

/// Context the rollups lack, for the entity views.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityContext {
    /// Sensor interface addresses: host name, and whether it is a Kubernetes node.
    pub hosts: HashMap<IpAddr, (String, bool)>,
    /// Open (not closed) alerts per source address, and whether one is a scan.
    pub alerts: HashMap<String, (u64, bool)>,
}

/// Alerts, their triage, and their timeline.
pub trait Alerts {
    /// Runs `work` in one transaction: committed if it returns Ok, rolled back otherwise.
    fn alert_transaction(
        &self,
        work: &mut dyn FnMut(&mut dyn AlertTx) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// Alerts matching `q`, the most recently active first.
    fn alerts(&self, q: &AlertQuery) -> anyhow::Result<Vec<Alert>>;
    fn alert(&self, id: i64) -> anyhow::Result<Option<Alert>>;
    /// Applies `changes` to alert `id` in one transaction, each recorded in its timeline as done
    /// by `actor` at `now_ns`. None if there is no such alert.
    fn change_alert(
        &self,
        id: i64,
        changes: &[Change],
        actor: &str,
        now_ns: i64,
    ) -> anyhow::Result<Option<Alert>>;
    /// The alert's timeline, oldest first.
    fn alert_history(&self, id: i64) -> anyhow::Result<Vec<HistoryEntry>>;
    /// Snoozed alerts whose time is up become open again; returns how many.
    fn wake_snoozed(&self, now_ns: i64) -> anyhow::Result<u64>;
    /// The sensors' hosts and the open alerts per source, for the entity views.
    fn entity_context(&self) -> anyhow::Result<EntityContext>;
}

/// A notifier as stored: its target is the notifier module's to read (JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierRow {
    pub name: String,
    pub target: String,
    pub min_severity: Severity,
}

/// A queued message, as the dispatcher takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub id: i64,
    pub notifier: String,
    pub alert_id: i64,
    pub event: String,
    pub attempts: u32,
}

/// Queue counts of one notifier.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// Notifiers and the outbox of messages to them.
pub trait Notifications {
    /// The notifiers, by name.
    fn notifiers(&self) -> anyhow::Result<Vec<NotifierRow>>;
    /// Adds a notifier; fails if the name exists.
    fn add_notifier(&self, n: &NotifierRow, now_ns: i64) -> anyhow::Result<()>;
    /// Removes a notifier and its undelivered messages: None if there was no such notifier,
    /// else how many queued messages were dropped with it.
    fn remove_notifier(&self, name: &str) -> anyhow::Result<Option<u64>>;
    /// Queue counts per notifier (also of removed notifiers' delivered and failed messages).
    fn notification_counts(&self) -> anyhow::Result<Vec<(String, Counts)>>;
    /// Pending messages due at `now_ns`, oldest first.
    fn due_notifications(&self, now_ns: i64, limit: usize) -> anyhow::Result<Vec<Pending>>;
    fn notification_delivered(&self, id: i64, attempts: u32, now_ns: i64) -> anyhow::Result<()>;
    /// A failed attempt: tried again at `next_ns`, or failed for good at `now_ns` if None.
    fn notification_failed(
        &self,
        id: i64,
        attempts: u32,
        next_ns: Option<i64>,
        error: &str,
        now_ns: i64,
    ) -> anyhow::Result<()>;
}

/// What users set about detection (watchlist, allowlist, sensitivity) and what the detectors
/// learned.
pub trait Settings {
    /// The watchlist: (network in CIDR form, label), by network.
    fn watchlist(&self) -> anyhow::Result<Vec<(String, String)>>;
    /// Adds or relabels watchlist entries (networks in canonical CIDR form); returns how many
    /// were new.
    fn add_watchlist(&self, entries: &[(String, String)], now_ns: i64) -> anyhow::Result<usize>;
    /// Removes a watchlist entry; false if it was not there.
    fn remove_watchlist(&self, cidr: &str) -> anyhow::Result<bool>;
    /// The allowlist: (network, alert type or `*`, label).
    fn allowlist(&self) -> anyhow::Result<Vec<(String, String, String)>>;
    /// Adds or relabels an allowlist entry; true if it was new.
    fn add_allowlist(
        &self,
        cidr: &str,
        alert_type: &str,
        label: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool>;
    /// Removes an allowlist entry; false if it was not there.
    fn remove_allowlist(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool>;
    /// Sensitivity settings: (network or `*`, alert type or `*`, level).
    fn sensitivities(&self) -> anyhow::Result<Vec<(String, String, String)>>;
    /// Sets the level of (network, alert type); true if the pair was new.
    fn set_sensitivity(
        &self,
        cidr: &str,
        alert_type: &str,
        level: &str,
        now_ns: i64,
    ) -> anyhow::Result<bool>;
    /// Removes a setting (back to medium); false if it was not there.
    fn remove_sensitivity(&self, cidr: &str, alert_type: &str) -> anyhow::Result<bool>;
    /// A detector's saved state: (key, state) pairs.
    fn detector_state(&self, detector: &str) -> anyhow::Result<Vec<(String, String)>>;
    /// Saves (key, state, last data time) entries of a detector's state, replacing older ones;
    /// a `None` state deletes the key.
    fn save_detector_state(
        &self,
        detector: &str,
        entries: &[(String, Option<String>, i64)],
    ) -> anyhow::Result<()>;
}

/// A lease held by one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    /// Unix nanoseconds: after this, another process may take it.
    pub until_ns: i64,
}

/// Leases: work that one process of several sharing the store does at a time (cluster mode's
/// notifications and maintenance), handed over when its holder stops renewing it.
pub trait Leases {
    /// Takes or renews lease `name` for `holder` until `now_ns + ttl_ns`. True if `holder`
    /// holds it now: it was free, expired, or already its own. Atomic: of several processes
    /// asking at once, one gets it.
    fn lease(&self, name: &str, holder: &str, now_ns: i64, ttl_ns: i64) -> anyhow::Result<bool>;
    /// Gives lease `name` up, if `holder` holds it (at a clean stop, so another takes it at once).
    fn release(&self, name: &str, holder: &str) -> anyhow::Result<()>;
    /// Every lease, by name (expired ones too).
    fn leases(&self) -> anyhow::Result<Vec<LeaseRow>>;
}

/// One process's hold on a lease ([`Leases`]): renewed when half its life is gone, so a
/// holder writes to the store about twice per `ttl`, not at every check.
pub struct Held {
    pub name: String,
    /// This process (`serve`'s replica id).
    pub holder: String,
    pub ttl_ns: i64,
    /// Until when this process last took it (0: not held).
    until_ns: std::sync::atomic::AtomicI64,
}

impl Held {
    pub fn new(name: impl Into<String>, holder: &str, ttl: std::time::Duration) -> Held {
        Held {
            name: name.into(),
            holder: holder.to_string(),
            ttl_ns: ttl.as_nanos().min(i64::MAX as u128) as i64,
            until_ns: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Whether this process holds the lease at `now_ns`, taking or renewing it as needed.
    pub fn hold(&self, store: &dyn StateStore, now_ns: i64) -> anyhow::Result<bool> {
        use std::sync::atomic::Ordering;
        let until = self.until_ns.load(Ordering::Relaxed);
        if until - now_ns > self.ttl_ns / 2 {
            return Ok(true);
        }
        let held = store.lease(&self.name, &self.holder, now_ns, self.ttl_ns)?;
        self.until_ns.store(
            if held { now_ns + self.ttl_ns } else { 0 },
            Ordering::Relaxed,
        );
        Ok(held)
    }

    /// Until when this process holds it, as far as it knows (0: not held).
    pub fn until_ns(&self) -> i64 {
        self.until_ns.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Gives it up (at a clean stop), so another process takes it at once.
    pub fn release(&self, store: &dyn StateStore) -> anyhow::Result<()> {
        self.until_ns.store(0, std::sync::atomic::Ordering::Relaxed);
        store.release(&self.name, &self.holder)
    }
}

/// The whole state store.
pub trait StateStore:
    Sensors + Access + Alerts + Notifications + Settings + Leases + Send + Sync + 'static
{
}

impl<T: Sensors + Access + Alerts + Notifications + Settings + Leases + Send + Sync + 'static>
    StateStore for T
{
}
