use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;
use std::sync::Arc;

use sensor_user::{
    authlog, check,
    config::{self, Args, Settings},
    export::{self, Exporter},
    flowcache::FlowCache,
    k8s,
    metrics::{self, Metrics},
    records::{self, Clock},
    sensor::{self, Sensor},
};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    // The flow maps of a drain are large and short-lived. With glibc's default, its mmap
    // threshold rises after the first one is freed and later ones stay on the heap, so the
    // peak RSS ratchets up; a fixed threshold returns them to the kernel when freed (measured:
    // 64 -> 55 MiB at 100k active flows, 107 -> 85 MiB under a churn of 20k new flows/s).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    let args = Args::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("PICKET_LOG").unwrap_or_else(|_| "info".into())
    };
    match args.log_format {
        config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(io::stderr)
            .with_env_filter(filter())
            .init(),
        config::LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_env_filter(filter())
            .init(),
    }
    if let Some(config::Command::Check { ifaces }) = &args.command {
        let (items, ready) = check::report(ifaces);
        check::print(&items, ready);
        return if ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("picket-sensor: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picket-sensor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-sensor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes JSON lines to stdout (with --stdout); a closed stdout (EPIPE) ends the run cleanly.
struct Out {
    w: io::BufWriter<io::Stdout>,
    enabled: bool,
    closed: bool,
}

impl Out {
    fn line<T: serde::Serialize>(&mut self, v: &T) {
        if self.closed || !self.enabled {
            return;
        }
        let r = serde_json::to_writer(&mut self.w, v)
            .map_err(io::Error::from)
            .and_then(|()| self.w.write_all(b"\n"));
        if let Err(e) = r {
            warn!(error = %e, "stdout closed; stopping");
            self.closed = true;
        }
    }
    fn flush(&mut self) {
        if !self.closed && self.w.flush().is_err() {
            self.closed = true;
        }
    }
}

/// How long a stopping sensor keeps sending unacknowledged batches (the rest stays spooled).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct AgentCounters {
    flow_records: u64,
    probe_records: u64,
    scan_records: u64,
    scan_events_duplicate: u64,
    scan_events_malformed: u64,
    drains: u64,
    last_drain_entries: u64,
    last_drain_us: u64,
    /// Conversations in the agent's flow cache, not exported yet.
    open_flows: u64,
    /// Login events read from --auth-log.
    auth_events: u64,
    /// What /metrics serves (updated with every stats line).
    metrics: Metrics,
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut sensor = Sensor::start(&settings.sensor)?;
    let names: HashMap<u32, String> = sensor
        .attachments
        .iter()
        .map(|a| (a.ifindex, a.iface.clone()))
        .collect();
    let iface_name = move |idx: u32| {
        names
            .get(&idx)
            .cloned()
            .or_else(|| sensor::ifname(idx))
            .unwrap_or_else(|| idx.to_string())
    };
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
    let ring = sensor.scan_events()?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the AsyncFd
    // (which owns the ring buffer) lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut out = Out {
        w: io::BufWriter::new(io::stdout()),
        enabled: settings.stdout,
        closed: false,
    };
    // Export: batches go to the spool, a task sends them (see export.rs).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let exporter = match &settings.export {
        Some(opts) => {
            let ifaces: Vec<_> = sensor
                .attachments
                .iter()
                .map(|a| (a.iface.clone(), a.ifindex, a.xdp_mode, a.tc_mode))
                .collect();
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if opts.url.starts_with("http://") {
                warn!(
                    url = opts.url,
                    "exporting without TLS: the sensor key and flow records travel in clear text"
                );
            }
            let ex = Exporter::new(opts, export::host_context(&ifaces), kernel)?;
            info!(
                url = opts.url,
                spool = %opts.spool_dir.display(),
                spool_max_mb = opts.spool_max_bytes >> 20,
                instance = ex.instance_id(),
                "exporting to the control plane"
            );
            let task = tokio::spawn(ex.clone().run(opts.clone(), stop_rx, SHUTDOWN_GRACE));
            Some((ex, task))
        }
        None => None,
    };
    let mut pending_scans: Vec<picket_proto::v1::ScanEvent> = Vec::new();
    let mut pending_auth: Vec<picket_proto::v1::AuthEvent> = Vec::new();
    let mut auth_log = match &settings.auth_log {
        Some(p) => {
            info!(source = %p.display(), "following the SSH log for login events");
            Some(authlog::AuthSource::open(p)?)
        }
        None => None,
    };
    let mut auth_tick = tokio::time::interval(Duration::from_secs(1));
    auth_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = FlowCache::new(settings.active_timeout, settings.idle_timeout);
    // In a Kubernetes pod with a service account: pods of this node, by IP.
    let pods = k8s::ApiConfig::from_env().map(|cfg| {
        info!(
            api = cfg.base,
            node = cfg.node,
            "Kubernetes enrichment on: flows get their pods"
        );
        let idx = k8s::PodIndex::default();
        tokio::spawn(k8s::run(cfg, idx.clone()));
        idx
    });
    let mut agent = AgentCounters::default();
    if let Some(addr) = settings.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                info!(%addr, "Prometheus metrics at http://{addr}/metrics");
                tokio::spawn(metrics::serve(l, agent.metrics.clone()));
            }
            Err(e) if settings.metrics_listen_explicit => {
                anyhow::bail!("cannot serve metrics on {addr} (--metrics-listen): {e}");
            }
            Err(e) => {
                warn!(%addr, error = %e, "cannot serve metrics on the default address; going on without (--metrics-listen to choose one)")
            }
        }
    }
    // (source, window start) of events already printed: at most one per source per window, even
    // if two CPUs raced to report the same source.
    let mut reported: HashMap<(IpAddr, u64), Instant> = HashMap::new();
    let window = settings.sensor.scan_window;

    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.export_interval,
        settings.export_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock_tick = tokio::time::interval(sensor::CLOCK_TICK);
    clock_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);

    let exporting = exporter.is_some();
    let mut read_events =
        |ring: &mut AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
         out: &mut Out,
         agent: &mut AgentCounters,
         pending: &mut Vec<picket_proto::v1::ScanEvent>| {
            let clock = Clock::now();
            let rb = ring.get_mut();
            while let Some(item) = aya::maps::RingBuf::next(rb) {
                let Some(ev) = sensor::parse_scan_event(&item) else {
                    agent.scan_events_malformed += 1;
                    continue;
                };
                let rec = records::scan_record(&ev, clock, iface_name(ev.ifindex));
                if reported
                    .insert((rec.src_ip, ev.window_start_ns), Instant::now())
                    .is_some()
                {
                    agent.scan_events_duplicate += 1;
                    continue;
                }
                info!(src = %rec.src_ip, ports = rec.distinct_ports, hosts = rec.distinct_hosts, probe = rec.probe, "scan event");
                out.line(&rec);
                if exporting {
                    pending.push(export::scan(&rec));
                }
                agent.scan_records += 1;
            }
            out.flush();
            reported.retain(|_, t| t.elapsed() < window * 2 + Duration::from_secs(1));
        };

    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                guard?.clear_ready();
                read_events(&mut ring, &mut out, &mut agent, &mut pending_scans);
            }
            _ = clock_tick.tick() => {
                sensor.tick_clock()?;
            }
            _ = auth_tick.tick(), if auth_log.is_some() => {
                let now = time::OffsetDateTime::now_utc();
                for line in auth_log.as_mut().map(|f| f.poll()).unwrap_or_default() {
                    if let Some(rec) = authlog::parse_line(&line, now) {
                        out.line(&rec);
                        agent.auth_events += 1;
                        if exporting {
                            pending_auth.push(export::auth(&rec));
                        }
                    }
                }
                out.flush();
            }
            _ = tick.tick() => {
                export(&mut sensor, &mut cache, false, &mut out, &mut agent, &iface_name, exporter.as_ref().map(|e| &e.0), &mut pending_scans, &mut pending_auth, pods.as_ref())?;
            }
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = &mut until => break "--duration elapsed",
        }
        if out.closed {
            break "stdout closed";
        }
    };
    info!(reason, "stopping: detaching, then exporting what is left");
    // Detach first so nothing more arrives, then empty both tables and the ring buffer.
    sensor.detach_programs();
    read_events(&mut ring, &mut out, &mut agent, &mut pending_scans);
    // The last lines of the SSH log, too.
    if let Some(f) = auth_log.as_mut() {
        let now = time::OffsetDateTime::now_utc();
        for rec in f.poll().iter().filter_map(|l| authlog::parse_line(l, now)) {
            out.line(&rec);
            agent.auth_events += 1;
            if exporting {
                pending_auth.push(export::auth(&rec));
            }
        }
    }
    let ex = exporter.as_ref().map(|e| &e.0);
    // Both tables (the active one, then the other), then every conversation still open.
    for flush_all in [false, true] {
        export(
            &mut sensor,
            &mut cache,
            flush_all,
            &mut out,
            &mut agent,
            &iface_name,
            ex,
            &mut pending_scans,
            &mut pending_auth,
            pods.as_ref(),
        )?;
    }
    out.flush();
    if let Some((ex, task)) = exporter {
        info!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "sending what the control plane has not acknowledged yet"
        );
        let _ = stop_tx.send(true);
        // The task keeps to its grace period; this bound only guards against a stuck transport.
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), task)
            .await
            .is_err()
        {
            warn!("the export did not stop in time; unacknowledged batches stay in the spool");
        }
        // The final word on what reached the control plane.
        print_stats(&sensor, &mut out, &agent, Some(&ex));
        let st = ex.stats();
        info!(
            spool_batches = st.spool.batches,
            batches_acked = st.batches_acked,
            spool_dropped_records = st.spool.dropped_records,
            "export stopped"
        );
    }
    info!(
        flow_records = agent.flow_records,
        scan_events = agent.scan_records,
        "stopped"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn export(
    sensor: &mut Sensor,
    cache: &mut FlowCache,
    flush_all: bool,
    out: &mut Out,
    agent: &mut AgentCounters,
    iface_name: &dyn Fn(u32) -> String,
    exporter: Option<&Arc<Exporter>>,
    pending_scans: &mut Vec<picket_proto::v1::ScanEvent>,
    pending_auth: &mut Vec<picket_proto::v1::AuthEvent>,
    pods: Option<&k8s::PodIndex>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Straight into the flow cache: only the drain's new flows are held on the side.
    let mut new = records::FlowMap::default();
    let d = sensor.drain(|k, t| cache.add_one(k, t, &mut new))?;
    cache.add_new(new);
    // What the agent knows of each pending scan event's contacts, before any expire.
    for ev in pending_scans.iter_mut() {
        let src = match ev.src_ip.len() {
            4 => sensor_common::v4_mapped(<[u8; 4]>::try_from(&ev.src_ip[..]).unwrap_or_default()),
            _ => <[u8; 16]>::try_from(&ev.src_ip[..]).unwrap_or_default(),
        };
        let c = cache.contacts_of(&src);
        (ev.answered_contacts, ev.unanswered_contacts, ev.probe_bytes) =
            (c.answered, c.unanswered, c.unanswered_bytes);
        ev.replied_contacts = c.replied;
    }
    let drain_time = t0.elapsed();
    let clock = Clock::now();
    let due = cache.expire(Clock::monotonic_ns(), flush_all);
    agent.open_flows = cache.len() as u64;
    let probes: Vec<_> = d
        .probes
        .iter()
        .map(|p| records::probe_record(p, clock, iface_name(p.ifindex)))
        .collect();
    for p in &probes {
        out.line(p);
    }
    let host = exporter.map(|ex| ex.host.lock().unwrap_or_else(|p| p.into_inner()).clone());
    // One batch's worth of records at a time, so that a burst of expiries (100k flows reaching
    // their active timeout together) never sits in memory as records and messages at once.
    let mut chunks = due.chunks(export::MAX_RECORDS_PER_BATCH);
    let mut first = true;
    while let Some(chunk) = chunks.next().or(first.then_some(&[][..])) {
        let mut recs: Vec<_> = chunk
            .iter()
            .map(|(c, why)| records::flow_record(c, clock, iface_name, why))
            .collect();
        if let Some(pods) = pods {
            for r in &mut recs {
                r.src_pod = pods.get(&r.src_ip);
                r.dst_pod = pods.get(&r.dst_ip);
            }
        }
        for r in &recs {
            out.line(r);
        }
        if let (Some(ex), Some(host)) = (exporter, &host) {
            let (scans, probes, auth) = if first {
                (
                    std::mem::take(pending_scans),
                    probes.iter().map(export::probe).collect(),
                    std::mem::take(pending_auth),
                )
            } else {
                Default::default()
            };
            let batches = export::batches(
                recs.iter().map(export::flow).collect(),
                scans,
                probes,
                auth,
                host,
                clock.unix_ns(Clock::monotonic_ns()),
            );
            // Written to the spool (durably) before anything else: from here on nothing is lost.
            ex.push(batches)?;
        }
        first = false;
    }
    agent.probe_records += d.probes.len() as u64;
    agent.flow_records += due.len() as u64;
    agent.drains += 1;
    agent.last_drain_entries = d.entries as u64;
    agent.last_drain_us = drain_time.as_micros() as u64;
    print_stats(sensor, out, agent, exporter);
    out.flush();
    Ok(())
}

/// One `kind: "stats"` line: every kernel counter, the agent's, and the export's; the export also
/// gets the counters for its next heartbeat.
fn print_stats(
    sensor: &Sensor,
    out: &mut Out,
    agent: &AgentCounters,
    exporter: Option<&Arc<Exporter>>,
) {
    let counters = match sensor.counters() {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "reading kernel counters failed");
            Vec::new()
        }
    };
    let mut kernel = serde_json::Map::new();
    for (k, v) in &counters {
        kernel.insert((*k).into(), (*v).into());
    }
    let export_stats = exporter.map(|ex| {
        let st = ex.stats();
        let mut c = ex.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.0 = counters.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        c.1 = [
            ("flow_records", agent.flow_records),
            ("probe_records", agent.probe_records),
            ("scan_events", agent.scan_records),
            ("drains", agent.drains),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        serde_json::json!({
            "connected": st.connected,
            "spool_batches": st.spool.batches,
            "spool_bytes": st.spool.bytes,
            "spool_dropped_batches": st.spool.dropped_batches,
            "spool_dropped_records": st.spool.dropped_records,
            "batches_spooled": st.spool.appended,
            "batches_acked": st.batches_acked,
            "batches_duplicate": st.batches_duplicate,
            "lag_ms": st.lag_ms,
            "connects": st.connects,
            "connect_failures": st.connect_failures,
            "stream_errors": st.stream_errors,
        })
    });
    agent.metrics.set(metrics::Snapshot {
        kernel: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        agent: vec![
            ("flow_records".into(), agent.flow_records),
            ("probe_records".into(), agent.probe_records),
            ("scan_events".into(), agent.scan_records),
            ("scan_events_duplicate".into(), agent.scan_events_duplicate),
            ("scan_events_malformed".into(), agent.scan_events_malformed),
            ("drains".into(), agent.drains),
            ("auth_events".into(), agent.auth_events),
        ],
        open_flows: agent.open_flows,
        last_drain_entries: agent.last_drain_entries,
        last_drain_us: agent.last_drain_us,
        export: exporter.map(|ex| ex.stats()),
    });
    out.line(&serde_json::json!({
        "kind": "stats",
        "time": Clock::now().rfc3339(Clock::monotonic_ns()),
        "kernel": kernel,
        "agent": {
            "flow_records": agent.flow_records,
            "probe_records": agent.probe_records,
            "scan_events": agent.scan_records,
            "scan_events_duplicate": agent.scan_events_duplicate,
            "scan_events_malformed": agent.scan_events_malformed,
            "auth_events": agent.auth_events,
            "drains": agent.drains,
            "last_drain_entries": agent.last_drain_entries,
            "open_flows": agent.open_flows,
            "last_drain_us": agent.last_drain_us,
            "batched_drain": sensor.batched_drain,
        },
        "export": export_stats,
    }));
    out.flush();
}
