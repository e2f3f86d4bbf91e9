//! Flows, top-N, coverage gaps, sensors and health.

use std::net::IpAddr;

use std::collections::HashMap;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{Api, ApiError, DEFAULT_LIMIT, MAX_LIMIT, blocking, now_ns, parse_time, rfc3339};
use crate::{
    model::Source,
    store::{FlowCursor, FlowQuery},
};

/// Liveness, and what the operator should know at a glance: 200 when the stores answer, 503
/// (with the same body) when the state store does not. No detail of a failure here: this
/// answers without credentials, and the log has it.
pub(super) async fn health(State(api): State<Api>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (ok, body) = report(&api).await;
    let code = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// What health answers: (whether every store and the bus answer, the body). The metrics are
/// made from the same body.
pub(super) async fn report(api: &Api) -> (bool, Value) {
    use crate::listen::STATS;
    use std::sync::atomic::Ordering::Relaxed;
    let store = api.stores.clone();
    let flows = blocking(move || store.flows.ping()).await;
    let flows_ok = match &flows {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e.message, "health: the flow store does not answer");
            false
        }
    };
    let store = api.stores.clone();
    let counts = blocking(move || store.state.notification_counts()).await;
    let mut total = crate::store::Counts::default();
    let state_ok = match &counts {
        Ok(counts) => {
            for (_, c) in counts {
                total.pending += c.pending;
                total.delivered += c.delivered;
                total.failed += c.failed;
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "health: the state store does not answer");
            false
        }
    };
    // This replica's part: the leases it holds, and in cluster mode the bus and its lag.
    let (store, me) = (api.stores.clone(), api.opts.replica.clone());
    let now = now_ns();
    let leases: Vec<String> = blocking(move || store.state.leases())
        .await
        .map(|ls| {
            ls.into_iter()
                .filter(|l| l.holder == me && l.until_ns > now)
                .map(|l| l.name)
                .collect()
        })
        .unwrap_or_default();
    let (bus, bus_ok) = match &api.opts.bus {
        None => (Value::Null, true),
        Some(bus) => {
            let relay = &crate::grpc::relay::STATS;
            let lag = within_2s(bus.writers_lag()).await;
            let detect = within_2s(bus.detectors_lag()).await;
            if let Err(e) = &lag {
                tracing::warn!(error = %format!("{e:#}"), "health: the bus does not answer");
            }
            (
                json!({
                    "status": if lag.is_ok() { "ok" } else { "unreachable" },
                    "batches_waiting": lag.as_ref().ok().map(|l| l.0),
                    "batches_with_writers": lag.as_ref().ok().map(|l| l.1),
                    "batches_waiting_for_detectors": detect.as_ref().ok().map(|l| l.0),
                    "batches_with_detectors": detect.as_ref().ok().map(|l| l.1),
                    "detectors": crate::grpc::detectors::share(),
                    "relay": {
                        "stored": relay.stored.load(Relaxed),
                        "retried": relay.retried.load(Relaxed),
                        "undecodable": relay.undecodable.load(Relaxed),
                    },
                }),
                lag.is_ok(),
            )
        }
    };
    let ok = state_ok && flows_ok && bus_ok;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "replica": api.opts.replica,
        "leases": leases,
        "bus": bus,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": api.started.elapsed().as_secs(),
        "state_store": if state_ok { "ok" } else { "unreachable" },
        "flow_store": if flows_ok { "ok" } else { "unreachable" },
        "alerts_waiting": crate::alerts::waiting(),
        "alerts_dropped": crate::alerts::DROPPED.load(Relaxed),
        "notifications": total,
        "https_handshakes_failed": STATS.failed_handshakes.load(Relaxed),
        "logins_refused": {
            "waiting": api.logins.stats.throttled.load(Relaxed),
            "busy": api.logins.stats.busy.load(Relaxed),
        },
        "logins_failed": api.logins.stats.failed.load(Relaxed),
        "connections_refused": {
            "http": STATS.refused_http.load(Relaxed),
            "grpc": STATS.refused_grpc.load(Relaxed),
        },
    });
    (ok, body)
}

/// `f`, or an error if it takes over 2 s (health answers within seconds even when the bus
/// does not).
async fn within_2s<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(std::time::Duration::from_secs(2), f)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the bus did not answer within 2 s")))
}

