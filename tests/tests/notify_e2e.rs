//! Notifications from a real `picket-controlplane serve` to local receivers: a signed generic
//! webhook that fails twice before it accepts, Slack, Webex (a local stand-in for its messages
//! API), syslog over UDP and over TCP with CEF, a receiver that is down and one that refuses for
//! good. The alerts come from an AWS flow-log import made before `serve` starts, so the queue
//! also shows that nothing waits on a running server.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use tests::{
    ControlPlane, Lab, TempDir, bin, http_get,
    receivers::{HttpReceiver, SyslogReceiver, wait},
};

fn cli(data: &Path, args: &[&str]) -> String {
    let o = Command::new(bin("picket-controlplane"))
        .arg("notifiers")
        .arg("--data-dir")
        .arg(data)
        .envs(tests::servers::store_env(data))
        .args(args)
        .output()
        .expect("run picket-controlplane notifiers");
    assert!(
        o.status.success(),
        "notifiers {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Rejected probes from one source to 40 ports of one host and to port 3389 of 30 hosts: a
/// port_scan and an address_sweep alert, each with several observations.
fn scan_log() -> String {
    let t0 = 1_795_860_000u64;
    let mut log = String::new();
    for p in 1..=40u64 {
        log += &format!(
            "2 123456789010 eni-0a1 198.51.100.7 10.0.0.5 61000 {p} 6 1 44 {} {} REJECT OK\n",
            t0 + p,
            t0 + p + 1
        );
    }
    for h in 1..=30u64 {
        log += &format!(
            "2 123456789010 eni-0a2 198.51.100.7 10.0.1.{h} 61001 3389 6 1 44 {} {} REJECT OK\n",
            t0 + 100 + h,
            t0 + 101 + h
        );
    }
    log
}

#[test]
fn alerts_reach_webhook_slack_webex_and_syslog_once_each_with_retries_and_failures_counted() {
    let lab = Lab::new();
    let ns = lab.a.as_str();
    let dir = TempDir::new("notify");
    let data = dir.0.join("data");

    let hook = HttpReceiver::start(ns, &[500, 503]);
    let slack = HttpReceiver::start(ns, &[]);
    let webex = HttpReceiver::start(ns, &[429]);
    let gone = HttpReceiver::start(ns, &[404, 404]);
    let high_only = HttpReceiver::start(ns, &[]);
    let udp = SyslogReceiver::udp(ns);
    let tcp = SyslogReceiver::tcp(ns);
    // A port nobody listens on: bound, then closed.
    let dead_port = tests::in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    })
    .join()
    .expect("port");

    let secret = dir.0.join("hook.secret");
    std::fs::write(&secret, "s3cret\n").expect("secret");
    let token = dir.0.join("webex.token");
    std::fs::write(&token, "bot-token-1\n").expect("token");
    let out = cli(
        &data,
        &[
            "add",
            "hook",
            "webhook",
            "--url",
            &hook.url("/picket"),
            "--secret-file",
            secret.to_str().expect("utf8"),
        ],
    );
    assert_eq!(
        out.trim(),
        format!(
            "added webhook notifier `hook`: http://127.0.0.1:{}/… (signed), alerts of severity low and above",
            hook.port
        )
    );
    cli(
        &data,
        &[
            "add",
            "chat",
            "slack",
            "--url",
            &slack.url("/services/T0/B0/x"),
        ],
    );
    cli(
        &data,
        &[
            "add",
            "room",
            "webex",
            "--room",
            "Y2lzY29zcGFyazovL3Vz",
            "--token-file",
            token.to_str().expect("utf8"),
            "--api-url",
            &webex.url(""),
        ],
    );
    cli(
        &data,
        &["add", "siem-udp", "syslog", "--address", &udp.address()],
    );
    cli(
        &data,
        &[
            "add",
            "siem-tcp",
            "syslog",
            "--address",
            &tcp.address(),
            "--tcp",
            "--cef",
            "--facility",
            "local4",
        ],
    );
    cli(
        &data,
        &[
            "add",
            "dead",
            "webhook",
            "--url",
            &format!("http://127.0.0.1:{dead_port}/"),
        ],
    );
    cli(
        &data,
        &["add", "gone", "webhook", "--url", &gone.url("/old")],
    );
    cli(
        &data,
        &[
            "add",
            "pager",
            "--min-severity",
            "high",
            "webhook",
            "--url",
            &high_only.url("/"),
        ],
    );

    // Bad input is refused with a reason, and nothing is added.
    for (args, err) in [
        (
            vec!["add", "x", "slack", "--url", "ftp://x"],
            "--url: `ftp://x` must be an http:// or https:// URL with a host",
        ),
        (
            vec!["add", "hook", "slack", "--url", "http://x/"],
            "a notifier named `hook` exists already",
        ),
        (
            vec!["add", "bad name", "slack", "--url", "http://x/"],
            "a notifier name is 1-64 letters",
        ),
        (
            vec!["add", "y", "syslog", "--address", "nohost"],
            "--address: `nohost` must be HOST:PORT",
        ),
        (vec!["remove", "nope"], "there is no notifier `nope`"),
    ] {
        let o = Command::new(bin("picket-controlplane"))
            .arg("notifiers")
            .arg("--data-dir")
            .arg(&data)
            .envs(tests::servers::store_env(&data))
            .args(&args)
            .output()
            .expect("run");
        assert!(!o.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(err), "{args:?}: {stderr}");
    }

    let log = dir.0.join("scan.log");
    std::fs::write(&log, scan_log()).expect("write");
    let o = ControlPlane::import(&data, ["aws", log.to_str().expect("utf8")], None);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("alert #1: low port_scan from 198.51.100.7"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alert #2: low address_sweep from 198.51.100.7"),
        "{stdout}"
    );

    let cp = ControlPlane::start_with(
        ns,
        &data,
        "127.0.0.1:7443",
        &dir.0.join("cp.log"),
        &[
            "--retention-raw-days",
            "36500",
            "--notify-max-attempts",
            "3",
            "--notify-retry-ms",
            "100",
            "--public-url",
            "https://picket.example.com/",
        ],
    );
    let t = Duration::from_secs(30);

    // Webhook: 2 alerts, the first two attempts refused with 500 and 503: 4 requests, and the
    // retries carry the same delivery id.
    let reqs = hook.wait_for(4, t);
    for r in &reqs {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/picket"));
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-picket-event"), "alert.new");
        assert_eq!(
            r.header("x-picket-signature-256"),
            controlplane::notify::signature("s3cret", &r.body),
            "the signature is the body's HMAC-SHA256 with the secret"
        );
    }
    let mut delivered: Vec<(String, String)> = reqs
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["alert"]["type"].as_str().expect("type").to_string(),
                r.header("x-picket-delivery").to_string(),
            )
        })
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 2, "two deliveries, retried: {delivered:?}");
    let body = reqs
        .iter()
        .map(|r| r.json())
        .find(|v| v["alert"]["type"] == "port_scan")
        .expect("the port scan");
    assert_eq!(body["alert"]["source"], "198.51.100.7");
    assert_eq!(body["alert"]["status"], "open");
    assert_eq!(
        body["alert"]["observations_total"], 4,
        "one message for four observations (the sequential test, two fan-outs, the extent)"
    );
    assert!(
        body["url"]
            .as_str()
            .expect("url")
            .starts_with("https://picket.example.com/#/alerts/"),
        "{body}"
    );

    // Slack: one message per alert, not per observation.
    let reqs = slack.wait_for(2, t);
    let mut texts: Vec<String> = reqs
        .iter()
        .map(|r| r.json()["text"].as_str().expect("text").to_string())
        .collect();
    texts.sort();
    assert!(
        texts[0].starts_with("*Picket: new address_sweep* (low) from `198.51.100.7`"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].starts_with("*Picket: new port_scan* (low) from `198.51.100.7`"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("• Targets: 1 (10.0.0.5)"), "{}", texts[1]);

    // Webex: the messages API with the bot token; a 429 first, then both delivered.
    let reqs = webex.wait_for(3, t);
    for r in &reqs {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("authorization"), "Bearer bot-token-1");
        let v = r.json();
        assert_eq!(v["roomId"], "Y2lzY29zcGFyazovL3Vz");
        assert!(
            v["markdown"]
                .as_str()
                .expect("md")
                .starts_with("**Picket: new "),
            "{v}"
        );
        assert!(
            v["text"]
                .as_str()
                .expect("text")
                .starts_with("Picket alert #"),
            "{v}"
        );
    }

    // Syslog: RFC 5424, facility auth (4) or local4 (20), severity notice (5) for a low alert.
    let msgs = udp.wait_for(2, t);
    for m in &msgs {
        assert!(m.starts_with("<37>1 "), "{m}");
        assert!(
            m.contains(" picket ") && m.contains(" alert.new [picket@32473 id=\""),
            "{m}"
        );
        assert!(m.contains("source=\"198.51.100.7\""), "{m}");
    }
    let msgs = tcp.wait_for(2, t);
    for m in &msgs {
        assert!(m.starts_with("<165>1 "), "{m}");
        assert!(m.contains("] CEF:0|Picket|Picket|"), "{m}");
        assert!(m.contains("src=198.51.100.7 "), "{m}");
    }

    // The dead receiver fails 3 times per message, the 404 once: all four counted as failed;
    // everything else delivered once; the high-severity pager heard nothing.
    let health = wait(t, || {
        let (_, body) = http_get(ns, "127.0.0.1:8080", "/api/v1/health");
        let v: Value = serde_json::from_str(&body).expect("json");
        (v["notifications"]["pending"] == 0).then_some(v)
    })
    .expect("the queue drains");
    assert_eq!(
        health["notifications"],
        serde_json::json!({"pending": 0, "delivered": 10, "failed": 4})
    );
    assert_eq!(gone.requests().len(), 2, "a 404 is not retried");
    assert!(high_only.requests().is_empty());
    let log = std::fs::read_to_string(&cp.log).expect("log");
    assert!(
        log.contains("notification could not be delivered; counted as failed"),
        "{log}"
    );
    assert!(log.contains("HTTP 404 Not Found"), "{log}");

    let list = cli(&data, &["list"]);
    assert!(list.contains("dead\twebhook\t"), "{list}");
    assert!(list.contains("delivered 0, pending 0, failed 2"), "{list}");
    assert!(
        list.contains("hook\twebhook\t") && list.contains("delivered 2, pending 0, failed 0"),
        "{list}"
    );

    // `test` sends a sample alert right away (from the namespace the receiver is in).
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin("picket-controlplane"))
        .arg("notifiers")
        .arg("--data-dir")
        .arg(&data)
        .envs(tests::servers::store_env_in(Some(ns), &data))
        .args(["test", "chat"])
        .output()
        .expect("run notifiers test");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.starts_with("sent a test message to `chat`"), "{out}");
    let reqs = slack.wait_for(3, t);
    assert!(
        reqs[2].json()["text"]
            .as_str()
            .expect("text")
            .starts_with("*Picket: test port_scan*")
    );
    cp.stop();
    let out = cli(&data, &["remove", "dead"]);
    assert_eq!(
        out.trim(),
        "removed `dead`; 0 undelivered message(s) dropped with it"
    );
}
