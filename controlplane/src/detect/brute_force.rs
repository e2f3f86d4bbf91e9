//! `brute_force`: failed logins in a sensor's authentication log, and short connections to
//! an authentication port in flow logs.

use std::net::IpAddr;

use serde_json::json;

use super::{
    Detector, Input, Output, State,
    common::{Bounded, Stamped, TCP, scaled},
};
use crate::{
    model::{Action, AlertUpdate, Flow, LoginEvent, Severity},
    util::time::rfc3339,
};

/// Ports of services that take passwords (SSH, Telnet, FTP, RDP, VNC, SMB, databases).
pub const AUTH_PORTS: [u16; 10] = [21, 22, 23, 445, 1433, 3306, 3389, 5432, 5900, 5985];

/// Settings of the brute-force detectors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BruteForceConfig {
    /// Attempts count together within this much data time from the first one.
    pub window_ns: i64,
    /// Failed logins (auth log) from one source to one host that make a brute force.
    pub failed_logins: u32,
    /// Short connections (flow logs) from one source to one authentication port of one host.
    pub short_connections: u32,
    /// A connection with at most this many packets (both ways) is short: a login attempt, not a
    /// session.
    pub short_packets: u64,
    /// Keys followed at once (see `FanOutConfig::max_sources`).
    pub max_keys: usize,
}

impl Default for BruteForceConfig {
    fn default() -> Self {
        BruteForceConfig {
            window_ns: 600_000_000_000,
            failed_logins: 10,
            short_connections: 20,
            short_packets: 40,
            max_keys: 100_000,
        }
    }
}

/// Attempts of one source against one target in its current window.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Attempts {
    window_start_ns: i64,
    last_ns: i64,
    count: u32,
    reported: u32,
    users: Vec<String>,
    accepted_reported: bool,
}

impl Attempts {
    /// Counts one attempt at `t`; starts a new window when the old one is over.
    fn add(&mut self, t: i64, window_ns: i64) {
        if self.count == 0 || t - self.window_start_ns > window_ns {
            *self = Attempts {
                window_start_ns: t,
                ..Attempts::default()
            };
        }
        self.last_ns = self.last_ns.max(t);
        self.count += 1;
    }

    /// True when the count reaches `threshold` or doubles since the last report.
    fn due(&mut self, threshold: u32) -> bool {
        let due = self.count >= threshold && self.count >= 2 * self.reported;
        if due {
            self.reported = self.count;
        }
        due
    }
}

impl Stamped for Attempts {
    fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

/// `brute_force` from sensors' login events: failed logins from one source to one host within
/// 10 minutes, and an accepted login from that source after them (high severity: the guess
/// may have worked).
pub struct LoginBruteForce {
    config: BruteForceConfig,
    attempts: Bounded<(IpAddr, String), Attempts>,
}

impl Default for LoginBruteForce {
    fn default() -> Self {
        Self::new(BruteForceConfig::default())
    }
}

impl LoginBruteForce {
    pub fn new(config: BruteForceConfig) -> Self {
        LoginBruteForce {
            config,
            attempts: Bounded::new(config.max_keys, "brute-force").saved(),
        }
    }

    /// Keys dropped to stay bounded.
    pub fn forgotten(&self) -> u64 {
        self.attempts.forgotten()
    }

