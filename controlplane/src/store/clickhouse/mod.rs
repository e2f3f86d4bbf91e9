//! The flow store on ClickHouse (`--flow-store clickhouse://...`): flows of a fleet, which
//! outgrow one machine's SQLite file. The same trait as the embedded store.
//!
//! The client is the official `clickhouse` crate (HTTP, RowBinary), without its schema
//! validation: Debian's ClickHouse 18.16, which the tests run, lacks the format it validates
//! with. The crate is async; the flow store's trait is synchronous and called from blocking
//! threads, so the store drives its own small runtime.
//!
//! The SQL keeps to what 18.16 and current releases both run: no IPv4/IPv6 types (addresses are
//! IPv4-mapped `FixedString(16)`), no DateTime64 (times are `Int64` nanoseconds, with a
//! `DateTime` of the end for partitions and keys), no TTL (retention drops whole daily
//! partitions), no data-skipping indexes (flows by address come from a table sorted by address,
//! fed by a materialized view), no query parameters (values are bound by the client), and no
//! LowCardinality (18.16 needs a server setting for it).
//!
//! ClickHouse has no transactions. A sensor batch or an imported file counts exactly once by a
//! mark written in two steps: `pending` before its rows, `done` after them; every row carries
//! the write's key (`ingest`). A write that finds its mark done is a duplicate; one that finds
//! it pending (a control plane died in between) first deletes the rows of that key, then
//! writes again.

use std::{
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

mod correlate;
mod query;
mod rollups;
mod schema;
mod write;

/// How to reach the flow store's server.
#[derive(Clone, Default)]
pub struct Options {
    /// `clickhouse://USER@HOST:8123/DB` (HTTP), or `clickhouses://...` (HTTPS).
    pub url: String,
    /// The password, when not in the URL (from a file or the environment).
    pub password: Option<String>,
    /// A CA (PEM) that the server's certificate may chain to, besides the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

/// Never the password (in the URL or beside it).
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &describe(&self.url))
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("ca", &self.ca)
            .finish()
    }
}

/// The flow store on a ClickHouse database.
pub struct ChStore {
    client: clickhouse::Client,
    rt: tokio::runtime::Runtime,
    ids: Ids,
    /// Where it is, without a password (for messages).
    at: String,
    /// From when (Unix ns) `top_1h` holds every flow (see `schema::migrate`).
    top_since_ns: i64,
}

/// What a URL names.
#[derive(Debug, PartialEq)]
struct Target {
    http: String,
    user: String,
    password: Option<String>,
    database: String,
}

/// Reads a `clickhouse://USER:PASSWORD@HOST:PORT/DB` URL (`clickhouses://` for HTTPS; the port
/// defaults to 8123, or 8443; the user to `default`; the database to `default`).
fn target(url: &str) -> anyhow::Result<Target> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("not a URL: clickhouse://USER@HOST:PORT/DB"))?;
    let (http, port) = match scheme {
        "clickhouse" => ("http", 8123),
        "clickhouses" => ("https", 8443),
        _ => anyhow::bail!("the scheme must be clickhouse:// (HTTP) or clickhouses:// (HTTPS)"),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(
        !path.contains(['?', '#', '/']),
        "the URL's path is the database's name alone"
    );
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => ("default".to_string(), None),
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (decode(u)?, Some(decode(p)?)),
            None => (decode(u)?, None),
        },
    };
    anyhow::ensure!(!hostport.is_empty(), "the URL names no host");
    let hostport = if hostport.starts_with('[') {
        if hostport.ends_with(']') {
            format!("{hostport}:{port}")
        } else {
            hostport.to_string()
        }
    } else if hostport.contains(':') {
        let (_, p) = hostport.rsplit_once(':').expect("a colon");
        p.parse::<u16>()
            .map_err(|_| anyhow::anyhow!("the port `{p}` is not a number"))?;
        hostport.to_string()
    } else {
        format!("{hostport}:{port}")
    };
    let database = if path.is_empty() {
        "default".to_string()
    } else {
        decode(path)?
    };
    anyhow::ensure!(
        database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "the database name `{database}` may hold letters, digits and _ only"
    );
    Ok(Target {
        http: format!("{http}://{hostport}"),
        user,
        password,
        database,
    })
}

/// Percent-decoding of a URL part.
fn decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow::anyhow!("a bad %-escape in the URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("the URL is not UTF-8 once decoded"))
}

/// Where `url` points, without its password (for messages and logs).
pub fn describe(url: &str) -> String {
    match target(url) {
        Ok(t) => format!("{}/{} as {}", t.http, t.database, t.user),
        Err(_) => "clickhouse".into(),
    }
}

