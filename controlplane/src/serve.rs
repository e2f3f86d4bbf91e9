//! `serve`, wired: the stores, then the components that run on them, each given what it
//! depends on:
//!
//! - the maintenance pass (`pipeline::maintenance`), on a thread;
//! - the watched directory (`pipeline::watch`), on a thread, when asked for;
//! - the notification dispatcher (`notify::Dispatcher`), the REST API and the dashboard
//!   (`api`, `web`, served by `listen` with its connection caps and timeouts, over HTTPS when
//!   given a certificate), on the async runtime;
//! - the sensor ingest (`grpc` in front of `pipeline::ingest`), on the runtime and its threads.
//!
//! On SIGTERM or Ctrl-C: the gRPC server stops taking calls, then the HTTP server and the
//! dispatcher stop, the watcher stops between files (an import cut short rolls back whole), and
//! the sensor flows' detectors save what they learned.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio_stream::StreamExt as _;
use tonic::transport::ServerTlsConfig;
use tracing::{info, warn};

use crate::{
    detect, grpc,
    listen::{self, Caps},
    notify,
    pipeline::{maintenance, watch::Watcher},
    store::{Backends, Retention, StateStore, Stores},
};

/// The bus of cluster mode.
pub struct BusConfig {
    /// nats://[user[:password]@]host[:port]
    pub url: String,
    /// Replaces a password in the URL.
    pub password: Option<String>,
}

/// Everything `serve` is told.
pub struct Config {
    /// Cluster mode: the bus this replica shares with the others.
    pub bus: Option<BusConfig>,
    /// Where the stores live.
    pub stores: Backends,
    /// Address for sensors (gRPC).
    pub grpc_listen: SocketAddr,
    /// TLS for the gRPC listener (with client certificates when it names a CA).
    pub grpc_tls: Option<ServerTlsConfig>,
    /// Address for the dashboard and the REST API.
    pub http_listen: SocketAddr,
    /// TLS for the HTTP listener.
    pub https: Option<Arc<rustls::ServerConfig>>,
    /// The watched import directory and the GCP subnets' sampling rate for its files.
    pub watch: Option<(PathBuf, f64)>,
    /// Decompressed bytes read from one imported file at most.
    pub max_file_bytes: u64,
    pub retention: Retention,
    pub maintenance_interval: Duration,
    pub detect: detect::Config,
    /// The dashboard's URL as users reach it: messages link to their alert there.
    pub public_url: Option<String>,
    pub retry: notify::Retry,
    /// Where notifications may go (all destinations when empty).
    pub notify_allow: notify::Destinations,
    /// How long a client may stay silent (see `listen`).
    pub idle_timeout: Duration,
    /// Open connections allowed (fitted under the limit of open files at the start).
    pub http_caps: Caps,
    pub grpc_caps: Caps,
}

/// How often the watched directory is scanned; a file is imported once it is unchanged over one
/// interval.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Checks what the flags cannot say alone.
fn check(c: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=100).contains(&c.retry.max_attempts),
        "--notify-max-attempts must be 1 to 100"
    );
    anyhow::ensure!(
        (1..=3600).contains(&c.maintenance_interval.as_secs()),
        "--maintenance-interval must be 1 to 3600 seconds"
    );
    if let Some(u) = &c.public_url {
        anyhow::ensure!(
            u.starts_with("http://") || u.starts_with("https://"),
            "--public-url: `{u}` must start with http:// or https://"
        );
    }
    anyhow::ensure!(
        (2..=3600).contains(&c.idle_timeout.as_secs()),
        "--idle-timeout must be 2 to 3600 seconds"
    );
    for (flag, n) in [
        ("--http-max-connections", c.http_caps.total),
        ("--http-max-per-address", c.http_caps.per_client),
        ("--grpc-max-connections", c.grpc_caps.total),
        ("--grpc-max-per-address", c.grpc_caps.per_client),
    ] {
        anyhow::ensure!((1..=1_000_000).contains(&n), "{flag} must be 1 to 1000000");
    }
    if let Some((_, rate)) = &c.watch {
        anyhow::ensure!(
            *rate > 0.0 && *rate <= 1.0,
            "--gcp-sampling-rate must be in (0, 1], got {rate}"
        );
    }
    Ok(())
}

/// This process's name among replicas (in leases, the log and health): the host and a random
/// word, kept in `--data-dir` so that a restarted replica is the same one (and holds its leases
/// again at once instead of waiting for them to expire).
fn replica_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let file = data_dir.join("replica-id");
    if let Ok(id) = std::fs::read_to_string(&file)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no random numbers: {e}"))?;
    let id = format!("{host}-{:08x}", u32::from_le_bytes(b));
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(&file, format!("{id}\n"))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
    Ok(id)
}

