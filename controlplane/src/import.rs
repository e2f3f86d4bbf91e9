//! `picket-controlplane import PROVIDER FILE...`: cloud flow logs into the store.
//!
//! Inputs may be gzip-compressed (detected by their magic bytes, as S3 delivers them) and `-`
//! is standard input. A line that cannot be parsed is counted by reason, the first example of
//! each reason is logged with its file and line number, and the import goes on. Records that
//! stand for no flow are counted too: AWS `NODATA` (no traffic) and `SKIPDATA` (flows AWS
//! dropped from the log, which an operator must hear about).

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, BufRead, BufReader, Read},
    path::Path,
};

use anyhow::Context as _;
use tracing::warn;

use crate::{
    cloud::{aws, azure, gcp},
    model::{Action, CloudMeta, Flow, Source},
};

/// Where an import puts its flows, a chunk at a time: the store directly (`import`), or one
/// transaction per file (the watched directory).
pub type Sink<'a> = crate::model::FlowSink<'a>;

/// How far apart in time a sensor flow and a cloud flow may be and still be linked (clock skew
/// and the cloud's delivery of its aggregation windows).
pub const CORRELATION_TOLERANCE_NS: i64 = 60_000_000_000;

/// Wraps `sink`, noting the range of the flows' end times (to correlate what was imported).
pub fn tracking<'a>(
    sink: &'a mut Sink<'_>,
    range: &'a mut Option<(i64, i64)>,
) -> impl FnMut(&[Flow]) -> anyhow::Result<()> + 'a {
    move |flows| {
        for f in flows {
            *range = Some(match *range {
                None => (f.end_ns, f.end_ns),
                Some((a, b)) => (a.min(f.end_ns), b.max(f.end_ns)),
            });
        }
        sink(flows)
    }
}

/// Imports one input of `provider`'s format (`sampling_rate`: GCP only).
pub fn import_input(
    provider: Source,
    input: impl BufRead + Send,
    file: &str,
    sampling_rate: f64,
    sink: &mut Sink<'_>,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    import_inspecting(provider, input, file, sampling_rate, &mut |_| {}, sink, sum)
}

/// As [`import_input`], with `inspect` (the detectors) run over each chunk before it goes to
/// `sink`.
///
/// Reading, parsing and `inspect` run on a thread of their own while `sink` (the store) takes
/// the previous chunk on this one: the stages overlap on two cores. Chunks move between the
/// threads, not copied, and go back to the parse thread once stored, where their flows are
/// freed and the space filled again. At most three chunks are in memory: the one being
/// filled, the one being stored and one on its way back.
pub fn import_inspecting(
    provider: Source,
    input: impl BufRead + Send,
    file: &str,
    sampling_rate: f64,
    inspect: &mut (dyn FnMut(&[Flow]) + Send),
    sink: &mut Sink<'_>,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    if provider == Source::Sensor {
        anyhow::bail!("sensor flows arrive over gRPC, not as files");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Flow>>(0);
    let (used_tx, used_rx) = std::sync::mpsc::sync_channel::<Vec<Flow>>(1);
    let mut local = std::mem::take(sum);
    let (parsed, stored) = std::thread::scope(|s| {
        let parser = std::thread::Builder::new()
            .name("import-parse".into())
            .spawn_scoped(s, move || {
                let mut send = |flows: Vec<Flow>| -> anyhow::Result<Vec<Flow>> {
                    inspect(&flows);
                    tx.send(flows)
                        .map_err(|_| anyhow::anyhow!("the store stopped taking flows"))?;
                    Ok(match used_rx.try_recv() {
                        Ok(mut used) => {
                            used.clear();
                            used
                        }
                        Err(_) => Vec::with_capacity(CHUNK),
                    })
                };
                let r = match provider {
                    Source::Aws => import_aws(&mut send, input, file, &mut local),
                    Source::Gcp => import_gcp(&mut send, input, file, sampling_rate, &mut local),
                    Source::Azure => import_azure(&mut send, input, file, &mut local),
                    Source::Sensor => unreachable!("refused above"),
                };
                (r, local)
            });
        let parser = match parser {
            Ok(p) => p,
            Err(e) => return (Err(e), Ok(())),
        };
        let mut stored = Ok(());
        for flows in rx.iter() {
            if let Err(e) = sink(&flows) {
                stored = Err(e);
                break;
            }
            // Freed on the parse thread (or here, if one is still on its way back).
            let _ = used_tx.try_send(flows);
        }
        // The parser's next send fails and it stops.
        drop(rx);
        let parsed = parser
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (Ok(parsed), stored)
    });
    let (parsed, back) = parsed.context("starting the parse thread")?;
    *sum = back;
    stored?;
    parsed
}

