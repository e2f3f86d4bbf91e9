//! Notifications: alerts delivered where the team talks: a generic webhook (JSON, HMAC-SHA256
//! signature), Slack incoming webhooks, Webex Teams rooms (messages API, markdown) and syslog
//! (RFC 5424 over UDP or TCP, optionally with a CEF message).
//!
//! Nothing is lost: when the store merges an observation into an alert and the change is worth
//! telling (a new alert, a higher severity, the targets reaching 100, 1,000, ...), it queues one
//! message per notifier in the same transaction (the `outbox`). The [`Dispatcher`] delivers the
//! queue, retrying with exponential backoff; a message that still fails after the last attempt,
//! or that the receiver refuses for good (a 4xx other than 408/429), is kept as `failed` and
//! counted (`/api/v1/health`, `notifiers list`).

use std::{
    collections::HashMap,
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tracing::{error, info, warn};

use crate::{
    model::{Alert, Event, Severity},
    store::Store,
    util::time::{now_ns, rfc3339, rfc3339_text},
};

/// Where a notifier delivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A generic webhook: the alert as JSON, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// A Slack incoming webhook.
    Slack { url: String },
    /// A Webex Teams room, through the messages API with a bot token.
    Webex {
        token: String,
        room_id: String,
        #[serde(default = "webex_api")]
        api_url: String,
    },
    /// A syslog receiver.
    Syslog {
        /// host:port
        address: String,
        transport: Transport,
        /// Facility number (RFC 5424: 4 security/authorization, 16-23 local0-7).
        facility: u8,
        /// The message in ArcSight CEF instead of plain text.
        #[serde(default)]
        cef: bool,
    },
}

pub const WEBEX_API: &str = "https://webexapis.com";

fn webex_api() -> String {
    WEBEX_API.to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Udp,
    Tcp,
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Webex { .. } => "webex",
            Target::Syslog { .. } => "syslog",
        }
    }

    /// Where it goes, without secrets (for listings and logs).
    pub fn describe(&self) -> String {
        match self {
            Target::Webhook { url, secret } => format!(
                "{} ({})",
                redact_url(url),
                if secret.is_some() {
                    "signed"
                } else {
                    "unsigned"
                }
            ),
            Target::Slack { url } => redact_url(url),
            Target::Webex {
                room_id, api_url, ..
            } => format!("room {room_id} via {api_url}"),
            Target::Syslog {
                address,
                transport,
                facility,
                cef,
            } => format!(
                "{address} over {} (facility {facility}{})",
                match transport {
                    Transport::Udp => "UDP",
                    Transport::Tcp => "TCP",
                },
                if *cef { ", CEF" } else { "" }
            ),
        }
    }

    /// Checks what can be checked before the first delivery.
    pub fn validate(&self) -> anyhow::Result<()> {
        let http = |what: &str, url: &str| -> anyhow::Result<()> {
            let u = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("{what}: `{url}` is not a URL: {e}"))?;
            anyhow::ensure!(
                matches!(u.scheme(), "http" | "https") && u.host().is_some(),
                "{what}: `{url}` must be an http:// or https:// URL with a host"
            );
            Ok(())
        };
        match self {
            Target::Webhook { url, secret } => {
                http("--url", url)?;
                if let Some(s) = secret {
                    anyhow::ensure!(!s.is_empty(), "the webhook secret is empty");
                }
            }
            Target::Slack { url } => http("--url", url)?,
            Target::Webex {
                token,
                room_id,
                api_url,
            } => {
                http("--api-url", api_url)?;
                anyhow::ensure!(!token.is_empty(), "the Webex bot token is empty");
                anyhow::ensure!(!room_id.is_empty(), "--room is empty");
            }
            Target::Syslog {
                address, facility, ..
            } => {
                anyhow::ensure!(
                    address.rsplit_once(':').is_some_and(
                        |(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    ),
                    "--address: `{address}` must be HOST:PORT"
                );
                anyhow::ensure!(*facility <= 23, "the syslog facility must be 0 to 23");
            }
        }
        Ok(())
    }
}

