//! Sensor batches of arbitrary values, as the gRPC front receives them: converted (or refused,
//! never a panic), stored, then a maintenance pass (rollups, retention) and the API's queries
//! over everything stored so far. None may fail, and sums saturate rather than wrap.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use controlplane::{
    grpc::convert,
    store::{FlowQuery, FlowStore as _, Retention, SqliteStore, TopBy, TopGroup, TopQuery},
};
use libfuzzer_sys::fuzz_target;
use picket_proto::v1::{ExportBatch, FlowRecord};

/// One store per process, kept across inputs: what earlier inputs left is part of the test.
fn store() -> &'static Arc<SqliteStore> {
    static STORE: OnceLock<Arc<SqliteStore>> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("picket-fuzz-ingest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SqliteStore::open(&dir).expect("store")
    })
}

/// An address of 4 or 16 bytes mostly, sometimes of another length (to be refused).
fn address(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let len = *u.choose(&[4usize, 4, 16, 16, 0, 5])?;
    u.bytes(len).map(<[u8]>::to_vec)
}

/// A counter that is often extreme.
fn counter(u: &mut Unstructured<'_>) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u64::MAX,
        1 => 1 << 63,
        2 => u.int_in_range(0..=1000)?,
        _ => u64::arbitrary(u)?,
    })
}

fn record(u: &mut Unstructured<'_>) -> arbitrary::Result<FlowRecord> {
    Ok(FlowRecord {
        iface: String::arbitrary(u)?,
        src_ip: address(u)?,
        dst_ip: address(u)?,
        src_port: u32::arbitrary(u)?,
        dst_port: u32::arbitrary(u)?,
        protocol: u32::arbitrary(u)?,
        packets: counter(u)?,
        bytes: counter(u)?,
        reverse_packets: counter(u)?,
        reverse_bytes: counter(u)?,
        tcp_flags: u32::arbitrary(u)?,
        reverse_tcp_flags: u32::arbitrary(u)?,
        start_unix_ns: counter(u)?,
        end_unix_ns: counter(u)?,
        observed: String::arbitrary(u)?,
        initiator_by: String::arbitrary(u)?,
        partial: String::arbitrary(u)?,
        src_pod: None,
        dst_pod: None,
        end_reason: String::arbitrary(u)?,
    })
}

fn batch(u: &mut Unstructured<'_>) -> arbitrary::Result<ExportBatch> {
    let n = u.int_in_range(0..=6)?;
    Ok(ExportBatch {
        instance_id: "fuzz".into(),
        batch_id: u.int_in_range(0..=1 << 20)?,
        flows: (0..n)
            .map(|_| record(u))
            .collect::<arbitrary::Result<_>>()?,
        ..Default::default()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(b) = batch(&mut Unstructured::new(data)) else {
        return;
    };
    let Ok(b) = convert::batch("fuzz-sensor", b) else {
        return;
    };
    let s = store();
    let now = 1_800_000_000_000_000_000;
    for r in s.store_batches(&[&b], now).expect("store") {
        r.expect("batch stored");
    }
    s.maintain(now, &Retention::default()).expect("maintenance");
    let t = s.flow_totals(None).expect("totals");
    for v in [t.packets, t.bytes, t.reverse_packets, t.reverse_bytes] {
        assert!(v <= 9_200_000_000_000_000_000, "{t:?}");
    }
    for group in [
        TopGroup::SrcIp,
        TopGroup::DstIp,
        TopGroup::Pair,
        TopGroup::DstPort,
    ] {
        for by in [TopBy::Bytes, TopBy::Packets, TopBy::Flows] {
            s.top(&TopQuery {
                by,
                group,
                since_ns: i64::MIN,
                until_ns: None,
                source: None,
                limit: 10,
            })
            .expect("top");
        }
    }
    s.query_flows(&FlowQuery {
        limit: 100,
        ..Default::default()
    })
    .expect("flows");
});