/// Flows written to the store per transaction (10,000: 20k records/s into the indexed table;
/// 100,000: 45k, measured by the bench; about 50 MB of flows in memory at most).
const CHUNK: usize = 100_000;

/// Takes a full chunk and gives an empty one back.
type Handoff<'a> = dyn FnMut(Vec<Flow>) -> anyhow::Result<Vec<Flow>> + 'a;

/// Flows on their way to the store, `CHUNK` at a time, counted as stored once handed over.
struct Chunker<'s, 'a> {
    out: &'s mut Handoff<'a>,
    flows: Vec<Flow>,
}

impl<'s, 'a> Chunker<'s, 'a> {
    fn new(out: &'s mut Handoff<'a>) -> Self {
        Self {
            out,
            flows: Vec::with_capacity(CHUNK),
        }
    }

    fn push(&mut self, flow: Flow, sum: &mut Summary) -> anyhow::Result<()> {
        self.flows.push(flow);
        if self.flows.len() == CHUNK {
            self.flush(sum)?;
        }
        Ok(())
    }

    /// Hands what is left over (also when nothing is: the end of the input).
    fn flush(&mut self, sum: &mut Summary) -> anyhow::Result<()> {
        let full = std::mem::take(&mut self.flows);
        let n = full.len() as u64;
        self.flows = (self.out)(full)?;
        sum.stored += n;
        Ok(())
    }
}

/// What an import did, over all its files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// "aws", "gcp" or "azure".
    pub provider: &'static str,
    pub files: u64,
    /// Non-blank lines read, headers excluded.
    pub read: u64,
    pub stored: u64,
    /// Lines not taken, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Records that stand for no flow: AWS NODATA.
    pub nodata: u64,
    /// Records that stand for flows the provider dropped: AWS SKIPDATA.
    pub skipdata: u64,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn reject(&mut self, file: &str, line_no: u64, reason: String, line: &str) {
        let n = self.rejected.entry(reason.clone()).or_default();
        if *n == 0 {
            // One example per reason: enough to fix the export, not a flood.
            let example: String = line.chars().take(300).collect();
            warn!(file, line = line_no, reason, example, "line rejected");
        }
        *n += 1;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} file(s): read {}, stored {}, rejected {}",
            self.files,
            self.read,
            self.stored,
            self.rejected_total()
        )?;
        if !self.rejected.is_empty() {
            let by: Vec<String> = self
                .rejected
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            write!(f, " ({})", by.join(", "))?;
        }
        if self.provider == "aws" {
            write!(
                f,
                ", skipped {} (NODATA: no traffic), SKIPDATA {} (flows the provider dropped from its log)",
                self.nodata, self.skipdata
            )?;
        }
        Ok(())
    }
}

/// Opens `path` (`-`: standard input), decompressing gzip when its magic bytes say so.
pub fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )
    };
    let mut r = BufReader::with_capacity(1 << 16, raw);
    let gzip = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(r),
        ))
    } else {
        Box::new(r)
    })
}

