//! Delivery of one message to one receiver, and how a failure is judged (retried or not).

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::model::{Alert, Event};

use serde_json::json;

use super::{
    Target, Transport,
    format::{markdown, signature, slack_text, summary, syslog_message, webhook_body},
};

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

    /// A failure that trying again cannot mend.
    fn permanent(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retry: false,
            after: None,
        }
    }
}

/// The networks notifications may go to (`serve --notify-allow`); empty: anywhere.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    nets: Vec<ipnet::IpNet>,
}

impl Destinations {
    /// Only to these networks (addresses or CIDR).
    pub fn only(nets: &[String]) -> anyhow::Result<Self> {
        Ok(Destinations {
            nets: nets
                .iter()
                .map(|n| crate::util::net::parse_network(n))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The addresses of `host:port` that may be reached, in the resolver's order.
    async fn resolve(&self, host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host(host_port).await?.collect();
        let allowed: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.allows(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                if all.is_empty() {
                    "no address".to_string()
                } else {
                    format!("{host_port}: not an allowed destination (--notify-allow)")
                },
            ));
        }
        Ok(allowed)
    }
}

/// reqwest's name resolution through [`Destinations`]: a name that resolves only outside them
/// is not connected to.
struct AllowedResolver(Arc<Destinations>);

impl reqwest::dns::Resolve for AllowedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.0.clone();
        Box::pin(async move {
            let addrs = allow.resolve(&format!("{}:0", name.as_str())).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends messages; one per process (it holds the HTTP connection pool).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    host: String,
    /// The dashboard's public URL, for links in messages.
    public_url: Option<String>,
    allow: Arc<Destinations>,
}

/// How long one delivery may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

impl Sender {
    /// A sender to `allow`'s destinations. Redirects are not followed (a POST would become a
    /// GET elsewhere): a 3xx answer is a failure.
    pub fn new(public_url: Option<String>, allow: Destinations) -> anyhow::Result<Self> {
        let allow = Arc::new(allow);
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(concat!("picket/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(AllowedResolver(allow.clone())))
            .build()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(Sender {
            http,
            host,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            allow,
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
        self.check_literal(target)?;
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
                let url = super::webex_messages_url(api_url)
                    .map_err(|e| Failure::permanent(format!("{e:#}")))?;
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
                send_syslog(&self.allow, address, *transport, msg)
                    .await
                    .map_err(|e| Failure::retry(format!("syslog to {address}: {e}")))
            }
        }
    }

    /// An address written in a URL is not resolved, so the resolver does not see it: checked
    /// here.
    fn check_literal(&self, target: &Target) -> Result<(), Failure> {
        let url = match target {
            Target::Webhook { url, .. } | Target::Slack { url } => url.as_str(),
            Target::Webex { api_url, .. } => api_url.as_str(),
            Target::Syslog { .. } => return Ok(()),
        };
        let literal = reqwest::Url::parse(url).ok().and_then(|u| {
            u.host_str()?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        let Some(ip) = literal else {
            return Ok(());
        };
        if self.allow.allows(ip) {
            Ok(())
        } else {
            Err(Failure::permanent(format!(
                "{ip} is not an allowed destination (--notify-allow)"
            )))
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
        // The receiver's answer is not repeated (to the API's caller, into the store): a
        // notifier must not become a way to read what an internal address serves.
        Err(Failure {
            message: format!("HTTP {status}"),
            retry: status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429,
            after,
        })
    }
}

async fn send_syslog(
    allow: &Destinations,
    address: &str,
    transport: Transport,
    msg: String,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let fut = async {
        match transport {
            Transport::Udp => {
                let peer = allow.resolve(address).await?[0];
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
                let mut s =
                    tokio::net::TcpStream::connect(allow.resolve(address).await?.as_slice())
                        .await?;
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
