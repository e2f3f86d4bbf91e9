//! Export to the control plane over gRPC (picket.v1): records become batches in the on-disk spool
//! (see `spool.rs`); one task registers, streams the spooled batches in order with a bounded
//! window of unacknowledged ones (backpressure), deletes each on its acknowledgement, sends
//! heartbeats, and reconnects with backoff, replaying whatever was not acknowledged.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use picket_proto::v1::{
    self as pb, ExportBatch, HeartbeatRequest, HostContext, RegisterRequest,
    sensor_ingest_client::SensorIngestClient,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tracing::{info, warn};

use crate::{
    records::{FlowRecord, ProbeRecord, ScanRecord},
    spool::{Spool, SpoolStats},
};

/// Records per batch: keeps every message far below the control plane's 16 MiB limit.
pub const MAX_RECORDS_PER_BATCH: usize = 20_000;
/// Batches sent and not yet acknowledged.
const WINDOW: usize = 16;
/// ... and at most this many encoded bytes (at least one batch): each batch in flight is held
/// decoded in memory, so the window bounds the agent's memory as well as the control plane's.
const WINDOW_BYTES: usize = 4 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ExportOptions {
    /// The control plane's URLs: one, or a cluster's replicas, tried in turn.
    pub urls: Vec<String>,
    pub key: String,
    /// PEM of the CA that signed the control plane's certificate (None: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ExportOptions")
            .field("urls", &self.urls)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("custom_ca", &self.ca_pem.is_some())
            .field("mutual_tls", &self.client_identity.is_some())
            .finish_non_exhaustive()
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

pub fn flow(r: &FlowRecord) -> pb::FlowRecord {
    pb::FlowRecord {
        iface: r.iface.clone(),
        src_ip: ip_bytes(r.src_ip),
        dst_ip: ip_bytes(r.dst_ip),
        src_port: r.src_port.into(),
        dst_port: r.dst_port.into(),
        protocol: r.protocol.into(),
        packets: r.packets,
        bytes: r.bytes,
        reverse_packets: r.reverse_packets,
        reverse_bytes: r.reverse_bytes,
        tcp_flags: r.tcp_flags.into(),
        reverse_tcp_flags: r.reverse_tcp_flags.into(),
        start_unix_ns: r.start_unix_ns,
        end_unix_ns: r.end_unix_ns,
        observed: r.observed.into(),
        initiator_by: r.initiator_by.into(),
        partial: r.partial.unwrap_or("").into(),
        src_pod: r.src_pod.as_ref().map(pod),
        dst_pod: r.dst_pod.as_ref().map(pod),
        end_reason: r.end_reason.into(),
    }
}

fn pod(p: &crate::k8s::Pod) -> pb::PodContext {
    pb::PodContext {
        namespace: p.namespace.clone(),
        pod: p.pod.clone(),
        labels: p
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        node: p.node.clone(),
    }
}

pub fn scan(r: &ScanRecord) -> pb::ScanEvent {
    pb::ScanEvent {
        iface: r.iface.clone(),
        src_ip: ip_bytes(r.src_ip),
        distinct_ports: r.distinct_ports,
        distinct_hosts: r.distinct_hosts,
        probe: r.probe.into(),
        probes: r.probes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        // Filled with the contacts, from the flow cache (below).
        probe_bytes: 0,
        last_dst_ip: ip_bytes(r.last_dst_ip),
        last_dst_port: r.last_dst_port.into(),
        reason: r.reason.iter().map(|s| s.to_string()).collect(),
        start_unix_ns: r.start_unix_ns,
        end_unix_ns: r.end_unix_ns,
        // Filled in from the flow cache when the event is exported.
        answered_contacts: 0,
        unanswered_contacts: 0,
        replied_contacts: 0,
    }
}

pub fn probe(r: &ProbeRecord) -> pb::ProbeRecord {
    pb::ProbeRecord {
        iface: r.iface.clone(),
        src_ip: ip_bytes(r.src_ip),
        protocol: r.protocol.into(),
        probe: r.probe.into(),
        packets: r.packets,
        bytes: r.bytes,
        start_unix_ns: r.start_unix_ns,
        end_unix_ns: r.end_unix_ns,
    }
}

pub fn auth(r: &crate::authlog::AuthRecord) -> pb::AuthEvent {
    pb::AuthEvent {
        time_unix_ns: r.time_unix_ns,
        service: r.service.into(),
        outcome: r.outcome.into(),
        user: r.user.clone(),
        src_ip: ip_bytes(r.src_ip),
        src_port: r.src_port.into(),
    }
}

/// Fills batches of at most `MAX_RECORDS_PER_BATCH` records, in order.
struct Batcher<'a> {
    out: Vec<ExportBatch>,
    cur: ExportBatch,
    n: usize,
    host: &'a HostContext,
    now_unix_ns: u64,
}

