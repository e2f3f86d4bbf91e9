//! What each receiver is sent about an alert: a one-line summary, markdown (Webex), Slack's
//! text, the webhook's JSON (with its HMAC signature), and syslog (RFC 5424, plain or CEF).

use hmac::{Hmac, Mac as _};
use serde_json::json;
use sha2::Sha256;

use crate::{
    model::{Alert, Event, Severity},
    util::time::rfc3339_text,
};

/// "10.0.0.1:22, 10.0.0.1:23 and 14 more"
fn targets_text(a: &Alert, shown: usize) -> String {
    let mut s = a
        .targets
        .iter()
        .take(shown)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = a
        .targets_total
        .saturating_sub(shown.min(a.targets.len()) as u64);
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// What a scan alert tells beyond its targets, a phrase each: the open ports it found, its
/// extent, and the sessions that followed it up.
fn scan_story(a: &Alert) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(x) = a.observations.iter().find(|o| o["kind"] == "scan_extent") {
        let open: Vec<&str> = x["open_found"]
            .as_array()
            .map(|v| v.iter().filter_map(|s| s.as_str()).take(5).collect())
            .unwrap_or_default();
        if open.is_empty() {
            out.push("found no open port".to_string());
        } else {
            let more = x["open_found"].as_array().map_or(0, Vec::len) - open.len();
            out.push(format!(
                "found open: {}{}",
                open.join("; "),
                if more > 0 {
                    format!(" and {more} more hosts")
                } else {
                    String::new()
                }
            ));
        }
        out.push(format!(
            "{} distinct ports on {} host{}",
            x["distinct_ports"],
            x["distinct_hosts"],
            if x["distinct_hosts"] == 1 { "" } else { "s" }
        ));
    }
    for f in a
        .observations
        .iter()
        .filter(|o| o["kind"] == "follow_up")
        .take(3)
    {
        out.push(format!(
            "follow-up: a session to {}:{} at {} ({} bytes)",
            f["host"].as_str().unwrap_or("?"),
            f["port"],
            f["time"].as_str().unwrap_or("?"),
            f["bytes"]
        ));
    }
    out
}

/// One line for syslog and chat previews.
pub fn summary(a: &Alert, ev: Event) -> String {
    let story = scan_story(a);
    let story = if story.is_empty() {
        String::new()
    } else {
        format!("; {}", story.join("; "))
    };
    format!(
        "Picket alert #{} ({}): {} {} from {} against {} target{} ({}){story}; first seen {}, last seen {}; seen by {}",
        a.id,
        ev.verb(),
        a.severity,
        a.kind,
        a.source,
        a.targets_total,
        if a.targets_total == 1 { "" } else { "s" },
        targets_text(a, 5),
        rfc3339_text(a.first_seen),
        rfc3339_text(a.last_seen),
        a.sources.join(", ")
    )
}

/// Markdown for Webex (Slack's mrkdwn differs: `*bold*`, see [`slack_text`]).
pub fn markdown(a: &Alert, ev: Event, link: Option<&str>) -> String {
    let mut s = format!(
        "**Picket: {} {}** ({}) from `{}`\n\n\
         {}\
         - Targets: {} ({})\n\
         - First seen {}, last seen {}\n\
         - Seen by {}\n\
         - Alert #{}, {}, {} observation{}",
        ev.verb(),
        a.kind,
        a.severity,
        a.source,
        scan_story(a)
            .iter()
            .map(|l| format!("- {l}\n"))
            .collect::<String>(),
        a.targets_total,
        targets_text(a, 10),
        rfc3339_text(a.first_seen),
        rfc3339_text(a.last_seen),
        a.sources.join(", "),
        a.id,
        a.status,
        a.observations_total,
        if a.observations_total == 1 { "" } else { "s" },
    );
    if let Some(l) = link {
        s.push_str(&format!("\n\n[Open in Picket]({l})"));
    }
    s
}