/// A ClickHouse client over HTTP or HTTPS (rustls, the system's roots and `ca`): the crate's
/// own HTTP client but with a CA of the user's. Idle connections go after 2 s, before the
/// server's 3 s closes them.
fn client(ca: Option<&std::path::Path>) -> anyhow::Result<clickhouse::Client> {
    let tls = crate::store::tls::client_config(ca).context("--flow-store-ca")?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(clickhouse::Client::with_http_client(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build(https),
    ))
}

impl ChStore {
    /// [`ChStore::connect`] with the URL alone.
    pub fn open(url: &str) -> anyhow::Result<Arc<Self>> {
        Self::connect(&Options {
            url: url.into(),
            ..Options::default()
        })
    }

    /// Connects, checks the server, creates or migrates the schema, and returns the store. A
    /// server that cannot be reached, refuses the credentials, lacks the database, or holds a
    /// newer schema is an error that says so and what to do.
    pub fn connect(o: &Options) -> anyhow::Result<Arc<Self>> {
        let t = target(&o.url).context("--flow-store")?;
        let at = format!("{}/{} as {}", t.http, t.database, t.user);
        let mut client = client(o.ca.as_deref())?
            .with_url(&t.http)
            .with_user(&t.user)
            .with_database(&t.database)
            .with_validation(false);
        if let Some(p) = o.password.clone().or(t.password) {
            client = client.with_password(p);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clickhouse")
            .enable_all()
            .build()?;
        let mut store = ChStore {
            client,
            rt,
            ids: Ids::default(),
            at: at.clone(),
            top_since_ns: i64::MAX,
        };
        let version: String = store
            .run(store.client.query("SELECT version()").fetch_one())
            .map_err(|e| anyhow::anyhow!("cannot use the flow store {at}: {}", why(&e)))?;
        tracing::debug!(server = version, "ClickHouse answers");
        schema::migrate(&store).with_context(|| format!("the flow store {at}"))?;
        let since: i64 = store
            .run(
                store
                    .client
                    .query("SELECT min(since_ns) FROM top_since")
                    .fetch_one(),
            )
            .map_err(|e| anyhow::anyhow!("the flow store {at}: {}", why(&e)))?;
        store.top_since_ns = since;
        Ok(Arc::new(store))
    }

    /// Runs `f` on the store's runtime, giving up after [`CALL_TIMEOUT`].
    fn run<T>(
        &self,
        f: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> clickhouse::error::Result<T> {
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, f).await {
                Ok(r) => r,
                Err(_) => Err(clickhouse::error::Error::Custom(format!(
                    "no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))),
            }
        })
    }

    /// Runs a statement that returns nothing.
    fn exec(&self, sql: &str) -> anyhow::Result<()> {
        self.run(self.client.query(sql).execute())
            .map_err(|e| anyhow::anyhow!("the flow store {}: {}", self.at, why(&e)))
    }

    /// Answers when the server does (for `/health`), within 5 s.
    pub fn ping(&self) -> anyhow::Result<()> {
        let quick = async {
            tokio::time::timeout(
                Duration::from_secs(5),
                self.client.query("SELECT 1").execute(),
            )
            .await
        };
        match self.rt.block_on(quick) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => anyhow::bail!("the flow store {}: {}", self.at, why(&e)),
            Err(_) => anyhow::bail!("the flow store {}: no answer within 5 s", self.at),
        }
    }
}

/// The longest a call to the server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// A client error in words that say what to do.
fn why(e: &clickhouse::error::Error) -> String {
    // The causes too: a refused certificate is three sources down a connect error.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    if text.contains("certificate") || text.contains("InvalidCertificate") {
        format!(
            "{text} (the server's certificate was not trusted: give its CA with --flow-store-ca, \
             and connect by a name or address the certificate holds)"
        )
    } else if text.contains("Code: 516") || text.contains("Code: 192") || text.contains("Code: 193")
    {
        format!(
            "{text} (check the user and the password: --flow-store-password-file or PICKET_FLOW_STORE_PASSWORD)"
        )
    } else if text.contains("Code: 81") {
        format!("{text} (create the database first: CREATE DATABASE name)")
    } else if text.contains("onnect") || text.contains("dns error") {
        format!("{text} (is ClickHouse's HTTP interface listening there?)")
    } else {
        text
    }
}

/// Flow ids, increasing with time: milliseconds since 2024 in the high bits, then a counter;
/// what `query_flows` pages by, as SQLite's row ids are.
#[derive(Default)]
struct Ids(Mutex<(u64, u64)>);

