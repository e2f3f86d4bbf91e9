//! Reading cloud flow-log files into flows of the common model, a chunk at a time: the layouts
//! each provider delivers (AWS text with header lines, GCP entries as NDJSON, a JSON array or
//! pretty-printed values, Azure JSON blobs), gzip detected by its magic bytes. What happens to
//! the chunks (detectors, the store) is the import pipeline's business (`pipeline::import`).
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

use super::{
    aws, azure,
    flows::{self as azure_flow, aws_flow, gcp_flow},
    gcp,
};
use crate::model::Flow;

/// Flows written to the store per transaction (10,000: 20k records/s into the indexed table;
/// 100,000: 45k, measured by the bench; about 50 MB of flows in memory at most).
pub const CHUNK: usize = 100_000;

/// Takes a full chunk and gives an empty one back.
pub type Handoff<'a> = dyn FnMut(Vec<Flow>) -> anyhow::Result<Vec<Flow>> + 'a;

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
pub fn read_aws(
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

/// Imports GCP VPC Flow Logs entries (NDJSON, or one JSON array) from `input` into `store`.
/// `sampling_rate` is the subnets' configured rate, carried into every flow.
pub fn read_gcp(
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

/// An Azure flow-tuple list with its rule and interface MAC.
type TupleGroup<'r, 'a> = (
    Option<&'r str>,
    Option<&'r str>,
    &'r [std::borrow::Cow<'a, str>],
);

/// Imports Azure NSG (v1/v2) or VNet (v4) flow log blobs (`{"records": [...]}`; several
/// concatenated or one per line are fine) from `input` into `store`. Each flow tuple is a
/// flow; a blob that is not valid JSON ends that file with one rejection.
pub fn read_azure(
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
            let vpc = azure::resource_name(target, "virtualNetworks");
            let subnet = azure::resource_name(target, "subnets");
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
                            let at = azure_flow::Where {
                                observer: &observer,
                                interface: mac.unwrap_or(""),
                                vpc,
                                subnet,
                                rule,
                                nsg,
                            };
                            let flow = azure_flow::flow(&at, &t);
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
