//! One flow-store contract, checked on every backend: the embedded store (SQLite) and a private
//! ClickHouse. The same inputs must give the same answers: sensor batches exactly once, flows
//! and files, totals, flows by filter with paging, top-N, correlation (links and what the cloud
//! fills in), coverage gaps, rollups, conversations and hourly counts. Ids differ between
//! backends (SQLite numbers rows, ClickHouse numbers by time), so rows are compared without
//! them, in order.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use controlplane::{
    model::{
        Action, CloudMeta, Flow, ImportedFile, LoginEvent, PodContext, ProbeRecord, ScanEvent,
        SensorBatch, SensorMeta, Source,
    },
    store::{
        ChStore, FlowCursor, FlowQuery, FlowRow, FlowStore, Retention, SqliteStore, Stored, TopBy,
        TopGroup, TopQuery, clickhouse::Options,
    },
};
use tests::{TempDir, servers::ClickHouse};

const S: i64 = 1_000_000_000;
/// 2026-12-06T10:00:00Z: the data's hour.
const T0: i64 = 1_797_156_000 * S;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn sensor_flow(src: &str, sp: u16, dst: &str, dp: u16, proto: u8, at: i64) -> Flow {
    Flow {
        source: Source::Sensor,
        observer: "web-1".into(),
        interface: "eth0".into(),
        start_ns: at,
        end_ns: at + 2 * S,
        src_ip: ip(src),
        dst_ip: ip(dst),
        src_port: sp,
        dst_port: dp,
        protocol: proto,
        packets: 10,
        bytes: 1_000,
        reverse_packets: 8,
        reverse_bytes: 6_000,
        tcp_flags: 0x1b,
        action: Action::Unknown,
        sampling_rate: 1.0,
        cloud: CloudMeta::default(),
        sensor: Some(Box::new(SensorMeta {
            reverse_tcp_flags: 0x12,
            observed: "both".into(),
            initiator_by: "syn".into(),
            partial: String::new(),
            end_reason: "end".into(),
            src_pod: None,
            dst_pod: None,
        })),
    }
}

fn cloud_flow(src: &str, sp: u16, dst: &str, dp: u16, at: i64, action: Action) -> Flow {
    let mut extra = serde_json::Map::new();
    extra.insert("account_id".into(), "123456789010".into());
    Flow {
        source: Source::Aws,
        observer: "123456789010".into(),
        interface: "eni-0a".into(),
        start_ns: at,
        end_ns: at + 60 * S,
        src_ip: ip(src),
        dst_ip: ip(dst),
        src_port: sp,
        dst_port: dp,
        protocol: 6,
        packets: 5,
        bytes: 400,
        reverse_packets: 0,
        reverse_bytes: 0,
        tcp_flags: 2,
        action,
        sampling_rate: 1.0,
        cloud: CloudMeta {
            vpc: Some("vpc-0lab".into()),
            subnet: Some("subnet-1".into()),
            instance: Some("i-0web".into()),
            region: Some("eu-west-1".into()),
            zone: None,
            pkt_src_ip: None,
            pkt_dst_ip: None,
            direction: Some("ingress".into()),
            extra,
            ..CloudMeta::default()
        },
        sensor: None,
    }
}

fn batch(instance: &str, id: u64, flows: Vec<Flow>) -> SensorBatch {
    SensorBatch {
        sensor: "web-1".into(),
        instance_id: instance.into(),
        batch_id: id,
        flows,
        scans: Vec::new(),
        probes: Vec::new(),
        logins: Vec::new(),
    }
}