impl Batcher<'_> {
    fn extend<T>(&mut self, items: Vec<T>, field: fn(&mut ExportBatch) -> &mut Vec<T>) {
        for x in items {
            field(&mut self.cur).push(x);
            self.n += 1;
            if self.n == MAX_RECORDS_PER_BATCH {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.n > 0 {
            let mut b = std::mem::take(&mut self.cur);
            b.created_unix_ns = self.now_unix_ns;
            b.host = Some(self.host.clone());
            self.out.push(b);
            self.n = 0;
        }
    }
}

/// Splits one export interval's records into batches of at most `MAX_RECORDS_PER_BATCH`.
pub fn batches(
    flows: Vec<pb::FlowRecord>,
    scans: Vec<pb::ScanEvent>,
    probes: Vec<pb::ProbeRecord>,
    auth: Vec<pb::AuthEvent>,
    host: &HostContext,
    now_unix_ns: u64,
) -> Vec<ExportBatch> {
    let mut b = Batcher {
        out: Vec::new(),
        cur: ExportBatch::default(),
        n: 0,
        host,
        now_unix_ns,
    };
    b.extend(flows, |x| &mut x.flows);
    b.extend(scans, |x| &mut x.scans);
    b.extend(probes, |x| &mut x.probes);
    b.extend(auth, |x| &mut x.auth);
    b.flush();
    b.out
}

/// Agent-side export counters (also in the stats line and heartbeats).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportStats {
    pub spool: SpoolStats,
    pub batches_acked: u64,
    pub batches_duplicate: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub stream_errors: u64,
    /// Age of the oldest batch not yet acknowledged (0 when none).
    pub lag_ms: u64,
    pub connected: bool,
}

/// Shared between the agent's main loop and the export task.
pub struct Exporter {
    spool: Mutex<Spool>,
    oldest_unacked: Mutex<HashMap<u64, Instant>>,
    stats: Mutex<ExportStats>,
    appended: Notify,
    /// Kernel and agent counters for the next heartbeat.
    pub counters: Mutex<(HashMap<String, u64>, HashMap<String, u64>)>,
    pub host: Mutex<HostContext>,
    kernel: String,
}

impl Exporter {
    pub fn new(
        opts: &ExportOptions,
        host: HostContext,
        kernel: String,
    ) -> anyhow::Result<Arc<Self>> {
        let spool = Spool::open(&opts.spool_dir, opts.spool_max_bytes)?;
        let stats = ExportStats {
            spool: spool.stats(),
            ..Default::default()
        };
        Ok(Arc::new(Exporter {
            spool: Mutex::new(spool),
            oldest_unacked: Mutex::new(HashMap::new()),
            stats: Mutex::new(stats),
            appended: Notify::new(),
            counters: Mutex::new((HashMap::new(), HashMap::new())),
            host: Mutex::new(host),
            kernel,
        }))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes batches to the spool (durably) and wakes the sender.
    pub fn push(&self, batches: Vec<ExportBatch>) -> anyhow::Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut spool = Self::lock(&self.spool);
        for b in batches {
            let id = spool.append(b)?;
            Self::lock(&self.oldest_unacked).insert(id, Instant::now());
        }
        Self::lock(&self.stats).spool = spool.stats();
        drop(spool);
        self.appended.notify_one();
        Ok(())
    }