/// Imports AWS VPC (or transit-gateway) flow log records from `input` into `store`.
fn import_aws(
    out: &mut Handoff<'_>,
    mut input: impl BufRead,
    file: &str,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    sum.provider = "aws";
    sum.files += 1;
    let mut format = aws::Format::default();
    let mut line = String::new();
    let mut line_no = 0u64;
    let mut chunk = Chunker::new(out);
    loop {
        line.clear();
        let n = match input.read_line(&mut line) {
            Ok(n) => n,
            // A line that is not UTF-8: counted, and the next one read.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                line_no += 1;
                sum.read += 1;
                sum.reject(file, line_no, "not_utf8".into(), "");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {file}")),
        };
        if n == 0 {
            break;
        }
        line_no += 1;
        let l = line.trim_end_matches(['\n', '\r']);
        if l.trim().is_empty() {
            continue;
        }
        // A header (the first line of an S3 object, or of each object in a concatenation).
        if l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '$')
            && let Some(f) = aws::Format::from_header(l)
        {
            format = f;
            continue;
        }
        sum.read += 1;
        match aws::parse(&format, l) {
            Ok(r) => match r.status {
                Some(aws::Status::NoData) => sum.nodata += 1,
                Some(aws::Status::SkipData) => {
                    if sum.skipdata == 0 {
                        warn!(
                            file,
                            line = line_no,
                            interface = r.interface_id.unwrap_or("-"),
                            "SKIPDATA: AWS dropped flow records from this log during the interval"
                        );
                    }
                    sum.skipdata += 1;
                }
                Some(aws::Status::Ok) | None => chunk.push(aws_flow(&r), sum)?,
            },
            Err(e) => sum.reject(file, line_no, e.reason(), l),
        }
    }
    chunk.flush(sum)?;
    Ok(())
}

/// An AWS record in the flow model.
pub fn aws_flow(r: &aws::Record<'_>) -> Flow {
    let mut extra = serde_json::Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            extra.insert(k.into(), v.into());
        }
    };
    put("type", r.traffic_type);
    put("pkt_src_aws_service", r.pkt_src_aws_service);
    put("pkt_dst_aws_service", r.pkt_dst_aws_service);
    put("reject_reason", r.reject_reason);
    put("resource_type", r.resource_type);
    put("tgw_id", r.tgw_id);
    put("tgw_attachment_id", r.tgw_attachment_id);
    if let Some(p) = r.traffic_path {
        extra.insert("traffic_path".into(), p.into());
    }
    if let Some(p) = r.packets_lost {
        extra.insert("packets_lost".into(), p.into());
    }
    let ms = |t: Option<u64>| (t.unwrap_or(0).min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64;
    Flow {
        source: Source::Aws,
        observer: r.account_id.unwrap_or("aws").to_string(),
        interface: r
            .interface_id
            .or(r.tgw_attachment_id)
            .unwrap_or("")
            .to_string(),
        start_ns: ms(r.start_ms),
        end_ns: ms(r.end_ms),
        // Both present: `parse` rejects an OK record without them.
        src_ip: r.src_addr.expect("checked by parse"),
        dst_ip: r.dst_addr.expect("checked by parse"),
        src_port: r.src_port.unwrap_or(0),
        dst_port: r.dst_port.unwrap_or(0),
        protocol: r.protocol.unwrap_or(0),
        packets: r.packets.unwrap_or(0),
        bytes: r.bytes.unwrap_or(0),
        reverse_packets: 0,
        reverse_bytes: 0,
        tcp_flags: r.tcp_flags.unwrap_or(0),
        action: match r.action {
            Some("ACCEPT") => Action::Accept,
            Some("REJECT") => Action::Reject,
            _ => Action::Unknown,
        },
        sampling_rate: 1.0,
        cloud: CloudMeta {
            vpc: r.vpc_id.map(str::to_string),
            subnet: r.subnet_id.map(str::to_string),
            instance: r.instance_id.map(str::to_string),
            region: r.region.map(str::to_string),
            zone: r.az_id.map(str::to_string),
            pkt_src_ip: r.pkt_src_addr,
            pkt_dst_ip: r.pkt_dst_addr,
            direction: r.flow_direction.map(str::to_string),
            extra,
        },
        sensor: None,
    }
}

