//! Dashboard users, their sessions, and API tokens in PostgreSQL. Only hashes are kept.

use super::{PgStore, role};
use crate::{
    model::Role,
    store::{Access, SessionRow, TokenRow, UserRow},
};

/// Whether an insert failed on a unique key (the name exists).
fn duplicate(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

impl Access for PgStore {
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        match self.conn()?.execute(
            "INSERT INTO users (name, password_hash, role, created_ns) VALUES ($1, $2, $3, $4)",
            &[&name, &password_hash, &role.as_str(), &now_ns],
        ) {
            Err(e) if duplicate(&e) => anyhow::bail!("a user named `{name}` exists already"),
            r => {
                r?;
                Ok(())
            }
        }
    }

    fn users(&self) -> anyhow::Result<Vec<UserRow>> {
        Ok(self
            .conn()?
            .query(
                "SELECT name, role, created_ns, last_login_ns FROM users ORDER BY name",
                &[],
            )?
            .into_iter()
            .map(|r| UserRow {
                name: r.get(0),
                role: role(r.get(1)),
                created_ns: r.get(2),
                last_login_ns: r.get(3),
            })
            .collect())
    }

    fn user_credentials(&self, name: &str) -> anyhow::Result<Option<(String, Role)>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT password_hash, role FROM users WHERE name = $1",
                &[&name],
            )?
            .map(|r| (r.get(0), role(r.get(1)))))
    }

    fn set_password(&self, name: &str, password_hash: &str) -> anyhow::Result<bool> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE users SET password_hash = $2 WHERE name = $1",
            &[&name, &password_hash],
        )?;
        tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn remove_user(&self, name: &str) -> anyhow::Result<bool> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = $1", &[&name])?;
        tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        csrf: &str,
        now_ns: i64,
        expires_ns: i64,
    ) -> anyhow::Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        tx.execute("DELETE FROM sessions WHERE expires_ns <= $1", &[&now_ns])?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user_name, csrf, created_ns, expires_ns) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&token_hash, &user, &csrf, &now_ns, &expires_ns],
        )?;
        tx.execute(
            "UPDATE users SET last_login_ns = $2 WHERE name = $1",
            &[&user, &now_ns],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session(&self, token_hash: &str, now_ns: i64) -> anyhow::Result<Option<SessionRow>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT s.user_name, u.role, s.csrf FROM sessions s \
                 JOIN users u ON u.name = s.user_name \
                 WHERE s.token_hash = $1 AND s.expires_ns > $2",
                &[&token_hash, &now_ns],
            )?
            .map(|r| SessionRow {
                user: r.get(0),
                role: role(r.get(1)),
                csrf: r.get(2),
            }))
    }

    fn delete_session(&self, token_hash: &str) -> anyhow::Result<()> {
        self.conn()?
            .execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])?;
        Ok(())
    }

    fn add_token(
        &self,
        name: &str,
        token_hash: &str,
        role: Role,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        match self.conn()?.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_ns) VALUES ($1, $2, $3, $4)",
            &[&name, &token_hash, &role.as_str(), &now_ns],
        ) {
            Err(e) if duplicate(&e) => {
                anyhow::bail!("an API token named `{name}` exists already")
            }
            r => {
                r?;
                Ok(())
            }
        }
    }

    fn tokens(&self) -> anyhow::Result<Vec<TokenRow>> {
        Ok(self
            .conn()?
            .query(
                "SELECT name, role, created_ns, last_used_ns, revoked_ns FROM api_tokens \
                 ORDER BY name",
                &[],
            )?
            .into_iter()
            .map(|r| TokenRow {
                name: r.get(0),
                role: role(r.get(1)),
                created_ns: r.get(2),
                last_used_ns: r.get(3),
                revoked: r.get::<_, Option<i64>>(4).is_some(),
            })
            .collect())
    }

    fn token(&self, token_hash: &str, now_ns: i64) -> anyhow::Result<Option<(String, Role)>> {
        let mut c = self.conn()?;
        let Some(r) = c.query_opt(
            "SELECT name, role, COALESCE(last_used_ns, 0) FROM api_tokens \
             WHERE token_hash = $1 AND revoked_ns IS NULL",
            &[&token_hash],
        )?
        else {
            return Ok(None);
        };
        let (name, role, last_used): (String, Role, i64) = (r.get(0), role(r.get(1)), r.get(2));
        // At most one write a minute per token: a script's every call is not a write.
        if last_used < now_ns.saturating_sub(60_000_000_000) {
            c.execute(
                "UPDATE api_tokens SET last_used_ns = $2 WHERE token_hash = $1 \
                 AND (last_used_ns IS NULL OR last_used_ns < $2 - 60000000000)",
                &[&token_hash, &now_ns],
            )?;
        }
        Ok(Some((name, role)))
    }

    fn revoke_token(&self, name: &str, now_ns: i64) -> anyhow::Result<bool> {
        Ok(self.conn()?.execute(
            "UPDATE api_tokens SET revoked_ns = $2 WHERE name = $1 AND revoked_ns IS NULL",
            &[&name, &now_ns],
        )? == 1)
    }
}