/// Everything a store is given, in order.
fn fill(s: &dyn FlowStore) {
    let mut b1 = batch(
        "i1",
        1,
        vec![
            sensor_flow("10.0.0.5", 40000, "10.0.0.9", 443, 6, T0),
            sensor_flow("10.0.0.5", 40001, "10.0.0.9", 53, 17, T0 + 5 * S),
            sensor_flow("2001:db8::5", 40002, "2001:db8::9", 22, 6, T0 + 70 * S),
        ],
    );
    // The sensor had to guess who started the DNS conversation (the first packet seen).
    if let Some(m) = b1.flows[1].sensor.as_mut() {
        m.initiator_by = "first_seen".into();
    }
    if let Some(m) = b1.flows[0].sensor.as_mut() {
        m.src_pod = Some(PodContext {
            namespace: "shop".into(),
            pod: "cart-7".into(),
            labels: [("app".to_string(), "cart".to_string())].into(),
            node: "node-1".into(),
        });
    }
    b1.scans.push(ScanEvent {
        iface: "eth0".into(),
        src_ip: ip("198.51.100.66"),
        distinct_ports: 20,
        distinct_hosts: 1,
        probe: "syn".into(),
        probes: [("syn".to_string(), 20)].into(),
        probe_bytes: 1_200,
        last_dst_ip: ip("10.0.0.9"),
        last_dst_port: 25,
        reason: vec!["ports".into()],
        start_ns: T0,
        end_ns: T0 + S,
        answered_contacts: 1,
        unanswered_contacts: 19,
        replied_contacts: 0,
    });
    b1.probes.push(ProbeRecord {
        iface: "eth0".into(),
        src_ip: ip("198.51.100.66"),
        protocol: 6,
        probe: "syn".into(),
        packets: 20,
        bytes: 1_200,
        start_ns: T0,
        end_ns: T0 + S,
    });
    b1.logins.push(LoginEvent {
        time_ns: T0 + 3 * S,
        service: "ssh".into(),
        outcome: "failed".into(),
        user: "root".into(),
        src_ip: ip("198.51.100.66"),
        src_port: 50000,
    });
    assert_eq!(s.store_batch(&b1, T0).expect("store"), Stored::New);
    assert_eq!(s.store_batch(&b1, T0).expect("again"), Stored::Duplicate);
    let b2 = batch(
        "i1",
        2,
        vec![sensor_flow(
            "10.0.0.6",
            41000,
            "10.0.1.20",
            5432,
            6,
            T0 + 3_700 * S,
        )],
    );
    let b3 = batch(
        "i2",
        1,
        vec![sensor_flow(
            "10.0.0.7",
            42000,
            "10.0.0.9",
            443,
            6,
            T0 + 30 * S,
        )],
    );
    let got: Vec<Stored> = s
        .store_batches(&[&b2, &b2, &b3], T0)
        .expect("group")
        .into_iter()
        .map(|r| r.expect("each"))
        .collect();
    assert_eq!(got, [Stored::New, Stored::Duplicate, Stored::New]);
    assert_eq!(s.last_stored_batch("i1").expect("last"), 2);
    assert_eq!(s.last_stored_batch("i2").expect("last"), 1);
    assert_eq!(s.last_stored_batch("nobody").expect("last"), 0);

    // Cloud records: the same TCP conversation as the sensor's first flow (reversed, as the
    // destination's interface logged it), one through NAT, a reject, unwatched addresses.
    let mut nat = cloud_flow("203.0.113.10", 40001, "10.0.0.9", 53, T0, Action::Accept);
    nat.protocol = 17;
    nat.cloud.pkt_src_ip = Some(ip("10.0.0.5"));
    nat.cloud.pkt_dst_ip = Some(ip("10.0.0.9"));
    nat.cloud.vpc = None;
    nat.cloud.zone = Some("eu-west-1a".into());
    s.insert_flows(&[
        cloud_flow("10.0.0.9", 443, "10.0.0.5", 40000, T0, Action::Accept),
        nat,
        cloud_flow(
            "198.51.100.66",
            50000,
            "10.0.0.9",
            22,
            T0 + 10 * S,
            Action::Reject,
        ),
        cloud_flow(
            "10.0.3.7",
            33000,
            "10.0.0.9",
            443,
            T0 + 20 * S,
            Action::Accept,
        ),
    ])
    .expect("cloud flows");
    // Flows across hours for top-N over whole hours and edges: one from 10:59:50 to
    // 11:00:10, one from 09:30 to 12:01:40, and a record whose start is after its end.
    let mut across = sensor_flow("10.0.0.8", 43000, "10.0.0.9", 443, 6, T0 + 3_590 * S);
    across.end_ns = T0 + 3_610 * S;
    let mut long = cloud_flow("10.0.3.7", 33001, "10.0.1.20", 5432, T0, Action::Accept);
    (long.start_ns, long.end_ns) = (T0 - 1_800 * S, T0 + 7_300 * S);
    let mut odd = cloud_flow("10.0.3.8", 33002, "10.0.0.9", 22, T0, Action::Accept);
    (odd.start_ns, odd.end_ns) = (T0 + 5_000 * S, T0 + 1_000 * S);
    s.insert_flows(&[across, long, odd])
        .expect("flows across hours");
    // A file of flows once, in two chunks; a second import of it stores nothing.
    let file = ImportedFile {
        sha256: "ab".repeat(32),
        provider: Source::Gcp,
        name: "gcp.json".into(),
        bytes: 1234,
        delivered_ns: 1,
    };
    let mut g1 = cloud_flow(
        "10.8.0.2",
        5000,
        "10.8.0.3",
        80,
        T0 + 100 * S,
        Action::Accept,
    );
    g1.source = Source::Gcp;
    g1.sampling_rate = 0.5;
    g1.observer = "project-1".into();
    let mut g2 = g1.clone();
    g2.dst_port = 8080;
    g2.bytes = u64::MAX;
    let summary = s
        .import_file_once(&file, T0, &mut |sink| {
            sink(std::slice::from_ref(&g1))?;
            sink(std::slice::from_ref(&g2))?;
            Ok("2 records".into())
        })
        .expect("import");
    assert_eq!(summary.as_deref(), Some("2 records"));
    let again = s
        .import_file_once(&file, T0, &mut |_| panic!("read again"))
        .expect("again");
    assert_eq!(again, None);
}