/// 2024-01-01T00:00:00Z in milliseconds.
const ID_EPOCH_MS: u64 = 1_704_067_200_000;
/// Bits of the counter within a millisecond.
const ID_SEQ_BITS: u32 = 20;

impl Ids {
    /// `n` consecutive ids; the first is returned.
    fn take(&self, n: u64) -> u64 {
        let now = (crate::util::time::now_ns() / 1_000_000) as u64;
        let ms = now.saturating_sub(ID_EPOCH_MS);
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (last_ms, next) = *g;
        // Never back in time (a clock step), and a millisecond's counter never overflows
        // into the next: the ids then run a little ahead of the clock.
        let (ms, seq) = if ms > last_ms {
            (ms, 0)
        } else {
            (last_ms, next)
        };
        let first = (ms << ID_SEQ_BITS) + seq;
        let end = seq + n;
        let (ms, seq) = (ms + (end >> ID_SEQ_BITS), end & ((1 << ID_SEQ_BITS) - 1));
        *g = (ms, seq);
        first
    }
}

/// An address as the `FixedString(16)` columns keep it (IPv4-mapped for IPv4).
fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// A `FixedString(16)` address back (IPv4-mapped reads as IPv4).
fn ip_of(b: [u8; 16]) -> IpAddr {
    let a = std::net::Ipv6Addr::from(b);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// 16 bytes as a SQL literal that a `FixedString(16)` compares with (the client's binding
/// would write an array). Only hex digits: nothing to escape.
fn hex16(b: [u8; 16]) -> String {
    let mut s = String::from("unhex('");
    for x in b {
        s.push_str(&format!("{x:02X}"));
    }
    s.push_str("')");
    s
}

/// Numbers as a SQL list for `IN`: `(1, 2, 3)` (ClickHouse 18.16 takes no array there; an
/// empty list is `(NULL)`, which nothing equals).
fn id_list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "(NULL)".into();
    }
    let mut s = String::from("(");
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            s.push_str(", ");
        }
        s.push_str(&id.to_string());
    }
    s.push(')');
    s
}

/// A time in nanoseconds as the `DateTime` columns keep it (seconds, clamped to their range).
fn secs(ns: i64) -> u32 {
    ns.div_euclid(1_000_000_000).clamp(0, u32::MAX as i64) as u32
}

/// The SQL text of an address column: dotted for IPv4-mapped, else IPv6's text.
fn ip_text_sql(col: &str) -> String {
    format!(
        "if(substring({col}, 1, 12) = unhex('00000000000000000000FFFF'), \
         IPv4NumToString(reinterpretAsUInt32(reverse(substring({col}, 13, 4)))), \
         IPv6NumToString({col}))"
    )
}

/// Where sums of counters saturate, as in the embedded store.
const SAT: &str = "9200000000000000000";

/// The sum of a counter over a group, saturating at [`SAT`] (in floating point, as the
/// embedded store adds: exact to 2^53).
fn sat_sum(expr: &str) -> String {
    format!("toInt64(least(sum(toFloat64({expr})), {SAT}.))")
}

