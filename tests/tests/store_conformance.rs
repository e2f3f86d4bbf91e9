//! The state store's contract, checked the same way on every backend: the embedded SQLite store
//! and PostgreSQL (a private server the test starts). Same calls, same answers: sensors and keys,
//! users, sessions, tokens, alerts through the alerts service with their outbox rows, triage
//! and timelines, snoozes, notifiers and the outbox, lists, sensitivities, detector state. And
//! on PostgreSQL, control planes recording the same incident at the same moment make one alert.

use std::sync::Arc;

use controlplane::{
    model::{
        AlertQuery, AlertUpdate, Change, Event, Heartbeat, Interface, Registration, Role, Severity,
    },
    store::{Alerts as _, Notifications as _, NotifierRow, PgStore, SqliteStore, StateStore},
};
use serde_json::json;
use tests::{TempDir, servers::Postgres};

fn update(kind: &'static str, source: &str, target: &str, t: i64) -> AlertUpdate {
    AlertUpdate {
        kind,
        severity: Severity::Medium,
        source: source.into(),
        targets: vec![target.into()],
        time_ns: t,
        observation: json!({"seen": target}),
        seen_by: "sensor:edge-1".into(),
        strength: 1.0,
    }
}

const S: i64 = 1_000_000_000;

fn sensors_and_access(s: &dyn StateStore) {
    s.add_sensor("edge-1", "hash-1", 10).expect("add");
    assert!(
        s.add_sensor("edge-1", "hash-2", 11).is_err(),
        "names are unique"
    );
    assert_eq!(
        s.sensor_for_key("hash-1").expect("key"),
        Some("edge-1".into())
    );
    let reg = Registration {
        instance_id: "i-1".into(),
        version: "0.1.0".into(),
        kernel: "6.1".into(),
        hostname: "web-1".into(),
        machine_id: "m-1".into(),
        k8s_node: "node-a".into(),
        interfaces: vec![Interface {
            name: "eth0".into(),
            index: 2,
            mac: "02:00:00:00:00:01".into(),
            addresses: vec!["10.0.0.5/24".into(), "fd00::5/64".into()],
            xdp_mode: "native".into(),
            tc_mode: "tcx".into(),
        }],
        replica: "cp-1".into(),
    };
    s.register("edge-1", &reg, 20 * S).expect("register");
    let attached = || s.sensors().expect("sensors")[0].replica.clone();
    assert_eq!(attached().as_deref(), Some("cp-1"));
    // A heartbeat received by another replica: the sensor moved there.
    let hb = Heartbeat {
        replica: "cp-2".into(),
        ..Default::default()
    };
    s.heartbeat("edge-1", &hb, 30 * S).expect("heartbeat");
    assert_eq!(attached().as_deref(), Some("cp-2"));
    let rows = s.sensors().expect("sensors");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (
            r.name.as_str(),
            r.created_unix_ns,
            r.instance_id.as_deref(),
            r.hostname.as_deref(),
            r.first_seen_unix_ns,
            r.last_heartbeat_unix_ns,
            r.revoked
        ),
        (
            "edge-1",
            10,
            Some("i-1"),
            Some("web-1"),
            Some(20 * S),
            Some(30 * S),
            false
        )
    );
    let addrs = s.sensor_addresses().expect("addresses");
    assert!(
        addrs.contains(&"10.0.0.5".parse().unwrap()) && addrs.len() == 2,
        "{addrs:?}"
    );
    let ctx = s.entity_context().expect("context");
    assert_eq!(
        ctx.hosts.get(&"10.0.0.5".parse().unwrap()),
        Some(&("web-1".to_string(), true))
    );
    assert!(s.revoke_sensor("edge-1", 40).expect("revoke"));
    assert!(!s.revoke_sensor("edge-1", 41).expect("twice"));
    assert_eq!(s.sensor_for_key("hash-1").expect("key"), None);

    s.add_user("alice", "phc-a", Role::Admin, 1).expect("user");
    assert!(s.add_user("alice", "phc-b", Role::Viewer, 2).is_err());
    s.add_user("bob", "phc-b", Role::Viewer, 2).expect("user");
    assert_eq!(
        s.user_credentials("alice").expect("creds"),
        Some(("phc-a".to_string(), Role::Admin))
    );
    s.create_session("sess-1", "alice", "csrf-1", 100, 200)
        .expect("session");
    let sess = s.session("sess-1", 150).expect("session").expect("live");
    assert_eq!(
        (sess.user.as_str(), sess.role, sess.csrf.as_str()),
        ("alice", Role::Admin, "csrf-1")
    );
    assert!(
        s.session("sess-1", 200).expect("session").is_none(),
        "expired"
    );
    let users = s.users().expect("users");
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(users[0].last_login_ns, Some(100));
    assert!(s.set_password("alice", "phc-c").expect("passwd"));
    assert!(
        s.session("sess-1", 150).expect("session").is_none(),
        "a new password ends sessions"
    );
    s.create_session("sess-2", "bob", "csrf-2", 300, 400)
        .expect("session");
    s.delete_session("sess-2").expect("logout");
    assert!(s.session("sess-2", 350).expect("session").is_none());
    assert!(s.remove_user("bob").expect("remove"));
    assert!(!s.remove_user("bob").expect("again"));

    s.add_token("ci", "tok-1", Role::Viewer, 5).expect("token");
    assert!(s.add_token("ci", "tok-2", Role::Viewer, 6).is_err());
    assert_eq!(
        s.token("tok-1", 70 * S).expect("token"),
        Some(("ci".to_string(), Role::Viewer))
    );
    assert_eq!(s.tokens().expect("tokens")[0].last_used_ns, Some(70 * S));
    assert!(s.revoke_token("ci", 80 * S).expect("revoke"));
    assert_eq!(s.token("tok-1", 90 * S).expect("token"), None);
    assert!(s.tokens().expect("tokens")[0].revoked);
}