/// A page of rows without their ids (which differ between backends), and the last row's place.
fn page(s: &dyn FlowStore, q: &FlowQuery) -> (Vec<FlowRow>, Option<FlowCursor>) {
    let rows = s.query_flows(q).expect("query");
    let last = rows.last().map(FlowRow::cursor);
    (
        rows.into_iter()
            .map(|mut r| {
                r.id = 0;
                r
            })
            .collect(),
        last,
    )
}

/// Every row `q` finds, following the cursor page by page (pages of 2).
fn all_pages(s: &dyn FlowStore, q: &FlowQuery) -> Vec<Vec<FlowRow>> {
    let mut q = FlowQuery {
        limit: 2,
        ..q.clone()
    };
    let mut pages = Vec::new();
    loop {
        let (rows, last) = page(s, &q);
        if rows.is_empty() {
            return pages;
        }
        pages.push(rows);
        q.before = last;
    }
}

/// What a store answers, in a form to compare.
fn answers(s: &dyn FlowStore) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |what: &str, v: String| out.push(format!("{what}: {v}"));
    say(
        "sensor totals",
        format!("{:?}", s.flow_totals(None).expect("totals")),
    );
    say(
        "web-1 totals",
        format!("{:?}", s.flow_totals(Some("web-1")).expect("totals")),
    );
    say(
        "nobody totals",
        format!("{:?}", s.flow_totals(Some("nobody")).expect("totals")),
    );
    for src in [Source::Sensor, Source::Aws, Source::Gcp, Source::Azure] {
        say(
            "source totals",
            format!("{:?}", s.source_totals(src).expect("totals")),
        );
    }
    let queries = [
        FlowQuery::default(),
        FlowQuery {
            ip: Some(ip("10.0.0.9")),
            ..Default::default()
        },
        FlowQuery {
            ip: Some(ip("2001:db8::9")),
            ..Default::default()
        },
        FlowQuery {
            ip: Some(ip("10.0.0.9")),
            since_ns: Some(T0 + 6 * S),
            ..Default::default()
        },
        FlowQuery {
            port: Some(443),
            ..Default::default()
        },
        FlowQuery {
            protocol: Some(17),
            ..Default::default()
        },
        FlowQuery {
            since_ns: Some(T0 + 62 * S),
            until_ns: Some(T0 + 3_000 * S),
            ..Default::default()
        },
        FlowQuery {
            source: Some(Source::Aws),
            ..Default::default()
        },
        FlowQuery {
            ip: Some(ip("10.0.0.9")),
            port: Some(443),
            source: Some(Source::Sensor),
            ..Default::default()
        },
        FlowQuery {
            ip: Some(ip("192.0.2.1")),
            ..Default::default()
        },
    ];
    for q in &queries {
        say("flows", format!("{q:?} -> {:?}", all_pages(s, q)));
    }
    for group in [
        TopGroup::SrcIp,
        TopGroup::DstIp,
        TopGroup::Pair,
        TopGroup::DstPort,
    ] {
        for by in [TopBy::Bytes, TopBy::Packets, TopBy::Flows] {
            let q = TopQuery {
                by,
                group,
                since_ns: T0 - 3_600 * S,
                until_ns: None,
                source: None,
                limit: 5,
            };
            say("top", format!("{q:?} -> {:?}", s.top(&q).expect("top")));
        }
    }
    // Ranges on and off the hours, with and without an end: whole hours and edges.
    let times = [
        T0 - 3_600 * S,
        T0,
        T0 + 60 * S,
        T0 + 3_599 * S,
        T0 + 3_600 * S,
    ];
    let ends = [
        None,
        Some(T0 + 1_500 * S),
        Some(T0 + 3_600 * S),
        Some(T0 + 3_605 * S),
        Some(T0 + 7_200 * S),
        Some(T0 + 9_000 * S),
    ];
    for group in [TopGroup::SrcIp, TopGroup::DstIp, TopGroup::DstPort] {
        for since_ns in times {
            for until_ns in ends {
                for source in [None, Some(Source::Sensor), Some(Source::Aws)] {
                    let q = TopQuery {
                        by: TopBy::Bytes,
                        group,
                        since_ns,
                        until_ns,
                        source,
                        limit: 10,
                    };
                    say("top", format!("{q:?} -> {:?}", s.top(&q).expect("top")));
                }
            }
        }
    }
    let watched: HashSet<IpAddr> = [ip("10.0.0.9"), ip("10.0.0.5")].into();
    say(
        "gaps",
        format!("{:?}", s.coverage_gaps(T0 - S, &watched).expect("gaps")),
    );
    out
}