/// A URL with its path and query hidden: Slack and webhook URLs carry their secret there.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

/// A notifier's name: 1-64 letters, digits, `-` or `_`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "`{name}`: a notifier name is 1-64 letters, digits, `-` or `_`"
    );
    Ok(())
}

/// Syslog facility names (RFC 5424 table 1) and their numbers.
pub const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

pub fn facility(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .or_else(|| name.parse().ok().filter(|v| *v <= 23))
}

/// A configured notifier.
#[derive(Clone, Debug, PartialEq)]
pub struct Notifier {
    pub name: String,
    pub target: Target,
    /// Alerts below this severity are not sent here.
    pub min_severity: Severity,
}

/// A queued message, as the dispatcher takes it from the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub id: i64,
    pub notifier: String,
    pub alert_id: i64,
    pub event: String,
    pub attempts: u32,
}

/// Queue counts of one notifier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// An alert as JSON (the API's form: times in RFC 3339).
pub fn alert_json(a: &Alert) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("first_seen".into(), rfc3339(a.first_seen));
        m.insert("last_seen".into(), rfc3339(a.last_seen));
        m.insert(
            "snoozed_until".into(),
            a.snoozed_until
                .map_or(Value::Null, crate::util::time::rfc3339),
        );
    }
    v
}

/// "10.0.0.1:22, 10.0.0.1:23 and 14 more"
fn targets_text(a: &Alert, shown: usize) -> String {
    let mut s = a
        .targets
        .iter()
        .take(shown)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = a
        .targets_total
        .saturating_sub(shown.min(a.targets.len()) as u64);
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// One line for syslog and chat previews.
pub fn summary(a: &Alert, ev: Event) -> String {
    format!(
        "Picket alert #{} ({}): {} {} from {} against {} target{} ({}); first seen {}, last seen {}; seen by {}",
        a.id,
        ev.verb(),
        a.severity,
        a.kind,
        a.source,
        a.targets_total,
        if a.targets_total == 1 { "" } else { "s" },
        targets_text(a, 5),
        rfc3339_text(a.first_seen),
        rfc3339_text(a.last_seen),
        a.sources.join(", ")
    )
}

/// Markdown for Webex (Slack's mrkdwn differs: `*bold*`, see [`slack_text`]).
pub fn markdown(a: &Alert, ev: Event, link: Option<&str>) -> String {
    let mut s = format!(
        "**Picket: {} {}** ({}) from `{}`\n\n\
         - Targets: {} ({})\n\
         - First seen {}, last seen {}\n\
         - Seen by {}\n\
         - Alert #{}, {}, {} observation{}",
        ev.verb(),
        a.kind,
        a.severity,
        a.source,
        a.targets_total,
        targets_text(a, 10),
        rfc3339_text(a.first_seen),
        rfc3339_text(a.last_seen),
        a.sources.join(", "),
        a.id,
        a.status,
        a.observations_total,
        if a.observations_total == 1 { "" } else { "s" },
    );
    if let Some(l) = link {
        s.push_str(&format!("\n\n[Open in Picket]({l})"));
    }
    s
}

/// Slack mrkdwn.
pub fn slack_text(a: &Alert, ev: Event, link: Option<&str>) -> String {
    let mut s = format!(
        "*Picket: {} {}* ({}) from `{}`\n\
         • Targets: {} ({})\n\
         • First seen {}, last seen {}\n\
         • Seen by {}\n\
         • Alert #{}, {}, {} observation{}",
        ev.verb(),
        a.kind,
        a.severity,
        a.source,
        a.targets_total,
        targets_text(a, 10),
        rfc3339_text(a.first_seen),
        rfc3339_text(a.last_seen),
        a.sources.join(", "),
        a.id,
        a.status,
        a.observations_total,
        if a.observations_total == 1 { "" } else { "s" },
    );
    if let Some(l) = link {
        s.push_str(&format!("\n<{l}|Open in Picket>"));
    }
    s
}

/// The generic webhook's body.
pub fn webhook_body(a: &Alert, ev: Event, delivery: i64, link: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": ev.as_str(),
        "delivery": delivery,
        "alert": alert_json(a),
        "url": link,
    }))
    .expect("JSON values serialize")
}

