//! Access control for the REST API and the dashboard.
//!
//! - Dashboard users log in with a password (argon2id, PHC strings) and get a session cookie
//!   (`picket_session`: HttpOnly, SameSite=Strict, 12 hours) and a CSRF token that every
//!   state-changing request of that session must echo in `X-CSRF-Token`.
//! - Scripts use API tokens (`pkt_` + 64 hex digits) as `Authorization: Bearer`.
//! - Roles: `viewer` reads; `admin` also changes things (alert triage, settings).
//! - Only `/api/v1/health` and the login itself answer without credentials.
//!
//! Random session and API tokens are 256-bit, so they are stored as SHA-256 (a slow hash buys
//! nothing there); passwords, which people choose, get argon2.

use crate::model::Role;
use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};

/// Who is calling, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// A user name, or `token:NAME`.
    pub name: String,
    pub role: Role,
    /// The session's CSRF token; None for API tokens (browsers do not send those by
    /// themselves, so they need none).
    pub csrf: Option<String>,
}

pub const SESSION_COOKIE: &str = "picket_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_NS: i64 = 12 * 3_600_000_000_000;
const TOKEN_PREFIX: &str = "pkt_";

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}

/// A session id or CSRF token: 256 random bits.
pub fn new_secret() -> anyhow::Result<String> {
    random_hex(32)
}

/// A new API token, shown once.
pub fn new_token() -> anyhow::Result<String> {
    Ok(format!("{TOKEN_PREFIX}{}", random_hex(32)?))
}

pub fn token_well_formed(t: &str) -> bool {
    t.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The stored form of a session or API token.
pub fn token_hash(t: &str) -> String {
    crate::keys::hash(t)
}

/// A generated password: 20 characters from 57 unambiguous letters and digits (about 117 bits).
pub fn new_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        for x in b {
            // Rejection sampling keeps every character equally likely.
            if (x as usize) < 256 - 256 % ALPHABET.len() && out.len() < 20 {
                out.push(ALPHABET[x as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD: usize = 10;

/// argon2id with the crate's defaults (19 MiB, 2 passes: OWASP's recommendation).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        password.chars().count() >= MIN_PASSWORD,
        "a password needs at least {MIN_PASSWORD} characters"
    );
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A user or token name: 1-64 letters, digits, `.`, `-`, `_`, `@`.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@')),
        "`{name}`: a {what} name is 1-64 letters, digits, `.`, `-`, `_` or `@`"
    );
    Ok(())
}

/// The value of cookie `name` in a Cookie header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_verify_and_are_generated_strong() {
        let pw = new_password().expect("pw");
        assert_eq!(pw.len(), 20);
        assert_ne!(pw, new_password().expect("pw"));
        let h = hash_password(&pw).expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&pw, &h));
        assert!(!verify_password("wrong password", &h));
        assert!(!verify_password(&pw, "not a hash"));
        assert_ne!(h, hash_password(&pw).expect("hash"), "salted");
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn tokens_names_and_cookies() {
        let t = new_token().expect("token");
        assert!(token_well_formed(&t), "{t}");
        assert!(!token_well_formed("pkt_12"));
        assert_eq!(token_hash(&t).len(), 64);
        check_name("user", "alice.b@soc-1").expect("ok");
        assert!(check_name("user", "a b").is_err());
        assert!(check_name("user", "").is_err());
        assert_eq!(
            cookie("a=1; picket_session=abc; b=2", SESSION_COOKIE),
            Some("abc")
        );
        assert_eq!(cookie("a=1", SESSION_COOKIE), None);
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert!(Role::Admin > Role::Viewer);
    }
}