    pub fn stats(&self) -> ExportStats {
        let mut s = *Self::lock(&self.stats);
        s.lag_ms = Self::lock(&self.oldest_unacked)
            .values()
            .min()
            .map(|t| t.elapsed().as_millis() as u64)
            .unwrap_or(0);
        s
    }

    pub fn instance_id(&self) -> String {
        Self::lock(&self.spool).instance_id().to_string()
    }

    fn acked(&self, id: u64, duplicate: bool) -> anyhow::Result<()> {
        let mut spool = Self::lock(&self.spool);
        spool.ack(id)?;
        Self::lock(&self.oldest_unacked).remove(&id);
        let mut st = Self::lock(&self.stats);
        st.spool = spool.stats();
        st.batches_acked += 1;
        if duplicate {
            st.batches_duplicate += 1;
        }
        Ok(())
    }

    /// Runs until `stop` turns true and the spool is empty, or until `stop` turns true and
    /// `grace` has passed (what is left stays in the spool for the next start).
    pub async fn run(
        self: Arc<Self>,
        opts: ExportOptions,
        mut stop: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut deadline: Option<tokio::time::Instant> = None;
        // The URL in use, and failures in a row: with several URLs (a cluster's replicas) a
        // failure moves to the next one after the shortest wait, and the wait grows only once
        // every URL has failed in turn.
        let (mut at, mut failed_in_row) = (0usize, 0usize);
        let n = opts.urls.len().max(1);
        loop {
            if *stop.borrow() {
                let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                if Self::lock(&self.spool).first().is_none() || tokio::time::Instant::now() >= d {
                    break;
                }
            }
            let url = opts.urls[at % n].clone();
            match self.session(&opts, &url, &mut stop, grace).await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    failed_in_row = 0;
                }
                Err(e) => {
                    Self::lock(&self.stats).connected = false;
                    failed_in_row += 1;
                    let wait_for = if n > 1 && failed_in_row % n != 0 {
                        BACKOFF_MIN
                    } else {
                        backoff
                    };
                    let next = (n > 1).then(|| opts.urls[(at + 1) % n].as_str());
                    warn!(error = %format!("{e:#}"), url, next, retry_in_ms = wait_for.as_millis() as u64, "export to the control plane interrupted; batches stay in the spool");
                    let wait = tokio::time::sleep(wait_for);
                    tokio::pin!(wait);
                    tokio::select! {
                        _ = &mut wait => {}
                        _ = stop.changed() => {}
                    }
                    if wait_for == backoff {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    at = (at + 1) % n;
                }
            }
        }
        Self::lock(&self.stats).connected = false;
        let left = Self::lock(&self.spool).stats();
        if left.batches > 0 {
            warn!(
                batches = left.batches,
                bytes = left.bytes,
                "stopping with unacknowledged batches: they stay in the spool and are sent at the next start"
            );
        }
    }

    async fn connect(&self, opts: &ExportOptions, url: &str) -> anyhow::Result<Channel> {
        let ep = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("bad control plane URL `{url}`"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let ep = if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &opts.ca_pem {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &opts.client_identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            ep.tls_config(tls).context("TLS configuration")?
        } else {
            ep
        };
        let ch = ep.connect().await.map_err(|e| {
            Self::lock(&self.stats).connect_failures += 1;
            anyhow::anyhow!("cannot connect to {url}: {e}")
        })?;
        Ok(ch)
    }

    /// One connection: register, then stream and heartbeat until an error or the end.
    async fn session(
        &self,
        opts: &ExportOptions,
        url: &str,
        stop: &mut watch::Receiver<bool>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let ch = self.connect(opts, url).await?;
        let bearer: MetadataValue<_> = format!("Bearer {}", opts.key.trim())
            .parse()
            .context("the sensor key is not valid in a header")?;
        let mut client =
            SensorIngestClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            })
            .max_encoding_message_size(32 << 20);
        let instance_id = self.instance_id();
        let host = Self::lock(&self.host).clone();
        let reg = client
            .register(RegisterRequest {
                instance_id: instance_id.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                kernel: self.kernel.clone(),
                host: Some(host),
            })
            .await
            .map_err(|s| anyhow::anyhow!("register: {}: {}", s.code(), s.message()))?
            .into_inner();
        {
            let mut spool = Self::lock(&self.spool);
            // The control plane has everything up to here: nothing to resend, no id to reuse.
            spool.ack_through(reg.last_stored_batch_id)?;
            spool.ids_after(reg.last_stored_batch_id)?;
            let mut st = Self::lock(&self.stats);
            st.spool = spool.stats();
            st.connects += 1;
            st.connected = true;
        }
        info!(
            url,
            sensor = reg.sensor_name,
            instance = instance_id,
            "connected to the control plane"
        );
        let heartbeat_every = Duration::from_secs(reg.heartbeat_interval_s.clamp(1, 300).into());

        let (tx, rx) = mpsc::channel::<ExportBatch>(WINDOW);
        let mut acks = client
            .export(ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("export: {}: {}", s.code(), s.message()))?
            .into_inner();
        // (batch id, encoded size) of what was sent and not yet acknowledged.
        let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
        let mut last_sent = 0u64;
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        loop {
            // Fill the window, oldest first.
            while in_flight.len() < WINDOW
                && (in_flight.is_empty()
                    || in_flight.iter().map(|(_, n)| n).sum::<usize>() < WINDOW_BYTES)
            {
                let next = {
                    let spool = Self::lock(&self.spool);
                    spool
                        .next_after(last_sent)
                        .map(|id| spool.read(id).map(|b| (id, b)))
                        .transpose()?
                };
                let Some((id, Some(batch))) = next else {
                    break;
                };
                let size = prost::Message::encoded_len(&batch);
                // The transport may hold the batch back (HTTP/2 flow control): never wait past
                // the shutdown deadline for it.
                let sent = match stop_deadline {
                    Some(d) => match tokio::time::timeout_at(d, tx.send(batch)).await {
                        Ok(r) => r,
                        Err(_) => return Ok(()),
                    },
                    None => {
                        tokio::select! {
                            r = tx.send(batch) => r,
                            _ = stop.changed() => break,
                        }
                    }
                };
                sent.map_err(|_| anyhow::anyhow!("the export stream closed"))?;
                in_flight.push_back((id, size));
                last_sent = id;
            }
            if *stop.borrow() {
                let d = *stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                if in_flight.is_empty() && Self::lock(&self.spool).next_after(last_sent).is_none() {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= d {
                    return Ok(());
                }
            }
            let stop_wait = async {
                match stop_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => {
                        let _ = stop.changed().await;
                    }
                }
            };
            tokio::select! {
                ack = acks.message() => {
                    match ack {
                        Ok(Some(a)) => {
                            in_flight.retain(|(id, _)| *id != a.batch_id);
                            self.acked(a.batch_id, a.duplicate)?;
                        }
                        Ok(None) => anyhow::bail!("the control plane ended the export stream"),
                        Err(s) => {
                            Self::lock(&self.stats).stream_errors += 1;
                            anyhow::bail!("export stream: {}: {}", s.code(), s.message());
                        }
                    }
                }
                _ = self.appended.notified() => {}
                _ = heartbeat.tick() => {
                    let (kernel, mut agent) = Self::lock(&self.counters).clone();
                    let st = self.stats();
                    agent.insert("spool_dropped_batches".into(), st.spool.dropped_batches);
                    agent.insert("spool_dropped_records".into(), st.spool.dropped_records);
                    agent.insert("batches_acked".into(), st.batches_acked);
                    agent.insert("connects".into(), st.connects);
                    let req = HeartbeatRequest {
                        instance_id: instance_id.clone(),
                        sent_unix_ns: crate::records::Clock::now().unix_ns(crate::records::Clock::monotonic_ns()),
                        kernel_counters: kernel,
                        agent_counters: agent,
                        spool_bytes: st.spool.bytes,
                        spool_batches: st.spool.batches,
                        export_lag_ms: st.lag_ms,
                    };
                    match tokio::time::timeout(Duration::from_secs(10), client.heartbeat(req)).await {
                        Ok(r) => { r.map_err(|s| anyhow::anyhow!("heartbeat: {}: {}", s.code(), s.message()))?; }
                        Err(_) => anyhow::bail!("heartbeat: no answer within 10 s"),
                    }
                }
                _ = stop_wait => {}
            }
        }
    }
}

