//! The bus between control-plane replicas (cluster mode, `serve --bus`): NATS JetStream.
//!
//! A replica's gRPC front publishes each sensor batch to the stream [`BATCHES`] and acknowledges
//! the sensor once JetStream has stored it; the replicas' writers take the stream's batches
//! through one durable pull consumer ([`WRITERS`]), which gives each batch to one of them, and
//! acknowledge a batch after the flow store took it. This module knows streams, consumers and
//! headers; the payloads are opaque bytes (the front and the writer agree on them).
//!
//! A batch is published with its (installation, batch id) as its message id, so a sensor that
//! sends it again (its ack was lost, or its replica died) within [`DUPLICATE_WINDOW`] is not
//! stored twice in the stream; later repeats are caught by the flow store's batch marks.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;

/// The stream of sensor batches.
pub const BATCHES: &str = "PICKET_BATCHES";
/// Its one subject.
pub const BATCHES_SUBJECT: &str = "picket.batches";
/// The writers' durable consumer of [`BATCHES`], shared by every replica.
pub const WRITERS: &str = "writers";
/// The stream of stored sensor batches, split by the detectors' partitions
/// (`detect::partition`), one subject each ([`detect_subject`]).
pub const DETECT: &str = "PICKET_DETECT";
/// Its subjects.
pub const DETECT_SUBJECTS: &str = "picket.detect.*";
/// The subject of a partition's records.
pub fn detect_subject(partition: u32) -> String {
    format!("picket.detect.{partition}")
}
/// The durable consumer of a partition's subject of [`DETECT`]: taken by one replica at a time
/// (the holder of the partition's lease), acknowledged up to a message once the partition's
/// detectors' state that includes it is saved.
pub fn detectors_consumer(partition: u32) -> String {
    format!("detectors-{partition}")
}
/// The stream of cloud flow-log files to import (one message per file, naming its object in
/// [`FILES`]).
pub const IMPORTS: &str = "PICKET_IMPORTS";
/// Its one subject.
pub const IMPORTS_SUBJECT: &str = "picket.imports";
/// The importers' durable consumer of [`IMPORTS`]: taken by one replica at a time (the holder
/// of the imports' lease).
pub const IMPORTERS: &str = "importers";
/// How long an import may go without a sign of progress before it is given to another
/// importer: its importer says it is still at work every [`IMPORT_PROGRESS`].
pub const IMPORT_ACK_WAIT: Duration = Duration::from_secs(60);
/// How often an importer at work says so.
pub const IMPORT_PROGRESS: Duration = Duration::from_secs(15);
/// The object store bucket of the files waiting to be imported, each named by its SHA-256.
pub const FILES: &str = "PICKET_FILES";
/// Header: where the result of an import goes (a `picket-controlplane import` waiting for it).
pub const REPLY_HEADER: &str = "Picket-Reply";
/// How long batches given to the detectors may stay unacknowledged before they are given
/// again: longer than the detectors' checkpoint interval.
pub const DETECT_ACK_WAIT: Duration = Duration::from_secs(60);
/// How long JetStream remembers a message id to refuse its duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(20 * 60);
/// How long a batch given to a writer may stay unacknowledged before it is given again (to
/// this writer or another): a writer that died holds its batches this long.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Header: the sensor (its key's name) that sent the batch.
pub const SENSOR_HEADER: &str = "Picket-Sensor";

/// A connection to the bus.
#[derive(Clone)]
pub struct Bus {
    js: jetstream::Context,
    /// The server, for messages (without credentials).
    pub at: String,
    /// How many partitions the detectors' stream has (`detect::partition::PARTITIONS`).
    partitions: u32,
}

/// What became of a published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Stored,
    /// A message with the same id was stored within [`DUPLICATE_WINDOW`].
    Duplicate,
}

/// A message taken from a consumer, to acknowledge once handled.
pub struct Delivery {
    msg: jetstream::Message,
}

impl Delivery {
    pub fn payload(&self) -> &Bytes {
        &self.msg.payload
    }

    /// A header's value, if the message has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.msg
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// How many times it was delivered (1 the first time).
    pub fn delivered(&self) -> i64 {
        self.msg.info().map(|i| i.delivered).unwrap_or(1)
    }

