//! The agent's run: the programs loaded and attached, then a loop until a signal, `--duration`
//! or a closed stdout: scan events as they come (`events.rs`), the programs' clock every tick,
//! SSH log lines every second, and at each export interval a drain of the flow tables into the
//! flow cache and the records due out of it (`drain.rs`), printed and exported. At the end the
//! programs are detached first, so nothing more arrives, and everything left is exported.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    authlog,
    config::Settings,
    export::{self, Exporter},
    flowcache::FlowCache,
    k8s, metrics,
    sensor::{self, Sensor},
};

mod drain;
mod events;
mod output;
mod stats;

use output::Out;
use stats::AgentCounters;

/// How long a stopping sensor keeps sending unacknowledged batches (the rest stays spooled).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The scan-event ring buffer, polled by the runtime.
type Ring = AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>;

/// Everything the loop works on.
struct Agent {
    sensor: Sensor,
    /// Interface names by index, as attached.
    names: HashMap<u32, String>,
    cache: FlowCache,
    out: Out,
    counters: AgentCounters,
    exporter: Option<Arc<Exporter>>,
    /// Records waiting for the next batch.
    pending_scans: Vec<picket_proto::v1::ScanEvent>,
    pending_auth: Vec<picket_proto::v1::AuthEvent>,
    auth_log: Option<authlog::AuthSource>,
    /// In a Kubernetes pod with a service account: pods of this node, by IP.
    pods: Option<k8s::PodIndex>,
    /// (source, window start) of events already printed: at most one per source per window,
    /// even if two CPUs raced to report the same source.
    reported: HashMap<(IpAddr, u64), Instant>,
    window: Duration,
}

impl Agent {
    /// The interface's name (as attached, else as the kernel says, else its index).
    fn iface_name(names: &HashMap<u32, String>, idx: u32) -> String {
        names
            .get(&idx)
            .cloned()
            .or_else(|| crate::programs::ifname(idx))
            .unwrap_or_else(|| idx.to_string())
    }
}

/// Runs the agent until SIGINT, SIGTERM, `--duration` or a closed stdout.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let sensor = Sensor::start(&settings.sensor)?;
    info!(
        ifaces = ?settings.sensor.ifaces,
        export_interval_s = settings.export_interval.as_secs(),
        active_timeout_s = settings.active_timeout.as_secs(),
        idle_timeout_s = settings.idle_timeout.as_secs(),
        scan_window_s = settings.sensor.scan_window.as_secs(),
        port_threshold = settings.sensor.port_threshold,
        host_threshold = settings.sensor.host_threshold,
        "sensor running"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let export = start_export(&settings, &sensor, stop_rx)?;
    let mut agent = Agent {
        names: sensor
            .attachments
            .iter()
            .map(|a| (a.ifindex, a.iface.clone()))
            .collect(),
        sensor,
        cache: FlowCache::new(settings.active_timeout, settings.idle_timeout),
        out: Out::stdout(settings.stdout),
        counters: AgentCounters::default(),
        exporter: export.as_ref().map(|e| e.0.clone()),
        pending_scans: Vec::new(),
        pending_auth: Vec::new(),
        auth_log: match &settings.auth_log {
            Some(p) => {
                info!(source = %p.display(), "following the SSH log for login events");
                Some(authlog::AuthSource::open(p)?)
            }
            None => None,
        },
        pods: k8s::ApiConfig::from_env().map(|cfg| {
            info!(
                api = cfg.base,
                node = cfg.node,
                "Kubernetes enrichment on: flows get their pods"
            );
            let idx = k8s::PodIndex::default();
            tokio::spawn(k8s::run(cfg, idx.clone()));
            idx
        }),
        reported: HashMap::new(),
        window: settings.sensor.scan_window,
    };
    serve_metrics(&settings, &agent.counters.metrics).await?;
    let ring = agent.sensor.scan_events()?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the AsyncFd
    // (which owns the ring buffer) lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let reason = agent.run_loop(&settings, &mut ring).await?;
    info!(reason, "stopping: detaching, then exporting what is left");
    agent.finish(&mut ring, export, stop_tx).await
}

