//! The two listeners' defences, the same for the dashboard and API (HTTP or HTTPS) and for the
//! sensor ingest (gRPC):
//!
//! - a cap on open connections, in all and per client address (an IPv6 client is its /64):
//!   beyond it a new connection is closed at once and counted, so one client cannot take the
//!   descriptors every other client needs;
//! - a write timeout: a peer that stops reading what it asked for is dropped;
//! - for gRPC, a read timeout: the server pings every connection (HTTP/2 keep-alive), so a peer
//!   silent for that long is gone or hostile;
//! - for HTTP, hyper's header timeout, which also ends a keep-alive connection idle for as long;
//!   the API bounds the body's time and size itself;
//! - TLS handshakes in their own tasks, with a timeout.
//!
//! At the start, the process's soft limit of open files is raised to its hard limit, and the
//! caps are fitted under it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, info, warn};

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that does not take what is written to it for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open HTTP connections get to finish at the stop.
const DRAIN: Duration = Duration::from_secs(10);

/// What the listeners refused or dropped since the start (`GET /api/v1/health` shows them).
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections closed at once: over the cap per address or in all.
    pub refused_http: AtomicU64,
    pub refused_grpc: AtomicU64,
    /// TLS handshakes that failed or timed out (HTTPS).
    pub failed_handshakes: AtomicU64,
}

pub static STATS: Stats = Stats {
    refused_http: AtomicU64::new(0),
    refused_grpc: AtomicU64::new(0),
    failed_handshakes: AtomicU64::new(0),
};

/// Open connections allowed, in all and from one client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_client: usize,
}

/// Raises the soft limit of open files to the hard one and returns it (the descriptors this
/// process may hold).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!(soft, hard, error = %e, "could not raise the limit of open files");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Fits the caps asked for under `fds` descriptors, keeping 256 for the store, files and
/// outgoing connections: HTTP gets at most a quarter of the rest, gRPC the others.
pub fn fit(fds: u64, http: Caps, grpc: Caps) -> (Caps, Caps) {
    let budget = usize::try_from(fds.saturating_sub(256))
        .unwrap_or(usize::MAX)
        .max(64);
    let h = http.total.min(budget / 4).max(16);
    let g = grpc.total.min(budget.saturating_sub(h)).max(16);
    let fitted = (
        Caps {
            total: h,
            per_client: http.per_client.min(h),
        },
        Caps {
            total: g,
            per_client: grpc.per_client.min(g),
        },
    );
    if fitted != (http, grpc) {
        warn!(
            open_files = fds,
            http_connections = h,
            grpc_connections = g,
            "the limit of open files is low: fewer connections are allowed than asked for \
             (raise LimitNOFILE)"
        );
    }
    fitted
}

/// The client a connection counts against: an IPv4 address, or the /64 of an IPv6 one (what one
/// host usually holds).
pub fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    last_warning: Option<Instant>,
}

/// Counts open connections against the caps.
struct Limiter {
    what: &'static str,
    caps: Caps,
    open: Mutex<Open>,
    refused: &'static AtomicU64,
}

/// One admitted connection's place under the caps, given back when dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    client: IpAddr,
}

