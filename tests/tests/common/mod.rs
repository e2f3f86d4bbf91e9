//! What the cloud flow-log tests share: running `picket-controlplane import` and reading what it
//! left in the stores, through the stores' own interfaces, so that the same checks hold on the
//! embedded store and, under `with-servers`, on ClickHouse and PostgreSQL.
#![allow(dead_code, reason = "each test file uses its own part")]

use std::{path::Path, process::Output};

use controlplane::{
    model::{Alert, AlertQuery, Source},
    store::{FlowQuery, FlowRow},
};
use tests::ControlPlane;

pub fn import(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    ControlPlane::import(data, args, stdin.map(str::as_bytes))
}

/// The import's one-line summary, once it is known to have succeeded.
pub fn summary(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout.trim().to_string()
}

/// Every flow the control plane on `data` stored, oldest end first (keyset-paged as the API
/// does).
pub fn flows(data: &Path) -> Vec<FlowRow> {
    let store = tests::servers::open_flows(data);
    let mut q = FlowQuery {
        limit: 1000,
        ..Default::default()
    };
    let mut all = Vec::new();
    loop {
        let rows = store.query_flows(&q).expect("query the flow store");
        let Some(last) = rows.last() else { break };
        q.before = Some(last.cursor());
        all.extend(rows);
    }
    all.reverse();
    all
}

/// The flows of `data` that `keep` keeps.
pub fn flows_where(data: &Path, keep: impl Fn(&FlowRow) -> bool) -> Vec<FlowRow> {
    flows(data).into_iter().filter(|f| keep(f)).collect()
}

/// The one flow of `data` that `keep` keeps.
pub fn the_flow(data: &Path, keep: impl Fn(&FlowRow) -> bool) -> FlowRow {
    let mut found = flows_where(data, keep);
    assert_eq!(found.len(), 1, "{found:#?}");
    found.remove(0)
}

/// (flows, packets, bytes, reverse packets, reverse bytes) of `flows`.
pub fn totals(flows: &[FlowRow]) -> (usize, i64, i64, i64, i64) {
    flows.iter().fold((0, 0, 0, 0, 0), |t, f| {
        (
            t.0 + 1,
            t.1 + f.packets.unwrap_or(0),
            t.2 + f.bytes.unwrap_or(0),
            t.3 + f.reverse_packets.unwrap_or(0),
            t.4 + f.reverse_bytes.unwrap_or(0),
        )
    })
}

/// How many AWS flows the control plane on `data` stored.
pub fn stored_aws(data: &Path) -> u64 {
    tests::servers::open_flows(data)
        .source_totals(Source::Aws)
        .expect("flow totals")
        .records
}

/// The alerts of the control plane on `data`, by id.
pub fn alerts(data: &Path) -> Vec<Alert> {
    let mut all = tests::servers::open_state(data)
        .alerts(&AlertQuery {
            limit: 1000,
            ..Default::default()
        })
        .expect("alerts");
    all.sort_by_key(|a| a.id);
    all
}

/// Alert `id` as the API shows it (its JSON).
pub fn alert_json(data: &Path, id: i64) -> serde_json::Value {
    let a = tests::servers::open_state(data)
        .alert(id)
        .expect("alert")
        .unwrap_or_else(|| panic!("no alert #{id}"));
    serde_json::to_value(a).expect("alert JSON")
}

/// The one alert of type `kind` of the control plane on `data`, as the API shows it.
pub fn the_alert(data: &Path, kind: &str) -> serde_json::Value {
    let mut of: Vec<Alert> = alerts(data)
        .into_iter()
        .filter(|a| a.kind == kind)
        .collect();
    assert_eq!(of.len(), 1, "alerts of type {kind}: {of:#?}");
    serde_json::to_value(of.remove(0)).expect("alert JSON")
}

/// Whether the control plane on `data` keeps its flows on ClickHouse (under `with-servers`).
pub fn on_clickhouse(data: &Path) -> bool {
    tests::servers::store_env(data)
        .iter()
        .any(|(k, _)| *k == "PICKET_FLOW_STORE")
}