pub(super) async fn sensors(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let store = api.stores.clone();
    let rows = blocking(move || store.state.sensors()).await?;
    let now = now_ns();
    let sensors: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            let health = if s.revoked {
                "revoked"
            } else {
                match s.last_heartbeat_unix_ns {
                    None => "never_connected",
                    Some(t) if now - t > super::STALE_AFTER_NS => "stale",
                    Some(_) => "ok",
                }
            };
            let parse = |c: &Option<String>| -> Value {
                c.as_deref()
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or(Value::Null)
            };
            let counters = parse(&s.kernel_counters);
            let host = parse(&s.host);
            let interfaces: Vec<Value> = host["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    json!({
                        "name": i["name"],
                        "addresses": i["addresses"],
                        "xdp_mode": i["xdp_mode"],
                        "tc_mode": i["tc_mode"],
                    })
                })
                .collect();
            json!({
                "name": s.name,
                "health": health,
                "created": rfc3339(s.created_unix_ns),
                "revoked": s.revoked,
                "instance_id": s.instance_id,
                "version": s.version,
                "kernel": s.kernel,
                "hostname": s.hostname,
                "first_seen": s.first_seen_unix_ns.map(rfc3339),
                "last_heartbeat": s.last_heartbeat_unix_ns.map(rfc3339),
                "replica": s.replica,
                "kernel_counters": counters,
                "agent_counters": parse(&s.agent_counters),
                "interfaces": interfaces,
                "k8s_node": host["k8s_node"],
            })
        })
        .collect();
    Ok(Json(json!({ "sensors": sensors })))
}

fn flow_query(p: &HashMap<String, String>) -> Result<FlowQuery, ApiError> {
    const KNOWN: [&str; 8] = [
        "ip", "port", "protocol", "since", "until", "source", "limit", "cursor",
    ];
    if let Some(k) = p.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: {})",
            KNOWN.join(", ")
        )));
    }
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        p.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("{name}: `{v}` is not a number")))
            })
            .transpose()
    };
    let limit = num("limit")?.unwrap_or(DEFAULT_LIMIT as u64);
    if limit == 0 || limit > MAX_LIMIT as u64 {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1 to {MAX_LIMIT}"
        )));
    }
    let q = FlowQuery {
        ip: p
            .get("ip")
            .map(|v| {
                v.parse::<IpAddr>()
                    .map_err(|_| ApiError::bad_request(format!("ip: `{v}` is not an address")))
            })
            .transpose()?,
        port: num("port")?
            .map(|v| u16::try_from(v).map_err(|_| ApiError::bad_request("port: 0 to 65535")))
            .transpose()?,
        protocol: num("protocol")?
            .map(|v| u8::try_from(v).map_err(|_| ApiError::bad_request("protocol: 0 to 255")))
            .transpose()?,
        since_ns: p.get("since").map(|v| parse_time("since", v)).transpose()?,
        until_ns: p.get("until").map(|v| parse_time("until", v)).transpose()?,
        source: p
            .get("source")
            .map(|v| match v.as_str() {
                "sensor" => Ok(Source::Sensor),
                "aws" => Ok(Source::Aws),
                "gcp" => Ok(Source::Gcp),
                "azure" => Ok(Source::Azure),
                _ => Err(ApiError::bad_request(format!(
                    "source: `{v}` is not one of sensor, aws, gcp, azure"
                ))),
            })
            .transpose()?,
        before: p
            .get("cursor")
            .map(|v| {
                FlowCursor::parse(v).ok_or_else(|| {
                    ApiError::bad_request(if v.parse::<i64>().is_ok() {
                        "cursor: a cursor of an earlier version (flows are now ordered by their \
                         time): start again from the first page"
                    } else {
                        "cursor: not a cursor from a previous page"
                    })
                })
            })
            .transpose()?,
        limit: limit as usize,
    };
    if let (Some(a), Some(b)) = (q.since_ns, q.until_ns)
        && b <= a
    {
        return Err(ApiError::bad_request("until must be after since"));
    }
    Ok(q)
}

pub(super) async fn flows(
    State(api): State<Api>,
    super::Params(params): super::Params,
) -> Result<Json<Value>, ApiError> {
    let q = flow_query(&params)?;
    let store = api.stores.clone();
    let limit = q.limit;
    let rows = blocking(move || store.flows.query_flows(&q)).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.cursor().text()))
        .flatten();
    let flows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("start".into(), rfc3339(r.start_ns));
                m.insert("end".into(), rfc3339(r.end_ns));
            }
            v
        })
        .collect();
    Ok(Json(json!({ "flows": flows, "next_cursor": next })))
}

/// Default window of `/api/v1/top`.
pub const TOP_DEFAULT_NS: i64 = 3_600_000_000_000;

pub(super) async fn top(
    State(api): State<Api>,
    super::Params(p): super::Params,
) -> Result<Json<Value>, ApiError> {
    use crate::store::{TopBy, TopGroup, TopQuery};
    const KNOWN: [&str; 6] = ["by", "group", "since", "until", "source", "limit"];
    if let Some(k) = p.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: {})",
            KNOWN.join(", ")
        )));
    }
    let by = match p.get("by").map_or("bytes", String::as_str) {
        "bytes" => TopBy::Bytes,
        "packets" => TopBy::Packets,
        "flows" => TopBy::Flows,
        v => {
            return Err(ApiError::bad_request(format!(
                "by: `{v}` is not one of bytes, packets, flows"
            )));
        }
    };
    let group = match p.get("group").map_or("src_ip", String::as_str) {
        "src_ip" => TopGroup::SrcIp,
        "dst_ip" => TopGroup::DstIp,
        "pair" => TopGroup::Pair,
        "dst_port" => TopGroup::DstPort,
        v => {
            return Err(ApiError::bad_request(format!(
                "group: `{v}` is not one of src_ip, dst_ip, pair, dst_port"
            )));
        }
    };
    let limit = match p.get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::bad_request("limit: must be 1 to 100"))?,
        None => 10,
    };
    let until = p.get("until").map(|v| parse_time("until", v)).transpose()?;
    let since = match p.get("since") {
        Some(v) => parse_time("since", v)?,
        None => until.unwrap_or_else(now_ns).saturating_sub(TOP_DEFAULT_NS),
    };
    let source = match p.get("source") {
        Some(v) => Some(Source::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "source: `{v}` is not one of sensor, aws, gcp, azure"
            ))
        })?),
        None => None,
    };
    let q = TopQuery {
        by,
        group,
        since_ns: since,
        until_ns: until,
        source,
        limit,
    };
    let store = api.stores.clone();
    let rows = blocking(move || store.flows.top(&q)).await?;
    Ok(Json(json!({
        "since": rfc3339(since),
        "until": until.map(rfc3339),
        "top": rows,
    })))
}

