//! `picket-bench --only stores`: the embedded store against ClickHouse on the same generated
//! data, in one run: gRPC ingest from 100 simulated sensors, `import` of an AWS log, flows by
//! address and top talkers over an hour and over a day, and bytes on disk per flow.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path, time::Instant};

use controlplane::{
    model::{Action, Flow, Source},
    store::{ChStore, FlowQuery, FlowStore, SqliteStore, TopBy, TopGroup, TopQuery},
};

use crate::{Lab, TempDir, servers::ClickHouse};

const S: i64 = 1_000_000_000;
/// The generated data's last day ends here (2026-11-28T00:00:00Z).
const END: i64 = 1_795_824_000 * S;
const DAY: i64 = 86_400 * S;
const HOUR: i64 = 3_600 * S;

/// A small LCG: the same data in every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Flow `i` of `n` spread over the day before [`END`]: 20,000 clients (one in a hundred of
/// them busy: a tenth of the flows) talking to 500 servers on 4 ports.
fn flow(i: u64, n: u64, r: &mut Lcg) -> Flow {
    let x = r.next();
    let client = if x.is_multiple_of(10) {
        (x >> 8) % 200
    } else {
        (x >> 8) % 20_000
    };
    let server = (x >> 24) % 500;
    let end = END - DAY + (i as i64) * (DAY / n as i64);
    Flow {
        source: Source::Sensor,
        observer: format!("node-{}", server % 50),
        interface: "eth0".into(),
        start_ns: end - 2 * S,
        end_ns: end,
        src_ip: Ipv4Addr::new(10, 1, (client >> 8) as u8, client as u8).into(),
        dst_ip: Ipv4Addr::new(10, 200, (server >> 8) as u8, server as u8).into(),
        src_port: 32768 + (x % 28000) as u16,
        dst_port: [22, 80, 443, 5432][(x % 4) as usize],
        protocol: 6,
        packets: 1 + x % 50,
        bytes: 60 + x % 60_000,
        reverse_packets: 1 + x % 40,
        reverse_bytes: 60 + x % 200_000,
        tcp_flags: 0x1b,
        action: Action::Unknown,
        sampling_rate: 1.0,
        cloud: Default::default(),
        sensor: Some(Box::new(controlplane::model::SensorMeta {
            reverse_tcp_flags: 0x1b,
            observed: "both".into(),
            initiator_by: "syn".into(),
            partial: String::new(),
            end_reason: "idle_timeout".into(),
            src_pod: None,
            dst_pod: None,
        })),
    }
}

