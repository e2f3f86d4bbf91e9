//! Prometheus metrics on a local port (`--metrics-listen`, default 127.0.0.1:9469): every kernel
//! counter, the agent's counters, and the export's state (spool size, lag, connection). The
//! values are the snapshot of the last export interval, the same as the `stats` line.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::export::ExportStats;

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Kernel counters by name (monotonic, except the `pending` gauge).
    pub kernel: Vec<(String, u64)>,
    /// Agent counters by name (monotonic).
    pub agent: Vec<(String, u64)>,
    /// Conversations open in the agent's flow cache.
    pub open_flows: u64,
    /// Flow-table entries read by the last drain, and how long it took.
    pub last_drain_entries: u64,
    pub last_drain_us: u64,
    pub export: Option<ExportStats>,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Mutex<Snapshot>>);

impl Metrics {
    pub fn set(&self, s: Snapshot) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String");
        out
    }
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.snapshot();
        for (name, v) in &s.kernel {
            let metric = format!("picket_kernel_{name}");
            if name.contains("pending") {
                gauge(
                    &mut e,
                    &metric,
                    "kernel flow-table entries not drained yet",
                    *v as i64,
                )?;
            } else {
                counter(&mut e, &metric, "kernel counter (summed over CPUs)", *v)?;
            }
        }
        for (name, v) in &s.agent {
            counter(&mut e, &format!("picket_agent_{name}"), "agent counter", *v)?;
        }
        gauge(
            &mut e,
            "picket_agent_open_flows",
            "conversations in the agent's flow cache, not exported yet",
            s.open_flows as i64,
        )?;
        gauge(
            &mut e,
            "picket_agent_last_drain_entries",
            "kernel flow-table entries read by the last drain",
            s.last_drain_entries as i64,
        )?;
        gauge(
            &mut e,
            "picket_agent_last_drain_microseconds",
            "duration of the last drain of the kernel tables",
            s.last_drain_us as i64,
        )?;
        if let Some(x) = s.export {
            gauge(
                &mut e,
                "picket_export_connected",
                "1 when connected to the control plane",
                x.connected as i64,
            )?;
            gauge(
                &mut e,
                "picket_export_spool_bytes",
                "bytes of batches waiting in the spool",
                x.spool.bytes as i64,
            )?;
            gauge(
                &mut e,
                "picket_export_spool_batches",
                "batches waiting in the spool",
                x.spool.batches as i64,
            )?;
            gauge(
                &mut e,
                "picket_export_lag_milliseconds",
                "age of the oldest unacknowledged batch",
                x.lag_ms as i64,
            )?;
            counter(
                &mut e,
                "picket_export_batches_acked",
                "batches the control plane acknowledged",
                x.batches_acked,
            )?;
            counter(
                &mut e,
                "picket_export_batches_duplicate",
                "replayed batches the control plane already had",
                x.batches_duplicate,
            )?;
            counter(
                &mut e,
                "picket_export_spool_dropped_batches",
                "batches dropped because the spool was full",
                x.spool.dropped_batches,
            )?;
            counter(
                &mut e,
                "picket_export_spool_dropped_records",
                "records dropped because the spool was full",
                x.spool.dropped_records,
            )?;
            counter(
                &mut e,
                "picket_export_connects",
                "successful connections to the control plane",
                x.connects,
            )?;
            counter(
                &mut e,
                "picket_export_connect_failures",
                "failed connection attempts",
                x.connect_failures,
            )?;
        }
        Ok(())
    }
}

/// Serves GET /metrics on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    use axum::{Router, http::header, routing::get};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";

/// Parses `--metrics-listen`: an address, or `off`.
pub fn parse_listen(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| {
        anyhow::anyhow!("--metrics-listen `{s}`: {e} (an address such as 127.0.0.1:9469, or `off`)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_agent_and_export_values_are_exposed() {
        let m = Metrics::default();
        m.set(Snapshot {
            kernel: vec![
                ("packets_seen".into(), 42),
                ("flow_entries_evicted_or_pending".into(), 3),
            ],
            agent: vec![("flow_records".into(), 7)],
            open_flows: 5,
            last_drain_entries: 11,
            last_drain_us: 250,
            export: Some(ExportStats {
                connected: true,
                batches_acked: 9,
                ..Default::default()
            }),
        });
        let t = m.render();
        assert!(
            t.contains("# TYPE picket_kernel_packets_seen counter"),
            "{t}"
        );
        assert!(t.contains("picket_kernel_packets_seen_total 42"), "{t}");
        assert!(
            t.contains("# TYPE picket_kernel_flow_entries_evicted_or_pending gauge"),
            "{t}"
        );
        assert!(t.contains("picket_agent_flow_records_total 7"), "{t}");
        assert!(t.contains("picket_agent_open_flows 5"), "{t}");
        assert!(t.contains("picket_agent_last_drain_entries 11"), "{t}");
        assert!(
            t.contains("picket_agent_last_drain_microseconds 250"),
            "{t}"
        );
        assert!(t.contains("picket_export_connected 1"), "{t}");
        assert!(t.contains("picket_export_batches_acked_total 9"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn listen_address_or_off() {
        assert_eq!(parse_listen("off").expect("off"), None);
        assert!(parse_listen("127.0.0.1:9469").expect("addr").is_some());
        assert!(parse_listen("localhost").is_err());
    }
}
