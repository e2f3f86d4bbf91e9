//! `cargo xtask cluster-demo`: cluster mode working on one machine. Starts a private NATS
//! (JetStream), ClickHouse and PostgreSQL and three control-plane replicas that share them,
//! two real sensors in the two namespaces of a lab (each given every replica's address), runs
//! a real nmap SYN scan between the namespaces, and shows the one alert it raises as every
//! replica's REST API answers it. Then it streams a UDP flood, kills (SIGKILL) the replica one
//! sensor is attached to in the middle, and shows the sensor moving to another replica and the
//! shared flow store holding every frame once. Everything is torn down at the end.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Lab, Sensor,
    cluster::{Cluster, Replica},
};

const FRAMES: u64 = 60_000;

/// GET `path` from a replica's REST API with an API token.
fn get(r: &Replica, token: &str, path: &str) -> Value {
    let url = format!("http://{}{path}", r.http);
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
        .get(&url)
        .bearer_auth(token)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// Waits up to `limit` for `f` to give something.
fn wait<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The replica each sensor is attached to, as the API says: (sensor, replica).
fn attachments(r: &Replica, token: &str) -> Vec<(String, String)> {
    get(r, token, "/api/v1/sensors")["sensors"]
        .as_array()
        .expect("sensors")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["replica"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

fn main() {
    println!("== Picket cluster demo ==");
    let lab = Lab::new();
    println!(
        "lab: namespace {} ({}) --veth-- namespace {} ({})",
        lab.a, lab.ip_a, lab.b, lab.ip_b
    );
    let cluster = Cluster::start();
    println!(
        "servers (private, loopback): NATS JetStream on :{}, ClickHouse on :{}, PostgreSQL on its Unix socket",
        cluster.nats.port, cluster.ch.http_port
    );
    let keys = [
        cluster.add_sensor("sensor-a"),
        cluster.add_sensor("sensor-b"),
    ];
    let token = cluster
        .cli("tokens", &["add", "demo", "--role", "admin"])
        .trim()
        .to_string();
    let mut replicas: Vec<Replica> = ["r0", "r1", "r2"]
        .iter()
        .map(|n| cluster.replica(n))
        .collect();
    for r in &replicas {
        println!(
            "replica {} : sensors -> {}, API and dashboard -> http://{}/",
            r.id(),
            r.grpc,
            r.http
        );
    }

    // Each sensor gets every replica's address, starting with a different one: sensor-a with
    // r0, sensor-b with r1. The namespaces reach the replicas through forwarders of this
    // process (loopback at both ends).
    let mut sensors = Vec::new();
    for (i, (ns, iface)) in [(&lab.a, &lab.va), (&lab.b, &lab.vb)]
        .into_iter()
        .enumerate()
    {
        let key_file = cluster.dir.0.join(format!("sensor-{i}.key"));
        std::fs::write(&key_file, &keys[i]).expect("key file");
        let urls: Vec<String> = (0..3)
            .map(|k| {
                let r = &replicas[(i + k) % 3];
                format!(
                    "http://127.0.0.1:{}",
                    tests::servers::forward_into(ns, r.grpc.port())
                )
            })
            .collect();
        let mut flags = tests::export_flags(
            iface,
            &urls[0],
            &key_file,
            &cluster.dir.0.join(format!("spool-{i}")),
        );
        for u in &urls[1..] {
            flags.extend(["--controlplane".to_string(), u.clone()]);
        }
        let mut s = Sensor::start(ns, &tests::strs(&flags));
        s.wait_for_log("connected to the control plane", Duration::from_secs(20));
        sensors.push(s);
    }
    let by_id = |id: &str| replicas.iter().position(|r| r.id() == id);
    let attached = wait(Duration::from_secs(30), "both sensors attached", || {
        let a = attachments(&replicas[0], &token);
        (a.len() == 2 && a.iter().all(|(_, r)| by_id(r).is_some())).then_some(a)
    });
    for (s, r) in &attached {
        println!("{s} is attached to replica {r}");
    }

    println!(
        "\n-- nmap -sS from {} over 1,000 ports of {} (both sensors see it) --",
        lab.ip_a, lab.ip_b
    );
    tests::nmap_syn_scan(&lab.a, &lab.ip_b, &["-p", "1-1000"]);
    let alerts = |r: &Replica| -> Vec<Value> {
        get(r, &token, "/api/v1/alerts?type=port_scan")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait(Duration::from_secs(60), "port_scan alert", || {
        (!alerts(&replicas[0]).is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let mut ids = Vec::new();
    for r in &replicas {
        let a = alerts(r);
        for x in &a {
            println!(
                "replica {} answers: alert #{} {} ({}) from {} against {}",
                r.id(),
                x["id"],
                x["type"].as_str().unwrap_or_default(),
                x["severity"].as_str().unwrap_or_default(),
                x["source"].as_str().unwrap_or_default(),
                x["targets"]
            );
        }
        ids.push(a.iter().map(|x| x["id"].clone()).collect::<Vec<_>>());
    }
    assert!(
        ids.iter().all(|i| i.len() == 1 && *i == ids[0]),
        "one alert, the same on every replica: {ids:?}"
    );
    println!("one alert, the same on all three replicas");

    // A flood from a to b; the replica sensor-a is attached to dies 4 s in.
    let (_, victim_id) = attached
        .iter()
        .find(|(s, _)| s == "sensor-a")
        .cloned()
        .expect("sensor-a attached");
    let victim = by_id(&victim_id).expect("victim");
    println!(
        "\n-- {FRAMES} UDP frames from {} to {} at 5,000/s; replica {victim_id} (sensor-a's) is killed 4 s in --",
        lab.ip_a, lab.ip_b
    );
    let flood = tests::udp_flood_a_to_b(&lab, &cluster.dir.0, FRAMES, "5000pps");
    std::thread::sleep(Duration::from_secs(4));
    let killed_at = Instant::now();
    replicas[victim].kill();
    println!("replica {victim_id} killed (SIGKILL)");
    flood.join().expect("trafgen");
    let alive: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let moved = wait(
        Duration::from_secs(30),
        "sensor-a on another replica",
        || {
            attachments(&replicas[alive[0]], &token)
                .into_iter()
                .find(|(s, r)| s == "sensor-a" && *r != victim_id)
        },
    );
    println!(
        "sensor-a moved to replica {} (seen {:.1} s after the kill, at its next heartbeat)",
        moved.1,
        killed_at.elapsed().as_secs_f64()
    );
    // What the dead replica's writer held comes to another after the bus's ack wait (30 s).
    // Both sensors saw the flood (sensor-a as it left, sensor-b as it arrived): each sensor's
    // records must hold every frame once.
    let flows = cluster.flows();
    let seen_by = |sensor: &str| {
        tests::servers::stored_udp_seen_by(
            flows.as_ref(),
            Some(sensor),
            &lab.ip_a,
            &lab.ip_b,
            4000,
            5000,
        )
    };
    let whole = (FRAMES, FRAMES * 46);
    wait(Duration::from_secs(90), "every frame stored", || {
        (seen_by("sensor-a").0 >= FRAMES && seen_by("sensor-b").0 >= FRAMES).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    for s in ["sensor-a", "sensor-b"] {
        let (packets, bytes) = seen_by(s);
        println!(
            "ClickHouse holds {packets} packets ({bytes} bytes) of the flood as {s} saw it: {FRAMES} sent"
        );
        assert_eq!((packets, bytes), whole, "{s}: every frame once");
    }
    println!("nothing lost, nothing doubled");
    for i in &alive {
        let h = get(&replicas[*i], &token, "/api/v1/health");
        println!(
            "replica {}: status {}, detector partitions {} of {}, leases {}",
            replicas[*i].id(),
            h["status"],
            h["bus"]["detectors"]["partitions"],
            h["bus"]["detectors"]["of"],
            h["leases"]
        );
    }
    for s in sensors {
        let _ = s.stop();
    }
    let grpc: Vec<SocketAddr> = alive.iter().map(|i| replicas[*i].grpc).collect();
    println!("\nthe demo tears down its lab, replicas and servers (survivors were at {grpc:?})");
}
