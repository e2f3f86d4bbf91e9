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
    cell::Cell,
    collections::BTreeMap,
    fmt,
    io::{self, BufRead, BufReader, Read},
    path::Path,
    rc::Rc,
};

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
    /// Records without a start and an end time (an AWS custom format without `start` and
    /// `end`), given their file's delivery time instead.
    pub untimed: u64,
}

impl Summary {
    /// Adds `other`'s counts (another file's) to these.
    pub fn add(&mut self, other: &Summary) {
        if self.provider.is_empty() {
            self.provider = other.provider;
        }
        self.files += other.files;
        self.read += other.read;
        self.stored += other.stored;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        self.nodata += other.nodata;
        self.skipdata += other.skipdata;
        self.untimed += other.untimed;
    }

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
        if self.untimed > 0 {
            write!(
                f,
                ", {} without start/end given their file's delivery time",
                self.untimed
            )?;
        }
        Ok(())
    }
}

/// The longest line taken (an AWS record, a GCP entry of NDJSON); a longer one is rejected as
/// `line_too_long`, skipped without being held in memory, and the next line read.
pub const MAX_LINE: usize = 1 << 20;
/// The largest GCP entry in a JSON array or among pretty-printed values; a larger one is
/// rejected as `record_too_large` and ends its file (what follows cannot be trusted).
pub const MAX_RECORD: u64 = 16 << 20;
/// The largest Azure blob file, which is read whole (JSON documents of one hour of one
/// network security group or virtual network: tens of MB at most in practice).
pub const MAX_DOCUMENT: u64 = 256 << 20;
/// Decompressed bytes read from one file at most, by default (`--max-file-mb`).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;

/// The input itself failed: it could not be read or decompressed, or it is over a limit. Its
/// import fails as a whole; the watched directory moves such a file aside.
#[derive(Debug)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Whether `e` (or what it wraps) is the input's fault rather than the store's.
pub fn is_input_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<InputError>())
}

fn input_error(file: &str, e: io::Error) -> anyhow::Error {
    anyhow::Error::new(InputError(format!("reading {file:?}: {e}")))
}

/// The reader's limit: what follows it was not read.
#[derive(Debug)]
struct OverLimit(u64);

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "over {} MiB once decompressed", self.0 >> 20)
    }
}

impl std::error::Error for OverLimit {}

/// Reads at most `left` bytes of `inner`, and fails if there are more.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // At the limit: the end of the input is fine, one more byte is not.
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one)? {
                0 => Ok(0),
                _ => Err(io::Error::other(OverLimit(self.limit))),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens `path` (`-`: standard input), decompressing gzip when its magic bytes say so, and
/// reading at most `max_bytes` once decompressed.
pub fn open_input(path: &Path, max_bytes: u64) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| {
            anyhow::Error::new(InputError(format!("cannot open {:?}: {e}", path.display())))
        })?)
    };
    decoding(raw, max_bytes)
}

/// `raw`, decompressed when its first bytes are gzip's magic, at most `max_bytes` of it.
pub fn decoding(
    raw: Box<dyn Read + Send>,
    max_bytes: u64,
) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let mut r = BufReader::with_capacity(1 << 16, raw);
    let gzip = r
        .fill_buf()
        .map_err(|e| input_error("the input", e))?
        .starts_with(&[0x1f, 0x8b]);
    let decoded: Box<dyn Read + Send> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    Ok(Box::new(BufReader::with_capacity(
        1 << 16,
        Capped {
            inner: decoded,
            left: max_bytes,
            limit: max_bytes,
        },
    )))
}

/// What [`next_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    End,
    Taken,
    TooLong,
}

/// Reads the next line into `buf` (with its newline), up to [`MAX_LINE`] bytes; a longer line
/// is read past, not kept.
fn next_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let n = (&mut *input)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
        input.skip_until(b'\n')?;
        buf.clear();
        return Ok(Line::TooLong);
    }
    Ok(Line::Taken)
}

