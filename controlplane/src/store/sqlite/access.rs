//! Dashboard users, their sessions, and API tokens in the embedded store. Only hashes are kept:
//! argon2 for passwords, SHA-256 for the random session and API tokens.

use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, role};
use crate::{
    model::Role,
    store::{Access, SessionRow, TokenRow, UserRow},
};

impl Access for SqliteStore {
    fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        let c = self.conn();
        let exists = c
            .prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
            .exists([name])?;
        anyhow::ensure!(!exists, "a user named `{name}` exists already");
        c.execute(
            "INSERT INTO users (name, password_hash, role, created_ns) VALUES (?1, ?2, ?3, ?4)",
            params![name, password_hash, role.as_str(), now_ns],
        )?;
        Ok(())
    }

    fn users(&self) -> anyhow::Result<Vec<UserRow>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT name, role, created_ns, last_login_ns FROM users ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(UserRow {
                name: r.get(0)?,
                role: role(r.get(1)?),
                created_ns: r.get(2)?,
                last_login_ns: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn user_credentials(&self, name: &str) -> anyhow::Result<Option<(String, Role)>> {
        Ok(self
            .reader()?
            .query_row(
                "SELECT password_hash, role FROM users WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, role(r.get(1)?))),
            )
            .optional()?)
    }

    fn set_password(&self, name: &str, password_hash: &str) -> anyhow::Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, password_hash],
        )?;
        tx.execute("DELETE FROM sessions WHERE user = ?1", [name])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn remove_user(&self, name: &str) -> anyhow::Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM sessions WHERE user = ?1", [name])?;
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
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM sessions WHERE expires_ns <= ?1", [now_ns])?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user, csrf, created_ns, expires_ns) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, user, csrf, now_ns, expires_ns],
        )?;
        tx.execute(
            "UPDATE users SET last_login_ns = ?2 WHERE name = ?1",
            params![user, now_ns],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session(&self, token_hash: &str, now_ns: i64) -> anyhow::Result<Option<SessionRow>> {
        Ok(self
            .reader()?
            .prepare_cached(
                "SELECT s.user, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.user \
                 WHERE s.token_hash = ?1 AND s.expires_ns > ?2",
            )?
            .query_row(params![token_hash, now_ns], |r| {
                Ok(SessionRow {
                    user: r.get(0)?,
                    role: role(r.get(1)?),
                    csrf: r.get(2)?,
                })
            })
            .optional()?)
    }

    fn delete_session(&self, token_hash: &str) -> anyhow::Result<()> {
        self.conn()
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
        Ok(())
    }

    fn add_token(
        &self,
        name: &str,
        token_hash: &str,
        role: Role,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        let c = self.conn();
        let exists = c
            .prepare_cached("SELECT 1 FROM api_tokens WHERE name = ?1")?
            .exists([name])?;
        anyhow::ensure!(!exists, "an API token named `{name}` exists already");
        c.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_ns) VALUES (?1, ?2, ?3, ?4)",
            params![name, token_hash, role.as_str(), now_ns],
        )?;
        Ok(())
    }

    fn tokens(&self) -> anyhow::Result<Vec<TokenRow>> {
        let c = self.conn();
        let mut st = c.prepare_cached(
            "SELECT name, role, created_ns, last_used_ns, revoked_ns FROM api_tokens \
             ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(TokenRow {
                name: r.get(0)?,
                role: role(r.get(1)?),
                created_ns: r.get(2)?,
                last_used_ns: r.get(3)?,
                revoked: r.get::<_, Option<i64>>(4)?.is_some(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn token(&self, token_hash: &str, now_ns: i64) -> anyhow::Result<Option<(String, Role)>> {
        let found = self
            .reader()?
            .prepare_cached(
                "SELECT name, role, COALESCE(last_used_ns, 0) FROM api_tokens \
                 WHERE token_hash = ?1 AND revoked_ns IS NULL",
            )?
            .query_row([token_hash], |r| {
                Ok((r.get::<_, String>(0)?, role(r.get(1)?), r.get::<_, i64>(2)?))
            })
            .optional()?;
        let Some((name, role, last_used)) = found else {
            return Ok(None);
        };
        // At most one write a minute per token (a script's every call is not a write), and
        // only when the writer is free: a long import must not hold up a token's check.
        if last_used < now_ns.saturating_sub(60_000_000_000)
            && let Ok(c) = self.conn.try_lock()
        {
            c.prepare_cached(
                "UPDATE api_tokens SET last_used_ns = ?2 WHERE token_hash = ?1 \
                 AND (last_used_ns IS NULL OR last_used_ns < ?2 - 60000000000)",
            )?
            .execute(params![token_hash, now_ns])?;
        }
        Ok(Some((name, role)))
    }

    fn revoke_token(&self, name: &str, now_ns: i64) -> anyhow::Result<bool> {
        Ok(self.conn().execute(
            "UPDATE api_tokens SET revoked_ns = ?2 WHERE name = ?1 AND revoked_ns IS NULL",
            params![name, now_ns],
        )? == 1)
    }
}
