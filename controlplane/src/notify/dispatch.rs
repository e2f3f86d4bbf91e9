//! The dispatcher: delivers the outbox's due messages, with retries and backoff.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tracing::{error, info, warn};

use super::{Failure, Notifier, Sender};
use crate::{
    model::{Alert, Event},
    store::StateStore,
    util::time::now_ns,
};

/// Retry policy: attempt n (from 1) that fails waits `base * 2^(n-1)`, at most 10 minutes,
/// and the message fails for good after `max_attempts`.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub max_attempts: u32,
    pub base: Duration,
}

impl Default for Retry {
    /// 10 attempts from 2 s: the last one about 17 minutes after the first.
    fn default() -> Self {
        Retry {
            max_attempts: 10,
            base: Duration::from_secs(2),
        }
    }
}

pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Retry {
    pub fn backoff(&self, attempts: u32) -> Duration {
        let f = 1u32 << attempts.saturating_sub(1).min(20);
        self.base.saturating_mul(f).min(MAX_BACKOFF)
    }
}

/// Delivers the outbox.
pub struct Dispatcher {
    pub store: Arc<dyn StateStore>,
    pub sender: Sender,
    pub retry: Retry,
    /// The lease [`NOTIFICATIONS`]: of several replicas on one state store, only its holder
    /// delivers, so each message goes out once.
    pub lease: Arc<crate::store::Held>,
}

/// The lease of the dispatcher that delivers the outbox.
pub const NOTIFICATIONS: &str = "notifications";
/// How long a dispatcher that stopped renewing its lease (its replica died) keeps the others
/// from delivering. Longer than a pass can take (a slow receiver is cut at
/// DELIVERY_TIMEOUT), so that a live holder never loses it in the middle of a pass.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How often the outbox is polled.
pub const POLL: Duration = Duration::from_millis(500);

impl Dispatcher {
    /// Runs until `stop` says so.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %format!("{e:#}"), "notification pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => break,
            }
        }
        let lease = self.lease.clone();
        if let Err(e) = self.blocking(move |s| lease.release(s)).await {
            warn!(error = %format!("{e:#}"), "giving up the notifications lease failed; another replica takes it when it expires");
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn StateStore) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref())).await?
    }

    /// Delivers what is due now; returns how many messages were tried.
    pub async fn pass(&self) -> anyhow::Result<usize> {
        let now = now_ns();
        let lease = self.lease.clone();
        if !self.blocking(move |s| lease.hold(s, now)).await? {
            return Ok(0);
        }
        let due = self
            .blocking(move |s| s.due_notifications(now, 100))
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let notifiers: HashMap<String, Notifier> = self
            .blocking(|s| s.notifiers())
            .await?
            .into_iter()
            .map(|r| Notifier::from_row(r).map(|n| (n.name.clone(), n)))
            .collect::<anyhow::Result<_>>()?;
        let mut alerts: HashMap<i64, Option<Alert>> = HashMap::new();
        for p in &due {
            if !alerts.contains_key(&p.alert_id) {
                let id = p.alert_id;
                alerts.insert(id, self.blocking(move |s| s.alert(id)).await?);
            }
        }
        // Messages to different receivers go out together; one slow receiver costs at most
        // DELIVERY_TIMEOUT per pass.
        let mut tasks = tokio::task::JoinSet::new();
        for p in due.iter().cloned() {
            let target = notifiers.get(&p.notifier).map(|n| n.target.clone());
            let alert = alerts.get(&p.alert_id).cloned().flatten();
            let sender = self.sender.clone();
            tasks.spawn(async move {
                let start = Instant::now();
                let r = match (target, alert, Event::parse(&p.event)) {
                    (Some(t), Some(a), Some(ev)) => sender.send(&t, &a, ev, p.id).await,
                    (None, ..) => Err(Failure {
                        message: "the notifier was removed".into(),
                        retry: false,
                        after: None,
                    }),
                    (_, None, _) => Err(Failure {
                        message: format!("alert {} no longer exists", p.alert_id),
                        retry: false,
                        after: None,
                    }),
                    (.., None) => Err(Failure {
                        message: format!("unknown event `{}`", p.event),
                        retry: false,
                        after: None,
                    }),
                };
                (p, r, start.elapsed())
            });
        }
        let tried = due.len();
        while let Some(done) = tasks.join_next().await {
            let (p, r, took) = done?;
            let attempts = p.attempts + 1;
            let now = now_ns();
            match r {
                Ok(()) => {
                    info!(
                        notifier = p.notifier,
                        alert = p.alert_id,
                        event = p.event,
                        attempts,
                        ms = took.as_millis() as u64,
                        "notification delivered"
                    );
                    self.blocking(move |s| s.notification_delivered(p.id, attempts, now))
                        .await?;
                }
                Err(f) if f.retry && attempts < self.retry.max_attempts => {
                    let wait = f
                        .after
                        .unwrap_or_default()
                        .max(self.retry.backoff(attempts));
                    warn!(
                        notifier = p.notifier,
                        alert = p.alert_id,
                        attempts,
                        retry_in_s = wait.as_secs_f64(),
                        error = f.message,
                        "notification not delivered; will retry"
                    );
                    let next = now + wait.as_nanos() as i64;
                    self.blocking(move |s| {
                        s.notification_failed(p.id, attempts, Some(next), &f.message, now)
                    })
                    .await?;
                }
                Err(f) => {
                    error!(
                        notifier = p.notifier,
                        alert = p.alert_id,
                        attempts,
                        error = f.message,
                        "notification could not be delivered; counted as failed"
                    );
                    self.blocking(move |s| {
                        s.notification_failed(p.id, attempts, None, &f.message, now)
                    })
                    .await?;
                }
            }
        }
        Ok(tried)
    }
}

/// A sample alert for `notifiers test`.
pub fn sample_alert(now_ns: i64) -> Alert {
    Alert {
        id: 0,
        kind: "port_scan".into(),
        severity: "medium".into(),
        status: "open".into(),
        source: "192.0.2.66".into(),
        targets: vec!["198.51.100.10:22".into(), "198.51.100.10:23".into()],
        targets_total: 2,
        first_seen: now_ns - 60_000_000_000,
        last_seen: now_ns,
        observations: vec![
            json!({"note": "a test message from picket-controlplane notifiers test"}),
        ],
        observations_total: 1,
        sources: vec!["test".into()],
        assignee: None,
        tags: vec![],
        snoozed_until: None,
    }
}
