//! `picket-controlplane users` and `tokens`: who may use the dashboard and the API.

use std::path::PathBuf;

use clap::Subcommand;
use controlplane::util::time::now_ns;

use crate::{secret, when};

#[derive(clap::Args)]
pub struct UsersArgs {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: UsersCmd,
}

#[derive(Subcommand)]
pub enum UsersCmd {
    /// Add a user; prints a generated password unless --password-file gives one.
    Add {
        name: String,
        /// viewer (reads) or admin (also triages alerts and changes settings).
        #[arg(long, default_value = "viewer", value_parser = role)]
        role: controlplane::model::Role,
        /// A file holding the password (its first line; at least 10 characters).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Users with their role and last login.
    List,
    /// Set a new password (generated and printed unless --password-file); ends their sessions.
    Passwd {
        name: String,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove a user and end their sessions.
    Remove { name: String },
}

#[derive(clap::Args)]
pub struct TokensArgs {
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
    #[command(subcommand)]
    cmd: TokensCmd,
}

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create a token and print it (shown only now; only a hash is stored).
    Add {
        name: String,
        #[arg(long, default_value = "viewer", value_parser = role)]
        role: controlplane::model::Role,
    },
    /// Tokens with their role and last use.
    List,
    /// Revoke a token: its next call is refused.
    Revoke { name: String },
}

fn role(s: &str) -> Result<controlplane::model::Role, String> {
    controlplane::model::Role::parse(s).ok_or_else(|| format!("`{s}` is not one of viewer, admin"))
}

pub fn run(a: UsersArgs) -> anyhow::Result<()> {
    use controlplane::auth::{check_name, hash_password, new_password};
    let store = a.stores.open_state()?;
    let now = now_ns();
    // The given password, or a generated one to print.
    let password = |file: Option<PathBuf>| -> anyhow::Result<(String, bool)> {
        Ok(match file {
            Some(f) => (secret(&f)?, false),
            None => (new_password()?, true),
        })
    };
    match a.cmd {
        UsersCmd::Add {
            name,
            role,
            password_file,
        } => {
            check_name("user", &name)?;
            let (pw, show) = password(password_file)?;
            store.add_user(&name, &hash_password(&pw)?, role, now)?;
            println!("added {} `{name}`", role.as_str());
            if show {
                println!("password: {pw}");
            }
        }
        UsersCmd::List => {
            for u in store.users()? {
                println!(
                    "{}\t{}\tlast login {}",
                    u.name,
                    u.role.as_str(),
                    when(u.last_login_ns)
                );
            }
        }
        UsersCmd::Passwd {
            name,
            password_file,
        } => {
            let (pw, show) = password(password_file)?;
            if !store.set_password(&name, &hash_password(&pw)?)? {
                anyhow::bail!("there is no user `{name}`");
            }
            println!("new password set for `{name}`; their sessions are ended");
            if show {
                println!("password: {pw}");
            }
        }
        UsersCmd::Remove { name } => {
            if !store.remove_user(&name)? {
                anyhow::bail!("there is no user `{name}`");
            }
            println!("removed `{name}`");
        }
    }
    Ok(())
}

pub fn tokens(a: TokensArgs) -> anyhow::Result<()> {
    use controlplane::auth::{check_name, new_token, token_hash};
    let store = a.stores.open_state()?;
    let now = now_ns();
    match a.cmd {
        TokensCmd::Add { name, role } => {
            check_name("token", &name)?;
            let t = new_token()?;
            store.add_token(&name, &token_hash(&t), role, now)?;
            // Only the token on stdout, for scripts: `TOKEN=$(... tokens add ci)`.
            println!("{t}");
            eprintln!(
                "created {} token `{name}`; it is shown only now",
                role.as_str()
            );
        }
        TokensCmd::List => {
            for t in store.tokens()? {
                println!(
                    "{}\t{}\t{}\tlast used {}",
                    t.name,
                    t.role.as_str(),
                    if t.revoked { "revoked" } else { "active" },
                    when(t.last_used_ns)
                );
            }
        }
        TokensCmd::Revoke { name } => {
            if !store.revoke_token(&name, now)? {
                anyhow::bail!("there is no active token `{name}`");
            }
            println!("revoked `{name}`");
        }
    }
    Ok(())
}