/// Hands each line of `input` to `f` as text, with its number; a line too long or not UTF-8 is
/// counted as read and rejected here.
fn each_line(
    input: &mut impl BufRead,
    file: &str,
    sum: &mut Summary,
    mut f: impl FnMut(&mut Summary, u64, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        let taken = next_line(input, &mut line).map_err(|e| input_error(file, e))?;
        if taken == Line::End {
            return Ok(());
        }
        line_no += 1;
        let why = match (taken, std::str::from_utf8(&line)) {
            (Line::Taken, Ok(l)) => {
                f(sum, line_no, l)?;
                continue;
            }
            (Line::Taken, Err(_)) => "not_utf8",
            _ => "line_too_long",
        };
        sum.read += 1;
        sum.reject(file, line_no, why.into(), "");
    }
}

/// Imports AWS VPC (or transit-gateway) flow log records from `input` into `store`.
/// `delivered_ns`: when the file was delivered, the time of records that carry none.
pub fn read_aws(
    out: &mut Handoff<'_>,
    mut input: impl BufRead,
    file: &str,
    delivered_ns: i64,
    sum: &mut Summary,
) -> anyhow::Result<()> {
    let untimed_before = sum.untimed;
    sum.provider = "aws";
    sum.files += 1;
    let mut format = aws::Format::default();
    let mut chunk = Chunker::new(out);
    each_line(&mut input, file, sum, |sum, line_no, l| {
        let l = l.trim_end_matches(['\n', '\r']);
        if l.trim().is_empty() {
            return Ok(());
        }
        // A header (the first line of an S3 object, or of each object in a concatenation).
        if l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '$')
            && let Some(f) = aws::Format::from_header(l)
        {
            format = f;
            return Ok(());
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
                Some(aws::Status::Ok) | None => {
                    if r.start_ms.is_none() && r.end_ms.is_none() {
                        sum.untimed += 1;
                    }
                    chunk.push(aws_flow(&r, delivered_ns), sum)?
                }
            },
            Err(e) => sum.reject(file, line_no, e.reason(), l),
        }
        Ok(())
    })?;
    chunk.flush(sum)?;
    if sum.untimed > untimed_before {
        warn!(
            file,
            records = sum.untimed - untimed_before,
            delivered = %crate::util::time::rfc3339(delivered_ns),
            "records without start or end time: given the file's delivery time"
        );
    }
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
        let buf = input.fill_buf().map_err(|e| input_error(file, e))?;
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
    match layout {
        GcpLayout::Array | GcpLayout::Pretty => {
            let budget = Rc::new(Cell::new(MAX_RECORD));
            let reader = Budgeted {
                inner: &mut input,
                budget: budget.clone(),
            };
            let mut de = serde_json::Deserializer::from_reader(reader);
            let mut failed = None;
            let ended = if layout == GcpLayout::Array {
                serde::Deserializer::deserialize_seq(
                    &mut de,
                    Entries {
                        take: &mut |i, json| take(sum, i, json),
                        budget: &budget,
                        failed: &mut failed,
                    },
                )
                .and_then(|()| de.end())
            } else {
                let mut values = de.into_iter::<Box<serde_json::value::RawValue>>();
                let mut i = 0u64;
                loop {
                    budget.set(MAX_RECORD);
                    match values.next() {
                        None => break Ok(()),
                        Some(Ok(v)) => {
                            i += 1;
                            if let Err(e) = take(sum, i, v.get()) {
                                failed = Some(e);
                                break Ok(());
                            }
                        }
                        Some(Err(e)) => break Err(e),
                    }
                }
            };
            if let Some(e) = failed {
                return Err(e);
            }
            if let Err(e) = ended {
                let syntax = if layout == GcpLayout::Array {
                    "bad_json_array"
                } else {
                    "bad_json"
                };
                let (line, what) = (e.line() as u64, e.to_string());
                let reason = json_failure(file, e, syntax)?;
                sum.read += 1;
                sum.reject(file, line, reason.into(), &what);
            }
        }
        GcpLayout::Lines => each_line(&mut input, file, sum, |sum, line_no, l| {
            if l.trim().is_empty() {
                return Ok(());
            }
            take(sum, line_no, l.trim_end())
        })?,
    }
    chunk.flush(sum)?;
    Ok(())
}

