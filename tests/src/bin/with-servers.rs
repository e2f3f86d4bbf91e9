//! `with-servers -- COMMAND...`: runs COMMAND (the end-to-end tests, say) with a private
//! PostgreSQL and a private ClickHouse started for it, their addresses in
//! `PICKET_TEST_POSTGRES` and `PICKET_TEST_CLICKHOUSE`, so that every control plane the harness
//! starts keeps its state and its flows there (see `servers::store_env`); stops the servers
//! afterwards and exits with COMMAND's status.

use std::process::{Command, ExitCode};

use tests::servers::{ClickHouse, Postgres, TEST_CLICKHOUSE, TEST_POSTGRES};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: with-servers -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let pg = Postgres::start();
    let base = pg.socket_settings();
    let ch = ClickHouse::start();
    eprintln!(
        "with-servers: PostgreSQL on 127.0.0.1:{}, ClickHouse on 127.0.0.1:{}: control planes keep their state and flows there",
        pg.port(),
        ch.http_port
    );
    let status = Command::new(program)
        .args(rest)
        .env(TEST_POSTGRES, base)
        .env(TEST_CLICKHOUSE, format!("127.0.0.1:{}", ch.http_port))
        .status();
    let flow_dbs: u32 = ch
        .query("SELECT count() FROM system.databases WHERE name LIKE 't%'")
        .trim()
        .parse()
        .unwrap_or(0);
    drop(ch);
    // A run that never reached the server proves nothing about it.
    let used: u32 = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 't%' AND datname <> 'template0' AND datname <> 'template1'",
        )
        .parse()
        .unwrap_or(0);
    drop(pg);
    eprintln!(
        "with-servers: control planes kept their state in {used} PostgreSQL database(s), their flows in {flow_dbs} ClickHouse database(s)"
    );
    match status {
        Ok(s) if s.success() && (used == 0 || flow_dbs == 0) => {
            eprintln!("with-servers: no control plane used the servers");
            ExitCode::FAILURE
        }
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("with-servers: {program} failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("with-servers: cannot run {program}: {e}");
            ExitCode::FAILURE
        }
    }
}
