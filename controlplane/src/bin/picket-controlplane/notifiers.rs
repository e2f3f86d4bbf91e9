//! `picket-controlplane notifiers`: where alerts are sent.

use std::path::PathBuf;

use clap::Subcommand;
use controlplane::util::time::now_ns;

use crate::secret;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Add a notifier (takes effect at the next alert, also in a running `serve`).
    Add {
        /// A name for it (letters, digits, `-`, `_`).
        name: String,
        /// Alerts below this severity are not sent: low, medium, high, critical.
        #[arg(long, value_name = "SEVERITY", default_value = "low", value_parser = severity)]
        min_severity: controlplane::model::Severity,
        #[command(subcommand)]
        target: TargetArgs,
    },
    /// The notifiers, with what was delivered, is pending and failed.
    List,
    /// Remove a notifier; its undelivered messages are dropped (and counted).
    Remove { name: String },
    /// Send a sample alert to a notifier now and say what happened.
    Test { name: String },
}

#[derive(Subcommand)]
pub enum TargetArgs {
    /// A generic webhook: POSTs the alert as JSON. With a secret, the header
    /// X-Picket-Signature-256 is `sha256=` and the hex HMAC-SHA256 of the body.
    Webhook {
        #[arg(long)]
        url: String,
        /// A file holding the signing secret (its first line).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// A Slack incoming webhook (https://hooks.slack.com/services/...).
    Slack {
        #[arg(long)]
        url: String,
    },
    /// A Webex Teams room: messages API with a bot token, markdown.
    Webex {
        /// The room's id.
        #[arg(long, value_name = "ROOM_ID")]
        room: String,
        /// A file holding the bot's access token (its first line).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The API's base URL.
        #[arg(long, value_name = "URL", default_value = controlplane::notify::WEBEX_API)]
        api_url: String,
    },
    /// A syslog receiver: RFC 5424, over UDP (default) or TCP (octet-counted frames).
    Syslog {
        /// HOST:PORT of the receiver.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Facility: a name (auth, authpriv, local0..local7, ...) or 0-23.
        #[arg(long, default_value = "auth", value_parser = facility)]
        facility: u8,
        /// The message in ArcSight CEF instead of plain text.
        #[arg(long)]
        cef: bool,
    },
}

fn severity(s: &str) -> Result<controlplane::model::Severity, String> {
    controlplane::model::Severity::parse(s)
        .ok_or_else(|| format!("`{s}` is not one of low, medium, high, critical"))
}

fn facility(s: &str) -> Result<u8, String> {
    controlplane::notify::facility(s)
        .ok_or_else(|| format!("`{s}` is not a syslog facility (auth, local0..local7, or 0-23)"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    use controlplane::notify::{self, Notifier, Target, Transport};
    let store = a.stores.open_state()?;
    match a.cmd {
        Cmd::Add {
            name,
            min_severity,
            target,
        } => {
            notify::check_name(&name)?;
            let target = match target {
                TargetArgs::Webhook { url, secret_file } => Target::Webhook {
                    url,
                    secret: secret_file.as_deref().map(secret).transpose()?,
                },
                TargetArgs::Slack { url } => Target::Slack { url },
                TargetArgs::Webex {
                    room,
                    token_file,
                    api_url,
                } => Target::Webex {
                    token: secret(&token_file)?,
                    room_id: room,
                    api_url,
                },
                TargetArgs::Syslog {
                    address,
                    tcp,
                    facility,
                    cef,
                } => Target::Syslog {
                    address,
                    transport: if tcp { Transport::Tcp } else { Transport::Udp },
                    facility,
                    cef,
                },
            };
            target.validate()?;
            let n = Notifier {
                name,
                target,
                min_severity,
            };
            let now = now_ns();
            notify::add(store.as_ref(), &n, now)?;
            println!(
                "added {} notifier `{}`: {}, alerts of severity {} and above",
                n.target.kind(),
                n.name,
                n.target.describe(),
                n.min_severity.as_str()
            );
        }
        Cmd::List => {
            let counts: std::collections::HashMap<_, _> =
                store.notification_counts()?.into_iter().collect();
            for n in notify::notifiers(store.as_ref())? {
                let c = counts.get(&n.name).cloned().unwrap_or_default();
                println!(
                    "{}\t{}\t{}\tmin {}\tdelivered {}, pending {}, failed {}",
                    n.name,
                    n.target.kind(),
                    n.target.describe(),
                    n.min_severity.as_str(),
                    c.delivered,
                    c.pending,
                    c.failed
                );
            }
        }
        Cmd::Remove { name } => match store.remove_notifier(&name)? {
            None => anyhow::bail!("there is no notifier `{name}`"),
            Some(dropped) => {
                println!("removed `{name}`; {dropped} undelivered message(s) dropped with it")
            }
        },
        Cmd::Test { name } => {
            let n = notify::notifiers(store.as_ref())?
                .into_iter()
                .find(|n| n.name == name)
                .ok_or_else(|| anyhow::anyhow!("there is no notifier `{name}`"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let now = now_ns();
            let sender = notify::Sender::new(None, notify::Destinations::default())?;
            rt.block_on(sender.send(
                &n.target,
                &notify::sample_alert(now),
                controlplane::model::Event::Test,
                0,
            ))
            .map_err(|f| anyhow::anyhow!("`{name}` ({}): {}", n.target.describe(), f.message))?;
            println!("sent a test message to `{name}` ({})", n.target.describe());
        }
    }
    Ok(())
}