/// Slack mrkdwn.
pub fn slack_text(a: &Alert, ev: Event, link: Option<&str>) -> String {
    let mut s = format!(
        "*Picket: {} {}* ({}) from `{}`\n\
         {}\
         • Targets: {} ({})\n\
         • First seen {}, last seen {}\n\
         • Seen by {}\n\
         • Alert #{}, {}, {} observation{}",
        ev.verb(),
        a.kind,
        a.severity,
        a.source,
        scan_story(a)
            .iter()
            .map(|l| format!("• {l}\n"))
            .collect::<String>(),
        a.targets_total,
        targets_text(a, 10),
        rfc3339_text(a.first_seen),
        rfc3339_text(a.last_seen),
        a.sources.join(", "),
        a.id,
        a.status,
        a.observations_total,
        if a.observations_total == 1 { "" } else { "s" },
    );
    if let Some(l) = link {
        s.push_str(&format!("\n<{l}|Open in Picket>"));
    }
    s
}

/// The generic webhook's body.
pub fn webhook_body(a: &Alert, ev: Event, delivery: i64, link: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": ev.as_str(),
        "delivery": delivery,
        "alert": a.to_json(),
        "url": link,
    }))
    .expect("JSON values serialize")
}

/// `sha256=<hex HMAC-SHA256 of the body>`, as GitHub signs its webhooks.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(body);
    let tag = m.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// RFC 5424 severity of an alert.