impl Limiter {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Permit> {
        let client = client(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        if open.total >= self.caps.total || mine >= self.caps.per_client {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // One line a minute at most: a flood must not become a flood of log lines.
            if open
                .last_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                open.last_warning = Some(Instant::now());
                warn!(
                    listener = self.what,
                    %client,
                    open_from_client = mine,
                    open = open.total,
                    per_client_cap = self.caps.per_client,
                    cap = self.caps.total,
                    refused_since_start = refused,
                    "refusing connections over the cap"
                );
            }
            return None;
        }
        open.total += 1;
        *open.by_client.entry(client).or_insert(0) += 1;
        Some(Permit {
            limiter: self.clone(),
            client,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

/// An admitted TCP connection with its timeouts; it holds its place under the caps until
/// dropped.
pub struct Conn {
    io: Pin<Box<TimeoutStream<TcpStream>>>,
    pub peer: SocketAddr,
    _permit: Permit,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().io.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.get_ref().connect_info()
    }
}

/// Accepts connections on `listener` in a task of its own and passes on those under `caps`;
/// `read_timeout` drops a peer silent for that long. The task ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    what: &'static str,
    caps: Caps,
    read_timeout: Option<Duration>,
    refused: &'static AtomicU64,
) -> mpsc::Receiver<Conn> {
    let limiter = Arc::new(Limiter {
        what,
        caps,
        open: Mutex::new(Open {
            total: 0,
            by_client: HashMap::new(),
            last_warning: None,
        }),
        refused,
    });
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin, then go on.
                    warn!(listener = what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(permit) = limiter.admit(peer.ip()) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let mut io = TimeoutStream::new(tcp);
            io.set_read_timeout(read_timeout);
            io.set_write_timeout(Some(WRITE_TIMEOUT));
            let conn = Conn {
                io: Box::pin(io),
                peer,
                _permit: permit,
            };
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Serves `router` over HTTP/1.1 (HTTPS with `tls`) on the admitted connections until `stop`
/// resolves, then lets open requests finish for up to 10 s. Each request carries its peer's
/// address as `axum::extract::ConnectInfo<SocketAddr>`. `header_timeout` bounds the wait for a
/// request's head, also between the requests of a keep-alive connection.
pub async fn serve_http(
    mut conns: mpsc::Receiver<Conn>,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut stop = std::pin::pin!(stop);
    loop {
        let conn = tokio::select! {
            c = conns.recv() => match c {
                Some(c) => c,
                None => break,
            },
            _ = &mut stop => break,
        };
        let peer = conn.peer;
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let ended = match acceptor {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(conn), service))
                        .await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            STATS.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            STATS.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    watcher
                        .watch(http.serve_connection(TokioIo::new(tls), service))
                        .await
                }
            };
            if let Err(e) = ended {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(conns);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            info!("HTTP requests still open {} s after the stop were cut", DRAIN.as_secs());
        }
    }
}

/// Reads a PEM certificate chain and key into a server configuration for the dashboard
/// (HTTP/1.1).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--http-tls-cert {}: {e}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "--http-tls-cert {}: no certificate in it",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--http-tls-key {}: {e}", key.display()))?;
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| anyhow::anyhow!("--http-tls-cert/--http-tls-key: {e}"))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_a_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        assert_eq!(client(a), client(b));
        assert_eq!(client(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(client(a), client("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            client("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn caps_hold_per_client_and_in_all_and_places_come_back() {
        static REFUSED: AtomicU64 = AtomicU64::new(0);
        let l = Arc::new(Limiter {
            what: "test",
            caps: Caps {
                total: 3,
                per_client: 2,
            },
            open: Mutex::new(Open {
                total: 0,
                by_client: HashMap::new(),
                last_warning: None,
            }),
            refused: &REFUSED,
        });
        let (a, b, c) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let a1 = l.admit(a).expect("first");
        let a2 = l.admit(a).expect("second");
        assert!(l.admit(a).is_none(), "a third from one client");
        let b1 = l.admit(b).expect("another client");
        assert!(l.admit(c).is_none(), "over the cap in all");
        assert_eq!(REFUSED.load(Ordering::Relaxed), 2);
        drop(a1);
        let c1 = l.admit(c).expect("a place came back");
        drop((a2, b1, c1));
        let open = l.open.lock().unwrap();
        assert_eq!((open.total, open.by_client.len()), (0, 0));
    }

    #[test]
    fn caps_fit_under_the_descriptors() {
        let http = Caps {
            total: 1024,
            per_client: 64,
        };
        let grpc = Caps {
            total: 8192,
            per_client: 512,
        };
        assert_eq!(fit(1 << 20, http, grpc), (http, grpc));
        let (h, g) = fit(1024, http, grpc);
        assert_eq!((h.total, h.per_client), (192, 64));
        assert_eq!((g.total, g.per_client), (576, 512));
        assert!(h.total + g.total + 256 <= 1024);
    }
}