/// Host context for registration and batches: hostname, machine id and the monitored
/// interfaces with their addresses and MACs.
pub fn host_context(ifaces: &[(String, u32, &'static str, &'static str)]) -> HostContext {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut interfaces: Vec<pb::Interface> = ifaces
        .iter()
        .map(|(name, index, xdp, tc)| pb::Interface {
            name: name.clone(),
            index: *index,
            xdp_mode: (*xdp).into(),
            tc_mode: (*tc).into(),
            ..Default::default()
        })
        .collect();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(i) = interfaces.iter_mut().find(|i| i.name == a.interface_name) else {
                continue;
            };
            let Some(addr) = a.address else { continue };
            if let Some(link) = addr.as_link_addr() {
                if let Some(mac) = link.addr() {
                    i.mac = mac
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":");
                }
            } else if let Some(v4) = addr.as_sockaddr_in() {
                let prefix = a
                    .netmask
                    .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()))
                    .unwrap_or(32);
                i.addresses.push(format!("{}/{prefix}", v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let prefix = a
                    .netmask
                    .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones()))
                    .unwrap_or(128);
                i.addresses.push(format!("{}/{prefix}", v6.ip()));
            }
        }
    }
    HostContext {
        hostname,
        machine_id,
        interfaces,
        k8s_node: std::env::var("NODE_NAME").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_split_into_bounded_batches_in_order() {
        let flows: Vec<pb::FlowRecord> = (0..MAX_RECORDS_PER_BATCH as u64 * 2 + 5)
            .map(|i| pb::FlowRecord {
                packets: i,
                ..Default::default()
            })
            .collect();
        let scans = vec![pb::ScanEvent::default(); 3];
        let host = HostContext {
            hostname: "h".into(),
            ..Default::default()
        };
        let b = batches(flows, scans, vec![], vec![], &host, 7);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].flows.len(), MAX_RECORDS_PER_BATCH);
        assert_eq!(b[0].flows[0].packets, 0);
        assert_eq!(b[1].flows[0].packets, MAX_RECORDS_PER_BATCH as u64);
        assert_eq!((b[2].flows.len(), b[2].scans.len()), (5, 3));
        assert!(
            b.iter()
                .all(|x| x.created_unix_ns == 7
                    && x.host.as_ref().is_some_and(|h| h.hostname == "h"))
        );
        assert!(batches(vec![], vec![], vec![], vec![], &host, 1).is_empty());
    }

    #[test]
    fn addresses_travel_as_4_or_16_bytes() {
        assert_eq!(ip_bytes("10.0.0.1".parse().expect("ip")), vec![10, 0, 0, 1]);
        assert_eq!(ip_bytes("fd00::1".parse().expect("ip")).len(), 16);
    }
}