/// At the first start (no users yet), creates the dashboard user `admin` and prints its
/// password once.
fn first_admin(store: &dyn StateStore) -> anyhow::Result<()> {
    if !store.users()?.is_empty() {
        return Ok(());
    }
    let pw = crate::auth::new_password()?;
    store.add_user(
        "admin",
        &crate::auth::hash_password(&pw)?,
        crate::model::Role::Admin,
        crate::util::time::now_ns(),
    )?;
    // Printed, not logged as a field, so it is plainly visible once; it is never shown again.
    eprintln!(
        "picket-controlplane: first start: created the dashboard user `admin` with password {pw}\n\
         picket-controlplane: it is shown only now; change it with `picket-controlplane users --data-dir DIR [the same store options] passwd admin`"
    );
    Ok(())
}

/// Serves until SIGTERM or Ctrl-C.
pub fn run(c: Config) -> anyhow::Result<()> {
    check(&c)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stores = Stores::open(&c.stores)?;
    info!(
        data_dir = %c.stores.data_dir.display(),
        flows = %c.stores.describe_flows(),
        state = %c.stores.describe_state(),
        "stores open"
    );
    let bus = match &c.bus {
        None => None,
        Some(b) => {
            let bus = rt.block_on(crate::bus::Bus::connect(
                &b.url,
                b.password.as_deref(),
                crate::detect::partition::PARTITIONS,
            ))?;
            info!(
                bus = bus.at,
                "cluster mode: sensor batches go through the bus"
            );
            Some(bus)
        }
    };
    first_admin(stores.state.as_ref())?;
    let replica = replica_id(&c.stores.data_dir)?;
    info!(replica, "this control plane's name among replicas");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stores, stop, retention, every) = (
            stores.clone(),
            stop.clone(),
            c.retention,
            c.maintenance_interval,
        );
        let lease = maintenance::lease(&replica, every);
        std::thread::Builder::new()
            .name("maintenance".into())
            .spawn(move || maintenance::run(stores, retention, every, lease, stop))?;
    }
    if let Some((dir, rate)) = &c.watch {
        let mut w = match &bus {
            None => Watcher::new(dir, stores.clone(), &c.detect, *rate, c.max_file_bytes)?,
            Some(bus) => Watcher::handing_over(
                dir,
                bus.clone(),
                rt.handle().clone(),
                &replica,
                *rate,
                c.max_file_bytes,
            )?,
        };
        info!(dir = %dir.display(), "watching for cloud flow log files in aws/, gcp/ and azure/");
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("watch-dir".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    w.scan();
                    std::thread::sleep(WATCH_INTERVAL);
                }
            })?;
    }
    rt.block_on(serve(c, stores, bus, replica, stop))
}

