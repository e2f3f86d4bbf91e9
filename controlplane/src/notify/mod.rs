//! Notifications: alerts delivered where the team talks: a generic webhook (JSON, HMAC-SHA256
//! signature), Slack incoming webhooks, Webex Teams rooms (messages API, markdown) and syslog
//! (RFC 5424 over UDP or TCP, optionally with a CEF message).
//!
//! Nothing is lost: when the alerts service merges an observation into an alert and the change
//! is worth telling (a new alert, a higher severity, the targets reaching 100, 1,000, ...), it
//! queues one message per notifier in the same transaction (the `outbox`). The [`Dispatcher`]
//! (`dispatch.rs`) delivers the queue through the [`Sender`] (`send.rs`), retrying with
//! exponential backoff; a message that still fails after the last attempt, or that the receiver
//! refuses for good (a 4xx other than 408/429), is kept as `failed` and counted
//! (`/api/v1/health`, `notifiers list`). What each receiver is sent is in `format.rs`.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    model::Severity,
    store::{NotifierRow, StateStore},
};

mod dispatch;
mod format;
mod send;

pub use dispatch::{Dispatcher, LEASE_TTL, MAX_BACKOFF, NOTIFICATIONS, POLL, Retry, sample_alert};
pub use format::{cef, markdown, signature, slack_text, summary, syslog_message, webhook_body};
pub use send::{DELIVERY_TIMEOUT, Destinations, Failure, Sender};

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
            } => format!("room {room_id} via {}", public_url(api_url)),
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

/// A URL without its user, password, query and fragment: what may be shown to anyone.
fn public_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path().trim_end_matches('/')
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

/// The Webex messages endpoint under `api_url`: its path extended, its query kept.
pub fn webex_messages_url(api_url: &str) -> anyhow::Result<reqwest::Url> {
    let mut u = reqwest::Url::parse(api_url)
        .map_err(|e| anyhow::anyhow!("`{}` is not a URL: {e}", public_url(api_url)))?;
    u.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("`{}` cannot have a path", public_url(api_url)))?
        .pop_if_empty()
        .extend(["v1", "messages"]);
    Ok(u)
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

impl Notifier {
    /// From its stored row (the target is JSON).
    pub fn from_row(r: NotifierRow) -> anyhow::Result<Notifier> {
        Ok(Notifier {
            target: serde_json::from_str(&r.target)
                .with_context(|| format!("notifier `{}`: unreadable target", r.name))?,
            name: r.name,
            min_severity: r.min_severity,
        })
    }

    /// As it is stored.
    pub fn to_row(&self) -> anyhow::Result<NotifierRow> {
        Ok(NotifierRow {
            name: self.name.clone(),
            target: serde_json::to_string(&self.target)?,
            min_severity: self.min_severity,
        })
    }
}

/// The notifiers of `store`, by name.
pub fn notifiers(store: &dyn StateStore) -> anyhow::Result<Vec<Notifier>> {
    store
        .notifiers()?
        .into_iter()
        .map(Notifier::from_row)
        .collect()
}

/// Adds a notifier to `store`; fails if the name exists.
pub fn add(store: &dyn StateStore, n: &Notifier, now_ns: i64) -> anyhow::Result<()> {
    store.add_notifier(&n.to_row()?, now_ns)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::*;
    use crate::model::Event;

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

    #[test]
    fn a_webex_api_url_is_shown_without_credentials_and_joined_keeping_its_query() {
        let w = Target::Webex {
            token: "bot-token".into(),
            room_id: "R1".into(),
            api_url: "https://user:pass@proxy.example.com/webex/?k=secret#f".into(),
        };
        w.validate().expect("valid");
        let shown = w.describe();
        assert_eq!(shown, "room R1 via https://proxy.example.com/webex");
        assert!(!shown.contains("pass") && !shown.contains("secret"));
        assert_eq!(
            webex_messages_url("https://proxy.example.com/webex/?k=secret")
                .expect("url")
                .as_str(),
            "https://proxy.example.com/webex/v1/messages?k=secret"
        );
        assert_eq!(
            webex_messages_url(WEBEX_API).expect("url").as_str(),
            "https://webexapis.com/v1/messages"
        );
    }

    /// A receiver on loopback that answers every request with `answer` and counts them.
    async fn receiver(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), hits)
    }

    #[tokio::test]
    async fn redirects_are_not_followed_answers_not_echoed_and_destinations_checked() {
        let alert = sample_alert(1);
        let (elsewhere, elsewhere_hits) =
            receiver("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        let redirect: &'static str = Box::leak(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {elsewhere}/x\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (redirecting, _) = receiver(redirect).await;
        let (leaky, _) = receiver(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 20\r\nconnection: close\r\n\r\n\
             internal-secret-data",
        )
        .await;
        let any = Sender::new(None, Destinations::default()).expect("sender");
        let hook = |url: &str| Target::Webhook {
            url: format!("{url}/hook"),
            secret: None,
        };
        let f = any
            .send(&hook(&redirecting), &alert, Event::Test, 1)
            .await
            .expect_err("a redirect is a failure");
        assert_eq!(f.message, "HTTP 307 Temporary Redirect");
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0, "not followed");
        let f = any
            .send(&hook(&leaky), &alert, Event::Test, 1)
            .await
            .expect_err("404");
        assert_eq!(f.message, "HTTP 404 Not Found");
        assert!(!f.retry);
        // Only 10.0.0.0/8 allowed: a loopback literal and a name resolving to loopback are
        // refused before any connection.
        let only = Sender::new(
            None,
            Destinations::only(&["10.0.0.0/8".into()]).expect("nets"),
        )
        .expect("sender");
        let port = elsewhere.rsplit(':').next().expect("port");
        for url in [elsewhere.clone(), format!("http://localhost:{port}")] {
            let f = only
                .send(&hook(&url), &alert, Event::Test, 1)
                .await
                .expect_err("refused");
            assert!(
                f.message.contains("not an allowed destination"),
                "{url}: {}",
                f.message
            );
        }
        let syslog = Target::Syslog {
            address: format!("127.0.0.1:{port}"),
            transport: Transport::Tcp,
            facility: 4,
            cef: false,
        };
        let f = only
            .send(&syslog, &alert, Event::Test, 1)
            .await
            .expect_err("refused");
        assert!(
            f.message.contains("not an allowed destination"),
            "{}",
            f.message
        );
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
        // Allowed, the same receiver is reached.
        let loopback = Sender::new(
            None,
            Destinations::only(&["127.0.0.0/8".into()]).expect("nets"),
        )
        .expect("sender");
        loopback
            .send(&hook(&elsewhere), &alert, Event::Test, 1)
            .await
            .expect("delivered");
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 1);
    }
}