    /// Handled: never given again.
    pub async fn ack(&self) -> anyhow::Result<()> {
        self.msg
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("acknowledging a message: {e}"))
    }

    /// Not handled now: given again after `delay`.
    pub async fn retry_after(&self, delay: Duration) -> anyhow::Result<()> {
        self.msg
            .ack_with(jetstream::AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| anyhow::anyhow!("handing a message back: {e}"))
    }

    /// Still being handled: the ack wait starts again.
    pub async fn in_progress(&self) -> anyhow::Result<()> {
        self.msg
            .ack_with(jetstream::AckKind::Progress)
            .await
            .map_err(|e| anyhow::anyhow!("saying a message is in progress: {e}"))
    }

    /// Never to be handled (it cannot be read): not given again.
    pub async fn reject(&self) -> anyhow::Result<()> {
        self.msg
            .ack_with(jetstream::AckKind::Term)
            .await
            .map_err(|e| anyhow::anyhow!("rejecting a message: {e}"))
    }
}

/// `url` without its password, for messages.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl Bus {
    /// Connects to the NATS server at `url` (`nats://[user[:password]@]host[:port]`; `password`
    /// replaces a password in the URL) and makes sure the streams and consumers exist. Fails
    /// with a sentence that says what to do when the server cannot be reached, refuses the
    /// credentials, or has no JetStream.
    /// `partitions` is the number of the detectors' partitions, one consumer each.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        partitions: u32,
    ) -> anyhow::Result<Bus> {
        let at = shown(url);
        let parsed = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("--bus: `{at}` is not a URL ({e})"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "nats" | "tls"),
            "--bus: `{at}` must start with nats:// (or tls:// for TLS)"
        );
        let mut opts = async_nats::ConnectOptions::new()
            .name("picket-controlplane")
            .connection_timeout(Duration::from_secs(5))
            // Reconnects go on for ever once connected; publishes and fetches fail meanwhile,
            // and the replica says so.
            .max_reconnects(None);
        let mut server = parsed.clone();
        if let Some(pw) = password {
            opts = opts.user_and_password(parsed.username().to_string(), pw.to_string());
            let _ = server.set_username("");
            let _ = server.set_password(None);
        }
        let client = opts.connect(server.as_str()).await.map_err(|e| {
            anyhow::anyhow!(
                "the bus at {at}: cannot connect ({e}); is nats-server running there, \
                 and are the user and password right?"
            )
        })?;
        let js = jetstream::new(client);
        let bus = Bus { js, at, partitions };
        bus.streams().await?;
        Ok(bus)
    }

    /// The streams and consumers every replica uses, made by whichever replica comes first.
    async fn streams(&self) -> anyhow::Result<()> {
        let at = &self.at;
        let s = self
            .stream(
                BATCHES,
                BATCHES_SUBJECT,
                "sensor batches waiting for the writers",
                stream::RetentionPolicy::WorkQueue,
            )
            .await?;
        s.get_or_create_consumer(WRITERS, Self::writers_config())
            .await
            .map_err(|e| {
                anyhow::anyhow!("the bus at {at}: cannot make the consumer {WRITERS} ({e})")
            })?;
        // Kept while a consumer has not acknowledged it (the detectors' consumer is durable,
        // made here): a work queue would need an ack per message, and the detectors ack up to
        // a message at once.
        let d = self
            .stream(
                DETECT,
                DETECT_SUBJECTS,
                "stored sensor batches waiting for the detectors",
                stream::RetentionPolicy::Interest,
            )
            .await?;
        let i = self
            .stream(
                IMPORTS,
                IMPORTS_SUBJECT,
                "cloud flow-log files waiting to be imported",
                stream::RetentionPolicy::WorkQueue,
            )
            .await?;
        i.get_or_create_consumer(IMPORTERS, Self::importers_config())
            .await
            .map_err(|e| {
                anyhow::anyhow!("the bus at {at}: cannot make the consumer {IMPORTERS} ({e})")
            })?;
        if self.js.get_object_store(FILES).await.is_err() {
            self.js
                .create_object_store(jetstream::object_store::Config {
                    bucket: FILES.into(),
                    description: Some("Picket: cloud flow-log files waiting to be imported".into()),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    anyhow::anyhow!("the bus at {at}: cannot make the bucket {FILES} ({e})")
                })?;
        }
        for p in 0..self.partitions {
            let name = detectors_consumer(p);
            d.get_or_create_consumer(&name, Self::detectors_config(p))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("the bus at {at}: cannot make the consumer {name} ({e})")
                })?;
        }
        Ok(())
    }

    async fn stream(
        &self,
        name: &str,
        subject: &str,
        what: &str,
        retention: stream::RetentionPolicy,
    ) -> anyhow::Result<jetstream::stream::Stream> {
        let at = &self.at;
        // Made, or brought to this version's settings (subjects included) if it exists.
        self.js
            .create_or_update_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                retention,
                storage: stream::StorageType::File,
                // No limit of its own: the server's JetStream storage limit (`max_file_store`,
                // by default most of its free disk) bounds it. Once it is reached (the writers
                // fell that far behind, the flow store is down, say), new batches are refused,
                // so sensors keep them in their spools: nothing is dropped.
                max_bytes: -1,
                discard: stream::DiscardPolicy::New,
                duplicate_window: DUPLICATE_WINDOW,
                description: Some(format!("Picket: {what}")),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the bus at {at}: cannot make the stream {name} ({e}); is JetStream \
                     enabled on the server (nats-server -js)?"
                )
            })?;
        self.js
            .get_stream(name)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: stream {name}: {e}"))
    }

    fn detectors_config(partition: u32) -> pull::Config {
        pull::Config {
            durable_name: Some(detectors_consumer(partition)),
            filter_subject: detect_subject(partition),
            // Acknowledging a message acknowledges every one before it: the detectors ack the
            // last message their saved state includes.
            ack_policy: jetstream::consumer::AckPolicy::All,
            ack_wait: DETECT_ACK_WAIT,
            max_ack_pending: 100_000,
            ..Default::default()
        }
    }

    fn importers_config() -> pull::Config {
        pull::Config {
            durable_name: Some(IMPORTERS.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: IMPORT_ACK_WAIT,
            max_ack_pending: 16,
            ..Default::default()
        }
    }

    fn writers_config() -> pull::Config {
        pull::Config {
            durable_name: Some(WRITERS.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Batches out with the writers at once, over all replicas.
            max_ack_pending: 4096,
            ..Default::default()
        }
    }

    /// Publishes `payload` to `subject` with message id `id` and `headers`; returns once the
    /// server took it for sending, with what tells when the stream stored it. The second step
    /// is what a sender waits on before it acknowledges anything upstream.
    pub async fn publish(
        &self,
        subject: &str,
        id: &str,
        headers: &[(&'static str, &str)],
        payload: Bytes,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<Published>> + Send + use<>> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let at = self.at.clone();
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), h, payload)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: publishing failed ({e})"))?;
        Ok(async move {
            let a = ack.await.map_err(|e| {
                anyhow::anyhow!("the bus at {at}: the stream did not store a batch ({e})")
            })?;
            Ok(if a.duplicate {
                Published::Duplicate
            } else {
                Published::Stored
            })
        })
    }

    /// (batches waiting for a writer, batches given to writers and not yet acknowledged): the
    /// writers' lag, for health.
    pub async fn writers_lag(&self) -> anyhow::Result<(u64, u64)> {
        self.lag(BATCHES, WRITERS).await
    }

    /// The same of the detectors' consumers, summed over the partitions.
    pub async fn detectors_lag(&self) -> anyhow::Result<(u64, u64)> {
        let mut sum = (0, 0);
        for p in 0..self.partitions {
            let (waiting, out) = self.lag(DETECT, &detectors_consumer(p)).await?;
            sum = (sum.0 + waiting, sum.1 + out);
        }
        Ok(sum)
    }

    async fn lag(&self, stream: &str, consumer: &str) -> anyhow::Result<(u64, u64)> {
        let at = &self.at;
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: stream {stream}: {e}"))?;
        let info = s
            .consumer_info(consumer)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: consumer {consumer}: {e}"))?;
        Ok((info.num_pending, info.num_ack_pending as u64))
    }

    /// The importers' consumer (for the holder of the imports' lease).
    pub async fn importers(&self) -> anyhow::Result<Consumer> {
        self.consumer(IMPORTS, IMPORTERS, Self::importers_config())
            .await
    }

    /// Stores `data` as the object `name` of [`FILES`]; returns its size.
    pub async fn put_file(
        &self,
        name: &str,
        data: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> anyhow::Result<u64> {
        let at = &self.at;
        let bucket = self
            .js
            .get_object_store(FILES)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: bucket {FILES}: {e}"))?;
        let info = bucket
            .put(name, data)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: storing a file failed ({e})"))?;
        Ok(info.size as u64)
    }

    /// The object `name` of [`FILES`] to read, with its size; None if there is no such object.
    pub async fn get_file(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<(u64, impl tokio::io::AsyncRead + Unpin + use<>)>> {
        let at = &self.at;
        let bucket = self
            .js
            .get_object_store(FILES)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: bucket {FILES}: {e}"))?;
        match bucket.get(name).await {
            Ok(o) => Ok(Some((o.info().size as u64, o))),
            Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "the bus at {at}: reading a file failed ({e})"
            )),
        }
    }

    /// Deletes the object `name` of [`FILES`] (imported).
    pub async fn delete_file(&self, name: &str) -> anyhow::Result<()> {
        let at = &self.at;
        let bucket = self
            .js
            .get_object_store(FILES)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: bucket {FILES}: {e}"))?;
        bucket
            .delete(name)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: deleting a file failed ({e})"))
    }

    /// A subject of its own to hear replies on, and what receives them.
    pub async fn inbox(&self) -> anyhow::Result<(String, async_nats::Subscriber)> {
        let client = self.js.client();
        let subject = client.new_inbox();
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {}: subscribing failed ({e})", self.at))?;
        Ok((subject, sub))
    }

    /// Sends `payload` to `subject` (a reply: not kept if nobody listens).
    pub async fn reply(&self, subject: &str, payload: Bytes) -> anyhow::Result<()> {
        let client = self.js.client();
        client
            .publish(subject.to_string(), payload)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {}: replying failed ({e})", self.at))?;
        client
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {}: replying failed ({e})", self.at))
    }

    /// The writers' consumer: [`Consumer::fetch`] takes batches from it.
    pub async fn writers(&self) -> anyhow::Result<Consumer> {
        self.consumer(BATCHES, WRITERS, Self::writers_config())
            .await
    }

    /// A partition's detectors' consumer (for the holder of its lease).
    pub async fn detectors(&self, partition: u32) -> anyhow::Result<Consumer> {
        self.consumer(
            DETECT,
            &detectors_consumer(partition),
            Self::detectors_config(partition),
        )
        .await
    }

    async fn consumer(
        &self,
        stream: &str,
        name: &str,
        config: pull::Config,
    ) -> anyhow::Result<Consumer> {
        let at = &self.at;
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: stream {stream}: {e}"))?;
        let c = s
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: consumer {name}: {e}"))?;
        Ok(Consumer {
            inner: c,
            at: self.at.clone(),
        })
    }
}

/// A durable pull consumer.
pub struct Consumer {
    inner: jetstream::consumer::Consumer<pull::Config>,
    at: String,
}

impl Consumer {
    /// Up to `max` messages, waiting at most `wait` for the first ones (fewer, or none, when
    /// the stream has no more).
    pub async fn fetch(&self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        use futures_util::StreamExt as _;
        let at = &self.at;
        let mut msgs = self
            .inner
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("the bus at {at}: fetching failed ({e})"))?;
        let mut out = Vec::new();
        while let Some(m) = msgs.next().await {
            match m {
                Ok(msg) => out.push(Delivery { msg }),
                Err(e) => {
                    if out.is_empty() {
                        anyhow::bail!("the bus at {at}: fetching failed ({e})");
                    }
                    break;
                }
            }
        }
        Ok(out)
    }
}