fn alerts_triage_and_outbox(s: &dyn StateStore) {
    s.add_notifier(
        &NotifierRow {
            name: "soc".into(),
            target: r#"{"kind":"slack","url":"https://hooks.example.com/x"}"#.into(),
            min_severity: Severity::Low,
        },
        1,
    )
    .expect("notifier");
    assert!(
        s.add_notifier(
            &NotifierRow {
                name: "soc".into(),
                target: "{}".into(),
                min_severity: Severity::High,
            },
            2
        )
        .is_err()
    );
    let first = controlplane::alerts::record(
        s,
        &[update("port_scan", "198.51.100.7", "10.0.0.5:22", 1000 * S)],
    )
    .expect("record");
    let again = controlplane::alerts::record(
        s,
        &[update("port_scan", "198.51.100.7", "10.0.0.6:22", 1010 * S)],
    )
    .expect("record");
    assert_eq!(first, again, "one incident, one alert");
    let id = first[0];
    let a = s.alert(id).expect("alert").expect("exists");
    assert_eq!(
        (a.kind.as_str(), a.status.as_str(), a.targets_total),
        ("port_scan", "open", 2)
    );
    assert_eq!(a.first_seen, 1000 * S);
    assert_eq!(a.last_seen, 1010 * S);
    // One message for the new alert, queued with it.
    let due = s.due_notifications(i64::MAX, 10).expect("due");
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(
        (
            due[0].notifier.as_str(),
            due[0].alert_id,
            due[0].event.as_str()
        ),
        ("soc", id, Event::New.as_str())
    );
    s.notification_failed(due[0].id, 1, Some(5000 * S), "HTTP 503", 10)
        .expect("failed");
    assert!(
        s.due_notifications(4000 * S, 10).expect("due").is_empty(),
        "not yet"
    );
    s.notification_delivered(due[0].id, 2, 20)
        .expect("delivered");
    let counts = s.notification_counts().expect("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (
            counts[0].1.pending,
            counts[0].1.delivered,
            counts[0].1.failed
        ),
        (0, 1, 0)
    );

    // Queries: filters and keyset paging, newest first.
    controlplane::alerts::record(
        s,
        &[update(
            "address_sweep",
            "198.51.100.8",
            "10.0.0.0/24",
            2000 * S,
        )],
    )
    .expect("record");
    let all = s
        .alerts(&AlertQuery {
            limit: 10,
            ..Default::default()
        })
        .expect("alerts");
    assert_eq!(
        all.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
        ["address_sweep", "port_scan"]
    );
    let page = s
        .alerts(&AlertQuery {
            limit: 1,
            ..Default::default()
        })
        .expect("page");
    let next = s
        .alerts(&AlertQuery {
            limit: 1,
            after: Some((page[0].last_seen, page[0].id)),
            ..Default::default()
        })
        .expect("next page");
    assert_eq!(next[0].id, id);
    let scans = s
        .alerts(&AlertQuery {
            limit: 10,
            kind: Some("port_scan".into()),
            status: Some("open".into()),
            ..Default::default()
        })
        .expect("filtered");
    assert_eq!(scans.len(), 1);
    let ctx = s.entity_context().expect("context");
    assert_eq!(ctx.alerts.get("198.51.100.7"), Some(&(1, true)));

    // Triage and its timeline.
    let a = s
        .change_alert(
            id,
            &[
                Change::Assign(Some("alice".into())),
                Change::Tags(vec!["scan".into(), "external".into(), "scan".into()]),
                Change::Comment("looked at it".into()),
                Change::Snooze(3000 * S),
            ],
            "alice",
            2500 * S,
        )
        .expect("change")
        .expect("exists");
    assert_eq!(
        (a.status.as_str(), a.snoozed_until, a.tags.clone()),
        (
            "snoozed",
            Some(3000 * S),
            vec!["external".to_string(), "scan".to_string()]
        )
    );
    assert!(
        s.change_alert(id, &[Change::Snooze(10)], "alice", 2600 * S)
            .is_err(),
        "a snooze in the past"
    );
    assert!(
        s.change_alert(999_999, &[], "alice", 1)
            .expect("none")
            .is_none()
    );
    assert_eq!(s.wake_snoozed(2999 * S).expect("wake"), 0);
    assert_eq!(s.wake_snoozed(3000 * S).expect("wake"), 1);
    let steps: Vec<(String, String)> = s
        .alert_history(id)
        .expect("history")
        .into_iter()
        .map(|h| (h.action, h.detail))
        .collect();
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(steps[0], ("assign".into(), "alice".into()));
    assert_eq!(steps[1], ("tags".into(), "external, scan".into()));
    assert_eq!(steps[4], ("status".into(), "open (snooze over)".into()));
    let a = s.alert(id).expect("alert").expect("exists");
    assert_eq!(
        (a.status.as_str(), a.snoozed_until, a.assignee.as_deref()),
        ("open", None, Some("alice"))
    );

    // The sweep's message is still queued: removing the notifier drops it.
    assert_eq!(s.remove_notifier("soc").expect("remove"), Some(1));
    assert_eq!(s.remove_notifier("soc").expect("again"), None);
}

