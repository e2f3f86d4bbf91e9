//! The gRPC ingest served for real on loopback, driven by a tonic client: authentication,
//! malformed and oversized input, acknowledgements and replays.

use std::{net::SocketAddr, sync::Arc};

use controlplane::{
    detect::Config,
    grpc::{self, IngestService},
    keys,
    store::{Alerts as _, FlowStore as _, Sensors as _, Settings as _, SqliteStore, Stores},
};
use picket_proto::v1::{
    ExportBatch, FlowRecord, HeartbeatRequest, RegisterRequest,
    sensor_ingest_client::SensorIngestClient,
};
use tonic::{Code, Request, transport::Channel};

struct Server {
    addr: SocketAddr,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

async fn server() -> Server {
    server_learning(controlplane::detect::novelty::LEARNING_NS).await
}

/// A server whose baseline detectors learn for `learning_ns`.
async fn server_learning(learning_ns: i64) -> Server {
    let dir = tempfile::tempdir().expect("tmp");
    let store = SqliteStore::open(dir.path()).expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let svc = IngestService::server(
        Stores::of(store.clone()),
        Config {
            learning_ns,
            ..Config::default()
        },
        None,
        "test-replica",
    )
    .server;
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    Server {
        addr,
        store,
        _dir: dir,
        _task: task,
    }
}

async fn client(addr: SocketAddr) -> SensorIngestClient<Channel> {
    SensorIngestClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20)
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    r
}

fn flow(packets: u64) -> FlowRecord {
    FlowRecord {
        iface: "eth0".into(),
        src_ip: vec![10, 1, 0, 1],
        dst_ip: vec![10, 1, 0, 2],
        src_port: 40000,
        dst_port: 22,
        protocol: 6,
        packets,
        bytes: packets * 60,
        ..Default::default()
    }
}

fn batch(id: u64, flows: Vec<FlowRecord>) -> ExportBatch {
    ExportBatch {
        instance_id: "inst-1".into(),
        batch_id: id,
        flows,
        ..Default::default()
    }
}

fn add(store: &SqliteStore, name: &str) -> String {
    let key = keys::new_key().expect("key");
    store
        .add_sensor(name, &keys::hash(&key), 1)
        .expect("add sensor");
    key
}

/// Sends `batches` on one export stream and returns the acknowledgements (or the error).
async fn export(
    c: &mut SensorIngestClient<Channel>,
    key: &str,
    batches: Vec<ExportBatch>,
) -> Result<Vec<(u64, bool)>, tonic::Status> {
    let n = batches.len();
    let mut acks = c
        .export(with_key(tokio_stream::iter(batches), key))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match acks.message().await? {
            Some(a) => out.push((a.batch_id, a.duplicate)),
            None => break,
        }
    }
    Ok(out)
}

