//! The dashboard login (`POST /api/v1/session`) and what guards it:
//!
//! - failures are counted per (user name, client address) and per client address, in maps of
//!   at most [`MAX_ENTRIES`] each (the oldest entry goes first); past [`FREE_FAILURES`] a pair
//!   waits, 1 s doubled at each further failure up to [`MAX_WAIT`], so a stranger's guesses
//!   lock out the stranger, not the user logging in from elsewhere; an address that fails for
//!   many names ([`FREE_CLIENT_FAILURES`]) waits likewise;
//! - a name that cannot exist (see `auth::check_name`) or an oversized password is refused
//!   before any hashing, and neither is ever written to the log;
//! - password checks (argon2id, 19 MiB each) run on a few threads of their own at a lower CPU
//!   priority (`auth::PasswordPool`); a login that waits more than [`HASH_QUEUE_WAIT`] for its
//!   turn gets 503 with Retry-After.
//!
//! The client address is the TCP peer's (an IPv6 client is its /64): behind a reverse proxy
//! every user shares the proxy's, and only the per-pair and per-name limits tell them apart.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{ConnectInfo, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{Api, ApiError, blocking, now_ns};

/// Failures of one (user, address) pair before it waits.
pub const FREE_FAILURES: u32 = 5;
/// Failures from one address (whatever the names) before it waits.
pub const FREE_CLIENT_FAILURES: u32 = 50;
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(900);
/// A pair or an address that has not failed for this long starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Entries each map holds at most.
pub const MAX_ENTRIES: usize = 10_000;
/// How long a login may wait for a password check's turn before 503.
pub const HASH_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The longest password checked.
pub const MAX_PASSWORD: usize = 1024;

/// Logins refused since the start, by reason (`GET /api/v1/health` shows them).
#[derive(Debug, Default)]
pub struct LoginStats {
    pub throttled: AtomicU64,
    pub busy: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Strikes {
    failures: u32,
    last: Instant,
}

impl Strikes {
    /// How much longer it must wait, given its free failures.
    fn wait(&self, free: u32, now: Instant) -> Option<Duration> {
        let over = self.failures.checked_sub(free)?;
        let wait = Duration::from_secs(1u64 << over.min(20)).min(MAX_WAIT);
        (self.last + wait)
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }
}

/// A map of strikes that never holds more than [`MAX_ENTRIES`].
#[derive(Debug)]
struct Bounded<K> {
    map: HashMap<K, Strikes>,
}

impl<K: std::hash::Hash + Eq + Clone> Bounded<K> {
    fn new() -> Self {
        Bounded {
            map: HashMap::new(),
        }
    }

    fn get(&self, k: &K, now: Instant) -> Option<Strikes> {
        self.map
            .get(k)
            .copied()
            .filter(|s| now.duration_since(s.last) < FORGET_AFTER)
    }

    fn strike(&mut self, k: K, now: Instant) {
        let before = self.get(&k, now).map_or(0, |s| s.failures);
        if !self.map.contains_key(&k) && self.map.len() >= MAX_ENTRIES {
            self.map
                .retain(|_, s| now.duration_since(s.last) < FORGET_AFTER);
            if self.map.len() >= MAX_ENTRIES
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(
            k,
            Strikes {
                failures: before.saturating_add(1),
                last: now,
            },
        );
    }
}

/// Failures per (user name, client address) and per client address.
type Failures = (Bounded<(String, IpAddr)>, Bounded<IpAddr>);

/// Failed logins remembered, and the password checks' turns.
pub struct LoginGuard {
    failures: Mutex<Failures>,
    passwords: crate::auth::PasswordPool,
    pub stats: LoginStats,
}

impl Default for LoginGuard {
    fn default() -> Self {
        LoginGuard {
            failures: Mutex::new((Bounded::new(), Bounded::new())),
            passwords: crate::auth::PasswordPool::new(crate::auth::PasswordPool::default_threads()),
            stats: LoginStats::default(),
        }
    }
}

impl LoginGuard {
    /// How long `user` from `client` must still wait, if it must.
    fn wait(&self, user: &str, client: IpAddr, now: Instant) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let pair =
            f.0.get(&(user.to_string(), client), now)
                .and_then(|s| s.wait(FREE_FAILURES, now));
        let addr =
            f.1.get(&client, now)
                .and_then(|s| s.wait(FREE_CLIENT_FAILURES, now));
        pair.max(addr)
    }

    fn failed(&self, user: &str, client: IpAddr, now: Instant) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.0.strike((user.to_string(), client), now);
        f.1.strike(client, now);
    }

    fn succeeded(&self, user: &str, client: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.0.map.remove(&(user.to_string(), client));
    }

    /// Entries held (pairs, addresses): bounded by [`MAX_ENTRIES`] each.
    pub fn entries(&self) -> (usize, usize) {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        (f.0.map.len(), f.1.map.len())
    }
}

fn too_many(wait: Duration) -> ApiError {
    let s = wait.as_secs() + 1;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed logins from this address; try again in {s} s"),
    )
    .retry_after(s)
}

