//! `picket-bench --only cluster`: sensor batches end to end through replicas sharing NATS
//! JetStream, ClickHouse and PostgreSQL (every server on this machine), against the embedded
//! store's gRPC ingest measured in the same run; and how long a failover takes.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    Lab, TempDir,
    cluster::{Cluster, batch, sim_sensor},
};

/// (seconds until every batch was acknowledged, until every flow was stored, until the
/// detectors had taken every batch) for `sensors` simulated sensors sending `batches` batches
/// of `per` flows as fast as they are acknowledged, through `replicas` replicas.
fn through(replicas: usize, sensors: usize, batches: u64, per: usize) -> (f64, f64, f64) {
    let cluster = Cluster::start();
    let keys: Vec<String> = (0..sensors)
        .map(|i| cluster.add_sensor(&format!("sim-{i}")))
        .collect();
    let rs: Vec<_> = (0..replicas)
        .map(|i| cluster.replica(&format!("r{i}")))
        .collect();
    let addrs: Vec<_> = rs.iter().map(|r| r.grpc).collect();
    let all: Vec<Vec<_>> = (0..sensors)
        .map(|i| {
            let instance = format!("sim-{i}");
            (1..=batches).map(|b| batch(&instance, i, b, per)).collect()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = keys
            .into_iter()
            .zip(all)
            .enumerate()
            .map(|(i, (key, mine))| {
                tokio::spawn(sim_sensor(
                    addrs.clone(),
                    i % addrs.len(),
                    key,
                    mine,
                    Duration::ZERO,
                    acked.clone(),
                    Duration::from_secs(600),
                ))
            })
            .collect();
        for t in tasks {
            t.await.expect("sensor");
        }
    });
    let acked_s = t0.elapsed().as_secs_f64();
    let total = (sensors as u64) * batches * per as u64;
    while cluster.sensor_totals().0 < total {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "not all stored in 600 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored_s = t0.elapsed().as_secs_f64();
    assert_eq!(cluster.sensor_totals().0, total);
    let bus = rt
        .block_on(controlplane::bus::Bus::connect(
            &cluster.nats.url(),
            None,
            controlplane::detect::partition::PARTITIONS,
        ))
        .expect("bus");
    loop {
        let (waiting, _) = rt.block_on(bus.detectors_lag()).expect("detectors' lag");
        if waiting == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the detectors did not catch up in 600 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (acked_s, stored_s, t0.elapsed().as_secs_f64())
}

/// Seconds from a replica's SIGKILL to the first acknowledgement its sensors got from another
/// replica (the slowest of them), with `sensors` sensors over 3 replicas.
fn failover(sensors: usize) -> f64 {
    let cluster = Cluster::start();
    let keys: Vec<String> = (0..sensors)
        .map(|i| cluster.add_sensor(&format!("sim-{i}")))
        .collect();
    let mut rs: Vec<_> = (0..3).map(|i| cluster.replica(&format!("r{i}"))).collect();
    let addrs: Vec<_> = rs.iter().map(|r| r.grpc).collect();
    let (acked, streaming) = crate::cluster::sim_fleet(
        addrs,
        keys,
        100,
        200,
        Duration::from_millis(100),
        Duration::from_secs(300),
    );
    while acked.load(Ordering::Relaxed) < sensors as u64 * 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    rs[0].kill();
    let reports = streaming.join().expect("sensors");
    reports
        .iter()
        .filter_map(|r| r.resumed.first())
        .map(|t| t.duration_since(killed).as_secs_f64())
        .fold(0.0, f64::max)
}

pub fn section(report: &mut String, quick: bool) {
    let (sensors, batches, per) = (100usize, if quick { 3u64 } else { 10 }, 1000usize);
    let total = (sensors as u64 * batches * per as u64) as f64;
    writeln!(report, "### Cluster mode: replicas on NATS JetStream\n").ok();
    writeln!(
        report,
        "{sensors} simulated sensors x {batches} batches of {per} flows, sent as fast as they are acknowledged. Every server (NATS, ClickHouse, PostgreSQL) and every replica runs on this machine. \"acked\" is the rate until the last batch was acknowledged to its sensor (stored by the bus); \"stored\" until the last flow was in ClickHouse; \"detected\" until the detectors had taken the last batch. The reference is the embedded store's gRPC ingest (stored and detected) in the same run.\n"
    )
    .ok();
    writeln!(
        report,
        "| round | embedded, k flows/s | 1 replica: acked / stored / detected, k flows/s | 3 replicas: acked / stored / detected, k flows/s | stored, ratio to embedded (1 / 3 replicas) |\n|---|---|---|---|---|"
    )
    .ok();
    for round in 1..=if quick { 1 } else { 3 } {
        let lab = Lab::new();
        let dir = TempDir::new("cluster-ref");
        let data = dir.0.join("cp");
        let (cp, secs) = crate::grpc_ingest(&lab, &data, sensors, batches, per);
        cp.stop();
        drop(lab);
        let embedded = total / secs / 1e3;
        let (a1, s1, d1) = through(1, sensors, batches, per);
        let (a3, s3, d3) = through(3, sensors, batches, per);
        let k = |s: f64| total / s / 1e3;
        writeln!(
            report,
            "| {round} | {embedded:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.2} / {:.2} |",
            k(a1),
            k(s1),
            k(d1),
            k(a3),
            k(s3),
            k(d3),
            k(s1) / embedded,
            k(s3) / embedded
        )
        .ok();
    }
    let f = failover(20);
    writeln!(
        report,
        "\nFailover: 20 sensors over 3 replicas, one batch of 200 flows every 100 ms each; replica 0 killed (SIGKILL): its sensors' first acknowledgement from another replica came {f:.2} s after the kill (the slowest of them).\n"
    )
    .ok();
}