/// Why a JSON layout ended early, as a rejection reason; Err when the input itself failed
/// (unreadable, or over the file's limit).
fn json_failure(
    file: &str,
    e: serde_json::Error,
    syntax: &'static str,
) -> anyhow::Result<&'static str> {
    if !e.is_io() {
        return Ok(syntax);
    }
    let e = io::Error::from(e);
    if e.get_ref()
        .is_some_and(|inner| inner.is::<RecordTooLarge>())
    {
        return Ok("record_too_large");
    }
    Err(input_error(file, e))
}

/// A JSON record over [`MAX_RECORD`].
#[derive(Debug)]
struct RecordTooLarge;

impl fmt::Display for RecordTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a record over {} MiB", MAX_RECORD >> 20)
    }
}

impl std::error::Error for RecordTooLarge {}

/// Reads from `inner` while the record being read is within its budget (reset for each
/// record by the reader's user).
struct Budgeted<R> {
    inner: R,
    budget: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 {
            return Err(io::Error::other(RecordTooLarge));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.budget.set(left - n as u64);
        Ok(n)
    }
}

/// The entries of a JSON array, each handed to `take` as its raw text as soon as it is read.
struct Entries<'t, 'b, 'f> {
    take: &'t mut dyn FnMut(u64, &str) -> anyhow::Result<()>,
    budget: &'b Cell<u64>,
    /// What `take` failed with (the store): the array is not read further.
    failed: &'f mut Option<anyhow::Error>,
}