/// GCP's default sampling rate for VPC Flow Logs (a subnet setting, not in the records).
pub const GCP_DEFAULT_SAMPLING: f64 = 0.5;

/// Imports GCP VPC Flow Logs entries (NDJSON, or one JSON array) from `input` into `store`.
/// `sampling_rate` is the subnets' configured rate, carried into every flow.
fn import_gcp(
    out: &mut Handoff<'_>,
    mut input: impl BufRead,
    file: &str,
    sampling_rate: f64,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    sum.provider = "gcp";
    sum.files += 1;
    let mut chunk = Chunker::new(out);
    let mut take = |sum: &mut Summary, line_no: u64, json: &str| -> anyhow::Result<()> {
        sum.read += 1;
        match gcp::parse(json) {
            Ok(r) => chunk.push(gcp_flow(&r, sampling_rate), sum)?,
            // Valid JSON but no flow: maybe Pub/Sub messages, each carrying one entry.
            Err(gcp::Reject::NotAFlow) => match gcp::pubsub_entries(json) {
                Some(entries) => {
                    // The envelope is not a record; each message it carries is.
                    sum.read = sum.read - 1 + entries.len() as u64;
                    for entry in entries {
                        match entry
                            .and_then(|e| gcp::parse(&e).map(|r| gcp_flow(&r, sampling_rate)))
                        {
                            Ok(f) => chunk.push(f, sum)?,
                            Err(e) => sum.reject(file, line_no, e.reason().into(), json),
                        }
                    }
                }
                None => sum.reject(file, line_no, "not_a_flow_record".into(), json),
            },
            Err(e) => sum.reject(file, line_no, e.reason().into(), json),
        }
        Ok(())
    };
    // A JSON array, pretty-printed JSON values (a saved Pub/Sub pull response or push request:
    // the first line is a lone `{`), or NDJSON, read line by line.
    let layout = loop {
        let buf = input.fill_buf()?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let rest = &buf[i + 1..];
                let lone_brace = buf[i] == b'{'
                    && rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .is_some_and(|nl| rest[..nl].iter().all(u8::is_ascii_whitespace));
                let layout = match buf[i] {
                    b'[' => GcpLayout::Array,
                    _ if lone_brace => GcpLayout::Pretty,
                    _ => GcpLayout::Lines,
                };
                input.consume(i);
                break layout;
            }
            None if buf.is_empty() => break GcpLayout::Lines,
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    };
    if layout != GcpLayout::Lines {
        let mut text = String::new();
        input
            .read_to_string(&mut text)
            .with_context(|| format!("reading {file}"))?;
        if layout == GcpLayout::Array {
            match serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&text) {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate() {
                        take(sum, i as u64 + 1, e.get())?;
                    }
                }
                Err(e) => {
                    sum.read += 1;
                    sum.reject(
                        file,
                        e.line() as u64,
                        "bad_json_array".into(),
                        &e.to_string(),
                    );
                }
            }
        } else {
            let values = serde_json::Deserializer::from_str(&text)
                .into_iter::<&serde_json::value::RawValue>();
            for (i, v) in values.enumerate() {
                match v {
                    Ok(v) => take(sum, i as u64 + 1, v.get())?,
                    // Past a syntax error nothing can be trusted: one rejection ends the file.
                    Err(e) => {
                        sum.read += 1;
                        sum.reject(file, e.line() as u64, "bad_json".into(), &e.to_string());
                        break;
                    }
                }
            }
        }
    } else {
        let mut line = String::new();
        let mut line_no = 0u64;
        loop {
            line.clear();
            let n = match input.read_line(&mut line) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    line_no += 1;
                    sum.read += 1;
                    sum.reject(file, line_no, "not_utf8".into(), "");
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("reading {file}")),
            };
            if n == 0 {
                break;
            }
            line_no += 1;
            if !line.trim().is_empty() {
                take(sum, line_no, line.trim_end())?;
            }
        }
    }
    chunk.flush(sum)?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GcpLayout {
    Array,
    Pretty,
    Lines,
}