fn lists_and_detector_state(s: &dyn StateStore) {
    assert_eq!(
        s.add_watchlist(
            &[
                ("203.0.113.0/24".into(), "bad".into()),
                ("198.51.100.9/32".into(), "c2".into())
            ],
            1
        )
        .expect("watch"),
        2
    );
    assert_eq!(
        s.add_watchlist(&[("203.0.113.0/24".into(), "worse".into())], 2)
            .expect("relabel"),
        0
    );
    assert_eq!(
        s.watchlist().expect("list"),
        vec![
            ("198.51.100.9/32".to_string(), "c2".to_string()),
            ("203.0.113.0/24".to_string(), "worse".to_string())
        ]
    );
    assert!(s.remove_watchlist("198.51.100.9/32").expect("remove"));
    assert!(!s.remove_watchlist("198.51.100.9/32").expect("again"));
    assert!(
        s.add_allowlist("10.9.0.0/16", "port_scan", "scanner", 1)
            .expect("allow")
    );
    assert!(
        !s.add_allowlist("10.9.0.0/16", "port_scan", "the scanner", 2)
            .expect("relabel")
    );
    assert_eq!(
        s.allowlist().expect("list"),
        vec![(
            "10.9.0.0/16".to_string(),
            "port_scan".to_string(),
            "the scanner".to_string()
        )]
    );
    assert!(
        s.remove_allowlist("10.9.0.0/16", "port_scan")
            .expect("remove")
    );
    assert!(
        s.set_sensitivity("*", "brute_force", "high", 1)
            .expect("set")
    );
    assert!(
        !s.set_sensitivity("*", "brute_force", "low", 2)
            .expect("reset")
    );
    assert_eq!(
        s.sensitivities().expect("list"),
        vec![(
            "*".to_string(),
            "brute_force".to_string(),
            "low".to_string()
        )]
    );
    assert!(s.remove_sensitivity("*", "brute_force").expect("remove"));
    s.save_detector_state(
        "novelty",
        &[
            ("a".into(), Some("1".into()), 5),
            ("b".into(), Some("2".into()), 6),
        ],
    )
    .expect("save");
    s.save_detector_state(
        "novelty",
        &[("a".into(), None, 7), ("b".into(), Some("3".into()), 8)],
    )
    .expect("save");
    assert_eq!(
        s.detector_state("novelty").expect("state"),
        vec![("b".to_string(), "3".to_string())]
    );
    assert!(s.detector_state("other").expect("state").is_empty());
}

