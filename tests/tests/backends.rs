//! The database servers cluster mode runs on, as the tests start them: a private ClickHouse and
//! a private PostgreSQL from the machine's Debian packages, each in a temporary folder on a
//! loopback port, answering, with the features Picket's schemas need, and gone after.

use tests::servers::{ClickHouse, Postgres};

fn gone(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err()
}

#[test]
fn a_private_clickhouse_starts_answers_and_stops() {
    let mut ch = ClickHouse::start();
    let version = ch.query("SELECT version()");
    assert!(!version.trim().is_empty(), "{version}");
    // What the flow schema relies on, on the oldest server tested (Debian's 18.16).
    ch.query(
        "CREATE TABLE t (ts DateTime('UTC'), ip FixedString(16), iface LowCardinality(String), \
         bytes UInt64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, ip)",
    );
    ch.query(
        "INSERT INTO t VALUES (toDateTime('2026-12-06 10:00:00', 'UTC'), \
         IPv4ToIPv6(IPv4StringToNum('10.0.0.1')), 'eth0', 3)",
    );
    assert_eq!(
        ch.query("SELECT IPv6NumToString(ip), sum(bytes) FROM t GROUP BY ip")
            .trim(),
        "::ffff:10.0.0.1\t3"
    );
    let pid = ch.pid().expect("running");
    ch.stop();
    assert!(gone(pid), "clickhouse-server {pid} still runs");
}

#[test]
fn a_private_postgres_starts_answers_and_stops() {
    let mut pg = Postgres::start();
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1"), "2");
    pg.psql("postgres", "CREATE DATABASE picket");
    assert_eq!(pg.psql("picket", "SELECT current_user"), Postgres::USER);
    let port = pg.port;
    pg.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "PostgreSQL still listens on {port}"
    );
}
