//! Kubernetes enrichment against recorded API responses (tests/data/k8s) served over HTTP from
//! inside the lab: flows get the namespace, pod, labels and node of their ends.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use tests::{Lab, Sensor, TempDir, in_netns};

/// A fake API server on 127.0.0.1:8001 in `ns`: the recorded pod list for list requests, the
/// recorded watch events (then the end of the stream) for watches; 401 without the token.
/// Returns the request lines it saw.
fn fake_api(
    ns: &str,
    list: String,
    watch: String,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let l = TcpListener::bind("127.0.0.1:8001").expect("bind fake API");
        l.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            c.set_nonblocking(false).expect("blocking");
            let mut r = BufReader::new(c.try_clone().expect("clone"));
            let mut request = String::new();
            r.read_line(&mut request).expect("request line");
            let mut authorized = false;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).expect("header") == 0 || h == "\r\n" {
                    break;
                }
                if let Some((name, value)) = h.split_once(':') {
                    authorized |= name.eq_ignore_ascii_case("authorization")
                        && value.trim() == "Bearer test-token";
                }
            }
            log.lock().expect("log").push(request.trim().to_string());
            let reply = if !authorized {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else if request.contains("watch=1") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{watch}"
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{list}",
                    list.len()
                )
            };
            let _ = c.write_all(reply.as_bytes());
        }
    });
    ready.recv().expect("fake API ready");
    seen
}

#[test]
fn flows_carry_the_pods_of_their_ends() {
    let lab = Lab::new();
    let dir = TempDir::new("k8s");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/k8s");
    let ip6_b: std::net::IpAddr = lab.ip6_b.parse().expect("ip6");
    let list = std::fs::read_to_string(data.join("podlist.json"))
        .expect("podlist")
        .replace("{IP_A}", &lab.ip_a)
        .replace("{IP_B}", &lab.ip_b)
        .replace("{IP6_B}", &ip6_b.to_string());
    let watch = std::fs::read_to_string(data.join("watch.jsonl")).expect("watch");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = fake_api(&lab.b, list, watch, stop.clone());
    let token = dir.0.join("token");
    std::fs::write(&token, "test-token\n").expect("token");
    let mut sensor = Sensor::start_env(
        &lab.b,
        &["--iface", &lab.vb, "--export-interval", "1"],
        &[
            ("PICKET_K8S_API", "http://127.0.0.1:8001"),
            ("PICKET_K8S_TOKEN_FILE", token.to_str().expect("utf8")),
            ("NODE_NAME", "node-1"),
        ],
    );
    sensor.wait_for_log("Kubernetes pods listed", Duration::from_secs(20));
    let to: std::net::SocketAddr = format!("{}:9", lab.ip_b).parse().expect("addr");
    in_netns(&lab.a, move || {
        let s = UdpSocket::bind("0.0.0.0:41000").expect("bind");
        for _ in 0..4 {
            s.send_to(&[0u8; 20], to).expect("send");
        }
    })
    .join()
    .expect("sender");
    let out = sensor.stop();
    stop.store(true, Ordering::SeqCst);
    let f = out.flows_where(|f| f["src_port"] == 41000 && f["protocol"] == 17);
    assert_eq!(f.len(), 1, "{f:?}");
    let (src, dst) = (&f[0]["src_pod"], &f[0]["dst_pod"]);
    assert_eq!(src["namespace"], "shop", "{}", f[0]);
    assert_eq!(src["pod"], "client-7d9c5b6f4-x2kqp");
    assert_eq!(src["labels"]["app"], "client");
    assert_eq!(src["node"], "node-1");
    assert_eq!(dst["pod"], "web-0");
    assert_eq!(dst["labels"]["tier"], "frontend");
    // Host-network pods (kube-proxy here) do not claim the node's address.
    assert!(
        out.flows
            .iter()
            .all(|f| f["src_pod"]["pod"] != "kube-proxy-8kq2l"
                && f["dst_pod"]["pod"] != "kube-proxy-8kq2l")
    );
    let requests = seen.lock().expect("seen").clone();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1 ")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=1") && r.contains("resourceVersion=48211")),
        "{requests:?}"
    );
}