fn syslog_severity(a: &Alert) -> u8 {
    match Severity::parse(&a.severity) {
        Some(Severity::Critical) => 2,
        Some(Severity::High) => 3,
        Some(Severity::Medium) => 4,
        _ => 5,
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// CEF header field: `|` and `\` escaped.
fn cef_header(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|")
}

/// CEF extension value: `=`, `\` and line breaks escaped.
fn cef_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// An ArcSight CEF message for an alert.
pub fn cef(a: &Alert, ev: Event) -> String {
    let sev = match Severity::parse(&a.severity) {
        Some(Severity::Critical) => 10,
        Some(Severity::High) => 8,
        Some(Severity::Medium) => 5,
        _ => 3,
    };
    format!(
        "CEF:0|Picket|Picket|{}|{}|{}|{sev}|src={} rt={} start={} end={} cnt={} \
         cs1Label=targets cs1={} cn1Label=alertId cn1={} cs2Label=event cs2={} \
         cs3Label=seenBy cs3={}",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(&a.kind),
        cef_header(&format!("{} from {}", a.kind, a.source)),
        cef_value(&a.source),
        a.last_seen / 1_000_000,
        a.first_seen / 1_000_000,
        a.last_seen / 1_000_000,
        a.observations_total,
        cef_value(&targets_text(a, 20)),
        a.id,
        ev.as_str(),
        cef_value(&a.sources.join(",")),
    )
}

/// One RFC 5424 message (no framing), stamped `now_ns`.
pub fn syslog_message(
    a: &Alert,
    ev: Event,
    facility: u8,
    cef_msg: bool,
    host: &str,
    now_ns: i64,
) -> String {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(a));
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(now_ns.into())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
        ts.microsecond()
    );
    // HOSTNAME is PRINTUSASCII without spaces, at most 255 characters.
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let host = if host.is_empty() { "-".into() } else { host };
    let msg = if cef_msg { cef(a, ev) } else { summary(a, ev) };
    format!(
        "<{pri}>1 {ts} {host} picket {} {} [picket@32473 id=\"{}\" type=\"{}\" severity=\"{}\" \
         source=\"{}\" targets=\"{}\" status=\"{}\"] {msg}",
        std::process::id(),
        ev.as_str(),
        a.id,
        sd_escape(&a.kind),
        sd_escape(&a.severity),
        sd_escape(&a.source),
        a.targets_total,
        sd_escape(&a.status),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::model::alert::testing::alert;

    #[test]
    fn a_scan_alert_says_what_it_found_open_and_its_follow_up() {
        let mut a = alert("medium", 1);
        a.observations = vec![
            json!({"kind": "kernel_scan_event"}),
            json!({"kind": "scan_extent", "open_found": ["10.0.0.5: 22/tcp, 443/tcp"],
                   "distinct_ports": 300, "distinct_hosts": 1}),
            json!({"kind": "follow_up", "host": "10.0.0.5", "port": 22,
                   "time": "2026-12-06T10:00:00Z", "bytes": 11000}),
        ];
        let line = summary(&a, Event::Escalated);
        assert!(
            line.contains("; found open: 10.0.0.5: 22/tcp, 443/tcp; 300 distinct ports on 1 host; follow-up: a session to 10.0.0.5:22 at 2026-12-06T10:00:00Z (11000 bytes);"),
            "{line}"
        );
        let md = markdown(&a, Event::Escalated, None);
        assert!(
            md.contains("\n- found open: 10.0.0.5: 22/tcp, 443/tcp\n"),
            "{md}"
        );
        let slack = slack_text(&a, Event::Escalated, None);
        assert!(
            slack.contains("\n• follow-up: a session to 10.0.0.5:22"),
            "{slack}"
        );
        // A scan that found nothing open says so; other alerts say nothing of it.
        a.observations[1] = json!({"kind": "scan_extent", "open_found": [],
                                   "distinct_ports": 25, "distinct_hosts": 1});
        assert!(summary(&a, Event::New).contains("found no open port"));
        a.observations.clear();
        assert!(!summary(&a, Event::New).contains("found"));
    }

    #[test]
    fn hmac_signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn syslog_message_is_rfc_5424_with_escaped_structured_data() {
        let mut a = alert("high", 16);
        a.source = "a\"b]c\\d".into();
        let m = syslog_message(&a, Event::New, 4, false, "cp 1", 1_795_860_000_123_456_789);
        let pid = std::process::id();
        assert!(
            m.starts_with(&format!(
                "<35>1 2026-11-28T10:00:00.123456Z cp1 picket {pid} alert.new \
                 [picket@32473 id=\"7\" type=\"port_scan\" severity=\"high\" \
                 source=\"a\\\"b\\]c\\\\d\" targets=\"16\" status=\"open\"] Picket alert #7 (new): \
                 high port_scan from a\"b]c\\d against 16 targets (10.0.0.1:20, 10.0.0.1:21, \
                 10.0.0.1:22 and 13 more)"
            )),
            "{m}"
        );
        let low = syslog_message(&alert("low", 1), Event::Grew, 16, false, "", 0);
        assert!(
            low.starts_with("<133>1 1970-01-01T00:00:00.000000Z - picket "),
            "{low}"
        );
    }

    #[test]
    fn cef_escapes_header_and_extension() {
        let mut a = alert("critical", 2);
        a.kind = "port|scan".into();
        a.source = "x=y".into();
        let c = cef(&a, Event::Escalated);
        assert!(
            c.starts_with(&format!(
                "CEF:0|Picket|Picket|{}|port\\|scan|port\\|scan from x=y|10|src=x\\=y rt=1795860060500 ",
                env!("CARGO_PKG_VERSION")
            )),
            "{c}"
        );
        assert!(c.contains("cn1Label=alertId cn1=7 cs2Label=event cs2=alert.escalated"));
    }

    #[test]
    fn texts_name_the_alert_and_link_to_it() {
        let a = alert("medium", 16);
        let md = markdown(&a, Event::New, Some("https://picket.example/#/alerts/7"));
        assert!(md.starts_with("**Picket: new port_scan** (medium) from `10.0.0.9`"));
        assert!(md.contains("- Targets: 16 (10.0.0.1:20, 10.0.0.1:21, 10.0.0.1:22 and 13 more)"));
        assert!(md.ends_with("[Open in Picket](https://picket.example/#/alerts/7)"));
        let sl = slack_text(&a, Event::New, Some("https://x/#/alerts/7"));
        assert!(sl.starts_with("*Picket: new port_scan* (medium) from `10.0.0.9`"));
        assert!(sl.ends_with("<https://x/#/alerts/7|Open in Picket>"));
        let body: Value =
            serde_json::from_slice(&webhook_body(&a, Event::New, 3, None)).expect("json");
        assert_eq!(body["event"], "alert.new");
        assert_eq!(body["delivery"], 3);
        assert_eq!(body["alert"]["type"], "port_scan");
        assert_eq!(body["alert"]["first_seen"], "2026-11-28T10:00:00Z");
    }
}