/// The exporter and its task, when exporting (see export.rs): batches go to the spool, the task
/// sends them.
fn start_export(
    settings: &Settings,
    sensor: &Sensor,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(Arc<Exporter>, JoinHandle<()>)>> {
    let Some(opts) = &settings.export else {
        return Ok(None);
    };
    let ifaces: Vec<_> = sensor
        .attachments
        .iter()
        .map(|a| (a.iface.clone(), a.ifindex, a.xdp_mode, a.tc_mode))
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if opts.urls.iter().any(|u| u.starts_with("http://")) {
        warn!(
            urls = ?opts.urls,
            "exporting without TLS: the sensor key and flow records travel in clear text"
        );
    }
    let ex = Exporter::new(opts, export::host_context(&ifaces), kernel)?;
    info!(
        urls = ?opts.urls,
        spool = %opts.spool_dir.display(),
        spool_max_mb = opts.spool_max_bytes >> 20,
        instance = ex.instance_id(),
        "exporting to the control plane"
    );
    let task = tokio::spawn(ex.clone().run(opts.clone(), stop, SHUTDOWN_GRACE));
    Ok(Some((ex, task)))
}

/// Serves /metrics when asked for (or on the default address, if it is free).
async fn serve_metrics(settings: &Settings, m: &metrics::Metrics) -> anyhow::Result<()> {
    let Some(addr) = settings.metrics_listen else {
        return Ok(());
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            info!(%addr, "Prometheus metrics at http://{addr}/metrics");
            tokio::spawn(metrics::serve(l, m.clone()));
        }
        Err(e) if settings.metrics_listen_explicit => {
            anyhow::bail!("cannot serve metrics on {addr} (--metrics-listen): {e}");
        }
        Err(e) => {
            warn!(%addr, error = %e, "cannot serve metrics on the default address; going on without (--metrics-listen to choose one)")
        }
    }
    Ok(())
}

impl Agent {
    /// The loop; returns why it stopped.
    async fn run_loop(
        &mut self,
        settings: &Settings,
        ring: &mut Ring,
    ) -> anyhow::Result<&'static str> {
        let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.export_interval,
            settings.export_interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clock_tick = tokio::time::interval(sensor::CLOCK_TICK);
        clock_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut auth_tick = tokio::time::interval(Duration::from_secs(1));
        auth_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    guard?.clear_ready();
                    self.read_events(ring);
                }
                _ = clock_tick.tick() => self.sensor.tick_clock()?,
                _ = auth_tick.tick(), if self.auth_log.is_some() => self.read_logins(),
                _ = tick.tick() => self.export(false)?,
                _ = sigint.recv() => return Ok("SIGINT"),
                _ = sigterm.recv() => return Ok("SIGTERM"),
                _ = &mut until => return Ok("--duration elapsed"),
            }
            if self.out.closed() {
                return Ok("stdout closed");
            }
        }
    }

    /// Detaches, exports what is left, and gives the exporter its grace period.
    async fn finish(
        mut self,
        ring: &mut Ring,
        export: Option<(Arc<Exporter>, JoinHandle<()>)>,
        stop: tokio::sync::watch::Sender<bool>,
    ) -> anyhow::Result<()> {
        // Detach first so nothing more arrives, then empty both tables and the ring buffer.
        self.sensor.detach_programs();
        self.read_events(ring);
        // The last lines of the SSH log, too.
        self.read_logins();
        // Both tables (the active one, then the other), then every conversation still open.
        for flush_all in [false, true] {
            self.export(flush_all)?;
        }
        self.out.flush();
        if let Some((ex, task)) = export {
            info!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "sending what the control plane has not acknowledged yet"
            );
            let _ = stop.send(true);
            // The task keeps to its grace period; this bound only guards against a stuck
            // transport.
            if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), task)
                .await
                .is_err()
            {
                warn!("the export did not stop in time; unacknowledged batches stay in the spool");
            }
            // The final word on what reached the control plane.
            self.print_stats();
            let st = ex.stats();
            info!(
                spool_batches = st.spool.batches,
                batches_acked = st.batches_acked,
                spool_dropped_records = st.spool.dropped_records,
                "export stopped"
            );
        }
        info!(
            flow_records = self.counters.flow_records,
            scan_events = self.counters.scan_records,
            "stopped"
        );
        Ok(())
    }
}