fn leases(s: &dyn StateStore) {
    use controlplane::store::LeaseRow;
    assert!(s.leases().expect("leases").is_empty());
    // Free: taken. Held by another and not expired: refused. Its holder renews it.
    assert!(s.lease("notifications", "a", 100, 30).expect("lease"));
    assert!(!s.lease("notifications", "b", 110, 30).expect("lease"));
    assert!(s.lease("notifications", "a", 120, 30).expect("renew"));
    assert!(!s.lease("notifications", "b", 150, 30).expect("lease"));
    // Expired (150 < 151): another takes it, and the old holder is refused.
    assert!(s.lease("notifications", "b", 151, 30).expect("take over"));
    assert!(!s.lease("notifications", "a", 152, 30).expect("lease"));
    // Leases are apart by name.
    assert!(s.lease("maintenance", "a", 152, 60).expect("lease"));
    assert_eq!(
        s.leases().expect("leases"),
        vec![
            LeaseRow {
                name: "maintenance".into(),
                holder: "a".into(),
                until_ns: 212
            },
            LeaseRow {
                name: "notifications".into(),
                holder: "b".into(),
                until_ns: 181
            },
        ]
    );
    // Released only by its holder; then free for anyone at once.
    s.release("notifications", "a").expect("release");
    assert!(!s.lease("notifications", "a", 160, 30).expect("lease"));
    s.release("notifications", "b").expect("release");
    assert!(s.lease("notifications", "a", 160, 30).expect("lease"));
}

fn conformance(s: &dyn StateStore) {
    sensors_and_access(s);
    alerts_triage_and_outbox(s);
    lists_and_detector_state(s);
    leases(s);
}

#[test]
fn the_embedded_state_store_meets_the_contract() {
    let dir = TempDir::new("conform-sqlite");
    let s = SqliteStore::open(&dir.0).expect("store");
    conformance(s.as_ref());
}

#[test]
fn the_postgres_state_store_meets_the_contract() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let s = PgStore::open(&pg.url("picket")).expect("store");
    conformance(s.as_ref());
    // A second start finds the schema in place; a schema newer than the binary is refused.
    drop(s);
    let s = PgStore::open(&pg.url("picket")).expect("again");
    drop(s);
    pg.psql("picket", "UPDATE picket_schema SET version = 999");
    let e = PgStore::open(&pg.url("picket")).err().expect("refused");
    assert!(
        format!("{e:#}").contains("newer than this picket-controlplane"),
        "{e:#}"
    );
}

