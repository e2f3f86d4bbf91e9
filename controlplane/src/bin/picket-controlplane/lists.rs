//! `picket-controlplane watchlist`, `allowlist` and `sensitivity`: what users set about
//! detection.

use std::path::PathBuf;

use clap::Subcommand;
use controlplane::{
    model::{Sensitivity, check_alert_type, sensitivity_scope},
    util::{net::parse_network, time::now_ns},
};

#[derive(clap::Args)]
pub struct WatchlistArgs {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: WatchlistCmd,
}

#[derive(Subcommand)]
pub enum WatchlistCmd {
    /// Add addresses or CIDR networks (a label says why they are listed).
    Add {
        #[arg(required = true, value_name = "ADDRESS_OR_CIDR")]
        entries: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Add the entries of a feed file: one address or CIDR per line, optionally followed by a
    /// label; `#` starts a comment. Lines that are not entries are reported with their number,
    /// and the others are added.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The entries, one per line: network, label.
    List,
    /// Remove an entry (as `list` shows it).
    Remove {
        #[arg(value_name = "ADDRESS_OR_CIDR")]
        entry: String,
    },
}

#[derive(clap::Args)]
pub struct AllowlistArgs {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: AllowlistCmd,
}

#[derive(Subcommand)]
pub enum AllowlistCmd {
    /// Allow a source address or network.
    Add {
        #[arg(value_name = "ADDRESS_OR_CIDR")]
        entry: String,
        /// Only alerts of this type (port_scan, address_sweep, brute_force, ...); default all.
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
        /// Why it is allowed.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The entries, one per line: network, alert type, label.
    List,
    /// Remove an entry.
    Remove {
        #[arg(value_name = "ADDRESS_OR_CIDR")]
        entry: String,
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
    },
}

#[derive(clap::Args)]
pub struct SensitivityArgs {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: SensitivityCmd,
}

#[derive(Subcommand)]
pub enum SensitivityCmd {
    /// Set the level for a network (or all) and an alert type (or all).
    Set {
        /// off, low, medium or high.
        level: String,
        /// An address or CIDR network of the alerts' sources; `*` for every source.
        #[arg(long, default_value = "*")]
        network: String,
        /// An alert type (port_scan, address_sweep, brute_force, ...); `*` for every type.
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
    },
    /// The settings, one per line: network, alert type, level.
    List,
    /// Remove a setting (back to medium, or to a less specific setting).
    Remove {
        #[arg(long, default_value = "*")]
        network: String,
        #[arg(long = "type", value_name = "TYPE", default_value = "*")]
        alert_type: String,
    },
}

pub fn watchlist(a: WatchlistArgs) -> anyhow::Result<()> {
    let store = a.stores.open_state()?;
    let now = now_ns();
    match a.cmd {
        WatchlistCmd::Add { entries, label } => {
            let parsed = entries
                .iter()
                .map(|e| Ok((parse_network(e)?.to_string(), label.clone())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let new = store.add_watchlist(&parsed, now)?;
            println!("{new} added, {} updated", parsed.len() - new);
        }
        WatchlistCmd::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let (mut entries, mut bad) = (Vec::new(), 0);
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let (entry, label) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                match parse_network(entry) {
                    Ok(net) => entries.push((net.to_string(), label.trim().to_string())),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{}:{}: {e}", file.display(), i + 1);
                    }
                }
            }
            let new = store.add_watchlist(&entries, now)?;
            println!(
                "{new} added, {} updated, {bad} line(s) not entries",
                entries.len() - new
            );
        }
        WatchlistCmd::List => {
            for (cidr, label) in store.watchlist()? {
                println!("{cidr}\t{label}");
            }
        }
        WatchlistCmd::Remove { entry } => {
            let cidr = parse_network(&entry)?.to_string();
            if !store.remove_watchlist(&cidr)? {
                anyhow::bail!("{cidr} is not on the watchlist");
            }
            println!("removed {cidr}");
        }
    }
    Ok(())
}

pub fn allowlist(a: AllowlistArgs) -> anyhow::Result<()> {
    let check_type = |t: &str| -> anyhow::Result<()> {
        check_alert_type(t).map_err(|e| anyhow::anyhow!("--type: {e}"))
    };
    let store = a.stores.open_state()?;
    match a.cmd {
        AllowlistCmd::Add {
            entry,
            alert_type,
            label,
        } => {
            check_type(&alert_type)?;
            let cidr = parse_network(&entry)?.to_string();
            let now = now_ns();
            let new = store.add_allowlist(&cidr, &alert_type, &label, now)?;
            println!(
                "{} {cidr} for {}",
                if new { "allowed" } else { "relabelled" },
                if alert_type == "*" {
                    "every alert type"
                } else {
                    &alert_type
                }
            );
        }
        AllowlistCmd::List => {
            for (cidr, t, label) in store.allowlist()? {
                println!("{cidr}\t{t}\t{label}");
            }
        }
        AllowlistCmd::Remove { entry, alert_type } => {
            let cidr = parse_network(&entry)?.to_string();
            if !store.remove_allowlist(&cidr, &alert_type)? {
                anyhow::bail!("{cidr} is not on the allowlist for {alert_type}");
            }
            println!("removed {cidr} ({alert_type})");
        }
    }
    Ok(())
}

pub fn sensitivity(a: SensitivityArgs) -> anyhow::Result<()> {
    let store = a.stores.open_state()?;
    match a.cmd {
        SensitivityCmd::Set {
            level,
            network,
            alert_type,
        } => {
            let l = Sensitivity::parse(&level)
                .ok_or_else(|| anyhow::anyhow!("`{level}` is not one of off, low, medium, high"))?;
            let net = sensitivity_scope(&network).map_err(|e| anyhow::anyhow!("--network: {e}"))?;
            check_alert_type(&alert_type).map_err(|e| anyhow::anyhow!("--type: {e}"))?;
            let now = now_ns();
            store.set_sensitivity(&net, &alert_type, l.as_str(), now)?;
            println!("{net} {alert_type}: {}", l.as_str());
        }
        SensitivityCmd::List => {
            for (net, t, level) in store.sensitivities()? {
                println!("{net}\t{t}\t{level}");
            }
        }
        SensitivityCmd::Remove {
            network,
            alert_type,
        } => {
            let net = sensitivity_scope(&network).map_err(|e| anyhow::anyhow!("--network: {e}"))?;
            if !store.remove_sensitivity(&net, &alert_type)? {
                anyhow::bail!("no sensitivity setting for {net} {alert_type}");
            }
            println!("removed {net} {alert_type}");
        }
    }
    Ok(())
}