/// A GCP record in the flow model: the reporting side's instance and VPC are the observation
/// point.
pub fn gcp_flow(r: &gcp::Record<'_>, sampling_rate: f64) -> Flow {
    let p = &r.payload;
    let dest_side = p.reporter.as_deref().is_some_and(|s| s.starts_with("DEST"));
    let (inst, vpc) = if dest_side {
        (p.dest_instance.as_ref(), p.dest_vpc.as_ref())
    } else {
        (p.src_instance.as_ref(), p.src_vpc.as_ref())
    };
    let s = |v: Option<&std::borrow::Cow<'_, str>>| v.map(|c| c.to_string());
    let mut extra = serde_json::Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            extra.insert(k.into(), v.into());
        }
    };
    put("reporter", s(p.reporter.as_ref()));
    put(
        "src_country",
        s(p.src_location.as_ref().and_then(|l| l.country.as_ref())),
    );
    put(
        "dest_country",
        s(p.dest_location.as_ref().and_then(|l| l.country.as_ref())),
    );
    put(
        "src_vm",
        s(p.src_instance.as_ref().and_then(|i| i.vm_name.as_ref())),
    );
    put(
        "dest_vm",
        s(p.dest_instance.as_ref().and_then(|i| i.vm_name.as_ref())),
    );
    if let Some(rtt) = p.rtt_msec {
        extra.insert("rtt_msec".into(), rtt.into());
    }
    let instance = s(inst.and_then(|i| i.vm_name.as_ref()));
    let subnet = s(vpc.and_then(|v| v.subnetwork_name.as_ref()));
    Flow {
        source: Source::Gcp,
        observer: s(r.project.as_ref()).unwrap_or_else(|| "gcp".into()),
        interface: instance.clone().or(subnet.clone()).unwrap_or_default(),
        start_ns: r.start_ns,
        end_ns: r.end_ns,
        src_ip: r.src_ip,
        dst_ip: r.dst_ip,
        src_port: r.src_port,
        dst_port: r.dst_port,
        protocol: r.protocol,
        packets: r.packets,
        bytes: r.bytes,
        reverse_packets: 0,
        reverse_bytes: 0,
        tcp_flags: 0,
        action: Action::Unknown,
        sampling_rate,
        cloud: CloudMeta {
            vpc: s(vpc.and_then(|v| v.vpc_name.as_ref())),
            subnet,
            instance,
            region: s(inst.and_then(|i| i.region.as_ref())),
            zone: s(inst.and_then(|i| i.zone.as_ref())),
            pkt_src_ip: None,
            pkt_dst_ip: None,
            direction: Some(if dest_side { "ingress" } else { "egress" }.into()),
            extra,
        },
        sensor: None,
    }
}

/// An Azure flow-tuple list with its rule and interface MAC.
type TupleGroup<'r, 'a> = (
    Option<&'r str>,
    Option<&'r str>,
    &'r [std::borrow::Cow<'a, str>],
);