/// Four control planes (four pools) record the same incident 25 times each, all at once: one
/// alert, with every observation, and its messages queued once each (new, then grew at 100
/// targets).
#[test]
fn racing_control_planes_make_one_alert_per_incident() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let stores: Vec<Arc<PgStore>> = (0..4)
        .map(|_| PgStore::open(&pg.url("picket")).expect("store"))
        .collect();
    stores[0]
        .add_notifier(
            &NotifierRow {
                name: "soc".into(),
                target: "{}".into(),
                min_severity: Severity::Low,
            },
            1,
        )
        .expect("notifier");
    std::thread::scope(|t| {
        for (w, s) in stores.iter().enumerate() {
            t.spawn(move || {
                for i in 0..25 {
                    let target = format!("10.0.{w}.{i}:22");
                    controlplane::alerts::record(
                        s.as_ref(),
                        &[update(
                            "port_scan",
                            "198.51.100.66",
                            &target,
                            (1000 + i) * S,
                        )],
                    )
                    .expect("record");
                }
            });
        }
    });
    let alerts = stores[0]
        .alerts(&AlertQuery {
            limit: 100,
            ..Default::default()
        })
        .expect("alerts");
    assert_eq!(alerts.len(), 1, "one incident, one alert: {alerts:?}");
    assert_eq!(alerts[0].targets_total, 100);
    assert_eq!(
        pg.psql(
            "picket",
            "SELECT string_agg(event, ',' ORDER BY id) FROM outbox"
        ),
        "alert.new,alert.grew"
    );
}

/// Eight processes (eight pools) ask for the same free lease 50 times each at once, each at
/// its own increasing time within the lease's life: exactly one ever holds it.
#[test]
fn racing_replicas_share_one_lease() {
    use controlplane::store::Leases as _;
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let stores: Vec<Arc<PgStore>> = (0..8)
        .map(|_| PgStore::open(&pg.url("picket")).expect("store"))
        .collect();
    let winners = std::sync::Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|t| {
        for (w, s) in stores.iter().enumerate() {
            let winners = &winners;
            t.spawn(move || {
                for i in 0..50 {
                    let holder = format!("replica-{w}");
                    if s.lease("notifications", &holder, 1_000 + i, 1_000_000)
                        .expect("lease")
                    {
                        winners.lock().expect("lock").insert(holder);
                    }
                }
            });
        }
    });
    let winners = winners.into_inner().expect("lock");
    assert_eq!(winners.len(), 1, "{winners:?}");
}

/// Observations made while the state store is away wait in memory and are recorded, in order,
/// at the next call once it answers (the serving paths use `record_or_keep`).
#[test]
fn observations_wait_for_a_state_store_that_is_away() {
    use controlplane::alerts::{record_or_keep, waiting};
    let mut pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let s = PgStore::open(&pg.url("picket")).expect("store");
    record_or_keep(
        s.as_ref(),
        &[update("port_scan", "198.51.100.7", "10.0.0.1:22", S)],
    )
    .expect("recorded");
    pg.stop();
    let later = [
        update("port_scan", "198.51.100.7", "10.0.0.2:22", 2 * S),
        update("address_sweep", "198.51.100.8", "10.0.0.3", 3 * S),
    ];
    assert!(record_or_keep(s.as_ref(), &later).is_err());
    assert_eq!(waiting(), 2);
    assert!(record_or_keep(s.as_ref(), &[]).is_err(), "still away");
    assert_eq!(waiting(), 2);
    pg.start_again();
    let ids = record_or_keep(s.as_ref(), &[]).expect("recorded once it answers");
    assert_eq!(
        ids.len(),
        2,
        "the scan's alert grew, the sweep's opened: {ids:?}"
    );
    assert_eq!(waiting(), 0);
    let alerts = s
        .alerts(&AlertQuery {
            limit: 10,
            ..Default::default()
        })
        .expect("alerts");
    let mut got: Vec<(String, u64)> = alerts
        .iter()
        .map(|a| (a.kind.clone(), a.targets_total))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("address_sweep".to_string(), 1),
            ("port_scan".to_string(), 2)
        ]
    );
}