    /// Looks at one login event from `sensor`'s auth log.
    pub fn observe(&mut self, sensor: &str, e: &LoginEvent) -> Option<AlertUpdate> {
        let src = e.src_ip;
        let t = e.time_ns;
        let cfg = self.config;
        let a = self
            .attempts
            .entry((src, sensor.to_string()), t, cfg.window_ns);
        let severity = match e.outcome.as_str() {
            "failed" => {
                a.add(t, cfg.window_ns);
                if a.users.len() < 20 && !a.users.contains(&e.user) {
                    a.users.push(e.user.clone());
                }
                if !a.due(cfg.failed_logins) {
                    return None;
                }
                if a.count >= 10 * cfg.failed_logins {
                    Severity::High
                } else {
                    Severity::Medium
                }
            }
            "accepted" if a.count >= cfg.failed_logins && !a.accepted_reported => {
                a.accepted_reported = true;
                Severity::High
            }
            _ => return None,
        };
        Some(AlertUpdate {
            kind: "brute_force",
            severity,
            source: src.to_string(),
            targets: vec![sensor.to_string()],
            time_ns: t,
            observation: json!({
                "kind": "failed_logins",
                "sensor": sensor,
                "service": e.service,
                "failed": a.count,
                "users": a.users,
                "accepted_after": (e.outcome == "accepted").then(|| e.user.clone()),
                "window_start": rfc3339(a.window_start_ns),
                "last_attempt": rfc3339(t),
            }),
            seen_by: format!("sensor:{sensor}"),
            strength: a.count as f64 / cfg.failed_logins as f64,
        })
    }
}

/// `brute_force` from flows alone (cloud flow logs): many short accepted connections from one
/// source to one authentication port of one host within 10 minutes. Counts scale with the
/// sampling rate.
pub struct FlowBruteForce {
    config: BruteForceConfig,
    attempts: Bounded<(IpAddr, IpAddr, u16), Attempts>,
}

impl Default for FlowBruteForce {
    fn default() -> Self {
        FlowBruteForce::new(BruteForceConfig::default())
    }
}

impl FlowBruteForce {
    pub fn new(config: BruteForceConfig) -> Self {
        FlowBruteForce {
            config,
            attempts: Bounded::new(config.max_keys, "brute-force"),
        }
    }

    pub fn observe(&mut self, flows: &[Flow]) -> Vec<AlertUpdate> {
        let cfg = self.config;
        let mut out = Vec::new();
        for f in flows {
            if f.protocol != TCP
                || !f.port_known()
                || !f.counts_known()
                || f.action == Action::Reject
                || !AUTH_PORTS.contains(&f.dst_port)
                || f.packets.saturating_add(f.reverse_packets) > cfg.short_packets
            {
                continue;
            }
            let a = self
                .attempts
                .entry((f.src_ip, f.dst_ip, f.dst_port), f.end_ns, cfg.window_ns);
            a.add(f.end_ns, cfg.window_ns);
            let threshold = scaled(cfg.short_connections, f.sampling_rate) as u32;
            if !a.due(threshold) {
                continue;
            }
            out.push(AlertUpdate {
                kind: "brute_force",
                severity: Severity::Medium,
                source: f.src_ip.to_string(),
                targets: vec![format!("{}:{}", f.dst_ip, f.dst_port)],
                time_ns: f.end_ns,
                observation: json!({
                    "kind": "short_connections",
                    "provider": f.source.as_str(),
                    "observer": f.observer,
                    "interface": f.interface,
                    "connections": a.count,
                    "port": f.dst_port,
                    "sampling_rate": f.sampling_rate,
                    "window_start": rfc3339(a.window_start_ns),
                    "last_attempt": rfc3339(f.end_ns),
                }),
                seen_by: format!("{}:{}", f.source.as_str(), f.observer),
                strength: a.count as f64 / threshold as f64,
            });
        }
        out
    }
}

impl Detector for LoginBruteForce {
    fn name(&self) -> &'static str {
        "brute_force_logins"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        if let Some(b) = input.batch {
            for e in &b.logins {
                out.updates
                    .extend(LoginBruteForce::observe(self, &b.sensor, e));
            }
        }
    }

    fn forgotten(&self) -> u64 {
        self.attempts.forgotten()
    }

    /// The windows under way, by (source, sensor): an attack keeps counting across a restart,
    /// and across a move of its partition to another replica (cluster mode).
    fn load(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        for (k, v) in state.read(LOGIN_STATE)? {
            let key = k
                .split_once(' ')
                .and_then(|(ip, sensor)| Some((ip.parse::<IpAddr>().ok()?, sensor.to_string())));
            match (key, serde_json::from_str::<Attempts>(&v)) {
                (Some(key), Ok(a)) => self.attempts.restore(key, a),
                _ => tracing::warn!(key = k, "a saved brute-force window does not read; skipped"),
            }
        }
        Ok(())
    }