/// `sha256=<hex HMAC-SHA256 of the body>`, as GitHub signs its webhooks.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(body);
    let tag = m.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// RFC 5424 severity of an alert.
fn syslog_severity(a: &Alert) -> u8 {
    match Severity::parse(&a.severity) {
        Some(Severity::Critical) => 2,
        Some(Severity::High) => 3,
        Some(Severity::Medium) => 4,
        _ => 5,
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// CEF header field: `|` and `\` escaped.
fn cef_header(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|")
}

/// CEF extension value: `=`, `\` and line breaks escaped.
fn cef_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// An ArcSight CEF message for an alert.
pub fn cef(a: &Alert, ev: Event) -> String {
    let sev = match Severity::parse(&a.severity) {
        Some(Severity::Critical) => 10,
        Some(Severity::High) => 8,
        Some(Severity::Medium) => 5,
        _ => 3,
    };
    format!(
        "CEF:0|Picket|Picket|{}|{}|{}|{sev}|src={} rt={} start={} end={} cnt={} \
         cs1Label=targets cs1={} cn1Label=alertId cn1={} cs2Label=event cs2={} \
         cs3Label=seenBy cs3={}",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(&a.kind),
        cef_header(&format!("{} from {}", a.kind, a.source)),
        cef_value(&a.source),
        a.last_seen / 1_000_000,
        a.first_seen / 1_000_000,
        a.last_seen / 1_000_000,
        a.observations_total,
        cef_value(&targets_text(a, 20)),
        a.id,
        ev.as_str(),
        cef_value(&a.sources.join(",")),
    )
}

/// One RFC 5424 message (no framing), stamped `now_ns`.
pub fn syslog_message(
    a: &Alert,
    ev: Event,
    facility: u8,
    cef_msg: bool,
    host: &str,
    now_ns: i64,
) -> String {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(a));
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(now_ns.into())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
        ts.microsecond()
    );
    // HOSTNAME is PRINTUSASCII without spaces, at most 255 characters.
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let host = if host.is_empty() { "-".into() } else { host };
    let msg = if cef_msg { cef(a, ev) } else { summary(a, ev) };
    format!(
        "<{pri}>1 {ts} {host} picket {} {} [picket@32473 id=\"{}\" type=\"{}\" severity=\"{}\" \
         source=\"{}\" targets=\"{}\" status=\"{}\"] {msg}",
        std::process::id(),
        ev.as_str(),
        a.id,
        sd_escape(&a.kind),
        sd_escape(&a.severity),
        sd_escape(&a.source),
        a.targets_total,
        sd_escape(&a.status),
    )
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// False for a refusal that will not change (a 4xx other than 408 and 429).
    pub retry: bool,
    /// The receiver's Retry-After, if any.
    pub after: Option<Duration>,
}

impl Failure {
    fn retry(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retry: true,
            after: None,
        }
    }
}

/// Sends messages; one per process (it holds the HTTP connection pool).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    host: String,
    /// The dashboard's public URL, for links in messages.
    public_url: Option<String>,
}

/// How long one delivery may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

impl Sender {
    pub fn new(public_url: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(concat!("picket/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(Sender {
            http,
            host,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
        })
    }