/// What a store answers once correlated and rolled up.
fn later_answers(s: &dyn FlowStore) -> Vec<String> {
    let mut out = Vec::new();
    out.push(format!(
        "links: {}",
        s.correlate(T0 - 3_600 * S, T0 + 7_200 * S, 120 * S)
            .expect("correlate")
    ));
    out.push(format!(
        "links again: {}",
        s.correlate(T0 - 3_600 * S, T0 + 7_200 * S, 120 * S)
            .expect("correlate")
    ));
    let flows = all_pages(s, &FlowQuery::default());
    // How each flow's initiator was told, and whether it was a guess: sensor flows only.
    let how = |sp: u16| {
        let f = flows
            .iter()
            .flatten()
            .find(|f| f.src_port == Some(sp) && f.source == "sensor");
        f.map(|f| (f.initiator_by.as_deref(), f.initiator_guessed))
    };
    assert_eq!(how(40000), Some((Some("syn"), Some(false))));
    assert_eq!(how(40001), Some((Some("first_seen"), Some(true))));
    assert!(
        flows
            .iter()
            .flatten()
            .filter(|f| f.source != "sensor")
            .all(|f| f.initiator_by.is_none()
                && f.initiator_guessed.is_none()
                && f.reverse_tcp_flags.is_none()),
        "a cloud record's source is its packets' source, and it has no other end"
    );
    // A sensor flow's other end's flags come back as written.
    assert!(
        flows
            .iter()
            .flatten()
            .filter(|f| f.source == "sensor")
            .all(|f| f.reverse_tcp_flags == Some(0x12))
    );
    out.push(format!("flows: {flows:?}"));
    s.maintain(T0 + 7_200 * S, &Retention::default())
        .expect("maintain");
    for level in ["1m", "1h"] {
        for src in [Source::Sensor, Source::Aws, Source::Gcp] {
            out.push(format!(
                "{level} {src:?}: {:?}",
                s.rollup_totals(level, src).expect("rollup")
            ));
        }
    }
    let mut convs = s
        .conversations(T0 - 3_600 * S, T0 + 7_200 * S, None)
        .expect("conversations");
    convs.sort_by_key(|c| (c.src, c.dst, c.dst_port, c.protocol));
    out.push(format!("conversations: {convs:?}"));
    let mut mine = s
        .conversations(T0, T0 + 3_600 * S, Some(ip("10.0.0.9")))
        .expect("conversations");
    mine.sort_by_key(|c| (c.src, c.dst, c.dst_port, c.protocol));
    // The guessed flow is counted as such in its conversation, and only there.
    let guessed: Vec<(u16, u64, u64)> = mine
        .iter()
        .filter(|c| c.src == ip("10.0.0.5"))
        .map(|c| (c.dst_port, c.flows, c.guessed))
        .collect();
    assert!(guessed.contains(&(53, 1, 1)), "{guessed:?}");
    assert!(guessed.contains(&(443, 1, 0)), "{guessed:?}");
    out.push(format!("conversations of 10.0.0.9: {mine:?}"));
    out.push(format!(
        "hourly: {:?}",
        s.hourly(ip("10.0.0.9"), T0 - 3_600 * S, T0 + 7_200 * S)
            .expect("hourly")
    ));
    out.push(format!(
        "hourly: {:?}",
        s.hourly(ip("10.0.0.6"), T0, T0 + 7_200 * S)
            .expect("hourly")
    ));
    out
}

fn same(a: &[String], b: &[String]) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
}

#[test]
fn clickhouse_answers_as_the_embedded_store_does() {
    let dir = TempDir::new("flow-conformance");
    let sqlite = SqliteStore::open(&dir.0).expect("sqlite");
    let ch = ClickHouse::start();
    ch.query("CREATE DATABASE picket");
    let click: Arc<ChStore> = ChStore::open(&ch.store_url("picket")).expect("clickhouse");
    let stores: [&dyn FlowStore; 2] = [sqlite.as_ref(), click.as_ref()];
    for s in stores {
        fill(s);
    }
    let (a, b) = (answers(stores[0]), answers(stores[1]));
    same(&a, &b);
    // The whole hours came from the hourly sums (the odd record aside).
    assert_eq!(
        ch.query("SELECT sum(sum_flows) FROM picket.top_1h WHERE dim = 0")
            .trim(),
        "13"
    );
    assert_eq!(ch.query("SELECT count() FROM picket.top_odd").trim(), "1");
    let (a, b) = (later_answers(stores[0]), later_answers(stores[1]));
    same(&a, &b);
}

