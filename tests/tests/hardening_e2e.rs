//! A real `picket-controlplane serve` under the abuse a listener on a network gets: silent and
//! slow clients, too many connections from one address, oversized requests, password guessing
//! and login floods. Memory is read from /proc/PID/status, never inferred from time.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{ControlPlane, Lab, Reply, TempDir, http_request_from, in_netns};

const HTTP: &str = "127.0.0.1:8080";
const GRPC: &str = "127.0.0.1:7443";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TCP connection from `from` (a loopback address of the namespace) to `to`.
fn connect_from(from: IpAddr, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().expect("address");
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(from, 0).into()).expect("bind");
    s.connect_timeout(&to.into(), Duration::from_secs(2))
        .expect("connect");
    s.into()
}

/// Whether the server closes `c` within `d` (what it sends first, such as an HTTP/2 server's
/// settings, is read and ignored).
fn closed_within(c: &mut TcpStream, d: Duration) -> bool {
    let end = Instant::now() + d;
    let mut b = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        c.set_read_timeout(Some(left)).expect("timeout");
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// `n` silent connections from `from` to `to`, and how many of them the server closed at once.
fn crowd(from: IpAddr, to: &str, n: usize) -> (Vec<TcpStream>, usize) {
    let mut conns: Vec<TcpStream> = (0..n).map(|_| connect_from(from, to)).collect();
    thread::sleep(Duration::from_millis(300));
    let closed = conns
        .iter_mut()
        .filter_map(|c| closed_within(c, Duration::from_millis(10)).then_some(()))
        .count();
    (conns, closed)
}

/// What the server answers on `c` until it closes it or `d` passes.
fn answer(c: &mut TcpStream, d: Duration) -> String {
    c.set_read_timeout(Some(d)).expect("timeout");
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /api/v1/health` over a connection of its own from 127.0.0.`from`, from a thread
/// already in the namespace.
fn health_here(from: u8) -> Value {
    let mut c = connect_from(ip(from), HTTP);
    c.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let a = answer(&mut c, Duration::from_secs(5));
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let body = &a[a.find("\r\n\r\n").expect("head's end") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {a}"))
}

fn health(ns: &str, from: u8) -> Value {
    let r = http_request_from(
        ns,
        Some(ip(from)),
        "GET",
        format!("http://{HTTP}/api/v1/health"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn silent_slow_and_crowding_clients_are_cut_and_counted() {
    let lab = Lab::new();
    let dir = TempDir::new("harden-conn");
    let data = dir.0.join("data");
    let cp = ControlPlane::start_with(
        &lab.a,
        &data,
        GRPC,
        &dir.0.join("cp.log"),
        &[
            "--idle-timeout",
            "2",
            "--http-max-per-address",
            "8",
            "--grpc-max-per-address",
            "4",
        ],
    );
    in_netns(&lab.a, move || {
        // 12 silent connections from one address: 8 are held, 4 closed at once.
        let t0 = Instant::now();
        let (mut conns, at_once) = crowd(ip(2), HTTP, 12);
        assert_eq!(at_once, 4, "closed at once over the per-address cap of 8");
        // Meanwhile another address is served, and the refusals are counted.
        let h = health_here(1);
        assert_eq!(h["connections_refused"]["http"], 4, "{h}");
        // The 8 held ones are closed by the server after the idle timeout (2 s), not before.
        let mut held = 0;
        for c in &mut conns {
            if closed_within(c, Duration::from_secs(5)) {
                held += 1;
            }
        }
        let waited = t0.elapsed();
        assert_eq!(held, 12, "every connection ends");
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
            "idle connections closed after {waited:?}"
        );

        // A keep-alive connection idle after its request is closed likewise.
        let mut c = connect_from(ip(3), HTTP);
        c.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("write");
        let a = answer(&mut c, Duration::from_secs(2));
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        let t0 = Instant::now();
        assert!(closed_within(&mut c, Duration::from_secs(5)));
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );

        // A head sent halfway is cut after the idle timeout.
        let mut c = connect_from(ip(3), HTTP);
        c.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n")
            .expect("write");
        let t0 = Instant::now();
        let a = answer(&mut c, Duration::from_secs(5));
        assert!(
            t0.elapsed() >= Duration::from_millis(1500) && t0.elapsed() < Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
        assert!(!a.contains("200 OK"), "{a}");

        // A trickled body gets 408 once the idle timeout passes.
        let mut c = connect_from(ip(3), HTTP);
        c.write_all(
            b"POST /api/v1/session HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"username\":",
        )
        .expect("write");
        let t0 = Instant::now();
        let a = answer(&mut c, Duration::from_secs(5));
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );

        // Oversized bodies get 413 before they are read, declared or chunked.
        let mut c = connect_from(ip(3), HTTP);
        c.write_all(
            b"POST /api/v1/session HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 1900000\r\n\r\n",
        )
        .expect("write");
        let a = answer(&mut c, Duration::from_secs(2));
        assert!(a.starts_with("HTTP/1.1 413"), "{a}");
        let mut c = connect_from(ip(3), HTTP);
        c.write_all(
            b"POST /api/v1/session HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .expect("write");
        let chunk = format!("{:x}\r\n{}\r\n", 70_000, "a".repeat(70_000));
        let _ = c.write_all(chunk.as_bytes());
        let a = answer(&mut c, Duration::from_secs(2));
        assert!(a.starts_with("HTTP/1.1 413"), "{a}");

        // The sensor listener: 6 silent connections from one address, 4 held then dropped
        // after the idle timeout (no answer to the server's pings), 2 closed at once.
        let t0 = Instant::now();
        let (mut conns, at_once) = crowd(ip(4), GRPC, 6);
        assert_eq!(at_once, 2);
        for c in &mut conns {
            assert!(closed_within(c, Duration::from_secs(6)));
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        let h = health_here(1);
        assert_eq!(h["connections_refused"]["grpc"], 2, "{h}");
    })
    .join()
    .expect("clients");
    cp.stop();
}

/// One request over a connection of its own from `from`, from a thread already in the
/// namespace: the answer's status and body. Plain sockets: hundreds of these at once cost the
/// test little, so what is measured is the server.
fn raw_request(from: IpAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut c = connect_from(from, HTTP);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("write head");
    c.write_all(body.as_bytes()).expect("write body");
    let a = answer(&mut c, Duration::from_secs(30));
    let status = a
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {a:?}"));
    let body = a.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// Many login requests, sent `threads` at a time from `from`; their statuses.
fn logins(ns: &str, from: IpAddr, threads: usize, bodies: Vec<Value>) -> Vec<u16> {
    let queue = Arc::new(Mutex::new(bodies));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (queue, statuses) = (queue.clone(), statuses.clone());
            in_netns(ns, move || {
                loop {
                    let Some(body) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    let (status, _) = raw_request(from, "POST", "/api/v1/session", Some(&body));
                    statuses.lock().expect("statuses").push(status);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("login thread");
    }
    Arc::try_unwrap(statuses)
        .expect("threads ended")
        .into_inner()
        .expect("statuses")
}

fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|&&x| x == s).count()
}

#[test]
fn login_floods_stay_bounded_and_the_admin_still_logs_in() {
    let lab = Lab::new();
    let dir = TempDir::new("harden-login");
    let data = dir.0.join("data");
    let log = dir.0.join("cp.log");
    let cp = ControlPlane::start(&lab.a, &data, GRPC, &log);
    let pw = cp.admin_password();
    let ns = lab.a.as_str();
    // Warm up the first password check, then take the baseline.
    let _ = logins(
        ns,
        ip(9),
        1,
        vec![json!({"username": "admin", "password": "warm-up-guess"})],
    );
    cp.reset_peak_memory();
    let (rss0, _) = cp.memory_kib();
    let log0 = std::fs::metadata(&log).expect("log").len();

    // 300 logins with 60,000-character names: refused before any work, and not logged.
    let long = "x".repeat(60_000);
    let s = logins(
        ns,
        ip(2),
        4,
        (0..300)
            .map(|_| json!({"username": long, "password": "whatever-guess"}))
            .collect(),
    );
    assert_eq!(count(&s, 400), 300, "{s:?}");
    let logged = std::fs::metadata(&log).expect("log").len() - log0;
    assert!(
        logged < 4096,
        "{logged} bytes of log for 300 refused logins"
    );

    // 2,000 logins with random names from one address: 50 are checked, then the address waits.
    let s = logins(
        ns,
        ip(3),
        8,
        (0..2000)
            .map(|i| json!({"username": format!("user-{i:x}{:x}", i * 7919), "password": "guess-guess-guess"}))
            .collect(),
    );
    let (checked, waited) = (count(&s, 401), count(&s, 429));
    assert_eq!(checked + waited + count(&s, 503), 2000, "{s:?}");
    assert!(
        (50..=58).contains(&checked),
        "{checked} password checks from one address spraying names"
    );

    // 200 concurrent wrong passwords for `admin` from 4 addresses, while /health is polled from
    // another one.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        in_netns(ns, move || {
            let mut took = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                let (status, body) = raw_request(ip(1), "GET", "/api/v1/health", None);
                assert_eq!(status, 200, "{body}");
                took.push(t0.elapsed());
                thread::sleep(Duration::from_millis(20));
            }
            took.sort();
            took
        })
    };
    let guesses: Vec<_> = (5..9u8)
        .map(|a| {
            let ns = ns.to_string();
            thread::spawn(move || {
                logins(
                    &ns,
                    ip(a),
                    50,
                    (0..50)
                        .map(|i| json!({"username": "admin", "password": format!("guess-{i}-{a}")}))
                        .collect(),
                )
            })
        })
        .collect();
    let s: Vec<u16> = guesses
        .into_iter()
        .flat_map(|g| g.join().expect("guesses"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let took = poller.join().expect("poller");
    let (worst, median, polls) = (took[took.len() - 1], took[took.len() / 2], took.len());
    let (failed, waited, busy) = (count(&s, 401), count(&s, 429), count(&s, 503));
    assert_eq!(failed + waited + busy, 200, "{s:?}");
    let (rss, peak) = cp.memory_kib();
    eprintln!(
        "200 concurrent wrong passwords: {failed} checked (401), {waited} waiting (429), \
         {busy} busy (503); /health median {median:?}, worst {worst:?} over {polls} polls; RSS {rss0} KiB \
         before, {rss} KiB after, peak {peak} KiB"
    );
    // Not a timing benchmark: the bound only tells a runtime that stays free from one that
    // checks passwords on its own threads. The flood's 200 argon2 checks take about 5 s of CPU
    // on two cores, so a runtime doing them itself leaves /health waiting for seconds, while a
    // free one answers in milliseconds (one slow poll of 104 ms on a busy CI machine is noise).
    assert!(
        worst < Duration::from_secs(1) && median < Duration::from_millis(250),
        "/health took {worst:?} (median {median:?}) under the flood"
    );
    // Each checking thread keeps one 19 MiB argon2 area; before the checks had their own
    // threads, this flood took the process to 8 GiB.
    assert!(
        peak < rss0 + 64 * 1024,
        "peak RSS {peak} KiB against {rss0} KiB before"
    );

    // The admin, from an address of their own, logs in at once.
    let r: Reply = http_request_from(
        ns,
        Some(ip(10)),
        "POST",
        format!("http://{HTTP}/api/v1/session"),
        &[],
        Some(&json!({"username": "admin", "password": pw})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let h = health(ns, 1);
    assert!(h["logins_refused"]["waiting"].as_u64() > Some(1900), "{h}");
    assert!(
        h["logins_failed"].as_u64() >= Some(failed as u64 + 50),
        "{h}"
    );
    cp.stop();
}

/// Four 16.6 MB `Register` calls at once without a sensor key: refused from their headers,
/// unread, so the process does not grow by what they carry (it grew by 2.2 GB when calls were
/// decoded before the key was checked).
#[test]
fn sensor_calls_without_a_key_are_refused_before_their_message_is_read() {
    use picket_proto::v1::{RegisterRequest, sensor_ingest_client::SensorIngestClient};
    let lab = Lab::new();
    let dir = TempDir::new("harden-grpc");
    let cp = ControlPlane::start(&lab.a, &dir.0.join("data"), GRPC, &dir.0.join("cp.log"));
    // The start's own peak (migrations, connection pools: 40-48 MB against 31 MB after, more
    // with both stores on servers) is not what this measures.
    cp.reset_peak_memory();
    let (rss0, _) = cp.memory_kib();
    let codes = in_netns(&lab.a, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let calls = (0..4).map(|i| async move {
                let mut c = SensorIngestClient::connect(format!("http://{GRPC}"))
                    .await
                    .expect("connect")
                    .max_encoding_message_size(64 << 20);
                let big = RegisterRequest {
                    instance_id: format!("i-{i}"),
                    version: "x".repeat(16_600_000),
                    ..Default::default()
                };
                c.register(big).await.expect_err("refused").code()
            });
            let mut codes = Vec::new();
            for h in calls.map(tokio::spawn).collect::<Vec<_>>() {
                codes.push(h.await.expect("call"));
            }
            codes
        })
    })
    .join()
    .expect("client");
    assert_eq!(codes, vec![tonic::Code::Unauthenticated; 4]);
    let (rss, peak) = cp.memory_kib();
    eprintln!(
        "4 x 16.6 MB unauthenticated Register: RSS {rss0} KiB before, {rss} KiB after, peak {peak} KiB"
    );
    assert!(
        peak < rss0 + 16 * 1024,
        "peak {peak} KiB against {rss0} KiB"
    );
    cp.stop();
}

/// `serve` in `lab` watching `dir`/incoming, with `extra` flags: the control plane, the watched
/// directory and the log's path.
fn serve_watching(
    lab: &Lab,
    dir: &TempDir,
    extra: &[&str],
) -> (ControlPlane, std::path::PathBuf, std::path::PathBuf) {
    let incoming = dir.0.join("incoming");
    let log = dir.0.join("cp.log");
    let mut args = vec!["--watch-dir", incoming.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    let cp = ControlPlane::start_with(&lab.a, &dir.0.join("data"), GRPC, &log, &args);
    (cp, incoming, log)
}

/// The watched directory under hostile files: a gzip bomb (512 MiB of zeros in 500 KiB) is read
/// up to `--max-file-mb` in bounded memory and moved to failed/, not retried; a file whose name
/// holds a newline is imported and logged escaped, so it cannot forge a log line.
#[test]
fn a_gzip_bomb_and_a_forged_name_in_the_watched_directory() {
    let (lab, dir) = (Lab::new(), TempDir::new("harden-watch"));
    let (cp, incoming, log) = serve_watching(&lab, &dir, &["--max-file-mb", "64"]);
    cp.reset_peak_memory();
    let (rss0, _) = cp.memory_kib();
    let bomb = std::process::Command::new("sh")
        .args(["-c", "head -c 536870912 /dev/zero | gzip -1"])
        .output()
        .expect("gzip");
    assert!(bomb.stdout.len() < 4 << 20, "{}", bomb.stdout.len());
    std::fs::write(incoming.join("aws/bomb.log.gz"), &bomb.stdout).expect("write");
    let forged = "flows.log\n2026-12-06T00:00:00.000000Z  INFO FORGED admin logged in";
    std::fs::write(
        incoming.join("aws").join(forged),
        "2 123456789010 eni-1 10.0.0.1 10.0.0.2 40000 22 6 3 180 1795860000 1795860060 ACCEPT OK\n",
    )
    .expect("write");
    let t0 = Instant::now();
    while !(incoming.join("aws/failed/bomb.log.gz").exists()
        && incoming.join("aws/imported").join(forged).exists())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (rss, peak) = cp.memory_kib();
    eprintln!("gzip bomb: RSS {rss0} KiB before, {rss} KiB after, peak {peak} KiB");
    assert!(
        peak < rss0 + 32 * 1024,
        "peak {peak} KiB against {rss0} KiB"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("over 64 MiB"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-12-06T00:00:00.000000Z")),
        "a file name forged a log line:\n{text}"
    );
    assert!(
        text.contains(r"flows.log\n2026"),
        "the name is logged escaped:\n{text}"
    );
    cp.stop();
}

/// A large file in the watched directory holds the store's writer for its whole transaction;
/// the API reads from connections of its own meanwhile. (One connection for everything made
/// `/health` wait 9.5 s behind a 2M-line import.)
#[test]
fn the_api_answers_while_a_large_file_is_imported() {
    let (lab, dir) = (Lab::new(), TempDir::new("harden-reads"));
    let (cp, incoming, log) = serve_watching(&lab, &dir, &["--retention-raw-days", "36500"]);
    let lines: String = (0..400_000u32)
        .map(|i| {
            format!(
                "2 123456789010 eni-1 10.{}.{}.{} 10.1.0.1 {} 443 6 3 180 1795860000 1795860060 ACCEPT OK\n",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff,
                1024 + i % 60_000
            )
        })
        .collect();
    let staged = incoming.join("aws/big.log.part");
    std::fs::write(&staged, lines).expect("write");
    std::fs::rename(&staged, incoming.join("aws/big.log")).expect("rename");
    let token = format!("Bearer {}", cp.token);
    let done = incoming.join("aws/imported/big.log");
    let took = in_netns(&lab.a, move || {
        let mut took = Vec::new();
        let t0 = Instant::now();
        while !done.exists() {
            assert!(t0.elapsed() < Duration::from_secs(120), "not imported");
            for path in ["/api/v1/health", "/api/v1/alerts"] {
                let t = Instant::now();
                let mut c = connect_from(ip(1), HTTP);
                c.write_all(
                    format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: {token}\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .expect("write");
                let a = answer(&mut c, Duration::from_secs(30));
                assert!(a.starts_with("HTTP/1.1 200"), "{a}");
                took.push(t.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        took.sort();
        took
    })
    .join()
    .expect("poller");
    let (worst, median) = (took[took.len() - 1], took[took.len() / 2]);
    eprintln!(
        "{} requests during a 400,000-line import: median {median:?}, worst {worst:?}",
        took.len()
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("stored=400000"), "{text}");
    assert!(
        took.len() >= 10,
        "the import was too short to poll: {}",
        took.len()
    );
    assert!(worst < Duration::from_secs(1), "worst {worst:?}");
    cp.stop();
}

/// `sensors add --out FILE` writes the key only its owner can read, and never over a file.
#[test]
fn a_sensor_key_is_written_private_and_never_over_a_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("harden-key");
    let data = dir.0.join("data");
    let key = dir.0.join("edge.key");
    let run = |name: &str| {
        std::process::Command::new(tests::bin("picket-controlplane"))
            .args(["sensors", "--data-dir"])
            .arg(&data)
            .envs(tests::servers::store_env(&data))
            .args(["add", name, "--out"])
            .arg(&key)
            .output()
            .expect("sensors add")
    };
    let o = run("edge-1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "the key is not printed");
    let meta = std::fs::metadata(&key).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&key).expect("read");
    assert!(
        text.starts_with("pks_") && text.trim().len() == 68,
        "{text}"
    );
    let o = run("edge-2");
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_to_string(&key).expect("read"),
        text,
        "not overwritten"
    );
    let list = std::process::Command::new(tests::bin("picket-controlplane"))
        .args(["sensors", "--data-dir"])
        .arg(&data)
        .envs(tests::servers::store_env(&data))
        .arg("list")
        .output()
        .expect("list");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("edge-1") && !list.contains("edge-2"),
        "{list}"
    );
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    let servers = tests::servers::store_env(&data).len();
    if servers < 2 {
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("picket.db")), 0o600);
    } else {
        assert!(
            !data.join("picket.db").exists(),
            "no embedded store when both are servers"
        );
    }
}