impl crate::store::FlowStore for ChStore {
    fn ping(&self) -> anyhow::Result<()> {
        ChStore::ping(self)
    }
    /// Every write makes a part in each table its views feed, with a file per column, and
    /// parts cost again as they merge: 200,000 flows a write took gRPC ingest from 95-137 to
    /// 144-184 k records/s (docs/performance.md).
    fn group_flows(&self) -> usize {
        200_000
    }
    fn store_batches(
        &self,
        batches: &[&crate::model::SensorBatch],
        now_ns: i64,
    ) -> anyhow::Result<Vec<anyhow::Result<crate::store::Stored>>> {
        ChStore::store_batches(self, batches, now_ns)
    }
    fn last_stored_batch(&self, instance_id: &str) -> anyhow::Result<u64> {
        ChStore::last_stored_batch(self, instance_id)
    }
    fn insert_flows(&self, flows: &[crate::model::Flow]) -> anyhow::Result<()> {
        let all: Vec<&crate::model::Flow> = flows.iter().collect();
        self.insert_flows_keyed(&all, 0)
    }
    fn import_file_once(
        &self,
        file: &crate::model::ImportedFile,
        now_ns: i64,
        fill: &mut dyn FnMut(&mut crate::model::FlowSink<'_>) -> anyhow::Result<String>,
    ) -> anyhow::Result<Option<String>> {
        ChStore::import_file_once(self, file, now_ns, fill)
    }
    fn flow_totals(&self, sensor: Option<&str>) -> anyhow::Result<crate::store::FlowTotals> {
        ChStore::flow_totals(self, sensor)
    }
    fn source_totals(
        &self,
        source: crate::model::Source,
    ) -> anyhow::Result<crate::store::FlowTotals> {
        ChStore::source_totals(self, source)
    }
    fn rollup_totals(
        &self,
        level: &str,
        source: crate::model::Source,
    ) -> anyhow::Result<crate::store::FlowTotals> {
        ChStore::rollup_totals(self, level, source)
    }
    fn correlate(&self, since_ns: i64, until_ns: i64, tolerance_ns: i64) -> anyhow::Result<u64> {
        ChStore::correlate(self, since_ns, until_ns, tolerance_ns)
    }
    fn coverage_gaps(
        &self,
        since_ns: i64,
        watched: &std::collections::HashSet<IpAddr>,
    ) -> anyhow::Result<Vec<crate::store::CoverageGap>> {
        ChStore::coverage_gaps(self, since_ns, watched)
    }
    fn maintain(
        &self,
        now_ns: i64,
        retention: &crate::store::Retention,
    ) -> anyhow::Result<crate::store::Maintenance> {
        ChStore::maintain(self, now_ns, retention)
    }
    fn top(&self, q: &crate::store::TopQuery) -> anyhow::Result<Vec<crate::store::TopRow>> {
        ChStore::top(self, q)
    }
    fn query_flows(
        &self,
        q: &crate::store::FlowQuery,
    ) -> anyhow::Result<Vec<crate::store::FlowRow>> {
        ChStore::query_flows(self, q)
    }
    fn conversations(
        &self,
        since_ns: i64,
        until_ns: i64,
        ip: Option<IpAddr>,
    ) -> anyhow::Result<Vec<crate::store::Conversation>> {
        ChStore::conversations(self, since_ns, until_ns, ip)
    }
    fn hourly(&self, ip: IpAddr, since_ns: i64, until_ns: i64) -> anyhow::Result<Vec<(i64, u64)>> {
        ChStore::hourly(self, ip, since_ns, until_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_server_the_user_and_the_database() {
        assert_eq!(
            target("clickhouse://picket:s%40cret@db.example:9000/flows").expect("url"),
            Target {
                http: "http://db.example:9000".into(),
                user: "picket".into(),
                password: Some("s@cret".into()),
                database: "flows".into(),
            }
        );
        assert_eq!(
            target("clickhouses://db.example").expect("url"),
            Target {
                http: "https://db.example:8443".into(),
                user: "default".into(),
                password: None,
                database: "default".into(),
            }
        );
        assert_eq!(
            target("clickhouse://u@[::1]/d").expect("url").http,
            "http://[::1]:8123"
        );
        for bad in [
            "postgres://x/y",
            "clickhouse://",
            "clickhouse://h:port/d",
            "clickhouse://h/d/e",
            "clickhouse://h/d;DROP",
            "clickhouse://h/%zz",
            "db.example:8123",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            describe("clickhouse://picket:secret@h/db"),
            "http://h:8123/db as picket"
        );
    }

    #[test]
    fn options_never_show_a_password() {
        let o = Options {
            url: "clickhouse://u:s3cret@h/d".into(),
            password: Some("hunter22".into()),
            ca: None,
        };
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter22"),
            "{shown}"
        );
        assert!(shown.contains("http://h:8123/d as u"), "{shown}");
        let p = crate::store::postgres::Options {
            url: "postgres://u:s3cret@h/d".into(),
            password: Some("hunter22".into()),
            ca: None,
        };
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter22"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u@h:5432/d"), "{shown}");
    }

    #[test]
    fn ids_increase_and_never_repeat() {
        let ids = Ids::default();
        let mut last = 0;
        for n in [1, 5, 1 << 20, 3, (1 << 20) + 7, 1] {
            let first = ids.take(n);
            assert!(first > last || last == 0, "{first} after {last}");
            last = first + n - 1;
        }
        assert!(last < i64::MAX as u64);
    }

    #[test]
    fn addresses_and_times_keep_their_form() {
        for a in ["10.0.0.1", "::1", "2001:db8::7", "0.0.0.0"] {
            let ip: IpAddr = a.parse().expect("ip");
            assert_eq!(ip_of(ip16(ip)), ip);
        }
        assert_eq!(secs(-5), 0);
        assert_eq!(secs(1_999_999_999), 1);
        assert_eq!(secs(i64::MAX), u32::MAX);
    }
}