/// A write cut short (its pending mark and part of its rows in, then the process gone) is
/// taken away, rollups included, when the batch comes again: every flow counts once. Whole
/// days go at retention; the rollups stay. A second start finds the schema in place, and a
/// schema newer than the binary is refused.
#[test]
fn clickhouse_writes_count_once_after_a_cut_and_retention_drops_whole_days() {
    let ch = ClickHouse::start();
    ch.query("CREATE DATABASE picket");
    let s = ChStore::open(&ch.store_url("picket")).expect("clickhouse");
    let flows = vec![
        sensor_flow("10.0.0.5", 40000, "10.0.0.9", 443, 6, T0),
        sensor_flow("10.0.0.5", 40001, "10.0.0.9", 443, 6, T0 + S),
    ];
    // What a control plane killed midway left: the pending mark of attempt 77, and one of
    // the two flows under that key (which the rollups' views already counted).
    ch.query(
        "INSERT INTO picket.batches (instance_id, batch_id, ingest, state, sensor, stored_ns, flows) \
         VALUES ('i9', 4, 77, 0, 'web-1', 0, 2)",
    );
    ch.query(&format!(
        "INSERT INTO picket.flows (id, end, ingest, source, observer, iface, src_ip, dst_ip, src_port, \
         dst_port, protocol, packets, bytes, reverse_packets, reverse_bytes, tcp_flags, \
         reverse_tcp_flags, start_ns, end_ns, sampling_rate, observed) VALUES (1, {}, 77, \
         'sensor', 'web-1', 'eth0', IPv4ToIPv6(IPv4StringToNum('10.0.0.5')), \
         IPv4ToIPv6(IPv4StringToNum('10.0.0.9')), 40000, 443, 6, 10, 1000, 8, 6000, 27, 18, {}, \
         {}, 1, 'both')",
        (T0 + 2 * S) / S,
        T0,
        T0 + 2 * S
    ));
    assert_eq!(
        s.rollup_totals("1h", Source::Sensor).expect("1h").records,
        1
    );
    assert_eq!(
        s.last_stored_batch("i9").expect("last"),
        0,
        "not stored yet"
    );
    let b = batch("i9", 4, flows);
    assert_eq!(s.store_batch(&b, T0).expect("again"), Stored::New);
    assert_eq!(s.store_batch(&b, T0).expect("and again"), Stored::Duplicate);
    let totals = s.flow_totals(None).expect("totals");
    assert_eq!((totals.records, totals.packets), (2, 20), "each flow once");
    for level in ["1m", "1h"] {
        let r = s.rollup_totals(level, Source::Sensor).expect("rollup");
        assert_eq!((r.records, r.packets, r.bytes), (2, 20, 2_000), "{level}");
    }
    // Top-N reads the whole hour from the hourly sums, the cut write taken away there too.
    let top = s
        .top(&TopQuery {
            by: TopBy::Flows,
            group: TopGroup::DstPort,
            since_ns: T0 - 3_600 * S,
            until_ns: None,
            source: None,
            limit: 10,
        })
        .expect("top");
    assert_eq!(
        top.iter()
            .map(|r| (r.key.as_str(), r.flows, r.packets))
            .collect::<Vec<_>>(),
        [("443/tcp", 2, 36)]
    );
    assert_eq!(
        ch.query("SELECT sum(sum_flows) FROM picket.top_1h WHERE dim = 2")
            .trim(),
        "3"
    );
    assert_eq!(s.last_stored_batch("i9").expect("last"), 4);
    // Retention: at T0 + 8 days, raw flows (7 days) go, whole days at a time; the rollups
    // (30 and 400 days) stay.
    let m = s
        .maintain(T0 + 8 * 86_400 * S, &Retention::default())
        .expect("maintain");
    assert_eq!(m.deleted_raw, 2, "{m:?}");
    assert_eq!((m.deleted_minutes, m.deleted_hours), (0, 0));
    assert_eq!(s.flow_totals(None).expect("totals").records, 0);
    assert_eq!(
        s.rollup_totals("1h", Source::Sensor).expect("1h").records,
        2
    );
    // Top-N's hourly sums go with the flows they sum.
    let top = s
        .top(&TopQuery {
            by: TopBy::Flows,
            group: TopGroup::DstPort,
            since_ns: T0 - 3_600 * S,
            until_ns: None,
            source: None,
            limit: 10,
        })
        .expect("top");
    assert!(top.is_empty(), "{top:?}");
    // Six days on: not a whole day past the cutoff yet, so nothing goes.
    let s2 = ChStore::open(&ch.store_url("picket")).expect("a second start");
    s2.store_batch(
        &batch(
            "i9",
            5,
            vec![sensor_flow("10.0.0.5", 1, "10.0.0.9", 2, 6, T0)],
        ),
        T0,
    )
    .expect("store");
    let m = s2
        .maintain(T0 + 6 * 86_400 * S, &Retention::default())
        .expect("maintain");
    assert_eq!(m.deleted_raw, 0);
    drop((s, s2));
    ch.query("INSERT INTO picket.picket_schema VALUES (99, now())");
    let e = ChStore::open(&ch.store_url("picket"))
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}").contains("newer than this picket-controlplane"),
        "{e:#}"
    );
}

