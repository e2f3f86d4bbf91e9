//! Local receivers for notification tests: an HTTP endpoint that records what it is sent and
//! answers with scripted statuses, and syslog listeners (UDP datagrams, TCP octet-counted
//! frames). Each binds to 127.0.0.1 inside a namespace the test made.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::in_netns;

/// A request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// An HTTP receiver: answers the first requests with `statuses` in order, then 200.
pub struct HttpReceiver {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpReceiver {
    pub fn start(ns: &str, statuses: &[u16]) -> HttpReceiver {
        let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:0").expect("bind"))
            .join()
            .expect("bind in netns");
        Self::serve(listener, statuses)
    }

    /// As [`HttpReceiver::start`], on this process's own loopback.
    pub fn start_here(statuses: &[u16]) -> HttpReceiver {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind"), statuses)
    }

    fn serve(listener: TcpListener, statuses: &[u16]) -> HttpReceiver {
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, script) = (requests.clone(), statuses.to_vec());
        thread::spawn(move || {
            let mut script = script.into_iter();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let Some(req) = read_request(&mut BufReader::new(&conn)) else {
                    continue;
                };
                seen.lock().expect("lock").push(req);
                let status = script.next().unwrap_or(200);
                let body = if status == 200 { "ok" } else { "no" };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        HttpReceiver { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until at least `n` requests came (panics after `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        wait(timeout, || {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| panic!("expected {n} requests, got {:?}", self.requests()))
    }
}

fn read_request(r: &mut impl std::io::BufRead) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// A syslog listener on UDP or TCP (RFC 6587 octet counting); collects messages.
pub struct SyslogReceiver {
    pub port: u16,
    messages: Arc<Mutex<Vec<String>>>,
}

impl SyslogReceiver {
    pub fn udp(ns: &str) -> SyslogReceiver {
        let sock = in_netns(ns, || UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .join()
            .expect("bind in netns");
        let port = sock.local_addr().expect("addr").port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = messages.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                seen.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        SyslogReceiver { port, messages }
    }

    pub fn tcp(ns: &str) -> SyslogReceiver {
        let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:0").expect("bind"))
            .join()
            .expect("bind in netns");
        let port = listener.local_addr().expect("addr").port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = messages.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut r = BufReader::new(conn);
                // Frames: "LEN SP MSG", one after another, until the sender closes.
                loop {
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                        break;
                    }
                    let n: usize = String::from_utf8_lossy(&len)
                        .trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("not an octet count: {len:?}"));
                    let mut msg = vec![0; n];
                    r.read_exact(&mut msg).expect("a whole frame");
                    seen.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&msg).into_owned());
                }
            }
        });
        SyslogReceiver { port, messages }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        wait(timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| panic!("expected {n} syslog messages, got {:?}", self.messages()))
    }
}

/// Polls `f` every 50 ms until it gives a value or `timeout` passes.
pub fn wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