/// The runtime's part: HTTP (dashboard, API), notifications, the sensor ingest.
async fn serve(
    c: Config,
    stores: Stores,
    bus: Option<crate::bus::Bus>,
    replica: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (stop_http, mut http_stop) = tokio::sync::watch::channel(false);
    let sender = notify::Sender::new(c.public_url.clone(), c.notify_allow.clone())?;
    let dispatcher = tokio::spawn(
        notify::Dispatcher {
            store: stores.state.clone(),
            sender: sender.clone(),
            retry: c.retry,
            lease: Arc::new(crate::store::Held::new(
                notify::NOTIFICATIONS,
                &replica,
                notify::LEASE_TTL,
            )),
        }
        .run(stop_http.subscribe()),
    );
    let secure_cookies = c.https.is_some()
        || c.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
    let router = crate::api::router(
        stores.clone(),
        crate::api::Options {
            secure_cookies,
            body_timeout: c.idle_timeout,
            sender,
            replica: replica.clone(),
            bus: bus.clone(),
        },
    );
    let http = tokio::net::TcpListener::bind(c.http_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--http-listen): {e}", c.http_listen))?;
    info!(
        http = %http.local_addr()?,
        https = c.https.is_some(),
        "web dashboard on /, REST API on /api/v1/"
    );
    if c.https.is_none() && !c.http_listen.ip().is_loopback() {
        warn!(
            "the dashboard and the API are plain HTTP on a non-loopback address (no \
             --http-tls-cert): passwords and sessions travel in clear unless a TLS proxy \
             is in front"
        );
    }
    let shutdown_http = async move {
        let _ = http_stop.changed().await;
    };
    let (http_caps, grpc_caps) = listen::fit(listen::raise_fd_limit(), c.http_caps, c.grpc_caps);
    let conns = listen::accept(http, "http", http_caps, None, &listen::STATS.refused_http);
    let api = tokio::spawn(listen::serve_http(
        conns,
        c.https.clone(),
        router,
        c.idle_timeout,
        shutdown_http,
    ));
    // Cluster mode: the sensor detectors, on whichever replica holds their lease.
    let detectors = match &bus {
        None => None,
        Some(bus) => {
            let (bus, stores, config, replica, rt, stop) = (
                bus.clone(),
                stores.clone(),
                c.detect,
                replica.clone(),
                tokio::runtime::Handle::current(),
                stop.clone(),
            );
            Some(
                std::thread::Builder::new()
                    .name("detectors".into())
                    .spawn(move || grpc::detectors::run(bus, stores, config, replica, rt, stop))?,
            )
        }
    };
    // Cluster mode: the cloud flow-log files handed to the cluster, on whichever replica holds
    // the imports' lease.
    let importer = match &bus {
        None => None,
        Some(bus) => {
            let worker = crate::pipeline::import_jobs::Worker {
                bus: bus.clone(),
                stores: stores.clone(),
                config: c.detect,
                replica: replica.clone(),
                rt: tokio::runtime::Handle::current(),
                stop: stop.clone(),
                work_dir: c.stores.data_dir.join("imports"),
                max_bytes: c.max_file_bytes,
            };
            Some(
                std::thread::Builder::new()
                    .name("importer".into())
                    .spawn(move || worker.run())?,
            )
        }
    };
    let baselines_saved = serve_grpc(&c, stores, bus, &replica, grpc_caps).await?;
    let _ = stop_http.send(true);
    let _ = dispatcher.await;
    stop.store(true, Ordering::Relaxed);
    api.await?;
    if let Some(d) = detectors {
        // Its last checkpoint: the detectors' state saved, what it includes acknowledged.
        let _ = tokio::task::spawn_blocking(move || d.join()).await;
    }
    if let Some(i) = importer {
        // An import under way ends first (its job is acknowledged, or comes again).
        let _ = tokio::task::spawn_blocking(move || i.join()).await;
    }
    // What the sensor baselines learned since their last save is saved as the ingest ends.
    if let Some(saved) = baselines_saved {
        let waited =
            tokio::task::spawn_blocking(move || saved.recv_timeout(Duration::from_secs(10))).await;
        if !matches!(waited, Ok(Ok(()))) {
            warn!(
                "the sensor baselines were not saved at the stop; the last 30 s of learning may be relearned"
            );
        }
    }
    Ok(())
}

/// Serves the sensor ingest until SIGTERM or Ctrl-C; returns what tells when the sensor flows'
/// detectors saved their state.
async fn serve_grpc(
    c: &Config,
    stores: Stores,
    bus: Option<crate::bus::Bus>,
    replica: &str,
    caps: Caps,
) -> anyhow::Result<Option<std::sync::mpsc::Receiver<()>>> {
    let listener = tokio::net::TcpListener::bind(c.grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--grpc-listen): {e}", c.grpc_listen))?;
    info!(
        grpc = %listener.local_addr()?,
        tls = c.grpc_tls.is_some(),
        "control plane serving sensor ingest"
    );
    if c.grpc_tls.is_none() {
        warn!("the sensor ingest is plain text (no --tls-cert): sensor keys travel in clear");
    }
    let (stop_relay, relay_stop) = tokio::sync::watch::channel(false);
    let grpc::Ingest {
        server: svc,
        finished: saved,
        relay,
    } = grpc::IngestService::server(stores, c.detect, bus.map(|b| (b, relay_stop)), replica);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("stopping");
    };
    // Pings keep a quiet sensor's connection alive through the read timeout; a peer that does
    // not answer them is dropped.
    let ping = c.idle_timeout / 3;
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ping));
    if let Some(tls) = c.grpc_tls.clone() {
        builder = builder
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
    }
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(listen::accept(
                listener,
                "grpc",
                caps,
                Some(c.idle_timeout),
                &listen::STATS.refused_grpc,
            ))
            .map(Ok::<_, std::io::Error>),
            shutdown,
        )
        .await?;
    // The relay lets the batches it took reach the store and the bus hear their acks; what it
    // had not taken stays on the bus for the other replicas.
    let _ = stop_relay.send(true);
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    Ok(saved)
}
