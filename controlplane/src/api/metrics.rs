//! `GET /metrics`: what `/api/v1/health` says, in the Prometheus (OpenMetrics) text format, for
//! a scraper: the stores' and the bus's state, the bus's lag, this replica's leases and its
//! part of the detectors, what its relay did, and what was refused or dropped. Made from the
//! same report as health, so the two never disagree; like health, it answers without
//! credentials and carries counts, never data.

use std::fmt;

use axum::{extract::State, http::header, response::IntoResponse};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use serde_json::Value;

use super::Api;

pub(super) async fn metrics(State(api): State<Api>) -> axum::response::Response {
    let (_, report) = super::flows::report(&api).await;
    let mut out = String::new();
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(Report(report)));
    match prometheus_client::encoding::text::encode(&mut out, &reg) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "the metrics could not be written");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Health's report, as metrics.
#[derive(Debug)]
struct Report(Value);

fn num(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_u64().map(|n| n as i64))
}

fn up(v: &Value) -> i64 {
    i64::from(v.as_str() == Some("ok"))
}

/// One gauge: a value per label set, or one value without labels (an empty label set).
fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], i64)],
) -> fmt::Result {
    family(e, name, help, MetricType::Gauge, values)
}

fn family(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    values: &[(&[(&str, &str)], i64)],
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in values {
        let encode = |m: prometheus_client::encoding::MetricEncoder<'_>| match kind {
            MetricType::Counter => ConstCounter::new(*v as u64).encode(m),
            _ => ConstGauge::new(*v).encode(m),
        };
        if labels.is_empty() {
            // Without labels: one value, and nothing else in the family.
            return encode(m);
        }
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One counter, without labels (absent when the report has no such value).
fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: &Value) -> fmt::Result {
    let Some(n) = v.as_u64() else { return Ok(()) };
    let c = ConstCounter::new(n);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl prometheus_client::collector::Collector for Report {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let r = &self.0;
        let replica = r["replica"].as_str().unwrap_or_default();
        let version = r["version"].as_str().unwrap_or_default();
        gauge(
            &mut e,
            "picket_controlplane_info",
            "this control plane: its replica name and version",
            &[(&[("replica", replica), ("version", version)], 1)],
        )?;
        gauge(
            &mut e,
            "picket_controlplane_up",
            "whether each dependency answers (1) or not (0)",
            &[
                (&[("dependency", "state_store")], up(&r["state_store"])),
                (&[("dependency", "flow_store")], up(&r["flow_store"])),
            ],
        )?;
        gauge(
            &mut e,
            "picket_controlplane_uptime_seconds",
            "seconds since this control plane started",
            &[(&[], num(&r["uptime_s"]).unwrap_or(0))],
        )?;
        gauge(
            &mut e,
            "picket_alerts_waiting",
            "alert observations waiting for the state store",
            &[(&[], num(&r["alerts_waiting"]).unwrap_or(0))],
        )?;
        counter(
            &mut e,
            "picket_alerts_dropped",
            "alert observations dropped because too many waited for the state store",
            &r["alerts_dropped"],
        )?;
        let n = &r["notifications"];
        gauge(
            &mut e,
            "picket_notifications",
            "notification messages in the outbox, by state",
            &[
                (&[("state", "pending")], num(&n["pending"]).unwrap_or(0)),
                (&[("state", "delivered")], num(&n["delivered"]).unwrap_or(0)),
                (&[("state", "failed")], num(&n["failed"]).unwrap_or(0)),
            ],
        )?;
        let leases: Vec<&str> = r["leases"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let held: Vec<[(&str, &str); 1]> = leases.iter().map(|l| [("lease", *l)]).collect();
        gauge(
            &mut e,
            "picket_lease_held",
            "the leases this control plane holds (work it does for all replicas)",
            &held.iter().map(|l| (&l[..], 1)).collect::<Vec<_>>(),
        )?;
        counter(
            &mut e,
            "picket_logins_failed",
            "dashboard logins refused for a wrong name or password",
            &r["logins_failed"],
        )?;
        counter(
            &mut e,
            "picket_https_handshakes_failed",
            "TLS handshakes of the dashboard listener that failed",
            &r["https_handshakes_failed"],
        )?;
        let refused = &r["connections_refused"];
        family(
            &mut e,
            "picket_connections_refused",
            "connections refused because a listener was at its cap, by listener",
            MetricType::Counter,
            &[
                (&[("listener", "http")], num(&refused["http"]).unwrap_or(0)),
                (&[("listener", "grpc")], num(&refused["grpc"]).unwrap_or(0)),
            ],
        )?;
        let bus = &r["bus"];
        if bus.is_null() {
            return Ok(());
        }
        gauge(
            &mut e,
            "picket_bus_up",
            "whether the bus (NATS JetStream) answers",
            &[(&[], up(&bus["status"]))],
        )?;
        let mut lag = Vec::new();
        for (consumer, state, key) in [
            ("writers", "waiting", "batches_waiting"),
            ("writers", "taken", "batches_with_writers"),
            ("detectors", "waiting", "batches_waiting_for_detectors"),
            ("detectors", "taken", "batches_with_detectors"),
        ] {
            if let Some(v) = num(&bus[key]) {
                lag.push(([("consumer", consumer), ("state", state)], v));
            }
        }
        gauge(
            &mut e,
            "picket_bus_messages",
            "messages on the bus by consumer: waiting to be taken, or taken and not yet acknowledged",
            &lag.iter().map(|(l, v)| (&l[..], *v)).collect::<Vec<_>>(),
        )?;
        let relay = &bus["relay"];
        counter(
            &mut e,
            "picket_relay_batches_stored",
            "sensor batches this replica's writer took from the bus and stored",
            &relay["stored"],
        )?;
        counter(
            &mut e,
            "picket_relay_batches_retried",
            "sensor batches handed back to the bus because they could not be stored yet",
            &relay["retried"],
        )?;
        counter(
            &mut e,
            "picket_relay_messages_undecodable",
            "messages on the bus that are not sensor batches (rejected, never stored)",
            &relay["undecodable"],
        )?;
        let d = &bus["detectors"];
        let partitions = d["partitions"].as_array().map_or(0, Vec::len) as i64;
        gauge(
            &mut e,
            "picket_detector_partitions",
            "the sensor detectors' partitions: held by this replica, its share, and all",
            &[
                (&[("of", "held")], partitions),
                (&[("of", "share")], num(&d["share"]).unwrap_or(0)),
                (&[("of", "all")], num(&d["of"]).unwrap_or(0)),
            ],
        )?;
        gauge(
            &mut e,
            "picket_replicas",
            "control-plane replicas running, as this one counts them",
            &[(&[], num(&d["replicas"]).unwrap_or(0))],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(v: Value) -> String {
        let mut out = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(Report(v)));
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        out
    }

    #[test]
    fn a_replicas_report_becomes_metrics() {
        let text = render(serde_json::json!({
            "status": "ok", "replica": "cp-1", "version": "0.1.0", "uptime_s": 42,
            "state_store": "ok", "flow_store": "unreachable",
            "alerts_waiting": 3, "alerts_dropped": 1,
            "notifications": {"pending": 2, "delivered": 7, "failed": 0},
            "leases": ["notifications", "detectors/3"],
            "logins_failed": 4, "https_handshakes_failed": 0,
            "connections_refused": {"http": 0, "grpc": 5},
            "bus": {
                "status": "ok", "batches_waiting": 11, "batches_with_writers": 12,
                "batches_waiting_for_detectors": 13, "batches_with_detectors": null,
                "relay": {"stored": 100, "retried": 2, "undecodable": 0},
                "detectors": {"replicas": 3, "share": 3, "partitions": [1, 3], "of": 8},
            },
        }));
        for line in [
            "picket_controlplane_info{replica=\"cp-1\",version=\"0.1.0\"} 1",
            "picket_controlplane_up{dependency=\"state_store\"} 1",
            "picket_controlplane_up{dependency=\"flow_store\"} 0",
            "picket_alerts_dropped_total 1",
            "picket_notifications{state=\"delivered\"} 7",
            "picket_lease_held{lease=\"detectors/3\"} 1",
            "picket_connections_refused_total{listener=\"grpc\"} 5",
            "picket_replicas 3\n",
            "picket_bus_up 1\n",
            "picket_bus_up 1",
            "picket_bus_messages{consumer=\"writers\",state=\"waiting\"} 11",
            "picket_bus_messages{consumer=\"detectors\",state=\"waiting\"} 13",
            "picket_relay_batches_stored_total 100",
            "picket_detector_partitions{of=\"held\"} 2",
            "picket_detector_partitions{of=\"share\"} 3",
            "picket_replicas 3",
            "# TYPE picket_relay_batches_retried counter",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        // What health could not say is absent, not zero.
        assert!(
            !text.contains("state=\"taken\",consumer=\"detectors\""),
            "{text}"
        );
        assert!(
            !text.contains("picket_bus_messages{consumer=\"detectors\",state=\"taken\"}"),
            "{text}"
        );
    }

    #[test]
    fn a_single_control_plane_has_no_bus_metrics() {
        let text = render(serde_json::json!({
            "replica": "one", "version": "0.1.0", "state_store": "ok", "flow_store": "ok",
            "leases": ["notifications", "maintenance"], "bus": null,
        }));
        assert!(
            text.contains("picket_lease_held{lease=\"maintenance\"} 1"),
            "{text}"
        );
        assert!(!text.contains("picket_bus_"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
