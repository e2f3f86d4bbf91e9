//! What a sensor sends, in the domain's terms: a batch of flows (in the common flow model),
//! kernel scan events, probe records and login events, and what it says of itself when it
//! registers and beats. The gRPC front converts the wire messages into these (and refuses what
//! does not convert); nothing past it sees the wire format.

use std::{collections::BTreeMap, net::IpAddr};

use super::Flow;

/// One batch of a sensor, as the control plane stores it exactly once: `(instance_id,
/// batch_id)` names it across the sensor's restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SensorBatch {
    /// The sensor's name (the key it authenticated with).
    pub sensor: String,
    pub instance_id: String,
    pub batch_id: u64,
    /// Flows with `source` [`super::Source::Sensor`] and `observer` the sensor's name.
    pub flows: Vec<Flow>,
    pub scans: Vec<ScanEvent>,
    pub probes: Vec<ProbeRecord>,
    pub logins: Vec<LoginEvent>,
}

/// The `initiator_by` values that are guesses: one direction seen that may have started the
/// conversation, or the earlier first packet. Stored and shown, but no entity role is learned
/// from them.
pub const GUESSED_INITIATOR: [&str; 2] = ["one_way", "first_seen"];

/// Whether a sensor flow's initiator was guessed (see [`GUESSED_INITIATOR`]).
pub fn initiator_guessed(initiator_by: &str) -> bool {
    GUESSED_INITIATOR.contains(&initiator_by)
}

/// What a sensor flow carries beyond the common model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SensorMeta {
    /// The TCP flags the other end sent (the common model's `tcp_flags` are the initiator's).
    pub reverse_tcp_flags: u8,
    /// Where the sensor saw it: `ingress`, `egress`, `both`.
    pub observed: String,
    /// How the initiator was told: `syn`, `syn_ack`, `icmp_type`, `port`, `first_seen`, `reply`
    /// (one direction seen, which answers: the asker initiated), `one_way` (one direction seen,
    /// taken as the initiator).
    pub initiator_by: String,
    /// `fragment`, `l4_truncated`, or empty.
    pub partial: String,
    /// Why the record was exported: `active_timeout`, `idle_timeout`, `end`, `shutdown`.
    pub end_reason: String,
    /// Kubernetes identity of each end, when the sensor runs in a cluster.
    pub src_pod: Option<PodContext>,
    pub dst_pod: Option<PodContext>,
}

/// The Kubernetes pod behind an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodContext {
    pub namespace: String,
    pub pod: String,
    pub labels: BTreeMap<String, String>,
    pub node: String,
}

/// A source crossed a fan-out threshold in a sensor's kernel (at most one per source per
/// window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEvent {
    pub iface: String,
    pub src_ip: IpAddr,
    pub distinct_ports: u32,
    pub distinct_hosts: u32,
    /// Dominant probe kind: `syn`, `fin`, `null`, `xmas`, `ack`, `udp`, `icmp_echo`.
    pub probe: String,
    /// Probes of each kind counted in the window.
    pub probes: BTreeMap<String, u32>,
    /// IP bytes of the source's unanswered conversations in the agent's flow cache.
    pub probe_bytes: u64,
    pub last_dst_ip: IpAddr,
    pub last_dst_port: u16,
    /// `ports`, `hosts`: which thresholds it crossed.
    pub reason: Vec<String>,
    pub start_ns: i64,
    pub end_ns: i64,
    /// The agent's view of the source's conversations: answered, not answered, and of those
    /// the ones the other end sent anything back to (0 when unknown).
    pub answered_contacts: u32,
    pub unanswered_contacts: u32,
    pub replied_contacts: u32,
}

/// A flagged scanner's probes, counted per source rather than per flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRecord {
    pub iface: String,
    pub src_ip: IpAddr,
    pub protocol: u8,
    pub probe: String,
    pub packets: u64,
    pub bytes: u64,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// A login from the host's authentication log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginEvent {
    pub time_ns: i64,
    pub service: String,
    /// `failed` or `accepted`.
    pub outcome: String,
    pub user: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
}

/// A network interface of a sensor's host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: String,
    /// With prefix length: `10.0.0.5/24`.
    pub addresses: Vec<String>,
    /// How the sensor attached: `native` or `generic` XDP, `tcx` or `clsact` tc.
    pub xdp_mode: String,
    pub tc_mode: String,
}

/// A sensor's registration: who it is and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    pub instance_id: String,
    pub version: String,
    pub kernel: String,
    pub hostname: String,
    pub machine_id: String,
    pub k8s_node: String,
    pub interfaces: Vec<Interface>,
    /// The control plane (its replica name) the sensor registered with: set by the control
    /// plane, not sent by the sensor.
    pub replica: String,
}

/// A sensor's heartbeat: its kernel's and its agent's counters (drops included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub kernel_counters: BTreeMap<String, u64>,
    pub agent_counters: BTreeMap<String, u64>,
    /// The control plane (its replica name) that received it: set by the control plane.
    pub replica: String,
}