pub(super) async fn login(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    use crate::auth::{SESSION_COOKIE, SESSION_NS, new_secret, token_hash, verify_password};
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (Some(user), Some(password)) = (body["username"].as_str(), body["password"].as_str())
    else {
        return Err(ApiError::bad_request(
            "send {\"username\": ..., \"password\": ...}",
        ));
    };
    // Names that cannot exist and oversized passwords: refused before any work, never logged.
    if crate::auth::check_name("user", user).is_err() {
        return Err(ApiError::bad_request(
            "username: a user name is 1-64 letters, digits, `.`, `-`, `_` or `@`",
        ));
    }
    if password.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "password: at most {MAX_PASSWORD} bytes"
        )));
    }
    let client = crate::listen::client(peer.ip());
    let guard = &api.logins;
    if let Some(wait) = guard.wait(user, client, Instant::now()) {
        guard.stats.throttled.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(user, %client, "login refused: waiting after failed attempts");
        return Err(too_many(wait));
    }
    let (store, u, pw) = (api.stores.clone(), user.to_string(), password.to_string());
    let checked = guard
        .passwords
        .run(HASH_QUEUE_WAIT, move || -> anyhow::Result<_> {
            Ok(match store.state.user_credentials(&u)? {
                Some((hash, role)) => verify_password(&pw, &hash).then_some(role),
                None => {
                    // As slow as a real check, so timing does not tell which names exist.
                    let _ = verify_password(&pw, DUMMY_HASH);
                    None
                }
            })
        })
        .await;
    let Ok(checked) = checked else {
        guard.stats.busy.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many logins at once; try again in a moment",
        )
        .retry_after(1));
    };
    let Some(role) = checked.map_err(ApiError::internal)? else {
        guard.failed(user, client, Instant::now());
        guard.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(user, %client, "failed login");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user name or password",
        ));
    };
    guard.succeeded(user, client);
    let (sid, csrf) = (
        new_secret().map_err(ApiError::internal)?,
        new_secret().map_err(ApiError::internal)?,
    );
    let now = now_ns();
    let (store, h, u, c) = (
        api.stores.clone(),
        token_hash(&sid),
        user.to_string(),
        csrf.clone(),
    );
    blocking(move || {
        store
            .state
            .create_session(&h, &u, &c, now, now + SESSION_NS)
    })
    .await?;
    tracing::info!(user, %client, "login");
    let cookie = format!(
        "{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_NS / 1_000_000_000,
        if api.opts.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "user": user, "role": role, "csrf_token": csrf })),
    )
        .into_response())
}

/// An argon2 hash of a random password, checked against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0ZrX2MP1VeSUIeW4w1eC1xV3VSYmYNAuNdNpQ6WAL5A";

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_pair_waits_after_its_free_failures_doubling_and_others_do_not() {
        let g = LoginGuard::default();
        let (stranger, admin_home) = (ip("192.0.2.66"), ip("198.51.100.1"));
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(g.wait("admin", stranger, t0), None);
            g.failed("admin", stranger, t0);
        }
        assert_eq!(g.wait("admin", stranger, t0), Some(Duration::from_secs(1)));
        g.failed("admin", stranger, t0);
        assert_eq!(g.wait("admin", stranger, t0), Some(Duration::from_secs(2)));
        assert_eq!(g.wait("admin", stranger, t0 + Duration::from_secs(2)), None);
        // The real user, elsewhere, is not held back by the stranger.
        assert_eq!(g.wait("admin", admin_home, t0), None);
        // Many failures: the wait stops at MAX_WAIT.
        for _ in 0..FREE_CLIENT_FAILURES {
            g.failed("admin", stranger, t0);
        }
        assert_eq!(g.wait("admin", stranger, t0), Some(MAX_WAIT));
        // A success clears the pair.
        g.succeeded("admin", stranger);
        // The address failed 56 times in all: 6 over its free failures, 2^6 s.
        assert_eq!(
            g.wait("bob", stranger, t0),
            Some(Duration::from_secs(64)),
            "the address still waits"
        );
        // Forgotten after FORGET_AFTER.
        assert_eq!(g.wait("admin", stranger, t0 + FORGET_AFTER), None);
    }

    #[test]
    fn an_address_spraying_names_waits_too() {
        let g = LoginGuard::default();
        let a = ip("192.0.2.9");
        let t0 = Instant::now();
        for i in 0..FREE_CLIENT_FAILURES {
            assert_eq!(g.wait(&format!("u{i}"), a, t0), None);
            g.failed(&format!("u{i}"), a, t0);
        }
        assert_eq!(g.wait("fresh", a, t0), Some(Duration::from_secs(1)));
        assert_eq!(g.wait("fresh", ip("192.0.2.10"), t0), None);
    }

    #[test]
    fn the_maps_stay_bounded_dropping_the_oldest() {
        let g = LoginGuard::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 500) {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            g.failed(
                &format!("n{i}"),
                a,
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(g.entries(), (MAX_ENTRIES, MAX_ENTRIES));
        let f = g.failures.lock().unwrap();
        let first = (String::from("n0"), IpAddr::from([10, 0, 0, 0]));
        assert!(!f.0.map.contains_key(&first), "the oldest went first");
        let last = MAX_ENTRIES as u32 + 499;
        assert!(f.0.map.contains_key(&(
            format!("n{last}"),
            IpAddr::from((0x0a00_0000u32 + last).to_be_bytes())
        )));
    }
}
