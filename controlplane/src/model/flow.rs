//! One flow model for every source: sensors and the clouds' flow logs.

use std::net::IpAddr;

use super::SensorMeta;

/// Who saw a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Sensor,
    Aws,
    Gcp,
    Azure,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sensor => "sensor",
            Source::Aws => "aws",
            Source::Gcp => "gcp",
            Source::Azure => "azure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sensor" => Source::Sensor,
            "aws" => Source::Aws,
            "gcp" => Source::Gcp,
            "azure" => Source::Azure,
            _ => return None,
        })
    }
}

/// What the network did with the flow (cloud logs say; a sensor sees what got through).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
    Unknown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Unknown => "",
        }
    }
}

/// Cloud metadata of a flow (empty for sensor flows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudMeta {
    pub vpc: Option<String>,
    pub subnet: Option<String>,
    pub instance: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    /// The packet's own addresses where NAT changed them (AWS pkt-srcaddr/pkt-dstaddr).
    pub pkt_src_ip: Option<IpAddr>,
    pub pkt_dst_ip: Option<IpAddr>,
    /// "ingress" or "egress" relative to the observation point, when the log says.
    pub direction: Option<String>,
    /// Anything else worth keeping, as a JSON object (AWS services, reject reason, TGW ids...).
    /// Its `absent` list is how the stores keep [`CloudMeta::absent`].
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The common fields the record did not write: the flow holds 0 there, which is not a
    /// value the provider gave.
    pub absent: Absent,
}

/// A set of the flow model's counting fields a cloud record left unwritten (absent is not
/// zero: protocol 0 is a protocol, and a record without packets is not a probe-sized one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Absent(u8);

impl Absent {
    pub const PROTOCOL: Absent = Absent(1);
    pub const SRC_PORT: Absent = Absent(1 << 1);
    pub const DST_PORT: Absent = Absent(1 << 2);
    pub const PACKETS: Absent = Absent(1 << 3);
    pub const BYTES: Absent = Absent(1 << 4);
    pub const REVERSE_PACKETS: Absent = Absent(1 << 5);
    pub const REVERSE_BYTES: Absent = Absent(1 << 6);

    /// Each field with the name the API and the stores give it.
    pub const NAMES: [(Absent, &'static str); 7] = [
        (Absent::PROTOCOL, "protocol"),
        (Absent::SRC_PORT, "src_port"),
        (Absent::DST_PORT, "dst_port"),
        (Absent::PACKETS, "packets"),
        (Absent::BYTES, "bytes"),
        (Absent::REVERSE_PACKETS, "reverse_packets"),
        (Absent::REVERSE_BYTES, "reverse_bytes"),
    ];

    /// Whether every field of `fields` is absent.
    pub fn has(self, fields: Absent) -> bool {
        fields.0 != 0 && self.0 & fields.0 == fields.0
    }

    /// Whether any field of `fields` is absent.
    pub fn any(self, fields: Absent) -> bool {
        self.0 & fields.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// This set with `fields` added when `missing`.
    #[must_use]
    pub fn with(self, fields: Absent, missing: bool) -> Absent {
        if missing {
            Absent(self.0 | fields.0)
        } else {
            self
        }
    }

    /// The names of the fields in the set, in the order of [`Absent::NAMES`].
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Absent::NAMES
            .into_iter()
            .filter(move |(f, _)| self.has(*f))
            .map(|(_, n)| n)
    }

    /// The set a stored `absent` list names (names it does not know are ignored).
    pub fn of_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Absent {
        names.into_iter().fold(Absent::default(), |a, n| {
            match Absent::NAMES.iter().find(|(_, name)| *name == n) {
                Some((f, _)) => a.with(*f, true),
                None => a,
            }
        })
    }
}

/// A flow as stored: an observation of one conversation (or one direction of it) over a time
/// range, at one observation point.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub source: Source,
    /// The observation point: a sensor's name, or a cloud account / project / subscription.
    pub observer: String,
    /// Sensor interface, or the cloud's interface / instance / rule.
    pub interface: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    pub tcp_flags: u8,
    pub action: Action,
    /// Fraction of the traffic the record stands for (GCP samples; 1.0 elsewhere).
    pub sampling_rate: f64,
    pub cloud: CloudMeta,
    /// What a sensor adds (None for cloud flows); boxed, as most flows of an import are not a
    /// sensor's.
    pub sensor: Option<Box<SensorMeta>>,
}

impl Flow {
    /// Whether the other end took the conversation: the cloud's accept, or, for a sensor flow
    /// (a sensor sees no firewall verdict), an answer: return traffic, and for TCP an ACK
    /// without a RST.
    pub fn accepted(&self) -> bool {
        const ACK: u8 = 0x10;
        const RST: u8 = 0x04;
        match &self.sensor {
            Some(s) => {
                self.reverse_packets > 0
                    && (self.protocol != 6
                        || (s.reverse_tcp_flags & ACK != 0 && s.reverse_tcp_flags & RST == 0))
            }
            None => self.action == Action::Accept,
        }
    }

    /// Whether the record wrote its destination port and protocol (every sensor flow does).
    pub fn port_known(&self) -> bool {
        !self
            .cloud
            .absent
            .any(Absent::PROTOCOL.with(Absent::DST_PORT, true))
    }

    /// Whether the record wrote its packets and bytes (every sensor flow does).
    pub fn counts_known(&self) -> bool {
        !self
            .cloud
            .absent
            .any(Absent::PACKETS.with(Absent::BYTES, true))
    }
}

/// Where flows go a chunk at a time (the store, or a transaction the store holds open).
pub type FlowSink<'a> = dyn FnMut(&[Flow]) -> anyhow::Result<()> + 'a;

/// A file of cloud flow logs, identified by its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedFile {
    /// SHA-256 of the file as stored (compressed if it is), hex.
    pub sha256: String,
    pub provider: Source,
    pub name: String,
    pub bytes: u64,
    /// When the file was delivered (Unix ns): its modification time (`aws s3 cp` gives a
    /// file its object's LastModified; standard input, spooled, the time it was read). The
    /// time of its records that carry none.
    pub delivered_ns: i64,
}