/// A store made by version 1 of the schema (no hourly top-N sums) is migrated at the start:
/// top-N reads its hours from the sums only after the newest flow written before them.
#[test]
fn a_store_from_before_the_hourly_top_sums_answers_top_n_from_its_flows() {
    let ch = ClickHouse::start();
    ch.query("CREATE DATABASE picket");
    let old = ChStore::open(&ch.store_url("picket")).expect("clickhouse");
    // Back to version 1, as a store made before the sums was.
    for t in [
        "top_1h_mv",
        "top_odd_mv",
        "top_1h",
        "top_odd",
        "top_undo",
        "top_since",
    ] {
        ch.query(&format!("DROP TABLE picket.{t}"));
    }
    ch.query("DROP TABLE picket.picket_schema");
    ch.query(
        "CREATE TABLE picket.picket_schema (version UInt32, applied DateTime('UTC')) \
         ENGINE = MergeTree ORDER BY version",
    );
    ch.query("INSERT INTO picket.picket_schema VALUES (1, now())");
    let day = T0 - 2 * 86_400 * S;
    let port = |dp, at| sensor_flow("10.0.0.5", 40000, "10.0.0.9", dp, 6, at);
    old.insert_flows(&[port(22, day), port(22, day + 1_800 * S)])
        .expect("flows before");
    drop(old);
    let new = ChStore::open(&ch.store_url("picket")).expect("migrated");
    assert_eq!(
        ch.query("SELECT max(version) FROM picket.picket_schema")
            .trim(),
        "3",
        "migrated to the newest (its column added already counts as added)"
    );
    // The newest flow ended in the day's first hour: the sums hold every flow from the next.
    assert_eq!(
        ch.query("SELECT min(since_ns) FROM picket.top_since")
            .trim(),
        ((day + 3_600 * S) / S * S).to_string()
    );
    new.insert_flows(&[port(80, day + 900 * S), port(80, day + 3 * 3_600 * S)])
        .expect("flows after");
    let top = new
        .top(&TopQuery {
            by: TopBy::Flows,
            group: TopGroup::DstPort,
            since_ns: day - 3_600 * S,
            until_ns: None,
            source: None,
            limit: 10,
        })
        .expect("top");
    assert_eq!(
        top.iter()
            .map(|r| (r.key.as_str(), r.flows))
            .collect::<Vec<_>>(),
        [("22/tcp", 2), ("80/tcp", 2)]
    );
    // The sums hold the two flows written after the migration (the first hour, which they
    // do not hold whole, was read from the flows).
    assert_eq!(
        ch.query("SELECT sum(sum_flows) FROM picket.top_1h WHERE dim = 2")
            .trim(),
        "2"
    );
}

/// Over HTTPS the server's certificate is checked: a server whose CA the control plane was
/// not given is refused with what to do; given it (`--flow-store-ca`), flows go in and out.
#[test]
fn clickhouse_over_https_checks_the_servers_certificate() {
    let pki = TempDir::new("ch-pki");
    tests::make_pki(&pki.0);
    let ch = ClickHouse::start_https(&pki.0.join("server.pem"), &pki.0.join("server.key"));
    ch.query("CREATE DATABASE picket");
    let port = ch.https_port.expect("https");
    let url = format!("clickhouses://default@127.0.0.1:{port}/picket");
    let e = ChStore::open(&url).err().expect("an unknown CA is refused");
    let e = format!("{e:#}");
    assert!(e.contains("certificate"), "{e}");
    // Plain HTTP to the HTTPS port is refused too, with a sentence.
    let e = ChStore::open(&format!("clickhouse://default@127.0.0.1:{port}/picket"))
        .err()
        .expect("HTTP to HTTPS");
    assert!(
        format!("{e:#}").contains("cannot use the flow store"),
        "{e:#}"
    );
    let bad = pki.0.join("server.key");
    let e = ChStore::connect(&Options {
        url: url.clone(),
        ca: Some(bad),
        ..Options::default()
    })
    .err()
    .expect("a key is not a CA");
    assert!(format!("{e:#}").contains("--flow-store-ca"), "{e:#}");
    let s = ChStore::connect(&Options {
        url,
        ca: Some(pki.0.join("ca.pem")),
        ..Options::default()
    })
    .expect("with its CA");
    s.insert_flows(&[sensor_flow("10.0.0.5", 40000, "10.0.0.9", 443, 6, T0)])
        .expect("insert over HTTPS");
    assert_eq!(s.flow_totals(None).expect("totals").records, 1);
    assert_eq!(ch.query("SELECT count() FROM picket.flows").trim(), "1");
}