/// Default window of `/api/v1/coverage`.
pub const COVERAGE_DEFAULT_NS: i64 = 86_400_000_000_000;

pub(super) async fn coverage(
    State(api): State<Api>,
    super::Params(params): super::Params,
) -> Result<Json<Value>, ApiError> {
    if let Some(k) = params.keys().find(|k| k.as_str() != "since") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}` (known: since)"
        )));
    }
    let since = match params.get("since") {
        Some(v) => parse_time("since", v)?,
        None => now_ns() - COVERAGE_DEFAULT_NS,
    };
    let store = api.stores.clone();
    let gaps = blocking(move || {
        let watched = store.state.sensor_addresses()?;
        store.flows.coverage_gaps(since, &watched)
    })
    .await?;
    let gaps: Vec<Value> = gaps
        .into_iter()
        .map(|g| {
            json!({
                "ip": g.ip,
                "first_seen": rfc3339(g.first_seen_ns),
                "last_seen": rfc3339(g.last_seen_ns),
                "flows": g.flows,
                "observers": g.observers,
                "vpcs": g.vpcs,
            })
        })
        .collect();
    Ok(Json(json!({ "since": rfc3339(since), "gaps": gaps })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<FlowQuery, String> {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        flow_query(&m).map_err(|e| e.message)
    }

    #[test]
    fn flow_filters_are_parsed_and_checked() {
        let f = q(&[
            ("ip", "10.0.0.1"),
            ("port", "22"),
            ("protocol", "6"),
            ("since", "2026-11-28T10:00:00Z"),
            ("until", "1795863600"),
            ("source", "aws"),
            ("limit", "50"),
            ("cursor", "1795860000123456789_1234"),
        ])
        .expect("valid");
        assert_eq!(f.ip, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!((f.port, f.protocol, f.limit), (Some(22), Some(6), 50));
        assert_eq!(f.since_ns, Some(1_795_860_000_000_000_000));
        assert_eq!(f.until_ns, Some(1_795_863_600_000_000_000));
        let at = FlowCursor {
            end_ns: 1_795_860_000_123_456_789,
            id: 1234,
        };
        assert_eq!((f.source, f.before), (Some(Source::Aws), Some(at)));
        assert_eq!(FlowCursor::parse(&at.text()), Some(at));
        assert_eq!(q(&[]).expect("defaults").limit, DEFAULT_LIMIT);
        for (bad, msg) in [
            (("ip", "10.0.0.300"), "ip: `10.0.0.300` is not an address"),
            (("port", "70000"), "port: 0 to 65535"),
            (
                ("cursor", "1234"),
                "cursor: a cursor of an earlier version (flows are now ordered by their time): \
                 start again from the first page",
            ),
            (
                ("cursor", "12_x"),
                "cursor: not a cursor from a previous page",
            ),
            (
                ("cursor", "12_-5"),
                "cursor: not a cursor from a previous page",
            ),
            (("cursor", "_"), "cursor: not a cursor from a previous page"),
            (("limit", "0"), "limit: must be 1 to 1000"),
            (("limit", "5000"), "limit: must be 1 to 1000"),
            (
                ("source", "oracle"),
                "source: `oracle` is not one of sensor, aws, gcp, azure",
            ),
            (
                ("since", "yesterday"),
                "since: `yesterday` is neither RFC 3339 (2026-11-28T10:00:00Z) nor Unix seconds",
            ),
            (
                ("ports", "22"),
                "unknown parameter `ports` (known: ip, port, protocol, since, until, source, limit, cursor)",
            ),
        ] {
            assert_eq!(q(&[bad]).err().as_deref(), Some(msg), "{bad:?}");
        }
        assert_eq!(
            q(&[("since", "1795860000"), ("until", "1795860000")])
                .err()
                .as_deref(),
            Some("until must be after since")
        );
        // Past 2262 a time is its far end, not a wrap into the past that would select all.
        let far = q(&[("since", "9999-12-31T23:59:59Z")]).expect("far future");
        assert_eq!(far.since_ns, Some(i64::MAX));
    }
}
