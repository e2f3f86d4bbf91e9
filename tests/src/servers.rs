//! Private servers for tests: a ClickHouse, a PostgreSQL and a NATS of the machine's Debian
//! packages (`scripts/setup.sh` installs them, never running), each started in a temporary
//! folder on a free loopback port with a configuration of its own, and stopped (by the pid it
//! was started with) when dropped. Nothing is read from or written to the system's own
//! configurations and data directories.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::TempDir;

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends SIGTERM to `child`, waits up to `grace`, then kills it.
fn stop_child(child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // ClickHouse answers chunked; its chunks are small enough to strip by their size lines.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `<compression>` section that makes a ClickHouse server compress every part with
/// zstd (as docs/servers.md tells users of servers without column codecs).
pub const ZSTD_CONFIG: &str = "<compression><case><min_part_size>0</min_part_size>\
     <min_part_size_ratio>0</min_part_size_ratio><method>zstd</method></case></compression>";

/// A private ClickHouse server (Debian's `clickhouse-server`, 18.16 on Debian 12).
pub struct ClickHouse {
    child: Option<Child>,
    pub http_port: u16,
    pub tcp_port: u16,
    /// Where it answers HTTPS, when started so.
    pub https_port: Option<u16>,
    pub dir: TempDir,
}

impl ClickHouse {
    pub const BINARY: &str = "/usr/sbin/clickhouse-server";

    /// Starts it and waits until `/ping` answers (at most 20 s).
    pub fn start() -> ClickHouse {
        Self::start_with("")
    }

    /// As [`ClickHouse::start`], with every part compressed with zstd (level 1) instead of
    /// LZ4: the server-wide setting for servers without per-column codecs (docs/servers.md).
    pub fn start_zstd() -> ClickHouse {
        Self::start_with(ZSTD_CONFIG)
    }

    /// As [`ClickHouse::start`], also answering HTTPS on [`ClickHouse::https_port`] with this
    /// certificate and key (PEM).
    pub fn start_https(cert: &Path, key: &Path) -> ClickHouse {
        let port = free_port();
        let mut ch = Self::start_with(&format!(
            "<https_port>{port}</https_port><openSSL><server>\
               <certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile>\
               <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
               <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>\
             </server></openSSL>",
            cert.display(),
            key.display()
        ));
        ch.https_port = Some(port);
        ch
    }

    fn start_with(extra: &str) -> ClickHouse {
        assert!(
            Path::new(Self::BINARY).exists(),
            "{} is missing: run scripts/setup.sh",
            Self::BINARY
        );
        let dir = TempDir::new("clickhouse");
        let (http_port, tcp_port) = (free_port(), free_port());
        let d = dir.0.display();
        fs::write(
            dir.0.join("users.xml"),
            "<yandex><profiles><default>\
               <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>\
             </default></profiles>\
             <users><default><password></password><networks><ip>127.0.0.1</ip></networks>\
               <profile>default</profile><quota>default</quota></default></users>\
             <quotas><default></default></quotas></yandex>",
        )
        .expect("users.xml");
        fs::write(
            dir.0.join("config.xml"),
            format!(
                "<yandex>\
                   <logger><level>warning</level><log>{d}/server.log</log>\
                     <errorlog>{d}/error.log</errorlog><console>0</console></logger>\
                   <listen_host>127.0.0.1</listen_host>\
                   <http_port>{http_port}</http_port><tcp_port>{tcp_port}</tcp_port>\
                   <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path>\
                   <user_files_path>{d}/user_files/</user_files_path>\
                   <format_schema_path>{d}/format_schemas/</format_schema_path>\
                   <mark_cache_size>67108864</mark_cache_size>\
                   <users_config>{d}/users.xml</users_config>\
                   <default_profile>default</default_profile>\
                   <default_database>default</default_database>{extra}\
                 </yandex>"
            ),
        )
        .expect("config.xml");
        let mut ch = ClickHouse {
            child: None,
            http_port,
            tcp_port,
            https_port: None,
            dir,
        };
        ch.start_again();
        ch
    }

    /// Starts it (again, after [`ClickHouse::stop`] or [`ClickHouse::kill`]: the same data and
    /// ports) and waits until `/ping` answers (at most 20 s).
    pub fn start_again(&mut self) {
        let child = Command::new(Self::BINARY)
            .arg(format!("--config-file={}/config.xml", self.dir.0.display()))
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.0.join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Ok((200, body)) = http(self.http_port, "GET", "/ping", "")
                && body.trim() == "Ok."
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "clickhouse-server exited ({status}): {}{}",
                    fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default(),
                    fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "clickhouse-server did not answer /ping in 20 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends it abruptly (SIGKILL), as a crash or a lost machine would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The HTTP interface's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// A `--flow-store` URL for database `db` (which must exist).
    pub fn store_url(&self, db: &str) -> String {
        format!("clickhouse://default@127.0.0.1:{}/{db}", self.http_port)
    }

    /// Runs `sql` over HTTP and returns the answer's text; panics on an error.
    pub fn query(&self, sql: &str) -> String {
        let (status, body) = http(self.http_port, "POST", "/", sql).expect("clickhouse HTTP");
        assert_eq!(status, 200, "{sql}: {body}");
        body
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private NATS server with JetStream (Debian's `nats-server`, 2.9 on Debian 12), its streams
/// in files of its own folder.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    /// The monitoring port (`/healthz`, `/jsz`).
    pub monitor_port: u16,
    pub dir: TempDir,
    jetstream: bool,
}

impl Nats {
    pub const BINARY: &str = "/usr/sbin/nats-server";

    /// Starts it and waits until `/healthz` answers (at most 20 s).
    pub fn start() -> Nats {
        Self::start_with(true)
    }

    /// As [`Nats::start`], without JetStream: what a replica must refuse.
    pub fn start_without_jetstream() -> Nats {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Nats {
        assert!(
            Path::new(Self::BINARY).exists(),
            "{} is missing: run scripts/setup.sh",
            Self::BINARY
        );
        let mut n = Nats {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            dir: TempDir::new("nats"),
            jetstream,
        };
        n.start_again();
        n
    }

    /// Starts it (again, after [`Nats::stop`] or [`Nats::kill`]: the same streams and ports)
    /// and waits until `/healthz` answers (at most 20 s).
    pub fn start_again(&mut self) {
        let mut c = Command::new(Self::BINARY);
        if self.jetstream {
            c.args(["-js", "-sd"]).arg(self.dir.0.join("jetstream"));
        }
        let child = c
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-l")
            .arg(self.dir.0.join("server.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.0.join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = http(self.monitor_port, "GET", "/healthz", "") {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "nats-server exited ({status}): {}{}",
                    fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default(),
                    fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "nats-server did not answer /healthz in 20 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `--bus` URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Ends it abruptly (SIGKILL), as a crash or a lost machine would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private PostgreSQL server (Debian's `postgresql`, 15 on Debian 12). PostgreSQL refuses to
/// run as root, so it runs as `nobody` in a folder `nobody` owns.
pub struct Postgres {
    pub port: u16,
    pub dir: TempDir,
    bin: PathBuf,
    running: bool,
    /// The server's options (`pg_ctl -o`), for a start again.
    opts: String,
}

impl Postgres {
    /// The superuser the tests connect as: with [`Postgres::PASSWORD`] over TCP, trusted on
    /// the server's Unix socket (where `psql` connects).
    pub const USER: &str = "picket";
    pub const PASSWORD: &str = "picket-test-password";

    /// Where Debian puts the server's programs (the newest major installed).
    fn bin_dir() -> PathBuf {
        let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        majors.sort();
        let major = majors
            .last()
            .expect("no PostgreSQL under /usr/lib/postgresql: run scripts/setup.sh");
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
    }

    fn as_nobody(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// Creates a cluster and starts it; waits until it accepts connections (`pg_ctl -w`).
    pub fn start() -> Postgres {
        Self::start_opts(None)
    }

    /// [`Postgres::start`] with TLS on, with this certificate and key (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> Postgres {
        Self::start_opts(Some((cert, key)))
    }

    fn start_opts(tls: Option<(&Path, &Path)>) -> Postgres {
        let dir = TempDir::new("postgres");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).expect("chmod");
        nix::unistd::chown(
            &dir.0,
            Some(
                nix::unistd::User::from_name("nobody")
                    .ok()
                    .flatten()
                    .expect("user nobody")
                    .uid,
            ),
            None,
        )
        .expect("chown to nobody");
        let mut pg = Postgres {
            port: free_port(),
            dir,
            bin: Self::bin_dir(),
            running: false,
            opts: String::new(),
        };
        let data = pg.dir.0.join("data");
        let data = data.to_str().expect("utf8");
        let pwfile = pg.dir.0.join("pwfile");
        fs::write(&pwfile, Self::PASSWORD).expect("password file");
        let o = pg.as_nobody(
            "initdb",
            &[
                "-D",
                data,
                "-U",
                Self::USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            o.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.port,
            pg.dir.0.display()
        );
        if let Some((cert, key)) = tls {
            let nobody = nix::unistd::User::from_name("nobody")
                .ok()
                .flatten()
                .expect("user nobody")
                .uid;
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let to = pg.dir.0.join(to);
                fs::copy(from, &to).expect("copy the TLS files");
                fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("chmod");
                nix::unistd::chown(&to, Some(nobody), None).expect("chown");
            }
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                pg.dir.0.display()
            ));
        }
        pg.opts = opts;
        pg.start_again();
        pg
    }

    /// Starts it again after [`Postgres::stop`], on the same data and port.
    pub fn start_again(&mut self) {
        let data = self.dir.0.join("data");
        let log = self.dir.0.join("server.log");
        let o = self.as_nobody(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf8"),
                "-o",
                &self.opts,
                "-l",
                log.to_str().expect("utf8"),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            o.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&o.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// A connection URL for database `db`, with the password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}",
            Self::USER,
            Self::PASSWORD,
            self.port
        )
    }

    /// [`Postgres::url`] without the password.
    pub fn url_no_password(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", Self::USER, self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection settings through its Unix socket (trusted, and reachable from every network
    /// namespace, unlike 127.0.0.1), without a database: append ` dbname=DB`.
    pub fn socket_settings(&self) -> String {
        format!(
            "host={} port={} user={}",
            self.dir.0.display(),
            self.port,
            Self::USER
        )
    }

    /// Runs `sql` with psql in database `db`; returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let o = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir.0)
            .args(["-p", &self.port.to_string(), "-U", Self::USER])
            .args(["-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Stops it (`pg_ctl -m fast stop`).
    pub fn stop(&mut self) {
        if self.running {
            let data = self.dir.0.join("data");
            let _ = self.as_nobody(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().expect("utf8"),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
            );
            self.running = false;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Set by `with-servers`: the settings of a PostgreSQL ([`Postgres::socket_settings`]) on which
/// the harness puts each control plane's state, a database per data directory.
pub const TEST_POSTGRES: &str = "PICKET_TEST_POSTGRES";

/// The environment a `picket-controlplane` command on `data_dir` runs with: empty normally;
/// under `with-servers`, the state store (`PICKET_STATE_STORE`) on a database of the test
/// PostgreSQL made for this data directory (created at the first call), so that tests stay
/// apart as their data directories do.
pub fn store_env(data_dir: impl AsRef<Path>) -> Vec<(&'static str, String)> {
    store_env_in(None, data_dir.as_ref())
}

/// [`store_env`]'s state store part.
fn state_env(data_dir: impl AsRef<Path>) -> Vec<(&'static str, String)> {
    let dir = std::path::absolute(data_dir.as_ref()).expect("absolute data directory");
    if let Some(settings) = CHOSEN.lock().unwrap_or_else(|e| e.into_inner()).get(&dir) {
        return vec![("PICKET_STATE_STORE", settings.clone())];
    }
    let Ok(base) = std::env::var(TEST_POSTGRES) else {
        return Vec::new();
    };
    let db = test_database(&dir);
    let mut c = postgres::Client::connect(&format!("{base} dbname=postgres"), postgres::NoTls)
        .unwrap_or_else(|e| panic!("the test PostgreSQL at {base}: {e}"));
    if let Err(e) = c.batch_execute(&format!("CREATE DATABASE {db}")) {
        // Another command of the same test made it first.
        let code = e.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("42P04"), "CREATE DATABASE {db}: {e}");
    }
    vec![("PICKET_STATE_STORE", format!("{base} dbname={db}"))]
}

/// State stores chosen by tests for their data directories ([`use_state_store`]).
static CHOSEN: std::sync::Mutex<std::collections::BTreeMap<PathBuf, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// From now on, every `picket-controlplane` the harness runs on `data_dir` keeps its state in
/// the PostgreSQL database of `settings` (see [`store_env`]).
pub fn use_state_store(data_dir: &Path, settings: &str) {
    let dir = std::path::absolute(data_dir).expect("absolute data directory");
    CHOSEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir, settings.to_string());
}

/// The state store a control plane on `data_dir` keeps (see [`store_env`]), opened here.
pub fn open_state(data_dir: &Path) -> std::sync::Arc<dyn controlplane::store::StateStore> {
    match state_env(data_dir).into_iter().next() {
        Some((_, settings)) => controlplane::store::PgStore::open(&settings).expect("state store"),
        None => controlplane::store::SqliteStore::open(data_dir).expect("state store"),
    }
}

/// The flow store a control plane on `data_dir` keeps (see [`store_env`]), opened here.
pub fn open_flows(data_dir: &Path) -> std::sync::Arc<dyn controlplane::store::FlowStore> {
    match store_env(data_dir)
        .into_iter()
        .find(|(k, _)| *k == "PICKET_FLOW_STORE")
    {
        Some((_, url)) => controlplane::store::ChStore::open(&url).expect("flow store"),
        None => controlplane::store::SqliteStore::open(data_dir).expect("flow store"),
    }
}

/// Set by `with-servers`: the address (`127.0.0.1:PORT`) of a ClickHouse's HTTP interface on
/// which the harness puts each control plane's flows, a database per data directory.
pub const TEST_CLICKHOUSE: &str = "PICKET_TEST_CLICKHOUSE";

/// The database of the test servers for `data_dir` (created at the first call).
fn test_database(data_dir: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let dir = std::path::absolute(data_dir).expect("absolute data directory");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("t{:016x}", h.finish())
}

/// The environment of a `picket-controlplane` on `data_dir` that runs in network namespace
/// `ns` (None: this process's): [`store_env`], and under `with-servers` with a ClickHouse, the
/// flow store (`PICKET_FLOW_STORE`) on a database of it made for this data directory, reached
/// from `ns` through a forwarder of this process (see [`forward_into`]).
pub fn store_env_in(ns: Option<&str>, data_dir: &Path) -> Vec<(&'static str, String)> {
    let mut env = state_env(data_dir);
    let dir = std::path::absolute(data_dir).expect("absolute data directory");
    let chosen = CHOSEN_FLOWS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&dir)
        .copied();
    let port = match (chosen, std::env::var(TEST_CLICKHOUSE)) {
        (Some(port), _) => port,
        (None, Ok(addr)) => addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("PICKET_TEST_CLICKHOUSE is 127.0.0.1:PORT"),
        (None, Err(_)) => return env,
    };
    let addr = format!("127.0.0.1:{port}");
    let db = test_database(data_dir);
    let (status, body) = http(
        port,
        "POST",
        "/",
        &format!("CREATE DATABASE IF NOT EXISTS {db}"),
    )
    .unwrap_or_else(|e| panic!("the test ClickHouse at {addr}: {e}"));
    assert_eq!(status, 200, "CREATE DATABASE {db}: {body}");
    let reach = match ns {
        None => port,
        Some(ns) => forward_into(ns, port),
    };
    env.push((
        "PICKET_FLOW_STORE",
        format!("clickhouse://default@127.0.0.1:{reach}/{db}"),
    ));
    env
}

/// Flow stores chosen by tests for their data directories ([`use_flow_store`]): the port of
/// a ClickHouse's HTTP interface on 127.0.0.1.
static CHOSEN_FLOWS: std::sync::Mutex<std::collections::BTreeMap<PathBuf, u16>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// From now on, every `picket-controlplane` the harness runs on `data_dir` keeps its flows in
/// a database (made for it) of the ClickHouse whose HTTP interface is at 127.0.0.1:`port`.
pub fn use_flow_store(data_dir: &Path, port: u16) {
    let dir = std::path::absolute(data_dir).expect("absolute data directory");
    CHOSEN_FLOWS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir, port);
}

/// Forwarders made so far: (namespace, target port) -> port in the namespace.
static FORWARDERS: std::sync::Mutex<std::collections::BTreeMap<(String, u16), u16>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A port on 127.0.0.1 inside network namespace `ns` whose connections this process carries
/// to 127.0.0.1:`port` of its own namespace (a control plane in a test's namespace reaching a
/// test server on the host's loopback). A socket belongs to the namespace of the thread that
/// made it: the listener is made by a thread in `ns`, each outgoing connection by a thread
/// here. It lives as long as this process.
pub fn forward_into(ns: &str, port: u16) -> u16 {
    let mut map = FORWARDERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&(ns.to_string(), port)) {
        return *p;
    }
    let (to_host, accepted) = std::sync::mpsc::channel::<TcpStream>();
    // Made here: its connections are this namespace's.
    thread::spawn(move || {
        for inside in accepted {
            let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            for (mut from, mut to) in [
                (
                    inside.try_clone().expect("clone"),
                    outside.try_clone().expect("clone"),
                ),
                (outside, inside),
            ] {
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    let listener = crate::in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind in the namespace")
    })
    .join()
    .expect("listener");
    let inner = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            if to_host.send(s).is_err() {
                return;
            }
        }
    });
    map.insert((ns.to_string(), port), inner);
    inner
}

/// (packets, bytes) the control plane stored for one UDP flow (on whichever flow store the
/// harness gave it).
pub fn stored_udp(data_dir: &Path, src: &str, dst: &str, sport: u16, dport: u16) -> (u64, u64) {
    stored_udp_in(open_flows(data_dir).as_ref(), src, dst, sport, dport)
}

/// (packets, bytes) `store` holds for one UDP flow.
pub fn stored_udp_in(
    store: &dyn controlplane::store::FlowStore,
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
) -> (u64, u64) {
    stored_udp_seen_by(store, None, src, dst, sport, dport)
}

/// [`stored_udp_in`] of the records of one observer (a sensor's name), or of all.
pub fn stored_udp_seen_by(
    store: &dyn controlplane::store::FlowStore,
    observer: Option<&str>,
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
) -> (u64, u64) {
    let mut q = controlplane::store::FlowQuery {
        ip: Some(src.parse().expect("ip")),
        port: Some(sport),
        protocol: Some(17),
        limit: 1000,
        ..Default::default()
    };
    let (mut packets, mut bytes) = (0, 0);
    loop {
        let rows = store.query_flows(&q).expect("query the store");
        let Some(last) = rows.last() else {
            return (packets, bytes);
        };
        q.before = Some(last.cursor());
        for r in rows.iter().filter(|r| {
            r.src_ip == src
                && r.dst_ip == dst
                && r.src_port == Some(sport)
                && r.dst_port == Some(dport)
                && observer.is_none_or(|o| r.observer == o)
        }) {
            packets += r.packets.unwrap_or(0) as u64;
            bytes += r.bytes.unwrap_or(0) as u64;
        }
    }
}
