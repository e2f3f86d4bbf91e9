//! `picket-controlplane sensors`: sensor keys.

use std::path::PathBuf;

use clap::Subcommand;
use controlplane::{keys, store::Stores, util::time::now_ns};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a sensor and print its key (shown only now; only a hash is stored).
    Add { name: String },
    /// Sensors with their registration and last heartbeat.
    List,
    /// Revoke a sensor's key: its next call is refused.
    Revoke { name: String },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let store = Stores::embedded(&a.data_dir)?.state;
    match a.cmd {
        Cmd::Add { name } => {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                anyhow::bail!(
                    "a sensor name is 1 to 64 characters of letters, digits, `-`, `_` and `.`"
                );
            }
            let key = keys::new_key()?;
            store.add_sensor(&name, &keys::hash(&key), now_ns())?;
            eprintln!(
                "sensor `{name}` created. Its key follows; it is shown only now. Give it to the \
                 sensor with --sensor-key-file."
            );
            println!("{key}");
        }
        Cmd::List => {
            println!(
                "{:<24} {:<8} {:<20} {:<10} {:<24} last heartbeat",
                "name", "status", "host", "version", "kernel"
            );
            for s in store.sensors()? {
                let last = crate::when(s.last_heartbeat_unix_ns);
                println!(
                    "{:<24} {:<8} {:<20} {:<10} {:<24} {last}",
                    s.name,
                    if s.revoked { "revoked" } else { "active" },
                    s.hostname.unwrap_or_else(|| "-".into()),
                    s.version.unwrap_or_else(|| "-".into()),
                    s.kernel.unwrap_or_else(|| "-".into()),
                );
            }
        }
        Cmd::Revoke { name } => {
            if !store.revoke_sensor(&name, now_ns())? {
                anyhow::bail!("no active sensor named `{name}`");
            }
            eprintln!("sensor `{name}` revoked: its key is refused from now on");
        }
    }
    Ok(())
}
