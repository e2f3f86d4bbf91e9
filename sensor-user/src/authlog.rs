//! Login events from the host's SSH log (`--auth-log /var/log/auth.log`), for brute-force
//! detection in the control plane: sshd's "Failed ...", "Invalid user ..." and "Accepted ..."
//! lines become `kind: "auth"` records. The file is followed like `tail -F`: from its end at
//! start, across rotation (a new inode) and truncation. `--auth-log journal` reads systemd's
//! journal instead (`journalctl --follow --output=json` for sshd and sshd-session).

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthRecord {
    pub kind: &'static str,
    pub time: String,
    #[serde(skip)]
    pub time_unix_ns: u64,
    pub service: &'static str,
    /// "failed" or "accepted".
    pub outcome: &'static str,
    pub user: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
}

/// The timestamp at the start of a syslog line: RFC 3339 (rsyslog's default on Debian 12) or
/// the traditional "Nov 28 21:40:01" (then: this year, UTC).
fn line_time(line: &str, now: OffsetDateTime) -> OffsetDateTime {
    if let Some(first) = line.split_whitespace().next()
        && let Ok(t) = OffsetDateTime::parse(first, &Rfc3339)
    {
        return t;
    }
    let mut it = line.split_whitespace();
    let (Some(mon), Some(day), Some(hms)) = (it.next(), it.next(), it.next()) else {
        return now;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Some(m) = months.iter().position(|x| *x == mon) else {
        return now;
    };
    let parts: Vec<u8> = hms.split(':').filter_map(|p| p.parse().ok()).collect();
    let (Ok(month), Ok(day)) = (time::Month::try_from(m as u8 + 1), day.parse::<u8>()) else {
        return now;
    };
    if parts.len() != 3 {
        return now;
    }
    time::Date::from_calendar_date(now.year(), month, day)
        .ok()
        .and_then(|d| d.with_hms(parts[0], parts[1], parts[2]).ok())
        .map(|dt| dt.assume_utc())
        .unwrap_or(now)
}

/// One sshd line as a login event, if it is one.
pub fn parse_line(line: &str, now: OffsetDateTime) -> Option<AuthRecord> {
    // OpenSSH 9.8 and later log the login from "sshd-session" (Debian 13), older ones "sshd".
    let msg = ["sshd[", "sshd-session["]
        .iter()
        .find_map(|tag| line.split_once(tag).map(|(_, r)| r))?;
    let msg = msg.split_once("]: ").map(|(_, r)| r)?;
    let (outcome, user, rest) = if let Some(r) = msg.strip_prefix("Failed ") {
        // "Failed password for [invalid user ]NAME from IP port P ssh2"
        let r = r.split_once(" for ")?.1;
        let r = r.strip_prefix("invalid user ").unwrap_or(r);
        let (user, rest) = r.split_once(" from ")?;
        ("failed", user, rest)
    } else if let Some(r) = msg.strip_prefix("Invalid user ") {
        // "Invalid user NAME from IP port P"
        let (user, rest) = r.split_once(" from ")?;
        ("failed", user, rest)
    } else if let Some(r) = msg.strip_prefix("Accepted ") {
        // "Accepted publickey for NAME from IP port P ssh2: ..."
        let r = r.split_once(" for ")?.1;
        let (user, rest) = r.split_once(" from ")?;
        ("accepted", user, rest)
    } else {
        return None;
    };
    let mut it = rest.split_whitespace();
    let src_ip: IpAddr = it.next()?.parse().ok()?;
    let src_port = match (it.next(), it.next()) {
        (Some("port"), Some(p)) => p.parse().ok()?,
        _ => 0,
    };
    let t = line_time(line, now);
    Some(AuthRecord {
        kind: "auth",
        time: t.format(&Rfc3339).unwrap_or_default(),
        time_unix_ns: t.unix_timestamp_nanos().max(0) as u64,
        service: "ssh",
        outcome,
        user: user.to_string(),
        src_ip,
        src_port,
    })
}

/// Where login lines come from: a log file, or the journal.
pub enum AuthSource {
    File(Follower),
    Journal(Journal),
}

impl AuthSource {
    /// `journal` means the systemd journal; anything else is a file path.
    pub fn open(spec: &std::path::Path) -> anyhow::Result<Self> {
        if spec.as_os_str() == "journal" {
            Ok(AuthSource::Journal(Journal::spawn()?))
        } else {
            Ok(AuthSource::File(Follower::new(spec.to_path_buf())))
        }
    }

    /// New lines since the last call, in the syslog form `parse_line` reads.
    pub fn poll(&mut self) -> Vec<String> {
        match self {
            AuthSource::File(f) => f.poll(),
            AuthSource::Journal(j) => j.poll(),
        }
    }
}

/// `journalctl --follow` for sshd's messages, read by a thread; its JSON entries become syslog
/// lines (RFC 3339 time from `__REALTIME_TIMESTAMP`, host, identifier[pid]: message).
pub struct Journal {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Journal {
    fn spawn() -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("journalctl")
            .args([
                "--follow",
                "--lines=0",
                "--output=json",
                "--identifier=sshd",
                "--identifier=sshd-session",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("--auth-log journal: cannot run journalctl: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for entry in std::io::BufReader::new(stdout).lines() {
                let Ok(entry) = entry else { break };
                if let Some(line) = journal_line(&entry)
                    && tx.send(line).is_err()
                {
                    break;
                }
            }
            tracing::warn!("journalctl stopped: no more login events from the journal");
        });
        Ok(Journal { child, lines })
    }

    fn poll(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `journalctl --output=json` entry as a syslog line; None for entries without a message
/// (or with a binary one, which journald exports as an array of bytes).
pub fn journal_line(entry: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(entry).ok()?;
    let msg = v["MESSAGE"].as_str()?;
    let us: i128 = v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()?;
    let t = OffsetDateTime::from_unix_timestamp_nanos(us * 1000).ok()?;
    let host = v["_HOSTNAME"].as_str().unwrap_or("-");
    let ident = v["SYSLOG_IDENTIFIER"].as_str().unwrap_or("sshd");
    let pid = v["_PID"].as_str().unwrap_or("0");
    Some(format!(
        "{} {host} {ident}[{pid}]: {msg}",
        t.format(&Rfc3339).ok()?
    ))
}

/// Follows a log file from its end; `poll` returns the complete new lines.
pub struct Follower {
    path: PathBuf,
    file: Option<fs::File>,
    inode: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(path: PathBuf) -> Self {
        let mut f = Follower {
            path,
            file: None,
            inode: 0,
            pos: 0,
            partial: Vec::new(),
        };
        // Start at the end: history is not news.
        if let Ok(file) = fs::File::open(&f.path)
            && let Ok(m) = file.metadata()
        {
            f.inode = m.ino();
            f.pos = m.len();
            f.file = Some(file);
        }
        f
    }

    pub fn poll(&mut self) -> Vec<String> {
        // Rotated (another inode at the path) or not there yet: (re)open from the start.
        if let Ok(m) = fs::metadata(&self.path)
            && (self.file.is_none() || m.ino() != self.inode)
            && let Ok(file) = fs::File::open(&self.path)
        {
            // Read what is left of the old file first, then the new one from its start.
            let mut lines = self.read_new();
            self.inode = m.ino();
            self.pos = 0;
            self.file = Some(file);
            self.partial.clear();
            lines.extend(self.read_new());
            return lines;
        }
        self.read_new()
    }

    fn read_new(&mut self) -> Vec<String> {
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.pos {
            // Truncated in place (copytruncate).
            self.pos = 0;
            self.partial.clear();
        }
        if file.seek(SeekFrom::Start(self.pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let n = file.read_to_end(&mut buf).unwrap_or(0);
        self.pos += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            out.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-11-28T12:00:00Z", &Rfc3339).expect("now")
    }

    /// Entries as `journalctl --output=json` prints them (fields are strings; a non-UTF-8
    /// message is an array of bytes).
    #[test]
    fn journal_entries_become_login_events() {
        let failed = r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1795860902123456","__MONOTONIC_TIMESTAMP":"81234567","_BOOT_ID":"3f","PRIORITY":"6","SYSLOG_FACILITY":"4","SYSLOG_IDENTIFIER":"sshd-session","_PID":"4211","_UID":"0","_COMM":"sshd-session","_HOSTNAME":"web-1","MESSAGE":"Failed password for invalid user oracle from 198.51.100.23 port 40522 ssh2"}"#;
        let l = journal_line(failed).expect("line");
        assert_eq!(
            l,
            "2026-11-28T10:15:02.123456Z web-1 sshd-session[4211]: Failed password for invalid user oracle from 198.51.100.23 port 40522 ssh2"
        );
        let r = parse_line(&l, now()).expect("record");
        assert_eq!(
            (r.outcome, r.user.as_str(), r.src_port, r.time_unix_ns),
            ("failed", "oracle", 40522, 1_795_860_902_123_456_000)
        );
        assert_eq!(r.src_ip.to_string(), "198.51.100.23");
        let accepted = r#"{"__REALTIME_TIMESTAMP":"1795860903000000","SYSLOG_IDENTIFIER":"sshd","_PID":"4212","_HOSTNAME":"web-1","MESSAGE":"Accepted publickey for deploy from 2001:db8::5 port 51000 ssh2: ED25519 SHA256:abc"}"#;
        let r = parse_line(&journal_line(accepted).expect("line"), now()).expect("record");
        assert_eq!((r.outcome, r.user.as_str()), ("accepted", "deploy"));
        // A binary MESSAGE, no timestamp, not JSON: no line.
        assert_eq!(
            journal_line(r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":[70,97]}"#),
            None
        );
        assert_eq!(journal_line(r#"{"MESSAGE":"Failed password"}"#), None);
        assert_eq!(journal_line("not json"), None);
    }

    #[test]
    fn sshd_failures_and_acceptances_are_recognised() {
        let l = "2026-11-28T10:15:02.123456+00:00 web-1 sshd[2211]: Failed password for invalid user admin from 203.0.113.9 port 52344 ssh2";
        let r = parse_line(l, now()).expect("failed");
        assert_eq!(
            (r.outcome, r.user.as_str(), r.src_port),
            ("failed", "admin", 52344)
        );
        assert_eq!(r.src_ip.to_string(), "203.0.113.9");
        assert_eq!(r.time, "2026-11-28T10:15:02.123456Z");
        let l = "Nov 28 10:15:03 web-1 sshd[2212]: Failed password for root from 2001:db8::7 port 40022 ssh2";
        let r = parse_line(l, now()).expect("failed root");
        assert_eq!(
            (r.user.as_str(), r.src_ip.to_string().as_str()),
            ("root", "2001:db8::7")
        );
        assert_eq!(r.time, "2026-11-28T10:15:03Z");
        let l = "Nov  8 09:01:00 web-1 sshd[9]: Invalid user oracle from 198.51.100.4 port 1022";
        let r = parse_line(l, now()).expect("invalid user");
        assert_eq!((r.outcome, r.user.as_str()), ("failed", "oracle"));
        assert_eq!(r.time, "2026-11-08T09:01:00Z");
        let l = "2026-11-28T10:16:00+00:00 web-1 sshd[2300]: Accepted publickey for alice from 198.51.100.7 port 50022 ssh2: ED25519 SHA256:abc";
        let r = parse_line(l, now()).expect("accepted");
        assert_eq!((r.outcome, r.user.as_str()), ("accepted", "alice"));
        for other in [
            "2026-11-28T10:16:01+00:00 web-1 sshd[2300]: pam_unix(sshd:session): session opened for user alice",
            "2026-11-28T10:16:01+00:00 web-1 sshd[2300]: Connection closed by 198.51.100.7 port 50022 [preauth]",
            "2026-11-28T10:16:01+00:00 web-1 CRON[99]: Failed password for x from 1.2.3.4 port 1 ssh2",
            "2026-11-28T10:16:01+00:00 web-1 sshd[1]: Failed password for x from not-an-ip port 1 ssh2",
        ] {
            assert_eq!(parse_line(other, now()), None, "{other}");
        }
    }

    #[test]
    fn the_follower_reads_new_lines_across_rotation_and_truncation() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("auth.log");
        fs::write(&p, "old line\n").expect("write");
        let mut f = Follower::new(p.clone());
        assert!(f.poll().is_empty(), "history is skipped");
        let mut w = fs::OpenOptions::new().append(true).open(&p).expect("open");
        write!(w, "one\ntw").expect("write");
        assert_eq!(f.poll(), vec!["one"]);
        writeln!(w, "o").expect("write");
        assert_eq!(f.poll(), vec!["two"]);
        // Rotation: the old file moves away (with a last line), a new one takes the path.
        writeln!(w, "last of old").expect("write");
        fs::rename(&p, dir.path().join("auth.log.1")).expect("rotate");
        fs::write(&p, "first of new\n").expect("new");
        assert_eq!(f.poll(), vec!["last of old", "first of new"]);
        // Truncation in place.
        fs::write(&p, "").expect("truncate");
        assert!(f.poll().is_empty());
        fs::write(&p, "after truncate\n").expect("write");
        assert_eq!(f.poll(), vec!["after truncate"]);
    }
}
