//! `picket-controlplane sensors`: sensor keys.

use std::path::PathBuf;

use clap::Subcommand;
use controlplane::{keys, util::time::now_ns};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a sensor and print its key (shown only now; only a hash is stored).
    Add {
        name: String,
        /// Write the key to FILE (created, mode 0600; never overwritten) instead of printing
        /// it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sensors with their registration and last heartbeat.
    List,
    /// Revoke a sensor's key: its next call is refused.
    Revoke { name: String },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let store = a.stores.open_state()?;
    match a.cmd {
        Cmd::Add { name, out } => {
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
            // The file first: a sensor is not created with a key nobody could read.
            let file = match &out {
                Some(path) => Some(secret_file(path)?),
                None => None,
            };
            store.add_sensor(&name, &keys::hash(&key), now_ns())?;
            match (file, &out) {
                (Some(mut f), Some(path)) => {
                    use std::io::Write as _;
                    writeln!(f, "{key}")
                        .and_then(|()| f.sync_all())
                        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    eprintln!(
                        "sensor `{name}` created; its key is in {} (mode 0600). Give it to the \
                         sensor with --sensor-key-file.",
                        path.display()
                    );
                }
                _ => {
                    eprintln!(
                        "sensor `{name}` created. Its key follows; it is shown only now. Give it \
                         to the sensor with --sensor-key-file (or use --out FILE)."
                    );
                    println!("{key}");
                }
            }
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

/// A new file only its owner can read and write; an existing one is not overwritten.
fn secret_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))
}