/// What a user gets wrong is refused at the start with words that say what to do.
#[test]
fn a_clickhouse_that_cannot_be_used_is_refused_with_what_to_do() {
    let mut ch = ClickHouse::start();
    for (url, words) in [
        (ch.store_url("nosuch"), "CREATE DATABASE"),
        (
            format!(
                "clickhouse://nobody:wrong@127.0.0.1:{}/default",
                ch.http_port
            ),
            "password",
        ),
        ("postgres://127.0.0.1/x".to_string(), "clickhouse://"),
    ] {
        let e = ChStore::open(&url).err().expect("refused");
        let e = format!("{e:#}");
        assert!(e.contains(words), "{url}: {e}");
        assert!(!e.contains("wrong"), "no password in messages: {e}");
    }
    let url = ch.store_url("default");
    ch.stop();
    let e = format!("{:#}", ChStore::open(&url).err().expect("refused"));
    assert!(
        e.contains("cannot use the flow store") && e.contains("listening"),
        "{e}"
    );
}

/// `picket-controlplane import` with `--flow-store` stores what it stores in the embedded
/// store: the project's samples of the three clouds (bad lines included) give the same rows,
/// totals and summaries; a second import of a file is recognised there too.
#[test]
fn the_import_command_stores_the_same_flows_in_clickhouse() {
    let dir = TempDir::new("import-clickhouse");
    let ch = ClickHouse::start();
    ch.query("CREATE DATABASE picket");
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples");
    let embedded = dir.0.join("embedded");
    let url = ch.store_url("picket");
    let mut outputs = Vec::new();
    for (provider, file) in [
        ("aws", "aws-vpc-flow-logs.log"),
        ("gcp", "gcp-vpc-flow-logs.json"),
        ("azure", "azure-nsg-flow-log.json"),
        ("azure", "azure-vnet-flow-log.json"),
    ] {
        let path = samples.join(file);
        let path = path.to_str().expect("utf8");
        for extra in [&[][..], &["--flow-store", &url][..]] {
            let data = if extra.is_empty() {
                embedded.clone()
            } else {
                dir.0.join("servers")
            };
            let o = std::process::Command::new(tests::bin("picket-controlplane"))
                .args(["import", provider, path, "--data-dir"])
                .arg(&data)
                .args(extra)
                .env_remove("PICKET_FLOW_STORE")
                .env_remove("PICKET_STATE_STORE")
                .output()
                .expect("import");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{file}: {err}");
            outputs.push(String::from_utf8_lossy(&o.stdout).into_owned());
        }
    }
    for pair in outputs.chunks(2) {
        assert_eq!(pair[0], pair[1], "the same summary");
        assert!(!pair[0].trim().is_empty());
    }
    let sqlite = SqliteStore::open(&embedded).expect("sqlite");
    let click = ChStore::open(&url).expect("clickhouse");
    let a = all_pages(sqlite.as_ref(), &FlowQuery::default());
    let b = all_pages(click.as_ref(), &FlowQuery::default());
    assert!(a.iter().map(Vec::len).sum::<usize>() > 10, "{a:?}");
    assert_eq!(a, b);
    for src in [Source::Aws, Source::Gcp, Source::Azure] {
        assert_eq!(
            sqlite.source_totals(src).expect("totals"),
            click.source_totals(src).expect("totals")
        );
    }
}

/// With both stores on servers no embedded store is made, yet `import -` still has a place to
/// spool standard input: the data directory is made for it (0700), and the records land in
/// ClickHouse.
#[test]
fn an_import_from_stdin_works_with_both_stores_on_servers() {
    use std::io::Write as _;
    let dir = TempDir::new("stdin-servers");
    let ch = ClickHouse::start();
    ch.query("CREATE DATABASE picket");
    let pg = tests::servers::Postgres::start();
    pg.psql("postgres", "CREATE DATABASE picket");
    let data = dir.0.join("data");
    let mut child = std::process::Command::new(tests::bin("picket-controlplane"))
        .args(["import", "aws", "-", "--data-dir"])
        .arg(&data)
        .args(["--flow-store", &ch.store_url("picket")])
        .args(["--state-store", &pg.url("picket")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("import");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"2 123456789010 eni-1 10.0.0.1 10.0.0.2 40000 443 6 5 400 1797156000 1797156060 ACCEPT OK\n",
        )
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!data.join("picket.db").exists(), "no embedded store");
    let click = ChStore::open(&ch.store_url("picket")).expect("clickhouse");
    assert_eq!(click.source_totals(Source::Aws).expect("totals").records, 1);
}