    /// The windows that changed; those over are deleted.
    fn save(&mut self, state: &State<'_>) -> anyhow::Result<()> {
        let horizon = self.attempts.now_ns() - self.config.window_ns;
        let entries: Vec<(String, Option<String>, i64)> = self
            .attempts
            .changes(horizon)
            .into_iter()
            .map(|((ip, sensor), v)| {
                let last = v.map_or(0, |v| v.last_ns);
                (
                    format!("{ip} {sensor}"),
                    v.and_then(|v| serde_json::to_string(v).ok()),
                    last,
                )
            })
            .collect();
        state.write(LOGIN_STATE, &entries)
    }
}

/// The name the login windows are saved under.
const LOGIN_STATE: &str = "brute_force_login_windows";

impl Detector for FlowBruteForce {
    fn name(&self) -> &'static str {
        "brute_force_flows"
    }

    fn observe(&mut self, input: &Input<'_>, out: &mut Output) {
        out.updates
            .extend(FlowBruteForce::observe(self, input.flows));
    }

    fn forgotten(&self) -> u64 {
        self.attempts.forgotten()
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{ACK, FIN, SYN, tests::cloud};
    use super::*;

    fn login(t_s: i64, outcome: &str, user: &str) -> LoginEvent {
        LoginEvent {
            time_ns: t_s * 1_000_000_000,
            service: "ssh".into(),
            outcome: outcome.into(),
            user: user.into(),
            src_ip: [203, 0, 113, 5].into(),
            src_port: 50000,
        }
    }

    #[test]
    fn failed_logins_past_the_threshold_are_a_brute_force_and_an_accepted_one_raises_it() {
        let mut d = LoginBruteForce::default();
        let mut seen = Vec::new();
        for i in 0..25 {
            seen.extend(d.observe("web-1", &login(1000 + i, "failed", "root")));
        }
        // At the 10th failure and at the 20th (the count doubled).
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            (seen[0].kind, seen[0].severity, &seen[0].source[..]),
            ("brute_force", Severity::Medium, "203.0.113.5")
        );
        assert_eq!(seen[0].time_ns, 1009 * 1_000_000_000);
        assert_eq!(seen[0].targets, ["web-1"]);
        assert_eq!(seen[1].observation["failed"], 20);
        let u = d
            .observe("web-1", &login(1030, "accepted", "root"))
            .expect("an accepted login after the failures");
        assert_eq!(u.severity, Severity::High);
        assert_eq!(u.observation["accepted_after"], "root");
        // Once.
        assert!(
            d.observe("web-1", &login(1031, "accepted", "root"))
                .is_none()
        );
        // Another host is another count; so is a window later.
        assert!(d.observe("web-2", &login(1032, "failed", "root")).is_none());
        for i in 0..9 {
            let late = d.observe("web-1", &login(2000 + i, "failed", "x"));
            assert!(late.is_none(), "a new window starts from zero");
        }
    }

    #[test]
    fn accepted_logins_alone_are_not_alerts() {
        let mut d = LoginBruteForce::default();
        for i in 0..50 {
            assert!(d.observe("web-1", &login(i, "accepted", "alice")).is_none());
        }
    }

    #[test]
    fn short_connections_to_an_auth_port_are_a_brute_force_and_sessions_are_not() {
        let mut d = FlowBruteForce::default();
        let conn = |t: i64, port: u16, packets: u64| Flow {
            packets,
            reverse_packets: packets,
            ..cloud(
                "198.51.100.20",
                "10.0.0.22",
                port,
                t,
                Action::Accept,
                SYN | ACK | FIN,
            )
        };
        // 25 short SSH attempts; long sessions and a web client's many connections.
        let mut flows: Vec<Flow> = (0..25).map(|i| conn(1000 + i, 22, 12)).collect();
        flows.extend((0..50).map(|i| conn(1000 + i, 443, 12)));
        flows.extend((0..50).map(|i| Flow {
            src_ip: "198.51.100.21".parse().expect("ip"),
            ..conn(1000 + i, 3389, 400)
        }));
        let u = d.observe(&flows);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(
            (u[0].kind, &u[0].source[..], &u[0].targets[..]),
            (
                "brute_force",
                "198.51.100.20",
                &["10.0.0.22:22".to_string()][..]
            )
        );
        assert_eq!(u[0].observation["connections"], 20);
        assert_eq!(u[0].time_ns, 1019 * 1_000_000_000);
    }
}