/// Fills `store` with `n` generated flows, in writes of 200,000; returns records/s.
fn fill(store: &dyn FlowStore, n: u64) -> f64 {
    let mut r = Lcg(0x2545_f491_4f6c_dd1d);
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(200_000);
        let chunk: Vec<Flow> = (i..i + k).map(|j| flow(j, n, &mut r)).collect();
        store.insert_flows(&chunk).expect("insert");
        i += k;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The median of `runs` timings of `f`, in milliseconds (after one run to warm up).
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The four queries, each over the last hour and the whole day: (name, ms).
fn queries(store: &dyn FlowStore) -> Vec<(String, f64)> {
    // A busy client (one of the 200) and the day's last hour.
    let who: std::net::IpAddr = Ipv4Addr::new(10, 1, 0, 7).into();
    let mut out = Vec::new();
    for (span, since) in [("hour", END - HOUR), ("day", END - DAY)] {
        let q = FlowQuery {
            ip: Some(who),
            since_ns: Some(since),
            limit: 100,
            ..Default::default()
        };
        let rows = store.query_flows(&q).expect("query").len();
        assert!(rows > 0, "the busy client has flows in the {span}");
        out.push((
            format!("flows of one address, newest 100, over the {span}"),
            median_ms(5, || {
                store.query_flows(&q).expect("query");
            }),
        ));
        let t = TopQuery {
            by: TopBy::Bytes,
            group: TopGroup::SrcIp,
            since_ns: since,
            until_ns: None,
            source: None,
            limit: 10,
        };
        out.push((
            format!("top 10 talkers by bytes over the {span}"),
            median_ms(5, || {
                store.top(&t).expect("top");
            }),
        ));
    }
    out
}

/// Bytes on disk of the embedded store in `dir`.
fn sqlite_bytes(dir: &Path) -> u64 {
    ["picket.db", "picket.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// The flows table's five heaviest columns on disk: "name N.N B/flow, ...".
fn heaviest_columns(ch: &ClickHouse, db: &str, n: u64) -> String {
    ch.query(&format!(
        "SELECT name, data_compressed_bytes FROM system.columns WHERE database = '{db}' \
         AND table = 'flows' ORDER BY data_compressed_bytes DESC LIMIT 5"
    ))
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .map(|(c, b)| {
        format!(
            "{c} {:.1}",
            b.trim().parse::<f64>().unwrap_or(0.0) / n as f64
        )
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// Bytes on disk of database `db` of `ch`: (the flows table, every table).
fn clickhouse_bytes(ch: &ClickHouse, db: &str) -> (u64, u64) {
    let q = |w: &str| -> u64 {
        ch.query(&format!(
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{db}' AND active {w}"
        ))
        .trim()
        .parse()
        .unwrap_or(0)
    };
    (q("AND table = 'flows'"), q(""))
}

/// An AWS v2 log of `n` records over `n / 1000` seconds.
fn aws_log(n: u64) -> String {
    let mut r = Lcg(0x1234_5678_9abc_def1);
    let mut text = String::with_capacity(n as usize * 110);
    for i in 0..n {
        let x = r.next();
        writeln!(
            text,
            "2 123456789012 eni-0123456789abcdef0 10.0.{}.{} 172.31.{}.{} {} {} 6 {} {} {} {} {} OK",
            x & 0xff,
            (x >> 8) & 0xff,
            (x >> 16) & 0xff,
            (x >> 24) & 0xff,
            1024 + (x % 60000),
            [22, 80, 443, 5432][(x % 4) as usize],
            1 + x % 200,
            60 + x % 300_000,
            1_795_860_000 + i / 1000,
            1_795_860_060 + i / 1000,
            if x.is_multiple_of(10) { "REJECT" } else { "ACCEPT" }
        )
        .ok();
    }
    text
}

/// gRPC ingest through a real `serve`, 100 simulated sensors, on each store: a table row.
fn ingest_rows(report: &mut String, ch: &ClickHouse, quick: bool) {
    let (sensors, batches, per) = (100usize, if quick { 3u64 } else { 10 }, 1000usize);
    let mut ingest = Vec::new();
    for click in [false, true] {
        let lab = Lab::new();
        let dir = TempDir::new("stores-ingest");
        let data = dir.0.join("cp");
        if click {
            crate::servers::use_flow_store(&data, ch.http_port);
        }
        let (cp, secs) = crate::grpc_ingest(&lab, &data, sensors, batches, per);
        cp.stop();
        let stored = crate::servers::open_flows(&data)
            .flow_totals(None)
            .expect("totals")
            .records;
        assert_eq!(stored, (sensors * batches as usize * per) as u64);
        ingest.push(stored as f64 / secs / 1e3);
    }
    writeln!(
        report,
        "| gRPC ingest, {sensors} sensors x {batches} batches of {per} records, k records/s | {:.0} | {:.0} |",
        ingest[0], ingest[1]
    )
    .ok();
}

/// The gRPC ingest rows alone (`--only stores-ingest`, a quicker loop while tuning).
pub fn ingest_section(report: &mut String, quick: bool) {
    writeln!(report, "### gRPC ingest, embedded and ClickHouse\n").ok();
    let ch = ClickHouse::start();
    writeln!(report, "| | embedded | ClickHouse |\n|---|---|---|").ok();
    ingest_rows(report, &ch, quick);
}

pub fn section(report: &mut String, quick: bool) {
    writeln!(report, "### The embedded store and ClickHouse\n").ok();
    let ch = ClickHouse::start();
    let version = ch.query("SELECT version()");
    writeln!(
        report,
        "ClickHouse {} (Debian's package), started privately on this machine with the control plane; the embedded store is SQLite in WAL mode on the same disk.\n",
        version.trim()
    )
    .ok();

    writeln!(report, "| | embedded | ClickHouse |\n|---|---|---|").ok();
    ingest_rows(report, &ch, quick);

    // `import` of an AWS log, by the command a user runs.
    let n_import: u64 = if quick { 200_000 } else { 1_000_000 };
    let dir = TempDir::new("stores-import");
    let file = dir.0.join("aws.log");
    std::fs::write(&file, aws_log(n_import)).expect("log");
    ch.query("CREATE DATABASE import_bench");
    let mut import = Vec::new();
    for click in [false, true] {
        let mut c = std::process::Command::new(crate::bin("picket-controlplane"));
        c.args(["import", "aws"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.0.join(if click { "ch" } else { "embedded" }))
            .env_remove("PICKET_FLOW_STORE")
            .env_remove("PICKET_STATE_STORE");
        if click {
            c.args(["--flow-store", &ch.store_url("import_bench")]);
        }
        let t0 = Instant::now();
        let o = c.output().expect("import");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        import.push(n_import as f64 / t0.elapsed().as_secs_f64() / 1e3);
    }
    writeln!(
        report,
        "| `import aws` of {n_import} records (the whole command), k records/s | {:.0} | {:.0} |",
        import[0], import[1]
    )
    .ok();

    // Queries over 10 million flows (1 million in quick mode) spread over a day.
    let n: u64 = if quick { 1_000_000 } else { 10_000_000 };
    let dir = TempDir::new("stores-queries");
    let sqlite = SqliteStore::open(&dir.0).expect("sqlite");
    ch.query("CREATE DATABASE query_bench");
    let click = ChStore::open(&ch.store_url("query_bench")).expect("clickhouse");
    let fills = [fill(sqlite.as_ref(), n), fill(click.as_ref(), n)];
    writeln!(
        report,
        "| writing {n} flows in writes of 200,000 (library calls), k records/s | {:.0} | {:.0} |",
        fills[0] / 1e3,
        fills[1] / 1e3
    )
    .ok();
    let (a, b) = (queries(sqlite.as_ref()), queries(click.as_ref()));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        writeln!(
            report,
            "| {name}, {n} flows, ms (median of 5) | {x:.1} | {y:.1} |"
        )
        .ok();
    }
    let (flows_bytes, all_bytes) = clickhouse_bytes(&ch, "query_bench");
    writeln!(
        report,
        "| bytes on disk per flow (ClickHouse: the flows table; with its address table and rollups) | {:.1} | {:.1} ({:.1}) |\n",
        sqlite_bytes(&dir.0) as f64 / n as f64,
        flows_bytes as f64 / n as f64,
        all_bytes as f64 / n as f64
    )
    .ok();
    writeln!(
        report,
        "The flows table's heaviest columns on ClickHouse, bytes per flow: {}.\n",
        heaviest_columns(&ch, "query_bench", n)
    )
    .ok();
    drop(sqlite);
    drop(dir);
    // The same on a server that compresses with zstd (the setting docs/servers.md advises).
    let chz = ClickHouse::start_zstd();
    chz.query("CREATE DATABASE query_bench");
    let zstd = ChStore::open(&chz.store_url("query_bench")).expect("clickhouse");
    let rate = fill(zstd.as_ref(), n);
    let mut lines = vec![format!(
        "With zstd instead of LZ4 (server setting), {n} flows written at {:.0} k records/s",
        rate / 1e3
    )];
    for (name, ms) in queries(zstd.as_ref()) {
        lines.push(format!("{name}: {ms:.1} ms"));
    }
    let (flows_bytes, all_bytes) = clickhouse_bytes(&chz, "query_bench");
    lines.push(format!(
        "{:.1} bytes on disk per flow in the flows table, {:.1} with its address table and rollups (heaviest columns: {})",
        flows_bytes as f64 / n as f64,
        all_bytes as f64 / n as f64,
        heaviest_columns(&chz, "query_bench", n)
    ));
    writeln!(report, "{}.\n", lines.join("; ")).ok();
    drop(zstd);
    drop(chz);

    // What is measured so far, in case the next part fails.
    eprintln!("{report}");
    // 100 million flows on ClickHouse alone (the embedded store's file would take over 20 GB
    // of this machine's disk), when the disk has room for them.
    let free_gb = nix::sys::statvfs::statvfs(&ch.dir.0)
        .map(|s| s.blocks_available() as f64 * s.fragment_size() as f64 / 1e9)
        .unwrap_or(0.0);
    if !quick && free_gb < 20.0 {
        writeln!(
            report,
            "100 million flows not measured: {free_gb:.0} GB free on the disk, 20 GB wanted.\n"
        )
        .ok();
    } else if !quick {
        // On a zstd server, as advised for production (and to fit this machine's disk).
        let n = 100_000_000;
        drop(ch);
        let ch = ClickHouse::start_zstd();
        ch.query("CREATE DATABASE big_bench");
        let big = ChStore::open(&ch.store_url("big_bench")).expect("clickhouse");
        let rate = fill(big.as_ref(), n);
        let mut lines = vec![format!(
            "ClickHouse (zstd) with {n} flows (written at {:.0} k records/s):",
            rate / 1e3
        )];
        for (name, ms) in queries(big.as_ref()) {
            lines.push(format!("{name}: {ms:.0} ms"));
        }
        let (flows_bytes, all_bytes) = clickhouse_bytes(&ch, "big_bench");
        lines.push(format!(
            "{:.1} bytes on disk per flow in the flows table, {:.1} with its address table and rollups",
            flows_bytes as f64 / n as f64,
            all_bytes as f64 / n as f64
        ));
        writeln!(report, "{}.\n", lines.join("; ")).ok();
    }
}