/// Flows come newest first by their end, not in the order they were stored, page after page,
/// in both stores: through the time order for all flows, and for one address through its
/// chunks (SQLite) or its index (ClickHouse), also when 1,500 of its flows crowd one second
/// (more than ClickHouse's window of candidates). A record's unwritten fields are null in both.
#[test]
fn flows_come_by_their_time_and_unwritten_fields_are_null_in_both_stores() {
    let dir = TempDir::new("flow-order");
    let sqlite = SqliteStore::open(&dir.0).expect("sqlite");
    let ch = ClickHouse::start();
    ch.query("CREATE DATABASE picket");
    let click: Arc<ChStore> = ChStore::open(&ch.store_url("picket")).expect("clickhouse");
    let stores: [&dyn FlowStore; 2] = [sqlite.as_ref(), click.as_ref()];
    // 1,500 flows of 203.0.113.7 ending within one second, 1 µs apart, stored in a shuffled
    // order in three writes (7,919 is prime to 1,500: every place once)...
    let at = |k: i64| T0 + k * 1_000;
    let crowd: Vec<Flow> = (0..1_500)
        .map(|i| {
            let f = cloud_flow(
                "203.0.113.7",
                1_024 + i as u16,
                "10.0.0.5",
                443,
                0,
                Action::Accept,
            );
            Flow {
                start_ns: at(i * 7_919 % 1_500) - S,
                end_ns: at(i * 7_919 % 1_500),
                ..f
            }
        })
        .collect();
    // ...then 30 at other seconds, hours before and after, stored last, newest first.
    let others: Vec<Flow> = (0..30)
        .map(|j| {
            let end = T0 + (15 - j) * 3_600 * S + j;
            Flow {
                start_ns: end - S,
                end_ns: end,
                ..cloud_flow(
                    "203.0.113.7",
                    30_000 + j as u16,
                    "10.0.0.6",
                    22,
                    0,
                    Action::Reject,
                )
            }
        })
        .collect();
    // And a record of AWS's NAT-gateway format: no protocol, ports or counts.
    let mut nat = cloud_flow("198.51.100.99", 0, "10.0.0.7", 0, T0, Action::Unknown);
    (nat.protocol, nat.packets, nat.bytes) = (0, 0, 0);
    nat.cloud.extra.insert(
        "absent".into(),
        serde_json::json!(["protocol", "src_port", "dst_port", "packets", "bytes"]),
    );
    for s in stores {
        for part in crowd.chunks(500) {
            s.insert_flows(part).expect("insert");
        }
        s.insert_flows(&others).expect("insert");
        s.insert_flows(std::slice::from_ref(&nat)).expect("insert");
    }
    let mut want: Vec<(i64, Option<u16>)> = crowd
        .iter()
        .chain(&others)
        .map(|f| (f.end_ns, Some(f.src_port)))
        .collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    for q in [
        FlowQuery {
            ip: Some(ip("203.0.113.7")),
            limit: 100,
            ..Default::default()
        },
        FlowQuery {
            source: Some(Source::Aws),
            port: None,
            limit: 100,
            ..Default::default()
        },
    ] {
        for s in stores {
            let got: Vec<(i64, Option<u16>)> = all_pages_of(s, &q)
                .iter()
                .filter(|r| r.src_ip == "203.0.113.7")
                .map(|r| (r.end_ns, r.src_port))
                .collect();
            assert_eq!(got.len(), want.len(), "{q:?}");
            assert!(got == want, "{q:?}: not newest first by end");
        }
    }
    for s in stores {
        let rows = s
            .query_flows(&FlowQuery {
                ip: Some(ip("198.51.100.99")),
                limit: 10,
                ..Default::default()
            })
            .expect("query");
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.src_port, r.dst_port, r.protocol, r.packets, r.bytes),
            (None, None, None, None, None)
        );
        // One direction of its conversation: nothing is said of the other.
        assert_eq!((r.reverse_packets, r.reverse_bytes), (None, None));
    }
}

/// Every row `q` finds, following the cursor page by page.
fn all_pages_of(s: &dyn FlowStore, q: &FlowQuery) -> Vec<FlowRow> {
    let mut q = q.clone();
    let mut out = Vec::new();
    loop {
        let rows = s.query_flows(&q).expect("query");
        let Some(last) = rows.last() else {
            return out;
        };
        q.before = Some(last.cursor());
        out.extend(rows);
    }
}