/// Imports Azure NSG (v1/v2) or VNet (v4) flow log blobs (`{"records": [...]}`; several
/// concatenated or one per line are fine) from `input` into `store`. Each flow tuple is a
/// flow; a blob that is not valid JSON ends that file with one rejection.
fn import_azure(
    out: &mut Handoff<'_>,
    mut input: impl BufRead,
    file: &str,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    sum.provider = "azure";
    sum.files += 1;
    let mut text = String::new();
    if let Err(e) = input.read_to_string(&mut text) {
        if e.kind() == io::ErrorKind::InvalidData {
            sum.read += 1;
            sum.reject(file, 0, "not_utf8".into(), "");
            return Ok(());
        }
        return Err(e).with_context(|| format!("reading {file}"));
    }
    let mut chunk = Chunker::new(out);
    for blob in serde_json::Deserializer::from_str(&text).into_iter::<azure::Blob<'_>>() {
        let blob = match blob {
            Ok(b) => b,
            Err(e) => {
                sum.read += 1;
                sum.reject(file, e.line() as u64, "bad_json".into(), &e.to_string());
                break;
            }
        };
        for rec in &blob.records {
            let vnet = rec.flow_records.is_some() || rec.flow_log_version == Some(4);
            let ids = [
                rec.resource_id.as_deref(),
                rec.target_resource_id.as_deref(),
                rec.flow_log_resource_id.as_deref(),
            ];
            let observer = ids
                .iter()
                .flatten()
                .find_map(|id| azure::subscription(id))
                .unwrap_or("azure")
                .to_string();
            let target = rec.target_resource_id.as_deref().unwrap_or("");
            let vpc = azure::resource_name(target, "virtualNetworks").map(str::to_string);
            let subnet = azure::resource_name(target, "subnets").map(str::to_string);
            let nsg = rec
                .resource_id
                .as_deref()
                .and_then(|id| azure::resource_name(id, "networkSecurityGroups"));
            // (rule, interface MAC, tuples) for both layouts.
            let mut groups: Vec<TupleGroup<'_, '_>> = Vec::new();
            if let Some(v) = &rec.flow_records {
                for acl in &v.flows {
                    for g in &acl.flow_groups {
                        groups.push((
                            g.rule.as_deref(),
                            rec.mac_address.as_deref(),
                            &g.flow_tuples,
                        ));
                    }
                }
            }
            if let Some(p) = &rec.properties {
                for rule in &p.flows {
                    for m in &rule.flows {
                        groups.push((rule.rule.as_deref(), m.mac.as_deref(), &m.flow_tuples));
                    }
                }
            }
            for (rule, mac, tuples) in groups {
                for t in tuples {
                    sum.read += 1;
                    match azure::parse_tuple(t, vnet) {
                        Ok(t) => {
                            let mut extra = serde_json::Map::new();
                            if let Some(r) = rule {
                                extra.insert("rule".into(), r.into());
                            }
                            if let Some(n) = nsg {
                                extra.insert("nsg".into(), n.into());
                            }
                            extra.insert("state".into(), t.state.to_string().into());
                            if let Some(e) = &t.encryption {
                                extra.insert("encryption".into(), e.clone().into());
                            }
                            let ns =
                                (t.time_ms.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64;
                            let flow = Flow {
                                source: Source::Azure,
                                observer: observer.clone(),
                                interface: mac.unwrap_or("").to_string(),
                                start_ns: ns,
                                end_ns: ns,
                                src_ip: t.src_ip,
                                dst_ip: t.dst_ip,
                                src_port: t.src_port,
                                dst_port: t.dst_port,
                                protocol: t.protocol,
                                packets: t.packets,
                                bytes: t.bytes,
                                reverse_packets: t.reverse_packets,
                                reverse_bytes: t.reverse_bytes,
                                tcp_flags: 0,
                                action: if t.allowed {
                                    Action::Accept
                                } else {
                                    Action::Reject
                                },
                                sampling_rate: 1.0,
                                cloud: CloudMeta {
                                    vpc: vpc.clone(),
                                    subnet: subnet.clone(),
                                    direction: Some(
                                        if t.inbound { "ingress" } else { "egress" }.into(),
                                    ),
                                    extra,
                                    ..CloudMeta::default()
                                },
                                sensor: None,
                            };
                            chunk.push(flow, sum)?;
                        }
                        Err(e) => sum.reject(file, 0, e.reason().into(), t),
                    }
                }
            }
        }
    }
    chunk.flush(sum)?;
    Ok(())
}
