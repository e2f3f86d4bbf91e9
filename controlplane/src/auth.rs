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
use argon2::{Argon2, PasswordHash, PasswordHasher as _, password_hash::SaltString};

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

/// Whether `password` matches the PHC string `phc`. Each thread reuses one argon2 memory
/// area, grown to the largest check it ran: 19 MiB per checking thread, whatever the number of
/// checks (a fresh 19 MiB per check is kept by the allocator's per-thread arenas).
pub fn verify_password(password: &str, phc: &str) -> bool {
    thread_local! {
        static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) = (
        argon2::Algorithm::try_from(h.algorithm),
        argon2::Params::try_from(&h),
        h.hash,
        h.salt,
    ) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks_needed = params.block_count();
    // A stored hash asking for more than 1 GiB is not one of ours.
    if blocks_needed > 1 << 20 {
        return false;
    }
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let hashed = BLOCKS.with_borrow_mut(|blocks| {
        if blocks.len() < blocks_needed {
            blocks.resize(blocks_needed, argon2::Block::default());
        }
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut blocks[..])
            .is_ok()
    });
    // Output's comparison takes the same time wherever the bytes differ.
    hashed && argon2::password_hash::Output::new(out).is_ok_and(|o| o == expected)
}

/// Password checks on threads of their own: argon2id takes 19 MiB and tens of milliseconds of
/// CPU per check, so they run a few at a time ([`PasswordPool::new`]), at a lower CPU priority
/// (nice 10) than serving, and on the same threads each time, so the memory they take stays
/// that of those threads. A check that waits longer than its caller allows for a turn is not
/// run ([`Busy`]).
pub struct PasswordPool {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    turns: tokio::sync::Semaphore,
}

type Job = Box<dyn FnOnce() + Send>;

/// No turn came within the wait.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl PasswordPool {
    /// `threads` checkers (at least 1).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("passwords-{i}"))
                .spawn(move || {
                    // SAFETY: setpriority has no memory effects; on Linux, PRIO_PROCESS with
                    // 0 is the calling thread.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-checking thread");
            }
        }
        PasswordPool {
            jobs: std::sync::Mutex::new(tx),
            turns: tokio::sync::Semaphore::new(threads),
        }
    }

    /// The default size: half the cores, at least 1 (the others keep serving).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    /// Runs `f` on a checker once one is free, if that is within `wait`.
    pub async fn run<T: Send + 'static>(
        &self,
        wait: std::time::Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let Ok(Ok(_turn)) = tokio::time::timeout(wait, self.turns.acquire()).await else {
            return Err(Busy);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .map_err(|_| Busy)?
            .send(job)
            .map_err(|_| Busy)?;
        rx.await.map_err(|_| Busy)
    }
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
        // Hashes with other parameters and output lengths check too, against the crate's own
        // hashing.
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        for (m, t, p, len) in [(4096, 3, 1, 16), (8192, 1, 2, 64), (19456, 2, 1, 32)] {
            let params = argon2::Params::new(m, t, p, Some(len)).expect("params");
            let h = Argon2::default()
                .hash_password_customized(b"secret-pass", None, None, params, &salt)
                .expect("hash")
                .to_string();
            assert!(verify_password("secret-pass", &h), "{h}");
            assert!(!verify_password("secret-pasS", &h), "{h}");
        }
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
