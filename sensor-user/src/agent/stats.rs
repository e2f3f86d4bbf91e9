//! The agent's counters, and the `kind: "stats"` line that reports them with the kernel's and
//! the export's (also what /metrics serves and what the next heartbeat carries).

use tracing::error;

use super::Agent;
use crate::{metrics, records::Clock};

#[derive(Default)]
pub(super) struct AgentCounters {
    pub(super) flow_records: u64,
    pub(super) probe_records: u64,
    pub(super) scan_records: u64,
    pub(super) scan_events_duplicate: u64,
    pub(super) scan_events_malformed: u64,
    pub(super) drains: u64,
    pub(super) last_drain_entries: u64,
    pub(super) last_drain_us: u64,
    /// Conversations in the agent's flow cache, not exported yet.
    pub(super) open_flows: u64,
    /// Login events read from --auth-log.
    pub(super) auth_events: u64,
    /// What /metrics serves (updated with every stats line).
    pub(super) metrics: metrics::Metrics,
}

impl Agent {
    /// One `kind: "stats"` line: every kernel counter, the agent's, and the export's; the export
    /// also gets the counters for its next heartbeat.
    pub(super) fn print_stats(&mut self) {
        let counters = match self.sensor.counters() {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reading kernel counters failed");
                Vec::new()
            }
        };
        let agent = &self.counters;
        let mut kernel = serde_json::Map::new();
        for (k, v) in &counters {
            kernel.insert((*k).into(), (*v).into());
        }
        let export_stats = self.exporter.as_ref().map(|ex| {
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
            export: self.exporter.as_ref().map(|ex| ex.stats()),
        });
        self.out.line(&serde_json::json!({
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
                "batched_drain": self.sensor.batched_drain,
            },
            "export": export_stats,
        }));
        self.out.flush();
    }
}