#[tokio::test]
async fn batches_are_acknowledged_once_stored_and_replays_are_not_doubled() {
    let s = server().await;
    let key = add(&s.store, "web-1");
    let mut c = client(s.addr).await;
    let reg = c
        .register(with_key(
            RegisterRequest {
                instance_id: "inst-1".into(),
                version: "0.1.0".into(),
                kernel: "6.1.0".into(),
                host: None,
            },
            &key,
        ))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(reg.sensor_name, "web-1");
    assert_eq!(reg.last_stored_batch_id, 0);
    let acks = export(
        &mut c,
        &key,
        vec![batch(1, vec![flow(3)]), batch(2, vec![flow(4), flow(5)])],
    )
    .await
    .expect("export");
    assert_eq!(acks, vec![(1, false), (2, false)]);
    // The acknowledgement of 2 was "lost": the sensor sends 2 again, then 3.
    let acks = export(
        &mut c,
        &key,
        vec![batch(2, vec![flow(4), flow(5)]), batch(3, vec![flow(1)])],
    )
    .await
    .expect("export");
    assert_eq!(acks, vec![(2, true), (3, false)]);
    let t = s.store.flow_totals(Some("web-1")).expect("totals");
    assert_eq!((t.records, t.packets, t.bytes), (4, 13, 780));
    // A new registration learns how far the store got.
    let reg = c
        .register(with_key(
            RegisterRequest {
                instance_id: "inst-1".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(reg.last_stored_batch_id, 3);
    c.heartbeat(with_key(
        HeartbeatRequest {
            instance_id: "inst-1".into(),
            kernel_counters: [("packets_seen".to_string(), 42u64)].into(),
            ..Default::default()
        },
        &key,
    ))
    .await
    .expect("heartbeat");
    let row = &s.store.sensors().expect("sensors")[0];
    assert!(row.last_heartbeat_unix_ns.is_some());
    assert_eq!(
        row.kernel_counters.as_deref(),
        Some(r#"{"packets_seen":42}"#)
    );
}

#[tokio::test]
async fn missing_unknown_malformed_and_revoked_keys_are_unauthenticated() {
    let s = server().await;
    let key = add(&s.store, "db-1");
    let mut c = client(s.addr).await;
    let reg = |k: Option<&str>| {
        let msg = RegisterRequest {
            instance_id: "i".into(),
            ..Default::default()
        };
        match k {
            Some(k) => with_key(msg, k),
            None => Request::new(msg),
        }
    };
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.expect_err("refused").code();
    assert_eq!(code(c.register(reg(None)).await), Code::Unauthenticated);
    assert_eq!(
        code(c.register(reg(Some("pks_nothex"))).await),
        Code::Unauthenticated
    );
    let stranger = keys::new_key().expect("key");
    assert_eq!(
        code(c.register(reg(Some(&stranger))).await),
        Code::Unauthenticated
    );
    c.register(reg(Some(&key)))
        .await
        .expect("the real key works");
    assert!(s.store.revoke_sensor("db-1", 2).expect("revoke"));
    assert_eq!(
        code(c.register(reg(Some(&key))).await),
        Code::Unauthenticated
    );
    let e = export(&mut c, &key, vec![batch(1, vec![flow(1)])])
        .await
        .expect_err("export refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(s.store.flow_totals(None).expect("totals").records, 0);
}

#[tokio::test]
async fn malformed_and_oversized_batches_are_refused_and_store_nothing() {
    let s = server().await;
    let key = add(&s.store, "edge-1");
    let mut c = client(s.addr).await;
    let mut bad = flow(1);
    bad.dst_ip = vec![1, 2, 3, 4, 5];
    let e = export(&mut c, &key, vec![batch(1, vec![flow(1), bad])])
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("flow #1"), "{}", e.message());
    let e = export(&mut c, &key, vec![batch(0, vec![flow(1)])])
        .await
        .expect_err("batch id 0");
    assert_eq!(e.code(), Code::InvalidArgument);
    // Over the 16 MiB limit: 150,000 records of about 140 bytes.
    let fat = FlowRecord {
        initiator_by: "x".repeat(100),
        ..flow(1)
    };
    let huge = batch(2, vec![fat; 150_000]);
    let e = export(&mut c, &key, vec![huge])
        .await
        .expect_err("oversized");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert_eq!(s.store.flow_totals(None).expect("totals").records, 0);
    // The stream is refused, not the sensor: a good batch still goes through.
    let acks = export(&mut c, &key, vec![batch(1, vec![flow(2)])])
        .await
        .expect("good batch");
    assert_eq!(acks, vec![(1, false)]);
}

/// A key revoked while its export stream is open: the next batch on that stream is refused
/// and not stored, and the stream ends.
#[tokio::test]
async fn revoking_a_key_ends_its_open_stream() {
    let s = server().await;
    let key = add(&s.store, "edge-2");
    let mut c = client(s.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = c
        .export(with_key(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &key,
        ))
        .await
        .expect("stream opens")
        .into_inner();
    tx.send(batch(1, vec![flow(3)])).await.expect("send");
    let ack = acks.message().await.expect("ack").expect("one");
    assert_eq!(ack.batch_id, 1);
    assert!(s.store.revoke_sensor("edge-2", 2).expect("revoke"));
    tokio::time::sleep(grpc::REVOCATION_CHECK + std::time::Duration::from_millis(100)).await;
    tx.send(batch(2, vec![flow(5)])).await.expect("send");
    let e = acks
        .message()
        .await
        .expect_err("refused after the revocation");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let totals = s.store.flow_totals(None).expect("totals");
    assert_eq!((totals.records, totals.packets), (1, 3));
}

/// Raw bytes as a gRPC message: what a broken or hostile client could send.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

/// Bytes that are not protobuf, to each method: INVALID_ARGUMENT (the sender's fault), not
/// INTERNAL; and nothing stored.
#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let s = server().await;
    let key = add(&s.store, "edge-3");
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    // A field tag with wire type 7, which does not exist.
    let garbage = vec![0x0f, 0xff, 0xff, 0xff];
    for method in ["Register", "Heartbeat"] {
        let mut g = tonic::client::Grpc::new(channel.clone());
        g.ready().await.expect("ready");
        let path =
            PathAndQuery::try_from(format!("/picket.v1.SensorIngest/{method}")).expect("path");
        let e = g
            .unary(with_key(garbage.clone(), &key), path, Raw)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{method}: {e}");
    }
    let mut g = tonic::client::Grpc::new(channel.clone());
    g.ready().await.expect("ready");
    let mut acks = g
        .streaming(
            with_key(tokio_stream::iter(vec![garbage.clone()]), &key),
            PathAndQuery::from_static("/picket.v1.SensorIngest/Export"),
            Raw,
        )
        .await
        .expect("stream opens")
        .into_inner();
    let e = acks.message().await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "Export: {e}");
    // Without a key, the same bytes are refused for the key, unread.
    let mut g = tonic::client::Grpc::new(channel);
    g.ready().await.expect("ready");
    let e = g
        .unary(
            Request::new(garbage),
            PathAndQuery::from_static("/picket.v1.SensorIngest/Register"),
            Raw,
        )
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert_eq!(s.store.flow_totals(None).expect("totals").records, 0);
}

/// Sensor flows feed the baseline detectors on their own thread. After a day of learning, a
/// session from a country new to the server, a port it serves for the first time and a device
/// new to its network are alerts. Only answered sessions teach or alert: a SYN nobody answered
/// is nothing. What was learned is saved when the ingest stops.
#[tokio::test]
async fn sensor_flows_feed_the_baseline_detectors() {
    const DAY: u64 = 86_400_000_000_000;
    let s = server_learning(DAY as i64).await;
    let key = add(&s.store, "web-1");
    let mut c = client(s.addr).await;
    let t0 = 1_795_860_000_000_000_000u64;
    let session = |src: [u8; 4], dport: u32, t: u64, answered: bool| FlowRecord {
        iface: "eth0".into(),
        src_ip: src.to_vec(),
        dst_ip: vec![10, 0, 0, 22],
        src_port: 50000,
        dst_port: dport,
        protocol: 6,
        packets: 10,
        bytes: 2000,
        reverse_packets: if answered { 8 } else { 0 },
        reverse_bytes: if answered { 4000 } else { 0 },
        tcp_flags: if answered { 0x1b } else { 0x02 },
        reverse_tcp_flags: if answered { 0x1b } else { 0 },
        start_unix_ns: t,
        end_unix_ns: t + 1_000_000_000,
        ..Default::default()
    };
    let learning = vec![
        session([8, 8, 8, 8], 22, t0, true),
        session([10, 0, 0, 5], 22, t0, true),
    ];
    let later = vec![
        session([1, 0, 16, 1], 22, t0 + 2 * DAY, true),
        session([8, 8, 8, 8], 8080, t0 + 2 * DAY, true),
        session([8, 8, 8, 8], 9999, t0 + 2 * DAY, false),
        session([10, 0, 7, 7], 22, t0 + 2 * DAY, true),
        session([10, 0, 8, 8], 22, t0 + 2 * DAY, false),
    ];
    let acks = export(&mut c, &key, vec![batch(1, learning), batch(2, later)])
        .await
        .expect("export");
    assert_eq!(acks, vec![(1, false), (2, false)]);
    let alerts = || -> Vec<(String, String, Vec<String>)> {
        let q = controlplane::model::AlertQuery {
            limit: 10,
            ..Default::default()
        };
        let mut a: Vec<_> = s
            .store
            .alerts(&q)
            .expect("alerts")
            .into_iter()
            .map(|a| (a.kind, a.source, a.targets))
            .collect();
        a.sort();
        a
    };
    // The detectors run beside the writer: their alerts come shortly after the ack.
    let t = std::time::Instant::now();
    while alerts().len() < 3 && t.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let s_ = |v: &str| v.to_string();
    assert_eq!(
        alerts(),
        [
            (
                s_("geo_unusual_access"),
                s_("10.0.0.22"),
                vec![s_("1.0.16.1 (JP)")]
            ),
            (
                s_("new_internal_device"),
                s_("10.0.0.0/16"),
                vec![s_("10.0.7.7")]
            ),
            (s_("new_service"), s_("10.0.0.22"), vec![s_("8080/tcp")]),
        ]
    );
    // Stopping the ingest saves what the detectors learned, under the sensor prefix.
    drop(c);
    s._task.abort();
    let saved = || s.store.detector_state("sensor/geo_access").expect("state");
    let t = std::time::Instant::now();
    while saved().is_empty() && t.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let saved = saved();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0].0, "10.0.0.22");
    assert!(
        saved[0].1.contains("\"JP\"") && saved[0].1.contains("\"US\""),
        "{saved:?}"
    );
    assert!(
        s.store
            .detector_state("geo_access")
            .expect("state")
            .is_empty()
    );
}