    fn link(&self, a: &Alert) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{u}/#/alerts/{}", a.id))
    }

    /// Delivers one message about `a` to `target`.
    pub async fn send(
        &self,
        target: &Target,
        a: &Alert,
        ev: Event,
        delivery: i64,
    ) -> Result<(), Failure> {
        let link = self.link(a);
        match target {
            Target::Webhook { url, secret } => {
                let body = webhook_body(a, ev, delivery, link.as_deref());
                let mut req = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-picket-event", ev.as_str())
                    .header("x-picket-delivery", delivery.to_string());
                if let Some(s) = secret {
                    req = req.header("x-picket-signature-256", signature(s, &body));
                }
                self.http_result(req.body(body)).await
            }
            Target::Slack { url } => {
                let body = json!({
                    "text": slack_text(a, ev, link.as_deref()),
                    "unfurl_links": false,
                });
                self.http_result(self.http.post(url).json(&body)).await
            }
            Target::Webex {
                token,
                room_id,
                api_url,
            } => {
                let body = json!({
                    "roomId": room_id,
                    "markdown": markdown(a, ev, link.as_deref()),
                    "text": summary(a, ev),
                });
                let url = format!("{}/v1/messages", api_url.trim_end_matches('/'));
                self.http_result(self.http.post(url).bearer_auth(token).json(&body))
                    .await
            }
            Target::Syslog {
                address,
                transport,
                facility,
                cef,
            } => {
                let now = crate::util::time::now_ns();
                let msg = syslog_message(a, ev, *facility, *cef, &self.host, now);
                send_syslog(address, *transport, msg)
                    .await
                    .map_err(|e| Failure::retry(format!("syslog to {address}: {e}")))
            }
        }
    }

    async fn http_result(&self, req: reqwest::RequestBuilder) -> Result<(), Failure> {
        let resp = req.send().await.map_err(|e| {
            // reqwest's own message is vague ("error sending request"): the causes say why.
            let e = e.without_url();
            let mut msg = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            Failure::retry(msg)
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(Failure {
            message: format!("HTTP {status}: {}", text.trim()),
            retry: status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429,
            after,
        })
    }
}

async fn send_syslog(address: &str, transport: Transport, msg: String) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let fut = async {
        match transport {
            Transport::Udp => {
                let peer = tokio::net::lookup_host(address)
                    .await?
                    .next()
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                    })?;
                let bind = if peer.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let sock = tokio::net::UdpSocket::bind(bind).await?;
                sock.send_to(msg.as_bytes(), peer).await?;
            }
            Transport::Tcp => {
                // Octet counting (RFC 6587 3.4.1): a newline inside the message stays safe.
                let mut s = tokio::net::TcpStream::connect(address).await?;
                let mut frame = Vec::with_capacity(msg.len() + 8);
                write!(frame, "{} {msg}", msg.len())?;
                s.write_all(&frame).await?;
                s.shutdown().await?;
            }
        }
        Ok(())
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))
        })
}

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
    pub store: Arc<dyn Store>,
    pub sender: Sender,
    pub retry: Retry,
}

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
                _ = stop.changed() => return,
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref())).await?
    }

    /// Delivers what is due now; returns how many messages were tried.
    pub async fn pass(&self) -> anyhow::Result<usize> {
        let now = now_ns();
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
            .map(|n| (n.name.clone(), n))
            .collect();
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
                        s.notification_failed(p.id, attempts, Some(next), &f.message)
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
                    self.blocking(move |s| s.notification_failed(p.id, attempts, None, &f.message))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(sev: &str, targets: u64) -> Alert {
        Alert {
            id: 7,
            kind: "port_scan".into(),
            severity: sev.into(),
            status: "open".into(),
            source: "10.0.0.9".into(),
            targets: (0..targets.min(3))
                .map(|i| format!("10.0.0.1:{}", 20 + i))
                .collect(),
            targets_total: targets,
            first_seen: 1_795_860_000_000_000_000,
            last_seen: 1_795_860_060_500_000_000,
            observations: vec![],
            observations_total: 4,
            sources: vec!["sensor:lab".into()],
            assignee: None,
            tags: vec![],
            snoozed_until: None,
        }
    }

    #[test]
    fn hmac_signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn syslog_message_is_rfc_5424_with_escaped_structured_data() {
        let mut a = alert("high", 16);
        a.source = "a\"b]c\\d".into();
        let m = syslog_message(&a, Event::New, 4, false, "cp 1", 1_795_860_000_123_456_789);
        let pid = std::process::id();
        assert!(
            m.starts_with(&format!(
                "<35>1 2026-11-28T10:00:00.123456Z cp1 picket {pid} alert.new \
                 [picket@32473 id=\"7\" type=\"port_scan\" severity=\"high\" \
                 source=\"a\\\"b\\]c\\\\d\" targets=\"16\" status=\"open\"] Picket alert #7 (new): \
                 high port_scan from a\"b]c\\d against 16 targets (10.0.0.1:20, 10.0.0.1:21, \
                 10.0.0.1:22 and 13 more)"
            )),
            "{m}"
        );
        let low = syslog_message(&alert("low", 1), Event::Grew, 16, false, "", 0);
        assert!(
            low.starts_with("<133>1 1970-01-01T00:00:00.000000Z - picket "),
            "{low}"
        );
    }

    #[test]
    fn cef_escapes_header_and_extension() {
        let mut a = alert("critical", 2);
        a.kind = "port|scan".into();
        a.source = "x=y".into();
        let c = cef(&a, Event::Escalated);
        assert!(
            c.starts_with(&format!(
                "CEF:0|Picket|Picket|{}|port\\|scan|port\\|scan from x=y|10|src=x\\=y rt=1795860060500 ",
                env!("CARGO_PKG_VERSION")
            )),
            "{c}"
        );
        assert!(c.contains("cn1Label=alertId cn1=7 cs2Label=event cs2=alert.escalated"));
    }

    #[test]
    fn texts_name_the_alert_and_link_to_it() {
        let a = alert("medium", 16);
        let md = markdown(&a, Event::New, Some("https://picket.example/#/alerts/7"));
        assert!(md.starts_with("**Picket: new port_scan** (medium) from `10.0.0.9`"));
        assert!(md.contains("- Targets: 16 (10.0.0.1:20, 10.0.0.1:21, 10.0.0.1:22 and 13 more)"));
        assert!(md.ends_with("[Open in Picket](https://picket.example/#/alerts/7)"));
        let sl = slack_text(&a, Event::New, Some("https://x/#/alerts/7"));
        assert!(sl.starts_with("*Picket: new port_scan* (medium) from `10.0.0.9`"));
        assert!(sl.ends_with("<https://x/#/alerts/7|Open in Picket>"));
        let body: Value =
            serde_json::from_slice(&webhook_body(&a, Event::New, 3, None)).expect("json");
        assert_eq!(body["event"], "alert.new");
        assert_eq!(body["delivery"], 3);
        assert_eq!(body["alert"]["type"], "port_scan");
        assert_eq!(body["alert"]["first_seen"], "2026-11-28T10:00:00Z");
    }

    #[test]
    fn targets_are_checked_and_described_without_secrets() {
        let w = Target::Webhook {
            url: "https://hooks.example.com/services/T000/B000/XXXX".into(),
            secret: Some("s".into()),
        };
        w.validate().expect("valid");
        assert_eq!(w.describe(), "https://hooks.example.com/… (signed)");
        let bad = Target::Slack {
            url: "ftp://x".into(),
        };
        assert!(bad.validate().is_err());
        let s = Target::Syslog {
            address: "localhost".into(),
            transport: Transport::Udp,
            facility: 4,
            cef: false,
        };
        assert_eq!(
            s.validate().err().map(|e| e.to_string()).as_deref(),
            Some("--address: `localhost` must be HOST:PORT")
        );
        assert_eq!(facility("local3"), Some(19));
        assert_eq!(facility("4"), Some(4));
        assert_eq!(facility("24"), None);
        let r = Retry::default();
        assert_eq!(r.backoff(1), Duration::from_secs(2));
        assert_eq!(r.backoff(4), Duration::from_secs(16));
        assert_eq!(r.backoff(30), MAX_BACKOFF);
    }
}