impl<'de> serde::de::Visitor<'de> for Entries<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of log entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0u64;
        self.budget.set(MAX_RECORD);
        while let Some(v) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
            i += 1;
            if let Err(e) = (self.take)(i, v.get()) {
                *self.failed = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
            self.budget.set(MAX_RECORD);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GcpLayout {
    Array,
    Pretty,
    Lines,
}

/// An Azure flow-tuple list with its rule, interface MAC and (VNet logs) ACL id.
type TupleGroup<'r, 'a> = (
    Option<&'r str>,
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
    let mut bytes = Vec::new();
    (&mut input)
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| input_error(file, e))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(anyhow::Error::new(InputError(format!(
            "{file:?}: an Azure flow log file over {} MiB",
            MAX_DOCUMENT >> 20
        ))));
    }
    let Ok(text) = String::from_utf8(bytes) else {
        sum.read += 1;
        sum.reject(file, 0, "not_utf8".into(), "");
        return Ok(());
    };
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
                            acl.acl_id.as_deref(),
                            &g.flow_tuples,
                        ));
                    }
                }
            }
            if let Some(p) = &rec.properties {
                for rule in &p.flows {
                    for m in &rule.flows {
                        groups.push((rule.rule.as_deref(), m.mac.as_deref(), None, &m.flow_tuples));
                    }
                }
            }
            for (rule, mac, acl, tuples) in groups {
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
                                acl,
                                target: vnet.then_some(target).filter(|t| !t.is_empty()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_LINE: &str =
        "2 123456789010 eni-1 10.0.0.1 10.0.0.2 40000 22 6 3 180 1795860000 1795860060 ACCEPT OK\n";

    /// Runs a reader over `input`, collecting what it hands over.
    fn read(
        input: Box<dyn BufRead + Send>,
        f: impl FnOnce(&mut Handoff<'_>, Box<dyn BufRead + Send>, &mut Summary) -> anyhow::Result<()>,
    ) -> (anyhow::Result<()>, usize, Summary) {
        let mut stored = 0;
        let mut out = |flows: Vec<Flow>| -> anyhow::Result<Vec<Flow>> {
            stored += flows.len();
            Ok(Vec::new())
        };
        let mut sum = Summary::default();
        let r = f(&mut out, input, &mut sum);
        (r, stored, sum)
    }

    fn text(s: impl Into<Vec<u8>>) -> Box<dyn BufRead + Send> {
        decoding(Box::new(io::Cursor::new(s.into())), DEFAULT_MAX_FILE_BYTES).expect("input")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn an_overlong_line_is_rejected_unkept_and_the_next_one_read() {
        let mut input = AWS_LINE.to_string();
        input.push_str(&"9".repeat(MAX_LINE + 10));
        input.push('\n');
        input.push_str(AWS_LINE);
        // Exactly MAX_LINE bytes with its newline is still a line.
        input.push_str(&" ".repeat(MAX_LINE - 1));
        input.push('\n');
        let (r, stored, sum) = read(text(input), |o, i, s| read_aws(o, i, "t", 0, s));
        r.expect("read");
        assert_eq!(stored, 2);
        assert_eq!(sum.read, 3);
        assert_eq!(sum.rejected.get("line_too_long"), Some(&1));
        let gcp = format!("{}\n{{}}\n", "x".repeat(MAX_LINE + 1));
        let (r, _, sum) = read(text(gcp), |o, i, s| read_gcp(o, i, "t", 0.5, s));
        r.expect("read");
        assert_eq!(sum.rejected.get("line_too_long"), Some(&1), "{sum:?}");
        assert_eq!(sum.read, 2);
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit_as_the_input_s_fault() {
        // 64 MiB of zeros in 65 KiB: over a 16 MiB limit.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        for provider in ["aws", "gcp", "azure"] {
            let input = decoding(Box::new(io::Cursor::new(bomb.clone())), 16 << 20).expect("input");
            let (r, stored, _) = read(input, |o, i, s| match provider {
                "aws" => read_aws(o, i, "bomb.gz", 0, s),
                "gcp" => read_gcp(o, i, "bomb.gz", 0.5, s),
                _ => read_azure(o, i, "bomb.gz", s),
            });
            let e = r.expect_err("over the limit");
            assert!(is_input_error(&e), "{provider}: {e:#}");
            assert!(
                format!("{e:#}").contains("over 16 MiB"),
                "{provider}: {e:#}"
            );
            assert_eq!(stored, 0);
        }
        // Under the limit, the same reader takes it all.
        let small = gzip(AWS_LINE.repeat(1000).as_bytes());
        let input = decoding(Box::new(io::Cursor::new(small)), 16 << 20).expect("input");
        let (r, stored, _) = read(input, |o, i, s| read_aws(o, i, "ok.gz", 0, s));
        r.expect("read");
        assert_eq!(stored, 1000);
    }

    #[test]
    fn a_cut_gzip_stream_is_the_input_s_fault() {
        let z = gzip(AWS_LINE.repeat(10_000).as_bytes());
        let cut = z[..z.len() / 2].to_vec();
        let (r, _, _) = read(text(cut), |o, i, s| read_aws(o, i, "cut.gz", 0, s));
        assert!(is_input_error(&r.expect_err("cut")));
    }

    #[test]
    fn gcp_arrays_and_pretty_values_stream_and_an_oversized_entry_ends_the_file() {
        let entry = r#"{"jsonPayload":{"bytes_sent":"10","packets_sent":"1","connection":{"src_ip":"10.0.0.1","src_port":1,"dest_ip":"10.0.0.2","dest_port":2,"protocol":6},"start_time":"2026-11-28T10:00:00Z","end_time":"2026-11-28T10:00:05Z","reporter":"SRC"}}"#;
        let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_RECORD as usize));
        let array = format!("[{entry},{entry},{huge},{entry}]");
        let (r, stored, sum) = read(text(array), |o, i, s| read_gcp(o, i, "a.json", 0.5, s));
        r.expect("read");
        assert_eq!(stored, 2);
        assert_eq!(sum.rejected.get("record_too_large"), Some(&1), "{sum:?}");
        let pretty = format!("{{\n{}\n{entry}\n", &huge[1..]);
        let (r, stored, sum) = read(text(pretty), |o, i, s| read_gcp(o, i, "p.json", 0.5, s));
        r.expect("read");
        assert_eq!(stored, 0);
        assert_eq!(sum.rejected.get("record_too_large"), Some(&1), "{sum:?}");
        // A syntax error is still one rejection that ends the file.
        let (r, stored, sum) = read(text(format!("[{entry}, {{")), |o, i, s| {
            read_gcp(o, i, "b.json", 0.5, s)
        });
        r.expect("read");
        assert_eq!(stored, 1);
        assert_eq!(sum.rejected.get("bad_json_array"), Some(&1), "{sum:?}");
    }
}
